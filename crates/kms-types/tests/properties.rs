//! Properties of every parser and codec of the domain, on generated input: the ciphertext blob,
//! the encryption context's canonical form, policy documents, key references and ARNs,
//! principals and account ids, alias names, tags, page tokens and import tokens.
//!
//! Each property runs `PROPTEST_CASES` cases (proptest's default, 256, unless set); the README
//! gives the command that runs them with a large count.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};

use kms_types::blob::{self, BlobKind, CiphertextBlob, HEADER_LEN, IV_LEN, TAG_LEN};
use kms_types::ids::{KeyRef, alias_arn, key_arn};
use kms_types::import::ImportTokenId;
use kms_types::listing::{PageRequest, decode_token, encode_token};
use kms_types::policy::{Effect, PolicyDocument, Statement};
use kms_types::validate;
use kms_types::{
    AccountId, DomainError, EncryptionContext, InstanceId, KeyId, KeyVersionId, Principal, Tag,
};
use proptest::prelude::*;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

// ---------------------------------------------------------------------------------------------
// Strategies.

fn account() -> impl Strategy<Value = String> {
    "[1-9][0-9]{0,31}"
}

fn key_id() -> impl Strategy<Value = KeyId> {
    "[0-9a-f]{32}".prop_map(|hex| KeyId::parse(&format!("key-{hex}")).unwrap())
}

fn version_id() -> impl Strategy<Value = KeyVersionId> {
    any::<[u8; 16]>().prop_map(KeyVersionId::from_bytes)
}

fn alias_name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_/-]{1,255}"
        .prop_filter("reserved prefix", |rest| {
            rest != "acs" && !rest.starts_with("acs/")
        })
        .prop_map(|rest| format!("alias/{rest}"))
}

fn principal() -> impl Strategy<Value = String> {
    (
        account(),
        prop_oneof![
            Just("root".to_string()),
            "[A-Za-z0-9._@/-]{1,128}".prop_map(|n| format!("user/{n}")),
            "[A-Za-z0-9._@/-]{1,128}".prop_map(|n| format!("role/{n}")),
        ],
    )
        .prop_map(|(uid, resource)| format!("acs:ram::{uid}:{resource}"))
}

/// Principal patterns a statement may list: ARNs, and account or path prefixes ending in `*`.
fn principal_pattern() -> impl Strategy<Value = String> {
    prop_oneof![
        principal(),
        account().prop_map(|uid| format!("acs:ram::{uid}:*")),
        account().prop_map(|uid| format!("acs:ram::{uid}:user/*")),
    ]
}

/// Action patterns that match at least one action of the authorization table.
fn action_pattern() -> impl Strategy<Value = String> {
    let actions = kms_types::authz::known_actions();
    let exact = proptest::sample::select(actions.clone()).prop_map(str::to_string);
    let prefix = proptest::sample::select(actions.clone()).prop_flat_map(|a| {
        let name = &a["kms:".len()..];
        (1..=name.len()).prop_map(move |n| format!("kms:{}*", &name[..n]))
    });
    let suffix = proptest::sample::select(actions).prop_flat_map(|a| {
        let name = &a["kms:".len()..];
        (0..name.len()).prop_map(move |n| format!("kms:*{}", &name[n..]))
    });
    prop_oneof![exact, prefix, suffix, Just("kms:*".to_string())]
}

fn statement() -> impl Strategy<Value = Statement> {
    (
        any::<bool>(),
        proptest::collection::vec(principal_pattern(), 1..4),
        proptest::collection::vec(action_pattern(), 1..4),
    )
        .prop_map(|(allow, principals, actions)| Statement {
            effect: if allow { Effect::Allow } else { Effect::Deny },
            principals,
            actions,
        })
}

fn policy() -> impl Strategy<Value = PolicyDocument> {
    proptest::collection::vec(statement(), 0..5)
        .prop_map(|statements| PolicyDocument { statements })
}

