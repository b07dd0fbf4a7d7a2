//! How control-plane records sit in the store: key prefixes and record encoding.
//!
//! Every value is a versioned record ([`kms_store::encode_record`]: magic, format version,
//! body). `<n>` below is a number of milliseconds since the epoch (or a revision) as 20 decimal
//! digits, so entries sort by it; `<hex tag key>` is the tag key in lowercase hex, so tag keys
//! holding `/` cannot run into each other.
//!
//! | key | value (format 1) | what |
//! |---|---|---|
//! | `k/<key-id>` | JSON of [`KeyRecord`], versions and their sealed material inline | the key |
//! | `v/<key-version-id>` | key id | version → key: every version, and the primary version of a key without material (External) |
//! | `a/<account>/<alias>` | key id | alias → key, unique per account |
//! | `d/<account>` | key id | the account's default key, one per account |
//! | `o/<account>/<key-id>` | empty | account → keys (ListKeys) |
//! | `ik/<instance-id>/<key-id>` | empty | instance → keys |
//! | `t/<account>/<hex tag key>/<key-id>` | tag value | tag → keys |
//! | `sd/<n: delete date>/<key-id>` | empty | keys pending deletion, by date (reaper) |
//! | `sr/<n: next rotation>/<key-id>` | empty | keys due to rotate, by date (scheduler) |
//! | `sx/<n: material expiry>/<key-id>` | empty | keys whose imported material expires, by date |
//! | `it/<token-id>` | JSON of [`ImportTokenRecord`] | an import token, its sealed import key |
//! | `tk/<key-id>/<token-id>` | empty | key → its import tokens |
//! | `sp/<n: purge date>/<token-id>` | empty | import tokens to forget, by date |
//! | `uc/<key-id>/<hex principal>/<operation>` | n (u64, big-endian) | latest call per caller and operation |
//! | `uv/<key-id>/<key-version-id>` | n (u64, big-endian) | latest decryption or verification per version |
//! | `i/<instance-id>` | JSON of [`InstanceRecord`] | the instance |
//! | `ia/<account>/<instance-id>` | `"Owner"` or `"Shared"` (JSON) | account → instances it sees |
//! | `ig/<instance-id>` | u64, big-endian | revision of the instance's grants: one more whenever a key policy in it changes |
//! | `sg/<key-id>` | JSON list of key version ids | a deleted key's `v/` entries still to remove, in steps |
//! | `ak/<access-key-id>` | JSON of [`AccessKeyRecord`], its secret sealed | an AccessKey pair of the gateway |
//! | `m/revision` | u64, big-endian | directory revision: one more per key event |
//! | `e/<n: revision>` | JSON of [`KeyEvent`] | key events, the last [`EVENT_RETENTION`] |
//! | `m/layout` | u8 | layout version of the store ([`LAYOUT_VERSION`]) |
//! | `m/scheduler` | replica name (UTF-8) | the scheduler claim; with etcd it vanishes when its lease lapses |
//! | `ac/<plane>/<log>` | JSON of [`kms_runtime::audit::Checkpoint`] | latest checkpoint of one audit log of a plane (`control`, `data`), by the log's identity (hex MAC of its first line); each replica writes its own log |
//! | `ac/<plane>` | JSON of [`kms_runtime::audit::Checkpoint`] | latest checkpoint of a plane's audit log recorded before logs had an identity (read only, for verification) |
//!
//! Every index entry of a key is derived from its record and written in the same transaction
//! as the record ([`crate::index`]). Layout 1 (before `m/layout` existed) stored the key id of
//! `v/`, `a/` and `d/` entries as raw bytes and had no other index; [`decode_key_id`] still
//! reads that form and [`crate::index::migrate`] rewrites it at start. Layout 2 had no `v/`
//! entry for an External key without material; migrating to layout 3 adds it.

use kms_store::{decode_record, encode_record};
use kms_types::{
    AccessKeyId, AccessKeyRecord, AccountId, DomainError, ImportTokenId, ImportTokenRecord,
    InstanceId, InstanceRecord, KeyEvent, KeyId, KeyRecord, KeyVersionId, Principal, UnixMillis,
    UsageOp,
};
use serde::{Deserialize, Serialize};

