//! Where new key material comes from: the data plane's `KeyMaterial` service, behind the
//! [`MaterialSource`] trait so the registry can be tested in process. Material arrives already
//! wrapped under the HSM root key; the control plane never sees plaintext.

use kms_proto::convert::WireEnum;
use kms_proto::kms::internal::v1::GenerateKeyMaterialRequest;
use kms_proto::kms::internal::v1::key_material_client::KeyMaterialClient;
use kms_types::{DomainError, KeyId, KeySpec, KeyVersionId, ProtectionLevel};
use tonic::transport::Channel;

/// Wrapped material and public key of a new key version.
#[derive(Debug)]
pub struct NewMaterial {
    /// Material sealed under the root key.
    pub wrapped: Vec<u8>,
    /// SubjectPublicKeyInfo DER; empty for symmetric keys.
    pub public_key_der: Vec<u8>,
}

/// Makes the material of new key versions.
#[tonic::async_trait]
pub trait MaterialSource: Send + Sync + std::fmt::Debug + 'static {
    /// New material of `spec` at `protection` for `version` of `key_id`, wrapped.
    async fn generate(
        &self,
        key_id: &KeyId,
        version: &KeyVersionId,
        spec: KeySpec,
        protection: ProtectionLevel,
    ) -> Result<NewMaterial, DomainError>;
}

/// A client of the data plane's `KeyMaterial` service that identifies as the control plane.
#[derive(Debug, Clone)]
pub struct MaterialClient {
    inner: KeyMaterialClient<Channel>,
    service_principal: String,
}

impl MaterialClient {
    /// A lazily connecting client for `url`.
    pub fn new(
        url: &str,
        service_principal: String,
        tls: Option<tonic::transport::ClientTlsConfig>,
    ) -> Result<Self, String> {
        let mut endpoint = Channel::from_shared(url.to_string())
            .map_err(|e| format!("data_plane_url {url:?}: {e}"))?;
        if let Some(tls) = tls {
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| format!("data_plane_url {url:?}: {e}"))?;
        }
        let channel = endpoint
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(std::time::Duration::from_secs(60))
            .connect_lazy();
        Ok(Self {
            inner: KeyMaterialClient::new(channel),
            service_principal,
        })
    }

    /// Asks the data plane for new material of `spec` at `protection`.
    pub async fn generate_material(
        &self,
        key_id: &KeyId,
        version: &KeyVersionId,
        spec: KeySpec,
        protection: ProtectionLevel,
    ) -> Result<NewMaterial, DomainError> {
        let req = tonic::Request::new(GenerateKeyMaterialRequest {
            key_id: key_id.to_string(),
            key_version_id: version.to_string(),
            key_spec: spec.to_wire(),
            protection_level: protection.to_wire(),
        });
        let req = kms_runtime::identity::with_principal(req, &self.service_principal)?;
        let resp = self
            .inner
            .clone()
            .generate(req)
            .await
            .map_err(|s| match s.code() {
                tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Cancelled => {
                    DomainError::Unavailable("the data plane cannot be reached".into())
                }
                _ => DomainError::Internal(format!(
                    "data plane Generate failed: {:?}: {}",
                    s.code(),
                    s.message()
                )),
            })?
            .into_inner();
        if resp.wrapped_material.is_empty() {
            return Err(DomainError::Internal(
                "data plane returned no material".into(),
            ));
        }
        Ok(NewMaterial {
            wrapped: resp.wrapped_material,
            public_key_der: resp.public_key_der,
        })
    }
}

#[tonic::async_trait]
impl MaterialSource for MaterialClient {
    async fn generate(
        &self,
        key_id: &KeyId,
        version: &KeyVersionId,
        spec: KeySpec,
        protection: ProtectionLevel,
    ) -> Result<NewMaterial, DomainError> {
        self.generate_material(key_id, version, spec, protection)
            .await
    }
}
