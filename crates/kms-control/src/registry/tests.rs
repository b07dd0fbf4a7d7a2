//! In-process tests of the registry over a `MemoryStore`, with a manual clock and material made
//! up on the spot: the schedulers, index upkeep, the watch stream and the layout migration.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use kms_store::{MemoryStore, Store, encode_record};
use kms_types::time::DAY_MS;
use kms_types::{
    AccountId, DomainError, InstanceType, KeyEventKind, KeyFilter, KeyQuery, KeyRef, KeySpec,
    KeyState, NewInstance, NewKey, PageRequest, Principal, Tag, UnixMillis,
};
use tokio_stream::StreamExt;

use super::Registry;
use crate::clock::ManualClock;
use crate::index;
use crate::material::{MaterialSource, NewMaterial};
use crate::schema;

const START: UnixMillis = UnixMillis(1_700_000_000_000);

/// Material that is not material: distinct bytes per version, never secret.
#[derive(Debug, Default)]
struct FakeMaterial {
    calls: AtomicUsize,
}

#[tonic::async_trait]
impl MaterialSource for Arc<FakeMaterial> {
    async fn generate(
        &self,
        _key_id: &kms_types::KeyId,
        version: &kms_types::KeyVersionId,
        spec: KeySpec,
        _protection: kms_types::ProtectionLevel,
    ) -> Result<NewMaterial, DomainError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(NewMaterial {
            wrapped: version.as_bytes().repeat(4),
            public_key_der: if spec.is_symmetric() {
                Vec::new()
            } else {
                b"spki".to_vec()
            },
        })
    }
}

struct World {
    registry: Arc<Registry<Bounded>>,
    store: Arc<Bounded>,
    clock: Arc<ManualClock>,
    material: Arc<FakeMaterial>,
}

fn p(arn: &str) -> Principal {
    Principal::parse(arn).unwrap()
}

fn operator() -> Principal {
    p("acs:ram::1000:user/op")
}

fn alice() -> Principal {
    p("acs:ram::42:root")
}

/// Most keys one transaction may read, and most it may write: etcd's default
/// `--max-txn-ops`, which limits its compares and its writes.
const MAX_TXN_OPS: usize = 128;

/// A write of someone else's, run on the store a test wraps.
type Hook = Box<dyn FnOnce(&MemoryStore) + Send>;

/// A memory store that refuses any transaction reading or writing more than [`MAX_TXN_OPS`]
/// keys, as etcd does: every registry test then checks that its writes fit in etcd. A test
/// can also arm it to run one write of its own just before the next transaction: a change
/// committed by someone else between a call's policy check and its write.
#[derive(Default)]
struct Bounded {
    inner: MemoryStore,
    before_next: std::sync::Mutex<Option<Hook>>,
}

impl std::fmt::Debug for Bounded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bounded")
            .field("inner", &self.inner)
            .finish()
    }
}

/// Counts the keys a transaction reads and writes.
struct Counting<'a> {
    inner: &'a mut dyn kms_store::Txn,
    read: std::collections::BTreeSet<Vec<u8>>,
    written: std::collections::BTreeSet<Vec<u8>>,
}

impl kms_store::Txn for Counting<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, kms_store::TxStoreError> {
        if !self.written.contains(key) {
            self.read.insert(key.to_vec());
        }
        self.inner.get(key)
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), kms_store::TxStoreError> {
        self.written.insert(key.to_vec());
        self.inner.put(key, value)
    }

    fn delete(&mut self, key: &[u8]) -> Result<(), kms_store::TxStoreError> {
        self.written.insert(key.to_vec());
        self.inner.delete(key)
    }
}

impl Store for Bounded {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, kms_store::StoreError> {
        self.inner.get(key)
    }

    fn scan_prefix(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<kms_store::Entry>, kms_store::StoreError> {
        self.inner.scan_prefix(prefix, after, limit)
    }

    fn snapshot(&self) -> Result<kms_store::Snapshot<'_>, kms_store::StoreError> {
        self.inner.snapshot()
    }

    fn transaction<T, E>(
        &self,
        f: impl Fn(&mut dyn kms_store::Txn) -> Result<T, kms_store::Abort<E>>,
    ) -> Result<T, kms_store::TxError<E>> {
        let hook = self.before_next.lock().unwrap().take();
        if let Some(hook) = hook {
            hook(&self.inner);
        }
        self.inner.transaction(|tx| {
            let mut counting = Counting {
                inner: tx,
                read: Default::default(),
                written: Default::default(),
            };
            let out = f(&mut counting);
            let (read, written) = (counting.read.len(), counting.written.len());
            if read > MAX_TXN_OPS || written > MAX_TXN_OPS {
                return Err(kms_store::Abort::from(kms_store::StoreError::Internal(
                    format!("a transaction read {read} and wrote {written} keys; etcd allows {MAX_TXN_OPS} of each"),
                )));
            }
            out
        })
    }

