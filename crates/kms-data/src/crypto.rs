//! The crypto engine: resolve the key, authorize, check state and usage, then compute. Every
//! HSM call and every computation with key material runs on a blocking thread.

use std::collections::HashMap;
use std::sync::Arc;

use kms_backend::SecretBytes;
use kms_types::authz::{Rpc, Touch};
use kms_types::blob::{self, BlobKind, CiphertextBlob};
use kms_types::crypto_rules::{self, AsymmetricUse};
use kms_types::policy;
use kms_types::{
    Algorithm, DataKeySpec, DomainError, EncryptionContext, KeySpec, KeyState, KeyUsage,
    KeyVersionId, Operation, Principal, UnixMillis,
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

/// Now, by this machine's clock: imported material past its expiry is refused here even
/// before the control plane's scheduler removes it.
pub(crate) fn wall_clock() -> UnixMillis {
    UnixMillis(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0),
    )
}

/// Whether AES-GCM with `version` of `key` is quick enough for an async worker: a software
/// key whose material is already loaded. AES-GCM on at most 6 KiB takes a few microseconds,
/// far less than handing it to a blocking thread and back; HSM keys and a version's first use
/// (which unwraps its material in the HSM) stay off the workers.
fn quick(key: &CachedKey, version: &KeyVersionId) -> bool {
    key.entry.protection == kms_types::ProtectionLevel::Software && key.is_loaded(version)
}

/// Runs `f` on the calling worker when `inline`, else on a blocking thread in the caller's
/// span.
async fn compute<T: Send + 'static>(
    inline: bool,
    f: impl FnOnce() -> Result<T, DomainError> + Send + 'static,
) -> Result<T, DomainError> {
    if inline {
        f()
    } else {
        kms_runtime::telemetry::spawn_blocking(f)
            .await
            .map_err(join_error)?
    }
}

fn join_error(e: tokio::task::JoinError) -> DomainError {
    DomainError::Internal(format!("crypto task failed: {e}"))
}

/// The policy decision for `action` on a cached key, with its policy compiled once.
fn authorize(caller: &Principal, key: &CachedKey, action: &str) -> Result<(), DomainError> {
    let entry = &key.entry;
    policy::decide(
        caller,
        policy::KeyOwnership {
            owner: &entry.account,
            instance_owner: entry.instance_owner.as_ref(),
        },
        key.policy.as_ref(),
        action,
    )
}

