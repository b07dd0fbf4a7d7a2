//! Reading and writing records with their secondary indexes. Inside a transaction, a key is
//! written only through [`put_key`] and removed only through [`delete_key`]: both derive every
//! index entry from the record, bring the store from the old entries to the new ones, keep the
//! instance's key count, and append a key event with the next directory revision, all in the
//! caller's transaction. So an index can never disagree with its record, and no key changes
//! without an event.

use std::collections::BTreeMap;

use kms_store::{Abort, Store, Txn, abort};
use kms_types::{
    DomainError, ImportTokenId, ImportTokenRecord, InstanceId, InstanceRecord, KeyEvent,
    KeyEventKind, KeyId, KeyRecord, KeyState, KeyVersionId,
};

use crate::schema::{self, Access};

/// What a transaction body returns.
pub(crate) type TxResult<T> = Result<T, Abort<DomainError>>;

/// A domain result inside a transaction body.
pub(crate) fn user<T>(r: Result<T, DomainError>) -> TxResult<T> {
    r.map_err(Abort::User)
}

/// The one conversion of a store failure: a store that cannot serve now (an etcd cluster
/// without quorum, a broken connection) makes the call `UNAVAILABLE`, which callers retry;
/// anything else is internal.
pub(crate) fn store_error(e: kms_store::StoreError) -> DomainError {
    match e {
        kms_store::StoreError::Unavailable(m) => {
            DomainError::Unavailable(format!("the store is unavailable: {m}"))
        }
        other => DomainError::Internal(format!("store: {other}")),
    }
}

/// Every index entry a key record implies, with its value.
fn key_entries(r: &KeyRecord) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut m = BTreeMap::new();
    let id = schema::encode_key_id(&r.id);
    for v in &r.versions {
        m.insert(schema::version(&v.id), id.clone());
    }
    // The primary version too when it has no material: an External key's version id is fixed
    // at creation and kept while its material is deleted or expired, so a ciphertext of that
    // version still names the key, and is refused for the key's state, not as garbage.
    m.insert(schema::version(&r.primary_version), id.clone());
    for a in &r.aliases {
        m.insert(schema::alias(&r.account, a), id.clone());
    }
    if r.is_default() {
        m.insert(schema::default_key(&r.account), id.clone());
    }
    m.insert(schema::owner(&r.account, &r.id), schema::marker());
    if let Some(i) = &r.instance {
        m.insert(schema::instance_key(i, &r.id), schema::marker());
    }
    for t in &r.tags {
        m.insert(
            schema::tag(&r.account, &t.key, &r.id),
            schema::encode_text(&t.value),
        );
    }
    if r.state == KeyState::PendingDeletion
        && let Some(at) = r.delete_date
    {
        m.insert(schema::deletion_queue(at, &r.id), schema::marker());
    }
    if let Some(at) = r.scheduled_rotation() {
        m.insert(schema::rotation_queue(at, &r.id), schema::marker());
    }
    if let Some(at) = r.material_expiry() {
        m.insert(schema::material_expiry_queue(at, &r.id), schema::marker());
    }
    m
}

/// The error when a slot that must be unique is taken by another key.
fn taken(slot: &[u8]) -> Option<DomainError> {
    if slot.starts_with(b"a/") {
        Some(DomainError::AliasExists)
    } else if slot.starts_with(b"d/") {
        Some(DomainError::DefaultKeyExists(None))
    } else {
        None
    }
}

/// The key record `id`, as this transaction sees it.
pub(crate) fn get_key(tx: &mut dyn Txn, id: &KeyId) -> TxResult<Option<KeyRecord>> {
    tx.get(&schema::key(id))?
        .map(|b| user(schema::decode_key(&b)))
        .transpose()
}

/// The key id an index slot (`a/`, `d/`, `v/`) holds.
pub(crate) fn get_key_id(tx: &mut dyn Txn, slot: &[u8]) -> TxResult<Option<KeyId>> {
    tx.get(slot)?
        .map(|b| user(schema::decode_key_id(&b)))
        .transpose()
}

/// The instance record `id`, as this transaction sees it.
pub(crate) fn get_instance(tx: &mut dyn Txn, id: &InstanceId) -> TxResult<Option<InstanceRecord>> {
    tx.get(&schema::instance(id))?
        .map(|b| user(schema::decode_instance(&b)))
        .transpose()
}

