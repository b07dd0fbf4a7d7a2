//! Key states and the state/operation matrix of the API contract.

use serde::{Deserialize, Serialize};

use crate::error::DomainError;

/// The lifecycle state of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyState {
    /// Usable.
    Enabled,
    /// Kept, but refused for crypto.
    Disabled,
    /// Scheduled for deletion.
    PendingDeletion,
    /// Origin External, waiting for material.
    PendingImport,
}

impl KeyState {
    /// The name in reason codes and on screen.
    pub fn display_name(self) -> &'static str {
        match self {
            Self::Enabled => "Enabled",
            Self::Disabled => "Disabled",
            Self::PendingDeletion => "PendingDeletion",
            Self::PendingImport => "PendingImport",
        }
    }

    /// Every state.
    pub const ALL: &'static [KeyState] = &[
        Self::Enabled,
        Self::Disabled,
        Self::PendingDeletion,
        Self::PendingImport,
    ];
}

/// Every operation on a key, named by its policy action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// `kms:Encrypt`.
    Encrypt,
    /// `kms:Decrypt`.
    Decrypt,
    /// `kms:ReEncrypt`.
    ReEncrypt,
    /// `kms:GenerateDataKey` (with or without plaintext).
    GenerateDataKey,
    /// `kms:GenerateAndExportDataKey`.
    GenerateAndExportDataKey,
    /// `kms:ExportDataKey`.
    ExportDataKey,
    /// `kms:AsymmetricEncrypt`.
    AsymmetricEncrypt,
    /// `kms:AsymmetricDecrypt`.
    AsymmetricDecrypt,
    /// `kms:AsymmetricSign`.
    AsymmetricSign,
    /// `kms:AsymmetricVerify`.
    AsymmetricVerify,
    /// `kms:GetPublicKey`.
    GetPublicKey,
    /// `kms:DescribeKey`.
    DescribeKey,
    /// `kms:EnableKey`.
    EnableKey,
    /// `kms:DisableKey`.
    DisableKey,
    /// `kms:UpdateKeyDescription`.
    UpdateKeyDescription,
    /// `kms:SetDeletionProtection`.
    SetDeletionProtection,
    /// `SetDeletionProtection` with protection turned on.
    EnableDeletionProtection,
    /// `kms:ScheduleKeyDeletion`.
    ScheduleKeyDeletion,
    /// `kms:CancelKeyDeletion`.
    CancelKeyDeletion,
    /// `kms:UpdateRotationPolicy`.
    UpdateRotationPolicy,
    /// `kms:CreateKeyVersion`.
    CreateKeyVersion,
    /// `kms:CreateAlias`.
    CreateAlias,
    /// `kms:TagResources` / `kms:UntagResources`.
    ChangeTags,
    /// `kms:ImportKeyMaterial`.
    ImportKeyMaterial,
    /// `kms:GetParametersForImport`.
    GetParametersForImport,
    /// `kms:DeleteKeyMaterial`.
    DeleteKeyMaterial,
}

impl Operation {
    /// Checks the state rules of the API contract for this operation.
    pub fn check_state(self, state: KeyState) -> Result<(), DomainError> {
        use KeyState::*;
        let allowed = match self {
            Self::Encrypt
            | Self::Decrypt
            | Self::ReEncrypt
            | Self::GenerateDataKey
            | Self::GenerateAndExportDataKey
            | Self::ExportDataKey
            | Self::AsymmetricEncrypt
            | Self::AsymmetricDecrypt
            | Self::AsymmetricSign
            | Self::AsymmetricVerify
            | Self::GetPublicKey
            | Self::UpdateRotationPolicy
            | Self::CreateKeyVersion => state == Enabled,
            Self::EnableKey | Self::DisableKey => matches!(state, Enabled | Disabled),
            Self::ScheduleKeyDeletion => matches!(state, Enabled | Disabled | PendingImport),
            Self::CancelKeyDeletion => state == PendingDeletion,
            Self::EnableDeletionProtection
            | Self::CreateAlias
            | Self::UpdateKeyDescription
            | Self::ChangeTags
            | Self::GetParametersForImport
            | Self::DeleteKeyMaterial => state != PendingDeletion,
            Self::ImportKeyMaterial => state == PendingImport,
            Self::DescribeKey | Self::SetDeletionProtection => true,
        };
        if allowed {
            Ok(())
        } else {
            Err(DomainError::InvalidState(state))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::KeyState::*;
    use super::*;

    fn check(op: Operation, allowed_in: &[KeyState]) {
        for state in KeyState::ALL {
            let got = op.check_state(*state);
            if allowed_in.contains(state) {
                assert_eq!(got, Ok(()), "{op:?} in {state:?}");
            } else {
                assert_eq!(
                    got,
                    Err(DomainError::InvalidState(*state)),
                    "{op:?} in {state:?}"
                );
            }
        }
    }

    #[test]
    fn state_matrix() {
        check(Operation::Encrypt, &[Enabled]);
        check(Operation::Decrypt, &[Enabled]);
        check(Operation::AsymmetricSign, &[Enabled]);
        check(Operation::UpdateRotationPolicy, &[Enabled]);
        check(Operation::EnableKey, &[Enabled, Disabled]);
        check(Operation::DisableKey, &[Enabled, Disabled]);
        check(
            Operation::ScheduleKeyDeletion,
            &[Enabled, Disabled, PendingImport],
        );
        check(Operation::CancelKeyDeletion, &[PendingDeletion]);
        check(
            Operation::EnableDeletionProtection,
            &[Enabled, Disabled, PendingImport],
        );
        check(Operation::SetDeletionProtection, KeyState::ALL);
        check(Operation::CreateAlias, &[Enabled, Disabled, PendingImport]);
        check(
            Operation::UpdateKeyDescription,
            &[Enabled, Disabled, PendingImport],
        );
        check(Operation::ChangeTags, &[Enabled, Disabled, PendingImport]);
        check(Operation::ImportKeyMaterial, &[PendingImport]);
        check(
            Operation::GetParametersForImport,
            &[Enabled, Disabled, PendingImport],
        );
        check(
            Operation::DeleteKeyMaterial,
            &[Enabled, Disabled, PendingImport],
        );
        check(Operation::DescribeKey, KeyState::ALL);
    }

    #[test]
    fn reason_codes_name_the_state() {
        assert_eq!(
            Operation::Encrypt
                .check_state(Disabled)
                .map_err(|e| e.reason_code()),
            Err("Rejected.Disabled".to_string())
        );
        assert_eq!(
            DomainError::InvalidState(PendingDeletion).reason_code(),
            "Rejected.PendingDeletion"
        );
    }
}
