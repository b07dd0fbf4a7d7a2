//! The software backend: keys computed in process. AES-GCM and randomness with `ring`; RSA
//! (generation, PSS and PKCS#1 v1.5 signatures, OAEP) with `rsa` 0.10; ECDSA with `p256` and
//! `k256`. Key material arrives and leaves only as [`SecretBytes`]; parsed keys live in
//! [`KeyHandle`]s and zeroize on drop. See `docs/SECURITY.md` for why RSA private-key
//! operations use `rsa` and what that implies.
//!
//! Every call is synchronous and some are slow (RSA key generation takes seconds for 4096
//! bits): call the backend from blocking threads, never from an async worker.

mod asym;
mod encrypt;
mod keys;
mod rng;
mod sign;

pub use asym::encrypt_to_public_key;

use kms_backend::{
    Backend, BackendError, Capabilities, GCM_IV_LEN, GeneratedKey, KeyHandle, KeyResidence,
    PublicKeyRef, SecretBytes,
};
use kms_types::{Algorithm, KeySpec};
use ring::rand::{SecureRandom, SystemRandom};

use crate::keys::{BACKEND, SoftKey};

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

fn soft_key(key: &KeyHandle) -> Result<&SoftKey, BackendError> {
    key.expect_backend::<SoftKey>(BACKEND)
}

fn aes_material(key: &KeyHandle) -> Result<&SecretBytes, BackendError> {
    match soft_key(key)? {
        SoftKey::Aes(material) => Ok(material),
        _ => Err(BackendError::InvalidInput("not an aes key")),
    }
}

impl Backend for SoftBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            key_specs: vec![
                KeySpec::AliyunAes256,
                KeySpec::AliyunAes128,
                KeySpec::Rsa2048,
                KeySpec::Rsa3072,
                KeySpec::Rsa4096,
                KeySpec::EcP256,
                KeySpec::EcP256K,
            ],
            sign_algorithms: vec![
                Algorithm::RsaPssSha256,
                Algorithm::RsaPkcs1Sha256,
                Algorithm::EcdsaSha256,
            ],
            encryption_algorithms: vec![Algorithm::RsaesOaepSha256, Algorithm::RsaesOaepSha1],
            aead: true,
            random: true,
            residence: KeyResidence::Host,
        }
    }

    fn generate(&self, spec: KeySpec) -> Result<GeneratedKey, BackendError> {
        keys::generate(&self.rng, spec)
    }

    fn load(&self, spec: KeySpec, material: &SecretBytes) -> Result<KeyHandle, BackendError> {
        keys::load(spec, material)
    }

    fn public_key(&self, key: &KeyHandle) -> Result<Vec<u8>, BackendError> {
        soft_key(key)?.spki().map(<[u8]>::to_vec)
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

    fn aead_encrypt(
        &self,
        key: &KeyHandle,
        iv: &[u8; GCM_IV_LEN],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, BackendError> {
        encrypt::seal(aes_material(key)?, iv, aad, plaintext)
    }

    fn aead_decrypt(
        &self,
        key: &KeyHandle,
        iv: &[u8; GCM_IV_LEN],
        aad: &[u8],
        ciphertext_and_tag: &[u8],
    ) -> Result<SecretBytes, BackendError> {
        encrypt::open(aes_material(key)?, iv, aad, ciphertext_and_tag)
    }

    fn sign(
        &self,
        key: &KeyHandle,
        algorithm: Algorithm,
        digest: &[u8],
    ) -> Result<Vec<u8>, BackendError> {
        sign::sign(&self.rng, soft_key(key)?, key.spec(), algorithm, digest)
    }

    fn verify(
        &self,
        key: PublicKeyRef<'_>,
        algorithm: Algorithm,
        digest: &[u8],
        signature: &[u8],
    ) -> Result<bool, BackendError> {
        sign::verify(key, algorithm, digest, signature)
    }

    fn asym_encrypt(
        &self,
        key: PublicKeyRef<'_>,
        algorithm: Algorithm,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, BackendError> {
        asym::encrypt(&self.rng, key, algorithm, plaintext)
    }

    fn asym_decrypt(
        &self,
        key: &KeyHandle,
        algorithm: Algorithm,
        ciphertext: &[u8],
    ) -> Result<SecretBytes, BackendError> {
        asym::decrypt(&self.rng, soft_key(key)?, key.spec(), algorithm, ciphertext)
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
    fn refuses_specs_it_does_not_do() {
        let b = SoftBackend::new();
        assert!(matches!(
            b.generate(KeySpec::AliyunAes192),
            Err(BackendError::NotSupported(_))
        ));
        assert!(matches!(
            b.load(KeySpec::AliyunAes192, &SecretBytes::copy_from(&[0; 24])),
            Err(BackendError::NotSupported(_))
        ));
    }

    #[test]
    fn refuses_material_of_another_spec() {
        let b = SoftBackend::new();
        let aes = SecretBytes::copy_from(&[1; 32]);
        assert!(b.load(KeySpec::AliyunAes128, &aes).is_err());
        assert!(b.load(KeySpec::EcP256, &aes).is_err());
        let ec = match b.generate(KeySpec::EcP256) {
            Ok(k) => k,
            Err(e) => panic!("{e}"),
        };
        assert!(b.load(KeySpec::EcP256K, &ec.material).is_err());
        assert!(b.load(KeySpec::Rsa2048, &ec.material).is_err());
        assert!(b.load(KeySpec::EcP256, &ec.material).is_ok());
    }

    #[test]
    fn foreign_handles_are_refused() {
        let b = SoftBackend::new();
        let foreign = KeyHandle::new("pkcs11", KeySpec::AliyunAes256, 7u32);
        assert!(matches!(
            b.aead_encrypt(&foreign, &[0; GCM_IV_LEN], b"", b"x"),
            Err(BackendError::InvalidInput(_))
        ));
        assert!(matches!(
            b.sign(&foreign, Algorithm::EcdsaSha256, &[0; 32]),
            Err(BackendError::InvalidInput(_))
        ));
    }
}
