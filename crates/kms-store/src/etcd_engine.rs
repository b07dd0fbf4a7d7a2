//! The replicated engine: an etcd v3 cluster that several control-plane processes share.
//!
//! The [`Store`] trait is synchronous and `etcd-client` is async: each store owns a small tokio
//! runtime and runs every etcd call on it, the calling thread waiting for the answer through a
//! channel. A call therefore works from any thread, a runtime's blocking pool or a plain one, and
//! every call is bounded by [`EtcdOptions::request_timeout`]. etcd's errors are converted in one
//! place, [`to_store_error`].
//!
//! Transactions are optimistic: the body's reads go to etcd at one snapshot revision, and the
//! commit is one etcd `Txn` that applies the staged writes only if no key read changed since.
//! A conflicting commit runs the body again.
//!
//! A snapshot reads pages of the whole prefix at the revision of its first page, so it needs
//! no lock and holds up no commit.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError, mpsc};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, KeyValue,
    PutOptions, TlsOptions, TxnOp, TxnOpResponse, WatchClient, WatchOptions,
};
use tokio::runtime::{Handle, Runtime};
use tonic::Code;

use crate::{Abort, Entry, Notify, Snapshot, Store, StoreError, TxError, TxStoreError, Txn};

/// etcd's default `--max-txn-ops`.
const DEFAULT_MAX_TXN_OPS: usize = 128;
/// etcd's default `--max-request-bytes` (1.5 MiB): a larger commit is refused before sending.
const MAX_REQUEST_BYTES: usize = 1536 * 1024;
/// An upper bound on the bytes a compare or an operation adds to a `Txn` besides its key and
/// value: field tags, lengths, revision and lease numbers.
const PER_OP_BYTES: usize = 32;
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 pings on idle connections, so a silently dead peer is noticed (and a watch moves on).
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Entries per page of a snapshot.
const SNAPSHOT_PAGE: i64 = 64;
/// The largest answer a snapshot page may be: a page of values each as large as one commit may
/// carry, and some room.
const SNAPSHOT_PAGE_BYTES: usize = SNAPSHOT_PAGE as usize * MAX_REQUEST_BYTES + (1 << 20);

/// How often a transaction body runs before a conflicting transaction gives up.
const MAX_TXN_ATTEMPTS: u32 = 64;
const TXN_BACKOFF_START: Duration = Duration::from_millis(2);
const TXN_BACKOFF_CAP: Duration = Duration::from_millis(200);
const WATCH_BACKOFF_START: Duration = Duration::from_millis(50);
const WATCH_BACKOFF_CAP: Duration = Duration::from_secs(2);
/// Pause between the connection probes of [`EtcdStore::connect`].
const PROBE_PAUSE: Duration = Duration::from_millis(50);
/// Pause before a request is sent again (see [`Retry`]).
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// TLS towards etcd: the CA that signed the members' certificates, and optionally a client
/// certificate (etcd's `--client-cert-auth`). Endpoints must then be `https://` URLs.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    /// PEM file of the CA certificates the members' server certificates chain to.
    pub ca_file: PathBuf,
    /// PEM client certificate; set together with `key_file` or not at all.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
}

/// How [`EtcdStore::connect`] reaches the cluster and lays out its keys.
#[derive(Clone)]
pub struct EtcdOptions {
    /// Client URLs of the members, such as `http://127.0.0.1:2379`; requests are balanced
    /// across them.
    pub endpoints: Vec<String>,
    /// Every key is stored under this prefix, so several deployments can share one cluster;
    /// keys handed back (by [`Store::scan_prefix`]) have it removed.
    pub prefix: Vec<u8>,
    /// TLS settings; `None` speaks plain HTTP/2.
    pub tls: Option<EtcdTls>,
    /// User name and password for etcd's authentication, or `None` when auth is off.
    pub user: Option<(String, String)>,
    /// The most compares plus writes one commit may carry: the cluster's `--max-txn-ops`
    /// (default 128).
    pub max_txn_ops: usize,
    /// The longest one etcd call may take before it fails with [`StoreError::Unavailable`]
    /// (default 5 s).
    pub request_timeout: Duration,
    /// How long [`EtcdStore::connect`] waits for an endpoint to answer (default 5 s).
    pub connect_timeout: Duration,
}

