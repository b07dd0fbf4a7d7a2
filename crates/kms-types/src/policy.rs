//! Key policies: who may do what with a key. Deny by default.
//!
//! The default policy lets the principals of the owning account manage and use the key.
//! Principals of other accounts are told the key does not exist, so key ids cannot be probed.

use serde_json::Value;

use crate::error::DomainError;
use crate::ids::AccountId;
use crate::principal::Principal;

/// Largest policy document, in bytes.
pub const MAX_POLICY_BYTES: usize = 32_768;

/// Decides whether `principal` may perform `action` (e.g. `kms:Encrypt`) on a key owned by
/// `owner`. Errors: `KeyNotFound` when the caller may not learn the key exists.
pub fn authorize(
    principal: &Principal,
    owner: &AccountId,
    action: &str,
) -> Result<(), DomainError> {
    let _ = action;
    if principal.account() == owner {
        Ok(())
    } else {
        Err(DomainError::KeyNotFound)
    }
}

/// The default policy of a key owned by `owner`, as `GetKeyPolicy` shows it: every principal
/// of the owning account may do everything with the key.
pub fn default_document(owner: &AccountId) -> String {
    serde_json::json!({
        "Version": "1",
        "Statement": [{
            "Sid": "Enable RAM User Permissions",
            "Effect": "Allow",
            "Principal": { "RAM": [format!("acs:ram::{owner}:*")] },
            "Action": ["kms:*"],
            "Resource": ["*"],
        }],
    })
    .to_string()
}

/// Validates a custom policy document's shape: JSON of at most 32,768 bytes with `Version`
/// "1" and a `Statement` list. Violations are `InvalidParameter.Policy`.
pub fn validate_document(doc: &str) -> Result<(), DomainError> {
    let bad = |why: String| DomainError::invalid("Policy", why);
    if doc.len() > MAX_POLICY_BYTES {
        return Err(bad(format!(
            "policy is {} bytes, more than {MAX_POLICY_BYTES}",
            doc.len()
        )));
    }
    let value: Value =
        serde_json::from_str(doc).map_err(|e| bad(format!("policy is not JSON: {e}")))?;
    if value.get("Version").and_then(Value::as_str) != Some("1") {
        return Err(bad("policy Version must be \"1\"".into()));
    }
    if !value.get("Statement").is_some_and(Value::is_array) {
        return Err(bad("policy Statement must be a list".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(arn: &str) -> Principal {
        Principal::parse(arn).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn default_policy_is_the_owning_account() {
        let owner = AccountId::parse("100").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            authorize(&p("acs:ram::100:root"), &owner, "kms:Encrypt"),
            Ok(())
        );
        assert_eq!(
            authorize(&p("acs:ram::100:user/u"), &owner, "kms:DisableKey"),
            Ok(())
        );
        assert_eq!(
            authorize(&p("acs:ram::200:root"), &owner, "kms:Encrypt"),
            Err(DomainError::KeyNotFound)
        );
    }

    #[test]
    fn default_document_is_valid_and_names_the_account() {
        let owner = AccountId::parse("100").unwrap_or_else(|e| panic!("{e}"));
        let doc = default_document(&owner);
        assert_eq!(validate_document(&doc), Ok(()));
        assert!(doc.contains("acs:ram::100:*"), "{doc}");
    }

    #[test]
    fn document_shape() {
        assert!(validate_document(r#"{"Version":"1","Statement":[]}"#).is_ok());
        for bad in [
            "",
            "{",
            "[]",
            r#"{"Version":"2","Statement":[]}"#,
            r#"{"Version":"1"}"#,
        ] {
            let got = validate_document(bad).err().map(|e| e.reason_code());
            assert_eq!(got.as_deref(), Some("InvalidParameter.Policy"), "{bad}");
        }
        let huge = format!(
            r#"{{"Version":"1","Statement":[],"x":"{}"}}"#,
            "a".repeat(MAX_POLICY_BYTES)
        );
        assert!(validate_document(&huge).is_err());
    }
}
