//! Validation rules of the API contract. Every violation is `InvalidParameter.<Field>`.

use crate::error::DomainError;
use crate::key::Tag;

/// Longest description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 8192;
/// Most tags on one key.
pub const MAX_TAGS_PER_KEY: usize = 20;
/// Longest tag key or value, in characters.
pub const MAX_TAG_CHARS: usize = 128;
/// Shortest and longest rotation interval, in days.
pub const ROTATION_DAYS: (i64, i64) = (7, 365);
/// Shortest and longest pending-deletion window, in days.
pub const PENDING_WINDOW_DAYS: (i64, i64) = (7, 366);
/// Default and largest page size.
pub const PAGE_SIZE: (i32, i32) = (20, 100);

/// `alias/` + 1–255 letters, digits, `_`, `-`, `/`; not `alias/acs/...`.
pub fn alias_name(name: &str) -> Result<(), DomainError> {
    let bad = |why: &str| {
        Err(DomainError::invalid(
            "AliasName",
            format!("alias {name:?} {why}"),
        ))
    };
    let Some(rest) = name.strip_prefix("alias/") else {
        return bad("must start with alias/");
    };
    if rest.is_empty() || rest.len() > 255 {
        return bad("must have 1 to 255 characters after alias/");
    }
    if !rest
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_-/".contains(&b))
    {
        return bad("may contain only letters, digits, _, - and /");
    }
    if rest.starts_with("acs/") || rest == "acs" {
        return bad("may not start with alias/acs/, which is reserved");
    }
    Ok(())
}

/// A description of at most 8,192 characters.
pub fn description(text: &str) -> Result<(), DomainError> {
    let n = text.chars().count();
    if n > MAX_DESCRIPTION_CHARS {
        return Err(DomainError::invalid(
            "Description",
            format!("description has {n} characters, more than {MAX_DESCRIPTION_CHARS}"),
        ));
    }
    Ok(())
}

fn tag_text(field: &'static str, what: &str, text: &str) -> Result<(), DomainError> {
    let n = text.chars().count();
    if n == 0 || n > MAX_TAG_CHARS {
        return Err(DomainError::invalid(
            field,
            format!("tag {what} must have 1 to {MAX_TAG_CHARS} characters, got {n}"),
        ));
    }
    if !text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/\\_-.+=:@".contains(c))
    {
        return Err(DomainError::invalid(
            field,
            format!("tag {what} {text:?} may contain only letters, digits and / \\ _ - . + = : @"),
        ));
    }
    Ok(())
}

/// One tag: key and value 1–128 allowed characters; the key may not start with `aliyun` or `acs:`.
pub fn tag(t: &Tag) -> Result<(), DomainError> {
    tag_text("TagKey", "key", &t.key)?;
    tag_text("TagValue", "value", &t.value)?;
    let lower = t.key.to_ascii_lowercase();
    if lower.starts_with("aliyun") || lower.starts_with("acs:") {
        return Err(DomainError::invalid(
            "TagKey",
            format!("tag key {:?} may not start with aliyun or acs:", t.key),
        ));
    }
    Ok(())
}

/// A set of tags for one key after a change: each valid, keys unique, at most 20.
pub fn tag_set(tags: &[Tag]) -> Result<(), DomainError> {
    for t in tags {
        tag(t)?;
    }
    if tags.len() > MAX_TAGS_PER_KEY {
        return Err(DomainError::invalid(
            "Tags",
            format!(
                "a key may have at most {MAX_TAGS_PER_KEY} tags, this would make {}",
                tags.len()
            ),
        ));
    }
    let mut keys: Vec<&str> = tags.iter().map(|t| t.key.as_str()).collect();
    keys.sort_unstable();
    if keys.windows(2).any(|w| w[0] == w[1]) {
        return Err(DomainError::invalid(
            "Tags",
            "the same tag key appears twice",
        ));
    }
    Ok(())
}

/// Longest deletion-protection description, in characters.
pub const MAX_DELETION_PROTECTION_DESCRIPTION_CHARS: usize = 8192;
/// Most keys one `TagResources` or `UntagResources` call may name.
pub const MAX_KEYS_PER_TAG_CALL: usize = 50;

