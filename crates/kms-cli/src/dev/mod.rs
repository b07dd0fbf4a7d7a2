//! `kmsctl dev up`: runs the whole service locally in the foreground against a SoftHSM token
//! kept in a directory, so keys survive restarts. Generates the configs, starts `kms-data` and
//! `kms-control` (on sled, or with `--store etcd` on a local etcd member it starts first, with
//! `--replicas N` control-plane replicas), waits for their health checks, restarts one that
//! exits on its own, and stops them all on SIGINT or SIGTERM.
//!
//! Each part is a file: the layout and configs (`configs.rs`), the SoftHSM token (`hsm.rs`),
//! etcd (`etcd.rs`), and running processes (`process.rs`); a component is a
//! [`process::Launch`] in [`plan`].
//!
//! The KMS instances it makes for the dev account are remembered in `DIR/instances.json` and
//! reused on every later start; instances operators make meanwhile are never taken for them.
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
use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::Instant;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::certs::{CertFiles, DevCerts, existing_dev_certs, generate_dev_certs};
use crate::client::{RpcError, TlsFiles, error_chain};

mod configs;
mod console;
mod etcd;
mod gateway;
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
    /// Where the control plane keeps its records: sled under DIR/control, or a local
    /// single-member etcd (from PATH; data under DIR/etcd)
    #[arg(long, value_enum, default_value_t = StoreKind::Sled)]
    store: StoreKind,
    /// Control-plane replicas to run, all active; replica N (from 0) listens on the
    /// --control-addr port + 100 × N. More than one needs --store etcd
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=9))]
    replicas: u16,
    /// Client address of the local etcd member (--store etcd); its peer port is the next one
    #[arg(long, value_name = "IP:PORT", default_value_t = etcd::DEFAULT_ETCD_ADDR, value_parser = parse_listen_addr)]
    etcd_addr: SocketAddr,
    /// Address the HTTP gateway (kms-gateway, the cloud SDKs' endpoint) listens on
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:7703", value_parser = parse_listen_addr)]
    gateway_addr: SocketAddr,
    /// Address the web console (kms-console) listens on [default: the --control-addr port + 2,
    /// 127.0.0.1:7702]
    #[arg(long, value_name = "IP:PORT", value_parser = parse_listen_addr)]
    console_addr: Option<SocketAddr>,
}

/// `--store`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum StoreKind {
    Sled,
    Etcd,
}

