//! The audit log: one JSON line per call, chained with a MAC under a key only the service holds,
//! so that editing, deleting, inserting, reordering or re-chaining lines is detectable, plus
//! signed checkpoints (line count and head MAC) that show lines cut off the end.
//!
//! Each line holds `format` (2), `seq` (its 1-based line number), `time` (RFC 3339 UTC, ms),
//! `request_id`, `principal` (empty when the caller could not be identified), `action`
//! (`kms.v1.CryptoService/Encrypt`), `key_id` and `key_version_id` (as the handler noted them
//! with [`note_key`]; empty otherwise), `outcome` (`allowed`, `denied`, `error`), `status_code`
//! (the gRPC code name), `trace_id` (the call's W3C trace id; left out when the call was not
//! traced, so lines written before it existed keep their canonical form), `prev_mac` and `mac`. Never plaintext, ciphertext or key material.
//!
//! `mac` is the lowercase hex HMAC-SHA-256, under the plane's [`AuditKey`], of the SHA-256 of
//! [`LINE_DOMAIN`] followed by the line's *canonical content*: its JSON object without `mac`,
//! members in the order above, as `serde_json` writes it. The content includes `prev_mac`, so
//! each line commits to the one before it; the first line's `prev_mac` is [`GENESIS_HASH`]. The
//! key is derived from the HSM root key (one per plane, [`Plane::key_label`]), so nobody
//! without it can extend or re-chain the log. On start the chain resumes from the last line,
//! whose MAC must verify under the key.
//!
//! Format 1 (before the chain was keyed) had no `format`, `seq` or MAC: `prev_hash` and `hash`,
//! the plain SHA-256 of the content. A log that began in format 1 keeps those lines; the first
//! format-2 line chains onto the last format-1 line's `hash` (its `prev_mac` is that hash), so
//! the keyed chain commits to the unkeyed prefix from then on. Verification checks format-1
//! lines by hash only, and refuses a format-1 line after a format-2 line.
//!
//! Every log has an identity ([`log_id`]), fixed for the life of the file: the MAC of its first
//! line (the hash, for a format-1 first line). Several replicas of a plane each write their own
//! log, and checkpoints are kept per log.
//!
//! Checkpoints ([`Checkpoint`]): the plane, the log's identity, the number of lines, the head
//! MAC and the time, MACed under the same key (domain [`CHECKPOINT_DOMAIN`]); the identity is
//! left out of the MACed content of checkpoints made before logs had one, so those still
//! verify. [`AuditLog::checkpoint`] makes one after every line queued before it is written;
//! [`keep_checkpoints`] hands one to a sink (the control-plane store) every
//! `checkpoint_interval_ms` while lines were added, and once more at shutdown. [`Scan::against`] then names a log shorter than its latest checkpoint
//! (truncation), one whose line at the checkpoint differs from the recorded head (rewrite), or
//! one that is not the log the checkpoint names.
//!
//! Verification: [`scan`] checks everything that needs no key (canonical form, format-1
//! hashes, `seq`, the links between lines) and yields one [`MacCheck`] per keyed line; whoever
//! holds the key answers them ([`AuditKey::first_mismatch`]). [`verify_keyed`] does all of it
//! in one place.
//!
//! Durability: the file is opened with `O_APPEND` and [`AuditLog::append`] returns only after
//! its line is written, so a killed process loses no line of an answered call. `[audit] sync`
//! decides when lines reach the disk ([`SyncMode`]). In `interval` mode (the default) the
//! caller seals and writes its line itself under the log's lock (a few microseconds: one HMAC,
//! one JSON serialization, one `write` into the page cache, no thread hand-off), and a flusher
//! thread `fdatasync`s at least every `sync_interval_ms`, so a power loss loses at most that
//! window and no call waits for the disk. In `always` mode one writer thread writes and syncs
//! in batches (every line waiting when it wakes, at most [`MAX_BATCH`]), so one `fdatasync`
//! serves many calls, and each call is answered after its batch is synced. A failed write
//! does not advance the chain; the caller decides (fail closed or log and continue).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::metrics;

/// `prev_mac` of the first line.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Most lines written and synced together.
pub const MAX_BATCH: usize = 256;

/// Format of the lines written now.
pub const LINE_FORMAT: u8 = 2;

/// Prefix of the hashed content of a line, before its MAC.
pub const LINE_DOMAIN: &[u8] = b"kms-audit-line-v2\0";

/// Prefix of the hashed content of a checkpoint, before its MAC.
pub const CHECKPOINT_DOMAIN: &[u8] = b"kms-audit-checkpoint-v1\0";

/// Length of an audit key and of a MAC, in bytes.
pub const MAC_LEN: usize = 32;

/// Longest checkpoint interval, and the default.
pub const MAX_CHECKPOINT_INTERVAL_MS: u64 = 60_000;

/// Shortest checkpoint interval.
pub const MIN_CHECKPOINT_INTERVAL_MS: u64 = 100;

/// Longest key id or version id recorded; longer ones are cut.
const MAX_FIELD: usize = 512;

/// `[audit]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// The audit log file; created (mode 0600) if missing, appended to otherwise. Its directory
    /// must exist.
    pub path: PathBuf,
    /// When a line cannot be written, fail the call with `UNAVAILABLE` (true) or log the error
    /// and answer anyway (false). Default true.
    #[serde(default = "yes")]
    pub fail_closed: bool,
    /// How often a checkpoint (line count and head MAC) is recorded in the control plane's
    /// store while lines are being added, 100 to 60000 ms. Default 60000; one is also recorded
    /// at shutdown.
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval_ms: u64,
    /// When lines reach the disk: `interval` (default) or `always`; see [`SyncMode`].
    #[serde(default)]
    pub sync: SyncMode,
    /// With `sync = "interval"`: the longest time, in ms, between a line's write and its
    /// fsync, 1 to 10000. Default 100.
    #[serde(default = "default_sync_interval")]
    pub sync_interval_ms: u64,
}

/// When audit lines reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// Each line is written to the file (one `write` per batch) before its call is answered,
    /// so a killed process loses nothing; a flusher fsyncs at least every `sync_interval_ms`,
    /// so a power loss loses at most that window. A failed write or fsync fails calls until
    /// an fsync succeeds again.
    #[default]
    Interval,
    /// Each batch is written and fsynced before its calls are answered.
    Always,
}

fn default_sync_interval() -> u64 {
    100
}

fn yes() -> bool {
    true
}

fn default_checkpoint_interval() -> u64 {
    MAX_CHECKPOINT_INTERVAL_MS
}

impl AuditConfig {
    /// A config for `path` with the defaults.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            fail_closed: true,
            checkpoint_interval_ms: MAX_CHECKPOINT_INTERVAL_MS,
            sync: SyncMode::default(),
            sync_interval_ms: default_sync_interval(),
        }
    }

    /// Checks the values; called once at start.
    pub fn validate(&self) -> Result<(), String> {
        if self.path.as_os_str().is_empty() {
            return Err("audit.path is required".into());
        }
        if !(MIN_CHECKPOINT_INTERVAL_MS..=MAX_CHECKPOINT_INTERVAL_MS)
            .contains(&self.checkpoint_interval_ms)
        {
            return Err(format!(
                "audit.checkpoint_interval_ms must be {MIN_CHECKPOINT_INTERVAL_MS} to {MAX_CHECKPOINT_INTERVAL_MS}, got {}",
                self.checkpoint_interval_ms
            ));
        }
        if !(1..=10_000).contains(&self.sync_interval_ms) {
            return Err(format!(
                "audit.sync_interval_ms must be 1 to 10000, got {}",
                self.sync_interval_ms
            ));
        }
        Ok(())
    }

    /// The checkpoint interval.
    pub fn checkpoint_interval(&self) -> Duration {
        Duration::from_millis(self.checkpoint_interval_ms)
    }
}

/// Which plane writes a log; each has its own key and its own checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Plane {
    /// `kms-control`.
    Control,
    /// `kms-data`.
    Data,
}

impl Plane {
    /// `control` or `data`.
    pub fn as_str(self) -> &'static str {
        match self {
            Plane::Control => "control",
            Plane::Data => "data",
        }
    }

    /// The plane named `name` (`control` or `data`).
    pub fn parse(name: &str) -> Result<Self, String> {
        match name {
            "control" => Ok(Plane::Control),
            "data" => Ok(Plane::Data),
            other => Err(format!("plane must be control or data, got {other:?}")),
        }
    }

    /// The label the plane's audit key is derived under from the HSM root key.
    pub fn key_label(self) -> &'static [u8] {
        match self {
            Plane::Control => b"audit-chain-control-v1",
            Plane::Data => b"audit-chain-data-v1",
        }
    }
}

impl std::fmt::Display for Plane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

type HmacSha256 = Hmac<sha2::Sha256>;

/// The secret a plane's chain is keyed with: derived from the HSM root key, held only as a
/// keyed HMAC state (zeroized on drop), never written or logged (`Debug` prints
/// `[redacted]`). Clones share one copy.
#[derive(Clone)]
pub struct AuditKey(Arc<HmacSha256>);

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditKey([redacted])")
    }
}

