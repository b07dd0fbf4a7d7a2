//! Quotas and uniqueness under concurrent writes, through the real binaries: many calls race
//! for the last places of an instance's access-management quota (grants by key policy and
//! shares together) and of its key quota, and for one alias name with CreateAlias and
//! UpdateAlias; each quota holds exactly, the alias names one key, and the store agrees with
//! itself afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use kms_e2e::{ACCOUNT, ALICE, OPERATOR, Stack, consistency, reason};
use kms_proto::kms::v1::*;
use tokio::task::JoinSet;
use tonic::Code;

/// A policy granting every principal of `account` `kms:Encrypt`, beside the owner's.
fn granting(account: &str) -> String {
    serde_json::json!({
        "Version": "1",
        "Statement": [
            {"Effect": "Allow", "Principal": {"RAM": [format!("acs:ram::{ACCOUNT}:*")]},
             "Action": ["kms:*"], "Resource": ["*"]},
            {"Effect": "Allow", "Principal": {"RAM": [format!("acs:ram::{account}:*")]},
             "Action": ["kms:Encrypt"], "Resource": ["*"]},
        ],
    })
    .to_string()
}

async fn instance(stack: &Stack, key_quota: i32, access_management_quota: i32) -> String {
    stack
        .instances(Some(OPERATOR))
        .unwrap()
        .create_kms_instance(CreateKmsInstanceRequest {
            instance_type: InstanceType::Software as i32,
            owner_account_id: ACCOUNT.into(),
            key_quota,
            access_management_quota: Some(access_management_quota),
        })
        .await
        .unwrap()
        .into_inner()
        .kms_instance
        .unwrap()
        .kms_instance_id
}

