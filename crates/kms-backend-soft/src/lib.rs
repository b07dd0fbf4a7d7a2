//! The software backend: keys computed in process with `ring` (and, for the asymmetric specs,
//! `rsa` and `k256`). Key material arrives and leaves only as [`SecretBytes`].

mod encrypt;

use kms_backend::{Backend, BackendError, Capabilities, GCM_IV_LEN, GeneratedKey, SecretBytes};
use kms_types::KeySpec;
use ring::rand::{SecureRandom, SystemRandom};

/// Software-protected keys, computed in process.
#[derive(Debug)]
pub struct SoftBackend {
    rng: SystemRandom,
}

impl Default for SoftBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl SoftBackend {
    /// A backend drawing randomness from the operating system.
    pub fn new() -> Self {
        Self {
            rng: SystemRandom::new(),
        }
    }
}

impl Backend for SoftBackend {
    fn name(&self) -> &'static str {
        "software"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            key_specs: vec![KeySpec::AliyunAes256, KeySpec::AliyunAes128],
            aead: true,
            random: true,
        }
    }

    fn generate(&self, spec: KeySpec) -> Result<GeneratedKey, BackendError> {
        let len = match spec {
            KeySpec::AliyunAes256 | KeySpec::AliyunAes128 => spec.symmetric_key_len(),
            _ => None,
        }
        .ok_or(BackendError::NotSupported(
            "software generation of this key spec",
        ))?;
        let mut material = SecretBytes::new(vec![0u8; len]);
        self.fill_random(material.expose_mut())?;
        Ok(GeneratedKey {
            material,
            public_key_der: Vec::new(),
        })
    }

    fn aead_seal(
        &self,
        key: &SecretBytes,
        iv: &[u8; GCM_IV_LEN],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, BackendError> {
        encrypt::seal(key, iv, aad, plaintext)
    }

    fn aead_open(
        &self,
        key: &SecretBytes,
        iv: &[u8; GCM_IV_LEN],
        aad: &[u8],
        ciphertext_and_tag: &[u8],
    ) -> Result<SecretBytes, BackendError> {
        encrypt::open(key, iv, aad, ciphertext_and_tag)
    }

    fn fill_random(&self, out: &mut [u8]) -> Result<(), BackendError> {
        self.rng
            .fill(out)
            .map_err(|_| BackendError::Unavailable("system random generator failed".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conformance() {
        let b = SoftBackend::new();
        kms_backend::conformance::check_aead(&b);
        kms_backend::conformance::check_randomness(&b);
    }

    #[test]
    fn refuses_specs_it_does_not_do() {
        let b = SoftBackend::new();
        assert!(matches!(
            b.generate(KeySpec::AliyunAes192),
            Err(BackendError::NotSupported(_))
        ));
    }
}