/// Current format of every record kind.
pub const FORMAT: u8 = 1;
/// Current store layout.
pub const LAYOUT_VERSION: u8 = 3;
/// How many key events are kept for `WatchKeys` to replay.
pub const EVENT_RETENTION: u64 = 10_000;

/// Current format of key records.
pub const KEY_RECORD_FORMAT: u8 = FORMAT;

/// Prefix of key records.
pub const KEY_PREFIX: &[u8] = b"k/";
/// Prefix of instance records.
pub const INSTANCE_PREFIX: &[u8] = b"i/";
/// Prefix of key events.
pub const EVENT_PREFIX: &[u8] = b"e/";
/// Prefix of the deletion queue.
pub const DELETION_QUEUE: &[u8] = b"sd/";
/// Prefix of the rotation queue.
pub const ROTATION_QUEUE: &[u8] = b"sr/";
/// The directory revision.
pub const REVISION: &[u8] = b"m/revision";
/// The layout version.
pub const LAYOUT: &[u8] = b"m/layout";
/// The scheduler claim: the name of the replica that runs scheduled work
/// ([`kms_store::Store::lead`]).
pub const SCHEDULER_LEADER: &[u8] = b"m/scheduler";
/// Prefix of the material-expiry queue.
pub const MATERIAL_EXPIRY_QUEUE: &[u8] = b"sx/";
/// Prefix of the import-token purge queue.
pub const TOKEN_PURGE_QUEUE: &[u8] = b"sp/";
/// Tombstones of deleted keys whose version entries are still being removed.
pub const TOMBSTONE_PREFIX: &[u8] = b"sg/";
/// Prefix of audit-log checkpoints.
pub const AUDIT_CHECKPOINT_PREFIX: &[u8] = b"ac/";

fn n20(n: u64) -> String {
    format!("{n:020}")
}

fn time20(t: UnixMillis) -> String {
    n20(u64::try_from(t.0).unwrap_or(0))
}

/// Store key of a key record.
pub fn key(id: &KeyId) -> Vec<u8> {
    format!("k/{id}").into_bytes()
}

/// Store key of a version → key index entry.
pub fn version(id: &KeyVersionId) -> Vec<u8> {
    format!("v/{id}").into_bytes()
}

/// Store key of the tombstone of deleted key `id`: the version index entries left to remove
/// after its deletion.
pub fn tombstone(id: &KeyId) -> Vec<u8> {
    format!("sg/{id}").into_bytes()
}

/// Encodes the version ids a tombstone has left to remove.
pub fn encode_tombstone(versions: &[KeyVersionId]) -> Result<Vec<u8>, DomainError> {
    encode_json("tombstone", &versions)
}

/// Decodes a tombstone.
pub fn decode_tombstone(bytes: &[u8]) -> Result<Vec<KeyVersionId>, DomainError> {
    decode_json("tombstone", bytes)
}

/// Store key of an alias → key index entry.
pub fn alias(account: &AccountId, alias: &str) -> Vec<u8> {
    format!("a/{account}/{alias}").into_bytes()
}

/// Prefix of an account's aliases.
pub fn alias_prefix(account: &AccountId) -> Vec<u8> {
    format!("a/{account}/").into_bytes()
}

/// Store key of an account's default key.
pub fn default_key(account: &AccountId) -> Vec<u8> {
    format!("d/{account}").into_bytes()
}

/// Prefix of an account's keys.
pub fn owner_prefix(account: &AccountId) -> Vec<u8> {
    format!("o/{account}/").into_bytes()
}

/// Store key of an account → key index entry.
pub fn owner(account: &AccountId, id: &KeyId) -> Vec<u8> {
    format!("o/{account}/{id}").into_bytes()
}

/// Prefix of an instance's keys.
pub fn instance_keys_prefix(instance: &InstanceId) -> Vec<u8> {
    format!("ik/{instance}/").into_bytes()
}

