//! Crash durability of the control plane on sled. Client tasks stream CreateKey, TagResources
//! and ScheduleKeyDeletion while the control plane is killed with SIGKILL after a varying number
//! of acknowledged writes and started again on the same store and port. After each restart,
//! with the clients held: every acknowledged write is there; a write whose answer was lost is
//! there whole or not at all; and every key is whole: its record, the indexes ListKeys,
//! ListAliases and the tag filter read, its instance's key count and its key events agree.
//! The clients then retry the calls that got no answer and go on. After the last round the
//! store itself is read: every index entry is the one its record implies; and the audit log,
//! cut by every kill, still verifies.
//!
//! `KMS_KILL_ROUNDS` sets the number of kills (default 20), `KMS_KILL_SEED` the random choices
//! (the seed is printed); `scripts/kill-drill.sh` runs many kills against release binaries.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kms_control::schema;
use kms_e2e::{ACCOUNT, ALICE, DATA_PRINCIPAL, OPERATOR, Stack, consistency, reason};
use kms_proto::kms::internal::v1::{GetKeyRequest, KeyEventKind, WatchKeysRequest};
use kms_proto::kms::v1::*;
use tokio::sync::{RwLock, RwLockReadGuard, Semaphore, watch};
use tokio::task::JoinSet;
use tonic::Status;

type KeysClient = key_management_service_client::KeyManagementServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, kms_e2e::As>,
>;

/// Client tasks streaming writes.
const CLIENTS: u64 = 4;
/// Kills when `KMS_KILL_ROUNDS` is not set.
const DEFAULT_ROUNDS: usize = 20;
/// A round kills the control plane after 1 to this many more acknowledged writes.
const MAX_WRITES_BEFORE_KILL: u64 = 40;
/// Tags TagResources adds to one key: with the one given at creation, the 20 a key may carry.
const MAX_ADDED_TAGS: usize = 19;
/// The shortest pending window ScheduleKeyDeletion accepts.
const PENDING_WINDOW_DAYS: i32 = 7;
/// Attempts at one call before the test gives up on an answer.
const MAX_ATTEMPTS: u32 = 50;
/// The longest a round may take to reach its kill, the clients to come to rest, or an event
/// to arrive.
const STALL: Duration = Duration::from_secs(60);
/// Per-key checks in flight at once.
const CHECKS_IN_FLIGHT: usize = 16;
/// The tag every key gets at creation: `client` = `c<client>`.
const CLIENT_TAG: &str = "client";

fn client_tag(client: u64) -> Tag {
    Tag {
        key: CLIENT_TAG.into(),
        value: format!("c{client}"),
    }
}

/// The tag key of the `n`th tag TagResources adds to a key (1-based).
fn step_tag_key(n: usize) -> String {
    format!("step{n}")
}

/// xorshift64*: the test's random choices, reproducible from the printed seed (the timing of
/// the kills is not).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What became of a write, as far as its client knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Not sent yet: it must have no effect.
    NotSent,
    /// Sent, and no answer yet: the control plane died with it in flight, or before it
    /// arrived. It may have taken effect, but whole if it did.
    Unanswered,
    /// Answered OK: it took effect and must stay so.
    Acked,
    /// A retry was refused because an unanswered attempt had taken effect (the alias exists,
    /// the key is pending deletion already): it must stay so too.
    Confirmed,
}

impl Outcome {
    fn done(self) -> bool {
        matches!(self, Self::Acked | Self::Confirmed)
    }
}

#[derive(Debug, Clone)]
struct CreateOp {
    client: u64,
    description: String,
    alias: String,
    outcome: Outcome,
    /// Known once answered.
    key_id: Option<String>,
    /// The key as the OK answer described it.
    answered: Option<KeyMetadata>,
}

#[derive(Debug, Clone)]
struct TagOp {
    key_id: String,
    tag: Tag,
    outcome: Outcome,
}

#[derive(Debug, Clone)]
struct ScheduleOp {
    key_id: String,
    outcome: Outcome,
    /// The deletion date the OK answer gave.
    answered: Option<prost_types::Timestamp>,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Create(usize),
    Tag(usize),
    Schedule(usize),
}

