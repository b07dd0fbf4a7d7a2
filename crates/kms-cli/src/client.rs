//! Connections to the two planes: channel setup (plain, or mTLS with `--ca/--cert/--cert-key`), the
//! principal header added to every call by an interceptor, and the errors a user sees when a
//! plane cannot be reached or answers with a status.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use kms_proto::kms::v1::access_key_service_client::AccessKeyServiceClient;
use kms_proto::kms::v1::admin_service_client::AdminServiceClient;
use kms_proto::kms::v1::audit_service_client::AuditServiceClient;
use kms_proto::kms::v1::crypto_service_client::CryptoServiceClient;
use kms_proto::kms::v1::key_management_service_client::KeyManagementServiceClient;
use kms_proto::kms::v1::kms_instance_service_client::KmsInstanceServiceClient;
use kms_types::Principal;
use kms_types::principal::{PRINCIPAL_EXAMPLE, PRINCIPAL_FORM};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// The metadata header carrying the caller's principal ARN.
pub(crate) const PRINCIPAL_HEADER: &str = "x-kms-principal";
/// The header in which the service names each call.
const REQUEST_ID_HEADER: &str = "x-request-id";

/// How long to wait for a TCP connection to a plane.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A channel that sends the principal header with every call.
pub(crate) type Authed = InterceptedService<Channel, PrincipalHeader>;

/// Where the planes are and who is calling.
#[derive(Debug, Clone)]
pub(crate) struct Planes {
    /// Control-plane URL, normalised.
    pub(crate) control: String,
    /// Data-plane URL, normalised.
    pub(crate) data: String,
    /// Principal ARN, if given.
    pub(crate) principal: Option<String>,
    /// mTLS files, if given: calls then go over https and the certificate names the caller.
    pub(crate) tls: Option<TlsFiles>,
}

/// The files kmsctl uses for mTLS.
#[derive(Debug, Clone)]
pub(crate) struct TlsFiles {
    /// CA bundle the servers' certificates must chain to.
    pub(crate) ca: PathBuf,
    /// Client certificate.
    pub(crate) cert: PathBuf,
    /// Its private key.
    pub(crate) key: PathBuf,
}

/// Which plane a connection goes to, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plane {
    Control,
    Data,
}

impl fmt::Display for Plane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Plane::Control => "control plane (kms-control)",
            Plane::Data => "data plane (kms-data)",
        })
    }
}

impl Planes {
    /// A client of `KeyManagementService` on the control plane.
    pub(crate) async fn control(&self) -> anyhow::Result<KeyManagementServiceClient<Authed>> {
        let header = self.principal_header()?;
        let channel = connect(Plane::Control, &self.control, self.tls.as_ref()).await?;
        Ok(KeyManagementServiceClient::with_interceptor(
            channel, header,
        ))
    }

    /// A client of `KmsInstanceService` on the control plane.
    pub(crate) async fn instances(&self) -> anyhow::Result<KmsInstanceServiceClient<Authed>> {
        let header = self.principal_header()?;
        let channel = connect(Plane::Control, &self.control, self.tls.as_ref()).await?;
        Ok(KmsInstanceServiceClient::with_interceptor(channel, header))
    }

    /// A client of `AuditService` on the control plane.
    pub(crate) async fn audit(&self) -> anyhow::Result<AuditServiceClient<Authed>> {
        let header = self.principal_header()?;
        let channel = connect(Plane::Control, &self.control, self.tls.as_ref()).await?;
        Ok(AuditServiceClient::with_interceptor(channel, header))
    }

    /// A client of `AccessKeyService` on the control plane.
    pub(crate) async fn access_keys(&self) -> anyhow::Result<AccessKeyServiceClient<Authed>> {
        let header = self.principal_header()?;
        let channel = connect(Plane::Control, &self.control, self.tls.as_ref()).await?;
        Ok(AccessKeyServiceClient::with_interceptor(channel, header))
    }

    /// A client of `AdminService` on the control plane.
    pub(crate) async fn admin(&self) -> anyhow::Result<AdminServiceClient<Authed>> {
        let header = self.principal_header()?;
        let channel = connect(Plane::Control, &self.control, self.tls.as_ref()).await?;
        Ok(AdminServiceClient::with_interceptor(channel, header))
    }

