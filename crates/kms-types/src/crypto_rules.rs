//! Which algorithms fit which keys, and the size limits of asymmetric requests. The data plane
//! checks these before any backend call, so software and HSM keys follow one set of rules.

use crate::error::DomainError;
use crate::spec::{Algorithm, KeySpec, KeyUsage};

/// Length of the SHA-256 digest `AsymmetricSign` and `AsymmetricVerify` take.
pub const DIGEST_LEN: usize = 32;

/// What an asymmetric request does with the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsymmetricUse {
    /// AsymmetricSign / AsymmetricVerify.
    Sign,
    /// AsymmetricEncrypt / AsymmetricDecrypt.
    Encrypt,
}

/// RSA modulus length in bytes; `None` for other specs.
pub fn rsa_modulus_len(spec: KeySpec) -> Option<usize> {
    match spec {
        KeySpec::Rsa2048 => Some(256),
        KeySpec::Rsa3072 => Some(384),
        KeySpec::Rsa4096 => Some(512),
        _ => None,
    }
}

/// Checks that the key's spec and usage fit `use_` with `algorithm`.
pub fn check_asymmetric(
    spec: KeySpec,
    usage: KeyUsage,
    algorithm: Algorithm,
    use_: AsymmetricUse,
) -> Result<(), DomainError> {
    let wanted_usage = match use_ {
        AsymmetricUse::Sign => KeyUsage::SignVerify,
        AsymmetricUse::Encrypt => KeyUsage::EncryptDecrypt,
    };
    if spec.is_symmetric() {
        return Err(DomainError::invalid(
            "KeyId",
            format!("the key is {spec}; this operation needs an asymmetric key"),
        ));
    }
    if usage != wanted_usage {
        return Err(DomainError::invalid(
            "KeyUsage",
            format!("the key's usage is {usage}; this operation needs {wanted_usage}"),
        ));
    }
    let fits = match (use_, spec) {
        (AsymmetricUse::Sign, KeySpec::EcP256 | KeySpec::EcP256K) => {
            algorithm == Algorithm::EcdsaSha256
        }
        (AsymmetricUse::Sign, _) => matches!(
            algorithm,
            Algorithm::RsaPssSha256 | Algorithm::RsaPkcs1Sha256
        ),
        (AsymmetricUse::Encrypt, _) => {
            rsa_modulus_len(spec).is_some()
                && matches!(
                    algorithm,
                    Algorithm::RsaesOaepSha256 | Algorithm::RsaesOaepSha1
                )
        }
    };
    if fits {
        Ok(())
    } else {
        Err(DomainError::invalid(
            "Algorithm",
            format!("algorithm {algorithm} does not fit a {spec} key"),
        ))
    }
}

/// Checks a digest is a SHA-256 digest's length.
pub fn check_digest(digest: &[u8]) -> Result<(), DomainError> {
    if digest.len() == DIGEST_LEN {
        Ok(())
    } else {
        Err(DomainError::invalid(
            "Digest",
            format!(
                "digest must be a {DIGEST_LEN}-byte SHA-256 digest, got {} bytes",
                digest.len()
            ),
        ))
    }
}

/// Largest plaintext RSAES-OAEP takes with this key and hash: modulus − 2·hash − 2.
pub fn max_oaep_plaintext(spec: KeySpec, algorithm: Algorithm) -> Option<usize> {
    let hash = match algorithm {
        Algorithm::RsaesOaepSha256 => 32,
        Algorithm::RsaesOaepSha1 => 20,
        _ => return None,
    };
    rsa_modulus_len(spec).map(|k| k - 2 * hash - 2)
}

/// Checks an `AsymmetricEncrypt` plaintext: 1 byte up to the OAEP limit.
pub fn check_oaep_plaintext(
    spec: KeySpec,
    algorithm: Algorithm,
    plaintext: &[u8],
) -> Result<(), DomainError> {
    let max = max_oaep_plaintext(spec, algorithm).unwrap_or(0);
    if plaintext.is_empty() || plaintext.len() > max {
        return Err(DomainError::invalid(
            "Plaintext",
            format!(
                "plaintext must be 1 to {max} bytes for {spec} with {algorithm}, got {}",
                plaintext.len()
            ),
        ));
    }
    Ok(())
}

/// Checks an `AsymmetricDecrypt` ciphertext is exactly one modulus long.
pub fn check_oaep_ciphertext(spec: KeySpec, ciphertext: &[u8]) -> Result<(), DomainError> {
    match rsa_modulus_len(spec) {
        Some(k) if ciphertext.len() == k => Ok(()),
        _ => Err(DomainError::invalid(
            "CiphertextBlob",
            format!(
                "ciphertext must be {} bytes for {spec}, got {}",
                rsa_modulus_len(spec).unwrap_or(0),
                ciphertext.len()
            ),
        )),
    }
}

