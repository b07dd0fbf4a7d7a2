//! `kmsctl dev up`: runs both planes locally in the foreground against a SoftHSM token kept in
//! a directory, so keys survive restarts. Generates the configs, starts `kms-data` and
//! `kms-control`, waits for their health checks, and stops them on SIGINT or SIGTERM.
//!
//! Callers are identified by the development header, or with `--mtls` by client certificates
//! from a dev CA kept under `DIR/certs`, plane to plane too.

use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Serialize;
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::Instant;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::certs::{CertFiles, DevCerts, existing_dev_certs, generate_dev_certs};
use crate::client::{RpcError, TlsFiles, error_chain};

mod configs;
mod hsm;
mod process;

use configs::*;
use hsm::*;
use process::*;

/// The operator principal the generated control-plane config names.
pub(crate) const OPERATOR_PRINCIPAL: &str = "acs:ram::1000000000000000:user/operator";
/// An ordinary account principal to try the service with.
pub(crate) const ACCOUNT_PRINCIPAL: &str = "acs:ram::1234567890123456:root";
pub(crate) const CONTROL_SERVICE_PRINCIPAL: &str =
    "acs:ram::1000000000000000:role/kms-control-plane";
pub(crate) const DATA_SERVICE_PRINCIPAL: &str = "acs:ram::1000000000000000:role/kms-data-plane";

/// Options of `kmsctl dev up`.
#[derive(Debug, Args)]
pub(crate) struct UpArgs {
    /// Directory for the SoftHSM token, control-plane data, logs and generated configs;
    /// created if needed and reused on the next start
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// Address kms-control listens on
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:7700", value_parser = parse_listen_addr)]
    control_addr: SocketAddr,
    /// Address kms-data listens on
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:7701", value_parser = parse_listen_addr)]
    data_addr: SocketAddr,
    /// Directory holding the kms-control and kms-data binaries [default: the directory of
    /// kmsctl itself]
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// Serve mTLS on both planes (plane to plane too) and identify callers by client
    /// certificates instead of the development header; certificates for the dev principals
    /// are made under DIR/certs on first use
    #[arg(long)]
    mtls: bool,
}

/// Parses a listen address; a leading `http://` is tolerated, port 0 is refused.
fn parse_listen_addr(s: &str) -> Result<SocketAddr, String> {
    let trimmed = s.trim();
    let bare = trimmed
        .strip_prefix("http://")
        .unwrap_or(trimmed)
        .trim_end_matches('/');
    let addr: SocketAddr = bare
        .parse()
        .map_err(|_| format!("{s:?} is not an IP:PORT address like 127.0.0.1:7700"))?;
    if addr.port() == 0 {
        return Err(format!("{s:?} needs a fixed port, not 0"));
    }
    Ok(addr)
}

/// `dev.json`: where things are, for scripts and tests.
#[derive(Debug, Serialize)]
pub(crate) struct DevInfo {
    control_addr: String,
    data_addr: String,
    operator_principal: String,
    account_principal: String,
    software_instance_id: String,
    hardware_instance_id: String,
    /// With `--mtls` only.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    tls: Option<DevInfoTls>,
}

/// The `dev.json` entries of `--mtls`: the files kmsctl's `--ca`, `--cert` and `--cert-key`
/// take.
#[derive(Debug, Serialize)]
struct DevInfoTls {
    mtls: bool,
    ca_file: PathBuf,
    account_cert_file: PathBuf,
    account_key_file: PathBuf,
    operator_cert_file: PathBuf,
    operator_key_file: PathBuf,
}

impl DevInfo {
    /// The same info naming the account's software and hardware instances.
    fn with_instances(mut self, instances: DevInstances) -> Self {
        self.software_instance_id = instances.software;
        self.hardware_instance_id = instances.hardware;
        self
    }

