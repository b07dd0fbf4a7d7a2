//! The edge layer both planes put in front of their services, with
//! `Server::builder().layer(AuthLayer::from_config(..)?)`.
//!
//! For every call except `grpc.health.v1.*` and `grpc.reflection.*`, in this order:
//!
//! 1. takes the request id from `x-request-id` when it is a sane token (1–128 of
//!    `A-Z a-z 0-9 - _ . :`), else makes a UUID; puts it in the request's extensions
//!    ([`RequestId`]) and echoes it in the response's `x-request-id`;
//! 2. identifies the caller ([`Identifier`]: client certificate, trusted sidecar header,
//!    development header) and puts the [`Principal`] in the request's extensions, so handlers'
//!    [`crate::caller`] works; no identity answers `UNAUTHENTICATED` `Forbidden.NoIdentity`
//!    without calling the service, or `RESOURCE_EXHAUSTED` `Rejected.Throttling` once the
//!    peer address has spent its budget of such calls (`limits.unauthenticated`);
//! 3. refuses a call to an internal service (`kms.internal.*`) whose identity is not a client
//!    certificate with `PERMISSION_DENIED` `Forbidden.NoPermission`, unless the development
//!    header is on: a sidecar's header never names the other plane;
//! 4. charges the principal's rate budget for the method's class ([`crate::limits`]); past it,
//!    answers `RESOURCE_EXHAUSTED` `Rejected.Throttling` without calling the service;
//! 5. calls the service within its deadline: the caller's `grpc-timeout`, cut to
//!    `limits.max_deadline_ms`, or the default deadline when it sent none (past it:
//!    `DEADLINE_EXCEEDED` `Rejected.DeadlineExceeded`);
//! 6. appends the call's audit line ([`crate::audit`]), with the key the handler noted in the
//!    request's [`AuditNote`], and waits until it is on disk; if that fails and the log fails
//!    closed, answers `UNAVAILABLE` instead of the service's answer.
//!
//! Refusals of calls without identity are audited per peer address and interval
//! (`limits.refusal_summary_interval_ms`): the first in full, the others only counted, into one
//! summary line when the interval ends, so a flood of them cannot fill the disk. A summary
//! line has an empty principal, outcome `denied`, status `RESOURCE_EXHAUSTED` when any was
//! throttled (else `UNAUTHENTICATED`), and the action
//! `edge/RefusedWithoutIdentity?peer=<address>&unauthenticated=<n>&throttled=<n>&interval_ms=<ms>`.
//!
//! Statuses the layer makes are trailers-only gRPC responses. The status of an answer is read
//! from its headers, where tonic puts every error of a unary call; a streaming call is recorded
//! as it opens. A call abandoned before it finishes (the client went away, tonic's own
//! `grpc-timeout` fired) is recorded as `CANCELLED`.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use http::HeaderValue;
use kms_types::{DomainError, Principal};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Code, Status};
use tower::{Layer, Service};
use tracing::Instrument;

use crate::audit::{
    AuditChain, AuditConfig, AuditError, AuditEvent, AuditLog, AuditNote, Outcome, code_name,
};
use crate::connections::ConnInfo;
use crate::identity::{Credentials, Identifier, IdentityConfig};
use crate::limits::{Clock, LimitsConfig, RateLimiter, classify, peer_key};
use crate::metrics;
use crate::status::{edge_status, framework_refusal, reason_of, to_status};
use crate::telemetry;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The request-id header, read from requests and set on responses.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Longest request id taken from a caller.
const MAX_REQUEST_ID: usize = 128;
/// Longest action recorded; longer method paths are cut.
const MAX_ACTION: usize = 256;
/// Method paths of the internal plane-to-plane services.
const INTERNAL_PREFIX: &str = "/kms.internal.";
/// Peers whose refusals are counted separately; refusals from further peers in the same
/// interval are counted together under the unspecified address `::`.
const MAX_REFUSAL_PEERS: usize = 10_000;
/// The gRPC deadline header.
const GRPC_TIMEOUT_HEADER: &str = "grpc-timeout";

/// The id of a call, in its request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

impl RequestId {
    /// The id of `request`, if it passed through [`AuthLayer`].
    pub fn of<T>(request: &tonic::Request<T>) -> Option<&str> {
        request
            .extensions()
            .get::<RequestId>()
            .map(|r| r.0.as_str())
    }
}

/// Why the edge layer could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// A setting breaks a rule.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The audit log could not be opened.
    #[error(transparent)]
    Audit(#[from] AuditError),
}

#[derive(Debug)]
struct Edge {
    identifier: Identifier,
    audit: AuditLog,
    limiter: RateLimiter,
    default_deadline: Duration,
    max_deadline: Duration,
    refusals: Refusals,
    flusher_started: AtomicBool,
}

impl Edge {
    /// The deadline of a call: the caller's `grpc-timeout` cut to the maximum, or the default
    /// when it sent none (or one that does not parse, which tonic ignores too).
    fn deadline(&self, headers: &http::HeaderMap) -> Duration {
        match headers
            .get(GRPC_TIMEOUT_HEADER)
            .and_then(|v| parse_grpc_timeout(v.as_bytes()))
        {
            Some(asked) => asked.min(self.max_deadline),
            None => self.default_deadline,
        }
    }

    /// Starts the task that writes refusal summaries when their interval ends, once, on the
    /// runtime of the first refusal.
    fn start_flusher(self: &Arc<Self>) {
        if self.flusher_started.swap(true, Ordering::SeqCst) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.flusher_started.store(false, Ordering::SeqCst);
            return;
        };
        let edge = Arc::downgrade(self);
        let period = self.refusals.interval;
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(edge) = edge.upgrade() else {
                    break;
                };
                for event in edge.refusals.ended() {
                    edge.audit.append_detached(event);
                }
            }
        });
    }
}

/// A `grpc-timeout` value: 1 to 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
fn parse_grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = std::str::from_utf8(digits).ok()?.parse::<u64>().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Refusals of calls without identity from one peer in the current interval.
#[derive(Debug, Clone, Copy)]
struct RefusalWindow {
    start: Duration,
    unauthenticated: u64,
    throttled: u64,
}

