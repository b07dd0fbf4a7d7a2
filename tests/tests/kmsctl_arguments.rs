//! `kmsctl`'s arguments and output as a user of other cloud CLIs expects them, through the real
//! binary against a stack: enum flags in the forms kmsctl prints, the key named by `--key` in
//! every command (the older first argument still works), one name for byte counts, plaintext
//! printed alike by both decrypts, labels as the documents name them, aliases reporting key
//! ids, `--message-type`, `--output yaml`, and named profiles.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use kms_e2e::kmsctl::Kmsctl;
use kms_e2e::{ACCOUNT, ALICE, OPERATOR, Stack};

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kmsctl_arguments_are_consistent_across_commands() {
    let stack = Stack::start().await.unwrap();
    let cli = Kmsctl::new(&stack);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let inst = cli.json(
        OPERATOR,
        &[
            "create-kms-instance",
            "--type",
            "SOFTWARE",
            "--owner",
            ACCOUNT,
        ],
    )["kms_instance_id"]
        .as_str()
        .unwrap()
        .to_string();
    let aes = cli.json(ALICE, &["create-key", "--alias", "alias/aes"])["key_id"]
        .as_str()
        .unwrap()
        .to_string();
    cli.ok(
        ALICE,
        &[
            "create-key",
            "--instance",
            &inst,
            "--spec",
            "ec_p256",
            "--alias",
            "alias/ec",
        ],
    );
    cli.ok(
        ALICE,
        &[
            "create-key",
            "--instance",
            &inst,
            "--spec",
            "KEY_SPEC_RSA_2048",
            "--usage",
            "encrypt/decrypt",
            "--alias",
            "alias/rsa",
        ],
    );

    // Enum flags take the names kmsctl prints (list-keys --help's own example) and the API's.
    let listed = cli.ok(
        ALICE,
        &[
            "list-keys",
            "--instance",
            &inst,
            "--state",
            "Enabled",
            "--spec",
            "RSA_2048",
        ],
    );
    assert!(
        listed.contains("alias/rsa") && !listed.contains("alias/ec"),
        "{listed}"
    );
    for state in ["enabled", "ENABLED", "KEY_STATE_ENABLED", "Enabled"] {
        let all = cli.json(ALICE, &["list-keys", "--state", state]);
        assert_eq!(all["keys"].as_array().unwrap().len(), 3, "{state}: {all}");
    }
    cli.ok(ALICE, &["disable-key", "--key", "alias/ec"]);
    let disabled = cli.json(ALICE, &["list-keys", "--state", "Disabled"]);
    assert_eq!(disabled["keys"][0]["aliases"][0], "alias/ec", "{disabled}");
    let none = cli.ok(ALICE, &["list-keys", "--state", "PendingDeletion"]);
    assert_eq!(none, "(none)\n");
    cli.ok(ALICE, &["enable-key", "alias/ec"]);

    // The key is --key everywhere; the first argument still works.
    for args in [
        &["describe-key", "--key", "alias/aes"][..],
        &["describe-key", "alias/aes"],
        &["list-key-versions", "--key", "alias/aes"],
        &["list-resource-tags", "--key", "alias/aes"],
        &["list-aliases-by-key-id", "--key", "alias/aes"],
        &["get-key-policy", "--key", "alias/aes"],
        &["check-association", "--key", "alias/aes"],
        &["get-public-key", "--key", "alias/ec"],
    ] {
        cli.ok(ALICE, args);
    }
    let err = cli.fails(ALICE, &["describe-key"]);
    assert!(err.contains("--key <KEY>"), "{err}");

    // Labels are the documents' field names.
    let text = cli.ok(ALICE, &["describe-key", "--key", "alias/aes"]);
    for label in [
        "key_id:",
        "key_spec:",
        "key_state:",
        "primary_key_version_id:",
        "creation_date:",
    ] {
        assert!(text.contains(label), "{label} missing in\n{text}");
    }
    let version = cli.ok(ALICE, &["create-key-version", "--key", "alias/aes"]);
    assert!(
        version.contains("key_id:") && version.contains("key_version_id:"),
        "{version}"
    );

    // One name for byte counts: --bytes (generate-random's --length still works).
    let r = cli.json(ALICE, &["generate-random", "--bytes", "24"]);
    assert_eq!(
        STANDARD
            .decode(r["random"].as_str().unwrap())
            .unwrap()
            .len(),
        24
    );
    let r = cli.json(ALICE, &["generate-random", "--length", "16"]);
    assert_eq!(
        STANDARD
            .decode(r["random"].as_str().unwrap())
            .unwrap()
            .len(),
        16
    );
    let dk = cli.json(
        ALICE,
        &["generate-data-key", "--key", "alias/aes", "--bytes", "48"],
    );
    assert_eq!(
        STANDARD
            .decode(dk["plaintext"].as_str().unwrap())
            .unwrap()
            .len(),
        48
    );

    // Plaintext prints alike: raw from decrypt and asymmetric-decrypt, base64 with --base64.
    let blob = d.join("blob.b64");
    std::fs::write(
        &blob,
        cli.ok(
            ALICE,
            &["encrypt", "--key", "alias/aes", "--plaintext", "hello"],
        ),
    )
    .unwrap();
    assert_eq!(cli.ok(ALICE, &["decrypt", "--in", p(&blob)]), "hello");
    let (secret, enc) = (d.join("s.txt"), d.join("s.enc"));
    std::fs::write(&secret, b"hello").unwrap();
    cli.ok(
        ALICE,
        &[
            "asymmetric-encrypt",
            "--key",
            "alias/rsa",
            "--algorithm",
            "rsaes_oaep_sha_256",
            "--in",
            p(&secret),
            "--out",
            p(&enc),
        ],
    );
    let decrypt = [
        "asymmetric-decrypt",
        "--key",
        "alias/rsa",
        "--algorithm",
        "RSAES_OAEP_SHA_256",
        "--in",
        p(&enc),
    ];
    assert_eq!(cli.ok(ALICE, &decrypt), "hello");
    let mut b64 = decrypt.to_vec();
    b64.push("--base64");
    assert_eq!(cli.ok(ALICE, &b64), "aGVsbG8=\n");
    assert_eq!(
        cli.ok(ALICE, &["decrypt", "--in", p(&blob), "--base64"]),
        "aGVsbG8=\n"
    );

    // sign offers only signing algorithms.
    let (msg, sig) = (d.join("release.txt"), d.join("release.sig"));
    std::fs::write(&msg, b"release 1.0").unwrap();
    let err = cli.fails(
        ALICE,
        &[
            "sign",
            "--key",
            "alias/ec",
            "--algorithm",
            "RSAES_OAEP_SHA_256",
            "--in",
            p(&msg),
        ],
    );
    assert!(
        err.contains("[possible values: RSA_PSS_SHA_256, RSA_PKCS1_SHA_256, ECDSA_SHA_256]"),
        "{err}"
    );

    // --message-type digest signs a digest made elsewhere; verify takes either.
    let digest = d.join("release.sha256");
    std::fs::write(&digest, sha256(b"release 1.0")).unwrap();
    cli.ok(
        ALICE,
        &[
            "sign",
            "--key",
            "alias/ec",
            "--algorithm",
            "ECDSA_SHA_256",
            "--message-type",
            "digest",
            "--in",
            p(&digest),
            "--out",
            p(&sig),
        ],
    );
    for (kind, input) in [("raw", &msg), ("DIGEST", &digest)] {
        let out = cli.ok(
            ALICE,
            &[
                "verify",
                "--key",
                "alias/ec",
                "--algorithm",
                "ECDSA_SHA_256",
                "--message-type",
                kind,
                "--in",
                p(input),
                "--signature",
                p(&sig),
            ],
        );
        assert_eq!(out, "valid\n", "{kind}");
    }
    let err = cli.fails(
        ALICE,
        &[
            "sign",
            "--key",
            "alias/ec",
            "--algorithm",
            "ECDSA_SHA_256",
            "--message-type",
            "digest",
            "--in",
            p(&msg),
        ],
    );
    assert!(
        err.contains("32 bytes") && err.contains("holds 11 bytes"),
        "{err}"
    );

    // Aliases report the key id they resolve to, not the alias given.
    let made = cli.json(ALICE, &["create-alias", "alias/two", "--key", "alias/aes"]);
    assert_eq!(made["key_id"], aes.as_str(), "{made}");
    assert_eq!(made["alias_name"], "alias/two");
    let rsa = cli.json(ALICE, &["describe-key", "--key", "alias/rsa"])["key_id"]
        .as_str()
        .unwrap()
        .to_string();
    let text = cli.ok(ALICE, &["update-alias", "alias/two", "--key", "alias/rsa"]);
    assert_eq!(text, format!("alias/two now points at {rsa} (alias/rsa)\n"));

    // --output yaml.
    let yaml = cli.ok(
        ALICE,
        &["describe-key", "--key", "alias/aes", "--output", "yaml"],
    );
    assert!(
        yaml.contains(&format!("key_id: {aes}\n")) && yaml.contains("key_spec: Aliyun_AES_256\n"),
        "{yaml}"
    );
    assert!(
        cli.fails(ALICE, &["--json", "--output", "yaml", "list-keys"])
            .contains("--output")
    );
}

