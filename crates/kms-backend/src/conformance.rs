//! A conformance suite every [`Backend`] and [`RootWrapper`] passes, run from each backend's tests.

use crate::{Backend, BackendError, GCM_IV_LEN, RootWrapper, SecretBytes};
use kms_types::KeySpec;

/// Checks generate → seal → open for every AES spec the backend claims, and that tampering
/// with the ciphertext, the IV or the AAD is refused. Panics (test failure) on a violation.
pub fn check_aead(backend: &dyn Backend) {
    let caps = backend.capabilities();
    assert!(caps.aead, "{} does not claim aead", backend.name());
    let specs: Vec<KeySpec> = caps
        .key_specs
        .iter()
        .copied()
        .filter(|s| s.is_symmetric())
        .collect();
    assert!(
        !specs.is_empty(),
        "{} claims aead but no AES spec",
        backend.name()
    );
    for spec in specs {
        let key = match backend.generate(spec) {
            Ok(k) => k,
            Err(e) => panic!("generate {spec:?}: {e}"),
        };
        assert_eq!(
            key.material.len(),
            spec.symmetric_key_len().unwrap_or(0),
            "{spec:?} key length"
        );
        assert!(key.public_key_der.is_empty());
        let iv = [7u8; GCM_IV_LEN];
        let sealed = match backend.aead_seal(&key.material, &iv, b"aad", b"hello world") {
            Ok(s) => s,
            Err(e) => panic!("seal {spec:?}: {e}"),
        };
        assert_eq!(sealed.len(), b"hello world".len() + crate::GCM_TAG_LEN);
        let opened = match backend.aead_open(&key.material, &iv, b"aad", &sealed) {
            Ok(o) => o,
            Err(e) => panic!("open {spec:?}: {e}"),
        };
        assert_eq!(opened.expose(), b"hello world");

        let mut flipped = sealed.clone();
        flipped[0] ^= 1;
        assert!(matches!(
            backend.aead_open(&key.material, &iv, b"aad", &flipped),
            Err(BackendError::AuthenticationFailed)
        ));
        assert!(matches!(
            backend.aead_open(&key.material, &iv, b"other", &sealed),
            Err(BackendError::AuthenticationFailed)
        ));
        assert!(matches!(
            backend.aead_open(&key.material, &[8u8; GCM_IV_LEN], b"aad", &sealed),
            Err(BackendError::AuthenticationFailed)
        ));
        assert!(
            backend
                .aead_open(&key.material, &iv, b"aad", &sealed[..10])
                .is_err()
        );
    }
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
