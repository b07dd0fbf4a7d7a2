//! The key vault: makes, seals and loads key material by joining the HSM (root key, and the
//! keys of hardware instances) with the software backend (everything software-protected), and
//! runs operations on the backend that owns each key. Every method blocks; call them from
//! blocking threads only.

use std::sync::Arc;

use kms_backend::{
    Backend, BackendError, GCM_IV_LEN, KeyHandle, PublicKeyRef, RootWrapper, SecretBytes,
};
use kms_backend_pkcs11::Hsm;
use kms_backend_soft::SoftBackend;
use kms_types::{AccessKeyId, Algorithm, DomainError, KeySpec, KeyVersionId, ProtectionLevel};

use crate::metrics::hsm_call;

/// The HSM and the software backend, composed.
#[derive(Debug)]
pub struct KeyVault {
    pub(crate) hsm: Arc<Hsm>,
    pub(crate) soft: SoftBackend,
}

/// Maps a backend failure to the domain. Only the HSM's unreachability is worth telling.
pub fn backend_error(e: BackendError) -> DomainError {
    match e {
        BackendError::NotSupported(what) => {
            DomainError::invalid("KeySpec", format!("not supported: {what}"))
        }
        BackendError::InvalidInput(what) => {
            DomainError::Internal(format!("backend refused input: {what}"))
        }
        BackendError::AuthenticationFailed => DomainError::InvalidCiphertext,
        BackendError::Unavailable(detail) => {
            tracing::error!(detail = %detail, "backend unavailable");
            DomainError::Unavailable("the HSM cannot be reached".into())
        }
        BackendError::Internal(detail) => DomainError::Internal(detail),
    }
}

/// Sealed material that does not open is stored data gone bad, never the caller's fault.
fn sealed_error(version: &KeyVersionId, e: BackendError) -> DomainError {
    match e {
        BackendError::AuthenticationFailed | BackendError::InvalidInput(_) => {
            DomainError::Internal(format!(
                "sealed material of version {version} does not open: {e}"
            ))
        }
        other => backend_error(other),
    }
}

impl KeyVault {
    /// A vault over an opened HSM.
    pub fn new(hsm: Arc<Hsm>) -> Self {
        Self {
            hsm,
            soft: SoftBackend::new(),
        }
    }

    /// Runs `f`, timed as an HSM call when the key is in the HSM.
    fn timed<T>(
        &self,
        protection: ProtectionLevel,
        operation: &'static str,
        algorithm: &'static str,
        f: impl FnOnce() -> T,
    ) -> T {
        match protection {
            ProtectionLevel::Hsm => hsm_call(operation, algorithm, f),
            ProtectionLevel::Software => f(),
        }
    }

    fn backend(&self, protection: ProtectionLevel) -> &dyn Backend {
        match protection {
            ProtectionLevel::Software => &self.soft,
            ProtectionLevel::Hsm => self.hsm.as_ref(),
        }
    }

    /// Makes material for a new key version, sealed under the root key and bound to the
    /// version id. Software keys are made in process and sealed by the HSM; HSM keys are made
    /// and sealed inside the HSM. Returns the sealed material and the public key (empty for AES).
    pub fn generate(
        &self,
        version: &KeyVersionId,
        spec: KeySpec,
        protection: ProtectionLevel,
    ) -> Result<(Vec<u8>, Vec<u8>), DomainError> {
        match protection {
            ProtectionLevel::Software => {
                let key = self.soft.generate(spec).map_err(backend_error)?;
                let wrapped = hsm_call("wrap", "AES_GCM", || {
                    self.hsm.wrap_secret(version.as_bytes(), &key.material)
                })
                .map_err(backend_error)?;
                Ok((wrapped, key.public_key_der))
            }
            ProtectionLevel::Hsm => {
                let sealed = hsm_call("generate", spec.display_name(), || {
                    self.hsm.generate_sealed(spec, version.as_bytes())
                })
                .map_err(backend_error)?;
                Ok((sealed.sealed, sealed.public_key_der))
            }
        }
    }

