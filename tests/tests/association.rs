//! Key association end to end: calls from two principals reach the control plane through the
//! data plane's batched usage reports and show in CheckKeyAssociation with their operations
//! and times; a version that decrypted (or verified) shows its last use, one that never did
//! shows none; `kmsctl check-association` prints the same; a year later nothing shows.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kms_e2e::{ACCOUNT, ALICE, APP_USER, MALLORY, OPERATOR, Stack, bin_path, eventually, reason};
use kms_proto::kms::v1::*;
use tonic::Code;

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

async fn instance(stack: &Stack) -> String {
    stack
        .instances(Some(OPERATOR))
        .unwrap()
        .create_kms_instance(CreateKmsInstanceRequest {
            instance_type: InstanceType::Software as i32,
            owner_account_id: ACCOUNT.into(),
            key_quota: 10,
            access_management_quota: Some(5),
        })
        .await
        .unwrap()
        .into_inner()
        .kms_instance
        .unwrap()
        .kms_instance_id
}

async fn key(stack: &Stack, instance: &str, spec: KeySpec) -> KeyMetadata {
    stack
        .keys(Some(ALICE))
        .unwrap()
        .create_key(CreateKeyRequest {
            kms_instance_id: instance.into(),
            key_spec: spec as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap()
}

async fn encrypt(stack: &Stack, who: &str, key_id: &str) -> EncryptResponse {
    stack
        .crypto(Some(who))
        .unwrap()
        .encrypt(EncryptRequest {
            key_id: key_id.into(),
            plaintext: b"in use".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

async fn associations(stack: &Stack, key_id: &str) -> CheckKeyAssociationResponse {
    stack
        .keys(Some(ALICE))
        .unwrap()
        .check_key_association(CheckKeyAssociationRequest {
            key_id: key_id.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// (principal, operation) → last call, in seconds.
fn calls(r: &CheckKeyAssociationResponse) -> HashMap<(String, String), i64> {
    r.associations
        .iter()
        .map(|a| {
            (
                (a.principal.clone(), a.operation.clone()),
                a.last_called_at.unwrap().seconds,
            )
        })
        .collect()
}

/// version → last use, in seconds.
fn versions(r: &CheckKeyAssociationResponse) -> HashMap<String, Option<i64>> {
    r.version_usage
        .iter()
        .map(|v| (v.key_version_id.clone(), v.last_used_at.map(|t| t.seconds)))
        .collect()
}

/// Waits until the association shows `want` (principal, operation) pairs.
async fn wait_for(
    stack: &Stack,
    key_id: &str,
    want: &[(&str, &str)],
) -> CheckKeyAssociationResponse {
    eventually(Duration::from_secs(10), "usage reported", || async {
        let r = associations(stack, key_id).await;
        let seen = calls(&r);
        want.iter()
            .all(|(p, o)| seen.contains_key(&(p.to_string(), o.to_string())))
            .then_some(r)
    })
    .await
    .unwrap()
}

fn kmsctl(stack: &Stack, args: &[&str]) -> String {
    let out = Command::new(bin_path("kmsctl").unwrap())
        .args(args)
        .env(
            "KMS_CONTROL_ADDR",
            format!("http://{}", stack.control_addr()),
        )
        .env("KMS_DATA_ADDR", format!("http://{}", stack.data_addr()))
        .env("KMS_PRINCIPAL", ALICE)
        .env_remove("KMS_CA")
        .env_remove("KMS_CERT")
        .env_remove("KMS_KEY")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kmsctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn callers_and_versions_show_with_their_times() {
    let stack = Stack::start().await.unwrap();
    let inst = instance(&stack).await;
    let aes = key(&stack, &inst, KeySpec::AliyunAes256).await;
    let other = key(&stack, &inst, KeySpec::AliyunAes256).await;
    let v1 = aes.primary_key_version_id.clone();

    let t0 = now_s();
    let old_blob = encrypt(&stack, ALICE, &aes.key_id).await;
    assert_eq!(old_blob.key_version_id, v1);
    encrypt(&stack, APP_USER, &aes.key_id).await;
    let v2 = stack
        .keys(Some(ALICE))
        .unwrap()
        .create_key_version(CreateKeyVersionRequest {
            key_id: aes.key_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .key_version
        .unwrap()
        .key_version_id;
    // The data plane follows the new primary version.
    eventually(Duration::from_secs(5), "new primary version", || async {
        let r = encrypt(&stack, ALICE, &aes.key_id).await;
        (r.key_version_id == v2).then_some(())
    })
    .await
    .unwrap();
    let opened = stack
        .crypto(Some(APP_USER))
        .unwrap()
        .decrypt(DecryptRequest {
            ciphertext_blob: old_blob.ciphertext_blob.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(opened.key_version_id, v1);
    stack
        .crypto(Some(APP_USER))
        .unwrap()
        .re_encrypt(ReEncryptRequest {
            ciphertext_blob: old_blob.ciphertext_blob,
            destination_key_id: other.key_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let t1 = now_s();

    let r = wait_for(
        &stack,
        &aes.key_id,
        &[
            (ALICE, "Encrypt"),
            (APP_USER, "Encrypt"),
            (APP_USER, "Decrypt"),
            (APP_USER, "ReEncryptFrom"),
        ],
    )
    .await;
    let seen = calls(&r);
    assert_eq!(seen.len(), 4, "{seen:?}");
    for ((principal, op), at) in &seen {
        assert!(
            (t0 - 1..=t1 + 1).contains(at),
            "{principal} {op} at {at}, calls were in {t0}..={t1}"
        );
    }
    assert!(
        seen[&(ALICE.to_string(), "Encrypt".to_string())]
            >= seen[&(APP_USER.to_string(), "Encrypt".to_string())],
        "the latest call counts"
    );
    // Version 1 decrypted (twice); version 2 only encrypted, which is not reading with it.
    let used = versions(&r);
    assert_eq!(used.len(), 2, "{used:?}");
    let v1_used = used[&v1].expect("version 1 decrypted");
    assert!((t0 - 1..=t1 + 1).contains(&v1_used));
    assert_eq!(used[&v2], None, "version 2 never decrypted");
    // The destination of the re-encryption shows the caller too.
    let r = wait_for(&stack, &other.key_id, &[(APP_USER, "ReEncryptTo")]).await;
    assert_eq!(calls(&r).len(), 1);

    // Verifying reads with a version; signing does not.
    let ec = key(&stack, &inst, KeySpec::EcP256).await;
    let digest = vec![0x5a; 32];
    let signed = stack
        .crypto(Some(ALICE))
        .unwrap()
        .asymmetric_sign(AsymmetricSignRequest {
            key_id: ec.key_id.clone(),
            algorithm: Algorithm::EcdsaSha256 as i32,
            digest: digest.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let r = wait_for(&stack, &ec.key_id, &[(ALICE, "AsymmetricSign")]).await;
    assert_eq!(versions(&r)[&ec.primary_key_version_id], None);
    stack
        .crypto(Some(APP_USER))
        .unwrap()
        .asymmetric_verify(AsymmetricVerifyRequest {
            key_id: ec.key_id.clone(),
            algorithm: Algorithm::EcdsaSha256 as i32,
            digest,
            value: signed.value,
            ..Default::default()
        })
        .await
        .unwrap();
    let r = wait_for(&stack, &ec.key_id, &[(APP_USER, "AsymmetricVerify")]).await;
    assert!(versions(&r)[&ec.primary_key_version_id].is_some());

    // kmsctl shows the same.
    let text = kmsctl(&stack, &["check-association", &aes.key_id]);
    assert!(
        text.contains(APP_USER) && text.contains("ReEncryptFrom"),
        "{text}"
    );
    assert!(text.contains(&v2) && text.contains("never"), "{text}");
    let json: serde_json::Value = serde_json::from_str(&kmsctl(
        &stack,
        &["check-association", &aes.key_id, "--json"],
    ))
    .unwrap();
    assert_eq!(json["associations"].as_array().unwrap().len(), 4, "{json}");
    assert_eq!(json["version_usage"].as_array().unwrap().len(), 2, "{json}");

    // Only those who may describe the key may look.
    let err = stack
        .keys(Some(MALLORY))
        .unwrap()
        .check_key_association(CheckKeyAssociationRequest {
            key_id: aes.key_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::NotFound, "Forbidden.KeyNotFound")
    );

    // A year and a day later, by the control plane's clock, none of it shows.
    stack
        .advance_clock(Duration::from_secs(366 * 86_400))
        .unwrap();
    let r = associations(&stack, &aes.key_id).await;
    assert!(r.associations.is_empty(), "{:?}", r.associations);
    assert!(
        r.version_usage.iter().all(|v| v.last_used_at.is_none()),
        "{:?}",
        r.version_usage
    );
}
