//! A conformance suite every [`Backend`] and [`RootWrapper`] passes, run from each backend's
//! tests (feature `conformance`). Every check panics (a test failure) on a violation.
//!
//! Keys are made once per backend with [`make_keys`] (RSA generation is slow) and handed to
//! the checks. Signatures are also checked with `ring`, an implementation independent of both
//! backends, wherever `ring` supports the algorithm (RSA PKCS#1 v1.5 and PSS, ECDSA P-256);
//! [`check_cross`] checks two backends against each other; [`wycheproof`] runs the
//! Wycheproof vectors.

pub mod wycheproof;

use kms_types::{Algorithm, KeySpec};
use ring::signature::{self as ring_sig, UnparsedPublicKey};
use rsa::pkcs8::DecodePrivateKey;
use sha2::{Digest, Sha256};

use crate::asym::OaepHash;
use crate::sign::{ecdsa_flip_s, ecdsa_is_low_s_der};
use crate::{
    Backend, BackendError, GCM_IV_LEN, GCM_TAG_LEN, KeyHandle, KeyResidence, PublicKeyInfo,
    PublicKeyRef, RootWrapper, SecretBytes,
};

/// A key made for the checks, with the public key its generation reported.
#[derive(Debug, Clone)]
pub struct TestKey {
    /// The key's spec.
    pub spec: KeySpec,
    /// The handle the backend loaded.
    pub handle: KeyHandle,
    /// SubjectPublicKeyInfo DER from generation; empty for AES.
    pub spki: Vec<u8>,
}

const SIGN_ALGORITHMS: [Algorithm; 3] = [
    Algorithm::RsaPssSha256,
    Algorithm::RsaPkcs1Sha256,
    Algorithm::EcdsaSha256,
];
const ENCRYPTION_ALGORITHMS: [Algorithm; 2] =
    [Algorithm::RsaesOaepSha256, Algorithm::RsaesOaepSha1];
const MESSAGE: &[u8] = b"the quick brown fox signs over the lazy dog";

fn ok<T>(result: Result<T, BackendError>, what: &str) -> T {
    match result {
        Ok(value) => value,
        Err(e) => panic!("{what}: {e}"),
    }
}

fn context(spec: KeySpec) -> Vec<u8> {
    format!("conformance-{spec}").into_bytes()
}

/// Makes and loads one key of every spec the backend claims, through the generate/load pair
/// its [`KeyResidence`] names, and checks the generated forms: AES material of the right
/// length, PKCS#8 for asymmetric host material, a public key that parses as SPKI of the spec
/// and matches [`Backend::public_key`], RSA moduli of the right size.
pub fn make_keys(backend: &dyn Backend) -> Vec<TestKey> {
    let caps = backend.capabilities();
    let name = backend.name();
    assert!(!caps.key_specs.is_empty(), "{name} claims no key spec");
    let mut keys = Vec::new();
    for &spec in &caps.key_specs {
        let (handle, spki) = match caps.residence {
            KeyResidence::Host => {
                let generated = ok(backend.generate(spec), &format!("{name} generate {spec}"));
                check_host_material(spec, &generated.material, &generated.public_key_der);
                let handle = ok(
                    backend.load(spec, &generated.material),
                    &format!("{name} load {spec}"),
                );
                (handle, generated.public_key_der)
            }
            KeyResidence::Device => {
                let sealed = ok(
                    backend.generate_sealed(spec, &context(spec)),
                    &format!("{name} generate_sealed {spec}"),
                );
                assert!(!sealed.sealed.is_empty(), "{name} {spec}: empty sealed key");
                let handle = ok(
                    backend.load_sealed(spec, &context(spec), &sealed.sealed),
                    &format!("{name} load_sealed {spec}"),
                );
                (handle, sealed.public_key_der)
            }
        };
        assert_eq!(handle.spec(), spec, "{name}: handle spec");
        assert_eq!(handle.backend(), name, "{name}: handle backend");
        if spec.is_symmetric() {
            assert!(spki.is_empty(), "{name} {spec}: aes key with a public key");
            assert!(
                backend.public_key(&handle).is_err(),
                "{name} {spec}: aes public key"
            );
        } else {
            let info = ok(
                PublicKeyInfo::from_spki_der(&spki),
                &format!("{name} {spec}: public key is not spki"),
            );
            assert_eq!(info.spec(), spec, "{name}: spki of the wrong spec");
            let expected_len = match spec {
                KeySpec::Rsa2048 => 256,
                KeySpec::Rsa3072 => 384,
                KeySpec::Rsa4096 => 512,
                _ => 0,
            };
            assert_eq!(
                info.rsa_modulus_len(),
                expected_len,
                "{name} {spec}: modulus"
            );
            assert_eq!(
                ok(
                    backend.public_key(&handle),
                    &format!("{name} public_key {spec}")
                ),
                spki,
                "{name} {spec}: public_key differs from the generated one"
            );
            assert_eq!(
                ok(info.to_spki_der(), "re-encoding spki"),
                spki,
                "{name} {spec}: spki is not in canonical form"
            );
        }
        keys.push(TestKey { spec, handle, spki });
    }
    keys
}