/// One keyed item to check: the hashed content and the MAC it claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacCheck {
    /// SHA-256 of the domain and the canonical content.
    pub digest: [u8; MAC_LEN],
    /// The MAC the item carries.
    pub mac: [u8; MAC_LEN],
}

impl AuditKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, AuditError> {
        if bytes.len() != MAC_LEN {
            return Err(AuditError::Key {
                reason: format!("an audit key has {MAC_LEN} bytes, got {}", bytes.len()),
            });
        }
        let mac = <HmacSha256 as KeyInit>::new_from_slice(bytes).map_err(|_| AuditError::Key {
            reason: "hmac refused the key".into(),
        })?;
        Ok(Self(Arc::new(mac)))
    }

    fn hmac(&self) -> HmacSha256 {
        HmacSha256::clone(&self.0)
    }

    /// The MAC of `digest`.
    pub fn mac(&self, digest: &[u8; MAC_LEN]) -> [u8; MAC_LEN] {
        let mut mac = self.hmac();
        mac.update(digest);
        mac.finalize().into_bytes().into()
    }

    /// Whether `check.mac` is the MAC of `check.digest`, compared in constant time.
    pub fn check(&self, check: &MacCheck) -> bool {
        let mut mac = self.hmac();
        mac.update(&check.digest);
        mac.verify_slice(&check.mac).is_ok()
    }

    /// The index of the first check whose MAC does not match, if any.
    pub fn first_mismatch(&self, checks: &[MacCheck]) -> Option<usize> {
        checks.iter().position(|c| !self.check(c))
    }
}

/// What a log is keyed with: the plane that writes it and its key.
#[derive(Debug, Clone)]
pub struct AuditChain {
    /// The plane.
    pub plane: Plane,
    /// The plane's key.
    pub key: AuditKey,
}

/// What became of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Answered OK.
    Allowed,
    /// Refused for who the caller is: no identity, no permission, or over its rate.
    Denied,
    /// Any other failure.
    Error,
}

impl Outcome {
    /// The outcome a status code stands for, when nothing more is known.
    pub fn of_code(code: tonic::Code) -> Self {
        match code {
            tonic::Code::Ok => Outcome::Allowed,
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => Outcome::Denied,
            _ => Outcome::Error,
        }
    }
}

/// One call, as the edge saw it.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    /// When the call finished.
    pub time: SystemTime,
    /// The request id.
    pub request_id: String,
    /// The caller's principal ARN; empty when unidentified.
    pub principal: String,
    /// `package.Service/Method`.
    pub action: String,
    /// The key the call acted on, if the handler noted one.
    pub key_id: String,
    /// The key version, if the handler noted one.
    pub key_version_id: String,
    /// The key an alias named before the call changed it (`UpdateAlias`), if any: with
    /// `key_id` (the key it names after), the line names both keys involved.
    pub previous_key_id: String,
    /// Allowed, denied or error.
    pub outcome: Outcome,
    /// The gRPC status code of the answer.
    pub status: tonic::Code,
    /// The W3C trace id of the call (32 hex digits), when it was traced; empty otherwise.
    pub trace_id: String,
}

/// One line of the log in the current format, members in canonical order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct Line {
    format: u8,
    seq: u64,
    time: String,
    request_id: String,
    principal: String,
    action: String,
    key_id: String,
    key_version_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    previous_key_id: String,
    outcome: Outcome,
    status_code: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    trace_id: String,
    prev_mac: String,
    mac: String,
}

/// The canonical content of a line: everything but `mac`.
#[derive(Serialize)]
struct Content<'a> {
    format: u8,
    seq: u64,
    time: &'a str,
    request_id: &'a str,
    principal: &'a str,
    action: &'a str,
    key_id: &'a str,
    key_version_id: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    previous_key_id: &'a str,
    outcome: Outcome,
    status_code: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    trace_id: &'a str,
    prev_mac: &'a str,
}

fn sha256(parts: &[&[u8]]) -> [u8; MAC_LEN] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in parts {
        ctx.update(part);
    }
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

fn parse_mac(text: &str) -> Option<[u8; MAC_LEN]> {
    if text.len() != 2 * MAC_LEN || text.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let bytes = hex::decode(text).ok()?;
    bytes.try_into().ok()
}

impl Line {
    fn digest(&self) -> [u8; MAC_LEN] {
        let content = Content {
            format: self.format,
            seq: self.seq,
            time: &self.time,
            request_id: &self.request_id,
            principal: &self.principal,
            action: &self.action,
            key_id: &self.key_id,
            key_version_id: &self.key_version_id,
            previous_key_id: &self.previous_key_id,
            outcome: self.outcome,
            status_code: &self.status_code,
            trace_id: &self.trace_id,
            prev_mac: &self.prev_mac,
        };
        // Serializing plain strings and numbers into JSON cannot fail.
        let text = serde_json::to_string(&content).unwrap_or_default();
        sha256(&[LINE_DOMAIN, text.as_bytes()])
    }

    fn text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Appends the line recording `event` as line `seq` after `prev_mac`, with its newline, to
/// `buf`, and returns its MAC. The canonical content is serialized once: the line is that
/// JSON object with `mac` added as its last member, which is what [`Line`] writes (the
/// verifier checks every line's canonical form).
fn seal_into(
    buf: &mut Vec<u8>,
    event: &AuditEvent,
    seq: u64,
    prev_mac: &str,
    key: &AuditKey,
) -> String {
    let time = humantime::format_rfc3339_millis(event.time).to_string();
    let content = Content {
        format: LINE_FORMAT,
        seq,
        time: &time,
        request_id: &event.request_id,
        principal: &event.principal,
        action: &event.action,
        key_id: &event.key_id,
        key_version_id: &event.key_version_id,
        previous_key_id: &event.previous_key_id,
        outcome: event.outcome,
        status_code: code_name(event.status),
        trace_id: &event.trace_id,
        prev_mac,
    };
    let start = buf.len();
    // Serializing plain strings and numbers into JSON cannot fail.
    let _ = serde_json::to_writer(&mut *buf, &content);
    let mac = hex::encode(key.mac(&sha256(&[LINE_DOMAIN, &buf[start..]])));
    // The object's closing brace, reopened for `mac`.
    buf.pop();
    buf.extend_from_slice(b",\"mac\":\"");
    buf.extend_from_slice(mac.as_bytes());
    buf.extend_from_slice(b"\"}\n");
    mac
}

/// A line of format 1 (unkeyed), read only.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct LineV1 {
    time: String,
    request_id: String,
    principal: String,
    action: String,
    key_id: String,
    key_version_id: String,
    outcome: Outcome,
    status_code: String,
    prev_hash: String,
    hash: String,
}

/// The canonical content of a format-1 line: everything but `hash`.
#[derive(Serialize)]
struct ContentV1<'a> {
    time: &'a str,
    request_id: &'a str,
    principal: &'a str,
    action: &'a str,
    key_id: &'a str,
    key_version_id: &'a str,
    outcome: Outcome,
    status_code: &'a str,
    prev_hash: &'a str,
}

impl LineV1 {
    fn content_hash(&self) -> String {
        let content = ContentV1 {
            time: &self.time,
            request_id: &self.request_id,
            principal: &self.principal,
            action: &self.action,
            key_id: &self.key_id,
            key_version_id: &self.key_version_id,
            outcome: self.outcome,
            status_code: &self.status_code,
            prev_hash: &self.prev_hash,
        };
        let text = serde_json::to_string(&content).unwrap_or_default();
        hex::encode(sha256(&[text.as_bytes()]))
    }

    fn text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A checkpoint: the log `log` of `plane` had `seq` lines, the last with MAC `head`, at
/// `time`; `mac` is the HMAC of the whole under the plane's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// The plane whose log it is.
    pub plane: Plane,
    /// The log's identity ([`log_id`]): the MAC of its first line (the hash, for a format-1
    /// line). Empty in checkpoints made before logs had one; left out of the MACed content
    /// when empty, so those still verify.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub log: String,
    /// Lines in the log.
    pub seq: u64,
    /// `mac` of line `seq` (`hash` if it is a format-1 line).
    pub head: String,
    /// When it was made (RFC 3339 UTC, ms).
    pub time: String,
    /// Lowercase hex HMAC-SHA-256 of the checkpoint's digest.
    pub mac: String,
}

/// The canonical content of a checkpoint.
#[derive(Serialize)]
struct CheckpointContent<'a> {
    plane: Plane,
    #[serde(skip_serializing_if = "str::is_empty")]
    log: &'a str,
    seq: u64,
    head: &'a str,
    time: &'a str,
}

impl Checkpoint {
    /// A checkpoint of log `log` MACed under `key`.
    pub fn sign(
        key: &AuditKey,
        plane: Plane,
        log: &str,
        seq: u64,
        head: &str,
        time: SystemTime,
    ) -> Self {
        let mut cp = Checkpoint {
            plane,
            log: log.to_string(),
            seq,
            head: head.to_string(),
            time: humantime::format_rfc3339_millis(time).to_string(),
            mac: String::new(),
        };
        cp.mac = hex::encode(key.mac(&cp.digest()));
        cp
    }

