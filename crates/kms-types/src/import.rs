//! Bring your own key (origin External): which wrapping fits which key, the import token and
//! its checks, and what importing, deleting and expiring material does to a key.
//!
//! - `GetParametersForImport` issues a token bound to one key, one wrapping algorithm and a
//!   fresh RSA_2048 import key, valid [`IMPORT_TOKEN_VALID_MS`].
//! - `ImportKeyMaterial` spends the token (one successful import per token; a refused import
//!   leaves it unspent) and moves the key from `PendingImport` to `Enabled`. The first import
//!   fixes a keyed digest of the material; every later import must bring the same material.
//! - `DeleteKeyMaterial`, or the material's expiry time passing, removes the material at once:
//!   the key returns to `PendingImport` (a key pending deletion stays so).

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::DomainError;
use crate::ids::KeyId;
use crate::key::{KeyEntry, KeyRecord, KeyVersionRecord};
use crate::spec::{Algorithm, KeyOrigin, KeySpec};
use crate::state::{KeyState, Operation};
use crate::time::{DAY_MS, UnixMillis};

/// How long an import token and its public key may be used, in milliseconds (24 hours).
pub const IMPORT_TOKEN_VALID_MS: i64 = DAY_MS;
/// How long a spent or expired token is kept after it expired, in days, so that presenting it
/// again is answered precisely rather than as an unknown token.
pub const IMPORT_TOKEN_RETENTION_DAYS: i64 = 30;
/// Longest `encrypted_key_material`, in bytes (an RSA_4096 PKCS#8 wrapped as
/// `RSA_AES_KEY_WRAP_SHA_256` is about 2.7 KiB).
pub const MAX_ENCRYPTED_MATERIAL: usize = 8192;

/// Why an import is refused, beyond field validation and key states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportRejection {
    /// The token's 24 hours have passed.
    ExpiredToken,
    /// The token was already spent by a successful import.
    UsedToken,
    /// The token was issued for another key.
    TokenForAnotherKey,
    /// The key held other material before: a re-import must bring the same material.
    DifferentMaterial,
}

impl ImportRejection {
    /// The stable reason code.
    pub fn reason_code(self) -> &'static str {
        match self {
            Self::ExpiredToken => "Rejected.ExpiredImportToken",
            Self::UsedToken => "Rejected.UsedImportToken",
            Self::TokenForAnotherKey => "InvalidParameter.ImportTokenKeyMismatch",
            Self::DifferentMaterial => "InvalidParameter.KeyMaterialMismatch",
        }
    }

    /// Whether the refusal is about the token's state (time passed, already spent) rather
    /// than an argument that can never be right for this key.
    pub fn is_state(self) -> bool {
        match self {
            Self::ExpiredToken | Self::UsedToken => true,
            Self::TokenForAnotherKey | Self::DifferentMaterial => false,
        }
    }
}

impl fmt::Display for ImportRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ExpiredToken => {
                "the import token has expired; call GetParametersForImport for a new one"
            }
            Self::UsedToken => {
                "the import token was already used; call GetParametersForImport for a new one"
            }
            Self::TokenForAnotherKey => "the import token was issued for another key",
            Self::DifferentMaterial => {
                "the key material differs from the material this key held before; a key only \
                 ever takes the same material again"
            }
        })
    }
}

/// Checks the wrapping a caller asks for: an RSA_2048 import key, RSAES-OAEP (SHA-256 or
/// SHA-1) for AES material, `RSA_AES_KEY_WRAP_SHA_256` for private keys. PKCS#1 v1.5 is not
/// offered (it is refused by having no wire value).
pub fn check_wrapping(
    spec: KeySpec,
    algorithm: Algorithm,
    wrapping_key_spec: KeySpec,
) -> Result<(), DomainError> {
    if wrapping_key_spec != KeySpec::Rsa2048 {
        return Err(DomainError::invalid(
            "WrappingKeySpec",
            format!("wrapping_key_spec must be RSA_2048, got {wrapping_key_spec}"),
        ));
    }
    let fits = if spec.is_symmetric() {
        matches!(
            algorithm,
            Algorithm::RsaesOaepSha256 | Algorithm::RsaesOaepSha1
        )
    } else {
        algorithm == Algorithm::RsaAesKeyWrapSha256
    };
    if fits {
        return Ok(());
    }
    let wanted = if spec.is_symmetric() {
        "RSAES_OAEP_SHA_256 or RSAES_OAEP_SHA_1"
    } else {
        "RSA_AES_KEY_WRAP_SHA_256"
    };
    Err(DomainError::invalid(
        "WrappingAlgorithm",
        format!("material of a {spec} key is wrapped with {wanted}, not {algorithm}"),
    ))
}

