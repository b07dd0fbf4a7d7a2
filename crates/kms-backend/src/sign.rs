//! The signing family's shared rules: which algorithm fits which key spec, the digest input,
//! and the ECDSA signature encoding every backend produces (DER, low-S) and accepts.

use kms_types::{Algorithm, KeySpec};

use crate::BackendError;

/// Length of the SHA-256 digest every signing algorithm here takes as input.
pub const SHA256_LEN: usize = 32;

/// PSS salt length for `RSA_PSS_SHA_256` (the digest length), MGF1 with SHA-256.
pub const PSS_SALT_LEN: usize = 32;

/// DER `DigestInfo` for SHA-256 up to the digest: RSASSA-PKCS1-v1_5 signs
/// `SHA256_DIGEST_INFO_PREFIX ‖ digest`.
pub const SHA256_DIGEST_INFO_PREFIX: &[u8] = &[
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0x04, 0x20,
];

/// Whether `algorithm` signs with keys of `spec`.
pub fn sign_algorithm_fits(spec: KeySpec, algorithm: Algorithm) -> bool {
    match algorithm {
        Algorithm::RsaPssSha256 | Algorithm::RsaPkcs1Sha256 => {
            matches!(spec, KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096)
        }
        Algorithm::EcdsaSha256 => matches!(spec, KeySpec::EcP256 | KeySpec::EcP256K),
        Algorithm::RsaesOaepSha256 | Algorithm::RsaesOaepSha1 | Algorithm::RsaAesKeyWrapSha256 => {
            false
        }
    }
}

/// Refuses a signing request whose algorithm does not fit the key or whose digest is not a
/// SHA-256 digest.
pub fn check_sign_request(
    spec: KeySpec,
    algorithm: Algorithm,
    digest: &[u8],
) -> Result<(), BackendError> {
    if !sign_algorithm_fits(spec, algorithm) {
        return Err(BackendError::InvalidInput(
            "signing algorithm does not fit the key spec",
        ));
    }
    if digest.len() != SHA256_LEN {
        return Err(BackendError::InvalidInput(
            "digest must be 32 bytes (sha-256)",
        ));
    }
    Ok(())
}

/// Encodes a raw `r ‖ s` ECDSA signature (as PKCS#11's `CKM_ECDSA` returns it) as DER with
/// `s` normalised to the lower half of the group order.
pub fn ecdsa_der_low_s(spec: KeySpec, raw: &[u8]) -> Result<Vec<u8>, BackendError> {
    let bad = |_| BackendError::Internal("ecdsa signature out of range".into());
    match spec {
        KeySpec::EcP256 => {
            let sig = p256::ecdsa::Signature::from_slice(raw).map_err(bad)?;
            Ok(sig.normalize_s().to_der().as_bytes().to_vec())
        }
        KeySpec::EcP256K => {
            let sig = k256::ecdsa::Signature::from_slice(raw).map_err(bad)?;
            Ok(sig.normalize_s().to_der().as_bytes().to_vec())
        }
        _ => Err(BackendError::InvalidInput("not an ec key spec")),
    }
}

/// Parses a DER ECDSA signature strictly (DER, not BER; `0 < r, s < n`) and returns it as raw
/// `r ‖ s` with `s` normalised to low-S, or `None` if it is malformed.
///
/// Verification accepts both `s` and `n - s`: both are valid ECDSA signatures, and some
/// signers (OpenSSL, most HSMs) do not normalise. `k256` refuses high-S by default, so every
/// verifier here normalises first.
pub fn ecdsa_raw_low_s(spec: KeySpec, der: &[u8]) -> Option<[u8; 2 * SHA256_LEN]> {
    let bytes = match spec {
        KeySpec::EcP256 => p256::ecdsa::Signature::from_der(der)
            .ok()?
            .normalize_s()
            .to_bytes()
            .to_vec(),
        KeySpec::EcP256K => k256::ecdsa::Signature::from_der(der)
            .ok()?
            .normalize_s()
            .to_bytes()
            .to_vec(),
        _ => return None,
    };
    <[u8; 2 * SHA256_LEN]>::try_from(bytes.as_slice()).ok()
}

