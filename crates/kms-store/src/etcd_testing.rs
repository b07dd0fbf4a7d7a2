//! Real etcd processes for tests (feature `testing`): one member ([`EtcdProcess`]) or a cluster
//! ([`EtcdCluster`]), on free loopback ports with their data in a temporary directory, killed
//! (SIGKILL) and removed on drop.
//!
//! They run the `etcd` binary found on `PATH` (Debian's `etcd-server`, which
//! `scripts/ensure-deps.sh` installs). Starting waits, in a bounded loop, until every member
//! answers `GET /health` with a leader. Failures panic with a message saying what to do: these
//! are test helpers.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tempfile::TempDir;

/// How long a member may take to become healthy.
const READY_WITHIN: Duration = Duration::from_secs(30);
const POLL_EVERY: Duration = Duration::from_millis(50);

/// One single-member etcd cluster.
#[derive(Debug)]
pub struct EtcdProcess {
    member: Member,
    /// Holds the data directory; removed on drop, after the member is killed.
    _dir: TempDir,
}

impl EtcdProcess {
    /// Starts a fresh member and waits until it serves requests.
    pub fn start() -> Self {
        let dir = temp_dir();
        let ports = free_ports(3);
        let mut member = Member::new("default", dir.path(), &ports);
        member.initial_cluster = member.peer_entry();
        member.spawn();
        member.wait_healthy();
        Self { member, _dir: dir }
    }

    /// The client URL, such as `http://127.0.0.1:40123`.
    pub fn endpoint(&self) -> String {
        self.member.endpoint()
    }

    /// Starts a fresh member that serves clients over TLS only, with the server certificate
    /// and key in `cert` and `key` (PEM; for 127.0.0.1), and requires client certificates
    /// that chain to the CA in `ca`.
    pub fn start_tls(ca: &Path, cert: &Path, key: &Path) -> Self {
        let dir = temp_dir();
        let ports = free_ports(3);
        let mut member = Member::new("default", dir.path(), &ports);
        member.tls = Some(MemberTls {
            ca: ca.to_path_buf(),
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        });
        member.initial_cluster = member.peer_entry();
        member.spawn();
        member.wait_healthy();
        Self { member, _dir: dir }
    }

    /// Kills the member with SIGKILL (no clean shutdown) and reaps it.
    pub fn kill(&mut self) {
        self.member.kill();
    }

    /// Starts the member again on the same ports and data directory, after [`Self::kill`], and
    /// waits until it serves requests.
    pub fn restart(&mut self) {
        self.member.kill();
        self.member.spawn();
        self.member.wait_healthy();
    }
}

/// A cluster of several members on loopback, each with its own data directory.
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<Member>,
    _dir: TempDir,
}

impl EtcdCluster {
    /// Starts `size` members as one new cluster and waits until each serves requests.
    pub fn start(size: usize) -> Self {
        let dir = temp_dir();
        let ports = free_ports(3 * size);
        let mut members: Vec<Member> = ports
            .chunks(3)
            .enumerate()
            .map(|(i, ports)| Member::new(&format!("m{i}"), dir.path(), ports))
            .collect();
        let initial_cluster = members
            .iter()
            .map(Member::peer_entry)
            .collect::<Vec<_>>()
            .join(",");
        for member in &mut members {
            member.initial_cluster = initial_cluster.clone();
            member.spawn();
        }
        for member in &mut members {
            member.wait_healthy();
        }
        Self { members, _dir: dir }
    }

    /// The client URLs of every member, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    /// The index of the member that leads, as the running members' status reports say, or
    /// `None` if none of them knows a leader.
    pub fn leader_index(&self) -> Option<usize> {
        let running: Vec<(usize, String)> = self
            .members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.child.is_some())
            .map(|(i, m)| (i, m.endpoint()))
            .collect();
        // A thread of its own, so this works from inside another runtime too.
        std::thread::spawn(move || leader_of(running))
            .join()
            .ok()
            .flatten()
    }

    /// Kills member `i` with SIGKILL (no clean shutdown) and reaps it.
    pub fn kill(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// Starts member `i` again on its ports and data directory, and waits until it serves
    /// requests (it needs a quorum to).
    pub fn restart(&mut self, i: usize) {
        let member = &mut self.members[i];
        member.kill();
        member.spawn();
        member.wait_healthy();
    }
}

