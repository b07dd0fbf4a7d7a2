//! Certificates replaced without a restart: the server's certificate, key and client CA, and
//! the client certificate a plane presents to the other plane, read again when their files
//! change or on SIGHUP.
//!
//! A [`Reloading`] value holds what was built from a set of files and a digest of the files it
//! was built from. [`watch`] reads the files once a second (and at once on SIGHUP); when their
//! digest moved, it builds anew, and only a build that succeeds takes the old one's place, in
//! one swap. A file that is missing, unreadable, or refused with the others (a key that is not
//! the certificate's: files replaced one at a time are seen half-way) is logged once and the
//! settings in force stay. Nothing already built is touched: a TLS connection keeps the
//! settings of its handshake, so established connections keep their session and only new
//! handshakes see new files.
//!
//! The files are polled rather than watched with inotify: Kubernetes replaces a mounted
//! Secret by switching a symbolic link over a directory, editors and `cp` rewrite in place,
//! operators rename over; reading three small files a second sees all of these the same way,
//! with no dependency and no watch to re-arm after a rename.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tonic::transport::ClientTlsConfig;
use zeroize::Zeroizing;

use crate::tls::{TlsConfig, TlsError};

/// How often [`watch`] reads the files.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The server side of a plane's TLS: what new handshakes use.
pub type ServerTls = Reloading<rustls::ServerConfig>;

/// The client side of calls to the other plane: what new connections present and trust.
pub type PeerTls = Reloading<ClientTlsConfig>;

/// Settings built from files, rebuilt when the files change.
pub struct Reloading<T> {
    what: &'static str,
    files: Vec<PathBuf>,
    build: Box<dyn Fn() -> Result<T, TlsError> + Send + Sync>,
    current: RwLock<Current<T>>,
    tried: Mutex<Tried>,
}

struct Current<T> {
    generation: u64,
    value: Arc<T>,
}

/// The files looked at: the digest of the set in force, of the last set refused, and the last
/// refusal logged (so a missing file is logged once, not every second).
struct Tried {
    loaded: [u8; 32],
    refused: Option<[u8; 32]>,
    refusal: Option<String>,
}

impl<T> std::fmt::Debug for Reloading<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloading")
            .field("what", &self.what)
            .field("files", &self.files)
            .field("generation", &self.generation())
            .finish()
    }
}

/// What a check of the files found.
#[derive(Debug)]
pub enum Checked {
    /// The files are those in force, or those last refused.
    Unchanged,
    /// New files, now in force.
    Reloaded,
    /// New files that cannot be used; the previous settings stay in force.
    Refused(TlsError),
}

impl<T> Reloading<T> {
    /// Builds from `files` with `build` (which reads them); `what` names the settings in logs.
    pub fn new(
        what: &'static str,
        files: Vec<PathBuf>,
        build: impl Fn() -> Result<T, TlsError> + Send + Sync + 'static,
    ) -> Result<Self, TlsError> {
        let digest = digest(&files)?;
        let value = build()?;
        Ok(Self {
            what,
            files,
            build: Box::new(build),
            current: RwLock::new(Current {
                generation: 0,
                value: Arc::new(value),
            }),
            tried: Mutex::new(Tried {
                loaded: digest,
                refused: None,
                refusal: None,
            }),
        })
    }

    /// The settings in force.
    pub fn current(&self) -> Arc<T> {
        Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .value,
        )
    }

    /// How many times the settings were replaced.
    pub fn generation(&self) -> u64 {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .generation
    }

    /// Reads the files; builds anew and swaps when they changed.
    pub fn check(&self) -> Checked {
        let mut tried = self.tried.lock().unwrap_or_else(PoisonError::into_inner);
        let digest = match digest(&self.files) {
            Ok(d) => d,
            Err(e) => return Checked::Refused(e),
        };
        if tried.loaded == digest || tried.refused == Some(digest) {
            return Checked::Unchanged;
        }
        match (self.build)() {
            Ok(value) => {
                let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
                current.generation += 1;
                current.value = Arc::new(value);
                tried.loaded = digest;
                tried.refused = None;
                Checked::Reloaded
            }
            Err(e) => {
                tried.refused = Some(digest);
                Checked::Refused(e)
            }
        }
    }

    /// [`Reloading::check`], logged: a reload at info, a refusal at warn once until the files
    /// change or come back.
    pub fn check_and_log(&self) -> Checked {
        let checked = self.check();
        let mut tried = self.tried.lock().unwrap_or_else(PoisonError::into_inner);
        match &checked {
            Checked::Reloaded => {
                tried.refusal = None;
                tracing::info!(what = self.what, files = ?self.files, generation = self.generation(), "TLS files changed; new connections use them");
            }
            Checked::Refused(e) => {
                let text = e.to_string();
                if tried.refusal.as_deref() != Some(text.as_str()) {
                    tracing::warn!(what = self.what, error = %text, "TLS files changed but cannot be used; the previous ones stay in force");
                    tried.refusal = Some(text);
                }
            }
            Checked::Unchanged => tried.refusal = None,
        }
        checked
    }
}

