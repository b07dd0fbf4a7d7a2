//! Identifiers: keys, key versions, instances, accounts, and the three ways to name a key.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::DomainError;

/// The text forms of an id held in place: `Debug` and `Display` show its text, and serde reads
/// it through `parse` and writes it as text (`#[serde(try_from = "String", into = "String")]`).
macro_rules! text_form {
    ($id:ident) => {
        impl fmt::Debug for $id {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_tuple(stringify!($id))
                    .field(&self.as_str())
                    .finish()
            }
        }

        impl fmt::Display for $id {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl TryFrom<String> for $id {
            type Error = DomainError;

            fn try_from(s: String) -> Result<Self, DomainError> {
                Self::parse(&s)
            }
        }

        impl From<$id> for String {
            fn from(id: $id) -> Self {
                id.as_str().to_string()
            }
        }
    };
}

text_form!(KeyId);
text_form!(AccountId);

/// A key id: `key-` followed by 32 lowercase hex digits.
///
/// Held as its 36 bytes of text in place, so a copy allocates nothing: the data plane keeps a
/// key id per cached key, per cache lookup and per usage record.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct KeyId([u8; KEY_ID_LEN]);

/// The length of a key id's text.
const KEY_ID_LEN: usize = 36;

impl KeyId {
    /// A fresh random key id.
    pub fn generate() -> Self {
        let mut text = [0u8; KEY_ID_LEN];
        text[..4].copy_from_slice(b"key-");
        Uuid::new_v4().simple().encode_lower(&mut text[4..]);
        Self(text)
    }

    /// Parses a key id; anything else is `InvalidParameter.KeyId`.
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        let ok = s.strip_prefix("key-").is_some_and(|rest| {
            rest.len() == 32
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
        match <[u8; KEY_ID_LEN]>::try_from(s.as_bytes()) {
            Ok(text) if ok => Ok(Self(text)),
            _ => Err(DomainError::invalid(
                "KeyId",
                format!("{s:?} is not a key id"),
            )),
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Only `parse` and `generate` make one, and both leave ASCII text.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// A key version id: a UUID, 16 bytes in ciphertext blobs, hyphenated text elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct KeyVersionId(Uuid);

impl KeyVersionId {
    /// A fresh random version id.
    pub fn generate() -> Self {
        Self(Uuid::new_v4())
    }

    /// From the 16 bytes a ciphertext blob carries.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(Uuid::from_bytes(bytes))
    }

    /// The 16 bytes a ciphertext blob carries.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    /// Parses the hyphenated text form; anything else is `InvalidParameter.KeyVersionId`.
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        Uuid::try_parse(s).map(Self).map_err(|_| {
            DomainError::invalid("KeyVersionId", format!("{s:?} is not a key version id"))
        })
    }
}

impl fmt::Display for KeyVersionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.hyphenated())
    }
}

/// A KMS instance id: `kst-` followed by 32 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct InstanceId(String);

impl InstanceId {
    /// A fresh random instance id.
    pub fn generate() -> Self {
        Self(format!("kst-{}", Uuid::new_v4().simple()))
    }