    /// Opens a version's sealed material into a handle of the backend that owns it: software
    /// material into zeroizing process memory, HSM material into a non-extractable HSM object.
    pub fn load(
        &self,
        version: &KeyVersionId,
        spec: KeySpec,
        protection: ProtectionLevel,
        sealed: &[u8],
    ) -> Result<KeyHandle, DomainError> {
        match protection {
            ProtectionLevel::Software => {
                let material = hsm_call("unwrap", "AES_GCM", || {
                    self.hsm.unwrap_secret(version.as_bytes(), sealed)
                })
                .map_err(|e| sealed_error(version, e))?;
                self.soft
                    .load(spec, &material)
                    .map_err(|e| sealed_error(version, e))
            }
            ProtectionLevel::Hsm => hsm_call("load", spec.display_name(), || {
                self.hsm.load_sealed(spec, version.as_bytes(), sealed)
            })
            .map_err(|e| sealed_error(version, e)),
        }
    }

    /// The audit-chain key of `plane`, derived in the HSM from the root key under the plane's
    /// own label ([`kms_runtime::audit::Plane::key_label`]); the same on every replica sharing
    /// the root key. Blocks on the HSM.
    pub fn derive_audit_key(
        &self,
        plane: kms_runtime::audit::Plane,
    ) -> Result<SecretBytes, DomainError> {
        self.hsm
            .derive_secret(plane.key_label())
            .map_err(backend_error)
    }

    /// `n` random bytes from the HSM's generator.
    pub fn random(&self, n: usize) -> Result<SecretBytes, DomainError> {
        let mut out = SecretBytes::new(vec![0u8; n]);
        hsm_call("random", "", || self.hsm.fill_random(out.expose_mut())).map_err(backend_error)?;
        Ok(out)
    }

    /// `n` random bytes from the operating system's generator (through ring), for data keys
    /// under software-protected keys: as strong as the HSM's for those keys, whose own
    /// material lives in this process, and drawn in place without a PKCS#11 call.
    pub fn random_soft(&self, n: usize) -> Result<SecretBytes, DomainError> {
        let mut out = SecretBytes::new(vec![0u8; n]);
        self.soft
            .fill_random(out.expose_mut())
            .map_err(backend_error)?;
        Ok(out)
    }

    /// A fresh GCM nonce.
    pub fn fresh_iv(&self) -> Result<[u8; GCM_IV_LEN], DomainError> {
        let mut iv = [0u8; GCM_IV_LEN];
        self.soft.fill_random(&mut iv).map_err(backend_error)?;
        Ok(iv)
    }

