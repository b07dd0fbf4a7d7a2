//! Where the planes are and who calls them: flags, `dev.json`, channels (plain or mTLS, one per
//! `--connections`), the principal header, and errors that say what to do.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use kms_proto::kms::v1::crypto_service_client::CryptoServiceClient;
use kms_proto::kms::v1::key_management_service_client::KeyManagementServiceClient;
use kms_proto::kms::v1::kms_instance_service_client::KmsInstanceServiceClient;
use serde::Deserialize;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// The metadata header carrying the caller's principal in development.
const PRINCIPAL_HEADER: &str = "x-kms-principal";
/// How long to wait for a TCP (and TLS) connection to a plane.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one call may take before it counts as `DEADLINE_EXCEEDED`.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Connection flags shared by every subcommand.
#[derive(Debug, Clone, Args)]
pub(crate) struct ConnectArgs {
    /// Control-plane URL [default: http://127.0.0.1:7700, or dev.json's]
    #[arg(long, env = "KMS_CONTROL_ADDR", value_name = "URL")]
    pub(crate) control: Option<String>,
    /// Data-plane URL [default: http://127.0.0.1:7701, or dev.json's]
    #[arg(long, env = "KMS_DATA_ADDR", value_name = "URL")]
    pub(crate) data: Option<String>,
    /// The `dev.json` that `kmsctl dev up` writes: addresses, principals, KMS instances, mTLS
    /// files and (beside it) the data plane's config and SoftHSM2 token for the HSM baseline.
    /// Flags given explicitly win over it
    #[arg(long, value_name = "FILE")]
    pub(crate) dev_json: Option<PathBuf>,
    /// Principal ARN to call as, sent in the development header `x-kms-principal`
    /// [default: dev.json's account principal]
    #[arg(long, env = "KMS_PRINCIPAL", value_name = "ARN")]
    pub(crate) principal: Option<String>,
    /// Operator principal ARN, used only to create a KMS instance for the run when none with
    /// room is given [default: dev.json's operator principal]
    #[arg(long, value_name = "ARN")]
    pub(crate) operator_principal: Option<String>,
    /// The caller's account id, owner of a KMS instance made for the run [default: from
    /// --principal, or dev.json's account principal]; needed over mTLS without either
    #[arg(long, value_name = "ACCOUNT_ID")]
    pub(crate) account: Option<String>,
    /// mTLS: CA bundle the planes' certificates chain to (the development header is then not
    /// sent unless --principal is given)
    #[arg(long, env = "KMS_CA", value_name = "FILE", requires_all = ["cert", "cert_key"])]
    pub(crate) ca: Option<PathBuf>,
    /// mTLS: client certificate naming the caller
    #[arg(long, env = "KMS_CERT", value_name = "FILE", requires = "ca")]
    pub(crate) cert: Option<PathBuf>,
    /// mTLS: the client certificate's private key
    #[arg(long, env = "KMS_KEY", value_name = "FILE", requires = "ca")]
    pub(crate) cert_key: Option<PathBuf>,
    /// mTLS: an operator's certificate, to create a KMS instance for the run
    #[arg(long, value_name = "FILE", requires = "operator_cert_key")]
    pub(crate) operator_cert: Option<PathBuf>,
    /// mTLS: the operator certificate's private key
    #[arg(long, value_name = "FILE", requires = "operator_cert")]
    pub(crate) operator_cert_key: Option<PathBuf>,
    /// HTTP/2 connections (channels) to each plane; requests are spread over them
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub(crate) connections: u16,
}

