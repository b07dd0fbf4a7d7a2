//! The end-to-end harness: starts the real `kms-control` and `kms-data` binaries on free
//! loopback ports against a fresh SoftHSM2 token in a temporary directory, the way a user runs
//! them, and hands out gRPC clients that identify as a given principal.
//!
//! The binaries must be built first (`cargo build --bins`); the README's test command does so.

pub mod cluster;
pub mod consistency;
pub mod kmsctl;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kms_proto::kms::internal::v1::key_directory_client::KeyDirectoryClient;
use kms_proto::kms::internal::v1::key_material_client::KeyMaterialClient;
use kms_proto::kms::v1::crypto_service_client::CryptoServiceClient;
use kms_proto::kms::v1::key_management_service_client::KeyManagementServiceClient;
use kms_proto::kms::v1::kms_instance_service_client::KmsInstanceServiceClient;
use kms_store::etcd_testing::EtcdProcess;
use tokio::process::{Child, Command};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Account of the principals the tests act as.
pub const ACCOUNT: &str = "1234567890123456";
/// The account's root principal.
pub const ALICE: &str = "acs:ram::1234567890123456:root";
/// A principal of another account.
pub const MALLORY: &str = "acs:ram::6543210987654321:user/mallory";
/// The control plane's service principal.
pub const CONTROL_PRINCIPAL: &str = "acs:ram::1000000000000000:role/kms-control-plane";
/// The data plane's service principal.
pub const DATA_PRINCIPAL: &str = "acs:ram::1000000000000000:role/kms-data-plane";
/// The HTTP gateway's service principal: the data plane lets it resolve AccessKey pairs.
pub const GATEWAY_PRINCIPAL: &str = "acs:ram::1000000000000000:role/kms-gateway";
/// A RAM user of ALICE's account (a custom policy may make it a user or an administrator).
pub const APP_USER: &str = "acs:ram::1234567890123456:user/app";
/// Another RAM user of ALICE's account.
pub const ADMIN: &str = "acs:ram::1234567890123456:user/admin";
/// A principal of another account that a policy may grant use of a key.
pub const PARTNER: &str = "acs:ram::6543210987654321:user/partner";
/// Every principal the mTLS stack has a client certificate for.
pub const CERT_PRINCIPALS: &[&str] = &[
    ALICE,
    APP_USER,
    ADMIN,
    PARTNER,
    MALLORY,
    OPERATOR,
    CONTROL_PRINCIPAL,
    DATA_PRINCIPAL,
];

/// How a stack is started.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Serve mTLS on both planes, plane to plane too; callers are identified by client
    /// certificates (made with `kmsctl dev certs` for [`CERT_PRINCIPALS`]) and the dev header
    /// is off.
    pub mtls: bool,
    /// With `mtls`: accept connections without a client certificate, and trust the
    /// `x-forwarded-principal` header from these peer addresses.
    pub sidecar_peers: Vec<String>,
    /// Per-principal rate of symmetric crypto calls (burst equal), instead of 1,000,000/s.
    pub symmetric_rate: Option<u32>,
    /// Extra TOML lines under `[limits]` on both planes (`max_connections = 100`, ...).
    pub limits: String,
    /// Where the control plane keeps its records: [`Engine::from_env`] unless set.
    pub engine: Engine,
    /// Extra TOML tables at the end of the control plane's config (`[metrics]`, ...).
    pub control_tables: String,
    /// Extra TOML tables at the end of the data plane's config.
    pub data_tables: String,
    /// Extra TOML lines under `[audit]` on both planes (`sync = "always"`, ...).
    pub audit: String,
}

/// The operator the control plane's config names: creates and shares KMS instances.
pub const OPERATOR: &str = "acs:ram::1000000000000000:user/operator";
/// How often the control plane's rotation scheduler and reaper run in the stack, in ms.
pub const SCHEDULER_INTERVAL_MS: u64 = 50;
/// How long a control-plane replica holds the scheduler claim without renewing it, in ms:
/// the shortest etcd lease.
pub const SCHEDULER_LEASE_MS: u64 = 2_000;
/// The SoftHSM2 module on Debian.
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// The token label the stack uses.
pub const TOKEN_LABEL: &str = "kms-test";
/// The user PIN of the test token.
pub const USER_PIN: &str = "7391-user";

/// Adds `x-kms-principal` to every call when a principal is set.
#[derive(Debug, Clone)]
pub struct As(pub Option<String>);

impl tonic::service::Interceptor for As {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(p) = &self.0 {
            let value = p
                .parse()
                .map_err(|_| tonic::Status::invalid_argument("principal is not a header value"))?;
            req.metadata_mut().insert("x-kms-principal", value);
        }
        Ok(req)
    }
}