impl EtcdOptions {
    /// Options for `endpoints` and `prefix`, with no TLS, no auth and the defaults above.
    pub fn new(endpoints: Vec<String>, prefix: impl Into<Vec<u8>>) -> Self {
        Self {
            endpoints,
            prefix: prefix.into(),
            tls: None,
            user: None,
            max_txn_ops: DEFAULT_MAX_TXN_OPS,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

impl fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The password never appears.
        let user = self.user.as_ref().map(|(name, _)| (name, "[redacted]"));
        f.debug_struct("EtcdOptions")
            .field("endpoints", &self.endpoints)
            .field("prefix", &String::from_utf8_lossy(&self.prefix))
            .field("tls", &self.tls)
            .field("user", &user)
            .field("max_txn_ops", &self.max_txn_ops)
            .field("request_timeout", &self.request_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// A [`Store`] on an etcd v3 cluster, shared by every process that connects with the same
/// prefix.
///
/// - Commits are durable when they return: etcd acknowledges a write once a quorum of members
///   has it, so [`Store::flush`] does nothing.
/// - A transaction's reads see one snapshot; its commit is a single etcd `Txn`, so it may carry
///   at most [`EtcdOptions::max_txn_ops`] compares plus writes and about 1.5 MiB (etcd's
///   `--max-txn-ops` and `--max-request-bytes` defaults). A larger one fails with
///   [`StoreError::Internal`] and writes nothing: callers split large work into several
///   transactions.
/// - A commit whose answer is lost (a timeout, a member dying) fails with
///   [`StoreError::Unavailable`] although it may have been applied: read before redoing it.
/// - [`Store::subscribe`] runs an etcd watch; [`Store::lead`] claims a key under an etcd lease.
///
/// Dropping the store stops its runtime, its watches and its lease renewals (leases are not
/// revoked: they lapse after their TTL, as if the process had died).
pub struct EtcdStore {
    client: Client,
    prefix: Vec<u8>,
    endpoints: Vec<String>,
    max_txn_ops: usize,
    request_timeout: Duration,
    handle: Handle,
    /// Taken by `Drop` to shut the runtime down without waiting.
    runtime: Option<Runtime>,
    /// The lease this store claimed each [`Store::lead`] key under (full key → lease id).
    leases: Mutex<HashMap<Vec<u8>, i64>>,
    /// Held by each transaction of this process from its first read to its commit. The
    /// control plane's writes all touch the directory revision, so concurrent ones would only
    /// conflict and back off; in turn, each commits at the first try. Other processes' writes
    /// still conflict and are retried.
    writer: Mutex<()>,
}

impl EtcdStore {
    /// Connects to the cluster of `options`, failing with [`StoreError::Unavailable`] if no
    /// endpoint answers within [`EtcdOptions::connect_timeout`].
    ///
    /// Reading the TLS files fails with [`StoreError::Io`]; bad options (no endpoint, a client
    /// certificate without its key, `max_txn_ops == 0`) and refused credentials fail with
    /// [`StoreError::Internal`].
    pub fn connect(options: EtcdOptions) -> Result<Self, StoreError> {
        if options.endpoints.is_empty() {
            return Err(StoreError::Internal(
                "no etcd endpoint configured".to_owned(),
            ));
        }
        if options.max_txn_ops == 0 {
            return Err(StoreError::Internal(
                "max_txn_ops must be at least 1".to_owned(),
            ));
        }
        let mut connect = ConnectOptions::new()
            .with_timeout(options.request_timeout)
            .with_connect_timeout(options.connect_timeout)
            .with_keep_alive(KEEP_ALIVE_INTERVAL, options.request_timeout)
            // A member cut off from its leader refuses requests (reads are sent again, to any
            // member) and ends watches (which restart) instead of serving a stale view.
            .with_require_leader(true);
        if let Some(tls) = &options.tls {
            connect = connect.with_tls(tls_config(tls)?);
        }
        if let Some((name, password)) = &options.user {
            // etcd's auth tokens expire; the client authenticates again when one has.
            connect = connect
                .with_user(name.clone(), password.clone())
                .with_auto_token_refresh(true);
        }

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("etcd-store")
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let endpoints = options.endpoints.clone();
        let probe_key = range_start(options.prefix.clone());
        let deadline = options.connect_timeout;
        let connected = wait_on(&handle, deadline, async move {
            // The client connects lazily: one read proves an endpoint answers (and, with auth,
            // that the user may read under the prefix). A request routed to an endpoint that is
            // down fails fast, so try again until one answers or the deadline passes.
            loop {
                match connect_and_probe(&endpoints, connect.clone(), &probe_key).await {
                    Ok(client) => return Ok(client),
                    Err(e) if is_transient(&e) => tokio::time::sleep(PROBE_PAUSE).await,
                    Err(e) => return Err(e),
                }
            }
        });
        let client = match connected {
            Ok(client) => client,
            Err(e) => {
                // Not a plain drop, which panics when `connect` runs inside a runtime.
                runtime.shutdown_background();
                return Err(match e {
                    CallError::TimedOut(_) => StoreError::Unavailable(format!(
                        "no etcd endpoint of {:?} answered within {deadline:?}",
                        options.endpoints
                    )),
                    other => other.into(),
                });
            }
        };

        Ok(Self {
            client,
            prefix: options.prefix,
            endpoints: options.endpoints,
            max_txn_ops: options.max_txn_ops,
            request_timeout: options.request_timeout,
            handle,
            runtime: Some(runtime),
            leases: Mutex::new(HashMap::new()),
            writer: Mutex::new(()),
        })
    }

    /// Runs the request `make` builds on the store's runtime, sending it again as `retry`
    /// allows until the request timeout, and waits for the outcome here.
    fn call<T, F, Fut>(&self, retry: Retry, make: F) -> Result<T, CallError>
    where
        T: Send + 'static,
        F: Fn(Client) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        let client = self.client.clone();
        let timeout = self.request_timeout;
        wait_on(&self.handle, timeout, async move {
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                match make(client.clone()).await {
                    Err(e)
                        if retry.allows(&e)
                            && tokio::time::Instant::now() + RETRY_PAUSE < deadline =>
                    {
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                    outcome => return outcome,
                }
            }
        })
    }

    /// `key` under the store's prefix.
    fn full_key(&self, key: &[u8]) -> Vec<u8> {
        [self.prefix.as_slice(), key].concat()
    }

    /// The current value and revisions of `full_key`, read at `revision` (0: the latest), and
    /// the store revision the read saw.
    fn read(
        &self,
        full_key: &[u8],
        revision: i64,
    ) -> Result<(Option<KeyValue>, Option<i64>), CallError> {
        let key = full_key.to_vec();
        let options = GetOptions::new().with_revision(revision);
        let mut response = self.call(Retry::IfTransient, move |client| {
            let (key, options) = (key.clone(), options.clone());
            async move { client.kv_client().get(key, Some(options)).await }
        })?;
        let seen = response.header().map(|h| h.revision());
        Ok((response.take_kvs().into_iter().next(), seen))
    }

    /// Commits one attempt's writes if none of its reads changed; `Ok(false)` on a conflict.
    fn commit(&self, txn: EtcdTxn<'_>) -> Result<bool, StoreError> {
        let ops = txn.reads.len() + txn.writes.len();
        if ops > self.max_txn_ops {
            return Err(StoreError::Internal(format!(
                "transaction has {ops} reads and writes, more than the {} one etcd commit may \
                 carry: split it",
                self.max_txn_ops
            )));
        }
        let bytes: usize = txn
            .reads
            .keys()
            .map(|k| k.len() + PER_OP_BYTES)
            .sum::<usize>()
            + txn
                .writes
                .iter()
                .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len) + PER_OP_BYTES)
                .sum::<usize>();
        if bytes > MAX_REQUEST_BYTES {
            return Err(StoreError::Internal(format!(
                "transaction is about {bytes} bytes, more than the {MAX_REQUEST_BYTES} one etcd \
                 request may carry: split it"
            )));
        }
        let compares: Vec<Compare> = txn
            .reads
            .into_iter()
            .map(|(key, read)| Compare::mod_revision(key, CompareOp::Equal, read.mod_revision))
            .collect();
        let writes: Vec<TxnOp> = txn
            .writes
            .into_iter()
            .map(|(key, value)| match value {
                Some(value) => TxnOp::put(key, value, None),
                None => TxnOp::delete(key, None),
            })
            .collect();
        let request = etcd_client::Txn::new().when(compares).and_then(writes);
        // Sent again only if it never left: a retried commit that had been applied would fail
        // its compares and run the body a second time over its own writes.
        let response = self.call(Retry::IfUnsent, move |client| {
            let request = request.clone();
            async move { client.kv_client().txn(request).await }
        })?;
        Ok(response.succeeded())
    }

    /// Sends one keep-alive for `lease`: `Ok(false)` if etcd no longer knows it (it expired).
    fn keep_alive(&self, lease: i64) -> Result<bool, StoreError> {
        // `keep_alive` sends one request and reads one answer; dropping the returned keeper and
        // stream closes the stream.
        let renewed = self.call(Retry::IfTransient, move |client| async move {
            match client.lease_client().keep_alive(lease).await {
                Ok(_) => Ok(true),
                // What etcd-client returns when the answer's TTL is 0: the lease is gone.
                Err(etcd_client::Error::LeaseKeepAliveError(_)) => Ok(false),
                Err(e) => Err(e),
            }
        })?;
        Ok(renewed)
    }

    /// Revokes `lease`, ignoring failure: an unrevoked lease lapses after its TTL anyway.
    fn revoke_quietly(&self, lease: i64) {
        let _ = self.call(Retry::IfTransient, move |client| async move {
            client.lease_client().revoke(lease).await
        });
    }

    /// Puts `holder` under `key` with `lease` if `key` still satisfies `compare`; otherwise
    /// returns the key's current entry.
    fn put_if(
        &self,
        key: &[u8],
        holder: &[u8],
        lease: i64,
        compare: Compare,
    ) -> Result<Result<(), Option<KeyValue>>, StoreError> {
        let put = TxnOp::put(key, holder, Some(PutOptions::new().with_lease(lease)));
        let request = etcd_client::Txn::new()
            .when([compare])
            .and_then([put])
            .or_else([TxnOp::get(key, None)]);
        let response = self.call(Retry::IfUnsent, move |client| {
            let request = request.clone();
            async move { client.kv_client().txn(request).await }
        })?;
        if response.succeeded() {
            return Ok(Ok(()));
        }
        let current = response.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(mut get) => get.take_kvs().into_iter().next(),
            _ => None,
        });
        Ok(Err(current))
    }
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the contents: values hold wrapped key material.
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .field("prefix", &String::from_utf8_lossy(&self.prefix))
            .finish_non_exhaustive()
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        // Never blocks, so the store can be dropped anywhere, including inside a runtime.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Store for EtcdStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let (entry, _) = self.read(&self.full_key(key), 0)?;
        Ok(entry.map(|kv| kv.into_key_value().1))
    }

    fn scan_prefix(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let base = self.full_key(prefix);
        let end = prefix_end(&base);
        let start = match after {
            // The smallest key strictly greater than `after`.
            Some(after) if after >= prefix => {
                let mut start = self.full_key(after);
                start.push(0);
                start
            }
            _ => range_start(base),
        };
        if end != [0] && start >= end {
            return Ok(Vec::new());
        }
        let options = GetOptions::new()
            .with_range(end)
            .with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
        let mut response = self.call(Retry::IfTransient, move |client| {
            let (start, options) = (start.clone(), options.clone());
            async move { client.kv_client().get(start, Some(options)).await }
        })?;
        // etcd returns a range in ascending key order.
        response
            .take_kvs()
            .into_iter()
            .map(|kv| {
                let (key, value) = kv.into_key_value();
                match key.strip_prefix(self.prefix.as_slice()) {
                    Some(key) => Ok((key.to_vec(), value)),
                    None => Err(StoreError::Internal(
                        "etcd returned a key outside the requested range".to_owned(),
                    )),
                }
            })
            .collect()
    }

    fn snapshot(&self) -> Result<Snapshot<'_>, StoreError> {
        let end = prefix_end(&self.prefix);
        let start = range_start(self.prefix.clone());
        let mut snapshot = EtcdSnapshot {
            store: self,
            revision: 0,
            next: Some(start),
            end,
            page: Vec::new().into_iter(),
        };
        // The first page now: it fixes the revision, and an unreachable etcd fails here.
        snapshot.fetch()?;
        Ok(Box::new(snapshot))
    }

    fn transaction<T, E>(
        &self,
        f: impl Fn(&mut dyn Txn) -> Result<T, Abort<E>>,
    ) -> Result<T, TxError<E>> {
        for attempt in 0..MAX_TXN_ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(backoff(attempt - 1, TXN_BACKOFF_START, TXN_BACKOFF_CAP));
            }
            let _turn = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
            let mut txn = EtcdTxn {
                store: self,
                revision: 0,
                reads: BTreeMap::new(),
                writes: BTreeMap::new(),
                failed: None,
            };
            let out = f(&mut txn);
            // A failed operation decides the outcome even if the body swallowed its error.
            match txn.failed.take() {
                Some(Failure::Conflict) => continue,
                Some(Failure::Store(e)) => return Err(TxError::Store(e)),
                None => {}
            }
            let out = match out {
                Ok(out) => out,
                Err(Abort::User(e)) => return Err(TxError::Aborted(e)),
                Err(Abort::Store(e)) if e.is_conflict() => continue,
                Err(Abort::Store(e)) => return Err(TxError::Store(e.into_store_error())),
            };
            // Reads alone saw one snapshot: nothing to commit or check.
            if txn.writes.is_empty() || self.commit(txn)? {
                return Ok(out);
            }
        }
        Err(TxError::Store(StoreError::Unavailable(format!(
            "transaction kept conflicting with others for {MAX_TXN_ATTEMPTS} attempts"
        ))))
    }

    /// Does nothing: etcd acknowledges a commit only once a quorum of members has it.
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn subscribe(&self, prefix: &[u8], notify: Notify) -> Result<(), StoreError> {
        let start = range_start(self.full_key(prefix));
        let end = prefix_end(&start);
        // Watch from just after the current revision, so no commit made after this call
        // returns is missed, however long the watch takes to start.
        let (_, revision) = self.read(&start, 0)?;
        let revision = revision.ok_or_else(|| {
            StoreError::Internal("etcd answered a read without a header".to_owned())
        })?;
        let watch = Watch {
            client: self.client.watch_client(),
            start,
            end,
            next_revision: Some(revision + 1),
            timeout: self.request_timeout,
            notify,
        };
        self.handle.spawn(watch.run());
        Ok(())
    }

    /// Claims `key` under an etcd lease of `ttl` (whole seconds, rounded up; etcd raises a TTL
    /// below its minimum, about 2 s by default). Each call renews the lease once; when the holder
    /// stops calling, etcd expires the lease after `ttl` and deletes the key, and only then can
    /// another holder claim it.
    fn lead(&self, key: &[u8], holder: &[u8], ttl: Duration) -> Result<bool, StoreError> {
        let key = self.full_key(key);
        let mut leases = self.leases.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(&lease) = leases.get(&key) {
            if self.keep_alive(lease)? {
                // Ours only if the key still lives under this lease: a plain put since then
                // detached it, and it would outlive its holder.
                let (current, _) = self.read(&key, 0)?;
                if current.is_some_and(|kv| kv.value() == holder && kv.lease() == lease) {
                    return Ok(true);
                }
            } else {
                leases.remove(&key);
            }
        }

        let seconds = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let seconds = i64::try_from(seconds.max(1)).unwrap_or(i64::MAX);
        let lease = self
            .call(Retry::IfUnsent, move |client| async move {
                client.lease_client().grant(seconds, None).await
            })?
            .id();
        let unclaimed = Compare::create_revision(key.clone(), CompareOp::Equal, 0);
        let current = match self.put_if(&key, holder, lease, unclaimed)? {
            Ok(()) => {
                leases.insert(key, lease);
                return Ok(true);
            }
            Err(current) => current,
        };
        // Ours already, but under a lease this store does not renew (a claim made before a
        // keep-alive failed, or a plain put): move it under the new lease, unless it changed
        // meanwhile.
        if let Some(current) = current.filter(|kv| kv.value() == holder) {
            let unchanged =
                Compare::mod_revision(key.clone(), CompareOp::Equal, current.mod_revision());
            if self.put_if(&key, holder, lease, unchanged)?.is_ok() {
                leases.insert(key, lease);
                return Ok(true);
            }
        }
        self.revoke_quietly(lease);
        Ok(false)
    }
}

