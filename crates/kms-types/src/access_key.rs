//! AccessKey pairs: the credentials the HTTP gateway verifies request signatures with. A pair
//! acts as one principal; its secret exists in plaintext only when created (shown once) and in
//! the data plane and gateway while a request is verified. The record keeps it sealed.

use serde::{Deserialize, Serialize};

use crate::{DomainError, Principal, UnixMillis};

/// The prefix of every access key id, as the reference cloud's ids have it.
pub const ACCESS_KEY_ID_PREFIX: &str = "LTAI";
/// Letters and digits after the prefix.
pub const ACCESS_KEY_ID_SUFFIX_LEN: usize = 20;
/// Letters and digits of a secret.
pub const ACCESS_KEY_SECRET_LEN: usize = 30;
/// The characters ids (after the prefix) and secrets are drawn from.
pub const ACCESS_KEY_ALPHABET: &[u8] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// An access key id: `LTAI` and 20 letters and digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AccessKeyId(String);

impl AccessKeyId {
    /// Checks the form.
    pub fn parse(text: &str) -> Result<Self, DomainError> {
        let ok = text.strip_prefix(ACCESS_KEY_ID_PREFIX).is_some_and(|rest| {
            rest.len() == ACCESS_KEY_ID_SUFFIX_LEN
                && rest.bytes().all(|b| b.is_ascii_alphanumeric())
        });
        if ok {
            Ok(Self(text.to_string()))
        } else {
            Err(DomainError::invalid(
                "AccessKeyId",
                format!(
                    "an access key id is {ACCESS_KEY_ID_PREFIX} and {ACCESS_KEY_ID_SUFFIX_LEN} \
                     letters and digits"
                ),
            ))
        }
    }

    /// An id made of `random` bytes, each mapped onto [`ACCESS_KEY_ALPHABET`].
    pub fn from_random(random: &[u8; ACCESS_KEY_ID_SUFFIX_LEN]) -> Self {
        Self(format!("{ACCESS_KEY_ID_PREFIX}{}", alphabet_text(random)))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id as bytes: the context a secret is sealed under.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Display for AccessKeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for AccessKeyId {
    type Error = DomainError;
    fn try_from(s: String) -> Result<Self, DomainError> {
        Self::parse(&s)
    }
}

impl From<AccessKeyId> for String {
    fn from(id: AccessKeyId) -> String {
        id.0
    }
}

/// Letters and digits from random bytes. 256 is a multiple of 64 but not of 62, so the mapping
/// leans slightly to the first eight characters; each character still carries more than 5.9
/// bits, 177 bits for a 30-character secret.
pub fn alphabet_text(random: &[u8]) -> String {
    random
        .iter()
        .map(|b| char::from(ACCESS_KEY_ALPHABET[usize::from(*b) % ACCESS_KEY_ALPHABET.len()]))
        .collect()
}

/// Whether a pair is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccessKeyStatus {
    /// Accepted by the gateway.
    Enabled,
    /// Refused by the gateway; kept for the record until deleted.
    Disabled,
}

/// A stored pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessKeyRecord {
    /// The id.
    pub id: AccessKeyId,
    /// The principal the pair acts as.
    pub principal: Principal,
    /// Enabled or disabled.
    pub status: AccessKeyStatus,
    /// When it was made.
    pub created: UnixMillis,
    /// The operator who made it.
    pub creator: Principal,
    /// The secret sealed under the HSM root key, bound to the id. Never the plaintext.
    pub sealed_secret: Vec<u8>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ids_have_one_form() {
        for (text, ok) in [
            ("LTAIabcdefghijABCDEFGHIJ", true),
            ("LTAI0123456789012345678Z", true),
            ("LTAIabcdefghijABCDEFGHI", false),
            ("LTAIabcdefghijABCDEFGH-J", false),
            ("XTAIabcdefghijABCDEFGHIJ", false),
            ("", false),
        ] {
            assert_eq!(AccessKeyId::parse(text).is_ok(), ok, "{text}");
        }
        let id = AccessKeyId::from_random(&[255; ACCESS_KEY_ID_SUFFIX_LEN]);
        assert!(AccessKeyId::parse(id.as_str()).is_ok());
        assert_eq!(alphabet_text(&[0, 61, 62]), "A9A");
    }
}
