//! Identity, key policies, audit and limits through the real binaries over mTLS: callers are
//! who their client certificate says; custom policies make administrators, users and
//! cross-account users; other accounts see nothing; sidecar headers from untrusted peers and
//! dev headers count for nothing; bad certificates are refused; the audit chain verifies and
//! detects edits; the rate limit throttles and recovers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use kms_e2e::{
    ACCOUNT, ADMIN, ALICE, APP_USER, MALLORY, OPERATOR, Options, PARTNER, Stack, bin_path,
    eventually, reason,
};
use kms_proto::kms::v1::crypto_service_client::CryptoServiceClient;
use kms_proto::kms::v1::*;
use kms_types::policy::{ADMINISTRATOR_ACTIONS, USER_ACTIONS};
use tonic::Code;

fn policy(statements: &[(&str, &[&str])]) -> String {
    serde_json::json!({
        "Version": "1",
        "Statement": statements.iter().map(|(who, actions)| serde_json::json!({
            "Effect": "Allow",
            "Principal": {"RAM": [who]},
            "Action": actions,
            "Resource": ["*"],
        })).collect::<Vec<_>>(),
    })
    .to_string()
}

async fn encrypt(stack: &Stack, who: &str, key_id: &str) -> Result<EncryptResponse, tonic::Status> {
    stack
        .crypto(Some(who))
        .unwrap()
        .encrypt(EncryptRequest {
            key_id: key_id.into(),
            plaintext: b"hello".to_vec(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

async fn decrypt(stack: &Stack, who: &str, blob: &[u8]) -> Result<Vec<u8>, tonic::Status> {
    stack
        .crypto(Some(who))
        .unwrap()
        .decrypt(DecryptRequest {
            ciphertext_blob: blob.to_vec(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().plaintext)
}

async fn disable(stack: &Stack, who: &str, key_id: &str) -> Result<(), tonic::Status> {
    stack
        .keys(Some(who))
        .unwrap()
        .disable_key(DisableKeyRequest {
            key_id: key_id.into(),
        })
        .await
        .map(|_| ())
}

async fn enable(stack: &Stack, who: &str, key_id: &str) -> Result<(), tonic::Status> {
    stack
        .keys(Some(who))
        .unwrap()
        .enable_key(EnableKeyRequest {
            key_id: key_id.into(),
        })
        .await
        .map(|_| ())
}

fn code_reason(r: Result<impl std::fmt::Debug, tonic::Status>) -> (Code, String) {
    let e = r.expect_err("the call was allowed");
    (e.code(), reason(&e))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_accounts_certificates_sidecars_audit_and_limits() {
    let mut stack = Stack::start_with(Options {
        mtls: true,
        sidecar_peers: vec!["127.0.0.2".into()],
        symmetric_rate: Some(20),
        ..Options::default()
    })
    .await
    .unwrap();

    let instance = stack
        .instances(Some(OPERATOR))
        .unwrap()
        .create_kms_instance(CreateKmsInstanceRequest {
            instance_type: InstanceType::Software as i32,
            owner_account_id: ACCOUNT.into(),
            key_quota: 10,
            access_management_quota: Some(1),
        })
        .await
        .unwrap()
        .into_inner()
        .kms_instance
        .unwrap()
        .kms_instance_id;
    let roles = policy(&[
        (ADMIN, ADMINISTRATOR_ACTIONS),
        (APP_USER, USER_ACTIONS),
        (PARTNER, &["kms:Encrypt", "kms:Decrypt", "kms:DescribeKey"]),
    ]);
    let key = stack
        .keys(Some(ALICE))
        .unwrap()
        .create_key(CreateKeyRequest {
            kms_instance_id: instance.clone(),
            key_spec: KeySpec::AliyunAes256 as i32,
            policy: roles.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap();
    let k = key.key_id.as_str();

    // A user encrypts and decrypts, but cannot manage.
    let sealed = encrypt(&stack, APP_USER, k).await.unwrap();
    assert_eq!(
        decrypt(&stack, APP_USER, &sealed.ciphertext_blob)
            .await
            .unwrap(),
        b"hello"
    );
    assert_eq!(
        code_reason(disable(&stack, APP_USER, k).await),
        (Code::PermissionDenied, "Forbidden.NoPermission".into())
    );

    // An administrator manages, but cannot decrypt.
    assert_eq!(
        code_reason(decrypt(&stack, ADMIN, &sealed.ciphertext_blob).await),
        (Code::PermissionDenied, "Forbidden.NoPermission".into())
    );
    disable(&stack, ADMIN, k).await.unwrap();
    enable(&stack, ADMIN, k).await.unwrap();

    // The cross-account user may use the key, never manage it.
    eventually(
        Duration::from_secs(5),
        "the key enabled again on the data plane",
        || async { encrypt(&stack, PARTNER, k).await.ok() },
    )
    .await
    .unwrap();
    assert_eq!(
        code_reason(disable(&stack, PARTNER, k).await),
        (Code::PermissionDenied, "Forbidden.NoPermission".into())
    );

    // Another account learns nothing.
    assert_eq!(
        code_reason(encrypt(&stack, MALLORY, k).await),
        (Code::NotFound, "Forbidden.KeyNotFound".into())
    );
    assert_eq!(
        code_reason(
            stack
                .keys(Some(MALLORY))
                .unwrap()
                .describe_key(DescribeKeyRequest { key_id: k.into() })
                .await
        ),
        (Code::NotFound, "Forbidden.KeyNotFound".into())
    );

    // The access-management quota (1 account) is used by the partner's account: granting a
    // third account on another key is refused, and frees up once the partner's grant goes.
    let grant_third = policy(&[("acs:ram::7777777777777777:user/ops", &["kms:Encrypt"])]);
    let err = stack
        .keys(Some(ALICE))
        .unwrap()
        .create_key(CreateKeyRequest {
            kms_instance_id: instance.clone(),
            key_spec: KeySpec::AliyunAes256 as i32,
            policy: grant_third.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::ResourceExhausted, "Rejected.LimitExceeded")
    );
    let shown = stack
        .keys(Some(ALICE))
        .unwrap()
        .get_key_policy(GetKeyPolicyRequest { key_id: k.into() })
        .await
        .unwrap()
        .into_inner()
        .policy;
    assert!(shown.contains(PARTNER), "{shown}");
    let without_partner = policy(&[(ADMIN, ADMINISTRATOR_ACTIONS)]);
    stack
        .keys(Some(ALICE))
        .unwrap()
        .set_key_policy(SetKeyPolicyRequest {
            key_id: k.into(),
            policy: without_partner,
        })
        .await
        .unwrap();
    stack
        .keys(Some(ALICE))
        .unwrap()
        .create_key(CreateKeyRequest {
            kms_instance_id: instance.clone(),
            key_spec: KeySpec::AliyunAes256 as i32,
            policy: grant_third,
            ..Default::default()
        })
        .await
        .unwrap();

    // The policy change reached the data plane within a second: the user and partner are out.
    eventually(
        Duration::from_secs(1),
        "the new policy on the data plane",
        || async {
            match encrypt(&stack, APP_USER, k).await {
                Err(e) if e.code() == Code::PermissionDenied => Some(()),
                _ => None,
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(
        code_reason(encrypt(&stack, PARTNER, k).await),
        (Code::NotFound, "Forbidden.KeyNotFound".into())
    );

    // Headers claim nothing: a sidecar header from an untrusted peer, or the dev header, on a
    // connection without a client certificate is unauthenticated; with a certificate, the
    // certificate wins.
    for header in ["x-forwarded-principal", "x-kms-principal"] {
        let mut req = tonic::Request::new(EncryptRequest {
            key_id: k.into(),
            plaintext: b"x".to_vec(),
            ..Default::default()
        });
        req.metadata_mut().insert(header, ALICE.parse().unwrap());
        let err = CryptoServiceClient::new(stack_channel(&stack))
            .encrypt(req)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{header}");
    }
    let mut req = tonic::Request::new(DescribeKeyRequest { key_id: k.into() });
    req.metadata_mut()
        .insert("x-kms-principal", ALICE.parse().unwrap());
    let err = stack
        .keys(Some(MALLORY))
        .unwrap()
        .describe_key(req)
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::NotFound,
        "a header overrode the certificate"
    );

    // Certificates that are expired or from another CA are refused at the handshake.
    let certs = stack.certs_dir();
    let other = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin_path("kmsctl").unwrap())
        .args(["dev", "certs", "--dir"])
        .arg(other.path())
        .args(["--principal", ALICE])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stem = kms_e2e::cert_stem(ALICE);
    let foreign = stack
        .channel_with_cert(
            stack.data_addr(),
            &other.path().join(format!("{stem}.pem")),
            &other.path().join(format!("{stem}-key.pem")),
        )
        .unwrap();
    assert!(
        CryptoServiceClient::new(foreign)
            .generate_random(GenerateRandomRequest { length: 8 })
            .await
            .is_err()
    );
    let (expired_cert, expired_key) = expired_client_cert(&certs, other.path(), ALICE);
    let expired = stack
        .channel_with_cert(stack.data_addr(), &expired_cert, &expired_key)
        .unwrap();
    assert!(
        CryptoServiceClient::new(expired)
            .generate_random(GenerateRandomRequest { length: 8 })
            .await
            .is_err()
    );

    // The rate limit: 20 per second per principal for symmetric crypto.
    let client = stack.crypto(Some(ALICE)).unwrap();
    let calls: Vec<_> = (0..60)
        .map(|_| {
            let mut c = client.clone();
            tokio::spawn(
                async move { c.generate_random(GenerateRandomRequest { length: 8 }).await },
            )
        })
        .collect();
    let mut throttled = 0;
    for call in calls {
        if let Err(e) = call.await.unwrap() {
            assert_eq!(
                (e.code(), reason(&e).as_str()),
                (Code::ResourceExhausted, "Rejected.Throttling")
            );
            throttled += 1;
        }
    }
    assert!(
        throttled > 0,
        "60 concurrent calls against a burst of 20 were never throttled"
    );
    eventually(
        Duration::from_secs(3),
        "the rate limit to recover",
        || async {
            stack
                .crypto(Some(ALICE))
                .unwrap()
                .generate_random(GenerateRandomRequest { length: 8 })
                .await
                .ok()
        },
    )
    .await
    .unwrap();

    // The audit logs verify; every line names its principal and outcome, none holds data.
    stack.stop().await.unwrap();
    let kmsctl = bin_path("kmsctl").unwrap();
    for log in ["control-audit.log", "data-audit.log"] {
        let path = stack.dir().join("logs").join(log);
        let out = std::process::Command::new(&kmsctl)
            .args(["audit", "verify"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{log}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("hello"));
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(lines.len() > 5, "{log} has {} lines", lines.len());
        assert!(
            lines.iter().any(|l| l["outcome"] == "denied"),
            "{log} has no denied call"
        );
        assert!(
            lines.iter().any(|l| l["principal"] == APP_USER),
            "{log} never names the user"
        );
    }
    let control_log = std::fs::read_to_string(stack.dir().join("logs/control-audit.log")).unwrap();
    let policy_line = control_log
        .lines()
        .find(|l| l.contains("KeyManagementService/GetKeyPolicy"))
        .unwrap();
    assert!(policy_line.contains(k), "{policy_line}");
    let data_log = stack.dir().join("logs/data-audit.log");
    let text = std::fs::read_to_string(&data_log).unwrap();
    let encrypt_line = text
        .lines()
        .find(|l| l.contains("CryptoService/Encrypt") && l.contains("\"allowed\""))
        .unwrap();
    assert!(encrypt_line.contains(k), "{encrypt_line}");

    // Deleting one line breaks the chain at that line. (An edited line shows only in its MAC,
    // which `--plane` checks: audit_chain.rs.)
    let lines: Vec<&str> = text.lines().collect();
    let tampered = stack.dir().join("tampered.log");
    let check = |content: String| {
        std::fs::write(&tampered, content).unwrap();
        let out = std::process::Command::new(&kmsctl)
            .args(["audit", "verify"])
            .arg(&tampered)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let mut deleted = lines.iter().map(|l| l.to_string()).collect::<Vec<_>>();
    deleted.remove(4);
    let (ok, said) = check(deleted.join("\n") + "\n");
    assert!(!ok && said.contains("line 5"), "{said}");
}

/// A channel to the data plane without a client certificate.
fn stack_channel(stack: &Stack) -> tonic::transport::Channel {
    let certs = stack.certs_dir();
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(
            std::fs::read(certs.join("ca.pem")).unwrap(),
        ))
        .domain_name("localhost");
    tonic::transport::Channel::from_shared(format!("https://{}", stack.data_addr()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_lazy()
}

/// A client certificate for `principal`, signed by the stack's CA but expired.
fn expired_client_cert(
    certs: &std::path::Path,
    out: &std::path::Path,
    principal: &str,
) -> (std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};
    let ca_key =
        KeyPair::from_pem(&std::fs::read_to_string(certs.join("ca-key.pem")).unwrap()).unwrap();
    let issuer = Issuer::from_ca_cert_pem(
        &std::fs::read_to_string(certs.join("ca.pem")).unwrap(),
        ca_key,
    )
    .unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![SanType::URI(principal.try_into().unwrap())];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let (c, k) = (out.join("expired.pem"), out.join("expired-key.pem"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}