/// A snapshot being read: pages of the store's prefix, all at the revision of the first.
struct EtcdSnapshot<'a> {
    store: &'a EtcdStore,
    /// The revision every page is read at; 0 until the first page is read.
    revision: i64,
    /// The full key the next page starts at, or `None` once the last page is read.
    next: Option<Vec<u8>>,
    end: Vec<u8>,
    /// What is left of the page read last.
    page: std::vec::IntoIter<Entry>,
}

impl EtcdSnapshot<'_> {
    /// Reads the next page into `page`.
    fn fetch(&mut self) -> Result<(), StoreError> {
        let Some(start) = self.next.take() else {
            return Ok(());
        };
        let options = GetOptions::new()
            .with_range(self.end.clone())
            .with_limit(SNAPSHOT_PAGE)
            .with_revision(self.revision);
        let answer = self.store.call(Retry::IfTransient, move |client| {
            let (start, options) = (start.clone(), options.clone());
            async move {
                client
                    .kv_client()
                    .max_decoding_message_size(SNAPSHOT_PAGE_BYTES)
                    .get(start, Some(options))
                    .await
            }
        });
        let mut response = match answer {
            Ok(response) => response,
            Err(CallError::Etcd(e)) if is_compacted(&e) => {
                return Err(StoreError::Unavailable(format!(
                    "etcd compacted revision {} away while a snapshot was read at it: take the \
                     snapshot again",
                    self.revision
                )));
            }
            Err(e) => return Err(e.into()),
        };
        if self.revision == 0 {
            self.revision = response.header().map(|h| h.revision()).ok_or_else(|| {
                StoreError::Internal("etcd answered a read without a header".to_owned())
            })?;
        }
        let more = response.more();
        let kvs = response.take_kvs();
        if more && let Some(last) = kvs.last() {
            // The smallest key after the last one read.
            let mut next = last.key().to_vec();
            next.push(0);
            self.next = Some(next);
        }
        let prefix = self.store.prefix.as_slice();
        let page = kvs
            .into_iter()
            .map(|kv| {
                let (key, value) = kv.into_key_value();
                match key.strip_prefix(prefix) {
                    Some(key) => Ok((key.to_vec(), value)),
                    None => Err(StoreError::Internal(
                        "etcd returned a key outside the requested range".to_owned(),
                    )),
                }
            })
            .collect::<Result<Vec<Entry>, StoreError>>()?;
        self.page = page.into_iter();
        Ok(())
    }
}

