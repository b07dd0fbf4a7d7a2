//! The audit log: one JSON line per call, hash-chained so that editing, deleting, inserting or
//! reordering lines is detectable.
//!
//! Each line holds `time` (RFC 3339 UTC, ms), `request_id`, `principal` (empty when the caller
//! could not be identified), `action` (`kms.v1.CryptoService/Encrypt`), `key_id` and
//! `key_version_id` (as the handler noted them with [`note_key`]; empty otherwise), `outcome`
//! (`allowed`, `denied`, `error`), `status_code` (the gRPC code name), `prev_hash` and `hash`.
//! Never plaintext, ciphertext or key material.
//!
//! `hash` is the lowercase hex SHA-256 of the line's *canonical content*: the line's JSON object
//! without its `hash` member, members in the order above, as `serde_json` writes it. Since that
//! content includes `prev_hash`, each line commits to the one before it; the first line's
//! `prev_hash` is [`GENESIS_HASH`]. On start the chain resumes from the last line's hash.
//!
//! Durability: lines are written by one writer thread to a file opened with `O_APPEND`, in
//! small batches (every line waiting when the thread wakes, at most [`MAX_BATCH`]): one
//! `write` and one `fdatasync` per batch. [`AuditLog::append`] returns only after its line's
//! batch is on disk, so a call's line is durable before its response is sent. A failed write
//! does not advance the chain; the caller decides (fail closed or log and continue).
//!
//! What the chain cannot show by itself: lines cut off the end of the file. Ship the last
//! hash elsewhere (a log pipeline, a periodic note) to detect truncation.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

/// `prev_hash` of the first line.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Most lines written and synced together.
pub const MAX_BATCH: usize = 256;

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
}

fn yes() -> bool {
    true
}

impl AuditConfig {
    /// Checks the values; called once at start.
    pub fn validate(&self) -> Result<(), String> {
        if self.path.as_os_str().is_empty() {
            return Err("audit.path is required".into());
        }
        Ok(())
    }
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
    /// Allowed, denied or error.
    pub outcome: Outcome,
    /// The gRPC status code of the answer.
    pub status: tonic::Code,
}

/// One line of the log, members in canonical order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct Line {
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

/// The canonical content of a line: everything but `hash`.
#[derive(Serialize)]
struct Content<'a> {
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

