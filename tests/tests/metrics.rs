//! Both planes serve Prometheus metrics: after real traffic, a scrape of each parses (with a
//! parser independent of the one writing it) and the counters moved by what was done.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use kms_e2e::{ALICE, Options, Stack, eventually};
use kms_proto::kms::v1::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// GETs `/metrics` from `addr` and parses it.
async fn scrape(addr: &str) -> prometheus_parse::Scrape {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut raw = String::new();
    conn.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap()
}

/// The sum of the samples named `name` whose labels include every pair of `labels`.
fn sum(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

fn names(scrape: &prometheus_parse::Scrape) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for s in &scrape.samples {
        *out.entry(s.metric.clone()).or_insert(0) += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_planes_count_what_they_did() {
    let ports = kms_store::etcd_testing::free_ports(2);
    let control_metrics = format!("127.0.0.1:{}", ports[0]);
    let data_metrics = format!("127.0.0.1:{}", ports[1]);
    let stack = Stack::start_with(Options {
        control_tables: format!("[metrics]\nlisten_addr = \"{control_metrics}\"\n"),
        data_tables: format!("[metrics]\nlisten_addr = \"{data_metrics}\"\n"),
        ..Default::default()
    })
    .await
    .unwrap();
    let control_before = scrape(&control_metrics).await;
    let data_before = scrape(&data_metrics).await;
    const ENCRYPT: &str = "kms.v1.CryptoService/Encrypt";
    const CREATE: &str = "kms.v1.KeyManagementService/CreateKey";

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
    let mut crypto = stack.crypto(Some(ALICE)).unwrap();
    for _ in 0..5 {
        crypto
            .encrypt(EncryptRequest {
                key_id: key.clone(),
                plaintext: b"counted".to_vec(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let refused = crypto
        .encrypt(EncryptRequest {
            key_id: "alias/nothing-here".into(),
            plaintext: b"x".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    let reason = kms_e2e::reason(&refused);

    let data = scrape(&data_metrics).await;
    let moved = |name: &str, labels: &[(&str, &str)]| {
        sum(&data, name, labels) - sum(&data_before, name, labels)
    };
    assert_eq!(
        moved("kms_requests_total", &[("method", ENCRYPT), ("code", "OK")]),
        5.0
    );
    assert_eq!(
        moved(
            "kms_requests_total",
            &[
                ("method", ENCRYPT),
                ("code", "NOT_FOUND"),
                ("reason", &reason)
            ]
        ),
        1.0,
        "{reason}"
    );
    assert!(moved("kms_request_duration_seconds_count", &[("method", ENCRYPT)]) >= 6.0);
    // The key's material was made and sealed in the HSM when it was created. Every call
    // looked its key up; the first asked the control plane, and later ones were served from
    // the cache (how many depends on when the key's creation event arrived, which drops the
    // entry once).
    assert!(moved("kms_hsm_call_seconds_count", &[]) >= 1.0);
    let misses = moved("kms_key_cache_lookups_total", &[("result", "miss")]);
    let hits = moved("kms_key_cache_lookups_total", &[("result", "hit")]);
    assert!(
        misses >= 2.0 && hits >= 1.0 && hits + misses >= 6.0,
        "{hits} hits, {misses} misses"
    );
    assert!(moved("kms_audit_write_seconds_count", &[]) >= 1.0);
    assert_eq!(sum(&data, "kms_hsm_sessions_max", &[]), 8.0);
    assert!(sum(&data, "kms_key_cache_contact_age_seconds", &[]) < 60.0);
    let present = names(&data);
    for name in [
        "kms_hsm_session_waits_total",
        "kms_audit_queue_depth",
        "kms_key_cache_entries",
    ] {
        assert!(
            present.contains_key(name),
            "{name} missing from {present:?}"
        );
    }

    // The audit lines are fsynced off the call path, within sync_interval_ms.
    eventually(Duration::from_secs(10), "the audit log's fsync", || async {
        let data = scrape(&data_metrics).await;
        let synced = sum(&data, "kms_audit_fsync_seconds_count", &[])
            - sum(&data_before, "kms_audit_fsync_seconds_count", &[]);
        (synced >= 1.0).then_some(())
    })
    .await
    .unwrap();

    let control = scrape(&control_metrics).await;
    let moved = |name: &str, labels: &[(&str, &str)]| {
        sum(&control, name, labels) - sum(&control_before, name, labels)
    };
    assert_eq!(
        moved("kms_requests_total", &[("method", CREATE), ("code", "OK")]),
        1.0
    );
    // The data plane's GetKey and its usage reports reached the control plane too.
    assert!(
        moved(
            "kms_requests_total",
            &[("method", "kms.internal.v1.KeyDirectory/GetKey")]
        ) >= 1.0
    );
    assert!(moved("kms_store_flush_seconds_count", &[]) >= 1.0);
    assert!(names(&control).contains_key("kms_store_transaction_retries_total"));
    assert!(sum(&control, "kms_store_size_bytes", &[]) > 0.0);
    // Keys are counted when a scrape asks; a later scrape shows the count. The data plane's
    // WatchKeys stream is open.
    eventually(
        Duration::from_secs(20),
        "the key count and the watch stream",
        || async {
            let control = scrape(&control_metrics).await;
            let enabled = sum(
                &control,
                "kms_keys",
                &[("state", "Enabled"), ("spec", "Aliyun_AES_256")],
            );
            let streams = sum(&control, "kms_watch_streams", &[]);
            (enabled >= 1.0 && streams == 1.0).then_some(())
        },
    )
    .await
    .unwrap();
}