impl Iterator for EtcdSnapshot<'_> {
    type Item = Result<Entry, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(entry) = self.page.next() {
                return Some(Ok(entry));
            }
            self.next.as_ref()?;
            if let Err(e) = self.fetch() {
                // Nothing follows an error.
                self.next = None;
                return Some(Err(e));
            }
        }
    }
}

/// One attempt of a transaction body: reads at one revision, staged writes.
struct EtcdTxn<'a> {
    store: &'a EtcdStore,
    /// The snapshot every read uses: the first read's revision (0 before it).
    revision: i64,
    /// Full keys read from etcd, with what was read.
    reads: BTreeMap<Vec<u8>, Read>,
    /// Full keys written; `None` marks a delete.
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// The first failed operation; the attempt must not commit once one failed.
    failed: Option<Failure>,
}

/// A key as a transaction read it.
struct Read {
    /// The key's `mod_revision`, 0 when absent (which etcd compares equal for an absent key).
    mod_revision: i64,
    value: Option<Vec<u8>>,
}

/// Why an attempt cannot commit.
enum Failure {
    /// The snapshot was compacted away under the attempt: run the body again.
    Conflict,
    Store(StoreError),
}

impl Txn for EtcdTxn<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, TxStoreError> {
        let key = self.store.full_key(key);
        if let Some(staged) = self.writes.get(&key) {
            return Ok(staged.clone());
        }
        if let Some(read) = self.reads.get(&key) {
            return Ok(read.value.clone());
        }
        if let Some(failed) = &self.failed {
            return Err(failed.for_body());
        }
        match self.store.read(&key, self.revision) {
            Ok((entry, seen)) => {
                if self.revision == 0 {
                    match seen {
                        Some(seen) => self.revision = seen,
                        None => {
                            let e = StoreError::Internal(
                                "etcd answered a read without a header".to_owned(),
                            );
                            return Err(self.fail(Failure::Store(e)));
                        }
                    }
                }
                let read = match entry {
                    Some(kv) => {
                        let mod_revision = kv.mod_revision();
                        Read {
                            mod_revision,
                            value: Some(kv.into_key_value().1),
                        }
                    }
                    None => Read {
                        mod_revision: 0,
                        value: None,
                    },
                };
                let value = read.value.clone();
                self.reads.insert(key, read);
                Ok(value)
            }
            Err(CallError::Etcd(e)) if is_compacted(&e) => Err(self.fail(Failure::Conflict)),
            Err(e) => Err(self.fail(Failure::Store(e.into()))),
        }
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), TxStoreError> {
        self.writes
            .insert(self.store.full_key(key), Some(value.to_vec()));
        Ok(())
    }

    fn delete(&mut self, key: &[u8]) -> Result<(), TxStoreError> {
        self.writes.insert(self.store.full_key(key), None);
        Ok(())
    }
}

