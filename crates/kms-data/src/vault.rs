//! The key vault: makes and opens key material by combining the HSM (root key) with the
//! backends that compute. Every method blocks; call them from blocking threads only.

use std::sync::Arc;

use kms_backend::{Backend, BackendError, GCM_IV_LEN, RootWrapper, SecretBytes};
use kms_backend_pkcs11::Hsm;
use kms_backend_soft::SoftBackend;
use kms_types::{DomainError, KeySpec, KeyVersionId, ProtectionLevel};

/// The HSM and the software backend, composed.
#[derive(Debug)]
pub struct KeyVault {
    hsm: Arc<Hsm>,
    soft: SoftBackend,
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

impl KeyVault {
    /// A vault over an opened HSM.
    pub fn new(hsm: Arc<Hsm>) -> Self {
        Self {
            hsm,
            soft: SoftBackend::new(),
        }
    }

    /// Makes material for a new key version and seals it under the root key, bound to the
    /// version id. Returns the sealed material and the public key (empty for AES).
    pub fn generate(
        &self,
        version: &KeyVersionId,
        spec: KeySpec,
        protection: ProtectionLevel,
    ) -> Result<(Vec<u8>, Vec<u8>), DomainError> {
        match protection {
            ProtectionLevel::Software => {
                let key = self.soft.generate(spec).map_err(backend_error)?;
                let wrapped = self
                    .hsm
                    .wrap_secret(version.as_bytes(), &key.material)
                    .map_err(backend_error)?;
                Ok((wrapped, key.public_key_der))
            }
            ProtectionLevel::Hsm => Err(DomainError::invalid(
                "ProtectionLevel",
                "HSM-protected key generation is not available yet",
            )),
        }
    }

    /// Opens a version's sealed material into zeroizing memory.
    pub fn open(&self, version: &KeyVersionId, wrapped: &[u8]) -> Result<SecretBytes, DomainError> {
        self.hsm
            .unwrap_secret(version.as_bytes(), wrapped)
            .map_err(|e| match e {
                // Sealed material that does not open is stored data gone bad, not the caller's fault.
                BackendError::AuthenticationFailed | BackendError::InvalidInput(_) => {
                    DomainError::Internal(format!(
                        "sealed material of version {version} does not open: {e}"
                    ))
                }
                other => backend_error(other),
            })
    }

    /// `n` random bytes from the HSM's generator.
    pub fn random(&self, n: usize) -> Result<SecretBytes, DomainError> {
        let mut out = SecretBytes::new(vec![0u8; n]);
        self.hsm
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

    /// AES-GCM encryption with software material.
    pub fn seal(
        &self,
        key: &SecretBytes,
        iv: &[u8; GCM_IV_LEN],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, DomainError> {
        self.soft
            .aead_seal(key, iv, aad, plaintext)
            .map_err(backend_error)
    }

    /// AES-GCM decryption with software material; a failed check is `InvalidCiphertext`.
    pub fn unseal(
        &self,
        key: &SecretBytes,
        iv: &[u8; GCM_IV_LEN],
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<SecretBytes, DomainError> {
        self.soft
            .aead_open(key, iv, aad, sealed)
            .map_err(backend_error)
    }
}