fn check_host_material(spec: KeySpec, material: &SecretBytes, spki: &[u8]) {
    match spec {
        KeySpec::AliyunAes256 | KeySpec::AliyunAes192 | KeySpec::AliyunAes128 => {
            assert_eq!(
                Some(material.len()),
                spec.symmetric_key_len(),
                "{spec} length"
            );
        }
        KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096 => {
            let key = match rsa::PrivateKey::from_pkcs8_der(material.expose()) {
                Ok(k) => k,
                Err(e) => panic!("{spec} material is not pkcs#8: {e}"),
            };
            let public = ok(
                PublicKeyInfo::from_spki_der(spki),
                "generated public key is not spki",
            );
            let crate::PublicKeyMaterial::Rsa { modulus, .. } = public.material() else {
                panic!("{spec}: public key is not rsa");
            };
            use rsa::traits::PublicKeyParts;
            assert_eq!(
                &key.n_bytes()[..],
                &modulus[..],
                "{spec}: public key mismatch"
            );
        }
        KeySpec::EcP256 => {
            assert!(
                p256::SecretKey::from_pkcs8_der(material.expose()).is_ok(),
                "{spec} material is not pkcs#8"
            );
        }
        KeySpec::EcP256K => {
            assert!(
                k256::SecretKey::from_pkcs8_der(material.expose()).is_ok(),
                "{spec} material is not pkcs#8"
            );
        }
    }
}

/// Device keys: sealed keys open only with their context and spec, and tampering is refused.
pub fn check_sealing(backend: &dyn Backend) {
    let name = backend.name();
    if backend.capabilities().residence != KeyResidence::Device {
        return;
    }
    let spec = KeySpec::AliyunAes256;
    let sealed = ok(backend.generate_sealed(spec, b"ctx-a"), "generate_sealed");
    let again = ok(backend.generate_sealed(spec, b"ctx-a"), "generate_sealed");
    assert_ne!(
        sealed.sealed, again.sealed,
        "{name}: two sealed keys are equal"
    );
    assert!(
        matches!(
            backend.load_sealed(spec, b"ctx-b", &sealed.sealed),
            Err(BackendError::AuthenticationFailed)
        ),
        "{name}: sealed key opened under another context"
    );
    assert!(
        backend
            .load_sealed(KeySpec::AliyunAes128, b"ctx-a", &sealed.sealed)
            .is_err(),
        "{name}: sealed key loaded as another spec"
    );
    for index in [0, 1, sealed.sealed.len() / 2, sealed.sealed.len() - 1] {
        let mut tampered = sealed.sealed.clone();
        tampered[index] ^= 0x01;
        assert!(
            backend.load_sealed(spec, b"ctx-a", &tampered).is_err(),
            "{name}: tampered sealed key (byte {index}) loaded"
        );
    }
    for len in [0, 1, 12, sealed.sealed.len() - 1] {
        assert!(
            backend
                .load_sealed(spec, b"ctx-a", &sealed.sealed[..len])
                .is_err(),
            "{name}: truncated sealed key loaded"
        );
    }
    let handle = ok(
        backend.load_sealed(spec, b"ctx-a", &sealed.sealed),
        "load_sealed",
    );
    let iv = [3u8; GCM_IV_LEN];
    let ct = ok(backend.aead_encrypt(&handle, &iv, b"", b"x"), "encrypt");
    // Two loads of one sealed key are the same key.
    let second = ok(
        backend.load_sealed(spec, b"ctx-a", &sealed.sealed),
        "load_sealed",
    );
    assert_eq!(
        ok(backend.aead_decrypt(&second, &iv, b"", &ct), "decrypt").expose(),
        b"x"
    );
    ok(backend.unload(second), "unload");
    assert_eq!(
        ok(
            backend.aead_decrypt(&handle, &iv, b"", &ct),
            "decrypt after unload"
        )
        .expose(),
        b"x",
        "{name}: unloading one handle broke another"
    );
}

