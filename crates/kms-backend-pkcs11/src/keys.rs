//! HSM-resident keys: generated or imported inside the HSM, wrapped there under the root key
//! for storage, and unwrapped again as non-extractable session objects for use.
//!
//! Sealed format (version byte `0x02`), what the control plane stores:
//! `0x02 | IV (12) | AES-GCM_root(payload) | tag (16)` with associated data
//! `"kms-hsm-key-v1\0" | spec code | context` and
//! `payload = spec code (1) | wrapped length (u32, big-endian) | wrapped | SPKI DER`, where
//! `wrapped` is the key wrapped inside the HSM with `CKM_AES_KEY_WRAP_PAD` (RFC 5649) under
//! the root key and the SPKI is empty for AES keys. Key wrap alone binds nothing to the key
//! version, so the outer AES-GCM layer binds the spec and the context (as the root wrap of
//! host secrets does) and authenticates the public key that comes with the key.
//!
//! SoftHSM2 2.6 facts this module is built on (checked against the token in the tests):
//! session objects are visible to, usable from and destroyable through every session of the
//! process, but they are destroyed when the session that created them closes, and private
//! ones also when the token logs out (they stay gone after a new login). So loaded keys are
//! created in the `Hsm`'s long-lived keeper session, each load is tagged with the keeper's
//! epoch, and a handle whose epoch is stale (after a re-login replaced the keeper) is
//! unwrapped again transparently from the wrapped bytes it keeps. Objects of dropped handles
//! are queued (no PKCS#11 call in `Drop`, which may run on an async thread) and destroyed by
//! the next HSM call.

use std::sync::{Arc, Mutex, PoisonError};

use cryptoki::error::Error as CkError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki::types::Ulong;
use kms_backend::{
    BackendError, KeyHandle, P256_EC_PARAMS, PublicKeyInfo, PublicKeyMaterial, SECP256K1_EC_PARAMS,
    SealedKey, SecretBytes,
};
use kms_types::KeySpec;
use rsa::pkcs8::DecodePrivateKey;
use rsa::traits::{PrivateKeyParts, PublicKeyParts};
use zeroize::{Zeroize, Zeroizing};

use crate::Hsm;

/// The name PKCS#11 handles carry.
pub(crate) const BACKEND: &str = "pkcs11";

const FORMAT_HSM_KEY_V1: u8 = 0x02;
const AAD_PREFIX: &[u8] = b"kms-hsm-key-v1\0";

/// The frozen one-byte code of each spec in the sealed format.
fn spec_code(spec: KeySpec) -> u8 {
    match spec {
        KeySpec::AliyunAes256 => 1,
        KeySpec::AliyunAes192 => 2,
        KeySpec::AliyunAes128 => 3,
        KeySpec::Rsa2048 => 4,
        KeySpec::Rsa3072 => 5,
        KeySpec::Rsa4096 => 6,
        KeySpec::EcP256 => 7,
        KeySpec::EcP256K => 8,
    }
}

fn rsa_bits(spec: KeySpec) -> Option<usize> {
    match spec {
        KeySpec::Rsa2048 => Some(2048),
        KeySpec::Rsa3072 => Some(3072),
        KeySpec::Rsa4096 => Some(4096),
        _ => None,
    }
}

fn ec_params(spec: KeySpec) -> Option<&'static [u8]> {
    match spec {
        KeySpec::EcP256 => Some(P256_EC_PARAMS),
        KeySpec::EcP256K => Some(SECP256K1_EC_PARAMS),
        _ => None,
    }
}

/// An object of a dropped key, waiting for destruction.
#[derive(Debug)]
pub(crate) struct Buried {
    pub(crate) hsm: u64,
    pub(crate) epoch: u64,
    pub(crate) object: ObjectHandle,
}

/// Objects of dropped keys, shared by an [`Hsm`] and its keys.
pub(crate) type Graveyard = Arc<Mutex<Vec<Buried>>>;

/// The objects of a loaded key in the current keeper session.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Objects {
    /// The secret or private key (non-extractable, sensitive).
    pub(crate) key: ObjectHandle,
    /// The public key, for asymmetric keys.
    pub(crate) public: Option<ObjectHandle>,
}

#[derive(Debug)]
struct Loaded {
    epoch: u64,
    objects: Objects,
}

