//! etcd for `kmsctl dev up --store etcd`: one member on loopback, its data under `DIR/etcd`,
//! so keys survive restarts as they do on sled. The binary comes from `PATH` (the Debian
//! package `etcd-server`, which scripts/ensure-deps.sh installs).

use std::ffi::OsString;

use super::*;

/// Where the etcd member listens for clients unless `--etcd-addr` says otherwise; its peer
/// port is the next one.
pub(super) const DEFAULT_ETCD_ADDR: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 2379);

/// The prefix the dev control plane's keys live under.
pub(super) const PREFIX: &str = "kms/";

/// The `etcd` binary on `PATH`.
pub(super) fn find_etcd() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("etcd"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "etcd is not on PATH: install the Debian package `etcd-server` \
                 (`sudo apt-get install etcd-server`, or scripts/ensure-deps.sh)"
            )
        })
}

/// The peer address of the member whose clients use `client`.
pub(super) fn peer_addr(client: SocketAddr) -> SocketAddr {
    SocketAddr::new(client.ip(), client.port().wrapping_add(1))
}

/// The URL clients reach the member on.
pub(super) fn client_url(client: SocketAddr) -> String {
    format!("http://{client}")
}

/// How to run the member: a single-member cluster of its own in `layout.etcd_data`.
pub(super) fn launch(
    layout: &Layout,
    program: PathBuf,
    client: SocketAddr,
) -> anyhow::Result<Launch> {
    let client_url = client_url(client);
    let peer_url = format!("http://{}", peer_addr(client));
    let args: Vec<OsString> = [
        "--name",
        "kms-dev",
        "--data-dir",
        &layout.etcd_data.to_string_lossy(),
        "--listen-client-urls",
        &client_url,
        "--advertise-client-urls",
        &client_url,
        "--listen-peer-urls",
        &peer_url,
        "--initial-advertise-peer-urls",
        &peer_url,
        "--initial-cluster",
        &format!("kms-dev={peer_url}"),
        "--logger",
        "zap",
        "--log-level",
        "warn",
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    let health = crate::client::endpoint(&client_url)?
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(2));
    Ok(Launch {
        name: "etcd".into(),
        program,
        args,
        addr: client,
        // etcd 3.4 on 64-bit Linux needs no variables; its default quota suits development.
        env: Vec::new(),
        health: Health::Grpc(Box::new(health)),
    })
}
