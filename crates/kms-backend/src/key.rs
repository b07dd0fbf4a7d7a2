//! How backends hand out keys: opaque [`KeyHandle`]s, the material forms that come out of key
//! generation, and SubjectPublicKeyInfo parsing and encoding shared by every backend.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use kms_types::KeySpec;
use rsa::pkcs8::{DecodePublicKey, EncodePublicKey};
use rsa::traits::PublicKeyParts;
use spki::ObjectIdentifier;
use spki::der::Encode;
use spki::der::asn1::BitStringRef;

use crate::{BackendError, SecretBytes};

/// A key ready for use by the backend that loaded it, cheap to clone and to keep in a cache.
///
/// What is inside depends on the backend and is visible only to it: the software backend
/// keeps the parsed private key (zeroized on drop), the PKCS#11 backend keeps references to
/// non-extractable objects inside the HSM (destroyed once the last clone is gone). Passing a
/// handle to a backend that did not make it is refused with [`BackendError::InvalidInput`].
///
/// Handles come from [`crate::Backend::load`] (host material) or
/// [`crate::Backend::load_sealed`] (material that stays inside a device).
#[derive(Clone)]
pub struct KeyHandle {
    spec: KeySpec,
    backend: &'static str,
    inner: Arc<dyn Any + Send + Sync>,
}

impl KeyHandle {
    /// Wraps a backend's own key representation. Only backends call this.
    pub fn new<T: Any + Send + Sync>(backend: &'static str, spec: KeySpec, inner: T) -> Self {
        Self {
            spec,
            backend,
            inner: Arc::new(inner),
        }
    }

    /// The key's spec.
    pub fn spec(&self) -> KeySpec {
        self.spec
    }

    /// The [`crate::Backend::name`] of the backend that made the handle.
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// The backend's own representation, if it is a `T`. Backends use this to get their key
    /// back; the types are private to them, so nothing else can look inside.
    pub fn downcast_ref<T: Any>(&self) -> Option<&T> {
        self.inner.downcast_ref::<T>()
    }

    /// Like [`KeyHandle::downcast_ref`], but a foreign handle is an input error.
    pub fn expect_backend<T: Any>(&self, backend: &'static str) -> Result<&T, BackendError> {
        if self.backend != backend {
            return Err(BackendError::InvalidInput(
                "key handle belongs to another backend",
            ));
        }
        self.downcast_ref::<T>().ok_or(BackendError::InvalidInput(
            "key handle of an unexpected kind",
        ))
    }

    /// How many clones of this handle exist (a backend may release device objects when the
    /// last one goes).
    pub fn clones(&self) -> usize {
        Arc::strong_count(&self.inner)
    }
}

impl fmt::Debug for KeyHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyHandle")
            .field("spec", &self.spec)
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

/// The public half of a key, for verification and public-key encryption.
#[derive(Debug, Clone, Copy)]
pub enum PublicKeyRef<'a> {
    /// The public half of a key the backend holds.
    Handle(&'a KeyHandle),
    /// A DER SubjectPublicKeyInfo (RSA 2048/3072/4096, P-256 or secp256k1).
    Spki(&'a [u8]),
}

/// Freshly generated host material: the secret for the caller to seal under the root key,
/// plus the public half.
#[derive(Debug)]
pub struct GeneratedKey {
    /// The key material (raw AES key, or PKCS#8 DER for asymmetric keys).
    pub material: SecretBytes,
    /// SubjectPublicKeyInfo DER of the public key; empty for symmetric keys.
    pub public_key_der: Vec<u8>,
}

/// A key generated inside a device and sealed there for storage. The sealed form is opaque,
/// carries its own format version, and opens only in a device holding the same root key, with
/// the same context.
#[derive(Debug, Clone)]
pub struct SealedKey {
    /// What the control plane stores.
    pub sealed: Vec<u8>,
    /// SubjectPublicKeyInfo DER of the public key; empty for symmetric keys.
    pub public_key_der: Vec<u8>,
}

/// A parsed public key.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKeyInfo {
    spec: KeySpec,
    material: PublicKeyMaterial,
}

/// The numbers of a parsed public key, big-endian, without leading zeros.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKeyMaterial {
    /// An RSA public key.
    Rsa {
        /// The modulus.
        modulus: Vec<u8>,
        /// The public exponent.
        exponent: Vec<u8>,
    },
    /// An elliptic-curve point in uncompressed SEC1 form (`04 | x | y`).
    Ec {
        /// The point.
        point: Vec<u8>,
    },
}

impl fmt::Debug for PublicKeyInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKeyInfo")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

/// DER of the named-curve OID `prime256v1` as PKCS#11's `CKA_EC_PARAMS` wants it.
pub const P256_EC_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// DER of the named-curve OID `secp256k1`.
pub const SECP256K1_EC_PARAMS: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a];

