//! The domain error enum; every variant has a stable reason code in the reference product's style.

use crate::import::ImportRejection;
use crate::state::KeyState;

/// Everything a KMS operation can refuse or fail with. Servers map each variant to a gRPC code
/// in one exhaustive match; the reason code travels in the status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// A request field breaks a validation rule; `field` names it in the reason code.
    #[error("{reason}")]
    InvalidParameter {
        /// The field, PascalCase, as it appears in `InvalidParameter.<Field>`.
        field: &'static str,
        /// What is wrong with it, for the caller.
        reason: String,
    },
    /// A ciphertext blob that is malformed or fails authentication.
    #[error("the ciphertext is invalid or does not match the encryption context")]
    InvalidCiphertext,
    /// No such key, or a key the caller may not learn about.
    #[error("the key does not exist")]
    KeyNotFound,
    /// No such key version.
    #[error("the key version does not exist")]
    KeyVersionNotFound,
    /// No such alias in the caller's account.
    #[error("the alias does not exist")]
    AliasNotFound,
    /// No such instance, or one the caller may not see.
    #[error("the kms instance does not exist")]
    InstanceNotFound,
    /// No such AccessKey pair.
    #[error("the access key does not exist")]
    AccessKeyNotFound,
    /// The AccessKey pair is disabled.
    #[error("the access key is disabled")]
    AccessKeyDisabled,
    /// The alias is taken in this account.
    #[error("the alias already exists")]
    AliasExists,
    /// The account already has its default key; it is named (id and aliases) when the caller
    /// may describe it. The text says how to go on.
    #[error("{}", default_key_exists(.0.as_deref()))]
    DefaultKeyExists(Option<String>),
    /// The caller is authenticated but not allowed.
    #[error("the caller is not allowed to perform this operation")]
    NoPermission,
    /// A key's policy refuses the caller an action on a key the caller may know exists. Reason
    /// code as [`DomainError::NoPermission`].
    #[error("{principal} is not allowed {action} on {target}")]
    NotAllowed {
        /// The caller's ARN.
        principal: String,
        /// The policy action, `kms:<Name>`.
        action: String,
        /// The key, as the caller would recognise it: `this key` unless a call touches several.
        target: String,
    },
    /// One key of a batch call (tags on up to 50 keys) failed; the whole call did. Code and
    /// reason code are those of `error`.
    #[error("key {key:?} ({position} of {count} in key_ids): {error}")]
    InBatch {
        /// The key as the request named it.
        key: String,
        /// Its place in the request, from 1.
        position: usize,
        /// How many keys the request named.
        count: usize,
        /// Why it failed.
        error: Box<DomainError>,
    },
    /// The caller has no identity.
    #[error("the request carries no valid identity")]
    NoIdentity,
    /// The caller has no identity, and the text says why and how to give one: what was wrong
    /// with what it sent, or what it may send. Reason code as [`DomainError::NoIdentity`].
    #[error("{0}")]
    Unidentified(String),
    /// The key's state forbids the operation.
    #[error("the operation is not allowed while the key is {}", .0.display_name())]
    InvalidState(KeyState),
    /// Deletion protection is on.
    #[error("deletion protection is enabled for the key")]
    DeletionProtection,
    /// An import token or imported material this import cannot take; the rejection says why.
    #[error("{0}")]
    ImportRejected(ImportRejection),
    /// A dry run that would have succeeded.
    #[error("the request would have succeeded, but dry_run was set")]
    DryRunOperation,
    /// A quota is used up; the text says which.
    #[error("{0}")]
    LimitExceeded(String),
    /// Too many requests from this principal.
    #[error("the request rate is over the limit")]
    Throttling,
    /// A plane or the HSM cannot be reached; the text is safe to show.
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// Anything unexpected; the detail is logged, callers see a generic message.
    #[error("internal error")]
    Internal(String),
}

/// Longest message shown to a caller, in bytes.
pub const MAX_PUBLIC_MESSAGE_BYTES: usize = 1024;

/// `text` cut to at most `max` bytes (on character boundaries): its first half and its last
/// quarter, with how many bytes were left out between them.
fn bounded(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let floor = |mut at: usize| {
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        at
    };
    let ceil = |mut at: usize| {
        while !text.is_char_boundary(at) {
            at += 1;
        }
        at
    };
    let head = floor(max / 2);
    let tail = ceil(text.len() - max / 4);
    format!(
        "{} …[{} bytes left out]… {}",
        &text[..head],
        tail - head,
        &text[tail..]
    )
}

