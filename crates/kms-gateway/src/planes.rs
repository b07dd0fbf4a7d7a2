//! The gateway's clients of the two planes. Every call on a caller's behalf carries the
//! caller's principal in the configured header (the planes' development header, or a trusted
//! sidecar's); resolving an AccessKey pair carries the gateway's own principal.

use kms_proto::kms::v1::ResolveAccessKeyRequest;
use kms_proto::kms::v1::access_key_resolver_client::AccessKeyResolverClient;
use kms_proto::kms::v1::crypto_service_client::CryptoServiceClient;
use kms_proto::kms::v1::key_management_service_client::KeyManagementServiceClient;
use std::time::Duration;
use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use zeroize::Zeroizing;

use crate::config::PlanesTlsConfig;

/// How long a plane call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Lazily connecting channels to both planes.
#[derive(Debug, Clone)]
pub struct Planes {
    control: Channel,
    data: Channel,
    header: MetadataKey<tonic::metadata::Ascii>,
    service_principal: String,
}

impl Planes {
    /// Channels to `control_url` and `data_url`, naming callers in `header`, over TLS
    /// checked with `tls` when given.
    pub fn new(
        control_url: &str,
        data_url: &str,
        header: &http::HeaderName,
        service_principal: String,
        tls: Option<&PlanesTlsConfig>,
    ) -> Result<Self, String> {
        let ca = match tls {
            Some(t) => Some(
                std::fs::read(&t.ca_file)
                    .map_err(|e| format!("planes_tls.ca_file {}: {e}", t.ca_file.display()))?,
            ),
            None => None,
        };
        let endpoint = |url: &str| {
            let mut e =
                Endpoint::from_shared(url.to_string()).map_err(|e| format!("{url}: {e}"))?;
            if let (Some(ca), Some(t)) = (&ca, tls) {
                let mut config =
                    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca.clone()));
                if let Some(name) = &t.server_name {
                    config = config.domain_name(name.clone());
                }
                e = e.tls_config(config).map_err(|e| format!("{url}: {e}"))?;
            }
            Ok::<_, String>(
                e.connect_timeout(Duration::from_secs(5))
                    .timeout(CALL_TIMEOUT)
                    .connect_lazy(),
            )
        };
        Ok(Self {
            control: endpoint(control_url)?,
            data: endpoint(data_url)?,
            header: MetadataKey::from_bytes(header.as_str().as_bytes())
                .map_err(|e| format!("principal header: {e}"))?,
            service_principal,
        })
    }

    /// `message` as a request from `principal`.
    pub fn request<T>(
        &self,
        principal: &str,
        message: T,
    ) -> Result<tonic::Request<T>, tonic::Status> {
        let mut req = tonic::Request::new(message);
        let value = MetadataValue::try_from(principal)
            .map_err(|_| tonic::Status::internal("principal is not a header value"))?;
        req.metadata_mut().insert(self.header.clone(), value);
        req.set_timeout(CALL_TIMEOUT);
        Ok(req)
    }

    /// `KeyManagementService` on the control plane.
    pub fn keys(&self) -> KeyManagementServiceClient<Channel> {
        KeyManagementServiceClient::new(self.control.clone())
    }

    /// `CryptoService` on the data plane.
    pub fn crypto(&self) -> CryptoServiceClient<Channel> {
        CryptoServiceClient::new(self.data.clone())
    }

    /// The principal and secret of pair `access_key_id`, as the gateway's own principal.
    pub async fn resolve_access_key(
        &self,
        access_key_id: &str,
    ) -> Result<(String, Zeroizing<String>), tonic::Status> {
        let req = self.request(
            &self.service_principal,
            ResolveAccessKeyRequest {
                access_key_id: access_key_id.to_string(),
            },
        )?;
        let resp = AccessKeyResolverClient::new(self.data.clone())
            .resolve_access_key(req)
            .await?
            .into_inner();
        Ok((resp.principal, Zeroizing::new(resp.access_key_secret)))
    }
}