/// Every write the clients made with what they know of its outcome, and counts.
#[derive(Debug, Clone, Default)]
struct Ledger {
    creates: Vec<CreateOp>,
    tags: Vec<TagOp>,
    schedules: Vec<ScheduleOp>,
    /// Attempts the control plane did not answer.
    unanswered_calls: u64,
}

impl Ledger {
    fn outcome(&mut self, op: Op) -> &mut Outcome {
        match op {
            Op::Create(i) => &mut self.creates[i].outcome,
            Op::Tag(i) => &mut self.tags[i].outcome,
            Op::Schedule(i) => &mut self.schedules[i].outcome,
        }
    }

    fn outcomes(&self) -> impl Iterator<Item = Outcome> + '_ {
        let creates = self.creates.iter().map(|o| o.outcome);
        let tags = self.tags.iter().map(|o| o.outcome);
        creates
            .chain(tags)
            .chain(self.schedules.iter().map(|o| o.outcome))
    }

    fn count(&self, outcome: Outcome) -> usize {
        self.outcomes().filter(|o| *o == outcome).count()
    }

    fn done(&self) -> usize {
        self.outcomes().filter(|o| o.done()).count()
    }
}

/// What the clients and the test share.
struct Drill {
    keys: Box<dyn Fn() -> KeysClient + Send + Sync>,
    instance: String,
    /// Every attempt holds it shared; the test takes it to hold the clients while it restarts
    /// the control plane and checks what survived.
    gate: RwLock<()>,
    ledger: Mutex<Ledger>,
    /// Writes answered OK so far.
    acks: watch::Sender<u64>,
    stop: AtomicBool,
}

impl Drill {
    fn record(&self, op: Op, outcome: Outcome) {
        *self.ledger.lock().unwrap().outcome(op) = outcome;
        if outcome == Outcome::Acked {
            self.acks.send_modify(|n| *n += 1);
        }
    }

