//! The policy decision against an independent model, through the real binaries.
//!
//! The model below is written from the rules of the API contract and `docs/SECURITY.md`, not
//! from `kms_types::policy`: under the default policy every principal of the key's account and
//! of the account owning its (shared) instance may do everything, anyone else is told the key
//! does not exist; under a custom policy a Deny that names the caller and covers the action
//! wins over any Allow, `*` matches any run of characters in actions and ends a principal
//! prefix, the key account's root keeps DescribeKey, GetKeyPolicy and SetKeyPolicy against
//! any Deny and everything else unless denied, a principal of another account may only use
//! and read a key (never manage it), and a caller outside the key's and the instance owner's
//! accounts that no statement names is told the key does not exist (NOT_FOUND), while every
//! other refused caller is told PERMISSION_DENIED.
//!
//! Keys with the default policy and random custom policies (wildcards, Deny, principals of
//! four accounts and their prefixes) live in an instance of the key account and in one of
//! another account shared with it. Each case is one RPC: a random principal calls a random
//! RPC on a random key, named by id or ARN; the answer (allowed, denied or hidden) is compared
//! with the model's. Reads and writes that change nothing go to the control plane, dry runs to
//! the data plane, so both planes' decisions are checked. A divergence is shrunk (statements,
//! principals and actions dropped while it persists, on a scratch key) and printed.
//!
//! `KMS_MODEL_CASES` sets the number of cases (default 10,000), `KMS_MODEL_SEED` the random
//! choices (the seed is printed).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kms_e2e::{ACCOUNT, ALICE, OPERATOR, Stack, eventually, reason};
use kms_proto::kms::v1::*;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tonic::Code;

/// Cases when `KMS_MODEL_CASES` is not set.
const DEFAULT_CASES: usize = 10_000;
/// Calls in flight at once.
const IN_FLIGHT: usize = 16;
/// Keys with a random custom policy, per instance.
const CUSTOM_KEYS: usize = 7;

/// The account owning the shared instance.
const SHARER: &str = "5555555555555555";

/// Every caller of the cases.
const PRINCIPALS: &[&str] = &[
    ALICE,
    "acs:ram::1234567890123456:user/admin",
    "acs:ram::1234567890123456:user/app",
    "acs:ram::1234567890123456:role/ops",
    "acs:ram::5555555555555555:root",
    "acs:ram::5555555555555555:user/sam",
    "acs:ram::6543210987654321:root",
    "acs:ram::6543210987654321:user/partner",
    "acs:ram::6543210987654321:user/other",
    "acs:ram::7777777777777777:root",
    "acs:ram::7777777777777777:user/x",
    OPERATOR,
];

/// What a statement's `Principal.RAM` may list: callers and prefixes of them.
const PRINCIPAL_PATTERNS: &[&str] = &[
    ALICE,
    "acs:ram::1234567890123456:user/admin",
    "acs:ram::1234567890123456:user/app",
    "acs:ram::1234567890123456:*",
    "acs:ram::1234567890123456:user/*",
    "acs:ram::5555555555555555:root",
    "acs:ram::5555555555555555:*",
    "acs:ram::6543210987654321:user/partner",
    "acs:ram::6543210987654321:*",
    "acs:ram::6543210987654321:user/*",
    "acs:ram::7777777777777777:user/*",
    "acs:ram::7777777777777777:root",
];

/// What a statement's `Action` may list: actions and patterns that match at least one.
const ACTION_PATTERNS: &[&str] = &[
    "kms:*",
    "kms:Describe*",
    "kms:*Key",
    "kms:Generate*",
    "kms:List*",
    "kms:Get*",
    "kms:Set*",
    "kms:Update*",
    "kms:*crypt",
    "kms:*Data*",
    "kms:*Tag*",
    "kms:Enable*",
    "kms:DescribeKey",
    "kms:GetKeyPolicy",
    "kms:SetKeyPolicy",
    "kms:Encrypt",
    "kms:Decrypt",
    "kms:ReEncrypt",
    "kms:GenerateDataKey",
    "kms:ExportDataKey",
    "kms:TagResource",
    "kms:UntagResource",
    "kms:EnableKey",
    "kms:UpdateKeyDescription",
    "kms:ListKeyVersions",
    "kms:DescribeKeyVersion",
];