/// Store key of an instance → key index entry.
pub fn instance_key(instance: &InstanceId, id: &KeyId) -> Vec<u8> {
    format!("ik/{instance}/{id}").into_bytes()
}

fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(text: &str) -> Option<String> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let bytes = (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

/// Prefix of the keys of `account` carrying a tag with key `tag_key`.
pub fn tag_prefix(account: &AccountId, tag_key: &str) -> Vec<u8> {
    format!("t/{account}/{}/", hex(tag_key)).into_bytes()
}

/// Store key of a tag → key index entry.
pub fn tag(account: &AccountId, tag_key: &str, id: &KeyId) -> Vec<u8> {
    format!("t/{account}/{}/{id}", hex(tag_key)).into_bytes()
}

/// Store key of a deletion-queue entry.
pub fn deletion_queue(at: UnixMillis, id: &KeyId) -> Vec<u8> {
    format!("sd/{}/{id}", time20(at)).into_bytes()
}

/// Store key of a rotation-queue entry.
pub fn rotation_queue(at: UnixMillis, id: &KeyId) -> Vec<u8> {
    format!("sr/{}/{id}", time20(at)).into_bytes()
}

/// Store key of a material-expiry queue entry.
pub fn material_expiry_queue(at: UnixMillis, id: &KeyId) -> Vec<u8> {
    format!("sx/{}/{id}", time20(at)).into_bytes()
}

/// The date and id of a dated queue entry (`sd/`, `sr/`, `sx/`, `sp/`).
pub fn decode_dated(store_key: &[u8]) -> Result<(UnixMillis, &str), DomainError> {
    let corrupt = || DomainError::Internal("malformed scheduler queue entry".into());
    let text = std::str::from_utf8(store_key).map_err(|_| corrupt())?;
    let mut parts = text.splitn(3, '/');
    let (Some(_), Some(at), Some(id)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(corrupt());
    };
    let at: i64 = at.parse().map_err(|_| corrupt())?;
    Ok((UnixMillis(at), id))
}

/// The date and key of a key queue entry (`sd/`, `sr/` or `sx/`).
pub fn decode_queue_entry(store_key: &[u8]) -> Result<(UnixMillis, KeyId), DomainError> {
    let (at, id) = decode_dated(store_key)?;
    let id = KeyId::parse(id)
        .map_err(|_| DomainError::Internal("malformed scheduler queue entry".into()))?;
    Ok((at, id))
}

/// Store key of an import token.
pub fn import_token(id: &ImportTokenId) -> Vec<u8> {
    format!("it/{id}").into_bytes()
}

/// Prefix of a key's import tokens.
pub fn key_tokens_prefix(key: &KeyId) -> Vec<u8> {
    format!("tk/{key}/").into_bytes()
}

/// Store key of a key → import token index entry.
pub fn key_token(key: &KeyId, id: &ImportTokenId) -> Vec<u8> {
    format!("tk/{key}/{id}").into_bytes()
}

/// Store key of an import-token purge queue entry.
pub fn token_purge_queue(at: UnixMillis, id: &ImportTokenId) -> Vec<u8> {
    format!("sp/{}/{id}", time20(at)).into_bytes()
}

/// Prefix of a key's latest calls per caller and operation.
pub fn usage_calls_prefix(key: &KeyId) -> Vec<u8> {
    format!("uc/{key}/").into_bytes()
}

/// Store key of a caller's latest call of an operation on a key.
pub fn usage_call(key: &KeyId, principal: &Principal, op: UsageOp) -> Vec<u8> {
    format!("uc/{key}/{}/{op}", hex(principal.arn())).into_bytes()
}

/// The caller and operation of a `uc/` entry under `prefix`.
pub fn decode_usage_call(
    store_key: &[u8],
    prefix: &[u8],
) -> Result<(String, UsageOp), DomainError> {
    let corrupt = || DomainError::Internal("malformed usage entry".into());
    let (principal, op) = suffix(store_key, prefix)?
        .split_once('/')
        .ok_or_else(corrupt)?;
    let principal = hex_decode(principal).ok_or_else(corrupt)?;
    Ok((principal, UsageOp::parse(op).map_err(|_| corrupt())?))
}

/// Prefix of a key's versions' latest reading uses.
pub fn usage_versions_prefix(key: &KeyId) -> Vec<u8> {
    format!("uv/{key}/").into_bytes()
}

/// Store key of a version's latest reading use.
pub fn usage_version(key: &KeyId, version: &KeyVersionId) -> Vec<u8> {
    format!("uv/{key}/{version}").into_bytes()
}

/// Encodes an instant.
pub fn encode_time(t: UnixMillis) -> Vec<u8> {
    encode_u64(u64::try_from(t.0).unwrap_or(0))
}

/// Decodes an instant.
pub fn decode_time(bytes: &[u8]) -> Result<UnixMillis, DomainError> {
    Ok(UnixMillis(
        i64::try_from(decode_u64(bytes)?).unwrap_or(i64::MAX),
    ))
}

/// Prefix of AccessKey pairs.
pub const ACCESS_KEY_PREFIX: &[u8] = b"ak/";

/// Store key of an AccessKey pair.
pub fn access_key(id: &AccessKeyId) -> Vec<u8> {
    format!("ak/{id}").into_bytes()
}

/// Encodes an AccessKey pair.
pub fn encode_access_key(r: &AccessKeyRecord) -> Result<Vec<u8>, DomainError> {
    encode_json("access key", r)
}

/// Decodes an AccessKey pair.
pub fn decode_access_key(bytes: &[u8]) -> Result<AccessKeyRecord, DomainError> {
    decode_json("access key", bytes)
}

/// Encodes an import token.
pub fn encode_token(t: &ImportTokenRecord) -> Result<Vec<u8>, DomainError> {
    encode_json("import token", t)
}

/// Decodes an import token.
pub fn decode_token(bytes: &[u8]) -> Result<ImportTokenRecord, DomainError> {
    decode_json("import token", bytes)
}

/// Store key of an instance record.
pub fn instance(id: &InstanceId) -> Vec<u8> {
    format!("i/{id}").into_bytes()
}

/// Store key of the revision of an instance's grants, which every change of a key policy in
/// the instance moves on ([`crate::index::put_key`]).
pub fn instance_grants(id: &InstanceId) -> Vec<u8> {
    format!("ig/{id}").into_bytes()
}

/// Prefix of the instances an account sees.
pub fn access_prefix(account: &AccountId) -> Vec<u8> {
    format!("ia/{account}/").into_bytes()
}

/// Store key of an account → instance index entry.
pub fn access(account: &AccountId, id: &InstanceId) -> Vec<u8> {
    format!("ia/{account}/{id}").into_bytes()
}

/// Store key of an event.
pub fn event(revision: u64) -> Vec<u8> {
    format!("e/{}", n20(revision)).into_bytes()
}

/// The last segment of a store key under `prefix`: the id an index entry names.
pub fn suffix<'a>(store_key: &'a [u8], prefix: &[u8]) -> Result<&'a str, DomainError> {
    store_key
        .strip_prefix(prefix)
        .and_then(|rest| std::str::from_utf8(rest).ok())
        .ok_or_else(|| DomainError::Internal("malformed index entry".into()))
}

