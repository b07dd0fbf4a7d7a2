//! `kms.v1.KeyManagementService`.

use std::sync::Arc;

use kms_proto::convert::{alias, interval_days, key_metadata, key_version, tag, tags_from_wire};
use kms_proto::kms::v1::key_management_service_server::KeyManagementService;
use kms_proto::kms::v1::*;
use kms_runtime::audit::AuditNote;
use kms_runtime::caller;
use kms_store::Store;
use kms_types::{KeyQuery, KeyRecord, KeyRef, KeyVersionId, NewKey, PageRequest};
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

    /// The metadata of `record`, noting its id and primary version in the call's audit line.
    fn metadata(&self, note: &AuditNote, record: &KeyRecord) -> Option<KeyMetadata> {
        note.set_key(record.id.as_str(), &record.primary_version.to_string());
        Some(key_metadata(record, self.registry.region()))
    }
}

fn key_ref(key_id: &str) -> Result<KeyRef, Status> {
    KeyRef::parse(key_id).map_err(status)
}

/// The `key_ids` of a batch call; a malformed one is named with its place.
fn batch_key_refs(key_ids: &[String]) -> Result<Vec<KeyRef>, Status> {
    key_ids
        .iter()
        .enumerate()
        .map(|(i, k)| {
            KeyRef::parse(k).map_err(|e| status(e.in_batch(k.clone(), i + 1, key_ids.len())))
        })
        .collect()
}

#[tonic::async_trait]
impl<S: Store> KeyManagementService for KeyService<S> {
    async fn create_key(
        &self,
        request: Request<CreateKeyRequest>,
    ) -> Result<Response<CreateKeyResponse>, Status> {
        let principal = caller(&request).map_err(status)?;
        let note = AuditNote::of(&request);
        let new_key = NewKey::try_from(request.into_inner()).map_err(status)?;
        let record = self
            .registry
            .create_key(&principal, new_key)
            .await
            .map_err(status)?;
        Ok(Response::new(CreateKeyResponse {
            key_metadata: self.metadata(&note, &record),
        }))
    }

    async fn describe_key(
        &self,
        request: Request<DescribeKeyRequest>,
    ) -> Result<Response<DescribeKeyResponse>, Status> {
        let principal = caller(&request).map_err(status)?;
        let note = AuditNote::of(&request);
        note.set_key(&request.get_ref().key_id, "");
        let key_ref = key_ref(&request.get_ref().key_id)?;
        let record = self
            .registry
            .describe_key(&principal, key_ref)
            .await
            .map_err(status)?;
        Ok(Response::new(DescribeKeyResponse {
            key_metadata: self.metadata(&note, &record),
        }))
    }

    async fn list_keys(
        &self,
        request: Request<ListKeysRequest>,
    ) -> Result<Response<ListKeysResponse>, Status> {
        let principal = caller(&request).map_err(status)?;
        let query = KeyQuery::try_from(request.into_inner()).map_err(status)?;
        let page = self
            .registry
            .list_keys(&principal, query)
            .await
            .map_err(status)?;
        Ok(Response::new(ListKeysResponse {
            next_page_token: page.next_token(),
            keys: page
                .items
                .iter()
                .map(|r| key_metadata(r, self.registry.region()))
                .collect(),
        }))
    }

    async fn enable_key(
        &self,
        request: Request<EnableKeyRequest>,
    ) -> Result<Response<EnableKeyResponse>, Status> {
        let principal = caller(&request).map_err(status)?;
        let note = AuditNote::of(&request);
        note.set_key(&request.get_ref().key_id, "");
        let key_ref = key_ref(&request.get_ref().key_id)?;
        let record = self
            .registry
            .enable_key(&principal, key_ref)
            .await
            .map_err(status)?;
        Ok(Response::new(EnableKeyResponse {
            key_metadata: self.metadata(&note, &record),
        }))
    }

