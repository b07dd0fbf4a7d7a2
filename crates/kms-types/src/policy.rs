//! Key policies: who may do what with a key. Deny by default.
//!
//! - **Default policy** (no document): principals of the key's owning account, and of the
//!   account that owns the instance the key lives in, may manage and use the key.
//! - **Custom policy**: a JSON document, `Version` "1", with statements of `Effect` (Allow or
//!   Deny), `Principal` `{"RAM": [arn, ...]}` (a trailing `*` matches any principal under that
//!   prefix, e.g. `acs:ram::<uid>:*`), `Action` (`kms:...`, `*` matches any run of characters)
//!   and `Resource` `["*"]`. A Deny that matches wins over any Allow.
//! - The owning account's root (`acs:ram::<uid>:root`) keeps full access under a custom policy,
//!   so a key cannot be locked out; a Deny still wins for everything but `kms:DescribeKey`,
//!   `kms:GetKeyPolicy` and `kms:SetKeyPolicy`, which it always keeps so the policy can be
//!   repaired.
//! - A principal of another account may use a key it is granted (the crypto and read actions
//!   of [`CROSS_ACCOUNT_ACTIONS`]), never manage it, whatever a statement says.
//! - Visibility: a principal of the owning (or instance-owning) account, or one a statement of
//!   the policy names, learns that the key exists and is told `PERMISSION_DENIED`
//!   (`Forbidden.NoPermission`) for what it may not do; anyone else is told the key does not
//!   exist (`NOT_FOUND`), so key ids of other accounts cannot be probed.

use std::collections::BTreeSet;

use serde::Deserialize;

use crate::error::DomainError;
use crate::ids::AccountId;
use crate::principal::Principal;

/// Largest policy document, in bytes.
pub const MAX_POLICY_BYTES: usize = 32_768;

/// The management actions of the administrator role, as the console guide lists them.
pub const ADMINISTRATOR_ACTIONS: &[&str] = &[
    "kms:List*",
    "kms:Describe*",
    "kms:Create*",
    "kms:Enable*",
    "kms:Disable*",
    "kms:Get*",
    "kms:Set*",
    "kms:Update*",
    "kms:Delete*",
    "kms:Cancel*",
    "kms:TagResource",
    "kms:UntagResource",
    "kms:ImportKeyMaterial",
    "kms:ScheduleKeyDeletion",
];

/// The cryptographic and read actions of the user role.
pub const USER_ACTIONS: &[&str] = &[
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
    "kms:TagResource",
];

/// What a principal of another account may ever be granted: use, never manage.
pub const CROSS_ACCOUNT_ACTIONS: &[&str] = &[
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

/// Actions the owning account's root keeps even against a Deny.
const ROOT_KEEPS: &[&str] = &["kms:DescribeKey", "kms:GetKeyPolicy", "kms:SetKeyPolicy"];

/// Allow or Deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Grants.
    Allow,
    /// Refuses, winning over any Allow.
    Deny,
}

/// One statement of a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// Allow or Deny.
    pub effect: Effect,
    /// Principal ARNs or prefixes ending in `*`.
    pub principals: Vec<String>,
    /// Action patterns.
    pub actions: Vec<String>,
}

/// A parsed, validated custom policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyDocument {
    /// The statements, in document order.
    pub statements: Vec<Statement>,
}

/// Glob match where `*` matches any run of characters.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] != b'*' && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            pi += 1;
            mark = ti;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

fn principal_matches(pattern: &str, principal: &Principal) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => principal.arn().starts_with(prefix),
        None => pattern == principal.arn(),
    }
}

impl Statement {
    fn names(&self, principal: &Principal) -> bool {
        self.principals
            .iter()
            .any(|p| principal_matches(p, principal))
    }

    fn covers(&self, action: &str) -> bool {
        self.actions.iter().any(|a| glob(a, action))
    }
}

