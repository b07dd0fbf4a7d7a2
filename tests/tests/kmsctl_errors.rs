//! `kmsctl`'s errors as a newcomer meets them, through the real binary against a stack: each
//! names the thing that failed and what would be accepted, or what to do; with `--json` (or
//! `--output yaml`) the error is a document on stderr.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use kms_e2e::kmsctl::Kmsctl;
use kms_e2e::{ALICE, Stack};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kmsctl_errors_name_what_failed_and_what_is_accepted() {
    let stack = Stack::start().await.unwrap();
    let cli = Kmsctl::new(&stack);
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path.to_str().unwrap().to_string()
    };
    cli.ok(ALICE, &["create-key", "--alias", "alias/demo"]);

    // A key reference that is none of the three forms: refused before any call, with them.
    for args in [
        &["describe-key", "--key", "demo"][..],
        &["encrypt", "--key", "key-123", "--plaintext", "x"],
        &[
            "tag-resources",
            "--key",
            "alias/demo",
            "--key",
            "demo",
            "--tag",
            "a=b",
        ],
    ] {
        let err = cli.fails(ALICE, args);
        for want in [
            "is not a key id, an alias or a key ARN",
            "a key id (key-<32 hex digits>), an alias (alias/<name>) or a key ARN \
             (acs:kms:<region>:<account>:key/<key id>)",
            "'--key <KEY>'",
        ] {
            assert!(err.contains(want), "{args:?}: {want:?} missing in {err}");
        }
    }

    // A time that is not RFC 3339 shows an example.
    let err = cli.fails(
        ALICE,
        &[
            "import-key-material",
            "--key",
            "alias/demo",
            "--token",
            "itk-1",
            "--in",
            &file("w.bin", b"x"),
            "--expire",
            "2020-01-01",
        ],
    );
    assert!(
        err.contains("\"2020-01-01\" is not an RFC 3339 time")
            && err.contains("e.g. 2027-01-01T00:00:00Z"),
        "{err}"
    );

    // A spec that is none lists the specs.
    let err = cli.fails(ALICE, &["create-key", "--spec", "aes256"]);
    assert!(
        err.contains("invalid value 'aes256' for '--spec <SPEC>'")
            && err.contains(
                "[possible values: Aliyun_AES_256, Aliyun_AES_192, Aliyun_AES_128, RSA_2048, \
                 RSA_3072, RSA_4096, EC_P256, EC_P256K]"
            ),
        "{err}"
    );

    // https:// (and mTLS files) against the plaintext planes: the handshake failed because the
    // server speaks plaintext, not "is it running?".
    let plain = format!("http://{}", stack.control_addr());
    let err = cli.fails(
        ALICE,
        &[
            "--control",
            &format!("https://{}", stack.control_addr()),
            "describe-key",
            "--key",
            "alias/demo",
        ],
    );
    for want in [
        "TLS handshake with the control plane (kms-control) at https://".to_string(),
        "the server speaks plaintext gRPC, without TLS".to_string(),
        format!("hint: call it at {plain} without --ca, --cert and --cert-key"),
    ] {
        assert!(err.contains(&want), "{want:?} missing in {err}");
    }
    assert!(!err.contains("is it running"), "{err}");
    let certs = tempfile::tempdir().unwrap();
    let made = std::process::Command::new(kms_e2e::bin_path("kmsctl").unwrap())
        .args(["dev", "certs", "--dir"])
        .arg(certs.path())
        .output()
        .unwrap();
    assert!(made.status.success());
    let pem = |name: &str| certs.path().join(name).to_str().unwrap().to_string();
    let stem = kms_e2e::cert_stem(ALICE);
    let err = cli.fails(
        "",
        &[
            "--ca",
            &pem("ca.pem"),
            "--cert",
            &pem(&format!("{stem}.pem")),
            "--cert-key",
            &pem(&format!("{stem}-key.pem")),
            "generate-random",
            "--bytes",
            "8",
        ],
    );
    assert!(
        err.contains("TLS handshake with the data plane (kms-data)")
            && err.contains("the server speaks plaintext"),
        "{err}"
    );
    // Nothing listening is still "is it running?".
    let err = cli.fails(
        ALICE,
        &[
            "--control",
            "https://127.0.0.1:1",
            "describe-key",
            "--key",
            "alias/demo",
        ],
    );
    assert!(
        err.contains("cannot reach the control plane") && err.contains("is it running?"),
        "{err}"
    );

    // Encrypting more than 6 KiB, by a little or by a lot, points at generate-data-key.
    for size in [7 * 1024, 1024 * 1024] {
        let big = file("big.bin", &vec![b'x'; size]);
        let err = cli.fails(ALICE, &["encrypt", "--key", "alias/demo", "--in", &big]);
        assert!(
            err.contains("hint: encrypt takes at most 6144 bytes")
                && err.contains("kmsctl generate-data-key --key KEY"),
            "{size}: {err}"
        );
    }

    // An operator-only command says an operator is needed.
    let err = cli.fails(
        ALICE,
        &[
            "create-kms-instance",
            "--type",
            "software",
            "--owner",
            kms_e2e::ACCOUNT,
        ],
    );
    assert!(
        err.contains("PERMISSION_DENIED: Forbidden.NoPermission")
            && err.contains("hint: create-kms-instance needs an operator")
            && err.contains("acs:ram::1000000000000000:user/operator"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_json_errors_are_documents_on_stderr() {
    let stack = Stack::start().await.unwrap();
    let cli = Kmsctl::new(&stack);
    let doc = |args: &[&str]| -> Value {
        let err = cli.fails(ALICE, args);
        serde_json::from_str(&err).unwrap_or_else(|e| panic!("{args:?}: {e}: {err}"))
    };

    // The service's refusal: code, reason, message and the request id it logged.
    let v = doc(&["describe-key", "--key", "alias/none", "--json"]);
    let e = &v["error"];
    assert_eq!(e["code"], "NOT_FOUND", "{v}");
    assert_eq!(e["reason"], "Forbidden.AliasNotFound", "{v}");
    assert_eq!(e["message"], "the alias does not exist", "{v}");
    let request_id = e["request_id"].as_str().unwrap();
    // The one the control plane's audit line for the call carries.
    let audit = std::fs::read_to_string(stack.dir().join("logs/control-audit.log")).unwrap();
    assert!(
        audit
            .lines()
            .any(|l| l.contains(request_id) && l.contains("DescribeKey")),
        "request id {request_id} is not in the audit log"
    );

    // A plane that is not there, and a command line kmsctl refuses.
    let v = doc(&[
        "--output",
        "json",
        "--control",
        "http://127.0.0.1:1",
        "describe-key",
        "--key",
        "alias/x",
    ]);
    assert_eq!(v["error"]["code"], "UNAVAILABLE", "{v}");
    assert!(
        v["error"]["hint"]
            .as_str()
            .unwrap()
            .contains("is it running"),
        "{v}"
    );
    let v = doc(&["--json", "create-key", "--spec", "aes256"]);
    assert_eq!(v["error"]["code"], "INVALID_ARGUMENT", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("'aes256'"),
        "{v}"
    );

    // YAML with --output yaml.
    let err = cli.fails(
        ALICE,
        &["--output", "yaml", "describe-key", "--key", "alias/none"],
    );
    assert!(
        err.starts_with("error:\n  code: NOT_FOUND\n  reason: Forbidden.AliasNotFound\n"),
        "{err}"
    );

    // Without --json, text as before.
    let err = cli.fails(ALICE, &["describe-key", "--key", "alias/none"]);
    assert!(
        err.starts_with("error: NOT_FOUND: Forbidden.AliasNotFound"),
        "{err}"
    );
}