/// Writes key record `new` (replacing `old`, or creating it when `old` is `None`) with every
/// index entry. A new key in an instance takes a place in its key quota. An alias or default
/// slot taken by another key aborts with `AliasExists` or `DefaultKeyExists`. A key policy
/// that changes in an instance moves the instance's grants revision on.
pub(crate) fn put_key(
    tx: &mut dyn Txn,
    old: Option<&KeyRecord>,
    new: &KeyRecord,
) -> TxResult<KeyEvent> {
    let old_entries = old.map(key_entries).unwrap_or_default();
    let new_entries = key_entries(new);
    for slot in old_entries.keys() {
        if !new_entries.contains_key(slot) {
            tx.delete(slot)?;
        }
    }
    for (slot, value) in &new_entries {
        match old_entries.get(slot) {
            Some(previous) if previous == value => {}
            Some(_) => tx.put(slot, value)?,
            None => {
                if let Some(err) = taken(slot)
                    && tx.get(slot)?.is_some()
                {
                    return abort(err);
                }
                tx.put(slot, value)?;
            }
        }
    }
    if old.is_none()
        && let Some(id) = &new.instance
    {
        let mut instance =
            get_instance(tx, id)?.ok_or(Abort::User(DomainError::InstanceNotFound))?;
        user(instance.check_room_for_key())?;
        instance.key_count += 1;
        tx.put(
            &schema::instance(id),
            &user(schema::encode_instance(&instance))?,
        )?;
    }
    if let Some(id) = &new.instance
        && old.and_then(|o| o.policy.as_ref()) != new.policy.as_ref()
    {
        // What the instance's key policies grant changed: a write that checked the
        // access-management quota against the grants as they were must not commit.
        let revision = grants_revision(tx, id)?;
        tx.put(
            &schema::instance_grants(id),
            &schema::encode_u64(revision + 1),
        )?;
    }
    tx.put(&schema::key(&new.id), &user(schema::encode_key(new))?)?;
    append_event(tx, &new.id, KeyEventKind::Changed)
}

/// The revision of instance `id`'s grants as this transaction sees it (0 before any key policy
/// in it changed).
pub(crate) fn grants_revision(tx: &mut dyn Txn, id: &InstanceId) -> TxResult<u64> {
    Ok(tx
        .get(&schema::instance_grants(id))?
        .map(|b| user(schema::decode_u64(&b)))
        .transpose()?
        .unwrap_or(0))
}

/// Version entries removed per transaction: a key's deletion removes this many with the key,
/// and each later step as many again, so no transaction comes near etcd's 128 operations
/// however many versions a key had.
pub(crate) const VERSIONS_PER_STEP: usize = 64;

/// Removes key record `old` with every index entry, gives its place in the instance's quota
/// back, and records its deletion. A key with more than [`VERSIONS_PER_STEP`] versions keeps
/// the rest of its `v/` entries under a tombstone for [`purge_step`]: they name a key that is
/// gone, so nothing can reach it through them meanwhile.
pub(crate) fn delete_key(tx: &mut dyn Txn, old: &KeyRecord) -> TxResult<KeyEvent> {
    let later: Vec<KeyVersionId> = old
        .versions
        .iter()
        .skip(VERSIONS_PER_STEP)
        .map(|v| v.id)
        .collect();
    let kept: std::collections::BTreeSet<Vec<u8>> = later.iter().map(schema::version).collect();
    for slot in key_entries(old).keys() {
        if !kept.contains(slot) {
            tx.delete(slot)?;
        }
    }
    if !later.is_empty() {
        tx.put(
            &schema::tombstone(&old.id),
            &user(schema::encode_tombstone(&later))?,
        )?;
    }
    tx.delete(&schema::key(&old.id))?;
    if let Some(id) = &old.instance
        && let Some(mut instance) = get_instance(tx, id)?
    {
        instance.key_count = instance.key_count.saturating_sub(1);
        tx.put(
            &schema::instance(id),
            &user(schema::encode_instance(&instance))?,
        )?;
    }
    append_event(tx, &old.id, KeyEventKind::Deleted)
}

