//! Limits at the edge: per-principal request rates per operation class, the rate of calls
//! that carry no identity per peer address, the largest request accepted ([`MessageSizes`]),
//! call deadlines, and the connection limits and timeouts of a plane's listener
//! ([`crate::connections`]).
//!
//! Rates are token buckets keyed by the authenticated principal and the operation class of the
//! method (see [`classify`]); a call past its budget is refused with `RESOURCE_EXHAUSTED`
//! `Rejected.Throttling`. The internal plane-to-plane services are not limited. Calls that
//! carry no identity are charged to their peer's address instead (an IPv6 peer by its /64),
//! with the same answer past the budget.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kms_types::{DomainError, Principal};
use serde::Deserialize;

/// Largest `max_request_bytes` accepted: tonic's own default ceiling.
pub const MAX_REQUEST_BYTES_CEILING: usize = 4 * 1024 * 1024;
/// Smallest `max_request_bytes` accepted; below it ordinary calls would not fit.
pub const MAX_REQUEST_BYTES_FLOOR: usize = 16 * 1024;
/// Longest `default_deadline_ms` and `max_deadline_ms` accepted (10 minutes).
pub const MAX_DEADLINE_MS: u64 = 600_000;
/// Most connections per plane accepted in `max_connections`.
pub const MAX_CONNECTIONS_CEILING: usize = 1_000_000;
/// Most concurrent streams per connection accepted in `max_concurrent_streams`.
pub const MAX_STREAMS_CEILING: u32 = 10_000;
/// Longest `tls_handshake_timeout_ms` accepted (1 minute).
pub const MAX_HANDSHAKE_TIMEOUT_MS: u64 = 60_000;
/// Longest `idle_timeout_ms`, `keepalive_interval_ms` and `keepalive_timeout_ms` accepted
/// (1 hour).
pub const MAX_CONNECTION_TIMER_MS: u64 = 3_600_000;

/// `[limits]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest encoded request message accepted, in bytes; larger ones are refused by their
    /// length prefix, before decoding, with `RESOURCE_EXHAUSTED` `Rejected.RequestTooLarge`.
    /// Default 65536.
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// Deadline of a call whose caller sends no `grpc-timeout`, in ms; past it the call is
    /// answered `DEADLINE_EXCEEDED`. Default 30000.
    #[serde(default = "default_deadline_ms")]
    pub default_deadline_ms: u64,
    /// Longest deadline of any call, in ms: a caller's longer `grpc-timeout` is cut to it.
    /// At least `default_deadline_ms`. Default 60000.
    #[serde(default = "default_max_deadline_ms")]
    pub max_deadline_ms: u64,
    /// Longest time a request's body may take to arrive whole, in ms, counted from its
    /// headers; a body still incomplete then fails the call with `DEADLINE_EXCEEDED`
    /// `Rejected.RequestBodyTimeout`. Applies to every call, health and reflection included.
    /// Default 10000.
    #[serde(default = "default_request_body_timeout_ms")]
    pub request_body_timeout_ms: u64,
    /// Most connections the plane holds open at once. A connection past it evicts the oldest
    /// one that has never carried a call (then the oldest without a call in flight), or is
    /// closed at once when every connection is busy. Lowered at start to what the process's
    /// open-file limit allows. Default 4096.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Most concurrent calls (HTTP/2 streams) on one connection. Default 128.
    #[serde(default = "default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// Longest TLS handshake, in ms, from accept; a client that has not finished it (or never
    /// sent a ClientHello) is disconnected. Default 5000.
    #[serde(default = "default_tls_handshake_timeout_ms")]
    pub tls_handshake_timeout_ms: u64,
    /// A connection without a call in flight for this long, in ms, is closed (connections
    /// that never send anything included). Default 60000.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Interval of HTTP/2 keepalive pings to the client, in ms. Default 30000.
    #[serde(default = "default_keepalive_interval_ms")]
    pub keepalive_interval_ms: u64,
    /// A connection whose client does not answer a keepalive ping within this long, in ms, is
    /// closed. Default 10000.
    #[serde(default = "default_keepalive_timeout_ms")]
    pub keepalive_timeout_ms: u64,
    /// Budget of calls that carry no identity, per peer address (an IPv6 peer by its /64).
    /// Default 10 per second, burst 20.
    #[serde(default = "RateConfig::unauthenticated")]
    pub unauthenticated: RateConfig,
    /// Refusals of calls without identity are audited one line per peer per interval, in ms:
    /// the first refusal in full, the rest counted into one summary line. Default 60000.
    #[serde(default = "default_refusal_summary_interval_ms")]
    pub refusal_summary_interval_ms: u64,
    /// Encrypt, Decrypt, ReEncrypt, GenerateDataKey*, GenerateAndExportDataKey, ExportDataKey,
    /// GenerateRandom, GetRandomPassword.
    #[serde(default = "RateConfig::symmetric")]
    pub symmetric: RateConfig,
    /// Asymmetric* and GetPublicKey.
    #[serde(default = "RateConfig::asymmetric")]
    pub asymmetric: RateConfig,
    /// Describe*, List*, Get*, CheckKeyAssociation.
    #[serde(default = "RateConfig::read")]
    pub read: RateConfig,
    /// Every other KeyManagementService and KmsInstanceService call.
    #[serde(default = "RateConfig::write")]
    pub write: RateConfig,
    /// CreateKey.
    #[serde(default = "RateConfig::create_key")]
    pub create_key: RateConfig,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_request_bytes: default_max_request_bytes(),
            default_deadline_ms: default_deadline_ms(),
            max_deadline_ms: default_max_deadline_ms(),
            request_body_timeout_ms: default_request_body_timeout_ms(),
            max_connections: default_max_connections(),
            max_concurrent_streams: default_max_concurrent_streams(),
            tls_handshake_timeout_ms: default_tls_handshake_timeout_ms(),
            idle_timeout_ms: default_idle_timeout_ms(),
            keepalive_interval_ms: default_keepalive_interval_ms(),
            keepalive_timeout_ms: default_keepalive_timeout_ms(),
            unauthenticated: RateConfig::unauthenticated(),
            refusal_summary_interval_ms: default_refusal_summary_interval_ms(),
            symmetric: RateConfig::symmetric(),
            asymmetric: RateConfig::asymmetric(),
            read: RateConfig::read(),
            write: RateConfig::write(),
            create_key: RateConfig::create_key(),
        }
    }
}

