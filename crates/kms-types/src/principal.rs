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

impl Principal {
    /// Parses a principal ARN; anything else is `NoIdentity`, since it cannot identify anyone.
    pub fn parse(arn: &str) -> Result<Self, DomainError> {
        let rest = arn
            .strip_prefix("acs:ram::")
            .ok_or(DomainError::NoIdentity)?;
        let (uid, resource) = rest.split_once(':').ok_or(DomainError::NoIdentity)?;
        let account = AccountId::parse(uid).map_err(|_| DomainError::NoIdentity)?;
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
            return Err(DomainError::NoIdentity);
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
}