    async fn disable_key(
        &self,
        request: Request<DisableKeyRequest>,
    ) -> Result<Response<DisableKeyResponse>, Status> {
        let principal = caller(&request).map_err(status)?;
        let note = AuditNote::of(&request);
        note.set_key(&request.get_ref().key_id, "");
        let key_ref = key_ref(&request.get_ref().key_id)?;
        let record = self
            .registry
            .disable_key(&principal, key_ref)
            .await
            .map_err(status)?;
        Ok(Response::new(DisableKeyResponse {
            key_metadata: self.metadata(&note, &record),
        }))
    }

    async fn update_key_description(
        &self,
        request: Request<UpdateKeyDescriptionRequest>,
    ) -> Result<Response<UpdateKeyDescriptionResponse>, Status> {
        let principal = caller(&request).map_err(status)?;
        let note = AuditNote::of(&request);
        note.set_key(&request.get_ref().key_id, "");
        let req = request.into_inner();
        let key_ref = key_ref(&req.key_id)?;
        let record = self
            .registry
            .update_key_description(&principal, key_ref, req.description)
            .await
            .map_err(status)?;
        Ok(Response::new(UpdateKeyDescriptionResponse {
            key_metadata: self.metadata(&note, &record),
        }))
    }

    async fn set_deletion_protection(
        &self,
        request: Request<SetDeletionProtectionRequest>,
    ) -> Result<Response<SetDeletionProtectionResponse>, Status> {
        let principal = caller(&request).map_err(status)?;
        let note = AuditNote::of(&request);
        note.set_key(&request.get_ref().key_id, "");
        let req = request.into_inner();
        let key_ref = key_ref(&req.key_id)?;
        let record = self
            .registry
            .set_deletion_protection(
                &principal,
                key_ref,
                req.enable_deletion_protection,
                req.deletion_protection_description,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(SetDeletionProtectionResponse {
            key_metadata: self.metadata(&note, &record),
        }))
    }

    async fn schedule_key_deletion(
        &self,
        request: Request<ScheduleKeyDeletionRequest>,
    ) -> Result<Response<ScheduleKeyDeletionResponse>, Status> {
        let principal = caller(&request).map_err(status)?;
        let note = AuditNote::of(&request);
        note.set_key(&request.get_ref().key_id, "");
        let req = request.into_inner();
        let key_ref = key_ref(&req.key_id)?;
        let record = self
            .registry
            .schedule_key_deletion(&principal, key_ref, i64::from(req.pending_window_in_days))
            .await
            .map_err(status)?;
        Ok(Response::new(ScheduleKeyDeletionResponse {
            key_metadata: self.metadata(&note, &record),
        }))
    }

    async fn cancel_key_deletion(
        &self,
        request: Request<CancelKeyDeletionRequest>,
    ) -> Result<Response<CancelKeyDeletionResponse>, Status> {
        let principal = caller(&request).map_err(status)?;
        let note = AuditNote::of(&request);
        note.set_key(&request.get_ref().key_id, "");
        let key_ref = key_ref(&request.get_ref().key_id)?;
        let record = self
            .registry
            .cancel_key_deletion(&principal, key_ref)
            .await
            .map_err(status)?;
        Ok(Response::new(CancelKeyDeletionResponse {
            key_metadata: self.metadata(&note, &record),
        }))
    }

    async fn update_rotation_policy(
        &self,
        request: Request<UpdateRotationPolicyRequest>,
    ) -> Result<Response<UpdateRotationPolicyResponse>, Status> {
        let principal = caller(&request).map_err(status)?;
        let note = AuditNote::of(&request);
        note.set_key(&request.get_ref().key_id, "");
        let req = request.into_inner();
        let key_ref = key_ref(&req.key_id)?;
        let days = req
            .rotation_interval
            .as_ref()
            .map(interval_days)
            .transpose()
            .map_err(status)?;
        let record = self
            .registry
            .update_rotation_policy(&principal, key_ref, req.enable_automatic_rotation, days)
            .await
            .map_err(status)?;
        Ok(Response::new(UpdateRotationPolicyResponse {
            key_metadata: self.metadata(&note, &record),
        }))
    }

