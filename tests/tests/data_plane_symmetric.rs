//! Data-plane operations on symmetric keys through the real binaries: data keys, re-encryption,
//! random bytes and passwords, dry runs and their validation.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use kms_e2e::{ALICE, MALLORY, Stack, reason};
use kms_proto::kms::v1::*;
use tonic::Code;

fn ctx(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn decrypt(
    stack: &Stack,
    blob: &[u8],
    context: &[(&str, &str)],
) -> Result<Vec<u8>, tonic::Status> {
    stack
        .crypto(Some(ALICE))
        .unwrap()
        .decrypt(DecryptRequest {
            ciphertext_blob: blob.to_vec(),
            encryption_context: ctx(context),
            dry_run: false,
        })
        .await
        .map(|r| r.into_inner().plaintext)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_keys_re_encryption_random_and_passwords() {
    let stack = Stack::start().await.unwrap();
    let key = stack
        .keys(Some(ALICE))
        .unwrap()
        .create_key(CreateKeyRequest {
            alias: "alias/dk".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap();
    let mut crypto = stack.crypto(Some(ALICE)).unwrap();

    // Data keys: the length rules, and the sealed copy opens to the same bytes.
    for (spec, bytes, want) in [
        (DataKeySpec::Unspecified, 0, 32usize),
        (DataKeySpec::Aes128, 0, 16),
        (DataKeySpec::Aes256, 0, 32),
        (DataKeySpec::Aes128, 1024, 1024),
        (DataKeySpec::Unspecified, 1, 1),
    ] {
        let dk = crypto
            .generate_data_key(GenerateDataKeyRequest {
                key_id: "alias/dk".into(),
                key_spec: spec as i32,
                number_of_bytes: bytes,
                encryption_context: ctx(&[("file", "a.txt")]),
                dry_run: false,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(dk.plaintext.len(), want, "{spec:?} {bytes}");
        assert_eq!(dk.key_id, key.key_id);
        assert_eq!(dk.key_version_id, key.primary_key_version_id);
        assert_eq!(
            decrypt(&stack, &dk.ciphertext_blob, &[("file", "a.txt")])
                .await
                .unwrap(),
            dk.plaintext
        );
    }
    let a = crypto
        .generate_data_key(GenerateDataKeyRequest {
            key_id: key.key_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let b = crypto
        .generate_data_key(GenerateDataKeyRequest {
            key_id: key.key_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(a.plaintext, b.plaintext, "two data keys are equal");

    let without = crypto
        .generate_data_key_without_plaintext(GenerateDataKeyWithoutPlaintextRequest {
            key_id: "alias/dk".into(),
            key_spec: DataKeySpec::Aes128 as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        decrypt(&stack, &without.ciphertext_blob, &[])
            .await
            .unwrap()
            .len(),
        16
    );

    for (bytes, spec, want) in [
        (1025, 0, "InvalidParameter.NumberOfBytes"),
        (-1, 0, "InvalidParameter.NumberOfBytes"),
        (0, 99, "InvalidParameter.KeySpec"),
    ] {
        let err = crypto
            .generate_data_key(GenerateDataKeyRequest {
                key_id: key.key_id.clone(),
                key_spec: spec,
                number_of_bytes: bytes,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            (err.code(), reason(&err).as_str()),
            (Code::InvalidArgument, want)
        );
    }
    let err = crypto
        .generate_data_key(GenerateDataKeyRequest {
            key_id: key.key_id.clone(),
            dry_run: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::FailedPrecondition, "DryRunOperationError")
    );
    let err = stack
        .crypto(Some(MALLORY))
        .unwrap()
        .generate_data_key(GenerateDataKeyRequest {
            key_id: key.key_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::NotFound, "Forbidden.KeyNotFound")
    );

    // ReEncrypt moves a ciphertext to another context without exposing it.
    let sealed = crypto
        .encrypt(EncryptRequest {
            key_id: key.key_id.clone(),
            plaintext: b"move me".to_vec(),
            encryption_context: ctx(&[("v", "1")]),
            dry_run: false,
        })
        .await
        .unwrap()
        .into_inner();
    let moved = crypto
        .re_encrypt(ReEncryptRequest {
            ciphertext_blob: sealed.ciphertext_blob.clone(),
            source_encryption_context: ctx(&[("v", "1")]),
            destination_key_id: "alias/dk".into(),
            destination_encryption_context: ctx(&[("v", "2")]),
            dry_run: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(moved.source_key_id, key.key_id);
    assert_eq!(moved.source_key_version_id, sealed.key_version_id);
    assert_eq!(moved.key_id, key.key_id);
    assert_eq!(
        decrypt(&stack, &moved.ciphertext_blob, &[("v", "2")])
            .await
            .unwrap(),
        b"move me"
    );
    assert_eq!(
        decrypt(&stack, &moved.ciphertext_blob, &[("v", "1")])
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    let err = crypto
        .re_encrypt(ReEncryptRequest {
            ciphertext_blob: sealed.ciphertext_blob.clone(),
            source_encryption_context: ctx(&[("v", "wrong")]),
            destination_key_id: "alias/dk".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::InvalidArgument, "InvalidCiphertext")
    );
    let err = crypto
        .re_encrypt(ReEncryptRequest {
            ciphertext_blob: sealed.ciphertext_blob.clone(),
            source_encryption_context: ctx(&[("v", "1")]),
            destination_key_id: "alias/missing".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::NotFound, "Forbidden.AliasNotFound")
    );

    // GenerateRandom: 1–1024 bytes, fresh each time.
    for len in [1, 32, 1024] {
        let r = crypto
            .generate_random(GenerateRandomRequest { length: len })
            .await
            .unwrap()
            .into_inner()
            .random;
        assert_eq!(r.len(), len as usize);
    }
    let r1 = crypto
        .generate_random(GenerateRandomRequest { length: 32 })
        .await
        .unwrap()
        .into_inner()
        .random;
    let r2 = crypto
        .generate_random(GenerateRandomRequest { length: 32 })
        .await
        .unwrap()
        .into_inner()
        .random;
    assert_ne!(r1, r2);
    for len in [0, -5, 1025] {
        let err = crypto
            .generate_random(GenerateRandomRequest { length: len })
            .await
            .unwrap_err();
        assert_eq!(
            (err.code(), reason(&err).as_str()),
            (Code::InvalidArgument, "InvalidParameter.Length")
        );
    }

    // GetRandomPassword: default length, the classes asked for, and bad rules.
    let p = crypto
        .get_random_password(GetRandomPasswordRequest::default())
        .await
        .unwrap()
        .into_inner()
        .password;
    assert_eq!(p.len(), 32);
    let p = crypto
        .get_random_password(GetRandomPasswordRequest {
            password_length: 40,
            exclude_punctuation: true,
            exclude_characters: "aeiouAEIOU01".into(),
            require_each_included_type: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .password;
    assert_eq!(p.len(), 40);
    assert!(
        p.chars()
            .all(|c| c.is_ascii_alphanumeric() && !"aeiouAEIOU01".contains(c)),
        "{p}"
    );
    assert!(p.chars().any(|c| c.is_ascii_digit()) && p.chars().any(|c| c.is_ascii_uppercase()));
    for (req, want) in [
        (
            GetRandomPasswordRequest {
                password_length: 7,
                ..Default::default()
            },
            "InvalidParameter.PasswordLength",
        ),
        (
            GetRandomPasswordRequest {
                exclude_lowercase: true,
                exclude_uppercase: true,
                exclude_numbers: true,
                exclude_punctuation: true,
                ..Default::default()
            },
            "InvalidParameter.ExcludeCharacters",
        ),
    ] {
        let err = crypto.get_random_password(req).await.unwrap_err();
        assert_eq!(
            (err.code(), reason(&err).as_str()),
            (Code::InvalidArgument, want)
        );
    }
    let err = stack
        .crypto(None)
        .unwrap()
        .generate_random(GenerateRandomRequest { length: 8 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}
