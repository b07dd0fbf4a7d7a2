//! The conformance suite every [`Store`] engine must pass.
//!
//! Call [`run_all`] from an engine's tests with a function that makes a fresh, empty store. Each
//! property is also a public function taking an empty store, so a failing one can be run alone.
//! Failures panic with a message naming the property.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use crate::{Abort, CommitQueue, Entry, Store, StoreError, TxError, Txn, abort};

/// How long a notification may take to arrive; a replicated engine's feed is asynchronous.
const NOTIFY_WITHIN: Duration = Duration::from_secs(10);

/// Runs every property, each on a fresh store from `make`.
pub fn run_all<S: Store>(make: &dyn Fn() -> S) {
    get_put_delete(&make());
    scan_prefix_orders_by_key(&make());
    scan_prefix_isolates_prefixes(&make());
    scan_prefix_pages_with_after_and_limit(&make());
    transaction_commits_all_writes(&make());
    aborted_transaction_leaves_nothing_behind(&make());
    store_error_in_transaction_leaves_nothing_behind(&make());
    transaction_reads_its_own_writes(&make());
    abort_value_comes_back(&make());
    concurrent_transactions_are_serializable(&make());
    durable_commits_are_serializable_and_flushed_before_they_answer(make());
    flush_succeeds(&make());
    subscribe_notifies_commits_under_its_prefix(&make());
    lead_claims_and_fences(&make());
    snapshot_reads_every_entry_in_key_order(&make());
    snapshot_is_unaffected_by_later_commits(&make());
    snapshot_sees_whole_commits_only(&make());
}

/// Unwraps `result`, panicking with `what` and the error (the suite is a test harness).
#[track_caller]
fn ok<T, E: Debug>(result: Result<T, E>, what: &str) -> T {
    match result {
        Ok(value) => value,
        Err(e) => panic!("{what}: unexpected error {e:?}"),
    }
}

fn put_all<S: Store>(store: &S, entries: &[(&[u8], &[u8])]) {
    let committed = store.transaction::<_, ()>(|txn| {
        for (k, v) in entries {
            txn.put(k, v)?;
        }
        Ok(())
    });
    ok(committed, "seeding entries");
}

fn keys_of(entries: &[Entry]) -> Vec<&[u8]> {
    entries.iter().map(|(k, _)| k.as_slice()).collect()
}

fn read_counter(bytes: Option<Vec<u8>>) -> u64 {
    match bytes {
        None => 0,
        Some(bytes) => match <[u8; 8]>::try_from(bytes.as_slice()) {
            Ok(raw) => u64::from_be_bytes(raw),
            Err(_) => panic!("counter holds {} bytes, not 8", bytes.len()),
        },
    }
}

/// Missing keys read as `None`; put, overwrite, delete and the empty value behave.
pub fn get_put_delete<S: Store>(store: &S) {
    assert_eq!(ok(store.get(b"k"), "get missing"), None);

    ok(store.put(b"k", b"v1"), "put");
    assert_eq!(ok(store.get(b"k"), "get"), Some(b"v1".to_vec()));

    ok(store.put(b"k", b"v2"), "overwrite");
    assert_eq!(ok(store.get(b"k"), "get overwritten"), Some(b"v2".to_vec()));

    ok(store.put(b"empty", b""), "put empty value");
    assert_eq!(
        ok(store.get(b"empty"), "get empty value"),
        Some(Vec::new()),
        "an empty value is not an absent one"
    );

    ok(store.delete(b"k"), "delete");
    assert_eq!(ok(store.get(b"k"), "get deleted"), None);
    ok(store.delete(b"k"), "delete missing is a no-op");
    assert_eq!(
        ok(store.get(b"empty"), "other key untouched"),
        Some(Vec::new())
    );

    let binary_key = [0x00, 0xff, b'/', 0x80];
    ok(store.put(&binary_key, &[0xff, 0x00]), "put binary");
    assert_eq!(
        ok(store.get(&binary_key), "get binary"),
        Some(vec![0xff, 0x00])
    );
}