type Svc = InterceptedService<Channel, As>;

/// A running control plane and data plane.
#[derive(Debug)]
pub struct Stack {
    options: Options,
    dir: tempfile::TempDir,
    control_addr: String,
    data_addr: String,
    control: Option<Child>,
    data: Option<Child>,
    /// The etcd member of a stack on [`Engine::Etcd`]; killed when the stack is dropped,
    /// after the planes (fields drop in order).
    _etcd: Option<EtcdProcess>,
}

/// Where the control plane of a stack keeps its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// sled in the stack's directory.
    Sled,
    /// A single-member etcd the stack starts for itself.
    Etcd,
}

impl Engine {
    /// `KMS_TEST_STORE` (`sled` or `etcd`); sled when unset, so the whole suite runs on either
    /// engine by setting it.
    pub fn from_env() -> Self {
        match std::env::var("KMS_TEST_STORE").as_deref() {
            Ok("etcd") => Engine::Etcd,
            Ok("sled") | Err(_) => Engine::Sled,
            Ok(other) => panic!("KMS_TEST_STORE={other:?}: expected sled or etcd"),
        }
    }
}

impl Default for Engine {
    fn default() -> Self {
        Self::from_env()
    }
}

/// The `[store]` of a control plane's config.
#[derive(Debug)]
pub enum StoreConfig {
    /// sled in this directory.
    Sled(PathBuf),
    /// etcd with members at these client URLs.
    Etcd(Vec<String>),
}

impl StoreConfig {
    /// The config lines: `data_dir` at the top level, or `[store]` tables (which go last).
    pub fn render(&self) -> (String, String) {
        match self {
            StoreConfig::Sled(dir) => {
                (format!("data_dir = \"{}\"\n", dir.display()), String::new())
            }
            StoreConfig::Etcd(endpoints) => {
                let list: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
                (
                    String::new(),
                    format!(
                        "[store]\nengine = \"etcd\"\n[store.etcd]\nendpoints = [{}]\nprefix = \"{ETCD_PREFIX}\"\n",
                        list.join(", ")
                    ),
                )
            }
        }
    }
}

/// The etcd key prefix of a stack's control plane.
pub const ETCD_PREFIX: &str = "kms-e2e/";

/// Starts a single-member etcd, off the async workers (it waits for the member).
fn etcd_testing_start() -> Result<EtcdProcess> {
    std::thread::spawn(EtcdProcess::start).join().map_err(|_| {
        anyhow::anyhow!(
            "etcd did not start: is `etcd` on PATH? scripts/ensure-deps.sh installs etcd-server"
        )
    })
}

/// The `[identity]` of `plane` (`control` or `data`) calling as `me` and answering `peer`.
pub fn identity_toml(root: &Path, options: &Options, plane: &str, me: &str, peer: &str) -> String {
    let mut t = format!(
        "[identity]\ndev_header = {}\nservice_principal = \"{me}\"\npeer_principal = \"{peer}\"\n",
        !options.mtls
    );
    if options.mtls {
        let certs = root.join("certs");
        t += &format!(
            "[identity.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\nrequire_client_cert = {}\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"\n",
            certs.join(format!("{plane}.pem")).display(),
            certs.join(format!("{plane}-key.pem")).display(),
            certs.join("ca.pem").display(),
            options.sidecar_peers.is_empty(),
            certs.join(format!("{}.pem", cert_stem(me))).display(),
            certs.join(format!("{}-key.pem", cert_stem(me))).display(),
        );
        if !options.sidecar_peers.is_empty() {
            let peers: Vec<String> = options
                .sidecar_peers
                .iter()
                .map(|p| format!("\"{p}\""))
                .collect();
            t += &format!(
                "[identity.trusted_sidecar]\ntrusted_peers = [{}]\n",
                peers.join(", ")
            );
        }
    }
    t
}

/// A control plane's config for a stack in `root`: listening on `listen`, calling the data
/// plane replicas at `data_urls` (comma-separated), keeping records as `store` says
/// (top-level lines, tables), auditing to `audit`.
pub fn control_toml(
    root: &Path,
    options: &Options,
    listen: &str,
    data_urls: &str,
    store: &(String, String),
    audit: &Path,
) -> String {
    let identity = identity_toml(root, options, "control", CONTROL_PRINCIPAL, DATA_PRINCIPAL);
    let extra_limits = &options.limits;
    let extra_audit = &options.audit;
    let (store_top, store_tables) = store;
    format!(
        r#"listen_addr = "{listen}"
region = "local"
{store_top}data_plane_url = "{data_urls}"
operators = ["{OPERATOR}"]
{identity}[audit]
path = "{}"
{extra_audit}
[limits]
{extra_limits}
[limits.read]
per_second = 1000000
[limits.write]
per_second = 1000000
[limits.create_key]
per_second = 1000000
[log]
level = "info"
[scheduler]
interval_ms = {SCHEDULER_INTERVAL_MS}
lease_ms = {SCHEDULER_LEASE_MS}
[clock]
offset_file = "{}"
{store_tables}
{}
"#,
        audit.display(),
        root.join(CLOCK_OFFSET_FILE).display(),
        options.control_tables,
    )
}