    fn flush(&self) -> Result<(), kms_store::StoreError> {
        self.inner.flush()
    }

    fn subscribe(
        &self,
        prefix: &[u8],
        notify: kms_store::Notify,
    ) -> Result<(), kms_store::StoreError> {
        self.inner.subscribe(prefix, notify)
    }

    fn lead(
        &self,
        key: &[u8],
        holder: &[u8],
        ttl: std::time::Duration,
    ) -> Result<bool, kms_store::StoreError> {
        self.inner.lead(key, holder, ttl)
    }
}

fn world() -> World {
    let store = Arc::new(Bounded::default());
    let clock = Arc::new(ManualClock::new(START));
    let material = Arc::new(FakeMaterial::default());
    let registry = Arc::new(
        Registry::new(
            Arc::clone(&store),
            "local".into(),
            Arc::clone(&clock) as Arc<dyn crate::clock::Clock>,
            Arc::clone(&material),
        )
        .with_operators(vec![operator()]),
    );
    // This registry runs the schedulers, as the only replica does.
    store
        .lead(
            schema::SCHEDULER_LEADER,
            registry.replica().as_bytes(),
            registry.lease(),
        )
        .unwrap();
    World {
        registry,
        store,
        clock,
        material,
    }
}

impl World {
    async fn instance(&self, kind: InstanceType, quota: i32) -> kms_types::InstanceRecord {
        self.registry
            .create_instance(
                &operator(),
                NewInstance {
                    instance_type: kind,
                    owner: *alice().account(),
                    key_quota: quota,
                    access_management_quota: Some(1),
                },
            )
            .await
            .unwrap()
    }

    async fn key(&self, req: NewKey) -> kms_types::KeyRecord {
        self.registry.create_key(&alice(), req).await.unwrap()
    }

    fn advance_days(&self, days: i64) {
        self.clock.advance_ms(days * DAY_MS);
    }

    /// Every store entry whose key or value mentions `needle`.
    fn entries_mentioning(&self, needle: &str) -> Vec<String> {
        self.store
            .scan_prefix(b"", None, usize::MAX)
            .unwrap()
            .into_iter()
            .filter(|(k, v)| {
                String::from_utf8_lossy(k).contains(needle)
                    || String::from_utf8_lossy(v).contains(needle)
            })
            .map(|(k, _)| String::from_utf8_lossy(&k).into_owned())
            .collect()
    }
}

fn in_instance(instance: &kms_types::InstanceRecord) -> NewKey {
    NewKey {
        instance: Some(instance.id.clone()),
        ..NewKey::default()
    }
}

fn tag(k: &str, v: &str) -> Tag {
    Tag {
        key: k.into(),
        value: v.into(),
    }
}

fn id_ref(r: &kms_types::KeyRecord) -> KeyRef {
    KeyRef::Id(r.id)
}

#[tokio::test]
async fn reaper_deletes_the_key_and_everything_that_names_it() {
    let w = world();
    let inst = w.instance(InstanceType::Software, 10).await;
    let key = w
        .key(NewKey {
            alias: Some("alias/doomed".into()),
            tags: vec![tag("env", "dev")],
            ..in_instance(&inst)
        })
        .await;
    let keep = w.key(in_instance(&inst)).await;
    let default = w.key(NewKey::default()).await;
    w.registry
        .create_key_version(&alice(), id_ref(&key))
        .await
        .unwrap();
    for k in [&key, &default] {
        w.registry
            .schedule_key_deletion(&alice(), id_ref(k), 7)
            .await
            .unwrap();
    }
    assert_eq!(
        w.registry
            .get_instance(&alice(), inst.id.clone())
            .await
            .unwrap()
            .key_count,
        2
    );

    w.advance_days(7);
    w.clock.advance_ms(-1);
    assert_eq!(w.registry.reap_due().await.unwrap().deleted, 0);
    w.clock.advance_ms(1);
    let report = w.registry.reap_due().await.unwrap();
    assert_eq!((report.deleted, report.failed), (2, 0));

    for k in [&key, &default] {
        assert_eq!(
            w.registry.describe_key(&alice(), id_ref(k)).await.err(),
            Some(DomainError::KeyNotFound)
        );
        // Only the change log still names the key, ending with its deletion.
        let left = w.entries_mentioning(k.id.as_str());
        assert!(left.iter().all(|e| e.starts_with("e/")), "{left:?}");
        for v in &k.versions {
            assert!(w.entries_mentioning(&v.id.to_string()).is_empty());
        }
    }
    assert!(w.entries_mentioning("alias/doomed").is_empty());
    let instance = w
        .registry
        .get_instance(&alice(), inst.id.clone())
        .await
        .unwrap();
    assert_eq!(instance.key_count, 1);
    let listed = w
        .registry
        .list_keys(
            &alice(),
            KeyQuery {
                instance: None,
                default_keys_only: false,
                filter: KeyFilter::default(),
                page: PageRequest::first(100),
            },
        )
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].id, keep.id);
    // The alias and the default-key slot are free again.
    w.key(NewKey {
        alias: Some("alias/doomed".into()),
        ..NewKey::default()
    })
    .await;
    assert_eq!(w.registry.reap_due().await.unwrap().deleted, 0);
}

