//! `kms.v1.KmsInstanceService`.

use std::sync::Arc;

use kms_proto::convert::{account_field, kms_instance};
use kms_proto::kms::v1::kms_instance_service_server::KmsInstanceService;
use kms_proto::kms::v1::*;
use kms_runtime::caller;
use kms_store::Store;
use kms_types::{InstanceId, NewInstance, PageRequest, QuotaChange};
use tonic::{Request, Response, Status};

use super::status;
use crate::registry::Registry;

/// KMS instance management on the control plane.
#[derive(Debug)]
pub struct InstanceService<S: Store> {
    registry: Arc<Registry<S>>,
}

impl<S: Store> InstanceService<S> {
    /// A service over `registry`.
    pub fn new(registry: Arc<Registry<S>>) -> Self {
        Self { registry }
    }
}

fn instance_id(id: &str) -> Result<InstanceId, Status> {
    InstanceId::parse(id).map_err(status)
}

#[tonic::async_trait]
impl<S: Store> KmsInstanceService for InstanceService<S> {
    async fn create_kms_instance(
        &self,
        request: Request<CreateKmsInstanceRequest>,
    ) -> Result<Response<CreateKmsInstanceResponse>, Status> {
        let principal = caller(&request).map_err(status)?;
        let req = NewInstance::try_from(request.into_inner()).map_err(status)?;
        let record = self
            .registry
            .create_instance(&principal, req)
            .await
            .map_err(status)?;
        Ok(Response::new(CreateKmsInstanceResponse {
            kms_instance: Some(kms_instance(&record)),
        }))
    }

    async fn get_kms_instance(
        &self,
        request: Request<GetKmsInstanceRequest>,
    ) -> Result<Response<GetKmsInstanceResponse>, Status> {
        let principal = caller(&request).map_err(status)?;
        let id = instance_id(&request.get_ref().kms_instance_id)?;
        let record = self
            .registry
            .get_instance(&principal, id)
            .await
            .map_err(status)?;
        Ok(Response::new(GetKmsInstanceResponse {
            kms_instance: Some(kms_instance(&record)),
        }))
    }

    async fn list_kms_instances(
        &self,
        request: Request<ListKmsInstancesRequest>,
    ) -> Result<Response<ListKmsInstancesResponse>, Status> {
        let principal = caller(&request).map_err(status)?;
        let req = request.into_inner();
        let page = PageRequest::new(req.page_size, &req.page_token).map_err(status)?;
        let instances = self
            .registry
            .list_instances(&principal, page)
            .await
            .map_err(status)?;
        Ok(Response::new(ListKmsInstancesResponse {
            next_page_token: instances.next_token(),
            kms_instances: instances.items.iter().map(kms_instance).collect(),
        }))
    }

    async fn share_kms_instance(
        &self,
        request: Request<ShareKmsInstanceRequest>,
    ) -> Result<Response<ShareKmsInstanceResponse>, Status> {
        let principal = caller(&request).map_err(status)?;
        let req = request.into_inner();
        let id = instance_id(&req.kms_instance_id)?;
        let account = account_field("AccountId", &req.account_id).map_err(status)?;
        let record = self
            .registry
            .share_instance(&principal, id, account)
            .await
            .map_err(status)?;
        Ok(Response::new(ShareKmsInstanceResponse {
            kms_instance: Some(kms_instance(&record)),
        }))
    }

    async fn update_kms_instance(
        &self,
        request: Request<UpdateKmsInstanceRequest>,
    ) -> Result<Response<UpdateKmsInstanceResponse>, Status> {
        let principal = caller(&request).map_err(status)?;
        let req = request.into_inner();
        let id = instance_id(&req.kms_instance_id)?;
        let record = self
            .registry
            .update_instance(&principal, id, QuotaChange::from(&req))
            .await
            .map_err(status)?;
        Ok(Response::new(UpdateKmsInstanceResponse {
            kms_instance: Some(kms_instance(&record)),
        }))
    }

    async fn unshare_kms_instance(
        &self,
        request: Request<UnshareKmsInstanceRequest>,
    ) -> Result<Response<UnshareKmsInstanceResponse>, Status> {
        let principal = caller(&request).map_err(status)?;
        let req = request.into_inner();
        let id = instance_id(&req.kms_instance_id)?;
        let account = account_field("AccountId", &req.account_id).map_err(status)?;
        let record = self
            .registry
            .unshare_instance(&principal, id, account)
            .await
            .map_err(status)?;
        Ok(Response::new(UnshareKmsInstanceResponse {
            kms_instance: Some(kms_instance(&record)),
        }))
    }
}