/// Counts refusals of calls without identity per peer, so each peer costs the audit log at
/// most two lines per interval.
#[derive(Debug)]
struct Refusals {
    interval: Duration,
    clock: Arc<dyn Clock>,
    peers: Mutex<HashMap<IpAddr, RefusalWindow>>,
}

impl Refusals {
    fn new(interval: Duration, clock: Arc<dyn Clock>) -> Self {
        Self {
            interval,
            clock,
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// Notes a refusal from `peer`: whether it gets its own audit line (the first of its
    /// interval), and the summary of the peer's previous interval when that just ended.
    fn note(&self, peer: IpAddr, throttled: bool) -> (bool, Option<AuditEvent>) {
        let now = self.clock.now();
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        let peer = if peers.len() >= MAX_REFUSAL_PEERS && !peers.contains_key(&peer) {
            peer_key(None)
        } else {
            peer
        };
        let fresh = RefusalWindow {
            start: now,
            unauthenticated: 0,
            throttled: 0,
        };
        match peers.get_mut(&peer) {
            Some(window) if now.saturating_sub(window.start) < self.interval => {
                if throttled {
                    window.throttled += 1;
                } else {
                    window.unauthenticated += 1;
                }
                (false, None)
            }
            Some(window) => {
                let summary = self.summary(peer, *window);
                *window = fresh;
                (true, summary)
            }
            None => {
                peers.insert(peer, fresh);
                (true, None)
            }
        }
    }

    /// The summary lines of intervals that have ended; their peers are forgotten.
    fn ended(&self) -> Vec<AuditEvent> {
        let now = self.clock.now();
        let mut lines = Vec::new();
        self.peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|peer, window| {
                if now.saturating_sub(window.start) < self.interval {
                    return true;
                }
                lines.extend(self.summary(*peer, *window));
                false
            });
        lines
    }

    /// The summary line of a peer's interval, if anything was counted in it.
    fn summary(&self, peer: IpAddr, window: RefusalWindow) -> Option<AuditEvent> {
        if window.unauthenticated == 0 && window.throttled == 0 {
            return None;
        }
        Some(AuditEvent {
            time: SystemTime::now(),
            request_id: uuid::Uuid::new_v4().to_string(),
            principal: String::new(),
            action: format!(
                "edge/RefusedWithoutIdentity?peer={peer}&unauthenticated={}&throttled={}&interval_ms={}",
                window.unauthenticated,
                window.throttled,
                self.interval.as_millis()
            ),
            key_id: String::new(),
            key_version_id: String::new(),
            previous_key_id: String::new(),
            outcome: Outcome::Denied,
            status: if window.throttled > 0 {
                Code::ResourceExhausted
            } else {
                Code::Unauthenticated
            },
            trace_id: String::new(),
        })
    }
}

/// The tower layer that authenticates, limits and audits every call of a server.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    edge: Arc<Edge>,
}

impl AuthLayer {
    /// A layer from its parts, with the default deadline given and the other limits at their
    /// defaults (the longest deadline at least the default one).
    pub fn new(
        identifier: Identifier,
        audit: AuditLog,
        limiter: RateLimiter,
        default_deadline: Duration,
    ) -> Self {
        let defaults = LimitsConfig::default();
        let limits = LimitsConfig {
            default_deadline_ms: u64::try_from(default_deadline.as_millis()).unwrap_or(u64::MAX),
            max_deadline_ms: defaults
                .max_deadline_ms
                .max(u64::try_from(default_deadline.as_millis()).unwrap_or(u64::MAX)),
            ..defaults
        };
        Self::with_limits(identifier, audit, limiter, &limits)
    }

    /// A layer from its parts, with the deadlines and the refusal interval of `limits` (the
    /// rates are the limiter's).
    pub fn with_limits(
        identifier: Identifier,
        audit: AuditLog,
        limiter: RateLimiter,
        limits: &LimitsConfig,
    ) -> Self {
        let refusals = Refusals::new(limits.refusal_summary_interval(), limiter.clock());
        Self {
            edge: Arc::new(Edge {
                identifier,
                audit,
                limiter,
                default_deadline: limits.default_deadline(),
                max_deadline: limits.max_deadline(),
                refusals,
                flusher_started: AtomicBool::new(false),
            }),
        }
    }

    /// Validates the three sections, opens the audit log keyed with `chain` (starting its
    /// writer thread) and builds the layer.
    pub fn from_config(
        identity: &IdentityConfig,
        audit: &AuditConfig,
        chain: AuditChain,
        limits: &LimitsConfig,
    ) -> Result<Self, EdgeError> {
        let identifier = Identifier::new(identity).map_err(EdgeError::Config)?;
        audit.validate().map_err(EdgeError::Config)?;
        limits.validate().map_err(EdgeError::Config)?;
        let log = AuditLog::open(audit, chain)?;
        Ok(Self::with_limits(
            identifier,
            log,
            RateLimiter::new(limits),
            limits,
        ))
    }

    /// The audit log the layer writes.
    pub fn audit_log(&self) -> &AuditLog {
        &self.edge.audit
    }

    /// Writes the summary lines of refusal intervals that have ended; a task started with the
    /// first refusal does so every interval.
    pub fn flush_refusals(&self) {
        for event in self.edge.refusals.ended() {
            self.edge.audit.append_detached(event);
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            edge: Arc::clone(&self.edge),
        }
    }
}

/// The service [`AuthLayer`] wraps around a server's routes.
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    edge: Arc<Edge>,
}

/// Whether a method path skips the layer.
fn is_exempt(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.") || path.starts_with("/grpc.reflection.")
}

/// The caller's request id when it is a sane token, else a fresh UUID.
fn request_id(headers: &http::HeaderMap) -> String {
    headers
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|s| {
            !s.is_empty()
                && s.len() <= MAX_REQUEST_ID
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map(str::to_string)
        .unwrap_or_else(new_request_id)
}

/// A request id for a call that brought none: this process's random 64-bit prefix and a
/// counter, unique across processes and restarts without a random draw (a system call) on
/// every call.
fn new_request_id() -> String {
    static PREFIX: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| format!("{:016x}", uuid::Uuid::new_v4().as_u64_pair().0));
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{n:x}", *PREFIX)
}