#[tokio::test]
async fn rotation_scheduler_rotates_due_enabled_symmetric_keys() {
    let w = world();
    let inst = w.instance(InstanceType::Software, 10).await;
    let aes = w
        .key(NewKey {
            rotation_interval_days: Some(7),
            ..in_instance(&inst)
        })
        .await;
    let disabled = w
        .key(NewKey {
            rotation_interval_days: Some(7),
            ..in_instance(&inst)
        })
        .await;
    w.registry
        .disable_key(&alice(), id_ref(&disabled))
        .await
        .unwrap();
    let rsa = w
        .key(NewKey {
            spec: Some(KeySpec::Rsa2048),
            ..in_instance(&inst)
        })
        .await;
    let off = w
        .key(NewKey {
            rotation_enabled: Some(false),
            rotation_interval_days: Some(7),
            ..in_instance(&inst)
        })
        .await;
    let generated = w.material.calls.load(Ordering::SeqCst);

    w.advance_days(6);
    assert_eq!(w.registry.rotate_due().await.unwrap().rotated, 0);
    w.advance_days(1);
    let report = w.registry.rotate_due().await.unwrap();
    assert_eq!((report.rotated, report.failed), (1, 0));
    assert_eq!(w.material.calls.load(Ordering::SeqCst), generated + 1);
    let rotated = w
        .registry
        .describe_key(&alice(), id_ref(&aes))
        .await
        .unwrap();
    assert_eq!(rotated.versions.len(), 2);
    assert_ne!(rotated.primary_version, aes.primary_version);
    assert_eq!(rotated.last_rotation, Some(START.plus_days(7)));
    assert_eq!(rotated.next_rotation(), Some(START.plus_days(14)));
    for (k, versions) in [(&disabled, 1), (&rsa, 1), (&off, 1)] {
        let now = w.registry.describe_key(&alice(), id_ref(k)).await.unwrap();
        assert_eq!(now.versions.len(), versions, "{}", k.id);
    }
    assert_eq!(
        w.registry.rotate_due().await.unwrap().rotated,
        0,
        "nothing is due twice"
    );

    // A disabled key's rotation waits; enabled again, it catches up once.
    w.registry
        .enable_key(&alice(), id_ref(&disabled))
        .await
        .unwrap();
    assert_eq!(w.registry.rotate_due().await.unwrap().rotated, 1);
    w.advance_days(7);
    assert_eq!(w.registry.rotate_due().await.unwrap().rotated, 2);
}

#[tokio::test]
async fn watch_replays_then_follows_and_resyncs() {
    let w = world();
    let key = w.key(NewKey::default()).await;
    let r0 = w.registry.revision().await.unwrap();
    assert_eq!(r0, 1, "the creation is event 1");

    let mut fresh = w.registry.watch(0);
    let first = fresh.next().await.unwrap();
    assert_eq!((first.kind, first.revision), (KeyEventKind::Resync, 1));

    w.registry
        .disable_key(&alice(), id_ref(&key))
        .await
        .unwrap();
    let live = tokio::time::timeout(Duration::from_secs(5), fresh.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(live.kind, KeyEventKind::Changed);
    assert_eq!(live.revision, 2);
    assert_eq!(live.key_id.as_ref(), Some(&key.id));

    // Unchanged records make no event.
    w.registry
        .disable_key(&alice(), id_ref(&key))
        .await
        .unwrap();
    w.registry.enable_key(&alice(), id_ref(&key)).await.unwrap();
    let mut resumed = w.registry.watch(1);
    for want in [2, 3] {
        let e = resumed.next().await.unwrap();
        assert_eq!((e.kind, e.revision), (KeyEventKind::Changed, want));
    }
    let mut ahead = w.registry.watch(99);
    assert_eq!(ahead.next().await.unwrap(), kms_types::KeyEvent::resync(3));

    // Past the retained window: resync.
    let id = key.id;
    for _ in 0..schema::EVENT_RETENTION {
        w.store
            .transaction::<_, DomainError>(|tx| {
                let record = index::get_key(tx, &id)?.unwrap();
                index::put_key(tx, Some(&record), &record)?;
                Ok(())
            })
            .unwrap();
    }
    let last = w.registry.revision().await.unwrap();
    assert_eq!(last, 3 + schema::EVENT_RETENTION);
    let oldest = w.store.scan_prefix(schema::EVENT_PREFIX, None, 1).unwrap();
    assert_eq!(
        oldest[0].0,
        schema::event(4),
        "the last 10,000 events are kept"
    );
    let mut stale = w.registry.watch(2);
    assert_eq!(
        stale.next().await.unwrap(),
        kms_types::KeyEvent::resync(last)
    );
    let mut edge = w.registry.watch(3);
    assert_eq!(edge.next().await.unwrap().revision, 4);

    // Closing the registry ends every stream.
    w.registry.close();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while fresh.next().await.is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "the stream did not end on close");
}

