//! Backup and restore of the control plane through the real binaries and `kmsctl admin`, on
//! the stack's engine (`KMS_TEST_STORE`): keys of every spec in a software and a hardware
//! instance are used (encryption, data keys, asymmetric encryption, signatures), a backup is
//! taken while calls keep coming, the control plane's store is destroyed and restored from the
//! backup, and everything made before it still decrypts and verifies, with the same metadata
//! and public keys. The backup holds no plaintext: neither what was encrypted, nor data keys,
//! nor software key material. A truncated, damaged or foreign file, a store that is not empty
//! or in use, and a caller who is not an operator are refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Output;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use kms_e2e::{
    ACCOUNT, ALICE, DATA_PRINCIPAL, Engine, OPERATOR, Stack, bin_path, contains, eventually,
};
use kms_proto::kms::internal::v1::GetKeyRequest;
use kms_proto::kms::v1::*;
use serde_json::Value;

/// Runs `kmsctl args` as `principal` against the stack.
async fn kmsctl(stack: &Stack, principal: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(bin_path("kmsctl").unwrap())
        .args(args)
        .env(
            "KMS_CONTROL_ADDR",
            format!("http://{}", stack.control_addr()),
        )
        .env("KMS_DATA_ADDR", format!("http://{}", stack.data_addr()))
        .env("KMS_PRINCIPAL", principal)
        .env_remove("KMS_CA")
        .env_remove("KMS_CERT")
        .env_remove("KMS_KEY")
        .output()
        .await
        .unwrap()
}