/// AES-GCM round trips with every AES key, and refusal of tampered ciphertext, tag, IV, AAD
/// and truncations.
pub fn check_aead(backend: &dyn Backend, keys: &[TestKey]) {
    let name = backend.name();
    assert!(backend.capabilities().aead, "{name} does not claim aead");
    let aes: Vec<&TestKey> = keys.iter().filter(|k| k.spec.is_symmetric()).collect();
    assert!(!aes.is_empty(), "{name} claims aead but no AES spec");
    for key in aes {
        let spec = key.spec;
        let iv = [7u8; GCM_IV_LEN];
        for plaintext in [&b""[..], b"hello world", &[0xa5; 4096][..]] {
            let sealed = ok(
                backend.aead_encrypt(&key.handle, &iv, b"aad", plaintext),
                &format!("{name} seal {spec}"),
            );
            assert_eq!(sealed.len(), plaintext.len() + GCM_TAG_LEN);
            let opened = ok(
                backend.aead_decrypt(&key.handle, &iv, b"aad", &sealed),
                &format!("{name} open {spec}"),
            );
            assert_eq!(opened.expose(), plaintext);
        }
        let sealed = ok(
            backend.aead_encrypt(&key.handle, &iv, b"aad", b"hello world"),
            "seal",
        );
        let refused = |iv: &[u8; GCM_IV_LEN], aad: &[u8], data: &[u8], what: &str| {
            assert!(
                matches!(
                    backend.aead_decrypt(&key.handle, iv, aad, data),
                    Err(BackendError::AuthenticationFailed)
                ),
                "{name} {spec}: {what} accepted"
            );
        };
        for index in [0, sealed.len() - GCM_TAG_LEN, sealed.len() - 1] {
            let mut flipped = sealed.clone();
            flipped[index] ^= 1;
            refused(&iv, b"aad", &flipped, "flipped byte");
        }
        refused(&iv, b"other", &sealed, "other aad");
        refused(&iv, b"", &sealed, "missing aad");
        refused(&[8u8; GCM_IV_LEN], b"aad", &sealed, "other iv");
        refused(&iv, b"aad", &sealed[..sealed.len() - 1], "truncated tag");
        assert!(
            backend
                .aead_decrypt(&key.handle, &iv, b"aad", &sealed[..GCM_TAG_LEN - 1])
                .is_err(),
            "{name} {spec}: shorter than a tag accepted"
        );
        // The same key under another spec's handle is another key.
        if let Some(other) = keys
            .iter()
            .find(|k| k.spec.is_symmetric() && k.spec != spec)
        {
            assert!(
                backend
                    .aead_decrypt(&other.handle, &iv, b"aad", &sealed)
                    .is_err(),
                "{name}: another key opened the ciphertext"
            );
        }
    }
    // Asymmetric keys do not do AES-GCM.
    if let Some(rsa) = keys.iter().find(|k| !k.spec.is_symmetric()) {
        assert!(
            backend
                .aead_encrypt(&rsa.handle, &[0; GCM_IV_LEN], b"", b"x")
                .is_err()
        );
    }
}