impl ServerTls {
    /// The server settings of `config` (`cert_file`, `key_file`, `client_ca_file`).
    pub fn server(config: &TlsConfig) -> Result<Self, TlsError> {
        let config = config.clone();
        Reloading::new("server certificate", config.server_files(), move || {
            crate::tls::server_rustls_config(&config)
        })
    }
}

impl PeerTls {
    /// The client settings of `config` for calls to the other plane (`client_cert_file`,
    /// `client_key_file`, `server_ca_file`, with their defaults). A certificate whose key does
    /// not match is refused here, not at the first connection.
    pub fn peer(config: &TlsConfig) -> Result<Self, TlsError> {
        let config = config.clone();
        Reloading::new(
            "client certificate for the other plane",
            config.peer_files(),
            move || {
                let tls = config.peer_client_config()?;
                tonic::transport::Endpoint::from_static("https://localhost")
                    .tls_config(tls.clone())
                    .map_err(|e| TlsError::Refused {
                        files: config
                            .peer_files()
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                        reason: crate::tls::source_chain(&e),
                    })?;
                Ok(tls)
            },
        )
    }
}

/// SHA-256 over each file's length and content, in order.
fn digest(files: &[PathBuf]) -> Result<[u8; 32], TlsError> {
    let mut hash = Sha256::new();
    for path in files {
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|source| TlsError::Read {
            what: "TLS file",
            path: path.display().to_string(),
            source,
        })?);
        hash.update((bytes.len() as u64).to_be_bytes());
        hash.update(bytes.as_slice());
    }
    Ok(hash.finalize().into())
}

/// Something [`watch`] checks.
pub trait Watched: Send + Sync {
    /// Checks the files, logging what happened.
    fn check_and_log(&self);
}

impl<T: Send + Sync> Watched for Reloading<T> {
    fn check_and_log(&self) {
        Reloading::check_and_log(self);
    }
}

/// Checks `items` every [`POLL_INTERVAL`] and at once on SIGHUP, until the process ends. With
/// nothing to watch it still takes SIGHUP (whose default would end the process) and logs that
/// there is nothing to reload.
pub fn watch(items: Vec<Arc<dyn Watched>>) -> tokio::task::JoinHandle<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let hangup = signal(SignalKind::hangup());
    tokio::spawn(async move {
        let mut hangup = match hangup {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::error!(error = %e, "cannot handle SIGHUP; TLS files are still polled");
                None
            }
        };
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let signalled = tokio::select! {
                _ = tick.tick() => false,
                Some(()) = async {
                    match hangup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                } => true,
            };
            if signalled {
                if items.is_empty() {
                    tracing::info!("SIGHUP received; no TLS configured, nothing to reload");
                } else {
                    tracing::info!("SIGHUP received; reading the TLS files");
                }
            } else if items.is_empty() {
                continue;
            }
            let items = items.clone();
            // File reads and key parsing stay off the async workers.
            let _ = tokio::task::spawn_blocking(move || {
                for item in &items {
                    item.check_and_log();
                }
            })
            .await;
        }
    })
}