    /// Parses an instance id; anything else is `InvalidParameter.KmsInstanceId`.
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        let ok = s.strip_prefix("kst-").is_some_and(|rest| {
            !rest.is_empty() && rest.len() <= 64 && rest.bytes().all(|b| b.is_ascii_alphanumeric())
        });
        if ok {
            Ok(Self(s.to_string()))
        } else {
            Err(DomainError::invalid(
                "KmsInstanceId",
                format!("{s:?} is not an instance id"),
            ))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An account id (the `<uid>` of an ARN): 1 to 32 digits.
///
/// Held as its text in place, like [`KeyId`]: every cached key and every caller carries one.
#[derive(Clone, Copy, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AccountId {
    len: u8,
    text: [u8; ACCOUNT_ID_MAX],
}

/// The longest account id.
const ACCOUNT_ID_MAX: usize = 32;

impl AccountId {
    /// Parses an account id: 1–32 decimal digits in canonical form, without a leading zero,
    /// so one account has one spelling (`0123` and `123` would otherwise be two accounts to
    /// a string comparison and one to a person). Anything else is `InvalidParameter.AccountId`.
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        if !s.is_empty()
            && s.len() <= ACCOUNT_ID_MAX
            && s.bytes().all(|b| b.is_ascii_digit())
            && !s.starts_with('0')
        {
            let mut text = [0u8; ACCOUNT_ID_MAX];
            text[..s.len()].copy_from_slice(s.as_bytes());
            Ok(Self {
                len: s.len() as u8,
                text,
            })
        } else {
            Err(DomainError::invalid(
                "AccountId",
                format!("{s:?} is not an account id"),
            ))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Only `parse` makes one, and it leaves ASCII digits.
        std::str::from_utf8(&self.text[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl PartialEq for AccountId {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for AccountId {}

impl std::hash::Hash for AccountId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialOrd for AccountId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for AccountId {
    /// As the text compares, so sorted lists read as before.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

/// How a request names a key: by id, by alias, or by ARN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRef {
    /// `key-…`.
    Id(KeyId),
    /// `alias/…`, resolved in the caller's account.
    Alias(String),
    /// `acs:kms:<region>:<uid>:key/<key-id>`.
    Arn {
        /// The region named in the ARN.
        region: String,
        /// The owning account named in the ARN.
        account: AccountId,
        /// The key.
        key_id: KeyId,
    },
}

/// The forms a `key_id` field accepts, as messages show them.
pub const KEY_REF_FORMS: &str = "a key id (key-<32 hex digits>), an alias (alias/<name>) or a \
                                 key ARN (acs:kms:<region>:<account>:key/<key id>)";

impl KeyRef {
    /// Parses a `key_id` request field; empty or malformed input is `InvalidParameter.KeyId`,
    /// saying what was wrong and which forms are accepted.
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        let bad = |why: String| {
            DomainError::invalid("KeyId", format!("{why}; key_id takes {KEY_REF_FORMS}"))
        };
        if s.is_empty() {
            return Err(bad("key_id is required".into()));
        }
        if s.starts_with("alias/") {
            crate::validate::alias_name(s)?;
            return Ok(Self::Alias(s.to_string()));
        }
        if let Some(rest) = s.strip_prefix("acs:kms:") {
            let mut parts = rest.splitn(3, ':');
            let (Some(region), Some(account), Some(resource)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(bad(format!("{s:?} is not a key ARN")));
            };
            let key = resource
                .strip_prefix("key/")
                .ok_or_else(|| bad(format!("{s:?} is not a key ARN")))?;
            if region.is_empty() {
                return Err(bad(format!("{s:?} has no region")));
            }
            return Ok(Self::Arn {
                region: region.to_string(),
                account: AccountId::parse(account)
                    .map_err(|_| bad(format!("{s:?} has a bad account")))?,
                key_id: KeyId::parse(key)
                    .map_err(|_| bad(format!("{s:?} ends in {key:?}, which is not a key id")))?,
            });
        }
        KeyId::parse(s)
            .map(Self::Id)
            .map_err(|_| bad(format!("{s:?} is not a key id, an alias or a key ARN")))
    }
}

impl fmt::Display for KeyRef {
    /// The reference as a request names it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Id(id) => write!(f, "{id}"),
            Self::Alias(alias) => f.write_str(alias),
            Self::Arn {
                region,
                account,
                key_id,
            } => write!(f, "acs:kms:{region}:{account}:key/{key_id}"),
        }
    }
}

/// The ARN of a key.
pub fn key_arn(region: &str, account: &AccountId, key_id: &KeyId) -> String {
    format!("acs:kms:{region}:{account}:key/{key_id}")
}

/// The ARN of an alias.
pub fn alias_arn(region: &str, account: &AccountId, alias: &str) -> String {
    format!("acs:kms:{region}:{account}:{alias}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_back() {
        let k = KeyId::generate();
        assert_eq!(KeyId::parse(k.as_str()), Ok(k));
        let v = KeyVersionId::generate();
        assert_eq!(KeyVersionId::parse(&v.to_string()), Ok(v));
        assert_eq!(KeyVersionId::from_bytes(*v.as_bytes()), v);
        let i = InstanceId::generate();
        assert_eq!(InstanceId::parse(i.as_str()), Ok(i));
    }

    #[test]
    fn account_ids_have_one_spelling() {
        for ok in ["1", "10", "1234567890123456", &"9".repeat(32)] {
            assert_eq!(
                AccountId::parse(ok).map(|a| a.to_string()),
                Ok(ok.to_string())
            );
        }
        for bad in [
            "",
            "0",
            "01",
            "0123456789012345",
            "12a",
            " 12",
            &"9".repeat(33),
        ] {
            assert!(AccountId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn key_refs() {
        let id = KeyId::generate();
        assert_eq!(KeyRef::parse(id.as_str()), Ok(KeyRef::Id(id)));
        assert_eq!(
            KeyRef::parse("alias/app"),
            Ok(KeyRef::Alias("alias/app".into()))
        );
        let arn = key_arn(
            "local",
            &AccountId::parse("123").unwrap_or_else(|e| panic!("{e}")),
            &id,
        );
        assert!(matches!(KeyRef::parse(&arn), Ok(KeyRef::Arn { key_id, .. }) if key_id == id));
        for bad in [
            "",
            "key-",
            "key-XYZ",
            "alias/",
            "alias/acs/x",
            "acs:kms:local:abc:key/key-1",
            "acs:kms::123:key/x",
            "acs:kms:local:123:alias/x",
            "acs:kms:local:0123:key/key-00000000000000000000000000000000",
            "acs:kms",
            "\u{0}",
        ] {
            let err = KeyRef::parse(bad).err();
            assert!(
                matches!(err, Some(DomainError::InvalidParameter { .. })),
                "{bad:?} gave {err:?}"
            );
        }
    }

    /// Every malformed `key_id` says what is wrong and which forms are accepted; a parsed one
    /// prints as the request named it.
    #[test]
    fn key_refs_show_the_accepted_forms() {
        for (bad, why) in [
            ("", "key_id is required"),
            ("1234", "\"1234\" is not a key id, an alias or a key ARN"),
            ("acs:kms:local:42", "is not a key ARN"),
            (
                "acs:kms:local:42:key/k1",
                "ends in \"k1\", which is not a key id",
            ),
        ] {
            let err = KeyRef::parse(bad).err();
            assert_eq!(
                err.as_ref().map(DomainError::reason_code).as_deref(),
                Some("InvalidParameter.KeyId")
            );
            let text = err.map(|e| e.to_string()).unwrap_or_default();
            assert!(
                text.contains(why) && text.ends_with(&format!("key_id takes {KEY_REF_FORMS}")),
                "{bad:?}: {text}"
            );
        }
        let id = KeyId::generate();
        for text in [
            id.to_string(),
            "alias/app".to_string(),
            format!("acs:kms:local:42:key/{id}"),
        ] {
            let parsed = KeyRef::parse(&text).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(parsed.to_string(), text);
        }
    }
}
