//! The shared backend conformance suite against the software backend.

use kms_backend::conformance;
use kms_backend_soft::SoftBackend;

#[test]
fn software_backend_conforms() {
    let backend = SoftBackend::new();
    let keys = conformance::run_all(&backend);
    // A second instance is another backend object over the same implementation; its keys
    // must interoperate through public keys.
    let other = SoftBackend::new();
    conformance::check_cross(&backend, &keys, &other, &keys);
}

#[test]
fn software_backend_passes_wycheproof() {
    let groups = conformance::wycheproof::run_all(&SoftBackend::new());
    // ECDSA x2, PKCS#1 x3, PSS x3, OAEP x5, AES-GCM 128 and 256.
    assert_eq!(groups.len(), 15, "{groups:?}");
}
