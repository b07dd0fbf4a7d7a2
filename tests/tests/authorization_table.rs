//! The authorization table (`kms_types::authz`) against the running service: every RPC of every
//! service, called by every principal role under each kind of key policy, through the real
//! binaries. Each answer is compared with what an independent model of the table and of the
//! documented policy rules says: allowed (the call got past authorization, whatever it then
//! answered), denied (`PERMISSION_DENIED`), or hidden (`NOT_FOUND`). An RPC in the proto without
//! a row fails here; a row without a request below fails to compile.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use kms_e2e::{
    ACCOUNT, ADMIN, ALICE, APP_USER, DATA_PRINCIPAL, OPERATOR, PARTNER, Stack, eventually, reason,
};
use kms_proto::kms::internal::v1 as ipb;
use kms_proto::kms::v1::*;
use kms_types::authz::{Callers, Rpc};
use kms_types::policy::{ADMINISTRATOR_ACTIONS, CROSS_ACCOUNT_ACTIONS, USER_ACTIONS};
use prost::Message;

const MEMBER: &str = "acs:ram::1234567890123456:user/mallory";
const SHARER: &str = "5555555555555555";
const SHARER_ROOT: &str = "acs:ram::5555555555555555:root";
const STRANGER: &str = "acs:ram::7777777777777777:user/x";
/// A well-formed access key id no pair has.
const ABSENT_ACCESS_KEY: &str = "LTAI00000000000000000000";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The key's account's root.
    Root,
    /// Named as administrator by the custom policies.
    Admin,
    /// Named as user by the custom policies.
    User,
    /// Another principal of the key's account, named by no policy.
    Member,
    /// The root of the account owning the shared instance the keys live in.
    Sharer,
    /// A principal of another account that the custom policies grant.
    Grantee,
    /// A principal of an account nothing names.
    Stranger,
    /// A configured operator (of another account).
    Operator,
}

const ROLES: [Role; 8] = [
    Role::Root,
    Role::Admin,
    Role::User,
    Role::Member,
    Role::Sharer,
    Role::Grantee,
    Role::Stranger,
    Role::Operator,
];

impl Role {
    fn principal(self) -> &'static str {
        match self {
            Role::Root => ALICE,
            Role::Admin => ADMIN,
            Role::User => APP_USER,
            Role::Member => MEMBER,
            Role::Sharer => SHARER_ROOT,
            Role::Grantee => PARTNER,
            Role::Stranger => STRANGER,
            Role::Operator => OPERATOR,
        }
    }

    fn in_key_account(self) -> bool {
        matches!(self, Role::Root | Role::Admin | Role::User | Role::Member)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PolicyCase {
    Default,
    /// Admin: the administrator actions; user: the user actions; grantee: `kms:*`.
    Allow,
    /// Everything allowed to admin, user and grantee, then denied to the whole key account
    /// and the grantee.
    Deny,
}

impl PolicyCase {
    fn document(self) -> Option<String> {
        let statement = |effect: &str, who: &[&str], actions: &[&str]| {
            serde_json::json!({
                "Effect": effect, "Principal": {"RAM": who}, "Action": actions, "Resource": ["*"],
            })
        };
        let statements = match self {
            PolicyCase::Default => return None,
            PolicyCase::Allow => vec![
                statement("Allow", &[ADMIN], ADMINISTRATOR_ACTIONS),
                statement("Allow", &[APP_USER], USER_ACTIONS),
                statement("Allow", &[PARTNER], &["kms:*"]),
            ],
            PolicyCase::Deny => vec![
                statement("Allow", &[ADMIN, APP_USER, PARTNER], &["kms:*"]),
                statement(
                    "Deny",
                    &[&format!("acs:ram::{ACCOUNT}:*"), PARTNER],
                    &["kms:*"],
                ),
            ],
        };
        Some(serde_json::json!({"Version": "1", "Statement": statements}).to_string())
    }

    fn name(self) -> &'static str {
        match self {
            PolicyCase::Default => "default",
            PolicyCase::Allow => "allow",
            PolicyCase::Deny => "deny",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Past authorization: answered, or refused for something other than who is calling.
    Allowed,
    /// `PERMISSION_DENIED` `Forbidden.NoPermission`.
    Denied,
    /// `NOT_FOUND`: the caller may not learn the key (or instance) exists.
    Hidden,
    /// Refused one way or another (the model does not say which).
    Refused,
}

/// A role-list pattern covers an action: `kms:List*` covers `kms:ListKeys`.
fn covers(patterns: &[&str], action: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => action.starts_with(prefix),
        None => *p == action,
    })
}