/// A document as written: every member named, no others, none twice.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDocument {
    #[serde(rename = "Version")]
    version: String,
    #[serde(rename = "Statement")]
    statement: Vec<RawStatement>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStatement {
    /// A statement id: a label for people, with no effect on the decision.
    #[serde(rename = "Sid", default)]
    #[allow(dead_code)]
    sid: Option<String>,
    #[serde(rename = "Effect")]
    effect: String,
    #[serde(rename = "Principal")]
    principal: RawPrincipal,
    #[serde(rename = "Action")]
    action: OneOrMany,
    #[serde(rename = "Resource")]
    resource: OneOrMany,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrincipal {
    #[serde(rename = "RAM")]
    ram: OneOrMany,
}

/// A string or a list of strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_list(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// Whether `pattern` is a RAM principal ARN, or a prefix of one ending in `:*` or `/*`.
fn principal_pattern_ok(pattern: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => {
            prefix.starts_with("acs:ram::")
                && (prefix.ends_with(':') || prefix.ends_with('/'))
                && !prefix.contains('*')
                && prefix["acs:ram::".len()..]
                    .split(':')
                    .next()
                    .is_some_and(|uid| AccountId::parse(uid).is_ok())
        }
        None => Principal::parse(pattern).is_ok(),
    }
}

impl PolicyDocument {
    /// Parses and validates a document; every violation is `InvalidParameter.Policy`, with a
    /// message naming it. Refused: members other than `Version`, `Statement`, `Effect`,
    /// `Principal` (`RAM`), `Action` and `Resource` (so a `Condition` or `NotAction` cannot
    /// be silently ignored), a member given twice, and an action pattern that matches no
    /// action of [`crate::authz`] (a misspelt action would otherwise grant nothing, silently).
    pub fn parse(doc: &str) -> Result<Self, DomainError> {
        let bad = |why: String| DomainError::invalid("Policy", why);
        if doc.len() > MAX_POLICY_BYTES {
            return Err(bad(format!(
                "policy is {} bytes, more than {MAX_POLICY_BYTES}",
                doc.len()
            )));
        }
        let raw: RawDocument =
            serde_json::from_str(doc).map_err(|e| bad(format!("policy is not valid: {e}")))?;
        if raw.version != "1" {
            return Err(bad("policy Version must be \"1\"".into()));
        }
        let known = crate::authz::known_actions();
        let mut out = Vec::with_capacity(raw.statement.len());
        for (i, s) in raw.statement.into_iter().enumerate() {
            let effect = match s.effect.as_str() {
                "Allow" => Effect::Allow,
                "Deny" => Effect::Deny,
                _ => return Err(bad(format!("statement {i}: Effect must be Allow or Deny"))),
            };
            let non_empty = |list: Vec<String>, what: &str| {
                if list.is_empty() {
                    Err(bad(format!(
                        "statement {i}: {what} must be a non-empty list of strings"
                    )))
                } else {
                    Ok(list)
                }
            };
            let principals = non_empty(s.principal.ram.into_list(), "Principal.RAM")?;
            if let Some(p) = principals.iter().find(|p| !principal_pattern_ok(p)) {
                return Err(bad(format!(
                    "statement {i}: principal {p:?} must be a RAM ARN, with * only as the last segment"
                )));
            }
            let actions = non_empty(s.action.into_list(), "Action")?;
            for a in &actions {
                if !a.starts_with("kms:")
                    || a.len() > 128
                    || !a[4..]
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'*')
                {
                    return Err(bad(format!(
                        "statement {i}: action {a:?} must be kms:<Name>, * allowed"
                    )));
                }
                if !known.iter().any(|k| glob(a, k)) {
                    return Err(bad(format!(
                        "statement {i}: action {a:?} matches no KMS action"
                    )));
                }
            }
            if s.resource.into_list() != ["*"] {
                return Err(bad(format!("statement {i}: Resource must be [\"*\"]")));
            }
            out.push(Statement {
                effect,
                principals,
                actions,
            });
        }
        Ok(Self { statements: out })
    }

    /// The document as canonical JSON: `Version` "1", then each statement's `Effect`,
    /// `Principal` `{"RAM": [...]}`, `Action` list and `Resource` `["*"]`, in order. It parses
    /// back to the same document ([`PolicyDocument::parse`]).
    pub fn to_json(&self) -> String {
        let statements: Vec<serde_json::Value> = self
            .statements
            .iter()
            .map(|s| {
                serde_json::json!({
                    "Effect": match s.effect {
                        Effect::Allow => "Allow",
                        Effect::Deny => "Deny",
                    },
                    "Principal": {"RAM": s.principals},
                    "Action": s.actions,
                    "Resource": ["*"],
                })
            })
            .collect();
        serde_json::json!({"Version": "1", "Statement": statements}).to_string()
    }

    /// Accounts other than `owners` that statements grant something: they count against the
    /// instance's access-management quota.
    pub fn foreign_accounts(&self, owners: &[&AccountId]) -> BTreeSet<String> {
        self.statements
            .iter()
            .filter(|s| s.effect == Effect::Allow)
            .flat_map(|s| s.principals.iter())
            .filter_map(|p| p["acs:ram::".len().min(p.len())..].split(':').next())
            .filter(|uid| !owners.iter().any(|o| o.as_str() == *uid))
            .map(str::to_string)
            .collect()
    }
}

