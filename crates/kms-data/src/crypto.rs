//! The crypto engine: resolve the key, authorize, check state and usage, then compute. Every
//! HSM call and every computation with key material runs on a blocking thread.

use std::collections::HashMap;
use std::sync::Arc;

use kms_backend::SecretBytes;
use kms_types::blob::{self, CiphertextBlob};
use kms_types::policy;
use kms_types::{
    DataKeySpec, DomainError, EncryptionContext, KeyState, KeyUsage, KeyVersionId, Operation,
    Principal,
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
    cache: Arc<KeyCache>,
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
    pub fn new(cache: Arc<KeyCache>, vault: Arc<KeyVault>) -> Self {
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
        self.seal_with_primary(key, plaintext, context).await
    }

    /// Seals under the key's primary version on a blocking thread.
    async fn seal_with_primary(
        &self,
        key: Arc<CachedKey>,
        plaintext: SecretBytes,
        context: EncryptionContext,
    ) -> Result<Sealed, DomainError> {
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

    /// Resolves and authorizes the key that sealed `ciphertext_blob`.
    async fn key_of_blob(
        &self,
        caller: &Principal,
        ciphertext_blob: &[u8],
        action: &str,
        op: Operation,
    ) -> Result<(Arc<CachedKey>, KeyVersionId), DomainError> {
        let parsed = CiphertextBlob::parse(ciphertext_blob)?;
        let version = parsed.key_version_id;
        let key = match self.cache.by_version(&version).await {
            Err(DomainError::KeyNotFound) => return Err(DomainError::InvalidCiphertext),
            other => other?,
        };
        check_symmetric_use(caller, &key, action, op)?;
        if key.entry.version(&version).is_none() {
            return Err(DomainError::InvalidCiphertext);
        }
        Ok((key, version))
    }

    /// Opens a blob with the version it names, on a blocking thread.
    async fn open_blob(
        &self,
        key: Arc<CachedKey>,
        version: KeyVersionId,
        ciphertext_blob: Vec<u8>,
        context: EncryptionContext,
    ) -> Result<SecretBytes, DomainError> {
        let vault = Arc::clone(&self.vault);
        tokio::task::spawn_blocking(move || {
            let parsed = CiphertextBlob::parse(&ciphertext_blob)?;
            let material = key.material(&vault, &version)?;
            let aad = blob::aad(&parsed.header(), &context.canonical_bytes());
            vault.unseal(&material, &parsed.iv, &aad, parsed.sealed)
        })
        .await
        .map_err(join_error)?
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
        let (key, version) = self
            .key_of_blob(caller, &ciphertext_blob, "kms:Decrypt", Operation::Decrypt)
            .await?;
        if dry_run {
            return Err(DomainError::DryRunOperation);
        }
        let key_id = key.entry.id.to_string();
        let plaintext = self
            .open_blob(key, version, ciphertext_blob, context)
            .await?;
        Ok(Opened {
            key_id,
            key_version_id: version,
            plaintext,
        })
    }
}

/// How many bytes a data key has: `number_of_bytes` (1–1024) wins over `key_spec`; neither
/// means 32.
pub fn data_key_len(spec: Option<DataKeySpec>, number_of_bytes: i32) -> Result<usize, DomainError> {
    match (number_of_bytes, spec) {
        (1..=1024, _) => Ok(number_of_bytes as usize),
        (0, Some(DataKeySpec::Aes128)) => Ok(16),
        (0, Some(DataKeySpec::Aes256) | None) => Ok(32),
        (n, _) => Err(DomainError::invalid(
            "NumberOfBytes",
            format!("number_of_bytes must be 1 to 1024, got {n}"),
        )),
    }
}

/// A new data key, sealed under a master key.
#[derive(Debug)]
pub struct DataKey {
    /// The master key's id.
    pub key_id: String,
    /// The master key version that sealed it.
    pub key_version_id: KeyVersionId,
    /// The data key sealed in a ciphertext blob.
    pub blob: Vec<u8>,
    /// The data key itself.
    pub plaintext: SecretBytes,
}

/// A ciphertext moved from one key to another.
#[derive(Debug)]
pub struct ReSealed {
    /// The new seal.
    pub sealed: Sealed,
    /// The key that sealed the input.
    pub source_key_id: String,
    /// The version that sealed the input.
    pub source_key_version_id: KeyVersionId,
}

impl CryptoEngine {
    /// `GenerateDataKey` (and, dropping the plaintext, `GenerateDataKeyWithoutPlaintext`).
    pub async fn generate_data_key(
        &self,
        caller: &Principal,
        key_id: &str,
        spec: Option<DataKeySpec>,
        number_of_bytes: i32,
        context: HashMap<String, String>,
        dry_run: bool,
    ) -> Result<DataKey, DomainError> {
        let len = data_key_len(spec, number_of_bytes)?;
        let context = EncryptionContext::new(context)?;
        kms_types::KeyRef::parse(key_id)?;
        let key = self.cache.by_ref(key_id, caller).await?;
        check_symmetric_use(
            caller,
            &key,
            "kms:GenerateDataKey",
            Operation::GenerateDataKey,
        )?;
        if dry_run {
            return Err(DomainError::DryRunOperation);
        }
        let vault = Arc::clone(&self.vault);
        let plaintext = tokio::task::spawn_blocking(move || vault.random(len))
            .await
            .map_err(join_error)??;
        let sealed = self
            .seal_with_primary(key, plaintext.clone(), context)
            .await?;
        Ok(DataKey {
            key_id: sealed.key_id,
            key_version_id: sealed.key_version_id,
            blob: sealed.blob,
            plaintext,
        })
    }

    /// `ReEncrypt`: opens with the key that sealed the blob, seals under `destination`.
    pub async fn re_encrypt(
        &self,
        caller: &Principal,
        ciphertext_blob: Vec<u8>,
        source_context: HashMap<String, String>,
        destination_key_id: &str,
        destination_context: HashMap<String, String>,
        dry_run: bool,
    ) -> Result<ReSealed, DomainError> {
        let source_context = EncryptionContext::new(source_context)?;
        let destination_context = EncryptionContext::new(destination_context)?;
        kms_types::KeyRef::parse(destination_key_id)?;
        let (source, version) = self
            .key_of_blob(
                caller,
                &ciphertext_blob,
                "kms:ReEncrypt",
                Operation::ReEncrypt,
            )
            .await?;
        let destination = self.cache.by_ref(destination_key_id, caller).await?;
        check_symmetric_use(caller, &destination, "kms:ReEncrypt", Operation::ReEncrypt)?;
        if dry_run {
            return Err(DomainError::DryRunOperation);
        }
        let source_key_id = source.entry.id.to_string();
        let plaintext = self
            .open_blob(source, version, ciphertext_blob, source_context)
            .await?;
        let sealed = self
            .seal_with_primary(destination, plaintext, destination_context)
            .await?;
        Ok(ReSealed {
            sealed,
            source_key_id,
            source_key_version_id: version,
        })
    }

    /// `GenerateRandom`: 1–1024 bytes from the HSM's generator.
    pub async fn generate_random(
        &self,
        caller: &Principal,
        length: i32,
    ) -> Result<Vec<u8>, DomainError> {
        let _ = caller;
        if !(1..=1024).contains(&length) {
            return Err(DomainError::invalid(
                "Length",
                format!("length must be 1 to 1024, got {length}"),
            ));
        }
        let vault = Arc::clone(&self.vault);
        let bytes = tokio::task::spawn_blocking(move || vault.random(length as usize))
            .await
            .map_err(join_error)??;
        Ok(bytes.expose().to_vec())
    }

    /// `GetRandomPassword`, drawing from the HSM's generator without modulo bias.
    pub async fn random_password(
        &self,
        caller: &Principal,
        rules: PasswordRules,
    ) -> Result<SecretBytes, DomainError> {
        let _ = caller;
        let plan = rules.plan()?;
        let vault = Arc::clone(&self.vault);
        tokio::task::spawn_blocking(move || plan.draw(|n| vault.random(n)))
            .await
            .map_err(join_error)?
    }
}

/// The punctuation `GetRandomPassword` draws from.
pub const PUNCTUATION: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

/// What `GetRandomPassword` asked for.
#[derive(Debug, Clone, Default)]
pub struct PasswordRules {
    /// 8–128; 0 means 32.
    pub length: i32,
    /// Characters never to use.
    pub exclude_characters: String,
    /// No a–z.
    pub exclude_lowercase: bool,
    /// No A–Z.
    pub exclude_uppercase: bool,
    /// No 0–9.
    pub exclude_numbers: bool,
    /// No punctuation.
    pub exclude_punctuation: bool,
    /// At least one character of every included class.
    pub require_each_included_type: bool,
}

/// Validated password rules: the classes to draw from.
#[derive(Debug)]
pub struct PasswordPlan {
    length: usize,
    classes: Vec<Vec<u8>>,
    require_each: bool,
}

impl PasswordRules {
    /// Checks the rules and works out the character classes.
    pub fn plan(&self) -> Result<PasswordPlan, DomainError> {
        let length = match self.length {
            0 => 32,
            8..=128 => self.length as usize,
            n => {
                return Err(DomainError::invalid(
                    "PasswordLength",
                    format!("password_length must be 8 to 128, got {n}"),
                ));
            }
        };
        let keep = |set: &str| -> Vec<u8> {
            set.bytes()
                .filter(|b| !self.exclude_characters.as_bytes().contains(b))
                .collect()
        };
        let mut classes = Vec::new();
        for (excluded, set) in [
            (self.exclude_lowercase, "abcdefghijklmnopqrstuvwxyz"),
            (self.exclude_uppercase, "ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
            (self.exclude_numbers, "0123456789"),
            (self.exclude_punctuation, PUNCTUATION),
        ] {
            let chars = keep(set);
            if !excluded && !chars.is_empty() {
                classes.push(chars);
            }
        }
        if classes.is_empty() {
            return Err(DomainError::invalid(
                "ExcludeCharacters",
                "every character is excluded; nothing is left to draw from",
            ));
        }
        if self.require_each_included_type && classes.len() > length {
            return Err(DomainError::invalid(
                "PasswordLength",
                "password_length is shorter than the number of required character types",
            ));
        }
        Ok(PasswordPlan {
            length,
            classes,
            require_each: self.require_each_included_type,
        })
    }
}

impl PasswordPlan {
    /// Draws a password with `random(n)` as the source of random bytes. Blocks.
    pub fn draw(
        &self,
        mut random: impl FnMut(usize) -> Result<SecretBytes, DomainError>,
    ) -> Result<SecretBytes, DomainError> {
        let alphabet: Vec<u8> = self.classes.concat();
        // Unbiased index below `n` from one random byte: reject bytes at or above the largest
        // multiple of n that fits in a byte. Alphabets are at most 94 characters.
        let mut pick = |n: usize| -> Result<usize, DomainError> {
            let limit = 256 - (256 % n);
            loop {
                let b = random(1)?;
                let v = usize::from(b.expose()[0]);
                if v < limit {
                    return Ok(v % n);
                }
            }
        };
        loop {
            let mut out = Vec::with_capacity(self.length);
            for _ in 0..self.length {
                out.push(alphabet[pick(alphabet.len())?]);
            }
            let password = SecretBytes::new(out);
            let complete = !self.require_each
                || self
                    .classes
                    .iter()
                    .all(|c| password.expose().iter().any(|b| c.contains(b)));
            if complete {
                return Ok(password);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os_random(n: usize) -> Result<SecretBytes, DomainError> {
        use kms_backend::Backend;
        let mut v = SecretBytes::new(vec![0u8; n]);
        kms_backend_soft::SoftBackend::new()
            .fill_random(v.expose_mut())
            .map_err(crate::vault::backend_error)?;
        Ok(v)
    }

    #[test]
    fn data_key_lengths() {
        assert_eq!(data_key_len(None, 0), Ok(32));
        assert_eq!(data_key_len(Some(DataKeySpec::Aes128), 0), Ok(16));
        assert_eq!(data_key_len(Some(DataKeySpec::Aes256), 0), Ok(32));
        assert_eq!(data_key_len(Some(DataKeySpec::Aes128), 1024), Ok(1024));
        assert_eq!(data_key_len(None, 1), Ok(1));
        for bad in [-1, 1025] {
            let reason = data_key_len(None, bad).err().map(|e| e.reason_code());
            assert_eq!(reason.as_deref(), Some("InvalidParameter.NumberOfBytes"));
        }
    }

    #[test]
    fn password_rules() {
        let rules = |f: &dyn Fn(&mut PasswordRules)| {
            let mut r = PasswordRules::default();
            f(&mut r);
            r
        };
        let p = rules(&|_| {}).plan().and_then(|p| p.draw(os_random));
        assert_eq!(p.map(|p| p.len()), Ok(32));
        let digits = rules(&|r| {
            r.length = 100;
            r.exclude_lowercase = true;
            r.exclude_uppercase = true;
            r.exclude_punctuation = true;
            r.exclude_characters = "0".into();
        })
        .plan()
        .and_then(|p| p.draw(os_random))
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(digits.expose().iter().all(|b| (b'1'..=b'9').contains(b)));
        let each = rules(&|r| {
            r.length = 8;
            r.require_each_included_type = true;
        })
        .plan()
        .unwrap_or_else(|e| panic!("{e}"));
        for _ in 0..50 {
            let p = each.draw(os_random).unwrap_or_else(|e| panic!("{e}"));
            assert!(p.expose().iter().any(u8::is_ascii_lowercase));
            assert!(p.expose().iter().any(u8::is_ascii_uppercase));
            assert!(p.expose().iter().any(u8::is_ascii_digit));
            assert!(
                p.expose()
                    .iter()
                    .any(|b| PUNCTUATION.as_bytes().contains(b))
            );
        }
        for (bad, field) in [
            (rules(&|r| r.length = 7), "InvalidParameter.PasswordLength"),
            (
                rules(&|r| r.length = 129),
                "InvalidParameter.PasswordLength",
            ),
            (
                rules(&|r| {
                    r.exclude_lowercase = true;
                    r.exclude_uppercase = true;
                    r.exclude_numbers = true;
                    r.exclude_characters = PUNCTUATION.into();
                }),
                "InvalidParameter.ExcludeCharacters",
            ),
        ] {
            assert_eq!(
                bad.plan().err().map(|e| e.reason_code()).as_deref(),
                Some(field)
            );
        }
    }

    #[test]
    fn password_draw_is_unbiased_by_rejection() {
        // A source that yields 255 first (rejected for a 10-character alphabet) then 7.
        let mut seq = vec![255u8, 7].into_iter().cycle();
        let plan = PasswordRules {
            length: 8,
            exclude_lowercase: true,
            exclude_uppercase: true,
            exclude_punctuation: true,
            ..Default::default()
        }
        .plan()
        .unwrap_or_else(|e| panic!("{e}"));
        let p = plan
            .draw(|n| {
                Ok(SecretBytes::new(
                    (0..n).map(|_| seq.next().unwrap_or(0)).collect(),
                ))
            })
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.expose(), b"77777777");
    }
}
