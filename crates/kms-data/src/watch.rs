//! Follows the control plane's `WatchKeys` stream and invalidates the key cache. Reconnects
//! from the last revision seen, backing off up to two seconds between attempts; a stream that
//! broke, or could not be opened, reconnects to the next control-plane replica, where the same
//! revisions name the same events.

use std::sync::Arc;
use std::time::Duration;

use kms_proto::kms::internal::v1::KeyEventKind;
use kms_types::KeyId;

use crate::cache::{Event, KeyCache};

/// Runs until the process ends.
pub async fn follow(cache: Arc<KeyCache>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match cache.directory().watch(cache.revision()).await {
            Ok((replica, mut stream)) => {
                cache.set_watch_up(true);
                let url = cache.directory().replica_url(replica).to_owned();
                tracing::info!(revision = cache.revision(), control_plane = %url, "watching key changes");
                backoff = Duration::from_millis(100);
                loop {
                    match stream.message().await {
                        Ok(Some(event)) => {
                            if let Some(e) = to_event(&event) {
                                cache.apply(e);
                            }
                        }
                        Ok(None) => {
                            tracing::warn!("key watch stream ended");
                            break;
                        }
                        Err(status) => {
                            tracing::warn!(code = ?status.code(), control_plane = %url, "key watch stream broke");
                            break;
                        }
                    }
                }
                cache.directory().watch_failed(replica);
            }
            Err(e) => tracing::debug!(error = %e, "cannot watch key changes yet"),
        }
        cache.set_watch_up(false);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

fn to_event(e: &kms_proto::kms::internal::v1::KeyEvent) -> Option<Event> {
    match KeyEventKind::try_from(e.kind).ok()? {
        KeyEventKind::Resync => Some(Event::Resync {
            revision: e.revision,
        }),
        kind @ (KeyEventKind::Changed | KeyEventKind::Deleted) => {
            let Ok(key_id) = KeyId::parse(&e.key_id) else {
                tracing::warn!(key_id = %e.key_id, "key event names a malformed key id");
                return None;
            };
            Some(Event::Changed {
                key_id,
                revision: e.revision,
                deleted: kind == KeyEventKind::Deleted,
            })
        }
        KeyEventKind::Unspecified => None,
    }
}