/// A data plane's config for a stack in `root`: listening on `listen`, calling the
/// control-plane replicas at `control_urls` (comma-separated), auditing to `audit`.
pub fn data_toml(
    root: &Path,
    options: &Options,
    listen: &str,
    control_urls: &str,
    audit: &Path,
) -> String {
    let identity = identity_toml(root, options, "data", DATA_PRINCIPAL, CONTROL_PRINCIPAL);
    let symmetric_rate = options.symmetric_rate.unwrap_or(1_000_000);
    let extra_limits = &options.limits;
    let extra_audit = &options.audit;
    format!(
        r#"listen_addr = "{listen}"
control_plane_url = "{control_urls}"
gateway_principals = ["{GATEWAY_PRINCIPAL}"]
[hsm]
module_path = "{SOFTHSM_MODULE}"
token_label = "{TOKEN_LABEL}"
user_pin_file = "{}"
[key_cache]
ttl_ms = 60000
unwatched_ttl_ms = 200
max_staleness_ms = 3000
[audit]
path = "{}"
{extra_audit}
[limits]
{extra_limits}
[limits.symmetric]
per_second = {symmetric_rate}
[limits.asymmetric]
per_second = 1000000
{identity}[log]
level = "info"
{}
"#,
        root.join("hsm.pin").display(),
        audit.display(),
        options.data_tables,
    )
}

/// Starts binary `bin` with `config`, the SoftHSM2 config `softhsm`, its output appended to
/// `log`; killed when the handle drops.
pub fn spawn_plane(bin: &str, config: &Path, softhsm: &Path, log: &Path) -> Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut cmd = Command::new(bin_path(bin)?);
    // The planes are configured by their files alone: an inherited `KMS_*` variable (the
    // tests' own knobs included) would override a setting or be refused as unknown.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("KMS_") {
            cmd.env_remove(name);
        }
    }
    cmd.arg("--config")
        .arg(config)
        .env("SOFTHSM2_CONF", softhsm)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {bin}"))
}

/// Sends `child` (named `name` in errors) SIGTERM and checks it exits successfully within 20 s.
pub async fn terminate(name: &str, mut child: Child) -> Result<()> {
    let pid = child.id().context("child has no pid")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid)?),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .with_context(|| format!("{name} did not stop within 20 s of SIGTERM"))??;
    if !status.success() {
        bail!("{name} exited with {status} after SIGTERM");
    }
    Ok(())
}

/// Makes a fresh SoftHSM2 token under `root/softhsm` (with its config) and writes its user PIN
/// to `root/hsm.pin`.
pub fn init_token(root: &Path) -> Result<()> {
    std::fs::create_dir_all(root.join("softhsm/tokens"))?;
    let conf = root.join("softhsm/softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
            root.join("softhsm/tokens").display()
        ),
    )?;
    let out = std::process::Command::new("softhsm2-util")
        .args([
            "--init-token",
            "--free",
            "--label",
            TOKEN_LABEL,
            "--so-pin",
            "5511-so",
            "--pin",
            USER_PIN,
        ])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .context("softhsm2-util is missing: install the softhsm2 package")?;
    if !out.status.success() {
        bail!(
            "softhsm2-util failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::write(root.join("hsm.pin"), format!("{USER_PIN}\n"))?;
    Ok(())
}

/// A loopback port nothing listens on at the moment, for a server the test starts (from below
/// the ephemeral range: see [`kms_store::etcd_testing::free_ports`]).
pub fn free_port() -> Result<u16> {
    Ok(kms_store::etcd_testing::free_ports(1)[0])
}

/// Where cargo put the workspace's binaries: next to the test executable's `deps` directory,
/// or in `KMS_BIN_DIR` when set (release binaries driven by a debug test, say).
pub fn bin_path(name: &str) -> Result<PathBuf> {
    let dir = match std::env::var_os("KMS_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe()?;
            exe.parent()
                .and_then(Path::parent)
                .context("cannot locate the target directory")?
                .to_path_buf()
        }
    };
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} is missing: build the binaries first with `cargo build --bins`",
            path.display()
        );
    }
    Ok(path)
}

