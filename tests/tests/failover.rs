//! Failover, by killing things: a 3-member etcd cluster, two control-plane replicas and two
//! data-plane replicas, all real processes on loopback. Clients stream writes and Encrypts,
//! retrying on `UNAVAILABLE` (and on a call cut off mid-way) against the other replica, as
//! gRPC clients do, while the test SIGKILLs the etcd leader, then a control-plane
//! replica, then a data-plane replica. Afterwards every acknowledged write is there, an
//! acknowledged CreateKey made once is there once, every ciphertext decrypts, and no key was
//! rotated twice. The time from each kill to the first success is printed for the notes.
//!
//! A second test kills the replica running the schedulers in the middle of a rotation run:
//! the other replica takes the claim when its lease lapses and the rotation happens exactly
//! once per key.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kms_e2e::cluster::{Cluster, CryptoClient, KeysClient, Plane, crypto_client, keys_client};
use kms_e2e::{ALICE, OPERATOR};
use kms_proto::kms::v1::{
    CreateKeyRequest, CreateKmsInstanceRequest, DecryptRequest, DescribeKeyRequest,
    DisableKeyRequest, EncryptRequest, InstanceType, KeyState, ListKeyVersionsRequest,
    ListKeysRequest, ListResourceTagsRequest, Tag, TagResourcesRequest,
};
use tokio::sync::Mutex;
use tonic::Code;

/// How long one logical call may keep retrying across replicas before it counts as failed.
const CALL_BUDGET: Duration = Duration::from_secs(40);
/// The deadline of each attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// Acknowledged calls to wait for after each kill before the next.
const CALLS_BETWEEN_KILLS: usize = 30;
/// A bound on the whole stream, so the test stops by itself.
const STREAM_BUDGET: Duration = Duration::from_secs(240);

const DAY_MS: i64 = 86_400_000;

fn days(n: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: n * 86_400,
        nanos: 0,
    })
}

/// Whether a call answered `code` is tried again on the next replica: `UNAVAILABLE`, and the
/// codes of a call cut off mid-way (its outcome unknown). A CreateKey tried more than once may
/// therefore exist twice; one made in one attempt must exist once.
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
    )
}

/// Calls the replicas of one plane in turn, as a client with several addresses does: stays
/// on one until it answers `UNAVAILABLE`, then moves to the next.
struct Failover {
    addrs: Vec<String>,
    plane: Plane,
    current: AtomicUsize,
}

impl Failover {
    fn new(cluster: &Cluster, plane: Plane) -> Self {
        Self {
            addrs: cluster.addrs(plane),
            plane,
            current: AtomicUsize::new(0),
        }
    }
}

/// The outcome of one logical call.
enum Outcome<T> {
    /// Answered OK, after this many attempts.
    Ok(T, usize),
    /// Refused with a status that is not a failover.
    Refused(tonic::Status),
    /// No answer within [`CALL_BUDGET`]: it may or may not have happened.
    Unknown,
}