/// Entries come back in ascending byte order of key, whatever the insertion order.
pub fn scan_prefix_orders_by_key<S: Store>(store: &S) {
    put_all(
        store,
        &[
            (b"p/c", b"3"),
            (b"p/a", b"1"),
            (b"p/\xff", b"5"),
            (b"p/b", b"2"),
            (b"p/ab", b"4"),
            (b"p/\x00", b"0"),
        ],
    );
    let got = ok(store.scan_prefix(b"p/", None, 100), "scan");
    assert_eq!(
        keys_of(&got),
        vec![&b"p/\x00"[..], b"p/a", b"p/ab", b"p/b", b"p/c", b"p/\xff"]
    );
    assert_eq!(
        got[1],
        (b"p/a".to_vec(), b"1".to_vec()),
        "values travel with keys"
    );
}

/// A prefix matches only keys that start with it: `a/` excludes `ab/...` and `a` itself.
pub fn scan_prefix_isolates_prefixes<S: Store>(store: &S) {
    put_all(
        store,
        &[
            (b"a", b"bare"),
            (b"a/1", b"x"),
            (b"a/2", b"x"),
            (b"ab/1", b"y"),
            (b"a0", b"z"),
            (b"`", b"before"),
            (b"b/1", b"after"),
        ],
    );
    let a = ok(store.scan_prefix(b"a/", None, 100), "scan a/");
    assert_eq!(keys_of(&a), vec![&b"a/1"[..], b"a/2"]);

    let ab = ok(store.scan_prefix(b"ab/", None, 100), "scan ab/");
    assert_eq!(keys_of(&ab), vec![&b"ab/1"[..]]);

    let bare = ok(store.scan_prefix(b"a", None, 100), "scan a");
    assert_eq!(
        keys_of(&bare),
        vec![&b"a"[..], b"a/1", b"a/2", b"a0", b"ab/1"]
    );

    let none = ok(store.scan_prefix(b"c/", None, 100), "scan absent prefix");
    assert!(none.is_empty(), "absent prefix returned {none:?}");

    let all = ok(store.scan_prefix(b"", None, 100), "scan empty prefix");
    assert_eq!(all.len(), 7, "the empty prefix matches every key");
}

/// `after` is exclusive, need not be a stored key, and paging with `limit` visits every entry
/// exactly once.
pub fn scan_prefix_pages_with_after_and_limit<S: Store>(store: &S) {
    let keys: Vec<Vec<u8>> = (0..10u8)
        .map(|i| format!("i/{i:02}").into_bytes())
        .collect();
    let entries: Vec<(&[u8], &[u8])> = keys.iter().map(|k| (k.as_slice(), &b"v"[..])).collect();
    put_all(store, &entries);
    put_all(store, &[(b"h/99", b"before"), (b"j/00", b"after")]);

    let first = ok(store.scan_prefix(b"i/", None, 3), "first page");
    assert_eq!(keys_of(&first), vec![&b"i/00"[..], b"i/01", b"i/02"]);

    let next = ok(
        store.scan_prefix(b"i/", Some(b"i/02"), 3),
        "after a stored key",
    );
    assert_eq!(keys_of(&next), vec![&b"i/03"[..], b"i/04", b"i/05"]);

    let between = ok(
        store.scan_prefix(b"i/", Some(b"i/045"), 2),
        "after a missing key",
    );
    assert_eq!(keys_of(&between), vec![&b"i/05"[..], b"i/06"]);

    let before_prefix = ok(
        store.scan_prefix(b"i/", Some(b"h/99"), 2),
        "after below prefix",
    );
    assert_eq!(keys_of(&before_prefix), vec![&b"i/00"[..], b"i/01"]);

    let past_end = ok(
        store.scan_prefix(b"i/", Some(b"i/09"), 5),
        "after the last key",
    );
    assert!(past_end.is_empty(), "past the end returned {past_end:?}");

    let beyond = ok(
        store.scan_prefix(b"i/", Some(b"j/"), 5),
        "after beyond the prefix",
    );
    assert!(beyond.is_empty(), "beyond the prefix returned {beyond:?}");

    let zero = ok(store.scan_prefix(b"i/", None, 0), "limit 0");
    assert!(zero.is_empty(), "limit 0 returned {zero:?}");

    let mut seen = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = ok(store.scan_prefix(b"i/", after.as_deref(), 4), "paging");
        assert!(page.len() <= 4, "page of {} exceeds limit 4", page.len());
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        seen.extend(page.into_iter().map(|(k, _)| k));
    }
    assert_eq!(seen, keys, "paging visits every key once, in order");
}

