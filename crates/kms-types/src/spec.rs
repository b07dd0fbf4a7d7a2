//! Key specs, usages, origins, protection levels, instance types and algorithms, with the rules
//! about which fit together.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::DomainError;

macro_rules! named_enum {
    ($(#[$meta:meta])* $name:ident, $field:literal { $($(#[$vmeta:meta])* $variant:ident => $display:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The name shown to people, as the console shows it.
            pub fn display_name(self) -> &'static str {
                match self {
                    $($name::$variant => $display),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.display_name())
            }
        }

        impl FromStr for $name {
            type Err = DomainError;

            /// Accepts the display name in any case, with `-` or `/` or `_` as separators.
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let norm = |v: &str| v.to_ascii_lowercase().replace(['-', '/'], "_");
                let wanted = norm(s);
                $name::ALL
                    .iter()
                    .copied()
                    .find(|v| norm(v.display_name()) == wanted)
                    .ok_or_else(|| DomainError::invalid($field, format!("unknown value {s:?}")))
            }
        }
    };
}

named_enum!(
    /// The kind and size of a key.
    KeySpec, "KeySpec" {
        AliyunAes256 => "Aliyun_AES_256",
        AliyunAes192 => "Aliyun_AES_192",
        AliyunAes128 => "Aliyun_AES_128",
        Rsa2048 => "RSA_2048",
        Rsa3072 => "RSA_3072",
        Rsa4096 => "RSA_4096",
        EcP256 => "EC_P256",
        EcP256K => "EC_P256K",
    }
);

named_enum!(
    /// What a key is for.
    KeyUsage, "KeyUsage" {
        EncryptDecrypt => "ENCRYPT/DECRYPT",
        SignVerify => "SIGN/VERIFY",
    }
);

named_enum!(
    /// Where a key's material lives while in use.
    ProtectionLevel, "ProtectionLevel" {
        Software => "SOFTWARE",
        Hsm => "HSM",
    }
);

named_enum!(
    /// Who made the key material.
    KeyOrigin, "Origin" {
        Kms => "Aliyun_KMS",
        External => "EXTERNAL",
    }
);

named_enum!(
    /// The kind of KMS instance.
    InstanceType, "InstanceType" {
        Software => "SOFTWARE",
        Hardware => "HARDWARE",
    }
);

named_enum!(
    /// Signing, asymmetric encryption and wrapping algorithms.
    Algorithm, "Algorithm" {
        RsaPssSha256 => "RSA_PSS_SHA_256",
        RsaPkcs1Sha256 => "RSA_PKCS1_SHA_256",
        EcdsaSha256 => "ECDSA_SHA_256",
        RsaesOaepSha256 => "RSAES_OAEP_SHA_256",
        RsaesOaepSha1 => "RSAES_OAEP_SHA_1",
        RsaAesKeyWrapSha256 => "RSA_AES_KEY_WRAP_SHA_256",
    }
);

named_enum!(
    /// Sizes of generated data keys.
    DataKeySpec, "KeySpec" {
        Aes256 => "AES_256",
        Aes128 => "AES_128",
    }
);

named_enum!(
    /// Whether automatic rotation is on, off, or paused by the key's state.
    RotationStatus, "RotationStatus" {
        Enabled => "Enabled",
        Disabled => "Disabled",
        Suspended => "Suspended",
    }
);

impl KeySpec {
    /// Whether the spec is an AES key.
    pub fn is_symmetric(self) -> bool {
        matches!(
            self,
            Self::AliyunAes256 | Self::AliyunAes192 | Self::AliyunAes128
        )
    }

    /// AES key length in bytes; `None` for asymmetric specs.
    pub fn symmetric_key_len(self) -> Option<usize> {
        match self {
            Self::AliyunAes256 => Some(32),
            Self::AliyunAes192 => Some(24),
            Self::AliyunAes128 => Some(16),
            _ => None,
        }
    }

