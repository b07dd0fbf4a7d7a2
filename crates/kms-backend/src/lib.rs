//! The contract every crypto backend meets: secrets, errors, capabilities and the traits.
//!
//! Two traits split the work. [`RootWrapper`] is the HSM's job: it seals and opens key
//! material under the root key, which never leaves the HSM. [`Backend`] computes with key
//! material: the software backend in process, the PKCS#11 backend inside the HSM. Policy and
//! state checks happen in the domain before any call here, so both follow the same rules.
//!
//! Keys reach a backend in one of two ways, and [`Capabilities::residence`] says which:
//!
//! - **Host material** ([`KeyResidence::Host`], the software backend):
//!   [`Backend::generate`] returns the material, the caller seals it with a [`RootWrapper`]
//!   for storage, and later opens it again and turns it into a [`KeyHandle`] with
//!   [`Backend::load`].
//! - **Device keys** ([`KeyResidence::Device`], the PKCS#11 backend):
//!   [`Backend::generate_sealed`] makes the key inside the device and returns it already
//!   sealed; [`Backend::load_sealed`] unseals it inside the device and returns a
//!   [`KeyHandle`]. The plaintext never exists in host memory. Imported material enters
//!   the device once through [`Backend::import_sealed`].
//!
//! Either way the data plane caches the [`KeyHandle`] per key version and passes it to the
//! operations: AES-GCM ([`Backend::aead_encrypt`]), signatures over a SHA-256 digest
//! ([`sign`]), RSAES-OAEP ([`asym`]) and the public key as SubjectPublicKeyInfo DER.

mod key;
mod secret;

pub mod asym;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod import;
pub mod sign;

pub use key::{
    GeneratedKey, KeyHandle, P256_EC_PARAMS, PublicKeyInfo, PublicKeyMaterial, PublicKeyRef,
    SECP256K1_EC_PARAMS, SealedKey, ec_spki_der, rsa_spki_der,
};
pub use secret::SecretBytes;

use kms_types::{Algorithm, KeySpec};

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

/// Where a backend's keys live while in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyResidence {
    /// In process memory: [`Backend::generate`] and [`Backend::load`].
    #[default]
    Host,
    /// Inside a device: [`Backend::generate_sealed`] and [`Backend::load_sealed`].
    Device,
}

/// What a backend can do; callers consult it instead of matching on vendor names.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// Key specs the backend can generate and use.
    pub key_specs: Vec<KeySpec>,
    /// Signing algorithms it computes (with keys of the specs each fits, see
    /// [`sign::sign_algorithm_fits`]); it verifies them too.
    pub sign_algorithms: Vec<Algorithm>,
    /// Asymmetric encryption algorithms it computes (see
    /// [`asym::encryption_algorithm_fits`]).
    pub encryption_algorithms: Vec<Algorithm>,
    /// Whether it computes AES-GCM with its keys.
    pub aead: bool,
    /// Whether it generates random bytes.
    pub random: bool,
    /// Where its keys live, and so which of the generate/load pairs it offers.
    pub residence: KeyResidence,
}

impl Capabilities {
    /// Whether keys of `spec` can be generated and used.
    pub fn offers(&self, spec: KeySpec) -> bool {
        self.key_specs.contains(&spec)
    }

    /// Whether keys of `spec` sign (and verify) with `algorithm`.
    pub fn can_sign(&self, spec: KeySpec, algorithm: Algorithm) -> bool {
        self.offers(spec)
            && self.sign_algorithms.contains(&algorithm)
            && sign::sign_algorithm_fits(spec, algorithm)
    }

    /// Whether keys of `spec` encrypt (and decrypt) with `algorithm`.
    pub fn can_encrypt(&self, spec: KeySpec, algorithm: Algorithm) -> bool {
        self.offers(spec)
            && self.encryption_algorithms.contains(&algorithm)
            && asym::encryption_algorithm_fits(spec, algorithm)
    }
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
///
/// Every method may block: on an HSM, or on CPU for a long time (RSA key generation takes
/// from a fraction of a second to several seconds). Call them from blocking threads
/// (`spawn_blocking` or a dedicated pool), never from an async worker.
pub trait Backend: Send + Sync {
    /// A short name for logs; also the [`KeyHandle::backend`] of its handles.
    fn name(&self) -> &'static str;

    /// What this backend offers.
    fn capabilities(&self) -> Capabilities;

    // ---- keys on the host (KeyResidence::Host) ----

    /// Generates new key material of `spec` in host memory: a raw AES key, or PKCS#8 DER
    /// for RSA and EC keys, plus the public key. The caller seals it under the root key.
    fn generate(&self, spec: KeySpec) -> Result<GeneratedKey, BackendError> {
        let _ = spec;
        Err(BackendError::NotSupported("generate"))
    }

    /// Turns host material of `spec` (as [`Backend::generate`] made it) into a handle for
    /// the operations, parsing and checking it once.
    fn load(&self, spec: KeySpec, material: &SecretBytes) -> Result<KeyHandle, BackendError> {
        let _ = (spec, material);
        Err(BackendError::NotSupported("load"))
    }

    // ---- keys inside a device (KeyResidence::Device) ----

    /// Generates a key of `spec` inside the device and returns it sealed under the root key,
    /// bound to `context` (the key version id), with its public key.
    fn generate_sealed(&self, spec: KeySpec, context: &[u8]) -> Result<SealedKey, BackendError> {
        let _ = (spec, context);
        Err(BackendError::NotSupported("generate_sealed"))
    }

