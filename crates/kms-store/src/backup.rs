//! Backup files: every entry of a [`crate::Store::snapshot`] in one file that carries a format
//! version and a SHA-256 checksum, written as a stream ([`BackupWriter`]), read back as one
//! ([`BackupReader`]), and loaded into an empty store ([`restore`]).
//!
//! Format version 1, all integers big-endian:
//!
//! | bytes | field |
//! |---|---|
//! | 8 | magic [`MAGIC`], `89 4B 4D 53 42 41 4B 0A` (`\x89KMSBAK\n`) |
//! | 2 | format version, `1` |
//! | 4 | the store's layout version, as the writer gives it (the control plane's `m/layout`) |
//! | 8 | when the snapshot was taken, milliseconds since the Unix epoch |
//! | per entry | `01`, key length (4), key, value length (4), value; keys ascending, each once |
//! | 1 | `00`: no more entries |
//! | 8 | how many entries there are |
//! | 32 | SHA-256 of every byte before it |
//!
//! The store's values go in as they are stored: a backup of the control plane holds key
//! material only sealed under the HSM root key, never in plaintext. The first byte of the magic
//! is not ASCII and its last is a newline, so a file mangled as text is caught at once.
//!
//! A reader checks the magic and the version before the first entry and the count, the
//! checksum and the end of the file after the last, so [`restore`] reads a file twice: once to
//! check all of it, then to write it, and writes nothing from a file that fails the check.

use std::io::{self, Read};

use sha2::{Digest, Sha256};

use crate::{Entry, Store, StoreError};

/// The first bytes of every backup file.
pub const MAGIC: [u8; 8] = *b"\x89KMSBAK\n";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// Magic, format version, layout version and creation time.
pub const HEADER_LEN: usize = MAGIC.len() + 2 + 4 + 8;
/// The end marker, the entry count and the checksum.
pub const TRAILER_LEN: usize = 1 + 8 + CHECKSUM_LEN;
const CHECKSUM_LEN: usize = 32;
const ENTRY_TAG: u8 = 0x01;
const END_TAG: u8 = 0x00;

/// Writes at most this many entries in one restore transaction (an etcd commit may carry 128).
const RESTORE_BATCH_ENTRIES: usize = 64;
/// ... and about this many bytes of keys and values (an etcd request may carry 1.5 MiB).
const RESTORE_BATCH_BYTES: usize = 1024 * 1024;

/// What the header of a backup says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupHeader {
    /// The store's layout version when the snapshot was taken.
    pub layout: u32,
    /// When the snapshot was taken, milliseconds since the Unix epoch.
    pub created_ms: u64,
}

/// A backup read to its end and found whole: its header and how many entries it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupSummary {
    /// The header.
    pub header: BackupHeader,
    /// The entries in the file.
    pub entries: u64,
    /// The file's length in bytes.
    pub bytes: u64,
}