/// Checks the caller may perform `op` on the key, that its state allows it and that it is a
/// symmetric encryption key.
fn check_symmetric_use(
    caller: &Principal,
    key: &CachedKey,
    action: &str,
    op: Operation,
) -> Result<(), DomainError> {
    authorize(caller, key, action)?;
    let entry = &key.entry;
    op.check_state(entry.state)?;
    entry.check_material_live(wall_clock())?;
    if entry.usage != KeyUsage::EncryptDecrypt || !entry.spec.is_symmetric() {
        return Err(DomainError::invalid(
            "KeyUsage",
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
            let hint = if plaintext.is_empty() {
                ""
            } else {
                "; for larger data use envelope encryption: GenerateDataKey returns a data key \
                 to encrypt the data with locally and the data key's ciphertext to keep beside it"
            };
            return Err(DomainError::invalid(
                "Plaintext",
                format!(
                    "plaintext must be 1 to {MAX_PLAINTEXT} bytes, got {}{hint}",
                    plaintext.len()
                ),
            ));
        }
        let context = EncryptionContext::new(context)?;
        kms_types::KeyRef::parse(key_id)?;
        let key = self.cache.by_ref(key_id, caller).await?;
        check_symmetric_use(
            caller,
            &key,
            Rpc::Encrypt.action(Touch::Key),
            Operation::Encrypt,
        )?;
        if dry_run {
            return Err(DomainError::DryRunOperation);
        }
        self.seal_with_primary(key, plaintext, context, BlobKind::Plaintext)
            .await
    }

    /// Seals under the key's primary version, in a blob of `kind` (on a blocking thread unless
    /// it is [`quick`]).
    async fn seal_with_primary(
        &self,
        key: Arc<CachedKey>,
        plaintext: SecretBytes,
        context: EncryptionContext,
        kind: BlobKind,
    ) -> Result<Sealed, DomainError> {
        let vault = Arc::clone(&self.vault);
        let version = key.entry.primary_version;
        let key_id = key.entry.id.to_string();
        let inline = quick(&key, &version);
        let blob = compute(inline, move || {
            let material = key.material(&vault, &version)?;
            let iv = vault.fresh_iv()?;
            let header = blob::header(kind, &version, &iv);
            let aad = blob::aad(&header, &context.canonical_bytes());
            let sealed = vault.seal(
                key.entry.protection,
                &material,
                &iv,
                &aad,
                plaintext.expose(),
            )?;
            Ok::<_, DomainError>(blob::assemble(&header, &sealed))
        })
        .await?;
        Ok(Sealed {
            key_id,
            key_version_id: version,
            blob,
        })
    }

    /// Resolves and authorizes the key that sealed `ciphertext_blob`. The key's state is
    /// checked before the version: a key without material (deleted or expired) still owns its
    /// version and answers `Rejected.<State>`; only a version no key owns is an invalid blob.
    async fn key_of_blob(
        &self,
        caller: &Principal,
        ciphertext_blob: &[u8],
        action: &str,
        op: Operation,
    ) -> Result<(Arc<CachedKey>, KeyVersionId, BlobKind), DomainError> {
        let parsed = CiphertextBlob::parse(ciphertext_blob)?;
        let version = parsed.key_version_id;
        let kind = parsed.kind;
        let key = match self.cache.by_version(&version).await {
            Err(DomainError::KeyNotFound) => return Err(DomainError::InvalidCiphertext),
            other => other?,
        };
        check_symmetric_use(caller, &key, action, op)
            .map_err(|e| e.on("the key of this ciphertext"))?;
        if key.entry.version(&version).is_none() {
            return Err(DomainError::InvalidCiphertext);
        }
        Ok((key, version, kind))
    }

    /// Opens a blob with the version it names (on a blocking thread unless it is [`quick`]).
    async fn open_blob(
        &self,
        key: Arc<CachedKey>,
        version: KeyVersionId,
        ciphertext_blob: Vec<u8>,
        context: EncryptionContext,
    ) -> Result<SecretBytes, DomainError> {
        let vault = Arc::clone(&self.vault);
        let inline = quick(&key, &version);
        compute(inline, move || {
            let parsed = CiphertextBlob::parse(&ciphertext_blob)?;
            let material = key.material(&vault, &version)?;
            let aad = blob::aad(&parsed.header(), &context.canonical_bytes());
            vault.unseal(
                key.entry.protection,
                &material,
                &parsed.iv,
                &aad,
                parsed.sealed,
            )
        })
        .await
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
        let (key, version, _) = self
            .key_of_blob(
                caller,
                &ciphertext_blob,
                Rpc::Decrypt.action(Touch::BlobKey),
                Operation::Decrypt,
            )
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
    /// `GenerateDataKey` (and, dropping the plaintext, `GenerateDataKeyWithoutPlaintext`):
    /// `rpc` names which, for the policy action.
    #[allow(clippy::too_many_arguments)]
    pub async fn generate_data_key(
        &self,
        caller: &Principal,
        rpc: Rpc,
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
            rpc.action(Touch::Key),
            Operation::GenerateDataKey,
        )?;
        if dry_run {
            return Err(DomainError::DryRunOperation);
        }
        // A data key comes from the generator of its key's protection domain: the HSM's for
        // hardware-protected keys (a PKCS#11 call, off the workers), the operating system's
        // for software-protected keys (in place).
        let plaintext = if key.entry.protection == kms_types::ProtectionLevel::Software {
            self.vault.random_soft(len)?
        } else {
            let vault = Arc::clone(&self.vault);
            kms_runtime::telemetry::spawn_blocking(move || vault.random(len))
                .await
                .map_err(join_error)??
        };
        let sealed = self
            .seal_with_primary(key, plaintext.clone(), context, BlobKind::DataKey)
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
        let (source, version, kind) = self
            .key_of_blob(
                caller,
                &ciphertext_blob,
                Rpc::ReEncrypt.action(Touch::BlobKey),
                Operation::ReEncrypt,
            )
            .await?;
        let destination = self.cache.by_ref(destination_key_id, caller).await?;
        check_symmetric_use(
            caller,
            &destination,
            Rpc::ReEncrypt.action(Touch::DestinationKey),
            Operation::ReEncrypt,
        )
        .map_err(|e| e.on("the destination key"))?;
        if dry_run {
            return Err(DomainError::DryRunOperation);
        }
        let source_key_id = source.entry.id.to_string();
        let plaintext = self
            .open_blob(source, version, ciphertext_blob, source_context)
            .await?;
        // A data key moved to another key stays a data key.
        let sealed = self
            .seal_with_primary(destination, plaintext, destination_context, kind)
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
        let bytes = kms_runtime::telemetry::spawn_blocking(move || vault.random(length as usize))
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
        kms_runtime::telemetry::spawn_blocking(move || plan.draw(|n| vault.random(n)))
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

/// The result of an asymmetric operation: the key and version used, and the output.
#[derive(Debug)]
pub struct AsymOutput<T> {
    /// Resolved key id.
    pub key_id: String,
    /// The version used.
    pub key_version_id: KeyVersionId,
    /// The output.
    pub value: T,
}

impl CryptoEngine {
    /// Resolves a key and one of its versions (the primary when `version` is empty) for an
    /// asymmetric operation, checking policy, state, usage and algorithm.
    async fn asymmetric_key(
        &self,
        caller: &Principal,
        key_id: &str,
        version: &str,
        action: &str,
        op: Operation,
        algorithm: Option<(i32, AsymmetricUse)>,
    ) -> Result<(Arc<CachedKey>, KeyVersionId, Option<Algorithm>), DomainError> {
        use kms_proto::convert::WireEnum;
        kms_types::KeyRef::parse(key_id)?;
        let wanted = if version.is_empty() {
            None
        } else {
            Some(KeyVersionId::parse(version)?)
        };
        let algorithm = match algorithm {
            Some((wire, use_)) => Some((Algorithm::from_wire(wire)?, use_)),
            None => None,
        };
        let key = self.cache.by_ref(key_id, caller).await?;
        authorize(caller, &key, action)?;
        let entry = &key.entry;
        op.check_state(entry.state)?;
        entry.check_material_live(wall_clock())?;
        if let Some((alg, use_)) = algorithm {
            crypto_rules::check_asymmetric(entry.spec, entry.usage, alg, use_)?;
        } else if entry.spec.is_symmetric() {
            return Err(DomainError::invalid(
                "KeyId",
                format!("the key is {}; it has no public key", entry.spec),
            ));
        }
        let version = wanted.unwrap_or(entry.primary_version);
        if entry.version(&version).is_none() {
            return Err(DomainError::KeyVersionNotFound);
        }
        Ok((Arc::clone(&key), version, algorithm.map(|(a, _)| a)))
    }

    /// The public key (SPKI DER) of a version.
    fn public_der(key: &CachedKey, version: &KeyVersionId) -> Result<Vec<u8>, DomainError> {
        let der = key
            .entry
            .version(version)
            .map(|v| v.public_key_der.clone())
            .unwrap_or_default();
        if der.is_empty() {
            return Err(DomainError::Internal(format!(
                "version {version} has no public key"
            )));
        }
        Ok(der)
    }

    /// `AsymmetricSign`: signs a SHA-256 digest.
    pub async fn sign(
        &self,
        caller: &Principal,
        key_id: &str,
        version: &str,
        algorithm: i32,
        digest: Vec<u8>,
        dry_run: bool,
    ) -> Result<AsymOutput<Vec<u8>>, DomainError> {
        crypto_rules::check_digest(&digest)?;
        let (key, version, alg) = self
            .asymmetric_key(
                caller,
                key_id,
                version,
                Rpc::AsymmetricSign.action(Touch::Key),
                Operation::AsymmetricSign,
                Some((algorithm, AsymmetricUse::Sign)),
            )
            .await?;
        if dry_run {
            return Err(DomainError::DryRunOperation);
        }
        let alg = alg.ok_or_else(|| DomainError::invalid("Algorithm", "algorithm is required"))?;
        let vault = Arc::clone(&self.vault);
        let key_id = key.entry.id.to_string();
        let value = kms_runtime::telemetry::spawn_blocking(move || {
            let handle = key.material(&vault, &version)?;
            vault.sign(key.entry.protection, &handle, alg, &digest)
        })
        .await
        .map_err(join_error)??;
        Ok(AsymOutput {
            key_id,
            key_version_id: version,
            value,
        })
    }

    /// `AsymmetricVerify`: checks a signature over a SHA-256 digest with the version's public key.
    #[allow(clippy::too_many_arguments)]
    pub async fn verify(
        &self,
        caller: &Principal,
        key_id: &str,
        version: &str,
        algorithm: i32,
        digest: Vec<u8>,
        signature: Vec<u8>,
        dry_run: bool,
    ) -> Result<AsymOutput<bool>, DomainError> {
        crypto_rules::check_digest(&digest)?;
        if signature.is_empty() || signature.len() > 1024 {
            return Err(DomainError::invalid(
                "Value",
                "the signature must be 1 to 1024 bytes",
            ));
        }
        let (key, version, alg) = self
            .asymmetric_key(
                caller,
                key_id,
                version,
                Rpc::AsymmetricVerify.action(Touch::Key),
                Operation::AsymmetricVerify,
                Some((algorithm, AsymmetricUse::Sign)),
            )
            .await?;
        if dry_run {
            return Err(DomainError::DryRunOperation);
        }
        let alg = alg.ok_or_else(|| DomainError::invalid("Algorithm", "algorithm is required"))?;
        let der = Self::public_der(&key, &version)?;
        let vault = Arc::clone(&self.vault);
        let value = kms_runtime::telemetry::spawn_blocking(move || {
            vault.verify(&der, alg, &digest, &signature)
        })
        .await
        .map_err(join_error)??;
        Ok(AsymOutput {
            key_id: key.entry.id.to_string(),
            key_version_id: version,
            value,
        })
    }

    /// `AsymmetricEncrypt`: RSAES-OAEP to the version's public key.
    pub async fn asym_encrypt(
        &self,
        caller: &Principal,
        key_id: &str,
        version: &str,
        algorithm: i32,
        plaintext: Vec<u8>,
        dry_run: bool,
    ) -> Result<AsymOutput<Vec<u8>>, DomainError> {
        let plaintext = SecretBytes::new(plaintext);
        let (key, version, alg) = self
            .asymmetric_key(
                caller,
                key_id,
                version,
                Rpc::AsymmetricEncrypt.action(Touch::Key),
                Operation::AsymmetricEncrypt,
                Some((algorithm, AsymmetricUse::Encrypt)),
            )
            .await?;
        let alg = alg.ok_or_else(|| DomainError::invalid("Algorithm", "algorithm is required"))?;
        crypto_rules::check_oaep_plaintext(key.entry.spec, alg, plaintext.expose())?;
        if dry_run {
            return Err(DomainError::DryRunOperation);
        }
        let der = Self::public_der(&key, &version)?;
        let vault = Arc::clone(&self.vault);
        let value = kms_runtime::telemetry::spawn_blocking(move || {
            vault.asym_encrypt(&der, alg, plaintext.expose())
        })
        .await
        .map_err(join_error)??;
        Ok(AsymOutput {
            key_id: key.entry.id.to_string(),
            key_version_id: version,
            value,
        })
    }

    /// `AsymmetricDecrypt`: RSAES-OAEP with the version's private key.
    pub async fn asym_decrypt(
        &self,
        caller: &Principal,
        key_id: &str,
        version: &str,
        algorithm: i32,
        ciphertext: Vec<u8>,
        dry_run: bool,
    ) -> Result<AsymOutput<SecretBytes>, DomainError> {
        let (key, version, alg) = self
            .asymmetric_key(
                caller,
                key_id,
                version,
                Rpc::AsymmetricDecrypt.action(Touch::Key),
                Operation::AsymmetricDecrypt,
                Some((algorithm, AsymmetricUse::Encrypt)),
            )
            .await?;
        let alg = alg.ok_or_else(|| DomainError::invalid("Algorithm", "algorithm is required"))?;
        crypto_rules::check_oaep_ciphertext(key.entry.spec, &ciphertext)?;
        if dry_run {
            return Err(DomainError::DryRunOperation);
        }
        let vault = Arc::clone(&self.vault);
        let key_id = key.entry.id.to_string();
        let value = kms_runtime::telemetry::spawn_blocking(move || {
            let handle = key.material(&vault, &version)?;
            vault.asym_decrypt(key.entry.protection, &handle, alg, &ciphertext)
        })
        .await
        .map_err(join_error)??;
        Ok(AsymOutput {
            key_id,
            key_version_id: version,
            value,
        })
    }

    /// `GetPublicKey`: the version's public key as PEM SubjectPublicKeyInfo.
    pub async fn public_key(
        &self,
        caller: &Principal,
        key_id: &str,
        version: &str,
    ) -> Result<AsymOutput<String>, DomainError> {
        let (key, version, _) = self
            .asymmetric_key(
                caller,
                key_id,
                version,
                Rpc::GetPublicKey.action(Touch::Key),
                Operation::GetPublicKey,
                None,
            )
            .await?;
        let der = Self::public_der(&key, &version)?;
        Ok(AsymOutput {
            key_id: key.entry.id.to_string(),
            key_version_id: version,
            value: pem("PUBLIC KEY", &der),
        })
    }

    /// `GenerateAndExportDataKey`: a new data key sealed under the key and encrypted to the
    /// caller's RSA public key.
    #[allow(clippy::too_many_arguments)]
    pub async fn generate_and_export(
        &self,
        caller: &Principal,
        key_id: &str,
        spec: Option<DataKeySpec>,
        number_of_bytes: i32,
        context: HashMap<String, String>,
        export: ExportTo,
        dry_run: bool,
    ) -> Result<(DataKey, Vec<u8>), DomainError> {
        let len = data_key_len(spec, number_of_bytes)?;
        let context = EncryptionContext::new(context)?;
        let (algorithm, wrapping_spec) = export.check()?;
        kms_types::KeyRef::parse(key_id)?;
        let key = self.cache.by_ref(key_id, caller).await?;
        check_symmetric_use(
            caller,
            &key,
            Rpc::GenerateAndExportDataKey.action(Touch::Key),
            Operation::GenerateAndExportDataKey,
        )?;
        if dry_run {
            return Err(DomainError::DryRunOperation);
        }
        let vault = Arc::clone(&self.vault);
        let public_key = export.public_key;
        let (plaintext, exported) = kms_runtime::telemetry::spawn_blocking(move || {
            let dk = vault.random(len)?;
            let exported = vault.export_to(&public_key, algorithm, wrapping_spec, &dk)?;
            Ok::<_, DomainError>((dk, exported))
        })
        .await
        .map_err(join_error)??;
        let sealed = self
            .seal_with_primary(key, plaintext.clone(), context, BlobKind::DataKey)
            .await?;
        Ok((
            DataKey {
                key_id: sealed.key_id,
                key_version_id: sealed.key_version_id,
                blob: sealed.blob,
                plaintext,
            },
            exported,
        ))
    }

    /// `ExportDataKey`: opens a sealed data key and encrypts it to the caller's RSA public key.
    pub async fn export_data_key(
        &self,
        caller: &Principal,
        ciphertext_blob: Vec<u8>,
        context: HashMap<String, String>,
        export: ExportTo,
        dry_run: bool,
    ) -> Result<AsymOutput<Vec<u8>>, DomainError> {
        let context = EncryptionContext::new(context)?;
        let (algorithm, wrapping_spec) = export.check()?;
        if CiphertextBlob::parse(&ciphertext_blob)?.kind != BlobKind::DataKey {
            return Err(DomainError::invalid(
                "CiphertextBlob",
                "the ciphertext blob holds no data key: ExportDataKey takes a blob returned by \
                 GenerateDataKey, GenerateDataKeyWithoutPlaintext or GenerateAndExportDataKey",
            ));
        }
        let (key, version, _) = self
            .key_of_blob(
                caller,
                &ciphertext_blob,
                Rpc::ExportDataKey.action(Touch::BlobKey),
                Operation::ExportDataKey,
            )
            .await?;
        if dry_run {
            return Err(DomainError::DryRunOperation);
        }
        let key_id = key.entry.id.to_string();
        let dk = self
            .open_blob(key, version, ciphertext_blob, context)
            .await?;
        let vault = Arc::clone(&self.vault);
        let public_key = export.public_key;
        let value = kms_runtime::telemetry::spawn_blocking(move || {
            vault.export_to(&public_key, algorithm, wrapping_spec, &dk)
        })
        .await
        .map_err(join_error)??;
        Ok(AsymOutput {
            key_id,
            key_version_id: version,
            value,
        })
    }
}

/// Where an exported data key goes: the caller's RSA public key and how to wrap for it.
#[derive(Debug, Clone)]
pub struct ExportTo {
    /// DER or PEM SubjectPublicKeyInfo.
    pub public_key: Vec<u8>,
    /// Wire value of the wrapping algorithm.
    pub wrapping_algorithm: i32,
    /// Wire value of the wrapping key spec.
    pub wrapping_key_spec: i32,
}

impl ExportTo {
    fn check(&self) -> Result<(Algorithm, KeySpec), DomainError> {
        use kms_proto::convert::WireEnum;
        if self.public_key.is_empty() || self.public_key.len() > 8192 {
            return Err(DomainError::invalid(
                "PublicKey",
                "public_key must be 1 to 8192 bytes of DER or PEM",
            ));
        }
        let algorithm = Algorithm::from_wire(self.wrapping_algorithm).map_err(|_| {
            DomainError::invalid("WrappingAlgorithm", "wrapping_algorithm is required")
        })?;
        let spec = KeySpec::from_wire(self.wrapping_key_spec).map_err(|_| {
            DomainError::invalid("WrappingKeySpec", "wrapping_key_spec is required")
        })?;
        crypto_rules::check_export_wrapping(algorithm, spec)?;
        Ok((algorithm, spec))
    }
}

/// PEM text: base64 in 64-character lines between BEGIN and END markers.
pub fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