/// Why an account sees an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Access {
    /// It owns the instance.
    Owner,
    /// The instance is shared with it.
    Shared,
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> DomainError {
    DomainError::Internal(format!("{what}: {e}"))
}

fn body<'a>(what: &str, bytes: &'a [u8]) -> Result<&'a [u8], DomainError> {
    let (format, body) = decode_record(bytes).map_err(|e| corrupt(what, e))?;
    if format != FORMAT {
        return Err(DomainError::Internal(format!(
            "{what} format {format} is unknown"
        )));
    }
    Ok(body)
}

fn encode_json<T: Serialize>(what: &str, value: &T) -> Result<Vec<u8>, DomainError> {
    let body = serde_json::to_vec(value).map_err(|e| corrupt(what, e))?;
    Ok(encode_record(FORMAT, &body))
}

fn decode_json<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> Result<T, DomainError> {
    serde_json::from_slice(body(what, bytes)?).map_err(|e| corrupt(what, e))
}

/// Encodes a key record.
pub fn encode_key(r: &KeyRecord) -> Result<Vec<u8>, DomainError> {
    encode_json("key record", r)
}

/// Decodes a key record of any known format.
pub fn decode_key(bytes: &[u8]) -> Result<KeyRecord, DomainError> {
    decode_json("key record", bytes)
}