    fn new(control: SocketAddr, data: SocketAddr, tls: Option<&DevTls>) -> Self {
        Self {
            control_addr: plane_url(control, tls.is_some()),
            data_addr: plane_url(data, tls.is_some()),
            operator_principal: OPERATOR_PRINCIPAL.into(),
            account_principal: ACCOUNT_PRINCIPAL.into(),
            software_instance_id: String::new(),
            hardware_instance_id: String::new(),
            tls: tls.map(|t| DevInfoTls {
                mtls: true,
                ca_file: t.ca.clone(),
                account_cert_file: t.account.cert.clone(),
                account_key_file: t.account.key.clone(),
                operator_cert_file: t.operator.cert.clone(),
                operator_key_file: t.operator.key.clone(),
            }),
        }
    }
}

/// The KMS instances `dev up` keeps for [`ACCOUNT_PRINCIPAL`]'s account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DevInstances {
    software: String,
    hardware: String,
}

/// The account of [`ACCOUNT_PRINCIPAL`].
fn dev_account() -> &'static str {
    ACCOUNT_PRINCIPAL
        .trim_start_matches("acs:ram::")
        .split(':')
        .next()
        .unwrap_or_default()
}

/// Finds the account's software and hardware instances, as the operator, and creates the ones
/// missing: on the first start both, afterwards none (they live in the control plane's data).
/// Over mTLS with the operator's certificate when `tls` is given.
async fn ensure_instances(
    control: SocketAddr,
    tls: Option<&DevTls>,
) -> anyhow::Result<DevInstances> {
    use kms_proto::kms::v1::kms_instance_service_client::KmsInstanceServiceClient;
    use kms_proto::kms::v1::{CreateKmsInstanceRequest, InstanceType, ListKmsInstancesRequest};

    let url = plane_url(control, tls.is_some());
    let (endpoint, header) = match tls {
        None => (
            crate::client::endpoint(&url)?,
            crate::client::PrincipalHeader::new(OPERATOR_PRINCIPAL)?,
        ),
        Some(tls) => (
            crate::client::tls_endpoint(&url, &tls.files(&tls.operator))?.1,
            crate::client::PrincipalHeader::none(),
        ),
    };
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot reach kms-control on {url}"))?;
    let mut client = KmsInstanceServiceClient::with_interceptor(channel, header);
    let mut found: Vec<(i32, String)> = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_kms_instances(ListKmsInstancesRequest {
                page_size: 100,
                page_token,
            })
            .await
            .map_err(RpcError)?
            .into_inner();
        found.extend(
            page.kms_instances
                .into_iter()
                .filter(|i| i.owner_account_id == dev_account())
                .map(|i| (i.instance_type, i.kms_instance_id)),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let mut ids = Vec::with_capacity(2);
    for kind in [InstanceType::Software, InstanceType::Hardware] {
        let existing = found
            .iter()
            .find(|(t, _)| *t == kind as i32)
            .map(|(_, id)| id.clone());
        let id = match existing {
            Some(id) => id,
            None => client
                .create_kms_instance(CreateKmsInstanceRequest {
                    instance_type: kind as i32,
                    owner_account_id: dev_account().to_string(),
                    key_quota: 1000,
                    access_management_quota: 5,
                })
                .await
                .map_err(RpcError)?
                .into_inner()
                .kms_instance
                .map(|i| i.kms_instance_id)
                .context("kms-control answered without the new instance")?,
        };
        ids.push(id);
    }
    let hardware = ids.pop().unwrap_or_default();
    let software = ids.pop().unwrap_or_default();
    Ok(DevInstances { software, hardware })
}

/// Quotes a word for a POSIX shell when it needs it.
fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:=@,%".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// How to call this kmsctl from the current directory.
fn kmsctl_path() -> String {
    let Ok(exe) = std::env::current_exe() else {
        return "kmsctl".to_string();
    };
    let shown = std::env::current_dir()
        .ok()
        .and_then(|cwd| exe.strip_prefix(&cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| exe.clone());
    shell_quote(&shown.to_string_lossy())
}

/// The copy-pasteable commands printed once the planes are ready; calling over mTLS with
/// `tls`.
pub(crate) fn try_this(
    kmsctl: &str,
    control: SocketAddr,
    data: SocketAddr,
    tls: Option<&DevTls>,
) -> String {
    let mtls = tls.is_some();
    // kmsctl's defaults, which it turns into https:// itself over mTLS.
    let flag = |name: &str, addr: SocketAddr, default: SocketAddr| {
        let url = plane_url(addr, mtls);
        if url == plane_url(default, mtls) {
            String::new()
        } else {
            format!(" --{name} {url}")
        }
    };
    let control_flag = flag("control", control, DEFAULT_CONTROL_ADDR);
    let data_flag = flag("data", data, DEFAULT_DATA_ADDR);
    let q = |p: &Path| shell_quote(&p.to_string_lossy());
    let (identity, operator) = match tls {
        None => (
            format!("export KMS_PRINCIPAL={ACCOUNT_PRINCIPAL}"),
            format!("--principal {OPERATOR_PRINCIPAL}"),
        ),
        Some(tls) => (
            format!(
                "export KMS_CA={} KMS_CERT={} KMS_KEY={}",
                q(&tls.ca),
                q(&tls.account.cert),
                q(&tls.account.key)
            ),
            format!(
                "--cert {} --cert-key {}",
                q(&tls.operator.cert),
                q(&tls.operator.key)
            ),
        ),
    };
    format!(
        "Try this in another terminal:\n\
         \x20 {identity}\n\
         \x20 {kmsctl}{control_flag} create-key --alias alias/demo --description \"my first key\"\n\
         \x20 {kmsctl}{control_flag} describe-key alias/demo\n\
         \x20 {kmsctl}{data_flag} encrypt --key alias/demo --plaintext 'hello' > blob.b64\n\
         \x20 {kmsctl}{data_flag} decrypt --in blob.b64\n\
         Operator calls: {operator}\n"
    )
}

/// kmsctl's default plane addresses, which the commands printed by [`try_this`] can leave out.
const DEFAULT_CONTROL_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7700);
const DEFAULT_DATA_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7701);

