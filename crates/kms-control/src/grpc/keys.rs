//! `kms.v1.KeyManagementService`.

use std::sync::Arc;

use kms_proto::convert::key_metadata;
use kms_proto::kms::v1::key_management_service_server::KeyManagementService;
use kms_proto::kms::v1::*;
use kms_runtime::caller;
use kms_store::Store;
use kms_types::{KeyRef, NewKey};
use tonic::{Request, Response, Status};

use super::status;
use crate::registry::Registry;

/// Key management on the control plane.
#[derive(Debug)]
pub struct KeyService<S: Store> {
    registry: Arc<Registry<S>>,
}

impl<S: Store> KeyService<S> {
    /// A service over `registry`.
    pub fn new(registry: Arc<Registry<S>>) -> Self {
        Self { registry }
    }
}

#[tonic::async_trait]
impl<S: Store> KeyManagementService for KeyService<S> {
    async fn create_key(
        &self,
        request: Request<CreateKeyRequest>,
    ) -> Result<Response<CreateKeyResponse>, Status> {
        let principal = caller(&request).map_err(status)?;
        let new_key = NewKey::try_from(request.into_inner()).map_err(status)?;
        let record = self
            .registry
            .create_key(&principal, new_key)
            .await
            .map_err(status)?;
        Ok(Response::new(CreateKeyResponse {
            key_metadata: Some(key_metadata(&record, self.registry.region())),
        }))
    }

    async fn describe_key(
        &self,
        request: Request<DescribeKeyRequest>,
    ) -> Result<Response<DescribeKeyResponse>, Status> {
        let principal = caller(&request).map_err(status)?;
        let key_ref = KeyRef::parse(&request.get_ref().key_id).map_err(status)?;
        let record = self
            .registry
            .describe_key(&principal, key_ref)
            .await
            .map_err(status)?;
        Ok(Response::new(DescribeKeyResponse {
            key_metadata: Some(key_metadata(&record, self.registry.region())),
        }))
    }

    kms_runtime::unimplemented_rpcs! {
        "kms.v1.KeyManagementService";
        list_keys(ListKeysRequest) -> ListKeysResponse = "ListKeys";
        enable_key(EnableKeyRequest) -> EnableKeyResponse = "EnableKey";
        disable_key(DisableKeyRequest) -> DisableKeyResponse = "DisableKey";
        update_key_description(UpdateKeyDescriptionRequest) -> UpdateKeyDescriptionResponse = "UpdateKeyDescription";
        set_deletion_protection(SetDeletionProtectionRequest) -> SetDeletionProtectionResponse = "SetDeletionProtection";
        schedule_key_deletion(ScheduleKeyDeletionRequest) -> ScheduleKeyDeletionResponse = "ScheduleKeyDeletion";
        cancel_key_deletion(CancelKeyDeletionRequest) -> CancelKeyDeletionResponse = "CancelKeyDeletion";
        update_rotation_policy(UpdateRotationPolicyRequest) -> UpdateRotationPolicyResponse = "UpdateRotationPolicy";
        create_key_version(CreateKeyVersionRequest) -> CreateKeyVersionResponse = "CreateKeyVersion";
        describe_key_version(DescribeKeyVersionRequest) -> DescribeKeyVersionResponse = "DescribeKeyVersion";
        list_key_versions(ListKeyVersionsRequest) -> ListKeyVersionsResponse = "ListKeyVersions";
        create_alias(CreateAliasRequest) -> CreateAliasResponse = "CreateAlias";
        update_alias(UpdateAliasRequest) -> UpdateAliasResponse = "UpdateAlias";
        delete_alias(DeleteAliasRequest) -> DeleteAliasResponse = "DeleteAlias";
        list_aliases(ListAliasesRequest) -> ListAliasesResponse = "ListAliases";
        list_aliases_by_key_id(ListAliasesByKeyIdRequest) -> ListAliasesByKeyIdResponse = "ListAliasesByKeyId";
        tag_resources(TagResourcesRequest) -> TagResourcesResponse = "TagResources";
        untag_resources(UntagResourcesRequest) -> UntagResourcesResponse = "UntagResources";
        list_resource_tags(ListResourceTagsRequest) -> ListResourceTagsResponse = "ListResourceTags";
        set_key_policy(SetKeyPolicyRequest) -> SetKeyPolicyResponse = "SetKeyPolicy";
        get_key_policy(GetKeyPolicyRequest) -> GetKeyPolicyResponse = "GetKeyPolicy";
        get_parameters_for_import(GetParametersForImportRequest) -> GetParametersForImportResponse = "GetParametersForImport";
        import_key_material(ImportKeyMaterialRequest) -> ImportKeyMaterialResponse = "ImportKeyMaterial";
        delete_key_material(DeleteKeyMaterialRequest) -> DeleteKeyMaterialResponse = "DeleteKeyMaterial";
        check_key_association(CheckKeyAssociationRequest) -> CheckKeyAssociationResponse = "CheckKeyAssociation";
    }
}
