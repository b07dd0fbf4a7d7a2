//! Bounds on a plane's connections, before any caller is authenticated: how many are open at
//! once, how long one may sit without a call in flight, how long a TLS handshake and a request
//! body may take, HTTP/2 keepalive and the streams per connection.
//!
//! [`incoming`] wraps the listener: each accepted connection takes a slot out of
//! `limits.max_connections` (lowered to what the open-file limit allows). Past the cap a new
//! connection evicts the oldest one that has never carried a call, else the oldest with no
//! call in flight, else it is closed at once, so a flood of idle connections cannot lock
//! callers out. A connection with no call in flight for `limits.idle_timeout_ms` is closed;
//! that includes connections that never send a byte and TLS connections that never finish
//! their handshake.
//!
//! [`StreamLayer`], the outermost layer of a server, counts each connection's calls in flight
//! (a call ends when its response body does), fails a request whose body is not complete
//! within `limits.request_body_timeout_ms` with `DEADLINE_EXCEEDED`
//! `Rejected.RequestBodyTimeout`, and one with a message over `limits.max_request_bytes` with
//! `RESOURCE_EXHAUSTED` `Rejected.RequestTooLarge`, read from the message's length prefix
//! before the message arrives or is decoded.
//!
//! With `[identity.tls]`, [`listen`] adds TLS on top: handshakes run beside each other, each
//! bounded by `limits.tls_handshake_timeout_ms`, with the server settings in force when it
//! starts ([`crate::reload::ServerTls`]), so new certificates apply to new connections while
//! established ones keep their session. The peer's certificates reach the edge layer in
//! tonic's `TlsConnectInfo`, as with tonic's own TLS.
//!
//! [`server`] makes the tonic server builder with HTTP/2 keepalive and the stream cap;
//! [`serve`] runs a router on a [`Listener`].

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tokio_rustls::server::TlsStream;
use tonic::Status;
use tonic::body::Body;
use tonic::transport::server::{Connected, Router, TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};

use crate::limits::{LimitsConfig, MessageSizes, request_too_large_status};
use crate::reload::ServerTls;
use crate::status::edge_status;

/// Open files kept for other uses than callers' connections (store, HSM, logs, the other
/// plane) when the connection cap is fitted to the open-file limit.
pub const RESERVED_FILES: u64 = 256;

/// Pause of the accept loop after an accept error (out of file descriptors, say), so it does
/// not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// A connection that received bytes this recently is not closed as idle: they may be a call
/// not yet counted as in flight.
const READ_GRACE: Duration = Duration::from_secs(1);

/// Least time between two warnings that the connection cap refused a connection.
const CAP_WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// The server builder of a plane: HTTP/2 keepalive, and at most
/// `limits.max_concurrent_streams` calls per connection. TLS comes with the connections
/// ([`listen`]).
pub fn server(limits: &LimitsConfig) -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(limits.keepalive_interval()))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout()))
        .max_concurrent_streams(limits.max_concurrent_streams)
}

/// What a connection is doing: its calls in flight, whether it ever carried one, and since
/// when it has had none.
#[derive(Debug)]
struct Activity {
    streams: AtomicUsize,
    used: AtomicBool,
    idle_since: Mutex<Instant>,
}

impl Activity {
    fn new() -> Self {
        Self {
            streams: AtomicUsize::new(0),
            used: AtomicBool::new(false),
            idle_since: Mutex::new(Instant::now()),
        }
    }

    fn busy(&self) -> bool {
        self.streams.load(Ordering::SeqCst) > 0
    }

    fn never_used(&self) -> bool {
        !self.used.load(Ordering::SeqCst) && !self.busy()
    }

    /// When the connection's idle time runs out, or `None` while a call is in flight.
    fn idle_deadline(&self, timeout: Duration) -> Option<Instant> {
        if self.busy() {
            return None;
        }
        let since = *self
            .idle_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Some(since + timeout)
    }
}

/// A call in flight on a connection; the connection counts as idle when it has none.
#[derive(Debug)]
pub struct StreamGuard(Arc<Activity>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.0.streams.fetch_sub(1, Ordering::SeqCst) == 1 {
            *self
                .0
                .idle_since
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Instant::now();
        }
    }
}

