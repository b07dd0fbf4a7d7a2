//! The official Alibaba Cloud KMS SDKs against `kms-gateway` and the real planes: both SDKs, in
//! every signature mode (ACS3-HMAC-SHA256, ACS4-HMAC-SHA256, RPC HMAC-SHA1 from both), run the
//! scenario of `tests/python/sdk_test.py` with AccessKey pairs made through
//! `AccessKeyService`; then a disabled and a deleted pair must be refused within a second. The
//! SDKs live in `target/python-venv`, which `scripts/python-env.sh` makes (the test command
//! runs it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use kms_e2e::{ACCOUNT, ALICE, GATEWAY_PRINCIPAL, OPERATOR, Stack, bin_path, free_port};
use kms_proto::kms::v1::{
    CreateAccessKeyRequest, DeleteAccessKeyRequest, DisableAccessKeyRequest, ListAccessKeysRequest,
    ResolveAccessKeyRequest,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

/// A RAM user of the test account whose pair the scenario locks out of a key by policy.
const USER: &str = "acs:ram::1234567890123456:user/gateway-user";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn python() -> Result<PathBuf> {
    let python = workspace_root().join("target/python-venv/bin/python");
    if !python.exists() {
        bail!(
            "{} is missing: run scripts/python-env.sh (the test command does) to install the \
             official SDKs from tests/python/requirements.txt",
            python.display()
        );
    }
    Ok(python)
}

/// Starts the gateway against `stack` on a free loopback port; its address.
async fn start_gateway(stack: &Stack) -> Result<(Child, String)> {
    let addr = format!("127.0.0.1:{}", free_port()?);
    let config = stack.dir().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "listen_addr = \"{addr}\"\ncontrol_plane_url = \"http://{}\"\ndata_plane_url = \"http://{}\"\n\
             [identity]\nservice_principal = \"{GATEWAY_PRINCIPAL}\"\n[log]\nlevel = \"info\"\n",
            stack.control_addr(),
            stack.data_addr()
        ),
    )?;
    let log = std::fs::File::create(stack.dir().join("kms-gateway.log"))?;
    let child = Command::new(bin_path("kms-gateway")?)
        .arg("--config")
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .context("cannot start kms-gateway")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(status) = get_status(&addr, "/healthz").await
            && status == 200
        {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the gateway did not answer /healthz within 20 s:\n{}",
                std::fs::read_to_string(stack.dir().join("kms-gateway.log")).unwrap_or_default()
            );
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((child, addr))
}

/// The status of a plain `GET path`.
async fn get_status(addr: &str, path: &str) -> Result<u16> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status")
}

/// Creates a pair for `principal` as the operator: id and secret.
async fn access_key(stack: &Stack, principal: &str) -> (String, String) {
    let resp = stack
        .access_keys(Some(OPERATOR))
        .unwrap()
        .create_access_key(CreateAccessKeyRequest {
            principal: principal.into(),
        })
        .await
        .unwrap()
        .into_inner();
    (
        resp.access_key.unwrap().access_key_id,
        resp.access_key_secret,
    )
}

async fn run_python(envs: &[(&str, String)], args: &[&str]) -> Result<String> {
    let script = workspace_root().join("tests/python/sdk_test.py");
    let out = Command::new(python()?)
        .arg(&script)
        .args(args)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .kill_on_drop(true)
        .output()
        .await
        .context("cannot run the SDK tests")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("sdk_test.py {args:?} failed ({}):\n{text}", out.status);
    }
    Ok(text)
}

fn ms_from_now(d: Duration) -> String {
    (SystemTime::now() + d)
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_sdks_in_every_signature_mode() {
    python().unwrap();
    let mut stack = Stack::start().await.unwrap();
    let instance = stack.software_instance(ACCOUNT, None).await.unwrap();
    let (gateway, addr) = start_gateway(&stack).await.unwrap();
    let (ak, secret) = access_key(&stack, ALICE).await;
    let (user_ak, user_secret) = access_key(&stack, USER).await;

    // Pairs: operators only; the secret is shown once and never listed.
    let denied = stack
        .access_keys(Some(ALICE))
        .unwrap()
        .create_access_key(CreateAccessKeyRequest {
            principal: ALICE.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    let listed = stack
        .access_keys(Some(OPERATOR))
        .unwrap()
        .list_access_keys(ListAccessKeysRequest {
            principal: ALICE.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .access_keys;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].access_key_id, ak);
    // Only the gateway's principal resolves pairs.
    let refused = stack
        .access_key_resolver(Some(ALICE))
        .unwrap()
        .resolve_access_key(ResolveAccessKeyRequest {
            access_key_id: ak.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);

    let envs = vec![
        ("KMS_GATEWAY_ENDPOINT", addr.clone()),
        ("KMS_AK_ID", ak.clone()),
        ("KMS_AK_SECRET", secret.clone()),
        ("KMS_USER_AK_ID", user_ak.clone()),
        ("KMS_USER_AK_SECRET", user_secret.clone()),
        ("KMS_INSTANCE_ID", instance.clone()),
        ("KMS_ACCOUNT", ACCOUNT.to_string()),
    ];
    let began = Instant::now();
    let out = run_python(&envs, &["run"]).await.unwrap();
    eprintln!("{out}SDK scenario: {} ms", began.elapsed().as_millis());
    assert!(out.contains("all checks passed"), "{out}");
    for mode in ["tea-acs3", "tea-rpc", "tea-acs4", "core-rpc"] {
        assert!(
            out.contains(&format!("{mode}: import AES material: ok")),
            "{out}"
        );
    }

    // A disabled pair, then a deleted one, are refused within a second.
    let mut keys = stack.access_keys(Some(OPERATOR)).unwrap();
    keys.disable_access_key(DisableAccessKeyRequest {
        access_key_id: ak.clone(),
    })
    .await
    .unwrap();
    let mut with_deadline = envs.clone();
    with_deadline.push(("KMS_DEADLINE_MS", ms_from_now(Duration::from_millis(1500))));
    let out = run_python(&with_deadline, &["refused", "tea-acs3"])
        .await
        .unwrap();
    assert!(out.contains("InvalidAccessKeyId.Inactive"), "{out}");
    keys.delete_access_key(DeleteAccessKeyRequest {
        access_key_id: user_ak.clone(),
    })
    .await
    .unwrap();
    let mut with_deadline = envs.clone();
    with_deadline.retain(|(k, _)| !k.starts_with("KMS_AK_"));
    with_deadline.push(("KMS_AK_ID", user_ak.clone()));
    with_deadline.push(("KMS_AK_SECRET", user_secret.clone()));
    with_deadline.push(("KMS_DEADLINE_MS", ms_from_now(Duration::from_millis(1500))));
    let out = run_python(&with_deadline, &["refused", "core-rpc"])
        .await
        .unwrap();
    assert!(out.contains("InvalidAccessKeyId.NotFound"), "{out}");

    let log = std::fs::read_to_string(stack.dir().join("kms-gateway.log")).unwrap();
    for s in [&secret, &user_secret] {
        assert!(
            !log.contains(s.as_str()),
            "a secret is in the gateway's log"
        );
    }
    drop(gateway);
    stack.stop().await.unwrap();
    let entries = stack.store_entries().unwrap();
    assert!(
        !entries
            .iter()
            .any(|(_, v)| kms_e2e::contains(v, secret.as_bytes())),
        "an AccessKey secret is stored in plaintext"
    );
}
