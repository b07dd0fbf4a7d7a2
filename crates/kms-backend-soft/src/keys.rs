//! Software keys: generation (AES with the system generator, RSA with `rsa`, P-256 with
//! `p256`, secp256k1 with `k256`), the PKCS#8 material format, and the parsed form a
//! [`KeyHandle`] carries.

use k256::elliptic_curve::Generate;
use kms_backend::{BackendError, GeneratedKey, KeyHandle, SecretBytes};
use kms_types::KeySpec;
use ring::rand::SystemRandom;
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use rsa::traits::PublicKeyParts;

use crate::rng::SysRng;

/// The name software handles carry.
pub(crate) const BACKEND: &str = "software";

/// A parsed software key. Every private part zeroizes on drop (`SecretBytes`, and the
/// `rsa`, `p256` and `k256` key types).
pub(crate) enum SoftKey {
    Aes(SecretBytes),
    Rsa {
        key: Box<rsa::PrivateKey>,
        spki: Vec<u8>,
    },
    P256 {
        key: p256::ecdsa::SigningKey,
        spki: Vec<u8>,
    },
    K256 {
        key: k256::ecdsa::SigningKey,
        spki: Vec<u8>,
    },
}

impl SoftKey {
    /// The key's SubjectPublicKeyInfo, for asymmetric keys.
    pub(crate) fn spki(&self) -> Result<&[u8], BackendError> {
        match self {
            SoftKey::Aes(_) => Err(BackendError::InvalidInput("aes keys have no public key")),
            SoftKey::Rsa { spki, .. } | SoftKey::P256 { spki, .. } | SoftKey::K256 { spki, .. } => {
                Ok(spki)
            }
        }
    }
}

/// RSA modulus size in bits for an RSA spec.
pub(crate) fn rsa_bits(spec: KeySpec) -> Option<usize> {
    match spec {
        KeySpec::Rsa2048 => Some(2048),
        KeySpec::Rsa3072 => Some(3072),
        KeySpec::Rsa4096 => Some(4096),
        _ => None,
    }
}

fn encoding_failed<E>(_: E) -> BackendError {
    BackendError::Internal("encoding a generated key failed".into())
}

/// Generates material of `spec`. RSA generation is CPU-heavy (seconds for 4096 bits).
pub(crate) fn generate(rng: &SystemRandom, spec: KeySpec) -> Result<GeneratedKey, BackendError> {
    let rng_failed = |_| BackendError::Unavailable("system random generator failed".into());
    match spec {
        KeySpec::AliyunAes256 | KeySpec::AliyunAes128 => {
            let len = spec.symmetric_key_len().unwrap_or(0);
            let mut material = SecretBytes::new(vec![0u8; len]);
            ring::rand::SecureRandom::fill(rng, material.expose_mut()).map_err(rng_failed)?;
            Ok(GeneratedKey {
                material,
                public_key_der: Vec::new(),
            })
        }
        KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096 => {
            let bits = rsa_bits(spec).unwrap_or(0);
            let key = rsa::PrivateKey::new(&mut SysRng(rng), bits)
                .map_err(|_| BackendError::Internal("rsa key generation failed".into()))?;
            let material = key.to_pkcs8_der().map_err(encoding_failed)?;
            let public_key_der = key
                .as_public_key()
                .to_public_key_der()
                .map_err(encoding_failed)?;
            Ok(GeneratedKey {
                material: SecretBytes::copy_from(material.as_bytes()),
                public_key_der: public_key_der.into_vec(),
            })
        }
        KeySpec::EcP256 => {
            let key = p256::ecdsa::SigningKey::try_generate_from_rng(&mut SysRng(rng))
                .map_err(|_| BackendError::Unavailable("system random generator failed".into()))?;
            let material = key.to_pkcs8_der().map_err(encoding_failed)?;
            let spki = kms_backend::ec_spki_der(
                spec,
                key.verifying_key().to_sec1_point(false).as_bytes(),
            )?;
            Ok(GeneratedKey {
                material: SecretBytes::copy_from(material.as_bytes()),
                public_key_der: spki,
            })
        }
        KeySpec::EcP256K => {
            let key = k256::ecdsa::SigningKey::try_generate_from_rng(&mut SysRng(rng))
                .map_err(|_| BackendError::Unavailable("system random generator failed".into()))?;
            let material = key.to_pkcs8_der().map_err(encoding_failed)?;
            let spki = kms_backend::ec_spki_der(
                spec,
                key.verifying_key().to_sec1_point(false).as_bytes(),
            )?;
            Ok(GeneratedKey {
                material: SecretBytes::copy_from(material.as_bytes()),
                public_key_der: spki,
            })
        }
        KeySpec::AliyunAes192 => Err(BackendError::NotSupported(
            "software generation of this key spec",
        )),
    }
}

/// Parses material of `spec` into a handle. The material must be what [`generate`] makes.
pub(crate) fn load(spec: KeySpec, material: &SecretBytes) -> Result<KeyHandle, BackendError> {
    let rejected = |_| BackendError::InvalidInput("key material does not parse as its spec");
    let key = match spec {
        KeySpec::AliyunAes256 | KeySpec::AliyunAes128 => {
            if Some(material.len()) != spec.symmetric_key_len() {
                return Err(BackendError::InvalidInput("aes key of the wrong length"));
            }
            SoftKey::Aes(material.clone())
        }
        KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096 => {
            let key = rsa::PrivateKey::from_pkcs8_der(material.expose()).map_err(rejected)?;
            if Some(key.n().bit_width_vartime() as usize) != rsa_bits(spec) {
                return Err(BackendError::InvalidInput("rsa key of the wrong size"));
            }
            let spki = key
                .as_public_key()
                .to_public_key_der()
                .map_err(encoding_failed)?
                .into_vec();
            SoftKey::Rsa {
                key: Box::new(key),
                spki,
            }
        }
        KeySpec::EcP256 => {
            let key =
                p256::ecdsa::SigningKey::from_pkcs8_der(material.expose()).map_err(rejected)?;
            let spki = kms_backend::ec_spki_der(
                spec,
                key.verifying_key().to_sec1_point(false).as_bytes(),
            )?;
            SoftKey::P256 { key, spki }
        }
        KeySpec::EcP256K => {
            let key =
                k256::ecdsa::SigningKey::from_pkcs8_der(material.expose()).map_err(rejected)?;
            let spki = kms_backend::ec_spki_der(
                spec,
                key.verifying_key().to_sec1_point(false).as_bytes(),
            )?;
            SoftKey::K256 { key, spki }
        }
        KeySpec::AliyunAes192 => {
            return Err(BackendError::NotSupported("software aes-192 keys"));
        }
    };
    Ok(KeyHandle::new(BACKEND, spec, key))
}