fn default_max_request_bytes() -> usize {
    64 * 1024
}

fn default_deadline_ms() -> u64 {
    30_000
}

fn default_max_deadline_ms() -> u64 {
    60_000
}

fn default_request_body_timeout_ms() -> u64 {
    10_000
}

fn default_max_connections() -> usize {
    4096
}

fn default_max_concurrent_streams() -> u32 {
    128
}

fn default_tls_handshake_timeout_ms() -> u64 {
    5_000
}

fn default_idle_timeout_ms() -> u64 {
    60_000
}

fn default_keepalive_interval_ms() -> u64 {
    30_000
}

fn default_keepalive_timeout_ms() -> u64 {
    10_000
}

fn default_refusal_summary_interval_ms() -> u64 {
    60_000
}

/// One class's budget per principal: a sustained rate and a burst.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RateConfig {
    /// Calls per second, sustained.
    pub per_second: u32,
    /// Calls allowed at once after a quiet spell (the bucket size). Default: `per_second`.
    #[serde(default)]
    pub burst: Option<u32>,
}

impl RateConfig {
    /// A budget of `per_second` with a burst of the same size.
    pub fn new(per_second: u32) -> Self {
        Self {
            per_second,
            burst: None,
        }
    }

    /// The bucket size.
    pub fn burst(&self) -> u32 {
        self.burst.unwrap_or(self.per_second)
    }

    fn symmetric() -> Self {
        Self::new(1000)
    }

    fn asymmetric() -> Self {
        Self::new(200)
    }

    fn read() -> Self {
        Self::new(50)
    }

    fn write() -> Self {
        Self::new(30)
    }

    fn create_key() -> Self {
        Self::new(10)
    }

    fn unauthenticated() -> Self {
        Self {
            per_second: 10,
            burst: Some(20),
        }
    }
}

impl LimitsConfig {
    /// Checks the values; called once at start.
    pub fn validate(&self) -> Result<(), String> {
        if !(MAX_REQUEST_BYTES_FLOOR..=MAX_REQUEST_BYTES_CEILING).contains(&self.max_request_bytes)
        {
            return Err(format!(
                "limits.max_request_bytes must be {MAX_REQUEST_BYTES_FLOOR} to {MAX_REQUEST_BYTES_CEILING}, got {}",
                self.max_request_bytes
            ));
        }
        if !(1..=MAX_DEADLINE_MS).contains(&self.default_deadline_ms) {
            return Err(format!(
                "limits.default_deadline_ms must be 1 to {MAX_DEADLINE_MS}, got {}",
                self.default_deadline_ms
            ));
        }
        if !(self.default_deadline_ms..=MAX_DEADLINE_MS).contains(&self.max_deadline_ms) {
            return Err(format!(
                "limits.max_deadline_ms must be limits.default_deadline_ms ({}) to {MAX_DEADLINE_MS}, got {}",
                self.default_deadline_ms, self.max_deadline_ms
            ));
        }
        let ms_ranges = [
            (
                "request_body_timeout_ms",
                self.request_body_timeout_ms,
                MAX_DEADLINE_MS,
            ),
            (
                "tls_handshake_timeout_ms",
                self.tls_handshake_timeout_ms,
                MAX_HANDSHAKE_TIMEOUT_MS,
            ),
            (
                "idle_timeout_ms",
                self.idle_timeout_ms,
                MAX_CONNECTION_TIMER_MS,
            ),
            (
                "keepalive_interval_ms",
                self.keepalive_interval_ms,
                MAX_CONNECTION_TIMER_MS,
            ),
            (
                "keepalive_timeout_ms",
                self.keepalive_timeout_ms,
                MAX_CONNECTION_TIMER_MS,
            ),
            (
                "refusal_summary_interval_ms",
                self.refusal_summary_interval_ms,
                MAX_CONNECTION_TIMER_MS,
            ),
        ];
        for (name, value, max) in ms_ranges {
            if !(1..=max).contains(&value) {
                return Err(format!("limits.{name} must be 1 to {max}, got {value}"));
            }
        }
        if !(1..=MAX_CONNECTIONS_CEILING).contains(&self.max_connections) {
            return Err(format!(
                "limits.max_connections must be 1 to {MAX_CONNECTIONS_CEILING}, got {}",
                self.max_connections
            ));
        }
        if !(1..=MAX_STREAMS_CEILING).contains(&self.max_concurrent_streams) {
            return Err(format!(
                "limits.max_concurrent_streams must be 1 to {MAX_STREAMS_CEILING}, got {}",
                self.max_concurrent_streams
            ));
        }
        let rates = OpClass::ALL
            .map(|class| (class.config_name(), self.rate(class)))
            .into_iter()
            .chain([("unauthenticated", self.unauthenticated)]);
        for (name, rate) in rates {
            if rate.per_second == 0 {
                return Err(format!("limits.{name}.per_second must be at least 1"));
            }
            if rate.burst == Some(0) {
                return Err(format!("limits.{name}.burst must be at least 1"));
            }
        }
        Ok(())
    }