/// The connection a request came on, in the request's extensions (and inside tonic's
/// `TlsConnectInfo` on TLS connections).
#[derive(Debug, Clone)]
pub struct ConnInfo {
    tcp: TcpConnectInfo,
    activity: Arc<Activity>,
}

impl ConnInfo {
    /// The peer's address.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.tcp.remote_addr
    }

    /// The local address the connection was accepted on.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.tcp.local_addr
    }

    /// Marks a call in flight until the guard is dropped.
    pub fn begin_stream(&self) -> StreamGuard {
        self.activity.used.store(true, Ordering::SeqCst);
        self.activity.streams.fetch_add(1, Ordering::SeqCst);
        StreamGuard(Arc::clone(&self.activity))
    }

    /// The connection of a request that came through [`incoming`], on TLS or not: plain, or
    /// inside the `TlsConnectInfo` of a connection [`listen`] made TLS.
    pub fn of(extensions: &http::Extensions) -> Option<&ConnInfo> {
        extensions.get::<ConnInfo>().or_else(|| {
            extensions
                .get::<TlsConnectInfo<ConnInfo>>()
                .map(TlsConnectInfo::get_ref)
        })
    }
}

#[derive(Debug)]
struct Entry {
    activity: Arc<Activity>,
    /// Dropping it closes the connection.
    _evict: oneshot::Sender<()>,
}

#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    open: BTreeMap<u64, Entry>,
    last_warning: Option<Instant>,
}

/// The connections of one listener.
#[derive(Debug)]
struct Registry {
    max: usize,
    idle_timeout: Duration,
    table: Mutex<Table>,
}

impl Registry {
    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for a new connection, evicting an idle one at the cap; `None` when every open
    /// connection has a call in flight.
    fn admit(self: &Arc<Self>) -> Option<(u64, Arc<Activity>, oneshot::Receiver<()>)> {
        let mut table = self.table();
        if table.open.len() >= self.max {
            let victim = table
                .open
                .iter()
                .find(|(_, e)| e.activity.never_used())
                .or_else(|| table.open.iter().find(|(_, e)| !e.activity.busy()))
                .map(|(id, _)| *id);
            match victim {
                Some(id) => {
                    table.open.remove(&id);
                    tracing::debug!(
                        max = self.max,
                        "connection cap reached; closed the oldest idle connection"
                    );
                }
                None => {
                    let now = Instant::now();
                    if table
                        .last_warning
                        .is_none_or(|t| now.duration_since(t) >= CAP_WARNING_INTERVAL)
                    {
                        table.last_warning = Some(now);
                        tracing::warn!(
                            max = self.max,
                            "connection cap reached with a call in flight on every connection; refusing new connections (limits.max_connections)"
                        );
                    }
                    return None;
                }
            }
        }
        let id = table.next_id;
        table.next_id += 1;
        let activity = Arc::new(Activity::new());
        let (evict, evicted) = oneshot::channel();
        table.open.insert(
            id,
            Entry {
                activity: Arc::clone(&activity),
                _evict: evict,
            },
        );
        Some((id, activity, evicted))
    }

    fn release(&self, id: u64) {
        self.table().open.remove(&id);
    }
}

/// An accepted connection holding its slot; reads end (EOF) when it is evicted or idle too
/// long, which closes it.
#[derive(Debug)]
pub struct EdgeIo {
    stream: TcpStream,
    info: ConnInfo,
    id: u64,
    registry: Arc<Registry>,
    evicted: oneshot::Receiver<()>,
    idle: Pin<Box<Sleep>>,
    /// When bytes last arrived: a call whose first bytes are being read is not yet counted.
    last_read: Option<Instant>,
    closed: bool,
}

impl EdgeIo {
    /// Whether the connection was evicted to make room for another.
    fn evicted(&mut self, cx: &mut Context<'_>) -> bool {
        let evicted = Pin::new(&mut self.evicted).poll(cx).is_ready();
        if evicted {
            tracing::debug!(peer = ?self.info.remote_addr(), "connection evicted");
        }
        evicted
    }

