//! The etcd engine against a real etcd (Debian's `etcd-server`, see `scripts/ensure-deps.sh`):
//! the conformance suite, and what only a store several processes share can show — commits and
//! claims seen across stores, conflict retry, commit limits, a watch that survives a restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kms_store::etcd_testing::{EtcdCluster, EtcdProcess};
use kms_store::{EtcdOptions, EtcdStore, Store, StoreError, TxError, abort, conformance};

/// Bound on waiting for a notification, a lease to lapse, or etcd to come back.
const WITHIN: Duration = Duration::from_secs(30);

/// A prefix no other store in this test binary uses.
fn fresh_prefix() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "test-{}-{nanos}-{}/",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn connect(etcd: &EtcdProcess, prefix: &str) -> EtcdStore {
    EtcdStore::connect(EtcdOptions::new(vec![etcd.endpoint()], prefix)).unwrap()
}

/// A subscription to `prefix` of `store` and the receiver of its notifications.
fn subscribe(store: &EtcdStore, prefix: &[u8]) -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    store
        .subscribe(
            prefix,
            Arc::new(move || {
                let _ = tx.lock().map(|tx| tx.send(()));
            }),
        )
        .unwrap();
    rx
}

/// Drops the notifications delivered so far.
fn drain(rx: &mpsc::Receiver<()>) {
    while rx.try_recv().is_ok() {}
}

/// Waits for a notification, and for more until `store` shows `value` under `key`: at least
/// one must arrive, however soon the value shows.
fn await_value(rx: &mpsc::Receiver<()>, store: &EtcdStore, key: &[u8], value: &[u8]) {
    let deadline = Instant::now() + WITHIN;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            rx.recv_timeout(left).is_ok(),
            "no notification showing {value:?} under {key:?} within {WITHIN:?}"
        );
        if store.get(key).unwrap().as_deref() == Some(value) {
            return;
        }
    }
}

fn read_counter(bytes: Option<Vec<u8>>) -> u64 {
    bytes.map_or(0, |b| u64::from_be_bytes(b.try_into().unwrap()))
}

#[test]
fn etcd_store_conforms() {
    let etcd = EtcdProcess::start();
    conformance::run_all(&|| connect(&etcd, &fresh_prefix()));
}

#[test]
fn stores_with_different_prefixes_do_not_see_each_other() {
    let etcd = EtcdProcess::start();
    let a = connect(&etcd, "a/");
    let b = connect(&etcd, "b/");
    a.put(b"k", b"from a").unwrap();
    b.put(b"k", b"from b").unwrap();
    b.put(b"only-b", b"x").unwrap();

    assert_eq!(a.get(b"k").unwrap(), Some(b"from a".to_vec()));
    assert_eq!(b.get(b"k").unwrap(), Some(b"from b".to_vec()));
    assert_eq!(a.get(b"only-b").unwrap(), None);
    assert_eq!(
        a.scan_prefix(b"", None, 10).unwrap(),
        vec![(b"k".to_vec(), b"from a".to_vec())]
    );
    let b_keys: Vec<Vec<u8>> = b
        .scan_prefix(b"", None, 10)
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(b_keys, vec![b"k".to_vec(), b"only-b".to_vec()]);

    a.delete(b"k").unwrap();
    assert_eq!(b.get(b"k").unwrap(), Some(b"from b".to_vec()));
}