#[tokio::test]
async fn instance_quota_count_and_visibility() {
    let w = world();
    let inst = w.instance(InstanceType::Software, 2).await;
    let bob = p("acs:ram::77:user/bob");
    let err = w.registry.create_key(&bob, in_instance(&inst)).await.err();
    assert_eq!(err, Some(DomainError::InstanceNotFound));
    assert_eq!(
        w.registry.get_instance(&bob, inst.id.clone()).await.err(),
        Some(DomainError::InstanceNotFound)
    );
    assert_eq!(
        w.registry
            .share_instance(&alice(), inst.id.clone(), *bob.account())
            .await
            .err(),
        Some(DomainError::NoPermission)
    );
    w.registry
        .share_instance(&operator(), inst.id.clone(), *bob.account())
        .await
        .unwrap();
    let bobs = w
        .registry
        .create_key(&bob, in_instance(&inst))
        .await
        .unwrap();
    assert_eq!(bobs.account, *bob.account());
    w.key(in_instance(&inst)).await;
    let full = w.registry.create_key(&alice(), in_instance(&inst)).await;
    assert!(
        matches!(full, Err(DomainError::LimitExceeded(_))),
        "{full:?}"
    );
    let seen = w
        .registry
        .list_instances(&bob, PageRequest::first(10))
        .await
        .unwrap();
    assert_eq!(seen.items.len(), 1);
    assert_eq!(seen.items[0].key_count, 2);
    w.registry
        .unshare_instance(&operator(), inst.id.clone(), *bob.account())
        .await
        .unwrap();
    assert!(
        w.registry
            .list_instances(&bob, PageRequest::first(10))
            .await
            .unwrap()
            .items
            .is_empty()
    );
    // Bob still manages the key he made.
    w.registry.disable_key(&bob, id_ref(&bobs)).await.unwrap();
}

#[tokio::test]
async fn listing_pages_and_filters() {
    let w = world();
    let inst = w.instance(InstanceType::Hardware, 100).await;
    let mut ids = Vec::new();
    for i in 0..7 {
        let k = w
            .key(NewKey {
                spec: Some(if i % 2 == 0 {
                    KeySpec::AliyunAes128
                } else {
                    KeySpec::EcP256
                }),
                tags: if i < 3 {
                    vec![tag("team", "a")]
                } else {
                    vec![]
                },
                ..in_instance(&inst)
            })
            .await;
        ids.push(k.id);
    }
    ids.sort();
    let query = |filter: KeyFilter, page: PageRequest| KeyQuery {
        instance: Some(inst.id.clone()),
        default_keys_only: false,
        filter,
        page,
    };
    let mut seen = Vec::new();
    let mut page = PageRequest::first(3);
    loop {
        let got = w
            .registry
            .list_keys(&alice(), query(KeyFilter::default(), page.clone()))
            .await
            .unwrap();
        assert!(got.items.len() <= 3);
        seen.extend(got.items.iter().map(|k| k.id));
        match got.next {
            Some(cursor) => page.after = Some(cursor),
            None => break,
        }
    }
    assert_eq!(seen, ids, "pages visit every key once, in order");

    let ec = w
        .registry
        .list_keys(
            &alice(),
            query(
                KeyFilter {
                    spec: Some(KeySpec::EcP256),
                    tag_key: Some("team".into()),
                    ..KeyFilter::default()
                },
                PageRequest::first(20),
            ),
        )
        .await
        .unwrap();
    assert_eq!(ec.items.len(), 1, "only key 1 is EC and tagged");
    let disabled = w
        .registry
        .list_keys(
            &alice(),
            query(
                KeyFilter {
                    state: Some(KeyState::Disabled),
                    ..KeyFilter::default()
                },
                PageRequest::first(20),
            ),
        )
        .await
        .unwrap();
    assert!(disabled.items.is_empty());
    let other = p("acs:ram::99:root");
    let theirs = w
        .registry
        .list_keys(&other, query(KeyFilter::default(), PageRequest::first(20)))
        .await
        .unwrap();
    assert!(theirs.items.is_empty(), "only the caller's keys are listed");
}

