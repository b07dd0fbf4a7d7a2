//! `kms.internal.v1.KeyDirectory`: what the data plane asks about keys, and where it reports
//! usage and its audit checkpoints. Only the data plane's own principal may call it.

use std::pin::Pin;
use std::sync::Arc;

use kms_proto::convert::{key_entry, key_event};
use kms_proto::kms::internal::v1::key_directory_server::KeyDirectory;
use kms_proto::kms::internal::v1::*;
use kms_runtime::caller;
use kms_store::Store;
use kms_types::{DomainError, KeyRef, KeyVersionId, Principal, UsageEvent};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::status;
use crate::registry::Registry;

/// The key directory the data plane reads.
#[derive(Debug)]
pub struct DirectoryService<S: Store> {
    registry: Arc<Registry<S>>,
    peer: Principal,
}

impl<S: Store> DirectoryService<S> {
    /// A directory over `registry` answering only `peer`.
    pub fn new(registry: Arc<Registry<S>>, peer: Principal) -> Self {
        Self { registry, peer }
    }

    fn check_peer<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let principal = caller(request).map_err(status)?;
        if principal == self.peer {
            Ok(())
        } else {
            Err(status(DomainError::NoPermission))
        }
    }
}

#[tonic::async_trait]
impl<S: Store> KeyDirectory for DirectoryService<S> {
    async fn get_key(
        &self,
        request: Request<GetKeyRequest>,
    ) -> Result<Response<GetKeyResponse>, Status> {
        self.check_peer(&request)?;
        let req = request.into_inner();
        let (entry, revision) = if !req.key_version_id.is_empty() {
            let version = KeyVersionId::parse(&req.key_version_id).map_err(status)?;
            self.registry.directory_version(version).await
        } else {
            let key_ref = KeyRef::parse(&req.key_id).map_err(status)?;
            let on_behalf = Principal::parse(&req.principal).map_err(status)?;
            self.registry
                .directory_key(*on_behalf.account(), key_ref)
                .await
        }
        .map_err(status)?;
        Ok(Response::new(GetKeyResponse {
            key: Some(key_entry(&entry)),
            revision,
        }))
    }

    type WatchKeysStream = Pin<Box<dyn Stream<Item = Result<KeyEvent, Status>> + Send + 'static>>;

    async fn watch_keys(
        &self,
        request: Request<WatchKeysRequest>,
    ) -> Result<Response<Self::WatchKeysStream>, Status> {
        self.check_peer(&request)?;
        let events = self.registry.watch(request.get_ref().from_revision);
        Ok(Response::new(Box::pin(
            events.map(|e| Ok::<_, Status>(key_event(&e))),
        )))
    }

    async fn report_usage(
        &self,
        request: Request<ReportUsageRequest>,
    ) -> Result<Response<ReportUsageResponse>, Status> {
        self.check_peer(&request)?;
        let (events, malformed): (Vec<_>, Vec<_>) = request
            .get_ref()
            .records
            .iter()
            .map(UsageEvent::try_from)
            .partition(Result::is_ok);
        if let Some(Err(e)) = malformed.first() {
            tracing::warn!(skipped = malformed.len(), error = %e, "usage records that do not parse were skipped");
        }
        self.registry
            .report_usage(events.into_iter().flatten().collect())
            .await
            .map_err(status)?;
        Ok(Response::new(ReportUsageResponse {}))
    }

    async fn report_audit_checkpoint(
        &self,
        request: Request<ReportAuditCheckpointRequest>,
    ) -> Result<Response<ReportAuditCheckpointResponse>, Status> {
        self.check_peer(&request)?;
        let cp =
            kms_runtime::audit_wire::checkpoint_from_wire(request.get_ref().checkpoint.as_ref())
                .map_err(status)?;
        if cp.plane != kms_runtime::audit::Plane::Data {
            return Err(status(DomainError::invalid(
                "Plane",
                "the data plane reports only its own audit log",
            )));
        }
        self.registry
            .record_audit_checkpoint(cp)
            .await
            .map_err(status)?;
        Ok(Response::new(ReportAuditCheckpointResponse {}))
    }

    async fn get_access_key(
        &self,
        request: Request<GetAccessKeyRequest>,
    ) -> Result<Response<GetAccessKeyResponse>, Status> {
        self.check_peer(&request)?;
        let id = kms_types::AccessKeyId::parse(&request.get_ref().access_key_id).map_err(status)?;
        let record = self
            .registry
            .directory_access_key(id)
            .await
            .map_err(status)?;
        Ok(Response::new(GetAccessKeyResponse {
            access_key: Some(super::access_key_to_wire(&record)),
            sealed_secret: record.sealed_secret,
        }))
    }
}