/// The addresses of `replicas` control-plane replicas, the first on `first`.
fn replica_addrs(first: SocketAddr, replicas: u16) -> anyhow::Result<Vec<SocketAddr>> {
    (0..replicas)
        .map(|n| {
            let port = first
                .port()
                .checked_add(100 * n)
                .with_context(|| format!("replica {n} would need a port above 65535"))?;
            Ok(SocketAddr::new(first.ip(), port))
        })
        .collect()
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
    /// The first control-plane replica.
    control_addr: String,
    /// Every control-plane replica.
    control_addrs: Vec<String>,
    data_addr: String,
    /// Prometheus endpoints: the first control-plane replica's, every replica's, the data
    /// plane's.
    control_metrics_url: String,
    control_metrics_urls: Vec<String>,
    data_metrics_url: String,
    /// With `--store etcd` only.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    etcd_endpoints: Vec<String>,
    operator_principal: String,
    account_principal: String,
    software_instance_id: String,
    hardware_instance_id: String,
    /// With `--mtls` only.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    tls: Option<DevInfoTls>,
    /// `gateway_url`, `access_key_id`, `access_key_secret`; without `--mtls` only.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    gateway: Option<gateway::DevInfoGateway>,
    /// The web console, when it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    console_url: Option<String>,
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

    fn new(controls: &[SocketAddr], data: SocketAddr, tls: Option<&DevTls>) -> Self {
        let control_addrs: Vec<String> = controls
            .iter()
            .map(|c| plane_url(*c, tls.is_some()))
            .collect();
        let metrics_url = |addr: SocketAddr| {
            configs::metrics_addr(addr)
                .map(|m| format!("http://{m}/metrics"))
                .unwrap_or_default()
        };
        let control_metrics_urls: Vec<String> = controls.iter().map(|c| metrics_url(*c)).collect();
        Self {
            control_addr: control_addrs.first().cloned().unwrap_or_default(),
            control_addrs,
            data_addr: plane_url(data, tls.is_some()),
            control_metrics_url: control_metrics_urls.first().cloned().unwrap_or_default(),
            control_metrics_urls,
            data_metrics_url: metrics_url(data),
            etcd_endpoints: Vec::new(),
            operator_principal: OPERATOR_PRINCIPAL.into(),
            account_principal: ACCOUNT_PRINCIPAL.into(),
            software_instance_id: String::new(),
            hardware_instance_id: String::new(),
            gateway: None,
            tls: tls.map(|t| DevInfoTls {
                mtls: true,
                ca_file: t.ca.clone(),
                account_cert_file: t.account.cert.clone(),
                account_key_file: t.account.key.clone(),
                operator_cert_file: t.operator.cert.clone(),
                operator_key_file: t.operator.key.clone(),
            }),
            console_url: None,
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

/// The instance ids `dev up` made, kept in `DIR/instances.json` so that later starts reuse
/// them, whatever other instances operators create meanwhile.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KeptInstances {
    #[serde(default)]
    software_instance_id: String,
    #[serde(default)]
    hardware_instance_id: String,
}

impl KeptInstances {
    /// The ids remembered under `layout`: `instances.json`, or, in a directory from before it
    /// existed, the ones its `dev.json` names.
    fn load(layout: &Layout) -> anyhow::Result<Self> {
        for path in [&layout.instances, &layout.dev_json] {
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    return serde_json::from_str(&text)
                        .with_context(|| format!("{} is not valid JSON", path.display()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot read {}", path.display()));
                }
            }
        }
        Ok(Self::default())
    }

    fn id(&self, kind: kms_proto::kms::v1::InstanceType) -> &str {
        match kind {
            kms_proto::kms::v1::InstanceType::Hardware => &self.hardware_instance_id,
            _ => &self.software_instance_id,
        }
    }
}

/// Makes sure the account's software and hardware instances `dev up` made are there, as the
/// operator: the ones remembered in `DIR/instances.json` when the control plane still has
/// them, new ones otherwise (on the first start, or after the data was removed), which are
/// then remembered. Instances anyone else made are never taken for them. Over mTLS with the
/// operator's certificate when `tls` is given.
async fn ensure_instances(
    layout: &Layout,
    control: SocketAddr,
    tls: Option<&DevTls>,
) -> anyhow::Result<DevInstances> {
    use kms_proto::kms::v1::kms_instance_service_client::KmsInstanceServiceClient;
    use kms_proto::kms::v1::{CreateKmsInstanceRequest, GetKmsInstanceRequest, InstanceType};

    let kept = KeptInstances::load(layout)?;
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
    let mut ids = Vec::with_capacity(2);
    for kind in [InstanceType::Software, InstanceType::Hardware] {
        let remembered = kept.id(kind);
        if !remembered.is_empty() {
            match client
                .get_kms_instance(GetKmsInstanceRequest {
                    kms_instance_id: remembered.to_string(),
                })
                .await
            {
                Ok(r) => {
                    let found = r.into_inner().kms_instance;
                    if found.is_some_and(|i| {
                        i.instance_type == kind as i32 && i.owner_account_id == dev_account()
                    }) {
                        ids.push(remembered.to_string());
                        continue;
                    }
                }
                Err(status) if status.code() == tonic::Code::NotFound => {}
                Err(status) => return Err(RpcError(status).into()),
            }
            println!(
                "the {} instance {remembered} is gone (was the data removed?); making another",
                kind.as_str_name()
            );
        }
        let id = client
            .create_kms_instance(CreateKmsInstanceRequest {
                instance_type: kind as i32,
                owner_account_id: dev_account().to_string(),
                key_quota: 1000,
                access_management_quota: Some(5),
            })
            .await
            .map_err(RpcError)?
            .into_inner()
            .kms_instance
            .map(|i| i.kms_instance_id)
            .context("kms-control answered without the new instance")?;
        ids.push(id);
    }
    let hardware = ids.pop().unwrap_or_default();
    let software = ids.pop().unwrap_or_default();
    let keep = KeptInstances {
        software_instance_id: software.clone(),
        hardware_instance_id: hardware.clone(),
    };
    if keep != kept {
        write_file(
            &layout.instances,
            &format!("{}\n", serde_json::to_string_pretty(&keep)?),
        )?;
    }
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
         \x20 {kmsctl}{control_flag} create-key --alias alias/demo --description \"my first key\" --if-not-exists\n\
         \x20 {kmsctl}{control_flag} describe-key --key alias/demo\n\
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
    /// A component exited and could not be restarted.
    GaveUp,
}

/// What `dev up` runs: the data plane and the control-plane replicas, in stop order, and etcd
/// with `--store etcd` (started first, stopped last).
fn plan(
    args: &UpArgs,
    layout: &Layout,
    controls: &[SocketAddr],
    tls: Option<&DevTls>,
) -> anyhow::Result<(Vec<Launch>, Option<Launch>)> {
    let (control_bin, data_bin) = find_binaries(args.bin_dir.as_deref())?;
    let mut launches = vec![Launch {
        name: "kms-data".into(),
        program: data_bin,
        args: vec!["--config".into(), layout.data_toml.clone().into()],
        addr: args.data_addr,
        env: vec![("SOFTHSM2_CONF", layout.softhsm_conf.clone().into())],
        health: Health::Grpc(Box::new(health_endpoint(args.data_addr, tls)?)),
    }];
    for (replica, addr) in controls.iter().enumerate() {
        launches.push(Launch {
            name: control_name(replica),
            program: control_bin.clone(),
            args: vec!["--config".into(), layout.control_toml_of(replica).into()],
            addr: *addr,
            env: Vec::new(),
            health: Health::Grpc(Box::new(health_endpoint(*addr, tls)?)),
        });
    }
    let etcd = match args.store {
        StoreKind::Sled => None,
        StoreKind::Etcd => Some(etcd::launch(layout, etcd::find_etcd()?, args.etcd_addr)?),
    };
    Ok((launches, etcd))
}

/// Waits for `planes[target]`, or a signal: `Ok(false)` on a signal, an error message when it
/// exits or does not become ready.
async fn await_ready(
    planes: &mut [Plane],
    target: usize,
    deadline: Instant,
    signals: &mut Signals,
) -> Result<bool, ()> {
    print!(
        "waiting for {} on {} ... ",
        planes[target].name(),
        planes[target].addr()
    );
    let _ = std::io::stdout().flush();
    let result = tokio::select! {
        biased;
        _ = signals.interrupt.recv() => return Ok(false),
        _ = signals.terminate.recv() => return Ok(false),
        r = wait_ready(planes, target, deadline) => r,
    };
    match result {
        Ok(()) => {
            println!("ready");
            Ok(true)
        }
        Err(failure) => {
            println!("failed");
            match failure {
                StartFailure::Exited(i, status) => {
                    planes[i].print_failure(&format!("exited during startup ({status})"));
                }
                StartFailure::Timeout(i, last) => planes[i].print_failure(&format!(
                    "did not become ready on {} within {} s (last health check: {last})",
                    planes[i].addr(),
                    READY_TIMEOUT.as_secs()
                )),
            }
            Err(())
        }
    }
}

/// [`await_ready`], stopping everything when it fails or a signal comes: the exit code then.
async fn ready_or_stop(
    planes: &mut [Plane],
    target: usize,
    deadline: Instant,
    signals: &mut Signals,
) -> Option<ExitCode> {
    let code = match await_ready(planes, target, deadline, signals).await {
        Ok(true) => return None,
        Ok(false) => {
            println!("interrupted");
            ExitCode::SUCCESS
        }
        Err(()) => ExitCode::FAILURE,
    };
    stop_all(planes).await;
    println!("stopped");
    Some(code)
}

/// The signals that stop `dev up`.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

/// Keeps the components running until a signal: one that exits on its own is started again
/// after a pause that doubles with each restart (at most [`MAX_RESTARTS`] times a minute),
/// while the others keep running.
async fn supervise(planes: &mut [Plane], layout: &Layout, signals: &mut Signals) -> Outcome {
    let mut check = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            biased;
            _ = signals.interrupt.recv() => return Outcome::Signal("SIGINT"),
            _ = signals.terminate.recv() => return Outcome::Signal("SIGTERM"),
            _ = check.tick() => {}
        }
        for p in planes.iter_mut() {
            let Some(status) = p.exited() else { continue };
            p.print_failure(&format!("exited unexpectedly ({status})"));
            let Some(delay) = p.backoff() else {
                eprintln!(
                    "{} exited {MAX_RESTARTS} times within {} s; not restarting it",
                    p.name(),
                    RESTART_WINDOW.as_secs()
                );
                return Outcome::GaveUp;
            };
            eprintln!(
                "restarting {} in {} ms; the other components keep running",
                p.name(),
                delay.as_millis()
            );
            tokio::select! {
                biased;
                _ = signals.interrupt.recv() => return Outcome::Signal("SIGINT"),
                _ = signals.terminate.recv() => return Outcome::Signal("SIGTERM"),
                () = tokio::time::sleep(delay) => {}
            }
            match p.restart(layout) {
                Ok(()) => eprintln!("restarted {} (log: {})", p.name(), p.log.display()),
                Err(e) => {
                    eprintln!("cannot restart {}: {e:#}", p.name());
                    return Outcome::GaveUp;
                }
            }
        }
    }
}