enum Outcome {
    Signal(&'static str),
    Exited(usize, std::io::Result<ExitStatus>),
}

/// `kmsctl dev up`.
pub(crate) async fn up(args: UpArgs) -> anyhow::Result<ExitCode> {
    if args.control_addr == args.data_addr {
        anyhow::bail!("--control-addr and --data-addr must differ");
    }
    if args.mtls {
        check_tls_addr(args.control_addr, "--control-addr")?;
        check_tls_addr(args.data_addr, "--data-addr")?;
    }
    let (control_bin, data_bin) = find_binaries(args.bin_dir.as_deref())?;
    let module = find_module()?;
    check_port_free("kms-control", args.control_addr, "--control-addr")?;
    check_port_free("kms-data", args.data_addr, "--data-addr")?;
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let dir = std::fs::canonicalize(&args.dir)
        .with_context(|| format!("cannot resolve {}", args.dir.display()))?;
    let layout = Layout::new(&dir);
    layout.create_dirs()?;
    println!("dev directory: {}", layout.dir.display());

    write_file(&layout.softhsm_conf, &render_softhsm_conf(&layout))?;
    ensure_token(&layout).await?;
    let tls = if args.mtls {
        Some(ensure_certs(&layout)?)
    } else {
        None
    };
    let tls = tls.as_ref();
    write_file(
        &layout.control_toml,
        &render_control_toml(&layout, args.control_addr, args.data_addr, tls),
    )?;
    write_file(
        &layout.data_toml,
        &render_data_toml(&layout, args.control_addr, args.data_addr, &module, tls),
    )?;

    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;

    let mut planes = Vec::with_capacity(2);
    planes.push(
        Plane::start(
            "kms-data",
            &data_bin,
            &layout.data_toml,
            args.data_addr,
            &layout,
            Some(&layout.softhsm_conf),
        )
        .await?,
    );
    let control = Plane::start(
        "kms-control",
        &control_bin,
        &layout.control_toml,
        args.control_addr,
        &layout,
        None,
    )
    .await;
    match control {
        Ok(p) => planes.push(p),
        Err(e) => {
            stop_all(&mut planes).await;
            return Err(e);
        }
    }

    let deadline = Instant::now() + READY_TIMEOUT;
    for target in 0..planes.len() {
        let health = match health_endpoint(planes[target].addr, tls) {
            Ok(h) => h,
            Err(e) => {
                stop_all(&mut planes).await;
                return Err(e);
            }
        };
        print!(
            "waiting for {} on {} ... ",
            planes[target].name, planes[target].addr
        );
        let _ = std::io::stdout().flush();
        let result = tokio::select! {
            biased;
            _ = sigint.recv() => Err(None),
            _ = sigterm.recv() => Err(None),
            r = wait_ready(&mut planes, target, &health, deadline) => r.map_err(Some),
        };
        match result {
            Ok(()) => println!("ready"),
            Err(None) => {
                println!("interrupted");
                stop_all(&mut planes).await;
                println!("stopped");
                return Ok(ExitCode::SUCCESS);
            }
            Err(Some(failure)) => {
                println!("failed");
                match failure {
                    StartFailure::Exited(i, status) => {
                        planes[i].print_failure(&format!("exited during startup ({status})"));
                    }
                    StartFailure::Timeout(i, last) => planes[i].print_failure(&format!(
                        "did not become ready on {} within {} s (last health check: {last})",
                        planes[i].addr,
                        READY_TIMEOUT.as_secs()
                    )),
                }
                stop_all(&mut planes).await;
                println!("stopped");
                return Ok(ExitCode::FAILURE);
            }
        }
    }

    let mut info = DevInfo::new(args.control_addr, args.data_addr, tls);
    match ensure_instances(args.control_addr, tls).await {
        Ok(instances) => {
            println!(
                "KMS instances of account {}: software {}, hardware {}",
                dev_account(),
                instances.software,
                instances.hardware
            );
            info = info.with_instances(instances);
        }
        Err(e) => eprintln!("warning: cannot set up the dev KMS instances: {e:#}"),
    }
    write_file(
        &layout.dev_json,
        &format!("{}\n", serde_json::to_string_pretty(&info)?),
    )?;
    println!();
    println!(
        "kms-control: {}  (log: {})",
        plane_url(args.control_addr, args.mtls),
        planes[1].log.display()
    );
    println!(
        "kms-data:    {}  (log: {})",
        plane_url(args.data_addr, args.mtls),
        planes[0].log.display()
    );
    println!();
    print!(
        "{}",
        try_this(&kmsctl_path(), args.control_addr, args.data_addr, tls)
    );
    println!();
    println!("Press Ctrl-C to stop.");
    let _ = std::io::stdout().flush();

    let outcome = {
        let [data, control] = planes.as_mut_slice() else {
            anyhow::bail!("internal error: expected two planes");
        };
        tokio::select! {
            biased;
            _ = sigint.recv() => Outcome::Signal("SIGINT"),
            _ = sigterm.recv() => Outcome::Signal("SIGTERM"),
            s = data.child.wait() => Outcome::Exited(0, s),
            s = control.child.wait() => Outcome::Exited(1, s),
        }
    };
    let code = match outcome {
        Outcome::Signal(name) => {
            println!("{name} received, stopping");
            ExitCode::SUCCESS
        }
        Outcome::Exited(i, status) => {
            let status = match status {
                Ok(s) => s.to_string(),
                Err(e) => format!("status unknown: {e}"),
            };
            planes[i].print_failure(&format!("exited unexpectedly ({status})"));
            ExitCode::FAILURE
        }
    };
    stop_all(&mut planes).await;
    println!("stopped");
    Ok(code)
}

fn write_file(path: &Path, contents: &str) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn addrs() -> (SocketAddr, SocketAddr) {
        (
            "127.0.0.1:8700".parse().unwrap(),
            "127.0.0.1:8701".parse().unwrap(),
        )
    }