/// A deletion-protection description of at most 8,192 characters.
pub fn deletion_protection_description(text: &str) -> Result<(), DomainError> {
    let n = text.chars().count();
    if n > MAX_DELETION_PROTECTION_DESCRIPTION_CHARS {
        return Err(DomainError::invalid(
            "DeletionProtectionDescription",
            format!(
                "deletion protection description has {n} characters, more than \
                 {MAX_DELETION_PROTECTION_DESCRIPTION_CHARS}"
            ),
        ));
    }
    Ok(())
}

/// The keys of a tag call: 1–50 of them.
pub fn tag_call_key_count(n: usize) -> Result<(), DomainError> {
    if n == 0 || n > MAX_KEYS_PER_TAG_CALL {
        return Err(DomainError::invalid(
            "KeyIds",
            format!("key_ids must name 1 to {MAX_KEYS_PER_TAG_CALL} keys, got {n}"),
        ));
    }
    Ok(())
}

/// The tags of a `TagResources` call: at least one, each valid, keys unique, at most 20.
pub fn tags_to_add(tags: &[Tag]) -> Result<(), DomainError> {
    if tags.is_empty() {
        return Err(DomainError::invalid(
            "Tags",
            "tags must name at least one tag",
        ));
    }
    tag_set(tags)
}

/// The tag keys of an `UntagResources` call: 1–20 of them, each 1–128 characters.
pub fn tag_keys_to_remove(keys: &[String]) -> Result<(), DomainError> {
    if keys.is_empty() || keys.len() > MAX_TAGS_PER_KEY {
        return Err(DomainError::invalid(
            "TagKeys",
            format!(
                "tag_keys must name 1 to {MAX_TAGS_PER_KEY} tag keys, got {}",
                keys.len()
            ),
        ));
    }
    for k in keys {
        let n = k.chars().count();
        if n == 0 || n > MAX_TAG_CHARS {
            return Err(DomainError::invalid(
                "TagKeys",
                format!("tag key must have 1 to {MAX_TAG_CHARS} characters, got {n}"),
            ));
        }
    }
    Ok(())
}

/// A rotation interval given in whole days, 7–365.
pub fn rotation_interval_days(days: i64) -> Result<(), DomainError> {
    in_range("RotationInterval", "rotation interval", days, ROTATION_DAYS)
}

/// A pending-deletion window of 7–366 days.
pub fn pending_window_days(days: i64) -> Result<(), DomainError> {
    in_range(
        "PendingWindowInDays",
        "pending window",
        days,
        PENDING_WINDOW_DAYS,
    )
}

fn in_range(
    field: &'static str,
    what: &str,
    days: i64,
    (lo, hi): (i64, i64),
) -> Result<(), DomainError> {
    if (lo..=hi).contains(&days) {
        Ok(())
    } else {
        Err(DomainError::invalid(
            field,
            format!("{what} must be {lo} to {hi} days, got {days}"),
        ))
    }
}

