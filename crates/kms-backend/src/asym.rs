//! The asymmetric-encryption family's shared rules: RSAES-OAEP with SHA-256 or SHA-1 (MGF1
//! with the same hash, empty label), and which algorithm fits which key spec.

use kms_types::{Algorithm, KeySpec};

use crate::BackendError;

/// The hash of an RSAES-OAEP algorithm (MGF1 uses the same hash; the label is empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OaepHash {
    /// SHA-256 (`RSAES_OAEP_SHA_256`).
    Sha256,
    /// SHA-1 (`RSAES_OAEP_SHA_1`).
    Sha1,
}

impl OaepHash {
    /// The OAEP hash of `algorithm`, if it is an RSAES-OAEP algorithm.
    pub fn of(algorithm: Algorithm) -> Option<OaepHash> {
        match algorithm {
            Algorithm::RsaesOaepSha256 => Some(OaepHash::Sha256),
            Algorithm::RsaesOaepSha1 => Some(OaepHash::Sha1),
            _ => None,
        }
    }

    /// Digest length in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            OaepHash::Sha256 => 32,
            OaepHash::Sha1 => 20,
        }
    }

    /// Longest plaintext that fits a modulus of `modulus_len` bytes: `k - 2 hLen - 2`.
    pub fn max_plaintext_len(self, modulus_len: usize) -> usize {
        modulus_len.saturating_sub(2 * self.digest_len() + 2)
    }
}

/// Whether `algorithm` encrypts with keys of `spec`.
pub fn encryption_algorithm_fits(spec: KeySpec, algorithm: Algorithm) -> bool {
    OaepHash::of(algorithm).is_some()
        && matches!(spec, KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096)
}

/// The OAEP hash for a request, after checking that the algorithm fits the key.
pub fn check_encryption_request(
    spec: KeySpec,
    algorithm: Algorithm,
) -> Result<OaepHash, BackendError> {
    match OaepHash::of(algorithm) {
        Some(hash) if encryption_algorithm_fits(spec, algorithm) => Ok(hash),
        _ => Err(BackendError::InvalidInput(
            "encryption algorithm does not fit the key spec",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oaep_fits_rsa_only() {
        assert_eq!(
            check_encryption_request(KeySpec::Rsa2048, Algorithm::RsaesOaepSha1).ok(),
            Some(OaepHash::Sha1)
        );
        assert!(check_encryption_request(KeySpec::EcP256, Algorithm::RsaesOaepSha256).is_err());
        assert!(check_encryption_request(KeySpec::Rsa2048, Algorithm::RsaPssSha256).is_err());
        assert!(
            check_encryption_request(KeySpec::Rsa2048, Algorithm::RsaAesKeyWrapSha256).is_err()
        );
        assert_eq!(OaepHash::Sha256.max_plaintext_len(256), 190);
        assert_eq!(OaepHash::Sha1.max_plaintext_len(256), 214);
    }
}