/// The documented policy rules, written out for the roles of this test.
fn key_policy(role: Role, policy: PolicyCase, action: &str) -> Outcome {
    use Outcome::*;
    let allowed_if = |ok: bool| if ok { Allowed } else { Denied };
    match (policy, role) {
        (_, Role::Stranger | Role::Operator) => Hidden,
        (PolicyCase::Default, Role::Grantee) => Hidden,
        (PolicyCase::Default, _) => Allowed,
        (PolicyCase::Allow, Role::Root) => Allowed,
        (PolicyCase::Allow, Role::Admin) => allowed_if(covers(ADMINISTRATOR_ACTIONS, action)),
        (PolicyCase::Allow, Role::User) => allowed_if(covers(USER_ACTIONS, action)),
        (PolicyCase::Allow, Role::Grantee) => allowed_if(CROSS_ACCOUNT_ACTIONS.contains(&action)),
        (PolicyCase::Allow, Role::Member | Role::Sharer) => Denied,
        (PolicyCase::Deny, Role::Root) => allowed_if(
            ["kms:DescribeKey", "kms:GetKeyPolicy", "kms:SetKeyPolicy"].contains(&action),
        ),
        (PolicyCase::Deny, _) => Denied,
    }
}

/// What the table says `role` gets from `rpc` under `policy`.
fn expected(rpc: Rpc, role: Role, policy: PolicyCase) -> Outcome {
    let rule = rpc.rule();
    match rule.callers {
        Callers::OwnAccount => Outcome::Allowed,
        Callers::Operators => match rpc {
            // The shared instance: its owner, the account it is shared with, and operators.
            Rpc::GetKmsInstance if matches!(role, Role::Grantee | Role::Stranger) => {
                Outcome::Hidden
            }
            _ => Outcome::Allowed,
        },
        Callers::OperatorsOnly if role == Role::Operator => Outcome::Allowed,
        Callers::OperatorsOnly => Outcome::Denied,
        Callers::PeerPlane => Outcome::Refused,
        // No role here is a configured gateway.
        Callers::Gateway => Outcome::Denied,
        Callers::KeyPolicy | Callers::KeyPolicyOwnAccount => {
            let actions: BTreeSet<&str> = rule.checks.iter().map(|c| c.action).collect();
            assert_eq!(
                actions.len(),
                1,
                "{rpc:?}: one action for every key it touches"
            );
            let action = actions.into_iter().next().unwrap();
            let by_policy = key_policy(role, policy, action);
            if rule.callers == Callers::KeyPolicyOwnAccount && !role.in_key_account() {
                // Another account's alias namespace: refused whatever its policy grants.
                Outcome::Refused
            } else {
                by_policy
            }
        }
    }
}

fn classify<T>(answer: Result<T, tonic::Status>) -> Outcome {
    let Err(status) = answer else {
        return Outcome::Allowed;
    };
    match reason(&status).as_str() {
        "Forbidden.NoPermission" => Outcome::Denied,
        "Forbidden.KeyNotFound" | "Forbidden.InstanceNotFound" => Outcome::Hidden,
        "Forbidden.AliasNotFound" => Outcome::Refused,
        _ if matches!(
            status.code(),
            tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
        ) =>
        {
            Outcome::Refused
        }
        _ => Outcome::Allowed,
    }
}

fn agrees(want: Outcome, got: Outcome) -> bool {
    match want {
        Outcome::Refused => got != Outcome::Allowed,
        _ => want == got,
    }
}

/// What the calls of one policy case work on.
struct Fixture {
    case: PolicyCase,
    instance: String,
    symmetric: String,
    asymmetric: String,
    version: String,
    plain_blob: Vec<u8>,
    data_key_blob: Vec<u8>,
    public_key: Vec<u8>,
}

