//! Backups for operators: a snapshot of the store as of one moment ([`kms_store::Store::snapshot`])
//! sent as the bytes of a backup file ([`kms_store::backup`]), while the control plane serves.
//!
//! Every entry goes in as stored, so key material is in it only sealed under the HSM root key.
//! The scheduler claim does not: it names a replica of this deployment, and on etcd it lives
//! under a lease that a restored copy would not have, so it would never lapse.

use std::sync::Arc;

use kms_store::Store;
use kms_store::backup::{BackupError, BackupHeader, BackupWriter};
use kms_types::{DomainError, Principal};
use tokio::sync::{mpsc, watch};

use super::{Registry, store_error};
use crate::schema;

/// The most bytes one chunk carries.
pub const BACKUP_CHUNK_BYTES: usize = 64 * 1024;
/// Chunks made and not yet sent, at most: a slow caller holds up the reading, not memory.
const CHUNKS_IN_FLIGHT: usize = 4;

/// The chunks of a backup file in order, or the error that ended it early; the file is whole
/// only when the channel closes after a chunk, not after an error.
pub type BackupChunks = mpsc::Receiver<Result<Vec<u8>, DomainError>>;

/// Why making a backup stopped early.
enum Stop {
    /// The caller went away, or the control plane is stopping.
    Abandoned,
    Failed(DomainError),
}

impl<S: Store> Registry<S> {
    /// A backup of the whole store for `caller`, an operator: its bytes arrive on the channel
    /// while a blocking thread reads the snapshot.
    pub fn backup(&self, caller: &Principal) -> Result<BackupChunks, DomainError> {
        self.check_operator(caller)?;
        let header = BackupHeader {
            layout: u32::from(schema::LAYOUT_VERSION),
            created_ms: u64::try_from(self.now().0).unwrap_or(0),
        };
        let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
        let store = Arc::clone(&self.store);
        let closing = self.closing.subscribe();
        let operator = caller.arn().to_string();
        tokio::task::spawn_blocking(move || match write_backup(&*store, header, &tx, &closing) {
            Ok((entries, bytes)) => {
                tracing::info!(%operator, entries, bytes, "backup sent");
            }
            Err(Stop::Abandoned) => {
                tracing::warn!(%operator, "backup abandoned before its end");
            }
            Err(Stop::Failed(e)) => {
                tracing::error!(%operator, error = ?e, "backup failed");
                let _ = tx.blocking_send(Err(e));
            }
        });
        Ok(rx)
    }
}

/// Reads a snapshot of `store` into a backup file sent in chunks on `tx`; the entries and bytes
/// sent.
fn write_backup<S: Store>(
    store: &S,
    header: BackupHeader,
    tx: &mpsc::Sender<Result<Vec<u8>, DomainError>>,
    closing: &watch::Receiver<bool>,
) -> Result<(u64, u64), Stop> {
    let mut sent = 0u64;
    let mut send = |bytes: Vec<u8>| {
        for piece in bytes.chunks(BACKUP_CHUNK_BYTES) {
            if *closing.borrow() || tx.blocking_send(Ok(piece.to_vec())).is_err() {
                return Err(Stop::Abandoned);
            }
            sent += piece.len() as u64;
        }
        Ok(())
    };
    let mut writer = BackupWriter::new(header);
    let snapshot = store.snapshot().map_err(|e| Stop::Failed(store_error(e)))?;
    for entry in snapshot {
        let (key, value) = entry.map_err(|e| Stop::Failed(store_error(e)))?;
        if key == schema::SCHEDULER_LEADER {
            continue;
        }
        writer.entry(&key, &value).map_err(backup_error)?;
        if writer.buffered() >= BACKUP_CHUNK_BYTES {
            send(writer.take())?;
        }
    }
    let entries = writer.entries();
    send(writer.finish())?;
    Ok((entries, sent))
}

fn backup_error(e: BackupError) -> Stop {
    Stop::Failed(match e {
        BackupError::Store(e) => store_error(e),
        other => DomainError::Internal(format!("writing the backup: {other}")),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::Arc;

    use kms_store::backup::{BackupReader, verify};
    use kms_store::{MemoryStore, Store};

    use super::*;
    use crate::clock::SystemClock;
    use crate::material::{MaterialSource, NewMaterial};

    /// Backups need no material.
    #[derive(Debug)]
    struct NoMaterial;

    #[tonic::async_trait]
    impl MaterialSource for NoMaterial {
        async fn generate(
            &self,
            _key_id: &kms_types::KeyId,
            _version: &kms_types::KeyVersionId,
            _spec: kms_types::KeySpec,
            _protection: kms_types::ProtectionLevel,
        ) -> Result<NewMaterial, DomainError> {
            Err(DomainError::Internal("no material here".into()))
        }
    }

    fn operator() -> Principal {
        Principal::parse("acs:ram::1000000000000000:user/operator").unwrap()
    }

    fn registry(store: Arc<MemoryStore>) -> Registry<MemoryStore> {
        Registry::new(store, "local".into(), Arc::new(SystemClock), NoMaterial)
            .with_operators(vec![operator()])
    }

    async fn receive(mut chunks: BackupChunks) -> Vec<u8> {
        let mut file = Vec::new();
        while let Some(chunk) = chunks.recv().await {
            let chunk = chunk.unwrap();
            assert!(chunk.len() <= BACKUP_CHUNK_BYTES);
            file.extend(chunk);
        }
        file
    }

    #[tokio::test]
    async fn a_backup_holds_every_entry_but_the_scheduler_claim() {
        let store = Arc::new(MemoryStore::new());
        for i in 0..300u32 {
            store
                .put(format!("k/key-{i:04}").as_bytes(), &[7u8; 500])
                .unwrap();
        }
        store
            .lead(
                schema::SCHEDULER_LEADER,
                b"replica-1",
                std::time::Duration::from_secs(10),
            )
            .unwrap();
        let r = registry(Arc::clone(&store));
        let file = receive(r.backup(&operator()).unwrap()).await;
        assert!(file.len() > 2 * BACKUP_CHUNK_BYTES, "several chunks");
        let summary = verify(file.as_slice()).unwrap();
        assert_eq!(summary.entries, 300);
        assert_eq!(summary.header.layout, u32::from(schema::LAYOUT_VERSION));
        let mut reader = BackupReader::open(file.as_slice()).unwrap();
        while let Some((key, _)) = reader.next_entry().unwrap() {
            assert_ne!(key, schema::SCHEDULER_LEADER);
        }
    }

    #[tokio::test]
    async fn only_operators_take_backups() {
        let r = registry(Arc::new(MemoryStore::new()));
        let user = Principal::parse("acs:ram::1234567890123456:root").unwrap();
        assert!(matches!(r.backup(&user), Err(DomainError::NoPermission)));
    }
}