/// The contract's use-and-read actions: all a principal of another account may be granted.
const USE_AND_READ: &[&str] = &[
    "kms:Encrypt",
    "kms:Decrypt",
    "kms:ReEncrypt",
    "kms:GenerateDataKey",
    "kms:GenerateDataKeyWithoutPlaintext",
    "kms:GenerateAndExportDataKey",
    "kms:ExportDataKey",
    "kms:AsymmetricEncrypt",
    "kms:AsymmetricDecrypt",
    "kms:AsymmetricSign",
    "kms:AsymmetricVerify",
    "kms:GetPublicKey",
    "kms:DescribeKey",
    "kms:DescribeKeyVersion",
    "kms:ListKeyVersions",
    "kms:ListAliasesByKeyId",
];

/// What the account's root keeps against any Deny, so a key cannot be locked out.
const ROOT_KEEPS: &[&str] = &["kms:DescribeKey", "kms:GetKeyPolicy", "kms:SetKeyPolicy"];

// ---------------------------------------------------------------------------------------------
// The model.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    Allow,
    Deny,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Statement {
    effect: Effect,
    principals: Vec<String>,
    actions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Policy(Vec<Statement>);

impl Policy {
    fn document(&self) -> String {
        let statements: Vec<serde_json::Value> = self
            .0
            .iter()
            .map(|s| {
                serde_json::json!({
                    "Effect": match s.effect { Effect::Allow => "Allow", Effect::Deny => "Deny" },
                    "Principal": {"RAM": s.principals},
                    "Action": s.actions,
                    "Resource": ["*"],
                })
            })
            .collect();
        serde_json::json!({"Version": "1", "Statement": statements}).to_string()
    }
}

/// `*` matches any run of characters, anything else itself.
fn wildcard(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|skip| wildcard(rest, &text[skip..])),
        Some((c, rest)) => text.first() == Some(c) && wildcard(rest, &text[1..]),
    }
}

/// A `Principal.RAM` entry names a caller: equal, or a prefix of it when it ends in `*`.
fn names(pattern: &str, principal: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => principal.starts_with(prefix),
        None => pattern == principal,
    }
}

fn account_of(principal: &str) -> &str {
    principal["acs:ram::".len()..].split(':').next().unwrap()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Outcome {
    /// The call got past authorization and answered as the RPC does when allowed.
    Allowed,
    /// PERMISSION_DENIED Forbidden.NoPermission.
    Denied,
    /// NOT_FOUND Forbidden.KeyNotFound.
    Hidden,
}

/// A key as the model sees it.
#[derive(Debug, Clone)]
struct KeyFacts {
    /// The account owning the instance when it is not the key's (a shared instance).
    instance_owner: Option<&'static str>,
    /// `None`: the default policy.
    policy: Option<Policy>,
}

/// The model's decision for `principal` doing `action` on a key of [`ACCOUNT`].
fn model(principal: &str, action: &str, key: &KeyFacts) -> Outcome {
    let caller_account = account_of(principal);
    let home = caller_account == ACCOUNT || Some(caller_account) == key.instance_owner;
    let Some(policy) = &key.policy else {
        return if home {
            Outcome::Allowed
        } else {
            Outcome::Hidden
        };
    };
    let statements_naming = |effect: Option<Effect>| {
        policy.0.iter().filter(move |s| {
            effect.is_none_or(|e| s.effect == e) && s.principals.iter().any(|p| names(p, principal))
        })
    };
    if !home && statements_naming(None).next().is_none() {
        return Outcome::Hidden;
    }
    let covered = |effect: Effect| {
        statements_naming(Some(effect)).any(|s| {
            s.actions
                .iter()
                .any(|a| wildcard(a.as_bytes(), action.as_bytes()))
        })
    };
    let root = principal == format!("acs:ram::{ACCOUNT}:root");
    if root && ROOT_KEEPS.contains(&action) {
        return Outcome::Allowed;
    }
    if covered(Effect::Deny) {
        return Outcome::Denied;
    }
    if root {
        return Outcome::Allowed;
    }
    if !home && !USE_AND_READ.contains(&action) {
        return Outcome::Denied;
    }
    if covered(Effect::Allow) {
        Outcome::Allowed
    } else {
        Outcome::Denied
    }
}

// ---------------------------------------------------------------------------------------------
// Random policies and cases.

/// xorshift64*: reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, from: &'a [T]) -> &'a T {
        &from[self.below(from.len())]
    }

    fn some_of(&mut self, from: &[&str], most: usize) -> Vec<String> {
        let n = 1 + self.below(most);
        let mut out: Vec<String> = Vec::new();
        for _ in 0..n {
            let v = self.pick(from).to_string();
            if !out.contains(&v) {
                out.push(v);
            }
        }
        out
    }
}

