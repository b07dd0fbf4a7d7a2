//! The data plane's key cache when the control plane goes away: cached keys keep serving for
//! the configured staleness bound, then calls fail closed with UNAVAILABLE, and service comes
//! back with the control plane.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use kms_e2e::{ALICE, Stack};
use kms_proto::kms::v1::*;
use tonic::Code;

async fn encrypt(stack: &Stack) -> Result<EncryptResponse, tonic::Status> {
    stack
        .crypto(Some(ALICE))
        .unwrap()
        .encrypt(EncryptRequest {
            key_id: "alias/cached".into(),
            plaintext: b"still here".to_vec(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_keys_serve_within_the_staleness_bound_then_fail_closed() {
    let mut stack = Stack::start().await.unwrap();
    stack
        .keys(Some(ALICE))
        .unwrap()
        .create_key(CreateKeyRequest {
            alias: "alias/cached".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let sealed = encrypt(&stack).await.unwrap();

    stack.stop_control().await.unwrap();
    let stopped = Instant::now();
    // The harness sets max_staleness_ms = 3000: right after the stop the cached key serves.
    let served = encrypt(&stack).await.unwrap();
    assert_eq!(served.key_id, sealed.key_id);
    assert!(
        stopped.elapsed() < Duration::from_secs(3),
        "the check ran too late to mean anything"
    );

    // Then, within a bounded wait, the data plane fails closed.
    let mut poll = tokio::time::interval(Duration::from_millis(20));
    let err = loop {
        poll.tick().await;
        match encrypt(&stack).await {
            Ok(_) if stopped.elapsed() < Duration::from_secs(15) => {}
            Ok(_) => panic!("still serving from cache 15 s after the control plane stopped"),
            Err(e) => break e,
        }
    };
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        stopped.elapsed() >= Duration::from_millis(2500),
        "failed closed after {:?}, before the staleness bound",
        stopped.elapsed()
    );

    stack.start_control().await.unwrap();
    let back = encrypt(&stack).await.unwrap();
    let opened = stack
        .crypto(Some(ALICE))
        .unwrap()
        .decrypt(DecryptRequest {
            ciphertext_blob: back.ciphertext_blob,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(opened.plaintext, b"still here");
}

/// A key disabled, scheduled for deletion or given a new policy on the control plane is
/// refused by the data plane within a second of the control plane's reply, although the data
/// plane had it cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_reach_the_data_plane_within_a_second() {
    use kms_e2e::eventually;
    let stack = Stack::start().await.unwrap();
    let key_id = stack
        .keys(Some(ALICE))
        .unwrap()
        .create_key(CreateKeyRequest {
            alias: "alias/cached".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap()
        .key_id;
    encrypt(&stack).await.unwrap();

    let refused_within_a_second = |want: &'static str| {
        let stack = &stack;
        async move {
            eventually(Duration::from_secs(1), want, || async {
                match encrypt(stack).await {
                    Err(e) if kms_e2e::reason(&e) == want => Some(()),
                    _ => None,
                }
            })
            .await
        }
    };

    let mut keys = stack.keys(Some(ALICE)).unwrap();
    keys.disable_key(DisableKeyRequest {
        key_id: key_id.clone(),
    })
    .await
    .unwrap();
    refused_within_a_second("Rejected.Disabled").await.unwrap();

    keys.enable_key(EnableKeyRequest {
        key_id: key_id.clone(),
    })
    .await
    .unwrap();
    eventually(Duration::from_secs(1), "enabled again", || async {
        encrypt(&stack).await.ok()
    })
    .await
    .unwrap();

    keys.schedule_key_deletion(ScheduleKeyDeletionRequest {
        key_id: key_id.clone(),
        pending_window_in_days: 7,
    })
    .await
    .unwrap();
    refused_within_a_second("Rejected.PendingDeletion")
        .await
        .unwrap();
}