impl EtcdTxn<'_> {
    /// Records `failure` (the first one wins) and returns the error for the body.
    fn fail(&mut self, failure: Failure) -> TxStoreError {
        let for_body = failure.for_body();
        self.failed.get_or_insert(failure);
        for_body
    }
}

impl Failure {
    fn for_body(&self) -> TxStoreError {
        match self {
            Failure::Conflict => TxStoreError::conflict(),
            Failure::Store(e) => TxStoreError::store(e.duplicate()),
        }
    }
}

/// A subscription's etcd watch, kept alive across broken streams and compactions.
struct Watch {
    client: WatchClient,
    start: Vec<u8>,
    end: Vec<u8>,
    /// Where the next watch starts: just after the last revision seen, or `None` for "now".
    next_revision: Option<i64>,
    timeout: Duration,
    notify: Notify,
}

impl Watch {
    /// Watches until the store's runtime shuts down. etcd-client does not restart a broken
    /// watch: this resumes it after the last revision seen, and notifies once it is back (the
    /// subscriber reads again whatever it may have missed).
    async fn run(mut self) {
        let mut failures = 0;
        let mut resumed = false;
        loop {
            if failures > 0 || resumed {
                let pause = backoff(failures, WATCH_BACKOFF_START, WATCH_BACKOFF_CAP);
                tokio::time::sleep(pause).await;
            }
            let mut options = WatchOptions::new().with_range(self.end.clone());
            if let Some(revision) = self.next_revision {
                options = options.with_start_revision(revision);
            }
            let watch = self.client.watch(self.start.clone(), Some(options));
            let mut stream = match tokio::time::timeout(self.timeout, watch).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(_)) | Err(_) => {
                    failures = failures.saturating_add(1);
                    resumed = true;
                    continue;
                }
            };
            loop {
                let response = match stream.message().await {
                    Ok(Some(response)) => response,
                    // The stream broke or the member closed it: start another.
                    Ok(None) | Err(_) => break,
                };
                if response.canceled() || response.compact_revision() > 0 {
                    // The resume revision was compacted (or the member cancelled the watch, e.g.
                    // it lost its leader): restart from the current revision, after a pause
                    // that grows if this repeats; the subscriber re-reads once it is back.
                    self.next_revision = None;
                    failures = failures.saturating_add(1);
                    break;
                }
                if response.created() {
                    failures = 0;
                    if std::mem::take(&mut resumed) {
                        (self.notify)();
                    }
                }
                if let Some(last) = response.events().last().and_then(|e| e.kv()) {
                    self.next_revision = Some(last.mod_revision() + 1);
                    (self.notify)();
                }
            }
            resumed = true;
        }
    }
}

