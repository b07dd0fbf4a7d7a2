//! AES-GCM with `ring`, for 128- and 256-bit keys (`ring` has no AES-192, so software keys
//! are never AES-192).

use kms_backend::{BackendError, GCM_IV_LEN, SecretBytes};
use ring::aead::{AES_128_GCM, AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

fn key(material: &SecretBytes) -> Result<LessSafeKey, BackendError> {
    let alg = match material.len() {
        32 => &AES_256_GCM,
        16 => &AES_128_GCM,
        _ => return Err(BackendError::InvalidInput("AES key must be 16 or 32 bytes")),
    };
    UnboundKey::new(alg, material.expose())
        .map(LessSafeKey::new)
        .map_err(|_| BackendError::InvalidInput("AES key rejected"))
}

pub(crate) fn seal(
    material: &SecretBytes,
    iv: &[u8; GCM_IV_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, BackendError> {
    let key = key(material)?;
    let mut out = plaintext.to_vec();
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key(*iv), Aad::from(aad), &mut out)
        .map_err(|_| BackendError::Internal("AES-GCM seal failed".into()))?;
    Ok(out)
}

pub(crate) fn open(
    material: &SecretBytes,
    iv: &[u8; GCM_IV_LEN],
    aad: &[u8],
    ciphertext_and_tag: &[u8],
) -> Result<SecretBytes, BackendError> {
    let key = key(material)?;
    let mut buf = SecretBytes::copy_from(ciphertext_and_tag);
    let len = key
        .open_in_place(
            Nonce::assume_unique_for_key(*iv),
            Aad::from(aad),
            buf.expose_mut(),
        )
        .map_err(|_| BackendError::AuthenticationFailed)?
        .len();
    buf.truncate(len);
    Ok(buf)
}