    /// A client of `CryptoService` on the data plane.
    pub(crate) async fn data(&self) -> anyhow::Result<CryptoServiceClient<Authed>> {
        let header = self.principal_header()?;
        let channel = connect(Plane::Data, &self.data, self.tls.as_ref()).await?;
        Ok(CryptoServiceClient::with_interceptor(channel, header))
    }

    fn principal_header(&self) -> anyhow::Result<PrincipalHeader> {
        let principal = self.principal.as_deref().map(str::trim).unwrap_or_default();
        if principal.is_empty() && self.tls.is_some() {
            return Ok(PrincipalHeader::none());
        }
        if principal.is_empty() {
            anyhow::bail!(
                "no principal given: pass --principal ARN or set KMS_PRINCIPAL, e.g. \
                 `export KMS_PRINCIPAL={PRINCIPAL_EXAMPLE}`, or call over mTLS \
                 with --ca, --cert and --cert-key"
            );
        }
        if let Err(why) = Principal::parse_explained(principal) {
            anyhow::bail!(
                "the principal {principal:?} (--principal or KMS_PRINCIPAL) is not a principal \
                 ARN: {why}; expected {PRINCIPAL_FORM}, e.g. \
                 `export KMS_PRINCIPAL={PRINCIPAL_EXAMPLE}`"
            );
        }
        PrincipalHeader::new(principal)
    }
}

/// Adds `x-kms-principal` to every outgoing call, when a principal was given.
#[derive(Debug, Clone)]
pub(crate) struct PrincipalHeader(Option<MetadataValue<Ascii>>);

impl PrincipalHeader {
    /// The header for `principal`; refuses values that cannot travel in a header.
    pub(crate) fn new(principal: &str) -> anyhow::Result<Self> {
        let value = principal
            .parse::<MetadataValue<Ascii>>()
            .map_err(|_| anyhow::anyhow!("principal {principal:?} is not a valid header value"))?;
        Ok(Self(Some(value)))
    }

    /// No header: over mTLS the client certificate names the caller.
    pub(crate) fn none() -> Self {
        Self(None)
    }
}

impl Interceptor for PrincipalHeader {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert(PRINCIPAL_HEADER, value.clone());
        }
        Ok(request)
    }
}