/// What a second default key is told: the one there is, and the two ways on.
fn default_key_exists(existing: Option<&str>) -> String {
    const MORE: &str = "for more keys, create them in a KMS instance (CreateKey with \
                        kms_instance_id; ListKmsInstances lists the instances the account may \
                        use)";
    match existing {
        Some(key) => format!(
            "the account already has its default key, {key}: use it by that key id or alias \
             (DescribeKey shows it); {MORE}"
        ),
        None => format!(
            "the account already has its default key (ListKeys with default_keys_only finds \
             it): use it; {MORE}"
        ),
    }
}

/// Every reason code a [`DomainError`] can carry on the wire, sorted: the domain's half of
/// the status table of `docs/API.md` (the edge adds `kms_runtime::status::EDGE_REASON_CODES`).
/// `InvalidParameter.<Field>` is listed for every field a request can be refused for;
/// `tests/tests/api_reference.rs` finds those fields in the sources and checks this list and
/// the document against them.
pub const REASON_CODES: &[&str] = &[
    "DryRunOperationError",
    "Forbidden.AccessKeyDisabled",
    "Forbidden.AccessKeyNotFound",
    "Forbidden.AliasExists",
    "Forbidden.AliasNotFound",
    "Forbidden.DefaultKeyExists",
    "Forbidden.DeletionProtection",
    "Forbidden.InstanceNotFound",
    "Forbidden.KeyNotFound",
    "Forbidden.KeyVersionNotFound",
    "Forbidden.NoIdentity",
    "Forbidden.NoPermission",
    "InternalFailure",
    "InvalidCiphertext",
    "InvalidParameter.AccessKeyId",
    "InvalidParameter.AccessManagementQuota",
    "InvalidParameter.AccountId",
    "InvalidParameter.Algorithm",
    "InvalidParameter.AliasName",
    "InvalidParameter.Checkpoint",
    "InvalidParameter.Checks",
    "InvalidParameter.CiphertextBlob",
    "InvalidParameter.DeletionProtectionDescription",
    "InvalidParameter.Description",
    "InvalidParameter.Digest",
    "InvalidParameter.EnableAutomaticRotation",
    "InvalidParameter.EncryptedKeyMaterial",
    "InvalidParameter.EncryptionContext",
    "InvalidParameter.ExcludeCharacters",
    "InvalidParameter.Head",
    "InvalidParameter.ImportToken",
    "InvalidParameter.ImportTokenKeyMismatch",
    "InvalidParameter.InstanceType",
    "InvalidParameter.KeyId",
    "InvalidParameter.KeyIds",
    "InvalidParameter.KeyMaterial",
    "InvalidParameter.KeyMaterialExpireTime",
    "InvalidParameter.KeyMaterialMismatch",
    "InvalidParameter.KeyQuota",
    "InvalidParameter.KeySpec",
    "InvalidParameter.KeyState",
    "InvalidParameter.KeyUsage",
    "InvalidParameter.KeyVersionId",
    "InvalidParameter.KmsInstanceId",
    "InvalidParameter.Length",
    "InvalidParameter.Log",
    "InvalidParameter.Mac",
    "InvalidParameter.NumberOfBytes",
    "InvalidParameter.Operation",
    "InvalidParameter.Origin",
    "InvalidParameter.OwnerAccountId",
    "InvalidParameter.PageSize",
    "InvalidParameter.PageToken",
    "InvalidParameter.PasswordLength",
    "InvalidParameter.PendingWindowInDays",
    "InvalidParameter.Plaintext",
    "InvalidParameter.Plane",
    "InvalidParameter.Policy",
    "InvalidParameter.Principal",
    "InvalidParameter.ProtectionLevel",
    "InvalidParameter.PublicKey",
    "InvalidParameter.RotationInterval",
    "InvalidParameter.RotationStatus",
    "InvalidParameter.TagKey",
    "InvalidParameter.TagKeys",
    "InvalidParameter.TagValue",
    "InvalidParameter.Tags",
    "InvalidParameter.Time",
    "InvalidParameter.Value",
    "InvalidParameter.WrappedPrivateKey",
    "InvalidParameter.WrappingAlgorithm",
    "InvalidParameter.WrappingKeySpec",
    "Rejected.Disabled",
    "Rejected.Enabled",
    "Rejected.ExpiredImportToken",
    "Rejected.LimitExceeded",
    "Rejected.PendingDeletion",
    "Rejected.PendingImport",
    "Rejected.Throttling",
    "Rejected.UsedImportToken",
    "Unavailable",
];