    /// The budget of `class`.
    pub fn rate(&self, class: OpClass) -> RateConfig {
        match class {
            OpClass::SymmetricCrypto => self.symmetric,
            OpClass::AsymmetricCrypto => self.asymmetric,
            OpClass::ManagementRead => self.read,
            OpClass::ManagementWrite => self.write,
            OpClass::CreateKey => self.create_key,
        }
    }

    /// The value for tonic's `max_decoding_message_size` on every service of a server.
    pub fn max_decoding_message_size(&self) -> usize {
        self.max_request_bytes
    }

    /// The deadline applied to calls without `grpc-timeout`.
    pub fn default_deadline(&self) -> Duration {
        Duration::from_millis(self.default_deadline_ms)
    }

    /// The longest deadline of any call.
    pub fn max_deadline(&self) -> Duration {
        Duration::from_millis(self.max_deadline_ms)
    }

    /// The longest a request body may take to arrive.
    pub fn request_body_timeout(&self) -> Duration {
        Duration::from_millis(self.request_body_timeout_ms)
    }

    /// The longest TLS handshake.
    pub fn tls_handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.tls_handshake_timeout_ms)
    }

    /// How long a connection without a call in flight stays open.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    /// The interval of HTTP/2 keepalive pings.
    pub fn keepalive_interval(&self) -> Duration {
        Duration::from_millis(self.keepalive_interval_ms)
    }

    /// How long a keepalive ping may go unanswered.
    pub fn keepalive_timeout(&self) -> Duration {
        Duration::from_millis(self.keepalive_timeout_ms)
    }

    /// The interval of refusal summary lines in the audit log.
    pub fn refusal_summary_interval(&self) -> Duration {
        Duration::from_millis(self.refusal_summary_interval_ms)
    }
}

/// Length of a gRPC message's prefix: a compression flag and a 4-byte big-endian length.
const GRPC_PREFIX_LEN: usize = 5;

/// Reads the length prefixes of the gRPC messages in a request body as its bytes go by, so an
/// oversized message is refused by its prefix, before anything decodes it (tonic's own limit
/// answers a bare `OUT_OF_RANGE` without a reason code).
#[derive(Debug, Clone)]
pub struct MessageSizes {
    max: usize,
    prefix: [u8; GRPC_PREFIX_LEN],
    have: usize,
    /// Bytes of the current message still to come.
    remaining: u64,
}

impl MessageSizes {
    /// A reader refusing messages over `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            prefix: [0; GRPC_PREFIX_LEN],
            have: 0,
            remaining: 0,
        }
    }

    /// The largest message accepted, in bytes.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Takes the next bytes of the body; `Err(length)` names the first message over the
    /// limit.
    pub fn scan(&mut self, mut bytes: &[u8]) -> Result<(), u64> {
        while !bytes.is_empty() {
            if self.remaining > 0 {
                let skip = usize::try_from(self.remaining)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                bytes = &bytes[skip..];
                self.remaining -= skip as u64;
                continue;
            }
            let take = (GRPC_PREFIX_LEN - self.have).min(bytes.len());
            self.prefix[self.have..self.have + take].copy_from_slice(&bytes[..take]);
            self.have += take;
            bytes = &bytes[take..];
            if self.have == GRPC_PREFIX_LEN {
                self.have = 0;
                let [_, a, b, c, d] = self.prefix;
                let len = u64::from(u32::from_be_bytes([a, b, c, d]));
                if len > self.max as u64 {
                    return Err(len);
                }
                self.remaining = len;
            }
        }
        Ok(())
    }
}