/// A client for `endpoints` that has read `probe_key` (authenticating first when `options`
/// carry a user).
async fn connect_and_probe(
    endpoints: &[String],
    options: ConnectOptions,
    probe_key: &[u8],
) -> Result<Client, etcd_client::Error> {
    let client = Client::connect(endpoints, Some(options)).await?;
    let probe = GetOptions::new().with_keys_only().with_limit(1);
    client.kv_client().get(probe_key, Some(probe)).await?;
    Ok(client)
}

/// Which failed requests [`EtcdStore::call`] sends again, while its timeout lasts.
#[derive(Debug, Clone, Copy)]
enum Retry {
    /// Only one that never left (no connection to the member it was routed to, such as a dead
    /// member of a cluster): safe for any request.
    IfUnsent,
    /// Any that failed in a way that may pass (no leader yet, a broken connection): only for
    /// requests that change nothing if applied twice (reads, lease renewals).
    IfTransient,
}

impl Retry {
    fn allows(self, e: &etcd_client::Error) -> bool {
        match self {
            Retry::IfUnsent => never_sent(e),
            Retry::IfTransient => is_transient(e),
        }
    }
}

/// A failed etcd call: etcd's error, or no answer in time.
enum CallError {
    Etcd(etcd_client::Error),
    TimedOut(Duration),
    /// The store's runtime is gone (only while the process shuts down).
    Stopped,
}

