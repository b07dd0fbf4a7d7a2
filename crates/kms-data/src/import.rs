//! Imported key material (bring your own key) on the data plane: one-time RSA_2048 import keys
//! made inside the HSM and handed out sealed, and the import itself: open the caller's
//! wrapping with the import key, check the material against the key's spec, seal it for the
//! key version like generated material, and compute its keyed digest.
//!
//! The plaintext material exists only in [`SecretBytes`] between the unwrap and the re-seal,
//! and never in an error or a log line. RSAES-OAEP-SHA-1 is opened by the HSM itself;
//! RSAES-OAEP-SHA-256 (also the ephemeral key of `RSA_AES_KEY_WRAP_SHA_256`) by raw RSA in the
//! HSM and constant-time OAEP decoding on the host (SoftHSM2 has no OAEP with SHA-256). The
//! AES key wrap with padding around an imported private key is opened on the host.

use kms_backend::import::{
    EPHEMERAL_KEY_LEN, IMPORT_CIPHERTEXT_LEN, IMPORT_KEY_SPEC, aes_kwp_unwrap, material_digest,
    split_rsa_aes_key_wrap,
};
use kms_backend::{Backend, BackendError, RootWrapper, SecretBytes};
use kms_types::import::check_wrapping;
use kms_types::{
    Algorithm, DomainError, ImportTokenId, KeyId, KeySpec, KeyVersionId, ProtectionLevel,
};

use crate::vault::{KeyVault, backend_error};

/// Domain separation of import keys' sealing context from key versions'.
const IMPORT_KEY_CONTEXT: &[u8] = b"kms-import-key-v1\0";
/// Label of the secret, derived from the root key, that keys material digests.
const DIGEST_KEY_LABEL: &[u8] = b"import-material-digest";

/// A fresh import key pair.
#[derive(Debug)]
pub struct ImportKey {
    /// The public key, SubjectPublicKeyInfo DER, for the caller.
    pub public_key_der: Vec<u8>,
    /// The private key sealed under the root key, for the control plane to keep.
    pub sealed_private_key: Vec<u8>,
}

/// What an import needs: the key version the material becomes, and the caller's wrapping.
#[derive(Debug)]
pub struct ImportRequest {
    /// The key.
    pub key_id: KeyId,
    /// The version the material becomes.
    pub version: KeyVersionId,
    /// The key's spec, which the material must match.
    pub spec: KeySpec,
    /// Where the material is protected.
    pub protection: ProtectionLevel,
    /// How the caller wrapped it.
    pub wrapping_algorithm: Algorithm,
    /// The import key's id (its token).
    pub import_key_id: ImportTokenId,
    /// The import private key, sealed.
    pub sealed_import_key: Vec<u8>,
    /// The caller's wrapped material.
    pub encrypted_material: Vec<u8>,
}

/// Imported material, sealed for the key version.
#[derive(Debug)]
pub struct Imported {
    /// The material sealed under the root key, as generated material is.
    pub wrapped_material: Vec<u8>,
    /// SubjectPublicKeyInfo DER for private keys; empty for AES.
    pub public_key_der: Vec<u8>,
    /// Keyed digest of the material, bound to the key id and spec.
    pub digest: [u8; 32],
}

fn import_key_context(id: &ImportTokenId) -> Vec<u8> {
    [IMPORT_KEY_CONTEXT, id.as_str().as_bytes()].concat()
}

/// The caller's wrapping does not open with this token's import key.
fn undecryptable() -> DomainError {
    DomainError::invalid(
        "EncryptedKeyMaterial",
        "the encrypted key material does not decrypt with the import token's public key and \
         wrapping algorithm",
    )
}

/// Maps a failure to open the caller's wrapping: anything the caller sent is its fault, with
/// one answer whatever failed (no padding oracle); the HSM's troubles stay what they are.
fn unwrap_error(e: BackendError) -> DomainError {
    match e {
        BackendError::AuthenticationFailed | BackendError::InvalidInput(_) => undecryptable(),
        other => backend_error(other),
    }
}

/// Maps a failure to take the opened material as the key's spec.
fn material_error(spec: KeySpec, e: BackendError) -> DomainError {
    match e {
        BackendError::InvalidInput(why) | BackendError::NotSupported(why) => {
            DomainError::invalid("KeyMaterial", format!("not a {spec} key: {why}"))
        }
        BackendError::AuthenticationFailed => {
            DomainError::invalid("KeyMaterial", format!("not a {spec} key"))
        }
        other => backend_error(other),
    }
}

impl KeyVault {
    /// Makes an RSA_2048 import key pair inside the HSM and seals its private key, bound to
    /// `id`. Blocks on the HSM.
    pub fn create_import_key(
        &self,
        id: &ImportTokenId,
        wrapping_key_spec: KeySpec,
    ) -> Result<ImportKey, DomainError> {
        if wrapping_key_spec != IMPORT_KEY_SPEC {
            return Err(DomainError::invalid(
                "WrappingKeySpec",
                format!("wrapping_key_spec must be {IMPORT_KEY_SPEC}, got {wrapping_key_spec}"),
            ));
        }
        let sealed = self
            .hsm
            .generate_sealed(IMPORT_KEY_SPEC, &import_key_context(id))
            .map_err(backend_error)?;
        Ok(ImportKey {
            public_key_der: sealed.public_key_der,
            sealed_private_key: sealed.sealed,
        })
    }