/// An endpoint for a normalised URL, with the CLI's timeouts.
pub(crate) fn endpoint(url: &str) -> anyhow::Result<Endpoint> {
    Ok(Endpoint::from_shared(url.to_string())
        .map_err(|e| anyhow::anyhow!("invalid address {url:?}: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT))
}

/// `url` with `https` instead of `http`, for mTLS.
fn https(url: &str) -> String {
    match url.strip_prefix("http://") {
        Some(rest) => format!("https://{rest}"),
        None => url.to_string(),
    }
}

/// An mTLS endpoint for `url` (`http://` becomes `https://`) presenting the certificate in
/// `files`, with the CLI's timeouts; the URL it uses.
pub(crate) fn tls_endpoint(url: &str, files: &TlsFiles) -> anyhow::Result<(String, Endpoint)> {
    let url = https(url);
    let config = kms_runtime::tls::client_config(&files.ca, &files.cert, &files.key)?;
    let endpoint = endpoint(&url)?
        .tls_config(config)
        .map_err(|e| anyhow::anyhow!("cannot use TLS for {url}: {}", error_chain(&e)))?;
    Ok((url, endpoint))
}

/// Connects to a plane now, so an unreachable plane is reported as such; over mTLS when `tls`
/// is given. A failed TLS connection is told apart from a plane that is not there.
async fn connect(plane: Plane, url: &str, tls: Option<&TlsFiles>) -> anyhow::Result<Channel> {
    let (url, endpoint) = match tls {
        None if url.starts_with("https://") => {
            return Err(diagnose(plane, url, None).await.into());
        }
        None => (url.to_string(), endpoint(url)?),
        Some(files) => tls_endpoint(url, files)?,
    };
    match endpoint.connect().await {
        Ok(channel) => Ok(channel),
        Err(e) if tls.is_some() => Err(diagnose(plane, &url, Some(error_chain(&e))).await.into()),
        Err(e) => Err(Unreachable {
            plane,
            addr: url,
            detail: error_chain(&e),
        }
        .into()),
    }
}

/// Why a TLS connection to `url` failed (`detail`, or none when kmsctl has no certificate to
/// offer): nothing listens there, or something does but the TLS handshake failed, and then
/// whether the server answers plain gRPC instead.
async fn diagnose(plane: Plane, url: &str, detail: Option<String>) -> ConnectError {
    let authority = url
        .parse::<tonic::codegen::http::Uri>()
        .ok()
        .and_then(|u| Some(format!("{}:{}", u.host()?, u.port_u16().unwrap_or(443))));
    let listening = match &authority {
        Some(a) => tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(a))
            .await
            .is_ok_and(|r| r.is_ok()),
        None => false,
    };
    if !listening {
        return ConnectError::Unreachable(Unreachable {
            plane,
            addr: url.to_string(),
            detail: detail.unwrap_or_else(|| "nothing accepts connections there".into()),
        });
    }
    let plain_url = format!("http://{}", authority.unwrap_or_default());
    ConnectError::Tls(TlsFailure {
        plane,
        addr: url.to_string(),
        plaintext: speaks_plaintext(&plain_url).await.then_some(plain_url),
        detail,
    })
}

/// Whether the server at `url` answers a plain (not TLS) gRPC health check; health checks need
/// no identity.
async fn speaks_plaintext(url: &str) -> bool {
    let Ok(endpoint) = endpoint(url) else {
        return false;
    };
    let Ok(channel) = endpoint.timeout(CONNECT_TIMEOUT).connect().await else {
        return false;
    };
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .is_ok()
}

/// A connection that failed: nothing to reach, or a TLS handshake that failed.
#[derive(Debug)]
enum ConnectError {
    Unreachable(Unreachable),
    Tls(TlsFailure),
}

impl From<ConnectError> for anyhow::Error {
    fn from(e: ConnectError) -> Self {
        match e {
            ConnectError::Unreachable(e) => e.into(),
            ConnectError::Tls(e) => e.into(),
        }
    }
}

/// A TLS connection to a plane that listens failed.
#[derive(Debug)]
pub(crate) struct TlsFailure {
    plane: Plane,
    addr: String,
    /// The server's plain `http://` URL, when it answers gRPC without TLS there.
    plaintext: Option<String>,
    /// What the handshake failed on; `None` when kmsctl had no certificate to offer.
    detail: Option<String>,
}

impl TlsFailure {
    /// What failed.
    pub(crate) fn message(&self) -> String {
        match (&self.plaintext, &self.detail) {
            (Some(_), _) => format!(
                "TLS handshake with the {} at {} failed: the server speaks plaintext gRPC, \
                 without TLS",
                self.plane, self.addr
            ),
            (None, Some(detail)) => format!(
                "TLS handshake with the {} at {} failed ({detail})",
                self.plane, self.addr
            ),
            (None, None) => format!(
                "{} asks for TLS, and kmsctl speaks TLS to the {} only as mTLS, with a client \
                 certificate",
                self.addr, self.plane
            ),
        }
    }

    /// What to do about it.
    pub(crate) fn hint(&self) -> String {
        match (&self.plaintext, &self.detail) {
            (Some(plain), _) => format!(
                "call it at {plain} without --ca, --cert and --cert-key (KMS_CA, KMS_CERT, \
                 KMS_KEY, or a profile's ca, cert and cert_key), or start it with TLS \
                 (`kmsctl dev up --mtls`)"
            ),
            (None, Some(_)) => "check that --ca holds the CA that signed the server's \
                                certificate, that the certificate covers the host in the \
                                address, and that the server trusts the CA of --cert"
                .to_string(),
            (None, None) => "give --ca, --cert and --cert-key (or KMS_CA, KMS_CERT and \
                             KMS_KEY, or a profile's ca, cert and cert_key)"
                .to_string(),
        }
    }
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\nhint: {}", self.message(), self.hint())
    }
}

impl std::error::Error for TlsFailure {}

/// The messages of an error and its sources, joined by `: `, without repeats.
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(err);
    while let Some(e) = cur {
        let msg = e.to_string();
        if !parts.iter().any(|p| p.contains(&msg)) {
            parts.push(msg);
        }
        cur = e.source();
    }
    parts.join(": ")
}

/// A plane could not be reached.
#[derive(Debug)]
pub(crate) struct Unreachable {
    plane: Plane,
    addr: String,
    detail: String,
}

impl Unreachable {
    /// What failed.
    pub(crate) fn message(&self) -> String {
        format!(
            "cannot reach the {} at {} ({})",
            self.plane, self.addr, self.detail
        )
    }

