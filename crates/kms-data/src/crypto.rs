//! The crypto engine: resolve the key, authorize, check state and usage, then compute. Every
//! HSM call and every computation with key material runs on a blocking thread.

use std::collections::HashMap;
use std::sync::Arc;

use kms_backend::SecretBytes;
use kms_types::blob::{self, CiphertextBlob};
use kms_types::policy;
use kms_types::{
    DomainError, EncryptionContext, KeyState, KeyUsage, KeyVersionId, Operation, Principal,
};

use crate::cache::{CachedKey, KeyCache};
use crate::vault::KeyVault;

/// Largest plaintext `Encrypt` takes, in bytes.
pub const MAX_PLAINTEXT: usize = 6 * 1024;

/// The result of an encryption.
#[derive(Debug)]
pub struct Sealed {
    /// Resolved key id.
    pub key_id: String,
    /// Version that sealed it.
    pub key_version_id: KeyVersionId,
    /// The ciphertext blob.
    pub blob: Vec<u8>,
}

/// The result of a decryption.
#[derive(Debug)]
pub struct Opened {
    /// Key id named by the blob.
    pub key_id: String,
    /// Version named by the blob.
    pub key_version_id: KeyVersionId,
    /// The plaintext.
    pub plaintext: SecretBytes,
}

/// Cryptographic operations over cached keys.
#[derive(Debug)]
pub struct CryptoEngine {
    cache: KeyCache,
    vault: Arc<KeyVault>,
}

fn join_error(e: tokio::task::JoinError) -> DomainError {
    DomainError::Internal(format!("crypto task failed: {e}"))
}

/// Checks the caller may perform `op` on the key, that its state allows it and that it is a
/// symmetric encryption key.
fn check_symmetric_use(
    caller: &Principal,
    key: &CachedKey,
    action: &str,
    op: Operation,
) -> Result<(), DomainError> {
    let entry = &key.entry;
    policy::authorize(caller, &entry.account, action)?;
    op.check_state(entry.state)?;
    if entry.usage != KeyUsage::EncryptDecrypt || !entry.spec.is_symmetric() {
        return Err(DomainError::invalid(
            "KeyId",
            format!(
                "key {} is {} {}; this operation needs a symmetric ENCRYPT/DECRYPT key",
                entry.id, entry.spec, entry.usage
            ),
        ));
    }
    if entry.state == KeyState::Enabled && entry.versions.is_empty() {
        return Err(DomainError::InvalidState(KeyState::PendingImport));
    }
    Ok(())
}

impl CryptoEngine {
    /// An engine over `cache` and `vault`.
    pub fn new(cache: KeyCache, vault: Arc<KeyVault>) -> Self {
        Self { cache, vault }
    }

    /// The vault, for key-material generation.
    pub fn vault(&self) -> &Arc<KeyVault> {
        &self.vault
    }

    /// `Encrypt`: seals `plaintext` under the key's primary version.
    pub async fn encrypt(
        &self,
        caller: &Principal,
        key_id: &str,
        plaintext: Vec<u8>,
        context: HashMap<String, String>,
        dry_run: bool,
    ) -> Result<Sealed, DomainError> {
        let plaintext = SecretBytes::new(plaintext);
        if plaintext.is_empty() || plaintext.len() > MAX_PLAINTEXT {
            return Err(DomainError::invalid(
                "Plaintext",
                format!(
                    "plaintext must be 1 to {MAX_PLAINTEXT} bytes, got {}",
                    plaintext.len()
                ),
            ));
        }
        let context = EncryptionContext::new(context)?;
        kms_types::KeyRef::parse(key_id)?;
        let key = self.cache.by_ref(key_id, caller).await?;
        check_symmetric_use(caller, &key, "kms:Encrypt", Operation::Encrypt)?;
        if dry_run {
            return Err(DomainError::DryRunOperation);
        }
        let vault = Arc::clone(&self.vault);
        let version = key.entry.primary_version;
        let key_id = key.entry.id.to_string();
        let blob = tokio::task::spawn_blocking(move || {
            let material = key.material(&vault, &version)?;
            let iv = vault.fresh_iv()?;
            let header = blob::header(&version, &iv);
            let aad = blob::aad(&header, &context.canonical_bytes());
            let sealed = vault.seal(&material, &iv, &aad, plaintext.expose())?;
            Ok::<_, DomainError>(blob::assemble(&header, &sealed))
        })
        .await
        .map_err(join_error)??;
        Ok(Sealed {
            key_id,
            key_version_id: version,
            blob,
        })
    }

    /// `Decrypt`: the blob names its key version; the context must equal the one used to seal.
    pub async fn decrypt(
        &self,
        caller: &Principal,
        ciphertext_blob: Vec<u8>,
        context: HashMap<String, String>,
        dry_run: bool,
    ) -> Result<Opened, DomainError> {
        let context = EncryptionContext::new(context)?;
        let parsed = CiphertextBlob::parse(&ciphertext_blob)?;
        let version = parsed.key_version_id;
        let key = match self.cache.by_version(&version).await {
            Err(DomainError::KeyNotFound) => return Err(DomainError::InvalidCiphertext),
            other => other?,
        };
        check_symmetric_use(caller, &key, "kms:Decrypt", Operation::Decrypt)?;
        if key.entry.version(&version).is_none() {
            return Err(DomainError::InvalidCiphertext);
        }
        if dry_run {
            return Err(DomainError::DryRunOperation);
        }
        let vault = Arc::clone(&self.vault);
        let key_id = key.entry.id.to_string();
        let plaintext = tokio::task::spawn_blocking(move || {
            let parsed = CiphertextBlob::parse(&ciphertext_blob)?;
            let material = key.material(&vault, &version)?;
            let aad = blob::aad(&parsed.header(), &context.canonical_bytes());
            vault.unseal(&material, &parsed.iv, &aad, parsed.sealed)
        })
        .await
        .map_err(join_error)??;
        Ok(Opened {
            key_id,
            key_version_id: version,
            plaintext,
        })
    }
}