/// Validates a custom policy document's shape; violations are `InvalidParameter.Policy`.
pub fn validate_document(doc: &str) -> Result<(), DomainError> {
    PolicyDocument::parse(doc).map(|_| ())
}

/// Whose key it is, for a decision.
#[derive(Debug, Clone, Copy)]
pub struct KeyOwnership<'a> {
    /// The account that created and owns the key.
    pub owner: &'a AccountId,
    /// The account owning the instance the key lives in, when it differs (a shared instance).
    pub instance_owner: Option<&'a AccountId>,
}

impl KeyOwnership<'_> {
    fn is_owner_account(&self, principal: &Principal) -> bool {
        principal.account() == self.owner || self.instance_owner == Some(principal.account())
    }
}

/// Decides whether `principal` may perform `action` (e.g. `kms:Encrypt`) on a key. `policy`
/// is the key's custom policy, already validated; `None` means the default policy.
/// Errors: `KeyNotFound` when the caller may not learn the key exists, `NotAllowed` (naming
/// the caller and the action) when it may but is not allowed.
pub fn decide(
    principal: &Principal,
    key: KeyOwnership<'_>,
    policy: Option<&PolicyDocument>,
    action: &str,
) -> Result<(), DomainError> {
    let own_account = key.is_owner_account(principal);
    let refused = || DomainError::NotAllowed {
        principal: principal.arn().to_string(),
        action: action.to_string(),
        target: "this key".into(),
    };
    let Some(policy) = policy else {
        return if own_account {
            Ok(())
        } else {
            Err(DomainError::KeyNotFound)
        };
    };
    let named = policy.statements.iter().any(|s| s.names(principal));
    if !own_account && !named {
        return Err(DomainError::KeyNotFound);
    }
    let matching = |effect: Effect| {
        policy
            .statements
            .iter()
            .any(|s| s.effect == effect && s.names(principal) && s.covers(action))
    };
    let is_root = principal.account() == key.owner && principal.arn().ends_with(":root");
    if is_root && ROOT_KEEPS.contains(&action) {
        return Ok(());
    }
    if matching(Effect::Deny) {
        return Err(refused());
    }
    if is_root {
        return Ok(());
    }
    if !own_account && !CROSS_ACCOUNT_ACTIONS.contains(&action) {
        return Err(refused());
    }
    if matching(Effect::Allow) {
        Ok(())
    } else {
        Err(refused())
    }
}

/// Parses `policy` (a stored document) and decides; a stored document that no longer parses
/// denies everyone but the owning account's root.
pub fn decide_stored(
    principal: &Principal,
    key: KeyOwnership<'_>,
    policy: Option<&str>,
    action: &str,
) -> Result<(), DomainError> {
    decide(principal, key, compile_stored(policy).as_ref(), action)
}

