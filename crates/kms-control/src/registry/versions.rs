//! Key versions: manual rotation (`CreateKeyVersion`), and reading versions back. New
//! material always comes from the data plane, at the key's protection level.

use kms_store::Store;
use kms_types::{
    DomainError, KeyRecord, KeyRef, KeyVersionId, KeyVersionRecord, Page, PageRequest, Principal,
};

use super::Registry;
use kms_types::authz::{Rpc, Touch};

impl<S: Store> Registry<S> {
    /// A new version of `record`'s key with fresh material, not yet stored.
    pub(super) async fn new_version(
        &self,
        record: &KeyRecord,
    ) -> Result<KeyVersionRecord, DomainError> {
        let id = KeyVersionId::generate();
        let m = self
            .material
            .generate(&record.id, &id, record.spec, record.protection)
            .await?;
        Ok(KeyVersionRecord {
            id,
            created: self.clock.now(),
            wrapped_material: m.wrapped,
            public_key_der: m.public_key_der,
        })
    }

    /// `CreateKeyVersion`: a new primary version (Enabled keys only); counts as a rotation.
    pub async fn create_key_version(
        &self,
        caller: &Principal,
        key_ref: KeyRef,
    ) -> Result<(KeyRecord, KeyVersionRecord), DomainError> {
        let action = Rpc::CreateKeyVersion.action(Touch::Key);
        let record = self.resolve(caller, key_ref, action).await?;
        record.check_can_add_version()?;
        let version = self.new_version(&record).await?;
        let at = version.created;
        let added = version.clone();
        let record = self
            .mutate_id(caller, record.id, action, move |k| {
                k.add_version(added.clone(), at)
            })
            .await?;
        tracing::info!(key_id = %record.id, key_version_id = %version.id, "key version created");
        Ok((record, version))
    }

    /// `DescribeKeyVersion`.
    pub async fn describe_key_version(
        &self,
        caller: &Principal,
        key_ref: KeyRef,
        version: KeyVersionId,
    ) -> Result<(KeyRecord, KeyVersionRecord), DomainError> {
        let record = self
            .resolve(caller, key_ref, Rpc::DescribeKeyVersion.action(Touch::Key))
            .await?;
        let found = record
            .version(&version)
            .cloned()
            .ok_or(DomainError::KeyVersionNotFound)?;
        Ok((record, found))
    }

    /// `ListKeyVersions`: oldest first.
    pub async fn list_key_versions(
        &self,
        caller: &Principal,
        key_ref: KeyRef,
        page: PageRequest,
    ) -> Result<(KeyRecord, Page<KeyVersionRecord>), DomainError> {
        let record = self
            .resolve(caller, key_ref, Rpc::ListKeyVersions.action(Touch::Key))
            .await?;
        let start = match page.after_as(KeyVersionId::parse)? {
            None => 0,
            Some(after) => {
                record
                    .versions
                    .iter()
                    .position(|v| v.id == after)
                    .ok_or_else(|| {
                        DomainError::invalid(
                            "PageToken",
                            "page_token is not a token this listing returned",
                        )
                    })?
                    + 1
            }
        };
        let items: Vec<KeyVersionRecord> = record
            .versions
            .iter()
            .skip(start)
            .take(page.size + 1)
            .cloned()
            .collect();
        let versions = Page::from_lookahead(items, page.size, |v| v.id.to_string());
        Ok((record, versions))
    }
}
