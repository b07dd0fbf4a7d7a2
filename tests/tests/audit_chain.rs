//! The keyed audit chain through the real binaries: after a graceful stop (each plane records
//! a final checkpoint), a truncated control-plane log and a re-hashed data-plane log are named
//! by `kmsctl audit verify --plane`, and the intact logs verify.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

use kms_e2e::{ALICE, OPERATOR, Stack, bin_path};
use kms_proto::kms::v1::*;

fn verify(stack: &Stack, principal: &str, plane: Option<&str>, file: &Path) -> Output {
    let mut cmd = Command::new(bin_path("kmsctl").unwrap());
    cmd.args(["audit", "verify"]);
    if let Some(plane) = plane {
        cmd.args(["--plane", plane]);
    }
    cmd.arg(file)
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
        .unwrap()
}

fn said(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn write(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// What someone who can write the log file but lacks the key does: keeps the lines before
/// `from`, then renumbers the rest and re-chains them, with plain SHA-256 of each line's
/// content as its "MAC".
fn rechain_with_sha256(lines: &[String], from: usize) -> Vec<String> {
    let mac_of = |line: &str| {
        let (_, mac) = line.rsplit_once(",\"mac\":\"").unwrap();
        mac.trim_end_matches("\"}").to_string()
    };
    let mut prev = if from == 0 {
        "0".repeat(64)
    } else {
        mac_of(&lines[from - 1])
    };
    let mut out = lines[..from].to_vec();
    for (i, line) in lines.iter().enumerate().skip(from) {
        let (head, _mac) = line.rsplit_once(",\"mac\":\"").unwrap();
        let (before_prev, _) = head.rsplit_once(",\"prev_mac\":\"").unwrap();
        let seq_at = before_prev.find("\"seq\":").unwrap() + "\"seq\":".len();
        let seq_end = seq_at + before_prev[seq_at..].find(',').unwrap();
        let content = format!(
            "{}{}{},\"prev_mac\":\"{prev}\"}}",
            &before_prev[..seq_at],
            i + 1,
            &before_prev[seq_end..]
        );
        let digest = ring::digest::digest(
            &ring::digest::SHA256,
            &[b"kms-audit-line-v2\0".as_slice(), content.as_bytes()].concat(),
        );
        prev = hex::encode(digest);
        out.push(format!(
            "{},\"mac\":\"{prev}\"}}",
            &content[..content.len() - 1]
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncation_and_rewrites_are_named_against_the_checkpoints() {
    let mut stack = Stack::start().await.unwrap();
    let key = stack
        .keys(Some(ALICE))
        .unwrap()
        .create_key(CreateKeyRequest::default())
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap()
        .key_id;
    for i in 0..4 {
        stack
            .crypto(Some(ALICE))
            .unwrap()
            .encrypt(EncryptRequest {
                key_id: key.clone(),
                plaintext: format!("secret {i}").into_bytes(),
                ..Default::default()
            })
            .await
            .unwrap();
        stack
            .keys(Some(ALICE))
            .unwrap()
            .describe_key(DescribeKeyRequest {
                key_id: key.clone(),
            })
            .await
            .unwrap();
    }
    // A graceful stop records each plane's final checkpoint in the control plane's store.
    stack.stop().await.unwrap();

    let logs = stack.dir().join("logs");
    let control = lines(&logs.join("control-audit.log"));
    let data = lines(&logs.join("data-audit.log"));
    assert!(control.len() >= 6, "{} control lines", control.len());
    assert!(data.len() >= 4, "{} data lines", data.len());
    let truncated = stack.dir().join("control-truncated.log");
    write(&truncated, &control[..control.len() - 3]);
    let mut removed = data.clone();
    removed.remove(1);
    let rehashed = stack.dir().join("data-rehashed.log");
    write(&rehashed, &rechain_with_sha256(&removed, 1));
    let mut edited = data.clone();
    edited[2] = edited[2].replacen("\"principal\":\"", "\"principal\":\"x", 1);
    let edited_path = stack.dir().join("data-edited.log");
    write(&edited_path, &edited);

    // Verification needs the keys, which only the running service holds. The live logs grow
    // after the restart; the checkpoints recorded at the stop still hold for them.
    stack.restart().await.unwrap();

    // Without the key, only the links are checked: the damage does not show.
    for file in [&truncated, &rehashed] {
        let out = verify(&stack, OPERATOR, None, file);
        assert!(out.status.success(), "{}", said(&out));
        assert!(
            said(&out).contains("MACs and truncation not checked"),
            "{}",
            said(&out)
        );
    }

    // The intact logs verify, MACs and checkpoints included.
    for (plane, log) in [("control", "control-audit.log"), ("data", "data-audit.log")] {
        let out = verify(&stack, OPERATOR, Some(plane), &logs.join(log));
        assert!(out.status.success(), "{plane}: {}", said(&out));
        assert!(
            said(&out).contains(&format!("every MAC matches the {plane} plane's key")),
            "{plane}: {}",
            said(&out)
        );
    }

    // The truncation is named, with the lines the log has and the checkpoint recorded.
    let out = verify(&stack, OPERATOR, Some("control"), &truncated);
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    let text = said(&out);
    assert!(
        text.contains(&format!(
            "truncated: log has {} lines, checkpoint at ",
            control.len() - 3
        )) && text.contains(&format!("recorded {}", control.len())),
        "{text}"
    );

    // Line 2 removed and the rest re-hashed: the first re-chained line has no valid MAC.
    let out = verify(&stack, OPERATOR, Some("data"), &rehashed);
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    assert!(
        said(&out).contains("line 2: mac does not match"),
        "{}",
        said(&out)
    );
    // An edited line fails its MAC.
    let out = verify(&stack, OPERATOR, Some("data"), &edited_path);
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    assert!(
        said(&out).contains("line 3: mac does not match"),
        "{}",
        said(&out)
    );
    // The JSON report says the same.
    let mut cmd = Command::new(bin_path("kmsctl").unwrap());
    let out = cmd
        .args(["--json", "audit", "verify", "--plane", "control"])
        .arg(&truncated)
        .env(
            "KMS_CONTROL_ADDR",
            format!("http://{}", stack.control_addr()),
        )
        .env("KMS_PRINCIPAL", OPERATOR)
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], false);
    assert_eq!(report["broken_line"], control.len() - 2);
    assert_eq!(report["checkpoint"]["lines"], control.len());

    // Only operators may check.
    let out = verify(&stack, ALICE, Some("data"), &logs.join("data-audit.log"));
    assert_eq!(out.status.code(), Some(1));
    assert!(said(&out).contains("PERMISSION_DENIED"), "{}", said(&out));
    stack.stop().await.unwrap();
}
