//! Scheduled work: rotating keys whose rotation interval passed, deleting keys whose pending
//! window passed, removing imported material whose expiry time passed (`registry/import.rs`),
//! and forgetting old import tokens. Each walks a queue index ordered by date (`sr/`, `sd/`,
//! `sx/`, `sp/`), so a run reads only what is due. Time comes from the registry's clock.

use kms_store::{Abort, Store};
use kms_types::{DomainError, KeyId, UnixMillis};

use super::Registry;
use crate::index;
use crate::schema;

/// Queue entries read per step.
const QUEUE_BATCH: usize = 100;

/// What one scheduler run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    /// Keys given a new primary version.
    pub rotated: usize,
    /// Keys deleted for good.
    pub deleted: usize,
    /// Keys whose imported material expired and was removed.
    pub expired: usize,
    /// Keys that could not be handled this time (logged; retried on the next run).
    pub failed: usize,
}

impl<S: Store> Registry<S> {
    /// Keys in queue `prefix` due at `now`, oldest first.
    pub(super) async fn due(
        &self,
        prefix: &'static [u8],
        now: UnixMillis,
    ) -> Result<Vec<KeyId>, DomainError> {
        self.read(move |store| {
            let mut due = Vec::new();
            let mut cursor: Option<Vec<u8>> = None;
            loop {
                let batch = store
                    .scan_prefix(prefix, cursor.as_deref(), QUEUE_BATCH)
                    .map_err(crate::index::store_error)?;
                for (slot, _) in &batch {
                    let (at, id) = schema::decode_queue_entry(slot)?;
                    if at > now {
                        return Ok(due);
                    }
                    due.push(id);
                }
                match batch.last() {
                    Some((last, _)) if batch.len() == QUEUE_BATCH => cursor = Some(last.clone()),
                    _ => return Ok(due),
                }
            }
        })
        .await
    }

    /// Deletes every key whose pending window has passed: the record with its versions and
    /// sealed material, aliases, tags and every index entry. The instance's key count drops.
    pub async fn reap_due(&self) -> Result<SweepReport, DomainError> {
        let now = self.clock.now();
        let mut report = SweepReport::default();
        for id in self.due(schema::DELETION_QUEUE, now).await? {
            let key_id = id;
            let deleted = self
                .commit_fenced(move |tx| {
                    let Some(record) = index::get_key(tx, &id)? else {
                        return Ok((false, Vec::new()));
                    };
                    if !record.deletion_due(now) {
                        return Ok((false, Vec::new()));
                    }
                    let event = index::delete_key(tx, &record)?;
                    Ok((true, vec![event]))
                })
                .await;
            match deleted {
                Ok(true) => {
                    report.deleted += 1;
                    tracing::info!(key_id = %key_id, "key deleted at the end of its pending window");
                    // What refers to the key but is not part of its record; a failure leaves
                    // entries nothing can reach (and tokens that expire), so it is only logged.
                    if let Err(e) = self.forget_key_tokens(&key_id).await {
                        tracing::warn!(key_id = %key_id, error = %e, "cannot forget a deleted key's import tokens");
                    }
                    if let Err(e) = self.forget_key_usage(&key_id).await {
                        tracing::warn!(key_id = %key_id, error = %e, "cannot forget a deleted key's usage");
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    report.failed += 1;
                    tracing::warn!(key_id = %key_id, error = %e, "cannot delete a key due for deletion");
                }
            }
        }
        Ok(report)
    }

    /// Finishes the deletion of keys that had more versions than one transaction removes:
    /// each tombstone's version entries go in steps (see [`index::purge_step`]).
    pub async fn purge_tombstones(&self) -> Result<SweepReport, DomainError> {
        let mut report = SweepReport::default();
        let slots = self
            .read(|store| {
                store
                    .scan_prefix(schema::TOMBSTONE_PREFIX, None, QUEUE_BATCH)
                    .map_err(index::store_error)
            })
            .await?;
        for (slot, _) in slots {
            loop {
                let step = slot.clone();
                match self
                    .commit_fenced(move |tx| Ok((index::purge_step(tx, &step)?, Vec::new())))
                    .await
                {
                    Ok(true) => break,
                    Ok(false) => {}
                    Err(e) => {
                        report.failed += 1;
                        tracing::warn!(error = %e, "cannot finish removing a deleted key's versions");
                        break;
                    }
                }
            }
        }
        Ok(report)
    }

    /// Gives every key whose rotation is due a new primary version.
    pub async fn rotate_due(&self) -> Result<SweepReport, DomainError> {
        let now = self.clock.now();
        let mut report = SweepReport::default();
        for id in self.due(schema::ROTATION_QUEUE, now).await? {
            match self.rotate(id, now).await {
                Ok(true) => {
                    report.rotated += 1;
                    tracing::info!(key_id = %id, "key rotated");
                }
                Ok(false) => {}
                Err(e) => {
                    report.failed += 1;
                    tracing::warn!(key_id = %id, error = %e, "cannot rotate a key due for rotation");
                }
            }
        }
        Ok(report)
    }

    /// Rotates one key if it is still due at `now`.
    async fn rotate(&self, id: KeyId, now: UnixMillis) -> Result<bool, DomainError> {
        let lookup = id;
        let Some(record) = self
            .read(move |store| index::load_key(store, &lookup))
            .await?
        else {
            return Ok(false);
        };
        if !record.rotation_due(now) {
            return Ok(false);
        }
        let version = self.new_version(&record).await?;
        self.commit_fenced(move |tx| {
            let Some(old) = index::get_key(tx, &id)? else {
                return Ok((false, Vec::new()));
            };
            // Changed since it was read (disabled, rotated by hand...): not due any more.
            if !old.rotation_due(now) {
                return Ok((false, Vec::new()));
            }
            let mut new = old.clone();
            new.add_version(version.clone(), now).map_err(Abort::User)?;
            let event = index::put_key(tx, Some(&old), &new)?;
            Ok((true, vec![event]))
        })
        .await
    }

    /// Removes expired imported material (see [`Registry::expire_material_due`]).
    pub async fn expire_due(&self) -> Result<SweepReport, DomainError> {
        let (expired, failed) = self.expire_material_due().await?;
        Ok(SweepReport {
            expired,
            failed,
            ..SweepReport::default()
        })
    }

    /// One scheduler run, if this replica holds the scheduler claim (it claims or renews it
    /// first): deletions first, then material expiry, then rotations; and old import tokens
    /// are forgotten. Each deletion, expiry and rotation commits only while the claim is
    /// still this replica's.
    pub async fn run_scheduled(&self) -> SweepReport {
        let mut total = SweepReport::default();
        match self.lead().await {
            Ok(true) => {}
            Ok(false) => return total,
            Err(e) => {
                total.failed += 1;
                tracing::warn!(error = %e, "cannot claim the scheduler; skipping this run");
                return total;
            }
        }
        for (what, result) in [
            ("deletion", self.reap_due().await),
            ("tombstone", self.purge_tombstones().await),
            ("material expiry", self.expire_due().await),
            ("rotation", self.rotate_due().await),
        ] {
            match result {
                Ok(r) => {
                    total.rotated += r.rotated;
                    total.deleted += r.deleted;
                    total.expired += r.expired;
                    total.failed += r.failed;
                }
                Err(e) => {
                    total.failed += 1;
                    tracing::warn!(error = %e, "the {what} scheduler run failed");
                }
            }
        }
        if let Err(e) = self.purge_import_tokens().await {
            total.failed += 1;
            tracing::warn!(error = %e, "the import token purge failed");
        }
        total
    }
}