    /// What to do about it.
    pub(crate) fn hint(&self) -> String {
        let (flag, var) = match self.plane {
            Plane::Control => ("control", "KMS_CONTROL_ADDR"),
            Plane::Data => ("data", "KMS_DATA_ADDR"),
        };
        format!(
            "is it running? Start the service locally with `kmsctl dev up --dir .dev`, or point \
             --{flag} / {var} (or a profile's {flag}) at it"
        )
    }
}

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\nhint: {}", self.message(), self.hint())
    }
}

impl std::error::Error for Unreachable {}

/// A call answered with a non-OK status; shown as `<CODE>: <message>`.
#[derive(Debug)]
pub(crate) struct RpcError(pub(crate) Status);

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = &self.0;
        let code = code_name(status.code());
        let message = status.message();
        match status.get_details_error_info() {
            _ if message.is_empty() => write!(f, "{code}: {}", status.code().description()),
            Some(info) if !info.reason.is_empty() && !message.starts_with(&info.reason) => {
                write!(f, "{code}: {}: {message}", info.reason)
            }
            _ => write!(f, "{code}: {message}"),
        }
    }
}

impl std::error::Error for RpcError {}

impl RpcError {
    /// The request id the service gave the call, from the answer's `x-request-id`.
    pub(crate) fn request_id(&self) -> Option<String> {
        self.0
            .metadata()
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

/// An error and what to do about it, shown after it as `hint: ...`.
#[derive(Debug)]
pub(crate) struct Hinted {
    pub(crate) error: anyhow::Error,
    pub(crate) hint: String,
}

impl fmt::Display for Hinted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}\nhint: {}", self.error, self.hint)
    }
}

impl std::error::Error for Hinted {}

/// `error` with `hint` shown after it.
pub(crate) fn hinted(error: impl Into<anyhow::Error>, hint: impl Into<String>) -> anyhow::Error {
    Hinted {
        error: error.into(),
        hint: hint.into(),
    }
    .into()
}

/// A refused call of a command only operators may make: the refusal, saying so.
pub(crate) fn operator_only(status: Status, command: &str) -> anyhow::Error {
    if status.code() != Code::PermissionDenied {
        return RpcError(status).into();
    }
    hinted(
        RpcError(status),
        format!(
            "{command} needs an operator: a principal the control plane's config lists in \
             `operators` (`kmsctl dev up` makes {} one); call as one with --principal or a \
             profile, or over mTLS with an operator's certificate",
            crate::dev::OPERATOR_PRINCIPAL
        ),
    )
}

impl From<Status> for RpcError {
    fn from(status: Status) -> Self {
        Self(status)
    }
}

/// The reason code of a status: its `ErrorInfo` detail, else the message's leading
/// `Reason.Code:` word.
pub(crate) fn reason(status: &Status) -> Option<String> {
    if let Some(info) = status.get_details_error_info() {
        return Some(info.reason);
    }
    let (head, _) = status.message().split_once(':')?;
    (!head.is_empty() && !head.contains(char::is_whitespace)).then(|| head.to_string())
}

/// Whether a status is the answer to a dry run that would have succeeded.
pub(crate) fn is_dry_run_success(status: &Status) -> bool {
    status.code() == Code::FailedPrecondition
        && reason(status).as_deref() == Some("DryRunOperationError")
}

