//! Key association: the data plane's usage reports (`KeyDirectory.ReportUsage`) kept as the
//! latest time per (key, caller, operation) and per (key, version) for the operations that
//! read with a version, and `CheckKeyAssociation`, which shows the last year of them. Usage
//! writes change no key, so they publish no key events.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use kms_store::Store;
use kms_types::usage::association_cutoff;
use kms_types::{
    Association, DomainError, KeyAssociations, KeyId, KeyRecord, KeyRef, KeyVersionId, Principal,
    UsageEvent, VersionUse,
};

use super::Registry;
use crate::index::{self, TxResult};
use crate::schema;
use kms_types::authz::{Rpc, Touch};

/// Sets `slot` to `at` unless it already holds a later time.
fn keep_latest(
    tx: &mut dyn kms_store::Txn,
    slot: &[u8],
    at: kms_types::UnixMillis,
) -> TxResult<()> {
    let current = tx
        .get(slot)?
        .map(|b| index::user(schema::decode_time(&b)))
        .transpose()?;
    if current.is_none_or(|t| at > t) {
        tx.put(slot, &schema::encode_time(at))?;
    }
    Ok(())
}

impl<S: Store> Registry<S> {
    /// `KeyDirectory.ReportUsage`: records a batch in one transaction. Records of keys that no
    /// longer exist, or of versions the key does not have, are skipped. Returns how many were
    /// kept.
    pub async fn report_usage(&self, events: Vec<UsageEvent>) -> Result<usize, DomainError> {
        if events.is_empty() {
            return Ok(0);
        }
        self.commit(move |tx| {
            let mut keys: HashMap<KeyId, Option<KeyRecord>> = HashMap::new();
            let mut kept = 0;
            for e in &events {
                let record = match keys.entry(e.key_id) {
                    Entry::Occupied(known) => known.into_mut(),
                    Entry::Vacant(unknown) => unknown.insert(index::get_key(tx, &e.key_id)?),
                };
                let Some(record) = record else {
                    continue;
                };
                if record.version(&e.version).is_none() {
                    continue;
                }
                keep_latest(tx, &schema::usage_call(&e.key_id, &e.principal, e.op), e.at)?;
                if e.op.reads_version() {
                    keep_latest(tx, &schema::usage_version(&e.key_id, &e.version), e.at)?;
                }
                kept += 1;
            }
            Ok((kept, Vec::new()))
        })
        .await
    }

    /// `CheckKeyAssociation`: who called the key for what in the last 365 days, and when each
    /// live version last decrypted or verified. Authorized like `DescribeKey`.
    pub async fn check_key_association(
        &self,
        caller: &Principal,
        key_ref: KeyRef,
    ) -> Result<(KeyRecord, KeyAssociations), DomainError> {
        let record = self
            .resolve(caller, key_ref, Rpc::CheckKeyAssociation.action(Touch::Key))
            .await?;
        let cutoff = association_cutoff(self.clock.now());
        let key = record.id;
        let (mut associations, last_used) = self
            .read(move |store| {
                let prefix = schema::usage_calls_prefix(&key);
                let mut associations = Vec::new();
                for (slot, value) in index::scan_all(store, &prefix)? {
                    let last_called = schema::decode_time(&value)?;
                    if last_called < cutoff {
                        continue;
                    }
                    let (principal, op) = schema::decode_usage_call(&slot, &prefix)?;
                    associations.push(Association {
                        principal,
                        op,
                        last_called,
                    });
                }
                let prefix = schema::usage_versions_prefix(&key);
                let mut last_used = HashMap::new();
                for (slot, value) in index::scan_all(store, &prefix)? {
                    let version = KeyVersionId::parse(schema::suffix(&slot, &prefix)?)
                        .map_err(|_| DomainError::Internal("malformed usage entry".into()))?;
                    last_used.insert(version, schema::decode_time(&value)?);
                }
                Ok((associations, last_used))
            })
            .await?;
        associations.sort_by(|a, b| (&a.principal, a.op).cmp(&(&b.principal, b.op)));
        let versions = record
            .versions
            .iter()
            .map(|v| VersionUse {
                version: v.id,
                last_used: last_used.get(&v.id).copied().filter(|t| *t >= cutoff),
            })
            .collect();
        Ok((
            record,
            KeyAssociations {
                associations,
                versions,
            },
        ))
    }

    /// Forgets the usage of a deleted key.
    pub(super) async fn forget_key_usage(&self, key: &KeyId) -> Result<(), DomainError> {
        let key = *key;
        let slots = self
            .read(move |store| {
                let mut slots = Vec::new();
                for prefix in [
                    schema::usage_calls_prefix(&key),
                    schema::usage_versions_prefix(&key),
                ] {
                    slots.extend(
                        index::scan_all(store, &prefix)?
                            .into_iter()
                            .map(|(slot, _)| slot),
                    );
                }
                Ok(slots)
            })
            .await?;
        if slots.is_empty() {
            return Ok(());
        }
        self.commit(move |tx| {
            for slot in &slots {
                tx.delete(slot)?;
            }
            Ok(((), Vec::new()))
        })
        .await
    }
}