/// Any JSON value, nested a few levels: objects with the policy's member names among others.
fn json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        any::<f64>().prop_map(|n| serde_json::json!(n)),
        ".{0,12}".prop_map(serde_json::Value::String),
        prop_oneof![
            Just("1"),
            Just("Allow"),
            Just("Deny"),
            Just("*"),
            Just("kms:*"),
            Just("acs:ram::1:root"),
        ]
        .prop_map(|s| serde_json::Value::String(s.into())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        let member = prop_oneof![
            Just("Version".to_string()),
            Just("Statement".to_string()),
            Just("Effect".to_string()),
            Just("Principal".to_string()),
            Just("RAM".to_string()),
            Just("Action".to_string()),
            Just("Resource".to_string()),
            Just("Condition".to_string()),
            ".{0,6}",
        ];
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(serde_json::Value::Array),
            proptest::collection::btree_map(member, inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Context maps over a small alphabet, so that different maps often share keys and values.
fn context_map() -> impl Strategy<Value = BTreeMap<String, String>> {
    proptest::collection::btree_map("[ab\u{0}é]{1,3}", "[ab\u{0}é]{0,3}", 0..5)
}

fn tag_text() -> impl Strategy<Value = String> {
    "[A-Za-z0-9/\\\\_.+=:@-]{1,128}"
}

// ---------------------------------------------------------------------------------------------
// The ciphertext blob.

/// Seals `plaintext` as the data plane does: AES-256-GCM under `key`, the header and the
/// canonical context as AAD.
fn seal(
    key: &[u8; 32],
    kind: BlobKind,
    version: &KeyVersionId,
    iv: [u8; IV_LEN],
    context: &EncryptionContext,
    plaintext: &[u8],
) -> Vec<u8> {
    let header = blob::header(kind, version, &iv);
    let aad = blob::aad(&header, &context.canonical_bytes());
    let sealing = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).unwrap());
    let mut sealed = plaintext.to_vec();
    sealing
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(iv),
            Aad::from(aad),
            &mut sealed,
        )
        .unwrap();
    blob::assemble(&header, &sealed)
}

/// Opens a blob as the data plane does: parse, find the version's key, open with the header
/// and the context as AAD. `None` for any refusal.
fn open(
    keys: &HashMap<KeyVersionId, [u8; 32]>,
    bytes: &[u8],
    context: &EncryptionContext,
) -> Option<(BlobKind, Vec<u8>)> {
    let parsed = CiphertextBlob::parse(bytes).ok()?;
    let key = keys.get(&parsed.key_version_id)?;
    let aad = blob::aad(&parsed.header(), &context.canonical_bytes());
    let opening = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).ok()?);
    let mut buf = parsed.sealed.to_vec();
    let plain = opening
        .open_in_place(
            Nonce::assume_unique_for_key(parsed.iv),
            Aad::from(aad),
            &mut buf,
        )
        .ok()?;
    Some((parsed.kind, plain.to_vec()))
}

fn kind() -> impl Strategy<Value = BlobKind> {
    prop_oneof![Just(BlobKind::Plaintext), Just(BlobKind::DataKey)]
}

