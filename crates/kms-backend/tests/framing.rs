//! Properties of the framings imported material and asymmetric ciphertexts go through, on
//! generated input: the `RSA_AES_KEY_WRAP_SHA_256` layout is cut without panicking and only
//! where it says; AES key wrap with padding (RFC 5649) unwraps what it wrapped and refuses any
//! single-bit flip or truncation; the constant-time OAEP decoder reads back what the encoder
//! wrote and refuses any altered encoding, and never panics.
//!
//! Each property runs `PROPTEST_CASES` cases (proptest's default, 256, unless set).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use kms_backend::SecretBytes;
use kms_backend::asym::{OaepHash, oaep_decode, oaep_encode};
use kms_backend::import::{
    EPHEMERAL_KEY_LEN, IMPORT_CIPHERTEXT_LEN, aes_kwp_unwrap, aes_kwp_wrap, split_rsa_aes_key_wrap,
};
use proptest::prelude::*;

fn hash() -> impl Strategy<Value = OaepHash> {
    prop_oneof![Just(OaepHash::Sha256), Just(OaepHash::Sha1)]
}

proptest! {
    #[test]
    fn the_wrap_layout_is_cut_only_where_it_says(
        data in proptest::collection::vec(any::<u8>(), 0..600),
        modulus in prop_oneof![Just(IMPORT_CIPHERTEXT_LEN), 0..300usize],
    ) {
        if let Ok((rsa, kwp)) = split_rsa_aes_key_wrap(&data, modulus) {
            prop_assert_eq!(rsa.len(), modulus);
            prop_assert!(kwp.len() >= 16 && kwp.len() % 8 == 0);
            prop_assert_eq!([rsa, kwp].concat(), data);
        }
    }

    #[test]
    fn key_wrap_unwraps_what_it_wrapped_and_nothing_altered(
        kek in any::<[u8; EPHEMERAL_KEY_LEN]>(),
        other in any::<[u8; EPHEMERAL_KEY_LEN]>(),
        plaintext in proptest::collection::vec(any::<u8>(), 1..300),
        bit in any::<proptest::sample::Index>(),
        cut in any::<proptest::sample::Index>(),
    ) {
        let kek = SecretBytes::copy_from(&kek);
        let wrapped = aes_kwp_wrap(&kek, &plaintext).unwrap();
        let unwrapped = aes_kwp_unwrap(&kek, &wrapped).unwrap();
        prop_assert_eq!(unwrapped.expose(), &plaintext[..]);
        let bit = bit.index(wrapped.len() * 8);
        let mut flipped = wrapped.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(aes_kwp_unwrap(&kek, &flipped).is_err(), "bit {} flipped", bit);
        let cut = cut.index(wrapped.len());
        prop_assert!(aes_kwp_unwrap(&kek, &wrapped[..cut]).is_err(), "cut to {}", cut);
        let other = SecretBytes::copy_from(&other);
        if other.expose() != kek.expose() {
            prop_assert!(aes_kwp_unwrap(&other, &wrapped).is_err());
        }
    }

    #[test]
    fn key_unwrap_never_panics(
        kek in proptest::collection::vec(any::<u8>(), 0..40),
        wrapped in proptest::collection::vec(any::<u8>(), 0..100),
    ) {
        let _ = aes_kwp_unwrap(&SecretBytes::new(kek), &wrapped);
    }

    #[test]
    fn oaep_decodes_what_it_encoded_and_nothing_altered(
        hash in hash(),
        modulus in prop_oneof![Just(256usize), Just(384usize), 64..200usize],
        message in proptest::collection::vec(any::<u8>(), 0..64),
        seed in any::<[u8; 32]>(),
        bit in any::<proptest::sample::Index>(),
    ) {
        let h = match hash { OaepHash::Sha256 => 32, OaepHash::Sha1 => 20 };
        let encoded = oaep_encode(hash, &message, modulus, &seed[..h]);
        prop_assume!(encoded.is_ok());
        let encoded = encoded.unwrap();
        let mut em = encoded.to_vec();
        let decoded = oaep_decode(hash, &mut em).unwrap();
        prop_assert_eq!(decoded.expose(), &message[..]);
        let bit = bit.index(encoded.len() * 8);
        let mut flipped = encoded.to_vec();
        flipped[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(oaep_decode(hash, &mut flipped).is_err(), "bit {} flipped", bit);
    }

    #[test]
    fn oaep_decoding_never_panics(
        hash in hash(),
        mut em in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let _ = oaep_decode(hash, &mut em);
    }
}