    /// Brings host material of `spec` (a raw AES key, or a PKCS#8 private key) into the
    /// device and returns it sealed like [`Backend::generate_sealed`] does, for imported key
    /// material (origin External). The material exists in host memory only on the way in.
    fn import_sealed(
        &self,
        spec: KeySpec,
        context: &[u8],
        material: &SecretBytes,
    ) -> Result<SealedKey, BackendError> {
        let _ = (spec, context, material);
        Err(BackendError::NotSupported("import_sealed"))
    }

    /// Unseals what [`Backend::generate_sealed`] or [`Backend::import_sealed`] returned (same `spec` and `context`) into the
    /// device and returns a handle to it. A sealed key that does not open (tampered, other
    /// context, other root key) is [`BackendError::AuthenticationFailed`].
    fn load_sealed(
        &self,
        spec: KeySpec,
        context: &[u8],
        sealed: &[u8],
    ) -> Result<KeyHandle, BackendError> {
        let _ = (spec, context, sealed);
        Err(BackendError::NotSupported("load_sealed"))
    }

    /// Lets go of a handle. Device objects behind it are released at once if this was the
    /// last clone, or when the last clone drops otherwise.
    fn unload(&self, key: KeyHandle) -> Result<(), BackendError> {
        drop(key);
        Ok(())
    }

    /// The key's public key as DER SubjectPublicKeyInfo (asymmetric keys only).
    fn public_key(&self, key: &KeyHandle) -> Result<Vec<u8>, BackendError> {
        let _ = key;
        Err(BackendError::NotSupported("public_key"))
    }

    // ---- AES-GCM ----

    /// AES-GCM encryption with raw host material; returns ciphertext followed by the 16-byte
    /// tag. Equivalent to [`Backend::aead_encrypt`] with the material's handle.
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

    /// AES-GCM decryption of ciphertext followed by its tag, with raw host material.
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

    /// AES-GCM encryption with an AES key handle; returns ciphertext followed by the 16-byte
    /// tag. The caller supplies a fresh IV for every call.
    fn aead_encrypt(
        &self,
        key: &KeyHandle,
        iv: &[u8; GCM_IV_LEN],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, BackendError> {
        let _ = (key, iv, aad, plaintext);
        Err(BackendError::NotSupported("aead_encrypt"))
    }

    /// AES-GCM decryption with an AES key handle; a failed check is
    /// [`BackendError::AuthenticationFailed`].
    fn aead_decrypt(
        &self,
        key: &KeyHandle,
        iv: &[u8; GCM_IV_LEN],
        aad: &[u8],
        ciphertext_and_tag: &[u8],
    ) -> Result<SecretBytes, BackendError> {
        let _ = (key, iv, aad, ciphertext_and_tag);
        Err(BackendError::NotSupported("aead_decrypt"))
    }

    // ---- signatures (see the `sign` module) ----

    /// Signs a SHA-256 `digest` (32 bytes) with `algorithm`: `RSA_PSS_SHA_256` (MGF1-SHA-256,
    /// salt 32), `RSA_PKCS1_SHA_256`, or `ECDSA_SHA_256` (DER, low-S).
    fn sign(
        &self,
        key: &KeyHandle,
        algorithm: Algorithm,
        digest: &[u8],
    ) -> Result<Vec<u8>, BackendError> {
        let _ = (key, algorithm, digest);
        Err(BackendError::NotSupported("sign"))
    }

    /// Checks `signature` over a SHA-256 `digest`. `Ok(false)` for any signature that does
    /// not verify, malformed ones included; errors only for an unusable key or request.
    /// ECDSA accepts high-S signatures (they are valid; see [`sign::ecdsa_raw_low_s`]).
    fn verify(
        &self,
        key: PublicKeyRef<'_>,
        algorithm: Algorithm,
        digest: &[u8],
        signature: &[u8],
    ) -> Result<bool, BackendError> {
        let _ = (key, algorithm, digest, signature);
        Err(BackendError::NotSupported("verify"))
    }

    // ---- asymmetric encryption (see the `asym` module) ----

    /// RSAES-OAEP encryption with the public key (`RSAES_OAEP_SHA_256` or `_SHA_1`, MGF1
    /// with the same hash, empty label). Too long a plaintext is
    /// [`BackendError::InvalidInput`].
    fn asym_encrypt(
        &self,
        key: PublicKeyRef<'_>,
        algorithm: Algorithm,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, BackendError> {
        let _ = (key, algorithm, plaintext);
        Err(BackendError::NotSupported("asym_encrypt"))
    }

    /// RSAES-OAEP decryption with the private key. Any ciphertext that does not decrypt is
    /// [`BackendError::AuthenticationFailed`], with no detail (no padding oracle).
    fn asym_decrypt(
        &self,
        key: &KeyHandle,
        algorithm: Algorithm,
        ciphertext: &[u8],
    ) -> Result<SecretBytes, BackendError> {
        let _ = (key, algorithm, ciphertext);
        Err(BackendError::NotSupported("asym_decrypt"))
    }

    /// Fills `out` with random bytes from the backend's generator.
    fn fill_random(&self, out: &mut [u8]) -> Result<(), BackendError> {
        let _ = out;
        Err(BackendError::NotSupported("fill_random"))
    }
}
