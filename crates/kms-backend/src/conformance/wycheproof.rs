//! Wycheproof vectors against a backend's verification, OAEP decryption and AES-GCM paths.
//!
//! Our operations take what the API takes, so vectors are adapted, never bent: signatures are
//! verified over `SHA-256(msg)` (the API takes digests), public keys go in as the vector's
//! SPKI, private keys and AES keys enter through [`import`] (host backends load them, device
//! backends import them into the device). Vectors the API cannot express are skipped and
//! counted: OAEP with a non-empty label (the API's label is empty), OAEP groups of other
//! hashes or key sizes, AES-GCM with IVs other than 96 bits.
//!
//! Decisions on vectors that are neither valid nor invalid ("acceptable"):
//! - RSA PKCS#1 v1.5 `MissingNull` (a `DigestInfo` without the NULL parameters): refused. We
//!   compare against the one DER encoding with NULL, as RFC 8017 §9.2 specifies.
//! - OAEP "acceptable" vectors all carry a label, so they are skipped with the labelled ones.
//! - No other group used here has acceptable vectors; any new one fails the run until
//!   someone decides.

use std::fmt;

use kms_types::{Algorithm, KeySpec};
use sha2::{Digest, Sha256};
use wycheproof::{HashFunction, Mgf, TestResult};

use crate::{
    Backend, BackendError, GCM_IV_LEN, KeyHandle, KeyResidence, PublicKeyRef, SecretBytes,
};

/// How many vectors of one group ran, by expected result, and how many were skipped.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    /// Vectors expected to pass that passed.
    pub valid: usize,
    /// Vectors expected to fail that failed.
    pub invalid: usize,
    /// "Acceptable" vectors, handled as documented above.
    pub acceptable: usize,
    /// Vectors the API cannot express.
    pub skipped: usize,
}

impl Counts {
    /// Vectors that ran.
    pub fn ran(&self) -> usize {
        self.valid + self.invalid + self.acceptable
    }

    fn record(&mut self, result: TestResult) {
        match result {
            TestResult::Valid => self.valid += 1,
            TestResult::Invalid => self.invalid += 1,
            TestResult::Acceptable => self.acceptable += 1,
        }
    }
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ran ({} valid, {} invalid, {} acceptable), {} skipped",
            self.ran(),
            self.valid,
            self.invalid,
            self.acceptable,
            self.skipped
        )
    }
}

/// A handle for outside material of `spec` in `backend`: [`Backend::load`] for host
/// backends, [`Backend::import_sealed`] then [`Backend::load_sealed`] for device backends.
pub fn import(
    backend: &dyn Backend,
    spec: KeySpec,
    material: &SecretBytes,
) -> Result<KeyHandle, BackendError> {
    match backend.capabilities().residence {
        KeyResidence::Host => backend.load(spec, material),
        KeyResidence::Device => {
            let sealed = backend.import_sealed(spec, b"wycheproof", material)?;
            backend.load_sealed(spec, b"wycheproof", &sealed.sealed)
        }
    }
}

fn digest(msg: &[u8]) -> [u8; 32] {
    Sha256::digest(msg).into()
}

/// Checks one verification outcome against the vector's expectation.
fn expect_verify(
    what: &str,
    tc_id: usize,
    result: TestResult,
    outcome: Result<bool, BackendError>,
    counts: &mut Counts,
) {
    // A bad signature is `Ok(false)`, never an error (the API answers false).
    let verified = match outcome {
        Ok(verified) => verified,
        Err(e) => panic!("{what} tc {tc_id}: verification failed with an error: {e}"),
    };
    match result {
        TestResult::Valid => assert!(verified, "{what} tc {tc_id}: valid signature refused"),
        // Documented decision: acceptable vectors (MissingNull) must not verify.
        TestResult::Invalid | TestResult::Acceptable => {
            assert!(
                !verified,
                "{what} tc {tc_id}: {result:?} signature accepted"
            )
        }
    }
    counts.record(result);
}

