//! `kms.internal.v1.KeyMaterial`: new and imported key material for the control plane, sealed
//! under the root key, one-time import keys, the control plane's audit-chain key and MAC
//! checks under the data plane's own. Only the control plane's own principal may call it.

use std::sync::Arc;

use kms_proto::convert::WireEnum;
use kms_proto::kms::internal::v1::key_material_server::KeyMaterial;
use kms_proto::kms::internal::v1::*;
use kms_runtime::audit::{AuditKey, Plane};
use kms_runtime::caller;
use kms_types::{
    AccessKeyId, Algorithm, DomainError, ImportTokenId, KeyId, KeySpec, KeyVersionId, Principal,
    ProtectionLevel,
};
use tonic::{Request, Response, Status};

use super::status;
use crate::import::ImportRequest;
use crate::vault::KeyVault;

/// Key material for the control plane.
#[derive(Debug)]
pub struct MaterialService {
    vault: Arc<KeyVault>,
    peer: Principal,
    audit_key: AuditKey,
}

impl MaterialService {
    /// A service over `vault` answering only `peer`; `audit_key` is the data plane's own
    /// audit-chain key, for `VerifyPlaneAuditMacs`.
    pub fn new(vault: Arc<KeyVault>, peer: Principal, audit_key: AuditKey) -> Self {
        Self {
            vault,
            peer,
            audit_key,
        }
    }

    fn check_peer<T>(&self, request: &Request<T>) -> Result<(), Status> {
        if caller(request).map_err(status)? == self.peer {
            Ok(())
        } else {
            Err(status(DomainError::NoPermission))
        }
    }
}

#[tonic::async_trait]
impl KeyMaterial for MaterialService {
    async fn generate(
        &self,
        request: Request<GenerateKeyMaterialRequest>,
    ) -> Result<Response<GenerateKeyMaterialResponse>, Status> {
        self.check_peer(&request)?;
        let req = request.into_inner();
        KeyId::parse(&req.key_id).map_err(status)?;
        let version = KeyVersionId::parse(&req.key_version_id).map_err(status)?;
        let spec = KeySpec::from_wire(req.key_spec).map_err(status)?;
        let protection = ProtectionLevel::from_wire(req.protection_level).map_err(status)?;
        let vault = Arc::clone(&self.vault);
        let (wrapped, public_key_der) = kms_runtime::telemetry::spawn_blocking(move || {
            vault.generate(&version, spec, protection)
        })
        .await
        .map_err(|e| status(DomainError::Internal(format!("generate task failed: {e}"))))?
        .map_err(status)?;
        Ok(Response::new(GenerateKeyMaterialResponse {
            wrapped_material: wrapped,
            public_key_der,
        }))
    }

    async fn create_import_key(
        &self,
        request: Request<CreateImportKeyRequest>,
    ) -> Result<Response<CreateImportKeyResponse>, Status> {
        self.check_peer(&request)?;
        let req = request.into_inner();
        KeyId::parse(&req.key_id).map_err(status)?;
        let id = ImportTokenId::parse(&req.import_key_id).map_err(status)?;
        Algorithm::from_wire(req.wrapping_algorithm).map_err(status)?;
        let wrapping_key_spec = KeySpec::from_wire(req.wrapping_key_spec).map_err(status)?;
        let vault = Arc::clone(&self.vault);
        let key = kms_runtime::telemetry::spawn_blocking(move || {
            vault.create_import_key(&id, wrapping_key_spec)
        })
        .await
        .map_err(|e| {
            status(DomainError::Internal(format!(
                "import key task failed: {e}"
            )))
        })?
        .map_err(status)?;
        Ok(Response::new(CreateImportKeyResponse {
            public_key_der: key.public_key_der,
            wrapped_private_key: key.sealed_private_key,
        }))
    }

    async fn import_material(
        &self,
        request: Request<ImportMaterialRequest>,
    ) -> Result<Response<ImportMaterialResponse>, Status> {
        self.check_peer(&request)?;
        let req = request.into_inner();
        let import = ImportRequest {
            key_id: KeyId::parse(&req.key_id).map_err(status)?,
            version: KeyVersionId::parse(&req.key_version_id).map_err(status)?,
            spec: KeySpec::from_wire(req.key_spec).map_err(status)?,
            protection: ProtectionLevel::from_wire(req.protection_level).map_err(status)?,
            wrapping_algorithm: Algorithm::from_wire(req.wrapping_algorithm).map_err(status)?,
            import_key_id: ImportTokenId::parse(&req.import_key_id).map_err(status)?,
            sealed_import_key: req.wrapped_private_key,
            encrypted_material: req.encrypted_key_material,
        };
        let vault = Arc::clone(&self.vault);
        let imported =
            kms_runtime::telemetry::spawn_blocking(move || vault.import_material(&import))
                .await
                .map_err(|e| status(DomainError::Internal(format!("import task failed: {e}"))))?
                .map_err(status)?;
        Ok(Response::new(ImportMaterialResponse {
            wrapped_material: imported.wrapped_material,
            public_key_der: imported.public_key_der,
            material_digest: imported.digest.to_vec(),
        }))
    }

    async fn get_audit_key(
        &self,
        request: Request<GetAuditKeyRequest>,
    ) -> Result<Response<GetAuditKeyResponse>, Status> {
        self.check_peer(&request)?;
        let vault = Arc::clone(&self.vault);
        let key =
            kms_runtime::telemetry::spawn_blocking(move || vault.derive_audit_key(Plane::Control))
                .await
                .map_err(|e| status(DomainError::Internal(format!("audit key task failed: {e}"))))?
                .map_err(status)?;
        Ok(Response::new(GetAuditKeyResponse {
            key: key.expose().to_vec(),
        }))
    }

    async fn verify_plane_audit_macs(
        &self,
        request: Request<VerifyPlaneAuditMacsRequest>,
    ) -> Result<Response<VerifyPlaneAuditMacsResponse>, Status> {
        self.check_peer(&request)?;
        let req = request.into_inner().checks.unwrap_or_default();
        if kms_runtime::audit_wire::plane(&req.plane).map_err(status)? != Plane::Data {
            return Err(status(DomainError::invalid(
                "Plane",
                "the data plane checks only its own audit log",
            )));
        }
        let checks = kms_runtime::audit_wire::checks_from_wire(&req.checks).map_err(status)?;
        Ok(Response::new(VerifyPlaneAuditMacsResponse {
            result: Some(kms_runtime::audit_wire::answer(
                self.audit_key.first_mismatch(&checks),
            )),
        }))
    }

    async fn generate_access_key_secret(
        &self,
        request: Request<GenerateAccessKeySecretRequest>,
    ) -> Result<Response<GenerateAccessKeySecretResponse>, Status> {
        self.check_peer(&request)?;
        let id = AccessKeyId::parse(&request.get_ref().access_key_id).map_err(status)?;
        let vault = Arc::clone(&self.vault);
        let (secret, sealed) =
            kms_runtime::telemetry::spawn_blocking(move || vault.new_access_key_secret(&id))
                .await
                .map_err(|e| status(DomainError::Internal(format!("secret task failed: {e}"))))?
                .map_err(status)?;
        Ok(Response::new(GenerateAccessKeySecretResponse {
            secret: secret.to_string(),
            sealed_secret: sealed,
        }))
    }
}
