//! Several replicas of each plane on one etcd cluster, for failover tests: every process is a
//! real binary on loopback that a test can kill with SIGKILL and start again. The data-plane
//! replicas share one SoftHSM2 token (so one root key), as replicas in production share an
//! HSM partition; the control-plane replicas share one clock offset file.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use kms_proto::kms::v1::crypto_service_client::CryptoServiceClient;
use kms_proto::kms::v1::key_management_service_client::KeyManagementServiceClient;
use kms_store::etcd_testing::EtcdCluster;
use kms_store::{EtcdOptions, EtcdStore, Store};
use tokio::process::Child;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::{As, CLOCK_OFFSET_FILE, Options, StoreConfig, control_toml, data_toml};

/// The etcd key prefix the cluster's control planes use.
pub const PREFIX: &str = crate::ETCD_PREFIX;

/// A `KeyManagementService` client that calls as a principal.
pub type KeysClient = KeyManagementServiceClient<InterceptedService<Channel, As>>;
/// A `CryptoService` client that calls as a principal.
pub type CryptoClient = CryptoServiceClient<InterceptedService<Channel, As>>;

fn lazy_channel(addr: &str) -> Result<Channel> {
    Ok(Channel::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(1))
        .connect_lazy())
}

/// A key-management client of the control plane at `addr`, calling as `principal`.
pub fn keys_client(addr: &str, principal: &str) -> Result<KeysClient> {
    Ok(KeyManagementServiceClient::with_interceptor(
        lazy_channel(addr)?,
        As(Some(principal.to_owned())),
    ))
}

/// A crypto client of the data plane at `addr`, calling as `principal`.
pub fn crypto_client(addr: &str, principal: &str) -> Result<CryptoClient> {
    Ok(CryptoServiceClient::with_interceptor(
        lazy_channel(addr)?,
        As(Some(principal.to_owned())),
    ))
}

/// One replica of a plane.
#[derive(Debug)]
pub struct Replica {
    /// `kms-control-0`, `kms-data-1`, ...: its log is `logs/<name>.log`.
    pub name: String,
    bin: &'static str,
    /// `host:port`.
    pub addr: String,
    config: PathBuf,
    child: Option<Child>,
}

/// Which plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plane {
    /// `kms-control`.
    Control,
    /// `kms-data`.
    Data,
}

/// A running cluster. Dropping it kills every process, then removes its directory.
#[derive(Debug)]
pub struct Cluster {
    /// Control-plane replicas.
    pub controls: Vec<Replica>,
    /// Data-plane replicas.
    pub datas: Vec<Replica>,
    /// The etcd members.
    pub etcd: EtcdCluster,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts an etcd cluster of `members`, then `datas` data-plane and `controls`
    /// control-plane replicas on it, each given the other plane's every replica; returns once
    /// every replica answers its health check.
    pub async fn start(members: usize, controls: usize, datas: usize) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("kms-cluster-").tempdir()?;
        let root = dir.path().to_path_buf();
        std::fs::create_dir_all(root.join("logs"))?;
        crate::init_token(&root)?;
        let etcd = std::thread::spawn(move || EtcdCluster::start(members))
            .join()
            .map_err(|_| anyhow::anyhow!("the etcd cluster did not start"))?;
        let options = Options::default();
        let addrs = |n: usize| -> Result<Vec<String>> {
            (0..n)
                .map(|_| Ok(format!("127.0.0.1:{}", crate::free_port()?)))
                .collect()
        };
        let (control_addrs, data_addrs) = (addrs(controls)?, addrs(datas)?);
        let urls = |addrs: &[String]| {
            addrs
                .iter()
                .map(|a| format!("http://{a}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let store = StoreConfig::Etcd(etcd.endpoints()).render();
        let mut cluster = Self {
            controls: Vec::new(),
            datas: Vec::new(),
            etcd,
            dir,
        };
        for (i, addr) in data_addrs.iter().enumerate() {
            let name = format!("kms-data-{i}");
            let config = root.join(format!("{name}.toml"));
            let audit = root.join(format!("logs/{name}-audit.log"));
            std::fs::write(
                &config,
                data_toml(&root, &options, addr, &urls(&control_addrs), &audit),
            )?;
            cluster.datas.push(Replica {
                name,
                bin: "kms-data",
                addr: addr.clone(),
                config,
                child: None,
            });
        }
        for (i, addr) in control_addrs.iter().enumerate() {
            let name = format!("kms-control-{i}");
            let config = root.join(format!("{name}.toml"));
            let audit = root.join(format!("logs/{name}-audit.log"));
            std::fs::write(
                &config,
                control_toml(&root, &options, addr, &urls(&data_addrs), &store, &audit),
            )?;
            cluster.controls.push(Replica {
                name,
                bin: "kms-control",
                addr: addr.clone(),
                config,
                child: None,
            });
        }
        // The first data-plane replica alone: on a fresh token it creates the root key, and
        // two replicas racing to create it would leave two (which every replica refuses).
        cluster.start_replica(Plane::Data, 0)?;
        cluster.wait_serving(Plane::Data, 0).await?;
        for plane in [Plane::Data, Plane::Control] {
            let first = usize::from(plane == Plane::Data);
            for i in first..cluster.replicas(plane).len() {
                cluster.start_replica(plane, i)?;
            }
        }
        for plane in [Plane::Data, Plane::Control] {
            for i in 0..cluster.replicas(plane).len() {
                cluster.wait_serving(plane, i).await?;
            }
        }
        Ok(cluster)
    }

    /// The cluster's directory: configs, token, logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn replicas(&self, plane: Plane) -> &[Replica] {
        match plane {
            Plane::Control => &self.controls,
            Plane::Data => &self.datas,
        }
    }

    fn replica_mut(&mut self, plane: Plane, i: usize) -> &mut Replica {
        match plane {
            Plane::Control => &mut self.controls[i],
            Plane::Data => &mut self.datas[i],
        }
    }

    /// Starts replica `i` of `plane` (again), its output appended to its log.
    pub fn start_replica(&mut self, plane: Plane, i: usize) -> Result<()> {
        let softhsm = self.dir().join("softhsm/softhsm2.conf");
        let logs = self.dir().join("logs");
        let r = self.replica_mut(plane, i);
        let child = crate::spawn_plane(
            r.bin,
            &r.config,
            &softhsm,
            &logs.join(format!("{}.log", r.name)),
        )?;
        r.child = Some(child);
        Ok(())
    }

    /// Kills replica `i` of `plane` with SIGKILL and reaps it.
    pub async fn kill(&mut self, plane: Plane, i: usize) -> Result<()> {
        let r = self.replica_mut(plane, i);
        if let Some(mut child) = r.child.take() {
            child.start_kill()?;
            child.wait().await?;
        }
        Ok(())
    }

    /// Waits, in a bounded loop, until replica `i` of `plane` answers its health check.
    pub async fn wait_serving(&mut self, plane: Plane, i: usize) -> Result<()> {
        use tonic_health::pb::health_check_response::ServingStatus;
        use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut poll = tokio::time::interval(Duration::from_millis(50));
        let addr = self.replicas(plane)[i].addr.clone();
        loop {
            poll.tick().await;
            let r = self.replica_mut(plane, i);
            if let Some(status) = r.child.as_mut().map(Child::try_wait).transpose()?.flatten() {
                let name = r.name.clone();
                bail!(
                    "{name} exited early with {status}; log:\n{}",
                    self.log(&name)
                );
            }
            if let Ok(channel) = Channel::from_shared(format!("http://{addr}"))?
                .connect()
                .await
            {
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
                let name = self.replicas(plane)[i].name.clone();
                bail!("{name} not healthy after 60 s; log:\n{}", self.log(&name));
            }
        }
    }

    /// The log of the replica named `name` so far.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir().join("logs").join(format!("{name}.log")))
            .unwrap_or_default()
    }

