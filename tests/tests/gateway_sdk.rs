//! The official Alibaba Cloud KMS SDKs against `kms-gateway` and the real planes: both SDKs, in
//! every signature mode (ACS3-HMAC-SHA256, ACS4-HMAC-SHA256, RPC HMAC-SHA1 from both), run the
//! scenario of `tests/python/sdk_test.py` with AccessKey pairs made through
//! `AccessKeyService`, and once more over HTTPS; then a disabled and a deleted pair must be
//! refused within a second (requests signed here with the RPC scheme, to time the gateway). The
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

/// Starts the gateway against `stack` on a free loopback port, as `name` (its config and log
/// file names), serving HTTPS with the certificate and key in `tls`; its address.
async fn start_gateway(
    stack: &Stack,
    name: &str,
    tls: Option<(&Path, &Path)>,
) -> Result<(Child, String)> {
    start_gateway_with(stack, name, tls, "http", "x-kms-principal", "").await
}

/// [`start_gateway`] reaching the planes by `scheme` (`http`, `https`), naming callers in
/// `header`, with `extra` TOML (tables) at the end of its config.
async fn start_gateway_with(
    stack: &Stack,
    name: &str,
    tls: Option<(&Path, &Path)>,
    scheme: &str,
    header: &str,
    extra: &str,
) -> Result<(Child, String)> {
    let addr = format!("127.0.0.1:{}", free_port()?);
    let config = stack.dir().join(format!("{name}.toml"));
    let tls = tls.map_or(String::new(), |(cert, key)| {
        format!(
            "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            cert.display(),
            key.display()
        )
    });
    std::fs::write(
        &config,
        format!(
            "listen_addr = \"{addr}\"\ncontrol_plane_url = \"{scheme}://{}\"\ndata_plane_url = \"{scheme}://{}\"\n\
             [identity]\nservice_principal = \"{GATEWAY_PRINCIPAL}\"\nprincipal_header = \"{header}\"\n[log]\nlevel = \"info\"\n{tls}{extra}",
            stack.control_addr(),
            stack.data_addr()
        ),
    )?;
    let log_path = stack.dir().join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path)?;
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
        // Over HTTPS the plain request gets no HTTP answer; the port listening is enough here,
        // the SDK's HTTPS calls check the rest.
        let ready = if tls.is_empty() {
            get_status(&addr, "/healthz").await.is_ok_and(|s| s == 200)
        } else {
            tokio::net::TcpStream::connect(&addr).await.is_ok()
        };
        if ready {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the gateway did not answer /healthz within 20 s:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
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

/// A self-signed certificate for `127.0.0.1` and its key, written under `dir`.
fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let (cert, key) = (dir.join("gateway.pem"), dir.join("gateway-key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

/// RFC 3986 encoding, as the RPC signature scheme has it.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `action` signed with the RPC HMAC-SHA1 scheme and sent as `GET`: the HTTP status and body.
async fn rpc_call(addr: &str, id: &str, secret: &str, action: &str) -> (u16, String) {
    use base64::Engine;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (days, secs) = (now / 86_400, now % 86_400);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let timestamp = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    );
    let nonce = format!("{:x}", rand_nonce());
    let mut params = [
        ("AccessKeyId", id.to_string()),
        ("Action", action.to_string()),
        ("Format", "JSON".to_string()),
        ("SignatureMethod", "HMAC-SHA1".to_string()),
        ("SignatureNonce", nonce),
        ("SignatureVersion", "1.0".to_string()),
        ("Timestamp", timestamp),
        ("Version", "2016-01-20".to_string()),
    ];
    params.sort();
    let query = params
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    let to_sign = format!("GET&%2F&{}", encode(&query));
    let key = ring::hmac::Key::new(
        ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        format!("{secret}&").as_bytes(),
    );
    let signature = base64::engine::general_purpose::STANDARD
        .encode(ring::hmac::sign(&key, to_sign.as_bytes()).as_ref());
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /?{query}&Signature={} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n",
        encode(&signature)
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A nonce unique in this process.
fn rand_nonce() -> u128 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    (u128::from(std::process::id()) << 96)
        | (u128::from(n) << 32)
        | u128::from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .subsec_nanos(),
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_sdks_in_every_signature_mode() {
    python().unwrap();
    let mut stack = Stack::start().await.unwrap();
    let instance = stack.software_instance(ACCOUNT, None).await.unwrap();
    let (gateway, addr) = start_gateway(&stack, "kms-gateway", None).await.unwrap();
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

    // The same over HTTPS, the SDK checking the gateway's certificate.
    let (cert, key) = self_signed(stack.dir());
    let (tls_gateway, tls_addr) = start_gateway(&stack, "kms-gateway-tls", Some((&cert, &key)))
        .await
        .unwrap();
    let mut over_tls = envs.clone();
    over_tls.retain(|(k, _)| *k != "KMS_GATEWAY_ENDPOINT");
    over_tls.push(("KMS_GATEWAY_ENDPOINT", tls_addr));
    over_tls.push(("KMS_GATEWAY_CA", cert.display().to_string()));
    let out = run_python(&over_tls, &["https"]).await.unwrap();
    assert!(out.contains("https: ok"), "{out}");
    drop(tls_gateway);

    // A disabled pair, then a deleted one, are refused within a second of the change: signed
    // here, independently of the SDKs, so that the time is the gateway's and not Python's.
    let mut keys = stack.access_keys(Some(OPERATOR)).unwrap();
    for (id, key_secret, want) in [
        (&ak, &secret, "InvalidAccessKeyId.Inactive"),
        (&user_ak, &user_secret, "InvalidAccessKeyId.NotFound"),
    ] {
        let (status, body) = rpc_call(&addr, id, key_secret, "DescribeRegions").await;
        assert_eq!(status, 200, "{body}");
        if want.ends_with("Inactive") {
            keys.disable_access_key(DisableAccessKeyRequest {
                access_key_id: id.clone(),
            })
            .await
            .unwrap();
        } else {
            keys.delete_access_key(DeleteAccessKeyRequest {
                access_key_id: id.clone(),
            })
            .await
            .unwrap();
        }
        let changed = Instant::now();
        loop {
            let sent = Instant::now();
            let (status, body) = rpc_call(&addr, id, key_secret, "DescribeRegions").await;
            if status != 200 {
                assert!(body.contains(want), "{status} {body}");
                break;
            }
            assert!(
                sent.duration_since(changed) < Duration::from_millis(1100),
                "{want}: still accepted {} ms after the change",
                sent.duration_since(changed).as_millis()
            );
            // Paced, not waited on: the bound above is what is checked.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

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

/// `kmsctl access-key`: operators create (the secret shown once), list (never a secret),
/// disable and delete pairs; anyone else is refused with the hint to call as an operator.
#[tokio::test]
async fn kmsctl_manages_access_keys() {
    let mut stack = Stack::start().await.unwrap();
    let kmsctl = kms_e2e::kmsctl::Kmsctl::new(&stack);
    let made = kmsctl.json(
        OPERATOR,
        &["access-key", "create", "--principal-arn", ALICE],
    );
    let id = made["access_key_id"].as_str().unwrap().to_string();
    let secret = made["access_key_secret"].as_str().unwrap();
    assert!(id.starts_with("LTAI") && id.len() == 24, "{made}");
    assert_eq!(secret.len(), 30, "{made}");
    assert_eq!(made["principal"], ALICE);
    assert_eq!(made["status"], "Enabled");

    let listed = kmsctl.json(OPERATOR, &["access-key", "list"]);
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["access_key_id"], id.as_str());
    assert!(listed[0].get("access_key_secret").is_none(), "{listed:?}");
    let text = kmsctl.ok(OPERATOR, &["access-key", "list"]);
    assert!(text.contains(&id) && !text.contains(secret), "{text}");

    let disabled = kmsctl.json(OPERATOR, &["access-key", "disable", &id]);
    assert_eq!(disabled["status"], "Disabled", "{disabled}");
    kmsctl.ok(OPERATOR, &["access-key", "delete", &id]);
    let gone = kmsctl.fails(OPERATOR, &["access-key", "delete", &id]);
    assert!(gone.contains("Forbidden.AccessKeyNotFound"), "{gone}");
    let bad = kmsctl.fails(OPERATOR, &["access-key", "disable", "nope"]);
    assert!(bad.contains("InvalidParameter.AccessKeyId"), "{bad}");

    let refused = kmsctl.fails(ALICE, &["access-key", "create", "--principal-arn", ALICE]);
    assert!(
        refused.contains("Forbidden.NoPermission") && refused.contains("operator"),
        "{refused}"
    );
    stack.stop().await.unwrap();
}

/// In production the planes serve TLS and believe the caller's principal only from a trusted
/// sidecar: the gateway reaches them over TLS (checking their certificates, presenting none)
/// with the caller in `x-forwarded-principal`, and its own principal the same way when it
/// resolves pairs. A key policy that admits only the root then tells the root's pair from a
/// user's, so the planes act as the pair's principal, not as the gateway.
#[tokio::test]
async fn through_tls_planes_as_a_trusted_sidecar() {
    python().unwrap();
    let mut stack = Stack::start_with(kms_e2e::Options {
        mtls: true,
        sidecar_peers: vec!["127.0.0.1".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let instance = stack.software_instance(ACCOUNT, None).await.unwrap();
    let tls = format!(
        "[planes_tls]\nca_file = \"{}\"\nserver_name = \"localhost\"\n",
        stack.certs_dir().join("ca.pem").display()
    );
    let (gateway, addr) = start_gateway_with(
        &stack,
        "kms-gateway-sidecar",
        None,
        "https",
        "x-forwarded-principal",
        &tls,
    )
    .await
    .unwrap();
    let (ak, secret) = access_key(&stack, ALICE).await;
    let (user_ak, user_secret) = access_key(&stack, USER).await;
    let envs = vec![
        ("KMS_GATEWAY_ENDPOINT", addr.clone()),
        ("KMS_AK_ID", ak),
        ("KMS_AK_SECRET", secret),
        ("KMS_USER_AK_ID", user_ak),
        ("KMS_USER_AK_SECRET", user_secret),
        ("KMS_INSTANCE_ID", instance),
        ("KMS_ACCOUNT", ACCOUNT.to_string()),
    ];
    let out = run_python(&envs, &["scenario", "tea-acs3"]).await.unwrap();
    assert!(
        out.contains("tea-acs3: errors (unknown key, wrong secret, no permission): ok"),
        "{out}"
    );
    drop(gateway);
    stack.stop().await.unwrap();
}