fn random_policy(rng: &mut Rng) -> Policy {
    let n = 1 + rng.below(4);
    Policy(
        (0..n)
            .map(|_| Statement {
                effect: if rng.below(10) < 7 {
                    Effect::Allow
                } else {
                    Effect::Deny
                },
                principals: rng.some_of(PRINCIPAL_PATTERNS, 3),
                actions: rng.some_of(ACTION_PATTERNS, 3),
            })
            .collect(),
    )
}

/// The RPCs of the cases, each with the action the authorization table names for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    DescribeKey,
    GetKeyPolicy,
    SetKeyPolicy,
    ListKeyVersions,
    DescribeKeyVersion,
    ListAliasesByKeyId,
    ListResourceTags,
    CheckKeyAssociation,
    EnableKey,
    UpdateKeyDescription,
    SetDeletionProtection,
    TagResources,
    UntagResources,
    GetParametersForImport,
    Encrypt,
    Decrypt,
    ReEncrypt,
    GenerateDataKey,
    GenerateDataKeyWithoutPlaintext,
    GenerateAndExportDataKey,
    ExportDataKey,
}

const CALLS: &[Call] = &[
    Call::DescribeKey,
    Call::GetKeyPolicy,
    Call::SetKeyPolicy,
    Call::ListKeyVersions,
    Call::DescribeKeyVersion,
    Call::ListAliasesByKeyId,
    Call::ListResourceTags,
    Call::CheckKeyAssociation,
    Call::EnableKey,
    Call::UpdateKeyDescription,
    Call::SetDeletionProtection,
    Call::TagResources,
    Call::UntagResources,
    Call::GetParametersForImport,
    Call::Encrypt,
    Call::Decrypt,
    Call::ReEncrypt,
    Call::GenerateDataKey,
    Call::GenerateDataKeyWithoutPlaintext,
    Call::GenerateAndExportDataKey,
    Call::ExportDataKey,
];