/// Encodes a key id as an index value.
pub fn encode_key_id(id: &KeyId) -> Vec<u8> {
    encode_record(FORMAT, id.as_str().as_bytes())
}

/// Reads a key id stored as an index value, in the current form or layout 1's raw bytes.
pub fn decode_key_id(bytes: &[u8]) -> Result<KeyId, DomainError> {
    let raw = if bytes.starts_with(&kms_store::RECORD_MAGIC) {
        body("key reference", bytes)?
    } else {
        bytes
    };
    let text = std::str::from_utf8(raw)
        .map_err(|_| DomainError::Internal("index value is not UTF-8".into()))?;
    KeyId::parse(text).map_err(|_| DomainError::Internal("index value is not a key id".into()))
}

/// The value of a marker entry: an empty record.
pub fn marker() -> Vec<u8> {
    encode_record(FORMAT, b"")
}

/// Encodes a tag value as an index value.
pub fn encode_text(text: &str) -> Vec<u8> {
    encode_record(FORMAT, text.as_bytes())
}

/// Store key of the latest checkpoint of `plane`'s audit log `log` (its identity, 64
/// lowercase hex digits, as [`kms_runtime::audit_wire::log_id`] admits), or of the plane's
/// checkpoint from before logs had one when `log` is empty.
pub fn audit_checkpoint(plane: kms_runtime::audit::Plane, log: &str) -> Vec<u8> {
    if log.is_empty() {
        format!("ac/{plane}").into_bytes()
    } else {
        format!("ac/{plane}/{log}").into_bytes()
    }
}

/// Encodes an audit-log checkpoint.
pub fn encode_checkpoint(cp: &kms_runtime::audit::Checkpoint) -> Result<Vec<u8>, DomainError> {
    encode_json("audit checkpoint", cp)
}

/// Decodes an audit-log checkpoint.
pub fn decode_checkpoint(bytes: &[u8]) -> Result<kms_runtime::audit::Checkpoint, DomainError> {
    decode_json("audit checkpoint", bytes)
}

/// Encodes an instance record.
pub fn encode_instance(r: &InstanceRecord) -> Result<Vec<u8>, DomainError> {
    encode_json("instance record", r)
}

/// Decodes an instance record.
pub fn decode_instance(bytes: &[u8]) -> Result<InstanceRecord, DomainError> {
    decode_json("instance record", bytes)
}

/// Encodes an account's access to an instance.
pub fn encode_access(a: Access) -> Result<Vec<u8>, DomainError> {
    encode_json("instance access", &a)
}

/// Decodes an account's access to an instance.
pub fn decode_access(bytes: &[u8]) -> Result<Access, DomainError> {
    decode_json("instance access", bytes)
}

/// Encodes a key event.
pub fn encode_event(e: &KeyEvent) -> Result<Vec<u8>, DomainError> {
    encode_json("key event", e)
}

/// Decodes a key event.
pub fn decode_event(bytes: &[u8]) -> Result<KeyEvent, DomainError> {
    decode_json("key event", bytes)
}

/// Encodes a revision or other counter.
pub fn encode_u64(n: u64) -> Vec<u8> {
    encode_record(FORMAT, &n.to_be_bytes())
}

/// Decodes a revision or other counter.
pub fn decode_u64(bytes: &[u8]) -> Result<u64, DomainError> {
    let raw: [u8; 8] = body("counter", bytes)?
        .try_into()
        .map_err(|_| DomainError::Internal("counter is not 8 bytes".into()))?;
    Ok(u64::from_be_bytes(raw))
}

