//! RSAES-OAEP with HSM-resident keys, routed by the table in `mechanisms.rs`: `CKM_RSA_PKCS_OAEP`
//! where the token pads (SHA-1 on SoftHSM2), or `CKM_RSA_X_509` with the OAEP encoding done
//! on the host (SHA-256: the seed comes from the HSM, decoding is constant-time and the
//! encoded message stays in zeroizing memory).

use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::rsa::{PkcsOaepParams, PkcsOaepSource};
use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;
use kms_backend::asym::{OaepHash, check_encryption_request, oaep_decode, oaep_encode};
use kms_backend::{Backend, BackendError, PublicKeyInfo, PublicKeyRef, SecretBytes};
use kms_types::Algorithm;
use zeroize::Zeroizing;

use crate::Hsm;
use crate::keys::{HsmKey, public_template};
use crate::mechanisms::{OaepRoute, oaep_route};

fn route(algorithm: Algorithm) -> Result<OaepRoute, BackendError> {
    oaep_route(algorithm).ok_or(BackendError::NotSupported("encryption algorithm"))
}

fn token_mechanism(route: OaepRoute) -> Mechanism<'static> {
    match route {
        OaepRoute::Token { hash, mgf } => {
            Mechanism::RsaPkcsOaep(PkcsOaepParams::new(hash, mgf, PkcsOaepSource::empty()))
        }
        OaepRoute::RawRsaHostPadding => Mechanism::RsaX509,
    }
}

/// Left-pads a raw RSA result to the modulus length (a token may drop leading zeros).
fn left_pad(mut value: Vec<u8>, len: usize) -> Result<Zeroizing<Vec<u8>>, BackendError> {
    if value.len() > len {
        return Err(BackendError::AuthenticationFailed);
    }
    let mut out = Zeroizing::new(vec![0u8; len - value.len()]);
    out.extend_from_slice(&value);
    zeroize::Zeroize::zeroize(&mut value);
    Ok(out)
}

pub(crate) fn encrypt(
    hsm: &Hsm,
    key: PublicKeyRef<'_>,
    algorithm: Algorithm,
    plaintext: &[u8],
) -> Result<Vec<u8>, BackendError> {
    let route = route(algorithm)?;
    let info = match key {
        PublicKeyRef::Handle(handle) => hsm
            .hsm_key(handle)?
            .public()
            .cloned()
            .ok_or(BackendError::InvalidInput("aes keys have no public key"))?,
        PublicKeyRef::Spki(der) => PublicKeyInfo::from_spki_der(der)?,
    };
    let hash = check_encryption_request(info.spec(), algorithm)?;
    let k = info.rsa_modulus_len();
    if plaintext.len() > hash.max_plaintext_len(k) {
        return Err(BackendError::InvalidInput("plaintext too long for the key"));
    }
    let input = match route {
        OaepRoute::Token { .. } => Zeroizing::new(plaintext.to_vec()),
        OaepRoute::RawRsaHostPadding => {
            let mut seed = Zeroizing::new(vec![0u8; hash.digest_len()]);
            hsm.fill_random(&mut seed)?;
            oaep_encode(hash, plaintext, k, &seed)?
        }
    };
    let mechanism = token_mechanism(route);
    let encrypt =
        |session: &Session, public: ObjectHandle| session.encrypt(&mechanism, public, &input);
    let ciphertext = match key {
        PublicKeyRef::Handle(handle) => {
            hsm.run_with_key(hsm.hsm_key(handle)?, |session, objects| {
                match objects.public {
                    Some(public) => encrypt(session, public),
                    None => Err(cryptoki::error::Error::NotSupported),
                }
            })?
        }
        PublicKeyRef::Spki(_) => {
            let template = public_template(&info);
            hsm.run(|session, _| {
                let public = session.create_object(&template)?;
                let ciphertext = encrypt(session, public);
                session.destroy_object(public)?;
                ciphertext
            })?
        }
    };
    Ok(left_pad(ciphertext, k)?.to_vec())
}

pub(crate) fn decrypt(
    hsm: &Hsm,
    key: &HsmKey,
    algorithm: Algorithm,
    ciphertext: &[u8],
) -> Result<SecretBytes, BackendError> {
    let route = route(algorithm)?;
    let hash: OaepHash = check_encryption_request(key.spec(), algorithm)?;
    let k = key.public().map_or(0, PublicKeyInfo::rsa_modulus_len);
    if ciphertext.len() != k {
        return Err(BackendError::AuthenticationFailed);
    }
    let mechanism = token_mechanism(route);
    let output = hsm.run_with_key(key, |session, objects| {
        session.decrypt(&mechanism, objects.key, ciphertext)
    })?;
    match route {
        OaepRoute::Token { .. } => Ok(SecretBytes::new(output)),
        OaepRoute::RawRsaHostPadding => {
            let mut encoded = left_pad(output, k)?;
            oaep_decode(hash, &mut encoded)
        }
    }
}
