//! Listing: page sizes and opaque page tokens, and the filters of `ListKeys`.
//!
//! A page token carries the cursor of the last item of the previous page (a key id, an alias
//! name, an instance id...), so a listing resumes right after it even if items came or went in
//! between. Callers must treat tokens as opaque; anything that does not decode is
//! `InvalidParameter.PageToken`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::error::DomainError;
use crate::ids::InstanceId;
use crate::key::KeyRecord;
use crate::spec::{KeySpec, KeyUsage, ProtectionLevel};
use crate::state::KeyState;
use crate::validate;

/// What every page token starts with before encoding: a format tag.
const TOKEN_PREFIX: &str = "p1:";

/// Which page of a listing to return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    /// Most items to return, 1–100.
    pub size: usize,
    /// Cursor of the last item already returned; `None` for the first page.
    pub after: Option<String>,
}

impl PageRequest {
    /// Reads `page_size` (0: 20; else 1–100) and `page_token` (empty: the first page).
    pub fn new(page_size: i32, page_token: &str) -> Result<Self, DomainError> {
        Ok(Self {
            size: validate::page_size(page_size)?,
            after: decode_token(page_token)?,
        })
    }

    /// The first page of `size` items.
    pub fn first(size: usize) -> Self {
        Self { size, after: None }
    }

    /// The cursor parsed with `parse`; a cursor it refuses is `InvalidParameter.PageToken`.
    pub fn after_as<T>(
        &self,
        parse: impl FnOnce(&str) -> Result<T, DomainError>,
    ) -> Result<Option<T>, DomainError> {
        self.after
            .as_deref()
            .map(|c| parse(c).map_err(|_| bad_token()))
            .transpose()
    }
}

fn bad_token() -> DomainError {
    DomainError::invalid(
        "PageToken",
        "page_token is not a token this listing returned",
    )
}

/// The opaque token for a page that continues after `cursor`.
pub fn encode_token(cursor: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{TOKEN_PREFIX}{cursor}"))
}

/// The cursor in a token; `None` for the empty token.
pub fn decode_token(token: &str) -> Result<Option<String>, DomainError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad_token())?;
    let text = String::from_utf8(bytes).map_err(|_| bad_token())?;
    match text.strip_prefix(TOKEN_PREFIX) {
        Some(cursor) if !cursor.is_empty() => Ok(Some(cursor.to_string())),
        _ => Err(bad_token()),
    }
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The items, in listing order.
    pub items: Vec<T>,
    /// Cursor of the last item when more may follow; `None` on the last page.
    pub next: Option<String>,
}

impl<T> Page<T> {
    /// The token of the next page; empty on the last page.
    pub fn next_token(&self) -> String {
        self.next.as_deref().map(encode_token).unwrap_or_default()
    }

    /// A page from items fetched one beyond the page size: the extra item only says that
    /// more follow, and `cursor` names the last item kept.
    pub fn from_lookahead(mut items: Vec<T>, size: usize, cursor: impl Fn(&T) -> String) -> Self {
        let more = items.len() > size;
        items.truncate(size);
        let next = if more { items.last().map(cursor) } else { None };
        Self { items, next }
    }
}

/// Conditions of `ListKeys`, combined with AND; `None` does not filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyFilter {
    /// Keys in this state.
    pub state: Option<KeyState>,
    /// Keys of this spec.
    pub spec: Option<KeySpec>,
    /// Keys of this usage.
    pub usage: Option<KeyUsage>,
    /// Keys of this protection level.
    pub protection: Option<ProtectionLevel>,
    /// Keys carrying a tag with this key.
    pub tag_key: Option<String>,
    /// Keys carrying a tag with this value; with `tag_key`, the same tag has both.
    pub tag_value: Option<String>,
    /// Keys this alias points at.
    pub alias: Option<String>,
}

impl KeyFilter {
    /// Whether `key` meets every condition that is set.
    pub fn matches(&self, key: &KeyRecord) -> bool {
        let tag_ok = match (&self.tag_key, &self.tag_value) {
            (None, None) => true,
            (k, v) => key.tags.iter().any(|t| {
                k.as_ref().is_none_or(|k| *k == t.key) && v.as_ref().is_none_or(|v| *v == t.value)
            }),
        };
        self.state.is_none_or(|s| s == key.state)
            && self.spec.is_none_or(|s| s == key.spec)
            && self.usage.is_none_or(|u| u == key.usage)
            && self.protection.is_none_or(|p| p == key.protection)
            && self
                .alias
                .as_ref()
                .is_none_or(|a| key.aliases.iter().any(|ka| ka == a))
            && tag_ok
    }
}