    #[test]
    fn control_toml_parses_and_has_the_addresses() {
        let layout = Layout::new(Path::new("/tmp/kms dev/\"quoted\""));
        let (c, d) = addrs();
        let text = render_control_toml(&layout, c, d, None);
        assert!(text.starts_with("# Generated"));
        let t: toml::Table = text.parse().unwrap();
        assert_eq!(t["listen_addr"].as_str(), Some("127.0.0.1:8700"));
        assert_eq!(t["data_plane_url"].as_str(), Some("http://127.0.0.1:8701"));
        assert_eq!(t["region"].as_str(), Some("local"));
        assert_eq!(
            t["data_dir"].as_str(),
            Some("/tmp/kms dev/\"quoted\"/control")
        );
        assert_eq!(t["operators"][0].as_str(), Some(OPERATOR_PRINCIPAL));
        assert_eq!(t["identity"]["dev_header"].as_bool(), Some(true));
        assert_eq!(
            t["identity"]["service_principal"].as_str(),
            Some(CONTROL_SERVICE_PRINCIPAL)
        );
        assert_eq!(
            t["identity"]["peer_principal"].as_str(),
            Some(DATA_SERVICE_PRINCIPAL)
        );
        assert_eq!(t["log"]["format"].as_str(), Some("text"));
    }