/// Encodes the layout version.
pub fn encode_layout(v: u8) -> Vec<u8> {
    encode_record(FORMAT, &[v])
}

/// Decodes the layout version.
pub fn decode_layout(bytes: &[u8]) -> Result<u8, DomainError> {
    match body("layout version", bytes)? {
        [v] => Ok(*v),
        _ => Err(DomainError::Internal(
            "layout version is not one byte".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn key_ids_read_in_both_layouts() {
        let id = KeyId::generate();
        assert_eq!(decode_key_id(&encode_key_id(&id)).unwrap(), id);
        assert_eq!(decode_key_id(id.as_str().as_bytes()).unwrap(), id);
        assert!(decode_key_id(b"garbage").is_err());
        assert!(decode_key_id(&encode_record(2, id.as_str().as_bytes())).is_err());
    }

    #[test]
    fn ordered_keys_sort_by_number() {
        let id = KeyId::generate();
        assert!(event(9) < event(10));
        assert!(
            deletion_queue(UnixMillis(999), &id) < deletion_queue(UnixMillis(1_000), &id),
            "queue entries sort by date"
        );
        let (at, back) = decode_queue_entry(&rotation_queue(UnixMillis(42), &id)).unwrap();
        assert_eq!((at, back), (UnixMillis(42), id));
        assert!(decode_queue_entry(b"sr/x/key-1").is_err());
        assert_eq!(
            suffix(&owner(&AccountId::parse("1").unwrap(), &id), b"o/1/").unwrap(),
            id.as_str()
        );
    }

    #[test]
    fn usage_and_token_entries() {
        let key = KeyId::generate();
        let p = Principal::parse("acs:ram::42:user/a/b").unwrap();
        let slot = usage_call(&key, &p, UsageOp::ReEncryptFrom);
        let prefix = usage_calls_prefix(&key);
        assert!(slot.starts_with(&prefix));
        assert_eq!(
            decode_usage_call(&slot, &prefix).unwrap(),
            ("acs:ram::42:user/a/b".to_string(), UsageOp::ReEncryptFrom)
        );
        assert!(decode_usage_call(b"uc/x/zz/Encrypt", b"uc/x/").is_err());
        assert_eq!(
            decode_time(&encode_time(UnixMillis(1_700_000_000_000))).unwrap(),
            UnixMillis(1_700_000_000_000)
        );
        let token = ImportTokenId::generate();
        let entry = token_purge_queue(UnixMillis(7), &token);
        let (at, id) = decode_dated(&entry).unwrap();
        assert_eq!((at, id), (UnixMillis(7), token.as_str()));
        let (at, back) = decode_queue_entry(&material_expiry_queue(UnixMillis(9), &key)).unwrap();
        assert_eq!((at, back), (UnixMillis(9), key));
        assert!(key_token(&key, &token).starts_with(&key_tokens_prefix(&key)));
    }

    #[test]
    fn tag_keys_cannot_run_into_each_other() {
        let acct = AccountId::parse("1").unwrap();
        let id = KeyId::generate();
        let entry = tag(&acct, "a/b", &id);
        assert!(!entry.starts_with(&tag_prefix(&acct, "a")));
        assert!(entry.starts_with(&tag_prefix(&acct, "a/b")));
    }

    #[test]
    fn records_round_trip_and_refuse_other_formats() {
        assert_eq!(decode_u64(&encode_u64(77)).unwrap(), 77);
        assert_eq!(decode_layout(&encode_layout(2)).unwrap(), 2);
        assert_eq!(
            decode_access(&encode_access(Access::Shared).unwrap()).unwrap(),
            Access::Shared
        );
        let e = KeyEvent::resync(5);
        assert_eq!(decode_event(&encode_event(&e).unwrap()).unwrap(), e);
        assert!(decode_u64(&encode_record(9, &[0; 8])).is_err());
        assert!(decode_u64(b"raw").is_err());
    }
}