/// The audit line of a call in flight; written as `CANCELLED` if the call is dropped first.
struct Pending {
    edge: Arc<Edge>,
    note: AuditNote,
    event: Option<AuditEvent>,
}

impl Pending {
    fn finish(&mut self, status: Code, outcome: Outcome) -> Option<AuditEvent> {
        let mut event = self.event.take()?;
        let (key_id, key_version_id) = self.note.key();
        event.time = SystemTime::now();
        event.key_id = key_id;
        event.key_version_id = key_version_id;
        event.previous_key_id = self.note.previous_key();
        event.status = status;
        event.outcome = outcome;
        Some(event)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(event) = self.finish(Code::Cancelled, Outcome::Error) {
            self.edge.audit.append_detached(event);
        }
    }
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, ReqB, ResB> Service<http::Request<ReqB>> for AuthService<S>
where
    S: Service<http::Request<ReqB>, Response = http::Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Send + 'static,
    ResB: Default + Send + 'static,
{
    type Response = http::Response<ResB>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqB>) -> Self::Future {
        // Use the service that was polled ready; leave a fresh clone for the next call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let path = req.uri().path();
        if is_exempt(path) {
            return Box::pin(inner.call(req));
        }
        let edge = Arc::clone(&self.edge);
        let started = Instant::now();
        let action = path.trim_start_matches('/');
        let action = action[..action.len().min(MAX_ACTION)].to_string();
        // Only methods the service has become a metric label: a caller chooses the path.
        let method = kms_types::authz::Rpc::from_path(path)
            .map_or("unknown", |rpc| rpc.path().trim_start_matches('/'));
        let class = classify(path);
        let request_id = request_id(req.headers());
        let internal = path.starts_with(INTERNAL_PREFIX);
        let (tls_certs, peer_ip) = peer_of(req.extensions());
        let identified = edge.identifier.identify(&Credentials {
            peer_certs: tls_certs.as_deref().map(Vec::as_slice),
            peer_ip,
            headers: Some(req.headers()),
        });
        let deadline = edge.deadline(req.headers());
        let note = AuditNote::new();
        req.extensions_mut().insert(note.clone());
        req.extensions_mut().insert(RequestId(request_id.clone()));
        // At debug level: the log formats a span's fields when it is created, and at the usual
        // info level no line inside a call reads them (the edge's own error lines name the
        // request id). Traces get the span whatever the log level ([`telemetry::init`]).
        let span = tracing::debug_span!(
            "rpc",
            otel.name = %action,
            otel.kind = "server",
            rpc.system = "grpc",
            request_id = %request_id,
            action = %action,
            principal = tracing::field::Empty,
            code = tracing::field::Empty,
        );
        // A caller's trace continues here: the call's span is a child of the caller's.
        let remote = telemetry::extract(req.headers());
        let _ = span.set_parent(remote.clone());
        let trace_id = span.in_scope(|| telemetry::trace_id(&remote));
        let mut pending = Pending {
            edge: Arc::clone(&edge),
            note,
            event: Some(AuditEvent {
                time: SystemTime::now(),
                request_id: request_id.clone(),
                principal: String::new(),
                action,
                key_id: String::new(),
                key_version_id: String::new(),
                previous_key_id: String::new(),
                outcome: Outcome::Error,
                status: Code::Unknown,
                trace_id,
            }),
        };

        let fut = async move {
            let (mut response, outcome) = match identified {
                Err(err) => {
                    let throttled = edge.limiter.check_peer(peer_ip).is_err();
                    if throttled {
                        metrics::EDGE.rate_limited("unauthenticated");
                    }
                    let status = if throttled {
                        to_status(DomainError::Throttling)
                    } else {
                        to_status(err)
                    };
                    let (own_line, summary) = edge.refusals.note(peer_key(peer_ip), throttled);
                    if let Some(summary) = summary {
                        edge.audit.append_detached(summary);
                    }
                    edge.start_flusher();
                    if !own_line {
                        // Counted into the peer's summary line instead of a line of its own.
                        pending.event.take();
                        metrics::EDGE.call(
                            method,
                            code_name(status.code()),
                            reason_of(&status).unwrap_or_default(),
                            started.elapsed(),
                        );
                        let mut response = status.into_http();
                        if let Ok(value) = HeaderValue::from_str(&request_id) {
                            response.headers_mut().insert(REQUEST_ID_HEADER, value);
                        }
                        return Ok(response);
                    }
                    (status.into_http(), Some(Outcome::Denied))
                }
                Ok((principal, source))
                    if internal && !edge.identifier.accepts_internal(source) =>
                {
                    tracing::warn!(
                        principal = %principal.arn(),
                        %request_id,
                        ?source,
                        "internal service called without a client certificate; refused"
                    );
                    if let Some(event) = pending.event.as_mut() {
                        event.principal = principal.arn().to_string();
                    }
                    (
                        to_status(DomainError::NoPermission).into_http(),
                        Some(Outcome::Denied),
                    )
                }
                Ok((principal, source)) => {
                    tracing::Span::current().record("principal", principal.arn());
                    tracing::trace!(?source, "caller identified");
                    if let Some(event) = pending.event.as_mut() {
                        event.principal = principal.arn().to_string();
                    }
                    match class.map(|c| edge.limiter.check(&principal, c)) {
                        Some(Err(err)) => {
                            if let Some(class) = class {
                                metrics::EDGE.rate_limited(class.config_name());
                            }
                            (to_status(err).into_http(), Some(Outcome::Denied))
                        }
                        _ => match call_inner(&mut inner, req, principal, deadline).await {
                            Ok(response) => (response, None),
                            Err(err) => {
                                if let Some(event) = pending.finish(Code::Unknown, Outcome::Error) {
                                    edge.audit.append_detached(event);
                                }
                                return Err(err);
                            }
                        },
                    }
                }
            };
            let status = Status::from_header_map(response.headers());
            let code = status.as_ref().map_or(Code::Ok, Status::code);
            let outcome = outcome.unwrap_or_else(|| match &status {
                Some(s)
                    if s.code() == Code::ResourceExhausted
                        && reason_of(s).as_deref() == Some("Rejected.Throttling") =>
                {
                    Outcome::Denied
                }
                _ => Outcome::of_code(code),
            });
            tracing::Span::current().record("code", code_name(code));
            if let Some(event) = pending.finish(code, outcome)
                && let Err(err) = edge.audit.append(event).await
            {
                if edge.audit.fail_closed() {
                    tracing::error!(error = %err, %request_id, "audit log write failed; refusing the call");
                    response = to_status(DomainError::Unavailable(
                        "the audit log cannot be written".into(),
                    ))
                    .into_http();
                } else {
                    tracing::error!(error = %err, %request_id, "audit log write failed; answering anyway (audit.fail_closed = false)");
                }
            }
            if let Ok(value) = HeaderValue::from_str(&request_id) {
                response.headers_mut().insert(REQUEST_ID_HEADER, value);
            }
            let answered = Status::from_header_map(response.headers());
            metrics::EDGE.call(
                method,
                code_name(answered.as_ref().map_or(Code::Ok, Status::code)),
                answered.as_ref().and_then(reason_of).unwrap_or_default(),
                started.elapsed(),
            );
            tracing::debug!(code = code_name(code), ?outcome, "call finished");
            Ok(response)
        };
        Box::pin(fut.instrument(span))
    }
}

