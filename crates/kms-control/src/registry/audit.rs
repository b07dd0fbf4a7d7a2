//! Audit-log checkpoints: the latest signed checkpoint (line count and head MAC) of each audit
//! log, kept in the store where the log's writer cannot rewrite it, and read back by operators
//! to check a log file against it.
//!
//! Every replica of a plane writes its own log, so checkpoints are kept per log, under the
//! log's identity (`ac/<plane>/<log>`). A checkpoint without one (from a plane built before
//! logs had one) goes to the plane's single slot of that time (`ac/<plane>`), which stays
//! readable.
//!
//! A checkpoint is kept only if it does not go back from the one recorded for the same log:
//! fewer lines, or the same count with another head, means the log was cut or rewritten since.
//! Such a checkpoint is refused and logged as an error, and the recorded one stays, so
//! verification against it names the damage. The first checkpoint of a log is logged, so a log
//! that begins anew (deleted, or replaced) shows.

use kms_runtime::audit::{Checkpoint, Plane};
use kms_runtime::audit_wire;
use kms_store::Store;
use kms_types::{DomainError, Principal};

use super::Registry;
use crate::schema;

/// What became of a reported checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointOutcome {
    /// It is now the latest.
    Recorded,
    /// It equals the latest.
    Unchanged,
    /// It goes back from the latest: the log was cut or rewritten.
    Refused,
}

impl<S: Store> Registry<S> {
    /// Records `cp` as its log's latest checkpoint unless it goes back from the one recorded
    /// for that log.
    pub async fn record_audit_checkpoint(
        &self,
        cp: Checkpoint,
    ) -> Result<CheckpointOutcome, DomainError> {
        audit_wire::log_id(&cp.log)?;
        let (plane, log, seq) = (cp.plane, cp.log.clone(), cp.seq);
        let (outcome, recorded) = self
            .commit(move |tx| {
                let slot = schema::audit_checkpoint(cp.plane, &cp.log);
                let recorded = tx
                    .get(&slot)?
                    .map(|b| crate::index::user(schema::decode_checkpoint(&b)))
                    .transpose()?;
                let outcome = match &recorded {
                    Some(r) if r.seq > cp.seq || (r.seq == cp.seq && r.head != cp.head) => {
                        CheckpointOutcome::Refused
                    }
                    Some(r) if r.seq == cp.seq => CheckpointOutcome::Unchanged,
                    _ => {
                        tx.put(&slot, &crate::index::user(schema::encode_checkpoint(&cp))?)?;
                        CheckpointOutcome::Recorded
                    }
                };
                Ok(((outcome, recorded), Vec::new()))
            })
            .await?;
        match (outcome, recorded) {
            (CheckpointOutcome::Refused, Some(r)) => tracing::error!(
                plane = %r.plane,
                log = %r.log,
                recorded_lines = r.seq,
                recorded_at = %r.time,
                lines = seq,
                "an audit checkpoint going back from the recorded one was refused: the audit log was cut or rewritten; check it with `kmsctl audit verify --plane`"
            ),
            (CheckpointOutcome::Recorded, None) => tracing::info!(
                plane = %plane,
                log = %log,
                lines = seq,
                "first checkpoint of an audit log"
            ),
            _ => {}
        }
        Ok(outcome)
    }

    /// The latest checkpoint of `plane`'s audit log `log` (an identity that
    /// [`audit_wire::log_id`] admits), or of the plane's checkpoint from before logs had one
    /// when `log` is empty; for an operator.
    pub async fn audit_checkpoint(
        &self,
        caller: &Principal,
        plane: Plane,
        log: &str,
    ) -> Result<Option<Checkpoint>, DomainError> {
        self.check_operator(caller)?;
        let log = audit_wire::log_id(log)?;
        self.read(move |store| {
            store
                .get(&schema::audit_checkpoint(plane, &log))
                .map_err(super::store_error)?
                .map(|b| schema::decode_checkpoint(&b))
                .transpose()
        })
        .await
    }