/// A key's stored policy as [`decide`] takes it: `None` for the default policy, the parsed
/// document otherwise, and a document with no statements for a stored policy that no longer
/// parses (which denies everyone but the owning account's root). Whoever keeps
/// keys in memory compiles each key's policy once per revision instead of once per call.
pub fn compile_stored(policy: Option<&str>) -> Option<PolicyDocument> {
    policy.map(|text| {
        PolicyDocument::parse(text).unwrap_or(PolicyDocument {
            statements: Vec::new(),
        })
    })
}

/// The default-policy decision for a key owned by `owner`.
pub fn authorize(
    principal: &Principal,
    owner: &AccountId,
    action: &str,
) -> Result<(), DomainError> {
    decide(
        principal,
        KeyOwnership {
            owner,
            instance_owner: None,
        },
        None,
        action,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(arn: &str) -> Principal {
        Principal::parse(arn).unwrap_or_else(|e| panic!("{e}"))
    }

    fn acct(id: &str) -> AccountId {
        AccountId::parse(id).unwrap_or_else(|e| panic!("{e}"))
    }

    fn doc(statements: &[(&str, &[&str], &[&str])]) -> PolicyDocument {
        let json = serde_json::json!({
            "Version": "1",
            "Statement": statements.iter().map(|(effect, principals, actions)| serde_json::json!({
                "Effect": effect,
                "Principal": {"RAM": principals},
                "Action": actions,
                "Resource": ["*"],
            })).collect::<Vec<_>>(),
        });
        PolicyDocument::parse(&json.to_string()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn glob_matching() {
        for (pat, text, want) in [
            ("kms:*", "kms:Encrypt", true),
            ("kms:List*", "kms:ListKeys", true),
            ("kms:List*", "kms:DescribeKey", false),
            ("kms:*Key", "kms:DescribeKey", true),
            ("kms:*Key", "kms:DescribeKeyVersion", false),
            ("kms:Encrypt", "kms:Encrypt", true),
            ("kms:Encrypt", "kms:EncryptX", false),
            ("kms:G*Data*", "kms:GenerateDataKey", true),
            ("*", "anything", true),
        ] {
            assert_eq!(glob(pat, text), want, "{pat} vs {text}");
        }
    }

    /// The decision table: (principal, policy, action) → outcome.
    #[test]
    fn decision_table() {
        let owner = acct("100");
        let shared_owner = acct("300");
        let key = KeyOwnership {
            owner: &owner,
            instance_owner: None,
        };
        let shared = KeyOwnership {
            owner: &owner,
            instance_owner: Some(&shared_owner),
        };
        let admin_user = doc(&[
            ("Allow", &["acs:ram::100:user/admin"], ADMINISTRATOR_ACTIONS),
            ("Allow", &["acs:ram::100:user/app"], USER_ACTIONS),
            ("Allow", &["acs:ram::200:user/partner"], &["kms:*"]),
            (
                "Allow",
                &["acs:ram::400:*"],
                &["kms:Encrypt", "kms:Decrypt"],
            ),
            ("Deny", &["acs:ram::100:user/app"], &["kms:Decrypt"]),
            ("Deny", &["acs:ram::100:root"], &["kms:*"]),
        ]);
        let ok = Ok(());
        let denied = Err(DomainError::NoPermission);
        let hidden = Err(DomainError::KeyNotFound);
        type Case<'a> = (
            &'a str,
            KeyOwnership<'a>,
            Option<&'a PolicyDocument>,
            &'a str,
            Result<(), DomainError>,
        );
        let cases: Vec<Case> = vec![
            // default policy: the owning account manages and uses; others see nothing
            ("acs:ram::100:root", key, None, "kms:Encrypt", ok.clone()),
            (
                "acs:ram::100:user/any",
                key,
                None,
                "kms:DisableKey",
                ok.clone(),
            ),
            ("acs:ram::100:role/r", key, None, "kms:Decrypt", ok.clone()),
            (
                "acs:ram::200:root",
                key,
                None,
                "kms:Encrypt",
                hidden.clone(),
            ),
            (
                "acs:ram::200:root",
                key,
                None,
                "kms:DescribeKey",
                hidden.clone(),
            ),
            // shared instance: the instance owner's account manages and uses too
            (
                "acs:ram::300:user/x",
                shared,
                None,
                "kms:DisableKey",
                ok.clone(),
            ),
            ("acs:ram::300:root", shared, None, "kms:Encrypt", ok.clone()),
            (
                "acs:ram::200:root",
                shared,
                None,
                "kms:Encrypt",
                hidden.clone(),
            ),
            // administrator: manages, no crypto
            (
                "acs:ram::100:user/admin",
                key,
                Some(&admin_user),
                "kms:DisableKey",
                ok.clone(),
            ),
            (
                "acs:ram::100:user/admin",
                key,
                Some(&admin_user),
                "kms:ListKeyVersions",
                ok.clone(),
            ),
            (
                "acs:ram::100:user/admin",
                key,
                Some(&admin_user),
                "kms:ScheduleKeyDeletion",
                ok.clone(),
            ),
            (
                "acs:ram::100:user/admin",
                key,
                Some(&admin_user),
                "kms:Decrypt",
                denied.clone(),
            ),
            // user: crypto, no management; Deny beats Allow
            (
                "acs:ram::100:user/app",
                key,
                Some(&admin_user),
                "kms:Encrypt",
                ok.clone(),
            ),
            (
                "acs:ram::100:user/app",
                key,
                Some(&admin_user),
                "kms:GenerateDataKey",
                ok.clone(),
            ),
            (
                "acs:ram::100:user/app",
                key,
                Some(&admin_user),
                "kms:DisableKey",
                denied.clone(),
            ),
            (
                "acs:ram::100:user/app",
                key,
                Some(&admin_user),
                "kms:Decrypt",
                denied.clone(),
            ),
            // an unnamed principal of the owning account: visible, not allowed
            (
                "acs:ram::100:user/other",
                key,
                Some(&admin_user),
                "kms:Encrypt",
                denied.clone(),
            ),
            // the owning root: everything, but a Deny wins except for policy repair
            (
                "acs:ram::100:root",
                key,
                Some(&admin_user),
                "kms:Encrypt",
                denied.clone(),
            ),
            (
                "acs:ram::100:root",
                key,
                Some(&admin_user),
                "kms:SetKeyPolicy",
                ok.clone(),
            ),
            (
                "acs:ram::100:root",
                key,
                Some(&admin_user),
                "kms:DescribeKey",
                ok.clone(),
            ),
            // cross-account: use, never manage, even with kms:*
            (
                "acs:ram::200:user/partner",
                key,
                Some(&admin_user),
                "kms:Encrypt",
                ok.clone(),
            ),
            (
                "acs:ram::200:user/partner",
                key,
                Some(&admin_user),
                "kms:DescribeKey",
                ok.clone(),
            ),
            (
                "acs:ram::200:user/partner",
                key,
                Some(&admin_user),
                "kms:DisableKey",
                denied.clone(),
            ),
            (
                "acs:ram::200:user/partner",
                key,
                Some(&admin_user),
                "kms:SetKeyPolicy",
                denied.clone(),
            ),
            (
                "acs:ram::200:user/stranger",
                key,
                Some(&admin_user),
                "kms:Encrypt",
                hidden.clone(),
            ),
            // wildcard principal covers every principal of that account
            (
                "acs:ram::400:role/any",
                key,
                Some(&admin_user),
                "kms:Decrypt",
                ok.clone(),
            ),
            (
                "acs:ram::400:root",
                key,
                Some(&admin_user),
                "kms:GenerateDataKey",
                denied.clone(),
            ),
            (
                "acs:ram::401:root",
                key,
                Some(&admin_user),
                "kms:Encrypt",
                hidden.clone(),
            ),
        ];
        for (who, ownership, policy, action, want) in cases {
            let got = decide(&p(who), ownership, policy, action);
            let want = want.map_err(|e| match e {
                DomainError::NoPermission => DomainError::NotAllowed {
                    principal: who.to_string(),
                    action: action.to_string(),
                    target: "this key".into(),
                },
                other => other,
            });
            assert_eq!(got, want, "{who} {action} policy={}", policy.is_some());
        }
        assert_eq!(
            decide(
                &p("acs:ram::100:user/any"),
                key,
                Some(&admin_user),
                "kms:Encrypt"
            )
            .err()
            .map(|e| e.to_string())
            .as_deref(),
            Some("acs:ram::100:user/any is not allowed kms:Encrypt on this key")
        );
    }

    #[test]
    fn root_without_deny_keeps_everything() {
        let owner = acct("100");
        let key = KeyOwnership {
            owner: &owner,
            instance_owner: None,
        };
        let d = doc(&[("Allow", &["acs:ram::100:user/a"], &["kms:Encrypt"])]);
        for action in ["kms:Encrypt", "kms:DisableKey", "kms:ScheduleKeyDeletion"] {
            assert_eq!(
                decide(&p("acs:ram::100:root"), key, Some(&d), action),
                Ok(())
            );
        }
    }

    #[test]
    fn stored_document_that_no_longer_parses_fails_closed() {
        let owner = acct("100");
        let key = KeyOwnership {
            owner: &owner,
            instance_owner: None,
        };
        assert_eq!(
            decide_stored(&p("acs:ram::100:user/u"), key, Some("{"), "kms:Encrypt")
                .err()
                .map(|e| e.reason_code())
                .as_deref(),
            Some("Forbidden.NoPermission")
        );
        assert_eq!(
            decide_stored(&p("acs:ram::100:root"), key, Some("{"), "kms:Encrypt"),
            Ok(())
        );
    }

    #[test]
    fn foreign_accounts_count_allow_statements() {
        let d = doc(&[
            (
                "Allow",
                &["acs:ram::100:user/a", "acs:ram::200:user/b"],
                &["kms:Encrypt"],
            ),
            ("Allow", &["acs:ram::300:*"], &["kms:Decrypt"]),
            ("Deny", &["acs:ram::500:root"], &["kms:*"]),
        ]);
        let owner = acct("100");
        let got: Vec<String> = d.foreign_accounts(&[&owner]).into_iter().collect();
        assert_eq!(got, vec!["200".to_string(), "300".to_string()]);
    }

    #[test]
    fn document_validation() {
        let good = r#"{"Version":"1","Statement":[{"Effect":"Allow","Principal":{"RAM":["acs:ram::1:*"]},"Action":["kms:List*"],"Resource":["*"]}]}"#;
        assert!(validate_document(good).is_ok());
        assert!(validate_document(r#"{"Version":"1","Statement":[]}"#).is_ok());
        let bad_cases = [
            "",
            "{",
            "[]",
            r#"{"Version":"2","Statement":[]}"#,
            r#"{"Version":"1"}"#,
            r#"{"Version":"1","Statement":[{"Effect":"Maybe","Principal":{"RAM":["acs:ram::1:root"]},"Action":["kms:Encrypt"],"Resource":["*"]}]}"#,
            r#"{"Version":"1","Statement":[{"Effect":"Allow","Principal":{"RAM":["acs:ram::1:*:x"]},"Action":["kms:Encrypt"],"Resource":["*"]}]}"#,
            r#"{"Version":"1","Statement":[{"Effect":"Allow","Principal":{"RAM":["*"]},"Action":["kms:Encrypt"],"Resource":["*"]}]}"#,
            r#"{"Version":"1","Statement":[{"Effect":"Allow","Principal":{"RAM":["acs:ram::1:root"]},"Action":["ecs:Run"],"Resource":["*"]}]}"#,
            r#"{"Version":"1","Statement":[{"Effect":"Allow","Principal":{"RAM":["acs:ram::1:root"]},"Action":[],"Resource":["*"]}]}"#,
            r#"{"Version":"1","Statement":[{"Effect":"Allow","Principal":{"RAM":["acs:ram::1:root"]},"Action":["kms:Encrypt"],"Resource":["acs:kms:*"]}]}"#,
            r#"{"Version":"1","Statement":[{"Effect":"Allow","Principal":{"RAM":["acs:ram::1:root"]},"Action":["kms:Encrypt"]}]}"#,
            r#"{"Version":"1","Statement":[{"Effect":"Allow","Action":["kms:Encrypt"],"Resource":["*"]}]}"#,
        ];
        for bad in bad_cases {
            let got = validate_document(bad).err().map(|e| e.reason_code());
            assert_eq!(got.as_deref(), Some("InvalidParameter.Policy"), "{bad}");
        }
        // Loose documents: each refused with a message naming what is wrong.
        let loose = [
            (
                r#"{"Version":"1","Statement":[{"Effect":"Allow","Principal":{"RAM":["acs:ram::1:root"]},"Action":["kms:Encrypt"],"Resource":["*"],"Condition":{"IpAddress":{"acs:SourceIp":"10.0.0.0/8"}}}]}"#,
                "Condition",
            ),
            (
                r#"{"Version":"1","Statement":[{"Effect":"Allow","Principal":{"RAM":["acs:ram::1:root"]},"NotAction":["kms:Decrypt"],"Action":["kms:Encrypt"],"Resource":["*"]}]}"#,
                "NotAction",
            ),
            (
                r#"{"Version":"1","Statement":[{"Effect":"Deny","Effect":"Allow","Principal":{"RAM":["acs:ram::1:root"]},"Action":["kms:Encrypt"],"Resource":["*"]}]}"#,
                "duplicate field `Effect`",
            ),
            (
                r#"{"Version":"1","Version":"1","Statement":[]}"#,
                "duplicate field `Version`",
            ),
            (
                r#"{"Version":"1","Statement":[{"Effect":"Allow","Principal":{"RAM":["acs:ram::1:root"],"RAM":["acs:ram::2:root"]},"Action":["kms:Encrypt"],"Resource":["*"]}]}"#,
                "duplicate field `RAM`",
            ),
            (
                r#"{"Version":"1","Statement":[{"Effect":"Allow","Principal":{"RAM":["acs:ram::1:root"]},"Action":["kms:Encrpyt"],"Resource":["*"]}]}"#,
                "\"kms:Encrpyt\" matches no KMS action",
            ),
            (
                r#"{"Version":"1","Statement":[{"Effect":"Allow","Principal":{"RAM":["acs:ram::1:root"]},"Action":["kms:Decrypt*X"],"Resource":["*"]}]}"#,
                "matches no KMS action",
            ),
        ];
        for (doc, named) in loose {
            let err = validate_document(doc).err();
            assert_eq!(
                err.as_ref().map(DomainError::reason_code).as_deref(),
                Some("InvalidParameter.Policy"),
                "{doc}"
            );
            let message = err.map(|e| e.to_string()).unwrap_or_default();
            assert!(message.contains(named), "{message:?} should name {named:?}");
        }
        // Patterns that match at least one action stay valid.
        for pattern in ["kms:*", "kms:*Key", "kms:Generate*", "kms:List*"] {
            let doc = format!(
                r#"{{"Version":"1","Statement":[{{"Effect":"Allow","Principal":{{"RAM":"acs:ram::1:root"}},"Action":"{pattern}","Resource":"*"}}]}}"#
            );
            assert!(validate_document(&doc).is_ok(), "{pattern}");
        }
        let huge = format!(
            r#"{{"Version":"1","Statement":[],"x":"{}"}}"#,
            "a".repeat(MAX_POLICY_BYTES)
        );
        assert!(validate_document(&huge).is_err());
    }
}