/// Every (spec, algorithm) pair the backend claims: sign → verify (by handle and by SPKI),
/// wrong digests and damaged signatures fail, ECDSA is low-S DER and high-S is accepted, RSA
/// signatures have the modulus length, and `ring` verifies what it can.
pub fn check_sign(backend: &dyn Backend, keys: &[TestKey]) {
    let name = backend.name();
    let caps = backend.capabilities();
    let digest: [u8; 32] = Sha256::digest(MESSAGE).into();
    let other_digest: [u8; 32] = Sha256::digest(b"another message").into();
    let mut pairs = 0;
    for key in keys {
        for algorithm in SIGN_ALGORITHMS {
            let spec = key.spec;
            if !caps.can_sign(spec, algorithm) {
                assert!(
                    backend.sign(&key.handle, algorithm, &digest).is_err(),
                    "{name}: {spec} signed with {algorithm}"
                );
                continue;
            }
            pairs += 1;
            let what = format!("{name} {spec} {algorithm}");
            let signature = ok(backend.sign(&key.handle, algorithm, &digest), &what);
            let verify = |key_ref: PublicKeyRef<'_>, digest: &[u8], sig: &[u8]| {
                ok(
                    backend.verify(key_ref, algorithm, digest, sig),
                    &format!("{what} verify"),
                )
            };
            let by_handle = PublicKeyRef::Handle(&key.handle);
            let by_spki = PublicKeyRef::Spki(&key.spki);
            assert!(verify(by_handle, &digest, &signature), "{what}: by handle");
            assert!(verify(by_spki, &digest, &signature), "{what}: by spki");
            assert!(
                !verify(by_handle, &other_digest, &signature),
                "{what}: wrong digest"
            );
            assert!(
                !verify(by_spki, &other_digest, &signature),
                "{what}: wrong digest"
            );
            for index in [0, signature.len() / 2, signature.len() - 1] {
                let mut damaged = signature.clone();
                damaged[index] ^= 0x01;
                assert!(
                    !verify(by_spki, &digest, &damaged),
                    "{what}: damaged byte {index}"
                );
            }
            assert!(
                !verify(by_spki, &digest, &signature[..signature.len() - 1]),
                "{what}: cut"
            );
            assert!(!verify(by_spki, &digest, &[]), "{what}: empty signature");
            let mut extended = signature.clone();
            extended.push(0);
            assert!(
                !verify(by_spki, &digest, &extended),
                "{what}: trailing byte"
            );
            assert!(
                matches!(
                    backend.sign(&key.handle, algorithm, &digest[..31]),
                    Err(BackendError::InvalidInput(_))
                ),
                "{what}: short digest signed"
            );
            assert!(
                backend
                    .verify(by_spki, algorithm, &digest[..31], &signature)
                    .is_err(),
                "{what}: short digest verified"
            );
            match algorithm {
                Algorithm::EcdsaSha256 => {
                    assert!(
                        ecdsa_is_low_s_der(spec, &signature),
                        "{what}: not low-S DER"
                    );
                    let high = match ecdsa_flip_s(spec, &signature) {
                        Some(h) => h,
                        None => panic!("{what}: cannot negate s"),
                    };
                    assert!(verify(by_spki, &digest, &high), "{what}: high-S refused");
                    assert!(verify(by_handle, &digest, &high), "{what}: high-S refused");
                }
                Algorithm::RsaPkcs1Sha256 => {
                    let info = ok(PublicKeyInfo::from_spki_der(&key.spki), "spki");
                    assert_eq!(signature.len(), info.rsa_modulus_len(), "{what}: length");
                    let again = ok(backend.sign(&key.handle, algorithm, &digest), &what);
                    assert_eq!(again, signature, "{what}: not deterministic");
                }
                _ => {
                    let info = ok(PublicKeyInfo::from_spki_der(&key.spki), "spki");
                    assert_eq!(signature.len(), info.rsa_modulus_len(), "{what}: length");
                    let again = ok(backend.sign(&key.handle, algorithm, &digest), &what);
                    assert_ne!(again, signature, "{what}: pss salt not random");
                }
            }
            check_with_ring(&what, key, algorithm, &signature);
        }
    }
    assert!(
        pairs > 0 || caps.sign_algorithms.is_empty(),
        "{name} claims signing but signs nothing"
    );
}

