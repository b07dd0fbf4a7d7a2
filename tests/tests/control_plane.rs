//! The control plane through the real binaries: instances, the key lifecycle, the state
//! matrix, every validation rule per RPC, aliases and tags, versions and rotation, deletion,
//! the WatchKeys stream, and keys of every spec in software and hardware instances (material
//! from the data plane, generated in process or inside the HSM). Time-driven behaviour moves
//! the control plane's clock through its offset file and polls for the effect.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Debug;
use std::time::Duration;

use kms_e2e::{ACCOUNT, ALICE, DATA_PRINCIPAL, MALLORY, OPERATOR, Stack, eventually, reason};
use kms_proto::kms::internal::v1::{GetKeyRequest, KeyEvent, KeyEventKind, WatchKeysRequest};
use kms_proto::kms::v1::*;
use tonic::Code;

const DAY: Duration = Duration::from_secs(86_400);
const SETTLE: Duration = Duration::from_secs(10);
const MALLORY_ACCOUNT: &str = "6543210987654321";

type Rpc<T> = Result<T, tonic::Status>;
type KeysClient = key_management_service_client::KeyManagementServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, kms_e2e::As>,
>;

/// A call's outcome without its response.
fn unit<T>(r: Rpc<T>) -> Rpc<()> {
    r.map(|_| ())
}

/// Asserts a call failed with `code` and `reason`.
#[track_caller]
fn refused<T: Debug>(result: Rpc<T>, code: Code, want: &str) {
    match result {
        Ok(v) => panic!("expected {code:?} {want}, got {v:?}"),
        Err(st) => assert_eq!(
            (st.code(), reason(&st).as_str()),
            (code, want),
            "{}",
            st.message()
        ),
    }
}

fn days(n: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: n * 86_400,
        nanos: 0,
    })
}

fn tag(k: &str, v: &str) -> Tag {
    Tag {
        key: k.into(),
        value: v.into(),
    }
}

/// A running stack with a software and a hardware instance owned by Alice's account.
struct Env {
    stack: Stack,
    software: KmsInstance,
    hardware: KmsInstance,
}

async fn env() -> Env {
    env_with_quota(1000).await
}

async fn env_with_quota(key_quota: i32) -> Env {
    let stack = Stack::start().await.unwrap();
    let mut ops = stack.instances(Some(OPERATOR)).unwrap();
    let mut instances = Vec::new();
    for instance_type in [InstanceType::Software, InstanceType::Hardware] {
        let req = CreateKmsInstanceRequest {
            instance_type: instance_type as i32,
            owner_account_id: ACCOUNT.into(),
            key_quota,
            access_management_quota: Some(1),
        };
        let created = ops.create_kms_instance(req).await.unwrap().into_inner();
        instances.push(created.kms_instance.unwrap());
    }
    let hardware = instances.pop().unwrap();
    let software = instances.pop().unwrap();
    Env {
        stack,
        software,
        hardware,
    }
}

impl Env {
    fn keys(&self) -> KeysClient {
        self.stack.keys(Some(ALICE)).unwrap()
    }

    async fn create(&self, req: CreateKeyRequest) -> Rpc<KeyMetadata> {
        self.keys()
            .create_key(req)
            .await
            .map(|r| r.into_inner().key_metadata.unwrap())
    }