impl Stack {
    /// Creates a token and configs in a fresh temporary directory and starts both planes, with
    /// the dev identity header.
    pub async fn start() -> Result<Self> {
        Self::start_with(Options::default()).await
    }

    /// Like [`Stack::start`], with `options`.
    pub async fn start_with(options: Options) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("kms-e2e-").tempdir()?;
        let root = dir.path();
        for sub in ["softhsm/tokens", "control", "logs"] {
            std::fs::create_dir_all(root.join(sub))?;
        }
        init_token(root)?;
        let control_addr = format!("127.0.0.1:{}", free_port()?);
        let data_addr = format!("127.0.0.1:{}", free_port()?);
        let scheme = if options.mtls { "https" } else { "http" };
        if options.mtls {
            let mut cmd = std::process::Command::new(bin_path("kmsctl")?);
            cmd.args(["dev", "certs", "--dir"]).arg(root.join("certs"));
            for p in CERT_PRINCIPALS {
                cmd.args(["--principal", p]);
            }
            let out = cmd.output()?;
            if !out.status.success() {
                bail!(
                    "kmsctl dev certs failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let etcd = match options.engine {
            Engine::Sled => None,
            Engine::Etcd => Some(etcd_testing_start()?),
        };
        let store = match &etcd {
            None => StoreConfig::Sled(root.join("control")),
            Some(member) => StoreConfig::Etcd(vec![member.endpoint()]),
        };
        std::fs::write(
            root.join("control.toml"),
            control_toml(
                root,
                &options,
                &control_addr,
                &format!("{scheme}://{data_addr}"),
                &store.render(),
                &root.join("logs/control-audit.log"),
            ),
        )?;
        std::fs::write(
            root.join("data.toml"),
            data_toml(
                root,
                &options,
                &data_addr,
                &format!("{scheme}://{control_addr}"),
                &root.join("logs/data-audit.log"),
            ),
        )?;
        let mut stack = Self {
            options,
            dir,
            control_addr,
            data_addr,
            control: None,
            data: None,
            _etcd: etcd,
        };
        stack.boot().await?;
        Ok(stack)
    }

    /// The control plane's `host:port`.
    pub fn control_addr(&self) -> &str {
        &self.control_addr
    }

    /// The data plane's `host:port`.
    pub fn data_addr(&self) -> &str {
        &self.data_addr
    }

    /// The stack's directory: configs, token, sled data, logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The SoftHSM2 config the data plane uses.
    pub fn softhsm_conf(&self) -> PathBuf {
        self.dir().join("softhsm/softhsm2.conf")
    }

    /// The sled directory of the control plane.
    pub fn sled_dir(&self) -> PathBuf {
        self.dir().join("control")
    }

    /// The audit log of `plane` (`control` or `data`).
    pub fn audit_log(&self, plane: &str) -> PathBuf {
        self.dir().join("logs").join(format!("{plane}-audit.log"))
    }

    /// Every entry of the control plane's store, whichever the engine; with the control
    /// plane stopped for sled (which locks its directory).
    pub fn store_entries(&self) -> Result<Vec<kms_store::Entry>> {
        use kms_store::Store;
        match &self._etcd {
            None => Ok(kms_store::SledStore::open(&self.sled_dir())?.scan_prefix(
                b"",
                None,
                usize::MAX,
            )?),
            Some(member) => {
                let endpoint = member.endpoint();
                std::thread::spawn(move || -> Result<Vec<kms_store::Entry>> {
                    let store = kms_store::EtcdStore::connect(kms_store::EtcdOptions::new(
                        vec![endpoint],
                        ETCD_PREFIX.as_bytes().to_vec(),
                    ))?;
                    Ok(store.scan_prefix(b"", None, usize::MAX)?)
                })
                .join()
                .map_err(|_| anyhow::anyhow!("reading etcd panicked"))?
            }
        }
    }

    /// Where the stack's control plane keeps its records.
    pub fn engine(&self) -> Engine {
        self.options.engine
    }

    /// The control plane's configuration file.
    pub fn control_config(&self) -> PathBuf {
        self.dir().join("control.toml")
    }

    /// Destroys the control plane's records, with the control plane stopped: sled's data
    /// directory is removed, every etcd key under the stack's prefix deleted.
    pub fn wipe_store(&self) -> Result<()> {
        use kms_store::Store;
        match &self._etcd {
            None => Ok(std::fs::remove_dir_all(self.sled_dir())?),
            Some(member) => {
                let endpoint = member.endpoint();
                std::thread::spawn(move || -> Result<()> {
                    let store = kms_store::EtcdStore::connect(kms_store::EtcdOptions::new(
                        vec![endpoint],
                        ETCD_PREFIX.as_bytes().to_vec(),
                    ))?;
                    let keys = store
                        .snapshot()?
                        .map(|entry| entry.map(|(key, _)| key))
                        .collect::<Result<Vec<_>, _>>()?;
                    for batch in keys.chunks(100) {
                        store
                            .transaction::<_, std::convert::Infallible>(|txn| {
                                for key in batch {
                                    txn.delete(key)?;
                                }
                                Ok(())
                            })
                            .map_err(kms_store::StoreError::from)?;
                    }
                    Ok(())
                })
                .join()
                .map_err(|_| anyhow::anyhow!("wiping etcd panicked"))?
            }
        }
    }

    /// The file holding the control plane's clock offset in milliseconds.
    pub fn clock_offset_file(&self) -> PathBuf {
        self.dir().join(CLOCK_OFFSET_FILE)
    }

    /// The control plane's clock offset now, in milliseconds.
    pub fn clock_offset_ms(&self) -> Result<i64> {
        match std::fs::read_to_string(self.clock_offset_file()) {
            Ok(text) => Ok(text.trim().parse()?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    /// Sets the control plane's clock offset. The file is replaced whole (written aside, then
    /// renamed), so the server never reads half of it.
    pub fn set_clock_offset_ms(&self, ms: i64) -> Result<()> {
        let path = self.clock_offset_file();
        let aside = path.with_extension("new");
        std::fs::write(&aside, format!("{ms}\n"))?;
        std::fs::rename(&aside, &path)?;
        Ok(())
    }

    /// Moves the control plane's clock forward by `by`; the schedulers act on it within
    /// [`SCHEDULER_INTERVAL_MS`], so poll for the effect with [`eventually`].
    pub fn advance_clock(&self, by: Duration) -> Result<()> {
        let ms = i64::try_from(by.as_millis())?;
        self.set_clock_offset_ms(self.clock_offset_ms()? + ms)
    }

    fn spawn(&self, bin: &str, config: &str) -> Result<Child> {
        spawn_plane(
            bin,
            &self.dir().join(config),
            &self.softhsm_conf(),
            &self.dir().join("logs").join(format!("{bin}.log")),
        )
    }

    async fn boot(&mut self) -> Result<()> {
        self.data = Some(self.spawn("kms-data", "data.toml")?);
        self.control = Some(self.spawn("kms-control", "control.toml")?);
        let (data_addr, control_addr) = (self.data_addr.clone(), self.control_addr.clone());
        self.wait_healthy("kms-data", &data_addr).await?;
        self.wait_healthy("kms-control", &control_addr).await?;
        Ok(())
    }

    async fn wait_healthy(&mut self, name: &str, addr: &str) -> Result<()> {
        use tonic_health::pb::health_check_response::ServingStatus;
        use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut poll = tokio::time::interval(Duration::from_millis(50));
        loop {
            poll.tick().await;
            for (who, child) in [
                ("kms-control", &mut self.control),
                ("kms-data", &mut self.data),
            ] {
                if let Some(status) = child.as_mut().map(Child::try_wait).transpose()?.flatten() {
                    let log = std::fs::read_to_string(
                        self.dir.path().join("logs").join(format!("{who}.log")),
                    )
                    .unwrap_or_default();
                    bail!("{who} exited early with {status}; log:\n{log}");
                }
            }
            if let Ok(channel) = self.endpoint_as(addr, Some(ALICE))?.connect().await {
                let resp = HealthClient::new(channel)
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await;
                if resp.is_ok_and(|r| r.get_ref().status == ServingStatus::Serving as i32) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "{name} not healthy on {addr} after 60 s; log:\n{}",
                    self.log(name)
                );
            }
        }
    }

    /// The log of `bin` so far.
    pub fn log(&self, bin: &str) -> String {
        std::fs::read_to_string(self.dir().join("logs").join(format!("{bin}.log")))
            .unwrap_or_default()
    }

    /// Stops both planes with SIGTERM and checks each exits successfully: the data plane first,
    /// so its last audit checkpoint reaches the control plane.
    pub async fn stop(&mut self) -> Result<()> {
        for (name, slot) in [
            ("kms-data", &mut self.data),
            ("kms-control", &mut self.control),
        ] {
            if let Some(child) = slot.take() {
                terminate(name, child).await?;
            }
        }
        Ok(())
    }

    /// Stops only the control plane (SIGTERM), leaving the data plane running.
    pub async fn stop_control(&mut self) -> Result<()> {
        match self.control.take() {
            Some(child) => terminate("kms-control", child).await,
            None => Ok(()),
        }
    }

    /// Starts the control plane again after [`Stack::stop_control`].
    pub async fn start_control(&mut self) -> Result<()> {
        self.control = Some(self.spawn("kms-control", "control.toml")?);
        let addr = self.control_addr.clone();
        self.wait_healthy("kms-control", &addr).await
    }

    /// Stops and starts both planes on the same directory and ports.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await?;
        self.boot().await
    }

    /// A channel to `addr` calling as `principal`: over mTLS with that principal's client
    /// certificate (none for `None`) when the stack serves mTLS.
    fn channel_as(&self, addr: &str, principal: Option<&str>) -> Result<Channel> {
        Ok(self.endpoint_as(addr, principal)?.connect_lazy())
    }

    fn endpoint_as(
        &self,
        addr: &str,
        principal: Option<&str>,
    ) -> Result<tonic::transport::Endpoint> {
        if !self.options.mtls {
            return Ok(Channel::from_shared(format!("http://{addr}"))?);
        }
        let certs = self.dir().join("certs");
        let mut tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(std::fs::read(
                certs.join("ca.pem"),
            )?))
            .domain_name("localhost");
        if let Some(p) = principal {
            let stem = cert_stem(p);
            tls = tls.identity(tonic::transport::Identity::from_pem(
                std::fs::read(certs.join(format!("{stem}.pem")))?,
                std::fs::read(certs.join(format!("{stem}-key.pem")))?,
            ));
        }
        Ok(Channel::from_shared(format!("https://{addr}"))?.tls_config(tls)?)
    }

    /// A channel to `addr` as [`Stack::keys`] and the others use: over mTLS with
    /// `principal`'s client certificate (none for `None`) when the stack serves mTLS.
    pub fn channel(&self, addr: &str, principal: Option<&str>) -> Result<Channel> {
        self.channel_as(addr, principal)
    }

    /// A channel presenting the client certificate and key in the given files (mTLS stacks).
    pub fn channel_with_cert(&self, addr: &str, cert: &Path, key: &Path) -> Result<Channel> {
        let certs = self.dir().join("certs");
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(std::fs::read(
                certs.join("ca.pem"),
            )?))
            .domain_name("localhost")
            .identity(tonic::transport::Identity::from_pem(
                std::fs::read(cert)?,
                std::fs::read(key)?,
            ));
        Ok(Channel::from_shared(format!("https://{addr}"))?
            .tls_config(tls)?
            .connect_lazy())
    }