/// The canonical gRPC name of a code, as in `NOT_FOUND`.
pub(crate) use kms_runtime::audit::code_name;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use tonic_types::ErrorDetails;

    use super::*;

    #[test]
    fn rpc_errors_show_code_name_and_message() {
        let st = Status::not_found("Forbidden.KeyNotFound: the key does not exist");
        assert_eq!(
            RpcError(st).to_string(),
            "NOT_FOUND: Forbidden.KeyNotFound: the key does not exist"
        );
        let st = Status::with_error_details(
            Code::InvalidArgument,
            "bad alias",
            ErrorDetails::with_error_info("InvalidParameter.AliasName", "kms", []),
        );
        assert_eq!(
            RpcError(st).to_string(),
            "INVALID_ARGUMENT: InvalidParameter.AliasName: bad alias"
        );
        assert_eq!(
            RpcError(Status::unavailable("")).to_string(),
            "UNAVAILABLE: The service is currently unavailable"
        );
    }

    #[test]
    fn dry_run_success_is_recognised() {
        let by_message =
            Status::failed_precondition("DryRunOperationError: the request would have succeeded");
        assert!(is_dry_run_success(&by_message));
        let by_detail = Status::with_error_details(
            Code::FailedPrecondition,
            "would have succeeded",
            ErrorDetails::with_error_info("DryRunOperationError", "kms", []),
        );
        assert!(is_dry_run_success(&by_detail));
        assert!(!is_dry_run_success(&Status::failed_precondition(
            "Rejected.Disabled: the key is disabled"
        )));
        assert!(!is_dry_run_success(&Status::invalid_argument(
            "DryRunOperationError: wrong code"
        )));
    }

    #[test]
    fn missing_principal_says_how_to_set_it() {
        let planes = Planes {
            control: "http://127.0.0.1:1".into(),
            data: "http://127.0.0.1:1".into(),
            principal: None,
            tls: None,
        };
        let err = planes.principal_header().unwrap_err().to_string();
        assert!(
            err.contains("--principal") && err.contains("KMS_PRINCIPAL"),
            "{err}"
        );
    }

    #[test]
    fn interceptor_adds_the_header() {
        let mut h = PrincipalHeader::new("acs:ram::1234567890123456:root").unwrap();
        let req = h.call(tonic::Request::new(())).unwrap();
        assert_eq!(
            req.metadata().get(PRINCIPAL_HEADER).unwrap(),
            "acs:ram::1234567890123456:root"
        );
        assert!(PrincipalHeader::new("bad\nvalue").is_err());
    }

    #[test]
    fn mtls_needs_no_principal_and_uses_https() {
        let planes = Planes {
            control: "http://127.0.0.1:1".into(),
            data: "http://127.0.0.1:1".into(),
            principal: None,
            tls: Some(TlsFiles {
                ca: "ca.pem".into(),
                cert: "c.pem".into(),
                key: "k.pem".into(),
            }),
        };
        let mut h = planes.principal_header().unwrap();
        let req = h.call(tonic::Request::new(())).unwrap();
        assert!(req.metadata().get(PRINCIPAL_HEADER).is_none());
        assert_eq!(https("http://127.0.0.1:7700"), "https://127.0.0.1:7700");
        assert_eq!(https("https://kms.example.com"), "https://kms.example.com");
    }

    /// kmsctl's mTLS channel, with `kmsctl dev certs` files, against a server built with the
    /// runtime's TLS helper.
    #[tokio::test]
    async fn mtls_channel_with_dev_certs() {
        let tmp = tempfile::tempdir().unwrap();
        let certs = crate::certs::generate_dev_certs(tmp.path(), &[]).unwrap();
        let tls = kms_runtime::tls::TlsConfig {
            cert_file: certs.data.cert.clone(),
            key_file: certs.data.key.clone(),
            client_ca_file: certs.ca.cert.clone(),
            require_client_cert: true,
            client_cert_file: None,
            client_key_file: None,
            server_ca_file: None,
        };
        let (_reporter, health) = tonic_health::server::health_reporter();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tonic::transport::Server::builder()
            .tls_config(kms_runtime::tls::server_config(&tls).unwrap())
            .unwrap()
            .add_service(health);
        tokio::spawn(
            server.serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let client = certs.client(crate::dev::ACCOUNT_PRINCIPAL).unwrap();
        let files = TlsFiles {
            ca: certs.ca.cert.clone(),
            cert: client.cert.clone(),
            key: client.key.clone(),
        };
        let channel = connect(Plane::Data, &format!("http://{addr}"), Some(&files))
            .await
            .unwrap();
        let status = tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, 1);
        // Unreadable files are reported before connecting.
        let missing = TlsFiles {
            ca: tmp.path().join("nope.pem"),
            ..files
        };
        let err = connect(Plane::Data, &format!("http://{addr}"), Some(&missing))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope.pem"), "{err}");
    }

    #[tokio::test]
    async fn unreachable_plane_is_named() {
        // Port 1 on localhost: nothing listens there in a test environment.
        let err = connect(Plane::Data, "http://127.0.0.1:1", None)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("data plane") && err.contains("127.0.0.1:1"),
            "{err}"
        );
        assert!(err.contains("kmsctl dev up"), "{err}");
    }
}