    async fn create_key_version(
        &self,
        request: Request<CreateKeyVersionRequest>,
    ) -> Result<Response<CreateKeyVersionResponse>, Status> {
        let principal = caller(&request).map_err(status)?;
        let note = AuditNote::of(&request);
        note.set_key(&request.get_ref().key_id, "");
        let key_ref = key_ref(&request.get_ref().key_id)?;
        let (record, version) = self
            .registry
            .create_key_version(&principal, key_ref)
            .await
            .map_err(status)?;
        Ok(Response::new(CreateKeyVersionResponse {
            key_version: Some(key_version(&record, &version)),
        }))
    }

    async fn describe_key_version(
        &self,
        request: Request<DescribeKeyVersionRequest>,
    ) -> Result<Response<DescribeKeyVersionResponse>, Status> {
        let principal = caller(&request).map_err(status)?;
        let note = AuditNote::of(&request);
        note.set_key(&request.get_ref().key_id, &request.get_ref().key_version_id);
        let req = request.into_inner();
        let key_ref = key_ref(&req.key_id)?;
        let version = KeyVersionId::parse(&req.key_version_id).map_err(status)?;
        let (record, found) = self
            .registry
            .describe_key_version(&principal, key_ref, version)
            .await
            .map_err(status)?;
        Ok(Response::new(DescribeKeyVersionResponse {
            key_version: Some(key_version(&record, &found)),
        }))
    }

    async fn list_key_versions(
        &self,
        request: Request<ListKeyVersionsRequest>,
    ) -> Result<Response<ListKeyVersionsResponse>, Status> {
        let principal = caller(&request).map_err(status)?;
        let note = AuditNote::of(&request);
        note.set_key(&request.get_ref().key_id, "");
        let req = request.into_inner();
        let key_ref = key_ref(&req.key_id)?;
        let page = PageRequest::new(req.page_size, &req.page_token).map_err(status)?;
        let (record, versions) = self
            .registry
            .list_key_versions(&principal, key_ref, page)
            .await
            .map_err(status)?;
        Ok(Response::new(ListKeyVersionsResponse {
            next_page_token: versions.next_token(),
            key_versions: versions
                .items
                .iter()
                .map(|v| key_version(&record, v))
                .collect(),
        }))
    }

    async fn create_alias(
        &self,
        request: Request<CreateAliasRequest>,
    ) -> Result<Response<CreateAliasResponse>, Status> {
        let principal = caller(&request).map_err(status)?;
        let note = AuditNote::of(&request);
        note.set_key(&request.get_ref().key_id, "");
        let req = request.into_inner();
        let key_ref = key_ref(&req.key_id)?;
        let record = self
            .registry
            .create_alias(&principal, req.alias_name, key_ref)
            .await
            .map_err(status)?;
        note.set_key(record.id.as_str(), "");
        Ok(Response::new(CreateAliasResponse {}))
    }

    async fn update_alias(
        &self,
        request: Request<UpdateAliasRequest>,
    ) -> Result<Response<UpdateAliasResponse>, Status> {
        let principal = caller(&request).map_err(status)?;
        let note = AuditNote::of(&request);
        note.set_key(&request.get_ref().key_id, "");
        let req = request.into_inner();
        let key_ref = key_ref(&req.key_id)?;
        let (record, previous) = self
            .registry
            .update_alias(&principal, req.alias_name, key_ref)
            .await
            .map_err(status)?;
        note.set_key(record.id.as_str(), "");
        if let Some(previous) = previous {
            note.set_previous_key(previous.as_str());
        }
        Ok(Response::new(UpdateAliasResponse {}))
    }