#[tokio::test]
async fn tags_are_all_or_nothing() {
    let w = world();
    let inst = w.instance(InstanceType::Software, 100).await;
    let a = w.key(in_instance(&inst)).await;
    let b = w
        .key(NewKey {
            tags: (0..20).map(|i| tag(&format!("k{i}"), "v")).collect(),
            ..in_instance(&inst)
        })
        .await;
    let r0 = w.registry.revision().await.unwrap();
    let err = w
        .registry
        .tag_resources(
            &alice(),
            vec![id_ref(&a), id_ref(&b)],
            vec![tag("new", "1")],
        )
        .await
        .err()
        .map(|e| e.reason_code());
    assert_eq!(err.as_deref(), Some("InvalidParameter.Tags"));
    let a_now = w.registry.describe_key(&alice(), id_ref(&a)).await.unwrap();
    assert!(a_now.tags.is_empty(), "the first key was left as it was");
    assert_eq!(w.registry.revision().await.unwrap(), r0, "no event either");
    w.registry
        .tag_resources(
            &alice(),
            vec![id_ref(&a), id_ref(&a)],
            vec![tag("new", "1")],
        )
        .await
        .unwrap();
    assert_eq!(w.registry.revision().await.unwrap(), r0 + 1);
}

/// The largest tag call, 50 keys given 20 tags each, fits etcd's limits: each key changes in
/// its own transaction.
#[tokio::test]
async fn the_largest_tag_batch_fits_in_etcd_transactions() {
    let w = world();
    let inst = w.instance(InstanceType::Software, 100).await;
    let mut refs = Vec::new();
    for _ in 0..50 {
        refs.push(id_ref(&w.key(in_instance(&inst)).await));
    }
    let tags: Vec<Tag> = (0..20).map(|i| tag(&format!("k{i}"), "v")).collect();
    let r0 = w.registry.revision().await.unwrap();
    w.registry
        .tag_resources(&alice(), refs.clone(), tags)
        .await
        .unwrap();
    assert_eq!(w.registry.revision().await.unwrap(), r0 + 50);
    for r in &refs {
        let k = w.registry.describe_key(&alice(), r.clone()).await.unwrap();
        assert_eq!(k.tags.len(), 20);
    }
    w.registry
        .untag_resources(
            &alice(),
            refs.clone(),
            (0..20).map(|i| format!("k{i}")).collect(),
        )
        .await
        .unwrap();
    let k = w
        .registry
        .describe_key(&alice(), refs[49].clone())
        .await
        .unwrap();
    assert!(k.tags.is_empty());
}