    /// An Aliyun_AES_256 key in the software instance.
    async fn sw_key(&self) -> KeyMetadata {
        self.create(CreateKeyRequest {
            kms_instance_id: self.software.kms_instance_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
    }

    async fn describe(&self, key_id: &str) -> Rpc<KeyMetadata> {
        self.keys()
            .describe_key(DescribeKeyRequest {
                key_id: key_id.into(),
            })
            .await
            .map(|r| r.into_inner().key_metadata.unwrap())
    }

    async fn instance(&self, id: &str, who: &str) -> Rpc<KmsInstance> {
        self.stack
            .instances(Some(who))
            .unwrap()
            .get_kms_instance(GetKmsInstanceRequest {
                kms_instance_id: id.into(),
            })
            .await
            .map(|r| r.into_inner().kms_instance.unwrap())
    }

    async fn list_keys(&self, req: ListKeysRequest) -> Rpc<ListKeysResponse> {
        self.keys().list_keys(req).await.map(|r| r.into_inner())
    }

    /// Every key id ListKeys returns for `req`, following pages of `page_size`.
    async fn all_key_ids(&self, mut req: ListKeysRequest) -> Vec<String> {
        let mut ids = Vec::new();
        loop {
            let page = self.list_keys(req.clone()).await.unwrap();
            assert!(page.keys.len() <= req.page_size.max(20) as usize);
            ids.extend(page.keys.into_iter().map(|k| k.key_id));
            if page.next_page_token.is_empty() {
                return ids;
            }
            req.page_token = page.next_page_token;
        }
    }

    async fn aliases(&self) -> Vec<Alias> {
        self.keys()
            .list_aliases(ListAliasesRequest {
                page_size: 100,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .aliases
    }

    async fn encrypt(&self, key_id: &str, plaintext: &[u8]) -> Rpc<EncryptResponse> {
        self.stack
            .crypto(Some(ALICE))
            .unwrap()
            .encrypt(EncryptRequest {
                key_id: key_id.into(),
                plaintext: plaintext.to_vec(),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner())
    }

    async fn decrypt(&self, blob: &[u8]) -> Rpc<DecryptResponse> {
        self.stack
            .crypto(Some(ALICE))
            .unwrap()
            .decrypt(DecryptRequest {
                ciphertext_blob: blob.to_vec(),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_operators_sharing_and_quotas() {
    let env = env_with_quota(3).await;
    let sw = env.software.kms_instance_id.clone();
    assert_eq!(env.software.owner_account_id, ACCOUNT);
    assert_eq!(env.software.instance_type, InstanceType::Software as i32);
    assert_eq!((env.software.key_quota, env.software.key_count), (3, 0));
    assert!(sw.starts_with("kst-"));

    // Only operators create instances; every field is checked.
    let good = CreateKmsInstanceRequest {
        instance_type: InstanceType::Software as i32,
        owner_account_id: ACCOUNT.into(),
        key_quota: 10,
        access_management_quota: Some(0),
    };
    let mut alice = env.stack.instances(Some(ALICE)).unwrap();
    refused(
        alice.create_kms_instance(good.clone()).await,
        Code::PermissionDenied,
        "Forbidden.NoPermission",
    );
    let mut ops = env.stack.instances(Some(OPERATOR)).unwrap();
    let bad: Vec<(CreateKmsInstanceRequest, &str)> = vec![
        (
            CreateKmsInstanceRequest {
                instance_type: 0,
                ..good.clone()
            },
            "InvalidParameter.InstanceType",
        ),
        (
            CreateKmsInstanceRequest {
                owner_account_id: "acct-1".into(),
                ..good.clone()
            },
            "InvalidParameter.OwnerAccountId",
        ),
        (
            CreateKmsInstanceRequest {
                key_quota: 0,
                ..good.clone()
            },
            "InvalidParameter.KeyQuota",
        ),
        (
            CreateKmsInstanceRequest {
                access_management_quota: Some(-1),
                ..good.clone()
            },
            "InvalidParameter.AccessManagementQuota",
        ),
    ];
    for (req, want) in bad {
        refused(
            ops.create_kms_instance(req).await,
            Code::InvalidArgument,
            want,
        );
    }

    // Owners and operators see an instance; other accounts are told it does not exist.
    env.instance(&sw, ALICE).await.unwrap();
    env.instance(&sw, OPERATOR).await.unwrap();
    refused(
        env.instance(&sw, MALLORY).await,
        Code::NotFound,
        "Forbidden.InstanceNotFound",
    );
    let list = |who: &'static str, page_size: i32, page_token: String| {
        let stack = &env.stack;
        async move {
            stack
                .instances(Some(who))
                .unwrap()
                .list_kms_instances(ListKmsInstancesRequest {
                    page_size,
                    page_token,
                })
                .await
                .map(|r| r.into_inner())
        }
    };
    assert_eq!(
        list(ALICE, 0, String::new())
            .await
            .unwrap()
            .kms_instances
            .len(),
        2
    );
    assert!(
        list(MALLORY, 0, String::new())
            .await
            .unwrap()
            .kms_instances
            .is_empty()
    );
    let first = list(ALICE, 1, String::new()).await.unwrap();
    assert_eq!(first.kms_instances.len(), 1);
    let second = list(ALICE, 1, first.next_page_token.clone()).await.unwrap();
    assert_eq!(second.kms_instances.len(), 1);
    assert_ne!(first.kms_instances[0], second.kms_instances[0]);
    assert!(
        second.next_page_token.is_empty() || {
            list(ALICE, 1, second.next_page_token.clone())
                .await
                .unwrap()
                .kms_instances
                .is_empty()
        }
    );
    refused(
        list(ALICE, 101, String::new()).await,
        Code::InvalidArgument,
        "InvalidParameter.PageSize",
    );
    refused(
        list(ALICE, 0, "bm90LWEtdG9rZW4".into()).await,
        Code::InvalidArgument,
        "InvalidParameter.PageToken",
    );

    // Keys go only into instances the account sees.
    let in_sw = CreateKeyRequest {
        kms_instance_id: sw.clone(),
        ..Default::default()
    };
    let mut mallory_keys = env.stack.keys(Some(MALLORY)).unwrap();
    refused(
        mallory_keys.create_key(in_sw.clone()).await,
        Code::NotFound,
        "Forbidden.InstanceNotFound",
    );
    refused(
        env.create(CreateKeyRequest {
            kms_instance_id: "kst-0000000000000000000000000000000f".into(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
        "Forbidden.InstanceNotFound",
    );

    // Sharing: operators only, within the access-management quota, never with the owner.
    let share = |who: &'static str, account: &'static str| {
        let stack = &env.stack;
        let id = sw.clone();
        async move {
            stack
                .instances(Some(who))
                .unwrap()
                .share_kms_instance(ShareKmsInstanceRequest {
                    kms_instance_id: id,
                    account_id: account.into(),
                })
                .await
                .map(|r| r.into_inner().kms_instance.unwrap())
        }
    };
    refused(
        share(ALICE, MALLORY_ACCOUNT).await,
        Code::PermissionDenied,
        "Forbidden.NoPermission",
    );
    let shared = share(OPERATOR, MALLORY_ACCOUNT).await.unwrap();
    assert_eq!(
        shared.shared_with_account_ids,
        vec![MALLORY_ACCOUNT.to_string()]
    );
    refused(
        share(OPERATOR, "111").await,
        Code::ResourceExhausted,
        "Rejected.LimitExceeded",
    );
    refused(
        share(OPERATOR, ACCOUNT).await,
        Code::InvalidArgument,
        "InvalidParameter.AccountId",
    );
    refused(
        share(OPERATOR, "not-an-account").await,
        Code::InvalidArgument,
        "InvalidParameter.AccountId",
    );
    assert_eq!(
        list(MALLORY, 0, String::new())
            .await
            .unwrap()
            .kms_instances
            .len(),
        1
    );
    let mallorys = mallory_keys
        .create_key(in_sw.clone())
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap();
    assert!(mallorys.arn.contains(MALLORY_ACCOUNT), "{}", mallorys.arn);
    // The instance owner may manage keys others make in it (default policy).
    env.describe(&mallorys.arn).await.unwrap();

    // The key quota counts every account's keys.
    env.create(in_sw.clone()).await.unwrap();
    env.create(in_sw.clone()).await.unwrap();
    refused(
        env.create(in_sw.clone()).await,
        Code::ResourceExhausted,
        "Rejected.LimitExceeded",
    );
    assert_eq!(env.instance(&sw, ALICE).await.unwrap().key_count, 3);

    // The spec must be one the instance type offers (checked before the quota).
    for spec in [
        KeySpec::Rsa4096,
        KeySpec::AliyunAes192,
        KeySpec::AliyunAes128,
    ] {
        refused(
            env.create(CreateKeyRequest {
                kms_instance_id: sw.clone(),
                key_spec: spec as i32,
                ..Default::default()
            })
            .await,
            Code::InvalidArgument,
            "InvalidParameter.KeySpec",
        );
    }

    // Unsharing ends the sight of the instance, not the keys made in it.
    let unshared = env
        .stack
        .instances(Some(OPERATOR))
        .unwrap()
        .unshare_kms_instance(UnshareKmsInstanceRequest {
            kms_instance_id: sw.clone(),
            account_id: MALLORY_ACCOUNT.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .kms_instance
        .unwrap();
    assert!(unshared.shared_with_account_ids.is_empty());
    refused(
        env.instance(&sw, MALLORY).await,
        Code::NotFound,
        "Forbidden.InstanceNotFound",
    );
    mallory_keys
        .describe_key(DescribeKeyRequest {
            key_id: mallorys.key_id.clone(),
        })
        .await
        .unwrap();
}

/// An instance made without an access-management quota can be shared with one account;
/// operators change its quotas with UpdateKmsInstance, never below what is in use (keys held;
/// accounts it is shared with and accounts its key policies grant), and the refusal names the
/// count in use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_kms_instance_changes_quotas_never_below_use() {
    let stack = Stack::start().await.unwrap();
    let mut ops = stack.instances(Some(OPERATOR)).unwrap();
    let made = ops
        .create_kms_instance(CreateKmsInstanceRequest {
            instance_type: InstanceType::Software as i32,
            owner_account_id: ACCOUNT.into(),
            key_quota: 10,
            access_management_quota: None,
        })
        .await
        .unwrap()
        .into_inner()
        .kms_instance
        .unwrap();
    assert_eq!(made.access_management_quota, 1);
    let id = made.kms_instance_id.clone();
    ops.share_kms_instance(ShareKmsInstanceRequest {
        kms_instance_id: id.clone(),
        account_id: "8888888888888888".into(),
    })
    .await
    .unwrap();
    let mut keys = stack.keys(Some(ALICE)).unwrap();
    let mut key_ids = Vec::new();
    for _ in 0..2 {
        key_ids.push(
            keys.create_key(CreateKeyRequest {
                kms_instance_id: id.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .key_metadata
            .unwrap()
            .key_id,
        );
    }
    let update = |key_quota: Option<i32>, access_management_quota: Option<i32>| {
        let (mut ops, id) = (ops.clone(), id.clone());
        async move {
            ops.update_kms_instance(UpdateKmsInstanceRequest {
                kms_instance_id: id,
                key_quota,
                access_management_quota,
            })
            .await
            .map(|r| r.into_inner().kms_instance.unwrap())
        }
    };

    // Keys: not below the two it holds.
    let below = update(Some(1), None).await.unwrap_err();
    assert_eq!(
        (below.code(), reason(&below).as_str()),
        (Code::InvalidArgument, "InvalidParameter.KeyQuota"),
        "{below:?}"
    );
    assert!(
        below.message().contains("below the 2 keys"),
        "{}",
        below.message()
    );
    let two = update(Some(2), None).await.unwrap();
    assert_eq!(
        (two.key_quota, two.key_count, two.access_management_quota),
        (2, 2, 1)
    );
    refused(
        keys.create_key(CreateKeyRequest {
            kms_instance_id: id.clone(),
            ..Default::default()
        })
        .await,
        Code::ResourceExhausted,
        "Rejected.LimitExceeded",
    );

    // Accounts: one share, then a key policy granting another account makes two.
    update(None, Some(3)).await.unwrap();
    keys.set_key_policy(SetKeyPolicyRequest {
        key_id: key_ids[0].clone(),
        policy: format!(
            r#"{{"Version":"1","Statement":[{{"Effect":"Allow","Principal":{{"RAM":["acs:ram::{ACCOUNT}:*"]}},"Action":["kms:*"],"Resource":["*"]}},{{"Effect":"Allow","Principal":{{"RAM":["acs:ram::{MALLORY_ACCOUNT}:user/partner"]}},"Action":["kms:Encrypt"],"Resource":["*"]}}]}}"#
        ),
    })
    .await
    .unwrap();
    let below = update(None, Some(1)).await.unwrap_err();
    assert_eq!(
        (below.code(), reason(&below).as_str()),
        (
            Code::InvalidArgument,
            "InvalidParameter.AccessManagementQuota"
        ),
        "{below:?}"
    );
    assert!(
        below.message().contains("below the 2 other accounts"),
        "{}",
        below.message()
    );
    let fits = update(Some(20), Some(2)).await.unwrap();
    assert_eq!((fits.key_quota, fits.access_management_quota), (20, 2));
    // Out of range, as at creation.
    refused(
        update(Some(0), None).await,
        Code::InvalidArgument,
        "InvalidParameter.KeyQuota",
    );
    refused(
        update(None, Some(1001)).await,
        Code::InvalidArgument,
        "InvalidParameter.AccessManagementQuota",
    );

    // Operators only; an instance that does not exist is named so.
    refused(
        stack
            .instances(Some(ALICE))
            .unwrap()
            .update_kms_instance(UpdateKmsInstanceRequest {
                kms_instance_id: id.clone(),
                key_quota: Some(100),
                access_management_quota: None,
            })
            .await,
        Code::PermissionDenied,
        "Forbidden.NoPermission",
    );
    refused(
        ops.update_kms_instance(UpdateKmsInstanceRequest {
            kms_instance_id: "kst-00000000000000000000000000000000".into(),
            key_quota: Some(100),
            access_management_quota: None,
        })
        .await,
        Code::NotFound,
        "Forbidden.InstanceNotFound",
    );
    let seen = ops
        .get_kms_instance(GetKmsInstanceRequest {
            kms_instance_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .kms_instance
        .unwrap();
    assert_eq!((seen.key_quota, seen.access_management_quota), (20, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_key_with_every_field_and_the_default_key() {
    let env = env().await;
    let sw = env.software.kms_instance_id.clone();
    let policy = format!(
        r#"{{"Version":"1","Statement":[{{"Effect":"Allow","Principal":{{"RAM":["acs:ram::{ACCOUNT}:*"]}},"Action":["kms:*"],"Resource":["*"]}}]}}"#
    );
    let key = env
        .create(CreateKeyRequest {
            kms_instance_id: sw.clone(),
            key_spec: KeySpec::AliyunAes256 as i32,
            key_usage: KeyUsage::EncryptDecrypt as i32,
            origin: KeyOrigin::Kms as i32,
            description: "orders".into(),
            alias: "alias/orders".into(),
            tags: vec![tag("env", "prod"), tag("team", "pay")],
            enable_automatic_rotation: Some(true),
            rotation_interval: days(30),
            policy: policy.clone(),
        })
        .await
        .unwrap();
    assert_eq!(key.kms_instance_id, sw);
    assert!(!key.is_default_key);
    assert_eq!(key.key_state, KeyState::Enabled as i32);
    assert_eq!(key.protection_level, ProtectionLevel::Software as i32);
    assert_eq!(key.rotation_status, RotationStatus::Enabled as i32);
    assert_eq!(key.rotation_interval, days(30));
    let created = key.creation_date.unwrap();
    assert_eq!(
        key.next_rotation_date.unwrap().seconds,
        created.seconds + 30 * 86_400
    );
    assert_eq!(key.last_rotation_date, None);
    assert_eq!(key.description, "orders");
    assert_eq!(key.aliases, vec!["alias/orders".to_string()]);
    assert_eq!(key.tags, vec![tag("env", "prod"), tag("team", "pay")]);
    assert_eq!(key.creator, ALICE);
    let mut keys = env.keys();
    let stored = keys
        .get_key_policy(GetKeyPolicyRequest {
            key_id: "alias/orders".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .policy;
    assert_eq!(stored, policy);

    // Defaults: usage from the spec, rotation on for symmetric keys in a software instance,
    // the default policy.
    let plain = env.sw_key().await;
    assert_eq!(plain.key_usage, KeyUsage::EncryptDecrypt as i32);
    assert_eq!(plain.rotation_status, RotationStatus::Enabled as i32);
    assert_eq!(plain.rotation_interval, days(365));
    let default_policy = keys
        .get_key_policy(GetKeyPolicyRequest {
            key_id: plain.key_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .policy;
    assert!(
        default_policy.contains(&format!("acs:ram::{ACCOUNT}:*")),
        "{default_policy}"
    );
    let no_rotation = env
        .create(CreateKeyRequest {
            kms_instance_id: sw.clone(),
            enable_automatic_rotation: Some(false),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(no_rotation.rotation_status, RotationStatus::Disabled as i32);
    assert_eq!(no_rotation.next_rotation_date, None);

    // The default key: External origin waits for material; it never rotates automatically.
    let default = env
        .create(CreateKeyRequest {
            origin: KeyOrigin::External as i32,
            alias: "alias/default".into(),
            description: "the account's key".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(default.is_default_key);
    assert_eq!(default.kms_instance_id, "");
    assert_eq!(default.key_spec, KeySpec::AliyunAes256 as i32);
    assert_eq!(default.key_state, KeyState::PendingImport as i32);
    assert_eq!(default.origin, KeyOrigin::External as i32);
    assert_eq!(default.rotation_status, RotationStatus::Disabled as i32);
    assert_eq!(default.rotation_interval, None);
    let versions = keys
        .list_key_versions(ListKeyVersionsRequest {
            key_id: default.key_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(versions.key_versions.is_empty(), "no material, no version");
    refused(
        env.create(CreateKeyRequest::default()).await,
        Code::AlreadyExists,
        "Forbidden.DefaultKeyExists",
    );
    refused(
        env.encrypt("alias/default", b"x").await,
        Code::FailedPrecondition,
        "Rejected.PendingImport",
    );

    // ListKeys: default keys only; one instance's keys only; everything.
    let only_default = env
        .all_key_ids(ListKeysRequest {
            default_keys_only: true,
            ..Default::default()
        })
        .await;
    assert_eq!(only_default, vec![default.key_id.clone()]);
    let mut in_sw = env
        .all_key_ids(ListKeysRequest {
            kms_instance_id: sw.clone(),
            ..Default::default()
        })
        .await;
    in_sw.sort();
    let mut want = vec![
        key.key_id.clone(),
        plain.key_id.clone(),
        no_rotation.key_id.clone(),
    ];
    want.sort();
    assert_eq!(in_sw, want);
    assert!(
        env.all_key_ids(ListKeysRequest {
            kms_instance_id: env.hardware.kms_instance_id.clone(),
            ..Default::default()
        })
        .await
        .is_empty()
    );
    assert_eq!(env.all_key_ids(ListKeysRequest::default()).await.len(), 4);
    assert_eq!(
        env.instance(&sw, ALICE).await.unwrap().key_count,
        3,
        "default keys are in no instance"
    );

    // Another account sees none of it.
    let theirs = env
        .stack
        .keys(Some(MALLORY))
        .unwrap()
        .list_keys(ListKeysRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(theirs.keys.is_empty());
}

/// One validation case: a call and the reason it must be refused with.
struct Case {
    what: String,
    call: Rpc<()>,
    want: &'static str,
}

fn bad_tags() -> Vec<(String, Vec<Tag>, &'static str)> {
    let c129 = "x".repeat(129);
    let twenty_one: Vec<Tag> = (0..21).map(|i| tag(&format!("k{i}"), "v")).collect();
    vec![
        (
            "tag key of 129 characters".into(),
            vec![tag(&c129, "v")],
            "InvalidParameter.TagKey",
        ),
        (
            "tag value of 129 characters".into(),
            vec![tag("k", &c129)],
            "InvalidParameter.TagValue",
        ),
        (
            "empty tag key".into(),
            vec![tag("", "v")],
            "InvalidParameter.TagKey",
        ),
        (
            "empty tag value".into(),
            vec![tag("k", "")],
            "InvalidParameter.TagValue",
        ),
        (
            "tag key starting aliyun".into(),
            vec![tag("aliyun:x", "v")],
            "InvalidParameter.TagKey",
        ),
        (
            "tag key starting Aliyun".into(),
            vec![tag("Aliyunx", "v")],
            "InvalidParameter.TagKey",
        ),
        (
            "tag key starting acs:".into(),
            vec![tag("acs:team", "v")],
            "InvalidParameter.TagKey",
        ),
        (
            "tag key with a space".into(),
            vec![tag("a b", "v")],
            "InvalidParameter.TagKey",
        ),
        (
            "tag value with #".into(),
            vec![tag("k", "v#1")],
            "InvalidParameter.TagValue",
        ),
        (
            "the same tag key twice".into(),
            vec![tag("k", "1"), tag("k", "2")],
            "InvalidParameter.Tags",
        ),
        ("21 tags".into(), twenty_one, "InvalidParameter.Tags"),
    ]
}

fn bad_aliases() -> Vec<(String, &'static str)> {
    vec![
        ("app".into(), "no alias/ prefix"),
        ("alias/".into(), "nothing after alias/"),
        (format!("alias/{}", "a".repeat(256)), "256 characters"),
        ("alias/a b".into(), "a space"),
        ("alias/a.b".into(), "a dot"),
        ("alias/acs/x".into(), "the reserved alias/acs/"),
        ("Alias/app".into(), "a capital A"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_applies_the_validation_rules() {
    let env = env().await;
    let sw = env.software.kms_instance_id.clone();
    let key = env.sw_key().await;
    let id = key.key_id.clone();
    let mut keys = env.keys();
    let mut cases: Vec<Case> = Vec::new();

    // CreateKey and TagResources: every bad tag set.
    for (what, tags, want) in bad_tags() {
        cases.push(Case {
            what: format!("CreateKey with {what}"),
            call: unit(
                env.create(CreateKeyRequest {
                    kms_instance_id: sw.clone(),
                    tags: tags.clone(),
                    ..Default::default()
                })
                .await,
            ),
            want,
        });
        cases.push(Case {
            what: format!("TagResources with {what}"),
            call: unit(
                keys.tag_resources(TagResourcesRequest {
                    key_ids: vec![id.clone()],
                    tags,
                })
                .await,
            ),
            want,
        });
    }
    // The 21st tag, added to a key that has 20.
    let full = env
        .create(CreateKeyRequest {
            kms_instance_id: sw.clone(),
            tags: (0..20).map(|i| tag(&format!("k{i}"), "v")).collect(),
            ..Default::default()
        })
        .await
        .unwrap();
    cases.push(Case {
        what: "TagResources adding a 21st tag".into(),
        call: unit(
            keys.tag_resources(TagResourcesRequest {
                key_ids: vec![full.key_id.clone()],
                tags: vec![tag("k20", "v")],
            })
            .await,
        ),
        want: "InvalidParameter.Tags",
    });
    cases.push(Case {
        what: "TagResources with no tags".into(),
        call: unit(
            keys.tag_resources(TagResourcesRequest {
                key_ids: vec![id.clone()],
                tags: vec![],
            })
            .await,
        ),
        want: "InvalidParameter.Tags",
    });
    for (n, what) in [(0, "no keys"), (51, "51 keys")] {
        cases.push(Case {
            what: format!("TagResources with {what}"),
            call: unit(
                keys.tag_resources(TagResourcesRequest {
                    key_ids: vec![id.clone(); n],
                    tags: vec![tag("a", "b")],
                })
                .await,
            ),
            want: "InvalidParameter.KeyIds",
        });
        cases.push(Case {
            what: format!("UntagResources with {what}"),
            call: unit(
                keys.untag_resources(UntagResourcesRequest {
                    key_ids: vec![id.clone(); n],
                    tag_keys: vec!["a".into()],
                })
                .await,
            ),
            want: "InvalidParameter.KeyIds",
        });
    }
    for (tag_keys, what) in [
        (vec![], "no tag keys"),
        (vec!["x".repeat(129)], "a 129-character tag key"),
    ] {
        cases.push(Case {
            what: format!("UntagResources with {what}"),
            call: unit(
                keys.untag_resources(UntagResourcesRequest {
                    key_ids: vec![id.clone()],
                    tag_keys,
                })
                .await,
            ),
            want: "InvalidParameter.TagKeys",
        });
    }

    // Aliases: CreateKey, CreateAlias, UpdateAlias, DeleteAlias.
    for (alias, what) in bad_aliases() {
        cases.push(Case {
            what: format!("CreateKey with an alias with {what}"),
            call: unit(
                env.create(CreateKeyRequest {
                    kms_instance_id: sw.clone(),
                    alias: alias.clone(),
                    ..Default::default()
                })
                .await,
            ),
            want: "InvalidParameter.AliasName",
        });
        cases.push(Case {
            what: format!("CreateAlias with {what}"),
            call: unit(
                keys.create_alias(CreateAliasRequest {
                    alias_name: alias.clone(),
                    key_id: id.clone(),
                })
                .await,
            ),
            want: "InvalidParameter.AliasName",
        });
        cases.push(Case {
            what: format!("UpdateAlias with {what}"),
            call: unit(
                keys.update_alias(UpdateAliasRequest {
                    alias_name: alias.clone(),
                    key_id: id.clone(),
                })
                .await,
            ),
            want: "InvalidParameter.AliasName",
        });
        cases.push(Case {
            what: format!("DeleteAlias with {what}"),
            call: unit(
                keys.delete_alias(DeleteAliasRequest {
                    alias_name: alias.clone(),
                })
                .await,
            ),
            want: "InvalidParameter.AliasName",
        });
    }

    // Descriptions.
    let long = "d".repeat(8193);
    cases.push(Case {
        what: "CreateKey with an 8,193-character description".into(),
        call: unit(
            env.create(CreateKeyRequest {
                kms_instance_id: sw.clone(),
                description: long.clone(),
                ..Default::default()
            })
            .await,
        ),
        want: "InvalidParameter.Description",
    });
    cases.push(Case {
        what: "UpdateKeyDescription with 8,193 characters".into(),
        call: unit(
            keys.update_key_description(UpdateKeyDescriptionRequest {
                key_id: id.clone(),
                description: long.clone(),
            })
            .await,
        ),
        want: "InvalidParameter.Description",
    });
    cases.push(Case {
        what: "SetDeletionProtection with an 8,193-character description".into(),
        call: unit(
            keys.set_deletion_protection(SetDeletionProtectionRequest {
                key_id: id.clone(),
                enable_deletion_protection: true,
                deletion_protection_description: long.clone(),
            })
            .await,
        ),
        want: "InvalidParameter.DeletionProtectionDescription",
    });

    // Pending windows.
    for days_in_window in [0, 6, 367, -7] {
        cases.push(Case {
            what: format!("ScheduleKeyDeletion with {days_in_window} days"),
            call: unit(
                keys.schedule_key_deletion(ScheduleKeyDeletionRequest {
                    key_id: id.clone(),
                    pending_window_in_days: days_in_window,
                })
                .await,
            ),
            want: "InvalidParameter.PendingWindowInDays",
        });
    }

    // Rotation intervals: out of range, not whole days, asymmetric keys.
    let half_day = Some(prost_types::Duration {
        seconds: 7 * 86_400 + 43_200,
        nanos: 0,
    });
    for (interval, what) in [
        (days(6), "6 days"),
        (days(366), "366 days"),
        (days(0), "0 days"),
        (half_day, "7.5 days"),
    ] {
        cases.push(Case {
            what: format!("CreateKey with a rotation interval of {what}"),
            call: unit(
                env.create(CreateKeyRequest {
                    kms_instance_id: sw.clone(),
                    rotation_interval: interval,
                    ..Default::default()
                })
                .await,
            ),
            want: "InvalidParameter.RotationInterval",
        });
        cases.push(Case {
            what: format!("UpdateRotationPolicy with {what}"),
            call: unit(
                keys.update_rotation_policy(UpdateRotationPolicyRequest {
                    key_id: id.clone(),
                    enable_automatic_rotation: Some(true),
                    rotation_interval: interval,
                })
                .await,
            ),
            want: "InvalidParameter.RotationInterval",
        });
    }

    // Specs, usages, origins and the default key's limits.
    for (req, want, what) in [
        (
            CreateKeyRequest {
                kms_instance_id: sw.clone(),
                key_spec: KeySpec::EcP256 as i32,
                key_usage: KeyUsage::EncryptDecrypt as i32,
                ..Default::default()
            },
            "InvalidParameter.KeyUsage",
            "EC for encryption",
        ),
        (
            CreateKeyRequest {
                kms_instance_id: sw.clone(),
                key_usage: KeyUsage::SignVerify as i32,
                ..Default::default()
            },
            "InvalidParameter.KeyUsage",
            "AES for signing",
        ),
        (
            CreateKeyRequest {
                kms_instance_id: sw.clone(),
                key_spec: 99,
                ..Default::default()
            },
            "InvalidParameter.KeySpec",
            "an unknown spec",
        ),
        (
            CreateKeyRequest {
                kms_instance_id: sw.clone(),
                origin: 7,
                ..Default::default()
            },
            "InvalidParameter.Origin",
            "an unknown origin",
        ),
        (
            CreateKeyRequest {
                kms_instance_id: "instance-1".into(),
                ..Default::default()
            },
            "InvalidParameter.KmsInstanceId",
            "a malformed instance id",
        ),
        (
            CreateKeyRequest {
                key_spec: KeySpec::Rsa2048 as i32,
                ..Default::default()
            },
            "InvalidParameter.KeySpec",
            "a default key that is not Aliyun_AES_256",
        ),
        (
            CreateKeyRequest {
                tags: vec![tag("a", "b")],
                ..Default::default()
            },
            "InvalidParameter.Tags",
            "a default key with tags",
        ),
        (
            CreateKeyRequest {
                kms_instance_id: sw.clone(),
                key_spec: KeySpec::Rsa2048 as i32,
                enable_automatic_rotation: Some(true),
                ..Default::default()
            },
            "InvalidParameter.RotationInterval",
            "automatic rotation for RSA",
        ),
    ] {
        cases.push(Case {
            what: format!("CreateKey with {what}"),
            call: unit(env.create(req).await),
            want,
        });
    }

    // Policies.
    for (doc, what) in [
        ("{", "broken JSON"),
        (r#"{"Version":"2","Statement":[]}"#, "Version 2"),
        (r#"{"Version":"1"}"#, "no Statement"),
    ] {
        cases.push(Case {
            what: format!("CreateKey with a policy of {what}"),
            call: unit(
                env.create(CreateKeyRequest {
                    kms_instance_id: sw.clone(),
                    policy: doc.into(),
                    ..Default::default()
                })
                .await,
            ),
            want: "InvalidParameter.Policy",
        });
        cases.push(Case {
            what: format!("SetKeyPolicy with {what}"),
            call: unit(
                keys.set_key_policy(SetKeyPolicyRequest {
                    key_id: id.clone(),
                    policy: doc.into(),
                })
                .await,
            ),
            want: "InvalidParameter.Policy",
        });
    }
    let huge = format!(
        r#"{{"Version":"1","Statement":[],"Pad":"{}"}}"#,
        "p".repeat(32_768)
    );
    cases.push(Case {
        what: "SetKeyPolicy with 32,790 bytes".into(),
        call: unit(
            keys.set_key_policy(SetKeyPolicyRequest {
                key_id: id.clone(),
                policy: huge,
            })
            .await,
        ),
        want: "InvalidParameter.Policy",
    });

    // Key references, versions, paging.
    for bad_ref in ["", "key-123", "acs:kms:local:abc:key/x"] {
        cases.push(Case {
            what: format!("DescribeKey of {bad_ref:?}"),
            call: unit(env.describe(bad_ref).await),
            want: "InvalidParameter.KeyId",
        });
    }
    cases.push(Case {
        what: "DescribeKeyVersion of a malformed version id".into(),
        call: unit(
            keys.describe_key_version(DescribeKeyVersionRequest {
                key_id: id.clone(),
                key_version_id: "v1".into(),
            })
            .await,
        ),
        want: "InvalidParameter.KeyVersionId",
    });
    for (size, token, want) in [
        (101, "", "InvalidParameter.PageSize"),
        (-1, "", "InvalidParameter.PageSize"),
        (0, "%%%", "InvalidParameter.PageToken"),
        (0, "cDE6bm90LWEta2V5", "InvalidParameter.PageToken"),
    ] {
        let what = format!("page_size {size}, page_token {token:?}");
        cases.push(Case {
            what: format!("ListKeys with {what}"),
            call: unit(
                env.list_keys(ListKeysRequest {
                    page_size: size,
                    page_token: token.into(),
                    ..Default::default()
                })
                .await,
            ),
            want,
        });
        cases.push(Case {
            what: format!("ListAliases with {what}"),
            call: unit(
                keys.list_aliases(ListAliasesRequest {
                    page_size: size,
                    page_token: token.into(),
                })
                .await,
            ),
            want,
        });
        cases.push(Case {
            what: format!("ListKeyVersions with {what}"),
            call: unit(
                keys.list_key_versions(ListKeyVersionsRequest {
                    key_id: id.clone(),
                    page_size: size,
                    page_token: token.into(),
                })
                .await,
            ),
            want,
        });
        cases.push(Case {
            what: format!("ListAliasesByKeyId with {what}"),
            call: unit(
                keys.list_aliases_by_key_id(ListAliasesByKeyIdRequest {
                    key_id: id.clone(),
                    page_size: size,
                    page_token: token.into(),
                })
                .await,
            ),
            want,
        });
    }
    cases.push(Case {
        what: "ListKeys filtering on an unknown state".into(),
        call: unit(
            env.list_keys(ListKeysRequest {
                filters: Some(ListKeysFilter {
                    key_state: Some(0),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await,
        ),
        want: "InvalidParameter.KeyState",
    });

    let mut failures = Vec::new();
    for case in &cases {
        match &case.call {
            Ok(()) => failures.push(format!("{}: accepted", case.what)),
            Err(st) if st.code() != Code::InvalidArgument || reason(st) != case.want => failures
                .push(format!(
                    "{}: got {:?} {}, want INVALID_ARGUMENT {}",
                    case.what,
                    st.code(),
                    reason(st),
                    case.want
                )),
            Err(_) => {}
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    // Nothing of that reached the store: the key is as it was, and only two keys exist.
    let after = env.describe(&id).await.unwrap();
    assert_eq!(after, key);
    assert_eq!(env.all_key_ids(ListKeysRequest::default()).await.len(), 2);
    // The boundaries themselves are accepted.
    let c128 = "x".repeat(128);
    keys.tag_resources(TagResourcesRequest {
        key_ids: vec![id.clone()],
        tags: vec![tag(&c128, &c128), tag("a/b\\c_d-e.f+g=h:i@j", "acs-ok")],
    })
    .await
    .unwrap();
    keys.update_key_description(UpdateKeyDescriptionRequest {
        key_id: id.clone(),
        description: "é".repeat(8192),
    })
    .await
    .unwrap();
    keys.create_alias(CreateAliasRequest {
        alias_name: format!("alias/{}", "a".repeat(255)),
        key_id: id.clone(),
    })
    .await
    .unwrap();
    for (interval, window) in [(7, 7), (365, 366)] {
        let k = env.sw_key().await;
        keys.update_rotation_policy(UpdateRotationPolicyRequest {
            key_id: k.key_id.clone(),
            enable_automatic_rotation: None,
            rotation_interval: days(interval),
        })
        .await
        .unwrap();
        keys.schedule_key_deletion(ScheduleKeyDeletionRequest {
            key_id: k.key_id.clone(),
            pending_window_in_days: window,
        })
        .await
        .unwrap();
    }
}

/// What an operation in the state matrix does to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    DescribeKey,
    EnableKey,
    DisableKey,
    UpdateKeyDescription,
    ProtectionOn,
    ProtectionOff,
    ScheduleKeyDeletion,
    CancelKeyDeletion,
    UpdateRotationPolicy,
    CreateKeyVersion,
    ListKeyVersions,
    CreateAlias,
    UpdateAliasToIt,
    TagResources,
    UntagResources,
    ListResourceTags,
    SetKeyPolicy,
    GetKeyPolicy,
    Encrypt,
    GenerateDataKey,
    Decrypt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    Enabled,
    Disabled,
    PendingDeletion,
    PendingImport,
}

const OK: Option<&str> = None;

/// API.md's state rules, written out: the expected refusal per state, `None` for success.
fn expected(op: Op) -> [Option<&'static str>; 4] {
    let pd = Some("Rejected.PendingDeletion");
    let pi = Some("Rejected.PendingImport");
    let dis = Some("Rejected.Disabled");
    match op {
        Op::DescribeKey
        | Op::ProtectionOff
        | Op::ListKeyVersions
        | Op::ListResourceTags
        | Op::SetKeyPolicy
        | Op::GetKeyPolicy => [OK, OK, OK, OK],
        Op::EnableKey | Op::DisableKey => [OK, OK, pd, pi],
        Op::UpdateKeyDescription
        | Op::ProtectionOn
        | Op::CreateAlias
        | Op::UpdateAliasToIt
        | Op::TagResources
        | Op::UntagResources
        | Op::ScheduleKeyDeletion => [OK, OK, pd, OK],
        Op::CancelKeyDeletion => [Some("Rejected.Enabled"), dis, OK, pi],
        Op::UpdateRotationPolicy | Op::CreateKeyVersion | Op::Encrypt | Op::GenerateDataKey => {
            [OK, dis, pd, pi]
        }
        Op::Decrypt => [OK, dis, pd, None],
    }
}

/// What the key looks like after a successful `op` from `state`.
fn state_after(op: Op, state: St) -> St {
    match op {
        Op::EnableKey => St::Enabled,
        Op::DisableKey => St::Disabled,
        Op::ScheduleKeyDeletion => St::PendingDeletion,
        Op::CancelKeyDeletion => St::Enabled,
        _ => state,
    }
}

fn wire_state(s: St) -> i32 {
    (match s {
        St::Enabled => KeyState::Enabled,
        St::Disabled => KeyState::Disabled,
        St::PendingDeletion => KeyState::PendingDeletion,
        St::PendingImport => KeyState::PendingImport,
    }) as i32
}

impl Env {
    /// A fresh key in `state`, and a ciphertext made with it while it was Enabled.
    async fn key_in(&self, state: St) -> (KeyMetadata, Option<Vec<u8>>) {
        let external = state == St::PendingImport;
        let key = self
            .create(CreateKeyRequest {
                kms_instance_id: self.software.kms_instance_id.clone(),
                origin: if external {
                    KeyOrigin::External as i32
                } else {
                    KeyOrigin::Kms as i32
                },
                tags: vec![tag("t", "1")],
                ..Default::default()
            })
            .await
            .unwrap();
        let blob = if external {
            None
        } else {
            Some(
                self.encrypt(&key.key_id, b"state matrix")
                    .await
                    .unwrap()
                    .ciphertext_blob,
            )
        };
        let mut keys = self.keys();
        let id = key.key_id.clone();
        match state {
            St::Enabled | St::PendingImport => {}
            St::Disabled => {
                keys.disable_key(DisableKeyRequest { key_id: id.clone() })
                    .await
                    .unwrap();
            }
            St::PendingDeletion => {
                keys.schedule_key_deletion(ScheduleKeyDeletionRequest {
                    key_id: id.clone(),
                    pending_window_in_days: 30,
                })
                .await
                .unwrap();
            }
        }
        let now = self.describe(&id).await.unwrap();
        assert_eq!(now.key_state, wire_state(state));
        (now, blob)
    }

    async fn run(&self, op: Op, key: &KeyMetadata, blob: Option<&[u8]>, alias: &str) -> Rpc<()> {
        let mut keys = self.keys();
        let id = key.key_id.clone();
        match op {
            Op::DescribeKey => self.describe(&id).await.map(|_| ()),
            Op::EnableKey => unit(keys.enable_key(EnableKeyRequest { key_id: id }).await),
            Op::DisableKey => unit(keys.disable_key(DisableKeyRequest { key_id: id }).await),
            Op::UpdateKeyDescription => unit(
                keys.update_key_description(UpdateKeyDescriptionRequest {
                    key_id: id,
                    description: "new".into(),
                })
                .await,
            ),
            Op::ProtectionOn | Op::ProtectionOff => unit(
                keys.set_deletion_protection(SetDeletionProtectionRequest {
                    key_id: id,
                    enable_deletion_protection: op == Op::ProtectionOn,
                    deletion_protection_description: "keep".into(),
                })
                .await,
            ),
            Op::ScheduleKeyDeletion => unit(
                keys.schedule_key_deletion(ScheduleKeyDeletionRequest {
                    key_id: id,
                    pending_window_in_days: 7,
                })
                .await,
            ),
            Op::CancelKeyDeletion => unit(
                keys.cancel_key_deletion(CancelKeyDeletionRequest { key_id: id })
                    .await,
            ),
            // Turning rotation off is a request every key of the matrix may make: the
            // PendingImport key has imported material, which never rotates automatically.
            Op::UpdateRotationPolicy => unit(
                keys.update_rotation_policy(UpdateRotationPolicyRequest {
                    key_id: id,
                    enable_automatic_rotation: Some(false),
                    rotation_interval: None,
                })
                .await,
            ),
            Op::CreateKeyVersion => unit(
                keys.create_key_version(CreateKeyVersionRequest { key_id: id })
                    .await,
            ),
            Op::ListKeyVersions => unit(
                keys.list_key_versions(ListKeyVersionsRequest {
                    key_id: id,
                    ..Default::default()
                })
                .await,
            ),
            Op::CreateAlias => unit(
                keys.create_alias(CreateAliasRequest {
                    alias_name: alias.into(),
                    key_id: id,
                })
                .await,
            ),
            Op::UpdateAliasToIt => unit(
                keys.update_alias(UpdateAliasRequest {
                    alias_name: alias.into(),
                    key_id: id,
                })
                .await,
            ),
            Op::TagResources => unit(
                keys.tag_resources(TagResourcesRequest {
                    key_ids: vec![id],
                    tags: vec![tag("new", "v")],
                })
                .await,
            ),
            Op::UntagResources => unit(
                keys.untag_resources(UntagResourcesRequest {
                    key_ids: vec![id],
                    tag_keys: vec!["t".into()],
                })
                .await,
            ),
            Op::ListResourceTags => unit(
                keys.list_resource_tags(ListResourceTagsRequest { key_id: id })
                    .await,
            ),
            Op::SetKeyPolicy => unit(
                keys.set_key_policy(SetKeyPolicyRequest {
                    key_id: id,
                    policy: format!(
                        r#"{{"Version":"1","Statement":[{{"Effect":"Allow","Principal":{{"RAM":["acs:ram::{ACCOUNT}:*"]}},"Action":["kms:*"],"Resource":["*"]}}]}}"#
                    ),
                })
                .await,
            ),
            Op::GetKeyPolicy => unit(
                keys.get_key_policy(GetKeyPolicyRequest { key_id: id })
                    .await,
            ),
            Op::Encrypt => self.encrypt(&id, b"x").await.map(|_| ()),
            Op::GenerateDataKey => self
                .stack
                .crypto(Some(ALICE))
                .unwrap()
                .generate_data_key(GenerateDataKeyRequest {
                    key_id: id,
                    ..Default::default()
                })
                .await
                .map(|_| ()),
            Op::Decrypt => match blob {
                Some(b) => self.decrypt(b).await.map(|_| ()),
                None => Ok(()),
            },
        }
    }
}

/// One row of the state matrix: `op` on a fresh key in `state`; what went wrong, if anything.
async fn matrix_row(
    env: &Env,
    op: Op,
    state: St,
    want: Option<&'static str>,
    holder: &str,
) -> Option<String> {
    let (key, blob) = env.key_in(state).await;
    let alias = format!("alias/m-{}", &key.key_id[4..16]);
    if op == Op::UpdateAliasToIt {
        env.keys()
            .create_alias(CreateAliasRequest {
                alias_name: alias.clone(),
                key_id: holder.into(),
            })
            .await
            .unwrap();
    }
    let is_crypto = matches!(op, Op::Encrypt | Op::GenerateDataKey | Op::Decrypt);
    // The data plane learns state changes from WatchKeys: poll a moment for refusals.
    let got = if is_crypto && want.is_some() {
        let key = &key;
        let blob = blob.as_deref();
        let alias = alias.as_str();
        eventually(SETTLE, "a refusal on the data plane", || async move {
            match env.run(op, key, blob, alias).await {
                Ok(()) => None,
                Err(e) => Some(Err(e)),
            }
        })
        .await
        .unwrap_or(Ok(()))
    } else {
        env.run(op, &key, blob.as_deref(), &alias).await
    };
    let problem = match (&got, want) {
        (Ok(()), None) => None,
        (Err(st), Some(w)) if st.code() == Code::FailedPrecondition && reason(st) == w => None,
        (Ok(()), Some(w)) => Some(format!("accepted, want {w}")),
        (Err(st), _) => Some(format!(
            "{:?} {} ({}), want {}",
            st.code(),
            reason(st),
            st.message(),
            want.unwrap_or("success")
        )),
    };
    if let Some(problem) = problem {
        return Some(format!("{op:?} in {state:?}: {problem}"));
    }
    // A refused operation changed nothing; an accepted one moved the state as it says.
    let after = env.describe(&key.key_id).await.unwrap();
    let want_state = if want.is_none() {
        state_after(op, state)
    } else {
        state
    };
    if after.key_state != wire_state(want_state) {
        return Some(format!(
            "{op:?} in {state:?}: state is {} afterwards, want {want_state:?}",
            after.key_state
        ));
    }
    if want.is_some() && after != key {
        return Some(format!("{op:?} in {state:?}: refused, yet the key changed"));
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_matrix_of_the_api_contract() {
    use Op::*;
    let env = env().await;
    let ops = [
        DescribeKey,
        EnableKey,
        DisableKey,
        UpdateKeyDescription,
        ProtectionOn,
        ProtectionOff,
        ScheduleKeyDeletion,
        CancelKeyDeletion,
        UpdateRotationPolicy,
        CreateKeyVersion,
        ListKeyVersions,
        CreateAlias,
        UpdateAliasToIt,
        TagResources,
        UntagResources,
        ListResourceTags,
        SetKeyPolicy,
        GetKeyPolicy,
        Encrypt,
        GenerateDataKey,
        Decrypt,
    ];
    let states = [
        St::Enabled,
        St::Disabled,
        St::PendingDeletion,
        St::PendingImport,
    ];
    // UpdateAlias needs an alias on another key to move.
    let holder = env.sw_key().await.key_id;
    // Rows run a few at a time: each is a fresh key, so they do not disturb each other.
    let env = std::sync::Arc::new(env);
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(6));
    let mut rows = tokio::task::JoinSet::new();
    for op in ops {
        for (i, state) in states.iter().copied().enumerate() {
            if op == Decrypt && state == St::PendingImport {
                continue; // No ciphertext can exist for a key that never had material.
            }
            let (env, permits, holder) = (env.clone(), permits.clone(), holder.clone());
            rows.spawn(async move {
                let _permit = permits.acquire().await.unwrap();
                matrix_row(&env, op, state, expected(op)[i], &holder).await
            });
        }
    }
    let mut failures = Vec::new();
    let mut count = 0;
    while let Some(row) = rows.join_next().await {
        count += 1;
        failures.extend(row.unwrap());
    }
    let rows = count;
    assert!(
        failures.is_empty(),
        "{} of {rows} rows:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Deletion protection refuses ScheduleKeyDeletion in every state that could be scheduled.
    for state in [St::Enabled, St::Disabled, St::PendingImport] {
        let (key, _) = env.key_in(state).await;
        env.run(ProtectionOn, &key, None, "").await.unwrap();
        refused(
            env.run(ScheduleKeyDeletion, &key, None, "").await,
            Code::FailedPrecondition,
            "Forbidden.DeletionProtection",
        );
        env.run(ProtectionOff, &key, None, "").await.unwrap();
        env.run(ScheduleKeyDeletion, &key, None, "").await.unwrap();
    }
    // Rotation is suspended while a key is Disabled or pending deletion; the PendingImport
    // key has imported material, which never rotates automatically.
    for state in states {
        let (key, _) = env.key_in(state).await;
        let want = match state {
            St::Enabled => RotationStatus::Enabled,
            St::PendingImport => RotationStatus::Disabled,
            St::Disabled | St::PendingDeletion => RotationStatus::Suspended,
        };
        assert_eq!(key.rotation_status, want as i32, "{state:?}");
    }
    // CancelKeyDeletion brings back a key with material Enabled, one without PendingImport.
    let (external, _) = env.key_in(St::PendingImport).await;
    env.run(ScheduleKeyDeletion, &external, None, "")
        .await
        .unwrap();
    env.run(CancelKeyDeletion, &external, None, "")
        .await
        .unwrap();
    assert_eq!(
        env.describe(&external.key_id).await.unwrap().key_state,
        KeyState::PendingImport as i32
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aliases_tags_and_list_filters() {
    let env = env().await;
    let sw = env.software.kms_instance_id.clone();
    let mut keys = env.keys();
    let a = env.sw_key().await;
    let b = env.sw_key().await;

    // Aliases: create, clash, resolve, move, delete.
    for name in ["alias/app", "alias/app/v2", "alias/zeta"] {
        keys.create_alias(CreateAliasRequest {
            alias_name: name.into(),
            key_id: a.key_id.clone(),
        })
        .await
        .unwrap();
    }
    refused(
        keys.create_alias(CreateAliasRequest {
            alias_name: "alias/app".into(),
            key_id: b.key_id.clone(),
        })
        .await,
        Code::AlreadyExists,
        "Forbidden.AliasExists",
    );
    refused(
        keys.create_alias(CreateAliasRequest {
            alias_name: "alias/app".into(),
            key_id: a.key_id.clone(),
        })
        .await,
        Code::AlreadyExists,
        "Forbidden.AliasExists",
    );
    refused(
        env.create(CreateKeyRequest {
            kms_instance_id: sw.clone(),
            alias: "alias/zeta".into(),
            ..Default::default()
        })
        .await,
        Code::AlreadyExists,
        "Forbidden.AliasExists",
    );
    assert_eq!(env.describe("alias/app/v2").await.unwrap().key_id, a.key_id);
    assert_eq!(
        env.describe(&a.key_id).await.unwrap().aliases,
        vec!["alias/app", "alias/app/v2", "alias/zeta"]
    );
    // Another account's namespace is its own.
    env.stack
        .keys(Some(MALLORY))
        .unwrap()
        .create_key(CreateKeyRequest {
            alias: "alias/app".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    refused(
        env.stack
            .keys(Some(MALLORY))
            .unwrap()
            .create_alias(CreateAliasRequest {
                alias_name: "alias/mine".into(),
                key_id: a.key_id.clone(),
            })
            .await,
        Code::NotFound,
        "Forbidden.KeyNotFound",
    );

    keys.update_alias(UpdateAliasRequest {
        alias_name: "alias/zeta".into(),
        key_id: b.key_id.clone(),
    })
    .await
    .unwrap();
    assert_eq!(env.describe("alias/zeta").await.unwrap().key_id, b.key_id);
    assert_eq!(
        env.describe(&b.key_id).await.unwrap().aliases,
        vec!["alias/zeta"]
    );
    refused(
        keys.update_alias(UpdateAliasRequest {
            alias_name: "alias/nope".into(),
            key_id: b.key_id.clone(),
        })
        .await,
        Code::NotFound,
        "Forbidden.AliasNotFound",
    );
    keys.delete_alias(DeleteAliasRequest {
        alias_name: "alias/app/v2".into(),
    })
    .await
    .unwrap();
    refused(
        keys.delete_alias(DeleteAliasRequest {
            alias_name: "alias/app/v2".into(),
        })
        .await,
        Code::NotFound,
        "Forbidden.AliasNotFound",
    );
    refused(
        env.describe("alias/app/v2").await,
        Code::NotFound,
        "Forbidden.AliasNotFound",
    );

    // ListAliases pages through the account's aliases, by name; ListAliasesByKeyId one key's.
    let mut names = Vec::new();
    let mut token = String::new();
    loop {
        let page = keys
            .list_aliases(ListAliasesRequest {
                page_size: 1,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.aliases.len() <= 1);
        for al in &page.aliases {
            assert_eq!(
                al.alias_arn,
                format!("acs:kms:local:{ACCOUNT}:{}", al.alias_name)
            );
        }
        names.extend(
            page.aliases
                .into_iter()
                .map(|al| (al.alias_name, al.key_id)),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(
        names,
        vec![
            ("alias/app".to_string(), a.key_id.clone()),
            ("alias/zeta".to_string(), b.key_id.clone())
        ]
    );
    let by_key = keys
        .list_aliases_by_key_id(ListAliasesByKeyIdRequest {
            key_id: "alias/zeta".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_key.aliases.len(), 1);
    assert_eq!(by_key.aliases[0].key_id, b.key_id);

    // TagResources over 50 keys at once; all-or-nothing when one key is bad.
    let mut fifty = vec![a.key_id.clone(), b.key_id.clone()];
    while fifty.len() < 50 {
        fifty.push(env.sw_key().await.key_id);
    }
    keys.tag_resources(TagResourcesRequest {
        key_ids: fifty.clone(),
        tags: vec![tag("batch", "1")],
    })
    .await
    .unwrap();
    for id in [&fifty[0], &fifty[49]] {
        let tags = keys
            .list_resource_tags(ListResourceTagsRequest { key_id: id.clone() })
            .await
            .unwrap()
            .into_inner()
            .tags;
        assert_eq!(tags, vec![tag("batch", "1")]);
    }
    let mut with_missing = fifty[..49].to_vec();
    with_missing.push("key-0123456789abcdef0123456789abcdef".into());
    refused(
        keys.tag_resources(TagResourcesRequest {
            key_ids: with_missing,
            tags: vec![tag("batch", "2")],
        })
        .await,
        Code::NotFound,
        "Forbidden.KeyNotFound",
    );
    let default = env.create(CreateKeyRequest::default()).await.unwrap();
    refused(
        keys.tag_resources(TagResourcesRequest {
            key_ids: vec![a.key_id.clone(), default.key_id.clone()],
            tags: vec![tag("batch", "3")],
        })
        .await,
        Code::InvalidArgument,
        "InvalidParameter.Tags",
    );
    let crowded = env
        .create(CreateKeyRequest {
            kms_instance_id: sw.clone(),
            tags: (0..20).map(|i| tag(&format!("k{i}"), "v")).collect(),
            ..Default::default()
        })
        .await
        .unwrap();
    refused(
        keys.tag_resources(TagResourcesRequest {
            key_ids: vec![a.key_id.clone(), crowded.key_id.clone()],
            tags: vec![tag("batch", "4")],
        })
        .await,
        Code::InvalidArgument,
        "InvalidParameter.Tags",
    );
    let doomed = env.sw_key().await;
    keys.schedule_key_deletion(ScheduleKeyDeletionRequest {
        key_id: doomed.key_id.clone(),
        pending_window_in_days: 7,
    })
    .await
    .unwrap();
    refused(
        keys.tag_resources(TagResourcesRequest {
            key_ids: vec![a.key_id.clone(), doomed.key_id.clone()],
            tags: vec![tag("batch", "5")],
        })
        .await,
        Code::FailedPrecondition,
        "Rejected.PendingDeletion",
    );
    for id in &fifty {
        let tags = env.describe(id).await.unwrap().tags;
        assert_eq!(
            tags,
            vec![tag("batch", "1")],
            "{id} changed by a refused call"
        );
    }

    // Replace a value, add a tag, untag.
    keys.tag_resources(TagResourcesRequest {
        key_ids: vec![a.key_id.clone(), "alias/zeta".into()],
        tags: vec![tag("batch", "9"), tag("env", "prod")],
    })
    .await
    .unwrap();
    assert_eq!(
        env.describe(&b.key_id).await.unwrap().tags,
        vec![tag("batch", "9"), tag("env", "prod")]
    );
    keys.untag_resources(UntagResourcesRequest {
        key_ids: vec![b.key_id.clone()],
        tag_keys: vec!["batch".into(), "absent".into()],
    })
    .await
    .unwrap();
    assert_eq!(
        env.describe(&b.key_id).await.unwrap().tags,
        vec![tag("env", "prod")]
    );
    keys.disable_key(DisableKeyRequest {
        key_id: b.key_id.clone(),
    })
    .await
    .unwrap();

    // ListKeys filters, combined with AND.
    let filtered = |f: ListKeysFilter| ListKeysRequest {
        filters: Some(f),
        page_size: 7,
        ..Default::default()
    };
    let by_tag = env
        .all_key_ids(filtered(ListKeysFilter {
            tag_key: Some("batch".into()),
            ..Default::default()
        }))
        .await;
    assert_eq!(by_tag.len(), 49, "b lost its batch tag");
    let nine = env
        .all_key_ids(filtered(ListKeysFilter {
            tag_key: Some("batch".into()),
            tag_value: Some("9".into()),
            ..Default::default()
        }))
        .await;
    assert_eq!(nine, vec![a.key_id.clone()]);
    let prod_disabled = env
        .all_key_ids(filtered(ListKeysFilter {
            tag_value: Some("prod".into()),
            key_state: Some(KeyState::Disabled as i32),
            ..Default::default()
        }))
        .await;
    assert_eq!(prod_disabled, vec![b.key_id.clone()]);
    let by_alias = env
        .all_key_ids(filtered(ListKeysFilter {
            alias: Some("alias/app".into()),
            ..Default::default()
        }))
        .await;
    assert_eq!(by_alias, vec![a.key_id.clone()]);
    let enabled_sw_aes = env
        .all_key_ids(filtered(ListKeysFilter {
            key_state: Some(KeyState::Enabled as i32),
            key_spec: Some(KeySpec::AliyunAes256 as i32),
            key_usage: Some(KeyUsage::EncryptDecrypt as i32),
            protection_level: Some(ProtectionLevel::Software as i32),
            ..Default::default()
        }))
        .await;
    // 52 keys in the instance, one default key; b is Disabled, doomed pending deletion.
    assert_eq!(enabled_sw_aes.len(), 52 + 1 - 2);
    let hsm = env
        .all_key_ids(filtered(ListKeysFilter {
            protection_level: Some(ProtectionLevel::Hsm as i32),
            ..Default::default()
        }))
        .await;
    assert!(hsm.is_empty());
    let mut all = env
        .all_key_ids(ListKeysRequest {
            page_size: 7,
            ..Default::default()
        })
        .await;
    let total = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), total, "no key twice across pages");
    assert_eq!(total, 53);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_and_rotation_on_the_test_clock() {
    let env = env().await;
    let mut keys = env.keys();
    let key = env
        .create(CreateKeyRequest {
            kms_instance_id: env.software.kms_instance_id.clone(),
            alias: "alias/rotating".into(),
            rotation_interval: days(7),
            ..Default::default()
        })
        .await
        .unwrap();
    let paused = env
        .create(CreateKeyRequest {
            kms_instance_id: env.software.kms_instance_id.clone(),
            rotation_interval: days(7),
            ..Default::default()
        })
        .await
        .unwrap();
    keys.disable_key(DisableKeyRequest {
        key_id: paused.key_id.clone(),
    })
    .await
    .unwrap();
    let v1 = key.primary_key_version_id.clone();
    let old = env
        .encrypt("alias/rotating", b"before any rotation")
        .await
        .unwrap();
    assert_eq!(old.key_version_id, v1);

    // A manual version is primary at once and counts as a rotation.
    let v2 = keys
        .create_key_version(CreateKeyVersionRequest {
            key_id: "alias/rotating".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .key_version
        .unwrap();
    assert!(v2.is_primary);
    assert_eq!(v2.key_id, key.key_id);
    let after_manual = env.describe(&key.key_id).await.unwrap();
    assert_eq!(after_manual.primary_key_version_id, v2.key_version_id);
    let manual_at = after_manual.last_rotation_date.unwrap();
    assert_eq!(
        after_manual.next_rotation_date.unwrap().seconds,
        manual_at.seconds + 7 * 86_400
    );
    let described = keys
        .describe_key_version(DescribeKeyVersionRequest {
            key_id: key.key_id.clone(),
            key_version_id: v1.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .key_version
        .unwrap();
    assert!(!described.is_primary);
    refused(
        keys.describe_key_version(DescribeKeyVersionRequest {
            key_id: key.key_id.clone(),
            key_version_id: paused.primary_key_version_id.clone(),
        })
        .await,
        Code::NotFound,
        "Forbidden.KeyVersionNotFound",
    );
    let mid = eventually(SETTLE, "encryption under the manual version", || async {
        let r = env
            .encrypt(&key.key_id, b"after the manual version")
            .await
            .unwrap();
        (r.key_version_id == v2.key_version_id).then_some(r)
    })
    .await
    .unwrap();

    // The scheduler rotates once the interval passes by the control plane's clock.
    env.stack.advance_clock(8 * DAY).unwrap();
    let rotated = eventually(SETTLE, "an automatic rotation", || async {
        let k = env.describe(&key.key_id).await.unwrap();
        (k.primary_key_version_id != v2.key_version_id).then_some(k)
    })
    .await
    .unwrap();
    let last = rotated.last_rotation_date.unwrap();
    assert!(
        last.seconds >= manual_at.seconds + 8 * 86_400 - 60,
        "{last:?}"
    );
    assert_eq!(
        rotated.next_rotation_date.unwrap().seconds,
        last.seconds + 7 * 86_400
    );
    assert_eq!(rotated.rotation_status, RotationStatus::Enabled as i32);
    let v3 = rotated.primary_key_version_id.clone();

    // Versions, oldest first, page by page.
    let mut listed = Vec::new();
    let mut token = String::new();
    loop {
        let page = keys
            .list_key_versions(ListKeyVersionsRequest {
                key_id: key.key_id.clone(),
                page_size: 1,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        listed.extend(page.key_versions);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let ids: Vec<&str> = listed.iter().map(|v| v.key_version_id.as_str()).collect();
    assert_eq!(
        ids,
        vec![v1.as_str(), v2.key_version_id.as_str(), v3.as_str()]
    );
    assert_eq!(
        listed.iter().map(|v| v.is_primary).collect::<Vec<_>>(),
        vec![false, false, true]
    );

    // Old ciphertexts still decrypt; new ones use the new primary.
    for (blob, version) in [(&old, &v1), (&mid, &v2.key_version_id)] {
        let opened = env.decrypt(&blob.ciphertext_blob).await.unwrap();
        assert_eq!(&opened.key_version_id, version);
    }
    assert_eq!(
        env.decrypt(&old.ciphertext_blob).await.unwrap().plaintext,
        b"before any rotation"
    );
    eventually(SETTLE, "encryption under the rotated version", || async {
        let r = env.encrypt("alias/rotating", b"after").await.unwrap();
        (r.key_version_id == v3).then_some(())
    })
    .await
    .unwrap();

    // A disabled key does not rotate, however late it is.
    let still = env.describe(&paused.key_id).await.unwrap();
    assert_eq!(still.rotation_status, RotationStatus::Suspended as i32);
    assert_eq!(still.primary_key_version_id, paused.primary_key_version_id);
    // Enabled again, it catches up.
    keys.enable_key(EnableKeyRequest {
        key_id: paused.key_id.clone(),
    })
    .await
    .unwrap();
    eventually(SETTLE, "the re-enabled key's rotation", || async {
        let k = env.describe(&paused.key_id).await.unwrap();
        (k.primary_key_version_id != paused.primary_key_version_id).then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_at_the_end_of_the_window_leaves_nothing_behind() {
    let mut env = env().await;
    let sw = env.software.kms_instance_id.clone();
    let mut keys = env.keys();
    let doomed = env
        .create(CreateKeyRequest {
            kms_instance_id: sw.clone(),
            alias: "alias/doomed".into(),
            tags: vec![tag("fate", "sealed")],
            ..Default::default()
        })
        .await
        .unwrap();
    let v2 = keys
        .create_key_version(CreateKeyVersionRequest {
            key_id: doomed.key_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .key_version
        .unwrap();
    let kept = env.sw_key().await;
    let blob = env
        .encrypt("alias/doomed", b"soon unreadable")
        .await
        .unwrap();
    assert_eq!(env.instance(&sw, ALICE).await.unwrap().key_count, 2);

    // Protected keys are not scheduled; cancelled deletions do not happen.
    keys.set_deletion_protection(SetDeletionProtectionRequest {
        key_id: doomed.key_id.clone(),
        enable_deletion_protection: true,
        deletion_protection_description: "prod data".into(),
    })
    .await
    .unwrap();
    refused(
        keys.schedule_key_deletion(ScheduleKeyDeletionRequest {
            key_id: doomed.key_id.clone(),
            pending_window_in_days: 7,
        })
        .await,
        Code::FailedPrecondition,
        "Forbidden.DeletionProtection",
    );
    keys.set_deletion_protection(SetDeletionProtectionRequest {
        key_id: doomed.key_id.clone(),
        enable_deletion_protection: false,
        deletion_protection_description: String::new(),
    })
    .await
    .unwrap();
    for k in [&doomed, &kept] {
        let scheduled = keys
            .schedule_key_deletion(ScheduleKeyDeletionRequest {
                key_id: k.key_id.clone(),
                pending_window_in_days: 7,
            })
            .await
            .unwrap()
            .into_inner()
            .key_metadata
            .unwrap();
        assert_eq!(scheduled.key_state, KeyState::PendingDeletion as i32);
        let in_a_week = scheduled.creation_date.unwrap().seconds + 7 * 86_400;
        assert!((scheduled.delete_date.unwrap().seconds - in_a_week).abs() < 120);
    }
    let cancelled = keys
        .cancel_key_deletion(CancelKeyDeletionRequest {
            key_id: kept.key_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap();
    assert_eq!(cancelled.key_state, KeyState::Enabled as i32);
    assert_eq!(cancelled.delete_date, None);

    // Six days on, still there; eight days on, gone.
    env.stack.advance_clock(6 * DAY).unwrap();
    let watch_from = env
        .stack
        .directory(Some(DATA_PRINCIPAL))
        .unwrap()
        .get_key(GetKeyRequest {
            key_id: kept.key_id.clone(),
            principal: ALICE.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .revision;
    let mut events = env
        .stack
        .directory(Some(DATA_PRINCIPAL))
        .unwrap()
        .watch_keys(WatchKeysRequest {
            from_revision: watch_from,
        })
        .await
        .unwrap()
        .into_inner();
    env.describe(&doomed.key_id).await.unwrap();
    env.stack.advance_clock(2 * DAY).unwrap();
    eventually(SETTLE, "the reaper", || async {
        match env.describe(&doomed.key_id).await {
            Err(st) if st.code() == Code::NotFound => Some(()),
            _ => None,
        }
    })
    .await
    .unwrap();
    let deleted = tokio::time::timeout(SETTLE, events.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(deleted.kind, KeyEventKind::Deleted as i32);
    assert_eq!(deleted.key_id, doomed.key_id);
    assert_eq!(deleted.revision, watch_from + 1);

    // Gone by id, alias and ARN, from every listing, from the directory; the alias is free.
    for name in [doomed.key_id.as_str(), doomed.arn.as_str()] {
        refused(
            env.describe(name).await,
            Code::NotFound,
            "Forbidden.KeyNotFound",
        );
    }
    refused(
        env.describe("alias/doomed").await,
        Code::NotFound,
        "Forbidden.AliasNotFound",
    );
    refused(
        keys.list_resource_tags(ListResourceTagsRequest {
            key_id: doomed.key_id.clone(),
        })
        .await,
        Code::NotFound,
        "Forbidden.KeyNotFound",
    );
    refused(
        keys.describe_key_version(DescribeKeyVersionRequest {
            key_id: doomed.key_id.clone(),
            key_version_id: v2.key_version_id.clone(),
        })
        .await,
        Code::NotFound,
        "Forbidden.KeyNotFound",
    );
    let listed = env.all_key_ids(ListKeysRequest::default()).await;
    assert_eq!(listed, vec![kept.key_id.clone()]);
    for filter in [
        ListKeysFilter {
            tag_key: Some("fate".into()),
            ..Default::default()
        },
        ListKeysFilter {
            alias: Some("alias/doomed".into()),
            ..Default::default()
        },
        ListKeysFilter {
            key_state: Some(KeyState::PendingDeletion as i32),
            ..Default::default()
        },
    ] {
        let ids = env
            .all_key_ids(ListKeysRequest {
                filters: Some(filter.clone()),
                ..Default::default()
            })
            .await;
        assert!(ids.is_empty(), "{filter:?} still lists {ids:?}");
    }
    assert!(env.aliases().await.is_empty(), "the alias outlived its key");
    refused(
        env.stack
            .directory(Some(DATA_PRINCIPAL))
            .unwrap()
            .get_key(GetKeyRequest {
                key_version_id: v2.key_version_id.clone(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
        "Forbidden.KeyNotFound",
    );
    assert_eq!(env.instance(&sw, ALICE).await.unwrap().key_count, 1);
    let err = eventually(SETTLE, "decryption refused", || async {
        env.decrypt(&blob.ciphertext_blob).await.err()
    })
    .await
    .unwrap();
    // The data plane answers a blob of a version that no longer exists as an invalid one.
    assert!(
        matches!(
            (err.code(), reason(&err).as_str()),
            (Code::InvalidArgument, "InvalidCiphertext") | (Code::NotFound, _)
        ),
        "{err:?}"
    );
    keys.create_alias(CreateAliasRequest {
        alias_name: "alias/doomed".into(),
        key_id: kept.key_id.clone(),
    })
    .await
    .unwrap();
    keys.delete_alias(DeleteAliasRequest {
        alias_name: "alias/doomed".into(),
    })
    .await
    .unwrap();

    // With the planes stopped, nothing in the store names the key or its versions any more,
    // except the change log, whose last word on it is its deletion.
    env.stack.stop().await.unwrap();
    let entries = env.stack.store_entries().unwrap();
    assert!(entries.len() > 5, "the scan reads the store");
    let mentions = |needle: &str| -> Vec<String> {
        entries
            .iter()
            .filter(|(k, v)| {
                kms_e2e::contains(k, needle.as_bytes()) || kms_e2e::contains(v, needle.as_bytes())
            })
            .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
            .collect()
    };
    let about_key = mentions(&doomed.key_id);
    assert!(
        about_key.iter().all(|k| k.starts_with("e/")),
        "left behind: {about_key:?}"
    );
    for needle in [
        doomed.primary_key_version_id.as_str(),
        v2.key_version_id.as_str(),
        "alias/doomed",
        "sealed",
    ] {
        assert!(
            mentions(needle).is_empty(),
            "{needle} left behind: {:?}",
            mentions(needle)
        );
    }
    assert!(
        !mentions(&kept.key_id).is_empty(),
        "the kept key is still there"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_keys_replays_follows_and_resyncs() {
    let env = env().await;
    let mut keys = env.keys();
    let key = env.sw_key().await;
    let directory = || env.stack.directory(Some(DATA_PRINCIPAL)).unwrap();
    let watch = |from: u64| async move {
        directory()
            .watch_keys(WatchKeysRequest {
                from_revision: from,
            })
            .await
            .unwrap()
            .into_inner()
    };
    async fn next(stream: &mut tonic::Streaming<KeyEvent>) -> KeyEvent {
        tokio::time::timeout(SETTLE, stream.message())
            .await
            .expect("no event in time")
            .unwrap()
            .expect("the stream ended")
    }

    // Only the data plane may watch.
    refused(
        env.stack
            .directory(Some(ALICE))
            .unwrap()
            .watch_keys(WatchKeysRequest { from_revision: 0 })
            .await,
        Code::PermissionDenied,
        "Forbidden.NoPermission",
    );

    // GetKey tells the revision; a change after it arrives as the next event.
    let revision = directory()
        .get_key(GetKeyRequest {
            key_id: key.key_id.clone(),
            principal: ALICE.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .revision;
    assert!(revision > 0);
    let mut live = watch(revision).await;
    keys.disable_key(DisableKeyRequest {
        key_id: key.key_id.clone(),
    })
    .await
    .unwrap();
    let changed = next(&mut live).await;
    assert_eq!(
        (changed.revision, changed.kind, changed.key_id.as_str()),
        (
            revision + 1,
            KeyEventKind::Changed as i32,
            key.key_id.as_str()
        )
    );

    // Changes while nobody watches are replayed, in order, to a client resuming after them.
    let other = env.sw_key().await;
    keys.create_alias(CreateAliasRequest {
        alias_name: "alias/w".into(),
        key_id: key.key_id.clone(),
    })
    .await
    .unwrap();
    let mut resumed = watch(revision + 1).await;
    let replay = [next(&mut resumed).await, next(&mut resumed).await];
    assert_eq!(
        replay
            .iter()
            .map(|e| (e.revision, e.key_id.as_str()))
            .collect::<Vec<_>>(),
        vec![
            (revision + 2, other.key_id.as_str()),
            (revision + 3, key.key_id.as_str())
        ]
    );
    // The first stream saw them live too.
    assert_eq!(next(&mut live).await.revision, revision + 2);
    assert_eq!(next(&mut live).await.revision, revision + 3);

    // Revision 0, or one the control plane never reached: resync first, then live events.
    let mut current = revision + 3;
    for from in [0, revision + 1000] {
        let mut fresh = watch(from).await;
        let first = next(&mut fresh).await;
        assert_eq!(
            (first.kind, first.revision, first.key_id.as_str()),
            (KeyEventKind::Resync as i32, current, "")
        );
        current += 1;
        keys.update_key_description(UpdateKeyDescriptionRequest {
            key_id: other.key_id.clone(),
            description: format!("from {from}"),
        })
        .await
        .unwrap();
        let after = next(&mut fresh).await;
        assert_eq!(after.kind, KeyEventKind::Changed as i32);
        assert_eq!(
            (after.revision, after.key_id.as_str()),
            (current, other.key_id.as_str())
        );
    }
    // A refused change makes no event: the next one is the next change.
    refused(
        keys.cancel_key_deletion(CancelKeyDeletionRequest {
            key_id: other.key_id.clone(),
        })
        .await,
        Code::FailedPrecondition,
        "Rejected.Enabled",
    );
    let mut tail = watch(revision + 5).await;
    keys.enable_key(EnableKeyRequest {
        key_id: key.key_id.clone(),
    })
    .await
    .unwrap();
    let e = next(&mut tail).await;
    assert_eq!(
        (e.revision, e.key_id.as_str()),
        (revision + 6, key.key_id.as_str())
    );
}

// Every key spec, in software and hardware instances.

const ALL_SPECS: [KeySpec; 8] = [
    KeySpec::AliyunAes256,
    KeySpec::AliyunAes192,
    KeySpec::AliyunAes128,
    KeySpec::Rsa2048,
    KeySpec::Rsa3072,
    KeySpec::Rsa4096,
    KeySpec::EcP256,
    KeySpec::EcP256k,
];

fn is_symmetric(spec: KeySpec) -> bool {
    matches!(
        spec,
        KeySpec::AliyunAes256 | KeySpec::AliyunAes192 | KeySpec::AliyunAes128
    )
}

fn default_usage(spec: KeySpec) -> KeyUsage {
    match spec {
        KeySpec::EcP256 | KeySpec::EcP256k => KeyUsage::SignVerify,
        _ => KeyUsage::EncryptDecrypt,
    }
}

async fn new_instance(stack: &Stack, kind: InstanceType) -> String {
    stack
        .instances(Some(OPERATOR))
        .unwrap()
        .create_kms_instance(CreateKmsInstanceRequest {
            instance_type: kind as i32,
            owner_account_id: ACCOUNT.into(),
            key_quota: 100,
            access_management_quota: Some(0),
        })
        .await
        .unwrap()
        .into_inner()
        .kms_instance
        .unwrap()
        .kms_instance_id
}

/// Creates a key of `spec` (and `usage`, if given) in `instance`, makes a second version by
/// hand, and checks what the control plane says about both.
async fn key_with_two_versions(
    stack: &Stack,
    instance: &str,
    spec: KeySpec,
    usage: Option<KeyUsage>,
    protection: ProtectionLevel,
) -> KeyMetadata {
    let mut keys = stack.keys(Some(ALICE)).unwrap();
    let what = format!("{spec:?} {usage:?} at {protection:?}");
    let key = keys
        .create_key(CreateKeyRequest {
            kms_instance_id: instance.into(),
            key_spec: spec as i32,
            key_usage: usage.map_or(0, |u| u as i32),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{what}: {e:?}"))
        .into_inner()
        .key_metadata
        .unwrap();
    assert_eq!(key.key_state, KeyState::Enabled as i32, "{what}");
    assert_eq!(key.protection_level, protection as i32, "{what}");
    assert_eq!(
        key.key_usage,
        usage.unwrap_or(default_usage(spec)) as i32,
        "{what}"
    );
    let version = keys
        .create_key_version(CreateKeyVersionRequest {
            key_id: key.key_id.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("{what}: second version: {e:?}"))
        .into_inner()
        .key_version
        .unwrap();
    assert!(version.is_primary, "{what}");
    let versions = keys
        .list_key_versions(ListKeyVersionsRequest {
            key_id: key.key_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .key_versions;
    assert_eq!(versions.len(), 2, "{what}");
    // The directory hands the data plane sealed material, and public keys of asymmetric keys.
    let entry = stack
        .directory(Some(kms_e2e::DATA_PRINCIPAL))
        .unwrap()
        .get_key(GetKeyRequest {
            key_id: key.key_id.clone(),
            principal: ALICE.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .key
        .unwrap();
    assert_eq!(entry.versions.len(), 2, "{what}");
    for v in &entry.versions {
        assert!(!v.wrapped_material.is_empty(), "{what}");
        assert_eq!(v.public_key_der.is_empty(), is_symmetric(spec), "{what}");
    }
    key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn software_instance_keys_of_every_offered_spec() {
    let stack = Stack::start().await.unwrap();
    let sw = new_instance(&stack, InstanceType::Software).await;
    let mut keys = stack.keys(Some(ALICE)).unwrap();
    for (spec, usage) in [
        (KeySpec::AliyunAes256, None),
        (KeySpec::Rsa2048, None),
        (KeySpec::Rsa2048, Some(KeyUsage::SignVerify)),
        (KeySpec::Rsa3072, Some(KeyUsage::SignVerify)),
        (KeySpec::EcP256, None),
        (KeySpec::EcP256k, None),
    ] {
        let key = key_with_two_versions(&stack, &sw, spec, usage, ProtectionLevel::Software).await;
        if is_symmetric(spec) {
            assert_eq!(key.rotation_status, RotationStatus::Enabled as i32);
            continue;
        }
        // Asymmetric keys never rotate automatically.
        assert_eq!(key.rotation_status, RotationStatus::Disabled as i32);
        assert_eq!(key.rotation_interval, None);
        assert_eq!(key.next_rotation_date, None);
        let err = keys
            .update_rotation_policy(UpdateRotationPolicyRequest {
                key_id: key.key_id.clone(),
                enable_automatic_rotation: Some(true),
                rotation_interval: None,
            })
            .await
            .unwrap_err();
        assert_eq!(
            (err.code(), reason(&err).as_str()),
            (Code::InvalidArgument, "InvalidParameter.RotationInterval")
        );
    }
    // The other three specs are for hardware instances; the refusal says what this one offers.
    for spec in [
        KeySpec::AliyunAes192,
        KeySpec::AliyunAes128,
        KeySpec::Rsa4096,
    ] {
        let err = keys
            .create_key(CreateKeyRequest {
                kms_instance_id: sw.clone(),
                key_spec: spec as i32,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            (err.code(), reason(&err).as_str()),
            (Code::InvalidArgument, "InvalidParameter.KeySpec"),
            "{spec:?}"
        );
        assert!(
            err.message().ends_with(
                "it offers Aliyun_AES_256, RSA_2048, RSA_3072, EC_P256, EC_P256K \
                 (a HARDWARE instance offers all eight)"
            ),
            "{}",
            err.message()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hardware_instance_keys_of_all_eight_specs() {
    let stack = Stack::start().await.unwrap();
    let hw = new_instance(&stack, InstanceType::Hardware).await;
    let mut keys = stack.keys(Some(ALICE)).unwrap();
    for spec in ALL_SPECS {
        let key = key_with_two_versions(&stack, &hw, spec, None, ProtectionLevel::Hsm).await;
        if !is_symmetric(spec) {
            assert_eq!(key.rotation_status, RotationStatus::Disabled as i32);
            continue;
        }
        // Symmetric keys in a hardware instance rotate only when asked to.
        assert_eq!(key.rotation_status, RotationStatus::Disabled as i32);
        assert_eq!(
            key.rotation_interval.as_ref().map(|d| d.seconds),
            Some(365 * 86_400)
        );
        let on = keys
            .update_rotation_policy(UpdateRotationPolicyRequest {
                key_id: key.key_id.clone(),
                enable_automatic_rotation: Some(true),
                rotation_interval: None,
            })
            .await
            .unwrap()
            .into_inner()
            .key_metadata
            .unwrap();
        assert_eq!(on.rotation_status, RotationStatus::Enabled as i32);
        assert!(on.next_rotation_date.is_some());
    }
    // RSA keys in a hardware instance may sign too.
    key_with_two_versions(
        &stack,
        &hw,
        KeySpec::Rsa2048,
        Some(KeyUsage::SignVerify),
        ProtectionLevel::Hsm,
    )
    .await;
}