/// What `kmsctl dev up` writes to `dev.json` (the fields kms-bench reads).
#[derive(Debug, Default, Clone, Deserialize)]
pub(crate) struct DevJson {
    #[serde(default)]
    control_addr: String,
    #[serde(default)]
    data_addr: String,
    #[serde(default)]
    operator_principal: String,
    #[serde(default)]
    pub(crate) account_principal: String,
    #[serde(default)]
    pub(crate) software_instance_id: String,
    #[serde(default)]
    pub(crate) hardware_instance_id: String,
    #[serde(default)]
    mtls: bool,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    account_cert_file: Option<PathBuf>,
    #[serde(default)]
    account_key_file: Option<PathBuf>,
    #[serde(default)]
    operator_cert_file: Option<PathBuf>,
    #[serde(default)]
    operator_key_file: Option<PathBuf>,
    /// The directory holding the file (not in the file).
    #[serde(skip)]
    pub(crate) dir: PathBuf,
}

impl DevJson {
    /// Reads `path`.
    pub(crate) fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read {} (written by `kmsctl dev up --dir DIR` as DIR/dev.json)",
                path.display()
            )
        })?;
        let mut dev: DevJson = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a dev.json", path.display()))?;
        dev.dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Ok(dev)
    }
}

/// mTLS files.
#[derive(Debug, Clone)]
pub(crate) struct TlsFiles {
    pub(crate) ca: PathBuf,
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

/// How to call as one identity: a development header, a client certificate, or both.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    /// The principal ARN sent in the header, if any.
    pub(crate) principal: Option<String>,
    pub(crate) tls: Option<TlsFiles>,
}

impl Identity {
    /// How this identity is named in messages.
    pub(crate) fn describe(&self) -> String {
        match (&self.principal, &self.tls) {
            (Some(p), _) => p.clone(),
            (None, Some(t)) => format!("the principal of the certificate {}", t.cert.display()),
            (None, None) => "no principal".into(),
        }
    }

    /// The account id of the principal, when the principal is known.
    pub(crate) fn account(&self) -> Option<String> {
        let p = self.principal.as_deref()?;
        let rest = p.strip_prefix("acs:ram::")?;
        let account = rest.split(':').next()?;
        (!account.is_empty()).then(|| account.to_string())
    }
}

/// Everything resolved from flags and `dev.json`.
#[derive(Debug, Clone)]
pub(crate) struct Planes {
    pub(crate) control: String,
    pub(crate) data: String,
    pub(crate) caller: Identity,
    pub(crate) operator: Option<Identity>,
    pub(crate) dev: Option<DevJson>,
    pub(crate) connections: usize,
    /// `--account`.
    pub(crate) account: Option<String>,
}