    /// The directory of the mTLS stack's CA, server and client certificates.
    pub fn certs_dir(&self) -> PathBuf {
        self.dir().join("certs")
    }

    /// `KeyManagementService` as `principal` (or anonymous).
    pub fn keys(&self, principal: Option<&str>) -> Result<KeyManagementServiceClient<Svc>> {
        Ok(KeyManagementServiceClient::with_interceptor(
            self.channel_as(&self.control_addr, principal)?,
            As(principal.map(str::to_string)),
        ))
    }

    /// `KmsInstanceService` as `principal`.
    pub fn instances(&self, principal: Option<&str>) -> Result<KmsInstanceServiceClient<Svc>> {
        Ok(KmsInstanceServiceClient::with_interceptor(
            self.channel_as(&self.control_addr, principal)?,
            As(principal.map(str::to_string)),
        ))
    }

    /// `CryptoService` as `principal`.
    pub fn crypto(&self, principal: Option<&str>) -> Result<CryptoServiceClient<Svc>> {
        Ok(CryptoServiceClient::with_interceptor(
            self.channel_as(&self.data_addr, principal)?,
            As(principal.map(str::to_string)),
        ))
    }

    /// The control plane's internal `KeyDirectory` as `principal`.
    pub fn directory(&self, principal: Option<&str>) -> Result<KeyDirectoryClient<Svc>> {
        Ok(KeyDirectoryClient::with_interceptor(
            self.channel_as(&self.control_addr, principal)?,
            As(principal.map(str::to_string)),
        ))
    }

