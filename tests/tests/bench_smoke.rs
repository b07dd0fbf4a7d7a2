//! `kms-bench` against the real stack: every scenario briefly, closed and open loop, software
//! and HSM keys, and `compare` against in-process baselines (echo and the PKCS#11 one on the
//! stack's own token). Each run must complete with zero errors and print JSON that parses; no
//! figure is asserted beyond being finite and positive.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use kms_e2e::{ALICE, OPERATOR, Stack, bin_path};
use serde_json::Value;

/// Runs kms-bench with `args` against `stack` (through a dev.json naming it) and returns its
/// JSON report, after checking it succeeded.
async fn bench(stack: &Stack, dev_json: &std::path::Path, args: &[&str]) -> Value {
    let out = tokio::process::Command::new(bin_path("kms-bench").unwrap())
        .args(args)
        .arg("--dev-json")
        .arg(dev_json)
        .arg("--json")
        // The stack's own variables must not leak into the tool's flags.
        .env_remove("KMS_PRINCIPAL")
        .env_remove("KMS_CONTROL_ADDR")
        .env_remove("KMS_DATA_ADDR")
        .env_remove("SOFTHSM2_CONF")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "kms-bench {args:?} failed ({}):\n{stderr}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        stack.log("kms-data")
    );
    // Not a terminal: no progress line.
    assert!(!stderr.contains('\r'), "{stderr}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?}: not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn assert_clean(report: &Value, what: &str) {
    assert_eq!(report["errors"], 0, "{what}: {report}");
    assert!(report["ok"].as_u64().unwrap() > 0, "{what}: {report}");
    let p99 = report["latency_ms"]["p99"].as_f64().unwrap();
    assert!(p99.is_finite() && p99 > 0.0, "{what}: {report}");
    assert!(
        report["per_second"].as_f64().unwrap() > 0.0,
        "{what}: {report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_runs_clean_and_compare_gives_ratios() {
    let stack = Stack::start().await.unwrap();
    // What `kmsctl dev up` would write for this stack; the stack's directory holds data.toml
    // and softhsm/softhsm2.conf where dev up keeps them, for the HSM baseline.
    let dev_json = stack.dir().join("dev.json");
    std::fs::write(
        &dev_json,
        serde_json::json!({
            "control_addr": format!("http://{}", stack.control_addr()),
            "data_addr": format!("http://{}", stack.data_addr()),
            "operator_principal": OPERATOR,
            "account_principal": ALICE,
        })
        .to_string(),
    )
    .unwrap();
    let brief = ["--requests", "120", "--concurrency", "4"];

    let runs: Vec<Vec<&str>> = vec![
        vec!["encrypt", "--payload", "4096"],
        vec!["decrypt"],
        vec!["generate-data-key"],
        vec!["re-encrypt", "--connections", "2"],
        vec!["sign", "--spec", "EC_P256"],
        vec!["sign", "--spec", "EC_P256K"],
        vec!["sign", "--spec", "RSA_2048"],
        vec!["verify", "--spec", "RSA_3072"],
        vec!["verify", "--spec", "EC_P256"],
        vec!["asymmetric-decrypt", "--spec", "RSA_2048"],
        vec!["describe-key"],
        vec!["create-key"],
        vec![
            "mixed",
            "--mix",
            "encrypt=70,decrypt=20,generate-data-key=5,describe-key=5",
        ],
        vec!["encrypt", "--protection", "hsm"],
        vec!["generate-data-key", "--protection", "hsm"],
    ];
    for extra in &runs {
        let mut args = vec!["run"];
        args.extend(extra);
        args.extend(brief);
        let report = bench(&stack, &dev_json, &args).await;
        assert_clean(&report, &format!("{extra:?}"));
        assert_eq!(report["scenario"], extra[0], "{report}");
        // Every key the run made is scheduled for deletion.
        assert_eq!(
            report["keys_created"], report["keys_scheduled_for_deletion"],
            "{extra:?}: {report}"
        );
    }

    // create-key made as many keys as it was asked for, each scheduled for deletion.
    let report = bench(
        &stack,
        &dev_json,
        &["run", "create-key", "--requests", "30"],
    )
    .await;
    assert_eq!(report["keys_created"], 30, "{report}");

    // --keys: the requests spread over keys made for the run, all scheduled for deletion.
    let report = bench(
        &stack,
        &dev_json,
        &["run", "encrypt", "--keys", "20", "--requests", "40"],
    )
    .await;
    assert_clean(&report, "encrypt --keys 20");
    assert_eq!(report["keys_created"], 20, "{report}");
    assert_eq!(report["keys_scheduled_for_deletion"], 20, "{report}");

    // disable → refused by the data plane, two workers with a key each.
    let report = bench(
        &stack,
        &dev_json,
        &[
            "run",
            "disable-refusal",
            "--requests",
            "10",
            "--concurrency",
            "2",
        ],
    )
    .await;
    assert_clean(&report, "disable-refusal");
    assert_eq!(report["ok"], 10, "{report}");

    // Open loop: a fixed rate, bounded by a duration; a process's resident set sampled
    // meanwhile (this test's own, standing in for a plane's).
    let pid = std::process::id().to_string();
    let report = bench(
        &stack,
        &dev_json,
        &[
            "run",
            "encrypt",
            "--rate",
            "200",
            "--duration",
            "1s",
            "--rss-of",
            &pid,
        ],
    )
    .await;
    assert_clean(&report, "open loop");
    assert_eq!(report["load"]["mode"], "open", "{report}");
    assert!(report["rss"]["max_mib"].as_f64().unwrap() > 0.0, "{report}");

    // The older invocation still works.
    let report = bench(
        &stack,
        &dev_json,
        &["--op", "describe-key", "--requests", "40"],
    )
    .await;
    assert_clean(&report, "--op describe-key");

    // compare: baseline and service alternate; ratios are finite and positive.
    for (extra, baseline) in [
        (vec!["encrypt"], "echo"),
        (vec!["generate-data-key"], "aes-gcm"),
        (vec!["sign", "--spec", "EC_P256"], "ecdsa-p256"),
        (vec!["encrypt", "--protection", "hsm"], "pkcs11-aes-gcm"),
    ] {
        let mut args = vec!["compare"];
        args.extend(&extra);
        args.extend(["--rounds", "2", "--requests", "100", "--concurrency", "4"]);
        let report = bench(&stack, &dev_json, &args).await;
        assert_eq!(report["baseline"], baseline, "{report}");
        assert_eq!(report["errors"], 0, "{extra:?}: {report}");
        for ratio in ["throughput", "p99"] {
            let r = report["ratio"][ratio].as_f64().unwrap();
            assert!(
                r.is_finite() && r > 0.0,
                "{extra:?} ratio.{ratio}: {report}"
            );
        }
        assert_eq!(report["service"]["rounds"].as_array().unwrap().len(), 2);
        assert_eq!(report["baseline_rounds"].as_array().unwrap().len(), 2);
    }

    // Absolute targets: create-key's ratio is to 5,000/s, disable-refusal's to 10 ms. Every
    // round of create-key makes its keys in the one instance made for the run, which has room
    // for all of them.
    let report = bench(
        &stack,
        &dev_json,
        &[
            "compare",
            "create-key",
            "--rounds",
            "2",
            "--requests",
            "150",
        ],
    )
    .await;
    assert!(
        report["ratio"]["throughput"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    let rounds = report["service"]["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 2, "{report}");
    for round in rounds {
        assert_eq!(round["ok"], 150, "{report}");
    }
    let report = bench(
        &stack,
        &dev_json,
        &[
            "compare",
            "disable-refusal",
            "--rounds",
            "1",
            "--requests",
            "5",
            "--concurrency",
            "1",
        ],
    )
    .await;
    assert!(report["ratio"]["p99"].as_f64().unwrap() > 0.0, "{report}");

    // A chart is written.
    let chart = stack.dir().join("chart.svg");
    let out = tokio::process::Command::new(bin_path("kms-bench").unwrap())
        .args(["run", "describe-key", "--requests", "50", "--plot"])
        .arg(&chart)
        .arg("--dev-json")
        .arg(&dev_json)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("p99.9 ms"), "{table}");
    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("<polyline"),
        "{svg}"
    );
}

/// Runs kms-bench as `ALICE` against the planes at `data` and `control` (`host:port`), with
/// `args` before the identity flags; its exit code and standard error.
async fn bench_fails(data: &str, control: &str, args: &[&str]) -> (Option<i32>, String) {
    let out = tokio::process::Command::new(bin_path("kms-bench").unwrap())
        .args(args)
        .args(["--principal", ALICE])
        .args(["--data", &format!("http://{data}")])
        .args(["--control", &format!("http://{control}")])
        .env_remove("KMS_PRINCIPAL")
        .output()
        .await
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An unreachable plane and a caller without permission are named in the error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_say_what_to_do() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let nowhere = format!("127.0.0.1:{port}");
    let (code, err) = bench_fails(&nowhere, &nowhere, &["run", "encrypt"]).await;
    assert_eq!(code, Some(1));
    assert!(
        err.contains("cannot reach the data plane") && err.contains("kmsctl dev up"),
        "{err}"
    );

    // --keys out of range, beside --key, or with a scenario that cannot spread.
    for (args, code, says) in [
        (&["run", "encrypt", "--keys", "0"][..], 2, "--keys"),
        (
            &["run", "encrypt", "--keys", "5", "--key", "alias/x"][..],
            2,
            "--key",
        ),
    ] {
        let out = tokio::process::Command::new(bin_path("kms-bench").unwrap())
            .args(args)
            .output()
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(code), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }

    let stack = Stack::start().await.unwrap();
    let (data, control) = (
        stack.data_addr().to_string(),
        stack.control_addr().to_string(),
    );
    let (code, err) = bench_fails(&data, &control, &["run", "sign", "--keys", "5"]).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("--keys spreads"), "{err}");
    // No operator and no instance: the run cannot make its keys, and says how to fix it.
    let (code, err) = bench_fails(&data, &control, &["run", "encrypt"]).await;
    assert_eq!(code, Some(1));
    assert!(
        err.contains("--instance") && err.contains("--operator-principal"),
        "{err}"
    );
    // A principal that is not an operator is told so when it tries to make the instance.
    let operator = ["run", "encrypt", "--operator-principal", ALICE];
    let (code, err) = bench_fails(&data, &control, &operator).await;
    assert_eq!(code, Some(1));
    assert!(
        err.contains("PERMISSION_DENIED") && err.contains(ALICE) && err.contains("operators"),
        "{err}"
    );
}

/// Over mTLS (the development header off), the client certificates name the caller and the
/// operator, as `kmsctl dev up --mtls` writes them into dev.json.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_over_mtls() {
    let stack = Stack::start_with(kms_e2e::Options {
        mtls: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let certs = stack.certs_dir();
    let pem = |p: &str, suffix: &str| certs.join(format!("{}{suffix}.pem", kms_e2e::cert_stem(p)));
    let dev_json = stack.dir().join("dev.json");
    std::fs::write(
        &dev_json,
        serde_json::json!({
            "control_addr": format!("https://{}", stack.control_addr()),
            "data_addr": format!("https://{}", stack.data_addr()),
            "operator_principal": OPERATOR,
            "account_principal": ALICE,
            "mtls": true,
            "ca_file": certs.join("ca.pem"),
            "account_cert_file": pem(ALICE, ""),
            "account_key_file": pem(ALICE, "-key"),
            "operator_cert_file": pem(OPERATOR, ""),
            "operator_key_file": pem(OPERATOR, "-key"),
        })
        .to_string(),
    )
    .unwrap();
    for scenario in ["encrypt", "describe-key"] {
        let report = bench(
            &stack,
            &dev_json,
            &["run", scenario, "--requests", "60", "--concurrency", "4"],
        )
        .await;
        assert_clean(&report, scenario);
    }
    // The same files given as flags, without dev.json; the account owning the instance made
    // for the run cannot be read from a certificate, so it is given.
    let out = tokio::process::Command::new(bin_path("kms-bench").unwrap())
        .args(["run", "generate-data-key", "--requests", "30", "--json"])
        .args(["--account", kms_e2e::ACCOUNT])
        .args(["--control", &format!("http://{}", stack.control_addr())])
        .args(["--data", &format!("http://{}", stack.data_addr())])
        .arg("--ca")
        .arg(certs.join("ca.pem"))
        .arg("--cert")
        .arg(pem(ALICE, ""))
        .arg("--cert-key")
        .arg(pem(ALICE, "-key"))
        .arg("--operator-cert")
        .arg(pem(OPERATOR, ""))
        .arg("--operator-cert-key")
        .arg(pem(OPERATOR, "-key"))
        .env_remove("KMS_PRINCIPAL")
        .env_remove("KMS_CA")
        .env_remove("KMS_CERT")
        .env_remove("KMS_KEY")
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_clean(&report, "mTLS flags");
}