impl Call {
    /// The action `docs/SECURITY.md`'s table names for the RPC.
    fn action(self) -> &'static str {
        match self {
            Call::DescribeKey | Call::CheckKeyAssociation => "kms:DescribeKey",
            Call::GetKeyPolicy => "kms:GetKeyPolicy",
            Call::SetKeyPolicy => "kms:SetKeyPolicy",
            Call::ListKeyVersions => "kms:ListKeyVersions",
            Call::DescribeKeyVersion => "kms:DescribeKeyVersion",
            Call::ListAliasesByKeyId => "kms:ListAliasesByKeyId",
            Call::ListResourceTags => "kms:ListResourceTags",
            Call::EnableKey => "kms:EnableKey",
            Call::UpdateKeyDescription => "kms:UpdateKeyDescription",
            Call::SetDeletionProtection => "kms:SetDeletionProtection",
            Call::TagResources => "kms:TagResource",
            Call::UntagResources => "kms:UntagResource",
            Call::GetParametersForImport => "kms:GetParametersForImport",
            Call::Encrypt => "kms:Encrypt",
            Call::Decrypt => "kms:Decrypt",
            Call::ReEncrypt => "kms:ReEncrypt",
            Call::GenerateDataKey => "kms:GenerateDataKey",
            Call::GenerateDataKeyWithoutPlaintext => "kms:GenerateDataKeyWithoutPlaintext",
            Call::GenerateAndExportDataKey => "kms:GenerateAndExportDataKey",
            Call::ExportDataKey => "kms:ExportDataKey",
        }
    }

    /// Whether the data plane answers the RPC.
    fn on_data_plane(self) -> bool {
        matches!(
            self,
            Call::Encrypt
                | Call::Decrypt
                | Call::ReEncrypt
                | Call::GenerateDataKey
                | Call::GenerateDataKeyWithoutPlaintext
                | Call::GenerateAndExportDataKey
                | Call::ExportDataKey
        )
    }
}

/// A key of the cases, with what calls on it need.
#[derive(Debug, Clone)]
struct Key {
    id: String,
    arn: String,
    version: String,
    facts: KeyFacts,
    blob: Vec<u8>,
    data_key_blob: Vec<u8>,
}

/// What the stack answered, as the model's outcomes, or something else.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Is(Outcome),
    Other(String),
}

/// What an allowed call answers: OK, or for a dry run `DryRunOperationError`, or for
/// GetParametersForImport on a key not made for import `InvalidParameter.Origin`.
fn classify(call: Call, answer: Result<(), tonic::Status>) -> Answer {
    // The data-plane calls are made as dry runs.
    let allowed = match call {
        c if c.on_data_plane() => (Code::FailedPrecondition, "DryRunOperationError"),
        Call::GetParametersForImport => (Code::InvalidArgument, "InvalidParameter.Origin"),
        _ => (Code::Ok, ""),
    };
    let (code, why) = match &answer {
        Ok(()) => (Code::Ok, String::new()),
        Err(s) => (s.code(), reason(s)),
    };
    match (code, why.as_str()) {
        (c, r) if (c, r) == allowed => Answer::Is(Outcome::Allowed),
        (Code::PermissionDenied, "Forbidden.NoPermission") => Answer::Is(Outcome::Denied),
        (Code::NotFound, "Forbidden.KeyNotFound") => Answer::Is(Outcome::Hidden),
        _ => Answer::Other(format!(
            "{code:?} {why}: {}",
            answer
                .err()
                .map(|s| s.message().to_string())
                .unwrap_or_default()
        )),
    }
}

