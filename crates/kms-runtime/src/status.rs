//! The one mapping from domain errors to gRPC statuses, shared by both planes.
//!
//! The reason code goes at the start of the message and into a `google.rpc.ErrorInfo` detail.
//! Internal errors answer with a generic message; their detail goes to the log only.

use kms_types::{DomainError, ImportRejection};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The domain an `ErrorInfo` names.
pub const ERROR_DOMAIN: &str = "kms";

/// Converts a domain error into the status the API contract names for it.
pub fn to_status(err: DomainError) -> Status {
    let code = code_of(&err);
    let reason = err.reason_code();
    let message = format!("{reason}: {}", err.public_message());
    let details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, []);
    Status::with_error_details(code, message, details)
}

/// The gRPC code of a domain error.
fn code_of(err: &DomainError) -> Code {
    match err {
        DomainError::InvalidParameter { .. } | DomainError::InvalidCiphertext => {
            Code::InvalidArgument
        }
        DomainError::KeyNotFound
        | DomainError::KeyVersionNotFound
        | DomainError::AliasNotFound
        | DomainError::InstanceNotFound
        | DomainError::AccessKeyNotFound => Code::NotFound,
        DomainError::AliasExists | DomainError::DefaultKeyExists(_) => Code::AlreadyExists,
        DomainError::NoPermission | DomainError::NotAllowed { .. } => Code::PermissionDenied,
        DomainError::InBatch { error, .. } => code_of(error),
        DomainError::NoIdentity | DomainError::Unidentified(_) => Code::Unauthenticated,
        DomainError::InvalidState(_)
        | DomainError::AccessKeyDisabled
        | DomainError::DeletionProtection
        | DomainError::DryRunOperation => Code::FailedPrecondition,
        DomainError::ImportRejected(rejection) => match rejection {
            ImportRejection::ExpiredToken | ImportRejection::UsedToken => Code::FailedPrecondition,
            ImportRejection::TokenForAnotherKey | ImportRejection::DifferentMaterial => {
                Code::InvalidArgument
            }
        },
        DomainError::LimitExceeded(_) | DomainError::Throttling => Code::ResourceExhausted,
        DomainError::Unavailable(_) => Code::Unavailable,
        DomainError::Internal(detail) => {
            tracing::error!(detail = %detail, "internal error");
            Code::Internal
        }
    }
}

/// Every reason code the edge answers with through [`edge_status`], besides those of domain
/// errors (`kms_types::error::REASON_CODES`); `tests/tests/api_reference.rs` checks it against
/// every `edge_status` call.
pub const EDGE_REASON_CODES: &[&str] = &[
    "InvalidParameter.Request",
    "Rejected.DeadlineExceeded",
    "Rejected.RequestBodyTimeout",
    "Rejected.RequestTooLarge",
];

/// A status the edge makes itself, for conditions that are not domain errors (a deadline, a
/// request body that does not arrive), with its reason code in front of the message and in an
/// `ErrorInfo` detail, as [`to_status`] does.
pub fn edge_status(code: Code, reason: &str, message: &str) -> Status {
    let details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, []);
    Status::with_error_details(code, format!("{reason}: {message}"), details)
}

/// The reason code of a request the server could not read as its method's request message.
pub const MALFORMED_REQUEST: &str = "InvalidParameter.Request";

/// What a caller is told when the gRPC framework refused its request before any handler ran.
/// Every handler answers through [`to_status`], which always names a reason; an `INTERNAL`
/// status without one is the framework's own refusal of a request body it could not read (a
/// message that does not decode as the method's request message, a body without a message or
/// cut in the middle of one, an unknown compression flag). That is the caller's doing, so it is
/// `INVALID_ARGUMENT` [`MALFORMED_REQUEST`], with the framework's explanation. `None` for any
/// other status.
pub fn framework_refusal(status: &Status) -> Option<Status> {
    if status.code() != Code::Internal || reason_of(status).is_some() {
        return None;
    }
    Some(edge_status(
        Code::InvalidArgument,
        "InvalidParameter.Request",
        &format!(
            "the request is not a valid protobuf encoding of the method's request message ({})",
            status.message()
        ),
    ))
}

