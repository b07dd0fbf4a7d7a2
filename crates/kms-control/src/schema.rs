//! How control-plane records sit in the store: key prefixes and record encoding.
//!
//! | key | value |
//! |---|---|
//! | `k/<key-id>` | key record (format 1: JSON of [`KeyRecord`]) |
//! | `v/<key-version-id>` | key id owning the version |
//! | `a/<account>/<alias>` | key id the alias points at |
//! | `d/<account>` | key id of the account's default key |

use kms_store::{decode_record, encode_record};
use kms_types::{AccountId, DomainError, KeyId, KeyRecord, KeyVersionId};

/// Current format of key records.
pub const KEY_RECORD_FORMAT: u8 = 1;

/// Store key of a key record.
pub fn key(id: &KeyId) -> Vec<u8> {
    format!("k/{id}").into_bytes()
}

/// Store key of a version → key index entry.
pub fn version(id: &KeyVersionId) -> Vec<u8> {
    format!("v/{id}").into_bytes()
}

/// Store key of an alias → key index entry.
pub fn alias(account: &AccountId, alias: &str) -> Vec<u8> {
    format!("a/{account}/{alias}").into_bytes()
}

/// Store key of an account's default key.
pub fn default_key(account: &AccountId) -> Vec<u8> {
    format!("d/{account}").into_bytes()
}

/// Encodes a key record.
pub fn encode_key(r: &KeyRecord) -> Result<Vec<u8>, DomainError> {
    let body = serde_json::to_vec(r)
        .map_err(|e| DomainError::Internal(format!("encode key record: {e}")))?;
    Ok(encode_record(KEY_RECORD_FORMAT, &body))
}

/// Decodes a key record of any known format.
pub fn decode_key(bytes: &[u8]) -> Result<KeyRecord, DomainError> {
    let (format, body) =
        decode_record(bytes).map_err(|e| DomainError::Internal(format!("key record: {e}")))?;
    match format {
        KEY_RECORD_FORMAT => serde_json::from_slice(body)
            .map_err(|e| DomainError::Internal(format!("decode key record: {e}"))),
        other => Err(DomainError::Internal(format!(
            "key record format {other} is unknown"
        ))),
    }
}

/// Reads a key id stored as an index value.
pub fn decode_key_id(bytes: &[u8]) -> Result<KeyId, DomainError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| DomainError::Internal("index value is not UTF-8".into()))?;
    KeyId::parse(text).map_err(|_| DomainError::Internal("index value is not a key id".into()))
}
