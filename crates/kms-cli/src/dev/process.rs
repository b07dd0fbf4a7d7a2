//! The processes `kmsctl dev up` runs: starting one with its log, waiting for its health
//! check, and stopping them all in order.

use super::*;

pub(super) const READY_TIMEOUT: Duration = Duration::from_secs(60);
pub(super) const POLL_INTERVAL: Duration = Duration::from_millis(100);
pub(super) const STOP_TIMEOUT: Duration = Duration::from_secs(10);
pub(super) const LOG_TAIL_LINES: usize = 20;

/// Environment variables of kmsctl itself; the servers would read them as `KMS_*` config
/// overrides, so children do not inherit them.
pub(super) const CLIENT_ENV: &[&str] = &[
    "KMS_PRINCIPAL",
    "KMS_CONTROL_ADDR",
    "KMS_DATA_ADDR",
    "KMS_CA",
    "KMS_CERT",
    "KMS_KEY",
];

/// Where kmsctl finds the servers' binaries: `--bin-dir`, made absolute so the children find
/// them whatever their working directory, or kmsctl's own directory.
pub(super) fn bin_dir(bin_dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    match bin_dir {
        Some(d) => std::fs::canonicalize(d)
            .with_context(|| format!("--bin-dir {}: no such directory", d.display())),
        None => {
            let exe = std::env::current_exe().context("cannot locate the kmsctl executable")?;
            exe.parent()
                .map(Path::to_path_buf)
                .context("the kmsctl executable has no parent directory")
        }
    }
}

/// The binary `name` (`kms-gateway`, `kms-console`) in [`bin_dir`], or an error that says how
/// to build it.
pub(super) fn find_binary(bin_dir: Option<&Path>, name: &str) -> anyhow::Result<PathBuf> {
    let dir = self::bin_dir(bin_dir)?;
    let program = dir.join(name);
    if !program.is_file() {
        anyhow::bail!(
            "{name} not found in {}: build it with `cargo build --bins`",
            dir.display()
        );
    }
    Ok(program)
}

/// The `kms-control` and `kms-data` binaries.
pub(super) fn find_binaries(bin_dir: Option<&Path>) -> anyhow::Result<(PathBuf, PathBuf)> {
    let dir = self::bin_dir(bin_dir)?;
    let control = dir.join("kms-control");
    let data = dir.join("kms-data");
    let missing: Vec<&str> = [("kms-control", &control), ("kms-data", &data)]
        .into_iter()
        .filter(|(_, p)| !p.is_file())
        .map(|(n, _)| n)
        .collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "{} not found in {}: build them with `cargo build --bins`{}",
            missing.join(" and "),
            dir.display(),
            if bin_dir.is_none() {
                " or pass --bin-dir"
            } else {
                ""
            }
        );
    }
    Ok((control, data))
}

/// Refuses to start when something already listens on `addr` (a health check would then
/// answer for the wrong server).
pub(super) fn check_port_free(name: &str, addr: SocketAddr, flag: &str) -> anyhow::Result<()> {
    match std::net::TcpListener::bind(addr) {
        Ok(_) => Ok(()),
        Err(e) => anyhow::bail!(
            "cannot use {addr} for {name}: {e}; is another `kmsctl dev up` running? Choose \
             another address with {flag}"
        ),
    }
}

/// How to start one component of the local stack and tell when it is ready.
#[derive(Debug, Clone)]
pub(super) struct Launch {
    /// Its name in messages, and its log's (`logs/<name>.log`).
    pub(super) name: String,
    pub(super) program: PathBuf,
    pub(super) args: Vec<std::ffi::OsString>,
    /// Where it listens.
    pub(super) addr: SocketAddr,
    /// Variables set for it (the rest of the environment is inherited, less kmsctl's own).
    pub(super) env: Vec<(&'static str, std::ffi::OsString)>,
    /// How to tell it is ready.
    pub(super) health: Health,
}

/// A component's readiness check.
#[derive(Debug, Clone)]
pub(super) enum Health {
    /// A `grpc.health.v1` check answering SERVING for `""` (the planes, etcd).
    Grpc(Box<tonic::transport::Endpoint>),
    /// `GET /healthz` over plain HTTP/1.1 answering 200 (the HTTP servers: console, gateway).
    Http(SocketAddr),
}

impl Health {
    async fn check(&self) -> Result<(), String> {
        match self {
            Health::Grpc(endpoint) => health_check((**endpoint).clone()).await,
            Health::Http(addr) => http_health_check(*addr).await,
        }
    }
}

/// One `GET /healthz`: `Ok` on a 200 answer.
async fn http_health_check(addr: SocketAddr) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await?;
        Ok::<_, std::io::Error>(head)
    };
    match tokio::time::timeout(Duration::from_secs(2), exchange).await {
        Err(_) => Err("no answer within 2 s".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(head)) if head.starts_with(b"HTTP/1.1 200") => Ok(()),
        Ok(Ok(head)) => Err(format!(
            "answered {}",
            String::from_utf8_lossy(&head).trim()
        )),
    }
}