proptest! {
    #[test]
    fn blob_parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = CiphertextBlob::parse(&bytes);
        let mut with_magic = b"KMS1".to_vec();
        with_magic.extend_from_slice(&bytes);
        let parsed = CiphertextBlob::parse(&with_magic);
        prop_assert_eq!(parsed.is_ok(), with_magic.len() > HEADER_LEN + TAG_LEN);
    }

    #[test]
    fn blob_encode_then_decode_is_identity(
        kind in kind(),
        version in version_id(),
        iv in any::<[u8; IV_LEN]>(),
        sealed in proptest::collection::vec(any::<u8>(), 1 + TAG_LEN..300),
    ) {
        let header = blob::header(kind, &version, &iv);
        let bytes = blob::assemble(&header, &sealed);
        let parsed = CiphertextBlob::parse(&bytes).unwrap();
        prop_assert_eq!(parsed.kind, kind);
        prop_assert_eq!(parsed.key_version_id, version);
        prop_assert_eq!(parsed.iv, iv);
        prop_assert_eq!(parsed.sealed, &sealed[..]);
        prop_assert_eq!(&parsed.header()[..], &bytes[..HEADER_LEN]);
        prop_assert_eq!(blob::assemble(&parsed.header(), parsed.sealed), bytes);
    }

    /// Every blob altered by one bit, or cut short, is refused; the blob itself opens.
    #[test]
    fn no_single_bit_flip_or_truncation_opens(
        key in any::<[u8; 32]>(),
        kind in kind(),
        version in version_id(),
        iv in any::<[u8; IV_LEN]>(),
        context in context_map(),
        plaintext in proptest::collection::vec(any::<u8>(), 1..64),
        bit in any::<proptest::sample::Index>(),
        cut in any::<proptest::sample::Index>(),
    ) {
        let context = EncryptionContext::new(context.into_iter().collect()).unwrap();
        let bytes = seal(&key, kind, &version, iv, &context, &plaintext);
        let keys: HashMap<KeyVersionId, [u8; 32]> = [(version, key)].into();
        prop_assert_eq!(open(&keys, &bytes, &context), Some((kind, plaintext)));
        let bit = bit.index(bytes.len() * 8);
        let mut flipped = bytes.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        prop_assert_eq!(open(&keys, &flipped, &context), None, "bit {} flipped", bit);
        let cut = cut.index(bytes.len());
        prop_assert_eq!(open(&keys, &bytes[..cut], &context), None, "cut to {} bytes", cut);
    }

    /// A blob opens only with the context it was sealed with.
    #[test]
    fn another_context_does_not_open_a_blob(
        key in any::<[u8; 32]>(),
        version in version_id(),
        iv in any::<[u8; IV_LEN]>(),
        sealed_with in context_map(),
        opened_with in context_map(),
    ) {
        let a = EncryptionContext::new(sealed_with.clone().into_iter().collect()).unwrap();
        let b = EncryptionContext::new(opened_with.clone().into_iter().collect()).unwrap();
        let bytes = seal(&key, BlobKind::Plaintext, &version, iv, &a, b"x");
        let keys: HashMap<KeyVersionId, [u8; 32]> = [(version, key)].into();
        prop_assert_eq!(open(&keys, &bytes, &b).is_some(), sealed_with == opened_with);
    }
}

// ---------------------------------------------------------------------------------------------
// The encryption context.

/// Reads canonical bytes back into a map: that such a reader exists proves the form
/// injective.
fn read_canonical(mut bytes: &[u8]) -> Option<BTreeMap<String, String>> {
    let take = |bytes: &mut &[u8]| -> Option<String> {
        let len = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
        let text = String::from_utf8(bytes.get(4..4 + len)?.to_vec()).ok()?;
        *bytes = &bytes[4 + len..];
        Some(text)
    };
    let mut map = BTreeMap::new();
    while !bytes.is_empty() {
        let k = take(&mut bytes)?;
        let v = take(&mut bytes)?;
        map.insert(k, v);
    }
    Some(map)
}