/// The answer to a request message over `max` bytes: `RESOURCE_EXHAUSTED`
/// `Rejected.RequestTooLarge`, naming the limit and the way to encrypt large data.
pub fn request_too_large_status(len: u64, max: usize) -> tonic::Status {
    crate::status::edge_status(
        tonic::Code::ResourceExhausted,
        "Rejected.RequestTooLarge",
        &format!(
            "the request message is {len} bytes, over this service's limit of {max} bytes \
             (limits.max_request_bytes); Encrypt takes at most 6 KiB of plaintext: for larger \
             data use envelope encryption, GenerateDataKey returns a data key to encrypt the \
             data with locally and the data key's ciphertext to keep beside it"
        ),
    )
}

/// Operation classes, each with its own budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpClass {
    /// Symmetric cryptography, data keys and randomness.
    SymmetricCrypto,
    /// Asymmetric cryptography and public keys.
    AsymmetricCrypto,
    /// Management calls that only read.
    ManagementRead,
    /// Management calls that change something, except CreateKey.
    ManagementWrite,
    /// CreateKey.
    CreateKey,
}

impl OpClass {
    /// Every class.
    pub const ALL: [OpClass; 5] = [
        OpClass::SymmetricCrypto,
        OpClass::AsymmetricCrypto,
        OpClass::ManagementRead,
        OpClass::ManagementWrite,
        OpClass::CreateKey,
    ];

    fn index(self) -> usize {
        match self {
            OpClass::SymmetricCrypto => 0,
            OpClass::AsymmetricCrypto => 1,
            OpClass::ManagementRead => 2,
            OpClass::ManagementWrite => 3,
            OpClass::CreateKey => 4,
        }
    }

    /// The name of the class's table under `[limits]`.
    pub fn config_name(self) -> &'static str {
        match self {
            OpClass::SymmetricCrypto => "symmetric",
            OpClass::AsymmetricCrypto => "asymmetric",
            OpClass::ManagementRead => "read",
            OpClass::ManagementWrite => "write",
            OpClass::CreateKey => "create_key",
        }
    }
}

impl fmt::Display for OpClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.config_name())
    }
}

/// The class of a gRPC method path (`/package.Service/Method`), or `None` for calls that are
/// not limited (internal services, health, reflection). Unknown public methods count as reads.
pub fn classify(path: &str) -> Option<OpClass> {
    let (service, method) = path.trim_start_matches('/').split_once('/')?;
    if service.starts_with("kms.internal.")
        || service.starts_with("grpc.health.")
        || service.starts_with("grpc.reflection.")
    {
        return None;
    }
    Some(match service {
        "kms.v1.CryptoService" => {
            if method.starts_with("Asymmetric") || method == "GetPublicKey" {
                OpClass::AsymmetricCrypto
            } else {
                OpClass::SymmetricCrypto
            }
        }
        "kms.v1.KeyManagementService" | "kms.v1.KmsInstanceService" | "kms.v1.AccessKeyService" => {
            if method == "CreateKey" {
                OpClass::CreateKey
            } else if ["Describe", "List", "Get"]
                .iter()
                .any(|p| method.starts_with(p))
                || method == "CheckKeyAssociation"
            {
                OpClass::ManagementRead
            } else {
                OpClass::ManagementWrite
            }
        }
        _ => OpClass::ManagementRead,
    })
}

/// A monotonic time source for the limiter.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Time since an arbitrary fixed start.
    fn now(&self) -> Duration;
}

/// The real monotonic clock.
#[derive(Debug)]
pub struct MonotonicClock(Instant);

impl MonotonicClock {
    /// A clock starting now.
    pub fn new() -> Self {
        Self(Instant::now())
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

/// A clock that moves only when told; for tests.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.0.fetch_add(nanos, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::SeqCst))
    }
}

/// Principals tracked before idle ones are swept out.
const SWEEP_THRESHOLD: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Budget {
    per_second: f64,
    burst: f64,
}

impl Budget {
    fn of(rate: RateConfig) -> Self {
        Self {
            per_second: f64::from(rate.per_second.max(1)),
            burst: f64::from(rate.burst().max(1)),
        }
    }