/// `kmsctl args --json` as `principal`, which must succeed; its answer.
async fn kmsctl_json(stack: &Stack, principal: &str, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    let out = kmsctl(stack, principal, &args).await;
    assert!(
        out.status.success(),
        "kmsctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `kmsctl args` as `principal`, which must fail; its stderr.
async fn kmsctl_refused(stack: &Stack, principal: &str, args: &[&str]) -> String {
    let out = kmsctl(stack, principal, args).await;
    assert!(!out.status.success(), "kmsctl {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `kmsctl admin restore` of `file` into the store of the stack's control plane, as its config
/// names it (`--dir` for sled, `--config` for etcd).
async fn restore_into_stack(stack: &Stack, file: &Path) -> Output {
    let dir = stack.sled_dir();
    let config = stack.control_config();
    let target = match stack.engine() {
        Engine::Sled => ["--dir", p(&dir)],
        Engine::Etcd => ["--config", p(&config)],
    };
    let mut args = vec!["admin", "restore", "--in", p(file), "--json"];
    args.extend(target);
    kmsctl(stack, OPERATOR, &args).await
}

async fn instance(stack: &Stack, kind: InstanceType) -> String {
    stack
        .instances(Some(OPERATOR))
        .unwrap()
        .create_kms_instance(CreateKmsInstanceRequest {
            instance_type: kind as i32,
            owner_account_id: ACCOUNT.into(),
            key_quota: 100,
            access_management_quota: Some(5),
        })
        .await
        .unwrap()
        .into_inner()
        .kms_instance
        .unwrap()
        .kms_instance_id
}

async fn create_key(stack: &Stack, instance: &str, spec: KeySpec, usage: KeyUsage) -> KeyMetadata {
    stack
        .keys(Some(ALICE))
        .unwrap()
        .create_key(CreateKeyRequest {
            kms_instance_id: instance.into(),
            key_spec: spec as i32,
            key_usage: usage as i32,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("create {spec:?} {usage:?}: {e}"))
        .into_inner()
        .key_metadata
        .unwrap()
}

/// Something made before the backup, to check after the restore.
#[derive(Debug)]
enum Made {
    /// A symmetric ciphertext (`Encrypt` or a data key) and its plaintext.
    Sealed { blob: Vec<u8>, plaintext: Vec<u8> },
    /// An `AsymmetricEncrypt` ciphertext and its plaintext.
    Asymmetric {
        key_id: String,
        version: String,
        ciphertext: Vec<u8>,
        plaintext: Vec<u8>,
    },
    /// A signature over `digest`.
    Signed {
        key_id: String,
        version: String,
        algorithm: Algorithm,
        digest: Vec<u8>,
        signature: Vec<u8>,
    },
}

/// The specs an instance type offers, each with the usages it takes.
fn specs(kind: InstanceType) -> Vec<(KeySpec, Vec<KeyUsage>)> {
    use KeyUsage::{EncryptDecrypt as Enc, SignVerify as Sign};
    let mut specs = vec![(KeySpec::AliyunAes256, vec![Enc])];
    if kind == InstanceType::Hardware {
        specs.push((KeySpec::AliyunAes192, vec![Enc]));
        specs.push((KeySpec::AliyunAes128, vec![Enc]));
    }
    specs.push((KeySpec::Rsa2048, vec![Enc, Sign]));
    specs.push((KeySpec::Rsa3072, vec![Enc, Sign]));
    if kind == InstanceType::Hardware {
        specs.push((KeySpec::Rsa4096, vec![Enc, Sign]));
    }
    specs.push((KeySpec::EcP256, vec![Sign]));
    specs.push((KeySpec::EcP256k, vec![Sign]));
    specs
}

/// Uses `key` once or twice as its spec and usage allow; what was made, and the plaintexts.
async fn use_key(
    stack: &Stack,
    key: &KeyMetadata,
    made: &mut Vec<Made>,
    secrets: &mut Vec<Vec<u8>>,
) {
    let mut crypto = stack.crypto(Some(ALICE)).unwrap();
    let spec = KeySpec::try_from(key.key_spec).unwrap();
    let usage = KeyUsage::try_from(key.key_usage).unwrap();
    let id = key.key_id.clone();
    let version = key.primary_key_version_id.clone();
    let plaintext = format!("made with {id} before the backup").into_bytes();
    match (spec, usage) {
        (KeySpec::AliyunAes256 | KeySpec::AliyunAes192 | KeySpec::AliyunAes128, _) => {
            let blob = crypto
                .encrypt(EncryptRequest {
                    key_id: id.clone(),
                    plaintext: plaintext.clone(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .ciphertext_blob;
            made.push(Made::Sealed {
                blob,
                plaintext: plaintext.clone(),
            });
            let data_key = crypto
                .generate_data_key(GenerateDataKeyRequest {
                    key_id: id,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            secrets.push(data_key.plaintext.clone());
            made.push(Made::Sealed {
                blob: data_key.ciphertext_blob,
                plaintext: data_key.plaintext,
            });
        }
        (_, KeyUsage::EncryptDecrypt) => {
            let ciphertext = crypto
                .asymmetric_encrypt(AsymmetricEncryptRequest {
                    key_id: id.clone(),
                    key_version_id: version.clone(),
                    algorithm: Algorithm::RsaesOaepSha256 as i32,
                    plaintext: plaintext.clone(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .ciphertext_blob;
            made.push(Made::Asymmetric {
                key_id: id,
                version,
                ciphertext,
                plaintext: plaintext.clone(),
            });
        }
        (_, _) => {
            let algorithm = match spec {
                KeySpec::EcP256 | KeySpec::EcP256k => Algorithm::EcdsaSha256,
                _ => Algorithm::RsaPssSha256,
            };
            let digest: Vec<u8> = (0..32u8).map(|i| i ^ id.as_bytes()[4]).collect();
            let signature = crypto
                .asymmetric_sign(AsymmetricSignRequest {
                    key_id: id.clone(),
                    key_version_id: version.clone(),
                    algorithm: algorithm as i32,
                    digest: digest.clone(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .value;
            made.push(Made::Signed {
                key_id: id,
                version,
                algorithm,
                digest,
                signature,
            });
        }
    }
    secrets.push(plaintext);
}

/// Checks that `item` still opens or verifies.
async fn check(stack: &Stack, item: &Made) {
    let mut crypto = stack.crypto(Some(ALICE)).unwrap();
    match item {
        Made::Sealed { blob, plaintext } => {
            let opened = crypto
                .decrypt(DecryptRequest {
                    ciphertext_blob: blob.clone(),
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|e| panic!("decrypting after the restore: {e}"))
                .into_inner();
            assert_eq!(&opened.plaintext, plaintext);
        }
        Made::Asymmetric {
            key_id,
            version,
            ciphertext,
            plaintext,
        } => {
            let opened = crypto
                .asymmetric_decrypt(AsymmetricDecryptRequest {
                    key_id: key_id.clone(),
                    key_version_id: version.clone(),
                    algorithm: Algorithm::RsaesOaepSha256 as i32,
                    ciphertext_blob: ciphertext.clone(),
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|e| panic!("decrypting with {key_id} after the restore: {e}"))
                .into_inner();
            assert_eq!(&opened.plaintext, plaintext, "{key_id}");
        }
        Made::Signed {
            key_id,
            version,
            algorithm,
            digest,
            signature,
        } => {
            let verified = crypto
                .asymmetric_verify(AsymmetricVerifyRequest {
                    key_id: key_id.clone(),
                    key_version_id: version.clone(),
                    algorithm: *algorithm as i32,
                    digest: digest.clone(),
                    value: signature.clone(),
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|e| panic!("verifying with {key_id} after the restore: {e}"))
                .into_inner();
            assert!(verified.value, "{key_id}: the signature no longer verifies");
        }
    }
}

async fn describe(stack: &Stack, key_id: &str) -> KeyMetadata {
    stack
        .keys(Some(ALICE))
        .unwrap()
        .describe_key(DescribeKeyRequest {
            key_id: key_id.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("describing {key_id}: {e}"))
        .into_inner()
        .key_metadata
        .unwrap()
}

async fn public_key(stack: &Stack, key_id: &str) -> String {
    stack
        .crypto(Some(ALICE))
        .unwrap()
        .get_public_key(GetPublicKeyRequest {
            key_id: key_id.into(),
            key_version_id: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("public key of {key_id}: {e}"))
        .into_inner()
        .public_key
}

/// The software key material the backup `file` holds sealed, opened through the stack's token
/// by the test tool, one entry per version.
fn software_materials(stack: &Stack, file: &Path) -> Vec<Vec<u8>> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kms-e2e-unseal"))
        .arg(file)
        .env("SOFTHSM2_CONF", stack.softhsm_conf())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| hex::decode(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_made_before_a_backup_under_load_works_after_the_store_is_destroyed_and_restored()
 {
    let mut stack = Stack::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("control.kmsbak");

    // Keys of every spec and usage in both instance types, and the default key.
    let mut keys: Vec<KeyMetadata> = Vec::new();
    let default_key = stack
        .keys(Some(ALICE))
        .unwrap()
        .create_key(CreateKeyRequest {
            key_spec: KeySpec::AliyunAes256 as i32,
            key_usage: KeyUsage::EncryptDecrypt as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap();
    keys.push(default_key);
    let mut software_versions = 1;
    let mut software = String::new();
    for kind in [InstanceType::Software, InstanceType::Hardware] {
        let inst = instance(&stack, kind).await;
        if kind == InstanceType::Software {
            software = inst.clone();
        }
        for (spec, usages) in specs(kind) {
            for usage in usages {
                keys.push(create_key(&stack, &inst, spec, usage).await);
                if kind == InstanceType::Software {
                    software_versions += 1;
                }
            }
        }
    }
    let mut made = Vec::new();
    let mut secrets = Vec::new();
    for key in &keys {
        use_key(&stack, key, &mut made, &mut secrets).await;
    }
    // A key with two versions, an alias and a tag: each version's ciphertext opens after.
    let rotated = keys[1].key_id.clone();
    let mut admin = stack.keys(Some(ALICE)).unwrap();
    admin
        .create_key_version(CreateKeyVersionRequest {
            key_id: rotated.clone(),
        })
        .await
        .unwrap();
    software_versions += 1;
    admin
        .create_alias(CreateAliasRequest {
            alias_name: "alias/kept".into(),
            key_id: rotated.clone(),
        })
        .await
        .unwrap();
    admin
        .tag_resources(TagResourcesRequest {
            key_ids: vec![rotated.clone()],
            tags: vec![Tag {
                key: "backup".into(),
                value: "kept".into(),
            }],
        })
        .await
        .unwrap();
    let second = describe(&stack, &rotated).await;
    use_key(&stack, &second, &mut made, &mut secrets).await;

    // What the keys look like before, to compare after.
    let mut described = Vec::new();
    for key in &keys {
        let public = match KeySpec::try_from(key.key_spec).unwrap() {
            KeySpec::AliyunAes256 | KeySpec::AliyunAes192 | KeySpec::AliyunAes128 => None,
            _ => Some(public_key(&stack, &key.key_id).await),
        };
        described.push((describe(&stack, &key.key_id).await, public));
    }

    // Load: encryptions through the data plane, and writes to the control plane on a key of
    // their own, until the backup is done.
    let load_key = keys[1].key_id.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let sealed_under_load = Arc::new(Mutex::new(Vec::new()));
    let load = {
        let (stop, calls, sealed) = (
            Arc::clone(&stop),
            Arc::clone(&calls),
            Arc::clone(&sealed_under_load),
        );
        let mut crypto = stack.crypto(Some(ALICE)).unwrap();
        let mut manage = stack.keys(Some(ALICE)).unwrap();
        let description_key = keys[2].key_id.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let plaintext = format!("under load {n}").into_bytes();
                let blob = crypto
                    .encrypt(EncryptRequest {
                        key_id: load_key.clone(),
                        plaintext: plaintext.clone(),
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .ciphertext_blob;
                sealed
                    .lock()
                    .unwrap()
                    .push(Made::Sealed { blob, plaintext });
                manage
                    .update_key_description(UpdateKeyDescriptionRequest {
                        key_id: description_key.clone(),
                        description: format!("written under load {n}"),
                    })
                    .await
                    .unwrap();
                calls.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    eventually(Duration::from_secs(30), "the load to get going", || async {
        (calls.load(Ordering::Relaxed) >= 5).then_some(())
    })
    .await
    .unwrap();
    let before = calls.load(Ordering::Relaxed);
    let taken = kmsctl_json(&stack, OPERATOR, &["admin", "backup", "--out", p(&file)]).await;
    let during = calls.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert!(during > 0, "no call completed while the backup was taken");
    let entries = taken["entries"].as_u64().unwrap();
    assert!(entries as usize > keys.len(), "{taken}");
    assert_eq!(
        taken["layout"].as_u64(),
        Some(u64::from(kms_control::schema::LAYOUT_VERSION))
    );
    assert_eq!(
        taken["bytes"].as_u64().unwrap(),
        std::fs::metadata(&file).unwrap().len()
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the backup is readable by others");
    }

    // Nothing in plaintext: neither what was encrypted, nor data keys, nor software key
    // material (learnt by unsealing it through the token); the sealed material is there.
    let bytes = std::fs::read(&file).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    for secret in &secrets {
        assert!(!contains(&bytes, secret), "a plaintext is in the backup");
        assert!(
            !contains(&bytes, b64.encode(secret).as_bytes()),
            "a plaintext is in the backup"
        );
    }
    let sealed = stack
        .directory(Some(DATA_PRINCIPAL))
        .unwrap()
        .get_key(GetKeyRequest {
            key_id: rotated.clone(),
            principal: ALICE.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .key
        .unwrap()
        .versions[0]
        .wrapped_material
        .clone();
    assert!(
        contains(&bytes, b64.encode(&sealed).as_bytes()),
        "the sealed material is not where the check looks"
    );

    // Disaster: the control plane's store is gone. Restore it and start both planes again (the
    // data plane too, so nothing it holds in its cache can answer for the store).
    stack.stop().await.unwrap();
    // The token is read with the planes stopped.
    let materials = software_materials(&stack, &file);
    assert_eq!(
        materials.len(),
        software_versions,
        "software key versions in the backup"
    );
    for m in &materials {
        for needle in [
            m.clone(),
            hex::encode(m).into_bytes(),
            b64.encode(m).into_bytes(),
        ] {
            assert!(!contains(&bytes, &needle), "key material is in the backup");
        }
    }
    stack.wipe_store().unwrap();
    let out = restore_into_stack(&stack, &file).await;
    assert!(
        out.status.success(),
        "restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restored: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(restored["entries"].as_u64(), Some(entries), "{restored}");
    stack.restart().await.unwrap();

    for item in &made {
        check(&stack, item).await;
    }
    let under_load = std::mem::take(&mut *sealed_under_load.lock().unwrap());
    assert!(!under_load.is_empty());
    for item in &under_load {
        check(&stack, item).await;
    }
    for (before, public) in &described {
        let after = describe(&stack, &before.key_id).await;
        if after.key_id == keys[2].key_id {
            // Its description was being rewritten while the backup was taken.
            assert!(
                after.description.starts_with("written under load"),
                "{after:?}"
            );
        } else {
            assert_eq!(&after, before, "metadata of {}", before.key_id);
        }
        if let Some(public) = public {
            assert_eq!(&public_key(&stack, &before.key_id).await, public);
        }
    }
    // The alias resolves, and the service goes on: new keys, new ciphertexts.
    let by_alias = describe(&stack, "alias/kept").await;
    assert_eq!(by_alias.key_id, rotated);
    let later = create_key(
        &stack,
        &software,
        KeySpec::AliyunAes256,
        KeyUsage::EncryptDecrypt,
    )
    .await;
    let mut after_made = Vec::new();
    use_key(&stack, &later, &mut after_made, &mut Vec::new()).await;
    for item in &after_made {
        check(&stack, item).await;
    }
    stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_truncated_and_foreign_files_and_stores_in_use_are_refused() {
    let stack = Stack::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let software = instance(&stack, InstanceType::Software).await;
    create_key(
        &stack,
        &software,
        KeySpec::AliyunAes256,
        KeyUsage::EncryptDecrypt,
    )
    .await;
    let good = d.join("good.kmsbak");
    kmsctl_json(&stack, OPERATOR, &["admin", "backup", "--out", p(&good)]).await;
    let bytes = std::fs::read(&good).unwrap();

    let truncated = d.join("truncated.kmsbak");
    std::fs::write(&truncated, &bytes[..bytes.len() - 40]).unwrap();
    let damaged = d.join("damaged.kmsbak");
    // A byte of the last record (the last bytes before the end marker, entry count and
    // checksum): a damaged value, not a damaged length.
    let mut flipped = bytes.clone();
    flipped[bytes.len() - kms_store::backup::TRAILER_LEN - 2] ^= 0x01;
    std::fs::write(&damaged, &flipped).unwrap();
    let foreign = d.join("notes.txt");
    std::fs::write(&foreign, "these are not the records you are looking for\n").unwrap();

    for (file, says) in [
        (&truncated, "truncated"),
        (&damaged, "checksum does not match"),
        (&foreign, "not a KMS backup file"),
    ] {
        let target = d.join(format!(
            "restored-{}",
            file.file_name().unwrap().to_str().unwrap()
        ));
        let err = kmsctl_refused(
            &stack,
            OPERATOR,
            &["admin", "restore", "--dir", p(&target), "--in", p(file)],
        )
        .await;
        assert!(err.contains(says), "{}: {err}", file.display());
        assert!(err.contains("nothing was written"), "{err}");
        let store = kms_store::SledStore::open(&target).unwrap();
        assert!(
            kms_store::Store::scan_prefix(&store, b"", None, 1)
                .unwrap()
                .is_empty(),
            "{} wrote something",
            file.display()
        );
    }

    // Into a store that holds something: a restored one, and the running control plane's.
    let once = d.join("once");
    let args = ["admin", "restore", "--dir", p(&once), "--in", p(&good)];
    kmsctl_json(&stack, OPERATOR, &args).await;
    let err = kmsctl_refused(&stack, OPERATOR, &args).await;
    assert!(err.contains("is not empty"), "{err}");
    let out = restore_into_stack(&stack, &good).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let refusal = match stack.engine() {
        Engine::Sled => "stop it first",
        Engine::Etcd => "is not empty",
    };
    assert!(err.contains(refusal), "{err}");
    // The running control plane did not notice.
    create_key(
        &stack,
        &software,
        KeySpec::AliyunAes256,
        KeyUsage::EncryptDecrypt,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_operators_take_backups() {
    let stack = Stack::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mine.kmsbak");
    let err = kmsctl_refused(&stack, ALICE, &["admin", "backup", "--out", p(&file)]).await;
    assert!(err.contains("PERMISSION_DENIED"), "{err}");
    assert!(!file.exists(), "a refused backup left a file");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    let status = stack
        .admin(Some(ALICE))
        .unwrap()
        .backup(BackupRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    // The refusal is audited, naming the caller and the RPC.
    eventually(
        Duration::from_secs(10),
        "the refusal's audit line",
        || async {
            let log = std::fs::read_to_string(stack.dir().join("logs/control-audit.log")).ok()?;
            log.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .any(|l| {
                    l["action"] == "kms.v1.AdminService/Backup"
                        && l["principal"] == ALICE
                        && l["outcome"] == "denied"
                })
                .then_some(())
        },
    )
    .await
    .unwrap();
}