/// A key with hundreds of versions is deleted in one transaction that fits etcd, leaving a
/// tombstone whose version entries go in later steps; nothing names the key meanwhile, and
/// nothing is left at the end.
#[tokio::test]
async fn a_key_with_many_versions_is_reaped_in_steps() {
    let w = world();
    let inst = w.instance(InstanceType::Software, 10).await;
    let key = w.key(in_instance(&inst)).await;
    for _ in 0..200 {
        w.registry
            .create_key_version(&alice(), id_ref(&key))
            .await
            .unwrap();
    }
    let versions = w
        .registry
        .describe_key(&alice(), id_ref(&key))
        .await
        .unwrap()
        .versions;
    assert_eq!(versions.len(), 201);
    w.registry
        .schedule_key_deletion(&alice(), id_ref(&key), 7)
        .await
        .unwrap();
    w.advance_days(8);
    let report = w.registry.reap_due().await.unwrap();
    assert_eq!((report.deleted, report.failed), (1, 0));
    assert_eq!(
        w.registry.describe_key(&alice(), id_ref(&key)).await.err(),
        Some(DomainError::KeyNotFound)
    );
    let last = versions.last().unwrap().id;
    assert!(
        w.store.get(&schema::version(&last)).unwrap().is_some(),
        "versions past the first step wait for the tombstone"
    );
    assert!(
        w.registry.directory_version(last).await.err() == Some(DomainError::KeyNotFound),
        "a version left behind names nothing"
    );
    let report = w.registry.run_scheduled().await;
    assert_eq!(report.failed, 0);
    for v in &versions {
        assert_eq!(w.store.get(&schema::version(&v.id)).unwrap(), None);
    }
    assert!(
        w.store
            .scan_prefix(schema::TOMBSTONE_PREFIX, None, 10)
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn migration_rewrites_layout_one_indexes() {
    let w = world();
    let key = w
        .key(NewKey {
            alias: Some("alias/old".into()),
            ..NewKey::default()
        })
        .await;
    // Make the store look like layout 1: raw key ids, no other index, no layout marker.
    let account = AccountId::parse("42").unwrap();
    let raw = key.id.as_str().as_bytes().to_vec();
    for slot in [
        schema::alias(&account, "alias/old"),
        schema::default_key(&account),
        schema::version(&key.primary_version),
    ] {
        w.store.put(&slot, &raw).unwrap();
    }
    w.store.delete(&schema::owner(&account, &key.id)).unwrap();
    w.store.delete(schema::LAYOUT).unwrap();
    let all_keys = |w: &World| {
        let registry = Arc::clone(&w.registry);
        async move {
            registry
                .list_keys(
                    &alice(),
                    KeyQuery {
                        instance: None,
                        default_keys_only: false,
                        filter: KeyFilter::default(),
                        page: PageRequest::first(10),
                    },
                )
                .await
                .unwrap()
                .items
                .len()
        }
    };
    assert_eq!(all_keys(&w).await, 0, "layout 1 has no account index");
    // Old values still resolve.
    w.registry
        .describe_key(&alice(), KeyRef::Alias("alias/old".into()))
        .await
        .unwrap();

    assert_eq!(index::migrate(&*w.store).unwrap(), 1);
    assert_eq!(index::migrate(&*w.store).unwrap(), 0, "idempotent");
    assert_eq!(all_keys(&w).await, 1);
    let value = w
        .store
        .get(&schema::alias(&account, "alias/old"))
        .unwrap()
        .unwrap();
    assert_eq!(
        value,
        encode_record(schema::FORMAT, key.id.as_str().as_bytes())
    );
    let err = w
        .registry
        .create_key(&alice(), NewKey::default())
        .await
        .err();
    assert_eq!(
        err,
        Some(DomainError::DefaultKeyExists(Some(format!(
            "{} (alias/old)",
            key.id
        ))))
    );

    w.store
        .put(
            schema::LAYOUT,
            &schema::encode_layout(schema::LAYOUT_VERSION + 1),
        )
        .unwrap();
    assert!(
        index::migrate(&*w.store).is_err(),
        "a newer layout is refused"
    );
}

/// A replica whose scheduler claim moved to another writes nothing scheduled: the deletion
/// it decided as leader is refused in its transaction, and the key stays.
#[tokio::test]
async fn a_replica_that_lost_the_scheduler_claim_writes_nothing() {
    let w = world();
    let inst = w.instance(InstanceType::Software, 10).await;
    let key = w.key(in_instance(&inst)).await;
    w.registry
        .schedule_key_deletion(&alice(), id_ref(&key), 7)
        .await
        .unwrap();
    w.advance_days(8);

    // Another replica takes the claim (in one process's store every claim succeeds).
    let other = Registry::new(
        Arc::clone(&w.store),
        "local".into(),
        Arc::clone(&w.clock) as Arc<dyn crate::clock::Clock>,
        Arc::clone(&w.material),
    );
    assert!(other.lead().await.unwrap());

    let report = w.registry.reap_due().await.unwrap();
    assert_eq!((report.deleted, report.failed), (0, 1));
    assert!(
        w.registry
            .describe_key(&alice(), id_ref(&key))
            .await
            .is_ok(),
        "the key outlives a deletion decided without the claim"
    );

    let report = other.run_scheduled().await;
    assert_eq!((report.deleted, report.failed), (1, 0));
}

/// A write decides again inside its transaction: a policy that changes between a caller's
/// check and its write refuses the write.
#[tokio::test]
async fn a_policy_changed_before_the_write_commits_is_obeyed() {
    let store = Arc::new(Bounded::default());
    let clock = Arc::new(ManualClock::new(START));
    let registry = Registry::new(
        Arc::clone(&store),
        "local".into(),
        clock as Arc<dyn crate::clock::Clock>,
        Arc::new(FakeMaterial::default()),
    )
    .with_operators(vec![operator()]);
    let inst = registry
        .create_instance(
            &operator(),
            NewInstance {
                instance_type: InstanceType::Software,
                owner: *alice().account(),
                key_quota: 10,
                access_management_quota: Some(1),
            },
        )
        .await
        .unwrap();
    let key = registry
        .create_key(
            &alice(),
            NewKey {
                alias: Some("alias/app".into()),
                ..in_instance(&inst)
            },
        )
        .await
        .unwrap();
    let other = registry
        .create_key(&alice(), in_instance(&inst))
        .await
        .unwrap();
    let user = p("acs:ram::42:user/ops");
    let only_root = r#"{"Version":"1","Statement":[{"Effect":"Allow","Principal":{"RAM":["acs:ram::42:root"]},"Action":["kms:*"],"Resource":["*"]}]}"#;

    // Arms the store: the next transaction first gives `key` a policy that refuses `user`.
    let arm = || {
        let id = key.id;
        *store.before_next.lock().unwrap() = Some(Box::new(move |inner: &MemoryStore| {
            inner
                .transaction::<_, DomainError>(|tx| {
                    let old = index::get_key(tx, &id)?.unwrap();
                    let mut new = old.clone();
                    if new.policy.is_none() {
                        index::user(new.set_policy(only_root))?;
                        index::put_key(tx, Some(&old), &new)?;
                    }
                    Ok(())
                })
                .unwrap();
        }));
    };
    let reset = || async {
        registry
            .set_key_policy(
                &alice(),
                id_ref(&key),
                r#"{"Version":"1","Statement":[{"Effect":"Allow","Principal":{"RAM":["acs:ram::42:*"]},"Action":["kms:*"],"Resource":["*"]}]}"#.into(),
            )
            .await
            .unwrap();
        // Back to no document at all, so the hook applies again.
        store
            .inner
            .transaction::<_, DomainError>(|tx| {
                let old = index::get_key(tx, &key.id)?.unwrap();
                let mut new = old.clone();
                new.policy = None;
                index::put_key(tx, Some(&old), &new)?;
                Ok(())
            })
            .unwrap();
    };

    arm();
    assert_eq!(
        registry
            .disable_key(&user, id_ref(&key))
            .await
            .err()
            .map(|e| e.reason_code())
            .as_deref(),
        Some("Forbidden.NoPermission")
    );
    let now = registry.describe_key(&alice(), id_ref(&key)).await.unwrap();
    assert_eq!(now.state, KeyState::Enabled);

    reset().await;
    arm();
    assert_eq!(
        registry
            .tag_resources(&user, vec![id_ref(&key)], vec![tag("team", "x")])
            .await
            .err()
            .map(|e| e.reason_code())
            .as_deref(),
        Some("Forbidden.NoPermission")
    );
    reset().await;
    arm();
    assert_eq!(
        registry
            .update_alias(&user, "alias/app".into(), id_ref(&other))
            .await
            .err()
            .map(|e| e.reason_code())
            .as_deref(),
        Some("Forbidden.NoPermission")
    );
    let now = registry.describe_key(&alice(), id_ref(&key)).await.unwrap();
    assert!(now.tags.is_empty());
    assert_eq!(now.aliases, vec!["alias/app".to_string()]);

    // Unarmed, the same calls go through: the refusals above came from the change.
    reset().await;
    registry.disable_key(&user, id_ref(&key)).await.unwrap();
}

/// A policy document granting `account`'s principals `kms:Encrypt`.
fn granting(account: &str) -> String {
    format!(
        r#"{{"Version":"1","Statement":[{{"Effect":"Allow","Principal":{{"RAM":["acs:ram::{account}:*"]}},"Action":["kms:Encrypt"],"Resource":["*"]}}]}}"#
    )
}

impl World {
    /// Arms the store: just before the next transaction, someone else commits `policy` on
    /// `key`, as another replica (or a concurrent call) would between a call's checks and its
    /// write.
    fn grant_before_next_write(&self, key: &kms_types::KeyRecord, policy: String) {
        let id = key.id;
        *self.store.before_next.lock().unwrap() = Some(Box::new(move |inner: &MemoryStore| {
            inner
                .transaction::<_, DomainError>(|tx| {
                    let old = index::get_key(tx, &id)?.unwrap();
                    let mut new = old.clone();
                    index::user(new.set_policy(&policy))?;
                    index::put_key(tx, Some(&old), &new)?;
                    Ok(())
                })
                .unwrap();
        }));
    }

    /// The other accounts the instance's key policies and shares use now.
    fn accounts_in_use(
        &self,
        instance: &kms_types::InstanceId,
    ) -> std::collections::BTreeSet<String> {
        let record = index::load_instance(self.store.as_ref(), instance)
            .unwrap()
            .unwrap();
        let mut in_use = super::access::policy_grants(self.store.as_ref(), &record, None).unwrap();
        in_use.extend(record.shared_with.iter().map(ToString::to_string));
        in_use
    }
}

/// The access-management quota is decided in the transaction that writes: a grant committed
/// by someone else after a call read the instance's grants, and before its write, is counted.
#[tokio::test]
async fn the_access_quota_holds_against_grants_made_in_between() {
    let w = world();
    // Room for one other account.
    let inst = w.instance(InstanceType::Software, 10).await;
    let first = w.key(in_instance(&inst)).await;
    let second = w.key(in_instance(&inst)).await;
    let limit = |r: Result<kms_types::KeyRecord, DomainError>| {
        assert!(matches!(r, Err(DomainError::LimitExceeded(_))), "{r:?}");
    };

    // SetKeyPolicy on one key while another key's policy takes the last place.
    w.grant_before_next_write(&first, granting("200"));
    limit(
        w.registry
            .set_key_policy(&alice(), id_ref(&second), granting("300"))
            .await,
    );
    assert_eq!(w.accounts_in_use(&inst.id), ["200".to_string()].into());

    // CreateKey with a policy, likewise, from an instance whose policies grant no one.
    w.registry
        .set_key_policy(&alice(), id_ref(&first), granting("42"))
        .await
        .unwrap();
    assert!(w.accounts_in_use(&inst.id).is_empty());
    w.grant_before_next_write(&first, granting("201"));
    limit(
        w.registry
            .create_key(
                &alice(),
                NewKey {
                    policy: Some(granting("301")),
                    ..in_instance(&inst)
                },
            )
            .await,
    );
    assert_eq!(w.accounts_in_use(&inst.id), ["201".to_string()].into());

    // Sharing counts the accounts policies grant, and the one granted in between.
    w.grant_before_next_write(&first, granting("202"));
    let shared = w
        .registry
        .share_instance(
            &operator(),
            inst.id.clone(),
            AccountId::parse("302").unwrap(),
        )
        .await;
    assert!(
        matches!(shared, Err(DomainError::LimitExceeded(_))),
        "{shared:?}"
    );
    // An account a policy grants already takes no second place.
    w.registry
        .share_instance(
            &operator(),
            inst.id.clone(),
            AccountId::parse("202").unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(w.accounts_in_use(&inst.id), ["202".to_string()].into());

    // Lowering the quota counts a grant made in between.
    w.registry
        .update_instance(
            &operator(),
            inst.id.clone(),
            kms_types::QuotaChange {
                key_quota: None,
                access_management_quota: Some(2),
            },
        )
        .await
        .unwrap();
    w.registry
        .set_key_policy(&alice(), id_ref(&second), granting("303"))
        .await
        .unwrap();
    w.grant_before_next_write(&first, granting("203"));
    let lowered = w
        .registry
        .update_instance(
            &operator(),
            inst.id.clone(),
            kms_types::QuotaChange {
                key_quota: None,
                access_management_quota: Some(2),
            },
        )
        .await;
    // {202 shared, 303, 203} is three accounts: the quota of 2 no longer holds them. (The
    // grant in between went past the quota itself: it was written directly, as a replica
    // without the check would.)
    assert_eq!(
        lowered.err().map(|e| e.reason_code()).as_deref(),
        Some("InvalidParameter.AccessManagementQuota")
    );
}

/// The key quota and alias uniqueness are decided in the transaction that writes, too.
#[tokio::test]
async fn the_key_quota_and_alias_uniqueness_hold_against_writes_made_in_between() {
    let w = world();
    let inst = w.instance(InstanceType::Software, 2).await;
    let first = w.key(in_instance(&inst)).await;
    // Someone else takes the last place in the instance just before our write.
    let template = first.clone();
    let instance = inst.id.clone();
    *w.store.before_next.lock().unwrap() = Some(Box::new(move |inner: &MemoryStore| {
        inner
            .transaction::<_, DomainError>(|tx| {
                let mut other = template.clone();
                other.id = kms_types::KeyId::generate();
                other.primary_version = kms_types::KeyVersionId::generate();
                other.versions.clear();
                other.instance = Some(instance.clone());
                index::put_key(tx, None, &other)?;
                Ok(())
            })
            .unwrap();
    }));
    let full = w.registry.create_key(&alice(), in_instance(&inst)).await;
    assert!(
        matches!(full, Err(DomainError::LimitExceeded(_))),
        "{full:?}"
    );
    let record = index::load_instance(w.store.as_ref(), &inst.id)
        .unwrap()
        .unwrap();
    assert_eq!(record.key_count, 2);

    // An alias taken just before our write.
    let other = w.key(NewKey::default()).await;
    let taker = first.clone();
    *w.store.before_next.lock().unwrap() = Some(Box::new(move |inner: &MemoryStore| {
        inner
            .transaction::<_, DomainError>(|tx| {
                let old = index::get_key(tx, &taker.id)?.unwrap();
                let mut new = old.clone();
                index::user(new.add_alias("alias/race"))?;
                index::put_key(tx, Some(&old), &new)?;
                Ok(())
            })
            .unwrap();
    }));
    assert_eq!(
        w.registry
            .create_alias(&alice(), "alias/race".into(), id_ref(&other))
            .await
            .err(),
        Some(DomainError::AliasExists)
    );
    let now = w
        .registry
        .describe_key(&alice(), id_ref(&other))
        .await
        .unwrap();
    assert!(now.aliases.is_empty());
}
