//! Principals: who is calling, as an ARN `acs:ram::<uid>:root|user/<name>|role/<name>`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::DomainError;
use crate::ids::AccountId;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Principal {
    arn: String,
    account: AccountId,
}

/// The form of a principal ARN, as messages show it.
pub const PRINCIPAL_FORM: &str = "acs:ram::<16-digit account>:root|user/<name>|role/<name>";

/// A principal ARN to show in messages as an example.
pub const PRINCIPAL_EXAMPLE: &str = "acs:ram::1234567890123456:root";

impl Principal {
    /// Parses a principal ARN; anything else is `NoIdentity`, since it cannot identify anyone.
    pub fn parse(arn: &str) -> Result<Self, DomainError> {
        Self::parse_explained(arn).map_err(|_| DomainError::NoIdentity)
    }

    /// Parses a principal ARN; for anything else, says what is wrong with it (without
    /// repeating it), for a message that also shows [`PRINCIPAL_FORM`].
    pub fn parse_explained(arn: &str) -> Result<Self, String> {
        let Some(rest) = arn.strip_prefix("acs:ram::") else {
            let why = if arn.is_empty() {
                "it is empty"
            } else if arn.bytes().all(|b| b.is_ascii_digit()) {
                "it is an account id alone, not a principal in the account"
            } else if arn.starts_with("acs:ram:") {
                "the account id follows `acs:ram::`, with two colons"
            } else {
                "it does not start with `acs:ram::`"
            };
            return Err(why.to_string());
        };
        let Some((uid, resource)) = rest.split_once(':') else {
            return Err(
                "the account id is not followed by `:root`, `:user/<name>` or `:role/<name>`"
                    .to_string(),
            );
        };
        let account = AccountId::parse(uid).map_err(|_| {
            format!("{uid:?} is not an account id (decimal digits without a leading zero)")
        })?;
        let name_ok = |n: &str| {
            !n.is_empty()
                && n.len() <= 128
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-@/".contains(&b))
        };
        let valid = resource == "root"
            || resource.strip_prefix("user/").is_some_and(name_ok)
            || resource.strip_prefix("role/").is_some_and(name_ok);
        if !valid {
            return Err(format!(
                "{resource:?} is not `root`, `user/<name>` or `role/<name>` (a name is 1 to 128 \
                 letters, digits or `._-@/`)"
            ));
        }
        Ok(Self {
            arn: arn.to_string(),
            account,
        })
    }

    /// The principal's ARN.
    pub fn arn(&self) -> &str {
        &self.arn
    }

    /// The account the principal belongs to.
    pub fn account(&self) -> &AccountId {
        &self.account
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.arn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms() {
        for (arn, account) in [
            ("acs:ram::1234:root", "1234"),
            ("acs:ram::1234:user/alice", "1234"),
            ("acs:ram::99:role/app-writer", "99"),
        ] {
            let p = Principal::parse(arn).unwrap_or_else(|e| panic!("{arn}: {e}"));
            assert_eq!(p.account().as_str(), account);
            assert_eq!(p.arn(), arn);
        }
    }

    #[test]
    fn rejects_everything_else() {
        for bad in [
            "",
            "root",
            "acs:ram:1234:root",
            "acs:ram::abc:root",
            "acs:ram::1234:",
            "acs:ram::1234:user/",
            "acs:ram::1234:group/x",
            "acs:ram::1234:user/a b",
            "acs:kms::1234:root",
            // One account, one spelling: no leading zeros.
            "acs:ram::01234:root",
            "acs:ram::0:root",
        ] {
            assert_eq!(
                Principal::parse(bad),
                Err(DomainError::NoIdentity),
                "{bad:?}"
            );
        }
    }

    /// Each malformed ARN is told apart, so a message can say what is wrong.
    #[test]
    fn says_what_is_wrong() {
        for (bad, why) in [
            ("", "it is empty"),
            ("1234567890123456", "an account id alone"),
            ("root", "does not start with `acs:ram::`"),
            ("acs:ram:123:root", "with two colons"),
            ("acs:ram::123", "not followed by `:root`"),
            ("acs:ram::0123:root", "\"0123\" is not an account id"),
            ("acs:ram::123:group/x", "\"group/x\" is not `root`"),
        ] {
            let err = Principal::parse_explained(bad).err().unwrap_or_default();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
        assert!(Principal::parse_explained(PRINCIPAL_EXAMPLE).is_ok());
    }
}
