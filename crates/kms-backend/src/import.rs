//! Imported key material (bring your own key): the `RSA_AES_KEY_WRAP_SHA_256` layout, AES key
//! wrap with padding (RFC 5649) on the host, and the keyed digest that recognises the same
//! material when it is imported again.
//!
//! - AES material arrives RSAES-OAEP-encrypted (SHA-256 or SHA-1) to the import key; the
//!   backends' [`crate::Backend::asym_decrypt`] opens it.
//! - Private keys arrive as `OAEP-SHA-256(import key, ephemeral AES-256 key) ‖
//!   AES-KWP(ephemeral key, PKCS#8 DER)`, the layout of PKCS#11's `CKM_RSA_AES_KEY_WRAP`
//!   and of OpenSSL's `-id-aes256-wrap-pad`. [`split_rsa_aes_key_wrap`] cuts it,
//!   [`aes_kwp_unwrap`] opens the second part into zeroizing memory.
//! - [`material_digest`] is HMAC-SHA-256 under a secret derived from the root key, over the
//!   key id, the spec and a canonical form of the material, so the control plane can compare
//!   two imports without ever holding anything a guess of the material could be checked
//!   against.

use aes_kw::KwpAes256;
use aes_kw::cipher::KeyInit;
use hmac::{Hmac, Mac};
use kms_types::KeySpec;
use sha2::Sha256;

use crate::{BackendError, SecretBytes};

/// Spec of every import key.
pub const IMPORT_KEY_SPEC: KeySpec = KeySpec::Rsa2048;
/// Length of an RSAES-OAEP ciphertext under an import key, in bytes.
pub const IMPORT_CIPHERTEXT_LEN: usize = 256;
/// Length of the ephemeral AES key of `RSA_AES_KEY_WRAP_SHA_256`, in bytes (AES-256).
pub const EPHEMERAL_KEY_LEN: usize = 32;
/// AES-KWP output is at least two semiblocks.
const MIN_KWP_LEN: usize = 16;
/// Domain separation of the material digest.
const DIGEST_LABEL: &[u8] = b"kms-import-digest-v1\0";

/// Cuts `RSA_AES_KEY_WRAP_SHA_256` material into the RSA ciphertext of the ephemeral key
/// (`modulus_len` bytes) and the AES-KWP-wrapped private key.
pub fn split_rsa_aes_key_wrap(
    data: &[u8],
    modulus_len: usize,
) -> Result<(&[u8], &[u8]), BackendError> {
    if data.len() < modulus_len + MIN_KWP_LEN || !(data.len() - modulus_len).is_multiple_of(8) {
        return Err(BackendError::InvalidInput(
            "material is not an rsa ciphertext followed by an aes key wrap with padding",
        ));
    }
    Ok(data.split_at(modulus_len))
}

/// Opens AES key wrap with padding (RFC 5649) under an AES-256 key-encryption key. Anything
/// that does not unwrap (wrong key, tampered, malformed) is
/// [`BackendError::AuthenticationFailed`].
pub fn aes_kwp_unwrap(kek: &SecretBytes, wrapped: &[u8]) -> Result<SecretBytes, BackendError> {
    let cipher = kwp_cipher(kek)?;
    if wrapped.len() < MIN_KWP_LEN || !wrapped.len().is_multiple_of(8) {
        return Err(BackendError::AuthenticationFailed);
    }
    let mut out = SecretBytes::new(vec![0u8; wrapped.len() - 8]);
    let len = cipher
        .unwrap_key(wrapped, out.expose_mut())
        .map_err(|_| BackendError::AuthenticationFailed)?
        .len();
    out.truncate(len);
    Ok(out)
}

/// AES key wrap with padding (RFC 5649) under an AES-256 key-encryption key: what a caller
/// does to its private key before import (tests use it; OpenSSL's `-id-aes256-wrap-pad`
/// does the same).
pub fn aes_kwp_wrap(kek: &SecretBytes, plaintext: &[u8]) -> Result<Vec<u8>, BackendError> {
    let cipher = kwp_cipher(kek)?;
    let mut out = vec![0u8; plaintext.len().div_ceil(8) * 8 + 8];
    let len = cipher
        .wrap_key(plaintext, &mut out)
        .map_err(|_| BackendError::InvalidInput("cannot wrap this plaintext"))?
        .len();
    out.truncate(len);
    Ok(out)
}

fn kwp_cipher(kek: &SecretBytes) -> Result<KwpAes256, BackendError> {
    if kek.len() != EPHEMERAL_KEY_LEN {
        return Err(BackendError::InvalidInput(
            "the ephemeral key must be an aes-256 key",
        ));
    }
    KwpAes256::new_from_slice(kek.expose())
        .map_err(|_| BackendError::InvalidInput("the ephemeral key must be an aes-256 key"))
}