/// A committed transaction's writes are all visible, and its value is returned.
pub fn transaction_commits_all_writes<S: Store>(store: &S) {
    ok(store.put(b"gone", b"x"), "seed");
    let out = store.transaction::<_, ()>(|txn| {
        txn.put(b"key/1", b"record")?;
        txn.put(b"alias/acct/name", b"key/1")?;
        txn.delete(b"gone")?;
        Ok(42)
    });
    assert_eq!(ok(out, "commit"), 42);
    assert_eq!(ok(store.get(b"key/1"), "get"), Some(b"record".to_vec()));
    assert_eq!(
        ok(store.get(b"alias/acct/name"), "get"),
        Some(b"key/1".to_vec())
    );
    assert_eq!(ok(store.get(b"gone"), "get deleted"), None);
}

/// An aborted transaction leaves no trace: no puts, no deletes, no overwrites.
pub fn aborted_transaction_leaves_nothing_behind<S: Store>(store: &S) {
    put_all(store, &[(b"keep", b"original"), (b"doomed", b"still here")]);
    let result = store.transaction::<(), &str>(|txn| {
        txn.put(b"new", b"x")?;
        txn.put(b"keep", b"changed")?;
        txn.delete(b"doomed")?;
        abort("no")
    });
    assert!(matches!(result, Err(TxError::Aborted("no"))), "{result:?}");
    assert_state_untouched(store);
}

/// A store error returned from the body (e.g. a corrupt record found while reading) rolls back
/// and comes back as `TxError::Store`.
pub fn store_error_in_transaction_leaves_nothing_behind<S: Store>(store: &S) {
    put_all(store, &[(b"keep", b"original"), (b"doomed", b"still here")]);
    let result = store.transaction::<(), ()>(|txn| {
        txn.put(b"new", b"x")?;
        txn.put(b"keep", b"changed")?;
        txn.delete(b"doomed")?;
        Err(Abort::from(StoreError::Corrupt("found in body".to_owned())))
    });
    assert!(
        matches!(&result, Err(TxError::Store(StoreError::Corrupt(m))) if m == "found in body"),
        "{result:?}"
    );
    assert_state_untouched(store);
}

fn assert_state_untouched<S: Store>(store: &S) {
    assert_eq!(ok(store.get(b"new"), "get"), None, "aborted put leaked");
    assert_eq!(
        ok(store.get(b"keep"), "get"),
        Some(b"original".to_vec()),
        "aborted overwrite leaked"
    );
    assert_eq!(
        ok(store.get(b"doomed"), "get"),
        Some(b"still here".to_vec()),
        "aborted delete leaked"
    );
    let all = ok(store.scan_prefix(b"", None, 100), "scan");
    assert_eq!(keys_of(&all), vec![&b"doomed"[..], b"keep"]);
}

/// Reads inside a transaction see its own puts and deletes, in order.
pub fn transaction_reads_its_own_writes<S: Store>(store: &S) {
    put_all(store, &[(b"existing", b"old")]);
    let out = store.transaction::<_, ()>(|txn| {
        let mut seen = Vec::new();
        seen.push(txn.get(b"fresh")?);
        txn.put(b"fresh", b"1")?;
        seen.push(txn.get(b"fresh")?);
        txn.put(b"fresh", b"2")?;
        seen.push(txn.get(b"fresh")?);
        seen.push(txn.get(b"existing")?);
        txn.delete(b"existing")?;
        seen.push(txn.get(b"existing")?);
        txn.put(b"existing", b"new")?;
        seen.push(txn.get(b"existing")?);
        Ok(seen)
    });
    let expected: Vec<Option<Vec<u8>>> = vec![
        None,
        Some(b"1".to_vec()),
        Some(b"2".to_vec()),
        Some(b"old".to_vec()),
        None,
        Some(b"new".to_vec()),
    ];
    assert_eq!(ok(out, "commit"), expected);
    assert_eq!(ok(store.get(b"fresh"), "get"), Some(b"2".to_vec()));
    assert_eq!(ok(store.get(b"existing"), "get"), Some(b"new".to_vec()));
}

/// The value passed to `abort` comes back unchanged, after a read decided to abort.
pub fn abort_value_comes_back<S: Store>(store: &S) {
    #[derive(Debug, PartialEq)]
    struct NotFound(String);

    let result = store.transaction::<(), _>(|txn| match txn.get(b"key/missing")? {
        Some(_) => Ok(()),
        None => abort(NotFound("key/missing".to_owned())),
    });
    match result {
        Err(TxError::Aborted(e)) => assert_eq!(e, NotFound("key/missing".to_owned())),
        other => panic!("expected the abort value back, got {other:?}"),
    }
}