    #[test]
    fn data_toml_parses_and_has_the_addresses() {
        let layout = Layout::new(Path::new("/srv/kms"));
        let (c, d) = addrs();
        let text = render_data_toml(
            &layout,
            c,
            d,
            Path::new("/usr/lib/softhsm/libsofthsm2.so"),
            None,
        );
        let t: toml::Table = text.parse().unwrap();
        assert_eq!(t["listen_addr"].as_str(), Some("127.0.0.1:8701"));
        assert_eq!(
            t["control_plane_url"].as_str(),
            Some("http://127.0.0.1:8700")
        );
        assert_eq!(
            t["hsm"]["module_path"].as_str(),
            Some("/usr/lib/softhsm/libsofthsm2.so")
        );
        assert_eq!(t["hsm"]["token_label"].as_str(), Some("kms"));
        assert_eq!(t["hsm"]["user_pin_file"].as_str(), Some("/srv/kms/hsm.pin"));
        assert_eq!(t["hsm"]["root_key_label"].as_str(), Some("kms-root-v1"));
        assert_eq!(t["hsm"]["max_sessions"].as_integer(), Some(8));
        assert_eq!(t["key_cache"]["ttl_ms"].as_integer(), Some(300000));
        assert_eq!(
            t["identity"]["service_principal"].as_str(),
            Some(DATA_SERVICE_PRINCIPAL)
        );
        assert_eq!(
            t["identity"]["peer_principal"].as_str(),
            Some(CONTROL_SERVICE_PRINCIPAL)
        );
    }

    #[test]
    fn ipv6_addresses_render_as_urls() {
        let layout = Layout::new(Path::new("/srv/kms"));
        let c: SocketAddr = "[::1]:7700".parse().unwrap();
        let d: SocketAddr = "[::1]:7701".parse().unwrap();
        let t: toml::Table = render_control_toml(&layout, c, d, None).parse().unwrap();
        assert_eq!(t["listen_addr"].as_str(), Some("[::1]:7700"));
        assert_eq!(t["data_plane_url"].as_str(), Some("http://[::1]:7701"));
    }

    #[test]
    fn softhsm_conf_names_the_token_dir() {
        let layout = Layout::new(Path::new("/srv/kms"));
        let text = render_softhsm_conf(&layout);
        assert!(
            text.contains("directories.tokendir = /srv/kms/softhsm/tokens\n"),
            "{text}"
        );
        assert!(text.contains("objectstore.backend = file\n"));
        assert!(text.contains("slots.removable = false\n"));
    }

    #[test]
    fn dev_json_shape() {
        let (c, d) = addrs();
        let v = serde_json::to_value(DevInfo::new(c, d, None)).unwrap();
        assert_eq!(v["control_addr"], "http://127.0.0.1:8700");
        assert_eq!(v["data_addr"], "http://127.0.0.1:8701");
        assert_eq!(v["account_principal"], ACCOUNT_PRINCIPAL);
        assert_eq!(v["software_instance_id"], "");
        let v = serde_json::to_value(DevInfo::new(c, d, None).with_instances(DevInstances {
            software: "kst-s".into(),
            hardware: "kst-h".into(),
        }))
        .unwrap();
        assert_eq!(v["software_instance_id"], "kst-s");
        assert_eq!(v["hardware_instance_id"], "kst-h");
        assert_eq!(dev_account(), "1234567890123456");
        assert!(v.get("mtls").is_none() && v.get("ca_file").is_none(), "{v}");
    }

