//! The console's only way to do anything: gRPC calls to the two planes, each carrying the
//! signed-in principal in the planes' principal header, so their policies and audit apply to
//! the person and not to the console. Errors keep the status code, the reason code the planes
//! put in the status details, and the message, for the error page.

use kms_proto::kms::v1::crypto_service_client::CryptoServiceClient;
use kms_proto::kms::v1::key_management_service_client::KeyManagementServiceClient;
use kms_proto::kms::v1::kms_instance_service_client::KmsInstanceServiceClient;
use tonic::metadata::{Ascii, MetadataKey, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::config::Params;

/// A channel that names the signed-in principal on every call.
pub(crate) type Authed = InterceptedService<Channel, AsPrincipal>;

/// Lazily connected channels to both planes.
#[derive(Debug, Clone)]
pub(crate) struct Planes {
    control: Channel,
    data: Channel,
    header: MetadataKey<Ascii>,
}

fn endpoint(url: &str, params: &Params) -> anyhow::Result<Endpoint> {
    let mut url = url.to_string();
    let mut endpoint_tls = None;
    if let Some(tls) = &params.plane_tls {
        if let Some(rest) = url.strip_prefix("http://") {
            url = format!("https://{rest}");
        }
        endpoint_tls = Some(kms_runtime::tls::client_config(
            &tls.ca_file,
            &tls.cert_file,
            &tls.key_file,
        )?);
    }
    let mut endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| anyhow::anyhow!("invalid plane address {url:?}: {e}"))?
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(30));
    if let Some(config) = endpoint_tls {
        endpoint = endpoint.tls_config(config)?;
    }
    Ok(endpoint)
}

impl Planes {
    /// Channels to the planes in `params`; nothing connects before the first call.
    pub(crate) fn new(params: &Params) -> anyhow::Result<Self> {
        Ok(Self {
            control: endpoint(&params.control_plane_url, params)?.connect_lazy(),
            data: endpoint(&params.data_plane_url, params)?.connect_lazy(),
            header: MetadataKey::from_bytes(params.plane_header.as_bytes())
                .map_err(|_| anyhow::anyhow!("invalid principal header name"))?,
        })
    }

    fn as_principal(&self, principal: &str) -> Result<AsPrincipal, ApiError> {
        let value = principal
            .parse::<MetadataValue<Ascii>>()
            .map_err(|_| ApiError::local("the principal cannot travel in a header"))?;
        Ok(AsPrincipal {
            header: self.header.clone(),
            value,
        })
    }

    /// `KeyManagementService` as `principal`.
    pub(crate) fn keys(
        &self,
        principal: &str,
    ) -> Result<KeyManagementServiceClient<Authed>, ApiError> {
        Ok(KeyManagementServiceClient::with_interceptor(
            self.control.clone(),
            self.as_principal(principal)?,
        ))
    }

    /// `KmsInstanceService` as `principal`.
    pub(crate) fn instances(
        &self,
        principal: &str,
    ) -> Result<KmsInstanceServiceClient<Authed>, ApiError> {
        Ok(KmsInstanceServiceClient::with_interceptor(
            self.control.clone(),
            self.as_principal(principal)?,
        ))
    }

    /// `CryptoService` as `principal` (the console uses only `GetPublicKey`).
    pub(crate) fn crypto(&self, principal: &str) -> Result<CryptoServiceClient<Authed>, ApiError> {
        Ok(CryptoServiceClient::with_interceptor(
            self.data.clone(),
            self.as_principal(principal)?,
        ))
    }
}

/// Adds the principal header to every call.
#[derive(Debug, Clone)]
pub(crate) struct AsPrincipal {
    header: MetadataKey<Ascii>,
    value: MetadataValue<Ascii>,
}

impl Interceptor for AsPrincipal {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        request
            .metadata_mut()
            .insert(self.header.clone(), self.value.clone());
        Ok(request)
    }
}

/// What a failed call tells the person: code, reason code, message, request id.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub(crate) code: Code,
    pub(crate) reason: Option<String>,
    pub(crate) message: String,
    pub(crate) request_id: Option<String>,
}

impl ApiError {
    /// An error found by the console before any call (a form value it cannot send).
    pub(crate) fn local(message: impl Into<String>) -> Self {
        Self {
            code: Code::InvalidArgument,
            reason: Some("InvalidParameter".into()),
            message: message.into(),
            request_id: None,
        }
    }

    /// The canonical name of the code, as in `FAILED_PRECONDITION`.
    pub(crate) fn code_name(&self) -> &'static str {
        kms_runtime::audit::code_name(self.code)
    }

    /// The HTTP status of the error page.
    pub(crate) fn http_status(&self) -> axum::http::StatusCode {
        use axum::http::StatusCode as S;
        match self.code {
            Code::InvalidArgument | Code::OutOfRange => S::BAD_REQUEST,
            Code::NotFound => S::NOT_FOUND,
            Code::AlreadyExists | Code::FailedPrecondition | Code::Aborted => S::CONFLICT,
            Code::PermissionDenied => S::FORBIDDEN,
            Code::Unauthenticated => S::UNAUTHORIZED,
            Code::ResourceExhausted => S::TOO_MANY_REQUESTS,
            Code::Unavailable | Code::DeadlineExceeded => S::SERVICE_UNAVAILABLE,
            _ => S::BAD_GATEWAY,
        }
    }
}

impl From<Status> for ApiError {
    fn from(status: Status) -> Self {
        let reason = match status.get_details_error_info() {
            Some(info) => Some(info.reason),
            None => status.message().split_once(':').and_then(|(head, _)| {
                (!head.is_empty() && !head.contains(char::is_whitespace)).then(|| head.to_string())
            }),
        };
        let message = match &reason {
            Some(r) => status
                .message()
                .strip_prefix(r.as_str())
                .and_then(|rest| rest.strip_prefix(": "))
                .unwrap_or(status.message()),
            None => status.message(),
        }
        .to_string();
        let request_id = status
            .metadata()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Self {
            code: status.code(),
            reason,
            message,
            request_id,
        }
    }
}