macro_rules! call {
    ($failover:expr, |$client:ident| $body:expr) => {{
        let f: &Failover = &$failover;
        let started = Instant::now();
        let mut attempts = 0usize;
        loop {
            attempts += 1;
            let replicas = f.addrs.len();
            let index = f.current.load(Ordering::Acquire) % replicas;
            let mut $client = match f.plane {
                Plane::Control => Client::Keys(keys_client(&f.addrs[index], ALICE).unwrap()),
                Plane::Data => Client::Crypto(crypto_client(&f.addrs[index], ALICE).unwrap()),
            };
            match tokio::time::timeout(ATTEMPT_TIMEOUT, $body).await {
                Ok(Ok(resp)) => break Outcome::Ok(resp.into_inner(), attempts),
                Ok(Err(status)) if !retryable(status.code()) => {
                    break Outcome::Refused(status);
                }
                Ok(Err(_)) | Err(_) => {
                    let _ = f.current.compare_exchange(
                        index,
                        (index + 1) % replicas,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    );
                    if started.elapsed() > CALL_BUDGET {
                        break Outcome::Unknown;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }};
}

enum Client {
    Keys(KeysClient),
    Crypto(CryptoClient),
}

impl Client {
    fn keys(&mut self) -> &mut KeysClient {
        match self {
            Client::Keys(k) => k,
            Client::Crypto(_) => panic!("a control-plane call on a data-plane client"),
        }
    }

    fn crypto(&mut self) -> &mut CryptoClient {
        match self {
            Client::Crypto(c) => c,
            Client::Keys(_) => panic!("a data-plane call on a control-plane client"),
        }
    }
}

/// What the clients saw acknowledged, and when.
#[derive(Default)]
struct Ledger {
    /// Description → (key id, attempts) of each acknowledged CreateKey.
    created: BTreeMap<String, (String, usize)>,
    /// Descriptions of CreateKeys with no answer.
    unknown_creates: BTreeSet<String>,
    /// (key id, tag value) of each acknowledged TagResources.
    tagged: Vec<(String, String)>,
    /// Keys whose DisableKey was acknowledged.
    disabled: BTreeSet<String>,
    /// (plaintext, ciphertext) of each acknowledged Encrypt.
    sealed: Vec<(Vec<u8>, Vec<u8>)>,
    /// When each write (control plane) and each Encrypt (data plane) was acknowledged.
    write_acks: Vec<Instant>,
    encrypt_acks: Vec<Instant>,
    /// Calls refused for a reason that is not a failover: each fails the test.
    refusals: Vec<String>,
}

impl Ledger {
    fn acks(&self) -> usize {
        self.write_acks.len() + self.encrypt_acks.len()
    }
}

async fn client_loop(
    id: usize,
    control: Arc<Failover>,
    data: Arc<Failover>,
    instance: String,
    enc_key: String,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
) {
    let mut n = 0usize;
    while !stop.load(Ordering::Acquire) {
        n += 1;
        let description = format!("failover c{id} n{n}");
        let outcome = call!(control, |c| c.keys().create_key(CreateKeyRequest {
            kms_instance_id: instance.clone(),
            description: description.clone(),
            enable_automatic_rotation: Some(false),
            ..Default::default()
        }));
        let key_id = match outcome {
            Outcome::Ok(resp, attempts) => {
                let key_id = resp.key_metadata.unwrap().key_id;
                let mut l = ledger.lock().await;
                l.created
                    .insert(description.clone(), (key_id.clone(), attempts));
                l.write_acks.push(Instant::now());
                key_id
            }
            Outcome::Refused(s) => {
                ledger
                    .lock()
                    .await
                    .refusals
                    .push(format!("CreateKey: {s:?}"));
                continue;
            }
            Outcome::Unknown => {
                ledger.lock().await.unknown_creates.insert(description);
                continue;
            }
        };
        let value = format!("v{n}");
        match call!(control, |c| c.keys().tag_resources(TagResourcesRequest {
            key_ids: vec![key_id.clone()],
            tags: vec![Tag {
                key: "n".into(),
                value: value.clone(),
            }],
        })) {
            Outcome::Ok(_, _) => {
                let mut l = ledger.lock().await;
                l.tagged.push((key_id.clone(), value));
                l.write_acks.push(Instant::now());
            }
            Outcome::Refused(s) => ledger
                .lock()
                .await
                .refusals
                .push(format!("TagResources: {s:?}")),
            Outcome::Unknown => {}
        }
        if n.is_multiple_of(3) {
            match call!(control, |c| c.keys().disable_key(DisableKeyRequest {
                key_id: key_id.clone(),
            })) {
                Outcome::Ok(_, _) => {
                    let mut l = ledger.lock().await;
                    l.disabled.insert(key_id.clone());
                    l.write_acks.push(Instant::now());
                }
                Outcome::Refused(s) => ledger
                    .lock()
                    .await
                    .refusals
                    .push(format!("DisableKey: {s:?}")),
                Outcome::Unknown => {}
            }
        }
        let plaintext = format!("secret {id}/{n}").into_bytes();
        match call!(data, |c| c.crypto().encrypt(EncryptRequest {
            key_id: enc_key.clone(),
            plaintext: plaintext.clone(),
            ..Default::default()
        })) {
            Outcome::Ok(resp, _) => {
                let mut l = ledger.lock().await;
                l.sealed.push((plaintext, resp.ciphertext_blob));
                l.encrypt_acks.push(Instant::now());
            }
            Outcome::Refused(s) => ledger.lock().await.refusals.push(format!("Encrypt: {s:?}")),
            Outcome::Unknown => {}
        }
    }
}

/// Waits until the clients have `more` acknowledgements beyond `from`, within the stream's
/// budget.
async fn wait_for_acks(
    ledger: &Mutex<Ledger>,
    from: usize,
    more: usize,
    deadline: Instant,
) -> Result<usize> {
    let mut poll = tokio::time::interval(Duration::from_millis(50));
    loop {
        poll.tick().await;
        let acks = ledger.lock().await.acks();
        if acks >= from + more {
            return Ok(acks);
        }
        if Instant::now() > deadline {
            bail!(
                "only {} acknowledgements after {from}; wanted {more} more",
                acks - from
            );
        }
    }
}

fn first_after(times: &[Instant], at: Instant) -> Option<Duration> {
    times.iter().filter(|t| **t > at).map(|t| *t - at).min()
}

async fn create_instance(cluster: &Cluster) -> Result<String> {
    use kms_proto::kms::v1::kms_instance_service_client::KmsInstanceServiceClient;
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", cluster.controls[0].addr))?
            .connect_lazy();
    let mut ops =
        KmsInstanceServiceClient::with_interceptor(channel, kms_e2e::As(Some(OPERATOR.into())));
    Ok(ops
        .create_kms_instance(CreateKmsInstanceRequest {
            instance_type: InstanceType::Software as i32,
            owner_account_id: ALICE
                .trim_start_matches("acs:ram::")
                .split(':')
                .next()
                .unwrap()
                .into(),
            key_quota: 2000,
            access_management_quota: Some(5),
        })
        .await?
        .into_inner()
        .kms_instance
        .context("no instance")?
        .kms_instance_id)
}

/// Every version of `key_id`, through control-plane replica `replica`.
async fn versions(cluster: &Cluster, replica: usize, key_id: &str) -> Result<usize> {
    Ok(cluster
        .keys(replica, ALICE)?
        .list_key_versions(ListKeyVersionsRequest {
            key_id: key_id.into(),
            page_size: 100,
            page_token: String::new(),
        })
        .await?
        .into_inner()
        .key_versions
        .len())
}

/// `n` keys of `instance` with automatic rotation every 7 days.
async fn rotating_keys(cluster: &Cluster, instance: &str, n: usize) -> Result<Vec<String>> {
    let mut keys = cluster.keys(0, ALICE)?;
    let mut out = Vec::new();
    for i in 0..n {
        out.push(
            keys.create_key(CreateKeyRequest {
                kms_instance_id: instance.into(),
                description: format!("rotates {i}"),
                enable_automatic_rotation: Some(true),
                rotation_interval: days(7),
                ..Default::default()
            })
            .await?
            .into_inner()
            .key_metadata
            .context("no metadata")?
            .key_id,
        );
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_work_survives_the_loss_of_each_kind_of_process() -> Result<()> {
    let mut cluster = Cluster::start(3, 2, 2).await?;
    let instance = create_instance(&cluster).await?;
    let rotating = rotating_keys(&cluster, &instance, 5).await?;
    let enc_key = cluster
        .keys(0, ALICE)?
        .create_key(CreateKeyRequest {
            kms_instance_id: instance.clone(),
            description: "encrypts".into(),
            enable_automatic_rotation: Some(false),
            ..Default::default()
        })
        .await?
        .into_inner()
        .key_metadata
        .context("no metadata")?
        .key_id;

    let control = Arc::new(Failover::new(&cluster, Plane::Control));
    let data = Arc::new(Failover::new(&cluster, Plane::Data));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..3)
        .map(|id| {
            tokio::spawn(client_loop(
                id,
                Arc::clone(&control),
                Arc::clone(&data),
                instance.clone(),
                enc_key.clone(),
                Arc::clone(&ledger),
                Arc::clone(&stop),
            ))
        })
        .collect();

    let deadline = Instant::now() + STREAM_BUDGET;
    let mut acks = wait_for_acks(&ledger, 0, CALLS_BETWEEN_KILLS, deadline).await?;
    let leader = cluster.etcd.leader_index().context("no etcd leader")?;
    let etcd_killed = Instant::now();
    cluster.etcd.kill(leader);
    acks = wait_for_acks(&ledger, acks, CALLS_BETWEEN_KILLS, deadline).await?;

    // Rotation falls due now, while the schedulers' replica may be the one killed next.
    cluster.advance_clock_ms(8 * DAY_MS)?;
    let control_killed = Instant::now();
    cluster.kill(Plane::Control, 0).await?;
    acks = wait_for_acks(&ledger, acks, CALLS_BETWEEN_KILLS, deadline).await?;

    let data_killed = Instant::now();
    cluster.kill(Plane::Data, 0).await?;
    wait_for_acks(&ledger, acks, CALLS_BETWEEN_KILLS, deadline).await?;
    stop.store(true, Ordering::Release);
    for c in clients {
        c.await?;
    }

    let l = ledger.lock().await;
    assert!(l.refusals.is_empty(), "calls refused: {:#?}", l.refusals);
    for (what, at, acks) in [
        ("etcd leader", etcd_killed, &l.write_acks),
        ("control-plane replica", control_killed, &l.write_acks),
        ("data-plane replica", data_killed, &l.encrypt_acks),
    ] {
        eprintln!(
            "failover: {what} killed; first acknowledged call {} ms later",
            first_after(acks, at).map_or(-1, |d| d.as_millis() as i64)
        );
    }
    eprintln!(
        "failover: {} creates, {} unknown, {} tags, {} disables, {} encrypts acknowledged",
        l.created.len(),
        l.unknown_creates.len(),
        l.tagged.len(),
        l.disabled.len(),
        l.sealed.len()
    );

    // Everything is read back through the replicas that survived.
    let mut keys = cluster.keys(1, ALICE)?;
    let mut listed: Vec<String> = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = keys
            .list_keys(ListKeysRequest {
                kms_instance_id: instance.clone(),
                page_size: 100,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        listed.extend(page.keys.into_iter().map(|k| k.key_id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let mut by_description: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for key_id in &listed {
        let meta = keys
            .describe_key(DescribeKeyRequest {
                key_id: key_id.clone(),
            })
            .await?
            .into_inner()
            .key_metadata
            .context("no metadata")?;
        by_description
            .entry(meta.description)
            .or_default()
            .push(meta.key_id);
    }
    for (description, (key_id, attempts)) in &l.created {
        let found = by_description.get(description).cloned().unwrap_or_default();
        assert!(
            found.contains(key_id),
            "acknowledged {description} ({key_id}) is missing"
        );
        if *attempts == 1 {
            assert_eq!(
                found.len(),
                1,
                "{description}, made in one attempt, exists {} times",
                found.len()
            );
        }
    }
    for (key_id, value) in &l.tagged {
        let tags = keys
            .list_resource_tags(ListResourceTagsRequest {
                key_id: key_id.clone(),
            })
            .await?
            .into_inner()
            .tags;
        assert!(
            tags.iter().any(|t| t.key == "n" && &t.value == value),
            "tag n={value} of {key_id} is missing: {tags:?}"
        );
    }
    for key_id in &l.disabled {
        let meta = keys
            .describe_key(DescribeKeyRequest {
                key_id: key_id.clone(),
            })
            .await?
            .into_inner()
            .key_metadata
            .context("no metadata")?;
        assert_eq!(
            meta.key_state,
            KeyState::Disabled as i32,
            "{key_id} is not disabled"
        );
    }
    let mut crypto = cluster.crypto(1, ALICE)?;
    for (plaintext, blob) in &l.sealed {
        let opened = crypto
            .decrypt(DecryptRequest {
                ciphertext_blob: blob.clone(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .plaintext;
        assert_eq!(&opened, plaintext);
    }
    // Rotation was due once during the run: one new version per key, never two. It may
    // still be under way on the replica that took the claim over.
    let poll_until = Instant::now() + Duration::from_secs(30);
    for key_id in &rotating {
        loop {
            let n = versions(&cluster, 1, key_id).await?;
            assert!(n <= 2, "{key_id} was rotated {} times", n - 1);
            if n == 2 {
                break;
            }
            if Instant::now() > poll_until {
                bail!("{key_id} was not rotated within 30 s of the failover");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_happens_once_when_the_scheduler_replica_dies_mid_run() -> Result<()> {
    let mut cluster = Cluster::start(1, 2, 1).await?;
    let instance = create_instance(&cluster).await?;
    let rotating = rotating_keys(&cluster, &instance, 40).await?;

    let mut poll = tokio::time::interval(Duration::from_millis(20));
    let leader = loop {
        poll.tick().await;
        if let Some(i) = cluster.scheduler_leader()? {
            break i;
        }
    };
    let leader_name = cluster.controls[leader].name.clone();
    cluster.advance_clock_ms(8 * DAY_MS)?;
    // Kill the leader as soon as it has rotated its first key.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cluster.log(&leader_name).contains("key rotated") {
        if Instant::now() > deadline {
            bail!(
                "the scheduler did not start rotating; log:\n{}",
                cluster.log(&leader_name)
            );
        }
        poll.tick().await;
    }
    let killed = Instant::now();
    cluster.kill(Plane::Control, leader).await?;
    let survivor = 1 - leader;

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut taken_over = None;
    let mut pending: Vec<&String> = rotating.iter().collect();
    while !pending.is_empty() {
        if taken_over.is_none() && cluster.scheduler_leader()? == Some(survivor) {
            taken_over = Some(killed.elapsed());
        }
        let mut still = Vec::new();
        for key_id in pending {
            let n = versions(&cluster, survivor, key_id).await?;
            assert!(n <= 2, "{key_id} was rotated {} times", n - 1);
            if n < 2 {
                still.push(key_id);
            }
        }
        pending = still;
        if Instant::now() > deadline {
            bail!("{} keys not rotated 60 s after the kill", pending.len());
        }
        poll.tick().await;
    }
    eprintln!(
        "scheduler failover: claim taken over {} ms after the kill; all {} keys rotated once {} ms after it",
        taken_over.map_or(-1, |d| d.as_millis() as i64),
        rotating.len(),
        killed.elapsed().as_millis()
    );
    Ok(())
}