/// Named profiles in kmsctl's config file give the addresses, the principal and the output,
/// chosen with --profile or KMS_PROFILE or the file's default; flags win over them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_give_addresses_principal_and_output() {
    let stack = Stack::start().await.unwrap();
    let home = tempfile::tempdir().unwrap();
    let config_dir = home.path().join("kmsctl");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::write(
        config_dir.join("config.toml"),
        format!(
            "default_profile = \"alice\"\n\
             [profiles.alice]\n\
             control = \"{control}\"\n\
             data = \"http://{data}\"\n\
             principal = \"{ALICE}\"\n\
             [profiles.operator]\n\
             control = \"{control}\"\n\
             principal = \"{OPERATOR}\"\n\
             output = \"json\"\n",
            control = stack.control_addr(),
            data = stack.data_addr(),
        ),
    )
    .unwrap();
    // Nothing but the config file: no KMS_* variables, the documented location.
    let cli = Kmsctl::new(&stack)
        .with_env("KMS_CONTROL_ADDR", "")
        .with_env("KMS_DATA_ADDR", "")
        .with_env("KMSCTL_CONFIG", "")
        .with_env("XDG_CONFIG_HOME", home.path().to_str().unwrap());

    // The default profile calls as Alice.
    let key = cli.ok("", &["create-key", "--alias", "alias/p"]);
    assert!(key.starts_with("key_id:"), "{key}");
    let blob = cli.ok("", &["encrypt", "--key", "alias/p", "--plaintext", "x"]);
    assert!(STANDARD.decode(blob.trim()).is_ok(), "{blob}");
    // --profile, and KMS_PROFILE, choose another: the operator's, printing JSON.
    let made = cli.ok(
        "",
        &[
            "--profile",
            "operator",
            "create-kms-instance",
            "--type",
            "software",
            "--owner",
            ACCOUNT,
        ],
    );
    let made: serde_json::Value = serde_json::from_str(&made).unwrap();
    assert!(
        made["kms_instance_id"]
            .as_str()
            .unwrap()
            .starts_with("kst-")
    );
    let by_env = cli.clone().with_env("KMS_PROFILE", "operator");
    let listed: serde_json::Value =
        serde_json::from_str(&by_env.ok("", &["list-kms-instances"])).unwrap();
    assert_eq!(listed["kms_instances"].as_array().unwrap().len(), 1);
    // A flag wins over the profile.
    let err = by_env.fails(
        "",
        &[
            "--principal",
            ALICE,
            "create-kms-instance",
            "--type",
            "software",
            "--owner",
            ACCOUNT,
        ],
    );
    assert!(err.contains("PERMISSION_DENIED"), "{err}");
    assert!(
        by_env
            .ok("", &["list-kms-instances", "--output", "table"])
            .starts_with("INSTANCE ID")
    );
    // A profile the file does not define is named, with those it does.
    let err = cli.fails("", &["--profile", "prod", "list-keys"]);
    assert!(
        err.contains("the profile \"prod\"") && err.contains("it defines alice, operator"),
        "{err}"
    );
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}