    /// Sends a call until the control plane answers it. Each attempt holds the gate (shared)
    /// and first marks `op` sent. An attempt the control plane did not answer (no reason code:
    /// UNAVAILABLE while it is down, a reset with the call in flight) is counted and made
    /// again after a short backoff, at most [`MAX_ATTEMPTS`] times. Returns the answer with the
    /// gate still held, so the caller records the outcome before the test can look, and
    /// whether an earlier attempt went unanswered.
    async fn until_answered<T, F, Fut>(
        &self,
        op: Option<Op>,
        call: F,
    ) -> (RwLockReadGuard<'_, ()>, Result<T, Status>, bool)
    where
        F: Fn(KeysClient) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut unanswered = 0;
        loop {
            let held = self.gate.read().await;
            if let Some(op) = op {
                let mut ledger = self.ledger.lock().unwrap();
                let outcome = ledger.outcome(op);
                if *outcome == Outcome::NotSent {
                    *outcome = Outcome::Unanswered;
                }
            }
            match call((self.keys)()).await {
                Ok(r) => return (held, Ok(r.into_inner()), unanswered > 0),
                Err(st) if !reason(&st).is_empty() => return (held, Err(st), unanswered > 0),
                Err(st) => {
                    drop(held);
                    unanswered += 1;
                    self.ledger.lock().unwrap().unanswered_calls += 1;
                    assert!(
                        unanswered < MAX_ATTEMPTS,
                        "no answer in {MAX_ATTEMPTS} attempts: {st:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(2 << unanswered.min(5))).await;
                }
            }
        }
    }
}

/// A key a client created, as the client knows it.
struct Owned {
    key_id: String,
    tags_added: usize,
    scheduled: bool,
}

/// One client: creates keys, tags them, schedules some for deletion, until told to stop.
async fn client(drill: Arc<Drill>, id: u64, seed: u64) {
    let mut rng = Rng::new(seed ^ (id + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut owned: Vec<Owned> = Vec::new();
    for n in 1u64.. {
        if drill.stop.load(Ordering::Relaxed) {
            return;
        }
        let taggable: Vec<usize> = (0..owned.len())
            .filter(|&i| !owned[i].scheduled && owned[i].tags_added < MAX_ADDED_TAGS)
            .collect();
        let schedulable: Vec<usize> = (0..owned.len()).filter(|&i| !owned[i].scheduled).collect();
        let roll = rng.below(100);
        if (45..80).contains(&roll) && !taggable.is_empty() {
            let pick = taggable[rng.below(taggable.len() as u64) as usize];
            tag(&drill, id, n, &mut owned[pick]).await;
        } else if roll >= 80 && !schedulable.is_empty() {
            let pick = schedulable[rng.below(schedulable.len() as u64) as usize];
            schedule(&drill, id, &mut owned[pick]).await;
        } else {
            owned.push(create(&drill, id, n).await);
        }
    }
}

async fn create(drill: &Drill, id: u64, n: u64) -> Owned {
    let alias = format!("alias/crash/c{id}/{n}");
    let description = format!("crash drill: client {id}, write {n}");
    let req = CreateKeyRequest {
        kms_instance_id: drill.instance.clone(),
        description: description.clone(),
        alias: alias.clone(),
        tags: vec![client_tag(id)],
        enable_automatic_rotation: Some(false),
        ..Default::default()
    };
    let op = {
        let mut ledger = drill.ledger.lock().unwrap();
        ledger.creates.push(CreateOp {
            client: id,
            description,
            alias: alias.clone(),
            outcome: Outcome::NotSent,
            key_id: None,
            answered: None,
        });
        ledger.creates.len() - 1
    };
    let (held, answer, retried) = drill
        .until_answered(Some(Op::Create(op)), |mut c| {
            let req = req.clone();
            async move { c.create_key(req).await }
        })
        .await;
    let key_id = match answer {
        Ok(created) => {
            let created = created.key_metadata.unwrap();
            let key_id = created.key_id.clone();
            let mut ledger = drill.ledger.lock().unwrap();
            ledger.creates[op].key_id = Some(key_id.clone());
            ledger.creates[op].answered = Some(created);
            drop(ledger);
            drill.record(Op::Create(op), Outcome::Acked);
            drop(held);
            key_id
        }
        // The alias is unique to this write: an unanswered attempt created the key.
        Err(st) if retried && reason(&st) == "Forbidden.AliasExists" => {
            drill.record(Op::Create(op), Outcome::Confirmed);
            drop(held);
            let (held, described, _) = drill
                .until_answered(None, |mut c| {
                    let key_id = alias.clone();
                    async move { c.describe_key(DescribeKeyRequest { key_id }).await }
                })
                .await;
            let key_id = described
                .unwrap_or_else(|e| panic!("client {id}: {alias} exists but: {e:?}"))
                .key_metadata
                .unwrap()
                .key_id;
            drill.ledger.lock().unwrap().creates[op].key_id = Some(key_id.clone());
            drop(held);
            key_id
        }
        Err(st) => panic!("client {id}: CreateKey {alias} refused: {st:?}"),
    };
    Owned {
        key_id,
        tags_added: 0,
        scheduled: false,
    }
}

async fn tag(drill: &Drill, id: u64, n: u64, key: &mut Owned) {
    key.tags_added += 1;
    let tag = Tag {
        key: step_tag_key(key.tags_added),
        value: format!("c{id}-w{n}"),
    };
    let op = {
        let mut ledger = drill.ledger.lock().unwrap();
        ledger.tags.push(TagOp {
            key_id: key.key_id.clone(),
            tag: tag.clone(),
            outcome: Outcome::NotSent,
        });
        ledger.tags.len() - 1
    };
    let req = TagResourcesRequest {
        key_ids: vec![key.key_id.clone()],
        tags: vec![tag],
    };
    // Adding a tag again changes nothing: a retry is answered OK either way.
    let (held, answer, _) = drill
        .until_answered(Some(Op::Tag(op)), |mut c| {
            let req = req.clone();
            async move { c.tag_resources(req).await }
        })
        .await;
    if let Err(st) = answer {
        panic!("client {id}: TagResources {req:?} refused: {st:?}");
    }
    drill.record(Op::Tag(op), Outcome::Acked);
    drop(held);
}

async fn schedule(drill: &Drill, id: u64, key: &mut Owned) {
    key.scheduled = true;
    let op = {
        let mut ledger = drill.ledger.lock().unwrap();
        ledger.schedules.push(ScheduleOp {
            key_id: key.key_id.clone(),
            outcome: Outcome::NotSent,
            answered: None,
        });
        ledger.schedules.len() - 1
    };
    let req = ScheduleKeyDeletionRequest {
        key_id: key.key_id.clone(),
        pending_window_in_days: PENDING_WINDOW_DAYS,
    };
    let (held, answer, retried) = drill
        .until_answered(Some(Op::Schedule(op)), |mut c| {
            let req = req.clone();
            async move { c.schedule_key_deletion(req).await }
        })
        .await;
    match answer {
        Ok(scheduled) => {
            let delete_date = scheduled.key_metadata.unwrap().delete_date;
            drill.ledger.lock().unwrap().schedules[op].answered = delete_date;
            drill.record(Op::Schedule(op), Outcome::Acked);
        }
        // Only this client schedules this key, once: an unanswered attempt did.
        Err(st) if retried && reason(&st) == "Rejected.PendingDeletion" => {
            drill.record(Op::Schedule(op), Outcome::Confirmed);
        }
        Err(st) => panic!(
            "client {id}: ScheduleKeyDeletion {} refused: {st:?}",
            key.key_id
        ),
    }
    drop(held);
}

/// Every key ListKeys returns for `req`, following pages of 100.
async fn list_keys(c: &mut KeysClient, mut req: ListKeysRequest) -> Vec<KeyMetadata> {
    req.page_size = 100;
    let mut out = Vec::new();
    loop {
        let page = c.list_keys(req.clone()).await.unwrap().into_inner();
        out.extend(page.keys);
        if page.next_page_token.is_empty() {
            return out;
        }
        req.page_token = page.next_page_token;
    }
}

async fn list_key_ids(c: &mut KeysClient, req: ListKeysRequest) -> BTreeSet<String> {
    list_keys(c, req)
        .await
        .into_iter()
        .map(|k| k.key_id)
        .collect()
}

/// Every alias of the account, as (name, key id).
async fn list_aliases(c: &mut KeysClient) -> BTreeSet<(String, String)> {
    let mut req = ListAliasesRequest {
        page_size: 100,
        ..Default::default()
    };
    let mut out = BTreeSet::new();
    loop {
        let page = c.list_aliases(req.clone()).await.unwrap().into_inner();
        out.extend(page.aliases.into_iter().map(|a| (a.alias_name, a.key_id)));
        if page.next_page_token.is_empty() {
            return out;
        }
        req.page_token = page.next_page_token;
    }
}

/// A listed key read through every per-key call: each must work and agree with the listing.
async fn check_key(mut c: KeysClient, listed: KeyMetadata, when: String) {
    let id = &listed.key_id;
    let described = c
        .describe_key(DescribeKeyRequest { key_id: id.clone() })
        .await
        .unwrap_or_else(|e| panic!("{when}: key {id} is listed, but DescribeKey: {e:?}"))
        .into_inner()
        .key_metadata
        .unwrap();
    assert_eq!(
        described, listed,
        "{when}: DescribeKey and ListKeys disagree"
    );
    let tags = c
        .list_resource_tags(ListResourceTagsRequest { key_id: id.clone() })
        .await
        .unwrap_or_else(|e| panic!("{when}: key {id} is listed, but ListResourceTags: {e:?}"))
        .into_inner()
        .tags;
    assert_eq!(tags, listed.tags, "{when}: ListResourceTags of {id}");
    let aliases = c
        .list_aliases_by_key_id(ListAliasesByKeyIdRequest {
            key_id: id.clone(),
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{when}: key {id} is listed, but ListAliasesByKeyId: {e:?}"))
        .into_inner()
        .aliases;
    let mut want = listed.aliases.clone();
    want.sort();
    let names: Vec<String> = aliases.iter().map(|a| a.alias_name.clone()).collect();
    assert_eq!(names, want, "{when}: ListAliasesByKeyId of {id}");
    assert!(
        aliases.iter().all(|a| a.key_id == *id),
        "{when}: {aliases:?}"
    );
}

/// What a check saw.
struct Seen {
    keys: usize,
    /// Writes without an answer found applied.
    applied_unanswered: usize,
    /// Whether the key events were all still kept, and so counted per key.
    events_counted: bool,
}

/// Checks, through the API and with nothing else calling, that every write the ledger holds
/// for done is there, that nothing else is, and that every key is whole.
async fn check(stack: &Stack, instance: &str, ledger: &Ledger, when: &str) -> Seen {
    let mut c = stack.keys(Some(ALICE)).unwrap();
    let listed = list_keys(&mut c, ListKeysRequest::default()).await;
    let applied_unanswered = check_writes(&listed, ledger, instance, when);
    let events_counted = check_whole(stack, instance, &listed, when).await;
    Seen {
        keys: listed.len(),
        applied_unanswered,
        events_counted,
    }
}

/// The keys listed against the ledger: every key comes from a write that was sent, and every
/// write that is done shows. Returns how many writes without an answer show.
fn check_writes(listed: &[KeyMetadata], ledger: &Ledger, instance: &str, when: &str) -> usize {
    let by_id: BTreeMap<&str, &KeyMetadata> =
        listed.iter().map(|k| (k.key_id.as_str(), k)).collect();
    assert_eq!(by_id.len(), listed.len(), "{when}: ListKeys repeats a key");
    let by_description: HashMap<&str, &KeyMetadata> =
        listed.iter().map(|k| (k.description.as_str(), k)).collect();
    assert_eq!(
        by_description.len(),
        listed.len(),
        "{when}: one CreateKey made two keys"
    );
    let mut applied_unanswered = 0;

    // Every key comes from a CreateKey that was sent, whole; every one that is done is there.
    let creates: HashMap<&str, &CreateOp> = ledger
        .creates
        .iter()
        .map(|op| (op.description.as_str(), op))
        .collect();
    for k in listed {
        let op = creates
            .get(k.description.as_str())
            .unwrap_or_else(|| panic!("{when}: key nobody created: {k:?}"));
        assert_ne!(
            op.outcome,
            Outcome::NotSent,
            "{when}: key of a CreateKey never sent: {k:?}"
        );
        assert_eq!(
            k.aliases,
            std::slice::from_ref(&op.alias),
            "{when}: aliases of {k:?}"
        );
        assert!(
            k.tags.contains(&client_tag(op.client)),
            "{when}: creation tag of {k:?}"
        );
        assert_eq!(k.kms_instance_id, instance, "{when}: instance of {k:?}");
        if let Some(id) = &op.key_id {
            assert_eq!(&k.key_id, id, "{when}: {op:?} made another key: {k:?}");
        }
        if let Some(m) = &op.answered {
            assert_eq!(
                (&k.creation_date, &k.primary_key_version_id, &k.creator),
                (&m.creation_date, &m.primary_key_version_id, &m.creator),
                "{when}: key {} is not the one acknowledged",
                k.key_id
            );
        }
        if op.outcome == Outcome::Unanswered {
            applied_unanswered += 1;
        }
    }
    for op in &ledger.creates {
        if op.outcome.done() {
            assert!(
                by_description.contains_key(op.description.as_str()),
                "{when}: acknowledged CreateKey lost: {op:?}"
            );
        }
    }

    // Every tag done is there; every tag there was sent, with its value.
    let tags: HashMap<(&str, &str), &TagOp> = ledger
        .tags
        .iter()
        .map(|op| ((op.key_id.as_str(), op.tag.key.as_str()), op))
        .collect();
    for op in &ledger.tags {
        if op.outcome.done() {
            let k = by_id
                .get(op.key_id.as_str())
                .unwrap_or_else(|| panic!("{when}: key of {op:?} lost"));
            assert!(
                k.tags.contains(&op.tag),
                "{when}: acknowledged TagResources lost: {op:?}; the key: {k:?}"
            );
        }
    }
    for k in listed {
        for t in k.tags.iter().filter(|t| t.key != CLIENT_TAG) {
            let op = tags
                .get(&(k.key_id.as_str(), t.key.as_str()))
                .unwrap_or_else(|| panic!("{when}: tag nobody added: {t:?} on {k:?}"));
            assert_eq!(op.tag, *t, "{when}: tag value of {k:?}");
            assert_ne!(op.outcome, Outcome::NotSent, "{when}: {op:?} on {k:?}");
            if op.outcome == Outcome::Unanswered {
                applied_unanswered += 1;
            }
        }
    }

    // A key is pending deletion exactly when a ScheduleKeyDeletion for it may have been.
    let schedules: HashMap<&str, &ScheduleOp> = ledger
        .schedules
        .iter()
        .map(|op| (op.key_id.as_str(), op))
        .collect();
    for op in &ledger.schedules {
        if op.outcome.done() {
            assert!(
                by_id.contains_key(op.key_id.as_str()),
                "{when}: key of {op:?} lost"
            );
        }
    }
    for k in listed {
        let pending = k.key_state == KeyState::PendingDeletion as i32;
        assert_eq!(pending, k.delete_date.is_some(), "{when}: {k:?}");
        match schedules.get(k.key_id.as_str()) {
            Some(op) if op.outcome.done() => {
                assert!(
                    pending,
                    "{when}: acknowledged ScheduleKeyDeletion lost: {k:?}"
                );
                if let Some(date) = &op.answered {
                    assert_eq!(
                        k.delete_date.as_ref(),
                        Some(date),
                        "{when}: deletion date of {k:?}"
                    );
                }
            }
            Some(op) if op.outcome == Outcome::Unanswered => {
                applied_unanswered += usize::from(pending);
            }
            _ => assert_eq!(
                k.key_state,
                KeyState::Enabled as i32,
                "{when}: nobody scheduled the deletion of {k:?}"
            ),
        }
    }
    applied_unanswered
}

/// Every listed key whole: each per-key call works and agrees with the listing, the indexes
/// agree with the records, the instance counts the keys, and the key events match the
/// changes. Returns whether the events were all still kept, and so counted per key.
async fn check_whole(stack: &Stack, instance: &str, listed: &[KeyMetadata], when: &str) -> bool {
    let mut c = stack.keys(Some(ALICE)).unwrap();
    // Each key through its own calls.
    let limit = Arc::new(Semaphore::new(CHECKS_IN_FLIGHT));
    let mut tasks = JoinSet::new();
    for k in listed {
        let permit = Arc::clone(&limit).acquire_owned().await.unwrap();
        let (c, k, when) = (c.clone(), k.clone(), when.to_string());
        tasks.spawn(async move {
            check_key(c, k, when).await;
            drop(permit);
        });
    }
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done {
            std::panic::resume_unwind(e.into_panic());
        }
    }

    // The indexes that name keys agree with the records: aliases both ways; the instance
    // and tag indexes list every key that carries them.
    let want_aliases: BTreeSet<(String, String)> = listed
        .iter()
        .flat_map(|k| k.aliases.iter().map(|a| (a.clone(), k.key_id.clone())))
        .collect();
    assert_eq!(
        list_aliases(&mut c).await,
        want_aliases,
        "{when}: ListAliases and the keys disagree"
    );
    let all: BTreeSet<String> = listed.iter().map(|k| k.key_id.clone()).collect();
    let by_instance = ListKeysRequest {
        kms_instance_id: instance.into(),
        ..Default::default()
    };
    assert_eq!(
        list_key_ids(&mut c, by_instance).await,
        all,
        "{when}: ListKeys by instance"
    );
    for tag_key in
        std::iter::once(CLIENT_TAG.to_string()).chain((1..=MAX_ADDED_TAGS).map(step_tag_key))
    {
        let want: BTreeSet<String> = listed
            .iter()
            .filter(|k| k.tags.iter().any(|t| t.key == tag_key))
            .map(|k| k.key_id.clone())
            .collect();
        let by_tag = ListKeysRequest {
            filters: Some(ListKeysFilter {
                tag_key: Some(tag_key.clone()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            list_key_ids(&mut c, by_tag).await,
            want,
            "{when}: ListKeys by tag {tag_key}"
        );
    }

    // The instance counts exactly the keys there are.
    let counted = stack
        .instances(Some(ALICE))
        .unwrap()
        .get_kms_instance(GetKmsInstanceRequest {
            kms_instance_id: instance.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .kms_instance
        .unwrap()
        .key_count;
    assert_eq!(
        usize::try_from(counted).unwrap(),
        listed.len(),
        "{when}: the instance's key count"
    );

    // Key events: revisions without gaps, each naming a key there is, one per change the
    // key's record shows (its creation, each added tag, its scheduled deletion).
    check_events(stack, listed, when).await
}

/// Replays the directory's key events; see [`check`]. False when some are no longer kept.
///
/// `WatchKeys` from revision 0 starts with a resync, so the replay starts after revision 1:
/// every key's events but one match its changes, and one key (the first created) is one short.
async fn check_events(stack: &Stack, listed: &[KeyMetadata], when: &str) -> bool {
    let Some(first) = listed.first() else {
        return true;
    };
    let mut directory = stack.directory(Some(DATA_PRINCIPAL)).unwrap();
    let revision = directory
        .get_key(GetKeyRequest {
            key_id: first.key_id.clone(),
            principal: ALICE.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .revision;
    if revision > schema::EVENT_RETENTION {
        return false;
    }
    let mut events = directory
        .watch_keys(WatchKeysRequest { from_revision: 1 })
        .await
        .unwrap()
        .into_inner();
    let mut per_key: HashMap<String, usize> = HashMap::new();
    for want in 2..=revision {
        let e = tokio::time::timeout(STALL, events.message())
            .await
            .unwrap_or_else(|_| panic!("{when}: event {want} of {revision} did not come"))
            .unwrap()
            .expect("the event stream ended");
        assert_eq!(
            (e.revision, e.kind),
            (want, KeyEventKind::Changed as i32),
            "{when}: key events skip, repeat or resync: {e:?}"
        );
        *per_key.entry(e.key_id).or_default() += 1;
    }
    let mut short = Vec::new();
    for k in listed {
        let changes = 1
            + k.tags.iter().filter(|t| t.key != CLIENT_TAG).count()
            + usize::from(k.key_state == KeyState::PendingDeletion as i32);
        let seen = per_key.remove(&k.key_id).unwrap_or(0);
        if seen + 1 == changes {
            short.push(k.key_id.clone());
        } else {
            assert_eq!(seen, changes, "{when}: events of {k:?}");
        }
    }
    assert_eq!(
        short.len(),
        1,
        "{when}: keys with an event too few: {short:?}"
    );
    assert!(
        per_key.is_empty(),
        "{when}: events of keys that do not exist: {per_key:?}"
    );
    true
}

fn env_number(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    Some(
        text.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{name}={text}: {e}")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill_and_no_key_is_half_written() {
    let rounds = env_number("KMS_KILL_ROUNDS").map_or(DEFAULT_ROUNDS, |n| n as usize);
    let seed = env_number("KMS_KILL_SEED").unwrap_or_else(|| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        now.unwrap().as_nanos() as u64
    });
    eprintln!("crash drill: {rounds} kills, {CLIENTS} clients, KMS_KILL_SEED={seed}");
    let began = Instant::now();

    let mut stack = Stack::start().await.unwrap();
    let instance = stack
        .instances(Some(OPERATOR))
        .unwrap()
        .create_kms_instance(CreateKmsInstanceRequest {
            instance_type: InstanceType::Software as i32,
            owner_account_id: ACCOUNT.into(),
            key_quota: kms_types::instance::MAX_KEY_QUOTA,
            access_management_quota: Some(0),
        })
        .await
        .unwrap()
        .into_inner()
        .kms_instance
        .unwrap()
        .kms_instance_id;
    let drill = Arc::new(Drill {
        keys: Box::new(stack.keys_maker(ALICE).unwrap()),
        instance: instance.clone(),
        gate: RwLock::new(()),
        ledger: Mutex::new(Ledger::default()),
        acks: watch::Sender::new(0),
        stop: AtomicBool::new(false),
    });
    let mut clients = JoinSet::new();
    for id in 0..CLIENTS {
        clients.spawn(client(Arc::clone(&drill), id, seed));
    }

    let mut rng = Rng::new(seed);
    let mut acks = drill.acks.subscribe();
    let (mut acked_before, mut unanswered_before) = (0, 0);
    let (mut restarts, mut write_checks, mut unknown_at_checks, mut unknown_applied) =
        (Vec::new(), 0, 0, 0);
    for round in 1..=rounds {
        let kill_at = *acks.borrow() + 1 + rng.below(MAX_WRITES_BEFORE_KILL);
        tokio::select! {
            reached = tokio::time::timeout(STALL, acks.wait_for(|n| *n >= kill_at)) => {
                reached
                    .unwrap_or_else(|_| panic!("round {round}: no write acknowledged for {STALL:?}"))
                    .unwrap();
            }
            Some(ended) = clients.join_next() => match ended {
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                other => panic!("round {round}: a client ended: {other:?}"),
            },
        }
        stack.kill_control().await.unwrap();
        let acked = *acks.borrow();
        let held = tokio::time::timeout(STALL, drill.gate.write())
            .await
            .unwrap_or_else(|_| panic!("round {round}: the clients did not come to rest"));
        let restart = stack.restart_control().await.unwrap();
        let ledger = drill.ledger.lock().unwrap().clone();
        let checking = Instant::now();
        let when = format!("after kill {round}");
        let seen = check(&stack, &instance, &ledger, &when).await;
        drop(held);

        let unknown = ledger.count(Outcome::Unanswered);
        eprintln!(
            "kill {round}/{rounds}: after {} acknowledged writes this round ({} in all); \
             {} calls unanswered; {unknown} writes of unknown outcome, {} of them applied; \
             restart {} ms; {} keys checked in {} ms{}",
            acked - acked_before,
            acked,
            ledger.unanswered_calls - unanswered_before,
            seen.applied_unanswered,
            restart.as_millis(),
            seen.keys,
            checking.elapsed().as_millis(),
            if seen.events_counted {
                ""
            } else {
                "; early events no longer kept, not counted per key"
            },
        );
        (acked_before, unanswered_before) = (acked, ledger.unanswered_calls);
        restarts.push(restart);
        write_checks += ledger.done();
        unknown_at_checks += unknown;
        unknown_applied += seen.applied_unanswered;
    }

    // The clients finish what they were doing: every write gets its answer.
    drill.stop.store(true, Ordering::Relaxed);
    tokio::time::timeout(STALL, async {
        while let Some(ended) = clients.join_next().await {
            if let Err(e) = ended {
                std::panic::resume_unwind(e.into_panic());
            }
        }
    })
    .await
    .expect("the clients did not stop");
    let ledger = drill.ledger.lock().unwrap().clone();
    assert_eq!(ledger.count(Outcome::Unanswered), 0, "{ledger:?}");
    let last = check(&stack, &instance, &ledger, "at the end").await;

    // What the kills left on disk, read by the store itself.
    stack.stop_control().await.unwrap();
    let entries = stack.store_entries().unwrap();
    assert_eq!(consistency::check_store(&entries).unwrap(), last.keys);
    // The audit log was cut by every kill; its chain still holds.
    stack.start_control().await.unwrap();
    consistency::verify_audit_log(&stack, "control")
        .await
        .unwrap();
    stack.stop().await.unwrap();

    let total: Duration = restarts.iter().sum();
    let mean = total / u32::try_from(restarts.len().max(1)).unwrap();
    let max = restarts.iter().max().copied().unwrap_or_default();
    eprintln!(
        "crash drill summary: kills={rounds} seed={seed} acknowledged_writes={} \
         confirmed_on_retry={} write_checks={write_checks} unanswered_calls={} \
         unknown_at_checks={unknown_at_checks} unknown_applied={unknown_applied} keys={} \
         restart_mean_ms={} restart_max_ms={} elapsed_s={}",
        ledger.count(Outcome::Acked),
        ledger.count(Outcome::Confirmed),
        ledger.unanswered_calls,
        last.keys,
        mean.as_millis(),
        max.as_millis(),
        began.elapsed().as_secs(),
    );
}