    /// Refills `bucket` up to `now` and takes one call from it, if there is one.
    fn take(self, bucket: &mut Bucket, now: Duration) -> bool {
        let elapsed = now.saturating_sub(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether `bucket` would be full by `now`, so forgetting it changes nothing.
    fn refilled(self, bucket: &Bucket, now: Duration) -> bool {
        let elapsed = now.saturating_sub(bucket.last).as_secs_f64();
        bucket.tokens + elapsed * self.per_second >= self.burst
    }
}

/// The key a peer's calls without identity are charged to: its IPv4 address, or the /64 of
/// its IPv6 address (one host commonly holds a whole /64). IPv4-mapped IPv6 counts as IPv4.
/// Calls from an unknown address share one key.
pub fn peer_key(ip: Option<IpAddr>) -> IpAddr {
    match ip.map(|ip| ip.to_canonical()) {
        Some(IpAddr::V4(v4)) => IpAddr::V4(v4),
        Some(IpAddr::V6(v6)) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        None => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    }
}

/// Per-principal token buckets, one per operation class; and per-peer buckets for calls that
/// carry no identity.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    budgets: [Budget; 5],
    peer_budget: Budget,
    clock: Arc<dyn Clock>,
    buckets: Arc<Mutex<HashMap<String, [Option<Bucket>; 5]>>>,
    peers: Arc<Mutex<HashMap<IpAddr, Bucket>>>,
}

impl RateLimiter {
    /// A limiter for `config` on the real clock.
    pub fn new(config: &LimitsConfig) -> Self {
        Self::with_clock(config, Arc::new(MonotonicClock::new()))
    }