/// What a PKCS#11 [`KeyHandle`] holds: the wrapped key (ciphertext under the root key), its
/// public key, and the objects currently unwrapped in the HSM.
#[derive(Debug)]
pub(crate) struct HsmKey {
    hsm: u64,
    spec: KeySpec,
    wrapped: Vec<u8>,
    public: Option<PublicKeyInfo>,
    spki: Vec<u8>,
    loaded: Mutex<Option<Loaded>>,
    graveyard: Graveyard,
}

impl HsmKey {
    pub(crate) fn spec(&self) -> KeySpec {
        self.spec
    }

    pub(crate) fn spki(&self) -> &[u8] {
        &self.spki
    }

    pub(crate) fn public(&self) -> Option<&PublicKeyInfo> {
        self.public.as_ref()
    }

    /// The key's objects in the current keeper session; unwraps them (again) if they do not
    /// exist in this epoch. Reloads of one key are serialised by its lock.
    pub(crate) fn objects(&self, hsm: &Hsm) -> Result<Objects, CkError> {
        let mut loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(current) = loaded.as_ref()
            && current.epoch == hsm.epoch()
        {
            return Ok(current.objects);
        }
        let (epoch, objects) = hsm.with_keeper(|session, root_key, epoch| {
            let key = session.unwrap_key(
                &Mechanism::AesKeyWrapPad,
                root_key,
                &self.wrapped,
                &unwrap_template(self.spec),
            )?;
            let public = match &self.public {
                None => None,
                Some(info) => match session.create_object(&public_template(info)) {
                    Ok(public) => Some(public),
                    Err(e) => {
                        let _ = session.destroy_object(key);
                        return Err(e);
                    }
                },
            };
            Ok((epoch, Objects { key, public }))
        })?;
        if let Some(stale) = loaded.replace(Loaded { epoch, objects }) {
            self.bury(stale);
        }
        Ok(objects)
    }

    fn bury(&self, loaded: Loaded) {
        let mut graveyard = self
            .graveyard
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for object in std::iter::once(loaded.objects.key).chain(loaded.objects.public) {
            graveyard.push(Buried {
                hsm: self.hsm,
                epoch: loaded.epoch,
                object,
            });
        }
    }
}

impl Drop for HsmKey {
    fn drop(&mut self) {
        let loaded = self
            .loaded
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(loaded) = loaded {
            self.bury(loaded);
        }
    }
}

/// Template for a key unwrapped for use: a session object, never extractable.
fn unwrap_template(spec: KeySpec) -> Vec<Attribute> {
    let mut template = vec![
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
    ];
    template.extend(usage_attributes(spec));
    template
}

/// Class, type and permitted uses of the secret or private key of `spec`.
fn usage_attributes(spec: KeySpec) -> Vec<Attribute> {
    if spec.is_symmetric() {
        vec![
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
        ]
    } else if rsa_bits(spec).is_some() {
        vec![
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::KeyType(KeyType::RSA),
            Attribute::Sign(true),
            Attribute::Decrypt(true),
        ]
    } else {
        vec![
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::KeyType(KeyType::EC),
            Attribute::Sign(true),
        ]
    }
}

/// Template for a public-key session object (for verification and encryption).
pub(crate) fn public_template(info: &PublicKeyInfo) -> Vec<Attribute> {
    let mut template = vec![
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::Token(false),
        Attribute::Private(false),
        Attribute::Verify(true),
    ];
    match info.material() {
        PublicKeyMaterial::Rsa { modulus, exponent } => template.extend([
            Attribute::KeyType(KeyType::RSA),
            Attribute::Modulus(modulus.clone()),
            Attribute::PublicExponent(exponent.clone()),
            Attribute::Encrypt(true),
        ]),
        PublicKeyMaterial::Ec { point } => template.extend([
            Attribute::KeyType(KeyType::EC),
            Attribute::EcParams(ec_params(info.spec()).unwrap_or_default().to_vec()),
            Attribute::EcPoint(der_octet_string(point)),
        ]),
    }
    template
}

/// `CKA_EC_POINT` is a DER OCTET STRING around the SEC1 point.
fn der_octet_string(bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![0x04];
    let len = bytes.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        out.extend([0x81, len as u8]);
    }
    out.extend_from_slice(bytes);
    out
}