/// The peer's certificate chain (TLS) and address, from tonic's connect info: ours when the
/// connection came through [`crate::connections::incoming`], tonic's own otherwise.
fn peer_of(
    extensions: &http::Extensions,
) -> (
    Option<Arc<Vec<rustls::pki_types::CertificateDer<'static>>>>,
    Option<IpAddr>,
) {
    let certs = extensions
        .get::<TlsConnectInfo<ConnInfo>>()
        .and_then(TlsConnectInfo::peer_certs)
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(TlsConnectInfo::peer_certs)
        });
    let addr = match ConnInfo::of(extensions) {
        Some(conn) => conn.remote_addr(),
        None => extensions
            .get::<TcpConnectInfo>()
            .and_then(TcpConnectInfo::remote_addr),
    };
    (certs, addr.map(|a| a.ip()))
}

/// Calls the service as `principal`, within `deadline`.
async fn call_inner<S, ReqB, ResB>(
    inner: &mut S,
    mut req: http::Request<ReqB>,
    principal: Principal,
    deadline: Duration,
) -> Result<http::Response<ResB>, S::Error>
where
    S: Service<http::Request<ReqB>, Response = http::Response<ResB>>,
    ResB: Default,
{
    req.extensions_mut().insert(principal);
    let response = match tokio::time::timeout(deadline, inner.call(req)).await {
        Ok(result) => result?,
        Err(_) => {
            return Ok(edge_status(
                Code::DeadlineExceeded,
                "Rejected.DeadlineExceeded",
                &format!(
                    "the call did not finish within its deadline of {} ms",
                    deadline.as_millis()
                ),
            )
            .into_http());
        }
    };
    // A request the framework could not read never reached a handler: say so precisely.
    let refusal = Status::from_header_map(response.headers())
        .as_ref()
        .and_then(framework_refusal);
    Ok(match refusal {
        Some(status) => status.into_http(),
        None => response,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::sync::Mutex;

    use super::*;
    use crate::audit::verify;
    use crate::identity::{DEFAULT_SIDECAR_HEADER, DEV_PRINCIPAL_HEADER, SidecarConfig};
    use crate::limits::{ManualClock, RateConfig};
    use tower::ServiceExt;

    type Seen = Arc<Mutex<Vec<Option<String>>>>;

    /// A stand-in for a server's routes: records the principal it sees, notes a key, and
    /// answers OK, or an error status when the path ends in `Fail`, or never for `Hang`.
    #[derive(Clone)]
    struct Routes(Seen);

    impl Service<http::Request<()>> for Routes {
        type Response = http::Response<String>;
        type Error = Infallible;
        type Future = BoxFuture<Self::Response, Infallible>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: http::Request<()>) -> Self::Future {
            let seen = Arc::clone(&self.0);
            Box::pin(async move {
                let principal = req
                    .extensions()
                    .get::<Principal>()
                    .map(|p| p.arn().to_string());
                seen.lock().unwrap().push(principal);
                if let Some(note) = req.extensions().get::<AuditNote>() {
                    note.set_key("key-1", "ver-1");
                }
                let path = req.uri().path().to_string();
                if path.ends_with("Hang") {
                    std::future::pending::<()>().await;
                }
                if path.ends_with("Fail") {
                    return Ok(to_status(DomainError::NoPermission).into_http());
                }
                if path.ends_with("Garbled") {
                    // What tonic answers for a request body that does not decode.
                    return Ok(Status::internal("failed to decode Protobuf message").into_http());
                }
                Ok(http::Response::new("ok".to_string()))
            })
        }
    }

    fn routes(seen: Seen) -> Routes {
        Routes(seen)
    }

    fn test_chain() -> AuditChain {
        AuditChain {
            plane: crate::audit::Plane::Data,
            key: crate::audit::AuditKey::from_bytes(&[5u8; 32]).unwrap(),
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        audit_path: std::path::PathBuf,
        layer: AuthLayer,
        clock: Arc<ManualClock>,
    }

    fn fixture(dev_header: bool, sidecar: Option<SidecarConfig>, deadline_ms: u64) -> Fixture {
        fixture_with(
            dev_header,
            sidecar,
            LimitsConfig {
                symmetric: RateConfig {
                    per_second: 1,
                    burst: Some(2),
                },
                default_deadline_ms: deadline_ms,
                max_deadline_ms: deadline_ms.max(60_000),
                ..LimitsConfig::default()
            },
        )
    }

    fn fixture_with(
        dev_header: bool,
        sidecar: Option<SidecarConfig>,
        limits: LimitsConfig,
    ) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let audit_path = dir.path().join("audit.log");
        // A sidecar needs TLS beside it; validation does not read these files.
        let tls = sidecar.as_ref().map(|_| crate::tls::TlsConfig {
            cert_file: "server.pem".into(),
            key_file: "server-key.pem".into(),
            client_ca_file: "ca.pem".into(),
            require_client_cert: false,
            client_cert_file: None,
            client_key_file: None,
            server_ca_file: None,
        });
        let identity = IdentityConfig {
            dev_header,
            service_principal: "acs:ram::1:role/a".into(),
            peer_principal: "acs:ram::1:role/b".into(),
            tls,
            trusted_sidecar: sidecar,
        };
        let clock = Arc::new(ManualClock::new());
        let audit = AuditLog::open(&AuditConfig::new(&audit_path), test_chain()).unwrap();
        let layer = AuthLayer::with_limits(
            Identifier::new(&identity).unwrap(),
            audit,
            RateLimiter::with_clock(&limits, clock.clone()),
            &limits,
        );
        Fixture {
            _dir: dir,
            audit_path,
            layer,
            clock,
        }
    }

    fn request(path: &str, peer: &str, headers: &[(&'static str, &str)]) -> http::Request<()> {
        let mut req = http::Request::builder().uri(path).body(()).unwrap();
        for (k, v) in headers {
            req.headers_mut().insert(*k, v.parse().unwrap());
        }
        req.extensions_mut().insert(TcpConnectInfo {
            local_addr: None,
            remote_addr: Some(SocketAddr::new(peer.parse().unwrap(), 40000)),
        });
        req
    }

    async fn call<S>(svc: &mut S, req: http::Request<()>) -> http::Response<String>
    where
        S: Service<http::Request<()>, Response = http::Response<String>, Error = Infallible>,
    {
        svc.ready().await.unwrap().call(req).await.unwrap()
    }

    fn code(resp: &http::Response<String>) -> Code {
        Status::from_header_map(resp.headers()).map_or(Code::Ok, |s| s.code())
    }

    fn audit_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    const ALICE: &str = "acs:ram::42:user/alice";

    #[tokio::test]
    async fn identifies_limits_and_audits() {
        let f = fixture(true, None, 10_000);
        let seen: Seen = Arc::default();
        let mut svc = f.layer.layer(routes(Arc::clone(&seen)));
        let dev = [
            (DEV_PRINCIPAL_HEADER, ALICE),
            (REQUEST_ID_HEADER, "abc-123"),
        ];

        let resp = call(
            &mut svc,
            request("/kms.v1.CryptoService/Encrypt", "127.0.0.1", &dev),
        )
        .await;
        assert_eq!(code(&resp), Code::Ok);
        assert_eq!(resp.headers()[REQUEST_ID_HEADER], "abc-123");
        assert_eq!(seen.lock().unwrap().as_slice(), [Some(ALICE.to_string())]);

        // No identity: refused before the service runs.
        let resp = call(
            &mut svc,
            request("/kms.v1.CryptoService/Encrypt", "127.0.0.1", &[]),
        )
        .await;
        let status = Status::from_header_map(resp.headers()).unwrap();
        assert_eq!(status.code(), Code::Unauthenticated);
        assert_eq!(reason_of(&status).as_deref(), Some("Forbidden.NoIdentity"));
        let generated = resp.headers()[REQUEST_ID_HEADER]
            .to_str()
            .unwrap()
            .to_string();
        assert!(made_here(&generated), "{generated}");
        assert_eq!(seen.lock().unwrap().len(), 1);

        // A handler's error status; then the burst of 2 is spent, then throttled.
        let resp = call(
            &mut svc,
            request("/kms.v1.CryptoService/DecryptFail", "127.0.0.1", &dev),
        )
        .await;
        assert_eq!(code(&resp), Code::PermissionDenied);
        let resp = call(
            &mut svc,
            request("/kms.v1.CryptoService/Encrypt", "127.0.0.1", &dev),
        )
        .await;
        let status = Status::from_header_map(resp.headers()).unwrap();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(reason_of(&status).as_deref(), Some("Rejected.Throttling"));
        assert_eq!(seen.lock().unwrap().len(), 2);
        // Another class is not affected; after a second the budget is back.
        let resp = call(
            &mut svc,
            request(
                "/kms.v1.KeyManagementService/DescribeKey",
                "127.0.0.1",
                &dev,
            ),
        )
        .await;
        assert_eq!(code(&resp), Code::Ok);
        f.clock.advance(Duration::from_secs(1));
        let resp = call(
            &mut svc,
            request("/kms.v1.CryptoService/Encrypt", "127.0.0.1", &dev),
        )
        .await;
        assert_eq!(code(&resp), Code::Ok);
        // Internal services are not limited.
        for _ in 0..5 {
            let resp = call(
                &mut svc,
                request("/kms.internal.v1.KeyMaterial/Generate", "127.0.0.1", &dev),
            )
            .await;
            assert_eq!(code(&resp), Code::Ok);
        }

        // Health and reflection skip the layer entirely: no identity needed, no audit line.
        let resp = call(
            &mut svc,
            request("/grpc.health.v1.Health/Check", "127.0.0.1", &[]),
        )
        .await;
        assert_eq!(code(&resp), Code::Ok);
        assert!(resp.headers().get(REQUEST_ID_HEADER).is_none());
        let resp = call(
            &mut svc,
            request(
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                "127.0.0.1",
                &[],
            ),
        )
        .await;
        assert_eq!(code(&resp), Code::Ok);

        let lines = audit_lines(&f.audit_path);
        let summary: Vec<(String, String, String, String)> = lines
            .iter()
            .map(|l| {
                (
                    l["principal"].as_str().unwrap().to_string(),
                    l["action"].as_str().unwrap().to_string(),
                    l["outcome"].as_str().unwrap().to_string(),
                    l["status_code"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let row = |p: &str, a: &str, o: &str, c: &str| {
            (p.to_string(), a.to_string(), o.to_string(), c.to_string())
        };
        let mut want = vec![
            row(ALICE, "kms.v1.CryptoService/Encrypt", "allowed", "OK"),
            row(
                "",
                "kms.v1.CryptoService/Encrypt",
                "denied",
                "UNAUTHENTICATED",
            ),
            row(
                ALICE,
                "kms.v1.CryptoService/DecryptFail",
                "denied",
                "PERMISSION_DENIED",
            ),
            row(
                ALICE,
                "kms.v1.CryptoService/Encrypt",
                "denied",
                "RESOURCE_EXHAUSTED",
            ),
            row(
                ALICE,
                "kms.v1.KeyManagementService/DescribeKey",
                "allowed",
                "OK",
            ),
            row(ALICE, "kms.v1.CryptoService/Encrypt", "allowed", "OK"),
        ];
        for _ in 0..5 {
            want.push(row(
                ALICE,
                "kms.internal.v1.KeyMaterial/Generate",
                "allowed",
                "OK",
            ));
        }
        assert_eq!(summary, want);
        assert_eq!(lines[0]["request_id"], "abc-123");
        assert_eq!(lines[0]["key_id"], "key-1");
        assert_eq!(lines[0]["key_version_id"], "ver-1");
        assert_eq!(lines[1]["request_id"], generated.as_str());
        assert_eq!(lines[1]["key_id"], "");
        assert_eq!(verify(&f.audit_path), Ok(want.len()));
    }

    #[tokio::test]
    async fn sidecar_through_the_layer() {
        let f = fixture(
            false,
            Some(SidecarConfig {
                header: DEFAULT_SIDECAR_HEADER.into(),
                trusted_peers: vec!["10.0.0.0/24".into()],
            }),
            10_000,
        );
        let seen: Seen = Arc::default();
        let mut svc = f.layer.layer(routes(Arc::clone(&seen)));
        let hdr = [(DEFAULT_SIDECAR_HEADER, ALICE)];
        let resp = call(
            &mut svc,
            request("/kms.v1.KeyManagementService/ListKeys", "10.0.0.7", &hdr),
        )
        .await;
        assert_eq!(code(&resp), Code::Ok);
        let resp = call(
            &mut svc,
            request("/kms.v1.KeyManagementService/ListKeys", "10.0.1.7", &hdr),
        )
        .await;
        assert_eq!(code(&resp), Code::Unauthenticated);
        // The development header is off here.
        let resp = call(
            &mut svc,
            request(
                "/kms.v1.KeyManagementService/ListKeys",
                "10.0.0.7",
                &[(DEV_PRINCIPAL_HEADER, ALICE)],
            ),
        )
        .await;
        assert_eq!(code(&resp), Code::Unauthenticated);
        // A sidecar naming the other plane does not reach an internal service: only a client
        // certificate does, outside development. Public services still take the sidecar.
        for path in [
            "/kms.internal.v1.KeyDirectory/GetKey",
            "/kms.internal.v1.KeyMaterial/Generate",
        ] {
            let resp = call(
                &mut svc,
                request(
                    path,
                    "10.0.0.7",
                    &[(DEFAULT_SIDECAR_HEADER, "acs:ram::1:role/b")],
                ),
            )
            .await;
            let status = Status::from_header_map(resp.headers()).unwrap();
            assert_eq!(status.code(), Code::PermissionDenied, "{path}");
            assert_eq!(
                reason_of(&status).as_deref(),
                Some("Forbidden.NoPermission"),
                "{path}"
            );
        }
        assert_eq!(seen.lock().unwrap().as_slice(), [Some(ALICE.to_string())]);
        let lines = audit_lines(&f.audit_path);
        let last = lines.last().unwrap();
        assert_eq!(last["principal"], "acs:ram::1:role/b");
        assert_eq!(last["outcome"], "denied");
        assert_eq!(last["status_code"], "PERMISSION_DENIED");
    }

    #[tokio::test]
    async fn development_header_keeps_internal_services_open() {
        let f = fixture(true, None, 10_000);
        let seen: Seen = Arc::default();
        let mut svc = f.layer.layer(routes(Arc::clone(&seen)));
        let resp = call(
            &mut svc,
            request(
                "/kms.internal.v1.KeyDirectory/GetKey",
                "127.0.0.1",
                &[(DEV_PRINCIPAL_HEADER, "acs:ram::1:role/b")],
            ),
        )
        .await;
        assert_eq!(code(&resp), Code::Ok);
    }

    #[tokio::test]
    async fn paths_the_service_does_not_serve_are_one_metric_label() {
        let f = fixture(true, None, 10_000);
        let seen: Seen = Arc::default();
        let mut svc = f.layer.layer(routes(Arc::clone(&seen)));
        for path in [
            "/kms.v1.Nope/Chosen-By-The-Caller-1",
            "/x/Chosen-By-The-Caller-2",
        ] {
            let req = request(
                path,
                "127.0.0.1",
                &[(DEV_PRINCIPAL_HEADER, "acs:ram::1:user/a")],
            );
            call(&mut svc, req).await;
        }
        let text = crate::metrics::encode();
        assert!(!text.contains("Chosen-By-The-Caller"), "{text}");
        assert!(
            text.contains(r#"kms_requests_total{method="unknown""#),
            "{text}"
        );
    }

    #[test]
    fn grpc_timeouts_parse() {
        let cases = [
            ("1S", Some(Duration::from_secs(1))),
            ("99999999S", Some(Duration::from_secs(99_999_999))),
            ("2H", Some(Duration::from_secs(7200))),
            ("3M", Some(Duration::from_secs(180))),
            ("250m", Some(Duration::from_millis(250))),
            ("7u", Some(Duration::from_micros(7))),
            ("9n", Some(Duration::from_nanos(9))),
            ("123456789S", None),
            ("S", None),
            ("", None),
            ("10", None),
            ("10s", None),
            ("-1S", None),
            ("1.5S", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_grpc_timeout(text.as_bytes()), want, "{text:?}");
        }
    }

    #[tokio::test]
    async fn callers_deadline_is_capped() {
        let f = fixture_with(
            true,
            None,
            LimitsConfig {
                default_deadline_ms: 10,
                max_deadline_ms: 30,
                ..LimitsConfig::default()
            },
        );
        let seen: Seen = Arc::default();
        let mut svc = f.layer.layer(routes(Arc::clone(&seen)));
        // (grpc-timeout sent, the deadline the call ends at)
        let cases = [
            (Some("99999999S"), 30),
            (Some("2H"), 30),
            (Some("5m"), 5),
            (Some("bogus"), 10),
            (None, 10),
        ];
        for (timeout, want_ms) in cases {
            let mut hdr = vec![(DEV_PRINCIPAL_HEADER, ALICE)];
            if let Some(t) = timeout {
                hdr.push(("grpc-timeout", t));
            }
            let started = std::time::Instant::now();
            let resp = call(
                &mut svc,
                request("/kms.v1.KeyManagementService/Hang", "127.0.0.1", &hdr),
            )
            .await;
            let took = started.elapsed();
            let status = Status::from_header_map(resp.headers()).unwrap();
            assert_eq!(status.code(), Code::DeadlineExceeded, "{timeout:?}");
            assert_eq!(
                reason_of(&status).as_deref(),
                Some("Rejected.DeadlineExceeded"),
                "{timeout:?}"
            );
            assert!(
                status.message().contains(&format!("{want_ms} ms")),
                "{timeout:?}: {}",
                status.message()
            );
            assert!(took < Duration::from_secs(5), "{timeout:?}: {took:?}");
        }
    }

    #[tokio::test]
    async fn calls_without_identity_are_throttled_per_peer_and_summarized() {
        let f = fixture_with(
            true,
            None,
            LimitsConfig {
                unauthenticated: RateConfig {
                    per_second: 1,
                    burst: Some(2),
                },
                refusal_summary_interval_ms: 1000,
                ..LimitsConfig::default()
            },
        );
        let seen: Seen = Arc::default();
        let mut svc = f.layer.layer(routes(Arc::clone(&seen)));
        let path = "/kms.v1.CryptoService/Encrypt";
        let mut got = Vec::new();
        for _ in 0..5 {
            let resp = call(&mut svc, request(path, "10.0.0.1", &[])).await;
            let status = Status::from_header_map(resp.headers()).unwrap();
            assert!(resp.headers().contains_key(REQUEST_ID_HEADER));
            got.push((status.code(), reason_of(&status).unwrap_or_default()));
        }
        let unauth = (Code::Unauthenticated, "Forbidden.NoIdentity".to_string());
        let throttled = (Code::ResourceExhausted, "Rejected.Throttling".to_string());
        assert_eq!(
            got,
            [
                unauth.clone(),
                unauth.clone(),
                throttled.clone(),
                throttled.clone(),
                throttled
            ]
        );
        // Another peer has its own budget and its own first line.
        let resp = call(&mut svc, request(path, "10.0.0.2", &[])).await;
        assert_eq!(code(&resp), Code::Unauthenticated);
        // Identified callers from the throttled address are not affected.
        let resp = call(
            &mut svc,
            request(path, "10.0.0.1", &[(DEV_PRINCIPAL_HEADER, ALICE)]),
        )
        .await;
        assert_eq!(code(&resp), Code::Ok);
        assert!(seen.lock().unwrap().len() == 1);
        // Before the interval ends nothing more is written; after it, one summary line.
        layer_flush_then_call(&f, &mut svc).await;
        assert_eq!(audit_lines(&f.audit_path).len(), 4);
        f.clock.advance(Duration::from_millis(1000));
        layer_flush_then_call(&f, &mut svc).await;
        let lines = audit_lines(&f.audit_path);
        let actions: Vec<&str> = lines
            .iter()
            .map(|l| l["action"].as_str().unwrap())
            .collect();
        assert_eq!(
            actions,
            [
                &path[1..],
                &path[1..],
                &path[1..],
                "kms.v1.KeyManagementService/ListKeys",
                "edge/RefusedWithoutIdentity?peer=10.0.0.1&unauthenticated=1&throttled=3&interval_ms=1000",
                "kms.v1.KeyManagementService/ListKeys",
            ]
        );
        let summary = &lines[4];
        assert_eq!(summary["principal"], "");
        assert_eq!(summary["outcome"], "denied");
        assert_eq!(summary["status_code"], "RESOURCE_EXHAUSTED");
        assert_eq!(verify(&f.audit_path), Ok(6));
        // A new interval starts with a line of its own again.
        f.clock.advance(Duration::from_secs(5));
        let resp = call(&mut svc, request(path, "10.0.0.1", &[])).await;
        assert_eq!(code(&resp), Code::Unauthenticated);
        assert_eq!(audit_lines(&f.audit_path).len(), 7);
    }

    /// Writes the refusal summaries due, then makes an identified call, whose awaited line
    /// comes after them.
    async fn layer_flush_then_call<S>(f: &Fixture, svc: &mut S)
    where
        S: Service<http::Request<()>, Response = http::Response<String>, Error = Infallible>,
    {
        f.layer.flush_refusals();
        let resp = call(
            svc,
            request(
                "/kms.v1.KeyManagementService/ListKeys",
                "127.0.0.1",
                &[(DEV_PRINCIPAL_HEADER, ALICE)],
            ),
        )
        .await;
        assert_eq!(code(&resp), Code::Ok);
    }

    #[tokio::test]
    async fn default_deadline_and_bad_request_ids() {
        let f = fixture(true, None, 5);
        let seen: Seen = Arc::default();
        let mut svc = f.layer.layer(routes(Arc::clone(&seen)));
        let bad_id = "x".repeat(200);
        let hdr = [
            (DEV_PRINCIPAL_HEADER, ALICE),
            (REQUEST_ID_HEADER, bad_id.as_str()),
        ];
        let resp = call(
            &mut svc,
            request("/kms.v1.KeyManagementService/Hang", "127.0.0.1", &hdr),
        )
        .await;
        assert_eq!(code(&resp), Code::DeadlineExceeded);
        let rid = resp.headers()[REQUEST_ID_HEADER].to_str().unwrap();
        assert_ne!(rid, bad_id);
        assert!(made_here(rid), "{rid}");
        let lines = audit_lines(&f.audit_path);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["status_code"], "DEADLINE_EXCEEDED");
        assert_eq!(lines[0]["outcome"], "error");
        assert_eq!(lines[0]["key_id"], "key-1");
    }

    #[tokio::test]
    async fn a_request_the_framework_cannot_read_is_the_callers_fault() {
        let f = fixture(true, None, 10_000);
        let seen: Seen = Arc::default();
        let mut svc = f.layer.layer(routes(Arc::clone(&seen)));
        let resp = call(
            &mut svc,
            request(
                "/kms.v1.KeyManagementService/Garbled",
                "127.0.0.1",
                &[(DEV_PRINCIPAL_HEADER, ALICE)],
            ),
        )
        .await;
        assert_eq!(code(&resp), Code::InvalidArgument);
        let status = Status::from_header_map(resp.headers()).unwrap();
        assert_eq!(
            reason_of(&status).as_deref(),
            Some(crate::status::MALFORMED_REQUEST)
        );
        let lines = audit_lines(&f.audit_path);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["status_code"], "INVALID_ARGUMENT");
    }

    #[tokio::test]
    async fn abandoned_calls_are_recorded() {
        let f = fixture(true, None, 10_000);
        let seen: Seen = Arc::default();
        let mut svc = f.layer.layer(routes(Arc::clone(&seen)));
        // The caller sets a deadline of a minute, so the layer waits; the call is then dropped.
        let hdr = [(DEV_PRINCIPAL_HEADER, ALICE), ("grpc-timeout", "1M")];
        let fut = svc.ready().await.unwrap().call(request(
            "/kms.v1.KeyManagementService/Hang",
            "127.0.0.1",
            &hdr,
        ));
        let out = tokio::time::timeout(Duration::from_millis(5), fut).await;
        assert!(out.is_err());
        // The detached line is written by the writer thread; the next call's line follows it.
        let resp = call(
            &mut svc,
            request(
                "/kms.v1.KeyManagementService/ListKeys",
                "127.0.0.1",
                &hdr[..1],
            ),
        )
        .await;
        assert_eq!(code(&resp), Code::Ok);
        let lines = audit_lines(&f.audit_path);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["status_code"], "CANCELLED");
        assert_eq!(lines[0]["principal"], ALICE);
        assert_eq!(verify(&f.audit_path), Ok(2));
    }

    #[tokio::test]
    async fn audit_failure_fails_closed_or_open() {
        for fail_closed in [true, false] {
            let identity = IdentityConfig {
                dev_header: true,
                service_principal: "acs:ram::1:role/a".into(),
                peer_principal: "acs:ram::1:role/b".into(),
                tls: None,
                trusted_sidecar: None,
            };
            let layer = AuthLayer::from_config(
                &identity,
                &AuditConfig {
                    fail_closed,
                    ..AuditConfig::new("/dev/full")
                },
                test_chain(),
                &LimitsConfig::default(),
            )
            .unwrap();
            let seen: Seen = Arc::default();
            let mut svc = layer.layer(routes(Arc::clone(&seen)));
            let resp = call(
                &mut svc,
                request(
                    "/kms.v1.CryptoService/Encrypt",
                    "127.0.0.1",
                    &[(DEV_PRINCIPAL_HEADER, ALICE)],
                ),
            )
            .await;
            let want = if fail_closed {
                Code::Unavailable
            } else {
                Code::Ok
            };
            assert_eq!(code(&resp), want, "fail_closed = {fail_closed}");
        }
    }

    #[test]
    fn bad_config_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let identity = IdentityConfig {
            dev_header: false,
            service_principal: "acs:ram::1:role/a".into(),
            peer_principal: "acs:ram::1:role/b".into(),
            tls: None,
            trusted_sidecar: None,
        };
        let audit = AuditConfig::new(dir.path().join("a.log"));
        let err = AuthLayer::from_config(&identity, &audit, test_chain(), &LimitsConfig::default())
            .unwrap_err();
        assert!(err.to_string().contains("no authentication mode"), "{err}");
        let audit = AuditConfig::new(dir.path().join("missing-dir").join("a.log"));
        let identity = IdentityConfig {
            dev_header: true,
            ..identity
        };
        let err = AuthLayer::from_config(&identity, &audit, test_chain(), &LimitsConfig::default())
            .unwrap_err();
        assert!(err.to_string().contains("cannot open audit log"), "{err}");
    }

    /// Whether `id` has the shape of [`new_request_id`]'s ids.
    fn made_here(id: &str) -> bool {
        id.split_once('-').is_some_and(|(prefix, n)| {
            prefix.len() == 16
                && !n.is_empty()
                && prefix
                    .bytes()
                    .chain(n.bytes())
                    .all(|b| b.is_ascii_hexdigit())
        })
    }

    #[test]
    fn request_ids() {
        let (a, b) = (new_request_id(), new_request_id());
        assert_ne!(a, b);
        assert_eq!(
            a.split_once('-').map(|p| p.0),
            b.split_once('-').map(|p| p.0)
        );
        // What this plane makes, it accepts from a caller too.
        let mut h = http::HeaderMap::new();
        h.insert(REQUEST_ID_HEADER, a.parse().unwrap());
        assert_eq!(request_id(&h), a);
        let mut h = http::HeaderMap::new();
        for ok in ["a", "req-1", "01J9:abc.def_x", &"z".repeat(128)] {
            h.insert(REQUEST_ID_HEADER, ok.parse().unwrap());
            assert_eq!(request_id(&h), ok);
        }
        for bad in ["", "a b", "a/b", "ünï", &"z".repeat(129), "a\"b"] {
            if let Ok(v) = bad.parse() {
                h.insert(REQUEST_ID_HEADER, v);
            } else {
                continue;
            }
            assert_ne!(request_id(&h), bad, "{bad:?}");
        }
    }
}