/// An import token's id: `itk-` followed by 32 lowercase hex digits. It is the token string
/// handed to the caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ImportTokenId(String);

impl ImportTokenId {
    /// A fresh random token id.
    pub fn generate() -> Self {
        Self(format!("itk-{}", Uuid::new_v4().simple()))
    }

    /// Parses a token; anything else is `InvalidParameter.ImportToken`.
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        let ok = s.strip_prefix("itk-").is_some_and(|rest| {
            rest.len() == 32
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
        if ok {
            Ok(Self(s.to_string()))
        } else {
            Err(unknown_token())
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ImportTokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The answer for a token this service never issued (or forgot after its retention).
pub fn unknown_token() -> DomainError {
    DomainError::invalid(
        "ImportToken",
        "the import token is not one GetParametersForImport issued",
    )
}

/// An issued import token, as the control plane stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportTokenRecord {
    /// The token.
    pub id: ImportTokenId,
    /// The key it was issued for.
    pub key_id: KeyId,
    /// The wrapping algorithm it was issued for.
    pub wrapping_algorithm: Algorithm,
    /// The import key's spec (RSA_2048).
    pub wrapping_key_spec: KeySpec,
    /// The import private key, sealed under the HSM root key; emptied once spent.
    #[serde(with = "crate::key::b64")]
    pub sealed_import_key: Vec<u8>,
    /// When it was issued.
    pub issued: UnixMillis,
    /// When it stops being accepted.
    pub expires: UnixMillis,
    /// When a successful import spent it.
    pub used: Option<UnixMillis>,
}

impl ImportTokenRecord {
    /// A token for `key_id`, issued at `now`, valid [`IMPORT_TOKEN_VALID_MS`].
    pub fn issue(
        id: ImportTokenId,
        key_id: KeyId,
        wrapping_algorithm: Algorithm,
        wrapping_key_spec: KeySpec,
        sealed_import_key: Vec<u8>,
        now: UnixMillis,
    ) -> Self {
        Self {
            id,
            key_id,
            wrapping_algorithm,
            wrapping_key_spec,
            sealed_import_key,
            issued: now,
            expires: now.plus_millis(IMPORT_TOKEN_VALID_MS),
            used: None,
        }
    }

    /// Whether the token may import material into `key` at `now`: issued for that key, not
    /// spent, not expired (checked in this order).
    pub fn check_usable(&self, key: &KeyId, now: UnixMillis) -> Result<(), DomainError> {
        if self.key_id != *key {
            return Err(DomainError::ImportRejected(
                ImportRejection::TokenForAnotherKey,
            ));
        }
        if self.used.is_some() {
            return Err(DomainError::ImportRejected(ImportRejection::UsedToken));
        }
        if now >= self.expires {
            return Err(DomainError::ImportRejected(ImportRejection::ExpiredToken));
        }
        Ok(())
    }

    /// Marks the token spent at `now` and forgets the sealed import key.
    pub fn spend(&mut self, now: UnixMillis) {
        self.used = Some(now);
        self.sealed_import_key.clear();
    }

    /// When the record may be forgotten.
    pub fn purge_at(&self) -> UnixMillis {
        self.expires.plus_days(IMPORT_TOKEN_RETENTION_DAYS)
    }
}

/// Compares two digests without stopping at the first difference.
fn same_digest(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl KeyRecord {
    fn check_external(&self, what: &str) -> Result<(), DomainError> {
        if self.origin == KeyOrigin::External {
            Ok(())
        } else {
            Err(DomainError::invalid(
                "Origin",
                format!(
                    "{what} needs a key created with origin EXTERNAL; key {} is {}",
                    self.id,
                    self.origin.display_name()
                ),
            ))
        }
    }

    /// `GetParametersForImport`: an External key not pending deletion, and a wrapping that
    /// fits its spec.
    pub fn check_import_parameters(
        &self,
        algorithm: Algorithm,
        wrapping_key_spec: KeySpec,
    ) -> Result<(), DomainError> {
        self.check_external("GetParametersForImport")?;
        Operation::GetParametersForImport.check_state(self.state)?;
        check_wrapping(self.spec, algorithm, wrapping_key_spec)
    }

    /// Whether `ImportKeyMaterial` may run now: an External key in `PendingImport`, and an
    /// expiry time (if any) after `now`.
    pub fn check_can_import(
        &self,
        expire: Option<UnixMillis>,
        now: UnixMillis,
    ) -> Result<(), DomainError> {
        self.check_external("ImportKeyMaterial")?;
        Operation::ImportKeyMaterial.check_state(self.state)?;
        if expire.is_some_and(|at| at <= now) {
            return Err(DomainError::invalid(
                "KeyMaterialExpireTime",
                "key_material_expire_time must be in the future",
            ));
        }
        Ok(())
    }

    /// `ImportKeyMaterial`: the material (sealed, as `version` of the key's primary version
    /// id) becomes the key's only version and the key is Enabled until `expire`. `digest` is
    /// the material's keyed digest; once a key held material, only the same material is taken.
    pub fn import_material(
        &mut self,
        version: KeyVersionRecord,
        digest: &str,
        expire: Option<UnixMillis>,
        now: UnixMillis,
    ) -> Result<(), DomainError> {
        self.check_can_import(expire, now)?;
        if version.id != self.primary_version {
            return Err(DomainError::Internal(format!(
                "imported material is for version {}, the key's is {}",
                version.id, self.primary_version
            )));
        }
        if let Some(previous) = &self.material_digest
            && !same_digest(previous, digest)
        {
            return Err(DomainError::ImportRejected(
                ImportRejection::DifferentMaterial,
            ));
        }
        self.material_digest = Some(digest.to_string());
        self.versions = vec![version];
        self.state = KeyState::Enabled;
        self.material_expire = expire;
        Ok(())
    }

    /// `DeleteKeyMaterial`: an External key not pending deletion loses its material at once
    /// and waits for an import again. Without material it is left as it is.
    pub fn delete_material(&mut self) -> Result<(), DomainError> {
        self.check_external("DeleteKeyMaterial")?;
        Operation::DeleteKeyMaterial.check_state(self.state)?;
        self.clear_material();
        Ok(())
    }

    fn clear_material(&mut self) {
        self.versions.clear();
        self.material_expire = None;
        if self.state != KeyState::PendingDeletion {
            self.state = KeyState::PendingImport;
        }
    }

    /// When the key's imported material expires, while it has material.
    pub fn material_expiry(&self) -> Option<UnixMillis> {
        if self.origin == KeyOrigin::External && !self.versions.is_empty() {
            self.material_expire
        } else {
            None
        }
    }

    /// Whether the material-expiry job should remove the material at `now`.
    pub fn material_expired(&self, now: UnixMillis) -> bool {
        self.material_expiry().is_some_and(|at| at <= now)
    }

    /// Removes expired material; returns whether it did.
    pub fn expire_material(&mut self, now: UnixMillis) -> bool {
        if self.material_expired(now) {
            self.clear_material();
            true
        } else {
            false
        }
    }
}

impl KeyEntry {
    /// Whether the key's material is still live at `now`: imported material past its expiry
    /// is refused as `Rejected.PendingImport` even before the control plane removes it.
    pub fn check_material_live(&self, now: UnixMillis) -> Result<(), DomainError> {
        if self.origin == KeyOrigin::External && self.material_expire.is_some_and(|at| at <= now) {
            return Err(DomainError::InvalidState(KeyState::PendingImport));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{AccountId, KeyVersionId};
    use crate::key::KeyRecord;
    use crate::spec::{KeyUsage, ProtectionLevel};

    fn reason<T>(r: Result<T, DomainError>) -> Option<String> {
        r.err().map(|e| e.reason_code())
    }

    fn external(state: KeyState, spec: KeySpec) -> KeyRecord {
        KeyRecord {
            id: KeyId::generate(),
            account: AccountId::parse("7").unwrap_or_else(|e| panic!("{e}")),
            instance: None,
            spec,
            usage: spec.default_usage(),
            state,
            protection: ProtectionLevel::Software,
            origin: KeyOrigin::External,
            description: String::new(),
            creator: "acs:ram::7:root".into(),
            created: UnixMillis(0),
            delete_date: None,
            deletion_protection: false,
            deletion_protection_description: String::new(),
            rotation: None,
            last_rotation: None,
            primary_version: KeyVersionId::generate(),
            versions: vec![],
            aliases: vec![],
            tags: vec![],
            policy: None,
            material_expire: None,
            material_digest: None,
        }
    }

    fn version(of: &KeyRecord) -> KeyVersionRecord {
        KeyVersionRecord {
            id: of.primary_version,
            created: UnixMillis(5),
            wrapped_material: vec![7; 60],
            public_key_der: vec![],
        }
    }

    #[test]
    fn wrapping_fits_the_material() {
        use Algorithm::*;
        use KeySpec::*;
        let check = |spec, alg, wrapping_spec| reason(check_wrapping(spec, alg, wrapping_spec));
        for spec in [AliyunAes256, AliyunAes192, AliyunAes128] {
            assert_eq!(check(spec, RsaesOaepSha256, Rsa2048), None);
            assert_eq!(check(spec, RsaesOaepSha1, Rsa2048), None);
            assert_eq!(
                check(spec, RsaAesKeyWrapSha256, Rsa2048).as_deref(),
                Some("InvalidParameter.WrappingAlgorithm")
            );
        }
        for spec in [Rsa2048, Rsa3072, Rsa4096, EcP256, EcP256K] {
            assert_eq!(check(spec, RsaAesKeyWrapSha256, Rsa2048), None);
            assert_eq!(
                check(spec, RsaesOaepSha256, Rsa2048).as_deref(),
                Some("InvalidParameter.WrappingAlgorithm")
            );
        }
        assert_eq!(
            check(AliyunAes256, RsaPssSha256, Rsa2048).as_deref(),
            Some("InvalidParameter.WrappingAlgorithm")
        );
        assert_eq!(
            check(AliyunAes256, RsaesOaepSha256, Rsa3072).as_deref(),
            Some("InvalidParameter.WrappingKeySpec")
        );
    }

    #[test]
    fn token_ids_parse_strictly() {
        let id = ImportTokenId::generate();
        assert_eq!(ImportTokenId::parse(id.as_str()), Ok(id.clone()));
        for bad in [
            "",
            "itk-",
            "itk-XYZ",
            "key-0123456789abcdef0123456789abcdef",
        ] {
            assert_eq!(
                reason(ImportTokenId::parse(bad)).as_deref(),
                Some("InvalidParameter.ImportToken"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn tokens_are_bound_single_use_and_expire() {
        let key = KeyId::generate();
        let now = UnixMillis(1_000);
        let mut token = ImportTokenRecord::issue(
            ImportTokenId::generate(),
            key,
            Algorithm::RsaesOaepSha256,
            KeySpec::Rsa2048,
            vec![1, 2, 3],
            now,
        );
        assert_eq!(token.expires, now.plus_millis(DAY_MS));
        assert_eq!(token.check_usable(&key, now), Ok(()));
        assert_eq!(
            token.check_usable(&key, now.plus_millis(DAY_MS - 1)),
            Ok(())
        );
        assert_eq!(
            reason(token.check_usable(&key, now.plus_millis(DAY_MS))).as_deref(),
            Some("Rejected.ExpiredImportToken")
        );
        assert_eq!(
            reason(token.check_usable(&KeyId::generate(), now)).as_deref(),
            Some("InvalidParameter.ImportTokenKeyMismatch")
        );
        token.spend(now);
        assert!(token.sealed_import_key.is_empty());
        assert_eq!(
            reason(token.check_usable(&key, now)).as_deref(),
            Some("Rejected.UsedImportToken")
        );
        assert!(token.purge_at() > token.expires);
    }

    #[test]
    fn import_delete_expire_and_reimport() {
        let now = UnixMillis(10_000);
        let mut k = external(KeyState::PendingImport, KeySpec::AliyunAes256);
        assert_eq!(
            k.check_import_parameters(Algorithm::RsaesOaepSha1, KeySpec::Rsa2048),
            Ok(())
        );
        assert_eq!(
            reason(k.check_can_import(Some(now), now)).as_deref(),
            Some("InvalidParameter.KeyMaterialExpireTime")
        );
        let v = version(&k);
        assert_eq!(
            k.import_material(v.clone(), "aa11", Some(now.plus_days(1)), now),
            Ok(())
        );
        assert_eq!(k.state, KeyState::Enabled);
        assert_eq!(k.material_expiry(), Some(now.plus_days(1)));
        assert_eq!(
            reason(k.import_material(v.clone(), "aa11", None, now)).as_deref(),
            Some("Rejected.Enabled"),
            "an Enabled key takes no import"
        );
        assert!(!k.material_expired(now));
        assert!(!k.expire_material(now.plus_days(1).plus_millis(-1)));
        assert!(k.expire_material(now.plus_days(1)));
        assert_eq!(k.state, KeyState::PendingImport);
        assert!(k.versions.is_empty() && k.material_expire.is_none());
        assert_eq!(
            reason(k.import_material(v.clone(), "bb22", None, now)).as_deref(),
            Some("InvalidParameter.KeyMaterialMismatch")
        );
        assert_eq!(k.state, KeyState::PendingImport);
        assert_eq!(k.import_material(v.clone(), "aa11", None, now), Ok(()));
        assert_eq!(k.material_expiry(), None);
        k.disable().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(k.delete_material(), Ok(()));
        assert_eq!(k.state, KeyState::PendingImport);
        assert_eq!(k.delete_material(), Ok(()), "nothing to delete is fine");
        let other = KeyVersionRecord {
            id: KeyVersionId::generate(),
            ..v
        };
        assert!(matches!(
            k.import_material(other, "aa11", None, now),
            Err(DomainError::Internal(_))
        ));
    }

    #[test]
    fn expiry_keeps_a_pending_deletion() {
        let now = UnixMillis(10_000);
        let mut k = external(KeyState::PendingImport, KeySpec::EcP256);
        let v = version(&k);
        k.import_material(v, "cc", Some(now.plus_days(2)), now)
            .unwrap_or_else(|e| panic!("{e}"));
        k.schedule_deletion(now, 7)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(k.expire_material(now.plus_days(3)));
        assert_eq!(k.state, KeyState::PendingDeletion);
        assert_eq!(
            reason(k.delete_material()).as_deref(),
            Some("Rejected.PendingDeletion")
        );
        assert_eq!(k.cancel_deletion(), Ok(()));
        assert_eq!(k.state, KeyState::PendingImport);
    }

    #[test]
    fn generated_keys_refuse_import_operations() {
        let mut k = external(KeyState::Enabled, KeySpec::AliyunAes256);
        k.origin = KeyOrigin::Kms;
        k.versions = vec![version(&k)];
        for r in [
            k.check_import_parameters(Algorithm::RsaesOaepSha1, KeySpec::Rsa2048),
            k.check_can_import(None, UnixMillis(0)),
            k.clone().delete_material(),
        ] {
            assert_eq!(reason(r).as_deref(), Some("InvalidParameter.Origin"));
        }
        assert_eq!(k.material_expiry(), None);
        let mut rsa = external(KeyState::PendingImport, KeySpec::Rsa2048);
        rsa.usage = KeyUsage::SignVerify;
        assert_eq!(
            reason(rsa.check_import_parameters(Algorithm::RsaesOaepSha256, KeySpec::Rsa2048))
                .as_deref(),
            Some("InvalidParameter.WrappingAlgorithm")
        );
    }

    #[test]
    fn entries_refuse_expired_material() {
        let mut k = external(KeyState::Enabled, KeySpec::AliyunAes256);
        k.versions = vec![version(&k)];
        k.material_expire = Some(UnixMillis(100));
        let entry = KeyEntry::from_record(&k, None);
        assert_eq!(entry.check_material_live(UnixMillis(99)), Ok(()));
        assert_eq!(
            entry.check_material_live(UnixMillis(100)),
            Err(DomainError::InvalidState(KeyState::PendingImport))
        );
    }

    #[test]
    fn digests_compare_whole() {
        assert!(same_digest("abcd", "abcd"));
        assert!(!same_digest("abcd", "abce"));
        assert!(!same_digest("abcd", "abc"));
    }
}
