//! RSAES-OAEP (SHA-256 or SHA-1, MGF1 with the same hash, empty label): encryption to a
//! public key with `rsa` 0.10, decryption with `rsa`'s blinded raw private-key operation and
//! the shared constant-time decoder ([`kms_backend::asym::oaep_decode`]), and wrapping bytes
//! to a caller's RSA public key for `ExportDataKey`.

use kms_backend::asym::{OaepHash, check_encryption_request, oaep_decode};
use kms_backend::{BackendError, PublicKeyInfo, PublicKeyRef, SecretBytes};
use kms_types::{Algorithm, KeySpec};
use ring::rand::SystemRandom;
use rsa::Oaep;
use rsa::traits::PublicKeyParts;
use sha1::Sha1;
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

use crate::keys::SoftKey;
use crate::rng::SysRng;
use crate::sign::{SoftPublic, public_of};

pub(crate) fn encrypt(
    rng: &SystemRandom,
    key: PublicKeyRef<'_>,
    algorithm: Algorithm,
    plaintext: &[u8],
) -> Result<Vec<u8>, BackendError> {
    let (spec, public) = public_of(key)?;
    let hash = check_encryption_request(spec, algorithm)?;
    let SoftPublic::Rsa(public) = public else {
        return Err(BackendError::InvalidInput(
            "encryption algorithm does not fit the key spec",
        ));
    };
    encrypt_with(rng, &public, hash, plaintext)
}

fn encrypt_with(
    rng: &SystemRandom,
    public: &rsa::PublicKey,
    hash: OaepHash,
    plaintext: &[u8],
) -> Result<Vec<u8>, BackendError> {
    if plaintext.len() > hash.max_plaintext_len(public.size()) {
        return Err(BackendError::InvalidInput("plaintext too long for the key"));
    }
    let mut rng = SysRng(rng);
    match hash {
        OaepHash::Sha256 => public.encrypt(&mut rng, Oaep::<Sha256>::new(), plaintext),
        OaepHash::Sha1 => public.encrypt(&mut rng, Oaep::<Sha1>::new(), plaintext),
    }
    .map_err(|_| BackendError::Internal("oaep encryption failed".into()))
}

pub(crate) fn decrypt(
    rng: &SystemRandom,
    key: &SoftKey,
    spec: KeySpec,
    algorithm: Algorithm,
    ciphertext: &[u8],
) -> Result<SecretBytes, BackendError> {
    let hash = check_encryption_request(spec, algorithm)?;
    let SoftKey::Rsa { key, .. } = key else {
        return Err(BackendError::InvalidInput(
            "encryption algorithm does not fit the key spec",
        ));
    };
    // Raw RSA with rsa's blinded, checked private-key operation, then our constant-time OAEP
    // decoding (rsa's own decoder ignores the leading octet). Every failure is the same
    // error: no padding oracle.
    let k = key.size();
    if ciphertext.len() != k {
        return Err(BackendError::AuthenticationFailed);
    }
    let c = rsa::BoxedUint::from_be_slice(ciphertext, key.n_bits_precision())
        .map_err(|_| BackendError::AuthenticationFailed)?;
    let mut m = rsa::hazmat::rsa_decrypt_and_check(key.as_ref(), Some(&mut SysRng(rng)), &c)
        .map_err(|_| BackendError::AuthenticationFailed)?;
    let mut em = Zeroizing::new(m.to_be_bytes().into_vec());
    m.zeroize();
    // The precision may exceed the modulus length; the extra leading octets are zero.
    let extra = em.len().saturating_sub(k);
    oaep_decode(hash, &mut em[extra..])
}

/// Encrypts `plaintext` to a caller-supplied RSA public key with RSAES-OAEP, as
/// `ExportDataKey` and `GenerateAndExportDataKey` do.
///
/// `public_key` is a SubjectPublicKeyInfo, DER or PEM (`-----BEGIN PUBLIC KEY-----`);
/// `wrapping_algorithm` is `RSAES_OAEP_SHA_256` or `RSAES_OAEP_SHA_1`; the key must be of
/// `wrapping_key_spec` (the API allows `RSA_2048` only, other RSA specs work here too).
/// Malformed keys, other algorithms and size mismatches are [`BackendError::InvalidInput`]
/// or [`BackendError::NotSupported`].
pub fn encrypt_to_public_key(
    public_key: &[u8],
    wrapping_algorithm: Algorithm,
    wrapping_key_spec: KeySpec,
    plaintext: &SecretBytes,
) -> Result<Vec<u8>, BackendError> {
    let der = spki_der_from_der_or_pem(public_key)?;
    let info = PublicKeyInfo::from_spki_der(&der)?;
    if info.spec() != wrapping_key_spec {
        return Err(BackendError::InvalidInput(
            "public key does not match the wrapping key spec",
        ));
    }
    let hash = check_encryption_request(info.spec(), wrapping_algorithm)?;
    let public = <rsa::PublicKey as rsa::pkcs8::DecodePublicKey>::from_public_key_der(&der)
        .map_err(|_| BackendError::InvalidInput("rsa public key rejected"))?;
    encrypt_with(&SystemRandom::new(), &public, hash, plaintext.expose())
}

/// The DER of a SubjectPublicKeyInfo given as DER or as PEM with the `PUBLIC KEY` label.
fn spki_der_from_der_or_pem(public_key: &[u8]) -> Result<Vec<u8>, BackendError> {
    let trimmed = public_key.trim_ascii_start();
    if !trimmed.starts_with(b"-----BEGIN") {
        return Ok(public_key.to_vec());
    }
    let text = std::str::from_utf8(trimmed)
        .map_err(|_| BackendError::InvalidInput("pem public key is not utf-8"))?;
    let (label, document) = spki::Document::from_pem(text.trim_end())
        .map_err(|_| BackendError::InvalidInput("pem public key does not parse"))?;
    if label != "PUBLIC KEY" {
        return Err(BackendError::InvalidInput(
            "pem public key must be labelled PUBLIC KEY",
        ));
    }
    Ok(document.as_bytes().to_vec())
}