/// One step of a tombstone at `slot`: removes up to [`VERSIONS_PER_STEP`] of its version
/// entries, and the tombstone with the last of them. `Ok(true)` when it is gone. Repeating a
/// step is harmless.
pub(crate) fn purge_step(tx: &mut dyn Txn, slot: &[u8]) -> TxResult<bool> {
    let Some(bytes) = tx.get(slot)? else {
        return Ok(true);
    };
    let mut versions = user(schema::decode_tombstone(&bytes))?;
    let now: Vec<KeyVersionId> = versions
        .drain(..versions.len().min(VERSIONS_PER_STEP))
        .collect();
    for version in &now {
        tx.delete(&schema::version(version))?;
    }
    if versions.is_empty() {
        tx.delete(slot)?;
        Ok(true)
    } else {
        tx.put(slot, &user(schema::encode_tombstone(&versions))?)?;
        Ok(false)
    }
}

/// Takes the next directory revision and records an event with it, dropping the event that
/// falls out of the retained window.
fn append_event(tx: &mut dyn Txn, id: &KeyId, kind: KeyEventKind) -> TxResult<KeyEvent> {
    let current = tx
        .get(schema::REVISION)?
        .map(|b| user(schema::decode_u64(&b)))
        .transpose()?
        .unwrap_or(0);
    let revision = current + 1;
    let event = KeyEvent {
        revision,
        key_id: Some(*id),
        kind,
    };
    tx.put(schema::REVISION, &schema::encode_u64(revision))?;
    tx.put(
        &schema::event(revision),
        &user(schema::encode_event(&event))?,
    )?;
    if revision > schema::EVENT_RETENTION {
        tx.delete(&schema::event(revision - schema::EVENT_RETENTION))?;
    }
    Ok(event)
}

fn access_entries(r: &InstanceRecord) -> TxResult<BTreeMap<Vec<u8>, Vec<u8>>> {
    let mut m = BTreeMap::new();
    m.insert(
        schema::access(&r.owner, &r.id),
        user(schema::encode_access(Access::Owner))?,
    );
    for a in &r.shared_with {
        m.insert(
            schema::access(a, &r.id),
            user(schema::encode_access(Access::Shared))?,
        );
    }
    Ok(m)
}

/// Writes instance record `new` (replacing `old`) with its account → instance entries.
pub(crate) fn put_instance(
    tx: &mut dyn Txn,
    old: Option<&InstanceRecord>,
    new: &InstanceRecord,
) -> TxResult<()> {
    let old_entries = old.map(access_entries).transpose()?.unwrap_or_default();
    let new_entries = access_entries(new)?;
    for slot in old_entries.keys() {
        if !new_entries.contains_key(slot) {
            tx.delete(slot)?;
        }
    }
    for (slot, value) in &new_entries {
        if old_entries.get(slot) != Some(value) {
            tx.put(slot, value)?;
        }
    }
    tx.put(
        &schema::instance(&new.id),
        &user(schema::encode_instance(new))?,
    )?;
    Ok(())
}

/// The import token `id`, as this transaction sees it.
pub(crate) fn get_token(
    tx: &mut dyn Txn,
    id: &ImportTokenId,
) -> TxResult<Option<ImportTokenRecord>> {
    tx.get(&schema::import_token(id))?
        .map(|b| user(schema::decode_token(&b)))
        .transpose()
}

/// Writes import token `t` with its key and purge-queue entries. Tokens never change key or
/// expiry, so the entries of an earlier write stay right.
pub(crate) fn put_token(tx: &mut dyn Txn, t: &ImportTokenRecord) -> TxResult<()> {
    tx.put(
        &schema::import_token(&t.id),
        &user(schema::encode_token(t))?,
    )?;
    tx.put(&schema::key_token(&t.key_id, &t.id), &schema::marker())?;
    tx.put(
        &schema::token_purge_queue(t.purge_at(), &t.id),
        &schema::marker(),
    )?;
    Ok(())
}

/// Removes import token `t` and its entries.
pub(crate) fn delete_token(tx: &mut dyn Txn, t: &ImportTokenRecord) -> TxResult<()> {
    tx.delete(&schema::import_token(&t.id))?;
    tx.delete(&schema::key_token(&t.key_id, &t.id))?;
    tx.delete(&schema::token_purge_queue(t.purge_at(), &t.id))?;
    Ok(())
}

/// The import token `id`, read outside a transaction.
pub(crate) fn load_token<S: Store>(
    store: &S,
    id: &ImportTokenId,
) -> Result<Option<ImportTokenRecord>, DomainError> {
    store
        .get(&schema::import_token(id))
        .map_err(store_error)?
        .map(|b| schema::decode_token(&b))
        .transpose()
}

