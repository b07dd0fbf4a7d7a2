//! Authorization findings, each through the real binaries: aliases cannot be redirected or
//! deleted by a principal the key's policy refuses, nor taken over through a shared instance;
//! `ExportDataKey` opens only data keys; loose policy documents are refused; listings hide
//! keys the caller may not describe; both planes agree on a shared instance's owner; account
//! ids have one spelling.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use kms_e2e::{ACCOUNT, ADMIN, ALICE, APP_USER, OPERATOR, Stack, reason};
use kms_proto::kms::v1::*;
use tonic::Code;

/// A principal of Alice's account that no custom policy below names.
const MEMBER: &str = "acs:ram::1234567890123456:user/mallory";
/// The account that owns the shared instance, and its root.
const SHARER: &str = "5555555555555555";
const SHARER_ROOT: &str = "acs:ram::5555555555555555:root";

fn allow(statements: &[(&str, &[&str])]) -> String {
    serde_json::json!({
        "Version": "1",
        "Statement": statements.iter().map(|(who, actions)| serde_json::json!({
            "Effect": "Allow",
            "Principal": {"RAM": [who]},
            "Action": actions,
            "Resource": ["*"],
        })).collect::<Vec<_>>(),
    })
    .to_string()
}

fn code_reason<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> (Code, String) {
    let e = r.expect_err("the call was allowed");
    (e.code(), reason(&e))
}

fn denied() -> (Code, String) {
    (Code::PermissionDenied, "Forbidden.NoPermission".into())
}

async fn instance(stack: &Stack, owner: &str, share_with: Option<&str>) -> String {
    stack.software_instance(owner, share_with).await.unwrap()
}

async fn create_key(stack: &Stack, who: &str, req: CreateKeyRequest) -> String {
    stack
        .keys(Some(who))
        .unwrap()
        .create_key(req)
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap()
        .key_id
}