    /// A dev directory with certificates made by `dev up --mtls`.
    fn mtls_layout() -> (tempfile::TempDir, Layout, DevTls) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().canonicalize().unwrap();
        let layout = Layout::new(&dir);
        let tls = ensure_certs(&layout).unwrap();
        (tmp, layout, tls)
    }

    /// The `[identity]` table of a rendered config, checked as the servers check it, TLS files
    /// read and all.
    fn check_identity(t: &toml::Table, me: &str, peer: &str) -> kms_runtime::tls::TlsConfig {
        let identity: kms_runtime::identity::IdentityConfig =
            t["identity"].clone().try_into().unwrap();
        identity.validate().unwrap();
        assert!(!identity.dev_header);
        assert_eq!(identity.service_principal, me);
        assert_eq!(identity.peer_principal, peer);
        let tls = identity.tls.unwrap();
        assert!(tls.require_client_cert);
        kms_runtime::tls::server_config(&tls).unwrap();
        tls.peer_client_config().unwrap();
        tls
    }

    #[test]
    fn mtls_configs_parse_and_name_the_certificates() {
        let (_tmp, layout, tls) = mtls_layout();
        let certs = &layout.certs;
        let (c, d) = addrs();

        let t: toml::Table = render_control_toml(&layout, c, d, Some(&tls))
            .parse()
            .unwrap();
        assert_eq!(t["data_plane_url"].as_str(), Some("https://127.0.0.1:8701"));
        assert_eq!(t["identity"]["dev_header"].as_bool(), Some(false));
        let control = check_identity(&t, CONTROL_SERVICE_PRINCIPAL, DATA_SERVICE_PRINCIPAL);
        assert_eq!(control.cert_file, certs.join("control.pem"));
        assert_eq!(control.key_file, certs.join("control-key.pem"));
        assert_eq!(control.client_ca_file, certs.join("ca.pem"));
        assert_eq!(
            control.client_cert_file,
            Some(certs.join("client-1000000000000000-role-kms-control-plane.pem"))
        );
        assert_eq!(
            control.client_key_file,
            Some(certs.join("client-1000000000000000-role-kms-control-plane-key.pem"))
        );
        assert_eq!(control.server_ca_file, None);
        assert_eq!(
            t["audit"]["path"]
                .as_str()
                .map(|p| p.ends_with("control-audit.log")),
            Some(true)
        );

        let t: toml::Table = render_data_toml(&layout, c, d, Path::new("/m.so"), Some(&tls))
            .parse()
            .unwrap();
        assert_eq!(
            t["control_plane_url"].as_str(),
            Some("https://127.0.0.1:8700")
        );
        assert_eq!(t["identity"]["dev_header"].as_bool(), Some(false));
        let data = check_identity(&t, DATA_SERVICE_PRINCIPAL, CONTROL_SERVICE_PRINCIPAL);
        assert_eq!(data.cert_file, certs.join("data.pem"));
        assert_eq!(data.key_file, certs.join("data-key.pem"));
        assert_eq!(data.client_ca_file, certs.join("ca.pem"));
        assert_eq!(
            data.client_cert_file,
            Some(certs.join("client-1000000000000000-role-kms-data-plane.pem"))
        );
        assert_eq!(t["hsm"]["module_path"].as_str(), Some("/m.so"));

        // Without --mtls the same configs keep the dev header and plain URLs.
        let t: toml::Table = render_data_toml(&layout, c, d, Path::new("/m.so"), None)
            .parse()
            .unwrap();
        assert_eq!(t["identity"]["dev_header"].as_bool(), Some(true));
        assert!(t["identity"].get("tls").is_none());
        assert_eq!(
            t["control_plane_url"].as_str(),
            Some("http://127.0.0.1:8700")
        );
    }

    #[test]
    fn mtls_urls_name_a_host_the_server_certificates_cover() {
        for (addr, plain, tls) in [
            (
                "127.0.0.1:7700",
                "http://127.0.0.1:7700",
                Some("https://127.0.0.1:7700"),
            ),
            (
                "0.0.0.0:7700",
                "http://0.0.0.0:7700",
                Some("https://127.0.0.1:7700"),
            ),
            ("[::1]:7700", "http://[::1]:7700", None),
            ("[::]:7700", "http://[::]:7700", None),
            ("10.1.2.3:7700", "http://10.1.2.3:7700", None),
            ("127.0.0.2:7700", "http://127.0.0.2:7700", None),
        ] {
            let addr: SocketAddr = addr.parse().unwrap();
            assert_eq!(plane_url(addr, false), plain);
            match tls {
                Some(url) => {
                    assert_eq!(plane_url(addr, true), url);
                    check_tls_addr(addr, "--data-addr").unwrap();
                }
                None => {
                    let err = check_tls_addr(addr, "--data-addr").unwrap_err().to_string();
                    assert!(
                        err.contains("--data-addr") && err.contains("127.0.0.1 or 0.0.0.0"),
                        "{err}"
                    );
                }
            }
        }
    }

    #[test]
    fn certificates_are_made_once_and_remade_when_incomplete() {
        let (_tmp, layout, tls) = mtls_layout();
        let ca = std::fs::read(&tls.ca).unwrap();
        assert_eq!(
            tls.account.cert,
            layout.certs.join("client-1234567890123456-root.pem")
        );
        assert_eq!(
            tls.operator.key,
            layout
                .certs
                .join("client-1000000000000000-user-operator-key.pem")
        );
        // Reused on the next start.
        let again = ensure_certs(&layout).unwrap();
        assert_eq!(std::fs::read(&again.ca).unwrap(), ca);
        // A missing file means a new set.
        std::fs::remove_file(&tls.data_client.key).unwrap();
        let remade = ensure_certs(&layout).unwrap();
        assert!(remade.data_client.key.is_file());
        assert_ne!(std::fs::read(&remade.ca).unwrap(), ca);
        // So does a certs directory holding none of them.
        let empty = tempfile::tempdir().unwrap();
        let layout = Layout::new(&empty.path().canonicalize().unwrap());
        std::fs::create_dir(&layout.certs).unwrap();
        let made = ensure_certs(&layout).unwrap();
        assert!(made.ca.is_file() && made.account.key.is_file());
    }

    #[test]
    fn dev_json_with_mtls_names_the_files() {
        let (_tmp, layout, tls) = mtls_layout();
        let (c, d) = addrs();
        let v = serde_json::to_value(DevInfo::new(c, d, Some(&tls))).unwrap();
        assert_eq!(v["mtls"], true);
        assert_eq!(v["control_addr"], "https://127.0.0.1:8700");
        assert_eq!(v["data_addr"], "https://127.0.0.1:8701");
        let path = |name: &str| layout.certs.join(name).to_string_lossy().into_owned();
        assert_eq!(v["ca_file"], path("ca.pem"));
        assert_eq!(
            v["account_cert_file"],
            path("client-1234567890123456-root.pem")
        );
        assert_eq!(
            v["account_key_file"],
            path("client-1234567890123456-root-key.pem")
        );
        assert_eq!(
            v["operator_cert_file"],
            path("client-1000000000000000-user-operator.pem")
        );
        assert_eq!(
            v["operator_key_file"],
            path("client-1000000000000000-user-operator-key.pem")
        );
        // The existing entries stay.
        assert_eq!(v["account_principal"], ACCOUNT_PRINCIPAL);
        assert_eq!(v["operator_principal"], OPERATOR_PRINCIPAL);
        assert_eq!(v["software_instance_id"], "");
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(
            parse_listen_addr("127.0.0.1:7700"),
            Ok("127.0.0.1:7700".parse().unwrap())
        );
        assert_eq!(
            parse_listen_addr("http://127.0.0.1:7700/"),
            Ok("127.0.0.1:7700".parse().unwrap())
        );
        assert!(
            parse_listen_addr("127.0.0.1:0")
                .unwrap_err()
                .contains("port")
        );
        assert!(
            parse_listen_addr("localhost")
                .unwrap_err()
                .contains("IP:PORT")
        );
    }

    #[test]
    fn try_this_uses_flags_only_for_non_default_addresses() {
        let default = try_this(
            "target/debug/kmsctl",
            "127.0.0.1:7700".parse().unwrap(),
            "127.0.0.1:7701".parse().unwrap(),
            None,
        );
        assert!(
            default.contains("  target/debug/kmsctl create-key --alias alias/demo"),
            "{default}"
        );
        assert!(
            !default.contains("--control") && !default.contains("--data"),
            "{default}"
        );
        let (c, d) = addrs();
        let custom = try_this("kmsctl", c, d, None);
        assert!(
            custom.contains("kmsctl --control http://127.0.0.1:8700 create-key"),
            "{custom}"
        );
        assert!(
            custom.contains("kmsctl --data http://127.0.0.1:8701 decrypt --in blob.b64"),
            "{custom}"
        );
    }

    #[test]
    fn try_this_with_mtls_exports_the_account_certificate() {
        let (_tmp, layout, tls) = mtls_layout();
        let certs = layout.certs.to_string_lossy().into_owned();
        let default = try_this(
            "kmsctl",
            "127.0.0.1:7700".parse().unwrap(),
            "0.0.0.0:7701".parse().unwrap(),
            Some(&tls),
        );
        assert!(
            default.contains(&format!(
                "  export KMS_CA={certs}/ca.pem KMS_CERT={certs}/client-1234567890123456-root.pem \
                 KMS_KEY={certs}/client-1234567890123456-root-key.pem\n"
            )),
            "{default}"
        );
        assert!(!default.contains("KMS_PRINCIPAL"), "{default}");
        assert!(!default.contains("--principal"), "{default}");
        // kmsctl turns its default http:// addresses into https:// itself.
        assert!(
            !default.contains("--control") && !default.contains("--data"),
            "{default}"
        );
        assert!(
            default.contains(&format!(
                "Operator calls: --cert {certs}/client-1000000000000000-user-operator.pem \
                 --cert-key {certs}/client-1000000000000000-user-operator-key.pem\n"
            )),
            "{default}"
        );
        let (c, d) = addrs();
        let custom = try_this("kmsctl", c, d, Some(&tls));
        assert!(
            custom.contains("kmsctl --control https://127.0.0.1:8700 create-key"),
            "{custom}"
        );
        assert!(
            custom.contains("kmsctl --data https://127.0.0.1:8701 encrypt --key alias/demo"),
            "{custom}"
        );
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("target/debug/kmsctl"), "target/debug/kmsctl");
        assert_eq!(shell_quote("/my dir/kmsctl"), "'/my dir/kmsctl'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn pins_are_32_hex_chars_and_private() {
        let pin = new_pin();
        assert_eq!(pin.len(), 32);
        assert!(pin.chars().all(|c| c.is_ascii_hexdigit()));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hsm.pin");
        write_secret(&path, &pin).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(
            write_secret(&path, "again").is_err(),
            "an existing pin is never overwritten"
        );
    }

    #[test]
    fn log_tail_reads_only_this_run() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let old = "old line\n".repeat(5);
        let new: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, format!("{old}{new}")).unwrap();
        let tail = read_tail(&path, old.len() as u64, 20).unwrap();
        assert!(
            tail.starts_with("line 11\n") && tail.ends_with("line 30\n"),
            "{tail}"
        );
        let short = read_tail(&path, (old.len() + new.len() - 16) as u64, 20).unwrap();
        assert!(!short.contains("old"), "{short}");
    }

    #[test]
    fn missing_binaries_say_how_to_build() {
        let dir = tempfile::tempdir().unwrap();
        let err = find_binaries(Some(dir.path())).unwrap_err().to_string();
        assert!(
            err.contains("kms-control and kms-data") && err.contains("cargo build --bins"),
            "{err}"
        );
    }
}