/// Calls `call` on `key` as `principal`, naming the key by id or by ARN; `pem` is the RSA
/// public key data keys are exported under.
async fn run(
    stack: &Stack,
    pem: &[u8],
    principal: &str,
    call: Call,
    key: &Key,
    by_arn: bool,
) -> Answer {
    let key_id = if by_arn {
        key.arn.clone()
    } else {
        key.id.clone()
    };
    let context: HashMap<String, String> = [("case".to_string(), "model".to_string())].into();
    let mut keys = stack.keys(Some(principal)).unwrap();
    let mut crypto = stack.crypto(Some(principal)).unwrap();
    let answer = match call {
        Call::DescribeKey => keys
            .describe_key(DescribeKeyRequest { key_id })
            .await
            .map(drop),
        Call::GetKeyPolicy => keys
            .get_key_policy(GetKeyPolicyRequest { key_id })
            .await
            .map(drop),
        Call::SetKeyPolicy => keys
            .set_key_policy(SetKeyPolicyRequest {
                key_id,
                policy: key
                    .facts
                    .policy
                    .as_ref()
                    .map(Policy::document)
                    .unwrap_or_default(),
            })
            .await
            .map(drop),
        Call::ListKeyVersions => keys
            .list_key_versions(ListKeyVersionsRequest {
                key_id,
                ..Default::default()
            })
            .await
            .map(drop),
        Call::DescribeKeyVersion => keys
            .describe_key_version(DescribeKeyVersionRequest {
                key_id,
                key_version_id: key.version.clone(),
            })
            .await
            .map(drop),
        Call::ListAliasesByKeyId => keys
            .list_aliases_by_key_id(ListAliasesByKeyIdRequest {
                key_id,
                ..Default::default()
            })
            .await
            .map(drop),
        Call::ListResourceTags => keys
            .list_resource_tags(ListResourceTagsRequest { key_id })
            .await
            .map(drop),
        Call::CheckKeyAssociation => keys
            .check_key_association(CheckKeyAssociationRequest { key_id })
            .await
            .map(drop),
        Call::EnableKey => keys.enable_key(EnableKeyRequest { key_id }).await.map(drop),
        Call::UpdateKeyDescription => keys
            .update_key_description(UpdateKeyDescriptionRequest {
                key_id,
                description: "model".into(),
            })
            .await
            .map(drop),
        Call::SetDeletionProtection => keys
            .set_deletion_protection(SetDeletionProtectionRequest {
                key_id,
                enable_deletion_protection: false,
                deletion_protection_description: String::new(),
            })
            .await
            .map(drop),
        Call::TagResources => keys
            .tag_resources(TagResourcesRequest {
                key_ids: vec![key_id],
                tags: vec![Tag {
                    key: "case".into(),
                    value: "model".into(),
                }],
            })
            .await
            .map(drop),
        Call::UntagResources => keys
            .untag_resources(UntagResourcesRequest {
                key_ids: vec![key_id],
                tag_keys: vec!["absent".into()],
            })
            .await
            .map(drop),
        Call::GetParametersForImport => keys
            .get_parameters_for_import(GetParametersForImportRequest {
                key_id,
                wrapping_algorithm: Algorithm::RsaesOaepSha256 as i32,
                wrapping_key_spec: KeySpec::Rsa2048 as i32,
            })
            .await
            .map(drop),
        Call::Encrypt => crypto
            .encrypt(EncryptRequest {
                key_id,
                plaintext: b"model".to_vec(),
                encryption_context: context,
                dry_run: true,
            })
            .await
            .map(drop),
        Call::Decrypt => crypto
            .decrypt(DecryptRequest {
                ciphertext_blob: key.blob.clone(),
                encryption_context: context,
                dry_run: true,
            })
            .await
            .map(drop),
        Call::ReEncrypt => crypto
            .re_encrypt(ReEncryptRequest {
                ciphertext_blob: key.blob.clone(),
                source_encryption_context: context.clone(),
                destination_key_id: key_id,
                destination_encryption_context: context,
                dry_run: true,
            })
            .await
            .map(drop),
        Call::GenerateDataKey => crypto
            .generate_data_key(GenerateDataKeyRequest {
                key_id,
                encryption_context: context,
                dry_run: true,
                ..Default::default()
            })
            .await
            .map(drop),
        Call::GenerateDataKeyWithoutPlaintext => crypto
            .generate_data_key_without_plaintext(GenerateDataKeyWithoutPlaintextRequest {
                key_id,
                encryption_context: context,
                dry_run: true,
                ..Default::default()
            })
            .await
            .map(drop),
        Call::GenerateAndExportDataKey => crypto
            .generate_and_export_data_key(GenerateAndExportDataKeyRequest {
                key_id,
                encryption_context: context,
                public_key: pem.to_vec(),
                wrapping_algorithm: Algorithm::RsaesOaepSha256 as i32,
                wrapping_key_spec: KeySpec::Rsa2048 as i32,
                dry_run: true,
                ..Default::default()
            })
            .await
            .map(drop),
        Call::ExportDataKey => crypto
            .export_data_key(ExportDataKeyRequest {
                ciphertext_blob: key.data_key_blob.clone(),
                encryption_context: context,
                public_key: pem.to_vec(),
                wrapping_algorithm: Algorithm::RsaesOaepSha256 as i32,
                wrapping_key_spec: KeySpec::Rsa2048 as i32,
                dry_run: true,
            })
            .await
            .map(drop),
    };
    classify(call, answer)
}

