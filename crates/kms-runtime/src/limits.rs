//! Limits at the edge: per-principal request rates per operation class, the largest request
//! accepted, and the deadline of calls that name none.
//!
//! Rates are token buckets keyed by the authenticated principal and the operation class of the
//! method (see [`classify`]); a call past its budget is refused with `RESOURCE_EXHAUSTED`
//! `Rejected.Throttling`. The internal plane-to-plane services are not limited.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kms_types::{DomainError, Principal};
use serde::Deserialize;

/// Largest `max_request_bytes` accepted: tonic's own default ceiling.
pub const MAX_REQUEST_BYTES_CEILING: usize = 4 * 1024 * 1024;
/// Smallest `max_request_bytes` accepted; below it ordinary calls would not fit.
pub const MAX_REQUEST_BYTES_FLOOR: usize = 16 * 1024;
/// Longest `default_deadline_ms` accepted (10 minutes).
pub const MAX_DEADLINE_MS: u64 = 600_000;

/// `[limits]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest encoded request message accepted, in bytes; larger ones are refused before
    /// decoding. Default 65536.
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// Deadline of a call whose caller sends no `grpc-timeout`, in ms; past it the call is
    /// answered `DEADLINE_EXCEEDED`. Default 30000.
    #[serde(default = "default_deadline_ms")]
    pub default_deadline_ms: u64,
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
        for class in OpClass::ALL {
            let rate = self.rate(class);
            if rate.per_second == 0 {
                return Err(format!(
                    "limits.{}.per_second must be at least 1",
                    class.config_name()
                ));
            }
            if rate.burst == Some(0) {
                return Err(format!(
                    "limits.{}.burst must be at least 1",
                    class.config_name()
                ));
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
        "kms.v1.KeyManagementService" | "kms.v1.KmsInstanceService" => {
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

/// Per-principal token buckets, one per operation class.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    budgets: [Budget; 5],
    clock: Arc<dyn Clock>,
    buckets: Arc<Mutex<HashMap<String, [Option<Bucket>; 5]>>>,
}

impl RateLimiter {
    /// A limiter for `config` on the real clock.
    pub fn new(config: &LimitsConfig) -> Self {
        Self::with_clock(config, Arc::new(MonotonicClock::new()))
    }

    /// A limiter for `config` on `clock`.
    pub fn with_clock(config: &LimitsConfig, clock: Arc<dyn Clock>) -> Self {
        let budget = |class: OpClass| {
            let rate = config.rate(class);
            Budget {
                per_second: f64::from(rate.per_second.max(1)),
                burst: f64::from(rate.burst().max(1)),
            }
        };
        Self {
            budgets: OpClass::ALL.map(budget),
            clock,
            buckets: Arc::new(Mutex::new(HashMap::new())),
        }
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
        let elapsed = now.saturating_sub(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * budget.per_second).min(budget.burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(DomainError::Throttling)
        }
    }

    /// Drops principals whose every bucket has refilled: forgetting them changes nothing.
    fn sweep(&self, map: &mut HashMap<String, [Option<Bucket>; 5]>, now: Duration) {
        map.retain(|_, slots| {
            slots.iter().zip(self.budgets).any(|(slot, budget)| {
                slot.is_some_and(|b| {
                    let elapsed = now.saturating_sub(b.last).as_secs_f64();
                    b.tokens + elapsed * budget.per_second < budget.burst
                })
            })
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
}