/// Asks each `(index, endpoint)` for its status; the index whose member id is the leader.
fn leader_of(members: Vec<(usize, String)>) -> Option<usize> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    runtime.block_on(async move {
        let mut ids = Vec::new();
        let mut leader = None;
        for (i, endpoint) in members {
            let options = etcd_client::ConnectOptions::new()
                .with_timeout(Duration::from_secs(2))
                .with_connect_timeout(Duration::from_secs(2));
            let Ok(mut client) = etcd_client::Client::connect([endpoint], Some(options)).await
            else {
                continue;
            };
            let Ok(status) = client.status().await else {
                continue;
            };
            if let Some(header) = status.header() {
                ids.push((i, header.member_id()));
            }
            if status.leader() != 0 {
                leader = Some(status.leader());
            }
        }
        let leader = leader?;
        ids.into_iter()
            .find(|(_, id)| *id == leader)
            .map(|(i, _)| i)
    })
}

/// The files of a member that serves clients over TLS.
#[derive(Debug)]
struct MemberTls {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

/// One etcd member: its ports, directories and process.
#[derive(Debug)]
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    /// Plain HTTP `/health` (and `/metrics`), whatever the client port speaks.
    metrics_port: u16,
    tls: Option<MemberTls>,
    data_dir: PathBuf,
    log: PathBuf,
    /// `--initial-cluster`: every member's `name=peer-url`.
    initial_cluster: String,
    child: Option<Child>,
}

impl Member {
    /// A member on `ports`: client, peer and metrics.
    fn new(name: &str, dir: &Path, ports: &[u16]) -> Self {
        Self {
            name: name.to_owned(),
            client_port: ports[0],
            peer_port: ports[1],
            metrics_port: ports[2],
            tls: None,
            data_dir: dir.join(format!("{name}.etcd")),
            log: dir.join(format!("{name}.log")),
            initial_cluster: String::new(),
            child: None,
        }
    }

    fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    fn peer_entry(&self) -> String {
        format!("{}={}", self.name, self.peer_url())
    }

    /// Starts the process (a restart reuses the data directory; etcd then ignores the
    /// initial-cluster flags).
    fn spawn(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.log.display()));
        let log_err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.log.display()));
        let endpoint = self.endpoint();
        let peer_url = self.peer_url();
        let mut command = Command::new("etcd");
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        let metrics = format!("http://127.0.0.1:{}", self.metrics_port);
        let spawned = command
            .args(["--listen-metrics-urls", &metrics])
            .arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen-client-urls", &endpoint])
            .args(["--advertise-client-urls", &endpoint])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "kms-test"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn();
        match spawned {
            Ok(child) => self.child = Some(child),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "`etcd` is not on PATH: run scripts/ensure-deps.sh (it installs Debian's \
                 etcd-server)"
            ),
            Err(e) => panic!("cannot start etcd: {e}"),
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL; an already exited child makes both calls fail harmlessly.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Polls `GET /health` until it reports a leader; panics (with the log) after
    /// [`READY_WITHIN`] or if the process exits.
    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "etcd member {} exited with {status} while starting; log:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            if healthy(self.metrics_port) {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "etcd member {} not healthy within {READY_WITHIN:?}; log:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(POLL_EVERY);
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether the member on `port` answers its health check with a leader.
fn healthy(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let request = "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.contains("\"health\":\"true\"")
}