/// ECDSA-SHA-256 verification on P-256 and secp256k1 (ASN.1 DER signatures).
pub fn ecdsa(backend: &dyn Backend) -> Vec<(String, Counts)> {
    use wycheproof::ecdsa::{TestName, TestSet};
    let mut out = Vec::new();
    for (name, test) in [
        ("ecdsa p-256 sha-256", TestName::EcdsaSecp256r1Sha256),
        ("ecdsa secp256k1 sha-256", TestName::EcdsaSecp256k1Sha256),
    ] {
        let set = match TestSet::load(test) {
            Ok(s) => s,
            Err(e) => panic!("{name}: {e}"),
        };
        let mut counts = Counts::default();
        for group in &set.test_groups {
            assert_eq!(group.hash, HashFunction::Sha2_256, "{name}: group hash");
            for t in &group.tests {
                let outcome = backend.verify(
                    PublicKeyRef::Spki(&group.der),
                    Algorithm::EcdsaSha256,
                    &digest(&t.msg),
                    &t.sig,
                );
                expect_verify(name, t.tc_id, t.result, outcome, &mut counts);
            }
        }
        out.push((name.to_owned(), counts));
    }
    out
}

/// RSASSA-PKCS1-v1_5 with SHA-256, 2048/3072/4096-bit keys.
pub fn rsa_pkcs1(backend: &dyn Backend) -> Vec<(String, Counts)> {
    use wycheproof::rsa_pkcs1_verify::{TestName, TestSet};
    let mut out = Vec::new();
    for (name, test) in [
        ("rsa pkcs#1 v1.5 2048 sha-256", TestName::Rsa2048Sha256),
        ("rsa pkcs#1 v1.5 3072 sha-256", TestName::Rsa3072Sha256),
        ("rsa pkcs#1 v1.5 4096 sha-256", TestName::Rsa4096Sha256),
    ] {
        let set = match TestSet::load(test) {
            Ok(s) => s,
            Err(e) => panic!("{name}: {e}"),
        };
        let mut counts = Counts::default();
        for group in &set.test_groups {
            assert_eq!(group.hash, HashFunction::Sha2_256, "{name}: group hash");
            for t in &group.tests {
                let outcome = backend.verify(
                    PublicKeyRef::Spki(&group.der),
                    Algorithm::RsaPkcs1Sha256,
                    &digest(&t.msg),
                    &t.sig,
                );
                expect_verify(name, t.tc_id, t.result, outcome, &mut counts);
            }
        }
        out.push((name.to_owned(), counts));
    }
    out
}

/// RSASSA-PSS with SHA-256, MGF1-SHA-256, salt 32, 2048/3072/4096-bit keys.
pub fn rsa_pss(backend: &dyn Backend) -> Vec<(String, Counts)> {
    use wycheproof::rsa_pss_verify::{TestName, TestSet};
    let mut out = Vec::new();
    for (name, test) in [
        (
            "rsa pss 2048 sha-256 salt 32",
            TestName::RsaPss2048Sha256Mgf1SaltLen32,
        ),
        (
            "rsa pss 3072 sha-256 salt 32",
            TestName::RsaPss3072Sha256Mgf1SaltLen32,
        ),
        (
            "rsa pss 4096 sha-256 salt 32",
            TestName::RsaPss4096Sha256Mgf1SaltLen32,
        ),
    ] {
        let set = match TestSet::load(test) {
            Ok(s) => s,
            Err(e) => panic!("{name}: {e}"),
        };
        let mut counts = Counts::default();
        for group in &set.test_groups {
            let ours = group.hash == HashFunction::Sha2_256
                && group.mgf == Mgf::Mgf1
                && group.mgf_hash == Some(HashFunction::Sha2_256)
                && group.salt_size == crate::sign::PSS_SALT_LEN;
            if !ours {
                counts.skipped += group.tests.len();
                continue;
            }
            for t in &group.tests {
                let outcome = backend.verify(
                    PublicKeyRef::Spki(&group.der),
                    Algorithm::RsaPssSha256,
                    &digest(&t.msg),
                    &t.sig,
                );
                expect_verify(name, t.tc_id, t.result, outcome, &mut counts);
            }
        }
        out.push((name.to_owned(), counts));
    }
    out
}

