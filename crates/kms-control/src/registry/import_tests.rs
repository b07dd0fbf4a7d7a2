//! In-process tests of imported material and key association over a `MemoryStore`, with a
//! manual clock and a material source that pretends to import: the token rules, the
//! identical-material rule, expiry by the scheduler, usage records and their window.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use kms_store::{MemoryStore, Store};
use kms_types::time::DAY_MS;
use kms_types::{
    Algorithm, DomainError, InstanceType, KeyOrigin, KeyRef, KeySpec, KeyState, NewInstance,
    NewKey, Principal, UnixMillis, UsageEvent, UsageOp,
};

use super::Registry;
use crate::clock::{Clock, ManualClock};
use crate::material::{
    ImportedMaterial, MaterialImport, MaterialSource, NewImportKey, NewMaterial,
};

const START: UnixMillis = UnixMillis(1_700_000_000_000);

/// Imports without cryptography: the "digest" is the material's first byte repeated, the
/// sealed import key names its token, and material starting with 0xFF does not decrypt.
#[derive(Debug, Default)]
struct FakeImport;

#[tonic::async_trait]
impl MaterialSource for FakeImport {
    async fn generate(
        &self,
        _key_id: &kms_types::KeyId,
        version: &kms_types::KeyVersionId,
        _spec: KeySpec,
        _protection: kms_types::ProtectionLevel,
    ) -> Result<NewMaterial, DomainError> {
        Ok(NewMaterial {
            wrapped: version.as_bytes().to_vec(),
            public_key_der: Vec::new(),
        })
    }

    async fn create_import_key(
        &self,
        _key_id: &kms_types::KeyId,
        token: &kms_types::ImportTokenId,
        _algorithm: Algorithm,
        _wrapping_key_spec: KeySpec,
    ) -> Result<NewImportKey, DomainError> {
        Ok(NewImportKey {
            public_key_der: b"spki".to_vec(),
            sealed_private_key: format!("sealed-import-key:{token}").into_bytes(),
        })
    }

    async fn import_material(
        &self,
        import: MaterialImport,
    ) -> Result<ImportedMaterial, DomainError> {
        assert_eq!(
            import.sealed_import_key,
            format!("sealed-import-key:{}", import.token).into_bytes()
        );
        match import.encrypted_material.first() {
            Some(0xFF) | None => Err(DomainError::invalid(
                "EncryptedKeyMaterial",
                "does not decrypt",
            )),
            Some(&b) => Ok(ImportedMaterial {
                wrapped: format!("sealed-for:{}", import.version).into_bytes(),
                public_key_der: Vec::new(),
                digest: vec![b; 32],
            }),
        }
    }
}

struct World {
    registry: Arc<Registry<MemoryStore>>,
    store: Arc<MemoryStore>,
    clock: Arc<ManualClock>,
}

fn alice() -> Principal {
    Principal::parse("acs:ram::42:root").unwrap()
}

fn bob() -> Principal {
    Principal::parse("acs:ram::42:user/bob").unwrap()
}

fn operator() -> Principal {
    Principal::parse("acs:ram::1000:user/op").unwrap()
}

fn world() -> World {
    let store = Arc::new(MemoryStore::new());
    let clock = Arc::new(ManualClock::new(START));
    let registry = Arc::new(
        Registry::new(
            Arc::clone(&store),
            "local".into(),
            Arc::clone(&clock) as Arc<dyn Clock>,
            FakeImport,
        )
        .with_operators(vec![operator()]),
    );
    World {
        registry,
        store,
        clock,
    }
}

fn reason<T: std::fmt::Debug>(r: Result<T, DomainError>) -> String {
    r.err().map(|e| e.reason_code()).unwrap_or_default()
}

