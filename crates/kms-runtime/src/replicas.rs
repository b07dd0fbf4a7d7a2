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

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

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

struct Inner {
    urls: Vec<String>,
    channels: Vec<Channel>,
    current: AtomicUsize,
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
        tls: Option<&ClientTlsConfig>,
        tune: impl Fn(Endpoint) -> Endpoint,
    ) -> Result<Self, String> {
        if urls.is_empty() {
            return Err(format!("{setting} is required"));
        }
        let mut channels = Vec::with_capacity(urls.len());
        for url in urls {
            let mut endpoint =
                Channel::from_shared(url.clone()).map_err(|e| format!("{setting} {url:?}: {e}"))?;
            if let Some(tls) = tls {
                endpoint = endpoint
                    .tls_config(tls.clone())
                    .map_err(|e| format!("{setting} {url:?}: {e}"))?;
            }
            channels.push(tune(endpoint).connect_lazy());
        }
        Ok(Self {
            inner: Arc::new(Inner {
                urls: urls.to_vec(),
                channels,
                current: AtomicUsize::new(0),
            }),
        })
    }

    /// How many replicas there are.
    pub fn len(&self) -> usize {
        self.inner.channels.len()
    }

    /// Always false: there is at least one replica.
    pub fn is_empty(&self) -> bool {
        self.inner.channels.is_empty()
    }

    /// The replica calls go to now, and its channel.
    pub fn current(&self) -> (usize, Channel) {
        let index = self.inner.current.load(Ordering::Acquire) % self.len();
        (index, self.inner.channels[index].clone())
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
}
