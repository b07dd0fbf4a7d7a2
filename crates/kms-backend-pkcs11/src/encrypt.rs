//! AES-GCM with HSM-resident AES keys (`CKM_AES_GCM`, 128/192/256-bit keys, 96-bit IV,
//! 128-bit tag).

use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::types::Ulong;
use kms_backend::{BackendError, GCM_IV_LEN, GCM_TAG_LEN, SecretBytes};

use crate::Hsm;
use crate::keys::HsmKey;

fn check_aes(key: &HsmKey) -> Result<(), BackendError> {
    if key.spec().is_symmetric() {
        Ok(())
    } else {
        Err(BackendError::InvalidInput("not an aes key"))
    }
}

pub(crate) fn seal(
    hsm: &Hsm,
    key: &HsmKey,
    iv: &[u8; GCM_IV_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, BackendError> {
    check_aes(key)?;
    let sealed = hsm.run_with_key(key, |session, objects| {
        let mut iv = *iv;
        let params = GcmParams::new(&mut iv, aad, Ulong::try_from(GCM_TAG_LEN * 8)?)?;
        session.encrypt(&Mechanism::AesGcm(params), objects.key, plaintext)
    })?;
    if sealed.len() != plaintext.len() + GCM_TAG_LEN {
        return Err(BackendError::Internal(
            "aes-gcm output of an unexpected length".into(),
        ));
    }
    Ok(sealed)
}

pub(crate) fn open(
    hsm: &Hsm,
    key: &HsmKey,
    iv: &[u8; GCM_IV_LEN],
    aad: &[u8],
    ciphertext_and_tag: &[u8],
) -> Result<SecretBytes, BackendError> {
    check_aes(key)?;
    if ciphertext_and_tag.len() < GCM_TAG_LEN {
        return Err(BackendError::AuthenticationFailed);
    }
    hsm.run_with_key(key, |session, objects| {
        let mut iv = *iv;
        let params = GcmParams::new(&mut iv, aad, Ulong::try_from(GCM_TAG_LEN * 8)?)?;
        session
            .decrypt(&Mechanism::AesGcm(params), objects.key, ciphertext_and_tag)
            .map(SecretBytes::new)
    })
}