impl World {
    async fn external_key(&self) -> kms_types::KeyRecord {
        let instance = self
            .registry
            .create_instance(
                &operator(),
                NewInstance {
                    instance_type: InstanceType::Software,
                    owner: *alice().account(),
                    key_quota: 10,
                    access_management_quota: Some(1),
                },
            )
            .await
            .unwrap();
        let key = self
            .registry
            .create_key(
                &alice(),
                NewKey {
                    instance: Some(instance.id),
                    origin: Some(KeyOrigin::External),
                    ..NewKey::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(key.state, KeyState::PendingImport);
        assert!(key.versions.is_empty());
        key
    }

    async fn token(&self, key: &kms_types::KeyRecord) -> String {
        let params = self
            .registry
            .get_parameters_for_import(
                &alice(),
                KeyRef::Id(key.id),
                Algorithm::RsaesOaepSha256,
                KeySpec::Rsa2048,
            )
            .await
            .unwrap();
        assert_eq!(params.key_id, key.id);
        assert_eq!(params.expires, self.clock.now().plus_millis(DAY_MS));
        assert_eq!(params.public_key_der, b"spki");
        params.token.to_string()
    }

    async fn import(
        &self,
        key: &kms_types::KeyRecord,
        token: &str,
        material: &[u8],
        expire: Option<UnixMillis>,
    ) -> Result<kms_types::KeyRecord, DomainError> {
        self.registry
            .import_key_material(
                &alice(),
                KeyRef::Id(key.id),
                token,
                material.to_vec(),
                expire,
            )
            .await
    }

    fn entries_with_prefix(&self, prefix: &str) -> Vec<String> {
        self.store
            .scan_prefix(prefix.as_bytes(), None, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|(k, _)| String::from_utf8_lossy(&k).into_owned())
            .collect()
    }
}

#[tokio::test]
async fn tokens_are_single_use_bound_and_expire() {
    let w = world();
    let key = w.external_key().await;
    let other = w.external_key().await;
    let token = w.token(&key).await;

    assert_eq!(
        reason(
            w.import(&key, "itk-0123456789abcdef0123456789abcdef", b"\x01", None)
                .await
        ),
        "InvalidParameter.ImportToken"
    );
    assert_eq!(
        reason(w.import(&key, "garbage", b"\x01", None).await),
        "InvalidParameter.ImportToken"
    );
    assert_eq!(
        reason(w.import(&other, &token, b"\x01", None).await),
        "InvalidParameter.ImportTokenKeyMismatch"
    );
    // A refused import leaves the token unspent.
    assert_eq!(
        reason(w.import(&key, &token, b"\xFF", None).await),
        "InvalidParameter.EncryptedKeyMaterial"
    );
    let imported = w.import(&key, &token, b"\x01", None).await.unwrap();
    assert_eq!(imported.state, KeyState::Enabled);
    assert_eq!(imported.versions.len(), 1);
    assert_eq!(imported.versions[0].id, key.primary_version);
    // The spent token no longer holds its sealed import key.
    let stored = w.entries_with_prefix("it/");
    assert_eq!(stored.len(), 1);
    let value = w.store.get(stored[0].as_bytes()).unwrap().unwrap();
    assert!(
        !String::from_utf8_lossy(&value).contains("c2VhbGVk"),
        "sealed key kept"
    );

    w.registry
        .delete_key_material(&alice(), KeyRef::Id(key.id))
        .await
        .unwrap();
    assert_eq!(
        reason(w.import(&key, &token, b"\x01", None).await),
        "Rejected.UsedImportToken"
    );
    let late = w.token(&key).await;
    w.clock.advance_ms(DAY_MS);
    assert_eq!(
        reason(w.import(&key, &late, b"\x01", None).await),
        "Rejected.ExpiredImportToken"
    );
    // Old tokens are forgotten 30 days after they expired.
    w.clock.advance_ms(30 * DAY_MS);
    w.registry.run_scheduled().await;
    assert!(w.entries_with_prefix("it/").is_empty());
    assert!(w.entries_with_prefix("sp/").is_empty());
    assert!(w.entries_with_prefix("tk/").is_empty());
}

#[tokio::test]
async fn only_the_same_material_comes_back() {
    let w = world();
    let key = w.external_key().await;
    let token = w.token(&key).await;
    w.import(&key, &token, b"\x07", None).await.unwrap();
    assert_eq!(
        reason(w.import(&key, &w.token(&key).await, b"\x07", None).await),
        "Rejected.Enabled"
    );
    w.registry
        .delete_key_material(&alice(), KeyRef::Id(key.id))
        .await
        .unwrap();
    let again = w.token(&key).await;
    assert_eq!(
        reason(w.import(&key, &again, b"\x08", None).await),
        "InvalidParameter.KeyMaterialMismatch"
    );
    let back = w.import(&key, &again, b"\x07", None).await.unwrap();
    assert_eq!(back.state, KeyState::Enabled);
    assert_eq!(back.primary_version, key.primary_version);
}

/// The version an External key's material becomes names the key before any import, after
/// `DeleteKeyMaterial` and after expiry: a ciphertext of it is answered with the key's state
/// (`Rejected.PendingImport`), never as an unknown blob.
#[tokio::test]
async fn the_version_of_missing_material_still_names_its_key() {
    let w = world();
    let key = w.external_key().await;
    let names_key = |state: KeyState| {
        let registry = Arc::clone(&w.registry);
        let (id, version) = (key.id, key.primary_version);
        async move {
            let (entry, _) = registry
                .directory_version(version)
                .await
                .unwrap_or_else(|e| panic!("version of a {state:?} key: {e}"));
            assert_eq!((entry.id, entry.state), (id, state));
        }
    };
    names_key(KeyState::PendingImport).await;
    let token = w.token(&key).await;
    w.import(&key, &token, b"\x03", None).await.unwrap();
    names_key(KeyState::Enabled).await;
    w.registry
        .delete_key_material(&alice(), KeyRef::Id(key.id))
        .await
        .unwrap();
    names_key(KeyState::PendingImport).await;
    let expire = w.clock.now().plus_millis(60_000);
    w.import(&key, &w.token(&key).await, b"\x03", Some(expire))
        .await
        .unwrap();
    w.clock.set(expire);
    assert_eq!(w.registry.run_scheduled().await.expired, 1);
    names_key(KeyState::PendingImport).await;
    w.registry
        .schedule_key_deletion(&alice(), KeyRef::Id(key.id), 7)
        .await
        .unwrap();
    names_key(KeyState::PendingDeletion).await;
}

/// A store of layout 2 has no `v/` entry for an External key without material; migrating
/// adds it.
#[tokio::test]
async fn migration_indexes_the_version_of_missing_material() {
    use crate::{index, schema};
    let w = world();
    let key = w.external_key().await;
    w.store
        .delete(&schema::version(&key.primary_version))
        .unwrap();
    w.store
        .put(schema::LAYOUT, &schema::encode_layout(2))
        .unwrap();
    assert_eq!(
        w.registry
            .directory_version(key.primary_version)
            .await
            .err(),
        Some(DomainError::KeyNotFound)
    );
    assert_eq!(index::migrate(&*w.store).unwrap(), 1);
    let (entry, _) = w
        .registry
        .directory_version(key.primary_version)
        .await
        .unwrap();
    assert_eq!(entry.id, key.id);
}

#[tokio::test]
async fn material_expires_on_the_clock() {
    let w = world();
    let key = w.external_key().await;
    let token = w.token(&key).await;
    assert_eq!(
        reason(w.import(&key, &token, b"\x01", Some(w.clock.now())).await),
        "InvalidParameter.KeyMaterialExpireTime"
    );
    let expire = w.clock.now().plus_millis(3_600_000);
    let imported = w.import(&key, &token, b"\x01", Some(expire)).await.unwrap();
    assert_eq!(imported.material_expire, Some(expire));
    let mut events = w.registry.watch(w.registry.revision().await.unwrap());

    w.clock.set(expire.plus_millis(-1));
    assert_eq!(w.registry.run_scheduled().await.expired, 0);
    w.clock.set(expire);
    assert_eq!(w.registry.run_scheduled().await.expired, 1);
    let after = w
        .registry
        .describe_key(&alice(), KeyRef::Id(key.id))
        .await
        .unwrap();
    assert_eq!(after.state, KeyState::PendingImport);
    assert!(after.versions.is_empty() && after.material_expire.is_none());
    assert!(w.entries_with_prefix("sx/").is_empty());
    use tokio_stream::StreamExt;
    let event = tokio::time::timeout(std::time::Duration::from_secs(5), events.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(event.key_id, Some(key.id));
    assert_eq!(w.registry.run_scheduled().await.expired, 0);
}

#[tokio::test]
async fn usage_is_kept_per_caller_and_version_for_a_year() {
    let w = world();
    let key = w.external_key().await;
    let token = w.token(&key).await;
    let key = w.import(&key, &token, b"\x01", None).await.unwrap();
    let version = key.primary_version;
    let t0 = w.clock.now();
    let event = |p: Principal, op, at| UsageEvent {
        key_id: key.id,
        version,
        principal: p,
        op,
        at,
    };
    let kept = w
        .registry
        .report_usage(vec![
            event(alice(), UsageOp::Encrypt, t0),
            event(alice(), UsageOp::Encrypt, t0.plus_millis(-5)),
            event(bob(), UsageOp::Decrypt, t0.plus_millis(10)),
            // A version the key does not have, and a key that does not exist: skipped.
            UsageEvent {
                version: kms_types::KeyVersionId::generate(),
                ..event(bob(), UsageOp::Decrypt, t0)
            },
            UsageEvent {
                key_id: kms_types::KeyId::generate(),
                ..event(bob(), UsageOp::Decrypt, t0)
            },
        ])
        .await
        .unwrap();
    assert_eq!(kept, 3);
    let (_, found) = w
        .registry
        .check_key_association(&bob(), KeyRef::Id(key.id))
        .await
        .unwrap();
    let got: Vec<(String, UsageOp, UnixMillis)> = found
        .associations
        .iter()
        .map(|a| (a.principal.clone(), a.op, a.last_called))
        .collect();
    assert_eq!(
        got,
        [
            (alice().arn().to_string(), UsageOp::Encrypt, t0),
            (
                bob().arn().to_string(),
                UsageOp::Decrypt,
                t0.plus_millis(10)
            ),
        ]
    );
    assert_eq!(found.versions.len(), 1);
    assert_eq!(found.versions[0].last_used, Some(t0.plus_millis(10)));

    // An older report does not move a time back; encryption does not count as version use.
    w.registry
        .report_usage(vec![
            event(bob(), UsageOp::Decrypt, t0),
            event(alice(), UsageOp::Encrypt, t0.plus_millis(20)),
        ])
        .await
        .unwrap();
    let (_, found) = w
        .registry
        .check_key_association(&alice(), KeyRef::Id(key.id))
        .await
        .unwrap();
    assert_eq!(found.versions[0].last_used, Some(t0.plus_millis(10)));
    assert_eq!(found.associations[0].last_called, t0.plus_millis(20));

    // Others may not look.
    let mallory = Principal::parse("acs:ram::666:root").unwrap();
    assert_eq!(
        w.registry
            .check_key_association(&mallory, KeyRef::Id(key.id))
            .await
            .err(),
        Some(DomainError::KeyNotFound)
    );

    // After a year without calls, nothing shows.
    w.clock
        .set(t0.plus_millis(20).plus_days(365).plus_millis(1));
    let (_, found) = w
        .registry
        .check_key_association(&alice(), KeyRef::Id(key.id))
        .await
        .unwrap();
    assert!(found.associations.is_empty());
    assert_eq!(found.versions[0].last_used, None);

    // A deleted key's usage and tokens go with it.
    w.registry
        .schedule_key_deletion(&alice(), KeyRef::Id(key.id), 7)
        .await
        .unwrap();
    w.clock.advance_ms(7 * DAY_MS);
    assert_eq!(w.registry.run_scheduled().await.deleted, 1);
    for prefix in ["uc/", "uv/", "tk/", "it/"] {
        assert!(w.entries_with_prefix(prefix).is_empty(), "{prefix}");
    }
}
