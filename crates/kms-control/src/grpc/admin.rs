//! `kms.v1.AdminService`: operators take a backup of the control plane's store while it
//! serves, streamed as the bytes of a backup file.

use std::pin::Pin;
use std::sync::Arc;

use kms_proto::kms::v1::admin_service_server::AdminService;
use kms_proto::kms::v1::{BackupChunk, BackupRequest};
use kms_runtime::caller;
use kms_store::Store;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::status;
use crate::registry::Registry;

/// Whole-service work for operators.
#[derive(Debug)]
pub struct AdminApi<S: Store> {
    registry: Arc<Registry<S>>,
}

impl<S: Store> AdminApi<S> {
    /// The service over `registry`.
    pub fn new(registry: Arc<Registry<S>>) -> Self {
        Self { registry }
    }
}

#[tonic::async_trait]
impl<S: Store> AdminService for AdminApi<S> {
    type BackupStream = Pin<Box<dyn Stream<Item = Result<BackupChunk, Status>> + Send + 'static>>;

    async fn backup(
        &self,
        request: Request<BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        let who = caller(&request).map_err(status)?;
        let chunks = self.registry.backup(&who).map_err(status)?;
        Ok(Response::new(Box::pin(ReceiverStream::new(chunks).map(
            |chunk| chunk.map(|data| BackupChunk { data }).map_err(status),
        ))))
    }
}