    /// Whether the connection has gone without a call for the idle time (and without bytes
    /// for [`READ_GRACE`], so a call arriving at the deadline is not cut off). Arms the
    /// timer's wake-up otherwise.
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let timeout = self.registry.idle_timeout;
        while self.idle.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            match self.info.activity.idle_deadline(timeout) {
                Some(deadline) => {
                    let deadline = match self.last_read {
                        Some(read) => deadline.max(read + READ_GRACE),
                        None => deadline,
                    };
                    if deadline <= now {
                        tracing::debug!(peer = ?self.info.remote_addr(), "idle connection closed");
                        return true;
                    }
                    self.idle.as_mut().reset(deadline);
                }
                None => self.idle.as_mut().reset(now + timeout),
            }
        }
        false
    }
}

impl Drop for EdgeIo {
    fn drop(&mut self) {
        self.registry.release(self.id);
    }
}

impl Connected for EdgeIo {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for EdgeIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.closed || this.evicted(cx) {
            this.closed = true;
            // End of stream: the server drops the connection.
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    this.last_read = Some(Instant::now());
                }
                Poll::Ready(result)
            }
            Poll::Pending if this.idle_expired(cx) => {
                this.closed = true;
                Poll::Ready(Ok(()))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for EdgeIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The accepted connections of a listener, within the connection cap; pass to
/// `serve_with_incoming_shutdown`.
#[derive(Debug)]
pub struct Incoming {
    listener: TcpListener,
    registry: Arc<Registry>,
    backoff: Option<Pin<Box<Sleep>>>,
}

impl Incoming {
    /// The connection cap in force (after fitting it to the open-file limit).
    pub fn max_connections(&self) -> usize {
        self.registry.max
    }

    /// How many connections are open.
    pub fn open_connections(&self) -> usize {
        self.registry.table().open.len()
    }
}

impl tokio_stream::Stream for Incoming {
    type Item = io::Result<EdgeIo>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(backoff) = this.backoff.as_mut() {
            ready!(backoff.as_mut().poll(cx));
            this.backoff = None;
        }
        loop {
            let (stream, _) = match ready!(this.listener.poll_accept(cx)) {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot accept a connection");
                    this.backoff = Some(Box::pin(tokio::time::sleep(ACCEPT_BACKOFF)));
                    return Poll::Ready(Some(Err(err)));
                }
            };
            let Some((id, activity, evicted)) = this.registry.admit() else {
                drop(stream);
                continue;
            };
            // Nagle off: a message larger than a segment would otherwise wait for the peer's
            // delayed ACK.
            let _ = stream.set_nodelay(true);
            let tcp = TcpConnectInfo {
                local_addr: stream.local_addr().ok(),
                remote_addr: stream.peer_addr().ok(),
            };
            let idle = Box::pin(tokio::time::sleep(this.registry.idle_timeout));
            return Poll::Ready(Some(Ok(EdgeIo {
                stream,
                info: ConnInfo { tcp, activity },
                id,
                registry: Arc::clone(&this.registry),
                evicted,
                idle,
                last_read: None,
                closed: false,
            })));
        }
    }
}

/// The connections of `listener` under `limits`' cap and idle timeout. The cap is lowered to
/// the open-file limit less [`RESERVED_FILES`], after raising the soft limit as far as the
/// hard one allows.
pub fn incoming(listener: TcpListener, limits: &LimitsConfig) -> Incoming {
    Incoming {
        listener,
        registry: Arc::new(Registry {
            max: fit_to_file_limit(limits.max_connections),
            idle_timeout: limits.idle_timeout(),
            table: Mutex::new(Table::default()),
        }),
        backoff: None,
    }
}

/// The TLS connections of a listener: each accepted connection (within the cap) shakes hands
/// beside the others, bounded by the handshake timeout, with the server settings in force
/// when it was accepted. A failed or late handshake closes the connection.
#[derive(Debug)]
pub struct TlsIncoming {
    inner: Incoming,
    tls: Arc<ServerTls>,
    timeout: Duration,
    handshakes: JoinSet<Option<TlsStream<EdgeIo>>>,
    accepting: bool,
}

impl TlsIncoming {
    /// TLS on `inner` with `tls`, each handshake within `timeout`.
    pub fn new(inner: Incoming, tls: Arc<ServerTls>, timeout: Duration) -> Self {
        Self {
            inner,
            tls,
            timeout,
            handshakes: JoinSet::new(),
            accepting: true,
        }
    }
}

