//! The asymmetric-encryption family's shared rules: RSAES-OAEP with SHA-256 or SHA-1 (MGF1
//! with the same hash, empty label), which algorithm fits which key spec, and the OAEP
//! encoding itself (RFC 8017 §7.1) for backends that compute raw RSA: the PKCS#11 backend
//! (SoftHSM2 has no OAEP with SHA-256) and the software backend (the `rsa` crate's decoder
//! ignores the leading octet, which RFC 8017 requires to be zero).

use kms_types::{Algorithm, KeySpec};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};
use zeroize::Zeroizing;

use crate::{BackendError, SecretBytes};

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

fn hash_empty(hash: OaepHash) -> Vec<u8> {
    match hash {
        OaepHash::Sha256 => Sha256::digest(b"").to_vec(),
        OaepHash::Sha1 => Sha1::digest(b"").to_vec(),
    }
}

/// `out ^= MGF1(seed, out.len())` with the OAEP hash.
fn mgf1_xor(hash: OaepHash, seed: &[u8], out: &mut [u8]) {
    let chunk = hash.digest_len();
    for (counter, block) in out.chunks_mut(chunk).enumerate() {
        let counter = u32::try_from(counter).unwrap_or(u32::MAX).to_be_bytes();
        let mask: Zeroizing<Vec<u8>> = Zeroizing::new(match hash {
            OaepHash::Sha256 => Sha256::new()
                .chain_update(seed)
                .chain_update(counter)
                .finalize()
                .to_vec(),
            OaepHash::Sha1 => Sha1::new()
                .chain_update(seed)
                .chain_update(counter)
                .finalize()
                .to_vec(),
        });
        for (byte, m) in block.iter_mut().zip(mask.iter()) {
            *byte ^= m;
        }
    }
}