/// The SEC1 point inside a `CKA_EC_POINT` value (DER OCTET STRING, or the bare point).
fn ec_point_from_attribute(value: &[u8]) -> &[u8] {
    match value {
        // A DER OCTET STRING of an uncompressed 256-bit point; anything else is taken as the
        // bare point (a bare point is also 0x04-led, so only this exact shape is unwrapped).
        [0x04, 0x41, rest @ ..] if rest.len() == 0x41 => rest,
        _ => value,
    }
}

/// Zeroizes the secret attribute values of a template once the token has them.
fn scrub(template: &mut [Attribute]) {
    for attribute in template {
        match attribute {
            Attribute::Value(v)
            | Attribute::PrivateExponent(v)
            | Attribute::Prime1(v)
            | Attribute::Prime2(v)
            | Attribute::Exponent1(v)
            | Attribute::Exponent2(v)
            | Attribute::Coefficient(v) => v.zeroize(),
            _ => {}
        }
    }
}

/// The public half of a generated key, as the token reports it.
enum PublicParts {
    None,
    Rsa { modulus: Vec<u8>, exponent: Vec<u8> },
    Ec { point: Vec<u8> },
}

/// Generates extractable session objects of `spec` in `session` (destroyed by the caller,
/// or with the session if anything fails).
fn generate_objects(
    session: &Session,
    spec: KeySpec,
) -> Result<(ObjectHandle, Option<ObjectHandle>), CkError> {
    let private = [
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(true),
    ];
    if let Some(len) = spec.symmetric_key_len() {
        let mut template = private.to_vec();
        template.extend([
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::ValueLen(Ulong::try_from(len)?),
        ]);
        return Ok((
            session.generate_key(&Mechanism::AesKeyGen, &template)?,
            None,
        ));
    }
    let mut private_template = private.to_vec();
    private_template.push(Attribute::Sign(true));
    let (mechanism, public_template) = if let Some(bits) = rsa_bits(spec) {
        private_template.push(Attribute::Decrypt(true));
        (
            Mechanism::RsaPkcsKeyPairGen,
            vec![
                Attribute::Token(false),
                Attribute::ModulusBits(Ulong::try_from(bits)?),
                Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
                Attribute::Verify(true),
                Attribute::Encrypt(true),
            ],
        )
    } else {
        (
            Mechanism::EccKeyPairGen,
            vec![
                Attribute::Token(false),
                Attribute::EcParams(ec_params(spec).unwrap_or_default().to_vec()),
                Attribute::Verify(true),
            ],
        )
    };
    let (public, private) =
        session.generate_key_pair(&mechanism, &public_template, &private_template)?;
    Ok((private, Some(public)))
}

fn read_public(session: &Session, public: ObjectHandle) -> Result<PublicParts, CkError> {
    let attributes = session.get_attributes(
        public,
        &[
            AttributeType::Modulus,
            AttributeType::PublicExponent,
            AttributeType::EcPoint,
        ],
    )?;
    let (mut modulus, mut exponent, mut point) = (None, None, None);
    for attribute in attributes {
        match attribute {
            Attribute::Modulus(v) => modulus = Some(v),
            Attribute::PublicExponent(v) => exponent = Some(v),
            Attribute::EcPoint(v) => point = Some(ec_point_from_attribute(&v).to_vec()),
            _ => {}
        }
    }
    Ok(match (modulus, exponent, point) {
        (Some(modulus), Some(exponent), _) => PublicParts::Rsa { modulus, exponent },
        (_, _, Some(point)) => PublicParts::Ec { point },
        _ => PublicParts::None,
    })
}

fn spki_of(spec: KeySpec, parts: PublicParts) -> Result<Vec<u8>, BackendError> {
    match parts {
        PublicParts::None if spec.is_symmetric() => Ok(Vec::new()),
        PublicParts::Rsa { modulus, exponent } => kms_backend::rsa_spki_der(&modulus, &exponent),
        PublicParts::Ec { point } => kms_backend::ec_spki_der(spec, &point),
        PublicParts::None => Err(BackendError::Internal(
            "the token reported no public key".into(),
        )),
    }
}

/// Wraps `key` under the root key and destroys the session objects (also on failure; if
/// destruction fails, the error closes the session, which destroys them).
fn wrap_and_destroy(
    session: &Session,
    root_key: ObjectHandle,
    key: ObjectHandle,
    public: Option<ObjectHandle>,
) -> Result<(Vec<u8>, PublicParts), CkError> {
    let result = session
        .wrap_key(&Mechanism::AesKeyWrapPad, root_key, key)
        .and_then(|wrapped| match public {
            Some(public) => read_public(session, public).map(|parts| (wrapped, parts)),
            None => Ok((wrapped, PublicParts::None)),
        });
    session.destroy_object(key)?;
    if let Some(public) = public {
        session.destroy_object(public)?;
    }
    result
}