/// RSAES-OAEP decryption, SHA-256/MGF1-SHA-256 and SHA-1/MGF1-SHA-1, empty label, with the
/// vector's private key imported into the backend.
pub fn rsa_oaep(backend: &dyn Backend) -> Vec<(String, Counts)> {
    use wycheproof::rsa_oaep::{TestName, TestSet};
    let mut out = Vec::new();
    for (name, test) in [
        ("rsa oaep 2048 sha-256", TestName::Rsa2048Sha256Mgf1Sha256),
        ("rsa oaep 3072 sha-256", TestName::Rsa3072Sha256Mgf1Sha256),
        ("rsa oaep 4096 sha-256", TestName::Rsa4096Sha256Mgf1Sha256),
        ("rsa oaep 2048 sha-1", TestName::Rsa2048Sha1Mgf1Sha1),
        ("rsa oaep misc", TestName::RsaMisc),
    ] {
        let set = match TestSet::load(test) {
            Ok(s) => s,
            Err(e) => panic!("{name}: {e}"),
        };
        let mut counts = Counts::default();
        for group in &set.test_groups {
            let algorithm = match (group.hash, group.mgf, group.mgf_hash) {
                (HashFunction::Sha2_256, Mgf::Mgf1, HashFunction::Sha2_256) => {
                    Algorithm::RsaesOaepSha256
                }
                (HashFunction::Sha1, Mgf::Mgf1, HashFunction::Sha1) => Algorithm::RsaesOaepSha1,
                _ => {
                    counts.skipped += group.tests.len();
                    continue;
                }
            };
            let spec = match group.key_size {
                2048 => KeySpec::Rsa2048,
                3072 => KeySpec::Rsa3072,
                4096 => KeySpec::Rsa4096,
                _ => {
                    counts.skipped += group.tests.len();
                    continue;
                }
            };
            let key = match import(backend, spec, &SecretBytes::copy_from(&group.pkcs8)) {
                Ok(k) => k,
                Err(e) => panic!("{name}: importing the {spec} key: {e}"),
            };
            for t in &group.tests {
                if !t.label.is_empty() {
                    counts.skipped += 1;
                    continue;
                }
                let outcome = backend.asym_decrypt(&key, algorithm, &t.ct);
                match t.result {
                    TestResult::Valid => match outcome {
                        Ok(pt) => assert_eq!(pt.expose(), &t.pt[..], "{name} tc {}", t.tc_id),
                        Err(e) => panic!("{name} tc {}: valid ciphertext refused: {e}", t.tc_id),
                    },
                    TestResult::Invalid => assert!(
                        matches!(outcome, Err(BackendError::AuthenticationFailed)),
                        "{name} tc {}: invalid ciphertext not refused as such: {outcome:?}",
                        t.tc_id
                    ),
                    TestResult::Acceptable => {
                        panic!("{name} tc {}: undecided acceptable vector", t.tc_id)
                    }
                }
                counts.record(t.result);
            }
            let _ = backend.unload(key);
        }
        out.push((name.to_owned(), counts));
    }
    out
}

