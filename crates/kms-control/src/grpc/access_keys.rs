//! `kms.v1.AccessKeyService`: operators manage the gateway's AccessKey pairs.

use std::sync::Arc;

use kms_proto::convert::timestamp;
use kms_proto::kms::v1::access_key_service_server::AccessKeyService;
use kms_proto::kms::v1::*;
use kms_runtime::caller;
use kms_store::Store;
use kms_types::{AccessKeyId, AccessKeyRecord, Principal};
use tonic::{Request, Response, Status};

use super::status;
use crate::registry::Registry;

/// AccessKey pairs for operators.
#[derive(Debug)]
pub struct AccessKeyApi<S: Store> {
    registry: Arc<Registry<S>>,
}

impl<S: Store> AccessKeyApi<S> {
    /// The service over `registry`.
    pub fn new(registry: Arc<Registry<S>>) -> Self {
        Self { registry }
    }
}

/// A pair as the wire shows it, without its secret.
pub fn access_key_to_wire(r: &AccessKeyRecord) -> AccessKey {
    AccessKey {
        access_key_id: r.id.to_string(),
        principal: r.principal.arn().to_string(),
        status: match r.status {
            kms_types::AccessKeyStatus::Enabled => AccessKeyStatus::Enabled,
            kms_types::AccessKeyStatus::Disabled => AccessKeyStatus::Disabled,
        } as i32,
        creation_date: Some(timestamp(r.created)),
        creator: r.creator.arn().to_string(),
    }
}

fn principal_field(arn: &str) -> Result<Principal, Status> {
    Principal::parse_explained(arn)
        .map_err(|reason| status(kms_types::DomainError::invalid("Principal", reason)))
}

#[tonic::async_trait]
impl<S: Store> AccessKeyService for AccessKeyApi<S> {
    async fn create_access_key(
        &self,
        request: Request<CreateAccessKeyRequest>,
    ) -> Result<Response<CreateAccessKeyResponse>, Status> {
        let who = caller(&request).map_err(status)?;
        let principal = principal_field(&request.get_ref().principal)?;
        let (record, secret) = self
            .registry
            .create_access_key(&who, principal)
            .await
            .map_err(status)?;
        Ok(Response::new(CreateAccessKeyResponse {
            access_key: Some(access_key_to_wire(&record)),
            access_key_secret: secret.secret.to_string(),
        }))
    }

    async fn list_access_keys(
        &self,
        request: Request<ListAccessKeysRequest>,
    ) -> Result<Response<ListAccessKeysResponse>, Status> {
        let who = caller(&request).map_err(status)?;
        let arn = &request.get_ref().principal;
        let principal = if arn.is_empty() {
            None
        } else {
            Some(principal_field(arn)?)
        };
        let records = self
            .registry
            .list_access_keys(&who, principal)
            .await
            .map_err(status)?;
        Ok(Response::new(ListAccessKeysResponse {
            access_keys: records.iter().map(access_key_to_wire).collect(),
        }))
    }

    async fn disable_access_key(
        &self,
        request: Request<DisableAccessKeyRequest>,
    ) -> Result<Response<DisableAccessKeyResponse>, Status> {
        let who = caller(&request).map_err(status)?;
        let id = AccessKeyId::parse(&request.get_ref().access_key_id).map_err(status)?;
        let record = self
            .registry
            .disable_access_key(&who, id)
            .await
            .map_err(status)?;
        Ok(Response::new(DisableAccessKeyResponse {
            access_key: Some(access_key_to_wire(&record)),
        }))
    }

    async fn delete_access_key(
        &self,
        request: Request<DeleteAccessKeyRequest>,
    ) -> Result<Response<DeleteAccessKeyResponse>, Status> {
        let who = caller(&request).map_err(status)?;
        let id = AccessKeyId::parse(&request.get_ref().access_key_id).map_err(status)?;
        self.registry
            .delete_access_key(&who, id)
            .await
            .map_err(status)?;
        Ok(Response::new(DeleteAccessKeyResponse {}))
    }
}