/// Whether `der` is a strict DER ECDSA signature whose `s` is in the lower half of the order.
pub fn ecdsa_is_low_s_der(spec: KeySpec, der: &[u8]) -> bool {
    match spec {
        KeySpec::EcP256 => p256::ecdsa::Signature::from_der(der)
            .is_ok_and(|sig| sig.normalize_s() == sig && sig.to_der().as_bytes() == der),
        KeySpec::EcP256K => k256::ecdsa::Signature::from_der(der)
            .is_ok_and(|sig| sig.normalize_s() == sig && sig.to_der().as_bytes() == der),
        _ => false,
    }
}

/// The same signature with `s` replaced by `n - s` (DER). For tests of high-S acceptance.
pub fn ecdsa_flip_s(spec: KeySpec, der: &[u8]) -> Option<Vec<u8>> {
    match spec {
        KeySpec::EcP256 => {
            let (r, s) = p256::ecdsa::Signature::from_der(der).ok()?.split_scalars();
            p256::ecdsa::Signature::from_scalars(r.to_bytes(), (-*s).to_bytes())
                .ok()
                .map(|f| f.to_der().as_bytes().to_vec())
        }
        KeySpec::EcP256K => {
            let (r, s) = k256::ecdsa::Signature::from_der(der).ok()?.split_scalars();
            k256::ecdsa::Signature::from_scalars(r.to_bytes(), (-*s).to_bytes())
                .ok()
                .map(|f| f.to_der().as_bytes().to_vec())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithms_fit_their_specs() {
        let cases = [
            (KeySpec::Rsa2048, Algorithm::RsaPssSha256, true),
            (KeySpec::Rsa4096, Algorithm::RsaPkcs1Sha256, true),
            (KeySpec::Rsa3072, Algorithm::EcdsaSha256, false),
            (KeySpec::EcP256, Algorithm::EcdsaSha256, true),
            (KeySpec::EcP256K, Algorithm::EcdsaSha256, true),
            (KeySpec::EcP256, Algorithm::RsaPssSha256, false),
            (KeySpec::Rsa2048, Algorithm::RsaesOaepSha256, false),
            (KeySpec::AliyunAes256, Algorithm::EcdsaSha256, false),
        ];
        for (spec, algorithm, fits) in cases {
            assert_eq!(
                sign_algorithm_fits(spec, algorithm),
                fits,
                "{spec} {algorithm}"
            );
        }
        assert!(check_sign_request(KeySpec::EcP256, Algorithm::EcdsaSha256, &[0; 32]).is_ok());
        assert!(check_sign_request(KeySpec::EcP256, Algorithm::EcdsaSha256, &[0; 31]).is_err());
        assert!(check_sign_request(KeySpec::EcP256, Algorithm::RsaPssSha256, &[0; 32]).is_err());
    }

    #[test]
    fn ecdsa_encoding_normalises_s() {
        // r = 1, s = n - 1 (high) on P-256.
        let mut raw = [0u8; 64];
        raw[31] = 1;
        let n_minus_1 = [
            0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2,
            0xfc, 0x63, 0x25, 0x50,
        ];
        raw[32..].copy_from_slice(&n_minus_1);
        let der = match ecdsa_der_low_s(KeySpec::EcP256, &raw) {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        };
        // s became 1.
        assert_eq!(der, [0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01]);
        assert!(ecdsa_is_low_s_der(KeySpec::EcP256, &der));
        let high = match ecdsa_flip_s(KeySpec::EcP256, &der) {
            Some(h) => h,
            None => panic!("flip failed"),
        };
        assert!(!ecdsa_is_low_s_der(KeySpec::EcP256, &high));
        let mut expected = [0u8; 64];
        expected[31] = 1;
        expected[63] = 1;
        assert_eq!(ecdsa_raw_low_s(KeySpec::EcP256, &high), Some(expected));
        assert_eq!(ecdsa_raw_low_s(KeySpec::EcP256, &der), Some(expected));
        // BER-style long length and r = 0 are refused.
        assert!(ecdsa_raw_low_s(KeySpec::EcP256, &[0x30, 0x81, 0x06, 2, 1, 1, 2, 1, 1]).is_none());
        assert!(ecdsa_raw_low_s(KeySpec::EcP256, &[0x30, 0x06, 2, 1, 0, 2, 1, 1]).is_none());
        assert!(ecdsa_der_low_s(KeySpec::EcP256, &[0u8; 64]).is_err());
    }
}