/// Read-modify-write transactions on one counter from many threads lose no update.
pub fn concurrent_transactions_are_serializable<S: Store>(store: &S) {
    const THREADS: u64 = 8;
    const ITERATIONS: u64 = 200;
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            scope.spawn(move || {
                let mine = format!("thread/{thread}").into_bytes();
                for _ in 0..ITERATIONS {
                    let committed = store.transaction::<_, ()>(|txn| {
                        let n = read_counter(txn.get(b"counter")?);
                        txn.put(b"counter", &(n + 1).to_be_bytes())?;
                        let m = read_counter(txn.get(&mine)?);
                        txn.put(&mine, &(m + 1).to_be_bytes())?;
                        Ok(())
                    });
                    ok(committed, "increment");
                }
            });
        }
    });
    let total = read_counter(ok(store.get(b"counter"), "get counter"));
    assert_eq!(total, THREADS * ITERATIONS, "lost updates");
    for thread in 0..THREADS {
        let mine = read_counter(ok(store.get(format!("thread/{thread}").as_bytes()), "get"));
        assert_eq!(mine, ITERATIONS, "thread {thread} lost updates");
    }
}

/// Writer `n`'s own counter, in the queue property.
fn writer(n: u64) -> String {
    format!("writer/{n}")
}

/// Whether the queue property's `i`th body of a writer aborts: every fifth.
fn refuses(i: u64) -> bool {
    i % 5 == 4
}

/// The queue property's `i`th body of `writer`: counts itself in `counter` and, unless it
/// aborts (after writing, [`refuses`]), in the writer's own counter; returns both counts.
fn counting_body(
    i: u64,
    writer: &str,
) -> impl Fn(&mut dyn Txn) -> Result<(u64, u64), Abort<u64>> + Send + 'static {
    let mine = writer.as_bytes().to_vec();
    move |txn| {
        let n = read_counter(txn.get(b"counter")?) + 1;
        txn.put(b"counter", &n.to_be_bytes())?;
        if refuses(i) {
            txn.put(b"refused", b"x")?;
            return abort(i);
        }
        let m = read_counter(txn.get(&mine)?) + 1;
        txn.put(&mine, &m.to_be_bytes())?;
        Ok((m, n))
    }
}

/// After `writers` ran `iterations` [`counting_body`]s each: no update lost, none of an
/// aborted body landed.
fn check_counted<S: Store>(store: &S, writers: u64, iterations: u64) {
    let committed_each = iterations - iterations / 5;
    let total = read_counter(ok(store.get(b"counter"), "get counter"));
    assert_eq!(
        total,
        writers * committed_each,
        "lost or aborted updates counted"
    );
    for n in 0..writers {
        let mine = read_counter(ok(store.get(writer(n).as_bytes()), "get"));
        assert_eq!(mine, committed_each, "writer {n} lost updates");
    }
    assert_eq!(
        ok(store.get(b"refused"), "get"),
        None,
        "an aborted body's write landed"
    );
}

/// [`CommitQueue::commit_durable`] from many tasks at once: bodies stay serializable, an
/// aborted body leaves nothing, and every `Ok` comes after a `durable` call that saw its
/// commit. Takes the store by value: the queue's runner needs it shared.
pub fn durable_commits_are_serializable_and_flushed_before_they_answer<S: Store>(store: S) {
    const TASKS: u64 = 8;
    const ITERATIONS: u64 = 50;
    let store = Arc::new(store);
    let queue = Arc::new(CommitQueue::<u64>::new());
    // The highest count committed before a flush that has returned.
    let flushed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let durable: crate::Durable<S> = {
        let flushed = Arc::clone(&flushed);
        Arc::new(move |store: &S| {
            // What was committed when this flush began is durable once it returns.
            let seen = read_counter(store.get(b"counter")?);
            store.flush()?;
            flushed.fetch_max(seen, Ordering::SeqCst);
            Ok(())
        })
    };
    let runtime = ok(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build(),
        "a runtime for the queue",
    );
    runtime.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for task in 0..TASKS {
            let (store, queue, durable) =
                (Arc::clone(&store), Arc::clone(&queue), Arc::clone(&durable));
            let flushed = Arc::clone(&flushed);
            tasks.spawn(async move {
                for i in 0..ITERATIONS {
                    let result = queue
                        .commit_durable(&store, &durable, counting_body(i, &writer(task)))
                        .await;
                    match result {
                        Ok((m, n)) => {
                            assert_eq!(m, i - i / 5 + 1, "task {task} saw a stale count");
                            assert!(
                                flushed.load(Ordering::SeqCst) >= n,
                                "task {task}'s commit {n} answered before a flush saw it"
                            );
                        }
                        Err(TxError::Aborted(n)) => assert!(refuses(i) && n == i),
                        Err(e) => panic!("durable commit through the queue failed: {e}"),
                    }
                }
            });
        }
        while let Some(joined) = tasks.join_next().await {
            ok(joined, "a committing task");
        }
    });
    check_counted(&*store, TASKS, ITERATIONS);
}

