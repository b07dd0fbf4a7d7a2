//! Every answered call is audited, across crashes: clients keep a mixed load on both planes
//! (CreateKey, DescribeKey, TagResources on the control plane; Encrypt, Decrypt,
//! GenerateDataKey on the data plane), each call with a request id of its own, while each
//! plane in turn is killed with SIGKILL and started again. Afterwards both audit logs verify
//! under their keys and checkpoints, and every call a client saw answered, OK or refused
//! (its answer echoes the request id, which the edge sets only once the call's line is on
//! disk), has its line in the log of the plane that answered it.
//!
//! `KMS_AUDIT_KILLS` sets the number of kills (default 10, alternating planes).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kms_e2e::{ACCOUNT, ALICE, OPERATOR, Options, Stack, consistency};
use kms_proto::kms::v1::crypto_service_client::CryptoServiceClient;
use kms_proto::kms::v1::key_management_service_client::KeyManagementServiceClient;
use kms_proto::kms::v1::*;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tonic::transport::Channel;

/// Kills when `KMS_AUDIT_KILLS` is not set.
const DEFAULT_KILLS: usize = 10;
/// Answered calls between kills.
const ANSWERS_PER_ROUND: u64 = 60;
/// Client tasks per plane.
const CLIENTS_PER_PLANE: usize = 2;
/// The longest one call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a round may wait for its answers.
const STALL: Duration = Duration::from_secs(60);

/// Which plane a call went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Plane {
    Control,
    Data,
}

impl Plane {
    fn name(self) -> &'static str {
        match self {
            Plane::Control => "control",
            Plane::Data => "data",
        }
    }
}

/// What the clients saw.
#[derive(Debug, Default)]
struct Seen {
    /// Request ids of calls that got an answer from the plane, by plane.
    answered: BTreeMap<Plane, BTreeSet<String>>,
    /// Calls that got no answer (the plane was down or died under them).
    unanswered: usize,
}

/// A request carrying the caller and a request id of its own.
fn request<T>(message: T, id: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.metadata_mut()
        .insert("x-kms-principal", ALICE.parse().unwrap());
    req.metadata_mut()
        .insert("x-request-id", id.parse().unwrap());
    req.set_timeout(CALL_TIMEOUT);
    req
}

/// Whether an answer came from the plane: the edge echoes the request id on every answer it
/// makes, OK or not, once the call's audit line is written; a transport failure has none.
fn echoed(metadata: &tonic::metadata::MetadataMap, id: &str) -> bool {
    metadata
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == id)
}

fn record<T>(
    seen: &Mutex<Seen>,
    plane: Plane,
    id: String,
    answer: Result<tonic::Response<T>, tonic::Status>,
) -> bool {
    let answered = match &answer {
        Ok(r) => echoed(r.metadata(), &id),
        Err(s) => echoed(s.metadata(), &id),
    };
    let mut seen = seen.lock().unwrap();
    if answered {
        seen.answered.entry(plane).or_default().insert(id);
    } else {
        seen.unanswered += 1;
    }
    answered
}