    /// Opens the caller's material with the import key, checks it against the key's spec and
    /// seals it for the version. Blocks on the HSM.
    pub fn import_material(&self, req: &ImportRequest) -> Result<Imported, DomainError> {
        check_wrapping(req.spec, req.wrapping_algorithm, IMPORT_KEY_SPEC)?;
        let material = self.open_wrapping(req)?;
        let (wrapped_material, public_key_der) = self.seal_imported(req, &material)?;
        let digest_key = self
            .hsm
            .derive_secret(DIGEST_KEY_LABEL)
            .map_err(backend_error)?;
        let canonical = if req.spec.is_symmetric() {
            material.expose()
        } else {
            public_key_der.as_slice()
        };
        let digest = material_digest(&digest_key, req.key_id.as_str(), req.spec, canonical)
            .map_err(backend_error)?;
        Ok(Imported {
            wrapped_material,
            public_key_der,
            digest,
        })
    }

    /// The plaintext material inside the caller's wrapping.
    fn open_wrapping(&self, req: &ImportRequest) -> Result<SecretBytes, DomainError> {
        let import_key = self
            .hsm
            .load_sealed(
                IMPORT_KEY_SPEC,
                &import_key_context(&req.import_key_id),
                &req.sealed_import_key,
            )
            .map_err(|e| match e {
                // The control plane sent a sealed import key that is not one this HSM sealed
                // for this import key id: its argument, refused as such (the control plane
                // reports it to its own caller as an internal failure, its stored data).
                BackendError::AuthenticationFailed | BackendError::InvalidInput(_) => {
                    DomainError::invalid(
                        "WrappedPrivateKey",
                        format!(
                            "the sealed import key does not open for import key {}",
                            req.import_key_id
                        ),
                    )
                }
                other => backend_error(other),
            })?;
        let decrypt = |algorithm, ciphertext: &[u8]| {
            if ciphertext.len() != IMPORT_CIPHERTEXT_LEN {
                return Err(undecryptable());
            }
            self.hsm
                .asym_decrypt(&import_key, algorithm, ciphertext)
                .map_err(unwrap_error)
        };
        let material = match req.wrapping_algorithm {
            Algorithm::RsaesOaepSha256 | Algorithm::RsaesOaepSha1 => {
                decrypt(req.wrapping_algorithm, &req.encrypted_material)?
            }
            Algorithm::RsaAesKeyWrapSha256 => {
                let (rsa_part, kwp_part) =
                    split_rsa_aes_key_wrap(&req.encrypted_material, IMPORT_CIPHERTEXT_LEN)
                        .map_err(unwrap_error)?;
                let ephemeral = decrypt(Algorithm::RsaesOaepSha256, rsa_part)?;
                if ephemeral.len() != EPHEMERAL_KEY_LEN {
                    return Err(undecryptable());
                }
                aes_kwp_unwrap(&ephemeral, kwp_part).map_err(unwrap_error)?
            }
            other => {
                return Err(DomainError::invalid(
                    "WrappingAlgorithm",
                    format!("{other} does not wrap key material"),
                ));
            }
        };
        // The import key's objects go now, not whenever the handle would be dropped.
        self.hsm.unload(import_key).map_err(backend_error)?;
        Ok(material)
    }

    /// Checks `material` as the key's spec and seals it for the version: software material
    /// under the root key, HSM material through the HSM. Returns it sealed, with the public
    /// key of a private key.
    fn seal_imported(
        &self,
        req: &ImportRequest,
        material: &SecretBytes,
    ) -> Result<(Vec<u8>, Vec<u8>), DomainError> {
        if let Some(len) = req.spec.symmetric_key_len()
            && material.len() != len
        {
            return Err(DomainError::invalid(
                "KeyMaterial",
                format!(
                    "a {} key is {len} bytes, the material is {} bytes",
                    req.spec,
                    material.len()
                ),
            ));
        }
        let context = req.version.as_bytes();
        match req.protection {
            ProtectionLevel::Software => {
                let handle = self
                    .soft
                    .load(req.spec, material)
                    .map_err(|e| material_error(req.spec, e))?;
                let public_key_der = if req.spec.is_symmetric() {
                    Vec::new()
                } else {
                    self.soft.public_key(&handle).map_err(backend_error)?
                };
                drop(handle);
                let wrapped = self
                    .hsm
                    .wrap_secret(context, material)
                    .map_err(backend_error)?;
                Ok((wrapped, public_key_der))
            }
            ProtectionLevel::Hsm => {
                let sealed = self
                    .hsm
                    .import_sealed(req.spec, context, material)
                    .map_err(|e| material_error(req.spec, e))?;
                Ok((sealed.sealed, sealed.public_key_der))
            }
        }
    }
}