/// Every entry under `prefix`, read outside a transaction in batches.
pub(crate) fn scan_all<S: Store>(
    store: &S,
    prefix: &[u8],
) -> Result<Vec<kms_store::Entry>, DomainError> {
    const BATCH: usize = 500;
    let mut out = Vec::new();
    let mut cursor: Option<Vec<u8>> = None;
    loop {
        let batch = store
            .scan_prefix(prefix, cursor.as_deref(), BATCH)
            .map_err(store_error)?;
        let full = batch.len() == BATCH;
        cursor = batch.last().map(|(k, _)| k.clone());
        out.extend(batch);
        if !full {
            return Ok(out);
        }
    }
}

/// The key record `id`, read outside a transaction.
pub(crate) fn load_key<S: Store>(store: &S, id: &KeyId) -> Result<Option<KeyRecord>, DomainError> {
    store
        .get(&schema::key(id))
        .map_err(store_error)?
        .map(|b| schema::decode_key(&b))
        .transpose()
}

/// The key id an index slot holds, read outside a transaction.
pub(crate) fn load_key_id<S: Store>(store: &S, slot: &[u8]) -> Result<Option<KeyId>, DomainError> {
    store
        .get(slot)
        .map_err(store_error)?
        .map(|b| schema::decode_key_id(&b))
        .transpose()
}

/// The instance record `id`, read outside a transaction.
pub(crate) fn load_instance<S: Store>(
    store: &S,
    id: &InstanceId,
) -> Result<Option<InstanceRecord>, DomainError> {
    store
        .get(&schema::instance(id))
        .map_err(store_error)?
        .map(|b| schema::decode_instance(&b))
        .transpose()
}

/// Aborts unless `replica` holds the scheduler claim ([`Registry::lead`]). Reading the claim
/// makes the transaction conflict with a claim that lapses or moves before it commits.
///
/// [`Registry::lead`]: crate::Registry::lead
pub(crate) fn fence(tx: &mut dyn Txn, replica: &[u8]) -> TxResult<()> {
    if tx.get(schema::SCHEDULER_LEADER)?.as_deref() == Some(replica) {
        Ok(())
    } else {
        Err(Abort::User(DomainError::Unavailable(
            "this replica no longer holds the scheduler claim".into(),
        )))
    }
}

/// The current directory revision (0 before the first key event).
pub(crate) fn revision<S: Store>(store: &S) -> Result<u64, DomainError> {
    Ok(store
        .get(schema::REVISION)
        .map_err(store_error)?
        .map(|b| schema::decode_u64(&b))
        .transpose()?
        .unwrap_or(0))
}

/// Up to `limit` retained events with a revision above `after`, in order.
pub(crate) fn events_after<S: Store>(
    store: &S,
    after: u64,
    limit: usize,
) -> Result<Vec<KeyEvent>, DomainError> {
    store
        .scan_prefix(schema::EVENT_PREFIX, Some(&schema::event(after)), limit)
        .map_err(store_error)?
        .iter()
        .map(|(_, v)| schema::decode_event(v))
        .collect()
}

/// Brings a store of an older layout to [`schema::LAYOUT_VERSION`]: rewrites every key's index
/// entries in the current form. Returns how many keys it rewrote. Idempotent; a store of a
/// newer layout is refused.
pub fn migrate<S: Store>(store: &S) -> Result<usize, DomainError> {
    if let Some(bytes) = store.get(schema::LAYOUT).map_err(store_error)? {
        let layout = schema::decode_layout(&bytes)?;
        if layout == schema::LAYOUT_VERSION {
            return Ok(0);
        }
        if layout > schema::LAYOUT_VERSION {
            return Err(DomainError::Internal(format!(
                "the store has layout {layout}, newer than the {} this binary knows",
                schema::LAYOUT_VERSION
            )));
        }
    }
    let mut rewritten = 0;
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = store
            .scan_prefix(schema::KEY_PREFIX, after.as_deref(), 100)
            .map_err(store_error)?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        for (_, value) in &page {
            let record = schema::decode_key(value)?;
            let entries = key_entries(&record);
            store
                .transaction::<_, DomainError>(|tx| {
                    for (slot, value) in &entries {
                        tx.put(slot, value)?;
                    }
                    Ok(())
                })
                .map_err(|e| DomainError::Internal(format!("migrating a key: {e}")))?;
            rewritten += 1;
        }
    }
    store
        .put(
            schema::LAYOUT,
            &schema::encode_layout(schema::LAYOUT_VERSION),
        )
        .map_err(store_error)?;
    store.flush().map_err(store_error)?;
    Ok(rewritten)
}