/// Checks the wrapping parameters of `ExportDataKey` and `GenerateAndExportDataKey`.
pub fn check_export_wrapping(algorithm: Algorithm, key_spec: KeySpec) -> Result<(), DomainError> {
    if !matches!(
        algorithm,
        Algorithm::RsaesOaepSha256 | Algorithm::RsaesOaepSha1
    ) {
        return Err(DomainError::invalid(
            "WrappingAlgorithm",
            format!(
                "wrapping_algorithm must be RSAES_OAEP_SHA_256 or RSAES_OAEP_SHA_1, got {algorithm}"
            ),
        ));
    }
    if key_spec != KeySpec::Rsa2048 {
        return Err(DomainError::invalid(
            "WrappingKeySpec",
            format!("wrapping_key_spec must be RSA_2048, got {key_spec}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use AsymmetricUse::*;

    fn reason(r: Result<(), DomainError>) -> Option<String> {
        r.err().map(|e| e.reason_code())
    }

    #[test]
    fn algorithm_fit_table() {
        use Algorithm::*;
        use KeySpec::*;
        use KeyUsage::*;
        let cases = [
            (Rsa2048, SignVerify, RsaPssSha256, Sign, None),
            (Rsa3072, SignVerify, RsaPkcs1Sha256, Sign, None),
            (
                Rsa4096,
                SignVerify,
                EcdsaSha256,
                Sign,
                Some("InvalidParameter.Algorithm"),
            ),
            (EcP256, SignVerify, EcdsaSha256, Sign, None),
            (EcP256K, SignVerify, EcdsaSha256, Sign, None),
            (
                EcP256,
                SignVerify,
                RsaPssSha256,
                Sign,
                Some("InvalidParameter.Algorithm"),
            ),
            (Rsa2048, EncryptDecrypt, RsaesOaepSha256, Encrypt, None),
            (Rsa2048, EncryptDecrypt, RsaesOaepSha1, Encrypt, None),
            (
                Rsa2048,
                EncryptDecrypt,
                RsaPssSha256,
                Encrypt,
                Some("InvalidParameter.Algorithm"),
            ),
            (
                Rsa2048,
                EncryptDecrypt,
                RsaesOaepSha256,
                Sign,
                Some("InvalidParameter.KeyUsage"),
            ),
            (
                Rsa2048,
                SignVerify,
                RsaesOaepSha256,
                Encrypt,
                Some("InvalidParameter.KeyUsage"),
            ),
            (
                EcP256,
                SignVerify,
                RsaesOaepSha256,
                Encrypt,
                Some("InvalidParameter.KeyUsage"),
            ),
            (
                AliyunAes256,
                EncryptDecrypt,
                RsaesOaepSha256,
                Encrypt,
                Some("InvalidParameter.KeyId"),
            ),
            (
                Rsa2048,
                EncryptDecrypt,
                RsaAesKeyWrapSha256,
                Encrypt,
                Some("InvalidParameter.Algorithm"),
            ),
        ];
        for (spec, usage, alg, use_, want) in cases {
            assert_eq!(
                reason(check_asymmetric(spec, usage, alg, use_)).as_deref(),
                want,
                "{spec} {usage} {alg} {use_:?}"
            );
        }
    }

    #[test]
    fn sizes() {
        assert!(check_digest(&[0; 32]).is_ok());
        assert_eq!(
            reason(check_digest(&[0; 31])).as_deref(),
            Some("InvalidParameter.Digest")
        );
        assert_eq!(
            reason(check_digest(&[])).as_deref(),
            Some("InvalidParameter.Digest")
        );
        assert_eq!(
            max_oaep_plaintext(KeySpec::Rsa2048, Algorithm::RsaesOaepSha256),
            Some(190)
        );
        assert_eq!(
            max_oaep_plaintext(KeySpec::Rsa2048, Algorithm::RsaesOaepSha1),
            Some(214)
        );
        assert_eq!(
            max_oaep_plaintext(KeySpec::Rsa4096, Algorithm::RsaesOaepSha256),
            Some(446)
        );
        assert!(
            check_oaep_plaintext(KeySpec::Rsa2048, Algorithm::RsaesOaepSha256, &[1; 190]).is_ok()
        );
        assert!(
            check_oaep_plaintext(KeySpec::Rsa2048, Algorithm::RsaesOaepSha256, &[1; 191]).is_err()
        );
        assert!(check_oaep_plaintext(KeySpec::Rsa2048, Algorithm::RsaesOaepSha256, &[]).is_err());
        assert!(check_oaep_ciphertext(KeySpec::Rsa3072, &[0; 384]).is_ok());
        assert_eq!(
            reason(check_oaep_ciphertext(KeySpec::Rsa3072, &[0; 256])).as_deref(),
            Some("InvalidParameter.CiphertextBlob")
        );
        assert!(check_export_wrapping(Algorithm::RsaesOaepSha1, KeySpec::Rsa2048).is_ok());
        assert_eq!(
            reason(check_export_wrapping(
                Algorithm::RsaPssSha256,
                KeySpec::Rsa2048
            ))
            .as_deref(),
            Some("InvalidParameter.WrappingAlgorithm")
        );
        assert_eq!(
            reason(check_export_wrapping(
                Algorithm::RsaesOaepSha256,
                KeySpec::Rsa3072
            ))
            .as_deref(),
            Some("InvalidParameter.WrappingKeySpec")
        );
    }
}