/// The keyed digest of imported material: HMAC-SHA-256 under `digest_key` (a secret derived
/// from the root key) over a label, `key_id`, `spec` and `canonical`, the material in a form
/// that does not depend on how the caller encoded it: the raw AES key, or the public key's
/// SubjectPublicKeyInfo DER for a private key (it determines the private key).
pub fn material_digest(
    digest_key: &SecretBytes,
    key_id: &str,
    spec: KeySpec,
    canonical: &[u8],
) -> Result<[u8; 32], BackendError> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(digest_key.expose())
        .map_err(|_| BackendError::Internal("digest key of an unusable length".into()))?;
    for part in [
        DIGEST_LABEL,
        key_id.as_bytes(),
        b"\0",
        spec.display_name().as_bytes(),
        b"\0",
        canonical,
    ] {
        mac.update(part);
    }
    Ok(mac.finalize().into_bytes().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kek(byte: u8) -> SecretBytes {
        SecretBytes::new(vec![byte; EPHEMERAL_KEY_LEN])
    }

    #[test]
    fn key_wrap_with_padding_round_trips_and_refuses_tampering() {
        for len in [1usize, 7, 8, 9, 32, 121, 1218] {
            let plaintext: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let wrapped = match aes_kwp_wrap(&kek(1), &plaintext) {
                Ok(w) => w,
                Err(e) => panic!("{e}"),
            };
            assert_eq!(wrapped.len() % 8, 0);
            assert_eq!(
                aes_kwp_unwrap(&kek(1), &wrapped)
                    .map(|p| p.expose().to_vec())
                    .ok(),
                Some(plaintext)
            );
            assert!(matches!(
                aes_kwp_unwrap(&kek(2), &wrapped),
                Err(BackendError::AuthenticationFailed)
            ));
            let mut tampered = wrapped.clone();
            tampered[len % wrapped.len()] ^= 0x80;
            assert!(matches!(
                aes_kwp_unwrap(&kek(1), &tampered),
                Err(BackendError::AuthenticationFailed)
            ));
            assert!(aes_kwp_unwrap(&kek(1), &wrapped[..wrapped.len() - 1]).is_err());
        }
        assert!(matches!(
            aes_kwp_unwrap(&SecretBytes::new(vec![0; 16]), &[0; 24]),
            Err(BackendError::InvalidInput(_))
        ));
    }

    #[test]
    fn rfc_5649_known_answer() {
        // RFC 5649 §6 uses a 192-bit KEK; check the crate against it through the same type
        // family, so a regression in the construction itself would show.
        use aes_kw::KwpAes192;
        let kek: [u8; 24] = [
            0x58, 0x40, 0xdf, 0x6e, 0x29, 0xb0, 0x2a, 0xf1, 0xab, 0x49, 0x3b, 0x70, 0x5b, 0xf1,
            0x6e, 0xa1, 0xae, 0x83, 0x38, 0xf4, 0xdc, 0xc1, 0x76, 0xa8,
        ];
        let key: [u8; 20] = [
            0xc3, 0x7b, 0x7e, 0x64, 0x92, 0x58, 0x43, 0x40, 0xbe, 0xd1, 0x22, 0x07, 0x80, 0x89,
            0x41, 0x15, 0x50, 0x68, 0xf7, 0x38,
        ];
        let expected: [u8; 32] = [
            0x13, 0x8b, 0xde, 0xaa, 0x9b, 0x8f, 0xa7, 0xfc, 0x61, 0xf9, 0x77, 0x42, 0xe7, 0x22,
            0x48, 0xee, 0x5a, 0xe6, 0xae, 0x53, 0x60, 0xd1, 0xae, 0x6a, 0x5f, 0x54, 0xf3, 0x73,
            0xfa, 0x54, 0x3b, 0x6a,
        ];
        let cipher = match KwpAes192::new_from_slice(&kek) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        let mut out = [0u8; 32];
        assert_eq!(cipher.wrap_key(&key, &mut out).ok(), Some(&expected[..]));
    }

    #[test]
    fn splitting_needs_both_parts() {
        let data = vec![0u8; IMPORT_CIPHERTEXT_LEN + 24];
        let (rsa, kwp) = match split_rsa_aes_key_wrap(&data, IMPORT_CIPHERTEXT_LEN) {
            Ok(parts) => parts,
            Err(e) => panic!("{e}"),
        };
        assert_eq!((rsa.len(), kwp.len()), (IMPORT_CIPHERTEXT_LEN, 24));
        for len in [0, 255, 256, 256 + 8, 256 + 17] {
            assert!(
                split_rsa_aes_key_wrap(&vec![0; len], IMPORT_CIPHERTEXT_LEN).is_err(),
                "{len}"
            );
        }
    }

    #[test]
    fn digests_are_keyed_and_bound() {
        let key = SecretBytes::new(vec![9; 32]);
        let d = |k: &SecretBytes, id: &str, spec, m: &[u8]| match material_digest(k, id, spec, m) {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        };
        let base = d(&key, "key-a", KeySpec::AliyunAes256, b"material");
        assert_eq!(base, d(&key, "key-a", KeySpec::AliyunAes256, b"material"));
        assert_ne!(
            base,
            d(
                &SecretBytes::new(vec![8; 32]),
                "key-a",
                KeySpec::AliyunAes256,
                b"material"
            )
        );
        assert_ne!(base, d(&key, "key-b", KeySpec::AliyunAes256, b"material"));
        assert_ne!(base, d(&key, "key-a", KeySpec::AliyunAes128, b"material"));
        assert_ne!(base, d(&key, "key-a", KeySpec::AliyunAes256, b"materia1"));
        use sha2::Digest;
        assert_ne!(&base[..], &Sha256::digest(b"material")[..]);
    }
}