/// `flush` succeeds on a store with committed writes and leaves them readable.
pub fn flush_succeeds<S: Store>(store: &S) {
    ok(store.flush(), "flush empty");
    put_all(store, &[(b"a", b"1"), (b"b", b"2")]);
    ok(store.flush(), "flush");
    assert_eq!(ok(store.get(b"a"), "get"), Some(b"1".to_vec()));
    assert_eq!(ok(store.get(b"b"), "get"), Some(b"2".to_vec()));
}

/// A commit that writes under a subscribed prefix notifies, and a read after the notification
/// sees it; a later commit notifies again.
pub fn subscribe_notifies_commits_under_its_prefix<S: Store>(store: &S) {
    let (tx, rx) = mpsc::channel::<()>();
    let tx = Mutex::new(tx);
    ok(
        store.subscribe(
            b"feed/",
            Arc::new(move || {
                let _ = tx.lock().map(|tx| tx.send(()));
            }),
        ),
        "subscribe",
    );
    for round in 1..=2u8 {
        put_all(store, &[(b"other", &[round]), (b"feed/n", &[round])]);
        let mut seen = None;
        while seen != Some(vec![round]) {
            if rx.recv_timeout(NOTIFY_WITHIN).is_err() {
                panic!("no notification within {NOTIFY_WITHIN:?} of commit {round}");
            }
            seen = ok(store.get(b"feed/n"), "read after notification");
        }
    }
}

/// A claim succeeds, shows as the key's value, is renewed, and fences a transaction that
/// reads it.
pub fn lead_claims_and_fences<S: Store>(store: &S) {
    let ttl = Duration::from_secs(10);
    assert!(
        ok(store.lead(b"lead/s", b"me", ttl), "claim"),
        "first claim"
    );
    assert_eq!(ok(store.get(b"lead/s"), "read claim"), Some(b"me".to_vec()));
    assert!(ok(store.lead(b"lead/s", b"me", ttl), "renew"), "renewal");
    let fenced = store.transaction::<_, &str>(|txn| {
        if txn.get(b"lead/s")?.as_deref() != Some(&b"me"[..]) {
            return abort("not the leader");
        }
        txn.put(b"fenced", b"done")?;
        Ok(())
    });
    ok(fenced, "fenced transaction");
    assert_eq!(
        ok(store.get(b"fenced"), "read fenced"),
        Some(b"done".to_vec())
    );
}

/// Entries enough to span several pages of an engine that reads a snapshot in pages.
const MANY: usize = 300;

/// Every entry of `snapshot`, panicking on an error.
fn collect(snapshot: crate::Snapshot<'_>, what: &str) -> Vec<Entry> {
    snapshot.map(|entry| ok(entry, what)).collect()
}

