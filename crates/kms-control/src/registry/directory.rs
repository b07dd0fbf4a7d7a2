//! The data plane's view: `KeyDirectory.GetKey` with the directory revision, and the
//! `WatchKeys` stream of key events.
//!
//! A watch reads every event from the store: first the retained events after the client's
//! revision, then, each time the store's change feed (or a commit of this replica) says the
//! revision moved, the events after the last one it sent. So a stream on any replica sends the
//! same events under the same revisions, whichever replica committed them, and a client that
//! moves to another replica resumes where it was. A client at revision 0, ahead of the store,
//! or behind the retained window first gets one resync event with the current revision. Gaps
//! are impossible: revisions are assigned inside the transactions, one per event, so event
//! `n + 1` is committed only after event `n`. Events go out only once flushed.

use std::sync::Arc;
use std::time::Duration;

use kms_store::Store;
use kms_types::{AccountId, DomainError, KeyEntry, KeyEvent, KeyRef, KeyVersionId};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use super::{Registry, load_ref};
use crate::index;
use crate::schema;

/// Events read from the store per catch-up step.
const CATCH_UP_BATCH: usize = 500;
/// Events a stream holds for a client that reads slowly.
const STREAM_BUFFER: usize = 256;
/// How often a stream reads the revision even without a change notification: a safety net
/// for a change feed that is down.
const POLL: Duration = Duration::from_secs(1);

/// What a stream at some revision must hear next.
enum CatchUp {
    /// These events, in order (empty: it is up to date).
    Events(Vec<KeyEvent>),
    /// The events it missed are gone: resync at this revision.
    Resync(u64),
}

impl<S: Store> Registry<S> {
    /// `KeyDirectory.GetKey` by key reference, resolving aliases in `account`, with the
    /// revision it was read at. No policy check: the data plane evaluates the policy it gets.
    pub async fn directory_key(
        &self,
        account: AccountId,
        key_ref: KeyRef,
    ) -> Result<(KeyEntry, u64), DomainError> {
        let region = self.region.clone();
        let (record, owner, revision) = self
            .read(move |store| {
                // The revision first: a change after it is then also an event after it.
                let revision = index::revision(store)?;
                let record = load_ref(store, &region, &account, key_ref)?;
                let owner = instance_owner(store, &record)?;
                Ok((record, owner, revision))
            })
            .await?;
        let entry = KeyEntry::from_record(&record, owner.as_ref());
        Ok((entry, revision))
    }

    /// `KeyDirectory.GetKey` by key version id, with the revision it was read at.
    pub async fn directory_version(
        &self,
        version: KeyVersionId,
    ) -> Result<(KeyEntry, u64), DomainError> {
        let (record, owner, revision) = self
            .read(move |store| {
                let revision = index::revision(store)?;
                let id = index::load_key_id(store, &schema::version(&version))?
                    .ok_or(DomainError::KeyNotFound)?;
                let record = index::load_key(store, &id)?.ok_or(DomainError::KeyNotFound)?;
                let owner = instance_owner(store, &record)?;
                Ok((record, owner, revision))
            })
            .await?;
        let entry = KeyEntry::from_record(&record, owner.as_ref());
        Ok((entry, revision))
    }

    /// The current directory revision.
    pub async fn revision(&self) -> Result<u64, DomainError> {
        self.read(|store| index::revision(store)).await
    }

    /// `KeyDirectory.WatchKeys`: key events after `from_revision`, then live ones, until the
    /// client goes away or the registry closes.
    pub fn watch(self: &Arc<Self>, from_revision: u64) -> ReceiverStream<KeyEvent> {
        let (out, stream) = mpsc::channel(STREAM_BUFFER);
        // Subscribe before reading the store, so nothing committed in between is missed.
        let changes = self.changes.subscribe();
        let closing = self.closing.subscribe();
        tokio::spawn(pump(Arc::clone(self), from_revision, out, changes, closing));
        ReceiverStream::new(stream)
    }

    async fn catch_up(&self, last: u64) -> Result<CatchUp, DomainError> {
        self.read(move |store| {
            let current = index::revision(store)?;
            if last > current {
                return Ok(CatchUp::Resync(current));
            }
            crate::metrics::CONTROL
                .watch_lag
                .set(i64::try_from(current - last).unwrap_or(i64::MAX));
            if last == current {
                return Ok(CatchUp::Events(Vec::new()));
            }
            let events = index::events_after(store, last, CATCH_UP_BATCH)?;
            match events.first() {
                Some(first) if first.revision == last + 1 => {
                    // What was read may not be on disk yet if its writer has not flushed.
                    store.flush().map_err(crate::index::store_error)?;
                    Ok(CatchUp::Events(events))
                }
                _ => Ok(CatchUp::Resync(current)),
            }
        })
        .await
    }
}

/// Resolves once the registry is closing.
async fn closed(closing: &mut watch::Receiver<bool>) {
    let _ = closing.wait_for(|c| *c).await;
}

/// Runs a closure when dropped.
struct OnDrop<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}

fn scopeguard<F: FnMut()>(f: F) -> OnDrop<F> {
    OnDrop(f)
}

/// Feeds one watch stream.
async fn pump<S: Store>(
    registry: Arc<Registry<S>>,
    from_revision: u64,
    out: mpsc::Sender<KeyEvent>,
    mut changes: watch::Receiver<u64>,
    mut closing: watch::Receiver<bool>,
) {
    crate::metrics::CONTROL.watch_streams.inc();
    let _open = scopeguard(|| {
        crate::metrics::CONTROL.watch_streams.dec();
    });
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = from_revision;
    if from_revision == 0 {
        match registry.revision().await {
            Ok(revision) => {
                last = revision;
                if out.send(KeyEvent::resync(revision)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "key watch cannot read the revision; ending the stream");
                return;
            }
        }
    }
    loop {
        loop {
            match registry.catch_up(last).await {
                Ok(CatchUp::Events(events)) => {
                    let full = events.len() == CATCH_UP_BATCH;
                    for event in events {
                        last = event.revision;
                        if out.send(event).await.is_err() {
                            return;
                        }
                        crate::metrics::CONTROL.watch_events.inc();
                    }
                    if !full {
                        break;
                    }
                }
                Ok(CatchUp::Resync(revision)) => {
                    tracing::info!(
                        from = last,
                        revision,
                        "key watch resyncs: missed events are no longer kept"
                    );
                    last = revision;
                    if out.send(KeyEvent::resync(revision)).await.is_err() {
                        return;
                    }
                    crate::metrics::CONTROL.watch_resyncs.inc();
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "key watch cannot read events; ending the stream");
                    return;
                }
            }
        }
        tokio::select! {
            _ = closed(&mut closing) => return,
            _ = out.closed() => return,
            changed = changes.changed() => if changed.is_err() {
                return;
            },
            _ = poll.tick() => {}
        }
    }
}

/// The account owning `record`'s instance, if it has one.
fn instance_owner<S: Store>(
    store: &S,
    record: &kms_types::KeyRecord,
) -> Result<Option<AccountId>, DomainError> {
    match &record.instance {
        Some(id) => Ok(index::load_instance(store, id)?.map(|i| i.owner)),
        None => Ok(None),
    }
}