/// One handshake on `io` with `config`, within `timeout`.
async fn handshake(
    io: EdgeIo,
    config: Arc<rustls::ServerConfig>,
    timeout: Duration,
) -> Option<TlsStream<EdgeIo>> {
    let peer = io.info.remote_addr();
    match tokio::time::timeout(timeout, tokio_rustls::TlsAcceptor::from(config).accept(io)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            tracing::debug!(?peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(
                ?peer,
                "TLS handshake not finished in time (limits.tls_handshake_timeout_ms)"
            );
            None
        }
    }
}

impl tokio_stream::Stream for TlsIncoming {
    type Item = io::Result<TlsStream<EdgeIo>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        while this.accepting {
            match Pin::new(&mut this.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(io))) => {
                    let config = this.tls.current();
                    this.handshakes.spawn(handshake(io, config, this.timeout));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => this.accepting = false,
                Poll::Pending => break,
            }
        }
        loop {
            match ready!(this.handshakes.poll_join_next(cx)) {
                Some(Ok(Some(stream))) => return Poll::Ready(Some(Ok(stream))),
                // A failed handshake (logged), or its task ended with the runtime.
                Some(Ok(None) | Err(_)) => {}
                None if this.accepting => return Poll::Pending,
                None => return Poll::Ready(None),
            }
        }
    }
}

/// A plane's connections: plain, or TLS when `[identity.tls]` is set.
#[derive(Debug)]
pub enum Listener {
    /// Plain TCP (development, or a sidecar terminating TLS).
    Plain(Incoming),
    /// TLS with reloadable certificates.
    Tls(TlsIncoming),
}

impl Listener {
    /// The connection cap in force.
    pub fn max_connections(&self) -> usize {
        match self {
            Listener::Plain(i) => i.max_connections(),
            Listener::Tls(t) => t.inner.max_connections(),
        }
    }
}