impl DomainError {
    /// Shorthand for an [`DomainError::InvalidParameter`].
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidParameter {
            field,
            reason: reason.into(),
        }
    }

    /// The stable reason code, e.g. `Forbidden.KeyNotFound`.
    pub fn reason_code(&self) -> String {
        match self {
            Self::InvalidParameter { field, .. } => format!("InvalidParameter.{field}"),
            Self::InvalidCiphertext => "InvalidCiphertext".into(),
            Self::KeyNotFound => "Forbidden.KeyNotFound".into(),
            Self::KeyVersionNotFound => "Forbidden.KeyVersionNotFound".into(),
            Self::AliasNotFound => "Forbidden.AliasNotFound".into(),
            Self::InstanceNotFound => "Forbidden.InstanceNotFound".into(),
            Self::AliasExists => "Forbidden.AliasExists".into(),
            Self::AccessKeyNotFound => "Forbidden.AccessKeyNotFound".into(),
            Self::AccessKeyDisabled => "Forbidden.AccessKeyDisabled".into(),
            Self::DefaultKeyExists(_) => "Forbidden.DefaultKeyExists".into(),
            Self::NoPermission | Self::NotAllowed { .. } => "Forbidden.NoPermission".into(),
            Self::InBatch { error, .. } => error.reason_code(),
            Self::NoIdentity | Self::Unidentified(_) => "Forbidden.NoIdentity".into(),
            Self::InvalidState(state) => format!("Rejected.{}", state.display_name()),
            Self::DeletionProtection => "Forbidden.DeletionProtection".into(),
            Self::ImportRejected(r) => r.reason_code().into(),
            Self::DryRunOperation => "DryRunOperationError".into(),
            Self::LimitExceeded(_) => "Rejected.LimitExceeded".into(),
            Self::Throttling => "Rejected.Throttling".into(),
            Self::Unavailable(_) => "Unavailable".into(),
            Self::Internal(_) => "InternalFailure".into(),
        }
    }

    /// The message safe to show a caller: internal details are withheld, and a message longer
    /// than [`MAX_PUBLIC_MESSAGE_BYTES`] (one that quotes a huge value the caller sent) keeps
    /// its start and its end, which says what to do, around a note of how much was left out.
    /// A status carries its message twice (in `grpc-message` and its details), and HTTP/2
    /// peers refuse header blocks over 16 KiB by default, so an unbounded echo of what a caller
    /// sent would break its connection, and every call on it, instead of answering.
    pub fn public_message(&self) -> String {
        bounded(self.to_string(), MAX_PUBLIC_MESSAGE_BYTES)
    }

    /// A policy refusal naming `target` (e.g. `the destination key`) instead of `this key`;
    /// any other error as it is.
    pub fn on(self, target: impl Into<String>) -> Self {
        match self {
            Self::NotAllowed {
                principal, action, ..
            } => Self::NotAllowed {
                principal,
                action,
                target: target.into(),
            },
            other => other,
        }
    }

    /// This error as the failure of the key at `position` (from 1) of the `count` a batch
    /// request named, `key` as the request named it.
    pub fn in_batch(self, key: impl Into<String>, position: usize, count: usize) -> Self {
        Self::InBatch {
            key: key.into(),
            position,
            count,
            error: Box::new(self),
        }
    }
}