#[test]
fn two_stores_share_commits_claims_and_fences() {
    let etcd = EtcdProcess::start();
    let prefix = fresh_prefix();
    let a = connect(&etcd, &prefix);
    let b = connect(&etcd, &prefix);

    // A commit through one store notifies the other's subscriber.
    let rx = subscribe(&b, b"feed/");
    a.put(b"feed/n", b"1").unwrap();
    await_value(&rx, &b, b"feed/n", b"1");

    // A claims; B cannot while A renews.
    let ttl = Duration::from_secs(2);
    assert!(a.lead(b"leader", b"A", ttl).unwrap());
    assert!(!b.lead(b"leader", b"B", ttl).unwrap());
    // A renews for more than twice the ttl: the claim stays A's all along (B tries first after
    // each pause, so a lapse would hand it to B).
    let until = Instant::now() + 2 * ttl + Duration::from_secs(1);
    while Instant::now() < until {
        std::thread::sleep(ttl / 4);
        assert!(!b.lead(b"leader", b"B", ttl).unwrap(), "A's claim lapsed");
        assert!(a.lead(b"leader", b"A", ttl).unwrap(), "renewal");
    }
    assert_eq!(b.get(b"leader").unwrap(), Some(b"A".to_vec()));

    // A transaction fenced on A's claim that read it before the claim moved conflicts, runs
    // again, sees the new holder and aborts: its write never lands.
    let c = connect(&etcd, &prefix);
    let attempts = AtomicUsize::new(0);
    let fenced = a.transaction::<(), &str>(|txn| {
        if txn.get(b"leader")?.as_deref() != Some(&b"A"[..]) {
            return abort("not the leader");
        }
        if attempts.fetch_add(1, Ordering::Relaxed) == 0 {
            // The claim moves between this read and the commit.
            c.put(b"leader", b"X").unwrap();
        }
        txn.put(b"fenced", b"by A")?;
        Ok(())
    });
    assert!(
        matches!(fenced, Err(TxError::Aborted("not the leader"))),
        "{fenced:?}"
    );
    assert_eq!(attempts.load(Ordering::Relaxed), 1);
    assert_eq!(b.get(b"fenced").unwrap(), None);
    // Give the claim back to A under its lease.
    c.put(b"leader", b"A").unwrap();
    assert!(a.lead(b"leader", b"A", ttl).unwrap());

    // A stops renewing (its store goes away without revoking); B gets the claim once the
    // lease lapses.
    drop(a);
    let deadline = Instant::now() + WITHIN;
    while !b.lead(b"leader", b"B", ttl).unwrap() {
        assert!(
            Instant::now() < deadline,
            "B did not get the claim within {WITHIN:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(c.get(b"leader").unwrap(), Some(b"B".to_vec()));
    assert!(b.lead(b"leader", b"B", ttl).unwrap(), "B renews");

    // A transaction fenced on A's claim now aborts.
    let late = c.transaction::<(), &str>(|txn| {
        if txn.get(b"leader")?.as_deref() != Some(&b"A"[..]) {
            return abort("not the leader");
        }
        txn.put(b"fenced", b"by A")?;
        Ok(())
    });
    assert!(
        matches!(late, Err(TxError::Aborted("not the leader"))),
        "{late:?}"
    );
    assert_eq!(c.get(b"fenced").unwrap(), None);
}

#[test]
fn concurrent_increments_through_two_stores_lose_nothing() {
    const THREADS_PER_STORE: u64 = 3;
    const ITERATIONS: u64 = 40;
    let etcd = EtcdProcess::start();
    let prefix = fresh_prefix();
    let stores = [connect(&etcd, &prefix), connect(&etcd, &prefix)];
    std::thread::scope(|scope| {
        for store in &stores {
            for _ in 0..THREADS_PER_STORE {
                scope.spawn(move || {
                    for _ in 0..ITERATIONS {
                        store
                            .transaction::<_, ()>(|txn| {
                                let n = read_counter(txn.get(b"counter")?);
                                txn.put(b"counter", &(n + 1).to_be_bytes())?;
                                Ok(())
                            })
                            .unwrap();
                    }
                });
            }
        }
    });
    let total = read_counter(stores[1].get(b"counter").unwrap());
    assert_eq!(total, 2 * THREADS_PER_STORE * ITERATIONS, "lost updates");
}

#[test]
fn commits_over_etcd_limits_are_refused_and_write_nothing() {
    let etcd = EtcdProcess::start();
    let mut options = EtcdOptions::new(vec![etcd.endpoint()], fresh_prefix());
    options.max_txn_ops = 4;
    let store = EtcdStore::connect(options).unwrap();

    // Two reads and three writes: five operations, over four.
    let result = store.transaction::<(), ()>(|txn| {
        txn.get(b"r/1")?;
        txn.get(b"r/2")?;
        for i in 0..3 {
            txn.put(format!("w/{i}").as_bytes(), b"x")?;
        }
        Ok(())
    });
    match result {
        Err(TxError::Store(StoreError::Internal(m))) => {
            assert!(m.contains('5') && m.contains('4'), "{m}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(store.scan_prefix(b"", None, 10).unwrap().is_empty());

    // Within the limit, the same shape commits.
    store
        .transaction::<(), ()>(|txn| {
            txn.get(b"r/1")?;
            txn.put(b"w/0", b"x")?;
            Ok(())
        })
        .unwrap();

    // A value over etcd's request size is refused before it is sent.
    let big = vec![7u8; 2 * 1024 * 1024];
    let result = store.put(b"big", &big);
    assert!(
        matches!(&result, Err(StoreError::Internal(m)) if m.contains("bytes")),
        "{result:?}"
    );
    assert_eq!(store.get(b"big").unwrap(), None);
}

#[test]
fn the_watch_resumes_after_etcd_restarts() {
    let mut etcd = EtcdProcess::start();
    let store = connect(&etcd, &fresh_prefix());
    let rx = subscribe(&store, b"feed/");
    store.put(b"feed/n", b"before").unwrap();
    await_value(&rx, &store, b"feed/n", b"before");

    etcd.kill();
    etcd.restart();
    drain(&rx);

    // The first requests may fail while the client reconnects.
    let deadline = Instant::now() + WITHIN;
    loop {
        match store.put(b"feed/n", b"after") {
            Ok(()) => break,
            Err(StoreError::Unavailable(e)) => {
                assert!(Instant::now() < deadline, "etcd did not come back: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("unexpected error after restart: {e:?}"),
        }
    }
    await_value(&rx, &store, b"feed/n", b"after");
    drain(&rx);
    store.put(b"feed/n", b"later").unwrap();
    await_value(&rx, &store, b"feed/n", b"later");
}

#[test]
fn a_cluster_survives_the_loss_of_its_leader() {
    let mut cluster = EtcdCluster::start(3);
    let prefix = fresh_prefix();
    let store = EtcdStore::connect(EtcdOptions::new(cluster.endpoints(), prefix.clone())).unwrap();
    store.put(b"k", b"before").unwrap();

    let leader = cluster.leader_index().expect("a leader");
    cluster.kill(leader);

    // The remaining two members elect a new leader; until then requests may fail.
    let deadline = Instant::now() + WITHIN;
    loop {
        match store.put(b"k", b"after") {
            Ok(()) => break,
            Err(StoreError::Unavailable(e)) => {
                assert!(Instant::now() < deadline, "no quorum again: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("unexpected error: {e:?}"),
        }
    }
    let new_leader = cluster.leader_index().expect("a new leader");
    assert_ne!(new_leader, leader);
    // A store connects although one of its endpoints is dead.
    let other = EtcdStore::connect(EtcdOptions::new(cluster.endpoints(), prefix.clone())).unwrap();
    assert_eq!(other.get(b"k").unwrap(), Some(b"after".to_vec()));
    // Once there is a leader, reads and writes go through although one endpoint is dead.
    for i in 0..20u8 {
        store.put(b"k", &[i]).unwrap();
        assert_eq!(store.get(b"k").unwrap(), Some(vec![i]));
    }
}

#[test]
fn the_store_works_and_drops_inside_an_async_runtime() {
    let etcd = EtcdProcess::start();
    let prefix = fresh_prefix();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Called, and dropped, on a runtime's own thread: waiting for the store's runtime must not
    // panic, and neither may shutting it down.
    runtime.block_on(async {
        let store = connect(&etcd, &prefix);
        store.put(b"k", b"v").unwrap();
        assert_eq!(store.get(b"k").unwrap(), Some(b"v".to_vec()));
        drop(store);
    });
    // And from a blocking thread of a multi-thread runtime, the way servers call it.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let store = Arc::new(connect(&etcd, &prefix));
    let shared = store.clone();
    let read = runtime
        .block_on(runtime.spawn_blocking(move || shared.get(b"k")))
        .unwrap()
        .unwrap();
    assert_eq!(read, Some(b"v".to_vec()));
    runtime.block_on(async move { drop(store) });
}

#[test]
fn credentials_are_checked_and_scope_the_store() {
    let etcd = EtcdProcess::start();
    let prefix = fresh_prefix();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut admin = etcd_client::Client::connect([etcd.endpoint()], None)
            .await
            .unwrap();
        admin.user_add("root", "root-pw", None).await.unwrap();
        admin.user_grant_role("root", "root").await.unwrap();
        admin.user_add("kms", "kms-pw", None).await.unwrap();
        admin.role_add("kms").await.unwrap();
        let permission = etcd_client::Permission::read_write(prefix.as_bytes()).with_prefix();
        admin
            .role_grant_permission("kms", permission)
            .await
            .unwrap();
        admin.user_grant_role("kms", "kms").await.unwrap();
        admin.auth_enable().await.unwrap();
    });

    let with_user = |prefix: &str, password: &str| {
        let mut options = EtcdOptions::new(vec![etcd.endpoint()], prefix);
        options.user = Some(("kms".to_owned(), password.to_owned()));
        EtcdStore::connect(options)
    };
    let store = with_user(&prefix, "kms-pw").unwrap();
    store.put(b"k", b"v").unwrap();
    assert_eq!(store.get(b"k").unwrap(), Some(b"v".to_vec()));
    assert!(
        store
            .lead(b"leader", b"me", Duration::from_secs(5))
            .unwrap()
    );

    let refused = with_user(&prefix, "wrong-pw");
    match &refused {
        Err(StoreError::Internal(m)) => assert!(!m.contains("wrong-pw"), "{m}"),
        other => panic!("expected refused credentials, got {other:?}"),
    }
    // The user may not read outside its prefix.
    let outside = with_user("elsewhere/", "kms-pw");
    assert!(
        matches!(outside, Err(StoreError::Internal(_))),
        "{outside:?}"
    );
}

#[test]
fn the_watch_restarts_when_its_resume_revision_was_compacted() {
    let mut cluster = EtcdCluster::start(3);
    let endpoints = cluster.endpoints();
    let prefix = fresh_prefix();
    // The store talks to one follower only, so its watch breaks while the others go on.
    let leader = cluster.leader_index().expect("a leader");
    let follower = (leader + 1) % endpoints.len();
    let others: Vec<String> = (0..endpoints.len())
        .filter(|&i| i != follower)
        .map(|i| endpoints[i].clone())
        .collect();
    let only_follower = vec![endpoints[follower].clone()];
    let store = EtcdStore::connect(EtcdOptions::new(only_follower, prefix.clone())).unwrap();
    let rx = subscribe(&store, b"feed/");
    store.put(b"feed/n", b"before").unwrap();
    await_value(&rx, &store, b"feed/n", b"before");

    cluster.kill(follower);
    // The other members commit under the prefix and compact past everything the watch saw.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut client = etcd_client::Client::connect(&others, None).await.unwrap();
        let key = format!("{prefix}feed/n");
        client.put(key.as_str(), "missed", None).await.unwrap();
        let revision = client
            .put(key.as_str(), "missed again", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
        let physical = etcd_client::CompactionOptions::new().with_physical();
        client.compact(revision, Some(physical)).await.unwrap();
    });
    cluster.restart(follower);

    // The watch cannot resume where it stopped: it restarts from the current revision, and
    // notifies, so the subscriber reads what it missed.
    await_value(&rx, &store, b"feed/n", b"missed again");
    // Once restarted the watch is quiet (one that kept resuming at the compacted revision
    // would be cancelled and notify again, at least every 2 s), and later commits notify.
    std::thread::sleep(Duration::from_millis(500));
    drain(&rx);
    assert!(
        rx.recv_timeout(Duration::from_secs(3)).is_err(),
        "the watch keeps restarting"
    );
    store.put(b"feed/n", b"later").unwrap();
    await_value(&rx, &store, b"feed/n", b"later");
}

#[test]
fn a_snapshot_whose_revision_is_compacted_away_fails_as_unavailable() {
    let etcd = EtcdProcess::start();
    let prefix = fresh_prefix();
    let store = connect(&etcd, &prefix);
    // More entries than one page, so reading on needs the snapshot's revision.
    for chunk in 0..4 {
        store
            .transaction::<_, ()>(|txn| {
                for i in 0..50 {
                    txn.put(format!("s/{chunk}-{i:02}").as_bytes(), b"v")?;
                }
                Ok(())
            })
            .unwrap();
    }
    let mut snapshot = store.snapshot().unwrap();
    assert!(snapshot.next().unwrap().is_ok());

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut client = etcd_client::Client::connect([etcd.endpoint()], None)
            .await
            .unwrap();
        let revision = client
            .put(format!("{prefix}s/later"), "x", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
        let physical = etcd_client::CompactionOptions::new().with_physical();
        client.compact(revision, Some(physical)).await.unwrap();
    });

    let rest: Vec<_> = snapshot.collect();
    let failed = rest
        .iter()
        .position(Result::is_err)
        .expect("reading on fails");
    assert_eq!(failed, rest.len() - 1, "nothing follows the error");
    let Some(Err(e)) = rest.last() else {
        unreachable!()
    };
    assert!(
        matches!(e, StoreError::Unavailable(m) if m.contains("compacted") && m.contains("again")),
        "{e:?}"
    );
    // Taken again, it reads the store as it is now.
    let again: Vec<_> = store.snapshot().unwrap().map(Result::unwrap).collect();
    assert_eq!(again.len(), 201);
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files in `dir`:
/// (ca, server cert, server key, client cert, client key).
fn tls_files(dir: &std::path::Path) -> [std::path::PathBuf; 5] {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf = |sans: Vec<SanType>| {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = sans;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let server = leaf(vec![SanType::IpAddress(
        std::net::Ipv4Addr::LOCALHOST.into(),
    )]);
    let client = leaf(vec![SanType::DnsName("kms".try_into().unwrap())]);
    let files = [
        ("ca.pem", ca_cert.pem()),
        ("server.pem", server.0),
        ("server-key.pem", server.1),
        ("client.pem", client.0),
        ("client-key.pem", client.1),
    ];
    files.map(|(name, pem)| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    })
}

/// Over TLS with a client certificate the store works; without the certificate, or without
/// trusting the member's CA, it cannot connect.
#[test]
fn tls_with_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let [ca, cert, key, client_cert, client_key] = tls_files(dir.path());
    let etcd = EtcdProcess::start_tls(&ca, &cert, &key);
    assert!(etcd.endpoint().starts_with("https://"));
    let options = |tls: Option<kms_store::EtcdTls>| {
        let mut o = EtcdOptions::new(vec![etcd.endpoint()], fresh_prefix());
        o.tls = tls;
        o.connect_timeout = Duration::from_secs(3);
        o
    };
    let store = EtcdStore::connect(options(Some(kms_store::EtcdTls {
        ca_file: ca.clone(),
        cert_file: Some(client_cert.clone()),
        key_file: Some(client_key.clone()),
    })))
    .unwrap();
    store.put(b"k", b"over tls").unwrap();
    assert_eq!(store.get(b"k").unwrap(), Some(b"over tls".to_vec()));

    let no_client_cert = EtcdStore::connect(options(Some(kms_store::EtcdTls {
        ca_file: ca.clone(),
        cert_file: None,
        key_file: None,
    })))
    .and_then(|s| s.get(b"k"));
    assert!(
        no_client_cert.is_err(),
        "a client without a certificate was let in"
    );

    let plain = EtcdStore::connect(options(None)).and_then(|s| s.get(b"k"));
    assert!(plain.is_err(), "a plaintext client was answered");
}