/// The connections of `listener` under `limits` ([`incoming`]), with TLS from `tls` when
/// given.
pub fn listen(
    listener: TcpListener,
    limits: &LimitsConfig,
    tls: Option<Arc<ServerTls>>,
) -> Listener {
    let incoming = incoming(listener, limits);
    match tls {
        Some(tls) => Listener::Tls(TlsIncoming::new(
            incoming,
            tls,
            limits.tls_handshake_timeout(),
        )),
        None => Listener::Plain(incoming),
    }
}

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve<L, ResBody>(
    router: Router<L>,
    listener: Listener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error>
where
    L: Layer<tonic::service::Routes>,
    L::Service:
        Service<http::Request<Body>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    <L::Service as Service<http::Request<Body>>>::Future: Send,
    <L::Service as Service<http::Request<Body>>>::Error:
        Into<Box<dyn std::error::Error + Send + Sync>> + Send,
    ResBody: http_body::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    ResBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match listener {
        Listener::Plain(incoming) => {
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
        Listener::Tls(incoming) => {
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
    }
}

/// `wanted` connections, or fewer when the open-file limit cannot hold them and the reserve.
fn fit_to_file_limit(wanted: usize) -> usize {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((mut soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return wanted;
    };
    let need = u64::try_from(wanted)
        .unwrap_or(u64::MAX)
        .saturating_add(RESERVED_FILES);
    if soft < need {
        let target = need.min(hard);
        if target > soft && setrlimit(Resource::RLIMIT_NOFILE, target, hard).is_ok() {
            soft = target;
        }
    }
    let allowed = usize::try_from(soft.saturating_sub(RESERVED_FILES))
        .unwrap_or(usize::MAX)
        .max(1);
    if allowed < wanted {
        tracing::warn!(
            wanted,
            allowed,
            open_file_limit = soft,
            "limits.max_connections is above what the open-file limit allows; using the lower value"
        );
        allowed
    } else {
        wanted
    }
}

/// The outermost layer of a plane's server: counts calls in flight per connection and bounds
/// the time a request body may take and the size of its messages.
#[derive(Debug, Clone)]
pub struct StreamLayer {
    body_timeout: Duration,
    max_request_bytes: usize,
}

impl StreamLayer {
    /// The layer for `limits`.
    pub fn new(limits: &LimitsConfig) -> Self {
        Self {
            body_timeout: limits.request_body_timeout(),
            max_request_bytes: limits.max_request_bytes,
        }
    }
}

impl<S> Layer<S> for StreamLayer {
    type Service = Streams<S>;

    fn layer(&self, inner: S) -> Streams<S> {
        Streams {
            inner,
            body_timeout: self.body_timeout,
            max_request_bytes: self.max_request_bytes,
        }
    }
}

/// The service [`StreamLayer`] wraps around a server's routes.
#[derive(Debug, Clone)]
pub struct Streams<S> {
    inner: S,
    body_timeout: Duration,
    max_request_bytes: usize,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S> Service<http::Request<Body>> for Streams<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let guard = ConnInfo::of(req.extensions()).map(ConnInfo::begin_stream);
        let (timeout, max) = (self.body_timeout, self.max_request_bytes);
        let req = req.map(|body| Body::new(SizedBody::new(TimedBody::new(body, timeout), max)));
        let call = self.inner.call(req);
        Box::pin(async move {
            let response = call.await?;
            Ok(match guard {
                Some(guard) => response.map(|body| {
                    Body::new(GuardedBody {
                        inner: body,
                        _guard: guard,
                    })
                }),
                None => response,
            })
        })
    }
}

/// A request body that fails with `Rejected.RequestBodyTimeout` when it has not ended within
/// its time.
#[derive(Debug)]
struct TimedBody {
    inner: Body,
    start: Instant,
    timeout: Duration,
    /// Made on the first wait only: most bodies arrive with their headers.
    timer: Option<Pin<Box<Sleep>>>,
    done: bool,
}

impl TimedBody {
    fn new(inner: Body, timeout: Duration) -> Self {
        Self {
            inner,
            start: Instant::now(),
            timeout,
            timer: None,
            done: false,
        }
    }
}

/// The status of a request whose body did not arrive in time.
pub fn body_timeout_status(timeout: Duration) -> Status {
    edge_status(
        tonic::Code::DeadlineExceeded,
        "Rejected.RequestBodyTimeout",
        &format!(
            "the request body did not arrive within {} ms",
            timeout.as_millis()
        ),
    )
}

impl http_body::Body for TimedBody {
    type Data = <Body as http_body::Body>::Data;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Status>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if this.done {
            return polled;
        }
        match polled {
            Poll::Ready(frame) => {
                if frame.is_none() || this.inner.is_end_stream() {
                    this.done = true;
                }
                Poll::Ready(frame)
            }
            Poll::Pending => {
                let (start, timeout) = (this.start, this.timeout);
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(start + timeout)));
                ready!(timer.as_mut().poll(cx));
                this.done = true;
                Poll::Ready(Some(Err(body_timeout_status(timeout))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that fails with `Rejected.RequestTooLarge` at the length prefix of the
/// first message over the limit, instead of passing that message on.
#[derive(Debug)]
struct SizedBody {
    inner: TimedBody,
    sizes: MessageSizes,
    refused: bool,
}

impl SizedBody {
    fn new(inner: TimedBody, max: usize) -> Self {
        Self {
            inner,
            sizes: MessageSizes::new(max),
            refused: false,
        }
    }
}

impl http_body::Body for SizedBody {
    type Data = <Body as http_body::Body>::Data;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Status>>> {
        let this = self.get_mut();
        if this.refused {
            return Poll::Ready(None);
        }
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if let Some(Ok(f)) = &frame
            && let Some(data) = f.data_ref()
            && let Err(len) = this.sizes.scan(data)
        {
            this.refused = true;
            return Poll::Ready(Some(Err(request_too_large_status(len, this.sizes.max()))));
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.refused || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that keeps its call counted as in flight until it ends or is dropped.
#[derive(Debug)]
struct GuardedBody {
    inner: Body,
    _guard: StreamGuard,
}

impl http_body::Body for GuardedBody {
    type Data = <Body as http_body::Body>::Data;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Status>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use http_body::Body as _;
    use tokio::io::AsyncReadExt;
    use tokio_stream::StreamExt;

    fn registry(max: usize) -> Arc<Registry> {
        Arc::new(Registry {
            max,
            idle_timeout: Duration::from_secs(60),
            table: Mutex::new(Table::default()),
        })
    }

    fn conn(activity: &Arc<Activity>) -> ConnInfo {
        ConnInfo {
            tcp: TcpConnectInfo {
                local_addr: None,
                remote_addr: None,
            },
            activity: Arc::clone(activity),
        }
    }

    fn evicted(rx: &mut oneshot::Receiver<()>) -> bool {
        matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Closed))
    }

    #[tokio::test]
    async fn the_cap_evicts_unused_then_idle_connections_never_busy_ones() {
        let reg = registry(2);
        let (_, a, mut a_rx) = reg.admit().unwrap();
        let (_, _b, mut b_rx) = reg.admit().unwrap();
        let a_call = conn(&a).begin_stream();
        // At the cap: the oldest connection that never carried a call goes (b), not a.
        let (_, c, mut c_rx) = reg.admit().unwrap();
        assert!(evicted(&mut b_rx));
        assert!(!evicted(&mut a_rx));
        // Every connection busy: the newcomer is refused.
        let c_call = conn(&c).begin_stream();
        assert!(reg.admit().is_none());
        assert!(!evicted(&mut a_rx) && !evicted(&mut c_rx));
        // a's call ends: a is idle now, and goes before the busy c.
        drop(a_call);
        let (d_id, _d, _d_rx) = reg.admit().unwrap();
        assert!(evicted(&mut a_rx));
        assert!(!evicted(&mut c_rx));
        // A closed connection frees its slot.
        reg.release(d_id);
        assert!(reg.admit().is_some());
        drop(c_call);
    }

    #[tokio::test]
    async fn calls_in_flight_keep_a_connection_from_idling() {
        let a = Arc::new(Activity::new());
        let timeout = Duration::from_secs(5);
        assert!(a.idle_deadline(timeout).is_some());
        let info = conn(&a);
        let first = info.begin_stream();
        let second = info.begin_stream();
        assert_eq!(a.idle_deadline(timeout), None);
        drop(first);
        assert_eq!(a.idle_deadline(timeout), None);
        let before = Instant::now();
        drop(second);
        assert!(a.idle_deadline(timeout).unwrap() >= before + timeout);
        assert!(!a.never_used());
    }

    #[tokio::test]
    async fn idle_and_flooding_connections_are_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = LimitsConfig {
            max_connections: 3,
            idle_timeout_ms: 200,
            ..LimitsConfig::default()
        };
        let mut incoming = incoming(listener, &limits);
        assert_eq!(incoming.max_connections(), 3);
        // The server side: reads each accepted connection until it ends, then drops it.
        let (accepted_tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(io) = incoming.next().await {
                let mut io = io.unwrap();
                let tx = accepted_tx.clone();
                tokio::spawn(async move {
                    let started = Instant::now();
                    let mut buf = [0u8; 64];
                    while io.read(&mut buf).await.unwrap_or(0) > 0 {}
                    let _ = tx.send(started.elapsed());
                });
            }
        });
        let mut clients = Vec::new();
        for _ in 0..5 {
            clients.push(TcpStream::connect(addr).await.unwrap());
        }
        // Five connections against a cap of three: the two oldest are evicted at once, the
        // rest close after the idle time.
        let mut ended = Vec::new();
        for _ in 0..5 {
            let took = tokio::time::timeout(Duration::from_secs(10), accepted.recv())
                .await
                .unwrap()
                .unwrap();
            ended.push(took);
        }
        ended.sort();
        assert!(ended[1] < Duration::from_millis(200), "{ended:?}");
        assert!(ended[2] >= Duration::from_millis(200), "{ended:?}");
        for mut client in clients {
            let mut buf = [0u8; 8];
            let n = tokio::time::timeout(Duration::from_secs(10), client.read(&mut buf))
                .await
                .unwrap()
                .unwrap_or(0);
            assert_eq!(n, 0);
        }
    }

    #[tokio::test]
    async fn bytes_just_read_put_off_the_idle_close() {
        use tokio::io::AsyncWriteExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = LimitsConfig {
            idle_timeout_ms: 50,
            ..LimitsConfig::default()
        };
        let mut incoming = incoming(listener, &limits);
        let mut client = TcpStream::connect(addr).await.unwrap();
        client.write_all(b"x").await.unwrap();
        let mut io = incoming.next().await.unwrap().unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 8];
        assert_eq!(io.read(&mut buf).await.unwrap(), 1);
        // Idle past 50 ms, but a byte came in: the close waits for the read grace.
        assert_eq!(io.read(&mut buf).await.unwrap(), 0);
        assert!(started.elapsed() >= READ_GRACE - Duration::from_millis(50));
    }

    /// A request body that never arrives.
    struct Stalled;

    impl http_body::Body for Stalled {
        type Data = <Body as http_body::Body>::Data;
        type Error = Status;

        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Self::Data>, Status>>> {
            Poll::Pending
        }
    }

    async fn next_frame(body: &mut TimedBody) -> Option<Result<Frame<Bytes>, Status>> {
        std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
    }

    type Bytes = <Body as http_body::Body>::Data;

    #[tokio::test]
    async fn stalled_request_bodies_time_out() {
        let mut stalled = TimedBody::new(Body::new(Stalled), Duration::from_millis(20));
        let started = Instant::now();
        let err = next_frame(&mut stalled).await.unwrap().unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(20));
        assert_eq!(err.code(), tonic::Code::DeadlineExceeded);
        assert_eq!(
            crate::status::reason_of(&err).as_deref(),
            Some("Rejected.RequestBodyTimeout")
        );
        // A body that has ended is never timed out.
        let mut empty = TimedBody::new(Body::empty(), Duration::from_millis(1));
        assert!(next_frame(&mut empty).await.is_none());
        assert!(empty.done);
    }

    use crate::tls::testing::{TestCa, replace};

    /// A TLS client trusting `cas`; the server certificate it was shown, and the stream.
    async fn connect(
        addr: SocketAddr,
        cas: &[&TestCa],
    ) -> (Vec<u8>, tokio_rustls::client::TlsStream<TcpStream>) {
        let mut roots = rustls::RootCertStore::empty();
        for ca in cas {
            use rustls::pki_types::pem::PemObject;
            roots
                .add(rustls::pki_types::CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap())
                .unwrap();
        }
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .unwrap();
        let shown = stream.get_ref().1.peer_certificates().unwrap()[0].to_vec();
        (shown, stream)
    }

    async fn echo(stream: &mut tokio_rustls::client::TlsStream<TcpStream>, text: &[u8]) {
        use tokio::io::AsyncWriteExt;
        stream.write_all(text).await.unwrap();
        let mut buf = vec![0u8; text.len()];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, text);
    }

    #[tokio::test]
    async fn new_handshakes_take_new_certificates_while_established_connections_stay() {
        crate::tls::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let config = crate::tls::TlsConfig {
            cert_file: d.join("server.pem"),
            key_file: d.join("server-key.pem"),
            client_ca_file: d.join("ca.pem"),
            require_client_cert: false,
            client_cert_file: None,
            client_key_file: None,
            server_ca_file: None,
        };
        let (old_ca, new_ca) = (TestCa::new("old CA"), TestCa::new("new CA"));
        let (old_pem, old_key, old_der) = old_ca.server();
        replace(&config.cert_file, &old_pem);
        replace(&config.key_file, &old_key);
        replace(&config.client_ca_file, &old_ca.pem);
        let tls = Arc::new(ServerTls::server(&config).unwrap());

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = LimitsConfig::default();
        let mut connections = TlsIncoming::new(
            incoming(listener, &limits),
            Arc::clone(&tls),
            Duration::from_millis(300),
        );
        tokio::spawn(async move {
            while let Some(stream) = connections.next().await {
                let stream = stream.unwrap();
                tokio::spawn(async move {
                    let (mut read, mut write) = tokio::io::split(stream);
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        let both = [&old_ca, &new_ca];

        let (shown, mut established) = connect(addr, &both).await;
        assert_eq!(shown, old_der);
        echo(&mut established, b"one").await;

        // A key that is not the new certificate's: refused, the old certificate still shown.
        let (new_pem, new_key, new_der) = new_ca.server();
        replace(&config.cert_file, &new_pem);
        assert!(matches!(tls.check(), crate::reload::Checked::Refused(_)));
        assert_eq!(connect(addr, &both).await.0, old_der);

        // The key arrives: new handshakes show the new certificate, the established
        // connection goes on.
        replace(&config.key_file, &new_key);
        assert!(matches!(tls.check(), crate::reload::Checked::Reloaded));
        let (shown, mut fresh) = connect(addr, &both).await;
        assert_eq!(shown, new_der);
        echo(&mut fresh, b"two").await;
        echo(&mut established, b"three").await;

        // A client that never says hello is dropped after the handshake timeout.
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 8];
        let n = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0);
        assert!(started.elapsed() >= Duration::from_millis(300));
    }
}