    async fn delete_alias(
        &self,
        request: Request<DeleteAliasRequest>,
    ) -> Result<Response<DeleteAliasResponse>, Status> {
        let principal = caller(&request).map_err(status)?;
        let note = AuditNote::of(&request);
        let req = request.into_inner();
        let removed = self
            .registry
            .delete_alias(&principal, req.alias_name)
            .await
            .map_err(status)?;
        if let Some(id) = removed {
            note.set_key(id.as_str(), "");
        }
        Ok(Response::new(DeleteAliasResponse {}))
    }

    async fn list_aliases(
        &self,
        request: Request<ListAliasesRequest>,
    ) -> Result<Response<ListAliasesResponse>, Status> {
        let principal = caller(&request).map_err(status)?;
        let req = request.into_inner();
        let page = PageRequest::new(req.page_size, &req.page_token).map_err(status)?;
        let aliases = self
            .registry
            .list_aliases(&principal, page)
            .await
            .map_err(status)?;
        let region = self.registry.region();
        Ok(Response::new(ListAliasesResponse {
            next_page_token: aliases.next_token(),
            aliases: aliases
                .items
                .iter()
                .map(|(name, key_id)| alias(region, principal.account(), name, key_id))
                .collect(),
        }))
    }

    async fn list_aliases_by_key_id(
        &self,
        request: Request<ListAliasesByKeyIdRequest>,
    ) -> Result<Response<ListAliasesByKeyIdResponse>, Status> {
        let principal = caller(&request).map_err(status)?;
        let note = AuditNote::of(&request);
        note.set_key(&request.get_ref().key_id, "");
        let req = request.into_inner();
        let key_ref = key_ref(&req.key_id)?;
        let page = PageRequest::new(req.page_size, &req.page_token).map_err(status)?;
        let (record, names) = self
            .registry
            .list_aliases_by_key_id(&principal, key_ref, page)
            .await
            .map_err(status)?;
        let region = self.registry.region();
        Ok(Response::new(ListAliasesByKeyIdResponse {
            next_page_token: names.next_token(),
            aliases: names
                .items
                .iter()
                .map(|name| alias(region, &record.account, name, &record.id))
                .collect(),
        }))
    }

    async fn tag_resources(
        &self,
        request: Request<TagResourcesRequest>,
    ) -> Result<Response<TagResourcesResponse>, Status> {
        let principal = caller(&request).map_err(status)?;
        let req = request.into_inner();
        let key_refs = batch_key_refs(&req.key_ids)?;
        self.registry
            .tag_resources(&principal, key_refs, tags_from_wire(req.tags))
            .await
            .map_err(status)?;
        Ok(Response::new(TagResourcesResponse {}))
    }

    async fn untag_resources(
        &self,
        request: Request<UntagResourcesRequest>,
    ) -> Result<Response<UntagResourcesResponse>, Status> {
        let principal = caller(&request).map_err(status)?;
        let req = request.into_inner();
        let key_refs = batch_key_refs(&req.key_ids)?;
        self.registry
            .untag_resources(&principal, key_refs, req.tag_keys)
            .await
            .map_err(status)?;
        Ok(Response::new(UntagResourcesResponse {}))
    }

    async fn list_resource_tags(
        &self,
        request: Request<ListResourceTagsRequest>,
    ) -> Result<Response<ListResourceTagsResponse>, Status> {
        let principal = caller(&request).map_err(status)?;
        AuditNote::of(&request).set_key(&request.get_ref().key_id, "");
        let key_ref = key_ref(&request.get_ref().key_id)?;
        let tags = self
            .registry
            .list_resource_tags(&principal, key_ref)
            .await
            .map_err(status)?;
        Ok(Response::new(ListResourceTagsResponse {
            tags: tags.iter().map(tag).collect(),
        }))
    }

    async fn set_key_policy(
        &self,
        request: Request<SetKeyPolicyRequest>,
    ) -> Result<Response<SetKeyPolicyResponse>, Status> {
        let principal = caller(&request).map_err(status)?;
        let note = AuditNote::of(&request);
        note.set_key(&request.get_ref().key_id, "");
        let req = request.into_inner();
        let key_ref = key_ref(&req.key_id)?;
        self.registry
            .set_key_policy(&principal, key_ref, req.policy)
            .await
            .map_err(status)?;
        Ok(Response::new(SetKeyPolicyResponse {}))
    }