/// A started component.
#[derive(Debug)]
pub(super) struct Plane {
    pub(super) launch: Launch,
    pub(super) log: PathBuf,
    /// Where this run's output starts in the log.
    pub(super) log_start: u64,
    pub(super) child: Child,
    /// When it was restarted after exiting on its own, most recent last.
    restarts: Vec<Instant>,
}

/// At most this many restarts of one component within [`RESTART_WINDOW`]; past that it is
/// left stopped and `dev up` stops.
pub(super) const MAX_RESTARTS: usize = 5;
pub(super) const RESTART_WINDOW: Duration = Duration::from_secs(60);

impl Plane {
    /// Starts `launch`, its output appended to `logs/<name>.log` under `layout`.
    pub(super) async fn start(launch: Launch, layout: &Layout) -> anyhow::Result<Self> {
        let (child, log, log_start) = spawn(&launch, layout)?;
        Ok(Self {
            launch,
            log,
            log_start,
            child,
            restarts: Vec::new(),
        })
    }

    pub(super) fn name(&self) -> &str {
        &self.launch.name
    }

    pub(super) fn addr(&self) -> SocketAddr {
        self.launch.addr
    }

    /// How long to wait before starting it again after it exited: 0.5 s, doubling with each
    /// restart within [`RESTART_WINDOW`]; `None` once it restarted [`MAX_RESTARTS`] times in
    /// it.
    pub(super) fn backoff(&mut self) -> Option<Duration> {
        let now = Instant::now();
        self.restarts
            .retain(|at| now.duration_since(*at) < RESTART_WINDOW);
        let recent = u32::try_from(self.restarts.len()).ok()?;
        (self.restarts.len() < MAX_RESTARTS).then(|| Duration::from_millis(500) * 2u32.pow(recent))
    }

    /// Starts it again after it exited.
    pub(super) fn restart(&mut self, layout: &Layout) -> anyhow::Result<()> {
        self.restarts.push(Instant::now());
        let (child, log, log_start) = spawn(&self.launch, layout)?;
        self.child = child;
        self.log = log;
        self.log_start = log_start;
        Ok(())
    }

    /// The last lines this run wrote to the log.
    pub(super) fn log_tail(&self) -> String {
        match read_tail(&self.log, self.log_start, LOG_TAIL_LINES) {
            Ok(t) if t.trim().is_empty() => format!("({} is empty)\n", self.log.display()),
            Ok(t) => t,
            Err(e) => format!("(cannot read {}: {e})\n", self.log.display()),
        }
    }

    pub(super) fn print_failure(&self, what: &str) {
        eprintln!("error: {} {what}", self.name());
        eprintln!("--- last lines of {} ---", self.log.display());
        eprint!("{}", self.log_tail());
        eprintln!("---");
    }

    /// Whether the process has exited; its status if so.
    pub(super) fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub(super) fn terminate(&mut self) {
        if self.exited().is_some() {
            return;
        }
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            // ESRCH means it is already gone, which is what we want.
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
    }
}

/// The last `n` lines of `path` from byte `start` on.
pub(super) fn read_tail(path: &Path, start: u64, n: usize) -> std::io::Result<String> {
    const WINDOW: u64 = 64 * 1024;
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let from = start.max(len.saturating_sub(WINDOW));
    f.seek(SeekFrom::Start(from))?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    let mut out = lines[lines.len().saturating_sub(n)..].join("\n");
    out.push('\n');
    Ok(out)
}

