//! The vertical slice through both planes: create a default key, encrypt and decrypt with it,
//! and the errors, restarts and at-rest guarantees around that.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use base64::Engine;
use kms_e2e::{ALICE, DATA_PRINCIPAL, MALLORY, Stack, contains, files_under, reason};
use kms_proto::kms::internal::v1::{GenerateKeyMaterialRequest, GetKeyRequest};
use kms_proto::kms::v1::*;
use tonic::Code;

fn ctx(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn create_default_key(stack: &Stack) -> KeyMetadata {
    stack
        .keys(Some(ALICE))
        .unwrap()
        .create_key(CreateKeyRequest {
            alias: "alias/app".into(),
            description: "first key".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap()
}

async fn encrypt(
    stack: &Stack,
    key_id: &str,
    plaintext: &[u8],
    context: &[(&str, &str)],
) -> EncryptResponse {
    stack
        .crypto(Some(ALICE))
        .unwrap()
        .encrypt(EncryptRequest {
            key_id: key_id.into(),
            plaintext: plaintext.to_vec(),
            encryption_context: ctx(context),
            dry_run: false,
        })
        .await
        .unwrap()
        .into_inner()
}

async fn decrypt(
    stack: &Stack,
    blob: &[u8],
    context: &[(&str, &str)],
) -> Result<DecryptResponse, tonic::Status> {
    stack
        .crypto(Some(ALICE))
        .unwrap()
        .decrypt(DecryptRequest {
            ciphertext_blob: blob.to_vec(),
            encryption_context: ctx(context),
            dry_run: false,
        })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_key_round_trip_errors_restart_and_nothing_plain_at_rest() {
    let mut stack = Stack::start().await.unwrap();
    let key = create_default_key(&stack).await;
    assert!(key.is_default_key);
    assert_eq!(key.key_spec, KeySpec::AliyunAes256 as i32);
    assert_eq!(key.key_usage, KeyUsage::EncryptDecrypt as i32);
    assert_eq!(key.key_state, KeyState::Enabled as i32);
    assert_eq!(key.protection_level, ProtectionLevel::Software as i32);
    assert_eq!(key.origin, KeyOrigin::Kms as i32);
    assert_eq!(key.rotation_status, RotationStatus::Enabled as i32);
    assert_eq!(
        key.rotation_interval.as_ref().map(|d| d.seconds),
        Some(365 * 86_400)
    );
    assert_eq!(key.aliases, vec!["alias/app".to_string()]);
    assert_eq!(key.creator, ALICE);
    assert_eq!(
        key.arn,
        format!("acs:kms:local:{}:key/{}", kms_e2e::ACCOUNT, key.key_id)
    );

    // DescribeKey by id, alias and ARN all resolve to the same key.
    for name in [key.key_id.clone(), "alias/app".into(), key.arn.clone()] {
        let got = stack
            .keys(Some(ALICE))
            .unwrap()
            .describe_key(DescribeKeyRequest {
                key_id: name.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .key_metadata
            .unwrap();
        assert_eq!(got, key, "describe by {name}");
    }

    // Round trip, by alias, with an encryption context given in another order on decrypt.
    let secret_message = b"attack at dawn, 7c1f0e54";
    let sealed = encrypt(
        &stack,
        "alias/app",
        secret_message,
        &[("purpose", "test"), ("tenant", "t1")],
    )
    .await;
    assert_eq!(sealed.key_id, key.key_id);
    assert_eq!(sealed.key_version_id, key.primary_key_version_id);
    assert!(sealed.ciphertext_blob.starts_with(b"KMS1"));
    let opened = decrypt(
        &stack,
        &sealed.ciphertext_blob,
        &[("tenant", "t1"), ("purpose", "test")],
    )
    .await
    .unwrap();
    assert_eq!(opened.plaintext, secret_message);
    assert_eq!(opened.key_id, key.key_id);
    assert_eq!(opened.key_version_id, key.primary_key_version_id);

    // Two encryptions of the same message differ (fresh IV).
    let again = encrypt(
        &stack,
        &key.key_id,
        secret_message,
        &[("purpose", "test"), ("tenant", "t1")],
    )
    .await;
    assert_ne!(again.ciphertext_blob, sealed.ciphertext_blob);

    // Another encryption context, a missing one, or an extra entry: INVALID_ARGUMENT.
    for wrong in [
        vec![("purpose", "test"), ("tenant", "t2")],
        vec![("purpose", "test")],
        vec![],
        vec![("purpose", "test"), ("tenant", "t1"), ("x", "y")],
    ] {
        let err = decrypt(&stack, &sealed.ciphertext_blob, &wrong)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{wrong:?}");
        assert_eq!(reason(&err), "InvalidCiphertext");
    }

    // A flipped bit anywhere in the blob: INVALID_ARGUMENT, never a crash or a plaintext.
    let blob = &sealed.ciphertext_blob;
    for pos in [0, 3, 4, 19, 20, 31, 32, blob.len() - 17, blob.len() - 1] {
        let mut bad = blob.clone();
        bad[pos] ^= 0x01;
        let err = decrypt(&stack, &bad, &[("purpose", "test"), ("tenant", "t1")])
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "bit flipped at {pos}");
    }
    for bad in [
        vec![],
        b"KMS1".to_vec(),
        blob[..blob.len() - 1].to_vec(),
        b"garbage".repeat(10),
    ] {
        let err = decrypt(&stack, &bad, &[]).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(reason(&err), "InvalidCiphertext");
    }

    // Input validation on Encrypt.
    let mut crypto = stack.crypto(Some(ALICE)).unwrap();
    let cases = [
        (key.key_id.clone(), vec![], "InvalidParameter.Plaintext"),
        (
            key.key_id.clone(),
            vec![0u8; 6 * 1024 + 1],
            "InvalidParameter.Plaintext",
        ),
        ("not-a-key".into(), b"x".to_vec(), "InvalidParameter.KeyId"),
        ("".into(), b"x".to_vec(), "InvalidParameter.KeyId"),
    ];
    for (key_id, plaintext, want) in cases {
        let err = crypto
            .encrypt(EncryptRequest {
                key_id,
                plaintext,
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
        .encrypt(EncryptRequest {
            key_id: key.key_id.clone(),
            plaintext: b"x".to_vec(),
            encryption_context: ctx(&[("k", &"v".repeat(8192))]),
            dry_run: false,
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "InvalidParameter.EncryptionContext");
    let err = crypto
        .encrypt(EncryptRequest {
            key_id: "alias/nope".into(),
            plaintext: b"x".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::NotFound, "Forbidden.AliasNotFound")
    );
    let err = crypto
        .encrypt(EncryptRequest {
            key_id: key.key_id.clone(),
            plaintext: b"x".to_vec(),
            dry_run: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::FailedPrecondition, "DryRunOperationError")
    );

    // A second default key for the account is refused; a key with tags is refused.
    let err = stack
        .keys(Some(ALICE))
        .unwrap()
        .create_key(CreateKeyRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::AlreadyExists, "Forbidden.DefaultKeyExists")
    );
    let err = stack
        .keys(Some(ALICE))
        .unwrap()
        .create_key(CreateKeyRequest {
            alias: "alias/acs/x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::InvalidArgument, "InvalidParameter.AliasName")
    );

    // No identity: UNAUTHENTICATED on both planes.
    let err = stack
        .keys(None)
        .unwrap()
        .describe_key(DescribeKeyRequest {
            key_id: key.key_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::Unauthenticated, "Forbidden.NoIdentity")
    );
    let err = stack
        .crypto(None)
        .unwrap()
        .decrypt(DecryptRequest {
            ciphertext_blob: sealed.ciphertext_blob.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = stack
        .crypto(Some("bob"))
        .unwrap()
        .decrypt(DecryptRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    // Missing or malformed, the answer says what to send, in the form expected, and for a
    // malformed one what was wrong with it.
    let form = "acs:ram::<16-digit account>:root|user/<name>|role/<name>";
    let example = "acs:ram::1234567890123456:root";
    assert!(
        err.message()
            .contains("the x-kms-principal header is not a principal ARN: \"bob\"")
            && err.message().contains(form)
            && err.message().contains(example),
        "{}",
        err.message()
    );
    let missing = stack
        .keys(None)
        .unwrap()
        .describe_key(DescribeKeyRequest {
            key_id: key.key_id.clone(),
        })
        .await
        .unwrap_err();
    assert!(
        missing.message().contains("x-kms-principal header")
            && missing.message().contains(form)
            && missing.message().contains(example),
        "{}",
        missing.message()
    );
    for (bad, why) in [
        ("1234567890123456", "an account id alone"),
        ("root", "does not start with `acs:ram::`"),
        ("acs:ram:123:root", "two colons"),
    ] {
        let err = stack
            .keys(Some(bad))
            .unwrap()
            .describe_key(DescribeKeyRequest {
                key_id: key.key_id.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(
            (err.code(), reason(&err).as_str()),
            (Code::Unauthenticated, "Forbidden.NoIdentity"),
            "{bad}"
        );
        assert!(
            err.message().contains(&format!("{bad:?}: "))
                && err.message().contains(why)
                && err.message().contains(form)
                && err.message().contains(example),
            "{}",
            err.message()
        );
    }

    // Another account neither sees the key nor uses it.
    let err = stack
        .keys(Some(MALLORY))
        .unwrap()
        .describe_key(DescribeKeyRequest {
            key_id: key.key_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::NotFound, "Forbidden.KeyNotFound")
    );
    let err = stack
        .crypto(Some(MALLORY))
        .unwrap()
        .decrypt(DecryptRequest {
            ciphertext_blob: sealed.ciphertext_blob.clone(),
            encryption_context: ctx(&[("purpose", "test"), ("tenant", "t1")]),
            dry_run: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = stack
        .crypto(Some(MALLORY))
        .unwrap()
        .encrypt(EncryptRequest {
            key_id: "alias/app".into(),
            plaintext: b"x".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::NotFound, "Forbidden.AliasNotFound")
    );

    // The internal services answer only the other plane.
    let err = stack
        .directory(Some(ALICE))
        .unwrap()
        .get_key(GetKeyRequest {
            key_id: key.key_id.clone(),
            principal: ALICE.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = stack
        .material(Some(ALICE))
        .unwrap()
        .generate(GenerateKeyMaterialRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let entry = stack
        .directory(Some(DATA_PRINCIPAL))
        .unwrap()
        .get_key(GetKeyRequest {
            key_id: key.key_id.clone(),
            principal: ALICE.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .key
        .unwrap();
    assert_eq!(entry.versions.len(), 1);
    let wrapped = entry.versions[0].wrapped_material.clone();
    assert!(
        wrapped.len() >= 32 + 12 + 16,
        "sealed material is too short to hold a key"
    );

    // Import parameters are only for keys created to take imported material.
    let err = stack
        .keys(Some(ALICE))
        .unwrap()
        .get_parameters_for_import(GetParametersForImportRequest {
            key_id: key.key_id.clone(),
            wrapping_algorithm: Algorithm::RsaesOaepSha256 as i32,
            wrapping_key_spec: KeySpec::Rsa2048 as i32,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(reason(&err), "InvalidParameter.Origin", "{}", err.message());

    // Both planes restart on the same data; the key and old ciphertexts still work.
    stack.restart().await.unwrap();
    let opened = decrypt(
        &stack,
        &sealed.ciphertext_blob,
        &[("purpose", "test"), ("tenant", "t1")],
    )
    .await
    .unwrap();
    assert_eq!(opened.plaintext, secret_message);
    let after = encrypt(&stack, "alias/app", b"after restart", &[]).await;
    assert_eq!(
        decrypt(&stack, &after.ciphertext_blob, &[])
            .await
            .unwrap()
            .plaintext,
        b"after restart"
    );

    // Nothing secret at rest: learn the real key material by unsealing it through the token
    // with the planes stopped, then scan every sled file and log for it and for the message.
    stack.stop().await.unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kms-e2e-unseal"))
        .arg(stack.sled_dir())
        .env("SOFTHSM2_CONF", stack.softhsm_conf())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let materials: Vec<Vec<u8>> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| hex::decode(l).unwrap())
        .collect();
    assert_eq!(materials.len(), 1);
    assert_eq!(materials[0].len(), 32);
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut needles: Vec<(String, Vec<u8>)> = vec![("message".into(), secret_message.to_vec())];
    for m in &materials {
        needles.push(("material".into(), m.clone()));
        needles.push(("material hex".into(), hex::encode(m).into_bytes()));
        needles.push(("material base64".into(), b64.encode(m).into_bytes()));
        needles.push(("material prefix".into(), m[..16].to_vec()));
    }
    let mut scanned = 0;
    for file in files_under(&stack.sled_dir())
        .unwrap()
        .into_iter()
        .chain(files_under(&stack.dir().join("logs")).unwrap())
    {
        let bytes = std::fs::read(&file).unwrap();
        scanned += bytes.len();
        for (what, needle) in &needles {
            assert!(
                !contains(&bytes, needle),
                "{what} found in {}",
                file.display()
            );
        }
    }
    assert!(scanned > 0, "nothing was scanned");
    // The sealed material itself is in sled: the scan reads the right files.
    let sled_bytes: Vec<u8> = files_under(&stack.sled_dir())
        .unwrap()
        .iter()
        .flat_map(|f| std::fs::read(f).unwrap())
        .collect();
    assert!(
        contains(&sled_bytes, b64.encode(&wrapped).as_bytes()),
        "the sealed material is not where the scan looks"
    );
}