/// The reason code a status carries, if it came from [`to_status`] or [`edge_status`].
pub fn reason_of(status: &Status) -> Option<String> {
    status.get_details_error_info().map(|info| info.reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kms_types::KeyState;

    #[test]
    fn codes_and_reasons() {
        let cases = [
            (
                DomainError::invalid("AliasName", "bad"),
                Code::InvalidArgument,
                "InvalidParameter.AliasName",
            ),
            (
                DomainError::InvalidCiphertext,
                Code::InvalidArgument,
                "InvalidCiphertext",
            ),
            (
                DomainError::KeyNotFound,
                Code::NotFound,
                "Forbidden.KeyNotFound",
            ),
            (
                DomainError::DefaultKeyExists(None),
                Code::AlreadyExists,
                "Forbidden.DefaultKeyExists",
            ),
            (
                DomainError::NoPermission,
                Code::PermissionDenied,
                "Forbidden.NoPermission",
            ),
            (
                DomainError::NoIdentity,
                Code::Unauthenticated,
                "Forbidden.NoIdentity",
            ),
            (
                DomainError::NotAllowed {
                    principal: "acs:ram::42:user/bob".into(),
                    action: "kms:Encrypt".into(),
                    target: "this key".into(),
                },
                Code::PermissionDenied,
                "Forbidden.NoPermission",
            ),
            (
                DomainError::KeyNotFound.in_batch("alias/b", 2, 3),
                Code::NotFound,
                "Forbidden.KeyNotFound",
            ),
            (
                DomainError::InvalidState(KeyState::PendingDeletion).in_batch("key-1", 1, 2),
                Code::FailedPrecondition,
                "Rejected.PendingDeletion",
            ),
            (
                DomainError::Unidentified("the header is not a principal".into()),
                Code::Unauthenticated,
                "Forbidden.NoIdentity",
            ),
            (
                DomainError::InvalidState(KeyState::Disabled),
                Code::FailedPrecondition,
                "Rejected.Disabled",
            ),
            (
                DomainError::DryRunOperation,
                Code::FailedPrecondition,
                "DryRunOperationError",
            ),
            (
                DomainError::ImportRejected(ImportRejection::ExpiredToken),
                Code::FailedPrecondition,
                "Rejected.ExpiredImportToken",
            ),
            (
                DomainError::ImportRejected(ImportRejection::UsedToken),
                Code::FailedPrecondition,
                "Rejected.UsedImportToken",
            ),
            (
                DomainError::ImportRejected(ImportRejection::TokenForAnotherKey),
                Code::InvalidArgument,
                "InvalidParameter.ImportTokenKeyMismatch",
            ),
            (
                DomainError::ImportRejected(ImportRejection::DifferentMaterial),
                Code::InvalidArgument,
                "InvalidParameter.KeyMaterialMismatch",
            ),
            (
                DomainError::Throttling,
                Code::ResourceExhausted,
                "Rejected.Throttling",
            ),
            (
                DomainError::Unavailable("x".into()),
                Code::Unavailable,
                "Unavailable",
            ),
        ];
        for (err, code, reason) in cases {
            let st = to_status(err);
            assert_eq!(st.code(), code, "{reason}");
            assert_eq!(reason_of(&st).as_deref(), Some(reason));
            assert!(st.message().starts_with(reason), "{}", st.message());
        }
    }

    #[test]
    fn edge_statuses_carry_listed_reasons() {
        let statuses = [
            crate::limits::request_too_large_status(70_000, 65_536),
            crate::connections::body_timeout_status(std::time::Duration::from_secs(10)),
        ];
        for st in statuses {
            let reason = reason_of(&st).unwrap_or_default();
            assert!(EDGE_REASON_CODES.contains(&reason.as_str()), "{reason}");
            assert!(!kms_types::error::REASON_CODES.contains(&reason.as_str()));
        }
    }

    #[test]
    fn framework_refusals_are_the_callers() {
        let refused = framework_refusal(&Status::internal(
            "failed to decode Protobuf message: invalid tag value: 0",
        ))
        .unwrap_or_else(|| panic!("a bare INTERNAL is the framework's"));
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert_eq!(reason_of(&refused).as_deref(), Some(MALFORMED_REQUEST));
        assert!(
            refused.message().starts_with(MALFORMED_REQUEST)
                && refused.message().contains("invalid tag value: 0"),
            "{}",
            refused.message()
        );
        // A handler's answers all carry a reason, its internal errors included.
        assert!(framework_refusal(&to_status(DomainError::Internal("x".into()))).is_none());
        assert!(framework_refusal(&to_status(DomainError::KeyNotFound)).is_none());
        assert!(framework_refusal(&Status::unimplemented("")).is_none());
    }

    #[test]
    fn internal_detail_is_withheld() {
        let st = to_status(DomainError::Internal(
            "pkcs11 said CKR_PIN_INCORRECT for 1234".into(),
        ));
        assert_eq!(st.code(), Code::Internal);
        assert!(!st.message().contains("1234"), "{}", st.message());
    }
}
