//! `kms.v1.AccessKeyResolver`: the HTTP gateway learns an AccessKey pair's principal and
//! secret to verify request signatures. Only the configured gateway principals may call it;
//! the sealed secret comes from the control plane and is opened here, under the root key.

use std::sync::Arc;

use kms_proto::kms::v1::access_key_resolver_server::AccessKeyResolver;
use kms_proto::kms::v1::{AccessKeyStatus, ResolveAccessKeyRequest, ResolveAccessKeyResponse};
use kms_runtime::caller;
use kms_types::{AccessKeyId, DomainError, Principal};
use tonic::{Request, Response, Status};

use super::status;
use crate::directory::DirectoryClient;
use crate::vault::KeyVault;

/// AccessKey pairs for the gateway.
#[derive(Debug)]
pub struct AccessKeyResolverApi {
    directory: DirectoryClient,
    vault: Arc<KeyVault>,
    gateways: Vec<Principal>,
}

impl AccessKeyResolverApi {
    /// A resolver reading pairs through `directory`, opening secrets with `vault`, answering
    /// only `gateways`.
    pub fn new(directory: DirectoryClient, vault: Arc<KeyVault>, gateways: Vec<Principal>) -> Self {
        Self {
            directory,
            vault,
            gateways,
        }
    }
}

#[tonic::async_trait]
impl AccessKeyResolver for AccessKeyResolverApi {
    async fn resolve_access_key(
        &self,
        request: Request<ResolveAccessKeyRequest>,
    ) -> Result<Response<ResolveAccessKeyResponse>, Status> {
        let who = caller(&request).map_err(status)?;
        if !self.gateways.contains(&who) {
            return Err(status(DomainError::NoPermission));
        }
        let id = AccessKeyId::parse(&request.get_ref().access_key_id).map_err(status)?;
        let entry = self.directory.get_access_key(&id).await.map_err(status)?;
        let key = entry.access_key.unwrap_or_default();
        if key.access_key_id != id.as_str() {
            return Err(status(DomainError::Internal(
                "KeyDirectory.GetAccessKey answered for another pair".into(),
            )));
        }
        if key.status != AccessKeyStatus::Enabled as i32 {
            return Err(status(DomainError::AccessKeyDisabled));
        }
        let vault = Arc::clone(&self.vault);
        let sealed = entry.sealed_secret;
        let secret = kms_runtime::telemetry::spawn_blocking(move || {
            vault.open_access_key_secret(&id, &sealed)
        })
        .await
        .map_err(|e| status(DomainError::Internal(format!("secret task failed: {e}"))))?
        .map_err(status)?;
        Ok(Response::new(ResolveAccessKeyResponse {
            principal: key.principal,
            access_key_secret: secret.to_string(),
        }))
    }
}
