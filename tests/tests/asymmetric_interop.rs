//! Every asymmetric spec and algorithm, on software and hardware (HSM) keys, checked against
//! OpenSSL as the independent implementation: its verifier accepts our signatures made with
//! the PEM from GetPublicKey, what it encrypts to that PEM decrypts through AsymmetricDecrypt,
//! and data keys exported to an OpenSSL key pair decrypt with OpenSSL's private key. AES keys
//! of every size round-trip on hardware keys.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use kms_e2e::{ACCOUNT, ALICE, OPERATOR, Stack, reason};
use kms_proto::kms::v1::*;
use tonic::Code;

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn openssl_ok(args: &[&str]) -> bool {
    Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed")
        .status
        .success()
}

fn sha256(dir: &Path, data: &[u8]) -> Vec<u8> {
    let f = dir.join("digest-input.bin");
    std::fs::write(&f, data).unwrap();
    openssl(&["dgst", "-sha256", "-binary", f.to_str().unwrap()])
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

async fn key(stack: &Stack, instance: &str, spec: KeySpec, usage: KeyUsage) -> String {
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
        .key_id
}

async fn public_pem(stack: &Stack, key_id: &str, dir: &Path, name: &str) -> std::path::PathBuf {
    let pem = stack
        .crypto(Some(ALICE))
        .unwrap()
        .get_public_key(GetPublicKeyRequest {
            key_id: key_id.into(),
            key_version_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .public_key;
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
    let path = dir.join(format!("{name}.pem"));
    std::fs::write(&path, pem).unwrap();
    // OpenSSL parses it as a public key.
    openssl(&["pkey", "-pubin", "-in", path.to_str().unwrap(), "-noout"]);
    path
}

async fn check_signatures(
    stack: &Stack,
    key_id: &str,
    algorithm: Algorithm,
    dir: &Path,
    name: &str,
) {
    let pem = public_pem(stack, key_id, dir, name).await;
    let message = format!("message signed by {name}").into_bytes();
    let msg_file = dir.join(format!("{name}.msg"));
    std::fs::write(&msg_file, &message).unwrap();
    let digest = sha256(dir, &message);
    let mut crypto = stack.crypto(Some(ALICE)).unwrap();
    let signed = crypto
        .asymmetric_sign(AsymmetricSignRequest {
            key_id: key_id.into(),
            algorithm: algorithm as i32,
            digest: digest.clone(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{name}: sign: {e}"))
        .into_inner();
    let sig_file = dir.join(format!("{name}.sig"));
    std::fs::write(&sig_file, &signed.value).unwrap();
    let mut args = vec![
        "dgst",
        "-sha256",
        "-verify",
        pem.to_str().unwrap(),
        "-signature",
        sig_file.to_str().unwrap(),
    ];
    if algorithm == Algorithm::RsaPssSha256 {
        args.extend([
            "-sigopt",
            "rsa_padding_mode:pss",
            "-sigopt",
            "rsa_pss_saltlen:32",
            "-sigopt",
            "rsa_mgf1_md:sha256",
        ]);
    }
    args.push(msg_file.to_str().unwrap());
    assert!(
        openssl_ok(&args),
        "{name}: OpenSSL does not verify our {algorithm:?} signature"
    );

    // Our verifier agrees, and refuses a signature over another digest.
    let verify = |digest: Vec<u8>, value: Vec<u8>| AsymmetricVerifyRequest {
        key_id: key_id.into(),
        key_version_id: signed.key_version_id.clone(),
        algorithm: algorithm as i32,
        digest,
        value,
        dry_run: false,
    };
    assert!(
        crypto
            .asymmetric_verify(verify(digest.clone(), signed.value.clone()))
            .await
            .unwrap()
            .into_inner()
            .value
    );
    let other = sha256(dir, b"another message");
    assert!(
        !crypto
            .asymmetric_verify(verify(other, signed.value.clone()))
            .await
            .unwrap()
            .into_inner()
            .value
    );
    let mut flipped = signed.value.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    assert!(
        !crypto
            .asymmetric_verify(verify(digest.clone(), flipped))
            .await
            .unwrap()
            .into_inner()
            .value
    );

    // A signature OpenSSL makes is not possible without the private key; instead, ECDSA
    // signatures come back DER and low-S, which OpenSSL's own parser confirms.
    if algorithm == Algorithm::EcdsaSha256 {
        let parsed = String::from_utf8(openssl(&[
            "asn1parse",
            "-inform",
            "DER",
            "-in",
            sig_file.to_str().unwrap(),
        ]))
        .unwrap();
        assert_eq!(parsed.matches("INTEGER").count(), 2, "{parsed}");
    }
}

async fn check_oaep(stack: &Stack, key_id: &str, dir: &Path, name: &str) {
    let pem = public_pem(stack, key_id, dir, name).await;
    let mut crypto = stack.crypto(Some(ALICE)).unwrap();
    for (algorithm, md) in [
        (Algorithm::RsaesOaepSha256, "sha256"),
        (Algorithm::RsaesOaepSha1, "sha1"),
    ] {
        let secret = format!("secret for {name} with {md}").into_bytes();
        let pt = dir.join(format!("{name}-{md}.pt"));
        let ct = dir.join(format!("{name}-{md}.ct"));
        std::fs::write(&pt, &secret).unwrap();
        openssl(&[
            "pkeyutl",
            "-encrypt",
            "-pubin",
            "-inkey",
            pem.to_str().unwrap(),
            "-pkeyopt",
            "rsa_padding_mode:oaep",
            "-pkeyopt",
            &format!("rsa_oaep_md:{md}"),
            "-pkeyopt",
            &format!("rsa_mgf1_md:{md}"),
            "-in",
            pt.to_str().unwrap(),
            "-out",
            ct.to_str().unwrap(),
        ]);
        let decrypted = crypto
            .asymmetric_decrypt(AsymmetricDecryptRequest {
                key_id: key_id.into(),
                algorithm: algorithm as i32,
                ciphertext_blob: std::fs::read(&ct).unwrap(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("{name} {md}: decrypt OpenSSL's ciphertext: {e}"))
            .into_inner();
        assert_eq!(decrypted.plaintext, secret, "{name} {md}");

        // And the other way: what we encrypt to our own key decrypts through us.
        let ours = crypto
            .asymmetric_encrypt(AsymmetricEncryptRequest {
                key_id: key_id.into(),
                algorithm: algorithm as i32,
                plaintext: secret.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let back = crypto
            .asymmetric_decrypt(AsymmetricDecryptRequest {
                key_id: key_id.into(),
                algorithm: algorithm as i32,
                ciphertext_blob: ours.ciphertext_blob.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(back.plaintext, secret);
        // A tampered ciphertext is refused without detail.
        let mut bad = ours.ciphertext_blob;
        bad[10] ^= 0x40;
        let err = crypto
            .asymmetric_decrypt(AsymmetricDecryptRequest {
                key_id: key_id.into(),
                algorithm: algorithm as i32,
                ciphertext_blob: bad,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            (err.code(), reason(&err).as_str()),
            (Code::InvalidArgument, "InvalidCiphertext"),
            "{name} {md}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_asymmetric_spec_interoperates_with_openssl_on_software_and_hsm_keys() {
    let stack = Stack::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let software = instance(&stack, InstanceType::Software).await;
    let hardware = instance(&stack, InstanceType::Hardware).await;

    for (label, inst) in [("soft", &software), ("hsm", &hardware)] {
        for (spec, algorithms) in [
            (
                KeySpec::Rsa2048,
                vec![Algorithm::RsaPssSha256, Algorithm::RsaPkcs1Sha256],
            ),
            (KeySpec::EcP256, vec![Algorithm::EcdsaSha256]),
            (KeySpec::EcP256k, vec![Algorithm::EcdsaSha256]),
        ] {
            let k = key(&stack, inst, spec, KeyUsage::SignVerify).await;
            for alg in algorithms {
                check_signatures(
                    &stack,
                    &k,
                    alg,
                    dir.path(),
                    &format!("{label}-{spec:?}-{alg:?}"),
                )
                .await;
            }
        }
        let spec = if label == "soft" {
            KeySpec::Rsa3072
        } else {
            KeySpec::Rsa4096
        };
        let k = key(&stack, inst, spec, KeyUsage::EncryptDecrypt).await;
        check_oaep(&stack, &k, dir.path(), &format!("{label}-{spec:?}")).await;
    }

    // Hardware AES keys of every size seal and open inside the HSM.
    for spec in [
        KeySpec::AliyunAes128,
        KeySpec::AliyunAes192,
        KeySpec::AliyunAes256,
    ] {
        let k = key(&stack, &hardware, spec, KeyUsage::EncryptDecrypt).await;
        let mut crypto = stack.crypto(Some(ALICE)).unwrap();
        let sealed = crypto
            .encrypt(EncryptRequest {
                key_id: k.clone(),
                plaintext: b"inside the HSM".to_vec(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let opened = crypto
            .decrypt(DecryptRequest {
                ciphertext_blob: sealed.ciphertext_blob.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(opened.plaintext, b"inside the HSM", "{spec:?}");
        assert_eq!(opened.key_id, k);
    }

    // Data keys exported to an OpenSSL key pair decrypt with OpenSSL's private key.
    let priv_pem = dir.path().join("caller.pem");
    let pub_pem = dir.path().join("caller.pub.pem");
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        priv_pem.to_str().unwrap(),
    ]);
    openssl(&[
        "pkey",
        "-in",
        priv_pem.to_str().unwrap(),
        "-pubout",
        "-out",
        pub_pem.to_str().unwrap(),
    ]);
    let pub_bytes = std::fs::read(&pub_pem).unwrap();
    let pub_der = openssl(&[
        "pkey",
        "-pubin",
        "-in",
        pub_pem.to_str().unwrap(),
        "-outform",
        "DER",
    ]);
    let aes = key(
        &stack,
        &software,
        KeySpec::AliyunAes256,
        KeyUsage::EncryptDecrypt,
    )
    .await;
    let mut crypto = stack.crypto(Some(ALICE)).unwrap();
    for (algorithm, md, public_key) in [
        (Algorithm::RsaesOaepSha256, "sha256", pub_bytes.clone()),
        (Algorithm::RsaesOaepSha1, "sha1", pub_der.clone()),
    ] {
        let made = crypto
            .generate_and_export_data_key(GenerateAndExportDataKeyRequest {
                key_id: aes.clone(),
                public_key: public_key.clone(),
                wrapping_algorithm: algorithm as i32,
                wrapping_key_spec: KeySpec::Rsa2048 as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let plain = crypto
            .decrypt(DecryptRequest {
                ciphertext_blob: made.ciphertext_blob.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .plaintext;
        assert_eq!(plain.len(), 32);
        let exported = dir.path().join(format!("exported-{md}.bin"));
        std::fs::write(&exported, &made.exported_data_key).unwrap();
        let by_openssl = openssl(&[
            "pkeyutl",
            "-decrypt",
            "-inkey",
            priv_pem.to_str().unwrap(),
            "-pkeyopt",
            "rsa_padding_mode:oaep",
            "-pkeyopt",
            &format!("rsa_oaep_md:{md}"),
            "-pkeyopt",
            &format!("rsa_mgf1_md:{md}"),
            "-in",
            exported.to_str().unwrap(),
        ]);
        assert_eq!(by_openssl, plain, "GenerateAndExportDataKey with {md}");

        let again = crypto
            .export_data_key(ExportDataKeyRequest {
                ciphertext_blob: made.ciphertext_blob,
                public_key,
                wrapping_algorithm: algorithm as i32,
                wrapping_key_spec: KeySpec::Rsa2048 as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        std::fs::write(&exported, &again.exported_data_key).unwrap();
        let by_openssl = openssl(&[
            "pkeyutl",
            "-decrypt",
            "-inkey",
            priv_pem.to_str().unwrap(),
            "-pkeyopt",
            "rsa_padding_mode:oaep",
            "-pkeyopt",
            &format!("rsa_oaep_md:{md}"),
            "-pkeyopt",
            &format!("rsa_mgf1_md:{md}"),
            "-in",
            exported.to_str().unwrap(),
        ]);
        assert_eq!(by_openssl, plain, "ExportDataKey with {md}");
    }

    // Requests that do not fit the key get precise reasons.
    let ec = key(&stack, &software, KeySpec::EcP256, KeyUsage::SignVerify).await;
    let rsa_enc = key(
        &stack,
        &software,
        KeySpec::Rsa2048,
        KeyUsage::EncryptDecrypt,
    )
    .await;
    let digest = sha256(dir.path(), b"x");
    let cases: Vec<(tonic::Status, &str)> = vec![
        (
            crypto
                .asymmetric_sign(AsymmetricSignRequest {
                    key_id: ec.clone(),
                    algorithm: Algorithm::RsaPssSha256 as i32,
                    digest: digest.clone(),
                    ..Default::default()
                })
                .await
                .unwrap_err(),
            "InvalidParameter.Algorithm",
        ),
        (
            crypto
                .asymmetric_sign(AsymmetricSignRequest {
                    key_id: ec.clone(),
                    algorithm: Algorithm::EcdsaSha256 as i32,
                    digest: digest[..31].to_vec(),
                    ..Default::default()
                })
                .await
                .unwrap_err(),
            "InvalidParameter.Digest",
        ),
        (
            crypto
                .asymmetric_sign(AsymmetricSignRequest {
                    key_id: rsa_enc.clone(),
                    algorithm: Algorithm::RsaPssSha256 as i32,
                    digest: digest.clone(),
                    ..Default::default()
                })
                .await
                .unwrap_err(),
            "InvalidParameter.KeyUsage",
        ),
        (
            crypto
                .asymmetric_encrypt(AsymmetricEncryptRequest {
                    key_id: rsa_enc.clone(),
                    algorithm: Algorithm::RsaesOaepSha256 as i32,
                    plaintext: vec![1; 191],
                    ..Default::default()
                })
                .await
                .unwrap_err(),
            "InvalidParameter.Plaintext",
        ),
        (
            crypto
                .asymmetric_decrypt(AsymmetricDecryptRequest {
                    key_id: rsa_enc.clone(),
                    algorithm: Algorithm::RsaesOaepSha256 as i32,
                    ciphertext_blob: vec![1; 100],
                    ..Default::default()
                })
                .await
                .unwrap_err(),
            "InvalidParameter.CiphertextBlob",
        ),
        (
            crypto
                .get_public_key(GetPublicKeyRequest {
                    key_id: aes.clone(),
                    key_version_id: String::new(),
                })
                .await
                .unwrap_err(),
            "InvalidParameter.KeyId",
        ),
        (
            crypto
                .generate_and_export_data_key(GenerateAndExportDataKeyRequest {
                    key_id: aes.clone(),
                    public_key: b"not a key".to_vec(),
                    wrapping_algorithm: Algorithm::RsaesOaepSha256 as i32,
                    wrapping_key_spec: KeySpec::Rsa2048 as i32,
                    ..Default::default()
                })
                .await
                .unwrap_err(),
            "InvalidParameter.PublicKey",
        ),
        (
            crypto
                .generate_and_export_data_key(GenerateAndExportDataKeyRequest {
                    key_id: aes.clone(),
                    public_key: pub_bytes.clone(),
                    wrapping_algorithm: Algorithm::RsaPssSha256 as i32,
                    wrapping_key_spec: KeySpec::Rsa2048 as i32,
                    ..Default::default()
                })
                .await
                .unwrap_err(),
            "InvalidParameter.WrappingAlgorithm",
        ),
        (
            crypto
                .asymmetric_sign(AsymmetricSignRequest {
                    key_id: ec.clone(),
                    key_version_id: "00000000-0000-0000-0000-000000000000".into(),
                    algorithm: Algorithm::EcdsaSha256 as i32,
                    digest: digest.clone(),
                    ..Default::default()
                })
                .await
                .unwrap_err(),
            "Forbidden.KeyVersionNotFound",
        ),
        (
            crypto
                .asymmetric_sign(AsymmetricSignRequest {
                    key_id: ec.clone(),
                    algorithm: Algorithm::EcdsaSha256 as i32,
                    digest: digest.clone(),
                    dry_run: true,
                    ..Default::default()
                })
                .await
                .unwrap_err(),
            "DryRunOperationError",
        ),
    ];
    for (err, want) in cases {
        assert_eq!(reason(&err), want, "{err:?}");
    }
}