    /// The data plane's internal `KeyMaterial` as `principal`.
    pub fn material(&self, principal: Option<&str>) -> Result<KeyMaterialClient<Svc>> {
        Ok(KeyMaterialClient::with_interceptor(
            self.channel_as(&self.data_addr, principal)?,
            As(principal.map(str::to_string)),
        ))
    }

    /// A software instance owned by `owner`, made by the operator (quotas: 50 keys, 5
    /// accounts), shared with `share_with` when given; its id.
    pub async fn software_instance(&self, owner: &str, share_with: Option<&str>) -> Result<String> {
        use kms_proto::kms::v1::{CreateKmsInstanceRequest, InstanceType, ShareKmsInstanceRequest};
        let mut ops = self.instances(Some(OPERATOR))?;
        let id = ops
            .create_kms_instance(CreateKmsInstanceRequest {
                instance_type: InstanceType::Software as i32,
                owner_account_id: owner.into(),
                key_quota: 50,
                access_management_quota: Some(5),
            })
            .await?
            .into_inner()
            .kms_instance
            .context("CreateKmsInstance answered no instance")?
            .kms_instance_id;
        if let Some(account) = share_with {
            ops.share_kms_instance(ShareKmsInstanceRequest {
                kms_instance_id: id.clone(),
                account_id: account.into(),
            })
            .await?;
        }
        Ok(id)
    }