const OID_RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_SECP256K1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.10");

impl PublicKeyInfo {
    /// Parses a DER SubjectPublicKeyInfo. Accepts RSA keys (rsaEncryption) of exactly 2048,
    /// 3072 or 4096 bits and EC keys on P-256 or secp256k1 (named curve, point on the curve).
    pub fn from_spki_der(der: &[u8]) -> Result<Self, BackendError> {
        let info = spki::SubjectPublicKeyInfoRef::try_from(der)
            .map_err(|_| BackendError::InvalidInput("public key is not a der spki"))?;
        let (algorithm, parameters) = info
            .algorithm
            .oids()
            .map_err(|_| BackendError::InvalidInput("public key algorithm unreadable"))?;
        match (algorithm, parameters) {
            (OID_RSA_ENCRYPTION, _) => {
                let key = rsa::PublicKey::from_public_key_der(der)
                    .map_err(|_| BackendError::InvalidInput("rsa public key rejected"))?;
                let spec = match key.n().bit_width_vartime() {
                    2048 => KeySpec::Rsa2048,
                    3072 => KeySpec::Rsa3072,
                    4096 => KeySpec::Rsa4096,
                    _ => return Err(BackendError::NotSupported("rsa key size")),
                };
                Ok(Self {
                    spec,
                    material: PublicKeyMaterial::Rsa {
                        modulus: key.n_bytes().into_vec(),
                        exponent: key.e_bytes().into_vec(),
                    },
                })
            }
            (OID_EC_PUBLIC_KEY, Some(OID_P256)) => {
                let key = p256::PublicKey::from_public_key_der(der)
                    .map_err(|_| BackendError::InvalidInput("p-256 public key rejected"))?;
                Ok(Self {
                    spec: KeySpec::EcP256,
                    material: PublicKeyMaterial::Ec {
                        point: uncompressed_p256(&key),
                    },
                })
            }
            (OID_EC_PUBLIC_KEY, Some(OID_SECP256K1)) => {
                let key = k256::PublicKey::from_public_key_der(der)
                    .map_err(|_| BackendError::InvalidInput("secp256k1 public key rejected"))?;
                Ok(Self {
                    spec: KeySpec::EcP256K,
                    material: PublicKeyMaterial::Ec {
                        point: uncompressed_k256(&key),
                    },
                })
            }
            _ => Err(BackendError::NotSupported("public key algorithm or curve")),
        }
    }

    /// Builds an RSA public key from its numbers (big-endian); the size must be a spec's.
    pub fn rsa(modulus: &[u8], exponent: &[u8]) -> Result<Self, BackendError> {
        Self::from_spki_der(&rsa_spki_der(modulus, exponent)?)
    }

    /// Builds an EC public key of `spec` from a SEC1 point (compressed or not).
    pub fn ec(spec: KeySpec, point: &[u8]) -> Result<Self, BackendError> {
        Self::from_spki_der(&ec_spki_der(spec, point)?)
    }

    /// The key spec the public key belongs to.
    pub fn spec(&self) -> KeySpec {
        self.spec
    }

    /// The key's numbers.
    pub fn material(&self) -> &PublicKeyMaterial {
        &self.material
    }

    /// RSA modulus length in bytes (the signature and ciphertext length); 0 for EC keys.
    pub fn rsa_modulus_len(&self) -> usize {
        match &self.material {
            PublicKeyMaterial::Rsa { modulus, .. } => modulus.len(),
            PublicKeyMaterial::Ec { .. } => 0,
        }
    }

    /// The canonical DER SubjectPublicKeyInfo.
    pub fn to_spki_der(&self) -> Result<Vec<u8>, BackendError> {
        match &self.material {
            PublicKeyMaterial::Rsa { modulus, exponent } => rsa_spki_der(modulus, exponent),
            PublicKeyMaterial::Ec { point } => ec_spki_der(self.spec, point),
        }
    }
}

/// DER SubjectPublicKeyInfo of an RSA public key given its numbers (big-endian).
pub fn rsa_spki_der(modulus: &[u8], exponent: &[u8]) -> Result<Vec<u8>, BackendError> {
    let uint = |bytes: &[u8]| {
        let bits = u32::try_from(bytes.len().saturating_mul(8)).unwrap_or(u32::MAX);
        rsa::BoxedUint::from_be_slice(bytes, bits)
            .map_err(|_| BackendError::InvalidInput("rsa number too large"))
    };
    let key = rsa::PublicKey::new(uint(modulus)?, uint(exponent)?)
        .map_err(|_| BackendError::InvalidInput("rsa public key rejected"))?;
    key.to_public_key_der()
        .map(|doc| doc.into_vec())
        .map_err(|_| BackendError::Internal("encoding an rsa spki failed".into()))
}