impl Planes {
    /// Resolves `args`: explicit flags first, then `dev.json`, then the defaults.
    pub(crate) fn resolve(args: &ConnectArgs) -> Result<Self> {
        let dev = args.dev_json.as_deref().map(DevJson::read).transpose()?;
        let from_dev =
            |f: fn(&DevJson) -> &String| dev.as_ref().map(f).filter(|s| !s.is_empty()).cloned();
        let control = args
            .control
            .clone()
            .or_else(|| from_dev(|d| &d.control_addr))
            .unwrap_or_else(|| "http://127.0.0.1:7700".into());
        let data = args
            .data
            .clone()
            .or_else(|| from_dev(|d| &d.data_addr))
            .unwrap_or_else(|| "http://127.0.0.1:7701".into());
        let dev_tls = |cert: fn(&DevJson) -> &Option<PathBuf>,
                       key: fn(&DevJson) -> &Option<PathBuf>| {
            let d = dev.as_ref().filter(|d| d.mtls)?;
            Some(TlsFiles {
                ca: d.ca_file.clone()?,
                cert: cert(d).clone()?,
                key: key(d).clone()?,
            })
        };
        let tls = match (&args.ca, &args.cert, &args.cert_key) {
            (Some(ca), Some(cert), Some(key)) => Some(TlsFiles {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => dev_tls(|d| &d.account_cert_file, |d| &d.account_key_file),
        };
        let principal = args
            .principal
            .clone()
            .or_else(|| from_dev(|d| &d.account_principal).filter(|_| tls.is_none()));
        if principal.is_none() && tls.is_none() {
            bail!(
                "no identity to call with: pass --principal ARN (or set KMS_PRINCIPAL, e.g. \
                 `export KMS_PRINCIPAL=acs:ram::1234567890123456:root`), --dev-json DIR/dev.json \
                 from `kmsctl dev up`, or mTLS files with --ca, --cert and --cert-key"
            );
        }
        if let Some(p) = &principal {
            p.parse::<MetadataValue<Ascii>>()
                .map_err(|_| anyhow::anyhow!("principal {p:?} is not a valid header value"))?;
        }
        let operator_tls = match (&args.operator_cert, &args.operator_cert_key, &tls) {
            (Some(cert), Some(key), Some(t)) => Some(TlsFiles {
                ca: t.ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => dev_tls(|d| &d.operator_cert_file, |d| &d.operator_key_file),
        };
        let operator_principal = args
            .operator_principal
            .clone()
            .or_else(|| from_dev(|d| &d.operator_principal).filter(|_| operator_tls.is_none()));
        let operator = match (operator_principal, operator_tls) {
            (None, None) => None,
            (principal, tls) => Some(Identity { principal, tls }),
        };
        let (control, data) = if tls.is_some() {
            (https(&control), https(&data))
        } else {
            (control, data)
        };
        Ok(Self {
            control,
            data,
            caller: Identity { principal, tls },
            operator,
            dev,
            connections: usize::from(args.connections),
            account: args.account.clone(),
        })
    }

    /// The caller's account id: from the principal, or dev.json's account principal.
    pub(crate) fn account(&self) -> Option<String> {
        if let Some(a) = &self.account {
            return Some(a.clone());
        }
        self.caller.account().or_else(|| {
            let dev = self.dev.as_ref()?;
            Identity {
                principal: Some(dev.account_principal.clone()),
                tls: None,
            }
            .account()
        })
    }

    /// `connections` channels to the data plane.
    pub(crate) async fn data_channels(&self) -> Result<Vec<Channel>> {
        channels(
            Plane::Data,
            &self.data,
            self.caller.tls.as_ref(),
            self.connections,
        )
        .await
    }

    /// `connections` channels to the control plane.
    pub(crate) async fn control_channels(&self) -> Result<Vec<Channel>> {
        channels(
            Plane::Control,
            &self.control,
            self.caller.tls.as_ref(),
            self.connections,
        )
        .await
    }

    /// A `KmsInstanceService` client calling as the operator, if one is known.
    pub(crate) async fn operator_instances(
        &self,
    ) -> Result<Option<KmsInstanceServiceClient<Authed>>> {
        let Some(op) = &self.operator else {
            return Ok(None);
        };
        let channel = connect(Plane::Control, &self.control, op.tls.as_ref()).await?;
        Ok(Some(KmsInstanceServiceClient::with_interceptor(
            channel,
            PrincipalHeader::of(op)?,
        )))
    }

    /// A `KmsInstanceService` client calling as the caller.
    pub(crate) async fn caller_instances(&self) -> Result<KmsInstanceServiceClient<Authed>> {
        let channel = connect(Plane::Control, &self.control, self.caller.tls.as_ref()).await?;
        Ok(KmsInstanceServiceClient::with_interceptor(
            channel,
            PrincipalHeader::of(&self.caller)?,
        ))
    }

    /// Clients of both planes over `data` and `control` channels, calling as the caller.
    pub(crate) fn clients(&self, data: &[Channel], control: &[Channel]) -> Result<Clients> {
        let header = PrincipalHeader::of(&self.caller)?;
        Ok(Clients {
            crypto: data
                .iter()
                .map(|c| CryptoServiceClient::with_interceptor(c.clone(), header.clone()))
                .collect(),
            keys: control
                .iter()
                .map(|c| KeyManagementServiceClient::with_interceptor(c.clone(), header.clone()))
                .collect(),
        })
    }
}

/// A channel that adds the principal header, when there is one.
pub(crate) type Authed = InterceptedService<Channel, PrincipalHeader>;

/// The clients a load runs through: one per connection of each plane.
#[derive(Debug, Clone)]
pub(crate) struct Clients {
    pub(crate) crypto: Vec<CryptoServiceClient<Authed>>,
    pub(crate) keys: Vec<KeyManagementServiceClient<Authed>>,
}

impl Clients {
    /// The data-plane client for request `i`.
    pub(crate) fn crypto(&self, i: u64) -> CryptoServiceClient<Authed> {
        let n = self.crypto.len().max(1) as u64;
        self.crypto[(i % n) as usize].clone()
    }

    /// The control-plane client for request `i`.
    pub(crate) fn keys(&self, i: u64) -> KeyManagementServiceClient<Authed> {
        let n = self.keys.len().max(1) as u64;
        self.keys[(i % n) as usize].clone()
    }
}

/// Adds `x-kms-principal` to every call when a principal is set.
#[derive(Debug, Clone)]
pub(crate) struct PrincipalHeader(Option<MetadataValue<Ascii>>);

impl PrincipalHeader {
    pub(crate) fn of(identity: &Identity) -> Result<Self> {
        match &identity.principal {
            None => Ok(Self(None)),
            Some(p) => Ok(Self(Some(p.parse().map_err(|_| {
                anyhow::anyhow!("principal {p:?} is not a valid header value")
            })?))),
        }
    }

    /// No header.
    pub(crate) fn none() -> Self {
        Self(None)
    }
}

impl Interceptor for PrincipalHeader {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert(PRINCIPAL_HEADER, v.clone());
        }
        Ok(request)
    }
}

/// Which plane, for messages.
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

fn https(url: &str) -> String {
    match url.strip_prefix("http://") {
        Some(rest) => format!("https://{rest}"),
        None => url.to_string(),
    }
}

/// An endpoint for `url` with kms-bench's timeouts.
pub(crate) fn endpoint(url: &str) -> Result<Endpoint> {
    Ok(Endpoint::from_shared(url.to_string())
        .map_err(|e| anyhow::anyhow!("invalid address {url:?}: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT))
}

fn tls_config(files: &TlsFiles) -> Result<ClientTlsConfig> {
    kms_runtime::tls::client_config(&files.ca, &files.cert, &files.key)
        .with_context(|| "cannot use the mTLS files (--ca, --cert, --cert-key)".to_string())
}

/// One connection to `plane` at `url`, over mTLS with `tls`.
async fn connect(plane: Plane, url: &str, tls: Option<&TlsFiles>) -> Result<Channel> {
    let mut ep = endpoint(url)?;
    if let Some(files) = tls {
        ep = ep
            .tls_config(tls_config(files)?)
            .map_err(|e| anyhow::anyhow!("cannot use TLS for {url}: {}", chain(&e)))?;
    } else if url.starts_with("https://") {
        bail!(
            "{url} is an https address but no mTLS files were given: pass --ca, --cert and \
             --cert-key, or --dev-json of a `kmsctl dev up --mtls` stack"
        );
    }
    ep.connect().await.map_err(|e| {
        let (flag, var) = match plane {
            Plane::Control => ("--control", "KMS_CONTROL_ADDR"),
            Plane::Data => ("--data", "KMS_DATA_ADDR"),
        };
        anyhow::anyhow!(
            "cannot reach the {plane} at {url} ({})\nhint: is it running? Start a local stack \
             with `kmsctl dev up --dir .dev` and pass --dev-json .dev/dev.json, or point {flag} \
             / {var} at it{}",
            chain(&e),
            if tls.is_some() {
                "; over mTLS, check that --ca signed the server's certificate"
            } else {
                ""
            }
        )
    })
}

async fn channels(
    plane: Plane,
    url: &str,
    tls: Option<&TlsFiles>,
    n: usize,
) -> Result<Vec<Channel>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        out.push(connect(plane, url, tls).await?);
    }
    Ok(out)
}

/// The messages of an error and its sources, joined by `: `, without repeats.
pub(crate) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
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

/// The reason code of a status: its `ErrorInfo` detail, else the message's leading
/// `Reason.Code:` word, else empty.
pub(crate) fn reason(status: &Status) -> String {
    if let Some(info) = status.get_details_error_info() {
        return info.reason;
    }
    match status.message().split_once(':') {
        Some((head, _)) if !head.is_empty() && !head.contains(char::is_whitespace) => {
            head.to_string()
        }
        _ => String::new(),
    }
}

/// A status from a setup call, as an error saying what `who` was refused and what to do.
pub(crate) fn setup_error(status: Status, what: &str, who: &Identity) -> anyhow::Error {
    let code = code_name(status.code());
    let reason = reason(&status);
    let shown = if reason.is_empty() || status.message().starts_with(&reason) {
        format!("{code}: {}", status.message())
    } else {
        format!("{code}: {reason}: {}", status.message())
    };
    let hint = match status.code() {
        Code::PermissionDenied | Code::Unauthenticated => format!(
            "\nhint: {} may not do this; call as the account's root principal or one its key \
             policies allow (--principal, or --dev-json for the dev stack's), or pass --key / \
             --instance that this principal may use",
            who.describe()
        ),
        Code::NotFound => format!(
            "\nhint: {} sees no such resource; check --key / --instance, and that they belong to \
             the caller's account",
            who.describe()
        ),
        Code::ResourceExhausted => "\nhint: the instance's key quota or a rate limit is used \
                                    up; pass --instance with room, or let kms-bench make one as \
                                    an operator (--operator-principal)"
            .to_string(),
        _ => String::new(),
    };
    anyhow::anyhow!("{what} as {} failed: {shown}{hint}", who.describe())
}

/// The canonical gRPC name of a code, as in `NOT_FOUND`.
pub(crate) use kms_runtime::audit::code_name;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn account_comes_from_the_principal() {
        let id = Identity {
            principal: Some("acs:ram::1234567890123456:root".into()),
            tls: None,
        };
        assert_eq!(id.account().as_deref(), Some("1234567890123456"));
        let none = Identity {
            principal: None,
            tls: None,
        };
        assert_eq!(none.account(), None);
    }

    #[test]
    fn reason_from_message_or_details() {
        let st = Status::failed_precondition("Rejected.Disabled: the key is disabled");
        assert_eq!(reason(&st), "Rejected.Disabled");
        assert_eq!(reason(&Status::unavailable("plane away")), "");
    }

    #[test]
    fn dev_json_fills_what_flags_leave_out() {
        let dir = std::env::temp_dir().join(format!("kms-bench-devjson-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("dev.json");
        std::fs::write(
            &path,
            r#"{"control_addr":"http://127.0.0.1:17700","data_addr":"http://127.0.0.1:17701",
               "operator_principal":"acs:ram::1000000000000000:user/operator",
               "account_principal":"acs:ram::1234567890123456:root",
               "software_instance_id":"kst-1","hardware_instance_id":"kst-2"}"#,
        )
        .unwrap();
        let args = ConnectArgs {
            control: None,
            data: Some("http://127.0.0.1:9".into()),
            dev_json: Some(path),
            principal: None,
            operator_principal: None,
            account: None,
            ca: None,
            cert: None,
            cert_key: None,
            operator_cert: None,
            operator_cert_key: None,
            connections: 2,
        };
        let planes = Planes::resolve(&args).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(planes.control, "http://127.0.0.1:17700");
        assert_eq!(planes.data, "http://127.0.0.1:9");
        assert_eq!(
            planes.caller.principal.as_deref(),
            Some("acs:ram::1234567890123456:root")
        );
        assert!(planes.operator.is_some());
        assert_eq!(planes.dev.unwrap().software_instance_id, "kst-1");
    }
}