    /// An `AdminService` client to the control plane, calling as `principal`.
    pub fn admin(
        &self,
        principal: Option<&str>,
    ) -> Result<kms_proto::kms::v1::admin_service_client::AdminServiceClient<Svc>> {
        Ok(
            kms_proto::kms::v1::admin_service_client::AdminServiceClient::with_interceptor(
                self.channel_as(&self.control_addr, principal)?,
                As(principal.map(str::to_string)),
            ),
        )
    }

    /// An `AccessKeyService` client to the control plane, calling as `principal`.
    pub fn access_keys(
        &self,
        principal: Option<&str>,
    ) -> Result<kms_proto::kms::v1::access_key_service_client::AccessKeyServiceClient<Svc>> {
        Ok(
            kms_proto::kms::v1::access_key_service_client::AccessKeyServiceClient::with_interceptor(
                self.channel_as(&self.control_addr, principal)?,
                As(principal.map(str::to_string)),
            ),
        )
    }

    /// An `AccessKeyResolver` client to the data plane, calling as `principal`.
    pub fn access_key_resolver(
        &self,
        principal: Option<&str>,
    ) -> Result<kms_proto::kms::v1::access_key_resolver_client::AccessKeyResolverClient<Svc>> {
        Ok(
            kms_proto::kms::v1::access_key_resolver_client::AccessKeyResolverClient::with_interceptor(
                self.channel_as(&self.data_addr, principal)?,
                As(principal.map(str::to_string)),
            ),
        )
    }

    /// An `AuditService` client to the control plane, calling as `principal`.
    pub fn audit(
        &self,
        principal: Option<&str>,
    ) -> Result<kms_proto::kms::v1::audit_service_client::AuditServiceClient<Svc>> {
        Ok(
            kms_proto::kms::v1::audit_service_client::AuditServiceClient::with_interceptor(
                self.channel_as(&self.control_addr, principal)?,
                As(principal.map(str::to_string)),
            ),
        )
    }
}

/// The file stem `kmsctl dev certs` gives a principal's client certificate:
/// `acs:ram::1:user/a` → `client-1-user-a`.
pub fn cert_stem(principal: &str) -> String {
    let rest = principal.strip_prefix("acs:ram::").unwrap_or(principal);
    let safe: String = rest
        .chars()
        .map(|c| if c == ':' || c == '/' { '-' } else { c })
        .collect();
    format!("client-{safe}")
}

/// Where the stack keeps the control plane's clock offset, under its directory.
pub(crate) const CLOCK_OFFSET_FILE: &str = "clock-offset-ms";

/// Polls `check` every 20 ms until it returns `Some`, for at most `timeout`; the error names
/// `what` was awaited. For effects that show up asynchronously (schedulers, caches), instead of
/// sleeping a fixed time.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("{what}: not seen within {} ms", timeout.as_millis());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The reason code of a failed call.
pub fn reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_details_error_info()
        .map(|i| i.reason)
        .unwrap_or_default()
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push(path);
            }
        }
    }
    Ok(out)
}

/// Whether `haystack` contains `needle`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

// Crash drills: the control plane killed without warning, then started again on the same store
// and port.

/// How many times [`Stack::restart_control`] starts the control plane when the port it must
/// bind is taken in the meantime.
const REBIND_ATTEMPTS: u32 = 5;

impl Stack {
    /// Kills the control plane with SIGKILL, as a crash or the OOM killer would: no drain, no
    /// final audit checkpoint, nothing on disk but what its calls had flushed. Waits until it
    /// is gone, and fails if it had already ended on its own.
    pub async fn kill_control(&mut self) -> Result<()> {
        let child = self.control.take().context("kms-control is not running")?;
        self.sigkill("kms-control", child).await
    }