/// A `ListKeys` request: which keys of the caller's account, and which page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyQuery {
    /// Only keys in this instance.
    pub instance: Option<InstanceId>,
    /// Only default keys.
    pub default_keys_only: bool,
    /// Further conditions.
    pub filter: KeyFilter,
    /// The page.
    pub page: PageRequest,
}

impl KeyQuery {
    /// Whether `key` is one the query lists (the account is the caller's to check).
    pub fn matches(&self, key: &KeyRecord) -> bool {
        (!self.default_keys_only || key.is_default())
            && self
                .instance
                .as_ref()
                .is_none_or(|i| key.instance.as_ref() == Some(i))
            && self.filter.matches(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_refuse_garbage() {
        for cursor in ["key-0123", "alias/a/b", "kst-1"] {
            let token = encode_token(cursor);
            assert_eq!(decode_token(&token), Ok(Some(cursor.to_string())));
            assert!(!token.contains(cursor), "tokens are opaque: {token}");
        }
        assert_eq!(decode_token(""), Ok(None));
        for bad in [
            "!!!",
            "cDE6",
            "eHl6",
            &URL_SAFE_NO_PAD.encode([0xff, 0xfe]),
            &URL_SAFE_NO_PAD.encode("p2:key"),
        ] {
            assert_eq!(
                decode_token(bad).err().map(|e| e.reason_code()).as_deref(),
                Some("InvalidParameter.PageToken"),
                "{bad}"
            );
        }
        let page = PageRequest::new(0, &encode_token("nope")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(page.size, 20);
        let parsed = page.after_as(crate::ids::KeyId::parse);
        assert_eq!(
            parsed.err().map(|e| e.reason_code()).as_deref(),
            Some("InvalidParameter.PageToken")
        );
        assert_eq!(
            PageRequest::new(101, "")
                .err()
                .map(|e| e.reason_code())
                .as_deref(),
            Some("InvalidParameter.PageSize")
        );
    }

    #[test]
    fn lookahead_pages() {
        let p = Page::from_lookahead(vec![1, 2, 3], 2, |i| i.to_string());
        assert_eq!(p.items, vec![1, 2]);
        assert_eq!(p.next.as_deref(), Some("2"));
        assert_eq!(decode_token(&p.next_token()), Ok(Some("2".into())));
        let last = Page::from_lookahead(vec![1, 2], 2, |i| i.to_string());
        assert_eq!(last.next, None);
        assert_eq!(last.next_token(), "");
    }

    #[test]
    fn filters_and_across_fields() {
        let json = r#"{"id":"key-00000000000000000000000000000001","account":"1","instance":"kst-1",
            "spec":"AliyunAes256","usage":"EncryptDecrypt","state":"Enabled","protection":"Software",
            "origin":"Kms","description":"","creator":"c","created":0,"delete_date":null,
            "deletion_protection":false,"deletion_protection_description":"","rotation":null,
            "last_rotation":null,"primary_version":"00000000-0000-0000-0000-000000000001",
            "versions":[],"aliases":["alias/a"],"tags":[{"key":"env","value":"prod"},
            {"key":"team","value":"x"}],"policy":null,"material_expire":null}"#;
        let key: KeyRecord = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}"));
        let f = |filter: KeyFilter| filter.matches(&key);
        assert!(f(KeyFilter::default()));
        assert!(f(KeyFilter {
            state: Some(KeyState::Enabled),
            spec: Some(KeySpec::AliyunAes256),
            alias: Some("alias/a".into()),
            ..KeyFilter::default()
        }));
        assert!(!f(KeyFilter {
            state: Some(KeyState::Enabled),
            spec: Some(KeySpec::Rsa2048),
            ..KeyFilter::default()
        }));
        assert!(!f(KeyFilter {
            alias: Some("alias/b".into()),
            ..KeyFilter::default()
        }));
        let tags = |k: Option<&str>, v: Option<&str>| KeyFilter {
            tag_key: k.map(str::to_string),
            tag_value: v.map(str::to_string),
            ..KeyFilter::default()
        };
        assert!(f(tags(Some("env"), None)));
        assert!(f(tags(None, Some("x"))));
        assert!(f(tags(Some("env"), Some("prod"))));
        assert!(!f(tags(Some("env"), Some("x"))), "one tag must have both");
        assert!(!f(tags(Some("owner"), None)));
        let q = |instance: Option<&str>, default_keys_only: bool| KeyQuery {
            instance: instance.map(|i| InstanceId::parse(i).unwrap_or_else(|e| panic!("{e}"))),
            default_keys_only,
            filter: KeyFilter::default(),
            page: PageRequest::first(20),
        };
        assert!(q(Some("kst-1"), false).matches(&key));
        assert!(!q(Some("kst-2"), false).matches(&key));
        assert!(!q(None, true).matches(&key));
    }
}