/// Keeps calling the control plane until `stop`.
async fn control_client(
    channel: Channel,
    instance: String,
    client: usize,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    answers: watch::Sender<u64>,
) {
    let mut keys = KeyManagementServiceClient::new(channel);
    let mut key = None::<String>;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let id = format!("control-{client}-{n}");
        let answered = match (n % 3, &key) {
            (1, _) | (_, None) => {
                let answer = keys
                    .create_key(request(
                        CreateKeyRequest {
                            kms_instance_id: instance.clone(),
                            ..Default::default()
                        },
                        &id,
                    ))
                    .await;
                if let Ok(r) = &answer {
                    key = r.get_ref().key_metadata.as_ref().map(|m| m.key_id.clone());
                }
                record(&seen, Plane::Control, id, answer)
            }
            (2, Some(k)) => {
                let answer = keys
                    .describe_key(request(DescribeKeyRequest { key_id: k.clone() }, &id))
                    .await;
                record(&seen, Plane::Control, id, answer)
            }
            (_, Some(k)) => {
                let answer = keys
                    .tag_resources(request(
                        TagResourcesRequest {
                            key_ids: vec![k.clone()],
                            tags: vec![Tag {
                                key: "round".into(),
                                value: n.to_string(),
                            }],
                        },
                        &id,
                    ))
                    .await;
                record(&seen, Plane::Control, id, answer)
            }
        };
        if answered {
            answers.send_modify(|a| *a += 1);
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Keeps calling the data plane until `stop`.
async fn data_client(
    channel: Channel,
    key: String,
    client: usize,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    answers: watch::Sender<u64>,
) {
    let mut crypto = CryptoServiceClient::new(channel);
    let mut blob = None::<Vec<u8>>;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let id = format!("data-{client}-{n}");
        let answered = match (n % 3, &blob) {
            (1, _) | (_, None) => {
                let answer = crypto
                    .encrypt(request(
                        EncryptRequest {
                            key_id: key.clone(),
                            plaintext: format!("call {n}").into_bytes(),
                            ..Default::default()
                        },
                        &id,
                    ))
                    .await;
                if let Ok(r) = &answer {
                    blob = Some(r.get_ref().ciphertext_blob.clone());
                }
                record(&seen, Plane::Data, id, answer)
            }
            (2, Some(b)) => {
                let answer = crypto
                    .decrypt(request(
                        DecryptRequest {
                            ciphertext_blob: b.clone(),
                            ..Default::default()
                        },
                        &id,
                    ))
                    .await;
                record(&seen, Plane::Data, id, answer)
            }
            _ => {
                let answer = crypto
                    .generate_data_key(request(
                        GenerateDataKeyRequest {
                            key_id: key.clone(),
                            ..Default::default()
                        },
                        &id,
                    ))
                    .await;
                record(&seen, Plane::Data, id, answer)
            }
        };
        if answered {
            answers.send_modify(|a| *a += 1);
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The request ids of every line of an audit log.
fn logged(stack: &Stack, plane: Plane) -> BTreeSet<String> {
    std::fs::read_to_string(stack.audit_log(plane.name()))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let line: serde_json::Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{} audit line {l:?}: {e}", plane.name()));
            line["request_id"].as_str().unwrap_or_default().to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answered_call_is_audited_across_sigkill_with_interval_sync() {
    audited_across_sigkill("interval", DEFAULT_KILLS).await;
}

/// The `always` mode writes through another path (a writer thread, a sync per batch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answered_call_is_audited_across_sigkill_with_always_sync() {
    audited_across_sigkill("always", DEFAULT_KILLS / 2).await;
}

/// Kills the planes, audited with `[audit] sync = sync`, `kills` times (or
/// `KMS_AUDIT_KILLS`), and checks every answered call's line.
async fn audited_across_sigkill(sync: &str, kills: usize) {
    let kills = std::env::var("KMS_AUDIT_KILLS")
        .ok()
        .map_or(kills, |v| v.trim().parse().unwrap());
    let began = Instant::now();
    let mut stack = Stack::start_with(Options {
        audit: format!("sync = \"{sync}\""),
        ..Options::default()
    })
    .await
    .unwrap();
    let instance = stack
        .instances(Some(OPERATOR))
        .unwrap()
        .create_kms_instance(CreateKmsInstanceRequest {
            instance_type: InstanceType::Software as i32,
            owner_account_id: ACCOUNT.into(),
            key_quota: 10_000,
            access_management_quota: Some(0),
        })
        .await
        .unwrap()
        .into_inner()
        .kms_instance
        .unwrap()
        .kms_instance_id;
    let key = stack
        .keys(Some(ALICE))
        .unwrap()
        .create_key(CreateKeyRequest {
            kms_instance_id: instance.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap()
        .key_id;

    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let answers = watch::Sender::new(0u64);
    let mut clients = JoinSet::new();
    for client in 0..CLIENTS_PER_PLANE {
        // Channels of their own, that reconnect after a plane comes back.
        let control = stack.channel(stack.control_addr(), None).unwrap();
        let data = stack.channel(stack.data_addr(), None).unwrap();
        clients.spawn(control_client(
            control,
            instance.clone(),
            client,
            Arc::clone(&seen),
            Arc::clone(&stop),
            answers.clone(),
        ));
        clients.spawn(data_client(
            data,
            key.clone(),
            client,
            Arc::clone(&seen),
            Arc::clone(&stop),
            answers.clone(),
        ));
    }

    let mut progress = answers.subscribe();
    for round in 0..kills {
        let target = *progress.borrow() + ANSWERS_PER_ROUND;
        tokio::time::timeout(STALL, progress.wait_for(|n| *n >= target))
            .await
            .unwrap_or_else(|_| panic!("round {round}: no progress for {STALL:?}"))
            .unwrap();
        let (plane, restart) = if round % 2 == 0 {
            stack.kill_control().await.unwrap();
            (Plane::Control, stack.restart_control().await.unwrap())
        } else {
            stack.kill_data().await.unwrap();
            (Plane::Data, stack.restart_data().await.unwrap())
        };
        eprintln!(
            "audit crash ({sync}): kill {}/{kills} of the {} plane after {} answers; back in {} ms",
            round + 1,
            plane.name(),
            *progress.borrow(),
            restart.as_millis()
        );
    }
    // A last stretch of answers after the last restart.
    let target = *progress.borrow() + ANSWERS_PER_ROUND;
    tokio::time::timeout(STALL, progress.wait_for(|n| *n >= target))
        .await
        .expect("no progress after the last restart")
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    while let Some(done) = clients.join_next().await {
        done.unwrap();
    }

    // A graceful stop records each plane's last checkpoint; both chains then verify.
    stack.restart().await.unwrap();
    for plane in ["control", "data"] {
        consistency::verify_audit_log(&stack, plane).await.unwrap();
    }
    consistency::no_panics(&stack).unwrap();
    stack.stop().await.unwrap();

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let mut checked = 0;
    for (plane, ids) in &seen.answered {
        let lines = logged(&stack, *plane);
        let missing: Vec<&String> = ids.iter().filter(|id| !lines.contains(*id)).collect();
        assert!(
            missing.is_empty(),
            "{} of {} answered {} calls have no audit line: {:?}",
            missing.len(),
            ids.len(),
            plane.name(),
            missing.iter().take(20).collect::<Vec<_>>()
        );
        checked += ids.len();
    }
    assert!(
        seen.answered.len() == 2,
        "both planes answered calls: {:?}",
        seen.answered.keys().collect::<Vec<_>>()
    );
    eprintln!(
        "audit crash: {kills} kills; {checked} answered calls each found in its plane's audit \
         log ({} control, {} data), {} calls unanswered; both chains verify; {} ms",
        seen.answered.get(&Plane::Control).map_or(0, BTreeSet::len),
        seen.answered.get(&Plane::Data).map_or(0, BTreeSet::len),
        seen.unanswered,
        began.elapsed().as_millis()
    );
}