/// A snapshot of an empty store is empty; otherwise it holds every entry, binary keys and empty
/// values included, in ascending byte order of key, as a scan of everything shows them.
pub fn snapshot_reads_every_entry_in_key_order<S: Store>(store: &S) {
    let empty = collect(ok(store.snapshot(), "snapshot empty"), "read empty");
    assert!(
        empty.is_empty(),
        "an empty store's snapshot holds {empty:?}"
    );

    let keys: Vec<Vec<u8>> = (0..MANY)
        .map(|i| format!("s/{i:04}").into_bytes())
        .collect();
    let entries: Vec<(&[u8], &[u8])> = keys.iter().map(|k| (k.as_slice(), &b"v"[..])).collect();
    for chunk in entries.chunks(50) {
        put_all(store, chunk);
    }
    put_all(
        store,
        &[
            (b"\x00first", b"binary key"),
            (b"\xffhigh", b"\x00\xff"),
            (b"empty", b""),
        ],
    );
    let got = collect(ok(store.snapshot(), "snapshot"), "read snapshot");
    let all = ok(store.scan_prefix(b"", None, usize::MAX), "scan everything");
    assert_eq!(got.len(), MANY + 3, "entries in the snapshot");
    assert_eq!(got, all, "the snapshot differs from a scan of everything");
    assert!(
        got.windows(2).all(|w| w[0].0 < w[1].0),
        "the snapshot is not in ascending key order"
    );
    assert!(got.contains(&(b"empty".to_vec(), Vec::new())));
}

/// Commits made after a snapshot was taken (puts, overwrites, deletes) do not show in it, however
/// late it is read.
pub fn snapshot_is_unaffected_by_later_commits<S: Store>(store: &S) {
    let keys: Vec<Vec<u8>> = (0..MANY)
        .map(|i| format!("u/{i:04}").into_bytes())
        .collect();
    let entries: Vec<(&[u8], &[u8])> = keys
        .iter()
        .map(|k| (k.as_slice(), &b"before"[..]))
        .collect();
    for chunk in entries.chunks(50) {
        put_all(store, chunk);
    }
    let before = ok(store.scan_prefix(b"", None, usize::MAX), "scan before");
    let snapshot = ok(store.snapshot(), "snapshot");

    ok(store.put(&keys[0], b"after"), "overwrite the first key");
    ok(
        store.put(&keys[MANY - 1], b"after"),
        "overwrite the last key",
    );
    ok(store.delete(&keys[MANY / 2]), "delete one");
    ok(store.put(b"u/9999", b"new"), "add one at the end");
    ok(store.put(b"a/new", b"new"), "add one at the start");

    let got = collect(snapshot, "read the snapshot");
    assert_eq!(got, before, "commits made after the snapshot show in it");
}

/// Snapshots taken while transactions run each see every transaction whole or not at all:
/// a transaction that sets the first and the last key together is never seen in part.
pub fn snapshot_sees_whole_commits_only<S: Store>(store: &S) {
    const SNAPSHOTS: usize = 200;
    const DISTINCT_ENOUGH: usize = 5;
    let fillers: Vec<Vec<u8>> = (0..MANY)
        .map(|i| format!("m/{i:04}").into_bytes())
        .collect();
    let entries: Vec<(&[u8], &[u8])> = fillers.iter().map(|k| (k.as_slice(), &b"f"[..])).collect();
    for chunk in entries.chunks(50) {
        put_all(store, chunk);
    }
    let write = |n: u64| {
        store.transaction::<_, ()>(|txn| {
            txn.put(b"a/first", &n.to_be_bytes())?;
            txn.put(b"z/last", &n.to_be_bytes())?;
            Ok(())
        })
    };
    ok(write(0), "seed the pair");
    let done = AtomicBool::new(false);
    let seen = std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            let mut n = 0;
            while !done.load(Ordering::Relaxed) {
                n += 1;
                ok(write(n), "write the pair");
            }
        });
        // The writer stops whatever happens here: a failed check must not leave it running.
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut seen = BTreeSet::new();
            for _ in 0..SNAPSHOTS {
                let got = collect(ok(store.snapshot(), "snapshot"), "read the snapshot");
                let value = |key: &[u8]| {
                    got.iter()
                        .find(|(k, _)| k == key)
                        .map(|(_, v)| read_counter(Some(v.clone())))
                };
                let (first, last) = (value(b"a/first"), value(b"z/last"));
                assert_eq!(first, last, "a snapshot saw a transaction in part");
                assert_eq!(got.len(), MANY + 2, "a snapshot lost entries");
                seen.extend(first);
                if seen.len() >= DISTINCT_ENOUGH {
                    break;
                }
            }
            seen
        }));
        done.store(true, Ordering::Relaxed);
        if writer.join().is_err() {
            panic!("the writer failed");
        }
        match read {
            Ok(seen) => seen,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    });
    assert!(
        seen.len() >= 2,
        "every snapshot saw the same state: the writer never ran between them"
    );
}
