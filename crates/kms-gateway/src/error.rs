//! Errors as the reference API answers them: a JSON body `{Code, Message, RequestId, HostId,
//! Recommend}` with the reference's code and HTTP status, never 200. The planes' gRPC statuses
//! are mapped here, once, by their reason code (the `ErrorInfo` detail), never by message text.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tonic_types::StatusExt;

/// The reason code of a plane's status (its `ErrorInfo` detail); empty without one.
pub fn reason(status: &tonic::Status) -> String {
    status
        .get_details_error_info()
        .map(|info| info.reason)
        .unwrap_or_default()
}

/// An answer that is not a success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status, 4xx or 5xx.
    pub status: StatusCode,
    /// The reference's error code, e.g. `Forbidden.KeyNotFound`.
    pub code: String,
    /// For the caller; never a secret.
    pub message: String,
    /// Seconds to wait, for `Rejected.Throttling` (`x-acs-retry-after`).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with `code` and `message` at `status`.
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.to_string(),
            message: message.into(),
            retry_after: None,
        }
    }

    /// `InvalidParameter` (400) naming what is wrong.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "InvalidParameter", message)
    }

    /// `MissingParameter` (400) naming the parameter.
    pub fn missing(name: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "MissingParameter",
            format!(
                "The input parameter \"{name}\" that is mandatory for processing this request is not supplied."
            ),
        )
    }

    /// A signature that does not match: the message ends with the string the gateway signed,
    /// which the older SDK compares with its own to tell a wrong secret from a wrong request.
    pub fn signature_mismatch(string_to_sign: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "SignatureDoesNotMatch",
            format!(
                "Specified signature is not matched with our calculation. server string to sign \
                 is:{string_to_sign}"
            ),
        )
    }

    /// The answer to an internal failure; the detail is logged, not shown.
    pub fn internal(detail: &str) -> Self {
        tracing::error!(detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalFailure",
            "The request processing has failed due to some unknown error.",
        )
    }

    /// A plane's refusal or failure, by its reason code.
    pub fn from_status(status: &tonic::Status) -> Self {
        let reason = reason(status);
        // The planes put the reason in front of the message: show the rest.
        let message = status
            .message()
            .strip_prefix(&format!("{reason}: "))
            .unwrap_or(status.message())
            .to_string();
        let code = status.code();
        if reason.starts_with("InvalidParameter.") {
            return Self::invalid(format!("{message} ({reason})"));
        }
        match reason.as_str() {
            "Rejected.Throttling" => {
                let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, &reason, message);
                e.retry_after = Some(1);
                return e;
            }
            "Unavailable" => {
                return Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    message,
                );
            }
            "InternalFailure" => return Self::internal(&message),
            _ => {}
        }
        let http = match code {
            tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => {
                StatusCode::BAD_REQUEST
            }
            tonic::Code::NotFound => StatusCode::NOT_FOUND,
            tonic::Code::AlreadyExists => StatusCode::CONFLICT,
            tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => StatusCode::FORBIDDEN,
            tonic::Code::ResourceExhausted => StatusCode::BAD_REQUEST,
            tonic::Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown => {
                return Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    "The request has failed due to a temporary failure of the server.",
                );
            }
            _ => return Self::internal(&format!("{code:?}: {}", status.message())),
        };
        if reason.is_empty() {
            return Self::internal(&format!("a status without a reason: {code:?}: {message}"));
        }
        Self::new(http, &reason, message)
    }

    /// The JSON body and headers, under `request_id`.
    pub fn into_response_with(self, request_id: &str, host: &str) -> Response {
        let recommend = format!(
            "https://api.aliyun.com/troubleshoot?q={}&product=Kms",
            self.code
        );
        let body = json!({
            "Code": self.code,
            "Message": self.message,
            "RequestId": request_id,
            "HostId": host,
            "Recommend": recommend,
        });
        let mut response = (self.status, crate::api::json_body(&body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert("x-acs-retry-after", HeaderValue::from(seconds));
        }
        if let Ok(v) = HeaderValue::from_str(request_id) {
            response.headers_mut().insert("x-acs-request-id", v);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use kms_types::DomainError;

    #[test]
    fn plane_reasons_become_the_references_codes() {
        for (e, status, code) in [
            (DomainError::KeyNotFound, 404, "Forbidden.KeyNotFound"),
            (DomainError::AliasNotFound, 404, "Forbidden.AliasNotFound"),
            (DomainError::NoPermission, 403, "Forbidden.NoPermission"),
            (
                DomainError::invalid("KeyId", "bad"),
                400,
                "InvalidParameter",
            ),
            (DomainError::Throttling, 429, "Rejected.Throttling"),
            (DomainError::AliasExists, 409, "Forbidden.AliasExists"),
            (DomainError::InvalidCiphertext, 400, "InvalidCiphertext"),
            (
                DomainError::InvalidState(kms_types::KeyState::Disabled),
                400,
                "Rejected.Disabled",
            ),
            (
                DomainError::Unavailable("x".into()),
                503,
                "ServiceUnavailable",
            ),
            (DomainError::Internal("x".into()), 500, "InternalFailure"),
        ] {
            let api = ApiError::from_status(&kms_runtime::to_status(e.clone()));
            assert_eq!(api.status.as_u16(), status, "{e:?}");
            assert_eq!(api.code, code, "{e:?}");
            assert!(!api.message.starts_with(code), "{e:?}: {}", api.message);
        }
        let throttled = ApiError::from_status(&kms_runtime::to_status(DomainError::Throttling));
        let response = throttled.into_response_with("r", "h");
        assert_eq!(response.headers()["x-acs-retry-after"], "1");
    }
}