impl From<CallError> for StoreError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Etcd(e) => to_store_error(e),
            CallError::TimedOut(timeout) => {
                StoreError::Unavailable(format!("etcd did not answer within {timeout:?}"))
            }
            CallError::Stopped => {
                StoreError::Unavailable("the etcd store's runtime has stopped".to_owned())
            }
        }
    }
}

/// Spawns `fut` on `handle` bounded by `timeout` and blocks this thread until it ends.
///
/// Waiting on a channel rather than `Handle::block_on` works from any thread, including one
/// that belongs to another runtime.
fn wait_on<T, F>(handle: &Handle, timeout: Duration, fut: F) -> Result<T, CallError>
where
    T: Send + 'static,
    F: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
{
    let (tx, rx) = mpsc::sync_channel(1);
    handle.spawn(async move {
        let _ = tx.send(tokio::time::timeout(timeout, fut).await);
    });
    match rx.recv() {
        Ok(Ok(Ok(value))) => Ok(value),
        Ok(Ok(Err(e))) => Err(CallError::Etcd(e)),
        Ok(Err(_elapsed)) => Err(CallError::TimedOut(timeout)),
        // The task was dropped unfinished: the runtime shut down.
        Err(_) => Err(CallError::Stopped),
    }
}

/// The one conversion from etcd-client's errors.
fn to_store_error(e: etcd_client::Error) -> StoreError {
    use etcd_client::Error as E;
    match e {
        E::GRpcStatus(status) => {
            let what = format!("etcd answered {:?}: {}", status.code(), status.message());
            match status.code() {
                // No leader, a member shutting down, overload, a broken connection (tonic reports
                // some as Unknown), a full database (`etcdctl alarm disarm` after compaction).
                Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Cancelled
                | Code::Aborted
                | Code::ResourceExhausted
                | Code::Unknown => StoreError::Unavailable(what),
                Code::DataLoss => StoreError::Corrupt(what),
                // Refused credentials or permissions, a compacted revision, a request etcd
                // rejects: not fixed by retrying.
                Code::Ok
                | Code::InvalidArgument
                | Code::NotFound
                | Code::AlreadyExists
                | Code::PermissionDenied
                | Code::FailedPrecondition
                | Code::OutOfRange
                | Code::Unimplemented
                | Code::Internal
                | Code::Unauthenticated => StoreError::Internal(what),
            }
        }
        E::TransportError(e) => StoreError::Unavailable(format!("cannot reach etcd: {e}")),
        E::IoError(e) => StoreError::Unavailable(format!("etcd connection failed: {e}")),
        E::WatchError(m) => StoreError::Unavailable(format!("etcd stream ended: {m}")),
        E::LeaseKeepAliveError(m) => {
            StoreError::Internal(format!("etcd lease keep-alive failed: {m}"))
        }
        E::InvalidArgs(m) => StoreError::Internal(format!("invalid etcd request: {m}")),
        E::InvalidUri(e) => StoreError::Internal(format!("invalid etcd endpoint: {e}")),
        E::EndpointError(m) => StoreError::Internal(format!("invalid etcd endpoint: {m}")),
        E::EndpointsNotManaged => {
            StoreError::Internal("etcd endpoints are not managed by this client".to_owned())
        }
        E::InvalidMetadataValue(e) => {
            StoreError::Internal(format!("invalid etcd request metadata: {e}"))
        }
        E::Utf8Error(e) => StoreError::Internal(format!("etcd answered invalid utf-8: {e}")),
        E::ElectError(m) => StoreError::Internal(format!("etcd election failed: {m}")),
        E::Internal(m) => StoreError::Internal(format!("etcd client failed: {m}")),
    }
}

/// Whether `e` may pass by itself (an endpoint down or restarting), judged as
/// [`to_store_error`] does.
fn is_transient(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    match e {
        E::GRpcStatus(status) => matches!(
            status.code(),
            Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Cancelled
                | Code::Aborted
                | Code::ResourceExhausted
                | Code::Unknown
        ),
        E::TransportError(_) | E::IoError(_) | E::WatchError(_) => true,
        _ => false,
    }
}

/// Whether `e` failed before the request left: tonic found no connection to the member the
/// request was routed to (its status carries a `ConnectError`).
fn never_sent(e: &etcd_client::Error) -> bool {
    let etcd_client::Error::GRpcStatus(status) = e else {
        return false;
    };
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if e.is::<tonic::ConnectError>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// Whether `e` says the revision read at was compacted away.
fn is_compacted(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(status) if status.code() == Code::OutOfRange)
}

