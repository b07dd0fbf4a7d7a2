//! Clients of a service that runs as several replicas: one channel per replica, used one at
//! a time. A call goes to the current replica; when that replica is unavailable the call moves
//! to the next one and is tried there, once per replica, and later calls stay on the replica
//! that answered.
//!
//! `UNAVAILABLE` moves a call: gRPC uses it for "not reached, or not able to serve now, try
//! again", which a replica's death or restart produces. So do `UNKNOWN` and `CANCELLED`, which
//! tonic answers when the connection breaks while the call is under way (a replica killed
//! mid-call). Every call that goes through [`Replicas::call`] must therefore be safe to send
//! twice (reads, idempotent reports, or material generation, which changes nothing).
//!
//! Over TLS the channels follow [`PeerTls`]: once its files were reloaded, the next call makes
//! new channels with the new client certificate and trust, so new connections present them;
//! calls and streams already under way finish on the connections they have.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::reload::PeerTls;

/// Splits a configured URL list: one URL, or several separated by commas.
pub fn parse_urls(setting: &str, urls: &str) -> Result<Vec<String>, String> {
    let list: Vec<String> = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect();
    if list.is_empty() {
        return Err(format!("{setting} is required"));
    }
    for url in &list {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!(
                "{setting}: {url:?} must start with http:// or https://"
            ));
        }
    }
    if list.iter().any(|u| u.starts_with("https://"))
        && list.iter().any(|u| u.starts_with("http://"))
    {
        return Err(format!("{setting}: every URL must use the same scheme"));
    }
    Ok(list)
}

/// Lazily connecting channels to every replica of one service.
#[derive(Clone)]
pub struct Replicas {
    inner: Arc<Inner>,
}

type Tune = Box<dyn Fn(Endpoint) -> Endpoint + Send + Sync>;

struct Inner {
    setting: String,
    urls: Vec<String>,
    tls: Option<Arc<PeerTls>>,
    tune: Tune,
    channels: RwLock<Channels>,
    current: AtomicUsize,
}

/// The channels, made with generation `generation` of the TLS settings.
struct Channels {
    generation: u64,
    list: Vec<Channel>,
}

impl fmt::Debug for Replicas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replicas")
            .field("urls", &self.inner.urls)
            .field("current", &self.inner.current.load(Ordering::Relaxed))
            .finish()
    }
}

impl Replicas {
    /// Channels to `urls` (named `setting` in errors), each set up by `tune` and with `tls`
    /// when given. Nothing connects before the first call.
    pub fn new(
        setting: &str,
        urls: &[String],
        tls: Option<Arc<PeerTls>>,
        tune: impl Fn(Endpoint) -> Endpoint + Send + Sync + 'static,
    ) -> Result<Self, String> {
        if urls.is_empty() {
            return Err(format!("{setting} is required"));
        }
        let generation = tls.as_ref().map_or(0, |t| t.generation());
        let tune: Tune = Box::new(tune);
        let list = channels(setting, urls, tls.as_deref(), &tune)?;
        Ok(Self {
            inner: Arc::new(Inner {
                setting: setting.to_owned(),
                urls: urls.to_vec(),
                tls,
                tune,
                channels: RwLock::new(Channels { generation, list }),
                current: AtomicUsize::new(0),
            }),
        })
    }

    /// How many replicas there are.
    pub fn len(&self) -> usize {
        self.inner.urls.len()
    }

    /// Always false: there is at least one replica.
    pub fn is_empty(&self) -> bool {
        self.inner.urls.is_empty()
    }

    /// The replica calls go to now, and its channel: made anew when the TLS files were
    /// reloaded since.
    pub fn current(&self) -> (usize, Channel) {
        let index = self.inner.current.load(Ordering::Acquire) % self.len();
        let wanted = self.inner.tls.as_ref().map_or(0, |t| t.generation());
        {
            let channels = self
                .inner
                .channels
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            if channels.generation == wanted {
                return (index, channels.list[index].clone());
            }
        }
        let mut channels = self
            .inner
            .channels
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if channels.generation != wanted {
            let inner = &self.inner;
            match channels_for(inner) {
                Ok(list) => {
                    tracing::info!(
                        setting = %inner.setting,
                        "new client certificate in force; new connections to the other plane use it"
                    );
                    channels.list = list;
                }
                Err(e) => tracing::warn!(
                    setting = %inner.setting,
                    error = %e,
                    "cannot use the reloaded client certificate; keeping the previous one"
                ),
            }
            channels.generation = wanted;
        }
        (index, channels.list[index].clone())
    }

    /// The URL of replica `index`.
    pub fn url(&self, index: usize) -> &str {
        &self.inner.urls[index % self.len()]
    }

    /// Moves on from replica `index` if it is still the current one (a concurrent call may
    /// already have moved on).
    pub fn failed(&self, index: usize) {
        let next = (index + 1) % self.len();
        if self
            .inner
            .current
            .compare_exchange(index, next, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            && self.len() > 1
        {
            tracing::warn!(
                from = %self.url(index),
                to = %self.url(next),
                "replica unavailable; moving to the next"
            );
        }
    }

    /// Runs `call` on the current replica's channel, moving to the next replica and trying
    /// again while the replica is unavailable or the call broke off, at most once per replica.
    pub async fn call<T, F, Fut>(&self, mut call: F) -> Result<T, tonic::Status>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let mut attempts = self.len();
        loop {
            let (index, channel) = self.current();
            match call(channel).await {
                Err(status)
                    if matches!(
                        status.code(),
                        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
                    ) =>
                {
                    self.failed(index);
                    attempts -= 1;
                    if attempts == 0 {
                        return Err(status);
                    }
                }
                other => return other,
            }
        }
    }
}

