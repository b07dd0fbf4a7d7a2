//! Secrets derived from the root key inside the HSM, for values every data-plane replica that
//! shares the root key must compute alike and that nobody may store (the key of the imported
//! material digest).
//!
//! The derivation is AES-256 under the root key (`CKM_AES_ECB`, the block cipher used as a
//! pseudorandom function) of two blocks made from a label:
//! `block_i = SHA-256("kms-root-derive-v1\0" ‖ label)[..15] ‖ i` for `i` in 1, 2; the output is
//! the 32 bytes of both, in zeroizing memory. Nothing else encrypts such blocks under the root
//! key: AES-GCM encrypts `IV ‖ counter` with random 96-bit IVs and the all-zero block, and key
//! wrap encrypts blocks led by its running integrity value, so a collision is as likely as
//! guessing a random IV.

use cryptoki::mechanism::Mechanism;
use kms_backend::{BackendError, SecretBytes};
use sha2::{Digest, Sha256};

use crate::Hsm;

const LABEL_PREFIX: &[u8] = b"kms-root-derive-v1\0";
/// Length of a derived secret in bytes.
const DERIVED_LEN: usize = 32;

/// The two input blocks for `label`.
fn input_blocks(label: &[u8]) -> [u8; DERIVED_LEN] {
    let digest = Sha256::new()
        .chain_update(LABEL_PREFIX)
        .chain_update(label)
        .finalize();
    let mut blocks = [0u8; DERIVED_LEN];
    for (i, block) in blocks.chunks_mut(16).enumerate() {
        block[..15].copy_from_slice(&digest[..15]);
        block[15] = u8::try_from(i + 1).unwrap_or(u8::MAX);
    }
    blocks
}

impl Hsm {
    /// 32 secret bytes derived from the root key for `label`: the same for the same label
    /// under the same root key, unrelated otherwise. The root key itself never leaves the HSM.
    pub fn derive_secret(&self, label: &[u8]) -> Result<SecretBytes, BackendError> {
        let input = input_blocks(label);
        let out = SecretBytes::new(
            self.run(|session, root_key| session.encrypt(&Mechanism::AesEcb, root_key, &input))?,
        );
        if out.len() != DERIVED_LEN {
            return Err(BackendError::Internal(format!(
                "aes-ecb gave {} bytes for {DERIVED_LEN}",
                out.len()
            )));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_differ_by_label_and_counter() {
        let a = input_blocks(b"import-digest");
        assert_eq!(a[..15], a[16..31]);
        assert_eq!((a[15], a[31]), (1, 2));
        assert_ne!(a, input_blocks(b"import-digesT"));
        assert_ne!(a[..16], [0u8; 16], "never the all-zero block gcm encrypts");
    }
}