/// The TLS configuration of `tls`, reading its files.
fn tls_config(tls: &EtcdTls) -> Result<TlsOptions, StoreError> {
    let config = TlsOptions::new().ca_certificate(Certificate::from_pem(read_file(&tls.ca_file)?));
    match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            Ok(config.identity(Identity::from_pem(read_file(cert)?, read_file(key)?)))
        }
        (None, None) => Ok(config),
        _ => Err(StoreError::Internal(
            "an etcd client certificate and its key must be set together".to_owned(),
        )),
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path).map_err(|e| {
        StoreError::Io(std::io::Error::new(
            e.kind(),
            format!("reading {}: {e}", path.display()),
        ))
    })
}

/// The first key after every key that starts with `prefix`, or `[0]` (etcd's "to the end")
/// when there is none (`prefix` empty or all `0xff`).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    match prefix.iter().rposition(|&b| b != 0xff) {
        Some(i) => {
            let mut end = prefix[..=i].to_vec();
            end[i] += 1;
            end
        }
        None => vec![0],
    }
}

/// `key` as the start of a range: etcd rejects an empty key, and `[0]` is the first one.
fn range_start(key: Vec<u8>) -> Vec<u8> {
    if key.is_empty() { vec![0] } else { key }
}

/// A pause before retry `n` (from 0): exponential from `start`, capped at `cap`, with jitter
/// (half of it random) so that contending callers spread out.
fn backoff(n: u32, start: Duration, cap: Duration) -> Duration {
    let full = start.saturating_mul(1u32 << n.min(20)).min(cap);
    let half = full / 2;
    // A fresh `RandomState` is randomly keyed: hashing nothing gives a cheap random number.
    let random = RandomState::new().hash_one(()) % 1024;
    half + half.mul_f64(random as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::time::Instant;

    use super::*;

    #[test]
    fn prefix_end_is_the_first_key_past_the_prefix() {
        assert_eq!(prefix_end(b"a/"), b"a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), [0]);
        assert_eq!(prefix_end(b""), [0]);
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let start = Duration::from_millis(2);
        let cap = Duration::from_millis(200);
        for n in 0..40 {
            let full = start.saturating_mul(1u32 << n.min(20)).min(cap);
            let pause = backoff(n, start, cap);
            assert!(pause >= full / 2 && pause <= full, "{n}: {pause:?}");
        }
    }

    #[test]
    fn etcd_errors_map_to_the_matching_condition() {
        use etcd_client::Error as E;
        let status = |code| E::GRpcStatus(tonic::Status::new(code, "m"));
        for e in [
            status(Code::Unavailable),
            status(Code::DeadlineExceeded),
            E::WatchError("ended".to_owned()),
        ] {
            assert!(is_transient(&e));
            let mapped = to_store_error(e);
            assert!(matches!(mapped, StoreError::Unavailable(_)), "{mapped:?}");
        }
        for e in [
            status(Code::OutOfRange),
            status(Code::PermissionDenied),
            E::InvalidArgs("x".to_owned()),
        ] {
            assert!(!is_transient(&e));
            let mapped = to_store_error(e);
            assert!(matches!(mapped, StoreError::Internal(_)), "{mapped:?}");
            assert!(!mapped.to_string().ends_with('.'));
        }
        assert!(is_compacted(&status(Code::OutOfRange)));
        assert!(matches!(
            to_store_error(status(Code::DataLoss)),
            StoreError::Corrupt(_)
        ));
    }

    #[test]
    fn options_debug_hides_the_password() {
        let mut options = EtcdOptions::new(vec!["http://127.0.0.1:2379".to_owned()], "kms/");
        options.user = Some(("kms".to_owned(), "hunter2".to_owned()));
        let shown = format!("{options:?}");
        assert!(shown.contains("kms"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("[redacted]"), "{shown}");
    }

    #[test]
    fn connecting_to_nothing_is_unavailable_within_the_timeout() {
        // A port nothing listens on: bound, then closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut options = EtcdOptions::new(vec![format!("http://127.0.0.1:{port}")], "kms/");
        options.connect_timeout = Duration::from_millis(500);
        let started = Instant::now();
        let result = EtcdStore::connect(options.clone());
        assert!(
            matches!(result, Err(StoreError::Unavailable(_))),
            "{result:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));

        // Inside a runtime too: the failed store's runtime must not be dropped there.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let result = runtime.block_on(async { EtcdStore::connect(options) });
        assert!(
            matches!(result, Err(StoreError::Unavailable(_))),
            "{result:?}"
        );
    }

    #[test]
    fn a_client_certificate_without_its_key_is_refused() {
        let mut options = EtcdOptions::new(vec!["https://127.0.0.1:2379".to_owned()], "kms/");
        let ca = readable_file();
        options.tls = Some(EtcdTls {
            ca_file: ca,
            cert_file: Some(PathBuf::from("/nonexistent/cert.pem")),
            key_file: None,
        });
        let result = EtcdStore::connect(options);
        assert!(
            matches!(&result, Err(StoreError::Internal(m)) if m.contains("together")),
            "{result:?}"
        );
    }

    /// A readable file (any content: the CA is parsed only when connecting).
    fn readable_file() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")
    }
}
