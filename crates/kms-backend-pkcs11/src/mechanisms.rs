//! The mechanisms this service needs from a token, and how each algorithm runs on it, as
//! data; and the check against what a token offers.
//!
//! Token quirks live here as table entries, never as `if vendor == ...` in the code: the
//! operations dispatch on the route an entry names.

use cryptoki::mechanism::MechanismType;
use cryptoki::mechanism::rsa::PkcsMgfType;
use kms_types::Algorithm;

/// Every mechanism the service needs, with the name used in error messages and logs.
///
/// SoftHSM2 2.6 offers all of them. It lacks `CKM_ECDSA_SHA256` and OAEP with SHA-256, so
/// the table asks for `CKM_ECDSA` (hash on the host) and `CKM_RSA_X_509` (OAEP decoded on
/// the host) instead.
pub const REQUIRED_MECHANISMS: &[(MechanismType, &str)] = &[
    (MechanismType::AES_KEY_GEN, "CKM_AES_KEY_GEN"),
    (MechanismType::AES_GCM, "CKM_AES_GCM"),
    // Deriving secrets from the root key (`derive.rs`): AES as a PRF on labelled blocks.
    (MechanismType::AES_ECB, "CKM_AES_ECB"),
    (MechanismType::AES_KEY_WRAP_PAD, "CKM_AES_KEY_WRAP_PAD"),
    (
        MechanismType::RSA_PKCS_KEY_PAIR_GEN,
        "CKM_RSA_PKCS_KEY_PAIR_GEN",
    ),
    (MechanismType::RSA_X_509, "CKM_RSA_X_509"),
    (MechanismType::RSA_PKCS_OAEP, "CKM_RSA_PKCS_OAEP"),
    (MechanismType::RSA_PKCS, "CKM_RSA_PKCS"),
    (MechanismType::RSA_PKCS_PSS, "CKM_RSA_PKCS_PSS"),
    (MechanismType::ECC_KEY_PAIR_GEN, "CKM_EC_KEY_PAIR_GEN"),
    (MechanismType::ECDSA, "CKM_ECDSA"),
    (MechanismType::SHA256, "CKM_SHA256"),
];

/// What the token computes for a signing algorithm, given a SHA-256 digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SignRoute {
    /// `CKM_RSA_PKCS` over `DigestInfo(SHA-256) ‖ digest` (the token pads).
    RsaPkcs1OverDigestInfo,
    /// `CKM_RSA_PKCS_PSS` over the digest with these parameters.
    RsaPss {
        hash: MechanismType,
        mgf: PkcsMgfType,
        salt_len: usize,
    },
    /// `CKM_ECDSA` over the digest; the token returns raw `r ‖ s`, the host encodes DER
    /// with low-S. (SoftHSM2 2.6 has no `CKM_ECDSA_SHA256`.)
    EcdsaRaw,
}

/// What the token computes for an RSAES-OAEP algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OaepRoute {
    /// `CKM_RSA_PKCS_OAEP` with these parameters, padding inside the token.
    Token {
        hash: MechanismType,
        mgf: PkcsMgfType,
    },
    /// `CKM_RSA_X_509` (raw RSA) in the token; the host encodes, or decodes in constant
    /// time. For tokens without OAEP for the hash: SoftHSM2 2.6 answers `CKR_ARGUMENTS_BAD`
    /// to OAEP with SHA-256.
    RawRsaHostPadding,
}

/// How each signing algorithm runs on the token.
pub(crate) const SIGN_ROUTES: &[(Algorithm, SignRoute)] = &[
    (Algorithm::RsaPkcs1Sha256, SignRoute::RsaPkcs1OverDigestInfo),
    (
        Algorithm::RsaPssSha256,
        SignRoute::RsaPss {
            hash: MechanismType::SHA256,
            mgf: PkcsMgfType::MGF1_SHA256,
            salt_len: kms_backend::sign::PSS_SALT_LEN,
        },
    ),
    (Algorithm::EcdsaSha256, SignRoute::EcdsaRaw),
];

/// How each RSAES-OAEP algorithm runs on the token.
pub(crate) const OAEP_ROUTES: &[(Algorithm, OaepRoute)] = &[
    (Algorithm::RsaesOaepSha256, OaepRoute::RawRsaHostPadding),
    (
        Algorithm::RsaesOaepSha1,
        OaepRoute::Token {
            hash: MechanismType::SHA1,
            mgf: PkcsMgfType::MGF1_SHA1,
        },
    ),
];

/// The route of a signing algorithm.
pub(crate) fn sign_route(algorithm: Algorithm) -> Option<SignRoute> {
    SIGN_ROUTES
        .iter()
        .find(|(a, _)| *a == algorithm)
        .map(|&(_, route)| route)
}

/// The route of an OAEP algorithm.
pub(crate) fn oaep_route(algorithm: Algorithm) -> Option<OaepRoute> {
    OAEP_ROUTES
        .iter()
        .find(|(a, _)| *a == algorithm)
        .map(|&(_, route)| route)
}

/// Names of the [`REQUIRED_MECHANISMS`] missing from `available`, in table order.
pub fn missing_mechanisms(available: &[MechanismType]) -> Vec<&'static str> {
    REQUIRED_MECHANISMS
        .iter()
        .filter(|(mechanism, _)| !available.contains(mechanism))
        .map(|&(_, name)| name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_required() -> Vec<MechanismType> {
        REQUIRED_MECHANISMS.iter().map(|&(m, _)| m).collect()
    }

    #[test]
    fn aes_key_wrap_pad_is_0x210a() {
        assert_eq!(*MechanismType::AES_KEY_WRAP_PAD, 0x210A);
    }

    #[test]
    fn nothing_missing_when_all_offered() {
        let mut offered = all_required();
        offered.push(MechanismType::SHA1);
        offered.reverse();
        assert!(missing_mechanisms(&offered).is_empty());
    }

    #[test]
    fn every_missing_mechanism_is_named() {
        assert_eq!(
            missing_mechanisms(&[]),
            REQUIRED_MECHANISMS
                .iter()
                .map(|&(_, n)| n)
                .collect::<Vec<_>>()
        );
        let offered: Vec<MechanismType> = all_required()
            .into_iter()
            .filter(|m| *m != MechanismType::AES_GCM && *m != MechanismType::ECDSA)
            .chain([MechanismType::ECDSA_SHA256])
            .collect();
        assert_eq!(
            missing_mechanisms(&offered),
            vec!["CKM_AES_GCM", "CKM_ECDSA"]
        );
    }

    #[test]
    fn every_algorithm_has_a_route() {
        for algorithm in [
            Algorithm::RsaPkcs1Sha256,
            Algorithm::RsaPssSha256,
            Algorithm::EcdsaSha256,
        ] {
            assert!(sign_route(algorithm).is_some(), "{algorithm}");
        }
        for algorithm in [Algorithm::RsaesOaepSha256, Algorithm::RsaesOaepSha1] {
            assert!(oaep_route(algorithm).is_some(), "{algorithm}");
        }
        assert!(sign_route(Algorithm::RsaesOaepSha1).is_none());
        assert!(oaep_route(Algorithm::EcdsaSha256).is_none());
    }

    #[test]
    fn names_match_cryptoki_names() {
        for (mechanism, name) in REQUIRED_MECHANISMS {
            assert_eq!(mechanism.to_string(), *name);
        }
    }
}