    /// Kills the data plane with SIGKILL, as [`Stack::kill_control`] does the control plane:
    /// no drain, no final audit checkpoint.
    pub async fn kill_data(&mut self) -> Result<()> {
        let child = self.data.take().context("kms-data is not running")?;
        self.sigkill("kms-data", child).await
    }

    /// Sends `child` (plane `name`) SIGKILL and waits until it is gone; fails if it had
    /// already ended on its own.
    async fn sigkill(&self, name: &str, mut child: Child) -> Result<()> {
        use std::os::unix::process::ExitStatusExt;
        let pid = child
            .id()
            .with_context(|| format!("{name} has already been reaped"))?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(pid)?),
            nix::sys::signal::Signal::SIGKILL,
        )?;
        let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
            .await
            .with_context(|| format!("{name} still running 20 s after SIGKILL"))??;
        if status.signal() != Some(nix::sys::signal::Signal::SIGKILL as i32) {
            bail!(
                "{name} ended with {status} before it was killed; log:\n{}",
                self.log(name)
            );
        }
        Ok(())
    }

    /// Starts the data plane again after [`Stack::kill_data`], on the same port, as
    /// [`Stack::restart_control`] does the control plane; returns how long it took until it
    /// served.
    pub async fn restart_data(&mut self) -> Result<Duration> {
        let started = Instant::now();
        let mut attempt = 1;
        loop {
            let addr = self.data_addr.clone();
            wait_port_free(&addr).await?;
            let log_before = self.log("kms-data").len();
            self.data = Some(self.spawn("kms-data", "data.toml")?);
            let Err(e) = self.wait_healthy("kms-data", &addr).await else {
                return Ok(started.elapsed());
            };
            let lost_port = self
                .log("kms-data")
                .get(log_before..)
                .is_some_and(|new| new.contains("cannot listen on"));
            if !lost_port || attempt == REBIND_ATTEMPTS {
                return Err(e);
            }
            if let Some(mut child) = self.data.take() {
                child.wait().await?;
            }
            attempt += 1;
        }
    }

    /// Starts the control plane again after [`Stack::kill_control`], on the same store and
    /// port, and returns how long it took until it served (health polled, see
    /// [`Stack::start_control`]).
    ///
    /// The killed process's connections linger in TIME_WAIT on the port; the control plane
    /// binds with `SO_REUSEADDR` (tokio does on Unix), so they do not stand in its way. A live
    /// socket on the port does: while the port was free, an outgoing connection may have been
    /// given it as its local port (a client's connection to the dead port can even connect to
    /// itself). So this waits, bounded, until the port can be bound with the same option, and
    /// starts the control plane again if it still lost the race for the port.
    pub async fn restart_control(&mut self) -> Result<Duration> {
        let started = Instant::now();
        let mut attempt = 1;
        loop {
            self.wait_control_port_free().await?;
            let log_before = self.log("kms-control").len();
            let Err(e) = self.start_control().await else {
                return Ok(started.elapsed());
            };
            let lost_port = self
                .log("kms-control")
                .get(log_before..)
                .is_some_and(|new| new.contains("cannot listen on"));
            if !lost_port || attempt == REBIND_ATTEMPTS {
                return Err(e);
            }
            if let Some(mut child) = self.control.take() {
                child.wait().await?;
            }
            attempt += 1;
        }
    }

    /// A maker of `KeyManagementService` clients as `principal`, each on a connection of its
    /// own, that does not borrow the stack: for tasks that keep calling while the control
    /// plane is killed and started under them.
    pub fn keys_maker(
        &self,
        principal: &str,
    ) -> Result<impl Fn() -> KeyManagementServiceClient<Svc> + Clone + Send + Sync + 'static> {
        let endpoint = self.endpoint_as(&self.control_addr, Some(principal))?;
        let principal = principal.to_string();
        Ok(move || {
            KeyManagementServiceClient::with_interceptor(
                endpoint.clone().connect_lazy(),
                As(Some(principal.clone())),
            )
        })
    }

    /// Waits, at most 10 s, until the control plane's address can be bound with
    /// `SO_REUSEADDR`, as the control plane binds it (std sets it on Unix too).
    async fn wait_control_port_free(&self) -> Result<()> {
        wait_port_free(&self.control_addr).await
    }
}

/// Waits, at most 10 s, until `addr` can be bound with `SO_REUSEADDR`, as the planes bind it
/// (std sets it on Unix too).
async fn wait_port_free(addr: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut poll = tokio::time::interval(Duration::from_millis(10));
    loop {
        poll.tick().await;
        match std::net::TcpListener::bind(addr) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {}
            Err(e) => {
                return Err(e).with_context(|| format!("cannot bind {addr}"));
            }
        }
    }
}