/// The endpoint health checks of the plane on `addr` use: over mTLS, with the operator's
/// certificate, when `tls` is given.
pub(super) fn health_endpoint(
    addr: SocketAddr,
    tls: Option<&DevTls>,
) -> anyhow::Result<tonic::transport::Endpoint> {
    let url = plane_url(addr, tls.is_some());
    let endpoint = match tls {
        None => crate::client::endpoint(&url)?,
        Some(tls) => crate::client::tls_endpoint(&url, &tls.files(&tls.operator))?.1,
    };
    Ok(endpoint
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(2)))
}

/// One health check: `Ok` when the server answers SERVING for `""`.
pub(super) async fn health_check(endpoint: tonic::transport::Endpoint) -> Result<(), String> {
    let channel = endpoint.connect().await.map_err(|e| error_chain(&e))?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map_err(|s| RpcError(s).to_string())?
        .into_inner();
    match ServingStatus::try_from(response.status) {
        Ok(ServingStatus::Serving) => Ok(()),
        Ok(other) => Err(format!("health status {}", other.as_str_name())),
        Err(_) => Err(format!("health status {}", response.status)),
    }
}

/// Why startup failed.
#[derive(Debug)]
pub(super) enum StartFailure {
    /// The named plane exited.
    Exited(usize, ExitStatus),
    /// The named plane did not become ready; the last health-check answer.
    Timeout(usize, String),
}

/// Polls `planes[target]`'s health check until it is healthy, failing when any plane exits or
/// at `deadline`.
pub(super) async fn wait_ready(
    planes: &mut [Plane],
    target: usize,
    deadline: Instant,
) -> Result<(), StartFailure> {
    let health = planes[target].launch.health.clone();
    let mut last = String::from("no answer yet");
    loop {
        for (i, p) in planes.iter_mut().enumerate() {
            if let Some(status) = p.exited() {
                return Err(StartFailure::Exited(i, status));
            }
        }
        if Instant::now() >= deadline {
            return Err(StartFailure::Timeout(target, last));
        }
        match tokio::time::timeout_at(deadline, health.check()).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => last = e,
            Err(_) => {}
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Sends SIGTERM to every plane still running, one at a time, waiting up to 10 s in all, then
/// kills what is left.
pub(super) async fn stop_all(planes: &mut [Plane]) {
    // One after the other in their order (the data plane first, etcd last), so the data
    // plane's last audit checkpoint still reaches the control plane, and the control plane's
    // its store.
    let deadline = Instant::now() + STOP_TIMEOUT;
    for p in planes.iter_mut() {
        p.terminate();
        if tokio::time::timeout_at(deadline, p.child.wait())
            .await
            .is_err()
        {
            eprintln!(
                "{} did not stop within {} s; killing it",
                p.name(),
                STOP_TIMEOUT.as_secs()
            );
            let _ = p.child.kill().await;
        }
    }
}

/// Runs `launch` with its output appended to its log; the child, the log and where this
/// run's output starts in it.
fn spawn(launch: &Launch, layout: &Layout) -> anyhow::Result<(Child, PathBuf, u64)> {
    let name = &launch.name;
    let log = layout.logs.join(format!("{name}.log"));
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    writeln!(
        file,
        "=== kmsctl dev up: starting {name} at {} ===",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now())
    )
    .with_context(|| format!("cannot write {}", log.display()))?;
    let log_start = file.metadata().map(|m| m.len()).unwrap_or(0);
    let stderr = file
        .try_clone()
        .with_context(|| format!("cannot open {}", log.display()))?;
    let mut cmd = Command::new(&launch.program);
    cmd.args(&launch.args)
        .current_dir(&layout.dir)
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(stderr)
        // Own process group: a terminal's Ctrl-C reaches kmsctl, which stops the components
        // in order, instead of reaching all of them at once.
        .process_group(0)
        .kill_on_drop(true);
    for var in CLIENT_ENV {
        cmd.env_remove(var);
    }
    // Plain text in the log files (tracing-subscriber honours NO_COLOR).
    cmd.env("NO_COLOR", "1");
    for (name, value) in &launch.env {
        cmd.env(name, value);
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", launch.program.display()))?;
    Ok((child, log, log_start))
}