    /// A key-management client of control-plane replica `i`, calling as `principal`.
    pub fn keys(&self, i: usize, principal: &str) -> Result<KeysClient> {
        keys_client(&self.controls[i].addr, principal)
    }

    /// A crypto client of data-plane replica `i`, calling as `principal`.
    pub fn crypto(&self, i: usize, principal: &str) -> Result<CryptoClient> {
        crypto_client(&self.datas[i].addr, principal)
    }

    /// The `host:port` of every replica of `plane`.
    pub fn addrs(&self, plane: Plane) -> Vec<String> {
        self.replicas(plane)
            .iter()
            .map(|r| r.addr.clone())
            .collect()
    }

    /// Moves every control-plane replica's clock by `ms` from where it is.
    pub fn advance_clock_ms(&self, ms: i64) -> Result<()> {
        let path = self.dir().join(CLOCK_OFFSET_FILE);
        let now: i64 = match std::fs::read_to_string(&path) {
            Ok(t) => t.trim().parse()?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e.into()),
        };
        let aside = path.with_extension("new");
        std::fs::write(&aside, format!("{}\n", now + ms))?;
        std::fs::rename(&aside, &path)?;
        Ok(())
    }

    /// The name of the control-plane replica holding the scheduler claim, read from etcd
    /// (`<listen addr>/<pid>/<nonce>`), if any holds it.
    pub fn scheduler_holder(&self) -> Result<Option<String>> {
        let endpoints = self.etcd.endpoints();
        std::thread::spawn(move || -> Result<Option<String>> {
            let store =
                EtcdStore::connect(EtcdOptions::new(endpoints, PREFIX.as_bytes().to_vec()))?;
            Ok(store
                .get(b"m/scheduler")?
                .map(|v| String::from_utf8_lossy(&v).into_owned()))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("reading the scheduler claim panicked"))?
    }

    /// The index of the control-plane replica holding the scheduler claim, if any.
    pub fn scheduler_leader(&self) -> Result<Option<usize>> {
        let holder = self.scheduler_holder()?;
        Ok(holder.and_then(|h| {
            self.controls
                .iter()
                .position(|r| h.starts_with(&format!("{}/", r.addr)))
        }))
    }
}

// ---------------------------------------------------------------------------------------------
// Graceful stop: SIGTERM, as an operator stops a replica, so each records its last audit
// checkpoint.
// ---------------------------------------------------------------------------------------------

impl Cluster {
    /// Stops replica `i` of `plane` with SIGTERM and checks it exits successfully within 20 s.
    pub async fn stop_replica(&mut self, plane: Plane, i: usize) -> Result<()> {
        let r = self.replica_mut(plane, i);
        let name = r.name.clone();
        match r.child.take() {
            Some(child) => crate::terminate(&name, child).await?,
            None => return Ok(()),
        }
        Ok(())
    }

    /// Stops every replica with SIGTERM, one at a time in order: the data planes first, so
    /// their last audit checkpoints still reach a control plane, then the control planes.
    pub async fn stop(&mut self) -> Result<()> {
        for plane in [Plane::Data, Plane::Control] {
            for i in 0..self.replicas(plane).len() {
                self.stop_replica(plane, i).await?;
            }
        }
        Ok(())
    }
}
