//! `kms-bench` runs against the real stack and reports both phases and their ratio.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use kms_e2e::{ALICE, Stack, bin_path};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_reports_operation_against_baseline() {
    let stack = Stack::start().await.unwrap();
    for op in ["encrypt", "decrypt", "generate-data-key", "describe-key"] {
        let out = tokio::process::Command::new(bin_path("kms-bench").unwrap())
            .args(["--control", &format!("http://{}", stack.control_addr())])
            .args(["--data", &format!("http://{}", stack.data_addr())])
            .args([
                "--principal",
                ALICE,
                "--op",
                op,
                "--requests",
                "40",
                "--concurrency",
                "4",
                "--json",
            ])
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{op}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["baseline"]["ok"], 40, "{report}");
        assert_eq!(report["operation"]["ok"], 40, "{report}");
        assert_eq!(report["operation"]["errors"], 0, "{report}");
        let ratio = report["throughput_ratio"].as_f64().unwrap();
        assert!(ratio.is_finite() && ratio > 0.0, "{report}");
    }
}
