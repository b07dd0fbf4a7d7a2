//! `kmsctl` data-plane commands against the real planes, with OpenSSL on the other side:
//! data keys to files, export to an OpenSSL key pair, re-encryption, signatures OpenSSL
//! verifies, OAEP both ways, random bytes and passwords.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use kms_e2e::{ACCOUNT, ALICE, OPERATOR, Stack, bin_path};
use serde_json::Value;

fn kmsctl(stack: &Stack, args: &[&str]) -> (bool, String, String) {
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
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(stack: &Stack, args: &[&str]) -> String {
    let (ok, out, err) = kmsctl(stack, args);
    assert!(ok, "kmsctl {args:?}: {err}");
    out
}

fn json(stack: &Stack, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    serde_json::from_str(&ok(stack, &a)).unwrap()
}

fn openssl(args: &[&str]) -> bool {
    Command::new("openssl")
        .args(args)
        .output()
        .unwrap()
        .status
        .success()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kmsctl_data_plane_commands_interoperate_with_openssl() {
    let stack = Stack::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    let inst = Command::new(bin_path("kmsctl").unwrap())
        .args([
            "create-kms-instance",
            "--type",
            "software",
            "--owner",
            ACCOUNT,
            "--json",
        ])
        .env(
            "KMS_CONTROL_ADDR",
            format!("http://{}", stack.control_addr()),
        )
        .env("KMS_PRINCIPAL", OPERATOR)
        .output()
        .unwrap();
    assert!(
        inst.status.success(),
        "{}",
        String::from_utf8_lossy(&inst.stderr)
    );
    let inst: Value = serde_json::from_slice(&inst.stdout).unwrap();
    let inst = inst["kms_instance_id"].as_str().unwrap().to_string();

    ok(&stack, &["create-key", "--alias", "alias/aes"]);
    ok(
        &stack,
        &[
            "create-key",
            "--instance",
            &inst,
            "--spec",
            "EC_P256",
            "--alias",
            "alias/ec",
        ],
    );
    ok(
        &stack,
        &[
            "create-key",
            "--instance",
            &inst,
            "--spec",
            "RSA_2048",
            "--usage",
            "ENCRYPT/DECRYPT",
            "--alias",
            "alias/rsa",
        ],
    );

    // Data keys into files; the plaintext file is private; the blob decrypts to it.
    let (blob, key) = (d.join("dk.blob"), d.join("dk.key"));
    ok(
        &stack,
        &[
            "generate-data-key",
            "--key",
            "alias/aes",
            "--bytes",
            "48",
            "--out-blob",
            p(&blob),
            "--out-plaintext",
            p(&key),
        ],
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let plain = d.join("dk.back");
    // A readable file already there does not keep its mode: plaintext is written 0600.
    std::fs::write(&plain, b"old").unwrap();
    std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
    ok(&stack, &["decrypt", "--in", p(&blob), "--out", p(&plain)]);
    assert_eq!(std::fs::read(&plain).unwrap(), std::fs::read(&key).unwrap());
    assert_eq!(mode(&plain), 0o600);
    // A symbolic link at --out is refused, and what it points at is left alone.
    let (target, link) = (d.join("elsewhere"), d.join("dk.link"));
    std::fs::write(&target, b"keep").unwrap();
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let (ok_, _, err) = kmsctl(&stack, &["decrypt", "--in", p(&blob), "--out", p(&link)]);
    assert!(!ok_ && err.contains("symbolic link"), "{err}");
    assert_eq!(std::fs::read(&target).unwrap(), b"keep");
    assert_eq!(std::fs::read(&key).unwrap().len(), 48);
    let wp = json(
        &stack,
        &["generate-data-key", "--key", "alias/aes", "--no-plaintext"],
    );
    assert!(
        wp["plaintext"].is_null() && wp["ciphertext_blob"].is_string(),
        "{wp}"
    );

    // Export the data key to an OpenSSL key pair.
    let (me, me_pub, exported) = (d.join("me.pem"), d.join("me.pub.pem"), d.join("dk.enc"));
    assert!(openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        p(&me)
    ]));
    assert!(openssl(&[
        "pkey",
        "-in",
        p(&me),
        "-pubout",
        "-out",
        p(&me_pub)
    ]));
    ok(
        &stack,
        &[
            "export-data-key",
            "--in",
            p(&blob),
            "--public-key",
            p(&me_pub),
            "--out",
            p(&exported),
        ],
    );
    let by_openssl = d.join("dk.openssl");
    assert!(openssl(&[
        "pkeyutl",
        "-decrypt",
        "-inkey",
        p(&me),
        "-pkeyopt",
        "rsa_padding_mode:oaep",
        "-pkeyopt",
        "rsa_oaep_md:sha256",
        "-pkeyopt",
        "rsa_mgf1_md:sha256",
        "-in",
        p(&exported),
        "-out",
        p(&by_openssl),
    ]));
    assert_eq!(
        std::fs::read(&by_openssl).unwrap(),
        std::fs::read(&key).unwrap()
    );

    // Re-encrypt under another context.
    let moved = d.join("moved.blob");
    ok(
        &stack,
        &[
            "re-encrypt",
            "--in",
            p(&blob),
            "--to",
            "alias/aes",
            "--to-context",
            "v=2",
            "--out",
            p(&moved),
        ],
    );
    assert!(!kmsctl(&stack, &["decrypt", "--in", p(&moved)]).0);
    ok(
        &stack,
        &[
            "decrypt",
            "--in",
            p(&moved),
            "--context",
            "v=2",
            "--out",
            p(&plain),
        ],
    );
    assert_eq!(std::fs::read(&plain).unwrap(), std::fs::read(&key).unwrap());

    // Sign a file; OpenSSL verifies with the downloaded public key; kmsctl verify agrees and
    // refuses a changed file.
    let (msg, sig, pem) = (
        d.join("release.tar"),
        d.join("release.sig"),
        d.join("ec.pem"),
    );
    std::fs::write(&msg, b"release contents").unwrap();
    ok(
        &stack,
        &[
            "sign",
            "--key",
            "alias/ec",
            "--algorithm",
            "ECDSA_SHA_256",
            "--in",
            p(&msg),
            "--out",
            p(&sig),
        ],
    );
    let pem_text = json(&stack, &["get-public-key", "alias/ec"]);
    let pem_text = pem_text["public_key"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| ok(&stack, &["get-public-key", "alias/ec"]));
    std::fs::write(&pem, pem_text).unwrap();
    assert!(openssl(&[
        "dgst",
        "-sha256",
        "-verify",
        p(&pem),
        "-signature",
        p(&sig),
        p(&msg)
    ]));
    assert_eq!(
        ok(
            &stack,
            &[
                "verify",
                "--key",
                "alias/ec",
                "--algorithm",
                "ECDSA_SHA_256",
                "--in",
                p(&msg),
                "--signature",
                p(&sig)
            ]
        ),
        "valid\n"
    );
    std::fs::write(&msg, b"release contents, changed").unwrap();
    let (valid, out, _) = kmsctl(
        &stack,
        &[
            "verify",
            "--key",
            "alias/ec",
            "--algorithm",
            "ECDSA_SHA_256",
            "--in",
            p(&msg),
            "--signature",
            p(&sig),
        ],
    );
    assert!(!valid && out == "INVALID\n", "{out}");

    // OAEP: encrypt with kmsctl, decrypt with kmsctl; a wrong algorithm is a clear error.
    let (secret, enc, back) = (d.join("s.txt"), d.join("s.enc"), d.join("s.back"));
    std::fs::write(&secret, b"top secret").unwrap();
    ok(
        &stack,
        &[
            "asymmetric-encrypt",
            "--key",
            "alias/rsa",
            "--algorithm",
            "RSAES_OAEP_SHA_1",
            "--in",
            p(&secret),
            "--out",
            p(&enc),
        ],
    );
    ok(
        &stack,
        &[
            "asymmetric-decrypt",
            "--key",
            "alias/rsa",
            "--algorithm",
            "RSAES_OAEP_SHA_1",
            "--in",
            p(&enc),
            "--out",
            p(&back),
        ],
    );
    assert_eq!(std::fs::read(&back).unwrap(), b"top secret");
    assert_eq!(mode(&back), 0o600);
    assert_eq!(mode(&enc), 0o644);
    let (ok_, _, err) = kmsctl(
        &stack,
        &[
            "asymmetric-encrypt",
            "--key",
            "alias/rsa",
            "--algorithm",
            "RSA_PSS_SHA_256",
            "--in",
            p(&secret),
        ],
    );
    // Refused before any call: only the OAEP algorithms are offered.
    assert!(
        !ok_ && err.contains("invalid value 'RSA_PSS_SHA_256' for '--algorithm <ALGORITHM>'")
            && err.contains("[possible values: RSAES_OAEP_SHA_256, RSAES_OAEP_SHA_1]"),
        "{err}"
    );

    // Random bytes and passwords.
    let r = json(&stack, &["generate-random", "--length", "24"]);
    assert_eq!(r["random"].as_str().unwrap().len(), 32);
    let pw = ok(
        &stack,
        &["random-password", "--length", "20", "--exclude-punctuation"],
    );
    assert_eq!(pw.trim().len(), 20);
    assert!(pw.trim().chars().all(|c| c.is_ascii_alphanumeric()), "{pw}");
    let (ok_, _, err) = kmsctl(&stack, &["generate-random", "--length", "0"]);
    assert!(!ok_ && err.contains("InvalidParameter.Length"), "{err}");
}
