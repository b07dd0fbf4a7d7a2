//! `kms.v1.AuditService`: operators read the latest checkpoint of one audit log and have
//! MACs checked where the plane's key is (the control plane's here, the data plane's by
//! `KeyMaterial.VerifyPlaneAuditMacs`). No key leaves the service.

use std::sync::Arc;

use kms_proto::kms::v1::audit_service_server::AuditService;
use kms_proto::kms::v1::*;
use kms_runtime::audit::{AuditKey, Plane};
use kms_runtime::{audit_wire, caller};
use kms_store::Store;
use tonic::{Request, Response, Status};

use super::status;
use crate::material::MaterialClient;
use crate::registry::Registry;

/// Audit-log checks for operators.
#[derive(Debug)]
pub struct AuditApi<S: Store> {
    registry: Arc<Registry<S>>,
    key: AuditKey,
    material: MaterialClient,
}

impl<S: Store> AuditApi<S> {
    /// The service over `registry`, checking the control plane's MACs with `key` and the data
    /// plane's through `material`.
    pub fn new(registry: Arc<Registry<S>>, key: AuditKey, material: MaterialClient) -> Self {
        Self {
            registry,
            key,
            material,
        }
    }
}

#[tonic::async_trait]
impl<S: Store> AuditService for AuditApi<S> {
    async fn get_audit_checkpoint(
        &self,
        request: Request<GetAuditCheckpointRequest>,
    ) -> Result<Response<GetAuditCheckpointResponse>, Status> {
        let who = caller(&request).map_err(status)?;
        let plane = audit_wire::plane(&request.get_ref().plane).map_err(status)?;
        let log = audit_wire::log_id(&request.get_ref().log).map_err(status)?;
        let cp = self
            .registry
            .audit_checkpoint(&who, plane, &log)
            .await
            .map_err(status)?;
        Ok(Response::new(GetAuditCheckpointResponse {
            checkpoint: cp.as_ref().map(audit_wire::checkpoint_to_wire),
        }))
    }

    async fn verify_audit_macs(
        &self,
        request: Request<VerifyAuditMacsRequest>,
    ) -> Result<Response<VerifyAuditMacsResponse>, Status> {
        let who = caller(&request).map_err(status)?;
        self.registry.require_operator(&who).map_err(status)?;
        let req = request.into_inner();
        let plane = audit_wire::plane(&req.plane).map_err(status)?;
        let checks = audit_wire::checks_from_wire(&req.checks).map_err(status)?;
        let first = match plane {
            Plane::Control => self.key.first_mismatch(&checks),
            Plane::Data => self
                .material
                .verify_audit_macs(&checks)
                .await
                .map_err(status)?,
        };
        Ok(Response::new(audit_wire::answer(first)))
    }
}
