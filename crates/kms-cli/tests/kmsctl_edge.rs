//! `kmsctl audit verify` and `kmsctl dev certs` as a user runs them: the real binary, its exit
//! codes and output.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::SystemTime;

use kms_runtime::audit::{AuditChain, AuditConfig, AuditEvent, AuditKey, AuditLog, Outcome, Plane};

fn kmsctl(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kmsctl"));
    cmd.args(args);
    for var in ["KMS_PRINCIPAL", "KMS_CA", "KMS_CERT", "KMS_KEY"] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn write_log(path: &Path, n: usize) {
    let log = AuditLog::open(
        &AuditConfig::new(path),
        AuditChain {
            plane: Plane::Data,
            key: AuditKey::from_bytes(&[5u8; 32]).unwrap(),
        },
    )
    .unwrap();
    for i in 0..n {
        log.append(AuditEvent {
            time: SystemTime::now(),
            request_id: format!("r{i}"),
            principal: "acs:ram::42:user/alice".into(),
            action: "kms.v1.CryptoService/Decrypt".into(),
            key_id: "key-1".into(),
            key_version_id: "v1".into(),
            previous_key_id: String::new(),
            outcome: Outcome::Allowed,
            status: tonic::Code::Ok,
            trace_id: String::new(),
        })
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn audit_verify_exit_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("audit.log");
    write_log(&path, 4).await;
    let p = path.to_str().unwrap();

    let out = kmsctl(&["audit", "verify", p], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("4 lines verified"),
        "{}",
        text(&out.stdout)
    );

    // Delete line 2: the break is reported at line 2, exit 1.
    let lines: Vec<String> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let mut cut = lines.clone();
    cut.remove(1);
    std::fs::write(&path, cut.join("\n") + "\n").unwrap();
    let out = kmsctl(&["audit", "verify", p], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("line 2:"), "{err}");
    assert!(err.contains("lines 1 to 1 are intact"), "{err}");

    let out = kmsctl(&["--json", "audit", "verify", p], &[]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], false);
    assert_eq!(report["broken_line"], 2);

    let out = kmsctl(
        &["audit", "verify", tmp.path().join("none").to_str().unwrap()],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot read"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn dev_certs_defaults_ignore_kms_principal() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tls");
    let d = dir.to_str().unwrap();
    // KMS_PRINCIPAL is the caller's identity, not a certificate list.
    let out = kmsctl(
        &["dev", "certs", "--dir", d],
        &[("KMS_PRINCIPAL", "acs:ram::1234567890123456:user/someone")],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary = text(&out.stdout);
    for stem in [
        "client-1234567890123456-root",
        "client-1000000000000000-user-operator",
        "client-1000000000000000-role-kms-control-plane",
        "client-1000000000000000-role-kms-data-plane",
    ] {
        assert!(
            dir.join(format!("{stem}.pem")).is_file(),
            "{stem}\n{summary}"
        );
    }
    assert!(
        !dir.join("client-1234567890123456-user-someone.pem")
            .exists()
    );

    let out = kmsctl(
        &[
            "dev",
            "certs",
            "--dir",
            d,
            "--principal",
            "acs:ram::42:user/alice",
            "--principal",
            "acs:ram::42:role/app",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(dir.join("client-42-user-alice-key.pem").is_file());
    assert!(dir.join("client-42-role-app.pem").is_file());

    let out = kmsctl(&["dev", "certs", "--dir", d, "--principal", "bob"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("\"bob\""),
        "{}",
        text(&out.stderr)
    );
}

/// `dev up` refuses what cannot work before starting anything, saying why.
#[test]
fn dev_up_refuses_replicas_on_sled_and_bad_counts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let out = kmsctl(&["dev", "up", "--dir", d, "--replicas", "2"], &[]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("needs --store etcd"),
        "{}",
        text(&out.stderr)
    );
    for bad in ["0", "10"] {
        let out = kmsctl(
            &[
                "dev",
                "up",
                "--dir",
                d,
                "--store",
                "etcd",
                "--replicas",
                bad,
            ],
            &[],
        );
        assert!(!out.status.success());
        assert!(
            text(&out.stderr).contains("--replicas"),
            "{}",
            text(&out.stderr)
        );
    }
    let out = kmsctl(&["dev", "up", "--dir", d, "--store", "raft"], &[]);
    assert!(
        text(&out.stderr).contains("possible values: sled, etcd"),
        "{}",
        text(&out.stderr)
    );
}