async fn key_in(stack: &Stack, instance: &str) -> String {
    stack
        .keys(Some(ALICE))
        .unwrap()
        .create_key(CreateKeyRequest {
            kms_instance_id: instance.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap()
        .key_id
}

/// Whether a refusal is the quota's.
fn over_quota(status: &tonic::Status) -> bool {
    status.code() == Code::ResourceExhausted && reason(status) == "Rejected.LimitExceeded"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_grants_shares_keys_and_aliases_keep_their_quotas() {
    let mut stack = Stack::start().await.unwrap();

    // The access-management quota: 20 grants and 6 shares, each of another account, race
    // for 5 places.
    const PLACES: usize = 5;
    let inst = instance(&stack, 100, PLACES as i32).await;
    let mut keys = Vec::new();
    for _ in 0..20 {
        keys.push(key_in(&stack, &inst).await);
    }
    let mut calls = JoinSet::new();
    for (i, key) in keys.iter().enumerate() {
        let mut client = stack.keys(Some(ALICE)).unwrap();
        let (key, account) = (
            key.clone(),
            format!("{}", 2_000_000_000_000_000u64 + i as u64),
        );
        calls.spawn(async move {
            client
                .set_key_policy(SetKeyPolicyRequest {
                    key_id: key,
                    policy: granting(&account),
                })
                .await
                .map(|_| account)
        });
    }
    for i in 0..6 {
        let mut client = stack.instances(Some(OPERATOR)).unwrap();
        let (inst, account) = (inst.clone(), format!("{}", 3_000_000_000_000_000u64 + i));
        calls.spawn(async move {
            client
                .share_kms_instance(ShareKmsInstanceRequest {
                    kms_instance_id: inst,
                    account_id: account.clone(),
                })
                .await
                .map(|_| account)
        });
    }
    let mut won = BTreeSet::new();
    let mut refused = 0;
    while let Some(done) = calls.join_next().await {
        match done.unwrap() {
            Ok(account) => {
                won.insert(account);
            }
            Err(status) if over_quota(&status) => refused += 1,
            Err(status) => panic!("a racing grant or share failed otherwise: {status:?}"),
        }
    }
    // What the instance holds now: the accounts shared with and those the policies grant.
    let shared = stack
        .instances(Some(OPERATOR))
        .unwrap()
        .get_kms_instance(GetKmsInstanceRequest {
            kms_instance_id: inst.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .kms_instance
        .unwrap()
        .shared_with_account_ids;
    let mut in_use: BTreeSet<String> = shared.into_iter().collect();
    for key in &keys {
        let policy = stack
            .keys(Some(ALICE))
            .unwrap()
            .get_key_policy(GetKeyPolicyRequest {
                key_id: key.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .policy;
        for uid in ["2", "3"] {
            if let Some(at) = policy.find(&format!("acs:ram::{uid}")) {
                let start = at + "acs:ram::".len();
                in_use.insert(policy[start..start + 16].to_string());
            }
        }
    }
    eprintln!(
        "access quota race: {} grants and shares won, {refused} refused, {} accounts in use",
        won.len(),
        in_use.len()
    );
    assert_eq!(won.len(), PLACES, "winners: {won:?}");
    assert_eq!(in_use, won, "the accounts in use are the winners'");
    assert_eq!(refused, 26 - PLACES);

    // The key quota: 24 CreateKey calls race for 8 places.
    const KEY_PLACES: usize = 8;
    let small = instance(&stack, KEY_PLACES as i32, 0).await;
    let mut calls = JoinSet::new();
    for _ in 0..24 {
        let mut client = stack.keys(Some(ALICE)).unwrap();
        let small = small.clone();
        calls.spawn(async move {
            client
                .create_key(CreateKeyRequest {
                    kms_instance_id: small,
                    ..Default::default()
                })
                .await
        });
    }
    let (mut created, mut full) = (0, 0);
    while let Some(done) = calls.join_next().await {
        match done.unwrap() {
            Ok(_) => created += 1,
            Err(status) if over_quota(&status) => full += 1,
            Err(status) => panic!("a racing CreateKey failed otherwise: {status:?}"),
        }
    }
    let held = stack
        .instances(Some(OPERATOR))
        .unwrap()
        .get_kms_instance(GetKmsInstanceRequest {
            kms_instance_id: small.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .kms_instance
        .unwrap();
    let listed = stack
        .keys(Some(ALICE))
        .unwrap()
        .list_keys(ListKeysRequest {
            kms_instance_id: small.clone(),
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .keys
        .len();
    eprintln!(
        "key quota race: {created} keys created, {full} refused; the instance counts {}, lists {listed}",
        held.key_count
    );
    assert_eq!((created, full), (KEY_PLACES, 24 - KEY_PLACES));
    assert_eq!(usize::try_from(held.key_count).unwrap(), KEY_PLACES);
    assert_eq!(listed, KEY_PLACES);

    // One alias name: CreateAlias and UpdateAlias race for it on ten keys.
    const ALIAS: &str = "alias/contended";
    let mut calls = JoinSet::new();
    for (i, key) in keys.iter().take(10).enumerate() {
        let mut client = stack.keys(Some(ALICE)).unwrap();
        let key = key.clone();
        calls.spawn(async move {
            let req = (ALIAS.to_string(), key.clone());
            let answer = if i % 2 == 0 {
                client
                    .create_alias(CreateAliasRequest {
                        alias_name: req.0,
                        key_id: req.1,
                    })
                    .await
                    .map(|_| ())
            } else {
                client
                    .update_alias(UpdateAliasRequest {
                        alias_name: req.0,
                        key_id: req.1,
                    })
                    .await
                    .map(|_| ())
            };
            (i % 2 == 0, answer)
        });
    }
    let (mut created, mut updated) = (0, 0);
    while let Some(done) = calls.join_next().await {
        match done.unwrap() {
            (true, Ok(())) => created += 1,
            (false, Ok(())) => updated += 1,
            (true, Err(s)) if s.code() == Code::AlreadyExists => {}
            (false, Err(s)) if s.code() == Code::NotFound => {}
            (create, Err(s)) => panic!("a racing alias call (create: {create}) failed: {s:?}"),
        }
    }
    let aliases = stack
        .keys(Some(ALICE))
        .unwrap()
        .list_aliases(ListAliasesRequest {
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .aliases;
    let named: Vec<&Alias> = aliases.iter().filter(|a| a.alias_name == ALIAS).collect();
    let mut holders = 0;
    for key in keys.iter().take(10) {
        let meta = stack
            .keys(Some(ALICE))
            .unwrap()
            .describe_key(DescribeKeyRequest {
                key_id: key.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .key_metadata
            .unwrap();
        holders += meta.aliases.iter().filter(|a| *a == ALIAS).count();
    }
    eprintln!(
        "alias race: {created} CreateAlias and {updated} UpdateAlias succeeded; {} listed, {holders} keys hold it",
        named.len()
    );
    assert_eq!(created, 1, "exactly one CreateAlias makes the alias");
    assert_eq!(named.len(), 1);
    assert_eq!(holders, 1);

    stack.stop().await.unwrap();
    consistency::check_store(&stack.store_entries().unwrap()).unwrap();
}