/// `n` distinct free loopback ports for servers a test starts (all bound at once, then
/// released for the server to take).
///
/// They come from below the kernel's ephemeral range (`ip_local_port_range`), so the outgoing
/// connection of another test cannot take one between its release and the server's bind; a
/// process-wide cursor keeps this process's tests from being handed the same port twice. If
/// that range leaves too little room below it, the kernel picks (port 0).
pub fn free_ports(n: usize) -> Vec<u16> {
    let Some(window) = listen_window() else {
        return kernel_ports(n);
    };
    let mut listeners = Vec::with_capacity(n);
    for _ in 0..window.len() {
        if listeners.len() == n {
            break;
        }
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", window.next(1))) {
            listeners.push(listener);
        }
    }
    if listeners.len() < n {
        panic!(
            "fewer than {n} free loopback ports in {}..{}",
            window.low, window.high
        );
    }
    ports_of(&listeners)
}

/// A free loopback port whose next port is free too (a client port and its peer port).
pub fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let first = match listen_window() {
            Some(window) => window.next(2),
            None => kernel_ports(1)[0],
        };
        if let Some(next) = first.checked_add(1)
            && let Ok(_first) = TcpListener::bind(("127.0.0.1", first))
            && TcpListener::bind(("127.0.0.1", next)).is_ok()
        {
            return first;
        }
    }
    panic!("no two consecutive free loopback ports in 100 tries")
}

/// Ports `low..high`, below the ephemeral range, that [`free_ports`] hands out in turn.
#[derive(Clone, Copy)]
struct Window {
    low: u16,
    high: u16,
}

impl Window {
    fn len(self) -> usize {
        usize::from(self.high - self.low)
    }

    /// The first of `count` consecutive ports that this process has not handed out lately.
    fn next(self, count: u32) -> u16 {
        static CURSOR: OnceLock<AtomicU32> = OnceLock::new();
        let cursor = CURSOR.get_or_init(|| {
            // Processes that start together begin at different places.
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            AtomicU32::new(std::process::id().wrapping_mul(7919).wrapping_add(nanos))
        });
        let span = u32::from(self.high - self.low) - count;
        let offset = cursor.fetch_add(count, Ordering::Relaxed) % span;
        // `offset < span < 2^16`, so this fits.
        self.low + offset as u16
    }
}

/// The ports below the kernel's ephemeral range, from 10000 up, or `None` if that leaves
/// fewer than a thousand.
fn listen_window() -> Option<Window> {
    const LOWEST: u16 = 10_000;
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let ephemeral_low: u16 = range.split_whitespace().next()?.parse().ok()?;
    (ephemeral_low >= LOWEST + 1_000).then_some(Window {
        low: LOWEST,
        high: ephemeral_low,
    })
}

/// `n` ports the kernel picks.
fn kernel_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| {
            TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("cannot bind loopback: {e}"))
        })
        .collect();
    ports_of(&listeners)
}

fn ports_of(listeners: &[TcpListener]) -> Vec<u16> {
    listeners
        .iter()
        .map(|l| match l.local_addr() {
            Ok(addr) => addr.port(),
            Err(e) => panic!("cannot read a bound port: {e}"),
        })
        .collect()
}

fn temp_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("kms-etcd-")
        .tempdir()
        .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]

    use super::*;

    #[test]
    fn ports_are_distinct_bindable_and_outside_the_ephemeral_range() {
        let first = free_ports(8);
        let second = free_ports(8);
        let mut all: Vec<u16> = first.iter().chain(&second).copied().collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 16, "{first:?} {second:?}");
        if let Some(window) = listen_window() {
            assert!(
                all.iter().all(|p| (window.low..window.high).contains(p)),
                "{all:?} outside {}..{}",
                window.low,
                window.high
            );
        }
        for port in all {
            TcpListener::bind(("127.0.0.1", port)).expect("a handed-out port binds");
        }
        let pair = free_port_pair();
        TcpListener::bind(("127.0.0.1", pair)).expect("the pair's first port binds");
        TcpListener::bind(("127.0.0.1", pair + 1)).expect("the pair's second port binds");
    }
}