proptest! {
    #[test]
    fn context_form_ignores_order(
        map in context_map(),
        order in any::<proptest::sample::Index>(),
    ) {
        let pairs: Vec<(String, String)> = map.clone().into_iter().collect();
        let mut rotated = pairs.clone();
        if !rotated.is_empty() {
            let n = order.index(rotated.len());
            rotated.rotate_left(n);
        }
        let a = EncryptionContext::new(pairs.into_iter().collect()).unwrap();
        let b = EncryptionContext::new(rotated.into_iter().rev().collect()).unwrap();
        prop_assert_eq!(a.canonical_bytes(), b.canonical_bytes());
    }

    #[test]
    fn context_form_is_injective(a in context_map(), b in context_map()) {
        let ca = EncryptionContext::new(a.clone().into_iter().collect()).unwrap();
        let cb = EncryptionContext::new(b.clone().into_iter().collect()).unwrap();
        prop_assert_eq!(read_canonical(&ca.canonical_bytes()), Some(a.clone()));
        prop_assert_eq!(ca.canonical_bytes() == cb.canonical_bytes(), a == b);
    }

    #[test]
    fn context_limits(map in proptest::collection::hash_map(".{0,40}", ".{0,3000}", 0..6)) {
        let total: usize = map.iter().map(|(k, v)| k.len() + v.len()).sum();
        let empty_key = map.keys().any(String::is_empty);
        let got = EncryptionContext::new(map);
        prop_assert_eq!(got.is_ok(), total <= 8192 && !empty_key);
        if let Err(e) = got {
            prop_assert_eq!(e.reason_code(), "InvalidParameter.EncryptionContext");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Policy documents.

proptest! {
    #[test]
    fn policy_print_then_parse_is_identity(doc in policy()) {
        let text = doc.to_json();
        let parsed = PolicyDocument::parse(&text);
        prop_assert_eq!(parsed.as_ref(), Ok(&doc), "{}", text);
        // Printing what was parsed gives the same text: the printed form is canonical.
        prop_assert_eq!(parsed.unwrap().to_json(), text);
    }

    #[test]
    fn policy_parse_never_panics_on_json(value in json()) {
        let text = value.to_string();
        if let Err(e) = PolicyDocument::parse(&text) {
            prop_assert_eq!(e.reason_code(), "InvalidParameter.Policy");
        }
    }

    #[test]
    fn policy_parse_never_panics_on_text(text in ".{0,300}") {
        if let Err(e) = PolicyDocument::parse(&text) {
            prop_assert_eq!(e.reason_code(), "InvalidParameter.Policy");
        }
    }

    /// A parsed document prints to one that parses back to it, whatever spelling it came in
    /// (one string or a list, members in any order, a `Sid`).
    #[test]
    fn parsed_policies_print_back(doc in policy(), sid in any::<bool>(), lists in any::<bool>()) {
        let statements: Vec<serde_json::Value> = doc
            .statements
            .iter()
            .map(|s| {
                let one_or_many = |v: &Vec<String>| {
                    if !lists && v.len() == 1 {
                        serde_json::json!(v[0])
                    } else {
                        serde_json::json!(v)
                    }
                };
                let mut m = serde_json::Map::new();
                m.insert("Resource".into(), if lists { serde_json::json!(["*"]) } else { serde_json::json!("*") });
                m.insert("Action".into(), one_or_many(&s.actions));
                m.insert("Principal".into(), serde_json::json!({"RAM": one_or_many(&s.principals)}));
                m.insert("Effect".into(), serde_json::json!(if s.effect == Effect::Allow { "Allow" } else { "Deny" }));
                if sid {
                    m.insert("Sid".into(), serde_json::json!("label"));
                }
                serde_json::Value::Object(m)
            })
            .collect();
        let text = serde_json::json!({"Statement": statements, "Version": "1"}).to_string();
        let parsed = PolicyDocument::parse(&text).unwrap();
        prop_assert_eq!(&parsed, &doc);
        prop_assert_eq!(PolicyDocument::parse(&parsed.to_json()).unwrap(), doc);
    }
}

// ---------------------------------------------------------------------------------------------
// Key references, ARNs, principals, ids.

proptest! {
    #[test]
    fn key_refs_print_as_they_were_given(id in key_id(), uid in account(), region in "[a-z0-9-]{1,20}") {
        let account = AccountId::parse(&uid).unwrap();
        let arn = key_arn(&region, &account, &id);
        let parsed = KeyRef::parse(&arn).unwrap();
        prop_assert_eq!(parsed.to_string(), arn);
        prop_assert_eq!(parsed, KeyRef::Arn { region, account, key_id: id });
        prop_assert_eq!(KeyRef::parse(id.as_str()).unwrap(), KeyRef::Id(id));
    }

    #[test]
    fn key_ref_parsing_never_panics(text in ".{0,120}") {
        match KeyRef::parse(&text) {
            Ok(parsed) => prop_assert_eq!(parsed.to_string(), text.clone()),
            Err(e) => {
                let code = e.reason_code();
                prop_assert!(
                    code == "InvalidParameter.KeyId" || code == "InvalidParameter.AliasName",
                    "{}", code
                );
            }
        }
    }

    #[test]
    fn arn_like_text_never_panics(
        region in ".{0,8}",
        uid in "[0-9a]{0,4}",
        resource in "(key/|alias/|)[a-f0-9:/-]{0,40}",
    ) {
        let text = format!("acs:kms:{region}:{uid}:{resource}");
        if let Ok(KeyRef::Arn { region: r, account, key_id }) = KeyRef::parse(&text) {
            prop_assert_eq!(key_arn(&r, &account, &key_id), text);
        }
    }

    #[test]
    fn alias_arns_name_the_alias(uid in account(), alias in alias_name()) {
        let account = AccountId::parse(&uid).unwrap();
        prop_assert_eq!(alias_arn("local", &account, &alias), format!("acs:kms:local:{uid}:{alias}"));
    }

    #[test]
    fn principals_parse_and_name_their_account(arn in principal()) {
        let p = Principal::parse(&arn).unwrap();
        prop_assert_eq!(p.arn(), arn.as_str());
        let uid = arn["acs:ram::".len()..].split(':').next().unwrap();
        prop_assert_eq!(p.account().as_str(), uid);
    }

    #[test]
    fn principal_parsing_never_panics(text in "(acs:ram::)?.{0,60}") {
        match Principal::parse(&text) {
            Ok(p) => prop_assert_eq!(p.to_string(), text.clone()),
            Err(e) => prop_assert_eq!(e, DomainError::NoIdentity),
        }
        let _ = Principal::parse_explained(&text);
    }

    #[test]
    fn account_ids_have_one_spelling(text in "[0-9a ]{0,34}") {
        let canonical = !text.is_empty()
            && text.len() <= 32
            && text.bytes().all(|b| b.is_ascii_digit())
            && !text.starts_with('0');
        prop_assert_eq!(AccountId::parse(&text).is_ok(), canonical);
    }

    #[test]
    fn ids_parse_back(id in key_id(), version in version_id(), hex in "[a-zA-Z0-9]{1,64}") {
        prop_assert_eq!(KeyId::parse(id.as_str()), Ok(id));
        prop_assert_eq!(KeyVersionId::parse(&version.to_string()), Ok(version));
        prop_assert_eq!(KeyVersionId::from_bytes(*version.as_bytes()), version);
        let instance = format!("kst-{hex}");
        prop_assert_eq!(InstanceId::parse(&instance).map(|i| i.to_string()), Ok(instance));
    }

    /// Ids parse strictly: what parses prints as it was given (key version ids, UUIDs, in
    /// their hyphenated form, which parses back to the same id).
    #[test]
    fn id_parsing_never_panics(text in ".{0,80}") {
        let shown: Vec<String> = [
            KeyId::parse(&text).map(|i| i.to_string()),
            InstanceId::parse(&text).map(|i| i.to_string()),
            ImportTokenId::parse(&text).map(|t| t.to_string()),
        ]
        .into_iter()
        .flatten()
        .collect();
        for s in shown {
            prop_assert_eq!(s, text.clone());
        }
        if let Ok(v) = KeyVersionId::parse(&text) {
            prop_assert_eq!(KeyVersionId::parse(&v.to_string()), Ok(v));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Aliases and tags.

proptest! {
    #[test]
    fn valid_aliases_are_accepted(alias in alias_name()) {
        prop_assert_eq!(validate::alias_name(&alias), Ok(()));
        prop_assert_eq!(KeyRef::parse(&alias), Ok(KeyRef::Alias(alias.clone())));
    }

    #[test]
    fn aliases_follow_the_rule(text in "(alias/)?[A-Za-z0-9_/.é -]{0,260}") {
        let rest = text.strip_prefix("alias/");
        let ok = rest.is_some_and(|r| {
            (1..=255).contains(&r.len())
                && r.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-/".contains(&b))
                && r != "acs"
                && !r.starts_with("acs/")
        });
        let got = validate::alias_name(&text);
        prop_assert_eq!(got.is_ok(), ok, "{:?}", got);
        if let Err(e) = got {
            prop_assert_eq!(e.reason_code(), "InvalidParameter.AliasName");
        }
    }

    #[test]
    fn valid_tags_are_accepted(key in tag_text(), value in tag_text()) {
        let reserved = {
            let lower = key.to_ascii_lowercase();
            lower.starts_with("aliyun") || lower.starts_with("acs:")
        };
        let got = validate::tag(&Tag { key, value });
        prop_assert_eq!(got.is_ok(), !reserved, "{:?}", got);
    }

    #[test]
    fn tags_follow_the_rule(key in ".{0,130}", value in ".{0,130}") {
        let text_ok = |t: &str| {
            (1..=128).contains(&t.chars().count())
                && t.chars().all(|c| c.is_ascii_alphanumeric() || "/\\_-.+=:@".contains(c))
        };
        let lower = key.to_ascii_lowercase();
        let ok = text_ok(&key) && text_ok(&value) && !lower.starts_with("aliyun") && !lower.starts_with("acs:");
        let got = validate::tag(&Tag { key, value });
        prop_assert_eq!(got.is_ok(), ok);
        if let Err(e) = got {
            let code = e.reason_code();
            prop_assert!(code == "InvalidParameter.TagKey" || code == "InvalidParameter.TagValue");
        }
    }

    #[test]
    fn tag_sets_hold_twenty_distinct_keys(keys in proptest::collection::vec("[a-c]{1,2}", 0..25)) {
        let tags: Vec<Tag> = keys.iter().map(|k| Tag { key: k.clone(), value: "v".into() }).collect();
        let distinct = keys.iter().collect::<std::collections::BTreeSet<_>>().len() == keys.len();
        prop_assert_eq!(validate::tag_set(&tags).is_ok(), distinct && keys.len() <= 20);
    }
}

// ---------------------------------------------------------------------------------------------
// Page tokens and import tokens.

proptest! {
    #[test]
    fn page_tokens_round_trip(cursor in ".{1,80}") {
        let token = encode_token(&cursor);
        prop_assert_eq!(decode_token(&token), Ok(Some(cursor.clone())));
        prop_assert!(!token.contains(&cursor) || cursor.len() < 3, "tokens are opaque: {}", token);
    }

    /// Any text a caller sends as a page token is refused precisely or names the cursor the
    /// one token for it names: no two tokens mean the same page.
    #[test]
    fn page_token_decoding_is_strict(token in "[A-Za-z0-9_=+/!-]{0,60}") {
        match decode_token(&token) {
            Ok(None) => prop_assert!(token.is_empty()),
            Ok(Some(cursor)) => prop_assert_eq!(encode_token(&cursor), token),
            Err(e) => prop_assert_eq!(e.reason_code(), "InvalidParameter.PageToken"),
        }
    }

    #[test]
    fn page_requests_follow_the_rule(size in any::<i32>(), token in "[A-Za-z0-9_-]{0,20}") {
        match PageRequest::new(size, &token) {
            Ok(page) => {
                prop_assert!((1..=100).contains(&page.size));
                prop_assert!(size == 0 || page.size == size as usize);
            }
            Err(e) => {
                let code = e.reason_code();
                prop_assert!(code == "InvalidParameter.PageSize" || code == "InvalidParameter.PageToken");
            }
        }
    }

    #[test]
    fn import_tokens_parse_strictly(hex in "[0-9a-f]{32}", text in ".{0,40}") {
        let token = format!("itk-{hex}");
        prop_assert_eq!(ImportTokenId::parse(&token).map(|t| t.to_string()), Ok(token));
        let strict = text.strip_prefix("itk-").is_some_and(|rest| {
            rest.len() == 32 && rest.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
        prop_assert_eq!(ImportTokenId::parse(&text).is_ok(), strict);
    }
}