    async fn get_key_policy(
        &self,
        request: Request<GetKeyPolicyRequest>,
    ) -> Result<Response<GetKeyPolicyResponse>, Status> {
        let principal = caller(&request).map_err(status)?;
        AuditNote::of(&request).set_key(&request.get_ref().key_id, "");
        let key_ref = key_ref(&request.get_ref().key_id)?;
        let policy = self
            .registry
            .get_key_policy(&principal, key_ref)
            .await
            .map_err(status)?;
        Ok(Response::new(GetKeyPolicyResponse { policy }))
    }

    async fn get_parameters_for_import(
        &self,
        request: Request<GetParametersForImportRequest>,
    ) -> Result<Response<GetParametersForImportResponse>, Status> {
        let principal = caller(&request).map_err(status)?;
        let note = AuditNote::of(&request);
        note.set_key(&request.get_ref().key_id, "");
        let req = request.into_inner();
        let key_ref = key_ref(&req.key_id)?;
        let (algorithm, wrapping_key_spec) =
            kms_proto::convert::import_wrapping(req.wrapping_algorithm, req.wrapping_key_spec)
                .map_err(status)?;
        let params = self
            .registry
            .get_parameters_for_import(&principal, key_ref, algorithm, wrapping_key_spec)
            .await
            .map_err(status)?;
        note.set_key(params.key_id.as_str(), "");
        Ok(Response::new(GetParametersForImportResponse {
            key_id: params.key_id.to_string(),
            import_token: params.token.to_string(),
            public_key: params.public_key_der,
            token_expire_time: Some(kms_proto::convert::timestamp(params.expires)),
        }))
    }

    async fn import_key_material(
        &self,
        request: Request<ImportKeyMaterialRequest>,
    ) -> Result<Response<ImportKeyMaterialResponse>, Status> {
        let principal = caller(&request).map_err(status)?;
        let note = AuditNote::of(&request);
        note.set_key(&request.get_ref().key_id, "");
        let req = request.into_inner();
        let key_ref = key_ref(&req.key_id)?;
        let expire = req
            .key_material_expire_time
            .as_ref()
            .map(kms_proto::convert::from_timestamp);
        let record = self
            .registry
            .import_key_material(
                &principal,
                key_ref,
                &req.import_token,
                req.encrypted_key_material,
                expire,
            )
            .await
            .map_err(status)?;
        note.set_key(record.id.as_str(), &record.primary_version.to_string());
        Ok(Response::new(ImportKeyMaterialResponse {}))
    }

    async fn delete_key_material(
        &self,
        request: Request<DeleteKeyMaterialRequest>,
    ) -> Result<Response<DeleteKeyMaterialResponse>, Status> {
        let principal = caller(&request).map_err(status)?;
        let note = AuditNote::of(&request);
        note.set_key(&request.get_ref().key_id, "");
        let key_ref = key_ref(&request.get_ref().key_id)?;
        let record = self
            .registry
            .delete_key_material(&principal, key_ref)
            .await
            .map_err(status)?;
        note.set_key(record.id.as_str(), &record.primary_version.to_string());
        Ok(Response::new(DeleteKeyMaterialResponse {}))
    }

    async fn check_key_association(
        &self,
        request: Request<CheckKeyAssociationRequest>,
    ) -> Result<Response<CheckKeyAssociationResponse>, Status> {
        let principal = caller(&request).map_err(status)?;
        let note = AuditNote::of(&request);
        note.set_key(&request.get_ref().key_id, "");
        let key_ref = key_ref(&request.get_ref().key_id)?;
        let (record, associations) = self
            .registry
            .check_key_association(&principal, key_ref)
            .await
            .map_err(status)?;
        note.set_key(record.id.as_str(), "");
        Ok(Response::new(kms_proto::convert::key_associations(
            &associations,
        )))
    }
}
