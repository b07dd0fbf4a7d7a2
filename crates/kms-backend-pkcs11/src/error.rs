//! Startup and setup errors ([`HsmError`]) and the one conversion of cryptoki errors into
//! [`BackendError`].

use std::path::PathBuf;

use cryptoki::context::Function;
use cryptoki::error::{Error as CkError, RvError};
use kms_backend::BackendError;

/// Why the HSM could not be opened or set up. None of these ever carries a PIN.
#[derive(Debug, thiserror::Error)]
pub enum HsmError {
    /// The parameters cannot work (checked before the module is touched).
    #[error("invalid hsm parameters: {0}")]
    InvalidParams(&'static str),
    /// The PKCS#11 shared library could not be loaded or does not look like one.
    #[error("cannot load pkcs#11 module {}", path.display())]
    ModuleLoad {
        /// The module path as configured.
        path: PathBuf,
        /// What the loader said.
        #[source]
        source: CkError,
    },
    /// No slot holds an initialised token with the configured label.
    #[error("no initialised token labelled {label:?}; tokens found: {found:?}")]
    TokenNotFound {
        /// The label asked for.
        label: String,
        /// Labels of the initialised tokens the module reports.
        found: Vec<String>,
    },
    /// `init_token` found no slot with an uninitialised token to use.
    #[error("no slot with an uninitialised token is available for {label:?}")]
    NoFreeSlot {
        /// The label that was to be given to the new token.
        label: String,
    },
    /// C_Login was refused (wrong PIN, locked PIN, PIN not initialised, ...).
    #[error("login to token {token:?} failed")]
    LoginFailed {
        /// The token label.
        token: String,
        /// The PKCS#11 return value (never the PIN).
        #[source]
        source: CkError,
    },
    /// The token lacks mechanisms this service needs.
    #[error("token {token:?} lacks required mechanisms: {}", missing.join(", "))]
    MissingMechanisms {
        /// The token label.
        token: String,
        /// Names of every missing mechanism, in table order.
        missing: Vec<&'static str>,
    },
    /// The object found under the root key label must not be used as the root key.
    #[error("root key {label:?} is unsafe or unusable: {reason}")]
    RootKeyUnsafe {
        /// The root key label.
        label: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Any other PKCS#11 failure during startup or setup.
    #[error("pkcs#11 failure while {during}")]
    Pkcs11 {
        /// The step that failed.
        during: &'static str,
        /// The underlying error.
        #[source]
        source: CkError,
    },
}

impl HsmError {
    /// Wraps a cryptoki error that happened during the step `during`.
    pub(crate) fn pkcs11(during: &'static str) -> impl FnOnce(CkError) -> HsmError {
        move |source| HsmError::Pkcs11 { during, source }
    }
}

/// Converts a cryptoki error into the backend contract's error. This is the only place that
/// does so; it looks at the return value and the function, never at message text.
///
/// SoftHSM2 2.6 answers a failed AES-GCM tag check in C_Decrypt with `CKR_GENERAL_ERROR`
/// (other tokens use `CKR_ENCRYPTED_DATA_INVALID`), so a `CKR_GENERAL_ERROR` from C_Decrypt
/// counts as an authentication failure: the blob was already parsed, so the ciphertext is
/// the only thing the token can have rejected.
pub(crate) fn to_backend_error(err: CkError) -> BackendError {
    match err {
        CkError::Pkcs11(rv, function) => match (rv, function) {
            (
                RvError::EncryptedDataInvalid
                | RvError::EncryptedDataLenRange
                | RvError::GeneralError
                | RvError::DataInvalid
                | RvError::DataLenRange,
                Function::Decrypt,
            ) => BackendError::AuthenticationFailed,
            (RvError::DataLenRange, _) => BackendError::InvalidInput("data length out of range"),
            (RvError::DataInvalid, _) => BackendError::InvalidInput("data rejected by the hsm"),
            (
                RvError::DeviceError
                | RvError::DeviceMemory
                | RvError::DeviceRemoved
                | RvError::TokenNotPresent
                | RvError::TokenNotRecognized
                | RvError::SessionCount
                | RvError::SessionClosed
                | RvError::SessionHandleInvalid
                | RvError::UserNotLoggedIn
                | RvError::PinExpired
                | RvError::PinLocked
                | RvError::HostMemory
                | RvError::FunctionCanceled
                | RvError::CryptokiNotInitialized,
                function,
            ) => BackendError::Unavailable(format!("{function} returned {rv:?}")),
            (rv, function) => BackendError::Internal(format!("{function} returned {rv:?}")),
        },
        CkError::LibraryLoading(e) => {
            BackendError::Unavailable(format!("pkcs#11 module not loaded: {e}"))
        }
        CkError::NullFunctionPointer | CkError::MissingSymbol(_) | CkError::NotSupported => {
            BackendError::NotSupported("function missing from the pkcs#11 module")
        }
        other => BackendError::Internal(format!("cryptoki: {other}")),
    }
}

/// The outcome of C_Verify: a signature the token rejects is `Ok(false)`, not an error (and
/// keeps the session: C_Verify ends its operation either way).
pub(crate) fn verify_outcome(result: Result<(), CkError>) -> Result<bool, CkError> {
    match result {
        Ok(()) => Ok(true),
        Err(CkError::Pkcs11(RvError::SignatureInvalid | RvError::SignatureLenRange, _)) => {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Errors after which the session or the login is gone and a fresh login may help: the
/// token logged out (handles of private objects then become invalid too) or the session
/// was closed under us.
pub(crate) fn needs_relogin(err: &CkError) -> bool {
    matches!(
        err,
        CkError::Pkcs11(
            RvError::UserNotLoggedIn
                | RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::KeyHandleInvalid
                | RvError::ObjectHandleInvalid,
            _
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decrypt_rejection_is_authentication_failure() {
        for rv in [
            RvError::EncryptedDataInvalid,
            RvError::GeneralError,
            RvError::DataLenRange,
        ] {
            assert!(matches!(
                to_backend_error(CkError::Pkcs11(rv, Function::Decrypt)),
                BackendError::AuthenticationFailed
            ));
        }
        // The same code from another call is not about the ciphertext.
        assert!(matches!(
            to_backend_error(CkError::Pkcs11(RvError::GeneralError, Function::Encrypt)),
            BackendError::Internal(_)
        ));
        assert!(matches!(
            to_backend_error(CkError::Pkcs11(RvError::DeviceRemoved, Function::Encrypt)),
            BackendError::Unavailable(_)
        ));
    }

    #[test]
    fn rejected_signatures_are_false() {
        assert!(matches!(verify_outcome(Ok(())), Ok(true)));
        for rv in [RvError::SignatureInvalid, RvError::SignatureLenRange] {
            assert!(matches!(
                verify_outcome(Err(CkError::Pkcs11(rv, Function::Verify))),
                Ok(false)
            ));
        }
        assert!(
            verify_outcome(Err(CkError::Pkcs11(RvError::DeviceError, Function::Verify))).is_err()
        );
    }

    #[test]
    fn relogin_classes() {
        assert!(needs_relogin(&CkError::Pkcs11(
            RvError::UserNotLoggedIn,
            Function::EncryptInit
        )));
        assert!(needs_relogin(&CkError::Pkcs11(
            RvError::KeyHandleInvalid,
            Function::DecryptInit
        )));
        assert!(!needs_relogin(&CkError::Pkcs11(
            RvError::GeneralError,
            Function::Decrypt
        )));
    }
}