impl Hsm {
    /// Generates a key inside the HSM, wraps it, and seals it for storage.
    pub(crate) fn generate_hsm_key(
        &self,
        spec: KeySpec,
        context: &[u8],
    ) -> Result<SealedKey, BackendError> {
        let (wrapped, parts) = self.run(|session, root_key| {
            let (key, public) = generate_objects(session, spec)?;
            wrap_and_destroy(session, root_key, key, public)
        })?;
        let spki = spki_of(spec, parts)?;
        self.seal_hsm_key(spec, context, &wrapped, spki)
    }

    /// Brings host material into the HSM, wraps it there, and seals it for storage.
    pub(crate) fn import_hsm_key(
        &self,
        spec: KeySpec,
        context: &[u8],
        material: &SecretBytes,
    ) -> Result<SealedKey, BackendError> {
        let rejected = |_| BackendError::InvalidInput("key material does not parse as its spec");
        let mut template = vec![
            Attribute::Token(false),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(true),
        ];
        template.extend(usage_attributes(spec));
        let spki = if let Some(len) = spec.symmetric_key_len() {
            if material.len() != len {
                return Err(BackendError::InvalidInput("aes key of the wrong length"));
            }
            template.push(Attribute::Value(material.expose().to_vec()));
            Vec::new()
        } else if let Some(bits) = rsa_bits(spec) {
            let key = rsa::PrivateKey::from_pkcs8_der(material.expose()).map_err(rejected)?;
            if key.n().bit_width_vartime() as usize != bits {
                return Err(BackendError::InvalidInput("rsa key of the wrong size"));
            }
            let bytes = |v: &rsa::BoxedUint| v.to_be_bytes_trimmed_vartime().into_vec();
            template.extend([
                Attribute::Modulus(key.n_bytes().into_vec()),
                Attribute::PublicExponent(key.e_bytes().into_vec()),
                Attribute::PrivateExponent(bytes(key.d())),
            ]);
            if let [p, q] = key.primes() {
                template.extend([
                    Attribute::Prime1(bytes(p.as_ref())),
                    Attribute::Prime2(bytes(q.as_ref())),
                ]);
                if let (Some(dp), Some(dq), Some(qinv)) =
                    (key.dp(), key.dq(), key.crt_coefficient())
                {
                    template.extend([
                        Attribute::Exponent1(bytes(dp)),
                        Attribute::Exponent2(bytes(dq)),
                        Attribute::Coefficient(bytes(&qinv)),
                    ]);
                }
            }
            kms_backend::rsa_spki_der(&key.n_bytes(), &key.e_bytes())?
        } else {
            let (scalar, point) = match spec {
                KeySpec::EcP256 => {
                    let key =
                        p256::SecretKey::from_pkcs8_der(material.expose()).map_err(rejected)?;
                    let point = p256::ecdsa::VerifyingKey::from(&key.public_key())
                        .to_sec1_point(false)
                        .as_bytes()
                        .to_vec();
                    (Zeroizing::new(key.to_bytes().to_vec()), point)
                }
                _ => {
                    let key =
                        k256::SecretKey::from_pkcs8_der(material.expose()).map_err(rejected)?;
                    let point = k256::ecdsa::VerifyingKey::from(&key.public_key())
                        .to_sec1_point(false)
                        .as_bytes()
                        .to_vec();
                    (Zeroizing::new(key.to_bytes().to_vec()), point)
                }
            };
            template.extend([
                Attribute::EcParams(ec_params(spec).unwrap_or_default().to_vec()),
                Attribute::Value(scalar.to_vec()),
            ]);
            kms_backend::ec_spki_der(spec, &point)?
        };
        let result = self.run(|session, root_key| {
            let key = session.create_object(&template)?;
            wrap_and_destroy(session, root_key, key, None).map(|(wrapped, _)| wrapped)
        });
        scrub(&mut template);
        self.seal_hsm_key(spec, context, &result?, spki)
    }