/// [`run`] for `case` on `key`, whose model answer is `want`. The data plane learns of a
/// SetKeyPolicy from its watch stream and answers from the policy it had cached until then
/// (API.md, CryptoService): it cached the key with the default policy while the blobs were
/// made, and [`shrink`] sets one policy after another. So a data-plane call is repeated until
/// it answers `want`, for 5 s at most, and then counts as it answers.
async fn settled(stack: &Stack, pem: &[u8], case: &Case, key: &Key, want: Outcome) -> Answer {
    let once = || run(stack, pem, case.principal, case.call, key, case.by_arn);
    if !case.call.on_data_plane() {
        return once().await;
    }
    let agreed = eventually(
        Duration::from_secs(5),
        "the policy on the data plane",
        || async { (once().await == Answer::Is(want)).then_some(()) },
    )
    .await;
    match agreed {
        Ok(()) => Answer::Is(want),
        Err(_) => once().await,
    }
}

// ---------------------------------------------------------------------------------------------

/// Makes a key in `instance` with the default policy, the blobs the data-plane calls need
/// (made while the default policy lets the root use it), then sets `policy` if any.
async fn make_key(
    stack: &Stack,
    instance: &str,
    instance_owner: Option<&'static str>,
    policy: Option<Policy>,
) -> Key {
    let meta = stack
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
        .unwrap();
    let context: HashMap<String, String> = [("case".to_string(), "model".to_string())].into();
    let mut crypto = stack.crypto(Some(ALICE)).unwrap();
    let blob = crypto
        .encrypt(EncryptRequest {
            key_id: meta.key_id.clone(),
            plaintext: b"model".to_vec(),
            encryption_context: context.clone(),
            dry_run: false,
        })
        .await
        .unwrap()
        .into_inner()
        .ciphertext_blob;
    let data_key_blob = crypto
        .generate_data_key(GenerateDataKeyRequest {
            key_id: meta.key_id.clone(),
            encryption_context: context,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .ciphertext_blob;
    set_policy(stack, &meta.key_id, policy.as_ref()).await;
    Key {
        id: meta.key_id,
        arn: meta.arn,
        version: meta.primary_key_version_id,
        facts: KeyFacts {
            instance_owner,
            policy,
        },
        blob,
        data_key_blob,
    }
}

async fn set_policy(stack: &Stack, key_id: &str, policy: Option<&Policy>) {
    if let Some(policy) = policy {
        // The owner's root keeps SetKeyPolicy whatever the current policy says.
        stack
            .keys(Some(ALICE))
            .unwrap()
            .set_key_policy(SetKeyPolicyRequest {
                key_id: key_id.into(),
                policy: policy.document(),
            })
            .await
            .unwrap_or_else(|e| panic!("{}: {e:?}", policy.document()));
    }
}

/// One case.
#[derive(Debug, Clone)]
struct Case {
    principal: &'static str,
    call: Call,
    key: usize,
    by_arn: bool,
}

/// A divergence made as small as it stays one: statements, then principals and actions, are
/// dropped from the policy while the stack and the model still disagree, on a scratch key of
/// the same instance. Returns the policy and both answers.
async fn shrink(
    stack: &Stack,
    pem: &[u8],
    instance: &str,
    case: &Case,
    key: &Key,
) -> (Option<Policy>, Outcome, Answer) {
    let scratch = make_key(
        stack,
        instance,
        key.facts.instance_owner,
        key.facts.policy.clone(),
    )
    .await;
    let diverges = |policy: Option<Policy>| {
        let mut k = scratch.clone();
        let case = case.clone();
        async move {
            set_policy(stack, &k.id, policy.as_ref()).await;
            k.facts.policy = policy;
            let want = model(case.principal, case.call.action(), &k.facts);
            let got = settled(stack, pem, &case, &k, want).await;
            (got != Answer::Is(want)).then_some((want, got))
        }
    };
    let mut policy = key.facts.policy.clone();
    let Some(mut found) = diverges(policy.clone()).await else {
        return (
            policy,
            Outcome::Allowed,
            Answer::Other("did not diverge again".into()),
        );
    };
    let Some(p) = policy.as_mut() else {
        return (policy, found.0, found.1);
    };
    let mut changed = true;
    while changed {
        changed = false;
        let mut candidates: Vec<Policy> = Vec::new();
        for i in 0..p.0.len() {
            if p.0.len() > 1 {
                let mut c = p.clone();
                c.0.remove(i);
                candidates.push(c);
            }
            for j in 0..p.0[i].principals.len() {
                if p.0[i].principals.len() > 1 {
                    let mut c = p.clone();
                    c.0[i].principals.remove(j);
                    candidates.push(c);
                }
            }
            for j in 0..p.0[i].actions.len() {
                if p.0[i].actions.len() > 1 {
                    let mut c = p.clone();
                    c.0[i].actions.remove(j);
                    candidates.push(c);
                }
            }
        }
        for c in candidates {
            if let Some(still) = diverges(Some(c.clone())).await {
                *p = c;
                found = still;
                changed = true;
                break;
            }
        }
    }
    (policy, found.0, found.1)
}

fn env_number(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    Some(
        text.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{name}={text}: {e}")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_decision_agrees_with_the_model() {
    let began = Instant::now();
    let cases = env_number("KMS_MODEL_CASES").map_or(DEFAULT_CASES, |n| n as usize);
    let seed = env_number("KMS_MODEL_SEED").unwrap_or_else(|| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        now.unwrap().as_nanos() as u64
    });
    eprintln!("policy model: {cases} cases, KMS_MODEL_SEED={seed}");
    let mut rng = Rng(seed.max(1));
    let stack = Stack::start().await.unwrap();

    let mut ops = stack.instances(Some(OPERATOR)).unwrap();
    let instance_of = |owner: &str| {
        let owner = owner.to_string();
        let mut ops = ops.clone();
        async move {
            ops.create_kms_instance(CreateKmsInstanceRequest {
                instance_type: InstanceType::Software as i32,
                owner_account_id: owner,
                key_quota: 1_000,
                access_management_quota: Some(1_000),
            })
            .await
            .unwrap()
            .into_inner()
            .kms_instance
            .unwrap()
            .kms_instance_id
        }
    };
    let own = instance_of(ACCOUNT).await;
    let shared = instance_of(SHARER).await;
    ops.share_kms_instance(ShareKmsInstanceRequest {
        kms_instance_id: shared.clone(),
        account_id: ACCOUNT.into(),
    })
    .await
    .unwrap();

    // The RSA public key data-key export wraps under.
    let rsa = stack
        .keys(Some(ALICE))
        .unwrap()
        .create_key(CreateKeyRequest {
            kms_instance_id: own.clone(),
            key_spec: KeySpec::Rsa2048 as i32,
            key_usage: KeyUsage::EncryptDecrypt as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap();
    let pem = stack
        .crypto(Some(ALICE))
        .unwrap()
        .get_public_key(GetPublicKeyRequest {
            key_id: rsa.key_id,
            key_version_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .public_key;
    let pem = Arc::new(pem.into_bytes());

    let mut keys: Vec<(String, Key)> = Vec::new();
    for (instance, owner) in [(&own, None), (&shared, Some(SHARER))] {
        keys.push((
            instance.clone(),
            make_key(&stack, instance, owner, None).await,
        ));
        for _ in 0..CUSTOM_KEYS {
            let policy = random_policy(&mut rng);
            keys.push((
                instance.clone(),
                make_key(&stack, instance, owner, Some(policy)).await,
            ));
        }
    }
    eprintln!(
        "policy model: {} keys ready after {} ms",
        keys.len(),
        began.elapsed().as_millis()
    );

    let plan: Vec<Case> = (0..cases)
        .map(|_| {
            let key = rng.below(keys.len());
            let mut call = *rng.pick(CALLS);
            // SetKeyPolicy sets the key's own document again, so nothing changes; a key with
            // the default policy has none to set.
            if call == Call::SetKeyPolicy && keys[key].1.facts.policy.is_none() {
                call = Call::GetKeyPolicy;
            }
            Case {
                principal: PRINCIPALS[rng.below(PRINCIPALS.len())],
                call,
                key,
                by_arn: rng.below(4) == 0,
            }
        })
        .collect();
    let keys = Arc::new(keys);
    let stack = Arc::new(stack);
    let gate = Arc::new(Semaphore::new(IN_FLIGHT));
    let divergences = Arc::new(Mutex::new(Vec::<(Case, Outcome, Answer)>::new()));
    let tally = Arc::new(Mutex::new(HashMap::<Outcome, usize>::new()));
    let mut calls = JoinSet::new();
    for case in plan {
        let permit = Arc::clone(&gate).acquire_owned().await.unwrap();
        let (stack, keys, divergences, tally, pem) = (
            Arc::clone(&stack),
            Arc::clone(&keys),
            Arc::clone(&divergences),
            Arc::clone(&tally),
            Arc::clone(&pem),
        );
        calls.spawn(async move {
            let key = &keys[case.key].1;
            let want = model(case.principal, case.call.action(), &key.facts);
            let got = settled(&stack, &pem, &case, key, want).await;
            drop(permit);
            *tally.lock().unwrap().entry(want).or_default() += 1;
            if got != Answer::Is(want) {
                divergences.lock().unwrap().push((case, want, got));
            }
        });
        while calls.try_join_next().is_some() {}
    }
    while let Some(done) = calls.join_next().await {
        done.unwrap();
    }
    let divergences = std::mem::take(&mut *divergences.lock().unwrap());
    let tally = tally.lock().unwrap().clone();
    eprintln!(
        "policy model: {cases} cases ({} allowed, {} denied, {} hidden by the model), {} \
         divergences, {} ms",
        tally.get(&Outcome::Allowed).unwrap_or(&0),
        tally.get(&Outcome::Denied).unwrap_or(&0),
        tally.get(&Outcome::Hidden).unwrap_or(&0),
        divergences.len(),
        began.elapsed().as_millis()
    );
    for (case, want, got) in divergences.iter().take(10) {
        eprintln!(
            "DIVERGENCE {} {:?} on key {} (by ARN: {}): model {want:?}, service {got:?}",
            case.principal, case.call, keys[case.key].1.id, case.by_arn
        );
    }
    if let Some((case, want, got)) = divergences.first() {
        let (instance, key) = &keys[case.key];
        let (policy, want_min, got_min) = shrink(&stack, &pem, instance, case, key).await;
        panic!(
            "{} divergences (KMS_MODEL_SEED={seed}); the first: {} {:?} on a key {} with {:?}: \
             the model says {want:?}, the service {got:?}.\nShrunk: policy {}: the model says \
             {want_min:?}, the service {got_min:?}",
            divergences.len(),
            case.principal,
            case.call,
            if key.facts.instance_owner.is_some() {
                "in a shared instance"
            } else {
                "in its account's instance"
            },
            key.facts.policy,
            policy.map_or("(default)".to_string(), |p| p.document()),
        );
    }
}