/// AES-GCM decryption (and encryption of the valid vectors) with 128- and 256-bit keys, and
/// 192-bit keys if the backend offers them; 96-bit IVs and 128-bit tags.
pub fn aes_gcm(backend: &dyn Backend) -> Vec<(String, Counts)> {
    use wycheproof::aead::{TestName, TestSet};
    let name = "aes-gcm";
    let set = match TestSet::load(TestName::AesGcm) {
        Ok(s) => s,
        Err(e) => panic!("{name}: {e}"),
    };
    let caps = backend.capabilities();
    let mut by_size: Vec<(usize, Counts)> = vec![
        (128, Counts::default()),
        (192, Counts::default()),
        (256, Counts::default()),
    ];
    for group in &set.test_groups {
        let spec = match group.key_size {
            128 => KeySpec::AliyunAes128,
            192 => KeySpec::AliyunAes192,
            256 => KeySpec::AliyunAes256,
            _ => continue,
        };
        let Some((_, counts)) = by_size.iter_mut().find(|(size, _)| *size == group.key_size) else {
            continue;
        };
        if !caps.offers(spec) || group.nonce_size != GCM_IV_LEN * 8 || group.tag_size != 128 {
            counts.skipped += group.tests.len();
            continue;
        }
        for t in &group.tests {
            let Ok(iv) = <[u8; GCM_IV_LEN]>::try_from(&t.nonce[..]) else {
                panic!("{name} tc {}: iv size", t.tc_id);
            };
            let key = match import(backend, spec, &SecretBytes::copy_from(&t.key)) {
                Ok(k) => k,
                Err(e) => panic!("{name} tc {}: importing the key: {e}", t.tc_id),
            };
            let sealed = [&t.ct[..], &t.tag[..]].concat();
            let outcome = backend.aead_decrypt(&key, &iv, &t.aad, &sealed);
            match t.result {
                TestResult::Valid => {
                    match outcome {
                        Ok(pt) => assert_eq!(pt.expose(), &t.pt[..], "{name} tc {}", t.tc_id),
                        Err(e) => panic!("{name} tc {}: valid vector refused: {e}", t.tc_id),
                    }
                    match backend.aead_encrypt(&key, &iv, &t.aad, &t.pt) {
                        Ok(ct) => assert_eq!(ct, sealed, "{name} tc {}: encryption", t.tc_id),
                        Err(e) => panic!("{name} tc {}: encryption failed: {e}", t.tc_id),
                    }
                }
                TestResult::Invalid => assert!(
                    outcome.is_err(),
                    "{name} tc {}: invalid vector accepted",
                    t.tc_id
                ),
                TestResult::Acceptable => {
                    panic!("{name} tc {}: undecided acceptable vector", t.tc_id)
                }
            }
            counts.record(t.result);
            let _ = backend.unload(key);
        }
    }
    by_size
        .into_iter()
        .filter(|(size, _)| {
            let spec = match size {
                128 => KeySpec::AliyunAes128,
                192 => KeySpec::AliyunAes192,
                _ => KeySpec::AliyunAes256,
            };
            caps.offers(spec)
        })
        .map(|(size, counts)| (format!("{name} {size}"), counts))
        .collect()
}

/// Runs every group the backend's capabilities cover, prints the counts per group, and
/// checks that each group ran vectors. Returns the counts for the caller to report.
pub fn run_all(backend: &dyn Backend) -> Vec<(String, Counts)> {
    let caps = backend.capabilities();
    let mut all = Vec::new();
    if caps.sign_algorithms.contains(&Algorithm::EcdsaSha256) {
        all.extend(ecdsa(backend));
    }
    if caps.sign_algorithms.contains(&Algorithm::RsaPkcs1Sha256) {
        all.extend(rsa_pkcs1(backend));
    }
    if caps.sign_algorithms.contains(&Algorithm::RsaPssSha256) {
        all.extend(rsa_pss(backend));
    }
    if !caps.encryption_algorithms.is_empty() {
        all.extend(rsa_oaep(backend));
    }
    if caps.aead {
        all.extend(aes_gcm(backend));
    }
    for (group, counts) in &all {
        println!("wycheproof {} {group}: {counts}", backend.name());
        assert!(counts.ran() > 0, "wycheproof {group}: no vector ran");
        assert!(counts.valid > 0, "wycheproof {group}: no valid vector ran");
    }
    assert!(!all.is_empty(), "no wycheproof group ran");
    all
}