fn channels_for(inner: &Inner) -> Result<Vec<Channel>, String> {
    channels(
        &inner.setting,
        &inner.urls,
        inner.tls.as_deref(),
        &inner.tune,
    )
}

/// Lazily connecting channels to `urls`, with the TLS settings in force.
fn channels(
    setting: &str,
    urls: &[String],
    tls: Option<&PeerTls>,
    tune: &Tune,
) -> Result<Vec<Channel>, String> {
    let tls = tls.map(PeerTls::current);
    let mut list = Vec::with_capacity(urls.len());
    for url in urls {
        let mut endpoint =
            Channel::from_shared(url.clone()).map_err(|e| format!("{setting} {url:?}: {e}"))?;
        if let Some(tls) = &tls {
            endpoint = endpoint
                .tls_config(ClientTlsConfig::clone(tls))
                .map_err(|e| format!("{setting} {url:?}: {e}"))?;
        }
        list.push(tune(endpoint).connect_lazy());
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn url_lists_are_split_trimmed_and_checked() {
        assert_eq!(
            parse_urls("u", "http://a:1, http://b:2,").unwrap(),
            vec!["http://a:1".to_owned(), "http://b:2".to_owned()]
        );
        assert_eq!(parse_urls("u", " ").unwrap_err(), "u is required");
        assert!(
            parse_urls("u", "a:1")
                .unwrap_err()
                .contains("must start with http")
        );
        assert!(
            parse_urls("u", "http://a:1,https://b:2")
                .unwrap_err()
                .contains("same scheme")
        );
    }

    #[tokio::test]
    async fn an_unavailable_replica_moves_calls_to_the_next() {
        let urls = vec![
            "http://127.0.0.1:1".to_owned(),
            "http://127.0.0.1:2".to_owned(),
        ];
        let replicas = Replicas::new("u", &urls, None, |e| e).unwrap();
        let mut seen = Vec::new();
        let answer = replicas
            .call(|_| {
                let (index, _) = replicas.current();
                seen.push(index);
                async move {
                    if index == 0 {
                        Err(tonic::Status::unavailable("down"))
                    } else {
                        Ok(index)
                    }
                }
            })
            .await
            .unwrap();
        assert_eq!(answer, 1);
        assert_eq!(seen, vec![0, 1]);
        assert_eq!(
            replicas.current().0,
            1,
            "later calls stay on the replica that answered"
        );

        let refused = replicas
            .call(|_| async { Err::<(), _>(tonic::Status::unavailable("all down")) })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unavailable);

        let other = replicas
            .call(|_| async { Err::<(), _>(tonic::Status::not_found("no")) })
            .await
            .unwrap_err();
        assert_eq!(
            other.code(),
            tonic::Code::NotFound,
            "only UNAVAILABLE moves a call"
        );
    }

    /// Over TLS, a reloaded client certificate is presented on the next new connection.
    #[tokio::test]
    async fn new_connections_present_a_reloaded_client_certificate() {
        use crate::reload::{Checked, ServerTls};
        use crate::tls::testing::{TestCa, replace};
        use tokio_stream::StreamExt;
        crate::tls::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ca = TestCa::new("CA");
        let (server_pem, server_key, _) = ca.server();
        let (first_pem, first_key, first_der) = ca.server();
        let config = crate::tls::TlsConfig {
            cert_file: d.join("server.pem"),
            key_file: d.join("server-key.pem"),
            client_ca_file: d.join("ca.pem"),
            require_client_cert: true,
            client_cert_file: Some(d.join("client.pem")),
            client_key_file: Some(d.join("client-key.pem")),
            server_ca_file: None,
        };
        replace(&config.cert_file, &server_pem);
        replace(&config.key_file, &server_key);
        replace(&config.client_ca_file, &ca.pem);
        replace(&d.join("client.pem"), &first_pem);
        replace(&d.join("client-key.pem"), &first_key);

        // A server that notes the client certificate of each handshake and hangs up.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = Arc::new(ServerTls::server(&config).unwrap());
        let mut connections = crate::connections::TlsIncoming::new(
            crate::connections::incoming(listener, &crate::limits::LimitsConfig::default()),
            server,
            std::time::Duration::from_secs(5),
        );
        let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(stream) = connections.next().await {
                let stream = stream.unwrap();
                let cert = stream.get_ref().1.peer_certificates().unwrap()[0].to_vec();
                let _ = seen_tx.send(cert);
            }
        });

        let peer = Arc::new(crate::reload::PeerTls::peer(&config).unwrap());
        let urls = vec![format!("https://127.0.0.1:{}", addr.port())];
        let replicas = Replicas::new("u", &urls, Some(Arc::clone(&peer)), |e| e).unwrap();
        let call = || async {
            let (_, channel) = replicas.current();
            let _ = tonic_health::pb::health_client::HealthClient::new(channel)
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await;
        };
        call().await;
        assert_eq!(seen.recv().await.unwrap(), first_der);

        let (second_pem, second_key, second_der) = ca.server();
        replace(&d.join("client.pem"), &second_pem);
        replace(&d.join("client-key.pem"), &second_key);
        assert!(matches!(peer.check(), Checked::Reloaded));
        call().await;
        assert_eq!(seen.recv().await.unwrap(), second_der);
    }
}