    /// Refuses anyone but an operator.
    pub fn require_operator(&self, caller: &Principal) -> Result<(), DomainError> {
        self.check_operator(caller)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;
    use std::time::UNIX_EPOCH;

    use kms_runtime::audit::AuditKey;
    use kms_store::MemoryStore;

    use super::*;
    use crate::clock::SystemClock;
    use crate::material::{MaterialSource, NewMaterial};

    /// Checkpoints need no material.
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

    fn registry() -> Registry<MemoryStore> {
        Registry::new(
            Arc::new(MemoryStore::new()),
            "local".into(),
            Arc::new(SystemClock),
            NoMaterial,
        )
        .with_operators(vec![Principal::parse("acs:ram::1:user/operator").unwrap()])
    }

    #[tokio::test]
    async fn checkpoints_only_go_forward() {
        let r = registry();
        let key = AuditKey::from_bytes(&[4u8; 32]).unwrap();
        let log = "0c".repeat(32);
        let cp = |plane, seq: u64, head: &str| {
            Checkpoint::sign(&key, plane, &log, seq, head, UNIX_EPOCH)
        };
        let (a, b) = ("aa".repeat(32), "bb".repeat(32));
        let operator = Principal::parse("acs:ram::1:user/operator").unwrap();
        let user = Principal::parse("acs:ram::1:user/alice").unwrap();
        use CheckpointOutcome::*;
        let steps = [
            (cp(Plane::Data, 5, &a), Recorded, 5),
            (cp(Plane::Data, 5, &a), Unchanged, 5),
            (cp(Plane::Data, 4, &b), Refused, 5),
            (cp(Plane::Data, 5, &b), Refused, 5),
            (cp(Plane::Control, 2, &b), Recorded, 5),
            (cp(Plane::Data, 9, &b), Recorded, 9),
        ];
        for (i, (c, want, latest)) in steps.into_iter().enumerate() {
            assert_eq!(
                r.record_audit_checkpoint(c).await.unwrap(),
                want,
                "step {i}"
            );
            let got = r
                .audit_checkpoint(&operator, Plane::Data, &log)
                .await
                .unwrap();
            assert_eq!(got.map(|c| c.seq), Some(latest), "step {i}");
        }
        let control = r
            .audit_checkpoint(&operator, Plane::Control, &log)
            .await
            .unwrap();
        assert_eq!(control.map(|c| c.seq), Some(2));
        assert_eq!(
            r.audit_checkpoint(&user, Plane::Data, &log).await,
            Err(DomainError::NoPermission)
        );
        assert!(r.require_operator(&user).is_err());
        assert!(r.require_operator(&operator).is_ok());
    }

    #[tokio::test]
    async fn each_log_of_a_plane_has_its_own_slot() {
        let store = Arc::new(MemoryStore::new());
        let r = Registry::new(
            Arc::clone(&store),
            "local".into(),
            Arc::new(SystemClock),
            NoMaterial,
        )
        .with_operators(vec![Principal::parse("acs:ram::1:user/operator").unwrap()]);
        let operator = Principal::parse("acs:ram::1:user/operator").unwrap();
        let key = AuditKey::from_bytes(&[4u8; 32]).unwrap();
        let (one, two) = ("01".repeat(32), "02".repeat(32));
        let (a, b) = ("aa".repeat(32), "bb".repeat(32));
        let cp = |log: &str, seq: u64, head: &str| {
            Checkpoint::sign(&key, Plane::Data, log, seq, head, UNIX_EPOCH)
        };
        use CheckpointOutcome::*;
        // Two replicas' logs side by side: the shorter one is not "going back" from the other.
        // Within a log, going back is still refused. The slot of checkpoints without an id is a
        // third, separate one.
        let steps = [
            (cp(&one, 10, &a), Recorded),
            (cp(&two, 3, &b), Recorded),
            (cp(&two, 3, &b), Unchanged),
            (cp(&one, 11, &a), Recorded),
            (cp(&two, 4, &b), Recorded),
            (cp(&one, 9, &b), Refused),
            (cp(&one, 11, &b), Refused),
            (cp(&two, 2, &a), Refused),
            (cp("", 1, &a), Recorded),
            (cp("", 0, &a), Refused),
        ];
        for (i, (c, want)) in steps.into_iter().enumerate() {
            assert_eq!(
                r.record_audit_checkpoint(c).await.unwrap(),
                want,
                "step {i}"
            );
        }
        for (log, seq) in [(one.as_str(), 11), (two.as_str(), 4), ("", 1)] {
            let got = r
                .audit_checkpoint(&operator, Plane::Data, log)
                .await
                .unwrap()
                .unwrap();
            assert_eq!((got.log.as_str(), got.seq), (log, seq), "log {log:?}");
        }
        // Each under its own key; the planes stay apart.
        for slot in [
            format!("ac/data/{one}"),
            format!("ac/data/{two}"),
            "ac/data".into(),
        ] {
            assert!(store.get(slot.as_bytes()).unwrap().is_some(), "{slot}");
        }
        assert_eq!(
            r.audit_checkpoint(&operator, Plane::Control, &one).await,
            Ok(None)
        );
        // A log id is 64 lowercase hex digits, nothing that could name another slot.
        for bad in ["../control", "01", &"AA".repeat(32)] {
            assert!(
                r.audit_checkpoint(&operator, Plane::Data, bad)
                    .await
                    .is_err(),
                "{bad}"
            );
            assert!(
                r.record_audit_checkpoint(cp(bad, 20, &a)).await.is_err(),
                "{bad}"
            );
        }
    }
}