/// [`watch`] on a plane's server settings and its client settings for the other plane,
/// those it has.
pub fn watch_plane(
    server: Option<&Arc<ServerTls>>,
    peer: Option<&Arc<PeerTls>>,
) -> tokio::task::JoinHandle<()> {
    let mut items: Vec<Arc<dyn Watched>> = Vec::new();
    if let Some(s) = server {
        items.push(Arc::clone(s) as Arc<dyn Watched>);
    }
    if let Some(p) = peer {
        items.push(Arc::clone(p) as Arc<dyn Watched>);
    }
    watch(items)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use rcgen::{CertificateParams, KeyPair};
    use std::path::Path;

    /// A self-signed certificate and its key, as PEM.
    fn pair(name: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn config(dir: &Path) -> TlsConfig {
        TlsConfig {
            cert_file: dir.join("server.pem"),
            key_file: dir.join("server-key.pem"),
            client_ca_file: dir.join("ca.pem"),
            require_client_cert: true,
            client_cert_file: None,
            client_key_file: None,
            server_ca_file: None,
        }
    }

    fn write(dir: &Path, name: &str, text: &str) {
        // Replaced whole, as an operator or Kubernetes does.
        let aside = dir.join(format!(".{name}.new"));
        std::fs::write(&aside, text).unwrap();
        std::fs::rename(&aside, dir.join(name)).unwrap();
    }

    #[test]
    fn new_files_are_used_and_bad_ones_keep_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (cert_a, key_a) = pair("a.test");
        let (ca, _) = pair("ca.test");
        write(d, "server.pem", &cert_a);
        write(d, "server-key.pem", &key_a);
        write(d, "ca.pem", &ca);
        let tls = ServerTls::server(&config(d)).unwrap();
        let first = tls.current();
        assert!(matches!(tls.check(), Checked::Unchanged));
        assert_eq!(tls.generation(), 0);

        // A new certificate whose key has not arrived yet: refused, the old stays.
        let (cert_b, key_b) = pair("b.test");
        write(d, "server.pem", &cert_b);
        match tls.check() {
            Checked::Refused(TlsError::Refused { files, .. }) => {
                assert!(files.contains("server.pem"), "{files}");
            }
            other => panic!("{other:?}"),
        }
        assert!(Arc::ptr_eq(&first, &tls.current()));
        // Looked at once, not again until the files change.
        assert!(matches!(tls.check(), Checked::Unchanged));

        // The key follows: in force.
        write(d, "server-key.pem", &key_b);
        assert!(matches!(tls.check(), Checked::Reloaded));
        assert_eq!(tls.generation(), 1);
        let second = tls.current();
        assert!(!Arc::ptr_eq(&first, &second));

        // Garbage, a missing file, a CA file without a certificate: each refused, the second
        // set stays.
        write(d, "server-key.pem", "not a key");
        assert!(matches!(
            tls.check(),
            Checked::Refused(TlsError::NoKey { .. })
        ));
        std::fs::remove_file(d.join("server-key.pem")).unwrap();
        assert!(matches!(
            tls.check(),
            Checked::Refused(TlsError::Read { .. })
        ));
        write(d, "server-key.pem", &key_b);
        assert!(matches!(tls.check(), Checked::Unchanged));
        write(d, "ca.pem", "-----BEGIN NOTHING-----\n");
        assert!(matches!(
            tls.check(),
            Checked::Refused(TlsError::NoCertificate { .. })
        ));
        assert!(Arc::ptr_eq(&second, &tls.current()));
        assert_eq!(tls.generation(), 1);

        // A client CA bundle of two CAs is taken.
        let (ca2, _) = pair("ca2.test");
        write(d, "ca.pem", &format!("{ca}{ca2}"));
        assert!(matches!(tls.check(), Checked::Reloaded));
        assert_eq!(tls.generation(), 2);
    }

    #[test]
    fn the_peer_side_refuses_a_key_that_is_not_the_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (cert_a, key_a) = pair("a.test");
        write(d, "server.pem", &cert_a);
        write(d, "server-key.pem", &key_a);
        write(d, "ca.pem", &cert_a);
        let peer = PeerTls::peer(&config(d)).unwrap();
        let (_, key_b) = pair("b.test");
        write(d, "server-key.pem", &key_b);
        assert!(
            matches!(peer.check(), Checked::Refused(TlsError::Refused { .. })),
            "a mismatched key is refused"
        );
        assert_eq!(peer.generation(), 0);
        let (cert_c, key_c) = pair("c.test");
        write(d, "server.pem", &cert_c);
        write(d, "server-key.pem", &key_c);
        assert!(matches!(peer.check(), Checked::Reloaded));
        assert_eq!(peer.generation(), 1);
    }
}