    /// AES-GCM encryption with a loaded key.
    pub fn seal(
        &self,
        protection: ProtectionLevel,
        key: &KeyHandle,
        iv: &[u8; GCM_IV_LEN],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, DomainError> {
        self.timed(protection, "encrypt", "AES_GCM", || {
            self.backend(protection)
                .aead_encrypt(key, iv, aad, plaintext)
        })
        .map_err(backend_error)
    }

    /// AES-GCM decryption with a loaded key; a failed check is `InvalidCiphertext`.
    pub fn unseal(
        &self,
        protection: ProtectionLevel,
        key: &KeyHandle,
        iv: &[u8; GCM_IV_LEN],
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<SecretBytes, DomainError> {
        self.timed(protection, "decrypt", "AES_GCM", || {
            self.backend(protection).aead_decrypt(key, iv, aad, sealed)
        })
        .map_err(backend_error)
    }

    /// Signs a SHA-256 digest with a loaded key.
    pub fn sign(
        &self,
        protection: ProtectionLevel,
        key: &KeyHandle,
        algorithm: Algorithm,
        digest: &[u8],
    ) -> Result<Vec<u8>, DomainError> {
        self.timed(protection, "sign", algorithm.display_name(), || {
            self.backend(protection).sign(key, algorithm, digest)
        })
        .map_err(backend_error)
    }

    /// Verifies with a public key; public-key operations run in process for every key.
    pub fn verify(
        &self,
        public_key_der: &[u8],
        algorithm: Algorithm,
        digest: &[u8],
        signature: &[u8],
    ) -> Result<bool, DomainError> {
        self.soft
            .verify(
                PublicKeyRef::Spki(public_key_der),
                algorithm,
                digest,
                signature,
            )
            .map_err(backend_error)
    }

    /// RSAES-OAEP encryption to a key's public half, in process.
    pub fn asym_encrypt(
        &self,
        public_key_der: &[u8],
        algorithm: Algorithm,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, DomainError> {
        self.soft
            .asym_encrypt(PublicKeyRef::Spki(public_key_der), algorithm, plaintext)
            .map_err(backend_error)
    }

    /// RSAES-OAEP decryption with a loaded key; a ciphertext that does not decrypt is
    /// `InvalidCiphertext`.
    pub fn asym_decrypt(
        &self,
        protection: ProtectionLevel,
        key: &KeyHandle,
        algorithm: Algorithm,
        ciphertext: &[u8],
    ) -> Result<SecretBytes, DomainError> {
        self.timed(protection, "decrypt", algorithm.display_name(), || {
            self.backend(protection)
                .asym_decrypt(key, algorithm, ciphertext)
        })
        .map_err(backend_error)
    }

    /// Encrypts a data key to a caller's RSA public key (DER or PEM) for export.
    pub fn export_to(
        &self,
        public_key: &[u8],
        algorithm: Algorithm,
        key_spec: KeySpec,
        data_key: &SecretBytes,
    ) -> Result<Vec<u8>, DomainError> {
        kms_backend_soft::encrypt_to_public_key(public_key, algorithm, key_spec, data_key).map_err(
            |e| match e {
                BackendError::InvalidInput(why) | BackendError::NotSupported(why) => {
                    DomainError::invalid(
                        "PublicKey",
                        format!("the public key cannot be used: {why}"),
                    )
                }
                other => backend_error(other),
            },
        )
    }

    /// A new AccessKey secret for `id`, from the HSM's generator, and the same sealed under
    /// the root key bound to the id. Blocks on the HSM.
    pub fn new_access_key_secret(
        &self,
        id: &AccessKeyId,
    ) -> Result<(zeroize::Zeroizing<String>, Vec<u8>), DomainError> {
        let random = self.random(kms_types::access_key::ACCESS_KEY_SECRET_LEN)?;
        let secret = zeroize::Zeroizing::new(kms_types::access_key::alphabet_text(random.expose()));
        let plain = SecretBytes::new(secret.as_bytes().to_vec());
        let sealed = hsm_call("wrap", "AES_GCM", || {
            self.hsm.wrap_secret(&access_key_context(id), &plain)
        })
        .map_err(backend_error)?;
        Ok((secret, sealed))
    }

    /// Opens the sealed secret of AccessKey pair `id`. Blocks on the HSM.
    pub fn open_access_key_secret(
        &self,
        id: &AccessKeyId,
        sealed: &[u8],
    ) -> Result<zeroize::Zeroizing<String>, DomainError> {
        let plain = hsm_call("unwrap", "AES_GCM", || {
            self.hsm.unwrap_secret(&access_key_context(id), sealed)
        })
        .map_err(|e| {
            DomainError::Internal(format!("the sealed secret of {id} does not open: {e}"))
        })?;
        let text = std::str::from_utf8(plain.expose())
            .map_err(|_| DomainError::Internal(format!("the secret of {id} is not text")))?;
        Ok(zeroize::Zeroizing::new(text.to_string()))
    }
}

/// What an AccessKey secret is sealed under besides the root key: its id, in a namespace no
/// key version id can take.
fn access_key_context(id: &AccessKeyId) -> Vec<u8> {
    [b"access-key/".as_slice(), id.as_bytes()].concat()
}
