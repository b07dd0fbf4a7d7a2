//! The mechanisms this service needs from a token, as data, and the check against what a
//! token offers.

use cryptoki::mechanism::MechanismType;

/// Every mechanism the service needs, with the name used in error messages and logs.
///
/// SoftHSM2 2.6 offers all of them. It lacks `CKM_ECDSA_SHA256` and OAEP with SHA-256, so
/// the table asks for `CKM_ECDSA` (hash on the host) and `CKM_RSA_X_509` (OAEP decoded on
/// the host) instead.
pub const REQUIRED_MECHANISMS: &[(MechanismType, &str)] = &[
    (MechanismType::AES_KEY_GEN, "CKM_AES_KEY_GEN"),
    (MechanismType::AES_GCM, "CKM_AES_GCM"),
    (MechanismType::AES_KEY_WRAP_PAD, "CKM_AES_KEY_WRAP_PAD"),
    (
        MechanismType::RSA_PKCS_KEY_PAIR_GEN,
        "CKM_RSA_PKCS_KEY_PAIR_GEN",
    ),
    (MechanismType::RSA_X_509, "CKM_RSA_X_509"),
    (MechanismType::RSA_PKCS_OAEP, "CKM_RSA_PKCS_OAEP"),
    (MechanismType::RSA_PKCS, "CKM_RSA_PKCS"),
    (MechanismType::ECC_KEY_PAIR_GEN, "CKM_EC_KEY_PAIR_GEN"),
    (MechanismType::ECDSA, "CKM_ECDSA"),
    (MechanismType::SHA256, "CKM_SHA256"),
];

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
    fn names_match_cryptoki_names() {
        for (mechanism, name) in REQUIRED_MECHANISMS {
            assert_eq!(mechanism.to_string(), *name);
        }
    }
}
