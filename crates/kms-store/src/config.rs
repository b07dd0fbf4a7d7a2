//! The `[store]` section of the control plane's configuration (and its `data_dir`), in one
//! place for everything that opens the control plane's store: the server itself and
//! `kmsctl admin restore --config`. The reference file is `deploy/config/control.toml`.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::{EtcdOptions, EtcdTls, StoreError};

/// The storage engine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// sled in `data_dir`: one machine, one control-plane process.
    #[default]
    Sled,
    /// An etcd cluster: several control-plane replicas on several machines.
    Etcd,
}

/// `[store]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// The engine.
    #[serde(default)]
    pub engine: Engine,
    /// Settings of the etcd engine.
    #[serde(default)]
    pub etcd: Option<EtcdConfig>,
}

/// `[store.etcd]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// Client URLs of the cluster's members.
    pub endpoints: Vec<String>,
    /// Prefix of every key this deployment writes, so several share a cluster.
    #[serde(default = "default_etcd_prefix")]
    pub prefix: String,
    /// CA bundle (PEM) the members' certificates must chain to; turns TLS on.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM), with `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// Client certificate's private key (PEM), with `cert_file`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// User for etcd's password authentication, with `password_file`.
    #[serde(default)]
    pub username: Option<String>,
    /// File whose first line is the user's password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Most operations (compares and writes) one transaction may send; etcd's
    /// `--max-txn-ops`.
    #[serde(default = "default_max_txn_ops")]
    pub max_txn_ops: usize,
    /// Deadline of each etcd request, in milliseconds.
    #[serde(default = "default_etcd_timeout_ms")]
    pub request_timeout_ms: u64,
}

fn default_etcd_prefix() -> String {
    "kms/".into()
}

fn default_max_txn_ops() -> usize {
    128
}

fn default_etcd_timeout_ms() -> u64 {
    5_000
}

/// Validated storage settings.
#[derive(Debug, Clone)]
pub enum StoreParams {
    /// sled in this directory.
    Sled(PathBuf),
    /// etcd with these settings (the password file is read when connecting).
    Etcd(EtcdConfig),
}

impl StoreParams {
    /// Where records are, for logs.
    pub fn describe(&self) -> String {
        match self {
            StoreParams::Sled(dir) => format!("sled in {}", dir.display()),
            StoreParams::Etcd(c) => {
                format!("etcd at {} under {:?}", c.endpoints.join(","), c.prefix)
            }
        }
    }
}

impl StoreConfig {
    /// Checks the section, with the configuration's `data_dir`, and says where records are.
    pub fn params(self, data_dir: Option<PathBuf>) -> Result<StoreParams, String> {
        match (self.engine, data_dir, self.etcd) {
            (Engine::Sled, Some(dir), _) if !dir.as_os_str().is_empty() => {
                Ok(StoreParams::Sled(dir))
            }
            (Engine::Sled, _, _) => Err("data_dir is required with store.engine = \"sled\"".into()),
            (Engine::Etcd, _, None) => {
                Err("store.etcd is required with store.engine = \"etcd\"".into())
            }
            (Engine::Etcd, _, Some(etcd)) => {
                etcd.validate()?;
                Ok(StoreParams::Etcd(etcd))
            }
        }
    }
}

impl EtcdConfig {
    fn validate(&self) -> Result<(), String> {
        if self.endpoints.is_empty() {
            return Err("store.etcd.endpoints needs at least one URL".into());
        }
        for url in &self.endpoints {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!(
                    "store.etcd.endpoints: {url:?} must start with http:// or https://"
                ));
            }
            if url.starts_with("https://") && self.ca_file.is_none() {
                return Err(format!(
                    "store.etcd.endpoints: {url:?} is https:// but store.etcd.ca_file is not set"
                ));
            }
        }
        if self.prefix.is_empty() {
            return Err("store.etcd.prefix must not be empty: it keeps deployments apart".into());
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err("store.etcd: cert_file and key_file go together".into());
        }
        if self.cert_file.is_some() && self.ca_file.is_none() {
            return Err("store.etcd: cert_file needs ca_file (TLS)".into());
        }
        if self.username.is_some() != self.password_file.is_some() {
            return Err("store.etcd: username and password_file go together".into());
        }
        if !(1..=10_000).contains(&self.max_txn_ops) {
            return Err(format!(
                "store.etcd.max_txn_ops must be 1 to 10000, got {}",
                self.max_txn_ops
            ));
        }
        if !(100..=600_000).contains(&self.request_timeout_ms) {
            return Err(format!(
                "store.etcd.request_timeout_ms must be 100 to 600000, got {}",
                self.request_timeout_ms
            ));
        }
        Ok(())
    }

    /// The options [`crate::EtcdStore::connect`] takes; reads the password from its file.
    pub fn options(&self) -> Result<EtcdOptions, StoreError> {
        let mut options = EtcdOptions::new(self.endpoints.clone(), self.prefix.as_bytes().to_vec());
        options.max_txn_ops = self.max_txn_ops;
        options.request_timeout = Duration::from_millis(self.request_timeout_ms);
        if let Some(ca_file) = &self.ca_file {
            options.tls = Some(EtcdTls {
                ca_file: ca_file.clone(),
                cert_file: self.cert_file.clone(),
                key_file: self.key_file.clone(),
            });
        }
        if let (Some(user), Some(path)) = (&self.username, &self.password_file) {
            let text = std::fs::read_to_string(path).map_err(|e| {
                StoreError::Io(std::io::Error::new(
                    e.kind(),
                    format!("store.etcd.password_file {}: {e}", path.display()),
                ))
            })?;
            let password = text.lines().next().unwrap_or_default().trim().to_owned();
            options.user = Some((user.clone(), password));
        }
        Ok(options)
    }
}
