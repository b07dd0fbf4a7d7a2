//! Audit-log checkpoints: the latest signed checkpoint (line count and head MAC) of each
//! plane's audit log, kept in the store where the log's writer cannot rewrite it, and read back
//! by operators to check a log file against it.
//!
//! A checkpoint is kept only if it does not go back: fewer lines than the one recorded, or the
//! same count with another head, means the log was cut or rewritten since. Such a checkpoint
//! is refused and logged as an error, and the recorded one stays, so verification against it
//! names the damage.

use kms_runtime::audit::{Checkpoint, Plane};
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
    /// Records `cp` as its plane's latest checkpoint unless it goes back from the one recorded.
    pub async fn record_audit_checkpoint(
        &self,
        cp: Checkpoint,
    ) -> Result<CheckpointOutcome, DomainError> {
        let (outcome, recorded) = self
            .commit(move |tx| {
                let slot = schema::audit_checkpoint(cp.plane);
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
        if outcome == CheckpointOutcome::Refused
            && let Some(r) = recorded
        {
            tracing::error!(
                plane = %r.plane,
                recorded_lines = r.seq,
                recorded_at = %r.time,
                "an audit checkpoint going back from the recorded one was refused: the audit log was cut or rewritten; check it with `kmsctl audit verify --plane`"
            );
        }
        Ok(outcome)
    }

    /// The latest checkpoint of `plane`'s audit log, for an operator.
    pub async fn audit_checkpoint(
        &self,
        caller: &Principal,
        plane: Plane,
    ) -> Result<Option<Checkpoint>, DomainError> {
        self.check_operator(caller)?;
        self.read(move |store| {
            store
                .get(&schema::audit_checkpoint(plane))
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
        let cp =
            |plane, seq: u64, head: &str| Checkpoint::sign(&key, plane, "", seq, head, UNIX_EPOCH);
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
            let got = r.audit_checkpoint(&operator, Plane::Data).await.unwrap();
            assert_eq!(got.map(|c| c.seq), Some(latest), "step {i}");
        }
        let control = r.audit_checkpoint(&operator, Plane::Control).await.unwrap();
        assert_eq!(control.map(|c| c.seq), Some(2));
        assert_eq!(
            r.audit_checkpoint(&user, Plane::Data).await,
            Err(DomainError::NoPermission)
        );
        assert!(r.require_operator(&user).is_err());
        assert!(r.require_operator(&operator).is_ok());
    }
}