/// `kmsctl dev up`.
pub(crate) async fn up(args: UpArgs) -> anyhow::Result<ExitCode> {
    if args.replicas > 1 && args.store == StoreKind::Sled {
        anyhow::bail!(
            "--replicas {} needs --store etcd: a sled directory belongs to one process",
            args.replicas
        );
    }
    let controls = replica_addrs(args.control_addr, args.replicas)?;
    let mut ports: Vec<(String, SocketAddr, &str)> = controls
        .iter()
        .enumerate()
        .map(|(n, a)| (control_name(n), *a, "--control-addr"))
        .collect();
    ports.push(("kms-data".into(), args.data_addr, "--data-addr"));
    if !args.mtls {
        ports.push(("kms-gateway".into(), args.gateway_addr, "--gateway-addr"));
        ports.push(("kms-console".into(), args.console_addr()?, "--console-addr"));
    }
    if args.store == StoreKind::Etcd {
        ports.push(("etcd".into(), args.etcd_addr, "--etcd-addr"));
        ports.push((
            "etcd peers".into(),
            etcd::peer_addr(args.etcd_addr),
            "--etcd-addr",
        ));
    }
    for (i, (name, addr, _)) in ports.iter().enumerate() {
        if let Some((other, _, _)) = ports[..i].iter().find(|(_, a, _)| a == addr) {
            anyhow::bail!("{name} and {other} would both listen on {addr}: choose other addresses");
        }
    }
    if args.mtls {
        for (n, addr) in controls.iter().enumerate() {
            check_tls_addr(*addr, &format!("--control-addr (replica {n})"))?;
        }
        check_tls_addr(args.data_addr, "--data-addr")?;
    }
    let module = find_module()?;
    for (name, addr, flag) in &ports {
        check_port_free(name, *addr, flag)?;
    }
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
    let store = match args.store {
        StoreKind::Sled => DevStore::Sled,
        StoreKind::Etcd => DevStore::Etcd(etcd::client_url(args.etcd_addr)),
    };
    for (replica, addr) in controls.iter().enumerate() {
        write_file(
            &layout.control_toml_of(replica),
            &render_control_toml(&layout, replica, *addr, args.data_addr, &store, tls),
        )?;
    }
    write_file(
        &layout.data_toml,
        &render_data_toml(&layout, &controls, args.data_addr, &module, tls),
    )?;
    let (launches, etcd) = plan(&args, &layout, &controls, tls)?;

    let mut signals = Signals {
        interrupt: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
        terminate: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
    };
    let deadline = Instant::now() + READY_TIMEOUT;

    // etcd first and alone: no control-plane replica starts without its store.
    let mut planes: Vec<Plane> = Vec::with_capacity(launches.len() + 1);
    if let Some(launch) = etcd {
        planes.push(Plane::start(launch, &layout).await?);
        if let Some(code) = ready_or_stop(&mut planes, 0, deadline, &mut signals).await {
            return Ok(code);
        }
    }
    // In stop order from here on: the data plane first, etcd last.
    let etcd = planes.pop();
    let waiting = launches.len();
    for launch in launches {
        match Plane::start(launch, &layout).await {
            Ok(p) => planes.push(p),
            Err(e) => {
                planes.extend(etcd);
                stop_all(&mut planes).await;
                return Err(e);
            }
        }
    }
    planes.extend(etcd);
    for target in 0..waiting {
        if let Some(code) = ready_or_stop(&mut planes, target, deadline, &mut signals).await {
            return Ok(code);
        }
    }

    let mut info = DevInfo::new(&controls, args.data_addr, tls);
    if args.store == StoreKind::Etcd {
        info.etcd_endpoints = vec![etcd::client_url(args.etcd_addr)];
    }
    match ensure_instances(&layout, args.control_addr, tls).await {
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
    // The servers that are only gRPC clients of the planes start once the planes are ready;
    // each component adds its launch and its dev.json entries here.
    let first_client = planes.len();
    for launch in client_launches(&args, &layout, &mut info).await? {
        match Plane::start(launch, &layout).await {
            Ok(p) => planes.insert(0, p),
            Err(e) => {
                stop_all(&mut planes).await;
                return Err(e);
            }
        }
    }
    // Clients are inserted at the front, so they stop first.
    for target in 0..planes.len() - first_client {
        if let Some(code) = ready_or_stop(&mut planes, target, deadline, &mut signals).await {
            return Ok(code);
        }
    }
    write_file(
        &layout.dev_json,
        &format!("{}\n", serde_json::to_string_pretty(&info)?),
    )?;
    println!();
    for p in &planes {
        let url = if p.name() == "etcd" {
            etcd::client_url(p.addr())
        } else {
            plane_url(p.addr(), args.mtls)
        };
        println!(
            "{:<14} {url}  (log: {})",
            format!("{}:", p.name()),
            p.log.display()
        );
    }
    println!();
    print!(
        "{}",
        try_this(&kmsctl_path(), args.control_addr, args.data_addr, tls)
    );
    println!();
    println!("Press Ctrl-C to stop.");
    let _ = std::io::stdout().flush();

    let code = match supervise(&mut planes, &layout, &mut signals).await {
        Outcome::Signal(name) => {
            println!("{name} received, stopping");
            ExitCode::SUCCESS
        }
        Outcome::GaveUp => ExitCode::FAILURE,
    };
    stop_all(&mut planes).await;
    println!("stopped");
    Ok(code)
}

/// The client servers to start after the planes, each adding what it serves to `info`.
async fn client_launches(
    args: &UpArgs,
    layout: &Layout,
    info: &mut DevInfo,
) -> anyhow::Result<Vec<Launch>> {
    let mut launches = Vec::new();
    if let Some((launch, entries)) = gateway::launch(args, layout).await? {
        launches.push(launch);
        info.gateway = Some(entries);
    }
    launches.extend(console::console_launch(args, layout, info)?);
    Ok(launches)
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
        let text = render_control_toml(&layout, 0, c, d, &DevStore::Sled, None);
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
            &[c],
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
    fn etcd_replicas_get_their_own_addresses_and_audit_logs() {
        let layout = Layout::new(Path::new("/srv/kms"));
        let controls = replica_addrs("127.0.0.1:7700".parse().unwrap(), 3).unwrap();
        assert_eq!(
            controls.iter().map(|a| a.port()).collect::<Vec<_>>(),
            vec![7700, 7800, 7900]
        );
        assert!(replica_addrs("127.0.0.1:65500".parse().unwrap(), 2).is_err());
        let d: SocketAddr = "127.0.0.1:7701".parse().unwrap();
        let store = DevStore::Etcd("http://127.0.0.1:2379".into());
        let t: toml::Table = render_control_toml(&layout, 1, controls[1], d, &store, None)
            .parse()
            .unwrap();
        assert_eq!(t["listen_addr"].as_str(), Some("127.0.0.1:7800"));
        assert!(!t.contains_key("data_dir"), "etcd needs no sled directory");
        assert_eq!(t["store"]["engine"].as_str(), Some("etcd"));
        assert_eq!(
            t["store"]["etcd"]["endpoints"][0].as_str(),
            Some("http://127.0.0.1:2379")
        );
        assert_eq!(t["store"]["etcd"]["prefix"].as_str(), Some("kms/"));
        assert_eq!(
            t["audit"]["path"].as_str(),
            Some("/srv/kms/logs/control-1-audit.log")
        );
        assert_eq!(
            layout.control_toml_of(1),
            Path::new("/srv/kms/control-1.toml")
        );
        assert_eq!(layout.control_toml_of(0), layout.control_toml);

        let data: toml::Table = render_data_toml(&layout, &controls, d, Path::new("/m.so"), None)
            .parse()
            .unwrap();
        assert_eq!(
            data["control_plane_url"].as_str(),
            Some("http://127.0.0.1:7700,http://127.0.0.1:7800,http://127.0.0.1:7900")
        );

        let mut info = DevInfo::new(&controls, d, None);
        info.etcd_endpoints = vec!["http://127.0.0.1:2379".into()];
        let v = serde_json::to_value(info).unwrap();
        assert_eq!(v["control_addr"], "http://127.0.0.1:7700");
        assert_eq!(v["control_addrs"][2], "http://127.0.0.1:7900");
        assert_eq!(v["etcd_endpoints"][0], "http://127.0.0.1:2379");
    }

    #[test]
    fn ipv6_addresses_render_as_urls() {
        let layout = Layout::new(Path::new("/srv/kms"));
        let c: SocketAddr = "[::1]:7700".parse().unwrap();
        let d: SocketAddr = "[::1]:7701".parse().unwrap();
        let t: toml::Table = render_control_toml(&layout, 0, c, d, &DevStore::Sled, None)
            .parse()
            .unwrap();
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
        let v = serde_json::to_value(DevInfo::new(&[c], d, None)).unwrap();
        assert_eq!(v["control_addr"], "http://127.0.0.1:8700");
        assert_eq!(v["data_addr"], "http://127.0.0.1:8701");
        assert_eq!(v["account_principal"], ACCOUNT_PRINCIPAL);
        assert_eq!(v["software_instance_id"], "");
        let v = serde_json::to_value(DevInfo::new(&[c], d, None).with_instances(DevInstances {
            software: "kst-s".into(),
            hardware: "kst-h".into(),
        }))
        .unwrap();
        assert_eq!(v["software_instance_id"], "kst-s");
        assert_eq!(v["hardware_instance_id"], "kst-h");
        assert_eq!(dev_account(), "1234567890123456");
        assert!(v.get("mtls").is_none() && v.get("ca_file").is_none(), "{v}");
        assert_eq!(v["control_addrs"][0], "http://127.0.0.1:8700");
        assert!(v.get("etcd_endpoints").is_none(), "sled needs no etcd: {v}");
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

        let t: toml::Table = render_control_toml(&layout, 0, c, d, &DevStore::Sled, Some(&tls))
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

        let t: toml::Table = render_data_toml(&layout, &[c], d, Path::new("/m.so"), Some(&tls))
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
        let t: toml::Table = render_data_toml(&layout, &[c], d, Path::new("/m.so"), None)
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
        let v = serde_json::to_value(DevInfo::new(&[c], d, Some(&tls))).unwrap();
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
    fn kept_instances_come_from_instances_json_else_an_older_dev_json() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        assert_eq!(
            KeptInstances::load(&layout).unwrap(),
            KeptInstances::default()
        );
        let (c, d) = addrs();
        let old = DevInfo::new(&[c], d, None).with_instances(DevInstances {
            software: "kst-old-s".into(),
            hardware: "kst-old-h".into(),
        });
        write_file(&layout.dev_json, &serde_json::to_string(&old).unwrap()).unwrap();
        let kept = KeptInstances::load(&layout).unwrap();
        assert_eq!(kept.software_instance_id, "kst-old-s");
        assert_eq!(kept.hardware_instance_id, "kst-old-h");
        let mine = KeptInstances {
            software_instance_id: "kst-s".into(),
            hardware_instance_id: "kst-h".into(),
        };
        write_file(&layout.instances, &serde_json::to_string(&mine).unwrap()).unwrap();
        assert_eq!(KeptInstances::load(&layout).unwrap(), mine);
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

    #[test]
    fn a_relative_bin_dir_is_made_absolute() {
        let err = find_binaries(Some(Path::new("."))).unwrap_err().to_string();
        let cwd = std::env::current_dir().unwrap();
        assert!(
            err.contains(&format!("not found in {}:", cwd.display())),
            "{err}"
        );
        let err = find_binaries(Some(Path::new("no/such/dir")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--bin-dir no/such/dir"), "{err}");
    }
}