async fn target_of(stack: &Stack, who: &str, alias: &str) -> String {
    stack
        .keys(Some(who))
        .unwrap()
        .describe_key(DescribeKeyRequest {
            key_id: alias.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap()
        .key_id
}

async fn encrypt(stack: &Stack, who: &str, key_id: &str) -> Result<EncryptResponse, tonic::Status> {
    stack
        .crypto(Some(who))
        .unwrap()
        .encrypt(EncryptRequest {
            key_id: key_id.into(),
            plaintext: b"payroll".to_vec(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

/// Finding 1: a member of the account whom K1's policy refuses can neither point K1's alias at
/// a key it may use nor delete it; the administrator the policy names still can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aliases_follow_the_policy_of_the_key_they_name() {
    let stack = Stack::start().await.unwrap();
    let inst = instance(&stack, ACCOUNT, None).await;
    let k1 = create_key(
        &stack,
        ALICE,
        CreateKeyRequest {
            kms_instance_id: inst.clone(),
            key_spec: KeySpec::AliyunAes256 as i32,
            alias: "alias/secret".into(),
            policy: allow(&[(ADMIN, &["kms:*"])]),
            ..Default::default()
        },
    )
    .await;
    let k2 = create_key(
        &stack,
        ALICE,
        CreateKeyRequest {
            kms_instance_id: inst.clone(),
            key_spec: KeySpec::AliyunAes256 as i32,
            ..Default::default()
        },
    )
    .await;
    let mut mallory = stack.keys(Some(MEMBER)).unwrap();
    // Mallory may use K2 (default policy), not K1.
    encrypt(&stack, MEMBER, &k2).await.unwrap();
    assert_eq!(code_reason(encrypt(&stack, MEMBER, &k1).await), denied());

    assert_eq!(
        code_reason(
            mallory
                .update_alias(UpdateAliasRequest {
                    alias_name: "alias/secret".into(),
                    key_id: k2.clone(),
                })
                .await
        ),
        denied()
    );
    assert_eq!(
        code_reason(
            mallory
                .delete_alias(DeleteAliasRequest {
                    alias_name: "alias/secret".into(),
                })
                .await
        ),
        denied()
    );
    // Nor can Mallory alias K1 under a new name.
    assert_eq!(
        code_reason(
            mallory
                .create_alias(CreateAliasRequest {
                    alias_name: "alias/mine".into(),
                    key_id: k1.clone(),
                })
                .await
        ),
        denied()
    );
    assert_eq!(target_of(&stack, ADMIN, "alias/secret").await, k1);
    let sealed = encrypt(&stack, ADMIN, "alias/secret").await.unwrap();
    assert_eq!(sealed.key_id, k1, "the admin's data still lands under K1");

    // The administrator, allowed on both keys, may move and delete the alias.
    stack
        .keys(Some(ADMIN))
        .unwrap()
        .update_alias(UpdateAliasRequest {
            alias_name: "alias/secret".into(),
            key_id: k2.clone(),
        })
        .await
        .unwrap();
    assert_eq!(target_of(&stack, ADMIN, "alias/secret").await, k2);
    stack
        .keys(Some(ADMIN))
        .unwrap()
        .delete_alias(DeleteAliasRequest {
            alias_name: "alias/secret".into(),
        })
        .await
        .unwrap();

    // The alias lines of the audit log name the key ids involved, not only the alias.
    let audit = std::fs::read_to_string(stack.dir().join("logs/control-audit.log")).unwrap();
    let alias_lines: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|l: &serde_json::Value| {
            l["action"]
                .as_str()
                .is_some_and(|a| a.ends_with("/UpdateAlias") || a.ends_with("/DeleteAlias"))
                && l["outcome"] == "allowed"
        })
        .collect();
    assert_eq!(alias_lines.len(), 2, "{alias_lines:?}");
    // UpdateAlias names the key the alias left and the one it now names.
    assert_eq!(alias_lines[0]["key_id"], k2.as_str());
    assert_eq!(alias_lines[0]["previous_key_id"], k1.as_str());
    // DeleteAlias names the key the alias named.
    assert_eq!(alias_lines[1]["key_id"], k2.as_str());
}

/// Finding 2: the owner of an instance shared with account A cannot touch A's aliases, nor
/// alias A's keys in its own namespace; A's data stays A's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_instance_owner_cannot_take_over_aliases() {
    let stack = Stack::start().await.unwrap();
    let shared = instance(&stack, SHARER, Some(ACCOUNT)).await;
    let default_key = create_key(
        &stack,
        ALICE,
        CreateKeyRequest {
            key_spec: KeySpec::AliyunAes256 as i32,
            alias: "alias/demo".into(),
            ..Default::default()
        },
    )
    .await;
    let kx = create_key(
        &stack,
        ALICE,
        CreateKeyRequest {
            kms_instance_id: shared.clone(),
            key_spec: KeySpec::AliyunAes256 as i32,
            ..Default::default()
        },
    )
    .await;
    let mut sharer = stack.keys(Some(SHARER_ROOT)).unwrap();

    // KX is A's key: the sharer may not point any alias at it, and A's alias is not in the
    // sharer's namespace anyway.
    assert_eq!(
        code_reason(
            sharer
                .update_alias(UpdateAliasRequest {
                    alias_name: "alias/demo".into(),
                    key_id: kx.clone(),
                })
                .await
        ),
        denied()
    );
    assert_eq!(
        code_reason(
            sharer
                .delete_alias(DeleteAliasRequest {
                    alias_name: "alias/demo".into(),
                })
                .await
        ),
        (Code::NotFound, "Forbidden.AliasNotFound".into())
    );
    // The sharer may manage KX (its instance), but not give it an alias: KX is A's key.
    sharer
        .describe_key(DescribeKeyRequest { key_id: kx.clone() })
        .await
        .unwrap();
    assert_eq!(
        code_reason(
            sharer
                .create_alias(CreateAliasRequest {
                    alias_name: "alias/demo".into(),
                    key_id: kx.clone(),
                })
                .await
        ),
        denied()
    );

    // A's application still encrypts under A's default key, which the sharer cannot open.
    assert_eq!(target_of(&stack, ALICE, "alias/demo").await, default_key);
    let sealed = encrypt(&stack, ALICE, "alias/demo").await.unwrap();
    assert_eq!(sealed.key_id, default_key);
    let err = stack
        .crypto(Some(SHARER_ROOT))
        .unwrap()
        .decrypt(DecryptRequest {
            ciphertext_blob: sealed.ciphertext_blob,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::NotFound, "Forbidden.KeyNotFound")
    );
}

/// Finding 3: `ExportDataKey` re-encrypts data keys only; an `Encrypt` ciphertext is refused
/// even to a principal allowed to export, and a blob whose kind was rewritten does not open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_data_key_opens_only_data_keys() {
    let stack = Stack::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("me.pem");
    let public = dir.path().join("me.pub.pem");
    for args in [
        vec![
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            private.to_str().unwrap(),
        ],
        vec![
            "pkey",
            "-in",
            private.to_str().unwrap(),
            "-pubout",
            "-out",
            public.to_str().unwrap(),
        ],
    ] {
        assert!(
            std::process::Command::new("openssl")
                .args(&args)
                .status()
                .unwrap()
                .success()
        );
    }
    let public_key = std::fs::read(&public).unwrap();
    let inst = instance(&stack, ACCOUNT, None).await;
    let key = create_key(
        &stack,
        ALICE,
        CreateKeyRequest {
            kms_instance_id: inst,
            key_spec: KeySpec::AliyunAes256 as i32,
            policy: allow(&[(APP_USER, &["kms:ExportDataKey"])]),
            ..Default::default()
        },
    )
    .await;
    let mut crypto = stack.crypto(Some(ALICE)).unwrap();
    let export = |blob: Vec<u8>| ExportDataKeyRequest {
        ciphertext_blob: blob,
        public_key: public_key.clone(),
        wrapping_algorithm: Algorithm::RsaesOaepSha256 as i32,
        wrapping_key_spec: KeySpec::Rsa2048 as i32,
        ..Default::default()
    };
    let mut exporter = stack.crypto(Some(APP_USER)).unwrap();

    let plain = encrypt(&stack, ALICE, &key).await.unwrap().ciphertext_blob;
    let err = exporter
        .export_data_key(export(plain.clone()))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::InvalidArgument, "InvalidParameter.CiphertextBlob")
    );
    assert!(err.message().contains("holds no data key"), "{err:?}");

    // Rewriting the blob's kind breaks its authentication.
    let mut forged = plain;
    forged[..4].copy_from_slice(b"KMD1");
    let err = exporter.export_data_key(export(forged)).await.unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::InvalidArgument, "InvalidCiphertext")
    );

    // A data key exports, and still decrypts for whoever may decrypt.
    let dk = crypto
        .generate_data_key(GenerateDataKeyRequest {
            key_id: key.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let exported = exporter
        .export_data_key(export(dk.ciphertext_blob.clone()))
        .await
        .unwrap()
        .into_inner();
    let out = dir.path().join("dk.enc");
    std::fs::write(&out, &exported.exported_data_key).unwrap();
    let opened = std::process::Command::new("openssl")
        .args([
            "pkeyutl",
            "-decrypt",
            "-inkey",
            private.to_str().unwrap(),
            "-pkeyopt",
            "rsa_padding_mode:oaep",
            "-pkeyopt",
            "rsa_oaep_md:sha256",
            "-pkeyopt",
            "rsa_mgf1_md:sha256",
            "-in",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(opened.status.success());
    assert_eq!(opened.stdout, dk.plaintext);
    let again = crypto
        .decrypt(DecryptRequest {
            ciphertext_blob: dk.ciphertext_blob.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.plaintext, dk.plaintext);

    // ReEncrypt keeps a data key a data key: it still exports afterwards.
    let moved = crypto
        .re_encrypt(ReEncryptRequest {
            ciphertext_blob: dk.ciphertext_blob,
            destination_key_id: key.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    exporter
        .export_data_key(export(moved.ciphertext_blob))
        .await
        .unwrap();
}

/// Finding 4: members the engine does not evaluate, members given twice, and actions that
/// match nothing are refused, naming the problem, on CreateKey and SetKeyPolicy alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loose_policy_documents_are_refused() {
    let stack = Stack::start().await.unwrap();
    let inst = instance(&stack, ACCOUNT, None).await;
    let key = create_key(
        &stack,
        ALICE,
        CreateKeyRequest {
            kms_instance_id: inst.clone(),
            key_spec: KeySpec::AliyunAes256 as i32,
            ..Default::default()
        },
    )
    .await;
    let statement = |extra: &str, effect: &str, action: &str| {
        format!(
            r#"{{"Version":"1","Statement":[{{{effect}"Principal":{{"RAM":["{APP_USER}"]}},"Action":["{action}"],"Resource":["*"]{extra}}}]}}"#
        )
    };
    let cases = [
        (
            statement(
                r#","Condition":{"IpAddress":{"acs:SourceIp":"10.0.0.0/8"}}"#,
                r#""Effect":"Allow","#,
                "kms:Decrypt",
            ),
            "Condition",
        ),
        (
            statement(
                r#","NotAction":["kms:Decrypt"]"#,
                r#""Effect":"Allow","#,
                "kms:Encrypt",
            ),
            "NotAction",
        ),
        (
            statement("", r#""Effect":"Deny","Effect":"Allow","#, "kms:Decrypt"),
            "duplicate field `Effect`",
        ),
        (
            statement("", r#""Effect":"Allow","#, "kms:Encrpyt"),
            "kms:Encrpyt",
        ),
    ];
    let mut keys = stack.keys(Some(ALICE)).unwrap();
    for (doc, named) in &cases {
        for err in [
            keys.set_key_policy(SetKeyPolicyRequest {
                key_id: key.clone(),
                policy: doc.clone(),
            })
            .await
            .unwrap_err(),
            keys.create_key(CreateKeyRequest {
                kms_instance_id: inst.clone(),
                key_spec: KeySpec::AliyunAes256 as i32,
                policy: doc.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err(),
        ] {
            assert_eq!(
                (err.code(), reason(&err).as_str()),
                (Code::InvalidArgument, "InvalidParameter.Policy"),
                "{doc}"
            );
            assert!(err.message().contains(named), "{named}: {err:?}");
        }
    }
    // The key kept its default policy: the user may still use it.
    encrypt(&stack, APP_USER, &key).await.unwrap();
    // The default policy as GetKeyPolicy shows it (with a Sid) is accepted back.
    let shown = keys
        .get_key_policy(GetKeyPolicyRequest {
            key_id: key.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .policy;
    keys.set_key_policy(SetKeyPolicyRequest {
        key_id: key.clone(),
        policy: shown,
    })
    .await
    .unwrap();
}

/// Finding 5: ListKeys and ListAliases show only keys the caller may describe, so a key's
/// description, aliases and tags stay behind its policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_hide_keys_the_caller_may_not_describe() {
    let stack = Stack::start().await.unwrap();
    let inst = instance(&stack, ACCOUNT, None).await;
    let open = create_key(
        &stack,
        ALICE,
        CreateKeyRequest {
            kms_instance_id: inst.clone(),
            key_spec: KeySpec::AliyunAes256 as i32,
            ..Default::default()
        },
    )
    .await;
    let private = create_key(
        &stack,
        ALICE,
        CreateKeyRequest {
            kms_instance_id: inst.clone(),
            key_spec: KeySpec::AliyunAes256 as i32,
            description: "merger plans".into(),
            alias: "alias/merger".into(),
            policy: allow(&[(ADMIN, &["kms:*"])]),
            ..Default::default()
        },
    )
    .await;
    let listed = |who: &'static str| {
        let stack = &stack;
        async move {
            stack
                .keys(Some(who))
                .unwrap()
                .list_keys(ListKeysRequest {
                    page_size: 100,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .keys
                .into_iter()
                .map(|k| k.key_id)
                .collect::<Vec<_>>()
        }
    };
    let member = listed(MEMBER).await;
    assert!(member.contains(&open), "{member:?}");
    assert!(!member.contains(&private), "{member:?}");
    for who in [ADMIN, ALICE] {
        let seen = listed(who).await;
        assert!(
            seen.contains(&open) && seen.contains(&private),
            "{who}: {seen:?}"
        );
    }
    // Filtering by the hidden key's alias finds nothing for the member either.
    let by_alias = stack
        .keys(Some(MEMBER))
        .unwrap()
        .list_keys(ListKeysRequest {
            page_size: 100,
            filters: Some(ListKeysFilter {
                alias: Some("alias/merger".into()),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(by_alias.keys.is_empty(), "{:?}", by_alias.keys);

    // Nor does the alias listing show the hidden key's alias.
    let aliases = |who: &'static str| {
        let stack = &stack;
        async move {
            stack
                .keys(Some(who))
                .unwrap()
                .list_aliases(ListAliasesRequest {
                    page_size: 100,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .aliases
                .into_iter()
                .map(|a| a.alias_name)
                .collect::<Vec<_>>()
        }
    };
    assert!(!aliases(MEMBER).await.contains(&"alias/merger".to_string()));
    assert!(aliases(ADMIN).await.contains(&"alias/merger".to_string()));
}

/// Finding 11: both planes agree that the owner of a shared instance manages and uses the
/// keys in it under the default policy; account ids with leading zeros are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planes_agree_on_shared_instance_owners_and_account_spellings() {
    let stack = Stack::start().await.unwrap();
    let shared = instance(&stack, SHARER, Some(ACCOUNT)).await;
    let kx = create_key(
        &stack,
        ALICE,
        CreateKeyRequest {
            kms_instance_id: shared.clone(),
            key_spec: KeySpec::AliyunAes256 as i32,
            ..Default::default()
        },
    )
    .await;
    stack
        .keys(Some(SHARER_ROOT))
        .unwrap()
        .describe_key(DescribeKeyRequest { key_id: kx.clone() })
        .await
        .unwrap();
    let sealed = encrypt(&stack, SHARER_ROOT, &kx).await.unwrap();
    assert_eq!(sealed.key_id, kx);

    // `0` + the sharer's id is not another account, and not the sharer either: refused.
    let padded = format!("acs:ram::0{SHARER}:root");
    let err = encrypt(&stack, &padded, &kx).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let err = stack
        .instances(Some(OPERATOR))
        .unwrap()
        .create_kms_instance(CreateKmsInstanceRequest {
            instance_type: InstanceType::Software as i32,
            owner_account_id: format!("0{ACCOUNT}"),
            key_quota: 1,
            access_management_quota: Some(1),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::InvalidArgument, "InvalidParameter.OwnerAccountId")
    );
}

/// Refusals say enough to act on, and no more: a principal the key's policy refuses is told
/// its ARN and the action it lacks; a stranger is still told the key does not exist; one bad
/// key of a batch is named with its place; a malformed key id shows the accepted forms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_name_the_caller_the_action_and_the_key_that_failed() {
    let stack = Stack::start().await.unwrap();
    let inst = instance(&stack, ACCOUNT, None).await;
    let guarded = create_key(
        &stack,
        ALICE,
        CreateKeyRequest {
            kms_instance_id: inst.clone(),
            alias: "alias/guarded".into(),
            policy: allow(&[(ADMIN, &["kms:*"])]),
            ..Default::default()
        },
    )
    .await;
    let open = create_key(
        &stack,
        ALICE,
        CreateKeyRequest {
            kms_instance_id: inst.clone(),
            ..Default::default()
        },
    )
    .await;

    // A member of the account the policy does not allow: its ARN and the action.
    let err = encrypt(&stack, MEMBER, "alias/guarded").await.unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::PermissionDenied, "Forbidden.NoPermission")
    );
    assert!(
        err.message()
            .ends_with(&format!("{MEMBER} is not allowed kms:Encrypt on this key")),
        "{}",
        err.message()
    );
    // ReEncrypt says which of its two keys refused.
    let sealed = encrypt(&stack, ALICE, &open).await.unwrap();
    let err = stack
        .crypto(Some(MEMBER))
        .unwrap()
        .re_encrypt(ReEncryptRequest {
            ciphertext_blob: sealed.ciphertext_blob.clone(),
            destination_key_id: guarded.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        err.message().ends_with(&format!(
            "{MEMBER} is not allowed kms:ReEncrypt on the destination key"
        )),
        "{}",
        err.message()
    );
    // A stranger learns nothing, not even that the key exists.
    let stranger = "acs:ram::6543210987654321:user/mallory";
    let err = encrypt(&stack, stranger, &guarded).await.unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::NotFound, "Forbidden.KeyNotFound")
    );
    assert!(!err.message().contains("not allowed"), "{}", err.message());

    // Batches name the one key that failed, as the request named it, and where.
    let mut member = stack.keys(Some(MEMBER)).unwrap();
    let tag = || {
        vec![Tag {
            key: "team".into(),
            value: "a".into(),
        }]
    };
    let cases: Vec<(Vec<String>, Code, &str, String)> = vec![
        (
            vec![open.clone(), "alias/guarded".into(), open.clone()],
            Code::PermissionDenied,
            "Forbidden.NoPermission",
            format!(
                "key \"alias/guarded\" (2 of 3 in key_ids): {MEMBER} is not allowed kms:TagResource on this key"
            ),
        ),
        (
            vec![open.clone(), "alias/nope".into()],
            Code::NotFound,
            "Forbidden.AliasNotFound",
            "key \"alias/nope\" (2 of 2 in key_ids): the alias does not exist".into(),
        ),
        (
            vec!["not-a-key".into(), open.clone()],
            Code::InvalidArgument,
            "InvalidParameter.KeyId",
            "key \"not-a-key\" (1 of 2 in key_ids): \"not-a-key\" is not a key id".into(),
        ),
    ];
    for (key_ids, code, want_reason, want_message) in cases {
        let err = member
            .tag_resources(TagResourcesRequest {
                key_ids: key_ids.clone(),
                tags: tag(),
            })
            .await
            .unwrap_err();
        assert_eq!(
            (err.code(), reason(&err).as_str()),
            (code, want_reason),
            "{key_ids:?}"
        );
        assert!(err.message().contains(&want_message), "{}", err.message());
    }
    let err = member
        .untag_resources(UntagResourcesRequest {
            key_ids: vec![open.clone(), guarded.clone()],
            tag_keys: vec!["team".into()],
        })
        .await
        .unwrap_err();
    assert!(
        err.message().contains(&format!(
            "key \"{guarded}\" (2 of 2 in key_ids): {MEMBER} is not allowed kms:UntagResource"
        )),
        "{}",
        err.message()
    );
    // Nothing was tagged.
    let tags = stack
        .keys(Some(ALICE))
        .unwrap()
        .list_resource_tags(ListResourceTagsRequest {
            key_id: open.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .tags;
    assert!(tags.is_empty(), "{tags:?}");

    // A malformed key id shows the forms key_id takes, on both planes.
    let forms = "key_id takes a key id (key-<32 hex digits>), an alias (alias/<name>) or a key \
                 ARN (acs:kms:<region>:<account>:key/<key id>)";
    let err = member
        .describe_key(DescribeKeyRequest {
            key_id: "1234".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "InvalidParameter.KeyId");
    assert!(err.message().contains(forms), "{}", err.message());
    let err = encrypt(&stack, MEMBER, "key/abc").await.unwrap_err();
    assert_eq!(reason(&err), "InvalidParameter.KeyId");
    assert!(err.message().contains(forms), "{}", err.message());
}
