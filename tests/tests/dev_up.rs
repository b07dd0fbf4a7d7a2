//! `kmsctl dev up`, as a newcomer runs it: the whole local service, on sled and on a local
//! etcd with two control-plane replicas. The test waits for the "Press Ctrl-C" line, reads
//! `dev.json`, calls the service through what it names, kills a control-plane replica to see
//! `dev up` start it again, and stops everything with SIGINT.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kms_e2e::bin_path;
use kms_e2e::kmsctl::DevUp;
use kms_proto::kms::v1::{
    CreateKeyRequest, DecryptRequest, DescribeKeyRequest, DisableKeyRequest, EncryptRequest,
    KeyState,
};

const ACCOUNT: &str = "acs:ram::1234567890123456:root";

async fn round_trip(control: &str, data: &str) -> String {
    let strip = |u: &str| u.trim_start_matches("http://").to_owned();
    let mut keys = kms_e2e::cluster::keys_client(&strip(control), ACCOUNT).unwrap();
    let key_id = keys
        .create_key(CreateKeyRequest {
            description: "dev up".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap()
        .key_id;
    let mut crypto = kms_e2e::cluster::crypto_client(&strip(data), ACCOUNT).unwrap();
    let blob = crypto
        .encrypt(EncryptRequest {
            key_id: key_id.clone(),
            plaintext: b"hello".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .ciphertext_blob;
    let opened = crypto
        .decrypt(DecryptRequest {
            ciphertext_blob: blob,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .plaintext;
    assert_eq!(opened, b"hello");
    key_id
}

fn pid_of(config: &Path) -> Option<i32> {
    // The process whose command line names this config: started by the dev up under test.
    let needle = config.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (cmdline.contains("kms-control") && cmdline.contains(&needle)).then_some(pid)
        })
}

#[tokio::test]
async fn dev_up_on_sled_serves_both_planes_and_stops_cleanly() {
    let mut up = DevUp::start(&[]);
    let info = up.info();
    assert_eq!(info["control_addrs"].as_array().unwrap().len(), 1);
    assert!(info.get("etcd_endpoints").is_none(), "{info}");
    round_trip(
        info["control_addr"].as_str().unwrap(),
        info["data_addr"].as_str().unwrap(),
    )
    .await;
    // Both planes serve metrics where dev.json says, and they counted the round trip.
    for (url, method) in [
        (
            &info["control_metrics_url"],
            "kms.v1.KeyManagementService/CreateKey",
        ),
        (&info["data_metrics_url"], "kms.v1.CryptoService/Decrypt"),
    ] {
        let text = get(url.as_str().unwrap()).await;
        assert!(
            text.lines().any(|l| l.starts_with("kms_requests_total{")
                && l.contains(&format!("method=\"{method}\""))
                && l.contains("code=\"OK\"")),
            "{url}: {text}"
        );
    }
    // The HTTP gateway serves where dev.json says, with a pair for the dev account.
    let gateway = info["gateway_url"].as_str().unwrap();
    assert_eq!(get(&format!("{gateway}/healthz")).await, "ok\n");
    assert!(
        info["access_key_id"].as_str().unwrap().starts_with("LTAI")
            && info["access_key_secret"].as_str().unwrap().len() == 30,
        "{info}"
    );
    // The web console runs where dev.json says, with the dev sign-in page and its banner.
    let console = info["console_url"].as_str().unwrap();
    assert!(get(&format!("{console}/healthz")).await.starts_with("ok"));
    let sign_in = get(&format!("{console}/sign-in")).await;
    assert!(sign_in.contains("Development sign-in"), "{sign_in}");
    assert!(
        sign_in.contains(info["account_principal"].as_str().unwrap()),
        "{sign_in}"
    );
    assert!(up.stop().success(), "{}", up.output());
    assert!(up.output().contains("stopped"));
}

/// The body of a plain HTTP GET of `url` (`http://host:port/path`).
async fn get(url: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut conn = tokio::net::TcpStream::connect(host).await.unwrap();
    conn.write_all(format!("GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut raw = String::new();
    conn.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.contains(" 200 "), "{url}: {head}");
    body.to_owned()
}

#[tokio::test]
async fn dev_up_on_etcd_runs_replicas_and_restarts_a_killed_one() {
    let mut up = DevUp::start(&["--store", "etcd", "--replicas", "2"]);
    let info = up.info();
    let controls: Vec<String> = info["control_addrs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(controls.len(), 2);
    assert_eq!(info["control_addr"], controls[0]);
    assert_eq!(info["etcd_endpoints"].as_array().unwrap().len(), 1);
    let data = info["data_addr"].as_str().unwrap().to_owned();

    // A key made through one replica is there through the other.
    let key_id = round_trip(&controls[0], &data).await;
    let mut second =
        kms_e2e::cluster::keys_client(controls[1].trim_start_matches("http://"), ACCOUNT).unwrap();
    second
        .describe_key(DescribeKeyRequest {
            key_id: key_id.clone(),
        })
        .await
        .unwrap();

    // A replica killed outright is started again by dev up.
    let config = up.dev_dir().join("control.toml");
    let pid = pid_of(&config).expect("the first replica's process");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    up.wait_for("restarted kms-control ");
    second
        .disable_key(DisableKeyRequest {
            key_id: key_id.clone(),
        })
        .await
        .unwrap();
    // The restarted replica answers, and sees the change made through the other.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut first =
        kms_e2e::cluster::keys_client(controls[0].trim_start_matches("http://"), ACCOUNT).unwrap();
    loop {
        match first
            .describe_key(DescribeKeyRequest {
                key_id: key_id.clone(),
            })
            .await
        {
            Ok(r) => {
                let state = r.into_inner().key_metadata.unwrap().key_state;
                assert_eq!(state, KeyState::Disabled as i32);
                break;
            }
            Err(s) if s.code() == tonic::Code::Unavailable => {
                assert!(
                    Instant::now() < deadline,
                    "the restarted replica never answered"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => panic!("{s:?}"),
        }
    }
    assert!(up.stop().success(), "{}", up.output());
    assert!(pid_of(&config).is_none(), "a replica outlived dev up");
}

/// Runs `kmsctl` as the dev operator against the control plane `dev.json` names.
fn operator_kmsctl(info: &serde_json::Value, args: &[&str]) -> serde_json::Value {
    let out = Command::new(bin_path("kmsctl").unwrap())
        .args(args)
        .arg("--json")
        .env("KMS_CONTROL_ADDR", info["control_addr"].as_str().unwrap())
        .env(
            "KMS_PRINCIPAL",
            info["operator_principal"].as_str().unwrap(),
        )
        .env("KMSCTL_CONFIG", "/nonexistent/kmsctl.toml")
        .env_remove("KMS_CA")
        .env_remove("KMS_CERT")
        .env_remove("KMS_KEY")
        .env_remove("KMS_PROFILE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kmsctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// An operator's own instances for the dev account do not replace the ones `dev up` made: a
/// restart names the same instances in dev.json. Instances are listed by id, so the operator
/// makes instances until one of each type lists before dev up's own (the one an earlier
/// `dev up` picked up after a restart).
#[tokio::test]
async fn dev_up_keeps_its_instances_across_restarts() {
    let up = DevUp::start(&[]);
    let info = up.info();
    let software = info["software_instance_id"].as_str().unwrap().to_owned();
    let hardware = info["hardware_instance_id"].as_str().unwrap().to_owned();
    assert!(
        software.starts_with("kst-") && hardware.starts_with("kst-"),
        "{info}"
    );
    let account = info["account_principal"].as_str().unwrap();
    let account = account
        .trim_start_matches("acs:ram::")
        .split(':')
        .next()
        .unwrap();
    for (kind, mine) in [("software", &software), ("hardware", &hardware)] {
        for _ in 0..64 {
            let made = operator_kmsctl(
                &info,
                &["create-kms-instance", "--type", kind, "--owner", account],
            );
            if made["kms_instance_id"].as_str().unwrap() < mine.as_str() {
                break;
            }
        }
    }
    let listed = operator_kmsctl(&info, &["list-kms-instances", "--all"]);
    assert!(
        listed["kms_instances"].as_array().unwrap().len() >= 4,
        "{listed}"
    );

    let up = DevUp::start_in(up.into_dir(), &[]);
    let again = up.info();
    assert_eq!(again["software_instance_id"], software.as_str(), "{again}");
    // The gateway's pair is kept too, while it is enabled.
    assert_eq!(again["access_key_id"], info["access_key_id"], "{again}");
    assert_eq!(again["access_key_secret"], info["access_key_secret"]);
    assert_eq!(again["hardware_instance_id"], hardware.as_str(), "{again}");
    assert!(
        up.output()
            .contains(&format!("software {software}, hardware {hardware}")),
        "{}",
        up.output()
    );
}
