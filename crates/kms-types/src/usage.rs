//! Key association: which principals use a key, for which operations, and when each key
//! version last decrypted or verified, so an operator can tell whether an old version or a
//! key about to be deleted is still in use.
//!
//! The data plane reports one [`UsageEvent`] per successful cryptographic call; the control
//! plane keeps the latest time per (key, principal, operation) and, for operations that need
//! a version's material to read something ([`UsageOp::reads_version`]), per (key, version).
//! `CheckKeyAssociation` shows what happened in the last [`ASSOCIATION_WINDOW_DAYS`].

use std::fmt;

use crate::error::DomainError;
use crate::ids::{KeyId, KeyVersionId};
use crate::principal::Principal;
use crate::time::UnixMillis;

/// How far back `CheckKeyAssociation` looks, in days.
pub const ASSOCIATION_WINDOW_DAYS: i64 = 365;

/// A cryptographic operation as usage records name it. `ReEncrypt` uses two keys: the source
/// key is recorded as `ReEncryptFrom` (it decrypts), the destination as `ReEncryptTo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UsageOp {
    /// `Encrypt`.
    Encrypt,
    /// `Decrypt`.
    Decrypt,
    /// `ReEncrypt`, as the source key.
    ReEncryptFrom,
    /// `ReEncrypt`, as the destination key.
    ReEncryptTo,
    /// `GenerateDataKey`.
    GenerateDataKey,
    /// `GenerateDataKeyWithoutPlaintext`.
    GenerateDataKeyWithoutPlaintext,
    /// `GenerateAndExportDataKey`.
    GenerateAndExportDataKey,
    /// `ExportDataKey`.
    ExportDataKey,
    /// `AsymmetricEncrypt`.
    AsymmetricEncrypt,
    /// `AsymmetricDecrypt`.
    AsymmetricDecrypt,
    /// `AsymmetricSign`.
    AsymmetricSign,
    /// `AsymmetricVerify`.
    AsymmetricVerify,
    /// `GetPublicKey`.
    GetPublicKey,
}

impl UsageOp {
    /// Every operation.
    pub const ALL: &'static [UsageOp] = &[
        Self::Encrypt,
        Self::Decrypt,
        Self::ReEncryptFrom,
        Self::ReEncryptTo,
        Self::GenerateDataKey,
        Self::GenerateDataKeyWithoutPlaintext,
        Self::GenerateAndExportDataKey,
        Self::ExportDataKey,
        Self::AsymmetricEncrypt,
        Self::AsymmetricDecrypt,
        Self::AsymmetricSign,
        Self::AsymmetricVerify,
        Self::GetPublicKey,
    ];

    /// The name on the wire and on screen.
    pub fn name(self) -> &'static str {
        match self {
            Self::Encrypt => "Encrypt",
            Self::Decrypt => "Decrypt",
            Self::ReEncryptFrom => "ReEncryptFrom",
            Self::ReEncryptTo => "ReEncryptTo",
            Self::GenerateDataKey => "GenerateDataKey",
            Self::GenerateDataKeyWithoutPlaintext => "GenerateDataKeyWithoutPlaintext",
            Self::GenerateAndExportDataKey => "GenerateAndExportDataKey",
            Self::ExportDataKey => "ExportDataKey",
            Self::AsymmetricEncrypt => "AsymmetricEncrypt",
            Self::AsymmetricDecrypt => "AsymmetricDecrypt",
            Self::AsymmetricSign => "AsymmetricSign",
            Self::AsymmetricVerify => "AsymmetricVerify",
            Self::GetPublicKey => "GetPublicKey",
        }
    }

    /// Parses [`UsageOp::name`]; anything else is `InvalidParameter.Operation`.
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        Self::ALL
            .iter()
            .copied()
            .find(|op| op.name() == s)
            .ok_or_else(|| {
                DomainError::invalid("Operation", format!("{s:?} is not a usage operation"))
            })
    }

    /// Whether the operation reads with a version's material (decrypts, or verifies a
    /// signature), so that the version is still needed: these set a version's last use.
    pub fn reads_version(self) -> bool {
        match self {
            Self::Decrypt
            | Self::ReEncryptFrom
            | Self::ExportDataKey
            | Self::AsymmetricDecrypt
            | Self::AsymmetricVerify => true,
            Self::Encrypt
            | Self::ReEncryptTo
            | Self::GenerateDataKey
            | Self::GenerateDataKeyWithoutPlaintext
            | Self::GenerateAndExportDataKey
            | Self::AsymmetricEncrypt
            | Self::AsymmetricSign
            | Self::GetPublicKey => false,
        }
    }
}

impl fmt::Display for UsageOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One successful use of a key version by a principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageEvent {
    /// The key.
    pub key_id: KeyId,
    /// The version the call used.
    pub version: KeyVersionId,
    /// The caller.
    pub principal: Principal,
    /// What it did.
    pub op: UsageOp,
    /// When.
    pub at: UnixMillis,
}

/// The earliest use `CheckKeyAssociation` shows at `now`.
pub fn association_cutoff(now: UnixMillis) -> UnixMillis {
    now.plus_days(-ASSOCIATION_WINDOW_DAYS)
}

/// A principal's latest call of one operation on a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Association {
    /// The caller's ARN.
    pub principal: String,
    /// The operation.
    pub op: UsageOp,
    /// Its latest call.
    pub last_called: UnixMillis,
}

/// A key version's latest decryption or verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionUse {
    /// The version.
    pub version: KeyVersionId,
    /// Its latest use; `None` if it was never used (within the window).
    pub last_used: Option<UnixMillis>,
}

/// What `CheckKeyAssociation` answers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyAssociations {
    /// Principals and operations, by principal then operation.
    pub associations: Vec<Association>,
    /// Every live version of the key, oldest first.
    pub versions: Vec<VersionUse>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for op in UsageOp::ALL {
            assert_eq!(UsageOp::parse(op.name()), Ok(*op));
        }
        assert_eq!(
            UsageOp::parse("ReEncrypt").map_err(|e| e.reason_code()),
            Err("InvalidParameter.Operation".to_string())
        );
    }

    #[test]
    fn reading_operations() {
        let reading: Vec<UsageOp> = UsageOp::ALL
            .iter()
            .copied()
            .filter(|op| op.reads_version())
            .collect();
        assert_eq!(
            reading,
            [
                UsageOp::Decrypt,
                UsageOp::ReEncryptFrom,
                UsageOp::ExportDataKey,
                UsageOp::AsymmetricDecrypt,
                UsageOp::AsymmetricVerify
            ]
        );
    }

    #[test]
    fn window_is_a_year() {
        let now = UnixMillis(400 * crate::time::DAY_MS);
        assert_eq!(
            association_cutoff(now),
            UnixMillis(35 * crate::time::DAY_MS)
        );
    }
}
