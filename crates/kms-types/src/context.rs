//! The encryption context: a string map bound to a ciphertext as AAD, in one canonical form so
//! the order a caller lists it in does not matter.

use std::collections::{BTreeMap, HashMap};

use crate::error::DomainError;

/// Most bytes the keys and values of a context may add up to.
pub const MAX_CONTEXT_BYTES: usize = 8192;

/// A validated encryption context, kept sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncryptionContext(BTreeMap<String, String>);

impl EncryptionContext {
    /// Validates a context from the wire: keys and values together at most 8,192 bytes, keys
    /// non-empty. Violations are `InvalidParameter.EncryptionContext`.
    pub fn new(map: HashMap<String, String>) -> Result<Self, DomainError> {
        let total: usize = map.iter().map(|(k, v)| k.len() + v.len()).sum();
        if total > MAX_CONTEXT_BYTES {
            return Err(DomainError::invalid(
                "EncryptionContext",
                format!("encryption context is {total} bytes, more than {MAX_CONTEXT_BYTES}"),
            ));
        }
        if map.keys().any(|k| k.is_empty()) {
            return Err(DomainError::invalid(
                "EncryptionContext",
                "encryption context has an empty key",
            ));
        }
        Ok(Self(map.into_iter().collect()))
    }

    /// The canonical bytes: for each entry in key order, the key's and the value's length as
    /// 4-byte big-endian integers, each followed by its UTF-8 bytes. Empty for an empty context.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in &self.0 {
            for part in [k, v] {
                // Lengths are bounded by MAX_CONTEXT_BYTES, so they fit in u32.
                out.extend_from_slice(&(part.len() as u32).to_be_bytes());
                out.extend_from_slice(part.as_bytes());
            }
        }
        out
    }

    /// Whether the context has no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(pairs: &[(&str, &str)]) -> Result<EncryptionContext, DomainError> {
        EncryptionContext::new(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn order_does_not_matter() {
        let a = ctx(&[("a", "1"), ("b", "2"), ("c", "3")]).unwrap_or_default();
        let b = ctx(&[("c", "3"), ("a", "1"), ("b", "2")]).unwrap_or_default();
        assert_eq!(a.canonical_bytes(), b.canonical_bytes());
        assert!(!a.canonical_bytes().is_empty());
    }

    #[test]
    fn boundaries_are_unambiguous() {
        let a = ctx(&[("ab", "c")]).unwrap_or_default();
        let b = ctx(&[("a", "bc")]).unwrap_or_default();
        assert_ne!(a.canonical_bytes(), b.canonical_bytes());
        let c = ctx(&[("a", "b"), ("c", "d")]).unwrap_or_default();
        let d = ctx(&[("a", "b\0\0\0\u{1}cd")]).unwrap_or_default();
        assert_ne!(c.canonical_bytes(), d.canonical_bytes());
    }

    #[test]
    fn empty_context_is_empty_bytes() {
        assert!(ctx(&[]).unwrap_or_default().canonical_bytes().is_empty());
    }

    #[test]
    fn size_limit() {
        let at_limit = "x".repeat(MAX_CONTEXT_BYTES - 1);
        assert!(ctx(&[("k", &at_limit)]).is_ok());
        let over = "x".repeat(MAX_CONTEXT_BYTES);
        let err = ctx(&[("k", &over)]).err().map(|e| e.reason_code());
        assert_eq!(err.as_deref(), Some("InvalidParameter.EncryptionContext"));
        assert!(ctx(&[("", "v")]).is_err());
    }
}