/// DER SubjectPublicKeyInfo of an EC public key of `spec` given a SEC1 point (checked to be on
/// the curve). The point is always encoded uncompressed, as HSMs and OpenSSL do.
pub fn ec_spki_der(spec: KeySpec, point: &[u8]) -> Result<Vec<u8>, BackendError> {
    let (curve, point) = match spec {
        KeySpec::EcP256 => (
            OID_P256,
            uncompressed_p256(
                &p256::PublicKey::from_sec1_bytes(point)
                    .map_err(|_| BackendError::InvalidInput("point is not on p-256"))?,
            ),
        ),
        KeySpec::EcP256K => (
            OID_SECP256K1,
            uncompressed_k256(
                &k256::PublicKey::from_sec1_bytes(point)
                    .map_err(|_| BackendError::InvalidInput("point is not on secp256k1"))?,
            ),
        ),
        _ => return Err(BackendError::InvalidInput("not an ec key spec")),
    };
    let encode = || -> spki::der::Result<Vec<u8>> {
        spki::SubjectPublicKeyInfo {
            algorithm: spki::AlgorithmIdentifier {
                oid: OID_EC_PUBLIC_KEY,
                parameters: Some(curve),
            },
            subject_public_key: BitStringRef::from_bytes(&point)?,
        }
        .to_der()
    };
    encode().map_err(|_| BackendError::Internal("encoding an ec spki failed".into()))
}

fn uncompressed_p256(key: &p256::PublicKey) -> Vec<u8> {
    p256::ecdsa::VerifyingKey::from(key)
        .to_sec1_point(false)
        .as_bytes()
        .to_vec()
}

fn uncompressed_k256(key: &k256::PublicKey) -> Vec<u8> {
    k256::ecdsa::VerifyingKey::from(key)
        .to_sec1_point(false)
        .as_bytes()
        .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Secret(#[allow(dead_code)] u8);

    #[test]
    fn handles_are_opaque_and_typed() {
        let handle = KeyHandle::new("test", KeySpec::EcP256, Secret(42));
        assert_eq!(handle.spec(), KeySpec::EcP256);
        assert_eq!(
            format!("{handle:?}"),
            "KeyHandle { spec: EcP256, backend: \"test\", .. }"
        );
        assert!(handle.downcast_ref::<Secret>().is_some());
        assert!(handle.downcast_ref::<u8>().is_none());
        assert!(handle.expect_backend::<Secret>("test").is_ok());
        assert!(matches!(
            handle.expect_backend::<Secret>("other"),
            Err(BackendError::InvalidInput(_))
        ));
        let clone = handle.clone();
        assert_eq!(clone.clones(), 2);
    }

    #[test]
    fn garbage_is_not_a_public_key() {
        for der in [&b""[..], b"\x30\x00", b"not der at all"] {
            assert!(PublicKeyInfo::from_spki_der(der).is_err());
        }
    }

    #[test]
    fn ec_points_round_trip_through_spki() {
        // The generator of P-256, uncompressed.
        let g = [
            0x04, 0x6b, 0x17, 0xd1, 0xf2, 0xe1, 0x2c, 0x42, 0x47, 0xf8, 0xbc, 0xe6, 0xe5, 0x63,
            0xa4, 0x40, 0xf2, 0x77, 0x03, 0x7d, 0x81, 0x2d, 0xeb, 0x33, 0xa0, 0xf4, 0xa1, 0x39,
            0x45, 0xd8, 0x98, 0xc2, 0x96, 0x4f, 0xe3, 0x42, 0xe2, 0xfe, 0x1a, 0x7f, 0x9b, 0x8e,
            0xe7, 0xeb, 0x4a, 0x7c, 0x0f, 0x9e, 0x16, 0x2b, 0xce, 0x33, 0x57, 0x6b, 0x31, 0x5e,
            0xce, 0xcb, 0xb6, 0x40, 0x68, 0x37, 0xbf, 0x51, 0xf5,
        ];
        let info = match PublicKeyInfo::ec(KeySpec::EcP256, &g) {
            Ok(i) => i,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(info.spec(), KeySpec::EcP256);
        assert_eq!(
            info.material(),
            &PublicKeyMaterial::Ec { point: g.to_vec() }
        );
        // The same point is not on secp256k1.
        assert!(PublicKeyInfo::ec(KeySpec::EcP256K, &g).is_err());
        let mut off_curve = g;
        off_curve[64] ^= 1;
        assert!(PublicKeyInfo::ec(KeySpec::EcP256, &off_curve).is_err());
    }
}
