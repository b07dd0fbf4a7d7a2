//! The contract every crypto backend meets: secrets, errors, capabilities and the traits.
//!
//! Two traits split the work. [`RootWrapper`] is the HSM's job: it seals and opens key
//! material under the root key, which never leaves the HSM. [`Backend`] computes with key
//! material: the software backend in process, the PKCS#11 backend inside the HSM. Policy and
//! state checks happen in the domain before any call here, so both follow the same rules.

mod secret;

pub mod conformance;

pub use secret::SecretBytes;

use kms_types::KeySpec;

/// Why a backend call failed. Each backend converts its library's errors into this once.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The backend does not offer this operation or key spec.
    #[error("operation not supported by this backend: {0}")]
    NotSupported(&'static str),
    /// The caller's input does not fit the operation (wrong length, bad encoding).
    #[error("invalid input: {0}")]
    InvalidInput(&'static str),
    /// Authenticated decryption failed: wrong key, wrong context or tampered data.
    #[error("authentication of the ciphertext failed")]
    AuthenticationFailed,
    /// The device cannot be reached or refuses service; retrying may help.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// Anything else; the detail is for logs, never for callers.
    #[error("backend failure: {0}")]
    Internal(String),
}

/// What a backend can do; callers consult it instead of matching on vendor names.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// Key specs the backend can generate and use.
    pub key_specs: Vec<KeySpec>,
    /// Whether it computes AES-GCM with its keys.
    pub aead: bool,
    /// Whether it generates random bytes.
    pub random: bool,
}

/// Freshly generated key material: the secret for the caller to wrap, plus the public half.
#[derive(Debug)]
pub struct GeneratedKey {
    /// The key material (raw AES key, or PKCS#8 DER for asymmetric keys).
    pub material: SecretBytes,
    /// SubjectPublicKeyInfo DER of the public key; empty for symmetric keys.
    pub public_key_der: Vec<u8>,
}

/// Seals key material under the HSM root key and opens it again.
///
/// `context` is bound to the sealed material as associated data (the key version id), so
/// material sealed for one version cannot be passed off as another's.
pub trait RootWrapper: Send + Sync {
    /// Seals `secret` under the root key.
    fn wrap_secret(&self, context: &[u8], secret: &SecretBytes) -> Result<Vec<u8>, BackendError>;
    /// Opens what [`RootWrapper::wrap_secret`] sealed with the same `context`.
    fn unwrap_secret(&self, context: &[u8], wrapped: &[u8]) -> Result<SecretBytes, BackendError>;
}

/// AES-GCM nonce length in bytes, as the ciphertext blob stores it.
pub const GCM_IV_LEN: usize = 12;
/// AES-GCM tag length in bytes.
pub const GCM_TAG_LEN: usize = 16;

/// A backend that computes with key material. Every method not overridden answers
/// [`BackendError::NotSupported`]; [`Backend::capabilities`] says which ones work.
pub trait Backend: Send + Sync {
    /// A short name for logs.
    fn name(&self) -> &'static str;

    /// What this backend offers.
    fn capabilities(&self) -> Capabilities;

    /// Generates new key material of `spec`.
    fn generate(&self, spec: KeySpec) -> Result<GeneratedKey, BackendError> {
        let _ = spec;
        Err(BackendError::NotSupported("generate"))
    }

    /// AES-GCM encryption; returns ciphertext followed by the 16-byte tag.
    fn aead_seal(
        &self,
        key: &SecretBytes,
        iv: &[u8; GCM_IV_LEN],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, BackendError> {
        let _ = (key, iv, aad, plaintext);
        Err(BackendError::NotSupported("aead_seal"))
    }

    /// AES-GCM decryption of ciphertext followed by its tag.
    fn aead_open(
        &self,
        key: &SecretBytes,
        iv: &[u8; GCM_IV_LEN],
        aad: &[u8],
        ciphertext_and_tag: &[u8],
    ) -> Result<SecretBytes, BackendError> {
        let _ = (key, iv, aad, ciphertext_and_tag);
        Err(BackendError::NotSupported("aead_open"))
    }

    /// Fills `out` with random bytes from the backend's generator.
    fn fill_random(&self, out: &mut [u8]) -> Result<(), BackendError> {
        let _ = out;
        Err(BackendError::NotSupported("fill_random"))
    }
}