/// A page size: 0 means the default (20); otherwise 1–100.
pub fn page_size(size: i32) -> Result<usize, DomainError> {
    match size {
        0 => Ok(PAGE_SIZE.0 as usize),
        1..=100 => Ok(size as usize),
        _ => Err(DomainError::invalid(
            "PageSize",
            format!("page_size must be 1 to 100, got {size}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(r: Result<(), DomainError>) -> Option<String> {
        r.err().map(|e| e.reason_code())
    }

    #[test]
    fn aliases() {
        let long_ok = format!("alias/{}", "a".repeat(255));
        let too_long = format!("alias/{}", "a".repeat(256));
        let cases: &[(&str, bool)] = &[
            ("alias/app", true),
            ("alias/a_b-c/d9", true),
            (&long_ok, true),
            (&too_long, false),
            ("alias/", false),
            ("app", false),
            ("Alias/app", false),
            ("alias/a b", false),
            ("alias/a.b", false),
            ("alias/acs/x", false),
            ("alias/acs", false),
            ("alias/acsx", true),
            ("alias/é", false),
        ];
        for (name, ok) in cases {
            let got = field(alias_name(name));
            if *ok {
                assert_eq!(got, None, "{name}");
            } else {
                assert_eq!(got.as_deref(), Some("InvalidParameter.AliasName"), "{name}");
            }
        }
    }

    #[test]
    fn descriptions() {
        assert!(description(&"é".repeat(8192)).is_ok());
        assert_eq!(
            field(description(&"x".repeat(8193))).as_deref(),
            Some("InvalidParameter.Description")
        );
    }

    #[test]
    fn tags() {
        let t = |k: &str, v: &str| Tag {
            key: k.into(),
            value: v.into(),
        };
        let c128 = "x".repeat(128);
        let c129 = "x".repeat(129);
        let cases: Vec<(Tag, Option<&str>)> = vec![
            (t("env", "prod"), None),
            (t("a/b\\c_d-e.f+g=h:i@j", "v"), None),
            (t(&c128, &c128), None),
            (t(&c129, "v"), Some("InvalidParameter.TagKey")),
            (t("k", &c129), Some("InvalidParameter.TagValue")),
            (t("", "v"), Some("InvalidParameter.TagKey")),
            (t("k", ""), Some("InvalidParameter.TagValue")),
            (t("aliyun-x", "v"), Some("InvalidParameter.TagKey")),
            (t("Aliyun", "v"), Some("InvalidParameter.TagKey")),
            (t("acs:x", "v"), Some("InvalidParameter.TagKey")),
            (t("acs-x", "v"), None),
            (t("k k", "v"), Some("InvalidParameter.TagKey")),
            (t("k", "v#"), Some("InvalidParameter.TagValue")),
        ];
        for (tg, want) in cases {
            assert_eq!(field(tag(&tg)).as_deref(), want, "{tg:?}");
        }
        let twenty: Vec<Tag> = (0..20).map(|i| t(&format!("k{i}"), "v")).collect();
        assert!(tag_set(&twenty).is_ok());
        let mut twenty_one = twenty.clone();
        twenty_one.push(t("k20", "v"));
        assert_eq!(
            field(tag_set(&twenty_one)).as_deref(),
            Some("InvalidParameter.Tags")
        );
        assert_eq!(
            field(tag_set(&[t("a", "1"), t("a", "2")])).as_deref(),
            Some("InvalidParameter.Tags")
        );
    }

    #[test]
    fn tag_calls_and_protection_text() {
        assert!(deletion_protection_description(&"x".repeat(8192)).is_ok());
        assert_eq!(
            field(deletion_protection_description(&"x".repeat(8193))).as_deref(),
            Some("InvalidParameter.DeletionProtectionDescription")
        );
        for (n, ok) in [(0, false), (1, true), (50, true), (51, false)] {
            assert_eq!(tag_call_key_count(n).is_ok(), ok, "{n} keys");
        }
        assert_eq!(
            field(tag_call_key_count(51)).as_deref(),
            Some("InvalidParameter.KeyIds")
        );
        assert_eq!(
            field(tags_to_add(&[])).as_deref(),
            Some("InvalidParameter.Tags")
        );
        let one = Tag {
            key: "k".into(),
            value: "v".into(),
        };
        assert!(tags_to_add(std::slice::from_ref(&one)).is_ok());
        let keys = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(tag_keys_to_remove(&keys(&["a"])).is_ok());
        for bad in [
            keys(&[]),
            keys(&[""]),
            vec!["x".repeat(129)],
            (0..21).map(|i| format!("k{i}")).collect(),
        ] {
            assert_eq!(
                field(tag_keys_to_remove(&bad)).as_deref(),
                Some("InvalidParameter.TagKeys"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn windows_and_intervals() {
        for (d, ok) in [
            (6, false),
            (7, true),
            (365, true),
            (366, false),
            (-1, false),
        ] {
            assert_eq!(rotation_interval_days(d).is_ok(), ok, "rotation {d}");
        }
        for (d, ok) in [(6, false), (7, true), (366, true), (367, false), (0, false)] {
            assert_eq!(pending_window_days(d).is_ok(), ok, "window {d}");
        }
        assert_eq!(page_size(0), Ok(20));
        assert_eq!(page_size(100), Ok(100));
        assert!(page_size(101).is_err());
        assert!(page_size(-1).is_err());
    }
}