/// Verifies `signature` over [`MESSAGE`] with `ring`, where `ring` has the algorithm.
fn check_with_ring(what: &str, key: &TestKey, algorithm: Algorithm, signature: &[u8]) {
    let ring_algorithm: &dyn ring_sig::VerificationAlgorithm = match (key.spec, algorithm) {
        (KeySpec::EcP256, Algorithm::EcdsaSha256) => &ring_sig::ECDSA_P256_SHA256_ASN1,
        (KeySpec::EcP256K, _) => return,
        (_, Algorithm::RsaPkcs1Sha256) => &ring_sig::RSA_PKCS1_2048_8192_SHA256,
        (_, Algorithm::RsaPssSha256) => &ring_sig::RSA_PSS_2048_8192_SHA256,
        _ => return,
    };
    let spki = match spki::SubjectPublicKeyInfoRef::try_from(key.spki.as_slice()) {
        Ok(s) => s,
        Err(e) => panic!("{what}: spki: {e}"),
    };
    let public = UnparsedPublicKey::new(ring_algorithm, spki.subject_public_key.raw_bytes());
    assert!(
        public.verify(MESSAGE, signature).is_ok(),
        "{what}: ring does not verify the signature"
    );
}

/// Every RSA key with every OAEP algorithm the backend claims: encrypt (by handle and by
/// SPKI) → decrypt, the longest plaintext fits and one byte more is refused, tampered and
/// wrong-hash ciphertexts fail without detail.
pub fn check_asym(backend: &dyn Backend, keys: &[TestKey]) {
    let name = backend.name();
    let caps = backend.capabilities();
    for key in keys {
        for algorithm in ENCRYPTION_ALGORITHMS {
            let spec = key.spec;
            if !caps.can_encrypt(spec, algorithm) {
                assert!(
                    backend
                        .asym_decrypt(&key.handle, algorithm, &[0; 256])
                        .is_err(),
                    "{name}: {spec} decrypted with {algorithm}"
                );
                continue;
            }
            let what = format!("{name} {spec} {algorithm}");
            let Some(hash) = OaepHash::of(algorithm) else {
                panic!("{what}: not oaep");
            };
            let modulus_len = ok(PublicKeyInfo::from_spki_der(&key.spki), "spki").rsa_modulus_len();
            let longest = vec![0x5a; hash.max_plaintext_len(modulus_len)];
            for plaintext in [&b""[..], b"secret data key", &longest[..]] {
                for key_ref in [
                    PublicKeyRef::Handle(&key.handle),
                    PublicKeyRef::Spki(&key.spki),
                ] {
                    let ct = ok(backend.asym_encrypt(key_ref, algorithm, plaintext), &what);
                    assert_eq!(ct.len(), modulus_len, "{what}: ciphertext length");
                    let pt = ok(backend.asym_decrypt(&key.handle, algorithm, &ct), &what);
                    assert_eq!(pt.expose(), plaintext, "{what}: round trip");
                }
            }
            let too_long = vec![0x5a; longest.len() + 1];
            assert!(
                matches!(
                    backend.asym_encrypt(PublicKeyRef::Spki(&key.spki), algorithm, &too_long),
                    Err(BackendError::InvalidInput(_))
                ),
                "{what}: too long a plaintext encrypted"
            );
            let ct = ok(
                backend.asym_encrypt(PublicKeyRef::Spki(&key.spki), algorithm, b"secret"),
                &what,
            );
            let failed = |ct: &[u8], algorithm: Algorithm, case: &str| {
                assert!(
                    matches!(
                        backend.asym_decrypt(&key.handle, algorithm, ct),
                        Err(BackendError::AuthenticationFailed)
                    ),
                    "{what}: {case} decrypted"
                );
            };
            for index in [0, ct.len() / 2, ct.len() - 1] {
                let mut tampered = ct.clone();
                tampered[index] ^= 0x01;
                failed(&tampered, algorithm, "tampered ciphertext");
            }
            failed(&ct[1..], algorithm, "short ciphertext");
            failed(&[], algorithm, "empty ciphertext");
            failed(
                &vec![0xff; modulus_len],
                algorithm,
                "ciphertext above the modulus",
            );
            let other = match algorithm {
                Algorithm::RsaesOaepSha256 => Algorithm::RsaesOaepSha1,
                _ => Algorithm::RsaesOaepSha256,
            };
            if caps.can_encrypt(spec, other) {
                failed(&ct, other, "ciphertext of the other hash");
            }
        }
    }
}

