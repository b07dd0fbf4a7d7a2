//! Signatures with HSM-resident keys over a SHA-256 digest, and verification inside the HSM
//! (with a loaded key's public object, or a temporary object made from an SPKI). The
//! mechanism for each algorithm comes from the route table in `mechanisms.rs`.

use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::rsa::PkcsPssParams;
use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;
use cryptoki::types::Ulong;
use kms_backend::sign::{
    SHA256_DIGEST_INFO_PREFIX, check_sign_request, ecdsa_der_low_s, ecdsa_raw_low_s,
};
use kms_backend::{BackendError, PublicKeyInfo, PublicKeyRef};
use kms_types::{Algorithm, KeySpec};

use crate::Hsm;
use crate::error::verify_outcome;
use crate::keys::public_template;
use crate::mechanisms::{SignRoute, sign_route};

fn route(algorithm: Algorithm) -> Result<SignRoute, BackendError> {
    sign_route(algorithm).ok_or(BackendError::NotSupported("signing algorithm"))
}

fn mechanism(route: SignRoute) -> Result<Mechanism<'static>, BackendError> {
    Ok(match route {
        SignRoute::RsaPkcs1OverDigestInfo => Mechanism::RsaPkcs,
        SignRoute::RsaPss {
            hash,
            mgf,
            salt_len,
        } => Mechanism::RsaPkcsPss(PkcsPssParams {
            hash_alg: hash,
            mgf,
            s_len: Ulong::try_from(salt_len)
                .map_err(|_| BackendError::Internal("pss salt length".into()))?,
        }),
        SignRoute::EcdsaRaw => Mechanism::Ecdsa,
    })
}

/// The bytes the token signs for `route`.
fn signing_input(route: SignRoute, digest: &[u8]) -> Vec<u8> {
    match route {
        SignRoute::RsaPkcs1OverDigestInfo => [SHA256_DIGEST_INFO_PREFIX, digest].concat(),
        SignRoute::RsaPss { .. } | SignRoute::EcdsaRaw => digest.to_vec(),
    }
}

pub(crate) fn sign(
    hsm: &Hsm,
    key: &crate::keys::HsmKey,
    algorithm: Algorithm,
    digest: &[u8],
) -> Result<Vec<u8>, BackendError> {
    check_sign_request(key.spec(), algorithm, digest)?;
    let route = route(algorithm)?;
    let mechanism = mechanism(route)?;
    let input = signing_input(route, digest);
    let signature = hsm.run_with_key(key, |session, objects| {
        session.sign(&mechanism, objects.key, &input)
    })?;
    match route {
        SignRoute::EcdsaRaw => ecdsa_der_low_s(key.spec(), &signature),
        _ => Ok(signature),
    }
}

/// What the token verifies: the input, and the signature in the token's form (raw `r ‖ s`
/// for ECDSA). `None` if the signature cannot be a valid one (malformed DER).
fn verification_input(
    spec: KeySpec,
    route: SignRoute,
    digest: &[u8],
    signature: &[u8],
) -> Option<(Vec<u8>, Vec<u8>)> {
    let signature = match route {
        SignRoute::EcdsaRaw => ecdsa_raw_low_s(spec, signature)?.to_vec(),
        _ => signature.to_vec(),
    };
    Some((signing_input(route, digest), signature))
}

fn verify_with(
    session: &Session,
    mechanism: &Mechanism<'_>,
    public: ObjectHandle,
    input: &[u8],
    signature: &[u8],
) -> Result<bool, cryptoki::error::Error> {
    verify_outcome(session.verify(mechanism, public, input, signature))
}

pub(crate) fn verify(
    hsm: &Hsm,
    key: PublicKeyRef<'_>,
    algorithm: Algorithm,
    digest: &[u8],
    signature: &[u8],
) -> Result<bool, BackendError> {
    let route = route(algorithm)?;
    let mechanism = mechanism(route)?;
    match key {
        PublicKeyRef::Handle(handle) => {
            let key = hsm.hsm_key(handle)?;
            check_sign_request(key.spec(), algorithm, digest)?;
            let Some((input, signature)) = verification_input(key.spec(), route, digest, signature)
            else {
                return Ok(false);
            };
            hsm.run_with_key(key, |session, objects| match objects.public {
                Some(public) => verify_with(session, &mechanism, public, &input, &signature),
                None => Ok(false),
            })
        }
        PublicKeyRef::Spki(der) => {
            let info = PublicKeyInfo::from_spki_der(der)?;
            check_sign_request(info.spec(), algorithm, digest)?;
            let Some((input, signature)) =
                verification_input(info.spec(), route, digest, signature)
            else {
                return Ok(false);
            };
            let template = public_template(&info);
            hsm.run(|session, _| {
                let public = session.create_object(&template)?;
                let outcome = verify_with(session, &mechanism, public, &input, &signature);
                session.destroy_object(public)?;
                outcome
            })
        }
    }
}