impl Line {
    fn content_hash(&self) -> String {
        let content = Content {
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
        // Serializing plain strings into JSON cannot fail.
        let text = serde_json::to_string(&content).unwrap_or_default();
        hex::encode(ring::digest::digest(&ring::digest::SHA256, text.as_bytes()))
    }

    fn seal(event: &AuditEvent, prev_hash: &str) -> Self {
        let mut line = Line {
            time: humantime::format_rfc3339_millis(event.time).to_string(),
            request_id: event.request_id.clone(),
            principal: event.principal.clone(),
            action: event.action.clone(),
            key_id: event.key_id.clone(),
            key_version_id: event.key_version_id.clone(),
            outcome: event.outcome,
            status_code: code_name(event.status).to_string(),
            prev_hash: prev_hash.to_string(),
            hash: String::new(),
        };
        line.hash = line.content_hash();
        line
    }

    fn text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
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

    /// The key and version noted so far.
    pub fn key(&self) -> (String, String) {
        let slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        (slot.key_id.clone(), slot.key_version_id.clone())
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

struct Job {
    event: AuditEvent,
    done: Option<oneshot::Sender<Result<(), AuditError>>>,
}

#[derive(Debug)]
struct Shared {
    tx: mpsc::UnboundedSender<Job>,
    fail_closed: bool,
    path: PathBuf,
}

/// The open audit log; clones share one file and one writer thread, which stops when the last
/// clone is dropped.
#[derive(Debug, Clone)]
pub struct AuditLog {
    shared: Arc<Shared>,
}

impl AuditLog {
    /// Opens (or creates, mode 0600) the log, resumes the chain from its last line and starts
    /// the writer thread.
    pub fn open(config: &AuditConfig) -> Result<Self, AuditError> {
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
        let prev = last_hash(&path)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let writer_path = path.clone();
        std::thread::Builder::new()
            .name("kms-audit".into())
            .spawn(move || write_loop(file, writer_path, prev, rx))
            .map_err(open_err)?;
        Ok(Self {
            shared: Arc::new(Shared {
                tx,
                fail_closed: config.fail_closed,
                path,
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

    /// Appends a line and waits until it is on disk.
    pub async fn append(&self, event: AuditEvent) -> Result<(), AuditError> {
        let (done, wait) = oneshot::channel();
        self.shared
            .tx
            .send(Job {
                event,
                done: Some(done),
            })
            .map_err(|_| AuditError::Stopped)?;
        wait.await.map_err(|_| AuditError::Stopped)?
    }

    /// Queues a line without waiting (for calls abandoned mid-way, where nobody is left to
    /// wait); write errors are logged.
    pub fn append_detached(&self, event: AuditEvent) {
        if self.shared.tx.send(Job { event, done: None }).is_err() {
            tracing::error!(path = %self.shared.path.display(), "audit log writer has stopped; a line is lost");
        }
    }
}

fn write_loop(
    mut file: File,
    path: PathBuf,
    mut prev: String,
    mut rx: mpsc::UnboundedReceiver<Job>,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let mut buf = String::new();
        let mut next = prev.clone();
        for job in &batch {
            let line = Line::seal(&job.event, &next);
            buf.push_str(&line.text());
            buf.push('\n');
            next = line.hash;
        }
        let result = file
            .write_all(buf.as_bytes())
            .and_then(|()| file.sync_data())
            .map_err(|e| AuditError::Write {
                path: path.display().to_string(),
                reason: e.to_string(),
            });
        match &result {
            Ok(()) => prev = next,
            Err(e) => tracing::error!(error = %e, lines = batch.len(), "audit write failed"),
        }
        for job in batch {
            if let Some(done) = job.done {
                // The caller may have gone; its line is written either way.
                let _ = done.send(result.clone());
            }
        }
    }
}

/// The hash of the last line of `path`, or [`GENESIS_HASH`] for an empty file.
fn last_hash(path: &Path) -> Result<String, AuditError> {
    let io_err = |e: std::io::Error| AuditError::Open {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let mut file = File::open(path).map_err(io_err)?;
    let len = file.metadata().map_err(io_err)?.len();
    if len == 0 {
        return Ok(GENESIS_HASH.to_string());
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
    let line = check_line(last).map_err(|reason| damaged(&reason))?;
    Ok(line.hash)
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

/// Parses one line (without its newline) and checks it against its own hash.
fn check_line(raw: &[u8]) -> Result<Line, String> {
    let text = std::str::from_utf8(raw).map_err(|_| "the line is not UTF-8".to_string())?;
    let line: Line = serde_json::from_str(text).map_err(|e| format!("not an audit record: {e}"))?;
    if line.text() != text {
        return Err("the line is not in canonical form (edited)".into());
    }
    if line.content_hash() != line.hash {
        return Err("hash does not match the line's content (edited)".into());
    }
    Ok(line)
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

/// Checks every line of the log at `path` and the chain between them; answers the number of
/// lines verified, or the first broken link.
pub fn verify(path: &Path) -> Result<usize, VerifyError> {
    let file = File::open(path).map_err(|e| VerifyError {
        line: 0,
        reason: format!("cannot read {}: {e}", path.display()),
    })?;
    let mut reader = BufReader::new(file);
    let mut prev = GENESIS_HASH.to_string();
    let mut buf = Vec::new();
    let mut n = 0;
    loop {
        buf.clear();
        let read = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| VerifyError {
                line: n + 1,
                reason: format!("cannot read {}: {e}", path.display()),
            })?;
        if read == 0 {
            return Ok(n);
        }
        n += 1;
        let fail = |reason: String| VerifyError { line: n, reason };
        let Some(raw) = buf.strip_suffix(b"\n") else {
            return Err(fail("the line is incomplete (no newline)".into()));
        };
        let line = check_line(raw).map_err(fail)?;
        if line.prev_hash != prev {
            return Err(fail(if n == 1 {
                "prev_hash is not the genesis hash: the log does not start here (lines deleted at the start?)".into()
            } else {
                format!(
                    "prev_hash does not match the hash of line {}: a line was deleted, inserted or moved here",
                    n - 1
                )
            }));
        }
        prev = line.hash;
    }
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
        }
    }

    fn config(dir: &tempfile::TempDir) -> AuditConfig {
        AuditConfig {
            path: dir.path().join("audit.log"),
            fail_closed: true,
        }
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

    #[tokio::test]
    async fn append_resume_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(&dir);
        let log = AuditLog::open(&cfg).unwrap();
        write_n(&log, 0..3).await;
        drop(log);
        assert_eq!(verify(&cfg.path), Ok(3));
        // A restart resumes the chain from the last line.
        let log = AuditLog::open(&cfg).unwrap();
        write_n(&log, 3..5).await;
        drop(log);
        assert_eq!(verify(&cfg.path), Ok(5));

        let all = lines(&cfg.path);
        let first: serde_json::Value = serde_json::from_str(&all[0]).unwrap();
        assert_eq!(first["time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(first["outcome"], "denied");
        assert_eq!(first["status_code"], "PERMISSION_DENIED");
        assert_eq!(first["prev_hash"], GENESIS_HASH);
        assert_eq!(first["key_id"], "key-0");
        let second: serde_json::Value = serde_json::from_str(&all[1]).unwrap();
        assert_eq!(second["prev_hash"], first["hash"]);
        assert_eq!(second["outcome"], "allowed");
        let fourth: serde_json::Value = serde_json::from_str(&all[3]).unwrap();
        let third: serde_json::Value = serde_json::from_str(&all[2]).unwrap();
        assert_eq!(fourth["prev_hash"], third["hash"]);

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
        let log = AuditLog::open(&cfg).unwrap();
        write_n(&log, 0..6).await;
        drop(log);
        let good = lines(&cfg.path);
        let path = &cfg.path;
        let check = |lines: Vec<String>, line: usize, why: &str| {
            rewrite(path, &lines);
            let err = verify(path).unwrap_err();
            assert_eq!(err.line, line, "{why}: {err}");
            err
        };

        // Edited line 3: its own hash no longer matches.
        let mut edited = good.clone();
        edited[2] = edited[2].replace("user/alice", "user/mallory");
        let err = check(edited, 3, "edited");
        assert!(err.reason.contains("hash does not match"), "{err}");
        // Edited and re-hashed: line 3 is self-consistent, line 4 no longer follows it.
        let mut line: Line = serde_json::from_str(&good[2]).unwrap();
        line.principal = "acs:ram::42:user/mallory".into();
        line.hash = line.content_hash();
        let mut rehashed = good.clone();
        rehashed[2] = line.text();
        check(rehashed, 4, "edited and re-hashed");
        // Deleted line 4: line 4 is now the old line 5, whose prev_hash names the old line 4.
        let mut deleted = good.clone();
        deleted.remove(3);
        let err = check(deleted, 4, "deleted");
        assert!(err.reason.contains("deleted, inserted or moved"), "{err}");
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
        assert_eq!(verify(path), Ok(6));
        std::fs::write(path, "").unwrap();
        assert_eq!(verify(path), Ok(0));
        assert_eq!(verify(&dir.path().join("missing")).unwrap_err().line, 0);
    }

    #[tokio::test]
    async fn a_damaged_tail_stops_the_resume() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(&dir);
        let log = AuditLog::open(&cfg).unwrap();
        write_n(&log, 0..2).await;
        drop(log);
        let mut text = std::fs::read_to_string(&cfg.path).unwrap();
        text.push_str("{\"time\":");
        std::fs::write(&cfg.path, &text).unwrap();
        let err = AuditLog::open(&cfg).unwrap_err();
        assert!(matches!(err, AuditError::Damaged { line: 3, .. }), "{err}");
        assert!(err.to_string().contains("kmsctl audit verify"), "{err}");
    }

    #[tokio::test]
    async fn long_lines_resume() {
        // A last line longer than one read chunk.
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(&dir);
        let log = AuditLog::open(&cfg).unwrap();
        let mut e = event(1);
        e.action = "x".repeat(20_000);
        log.append(e).await.unwrap();
        drop(log);
        let log = AuditLog::open(&cfg).unwrap();
        write_n(&log, 2..3).await;
        drop(log);
        assert_eq!(verify(&cfg.path), Ok(2));
    }

    #[tokio::test]
    async fn concurrent_appends_form_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(&dir);
        let log = AuditLog::open(&cfg).unwrap();
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
        assert_eq!(verify(&cfg.path), Ok(50));
    }

    #[tokio::test]
    async fn write_failures_are_reported() {
        // /dev/full accepts the open and fails every write with ENOSPC.
        let cfg = AuditConfig {
            path: "/dev/full".into(),
            fail_closed: true,
        };
        let log = AuditLog::open(&cfg).unwrap();
        let err = log.append(event(1)).await.unwrap_err();
        assert!(matches!(err, AuditError::Write { .. }), "{err}");
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
    fn config_validation() {
        let c: AuditConfig = toml::from_str("path = \"/var/log/kms/audit.log\"").unwrap();
        assert!(c.fail_closed);
        assert!(c.validate().is_ok());
        let c: AuditConfig = toml::from_str("path = \"\"").unwrap();
        assert!(c.validate().unwrap_err().contains("audit.path"));
        assert!(toml::from_str::<AuditConfig>("fail_closed = false").is_err());
        assert!(toml::from_str::<AuditConfig>("path = \"a\"\nfailclosed = true").is_err());
    }
}