/// EME-OAEP encoding (RFC 8017 §7.1.1 step 2) of `message` for a modulus of `modulus_len`
/// bytes, with the empty label and the caller's random `seed` (`hLen` bytes).
pub fn oaep_encode(
    hash: OaepHash,
    message: &[u8],
    modulus_len: usize,
    seed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, BackendError> {
    let h = hash.digest_len();
    if seed.len() != h {
        return Err(BackendError::Internal(
            "oaep seed of the wrong length".into(),
        ));
    }
    if modulus_len < 2 * h + 2 || message.len() > hash.max_plaintext_len(modulus_len) {
        return Err(BackendError::InvalidInput("plaintext too long for the key"));
    }
    let mut em = Zeroizing::new(vec![0u8; modulus_len]);
    let (_, rest) = em.split_at_mut(1);
    let (masked_seed, db) = rest.split_at_mut(h);
    let db_len = db.len();
    db[..h].copy_from_slice(&hash_empty(hash));
    db[db_len - message.len() - 1] = 0x01;
    db[db_len - message.len()..].copy_from_slice(message);
    masked_seed.copy_from_slice(seed);
    mgf1_xor(hash, masked_seed, db);
    mgf1_xor(hash, db, masked_seed);
    Ok(em)
}

/// EME-OAEP decoding (RFC 8017 §7.1.2 step 3) of the encoded message `em` (exactly the
/// modulus length, leading zeros included), empty label. It runs in time independent of
/// where or whether the padding is wrong (the leading octet, the label hash, the zero run
/// and the `01` separator are all checked with constant-time operations, and every check
/// runs), and every failure is the same [`BackendError::AuthenticationFailed`]. `em` is
/// unmasked in place; the caller zeroizes it.
pub fn oaep_decode(hash: OaepHash, em: &mut [u8]) -> Result<SecretBytes, BackendError> {
    let h = hash.digest_len();
    if em.len() < 2 * h + 2 {
        return Err(BackendError::AuthenticationFailed);
    }
    let (y, rest) = em.split_at_mut(1);
    let (seed, db) = rest.split_at_mut(h);
    mgf1_xor(hash, db, seed);
    mgf1_xor(hash, seed, db);
    let mut good = y[0].ct_eq(&0u8) & db[..h].ct_eq(&hash_empty(hash));
    let mut looking = Choice::from(1u8);
    let mut separator = 0u32;
    let mut nonzero_before_separator = Choice::from(0u8);
    for (i, byte) in db[h..].iter().enumerate() {
        let i = u32::try_from(i).unwrap_or(u32::MAX);
        let is_one = byte.ct_eq(&1u8);
        let is_zero = byte.ct_eq(&0u8);
        separator.conditional_assign(&i, looking & is_one);
        nonzero_before_separator |= looking & !is_zero & !is_one;
        looking &= !is_one;
    }
    good &= !looking & !nonzero_before_separator;
    if bool::from(good) {
        let start = h + usize::try_from(separator).unwrap_or(usize::MAX) + 1;
        Ok(SecretBytes::copy_from(db.get(start..).unwrap_or_default()))
    } else {
        Err(BackendError::AuthenticationFailed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(hash: OaepHash, em: &[u8]) -> Result<SecretBytes, BackendError> {
        oaep_decode(hash, &mut em.to_vec())
    }

    #[test]
    fn oaep_round_trips_and_refuses_bad_padding() {
        for hash in [OaepHash::Sha256, OaepHash::Sha1] {
            let h = hash.digest_len();
            let seed = vec![0x3c; h];
            let longest = vec![0xee; hash.max_plaintext_len(256)];
            for message in [&b""[..], b"m", &longest[..]] {
                let em = match oaep_encode(hash, message, 256, &seed) {
                    Ok(em) => em,
                    Err(e) => panic!("{e}"),
                };
                assert_eq!(em[0], 0);
                assert_eq!(
                    decode(hash, &em).map(|m| m.expose().to_vec()).ok(),
                    Some(message.to_vec())
                );
                // Any single damaged octet is refused: the leading octet, the masked seed,
                // the label hash, the zero run, the separator.
                for index in [0, 1, h, h + 1, 2 * h, 2 * h + 1, 255 - message.len()] {
                    let mut damaged = em.to_vec();
                    damaged[index] ^= 0x01;
                    assert!(
                        matches!(
                            decode(hash, &damaged),
                            Err(BackendError::AuthenticationFailed)
                        ),
                        "{hash:?} len {} index {index}",
                        message.len()
                    );
                }
                let other = match hash {
                    OaepHash::Sha256 => OaepHash::Sha1,
                    OaepHash::Sha1 => OaepHash::Sha256,
                };
                assert!(decode(other, &em).is_err());
            }
            let too_long = vec![0; hash.max_plaintext_len(256) + 1];
            assert!(oaep_encode(hash, &too_long, 256, &seed).is_err());
            assert!(oaep_encode(hash, b"x", 256, &seed[1..]).is_err());
            assert!(decode(hash, &[0; 10]).is_err());
            assert!(decode(hash, &[0; 256]).is_err());
        }
    }

    #[test]
    fn oaep_decodes_what_the_rsa_crate_encrypts() {
        use rsa::traits::PublicKeyParts;
        // The rsa crate's OAEP encryption and our decoding must agree.
        let key = match rsa::PrivateKey::new(&mut rsa_rng(), 1024) {
            Ok(k) => k,
            Err(e) => panic!("{e}"),
        };
        let public = key.to_public_key();
        for (hash, ct) in [
            (
                OaepHash::Sha256,
                public.encrypt(&mut rsa_rng(), rsa::Oaep::<Sha256>::new(), b"agree"),
            ),
            (
                OaepHash::Sha1,
                public.encrypt(&mut rsa_rng(), rsa::Oaep::<Sha1>::new(), b"agree"),
            ),
        ] {
            let Ok(ct) = ct else { panic!("encrypt") };
            let bits = public.n_bits_precision();
            let Ok(c) = rsa::BoxedUint::from_be_slice(&ct, bits) else {
                panic!("ciphertext")
            };
            let Ok(m) = rsa::hazmat::rsa_decrypt_and_check(&key, Some(&mut rsa_rng()), &c) else {
                panic!("raw decrypt")
            };
            let mut em = m.to_be_bytes().to_vec();
            assert_eq!(em.len(), public.size());
            assert_eq!(
                oaep_decode(hash, &mut em).map(|m| m.expose().to_vec()).ok(),
                Some(b"agree".to_vec())
            );
        }
    }

    /// A deterministic generator is enough for a test of encodings.
    fn rsa_rng() -> impl rsa::rand_core::CryptoRng {
        struct Counter(u64);
        impl rsa::rand_core::TryRng for Counter {
            type Error = std::convert::Infallible;
            fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
                Ok(self.try_next_u64()? as u32)
            }
            fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
                self.0 = self
                    .0
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                Ok(self.0)
            }
            fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
                for chunk in dst.chunks_mut(8) {
                    let v = self.try_next_u64()?.to_le_bytes();
                    chunk.copy_from_slice(&v[..chunk.len()]);
                }
                Ok(())
            }
        }
        impl rsa::rand_core::TryCryptoRng for Counter {}
        Counter(42)
    }

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