    /// SHA-256 of [`CHECKPOINT_DOMAIN`] and the canonical content.
    pub fn digest(&self) -> [u8; MAC_LEN] {
        let content = CheckpointContent {
            plane: self.plane,
            log: &self.log,
            seq: self.seq,
            head: &self.head,
            time: &self.time,
        };
        let text = serde_json::to_string(&content).unwrap_or_default();
        sha256(&[CHECKPOINT_DOMAIN, text.as_bytes()])
    }

    /// The MAC check of the checkpoint itself; `None` when `mac` is not a MAC at all.
    pub fn mac_check(&self) -> Option<MacCheck> {
        Some(MacCheck {
            digest: self.digest(),
            mac: parse_mac(&self.mac)?,
        })
    }
}

/// The canonical gRPC name of a code, as in `PERMISSION_DENIED`.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Why the audit log could not be opened or written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    /// The file could not be opened or read.
    #[error("cannot open audit log {path}: {reason}")]
    Open {
        /// The file.
        path: String,
        /// The cause.
        reason: String,
    },
    /// The file's last line is not a sound audit record, so the chain cannot resume.
    #[error(
        "audit log {path} cannot be resumed: line {line}: {reason}; check it with `kmsctl audit verify` and move it aside"
    )]
    Damaged {
        /// The file.
        path: String,
        /// The 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A line could not be written or synced.
    #[error("cannot write audit log {path}: {reason}")]
    Write {
        /// The file.
        path: String,
        /// The cause.
        reason: String,
    },
    /// The audit key is unusable.
    #[error("unusable audit key: {reason}")]
    Key {
        /// What is wrong.
        reason: String,
    },
    /// The writer thread is gone.
    #[error("audit log writer has stopped")]
    Stopped,
}

/// Fills in the key of the call an [`AuditNote`] belongs to.
///
/// The edge layer puts an `AuditNote` in every request's extensions; handlers call
/// [`note_key`] (or keep the note from [`AuditNote::of`] when they consume the request) once
/// they know which key and version they act on. The layer reads it after the handler answers,
/// with success or an error.
#[derive(Debug, Clone, Default)]
pub struct AuditNote(Arc<Mutex<NoteSlot>>);

#[derive(Debug, Clone, Default)]
struct NoteSlot {
    key_id: String,
    key_version_id: String,
    previous_key_id: String,
}

impl AuditNote {
    /// A fresh, empty note.
    pub fn new() -> Self {
        Self::default()
    }

    /// The note of `request`; a detached note (whose contents go nowhere) when the request did
    /// not pass through the edge layer.
    pub fn of<T>(request: &tonic::Request<T>) -> Self {
        request
            .extensions()
            .get::<AuditNote>()
            .cloned()
            .unwrap_or_default()
    }

    /// Records the key and version the call acts on; an empty version means "not known". A
    /// later call replaces an earlier one.
    pub fn set_key(&self, key_id: &str, key_version_id: &str) {
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        slot.key_id = truncate(key_id);
        slot.key_version_id = truncate(key_version_id);
    }

    /// Records the key an alias named before the call changed it.
    pub fn set_previous_key(&self, key_id: &str) {
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        slot.previous_key_id = truncate(key_id);
    }

    /// The key and version noted so far.
    pub fn key(&self) -> (String, String) {
        let slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        (slot.key_id.clone(), slot.key_version_id.clone())
    }

    /// The previous key noted so far; empty when none.
    pub fn previous_key(&self) -> String {
        let slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        slot.previous_key_id.clone()
    }
}