    /// Usages that fit the spec: AES encrypts, EC signs, RSA does either.
    pub fn allows_usage(self, usage: KeyUsage) -> bool {
        match self {
            Self::AliyunAes256 | Self::AliyunAes192 | Self::AliyunAes128 => {
                usage == KeyUsage::EncryptDecrypt
            }
            Self::EcP256 | Self::EcP256K => usage == KeyUsage::SignVerify,
            Self::Rsa2048 | Self::Rsa3072 | Self::Rsa4096 => true,
        }
    }

    /// The usage a key of this spec gets when the caller names none.
    pub fn default_usage(self) -> KeyUsage {
        match self {
            Self::EcP256 | Self::EcP256K => KeyUsage::SignVerify,
            _ => KeyUsage::EncryptDecrypt,
        }
    }
}

impl InstanceType {
    /// Key specs an instance of this type offers.
    pub fn offers(self, spec: KeySpec) -> bool {
        match self {
            Self::Hardware => true,
            Self::Software => matches!(
                spec,
                KeySpec::AliyunAes256
                    | KeySpec::Rsa2048
                    | KeySpec::Rsa3072
                    | KeySpec::EcP256
                    | KeySpec::EcP256K
            ),
        }
    }

    /// Every key spec an instance of this type offers, in the order of [`KeySpec::ALL`].
    pub fn offered(self) -> Vec<KeySpec> {
        KeySpec::ALL
            .iter()
            .copied()
            .filter(|s| self.offers(*s))
            .collect()
    }

    /// Protection level of keys created in an instance of this type.
    pub fn protection_level(self) -> ProtectionLevel {
        match self {
            Self::Software => ProtectionLevel::Software,
            Self::Hardware => ProtectionLevel::Hsm,
        }
    }
}

/// Checks that `usage` fits `spec`.
pub fn check_usage_fits(spec: KeySpec, usage: KeyUsage) -> Result<(), DomainError> {
    if spec.allows_usage(usage) {
        Ok(())
    } else {
        Err(DomainError::invalid(
            "KeyUsage",
            format!("key usage {usage} does not fit key spec {spec}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back() {
        for spec in KeySpec::ALL {
            assert_eq!(spec.display_name().parse::<KeySpec>(), Ok(*spec));
        }
        assert_eq!(
            "aliyun-aes-256".parse::<KeySpec>(),
            Ok(KeySpec::AliyunAes256)
        );
        assert_eq!(
            "encrypt/decrypt".parse::<KeyUsage>(),
            Ok(KeyUsage::EncryptDecrypt)
        );
        assert!("AES_512".parse::<KeySpec>().is_err());
    }

    #[test]
    fn usage_fits_spec() {
        let cases = [
            (KeySpec::AliyunAes256, KeyUsage::EncryptDecrypt, true),
            (KeySpec::AliyunAes128, KeyUsage::SignVerify, false),
            (KeySpec::EcP256, KeyUsage::SignVerify, true),
            (KeySpec::EcP256K, KeyUsage::EncryptDecrypt, false),
            (KeySpec::Rsa2048, KeyUsage::EncryptDecrypt, true),
            (KeySpec::Rsa4096, KeyUsage::SignVerify, true),
        ];
        for (spec, usage, ok) in cases {
            assert_eq!(check_usage_fits(spec, usage).is_ok(), ok, "{spec} {usage}");
        }
    }

    #[test]
    fn instances_offer_their_specs() {
        let software: Vec<_> = KeySpec::ALL
            .iter()
            .filter(|s| InstanceType::Software.offers(**s))
            .collect();
        assert_eq!(software.len(), 5);
        assert!(!InstanceType::Software.offers(KeySpec::Rsa4096));
        assert!(!InstanceType::Software.offers(KeySpec::AliyunAes192));
        assert!(
            KeySpec::ALL
                .iter()
                .all(|s| InstanceType::Hardware.offers(*s))
        );
    }
}
