//! Signatures over a SHA-256 digest: RSASSA-PSS and RSASSA-PKCS1-v1_5 with `rsa` (blinded),
//! ECDSA on P-256 with `p256` and on secp256k1 with `k256` (RFC 6979 nonces, DER, low-S).
//!
//! `ring` is not used here: it signs and verifies messages only, never a precomputed digest,
//! and the API takes digests.

use kms_backend::sign::{PSS_SALT_LEN, check_sign_request, ecdsa_raw_low_s};
use kms_backend::{BackendError, PublicKeyInfo, PublicKeyRef};
use kms_types::{Algorithm, KeySpec};
use p256::ecdsa::signature::hazmat::{PrehashSigner, PrehashVerifier};
use ring::rand::SystemRandom;
use rsa::pkcs8::DecodePublicKey;
use rsa::{Pkcs1v15Sign, Pss};
use sha2::Sha256;

use crate::keys::{BACKEND, SoftKey};
use crate::rng::SysRng;

/// A public key in the form the verifying libraries take.
pub(crate) enum SoftPublic {
    Rsa(rsa::PublicKey),
    P256(p256::ecdsa::VerifyingKey),
    K256(k256::ecdsa::VerifyingKey),
}

/// The public key behind `key`, with its spec: from one of our handles, or parsed from SPKI.
pub(crate) fn public_of(key: PublicKeyRef<'_>) -> Result<(KeySpec, SoftPublic), BackendError> {
    match key {
        PublicKeyRef::Handle(handle) => {
            let public = match handle.expect_backend::<SoftKey>(BACKEND)? {
                SoftKey::Aes(_) => {
                    return Err(BackendError::InvalidInput("aes keys have no public key"));
                }
                SoftKey::Rsa { key, .. } => SoftPublic::Rsa(key.to_public_key()),
                SoftKey::P256 { key, .. } => SoftPublic::P256(*key.verifying_key()),
                SoftKey::K256 { key, .. } => SoftPublic::K256(*key.verifying_key()),
            };
            Ok((handle.spec(), public))
        }
        PublicKeyRef::Spki(der) => {
            let spec = PublicKeyInfo::from_spki_der(der)?.spec();
            let rejected = |_| BackendError::InvalidInput("public key rejected");
            let public = match spec {
                KeySpec::EcP256 => SoftPublic::P256(
                    p256::ecdsa::VerifyingKey::from_public_key_der(der).map_err(rejected)?,
                ),
                KeySpec::EcP256K => SoftPublic::K256(
                    k256::ecdsa::VerifyingKey::from_public_key_der(der).map_err(rejected)?,
                ),
                _ => SoftPublic::Rsa(rsa::PublicKey::from_public_key_der(der).map_err(rejected)?),
            };
            Ok((spec, public))
        }
    }
}

fn signing_failed<E>(_: E) -> BackendError {
    BackendError::Internal("signing failed".into())
}

pub(crate) fn sign(
    rng: &SystemRandom,
    key: &SoftKey,
    spec: KeySpec,
    algorithm: Algorithm,
    digest: &[u8],
) -> Result<Vec<u8>, BackendError> {
    check_sign_request(spec, algorithm, digest)?;
    match (key, algorithm) {
        (SoftKey::Rsa { key, .. }, Algorithm::RsaPkcs1Sha256) => key
            .sign_with_rng(&mut SysRng(rng), Pkcs1v15Sign::new::<Sha256>(), digest)
            .map_err(signing_failed),
        (SoftKey::Rsa { key, .. }, Algorithm::RsaPssSha256) => key
            .sign_with_rng(
                &mut SysRng(rng),
                Pss::<Sha256>::new_with_salt(PSS_SALT_LEN),
                digest,
            )
            .map_err(signing_failed),
        (SoftKey::P256 { key, .. }, Algorithm::EcdsaSha256) => {
            let sig: p256::ecdsa::Signature = key.sign_prehash(digest).map_err(signing_failed)?;
            Ok(sig.normalize_s().to_der().as_bytes().to_vec())
        }
        (SoftKey::K256 { key, .. }, Algorithm::EcdsaSha256) => {
            let sig: k256::ecdsa::Signature = key.sign_prehash(digest).map_err(signing_failed)?;
            Ok(sig.normalize_s().to_der().as_bytes().to_vec())
        }
        _ => Err(BackendError::InvalidInput(
            "signing algorithm does not fit the key",
        )),
    }
}

pub(crate) fn verify(
    key: PublicKeyRef<'_>,
    algorithm: Algorithm,
    digest: &[u8],
    signature: &[u8],
) -> Result<bool, BackendError> {
    let (spec, public) = public_of(key)?;
    check_sign_request(spec, algorithm, digest)?;
    Ok(match (public, algorithm) {
        (SoftPublic::Rsa(key), Algorithm::RsaPkcs1Sha256) => key
            .verify(Pkcs1v15Sign::new::<Sha256>(), digest, signature)
            .is_ok(),
        (SoftPublic::Rsa(key), Algorithm::RsaPssSha256) => key
            .verify(
                Pss::<Sha256>::new_with_salt(PSS_SALT_LEN),
                digest,
                signature,
            )
            .is_ok(),
        // High-S signatures are valid: normalise before verifying (k256 refuses high-S).
        (SoftPublic::P256(key), Algorithm::EcdsaSha256) => ecdsa_raw_low_s(spec, signature)
            .and_then(|raw| p256::ecdsa::Signature::from_slice(&raw).ok())
            .is_some_and(|sig| key.verify_prehash(digest, &sig).is_ok()),
        (SoftPublic::K256(key), Algorithm::EcdsaSha256) => ecdsa_raw_low_s(spec, signature)
            .and_then(|raw| k256::ecdsa::Signature::from_slice(&raw).ok())
            .is_some_and(|sig| key.verify_prehash(digest, &sig).is_ok()),
        _ => {
            return Err(BackendError::InvalidInput(
                "signing algorithm does not fit the key",
            ));
        }
    })
}