fn truncate(s: &str) -> String {
    if s.len() <= MAX_FIELD {
        return s.to_string();
    }
    let mut end = MAX_FIELD;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Records the key (id, not alias) and version a call acts on in its audit line. Call it from
/// a handler once they are known, before answering; an empty version is fine.
pub fn note_key<T>(request: &tonic::Request<T>, key_id: &str, key_version_id: &str) {
    AuditNote::of(request).set_key(key_id, key_version_id);
}

enum Job {
    Line {
        event: AuditEvent,
        done: Option<oneshot::Sender<Result<(), AuditError>>>,
    },
    Checkpoint(oneshot::Sender<Checkpoint>),
}

#[derive(Debug)]
struct Shared {
    writer: Arc<Mutex<Writer>>,
    /// The writer thread's queue, in `always` mode; `interval` mode writes on the caller.
    tx: Option<mpsc::UnboundedSender<Job>>,
    fail_closed: bool,
    checkpoint_interval: Duration,
    path: PathBuf,
    plane: Plane,
}

/// The open audit log; clones share one file (and, in `always` mode, one writer thread, which
/// stops when the last clone is dropped).
#[derive(Debug, Clone)]
pub struct AuditLog {
    shared: Arc<Shared>,
}

/// Where the chain stands: lines written, the last line's MAC (or hash), and the log's
/// identity (empty until the first line is written).
#[derive(Debug, Clone)]
struct Head {
    seq: u64,
    mac: String,
    log: String,
}

impl AuditLog {
    /// Opens (or creates, mode 0600) the log, resumes the chain from its last line (which must
    /// verify under `chain.key` when it is keyed) and, in `always` mode, starts the writer
    /// thread.
    pub fn open(config: &AuditConfig, chain: AuditChain) -> Result<Self, AuditError> {
        let path = config.path.clone();
        let open_err = |e: std::io::Error| AuditError::Open {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .map_err(open_err)?;
        let head = last_head(&path, &chain.key)?;
        let plane = chain.plane;
        let sync = Syncer::start(&file, config).map_err(open_err)?;
        let writer = Arc::new(Mutex::new(Writer {
            file,
            path: path.clone(),
            chain,
            head,
            sync,
            buf: Vec::new(),
        }));
        let tx = match config.sync {
            SyncMode::Interval => None,
            SyncMode::Always => {
                let (tx, rx) = mpsc::unbounded_channel();
                let writer = Arc::clone(&writer);
                std::thread::Builder::new()
                    .name("kms-audit".into())
                    .spawn(move || write_loop(&writer, rx))
                    .map_err(open_err)?;
                Some(tx)
            }
        };
        Ok(Self {
            shared: Arc::new(Shared {
                writer,
                tx,
                fail_closed: config.fail_closed,
                checkpoint_interval: config.checkpoint_interval(),
                path,
                plane,
            }),
        })
    }

    /// Whether a failed write must fail the call.
    pub fn fail_closed(&self) -> bool {
        self.shared.fail_closed
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// The plane writing the log.
    pub fn plane(&self) -> Plane {
        self.shared.plane
    }

    /// How often [`keep_checkpoints`] records a checkpoint.
    pub fn checkpoint_interval(&self) -> Duration {
        self.shared.checkpoint_interval
    }

    /// Appends a line and waits until it is written (and, in `always` mode, synced).
    pub async fn append(&self, event: AuditEvent) -> Result<(), AuditError> {
        let Some(tx) = &self.shared.tx else {
            return self.write_now(&event);
        };
        let (done, wait) = oneshot::channel();
        metrics::AUDIT.queue.inc();
        tx.send(Job::Line {
            event,
            done: Some(done),
        })
        .map_err(|_| {
            metrics::AUDIT.queue.dec();
            AuditError::Stopped
        })?;
        wait.await.map_err(|_| AuditError::Stopped)?
    }

    /// Writes a line on the calling thread (`interval` mode): a few microseconds under the
    /// log's lock, the seal and one `write` into the page cache.
    fn write_now(&self, event: &AuditEvent) -> Result<(), AuditError> {
        let mut writer = self
            .shared
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        writer.write(std::slice::from_ref(event))
    }

    /// Writes a line without waiting for it (for calls abandoned mid-way, where nobody is
    /// left to wait); write errors are logged.
    pub fn append_detached(&self, event: AuditEvent) {
        let Some(tx) = &self.shared.tx else {
            // Written here already; the writer logged a failure.
            let _ = self.write_now(&event);
            return;
        };
        // Counted before it is sent, so the writer never takes it off the count first.
        metrics::AUDIT.queue.inc();
        if tx.send(Job::Line { event, done: None }).is_err() {
            metrics::AUDIT.queue.dec();
            tracing::error!(path = %self.shared.path.display(), "audit log writer has stopped; a line is lost");
        }
    }

    /// A signed checkpoint of the log as it stands once every line appended (or queued)
    /// before this call is written.
    pub async fn checkpoint(&self) -> Result<Checkpoint, AuditError> {
        let Some(tx) = &self.shared.tx else {
            let writer = self
                .shared
                .writer
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            return Ok(writer.checkpoint());
        };
        let (done, wait) = oneshot::channel();
        metrics::AUDIT.queue.inc();
        tx.send(Job::Checkpoint(done)).map_err(|_| {
            metrics::AUDIT.queue.dec();
            AuditError::Stopped
        })?;
        wait.await.map_err(|_| AuditError::Stopped)
    }
}

/// The file and the chain's head, behind the log's lock.
#[derive(Debug)]
struct Writer {
    file: File,
    path: PathBuf,
    chain: AuditChain,
    head: Head,
    sync: Syncer,
    /// The batch being written, kept to reuse its allocation.
    buf: Vec<u8>,
}

impl Writer {
    /// Seals `events` onto the chain and writes them with one `write` (synced first in
    /// `always` mode). On failure the chain does not advance.
    fn write(&mut self, events: &[AuditEvent]) -> Result<(), AuditError> {
        let mut next = self.head.clone();
        self.buf.clear();
        for event in events {
            next.seq += 1;
            let mac = seal_into(&mut self.buf, event, next.seq, &next.mac, &self.chain.key);
            if next.seq == 1 {
                // A new file: its first line names the log.
                next.log.clone_from(&mac);
            }
            next.mac = mac;
        }
        match self.sync.write(&mut self.file, &self.buf) {
            Ok(()) => {
                self.head = next;
                Ok(())
            }
            Err(e) => {
                metrics::AUDIT.failures.inc();
                tracing::error!(error = %e, lines = events.len(), "audit write failed");
                Err(AuditError::Write {
                    path: self.path.display().to_string(),
                    reason: e.to_string(),
                })
            }
        }
    }

    fn checkpoint(&self) -> Checkpoint {
        Checkpoint::sign(
            &self.chain.key,
            self.chain.plane,
            &self.head.log,
            self.head.seq,
            &self.head.mac,
            SystemTime::now(),
        )
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.sync.finish(&self.file);
    }
}

/// The `always` mode's writer thread: writes and syncs what is queued in batches (every job
/// waiting when it wakes, at most [`MAX_BATCH`]), so one fsync serves many calls.
fn write_loop(writer: &Mutex<Writer>, mut rx: mpsc::UnboundedReceiver<Job>) {
    let mut events = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        metrics::AUDIT
            .queue
            .dec_by(i64::try_from(batch.len()).unwrap_or(i64::MAX));
        let mut writer = writer.lock().unwrap_or_else(PoisonError::into_inner);
        // Lines up to the first checkpoint request go out together; the checkpoint then sees
        // them written. Later jobs wait for the next round.
        let mut jobs = batch.into_iter().peekable();
        while jobs.peek().is_some() {
            let mut waiting = Vec::new();
            while let Some(Job::Line { .. }) = jobs.peek() {
                let Some(Job::Line { event, done }) = jobs.next() else {
                    break;
                };
                events.push(event);
                waiting.push(done);
            }
            if !events.is_empty() {
                let result = writer.write(&events);
                events.clear();
                for done in waiting.into_iter().flatten() {
                    // The caller may have gone; its line is written either way.
                    let _ = done.send(result.clone());
                }
            }
            if let Some(Job::Checkpoint(done)) = jobs.next_if(|j| matches!(j, Job::Checkpoint(_))) {
                let _ = done.send(writer.checkpoint());
            }
        }
    }
}

/// Makes written lines durable as the [`SyncMode`] says: before each answer, or by a flusher
/// thread at least every interval.
#[derive(Debug)]
struct Syncer {
    flusher: Option<Flusher>,
}

/// The interval mode's flusher thread and what it shares with the writer.
#[derive(Debug)]
struct Flusher {
    shared: Arc<FlushState>,
    thread: std::thread::JoinHandle<()>,
}

#[derive(Debug, Default)]
struct FlushState {
    /// Lines were written since the last fsync.
    dirty: std::sync::atomic::AtomicBool,
    /// The last fsync failed; calls fail until one succeeds.
    failed: std::sync::atomic::AtomicBool,
    stop: std::sync::atomic::AtomicBool,
}

impl Syncer {
    fn start(file: &File, config: &AuditConfig) -> std::io::Result<Self> {
        if config.sync == SyncMode::Always {
            return Ok(Self { flusher: None });
        }
        let shared = Arc::new(FlushState::default());
        let interval = Duration::from_millis(config.sync_interval_ms);
        let file = file.try_clone()?;
        let state = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("kms-audit-sync".into())
            .spawn(move || flush_loop(&file, &state, interval))?;
        Ok(Self {
            flusher: Some(Flusher { shared, thread }),
        })
    }

    /// Writes one batch; syncs it first in `always` mode, or leaves it to the flusher.
    fn write(&self, file: &mut File, bytes: &[u8]) -> std::io::Result<()> {
        use std::sync::atomic::Ordering::SeqCst;
        match &self.flusher {
            None => {
                timed_write(file, bytes)?;
                timed_sync(file)
            }
            Some(flusher) => {
                if flusher.shared.failed.load(SeqCst) {
                    // Not healthy until what was written before reaches the disk.
                    timed_sync(file)?;
                    flusher.shared.failed.store(false, SeqCst);
                }
                timed_write(file, bytes)?;
                flusher.shared.dirty.store(true, SeqCst);
                Ok(())
            }
        }
    }

    /// Stops the flusher and syncs what is left.
    fn finish(&mut self, file: &File) {
        if let Some(flusher) = self.flusher.take() {
            flusher
                .shared
                .stop
                .store(true, std::sync::atomic::Ordering::SeqCst);
            flusher.thread.thread().unpark();
            let _ = flusher.thread.join();
        }
        if let Err(e) = file.sync_data() {
            tracing::error!(error = %e, "audit log: the last fsync failed");
        }
    }
}

/// The flusher: every `interval`, fsyncs the lines written since the last time.
fn flush_loop(file: &File, state: &FlushState, interval: Duration) {
    use std::sync::atomic::Ordering::SeqCst;
    loop {
        std::thread::park_timeout(interval);
        if state.stop.load(SeqCst) {
            return;
        }
        if state.dirty.swap(false, SeqCst)
            && let Err(e) = timed_sync(file)
        {
            metrics::AUDIT.failures.inc();
            tracing::error!(error = %e, "audit fsync failed; calls fail until one succeeds");
            state.failed.store(true, SeqCst);
            state.dirty.store(true, SeqCst);
        }
    }
}

fn timed_write(file: &mut File, bytes: &[u8]) -> std::io::Result<()> {
    let start = Instant::now();
    file.write_all(bytes)?;
    metrics::AUDIT.write.observe(start.elapsed().as_secs_f64());
    Ok(())
}

fn timed_sync(file: &File) -> std::io::Result<()> {
    let start = Instant::now();
    file.sync_data()?;
    metrics::AUDIT.fsync.observe(start.elapsed().as_secs_f64());
    Ok(())
}

/// Records a checkpoint of `log` with `deliver` every [`AuditLog::checkpoint_interval`] while
/// lines were added since the last one delivered, until `stop` resolves; then once more, so
/// the last checkpoint covers every line. Call it after the server has drained. A failed
/// delivery is logged and tried again at the next tick.
pub async fn keep_checkpoints<F, Fut>(log: AuditLog, stop: impl Future<Output = ()>, mut deliver: F)
where
    F: FnMut(Checkpoint) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    // The first tick comes one interval after start: what the log held at start is what the
    // last run's final checkpoint recorded.
    let every = log.checkpoint_interval();
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut delivered: Option<u64> = None;
    tokio::pin!(stop);
    let mut stopping = false;
    loop {
        tokio::select! {
            _ = &mut stop, if !stopping => stopping = true,
            _ = ticks.tick(), if !stopping => {}
        }
        let cp = match log.checkpoint().await {
            Ok(cp) => cp,
            Err(e) => {
                tracing::error!(error = %e, "cannot make an audit checkpoint");
                if stopping {
                    return;
                }
                continue;
            }
        };
        if cp.seq > 0 && delivered != Some(cp.seq) {
            let seq = cp.seq;
            match deliver(cp).await {
                Ok(()) => delivered = Some(seq),
                Err(e) => tracing::warn!(error = %e, lines = seq, "audit checkpoint not recorded"),
            }
        }
        if stopping {
            return;
        }
    }
}

/// Where the chain of `path` stands: its line count, last MAC (or hash, for a format-1 line)
/// and identity, or the genesis for an empty file.
fn last_head(path: &Path, key: &AuditKey) -> Result<Head, AuditError> {
    let io_err = |e: std::io::Error| AuditError::Open {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let mut file = File::open(path).map_err(io_err)?;
    let len = file.metadata().map_err(io_err)?.len();
    if len == 0 {
        return Ok(Head {
            seq: 0,
            mac: GENESIS_HASH.to_string(),
            log: String::new(),
        });
    }
    // Read backwards until the start of the last line is in the buffer.
    const CHUNK: u64 = 8192;
    let mut tail: Vec<u8> = Vec::new();
    let mut start = len;
    loop {
        let from = start.saturating_sub(CHUNK);
        let mut chunk = vec![0u8; usize::try_from(start - from).unwrap_or(0)];
        file.seek(SeekFrom::Start(from)).map_err(io_err)?;
        file.read_exact(&mut chunk).map_err(io_err)?;
        chunk.extend_from_slice(&tail);
        tail = chunk;
        start = from;
        let body = tail.strip_suffix(b"\n").unwrap_or(&tail);
        if start == 0 || body.contains(&b'\n') {
            break;
        }
    }
    let damaged = |reason: &str| {
        // The line number is only known by counting; do so for the message.
        let line = count_lines(path).unwrap_or(0);
        AuditError::Damaged {
            path: path.display().to_string(),
            line,
            reason: reason.to_string(),
        }
    };
    let Some(body) = tail.strip_suffix(b"\n") else {
        return Err(damaged("the last line is incomplete (no newline)"));
    };
    let last = match body.iter().rposition(|&b| b == b'\n') {
        Some(i) => &body[i + 1..],
        None => body,
    };
    let (seq, mac) = match check_line(last).map_err(|reason| damaged(&reason))? {
        Parsed::Keyed(line, check) => {
            if !key.check(&check) {
                return Err(damaged(
                    "the last line's mac does not verify under this plane's audit key (forged, or written under another root key)",
                ));
            }
            (line.seq, line.mac)
        }
        Parsed::Unkeyed(line) => {
            let seq = count_lines(path).map_err(io_err)?;
            (u64::try_from(seq).unwrap_or(u64::MAX), line.hash)
        }
    };
    let log = match log_id(path) {
        Ok(Some(log)) => log,
        Ok(None) => return Err(damaged("the file is empty")),
        Err(e) if e.line == 0 => {
            return Err(AuditError::Open {
                path: path.display().to_string(),
                reason: e.reason,
            });
        }
        Err(e) => {
            return Err(AuditError::Damaged {
                path: path.display().to_string(),
                line: e.line,
                reason: e.reason,
            });
        }
    };
    Ok(Head { seq, mac, log })
}

/// The identity of the log at `path`, fixed for the life of the file: the `mac` of its first
/// line, or its `hash` for a format-1 line, as the line states it (an edited first line keeps
/// the identity and fails its own check); `None` for an empty file. Each log's checkpoints are
/// kept under its identity, so logs written side by side by several replicas of a plane do
/// not overwrite each other's.
pub fn log_id(path: &Path) -> Result<Option<String>, VerifyError> {
    let file = File::open(path).map_err(|e| VerifyError {
        line: 0,
        reason: format!("cannot read {}: {e}", path.display()),
    })?;
    let mut first = Vec::new();
    BufReader::new(file)
        .read_until(b'\n', &mut first)
        .map_err(|e| VerifyError {
            line: 1,
            reason: format!("cannot read {}: {e}", path.display()),
        })?;
    if first.is_empty() {
        return Ok(None);
    }
    let raw = first.strip_suffix(b"\n").unwrap_or(&first);
    first_line_id(raw).map(Some).ok_or_else(|| VerifyError {
        line: 1,
        reason: "the first line does not name the log: no mac (or hash, for an unkeyed line) of 64 lowercase hex digits".into(),
    })
}

/// The identity a first line gives its log: `mac` for a keyed line, `hash` for a format-1
/// line, if it is 64 lowercase hex digits.
fn first_line_id(raw: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Named {
        #[serde(default)]
        mac: String,
        #[serde(default)]
        hash: String,
    }
    let named: Named = serde_json::from_slice(raw).ok()?;
    let id = if raw.starts_with(b"{\"format\":") {
        named.mac
    } else {
        named.hash
    };
    parse_mac(&id).map(|_| id)
}

fn count_lines(path: &Path) -> std::io::Result<usize> {
    let mut reader = BufReader::new(File::open(path)?);
    let mut buf = Vec::new();
    let mut n = 0;
    while reader.read_until(b'\n', &mut buf)? > 0 {
        n += 1;
        buf.clear();
    }
    Ok(n)
}

enum Parsed {
    Keyed(Line, MacCheck),
    Unkeyed(LineV1),
}

/// Parses one line (without its newline): a keyed line into its MAC check, a format-1 line
/// checked against its own hash.
fn check_line(raw: &[u8]) -> Result<Parsed, String> {
    let text = std::str::from_utf8(raw).map_err(|_| "the line is not UTF-8".to_string())?;
    if text.starts_with("{\"format\":") {
        let line: Line =
            serde_json::from_str(text).map_err(|e| format!("not an audit record: {e}"))?;
        if line.format != LINE_FORMAT {
            return Err(format!("unknown line format {}", line.format));
        }
        if line.text() != text {
            return Err("the line is not in canonical form (edited)".into());
        }
        let mac = parse_mac(&line.mac).ok_or("mac is not 64 lowercase hex digits (edited)")?;
        let check = MacCheck {
            digest: line.digest(),
            mac,
        };
        return Ok(Parsed::Keyed(line, check));
    }
    let line: LineV1 =
        serde_json::from_str(text).map_err(|e| format!("not an audit record: {e}"))?;
    if line.text() != text {
        return Err("the line is not in canonical form (edited)".into());
    }
    if line.content_hash() != line.hash {
        return Err("hash does not match the line's content (edited)".into());
    }
    Ok(Parsed::Unkeyed(line))
}

/// The first broken link of a log: its 1-based line number and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct VerifyError {
    /// 1-based line number; 0 when the file itself cannot be read.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

/// What [`scan`] found in a log whose links are sound.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    /// Lines in the log.
    pub lines: usize,
    /// Leading format-1 lines, checked by hash only.
    pub unkeyed: usize,
    /// The MAC (or hash) of each line, in order.
    heads: Vec<String>,
    /// One check per keyed line, in order; keyed line `i` is line `unkeyed + i + 1`.
    pub checks: Vec<MacCheck>,
}

impl Scan {
    /// The error for the keyed line whose check is `checks[index]`.
    pub fn mac_failure(&self, index: usize) -> VerifyError {
        VerifyError {
            line: self.unkeyed + index + 1,
            reason: "mac does not match the line's content under the service's audit key: \
                     the line was edited, or the chain was rewritten without the key"
                .into(),
        }
    }

    /// Checks the log against a checkpoint whose own MAC was verified: a checkpoint naming a
    /// log must name this one (its first line), the log must have at least the recorded number
    /// of lines, and its line at the checkpoint must carry the recorded head.
    pub fn against(&self, cp: &Checkpoint) -> Result<(), VerifyError> {
        if let Some(first) = self.heads.first()
            && !cp.log.is_empty()
            && *first != cp.log
        {
            return Err(VerifyError {
                line: 1,
                reason: format!(
                    "another log: the checkpoint at {} is of log {}, whose first line this is not",
                    cp.time, cp.log
                ),
            });
        }
        let recorded = usize::try_from(cp.seq).unwrap_or(usize::MAX);
        if self.lines < recorded {
            return Err(VerifyError {
                line: self.lines + 1,
                reason: format!(
                    "truncated: log has {} lines, checkpoint at {} recorded {}",
                    self.lines, cp.time, cp.seq
                ),
            });
        }
        if recorded > 0 && self.heads[recorded - 1] != cp.head {
            return Err(VerifyError {
                line: recorded,
                reason: format!(
                    "rewritten: line {recorded} is not the line the checkpoint at {} recorded as the head",
                    cp.time
                ),
            });
        }
        Ok(())
    }
}

/// Checks everything in the log at `path` that needs no key: each line's form, format-1
/// hashes, `seq`, and the links between lines; answers what the keyed checks need, or the
/// first broken link. Holds each line's MAC in memory (about 130 bytes a line).
pub fn scan(path: &Path) -> Result<Scan, VerifyError> {
    match scan_partial(path) {
        (scan, None) => Ok(scan),
        (_, Some(err)) => Err(err),
    }
}

/// Like [`scan`], but also answers what was read before the first broken link, so that a
/// line before it whose MAC fails can be named first.
pub fn scan_partial(path: &Path) -> (Scan, Option<VerifyError>) {
    let mut scan = Scan::default();
    let err = scan_into(path, &mut scan).err();
    (scan, err)
}

fn scan_into(path: &Path, scan: &mut Scan) -> Result<(), VerifyError> {
    let file = File::open(path).map_err(|e| VerifyError {
        line: 0,
        reason: format!("cannot read {}: {e}", path.display()),
    })?;
    let mut reader = BufReader::new(file);
    let mut prev = GENESIS_HASH.to_string();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = scan.lines + 1;
        let read = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| VerifyError {
                line: n,
                reason: format!("cannot read {}: {e}", path.display()),
            })?;
        if read == 0 {
            return Ok(());
        }
        let fail = |reason: String| VerifyError { line: n, reason };
        let Some(raw) = buf.strip_suffix(b"\n") else {
            return Err(fail("the line is incomplete (no newline)".into()));
        };
        let (line_prev, mac) = match check_line(raw).map_err(fail)? {
            Parsed::Keyed(line, check) => {
                if usize::try_from(line.seq).ok() != Some(n) {
                    return Err(fail(format!(
                        "seq is {}: lines were deleted, inserted or moved before this one",
                        line.seq
                    )));
                }
                scan.checks.push(check);
                (line.prev_mac, line.mac)
            }
            Parsed::Unkeyed(line) => {
                if !scan.checks.is_empty() {
                    return Err(fail(
                        "an unkeyed (format 1) line after keyed lines: written without the service's audit key".into(),
                    ));
                }
                scan.unkeyed += 1;
                (line.prev_hash, line.hash)
            }
        };
        if line_prev != prev {
            return Err(fail(if n == 1 {
                "the previous mac is not the genesis value: the log does not start here (lines deleted at the start?)".into()
            } else {
                format!(
                    "the previous mac does not match line {}: a line was deleted, inserted or moved here",
                    n - 1
                )
            }));
        }
        scan.lines = n;
        scan.heads.push(mac.clone());
        prev = mac;
    }
}

