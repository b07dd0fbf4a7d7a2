//! The keyed audit chain through the real binaries: after a graceful stop (each plane records
//! a final checkpoint), a truncated control-plane log and a re-hashed data-plane log are named
//! by `kmsctl audit verify --plane`, and the intact logs verify. With two replicas of each
//! plane on etcd, each writing its own log, every log verifies against its own checkpoint and
//! no replica's checkpoint is refused as going back from another's.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

use kms_e2e::cluster::{Cluster, Plane};
use kms_e2e::{ALICE, OPERATOR, Stack, bin_path};
use kms_proto::kms::v1::*;

fn verify(stack: &Stack, principal: &str, plane: Option<&str>, file: &Path) -> Output {
    verify_at(
        stack.control_addr(),
        stack.data_addr(),
        principal,
        plane,
        file,
    )
}

/// `kmsctl audit verify [--plane PLANE] FILE` against the planes at `control` and `data`.
fn verify_at(
    control: &str,
    data: &str,
    principal: &str,
    plane: Option<&str>,
    file: &Path,
) -> Output {
    let mut cmd = Command::new(bin_path("kmsctl").unwrap());
    cmd.args(["audit", "verify"]);
    if let Some(plane) = plane {
        cmd.args(["--plane", plane]);
    }
    cmd.arg(file)
        .env("KMS_CONTROL_ADDR", format!("http://{control}"))
        .env("KMS_DATA_ADDR", format!("http://{data}"))
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replicas_log_verifies_against_its_own_checkpoint() {
    let mut cluster = Cluster::start(1, 2, 2).await.unwrap();
    let key = cluster
        .keys(0, ALICE)
        .unwrap()
        .create_key(CreateKeyRequest::default())
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap()
        .key_id;
    // Many more calls through replica 0 of each plane than through replica 1 (which also
    // takes the other plane's calls when replica 0 was not up yet), and replica 1 stops after it:
    // one checkpoint slot per plane would refuse replica 1's last checkpoint as the log going
    // back, and check replica 1's log against replica 0's checkpoint.
    for (replica, calls) in [(0, 40), (1, 2)] {
        for i in 0..calls {
            cluster
                .keys(replica, ALICE)
                .unwrap()
                .describe_key(DescribeKeyRequest {
                    key_id: key.clone(),
                })
                .await
                .unwrap();
            cluster
                .crypto(replica, ALICE)
                .unwrap()
                .encrypt(EncryptRequest {
                    key_id: key.clone(),
                    plaintext: format!("secret {i}").into_bytes(),
                    ..Default::default()
                })
                .await
                .unwrap();
        }
    }
    // A graceful stop records each replica's final checkpoint: the data planes first.
    cluster.stop().await.unwrap();

    let logs = cluster.dir().join("logs");
    let mut stopped = Vec::new();
    for (plane, name) in [
        ("control", "kms-control-0"),
        ("control", "kms-control-1"),
        ("data", "kms-data-0"),
        ("data", "kms-data-1"),
    ] {
        let path = logs.join(format!("{name}-audit.log"));
        let all = lines(&path);
        let first: serde_json::Value = serde_json::from_str(&all[0]).unwrap();
        let id = first["mac"].as_str().unwrap().to_string();
        stopped.push((plane, name, path, all.len(), id));
    }
    for pair in stopped.chunks(2) {
        let ((_, a, _, more, _), (_, b, _, fewer, _)) = (&pair[0], &pair[1]);
        assert!(
            fewer < more,
            "{b} has {fewer} lines, {a} {more}: no going back to refuse"
        );
    }
    let ids: std::collections::BTreeSet<_> = stopped.iter().map(|s| s.4.clone()).collect();
    assert_eq!(ids.len(), 4, "each replica writes its own log");

    // Verification needs the keys, which only the running service holds.
    for plane in [Plane::Data, Plane::Control] {
        for i in 0..2 {
            cluster.start_replica(plane, i).unwrap();
        }
    }
    for plane in [Plane::Data, Plane::Control] {
        for i in 0..2 {
            cluster.wait_serving(plane, i).await.unwrap();
        }
    }
    let (control, data) = (
        cluster.controls[0].addr.clone(),
        cluster.datas[0].addr.clone(),
    );
    for (plane, name, path, lines_at_stop, id) in &stopped {
        let mut cmd = Command::new(bin_path("kmsctl").unwrap());
        let out = cmd
            .args(["--json", "audit", "verify", "--plane", plane])
            .arg(path)
            .env("KMS_CONTROL_ADDR", format!("http://{control}"))
            .env("KMS_DATA_ADDR", format!("http://{data}"))
            .env("KMS_PRINCIPAL", OPERATOR)
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: {}", said(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["ok"], true, "{name}: {report}");
        assert_eq!(report["macs_checked"], true, "{name}: {report}");
        assert_eq!(report["log"], id.as_str(), "{name}: {report}");
        // Its own checkpoint: the one its replica recorded at the stop.
        assert_eq!(report["checkpoint"]["log"], id.as_str(), "{name}: {report}");
        assert_eq!(
            report["checkpoint"]["lines"], *lines_at_stop,
            "{name}: {report}"
        );
        // The human form says the same.
        let out = verify_at(&control, &data, OPERATOR, Some(plane), path);
        assert!(out.status.success(), "{name}: {}", said(&out));
        assert!(
            said(&out).contains(&format!(
                "every MAC matches the {plane} plane's key; the checkpoint at "
            )) && said(&out).contains(&format!("recorded {lines_at_stop} lines")),
            "{name}: {}",
            said(&out)
        );
    }
    cluster.stop().await.unwrap();

    // No checkpoint was refused, in either run; the control planes noted each new log.
    let names = ["kms-control-0", "kms-control-1", "kms-data-0", "kms-data-1"];
    for name in names {
        let log = cluster.log(name);
        assert!(!log.is_empty(), "{name} wrote no log");
        assert!(!log.contains("was refused"), "{name}:\n{log}");
    }
    let controls = cluster.log("kms-control-0") + &cluster.log("kms-control-1");
    for (_, name, _, _, id) in &stopped {
        assert!(
            controls
                .lines()
                .any(|l| l.contains("first checkpoint of an audit log") && l.contains(id)),
            "{name}: no first checkpoint of log {id} noted"
        );
    }
}