/// Calls `rpc` as `role`, with a request that is well formed, so that only who is calling
/// can refuse it; answers how it was refused, if it was.
async fn call(stack: &Stack, f: &Fixture, rpc: Rpc, role: Role) -> Outcome {
    let who = Some(role.principal());
    let (k, e) = (f.symmetric.clone(), f.asymmetric.clone());
    let alias = |what: &str| format!("alias/{what}-{}-{role:?}", f.case.name()).to_lowercase();
    let mut keys = stack.keys(who).unwrap();
    let mut crypto = stack.crypto(who).unwrap();
    let mut instances = stack.instances(who).unwrap();
    let mut directory = stack.directory(who).unwrap();
    let mut material = stack.material(who).unwrap();
    let digest = vec![7u8; 32];
    match rpc {
        Rpc::CreateKey => classify(
            keys.create_key(CreateKeyRequest {
                key_spec: KeySpec::AliyunAes256 as i32,
                ..Default::default()
            })
            .await,
        ),
        Rpc::DescribeKey => classify(keys.describe_key(DescribeKeyRequest { key_id: k }).await),
        Rpc::ListKeys => classify(keys.list_keys(ListKeysRequest::default()).await),
        Rpc::EnableKey => classify(keys.enable_key(EnableKeyRequest { key_id: k }).await),
        Rpc::DisableKey => classify(keys.disable_key(DisableKeyRequest { key_id: k }).await),
        Rpc::UpdateKeyDescription => classify(
            keys.update_key_description(UpdateKeyDescriptionRequest {
                key_id: k,
                description: "matrix".into(),
            })
            .await,
        ),
        Rpc::SetDeletionProtection => classify(
            keys.set_deletion_protection(SetDeletionProtectionRequest {
                key_id: k,
                enable_deletion_protection: false,
                deletion_protection_description: String::new(),
            })
            .await,
        ),
        Rpc::ScheduleKeyDeletion => classify(
            keys.schedule_key_deletion(ScheduleKeyDeletionRequest {
                key_id: k,
                pending_window_in_days: 30,
            })
            .await,
        ),
        Rpc::CancelKeyDeletion => classify(
            keys.cancel_key_deletion(CancelKeyDeletionRequest { key_id: k })
                .await,
        ),
        Rpc::UpdateRotationPolicy => classify(
            keys.update_rotation_policy(UpdateRotationPolicyRequest {
                key_id: k,
                enable_automatic_rotation: Some(false),
                rotation_interval: None,
            })
            .await,
        ),
        Rpc::CreateKeyVersion => classify(
            keys.create_key_version(CreateKeyVersionRequest { key_id: k })
                .await,
        ),
        Rpc::DescribeKeyVersion => classify(
            keys.describe_key_version(DescribeKeyVersionRequest {
                key_id: e,
                key_version_id: f.version.clone(),
            })
            .await,
        ),
        Rpc::ListKeyVersions => classify(
            keys.list_key_versions(ListKeyVersionsRequest {
                key_id: k,
                ..Default::default()
            })
            .await,
        ),
        Rpc::CreateAlias => classify(
            keys.create_alias(CreateAliasRequest {
                alias_name: alias("c"),
                key_id: k,
            })
            .await,
        ),
        Rpc::UpdateAlias => classify(
            keys.update_alias(UpdateAliasRequest {
                alias_name: format!("alias/u-{}", f.case.name()),
                key_id: k,
            })
            .await,
        ),
        Rpc::DeleteAlias => classify(
            keys.delete_alias(DeleteAliasRequest {
                alias_name: alias("d"),
            })
            .await,
        ),
        Rpc::ListAliases => classify(keys.list_aliases(ListAliasesRequest::default()).await),
        Rpc::ListAliasesByKeyId => classify(
            keys.list_aliases_by_key_id(ListAliasesByKeyIdRequest {
                key_id: k,
                ..Default::default()
            })
            .await,
        ),
        Rpc::TagResources => classify(
            keys.tag_resources(TagResourcesRequest {
                key_ids: vec![k, e],
                tags: vec![Tag {
                    key: "team".into(),
                    value: "matrix".into(),
                }],
            })
            .await,
        ),
        Rpc::UntagResources => classify(
            keys.untag_resources(UntagResourcesRequest {
                key_ids: vec![k, e],
                tag_keys: vec!["team".into()],
            })
            .await,
        ),
        Rpc::ListResourceTags => classify(
            keys.list_resource_tags(ListResourceTagsRequest { key_id: k })
                .await,
        ),
        Rpc::SetKeyPolicy => classify(
            keys.set_key_policy(SetKeyPolicyRequest {
                key_id: k.clone(),
                policy: f.case.document().unwrap_or_else(|| default_document(&k)),
            })
            .await,
        ),
        Rpc::GetKeyPolicy => classify(keys.get_key_policy(GetKeyPolicyRequest { key_id: k }).await),
        Rpc::GetParametersForImport => classify(
            keys.get_parameters_for_import(GetParametersForImportRequest {
                key_id: k,
                wrapping_algorithm: Algorithm::RsaesOaepSha256 as i32,
                wrapping_key_spec: KeySpec::Rsa2048 as i32,
            })
            .await,
        ),
        Rpc::ImportKeyMaterial => classify(
            keys.import_key_material(ImportKeyMaterialRequest {
                key_id: k,
                import_token: "imp-00000000000000000000000000000000".into(),
                encrypted_key_material: vec![1; 256],
                key_material_expire_time: None,
            })
            .await,
        ),
        Rpc::DeleteKeyMaterial => classify(
            keys.delete_key_material(DeleteKeyMaterialRequest { key_id: k })
                .await,
        ),
        Rpc::CheckKeyAssociation => classify(
            keys.check_key_association(CheckKeyAssociationRequest { key_id: k })
                .await,
        ),
        Rpc::CreateKmsInstance => classify(
            instances
                .create_kms_instance(CreateKmsInstanceRequest {
                    instance_type: InstanceType::Software as i32,
                    owner_account_id: SHARER.into(),
                    key_quota: 1,
                    access_management_quota: Some(1),
                })
                .await,
        ),
        Rpc::GetKmsInstance => classify(
            instances
                .get_kms_instance(GetKmsInstanceRequest {
                    kms_instance_id: f.instance.clone(),
                })
                .await,
        ),
        Rpc::ListKmsInstances => classify(
            instances
                .list_kms_instances(ListKmsInstancesRequest::default())
                .await,
        ),
        Rpc::ShareKmsInstance => classify(
            instances
                .share_kms_instance(ShareKmsInstanceRequest {
                    kms_instance_id: f.instance.clone(),
                    account_id: "8888888888888888".into(),
                })
                .await,
        ),
        Rpc::UnshareKmsInstance => classify(
            instances
                .unshare_kms_instance(UnshareKmsInstanceRequest {
                    kms_instance_id: f.instance.clone(),
                    account_id: "8888888888888888".into(),
                })
                .await,
        ),
        // The quotas the instance was made with: the change leaves the fixture as it is.
        Rpc::UpdateKmsInstance => classify(
            instances
                .update_kms_instance(UpdateKmsInstanceRequest {
                    kms_instance_id: f.instance.clone(),
                    key_quota: Some(50),
                    access_management_quota: Some(5),
                })
                .await,
        ),
        Rpc::Encrypt => classify(
            crypto
                .encrypt(EncryptRequest {
                    key_id: k,
                    plaintext: b"matrix".to_vec(),
                    dry_run: true,
                    ..Default::default()
                })
                .await,
        ),
        Rpc::Decrypt => classify(
            crypto
                .decrypt(DecryptRequest {
                    ciphertext_blob: f.plain_blob.clone(),
                    dry_run: true,
                    ..Default::default()
                })
                .await,
        ),
        Rpc::ReEncrypt => classify(
            crypto
                .re_encrypt(ReEncryptRequest {
                    ciphertext_blob: f.plain_blob.clone(),
                    destination_key_id: k,
                    dry_run: true,
                    ..Default::default()
                })
                .await,
        ),
        Rpc::GenerateDataKey => classify(
            crypto
                .generate_data_key(GenerateDataKeyRequest {
                    key_id: k,
                    dry_run: true,
                    ..Default::default()
                })
                .await,
        ),
        Rpc::GenerateDataKeyWithoutPlaintext => classify(
            crypto
                .generate_data_key_without_plaintext(GenerateDataKeyWithoutPlaintextRequest {
                    key_id: k,
                    dry_run: true,
                    ..Default::default()
                })
                .await,
        ),
        Rpc::GenerateAndExportDataKey => classify(
            crypto
                .generate_and_export_data_key(GenerateAndExportDataKeyRequest {
                    key_id: k,
                    public_key: f.public_key.clone(),
                    wrapping_algorithm: Algorithm::RsaesOaepSha256 as i32,
                    wrapping_key_spec: KeySpec::Rsa2048 as i32,
                    dry_run: true,
                    ..Default::default()
                })
                .await,
        ),
        Rpc::ExportDataKey => classify(
            crypto
                .export_data_key(ExportDataKeyRequest {
                    ciphertext_blob: f.data_key_blob.clone(),
                    public_key: f.public_key.clone(),
                    wrapping_algorithm: Algorithm::RsaesOaepSha256 as i32,
                    wrapping_key_spec: KeySpec::Rsa2048 as i32,
                    dry_run: true,
                    ..Default::default()
                })
                .await,
        ),
        Rpc::AsymmetricEncrypt => classify(
            crypto
                .asymmetric_encrypt(AsymmetricEncryptRequest {
                    key_id: e,
                    algorithm: Algorithm::RsaesOaepSha256 as i32,
                    plaintext: b"matrix".to_vec(),
                    dry_run: true,
                    ..Default::default()
                })
                .await,
        ),
        Rpc::AsymmetricDecrypt => classify(
            crypto
                .asymmetric_decrypt(AsymmetricDecryptRequest {
                    key_id: e,
                    algorithm: Algorithm::RsaesOaepSha256 as i32,
                    ciphertext_blob: vec![1; 256],
                    dry_run: true,
                    ..Default::default()
                })
                .await,
        ),
        Rpc::AsymmetricSign => classify(
            crypto
                .asymmetric_sign(AsymmetricSignRequest {
                    key_id: e,
                    algorithm: Algorithm::EcdsaSha256 as i32,
                    digest,
                    dry_run: true,
                    ..Default::default()
                })
                .await,
        ),
        Rpc::AsymmetricVerify => classify(
            crypto
                .asymmetric_verify(AsymmetricVerifyRequest {
                    key_id: e,
                    algorithm: Algorithm::EcdsaSha256 as i32,
                    digest,
                    value: vec![0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01],
                    dry_run: true,
                    ..Default::default()
                })
                .await,
        ),
        Rpc::GetPublicKey => classify(
            crypto
                .get_public_key(GetPublicKeyRequest {
                    key_id: e,
                    ..Default::default()
                })
                .await,
        ),
        Rpc::GenerateRandom => classify(
            crypto
                .generate_random(GenerateRandomRequest { length: 16 })
                .await,
        ),
        Rpc::GetRandomPassword => classify(
            crypto
                .get_random_password(GetRandomPasswordRequest {
                    password_length: 16,
                    ..Default::default()
                })
                .await,
        ),
        Rpc::GetAuditCheckpoint => classify(
            stack
                .audit(who)
                .unwrap()
                .get_audit_checkpoint(GetAuditCheckpointRequest {
                    plane: "control".into(),
                    log: String::new(),
                })
                .await,
        ),
        Rpc::VerifyAuditMacs => classify(
            stack
                .audit(who)
                .unwrap()
                .verify_audit_macs(VerifyAuditMacsRequest {
                    plane: "control".into(),
                    checks: Vec::new(),
                })
                .await,
        ),
        Rpc::Backup => classify(stack.admin(who).unwrap().backup(BackupRequest {}).await),
        Rpc::CreateAccessKey => classify(
            stack
                .access_keys(who)
                .unwrap()
                .create_access_key(CreateAccessKeyRequest {
                    principal: ALICE.into(),
                })
                .await,
        ),
        Rpc::ListAccessKeys => classify(
            stack
                .access_keys(who)
                .unwrap()
                .list_access_keys(ListAccessKeysRequest::default())
                .await,
        ),
        Rpc::DisableAccessKey => classify(
            stack
                .access_keys(who)
                .unwrap()
                .disable_access_key(DisableAccessKeyRequest {
                    access_key_id: ABSENT_ACCESS_KEY.into(),
                })
                .await,
        ),
        Rpc::DeleteAccessKey => classify(
            stack
                .access_keys(who)
                .unwrap()
                .delete_access_key(DeleteAccessKeyRequest {
                    access_key_id: ABSENT_ACCESS_KEY.into(),
                })
                .await,
        ),
        Rpc::ResolveAccessKey => classify(
            stack
                .access_key_resolver(who)
                .unwrap()
                .resolve_access_key(ResolveAccessKeyRequest {
                    access_key_id: ABSENT_ACCESS_KEY.into(),
                })
                .await,
        ),
        Rpc::GetAccessKey => classify(
            directory
                .get_access_key(ipb::GetAccessKeyRequest {
                    access_key_id: ABSENT_ACCESS_KEY.into(),
                })
                .await,
        ),
        Rpc::GenerateAccessKeySecret => classify(
            material
                .generate_access_key_secret(ipb::GenerateAccessKeySecretRequest {
                    access_key_id: ABSENT_ACCESS_KEY.into(),
                })
                .await,
        ),
        Rpc::ReportAuditCheckpoint => classify(
            directory
                .report_audit_checkpoint(ipb::ReportAuditCheckpointRequest::default())
                .await,
        ),
        Rpc::GetAuditKey => classify(material.get_audit_key(ipb::GetAuditKeyRequest {}).await),
        Rpc::VerifyPlaneAuditMacs => classify(
            material
                .verify_plane_audit_macs(ipb::VerifyPlaneAuditMacsRequest {
                    checks: Some(VerifyAuditMacsRequest {
                        plane: "data".into(),
                        checks: Vec::new(),
                    }),
                })
                .await,
        ),
        Rpc::GetKey => classify(
            directory
                .get_key(ipb::GetKeyRequest {
                    key_id: k,
                    principal: ALICE.into(),
                    ..Default::default()
                })
                .await,
        ),
        Rpc::WatchKeys => classify(
            directory
                .watch_keys(ipb::WatchKeysRequest { from_revision: 0 })
                .await,
        ),
        Rpc::ReportUsage => classify(
            directory
                .report_usage(ipb::ReportUsageRequest::default())
                .await,
        ),
        Rpc::Generate => classify(
            material
                .generate(ipb::GenerateKeyMaterialRequest {
                    key_id: k,
                    key_version_id: f.version.clone(),
                    key_spec: KeySpec::AliyunAes256 as i32,
                    protection_level: ProtectionLevel::Software as i32,
                })
                .await,
        ),
        Rpc::CreateImportKey => classify(
            material
                .create_import_key(ipb::CreateImportKeyRequest {
                    key_id: k,
                    ..Default::default()
                })
                .await,
        ),
        Rpc::ImportMaterial => classify(
            material
                .import_material(ipb::ImportMaterialRequest {
                    key_id: k,
                    ..Default::default()
                })
                .await,
        ),
    }
}