/// Keys of `a` and `b` work across the two backends: signatures from one verify in the other
/// given the SPKI, and what one encrypts to the other's public key, the other decrypts.
pub fn check_cross(a: &dyn Backend, a_keys: &[TestKey], b: &dyn Backend, b_keys: &[TestKey]) {
    for (signer, signer_keys, verifier) in [(a, a_keys, b), (b, b_keys, a)] {
        let digest: [u8; 32] = Sha256::digest(MESSAGE).into();
        let (s_caps, v_caps) = (signer.capabilities(), verifier.capabilities());
        for key in signer_keys {
            for algorithm in SIGN_ALGORITHMS {
                if !(s_caps.can_sign(key.spec, algorithm)
                    && v_caps.sign_algorithms.contains(&algorithm))
                {
                    continue;
                }
                let what = format!(
                    "{} signs, {} verifies, {} {algorithm}",
                    signer.name(),
                    verifier.name(),
                    key.spec
                );
                let sig = ok(signer.sign(&key.handle, algorithm, &digest), &what);
                let spki = PublicKeyRef::Spki(&key.spki);
                assert!(
                    ok(verifier.verify(spki, algorithm, &digest, &sig), &what),
                    "{what}"
                );
                assert!(
                    !ok(verifier.verify(spki, algorithm, &[0u8; 32], &sig), &what),
                    "{what}: wrong digest"
                );
            }
            for algorithm in ENCRYPTION_ALGORITHMS {
                if !(s_caps.can_encrypt(key.spec, algorithm)
                    && v_caps.encryption_algorithms.contains(&algorithm))
                {
                    continue;
                }
                let what = format!(
                    "{} encrypts to {}'s key, {} {algorithm}",
                    verifier.name(),
                    signer.name(),
                    key.spec
                );
                let ct = ok(
                    verifier.asym_encrypt(PublicKeyRef::Spki(&key.spki), algorithm, b"crossing"),
                    &what,
                );
                let pt = ok(signer.asym_decrypt(&key.handle, algorithm, &ct), &what);
                assert_eq!(pt.expose(), b"crossing", "{what}");
            }
        }
    }
}

/// Makes keys and runs every single-backend check; returns the keys for [`check_cross`].
pub fn run_all(backend: &dyn Backend) -> Vec<TestKey> {
    let keys = make_keys(backend);
    check_sealing(backend);
    if backend.capabilities().aead {
        check_aead(backend, &keys);
    }
    check_sign(backend, &keys);
    check_asym(backend, &keys);
    check_randomness(backend);
    keys
}

/// Checks that two generated keys differ and random output is not constant.
pub fn check_randomness(backend: &dyn Backend) {
    let mut a = [0u8; 32];
    let mut b = [0u8; 32];
    if backend.fill_random(&mut a).is_ok() {
        assert!(backend.fill_random(&mut b).is_ok());
        assert_ne!(a, b, "two random draws are equal");
    }
}

/// Checks that sealed material opens only under the same context and not after tampering.
pub fn check_root_wrapper(wrapper: &dyn RootWrapper) {
    let secret = SecretBytes::copy_from(&[0x42; 32]);
    let wrapped = match wrapper.wrap_secret(b"ctx-1", &secret) {
        Ok(w) => w,
        Err(e) => panic!("wrap: {e}"),
    };
    assert!(
        !wrapped.windows(secret.len()).any(|w| w == secret.expose()),
        "wrapped output contains the plaintext"
    );
    let opened = match wrapper.unwrap_secret(b"ctx-1", &wrapped) {
        Ok(o) => o,
        Err(e) => panic!("unwrap: {e}"),
    };
    assert_eq!(opened, secret);
    assert!(
        wrapper.unwrap_secret(b"ctx-2", &wrapped).is_err(),
        "other context accepted"
    );
    let mut tampered = wrapped.clone();
    if let Some(last) = tampered.last_mut() {
        *last ^= 0x80;
    }
    assert!(
        wrapper.unwrap_secret(b"ctx-1", &tampered).is_err(),
        "tampered blob accepted"
    );
    assert!(
        wrapper.unwrap_secret(b"ctx-1", &[]).is_err(),
        "empty blob accepted"
    );
    assert!(
        wrapper.unwrap_secret(b"ctx-1", &wrapped[..3]).is_err(),
        "short blob accepted"
    );
    let again = match wrapper.wrap_secret(b"ctx-1", &secret) {
        Ok(w) => w,
        Err(e) => panic!("wrap: {e}"),
    };
    assert_ne!(again, wrapped, "wrapping is deterministic (IV reuse)");
}