impl DomainError {
    /// One error of every kind whose reason names no request field: every variant but
    /// `InvalidParameter`, every key state, every import rejection. For the checks that must
    /// see every reason the service can give (the reason list, the API reference).
    pub fn examples() -> Vec<DomainError> {
        let mut out = vec![
            DomainError::InvalidCiphertext,
            DomainError::KeyNotFound,
            DomainError::KeyVersionNotFound,
            DomainError::AliasNotFound,
            DomainError::InstanceNotFound,
            DomainError::AliasExists,
            DomainError::AccessKeyNotFound,
            DomainError::AccessKeyDisabled,
            DomainError::DefaultKeyExists(None),
            DomainError::NoPermission,
            DomainError::NotAllowed {
                principal: "acs:ram::7:user/bob".into(),
                action: "kms:Encrypt".into(),
                target: "this key".into(),
            },
            DomainError::KeyNotFound.in_batch("alias/a", 1, 2),
            DomainError::NoIdentity,
            DomainError::Unidentified("no header".into()),
            DomainError::DeletionProtection,
            DomainError::DryRunOperation,
            DomainError::LimitExceeded("quota".into()),
            DomainError::Throttling,
            DomainError::Unavailable("the HSM".into()),
            DomainError::Internal("detail".into()),
        ];
        out.extend(KeyState::ALL.iter().map(|s| DomainError::InvalidState(*s)));
        out.extend(
            [
                ImportRejection::ExpiredToken,
                ImportRejection::UsedToken,
                ImportRejection::TokenForAnotherKey,
                ImportRejection::DifferentMaterial,
            ]
            .map(DomainError::ImportRejected),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new variant (or import rejection) does not compile here until
    /// [`DomainError::examples`] has it.
    fn taught(e: &DomainError) -> bool {
        match e {
            DomainError::InvalidParameter { .. } => false,
            DomainError::InvalidCiphertext
            | DomainError::KeyNotFound
            | DomainError::KeyVersionNotFound
            | DomainError::AliasNotFound
            | DomainError::InstanceNotFound
            | DomainError::AliasExists
            | DomainError::AccessKeyNotFound
            | DomainError::AccessKeyDisabled
            | DomainError::DefaultKeyExists(_)
            | DomainError::NoPermission
            | DomainError::NotAllowed { .. }
            | DomainError::InBatch { .. }
            | DomainError::NoIdentity
            | DomainError::Unidentified(_)
            | DomainError::InvalidState(_)
            | DomainError::DeletionProtection
            | DomainError::ImportRejected(
                ImportRejection::ExpiredToken
                | ImportRejection::UsedToken
                | ImportRejection::TokenForAnotherKey
                | ImportRejection::DifferentMaterial,
            )
            | DomainError::DryRunOperation
            | DomainError::LimitExceeded(_)
            | DomainError::Throttling
            | DomainError::Unavailable(_)
            | DomainError::Internal(_) => true,
        }
    }

    #[test]
    fn the_reason_list_is_sorted_and_has_no_duplicate() {
        assert!(
            REASON_CODES.windows(2).all(|w| w[0] < w[1]),
            "REASON_CODES must be sorted, each once"
        );
    }

    #[test]
    fn every_kind_of_error_has_its_reason_in_the_list() {
        for e in DomainError::examples() {
            assert!(taught(&e), "{e:?}");
            let reason = e.reason_code();
            assert!(
                REASON_CODES.contains(&reason.as_str()),
                "{reason} ({e:?}) is missing from REASON_CODES"
            );
        }
    }

    #[test]
    fn every_listed_reason_is_made_by_an_error() {
        let made: Vec<String> = DomainError::examples()
            .iter()
            .map(DomainError::reason_code)
            .collect();
        for reason in REASON_CODES {
            if let Some(field) = reason.strip_prefix("InvalidParameter.")
                && !made.iter().any(|m| m == reason)
            {
                assert!(
                    !field.is_empty() && field.chars().all(|c| c.is_ascii_alphanumeric()),
                    "{reason}"
                );
                assert!(
                    field.starts_with(|c: char| c.is_ascii_uppercase()),
                    "{reason}"
                );
                assert_eq!(DomainError::invalid(field, "x").reason_code(), *reason);
            } else {
                assert!(
                    made.iter().any(|m| m == reason),
                    "{reason} is listed but no error carries it"
                );
            }
        }
    }

    #[test]
    fn public_messages_are_bounded_and_keep_their_ends() {
        let short = DomainError::invalid("KeyId", "\"k\" is not a key id");
        assert_eq!(short.public_message(), short.to_string());
        for filler in ["a", "é", "🔑", "\u{1}"] {
            let huge = filler.repeat(20_000);
            let err = DomainError::invalid("KeyId", format!("{huge:?} is not a key id; do this"));
            let shown = err.public_message();
            assert!(
                shown.len() <= MAX_PUBLIC_MESSAGE_BYTES + 64,
                "{} bytes",
                shown.len()
            );
            assert!(shown.starts_with("\""), "{shown}");
            assert!(shown.ends_with("is not a key id; do this"), "{shown}");
            assert!(shown.contains("bytes left out"), "{shown}");
        }
        assert_eq!(
            DomainError::Internal("secret detail".into()).public_message(),
            "internal error"
        );
    }
}