/// For SetKeyPolicy under the default case: a document that grants what the default policy
/// does (everything, to the key's account and the shared instance's owner), so the calls
/// after it see the same decisions.
fn default_document(_key: &str) -> String {
    format!(
        r#"{{"Version":"1","Statement":[{{"Effect":"Allow","Principal":{{"RAM":["acs:ram::{ACCOUNT}:*","acs:ram::{SHARER}:*"]}},"Action":["kms:*"],"Resource":["*"]}}]}}"#
    )
}

async fn fixture(stack: &Stack, case: PolicyCase, instance: &str, public_key: &[u8]) -> Fixture {
    let mut root = stack.keys(Some(ALICE)).unwrap();
    let create = |spec: KeySpec, usage: KeyUsage| {
        let req = CreateKeyRequest {
            kms_instance_id: instance.into(),
            key_spec: spec as i32,
            key_usage: usage as i32,
            ..Default::default()
        };
        let mut root = root.clone();
        async move {
            root.create_key(req)
                .await
                .unwrap()
                .into_inner()
                .key_metadata
                .unwrap()
        }
    };
    let symmetric = create(KeySpec::AliyunAes256, KeyUsage::EncryptDecrypt).await;
    let asymmetric = create(KeySpec::EcP256, KeyUsage::SignVerify).await;
    let (k, e) = (symmetric.key_id.clone(), asymmetric.key_id.clone());
    let mut crypto = stack.crypto(Some(ALICE)).unwrap();
    let plain_blob = crypto
        .encrypt(EncryptRequest {
            key_id: k.clone(),
            plaintext: b"matrix".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .ciphertext_blob;
    let data_key_blob = crypto
        .generate_data_key(GenerateDataKeyRequest {
            key_id: k.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .ciphertext_blob;
    // Aliases made while the default policy lets the root do it: one to update, and one per
    // role to delete.
    let mut names = vec![format!("alias/u-{}", case.name())];
    for role in ROLES {
        names.push(format!("alias/d-{}-{role:?}", case.name()).to_lowercase());
    }
    for name in names {
        root.create_alias(CreateAliasRequest {
            alias_name: name,
            key_id: k.clone(),
        })
        .await
        .unwrap();
    }
    if let Some(doc) = case.document() {
        for key in [&k, &e] {
            root.set_key_policy(SetKeyPolicyRequest {
                key_id: key.clone(),
                policy: doc.clone(),
            })
            .await
            .unwrap();
        }
        // The data plane follows the change: the member is refused once it has.
        eventually(
            Duration::from_secs(10),
            "the data plane to see the new policy",
            || async {
                let probe = stack
                    .crypto(Some(MEMBER))
                    .unwrap()
                    .encrypt(EncryptRequest {
                        key_id: k.clone(),
                        plaintext: b"x".to_vec(),
                        dry_run: true,
                        ..Default::default()
                    })
                    .await;
                (classify(probe) == Outcome::Denied).then_some(())
            },
        )
        .await
        .unwrap();
    }
    Fixture {
        case,
        instance: instance.into(),
        symmetric: k,
        asymmetric: e,
        version: asymmetric.primary_key_version_id,
        plain_blob,
        data_key_blob,
        public_key: public_key.to_vec(),
    }
}

/// Every method of every service in the proto has a row, and every row a method.
#[test]
fn every_rpc_in_the_proto_has_a_row() {
    let set = prost_types::FileDescriptorSet::decode(kms_proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut in_proto = BTreeSet::new();
    for file in &set.file {
        let package = file.package();
        if !package.starts_with("kms.") {
            continue;
        }
        for service in &file.service {
            for method in &service.method {
                in_proto.insert(format!("/{package}.{}/{}", service.name(), method.name()));
            }
        }
    }
    let in_table: BTreeSet<String> = Rpc::ALL.iter().map(|r| r.path().to_string()).collect();
    assert_eq!(in_proto, in_table);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_by_every_role_under_every_policy() {
    let stack = Stack::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("me.pem");
    let out = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .arg("-out")
        .arg(&private)
        .status()
        .unwrap();
    assert!(out.success());
    let public_key = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .output()
        .unwrap()
        .stdout;

    let instance = stack
        .software_instance(SHARER, Some(ACCOUNT))
        .await
        .unwrap();

    let mut mismatches = Vec::new();
    let mut calls = 0;
    for case in [PolicyCase::Default, PolicyCase::Allow, PolicyCase::Deny] {
        let f = fixture(&stack, case, &instance, &public_key).await;
        for &rpc in Rpc::ALL {
            for role in ROLES {
                let want = expected(rpc, role, case);
                let got = call(&stack, &f, rpc, role).await;
                calls += 1;
                if !agrees(want, got) {
                    mismatches.push(format!(
                        "{:<40} {:<9} {:<8} table: {want:?}, service: {got:?}",
                        rpc.name(),
                        format!("{role:?}"),
                        case.name()
                    ));
                }
            }
        }
    }
    assert_eq!(calls, Rpc::ALL.len() * ROLES.len() * 3);
    assert!(
        mismatches.is_empty(),
        "{} of {calls} answers differ from the table:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );

    // The peer plane itself is answered by the internal services (the row is not a blanket
    // refusal).
    stack
        .directory(Some(DATA_PRINCIPAL))
        .unwrap()
        .report_usage(ipb::ReportUsageRequest::default())
        .await
        .unwrap();
}