/// Why a backup cannot be read or restored.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The file does not start with [`MAGIC`].
    #[error("not a KMS backup file: it does not start with the backup magic")]
    NotABackup,
    /// The file is of a format version this build does not read.
    #[error(
        "backup format version {found} is not supported: this build reads version {FORMAT_VERSION}"
    )]
    UnsupportedVersion {
        /// The version the file names.
        found: u16,
    },
    /// The file ends before its structure does.
    #[error(
        "the backup is truncated: it ends after {len} bytes, in the middle of {within} (or a \
         length in it is damaged)"
    )]
    Truncated {
        /// Bytes read before the end.
        len: u64,
        /// What was being read.
        within: &'static str,
    },
    /// The checksum at the end does not match the bytes before it.
    #[error("the backup is damaged: its SHA-256 checksum does not match its content")]
    ChecksumMismatch,
    /// The structure is wrong in a way a checksum would not explain.
    #[error("the backup is malformed: {0}")]
    Malformed(String),
    /// [`restore`] found entries in the store it was to fill.
    #[error("the store is not empty: a backup is restored only into an empty store")]
    NotEmpty,
    /// Reading the file failed.
    #[error("cannot read the backup: {0}")]
    Io(io::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<io::Error> for BackupError {
    fn from(e: io::Error) -> Self {
        BackupError::Io(e)
    }
}

/// Writes a backup as a stream of byte chunks: the header first, then each entry in ascending
/// key order, then [`BackupWriter::finish`]. Bytes pile up until [`BackupWriter::take`]n, and
/// are hashed as they are taken.
#[derive(Debug)]
pub struct BackupWriter {
    hasher: Sha256,
    buffer: Vec<u8>,
    entries: u64,
    last_key: Option<Vec<u8>>,
}

impl BackupWriter {
    /// A writer whose header names `header`.
    pub fn new(header: BackupHeader) -> Self {
        let mut buffer = Vec::with_capacity(64 * 1024);
        buffer.extend_from_slice(&MAGIC);
        buffer.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
        buffer.extend_from_slice(&header.layout.to_be_bytes());
        buffer.extend_from_slice(&header.created_ms.to_be_bytes());
        Self {
            hasher: Sha256::new(),
            buffer,
            entries: 0,
            last_key: None,
        }
    }

    /// Adds an entry; its key must sort after the last one's.
    pub fn entry(&mut self, key: &[u8], value: &[u8]) -> Result<(), BackupError> {
        if self.last_key.as_deref().is_some_and(|last| last >= key) {
            return Err(BackupError::Malformed(
                "entries must come in ascending key order, each key once".to_owned(),
            ));
        }
        let (Ok(key_len), Ok(value_len)) = (u32::try_from(key.len()), u32::try_from(value.len()))
        else {
            return Err(BackupError::Malformed(
                "an entry is larger than 4 GiB".to_owned(),
            ));
        };
        self.buffer.push(ENTRY_TAG);
        self.buffer.extend_from_slice(&key_len.to_be_bytes());
        self.buffer.extend_from_slice(key);
        self.buffer.extend_from_slice(&value_len.to_be_bytes());
        self.buffer.extend_from_slice(value);
        self.entries += 1;
        self.last_key = Some(key.to_vec());
        Ok(())
    }

    /// Bytes written and not taken yet.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Entries written so far.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// The bytes written since the last call.
    pub fn take(&mut self) -> Vec<u8> {
        self.hasher.update(&self.buffer);
        std::mem::take(&mut self.buffer)
    }

    /// The last bytes of the file: what was not taken yet, the end marker, the count and the
    /// checksum.
    pub fn finish(mut self) -> Vec<u8> {
        self.buffer.push(END_TAG);
        self.buffer.extend_from_slice(&self.entries.to_be_bytes());
        let mut last = self.take();
        last.extend_from_slice(&self.hasher.finalize());
        last
    }
}

/// Reads a backup from the start: [`BackupReader::open`] checks the header, each
/// [`BackupReader::next_entry`] returns an entry, and [`BackupReader::finish`] checks the
/// count, the checksum and that nothing follows. An entry read is not known to be intact until
/// `finish` returns.
#[derive(Debug)]
pub struct BackupReader<R> {
    input: R,
    hasher: Sha256,
    header: BackupHeader,
    /// Bytes read so far.
    read: u64,
    entries: u64,
    last_key: Option<Vec<u8>>,
    /// The end marker was read.
    ended: bool,
}

impl<R: Read> BackupReader<R> {
    /// Reads and checks the header.
    pub fn open(input: R) -> Result<Self, BackupError> {
        let mut reader = Self {
            input,
            hasher: Sha256::new(),
            header: BackupHeader {
                layout: 0,
                created_ms: 0,
            },
            read: 0,
            entries: 0,
            last_key: None,
            ended: false,
        };
        let magic: [u8; 8] = reader.array("the header")?;
        if magic != MAGIC {
            return Err(BackupError::NotABackup);
        }
        let version = u16::from_be_bytes(reader.array("the header")?);
        if version != FORMAT_VERSION {
            return Err(BackupError::UnsupportedVersion { found: version });
        }
        reader.header = BackupHeader {
            layout: u32::from_be_bytes(reader.array("the header")?),
            created_ms: u64::from_be_bytes(reader.array("the header")?),
        };
        Ok(reader)
    }

    /// The header.
    pub fn header(&self) -> BackupHeader {
        self.header
    }

    /// Bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.read
    }

    /// The next entry, or `None` at the end marker.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, BackupError> {
        if self.ended {
            return Ok(None);
        }
        let [tag] = self.array::<1>("an entry")?;
        match tag {
            END_TAG => {
                self.ended = true;
                return Ok(None);
            }
            ENTRY_TAG => {}
            other => {
                return Err(BackupError::Malformed(format!(
                    "byte {} starts neither an entry nor the end (it is {other:#04x})",
                    self.read - 1
                )));
            }
        }
        let key = self.chunk()?;
        let value = self.chunk()?;
        if self.last_key.as_ref().is_some_and(|last| *last >= key) {
            return Err(BackupError::Malformed(format!(
                "entry {} is not in ascending key order",
                self.entries + 1
            )));
        }
        self.entries += 1;
        self.last_key = Some(key.clone());
        Ok(Some((key, value)))
    }

    /// Reads what is left: the entries not read yet, the count and the checksum, and checks
    /// them and that the file ends there.
    pub fn finish(mut self) -> Result<BackupSummary, BackupError> {
        while self.next_entry()?.is_some() {}
        let count = u64::from_be_bytes(self.array("the entry count")?);
        let expected = self.hasher.clone().finalize();
        let mut checksum = [0u8; CHECKSUM_LEN];
        self.exact(&mut checksum, "the checksum")?;
        let mut more = [0u8; 1];
        let trailing = loop {
            match self.input.read(&mut more) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        };
        if checksum[..] != expected[..] {
            return Err(BackupError::ChecksumMismatch);
        }
        if trailing > 0 {
            return Err(BackupError::Malformed(
                "there are bytes after the checksum".to_owned(),
            ));
        }
        if count != self.entries {
            return Err(BackupError::Malformed(format!(
                "it says it holds {count} entries but holds {}",
                self.entries
            )));
        }
        Ok(BackupSummary {
            header: self.header,
            entries: self.entries,
            bytes: self.read,
        })
    }

    /// A length-prefixed byte string.
    fn chunk(&mut self) -> Result<Vec<u8>, BackupError> {
        let len = u32::from_be_bytes(self.array("an entry")?);
        let mut bytes = Vec::new();
        let got = (&mut self.input)
            .take(u64::from(len))
            .read_to_end(&mut bytes)?;
        self.hasher.update(&bytes);
        self.read += got as u64;
        if got as u64 != u64::from(len) {
            return Err(BackupError::Truncated {
                len: self.read,
                within: "an entry",
            });
        }
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, within: &'static str) -> Result<[u8; N], BackupError> {
        let mut out = [0u8; N];
        self.exact(&mut out, within)?;
        self.hasher.update(out);
        Ok(out)
    }

    /// Fills `out`, counting what was read; not hashed.
    fn exact(&mut self, out: &mut [u8], within: &'static str) -> Result<(), BackupError> {
        let mut filled = 0;
        while filled < out.len() {
            match self.input.read(&mut out[filled..]) {
                Ok(0) => {
                    self.read += filled as u64;
                    return Err(BackupError::Truncated {
                        len: self.read,
                        within,
                    });
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.read += filled as u64;
        Ok(())
    }
}

/// Checks a whole backup: reads it to its end with [`BackupReader`].
pub fn verify(input: impl Read) -> Result<BackupSummary, BackupError> {
    BackupReader::open(input)?.finish()
}

/// Loads the backup `open` reads into `store`, which must be empty.
///
/// Reads the backup twice, each time from a reader `open` makes anew: first to check all of
/// it ([`verify`]), writing nothing if it fails, then to write its entries, in transactions
/// small enough for any engine, and flushes. `progress` is told the entries written so far,
/// and how many the backup holds, after each transaction. Should the second reading differ from the first (the file changed
/// in between), it fails with the store partly written.
pub fn restore<S: Store, R: Read>(
    store: &S,
    mut open: impl FnMut() -> Result<R, BackupError>,
    mut progress: impl FnMut(u64, u64),
) -> Result<BackupSummary, BackupError> {
    let checked = verify(open()?)?;
    if !store.scan_prefix(b"", None, 1)?.is_empty() {
        return Err(BackupError::NotEmpty);
    }
    let mut reader = BackupReader::open(open()?)?;
    let mut batch: Vec<Entry> = Vec::new();
    let mut batch_bytes = 0;
    let mut written = 0u64;
    loop {
        let next = reader.next_entry()?;
        let full = batch.len() >= RESTORE_BATCH_ENTRIES
            || next
                .as_ref()
                .is_some_and(|(k, v)| batch_bytes + k.len() + v.len() > RESTORE_BATCH_BYTES);
        if !batch.is_empty() && (full || next.is_none()) {
            store
                .transaction::<_, std::convert::Infallible>(|txn| {
                    for (key, value) in &batch {
                        txn.put(key, value)?;
                    }
                    Ok(())
                })
                .map_err(StoreError::from)?;
            written += batch.len() as u64;
            progress(written, checked.entries);
            batch.clear();
            batch_bytes = 0;
        }
        let Some((key, value)) = next else { break };
        batch_bytes += key.len() + value.len();
        batch.push((key, value));
    }
    let summary = reader.finish()?;
    if summary != checked {
        return Err(BackupError::Malformed(
            "the file changed while it was restored".to_owned(),
        ));
    }
    store.flush()?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::MemoryStore;

    const HEADER: BackupHeader = BackupHeader {
        layout: 3,
        created_ms: 1_700_000_000_000,
    };

    /// A backup of `entries`, taken in chunks of whatever the writer had.
    fn backup(entries: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut w = BackupWriter::new(HEADER);
        let mut out = w.take();
        for (k, v) in entries {
            w.entry(k, v).unwrap();
            out.extend(w.take());
        }
        out.extend(w.finish());
        out
    }

    fn sample() -> Vec<u8> {
        backup(&[
            (b"a", b"1"),
            (b"b/\x00\xff", b""),
            (b"k/key-1", b"\xcb\x52\x01sealed"),
        ])
    }

    fn entries_of(store: &MemoryStore) -> Vec<crate::Entry> {
        store.scan_prefix(b"", None, usize::MAX).unwrap()
    }

    #[test]
    fn the_layout_is_the_documented_one() {
        let empty = backup(&[]);
        assert_eq!(empty.len(), HEADER_LEN + TRAILER_LEN);
        assert_eq!(&empty[..8], b"\x89KMSBAK\n");
        assert_eq!(&empty[8..10], &[0, 1]);
        assert_eq!(&empty[10..14], &[0, 0, 0, 3]);
        assert_eq!(&empty[14..22], &1_700_000_000_000u64.to_be_bytes());
        assert_eq!(empty[22], 0);
        assert_eq!(&empty[23..31], &[0; 8]);
        let digest = Sha256::digest(&empty[..31]);
        assert_eq!(&empty[31..], &digest[..]);

        let one = backup(&[(b"k", b"vv")]);
        assert_eq!(&one[22..33], &[1, 0, 0, 0, 1, b'k', 0, 0, 0, 2, b'v']);
    }

    #[test]
    fn a_backup_reads_back_whole() {
        let file = sample();
        let mut reader = BackupReader::open(file.as_slice()).unwrap();
        assert_eq!(reader.header(), HEADER);
        let mut got = Vec::new();
        while let Some(entry) = reader.next_entry().unwrap() {
            got.push(entry);
        }
        assert_eq!(got[1], (b"b/\x00\xff".to_vec(), Vec::new()));
        let summary = reader.finish().unwrap();
        assert_eq!(
            summary,
            BackupSummary {
                header: HEADER,
                entries: 3,
                bytes: file.len() as u64
            }
        );
    }

    #[test]
    fn the_writer_refuses_entries_out_of_order() {
        let mut w = BackupWriter::new(HEADER);
        w.entry(b"b", b"").unwrap();
        for key in [&b"a"[..], b"b"] {
            assert!(matches!(w.entry(key, b""), Err(BackupError::Malformed(_))));
        }
    }

    #[test]
    fn every_cut_of_a_backup_is_refused_as_truncated() {
        let file = sample();
        for len in 0..file.len() {
            let result = verify(&file[..len]);
            assert!(
                matches!(result, Err(BackupError::Truncated { .. })),
                "cut at {len}: {result:?}"
            );
        }
        let message = verify(&file[..file.len() - 1]).unwrap_err().to_string();
        assert!(message.contains("truncated"), "{message}");
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        let file = sample();
        for at in 0..file.len() {
            for bit in 0..8 {
                let mut damaged = file.clone();
                damaged[at] ^= 1 << bit;
                let result = verify(damaged.as_slice());
                assert!(result.is_err(), "bit {bit} of byte {at} passed: {result:?}");
            }
        }
        // A flip inside a value is named as damage.
        let mut damaged = file.clone();
        let at = file.len() - TRAILER_LEN - 2;
        damaged[at] ^= 0x20;
        let message = verify(damaged.as_slice()).unwrap_err().to_string();
        assert!(message.contains("checksum"), "{message}");
    }

    #[test]
    fn the_header_is_checked_first() {
        let mut file = sample();
        file[0] = b'K';
        assert!(matches!(
            verify(file.as_slice()),
            Err(BackupError::NotABackup)
        ));
        let mut file = sample();
        file[9] = 2;
        let err = verify(file.as_slice()).unwrap_err();
        assert!(
            matches!(err, BackupError::UnsupportedVersion { found: 2 }),
            "{err:?}"
        );
        assert!(err.to_string().contains("version 2"), "{err}");
    }

    #[test]
    fn bytes_after_the_checksum_are_refused() {
        let mut file = sample();
        file.push(0);
        assert!(matches!(
            verify(file.as_slice()),
            Err(BackupError::Malformed(m)) if m.contains("after the checksum")
        ));
    }

    #[test]
    fn restore_fills_an_empty_store_in_batches() {
        let keys: Vec<Vec<u8>> = (0..200).map(|i| format!("k/{i:03}").into_bytes()).collect();
        let entries: Vec<(&[u8], &[u8])> = keys
            .iter()
            .map(|k| (k.as_slice(), &b"sealed"[..]))
            .collect();
        let file = backup(&entries);
        let store = MemoryStore::new();
        let mut seen = Vec::new();
        let summary = restore(&store, || Ok(file.as_slice()), |n, of| seen.push((n, of))).unwrap();
        assert_eq!(summary.entries, 200);
        assert_eq!(seen, vec![(64, 200), (128, 200), (192, 200), (200, 200)]);
        let stored = entries_of(&store);
        assert_eq!(stored.len(), 200);
        assert!(
            stored
                .iter()
                .zip(&keys)
                .all(|((k, v), key)| k == key && v == b"sealed")
        );
    }

    #[test]
    fn restore_writes_nothing_from_a_damaged_or_truncated_backup() {
        let file = sample();
        let mut damaged = file.clone();
        damaged[HEADER_LEN + 7] ^= 1;
        for bad in [&file[..file.len() - 5], &damaged[..]] {
            let store = MemoryStore::new();
            let result = restore(&store, || Ok(bad), |_, _| {});
            assert!(result.is_err());
            assert!(entries_of(&store).is_empty(), "{result:?}");
        }
    }

    #[test]
    fn restore_refuses_a_store_that_is_not_empty() {
        let store = MemoryStore::new();
        store.put(b"m/layout", b"\xcb\x52\x01\x03").unwrap();
        let file = sample();
        let result = restore(&store, || Ok(file.as_slice()), |_, _| {});
        assert!(matches!(result, Err(BackupError::NotEmpty)), "{result:?}");
        assert_eq!(entries_of(&store).len(), 1);
    }

    #[test]
    fn a_snapshot_round_trips() {
        let source = MemoryStore::new();
        for i in 0..100u8 {
            source.put(&[b'x', i], &[i; 40]).unwrap();
        }
        let mut w = BackupWriter::new(HEADER);
        let mut file = Vec::new();
        for entry in source.snapshot().unwrap() {
            let (k, v) = entry.unwrap();
            w.entry(&k, &v).unwrap();
            if w.buffered() > 1000 {
                file.extend(w.take());
            }
        }
        file.extend(w.finish());
        let target = MemoryStore::new();
        restore(&target, || Ok(file.as_slice()), |_, _| {}).unwrap();
        assert_eq!(entries_of(&target), entries_of(&source));
    }
}
