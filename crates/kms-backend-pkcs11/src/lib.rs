//! The PKCS#11 backend: the HSM root key that seals all key material, HSM-resident keys,
//! HSM randomness, and token setup for development (SoftHSM2).
//!
//! [`Hsm::open`] loads the module, finds the token by label, logs the user in once, refuses
//! a token that lacks a mechanism in [`REQUIRED_MECHANISMS`], and finds or generates the root
//! key (AES-256, sensitive, never extractable). [`Hsm`] implements
//! [`kms_backend::RootWrapper`] (AES-GCM under the root key, for host material) and
//! [`kms_backend::Backend`] with [`kms_backend::KeyResidence::Device`]: keys generated or
//! imported inside the HSM, sealed for storage (`keys.rs` documents the format and what
//! SoftHSM2 does with session objects), loaded as non-extractable session objects behind a
//! [`kms_backend::KeyHandle`], and used for AES-GCM, signatures and RSAES-OAEP by the routes
//! in the mechanism table.
//!
//! This crate is synchronous. Every call into it blocks on the HSM: run it on blocking
//! threads (`spawn_blocking` or a dedicated pool), never on an async worker thread.
//! cryptoki errors become [`kms_backend::BackendError`] in one function, `to_backend_error`.

mod asym;
mod derive;
mod encrypt;
mod error;
mod hsm;
mod keys;
mod mechanisms;
mod module;
mod pool;
mod setup;
mod sign;
mod wrap;

use std::fmt;
use std::path::PathBuf;

use secrecy::SecretString;

pub use error::HsmError;
pub use hsm::Hsm;
pub use mechanisms::{REQUIRED_MECHANISMS, missing_mechanisms};
pub use pool::SessionStats;
pub use setup::{init_token, write_softhsm_conf};

/// Validated settings for [`Hsm::open`]. `Debug` never shows the PIN.
#[derive(Clone)]
pub struct HsmParams {
    /// Path of the PKCS#11 shared library (SoftHSM2: `/usr/lib/softhsm/libsofthsm2.so`).
    pub module_path: PathBuf,
    /// Label of the initialised token to use.
    pub token_label: String,
    /// The token's user PIN.
    pub user_pin: SecretString,
    /// Label of the root key; generated on first start if the token has none.
    pub root_key_label: String,
    /// Most PKCS#11 sessions used for operations at once (at least 1); callers beyond that
    /// wait for a session.
    pub max_sessions: usize,
}

impl fmt::Debug for HsmParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HsmParams")
            .field("module_path", &self.module_path)
            .field("token_label", &self.token_label)
            .field("user_pin", &"[redacted]")
            .field("root_key_label", &self.root_key_label)
            .field("max_sessions", &self.max_sessions)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_debug_redacts_the_pin() {
        let params = HsmParams {
            module_path: PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"),
            token_label: "kms".to_owned(),
            user_pin: SecretString::from("9876-secret-pin"),
            root_key_label: "kms-root".to_owned(),
            max_sessions: 4,
        };
        let shown = format!("{params:?}");
        assert!(!shown.contains("9876-secret-pin"));
        assert!(shown.contains("[redacted]"));
        assert!(shown.contains("kms-root"));
    }
}
