//! `kms.internal.v1.KeyMaterial`: new key material for the control plane, sealed under the root
//! key. Only the control plane's own principal may call it.

use std::sync::Arc;

use kms_proto::convert::WireEnum;
use kms_proto::kms::internal::v1::key_material_server::KeyMaterial;
use kms_proto::kms::internal::v1::*;
use kms_runtime::caller;
use kms_types::{DomainError, KeyId, KeySpec, KeyVersionId, Principal, ProtectionLevel};
use tonic::{Request, Response, Status};

use super::status;
use crate::vault::KeyVault;

/// Key material for the control plane.
#[derive(Debug)]
pub struct MaterialService {
    vault: Arc<KeyVault>,
    peer: Principal,
}

impl MaterialService {
    /// A service over `vault` answering only `peer`.
    pub fn new(vault: Arc<KeyVault>, peer: Principal) -> Self {
        Self { vault, peer }
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
        let (wrapped, public_key_der) =
            tokio::task::spawn_blocking(move || vault.generate(&version, spec, protection))
                .await
                .map_err(|e| status(DomainError::Internal(format!("generate task failed: {e}"))))?
                .map_err(status)?;
        Ok(Response::new(GenerateKeyMaterialResponse {
            wrapped_material: wrapped,
            public_key_der,
        }))
    }

    kms_runtime::unimplemented_rpcs! {
        "kms.internal.v1.KeyMaterial";
        create_import_key(CreateImportKeyRequest) -> CreateImportKeyResponse = "CreateImportKey";
        import_material(ImportMaterialRequest) -> ImportMaterialResponse = "ImportMaterial";
    }
}