/// Checks the links of the log at `path` without the key (see [`scan`]); answers the number of
/// lines, or the first broken link. MACs and truncation need [`verify_keyed`].
pub fn verify(path: &Path) -> Result<usize, VerifyError> {
    scan(path).map(|s| s.lines)
}

/// Checks the log at `path` completely where its plane's key is: links, every MAC, and, when
/// given, the latest checkpoint (its own MAC, then truncation and rewrite); answers the number
/// of lines, or the first problem.
pub fn verify_keyed(
    path: &Path,
    key: &AuditKey,
    checkpoint: Option<&Checkpoint>,
) -> Result<usize, VerifyError> {
    let (scan, broken) = scan_partial(path);
    if let Some(i) = key.first_mismatch(&scan.checks) {
        return Err(scan.mac_failure(i));
    }
    if let Some(err) = broken {
        return Err(err);
    }
    if let Some(cp) = checkpoint {
        if !cp.mac_check().is_some_and(|c| key.check(&c)) {
            return Err(VerifyError {
                line: 0,
                reason: format!(
                    "the checkpoint at {} does not verify under the {} plane's audit key (forged)",
                    cp.time, cp.plane
                ),
            });
        }
        scan.against(cp)?;
    }
    Ok(scan.lines)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn event(i: usize) -> AuditEvent {
        AuditEvent {
            time: SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123),
            request_id: format!("req-{i}"),
            principal: "acs:ram::42:user/alice".into(),
            action: "kms.v1.CryptoService/Encrypt".into(),
            key_id: format!("key-{i}"),
            key_version_id: "v1".into(),
            previous_key_id: if i == 4 {
                "key-0".into()
            } else {
                String::new()
            },
            outcome: if i.is_multiple_of(3) {
                Outcome::Denied
            } else {
                Outcome::Allowed
            },
            status: if i.is_multiple_of(3) {
                tonic::Code::PermissionDenied
            } else {
                tonic::Code::Ok
            },
            trace_id: if i == 2 {
                "4bf92f3577b34da6a3ce929d0e0e4736".into()
            } else {
                String::new()
            },
        }
    }

    fn key() -> AuditKey {
        AuditKey::from_bytes(&[7u8; MAC_LEN]).unwrap()
    }

    fn chain() -> AuditChain {
        AuditChain {
            plane: Plane::Data,
            key: key(),
        }
    }

    fn config(dir: &tempfile::TempDir) -> AuditConfig {
        AuditConfig::new(dir.path().join("audit.log"))
    }

    fn open(cfg: &AuditConfig) -> AuditLog {
        AuditLog::open(cfg, chain()).unwrap()
    }

    async fn write_n(log: &AuditLog, range: std::ops::Range<usize>) {
        for i in range {
            log.append(event(i)).await.unwrap();
        }
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn rewrite(path: &Path, lines: &[String]) {
        let mut text = lines.join("\n");
        text.push('\n');
        std::fs::write(path, text).unwrap();
    }

    /// Re-chains `lines` from the genesis as an attacker would, numbering them anew and making
    /// each MAC with `mac`.
    fn rechain(lines: &[String], mac: impl Fn(&Line) -> String) -> Vec<String> {
        let mut prev = GENESIS_HASH.to_string();
        lines
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let mut line: Line = serde_json::from_str(text).unwrap();
                line.seq = i as u64 + 1;
                line.prev_mac = prev.clone();
                line.mac = mac(&line);
                prev = line.mac.clone();
                line.text()
            })
            .collect()
    }

    /// Re-chains `lines` from the genesis in the old unkeyed format, with plain SHA-256.
    fn rechain_unkeyed(lines: &[String]) -> Vec<String> {
        let mut prev = GENESIS_HASH.to_string();
        lines
            .iter()
            .map(|text| {
                let line: Line = serde_json::from_str(text).unwrap();
                let mut old = LineV1 {
                    time: line.time,
                    request_id: line.request_id,
                    principal: line.principal,
                    action: line.action,
                    key_id: line.key_id,
                    key_version_id: line.key_version_id,
                    outcome: line.outcome,
                    status_code: line.status_code,
                    prev_hash: prev.clone(),
                    hash: String::new(),
                };
                old.hash = old.content_hash();
                prev = old.hash.clone();
                old.text()
            })
            .collect()
    }

    #[tokio::test]
    async fn both_sync_modes_write_each_line_before_answering() {
        for sync in [SyncMode::Interval, SyncMode::Always] {
            let dir = tempfile::tempdir().unwrap();
            let cfg = AuditConfig {
                sync,
                sync_interval_ms: 10_000,
                ..config(&dir)
            };
            let log = open(&cfg);
            for i in 0..4 {
                write_n(&log, i..i + 1).await;
                // Read through another handle while the log is open: the line is in the file
                // as soon as its append returned, whatever the mode.
                assert_eq!(lines(&cfg.path).len(), i + 1, "{sync:?}");
            }
            drop(log);
            assert_eq!(verify_keyed(&cfg.path, &key(), None), Ok(4), "{sync:?}");
        }
    }

    #[test]
    fn sync_settings_parse_and_are_bounded() {
        let cfg: AuditConfig =
            toml::from_str("path = \"/tmp/a.log\"\nsync = \"always\"\n").unwrap();
        assert_eq!(cfg.sync, SyncMode::Always);
        let cfg: AuditConfig = toml::from_str("path = \"/tmp/a.log\"\n").unwrap();
        assert_eq!((cfg.sync, cfg.sync_interval_ms), (SyncMode::Interval, 100));
        assert!(toml::from_str::<AuditConfig>("path = \"a\"\nsync = \"never\"\n").is_err());
        for bad in [0, 10_001] {
            let cfg = AuditConfig {
                sync_interval_ms: bad,
                ..AuditConfig::new("/tmp/a.log")
            };
            assert!(cfg.validate().unwrap_err().contains("sync_interval_ms"));
        }
    }

    #[tokio::test]
    async fn append_resume_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(&dir);
        let log = open(&cfg);
        write_n(&log, 0..3).await;
        drop(log);
        assert_eq!(verify(&cfg.path), Ok(3));
        // A restart resumes the chain from the last line.
        let log = open(&cfg);
        write_n(&log, 3..5).await;
        drop(log);
        assert_eq!(verify(&cfg.path), Ok(5));
        assert_eq!(verify_keyed(&cfg.path, &key(), None), Ok(5));

        let all = lines(&cfg.path);
        let first: serde_json::Value = serde_json::from_str(&all[0]).unwrap();
        assert_eq!(first["format"], 2);
        assert_eq!(first["seq"], 1);
        assert_eq!(first["time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(first["outcome"], "denied");
        assert_eq!(first["status_code"], "PERMISSION_DENIED");
        assert_eq!(first["prev_mac"], GENESIS_HASH);
        assert_eq!(first["key_id"], "key-0");
        let second: serde_json::Value = serde_json::from_str(&all[1]).unwrap();
        assert_eq!(second["prev_mac"], first["mac"]);
        assert_eq!(second["outcome"], "allowed");
        let fourth: serde_json::Value = serde_json::from_str(&all[3]).unwrap();
        let third: serde_json::Value = serde_json::from_str(&all[2]).unwrap();
        assert_eq!(fourth["prev_mac"], third["mac"]);
        assert_eq!(fourth["seq"], 4);
        // The MAC is keyed: the plain hash of the content is not it.
        let line: Line = serde_json::from_str(&all[0]).unwrap();
        assert_ne!(line.mac, hex::encode(line.digest()));

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&cfg.path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[tokio::test]
    async fn verify_finds_the_first_broken_link() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(&dir);
        let log = open(&cfg);
        write_n(&log, 0..6).await;
        drop(log);
        let good = lines(&cfg.path);
        let path = &cfg.path;
        let check = |lines: Vec<String>, line: usize, why: &str| {
            rewrite(path, &lines);
            let err = verify_keyed(path, &key(), None).unwrap_err();
            assert_eq!(err.line, line, "{why}: {err}");
            err
        };

        // Edited line 3: its MAC no longer matches (the key is needed to see it).
        let mut edited = good.clone();
        edited[2] = edited[2].replace("user/alice", "user/mallory");
        rewrite(path, &edited);
        assert_eq!(verify(path), Ok(6), "links alone cannot see an edit");
        let err = check(edited, 3, "edited");
        assert!(err.reason.contains("mac does not match"), "{err}");
        // Edited and re-MACed under another key: line 3 fails its MAC.
        let other = AuditKey::from_bytes(&[8u8; MAC_LEN]).unwrap();
        let mut line: Line = serde_json::from_str(&good[2]).unwrap();
        line.principal = "acs:ram::42:user/mallory".into();
        line.mac = hex::encode(other.mac(&line.digest()));
        let mut remaced = good.clone();
        remaced[2] = line.text();
        check(remaced, 3, "edited and re-maced");
        // Deleted line 4: line 4 is now the old line 5, numbered 5.
        let mut deleted = good.clone();
        deleted.remove(3);
        let err = check(deleted, 4, "deleted");
        assert!(err.reason.contains("seq is 5"), "{err}");
        // Swapped lines 2 and 3.
        let mut swapped = good.clone();
        swapped.swap(1, 2);
        check(swapped, 2, "swapped");
        // Inserted a copy of line 1 at line 5.
        let mut inserted = good.clone();
        inserted.insert(4, good[0].clone());
        check(inserted, 5, "inserted");
        // Deleted the first line.
        check(good[1..].to_vec(), 1, "deleted first");
        // Whitespace edits count: the line must be canonical.
        let mut spaced = good.clone();
        spaced[5] = spaced[5].replacen(":", ": ", 1);
        let err = check(spaced, 6, "reformatted");
        assert!(err.reason.contains("canonical"), "{err}");
        // Garbage and a torn last line.
        let mut junk = good.clone();
        junk[1] = "{\"hello\":1}".into();
        check(junk, 2, "junk");
        let mut torn = good.join("\n");
        torn.push('\n');
        torn.push_str(&good[0][..20]);
        std::fs::write(path, torn).unwrap();
        assert_eq!(verify(path).unwrap_err().line, 7);

        rewrite(path, &good);
        assert_eq!(verify_keyed(path, &key(), None), Ok(6));
        std::fs::write(path, "").unwrap();
        assert_eq!(verify(path), Ok(0));
        assert_eq!(verify(&dir.path().join("missing")).unwrap_err().line, 0);
    }

    #[tokio::test]
    async fn truncation_and_rewrites_are_caught_by_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(&dir);
        let log = open(&cfg);
        write_n(&log, 0..6).await;
        let cp = log.checkpoint().await.unwrap();
        assert_eq!((cp.plane, cp.seq), (Plane::Data, 6));
        // Lines after the checkpoint are fine.
        write_n(&log, 6..8).await;
        drop(log);
        let good = lines(&cfg.path);
        assert_eq!(cp.head, serde_json::from_str::<Line>(&good[5]).unwrap().mac);
        let path = &cfg.path;
        let keyed = |lines: &[String]| {
            rewrite(path, lines);
            verify_keyed(path, &key(), Some(&cp))
        };

        // Intact.
        assert_eq!(keyed(&good), Ok(8));

        // The last lines cut off, past the checkpoint: every link holds, so only the checkpoint
        // can tell.
        let cut = &good[..4];
        rewrite(path, cut);
        assert_eq!(verify(path), Ok(4));
        assert_eq!(verify_keyed(path, &key(), None), Ok(4));
        let err = keyed(cut).unwrap_err();
        assert_eq!(err.line, 5, "{err}");
        assert!(
            err.reason.contains(&format!(
                "log has 4 lines, checkpoint at {} recorded 6",
                cp.time
            )),
            "{err}"
        );
        // Cut back to exactly the checkpoint: what was written after it cannot be shown.
        assert_eq!(keyed(&good[..6]), Ok(6));

        // One line removed and the rest re-chained.
        let mut removed = good.clone();
        removed.remove(2);
        type Case<'a> = (&'a str, Vec<String>, usize, &'a str);
        let other = AuditKey::from_bytes(&[8u8; MAC_LEN]).unwrap();
        let cases: Vec<Case<'_>> = vec![
            (
                "plain sha-256 in place of the mac",
                rechain(&removed, |l| hex::encode(l.digest())),
                1,
                "mac does not match",
            ),
            (
                "another key",
                rechain(&removed, |l| hex::encode(other.mac(&l.digest()))),
                1,
                "mac does not match",
            ),
            // Re-hashed from the first line, the log names itself anew: it is not the log the
            // checkpoint is of.
            (
                "the old unkeyed format",
                rechain_unkeyed(&removed[..5]),
                1,
                "another log",
            ),
            (
                "the old unkeyed format, padded to the checkpoint's length",
                rechain_unkeyed(&removed),
                1,
                "another log",
            ),
            (
                "the key's own lines, one dropped, the rest re-chained with the key",
                rechain(&removed, |l| hex::encode(key().mac(&l.digest()))),
                6,
                "rewritten: line 6",
            ),
        ];
        for (why, lines, line, reason) in cases {
            rewrite(path, &lines);
            assert_eq!(verify(path), Ok(lines.len()), "{why}: links hold");
            let err = keyed(&lines).unwrap_err();
            assert_eq!(err.line, line, "{why}: {err}");
            assert!(err.reason.contains(reason), "{why}: {err}");
        }

        // A checkpoint forged to match a rewrite does not verify.
        let forged = Checkpoint::sign(&other, Plane::Data, &cp.log, 4, &cp.head, SystemTime::now());
        rewrite(path, cut);
        let err = verify_keyed(path, &key(), Some(&forged)).unwrap_err();
        assert!(err.reason.contains("forged"), "{err}");
        // Nor does one of the other plane's log.
        let control = Checkpoint {
            plane: Plane::Control,
            ..cp.clone()
        };
        assert!(verify_keyed(path, &key(), Some(&control)).is_err());
    }

    #[tokio::test]
    async fn an_unkeyed_log_is_continued_keyed() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(&dir);
        let log = open(&cfg);
        write_n(&log, 0..3).await;
        drop(log);
        let old = rechain_unkeyed(&lines(&cfg.path));
        rewrite(&cfg.path, &old);
        assert_eq!(verify(&cfg.path), Ok(3));

        let log = open(&cfg);
        write_n(&log, 3..5).await;
        let cp = log.checkpoint().await.unwrap();
        drop(log);
        assert_eq!(cp.seq, 5);
        let all = lines(&cfg.path);
        // The log is named by its first line's hash.
        let first_unkeyed: LineV1 = serde_json::from_str(&all[0]).unwrap();
        assert_eq!(cp.log, first_unkeyed.hash);
        assert_eq!(log_id(&cfg.path), Ok(Some(cp.log.clone())));
        let first_keyed: Line = serde_json::from_str(&all[3]).unwrap();
        let last_unkeyed: LineV1 = serde_json::from_str(&all[2]).unwrap();
        assert_eq!(first_keyed.seq, 4);
        assert_eq!(first_keyed.prev_mac, last_unkeyed.hash);
        assert_eq!(verify_keyed(&cfg.path, &key(), Some(&cp)), Ok(5));
        let scanned = scan(&cfg.path).unwrap();
        assert_eq!((scanned.lines, scanned.unkeyed), (5, 3));

        // Re-hashing the unkeyed prefix breaks the first keyed line's link.
        let mut edited = all.clone();
        let mut line: LineV1 = serde_json::from_str(&all[2]).unwrap();
        line.principal = "acs:ram::42:user/mallory".into();
        line.hash = line.content_hash();
        edited[2] = line.text();
        rewrite(&cfg.path, &edited);
        assert_eq!(verify(&cfg.path).unwrap_err().line, 4);
        // An unkeyed line after keyed lines is refused.
        let mut late = all.clone();
        late.push(old[0].clone());
        rewrite(&cfg.path, &late);
        let err = verify(&cfg.path).unwrap_err();
        assert_eq!(err.line, 6);
        assert!(err.reason.contains("unkeyed"), "{err}");
    }

    #[tokio::test]
    async fn the_log_id_is_the_first_lines_mac_for_the_life_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(&dir);
        let log = open(&cfg);
        assert_eq!(log_id(&cfg.path), Ok(None));
        assert_eq!(
            log.checkpoint().await.unwrap().log,
            "",
            "no line, no id yet"
        );
        write_n(&log, 0..3).await;
        let first = log.checkpoint().await.unwrap();
        drop(log);
        let line: Line = serde_json::from_str(&lines(&cfg.path)[0]).unwrap();
        assert_eq!(first.log, line.mac);
        assert_eq!(log_id(&cfg.path), Ok(Some(line.mac.clone())));

        // Reopened, the log keeps its id, before and after new lines.
        let log = open(&cfg);
        let resumed = log.checkpoint().await.unwrap();
        assert_eq!(
            (&resumed.log, resumed.seq, &resumed.head),
            (&first.log, first.seq, &first.head)
        );
        write_n(&log, 3..5).await;
        let later = log.checkpoint().await.unwrap();
        drop(log);
        assert_eq!((later.log.as_str(), later.seq), (line.mac.as_str(), 5));
        assert_eq!(log_id(&cfg.path), Ok(Some(line.mac.clone())));
        assert_eq!(verify_keyed(&cfg.path, &key(), Some(&later)), Ok(5));

        // Another file of the same plane is another log, even with the same events; a
        // checkpoint of one is refused for the other.
        let other_cfg = AuditConfig::new(dir.path().join("other.log"));
        let other = open(&other_cfg);
        write_n(&other, 1..3).await;
        let other_cp = other.checkpoint().await.unwrap();
        drop(other);
        assert_ne!(other_cp.log, later.log);
        let err = verify_keyed(&cfg.path, &key(), Some(&other_cp)).unwrap_err();
        assert_eq!(err.line, 1, "{err}");
        assert!(err.reason.contains("another log"), "{err}");
        // An empty file against a checkpoint: everything was cut.
        std::fs::write(&other_cfg.path, "").unwrap();
        let err = verify_keyed(&other_cfg.path, &key(), Some(&other_cp)).unwrap_err();
        assert!(err.reason.contains("truncated: log has 0 lines"), "{err}");

        // An edited first line keeps naming the log; one that names none stops the resume.
        let mut edited = lines(&cfg.path);
        edited[0] = edited[0].replace("user/alice", "user/mallory");
        rewrite(&cfg.path, &edited);
        assert_eq!(log_id(&cfg.path), Ok(Some(line.mac.clone())));
        let mut unnamed = lines(&cfg.path);
        unnamed[0] = "{\"hello\":1}".into();
        rewrite(&cfg.path, &unnamed);
        assert_eq!(log_id(&cfg.path).unwrap_err().line, 1);
        let err = AuditLog::open(&cfg, chain()).unwrap_err();
        assert!(matches!(err, AuditError::Damaged { line: 1, .. }), "{err}");
        assert!(log_id(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn checkpoint_macs_with_and_without_a_log_id() {
        let head = "ab".repeat(32);
        let time = "2023-11-14T22:13:20.123Z";
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        // A checkpoint as stored before logs had ids: its content had no `log`.
        let old_content = format!(r#"{{"plane":"data","seq":7,"head":"{head}","time":"{time}"}}"#);
        let old_mac = hex::encode(key().mac(&sha256(&[CHECKPOINT_DOMAIN, old_content.as_bytes()])));
        let stored = format!(
            r#"{{"plane":"data","seq":7,"head":"{head}","time":"{time}","mac":"{old_mac}"}}"#
        );
        let old: Checkpoint = serde_json::from_str(&stored).unwrap();
        assert_eq!(old.log, "");
        assert!(
            key().check(&old.mac_check().unwrap()),
            "an old checkpoint verifies"
        );
        // Signed without an id, a checkpoint is what it was, byte for byte.
        let unnamed = Checkpoint::sign(&key(), Plane::Data, "", 7, &head, at);
        assert_eq!(unnamed, old);
        assert_eq!(serde_json::to_string(&unnamed).unwrap(), stored);

        // With an id, the id is MACed: changed or dropped, the MAC fails.
        let log = "cd".repeat(32);
        let named = Checkpoint::sign(&key(), Plane::Data, &log, 7, &head, at);
        assert_ne!(named.mac, old.mac);
        assert!(key().check(&named.mac_check().unwrap()));
        let text = serde_json::to_string(&named).unwrap();
        assert!(text.contains(&format!(r#""log":"{log}""#)), "{text}");
        assert_eq!(serde_json::from_str::<Checkpoint>(&text).unwrap(), named);
        for changed in [String::new(), "ce".repeat(32)] {
            let cp = Checkpoint {
                log: changed,
                ..named.clone()
            };
            assert!(!key().check(&cp.mac_check().unwrap()), "{cp:?}");
        }
        // An id cannot be added to an old checkpoint either.
        let renamed = Checkpoint { log, ..old.clone() };
        assert!(!key().check(&renamed.mac_check().unwrap()));
    }

    #[tokio::test]
    async fn a_damaged_tail_stops_the_resume() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(&dir);
        let log = open(&cfg);
        write_n(&log, 0..2).await;
        drop(log);
        let good = std::fs::read_to_string(&cfg.path).unwrap();
        let mut text = good.clone();
        text.push_str("{\"time\":");
        std::fs::write(&cfg.path, &text).unwrap();
        let err = AuditLog::open(&cfg, chain()).unwrap_err();
        assert!(matches!(err, AuditError::Damaged { line: 3, .. }), "{err}");
        assert!(err.to_string().contains("kmsctl audit verify"), "{err}");

        // A last line forged without the key, or a log written under another key.
        let forged = rechain(&lines(&cfg.path)[..2], |l| hex::encode(l.digest()));
        rewrite(&cfg.path, &forged);
        let err = AuditLog::open(&cfg, chain()).unwrap_err();
        assert!(matches!(err, AuditError::Damaged { line: 2, .. }), "{err}");
        assert!(err.to_string().contains("audit key"), "{err}");
        std::fs::write(&cfg.path, &good).unwrap();
        let other = AuditChain {
            plane: Plane::Data,
            key: AuditKey::from_bytes(&[9u8; MAC_LEN]).unwrap(),
        };
        assert!(AuditLog::open(&cfg, other).is_err());
        assert!(AuditLog::open(&cfg, chain()).is_ok());
    }

    #[tokio::test]
    async fn long_lines_resume() {
        // A last line longer than one read chunk.
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(&dir);
        let log = open(&cfg);
        let mut e = event(1);
        e.action = "x".repeat(20_000);
        log.append(e).await.unwrap();
        drop(log);
        let log = open(&cfg);
        write_n(&log, 2..3).await;
        drop(log);
        assert_eq!(verify_keyed(&cfg.path, &key(), None), Ok(2));
    }

    #[tokio::test]
    async fn concurrent_appends_form_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(&dir);
        let log = open(&cfg);
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let log = log.clone();
                tokio::spawn(async move { log.append(event(i)).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        drop(log);
        assert_eq!(verify_keyed(&cfg.path, &key(), None), Ok(50));
    }

    #[tokio::test]
    async fn checkpoints_cover_every_line_queued_before_them() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(&dir);
        let log = open(&cfg);
        for i in 0..5 {
            log.append_detached(event(i));
        }
        let cp = log.checkpoint().await.unwrap();
        assert_eq!(cp.seq, 5);
        assert!(key().check(&cp.mac_check().unwrap()));

        // The keeper delivers one per interval while lines are added, and a last one at stop.
        let delivered = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = oneshot::channel::<()>();
        let keeper = {
            let (log, delivered) = (log.clone(), Arc::clone(&delivered));
            tokio::spawn(keep_checkpoints(
                log,
                async {
                    let _ = stopped.await;
                },
                move |cp| {
                    let delivered = Arc::clone(&delivered);
                    async move {
                        delivered.lock().unwrap().push(cp.seq);
                        Ok(())
                    }
                },
            ))
        };
        write_n(&log, 5..7).await;
        stop.send(()).unwrap();
        keeper.await.unwrap();
        let seen = delivered.lock().unwrap().clone();
        assert_eq!(seen.last(), Some(&7), "{seen:?}");
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
        drop(log);
        assert_eq!(verify_keyed(&cfg.path, &key(), Some(&cp)), Ok(7));
    }

    #[tokio::test]
    async fn write_failures_are_reported() {
        // /dev/full accepts the open and fails every write with ENOSPC.
        let log = AuditLog::open(&AuditConfig::new("/dev/full"), chain()).unwrap();
        let err = log.append(event(1)).await.unwrap_err();
        assert!(matches!(err, AuditError::Write { .. }), "{err}");
        // A failed write does not advance the chain.
        assert_eq!(log.checkpoint().await.unwrap().seq, 0);
    }

    #[test]
    fn notes() {
        let mut req = tonic::Request::new(());
        let note = AuditNote::new();
        req.extensions_mut().insert(note.clone());
        note_key(&req, "key-1", "");
        assert_eq!(note.key(), ("key-1".into(), String::new()));
        AuditNote::of(&req).set_key("key-2", "v-2");
        assert_eq!(note.key(), ("key-2".into(), "v-2".into()));
        // Without the layer, noting is harmless.
        note_key(&tonic::Request::new(()), "key-3", "v");
        AuditNote::of(&req).set_key(&"k".repeat(2000), "");
        assert_eq!(note.key().0.len(), MAX_FIELD);
    }

    #[test]
    fn keys_and_planes() {
        assert!(AuditKey::from_bytes(&[1u8; 31]).is_err());
        assert_eq!(format!("{:?}", key()), "AuditKey([redacted])");
        assert_ne!(Plane::Control.key_label(), Plane::Data.key_label());
        for plane in [Plane::Control, Plane::Data] {
            assert_eq!(Plane::parse(plane.as_str()), Ok(plane));
        }
        assert!(Plane::parse("Data").is_err());
        let digest = [3u8; MAC_LEN];
        let check = MacCheck {
            digest,
            mac: key().mac(&digest),
        };
        let mut bad = check;
        bad.mac[0] ^= 1;
        assert_eq!(key().first_mismatch(&[check, check]), None);
        assert_eq!(key().first_mismatch(&[check, bad, check]), Some(1));
    }

    #[test]
    fn config_validation() {
        let check = |text: &str, want: Result<(), &str>| {
            let got = toml::from_str::<AuditConfig>(text)
                .map_err(|e| e.to_string())
                .and_then(|c| c.validate());
            match (got, want) {
                (Ok(()), Ok(())) => {}
                (Err(e), Err(part)) => assert!(e.contains(part), "{text}: {e}"),
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            }
        };
        check("path = \"/var/log/kms/audit.log\"", Ok(()));
        check("path = \"\"", Err("audit.path"));
        check("fail_closed = false", Err("path"));
        check("path = \"a\"\nfailclosed = true", Err("failclosed"));
        check("path = \"a\"\ncheckpoint_interval_ms = 100", Ok(()));
        check(
            "path = \"a\"\ncheckpoint_interval_ms = 60001",
            Err("checkpoint_interval_ms"),
        );
        check(
            "path = \"a\"\ncheckpoint_interval_ms = 99",
            Err("checkpoint_interval_ms"),
        );
        let c: AuditConfig = toml::from_str("path = \"a\"").unwrap();
        assert!(c.fail_closed);
        assert_eq!(c.checkpoint_interval(), Duration::from_secs(60));
    }
}