    /// A limiter for `config` on `clock`.
    pub fn with_clock(config: &LimitsConfig, clock: Arc<dyn Clock>) -> Self {
        Self {
            budgets: OpClass::ALL.map(|class| Budget::of(config.rate(class))),
            peer_budget: Budget::of(config.unauthenticated),
            clock,
            buckets: Arc::new(Mutex::new(HashMap::new())),
            peers: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The limiter's clock.
    pub fn clock(&self) -> Arc<dyn Clock> {
        Arc::clone(&self.clock)
    }

    /// Takes one call without identity from the budget of the peer at `ip` (see
    /// [`peer_key`]), or answers `Throttling`.
    pub fn check_peer(&self, ip: Option<IpAddr>) -> Result<(), DomainError> {
        let now = self.clock.now();
        let key = peer_key(ip);
        let budget = self.peer_budget;
        let mut map = self
            .peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= SWEEP_THRESHOLD && !map.contains_key(&key) {
            map.retain(|_, bucket| !budget.refilled(bucket, now));
        }
        let bucket = map.entry(key).or_insert(Bucket {
            tokens: budget.burst,
            last: now,
        });
        if budget.take(bucket, now) {
            Ok(())
        } else {
            Err(DomainError::Throttling)
        }
    }

    /// How many peers are tracked.
    pub fn tracked_peers(&self) -> usize {
        self.peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// Takes one call of `class` from `principal`'s budget, or answers `Throttling`.
    pub fn check(&self, principal: &Principal, class: OpClass) -> Result<(), DomainError> {
        let now = self.clock.now();
        let budget = self.budgets[class.index()];
        let mut map = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= SWEEP_THRESHOLD && !map.contains_key(principal.arn()) {
            self.sweep(&mut map, now);
        }
        let slots = match map.get_mut(principal.arn()) {
            Some(slots) => slots,
            None => map.entry(principal.arn().to_string()).or_default(),
        };
        let bucket = slots[class.index()].get_or_insert(Bucket {
            tokens: budget.burst,
            last: now,
        });
        if budget.take(bucket, now) {
            Ok(())
        } else {
            Err(DomainError::Throttling)
        }
    }

    /// Drops principals whose every bucket has refilled: forgetting them changes nothing.
    fn sweep(&self, map: &mut HashMap<String, [Option<Bucket>; 5]>, now: Duration) {
        map.retain(|_, slots| {
            slots
                .iter()
                .zip(self.budgets)
                .any(|(slot, budget)| slot.is_some_and(|b| !budget.refilled(&b, now)))
        });
    }

    /// How many principals are tracked.
    pub fn tracked(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn classes_by_method() {
        use OpClass::*;
        let cases = [
            ("/kms.v1.CryptoService/Encrypt", Some(SymmetricCrypto)),
            ("/kms.v1.CryptoService/Decrypt", Some(SymmetricCrypto)),
            ("/kms.v1.CryptoService/ReEncrypt", Some(SymmetricCrypto)),
            (
                "/kms.v1.CryptoService/GenerateDataKey",
                Some(SymmetricCrypto),
            ),
            (
                "/kms.v1.CryptoService/GenerateDataKeyWithoutPlaintext",
                Some(SymmetricCrypto),
            ),
            (
                "/kms.v1.CryptoService/GenerateAndExportDataKey",
                Some(SymmetricCrypto),
            ),
            ("/kms.v1.CryptoService/ExportDataKey", Some(SymmetricCrypto)),
            (
                "/kms.v1.CryptoService/GenerateRandom",
                Some(SymmetricCrypto),
            ),
            (
                "/kms.v1.CryptoService/GetRandomPassword",
                Some(SymmetricCrypto),
            ),
            (
                "/kms.v1.CryptoService/AsymmetricSign",
                Some(AsymmetricCrypto),
            ),
            (
                "/kms.v1.CryptoService/AsymmetricDecrypt",
                Some(AsymmetricCrypto),
            ),
            ("/kms.v1.CryptoService/GetPublicKey", Some(AsymmetricCrypto)),
            ("/kms.v1.KeyManagementService/CreateKey", Some(CreateKey)),
            (
                "/kms.v1.KeyManagementService/DescribeKey",
                Some(ManagementRead),
            ),
            (
                "/kms.v1.KeyManagementService/ListKeys",
                Some(ManagementRead),
            ),
            (
                "/kms.v1.KeyManagementService/GetKeyPolicy",
                Some(ManagementRead),
            ),
            (
                "/kms.v1.KeyManagementService/GetParametersForImport",
                Some(ManagementRead),
            ),
            (
                "/kms.v1.KeyManagementService/CheckKeyAssociation",
                Some(ManagementRead),
            ),
            (
                "/kms.v1.KeyManagementService/DisableKey",
                Some(ManagementWrite),
            ),
            (
                "/kms.v1.AccessKeyService/CreateAccessKey",
                Some(ManagementWrite),
            ),
            (
                "/kms.v1.AccessKeyService/DeleteAccessKey",
                Some(ManagementWrite),
            ),
            (
                "/kms.v1.AccessKeyService/ListAccessKeys",
                Some(ManagementRead),
            ),
            (
                "/kms.v1.AccessKeyResolver/ResolveAccessKey",
                Some(ManagementRead),
            ),
            (
                "/kms.v1.KeyManagementService/SetKeyPolicy",
                Some(ManagementWrite),
            ),
            (
                "/kms.v1.KeyManagementService/TagResources",
                Some(ManagementWrite),
            ),
            (
                "/kms.v1.KmsInstanceService/GetKmsInstance",
                Some(ManagementRead),
            ),
            (
                "/kms.v1.KmsInstanceService/ShareKmsInstance",
                Some(ManagementWrite),
            ),
            (
                "/kms.v1.KmsInstanceService/UpdateKmsInstance",
                Some(ManagementWrite),
            ),
            ("/kms.internal.v1.KeyDirectory/GetKey", None),
            ("/kms.internal.v1.KeyMaterial/Generate", None),
            ("/grpc.health.v1.Health/Check", None),
            ("/other.Service/Thing", Some(ManagementRead)),
            ("/nonsense", None),
        ];
        for (path, want) in cases {
            assert_eq!(classify(path), want, "{path}");
        }
    }

    fn limiter(rate: RateConfig) -> (RateLimiter, Arc<ManualClock>) {
        let cfg = LimitsConfig {
            symmetric: rate,
            ..LimitsConfig::default()
        };
        let clock = Arc::new(ManualClock::new());
        (RateLimiter::with_clock(&cfg, clock.clone()), clock)
    }

    #[test]
    fn burst_then_throttling_then_refill() {
        let (lim, clock) = limiter(RateConfig {
            per_second: 10,
            burst: Some(3),
        });
        let alice = Principal::parse("acs:ram::1:user/alice").unwrap();
        let bob = Principal::parse("acs:ram::1:user/bob").unwrap();
        for _ in 0..3 {
            lim.check(&alice, OpClass::SymmetricCrypto).unwrap();
        }
        assert_eq!(
            lim.check(&alice, OpClass::SymmetricCrypto),
            Err(DomainError::Throttling)
        );
        // Other principals and other classes have their own budgets.
        lim.check(&bob, OpClass::SymmetricCrypto).unwrap();
        lim.check(&alice, OpClass::ManagementRead).unwrap();
        // 10/s: one call's worth after 100 ms, not before.
        clock.advance(Duration::from_millis(99));
        assert_eq!(
            lim.check(&alice, OpClass::SymmetricCrypto),
            Err(DomainError::Throttling)
        );
        clock.advance(Duration::from_millis(2));
        lim.check(&alice, OpClass::SymmetricCrypto).unwrap();
        assert!(lim.check(&alice, OpClass::SymmetricCrypto).is_err());
        // A long pause refills to the burst, no more.
        clock.advance(Duration::from_secs(60));
        for _ in 0..3 {
            lim.check(&alice, OpClass::SymmetricCrypto).unwrap();
        }
        assert!(lim.check(&alice, OpClass::SymmetricCrypto).is_err());
    }

    #[test]
    fn burst_defaults_to_the_rate() {
        let (lim, _clock) = limiter(RateConfig::new(5));
        let p = Principal::parse("acs:ram::1:root").unwrap();
        for _ in 0..5 {
            lim.check(&p, OpClass::SymmetricCrypto).unwrap();
        }
        assert!(lim.check(&p, OpClass::SymmetricCrypto).is_err());
    }

    #[test]
    fn idle_principals_are_swept() {
        let (lim, clock) = limiter(RateConfig::new(1000));
        for i in 0..SWEEP_THRESHOLD {
            let p = Principal::parse(&format!("acs:ram::1:user/u{i}")).unwrap();
            lim.check(&p, OpClass::SymmetricCrypto).unwrap();
        }
        assert_eq!(lim.tracked(), SWEEP_THRESHOLD);
        clock.advance(Duration::from_secs(1));
        let p = Principal::parse("acs:ram::1:user/new").unwrap();
        lim.check(&p, OpClass::SymmetricCrypto).unwrap();
        assert_eq!(lim.tracked(), 1);
    }

    #[test]
    fn config_defaults_and_validation() {
        let c: LimitsConfig = toml::from_str("").unwrap();
        assert_eq!(c, LimitsConfig::default());
        assert_eq!(c.symmetric.burst(), 1000);
        assert_eq!(c.create_key.per_second, 10);
        assert_eq!(c.max_decoding_message_size(), 65536);
        assert!(c.validate().is_ok());
        let c: LimitsConfig =
            toml::from_str("[symmetric]\nper_second = 1000000\nburst = 2000000\n").unwrap();
        assert_eq!(c.symmetric.burst(), 2_000_000);
        assert!(c.validate().is_ok());
        let check = |text: &str, want: &str| {
            let err = match toml::from_str::<LimitsConfig>(text) {
                Ok(c) => c.validate().unwrap_err(),
                Err(e) => e.to_string(),
            };
            assert!(err.contains(want), "{text}: {err}");
        };
        check("max_request_bytes = 100", "limits.max_request_bytes");
        check("max_request_bytes = 8388608", "limits.max_request_bytes");
        check("default_deadline_ms = 0", "limits.default_deadline_ms");
        check("[read]\nper_second = 0", "limits.read.per_second");
        check("[write]\nper_second = 1\nburst = 0", "limits.write.burst");
        check("[write]\nrate = 1", "unknown field");
        check("[writes]\nper_second = 1", "unknown field");
    }

    #[test]
    fn reference_configs_document_the_defaults() {
        for text in [
            include_str!("../../../deploy/config/control.toml"),
            include_str!("../../../deploy/config/data.toml"),
        ] {
            let table: toml::Table = toml::from_str(text).unwrap();
            let limits: LimitsConfig = table["limits"].clone().try_into().unwrap();
            assert_eq!(limits, LimitsConfig::default());
        }
    }

    #[test]
    fn connection_and_deadline_defaults() {
        let c = LimitsConfig::default();
        assert_eq!(c.max_deadline(), Duration::from_secs(60));
        assert_eq!(c.request_body_timeout(), Duration::from_secs(10));
        assert_eq!(c.max_connections, 4096);
        assert_eq!(c.max_concurrent_streams, 128);
        assert_eq!(c.tls_handshake_timeout(), Duration::from_secs(5));
        assert_eq!(c.idle_timeout(), Duration::from_secs(60));
        assert_eq!(c.keepalive_interval(), Duration::from_secs(30));
        assert_eq!(c.keepalive_timeout(), Duration::from_secs(10));
        assert_eq!(c.unauthenticated.per_second, 10);
        assert_eq!(c.unauthenticated.burst(), 20);
        assert_eq!(c.refusal_summary_interval(), Duration::from_secs(60));
    }

    #[test]
    fn connection_and_deadline_validation() {
        // (TOML under [limits], the error it must name; "" when valid)
        let cases = [
            ("max_deadline_ms = 600000", ""),
            ("max_deadline_ms = 600001", "limits.max_deadline_ms"),
            ("max_deadline_ms = 0", "limits.max_deadline_ms"),
            // Shorter than the default deadline: a call without grpc-timeout would get more.
            (
                "default_deadline_ms = 5000\nmax_deadline_ms = 4999",
                "limits.max_deadline_ms",
            ),
            ("default_deadline_ms = 5000\nmax_deadline_ms = 5000", ""),
            ("request_body_timeout_ms = 1", ""),
            (
                "request_body_timeout_ms = 0",
                "limits.request_body_timeout_ms",
            ),
            (
                "request_body_timeout_ms = 600001",
                "limits.request_body_timeout_ms",
            ),
            ("max_connections = 1", ""),
            ("max_connections = 0", "limits.max_connections"),
            ("max_connections = 1000001", "limits.max_connections"),
            (
                "max_concurrent_streams = 0",
                "limits.max_concurrent_streams",
            ),
            (
                "max_concurrent_streams = 10001",
                "limits.max_concurrent_streams",
            ),
            ("tls_handshake_timeout_ms = 60000", ""),
            (
                "tls_handshake_timeout_ms = 0",
                "limits.tls_handshake_timeout_ms",
            ),
            (
                "tls_handshake_timeout_ms = 60001",
                "limits.tls_handshake_timeout_ms",
            ),
            ("idle_timeout_ms = 0", "limits.idle_timeout_ms"),
            ("idle_timeout_ms = 3600001", "limits.idle_timeout_ms"),
            ("keepalive_interval_ms = 0", "limits.keepalive_interval_ms"),
            ("keepalive_timeout_ms = 0", "limits.keepalive_timeout_ms"),
            (
                "refusal_summary_interval_ms = 0",
                "limits.refusal_summary_interval_ms",
            ),
            ("[unauthenticated]\nper_second = 1\nburst = 1", ""),
            (
                "[unauthenticated]\nper_second = 0",
                "limits.unauthenticated.per_second",
            ),
            (
                "[unauthenticated]\nper_second = 1\nburst = 0",
                "limits.unauthenticated.burst",
            ),
            ("max_conections = 1", "unknown field"),
        ];
        for (text, want) in cases {
            let got = match toml::from_str::<LimitsConfig>(text) {
                Ok(c) => c.validate().err().unwrap_or_default(),
                Err(e) => e.to_string(),
            };
            if want.is_empty() {
                assert_eq!(got, "", "{text}");
            } else {
                assert!(got.contains(want), "{text}: {got}");
            }
        }
    }

    #[test]
    fn peer_keys() {
        let cases = [
            (Some("10.1.2.3"), "10.1.2.3"),
            (Some("::ffff:10.1.2.3"), "10.1.2.3"),
            (Some("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::"),
            (Some("2001:db8:1:2:ffff::1"), "2001:db8:1:2::"),
            (Some("2001:db8:1:3::1"), "2001:db8:1:3::"),
            (None, "::"),
        ];
        for (ip, want) in cases {
            let ip = ip.map(|i| i.parse::<IpAddr>().unwrap());
            assert_eq!(peer_key(ip), want.parse::<IpAddr>().unwrap(), "{ip:?}");
        }
    }

    #[test]
    fn calls_without_identity_are_limited_per_peer() {
        let cfg = LimitsConfig {
            unauthenticated: RateConfig {
                per_second: 2,
                burst: Some(3),
            },
            ..LimitsConfig::default()
        };
        let clock = Arc::new(ManualClock::new());
        let lim = RateLimiter::with_clock(&cfg, clock.clone());
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        for _ in 0..3 {
            lim.check_peer(ip("10.0.0.1")).unwrap();
        }
        assert_eq!(lim.check_peer(ip("10.0.0.1")), Err(DomainError::Throttling));
        // Another address has its own budget; addresses in one IPv6 /64 share theirs.
        lim.check_peer(ip("10.0.0.2")).unwrap();
        for _ in 0..3 {
            lim.check_peer(ip("2001:db8::1")).unwrap();
        }
        assert_eq!(
            lim.check_peer(ip("2001:db8::2")),
            Err(DomainError::Throttling)
        );
        lim.check_peer(ip("2001:db8:0:1::1")).unwrap();
        // The principals' budgets are separate.
        let p = Principal::parse("acs:ram::1:root").unwrap();
        lim.check(&p, OpClass::ManagementRead).unwrap();
        // 2/s: one call after 500 ms.
        clock.advance(Duration::from_millis(499));
        assert!(lim.check_peer(ip("10.0.0.1")).is_err());
        clock.advance(Duration::from_millis(2));
        lim.check_peer(ip("10.0.0.1")).unwrap();
        assert!(lim.check_peer(ip("10.0.0.1")).is_err());
        assert_eq!(lim.tracked_peers(), 4);
    }

    #[test]
    fn idle_peers_are_swept() {
        let (lim, clock) = limiter(RateConfig::new(1000));
        for i in 0..SWEEP_THRESHOLD {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i as u32));
            lim.check_peer(Some(ip)).unwrap();
        }
        assert_eq!(lim.tracked_peers(), SWEEP_THRESHOLD);
        clock.advance(Duration::from_secs(60));
        lim.check_peer(Some("192.0.2.1".parse().unwrap())).unwrap();
        assert_eq!(lim.tracked_peers(), 1);
    }

    /// Message prefixes are read across any split of the body; the first message over the
    /// limit is named by its length, whatever came before it.
    #[test]
    fn oversized_messages_are_named_by_their_prefix() {
        fn message(len: u32) -> Vec<u8> {
            let mut m = vec![0u8];
            m.extend(len.to_be_bytes());
            m.extend(std::iter::repeat_n(7u8, len as usize));
            m
        }
        let body = [message(10), message(100), message(101), message(3)].concat();
        for split in [1, 2, 3, 5, 7, 64, body.len()] {
            let mut sizes = MessageSizes::new(100);
            let first_error = body
                .chunks(split)
                .map(|chunk| sizes.scan(chunk))
                .find(Result::is_err);
            assert_eq!(first_error, Some(Err(101)), "chunks of {split}");
        }
        let mut sizes = MessageSizes::new(100);
        assert_eq!(sizes.scan(&[message(100), message(0)].concat()), Ok(()));
        let mut huge = MessageSizes::new(65_536);
        assert_eq!(huge.scan(&[0, 0xFF, 0xFF, 0xFF, 0xFF]), Err(4_294_967_295));
        let status = request_too_large_status(1_048_600, 65_536);
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            crate::status::reason_of(&status).as_deref(),
            Some("Rejected.RequestTooLarge")
        );
        assert!(
            status.message().contains("65536 bytes"),
            "{}",
            status.message()
        );
        assert!(
            status.message().contains("GenerateDataKey"),
            "{}",
            status.message()
        );
    }
}