    fn seal_hsm_key(
        &self,
        spec: KeySpec,
        context: &[u8],
        wrapped: &[u8],
        spki: Vec<u8>,
    ) -> Result<SealedKey, BackendError> {
        let wrapped_len = u32::try_from(wrapped.len())
            .map_err(|_| BackendError::Internal("wrapped key too long".into()))?;
        let mut payload = Vec::with_capacity(5 + wrapped.len() + spki.len());
        payload.push(spec_code(spec));
        payload.extend_from_slice(&wrapped_len.to_be_bytes());
        payload.extend_from_slice(wrapped);
        payload.extend_from_slice(&spki);
        let sealed = self.seal_under_root(FORMAT_HSM_KEY_V1, &aad(spec, context), &payload)?;
        Ok(SealedKey {
            sealed,
            public_key_der: spki,
        })
    }

    /// Opens a sealed key and unwraps it into the keeper session.
    pub(crate) fn load_hsm_key(
        &self,
        spec: KeySpec,
        context: &[u8],
        sealed: &[u8],
    ) -> Result<KeyHandle, BackendError> {
        let payload = self.open_under_root(FORMAT_HSM_KEY_V1, &aad(spec, context), sealed)?;
        let (wrapped, spki) = parse_payload(spec, payload.expose())?;
        let public = if spec.is_symmetric() {
            None
        } else {
            let info = PublicKeyInfo::from_spki_der(spki)?;
            if info.spec() != spec {
                return Err(BackendError::Internal(
                    "sealed key's public key is of another spec".into(),
                ));
            }
            Some(info)
        };
        let key = HsmKey {
            hsm: self.id(),
            spec,
            wrapped: wrapped.to_vec(),
            public,
            spki: spki.to_vec(),
            loaded: Mutex::new(None),
            graveyard: self.graveyard(),
        };
        self.run_with_key(&key, |_, _| Ok(()))?;
        Ok(KeyHandle::new(BACKEND, spec, key))
    }

    /// The [`HsmKey`] behind a handle this `Hsm` loaded.
    pub(crate) fn hsm_key<'k>(&self, handle: &'k KeyHandle) -> Result<&'k HsmKey, BackendError> {
        let key = handle.expect_backend::<HsmKey>(BACKEND)?;
        if key.hsm != self.id() {
            return Err(BackendError::InvalidInput(
                "key handle was loaded by another hsm session",
            ));
        }
        Ok(key)
    }
}

fn aad(spec: KeySpec, context: &[u8]) -> Vec<u8> {
    [AAD_PREFIX, &[spec_code(spec)], context].concat()
}

/// Splits an opened payload into the wrapped key and the SPKI.
fn parse_payload(spec: KeySpec, payload: &[u8]) -> Result<(&[u8], &[u8]), BackendError> {
    let corrupt = || BackendError::Internal("sealed key payload is malformed".into());
    let (&code, rest) = payload.split_first().ok_or_else(corrupt)?;
    if code != spec_code(spec) {
        return Err(corrupt());
    }
    let (len, rest) = rest.split_first_chunk::<4>().ok_or_else(corrupt)?;
    let len = usize::try_from(u32::from_be_bytes(*len)).map_err(|_| corrupt())?;
    if rest.len() < len {
        return Err(corrupt());
    }
    Ok(rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_codes_are_distinct_and_frozen() {
        let codes: Vec<u8> = KeySpec::ALL.iter().map(|s| spec_code(*s)).collect();
        assert_eq!(codes, [1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn payload_parsing() {
        let mut payload = vec![spec_code(KeySpec::EcP256), 0, 0, 0, 3, 9, 9, 9];
        payload.extend_from_slice(b"spki");
        assert_eq!(
            parse_payload(KeySpec::EcP256, &payload).ok(),
            Some((&[9u8, 9, 9][..], &b"spki"[..]))
        );
        assert!(parse_payload(KeySpec::EcP256K, &payload).is_err());
        assert!(parse_payload(KeySpec::EcP256, &payload[..6]).is_err());
        assert!(parse_payload(KeySpec::EcP256, &[]).is_err());
        assert_ne!(aad(KeySpec::EcP256, b"v"), aad(KeySpec::EcP256K, b"v"));
    }

    #[test]
    fn ec_point_attribute_forms() {
        let point = [0x04u8; 65];
        let der = der_octet_string(&point);
        assert_eq!(&der[..2], &[0x04, 65]);
        assert_eq!(ec_point_from_attribute(&der), &point[..]);
        assert_eq!(ec_point_from_attribute(&point), &point[..]);
    }
}
