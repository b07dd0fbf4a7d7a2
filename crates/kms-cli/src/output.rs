//! Rendering of responses: aligned `field: value` text and tables for people (`--output
//! table`), a document in JSON (`--output json`, `--json`) or YAML (`--output yaml`). Labels
//! are the documents' field names (`key_id:`); enum values are shown by their display names
//! (`Aliyun_AES_256`), times as RFC 3339.

use std::io::Write;
use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use kms_proto::convert::WireEnum;
use kms_proto::kms::v1::{Alias, KeyMetadata, KeyVersion, KmsInstance, Tag};
use kms_types::{
    InstanceType, KeyOrigin, KeySpec, KeyState, KeyUsage, ProtectionLevel, RotationStatus,
};
use serde::Serialize;

/// How to print a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// Text for people.
    Human,
    /// One document per response: JSON, or YAML when [`set_syntax`] chose it.
    Json,
}

/// The syntax of documents, for responses on stdout and errors on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Syntax {
    Json,
    Yaml,
}

/// The syntax chosen for this run; JSON when none was.
static SYNTAX: OnceLock<Syntax> = OnceLock::new();

/// Chooses the syntax of every document this run prints; the first choice holds.
pub(crate) fn set_syntax(syntax: Syntax) {
    let _ = SYNTAX.set(syntax);
}

/// `value` as a document in the chosen syntax, ending in a newline.
pub(crate) fn document<T: Serialize>(value: &T) -> anyhow::Result<String> {
    match SYNTAX.get().copied().unwrap_or(Syntax::Json) {
        Syntax::Json => {
            let mut text = serde_json::to_string_pretty(value)?;
            text.push('\n');
            Ok(text)
        }
        Syntax::Yaml => Ok(serde_yaml_ng::to_string(value)?),
    }
}

/// A key's metadata as printed.
#[derive(Debug, Serialize)]
pub(crate) struct KeyView {
    key_id: String,
    arn: String,
    kms_instance_id: String,
    is_default_key: bool,
    key_spec: String,
    key_usage: String,
    key_state: String,
    protection_level: String,
    origin: String,
    description: String,
    creator: String,
    creation_date: Option<String>,
    delete_date: Option<String>,
    deletion_protection: bool,
    deletion_protection_description: String,
    rotation_status: String,
    rotation_interval_days: Option<i64>,
    last_rotation_date: Option<String>,
    next_rotation_date: Option<String>,
    primary_key_version_id: String,
    material_expire_time: Option<String>,
    aliases: Vec<String>,
    tags: Vec<TagView>,
}

#[derive(Debug, Serialize)]
struct TagView {
    key: String,
    value: String,
}

impl From<&KeyMetadata> for KeyView {
    fn from(m: &KeyMetadata) -> Self {
        Self {
            key_id: m.key_id.clone(),
            arn: m.arn.clone(),
            kms_instance_id: m.kms_instance_id.clone(),
            is_default_key: m.is_default_key,
            key_spec: enum_name(m.key_spec, |v: KeySpec| v.to_string()),
            key_usage: enum_name(m.key_usage, |v: KeyUsage| v.to_string()),
            key_state: enum_name(m.key_state, |s: KeyState| s.display_name().to_string()),
            protection_level: enum_name(m.protection_level, |v: ProtectionLevel| v.to_string()),
            origin: enum_name(m.origin, |v: KeyOrigin| v.to_string()),
            description: m.description.clone(),
            creator: m.creator.clone(),
            creation_date: m.creation_date.as_ref().map(rfc3339),
            delete_date: m.delete_date.as_ref().map(rfc3339),
            deletion_protection: m.deletion_protection,
            deletion_protection_description: m.deletion_protection_description.clone(),
            rotation_status: enum_name(m.rotation_status, |v: RotationStatus| v.to_string()),
            rotation_interval_days: m.rotation_interval.as_ref().map(|d| d.seconds / 86_400),
            last_rotation_date: m.last_rotation_date.as_ref().map(rfc3339),
            next_rotation_date: m.next_rotation_date.as_ref().map(rfc3339),
            primary_key_version_id: m.primary_key_version_id.clone(),
            material_expire_time: m.material_expire_time.as_ref().map(rfc3339),
            aliases: m.aliases.clone(),
            tags: m
                .tags
                .iter()
                .map(|t| TagView {
                    key: t.key.clone(),
                    value: t.value.clone(),
                })
                .collect(),
        }
    }
}

impl KeyView {
    /// The `field: value` lines shown to people.
    pub(crate) fn lines(&self) -> Vec<(&'static str, String)> {
        let mut lines = vec![
            ("key_id", self.key_id.clone()),
            ("arn", self.arn.clone()),
            (
                "kms_instance_id",
                if self.is_default_key || self.kms_instance_id.is_empty() {
                    "(default key)".to_string()
                } else {
                    self.kms_instance_id.clone()
                },
            ),
            ("key_spec", self.key_spec.clone()),
            ("key_usage", self.key_usage.clone()),
            ("key_state", self.key_state.clone()),
            ("protection_level", self.protection_level.clone()),
            ("origin", self.origin.clone()),
            (
                "primary_key_version_id",
                or_dash(&self.primary_key_version_id),
            ),
            ("rotation", self.rotation_text()),
            ("aliases", or_dash(&self.aliases.join(", "))),
        ];
        if !self.tags.is_empty() {
            let tags: Vec<String> = self
                .tags
                .iter()
                .map(|t| format!("{}={}", t.key, t.value))
                .collect();
            lines.push(("tags", tags.join(", ")));
        }
        if !self.description.is_empty() {
            lines.push(("description", self.description.clone()));
        }
        if self.deletion_protection {
            let text = if self.deletion_protection_description.is_empty() {
                "on".to_string()
            } else {
                format!("on ({})", self.deletion_protection_description)
            };
            lines.push(("deletion_protection", text));
        }
        if let Some(d) = &self.delete_date {
            lines.push(("delete_date", d.clone()));
        }
        if let Some(d) = &self.material_expire_time {
            lines.push(("material_expire_time", d.clone()));
        }
        if !self.creator.is_empty() {
            lines.push(("creator", self.creator.clone()));
        }
        lines.push((
            "creation_date",
            self.creation_date.clone().unwrap_or_else(|| "-".into()),
        ));
        lines
    }

    /// A short description: spec, usage, origin and where the key lives.
    pub(crate) fn summary(&self) -> String {
        let home = if self.is_default_key || self.kms_instance_id.is_empty() {
            "(the account's default key)".to_string()
        } else {
            format!("in {}", self.kms_instance_id)
        };
        format!(
            "{} {} key of origin {} {home}",
            self.key_spec, self.key_usage, self.origin
        )
    }

    fn rotation_text(&self) -> String {
        let mut text = self.rotation_status.clone();
        if self.origin == KeyOrigin::External.to_string() {
            text.push_str(" (not applicable: imported material gets new versions only by import)");
        }
        if let Some(days) = self.rotation_interval_days {
            text.push_str(&format!(", every {days} days"));
        }
        if let Some(next) = &self.next_rotation_date {
            text.push_str(&format!(", next {next}"));
        }
        if let Some(last) = &self.last_rotation_date {
            text.push_str(&format!(", last {last}"));
        }
        text
    }
}

/// Prints a key's metadata.
pub(crate) fn print_key(format: Format, metadata: Option<&KeyMetadata>) -> anyhow::Result<()> {
    let Some(m) = metadata else {
        anyhow::bail!("the server answered without key metadata");
    };
    let view = KeyView::from(m);
    match format {
        Format::Json => print_json(&view),
        Format::Human => print_text(&aligned(&view.lines())),
    }
}

/// Prints a page of keys: a table, or `{"keys": [...], "next_page_token": ...}`.
pub(crate) fn print_keys(format: Format, keys: &[KeyMetadata], next: &str) -> anyhow::Result<()> {
    let views: Vec<KeyView> = keys.iter().map(KeyView::from).collect();
    match format {
        Format::Json => print_json(&Listing {
            items: ("keys", &views),
            next_page_token: next,
        }),
        Format::Human => {
            let rows: Vec<Vec<String>> = views
                .iter()
                .map(|k| {
                    vec![
                        k.key_id.clone(),
                        k.key_spec.clone(),
                        k.key_usage.clone(),
                        k.key_state.clone(),
                        k.protection_level.clone(),
                        if k.is_default_key {
                            "(default key)".to_string()
                        } else {
                            k.kms_instance_id.clone()
                        },
                        or_dash(&k.aliases.join(",")),
                    ]
                })
                .collect();
            let headers = [
                "KEY ID",
                "SPEC",
                "USAGE",
                "STATE",
                "PROTECTION",
                "INSTANCE",
                "ALIASES",
            ];
            print_text(&with_next(table(&headers, &rows), next))
        }
    }
}

/// A page of a listing as JSON: the items under their name, and the next page's token.
struct Listing<'a, T> {
    items: (&'static str, &'a [T]),
    next_page_token: &'a str,
}

impl<T: Serialize> Serialize for Listing<'_, T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(2))?;
        map.serialize_entry(self.items.0, self.items.1)?;
        map.serialize_entry("next_page_token", self.next_page_token)?;
        map.end()
    }
}

/// A table, then how to ask for the next page when there is one.
fn with_next(mut text: String, next: &str) -> String {
    if !next.is_empty() {
        text.push_str(&format!(
            "(more: repeat with --page-token {next}, or use --all)\n"
        ));
    }
    text
}

/// A KMS instance as printed.
#[derive(Debug, Serialize)]
pub(crate) struct InstanceView {
    kms_instance_id: String,
    instance_type: String,
    owner_account_id: String,
    key_quota: i32,
    key_count: i32,
    access_management_quota: i32,
    shared_with_account_ids: Vec<String>,
}

impl From<&KmsInstance> for InstanceView {
    fn from(i: &KmsInstance) -> Self {
        Self {
            kms_instance_id: i.kms_instance_id.clone(),
            instance_type: enum_name(i.instance_type, |t: InstanceType| t.to_string()),
            owner_account_id: i.owner_account_id.clone(),
            key_quota: i.key_quota,
            key_count: i.key_count,
            access_management_quota: i.access_management_quota,
            shared_with_account_ids: i.shared_with_account_ids.clone(),
        }
    }
}

/// Prints one instance.
pub(crate) fn print_instance(format: Format, instance: Option<&KmsInstance>) -> anyhow::Result<()> {
    let Some(i) = instance else {
        anyhow::bail!("the server answered without the kms instance");
    };
    let v = InstanceView::from(i);
    match format {
        Format::Json => print_json(&v),
        Format::Human => print_text(&aligned(&[
            ("kms_instance_id", v.kms_instance_id.clone()),
            ("instance_type", v.instance_type.clone()),
            ("owner_account_id", v.owner_account_id.clone()),
            ("keys", format!("{} of {}", v.key_count, v.key_quota)),
            (
                "shared_with_account_ids",
                format!(
                    "{} (of {} allowed)",
                    or_dash(&v.shared_with_account_ids.join(", ")),
                    v.access_management_quota
                ),
            ),
        ])),
    }
}

/// Prints a page of instances.
pub(crate) fn print_instances(
    format: Format,
    instances: &[KmsInstance],
    next: &str,
) -> anyhow::Result<()> {
    let views: Vec<InstanceView> = instances.iter().map(InstanceView::from).collect();
    match format {
        Format::Json => print_json(&Listing {
            items: ("kms_instances", &views),
            next_page_token: next,
        }),
        Format::Human => {
            let rows: Vec<Vec<String>> = views
                .iter()
                .map(|v| {
                    vec![
                        v.kms_instance_id.clone(),
                        v.instance_type.clone(),
                        v.owner_account_id.clone(),
                        format!("{}/{}", v.key_count, v.key_quota),
                        or_dash(&v.shared_with_account_ids.join(",")),
                    ]
                })
                .collect();
            let headers = ["INSTANCE ID", "TYPE", "OWNER", "KEYS", "SHARED WITH"];
            print_text(&with_next(table(&headers, &rows), next))
        }
    }
}

/// A key version as printed.
#[derive(Debug, Serialize)]
pub(crate) struct VersionView {
    key_id: String,
    key_version_id: String,
    creation_date: Option<String>,
    is_primary: bool,
}

impl From<&KeyVersion> for VersionView {
    fn from(v: &KeyVersion) -> Self {
        Self {
            key_id: v.key_id.clone(),
            key_version_id: v.key_version_id.clone(),
            creation_date: v.creation_date.as_ref().map(rfc3339),
            is_primary: v.is_primary,
        }
    }
}

/// Prints one key version.
pub(crate) fn print_version(format: Format, version: Option<&KeyVersion>) -> anyhow::Result<()> {
    let Some(v) = version else {
        anyhow::bail!("the server answered without the key version");
    };
    let v = VersionView::from(v);
    match format {
        Format::Json => print_json(&v),
        Format::Human => print_text(&aligned(&[
            ("key_id", v.key_id.clone()),
            ("key_version_id", v.key_version_id.clone()),
            (
                "is_primary",
                if v.is_primary { "yes" } else { "no" }.to_string(),
            ),
            (
                "creation_date",
                v.creation_date.clone().unwrap_or_else(|| "-".into()),
            ),
        ])),
    }
}

/// Prints a page of key versions.
pub(crate) fn print_versions(
    format: Format,
    versions: &[KeyVersion],
    next: &str,
) -> anyhow::Result<()> {
    let views: Vec<VersionView> = versions.iter().map(VersionView::from).collect();
    match format {
        Format::Json => print_json(&Listing {
            items: ("key_versions", &views),
            next_page_token: next,
        }),
        Format::Human => {
            let rows: Vec<Vec<String>> = views
                .iter()
                .map(|v| {
                    vec![
                        v.key_version_id.clone(),
                        v.creation_date.clone().unwrap_or_else(|| "-".into()),
                        if v.is_primary { "yes" } else { "" }.to_string(),
                    ]
                })
                .collect();
            print_text(&with_next(
                table(&["VERSION ID", "CREATED", "PRIMARY"], &rows),
                next,
            ))
        }
    }
}

/// An alias as printed.
#[derive(Debug, Serialize)]
pub(crate) struct AliasView {
    alias_name: String,
    alias_arn: String,
    key_id: String,
}

/// Prints a page of aliases.
pub(crate) fn print_aliases(format: Format, aliases: &[Alias], next: &str) -> anyhow::Result<()> {
    let views: Vec<AliasView> = aliases
        .iter()
        .map(|a| AliasView {
            alias_name: a.alias_name.clone(),
            alias_arn: a.alias_arn.clone(),
            key_id: a.key_id.clone(),
        })
        .collect();
    match format {
        Format::Json => print_json(&Listing {
            items: ("aliases", &views),
            next_page_token: next,
        }),
        Format::Human => {
            let rows: Vec<Vec<String>> = views
                .iter()
                .map(|a| vec![a.alias_name.clone(), a.key_id.clone()])
                .collect();
            print_text(&with_next(table(&["ALIAS", "KEY ID"], &rows), next))
        }
    }
}

/// Prints a key's tags.
pub(crate) fn print_tags(format: Format, tags: &[Tag]) -> anyhow::Result<()> {
    let views: Vec<TagView> = tags
        .iter()
        .map(|t| TagView {
            key: t.key.clone(),
            value: t.value.clone(),
        })
        .collect();
    match format {
        Format::Json => print_json(&serde_json::json!({ "tags": views })),
        Format::Human => {
            let rows: Vec<Vec<String>> = views
                .iter()
                .map(|t| vec![t.key.clone(), t.value.clone()])
                .collect();
            print_text(&table(&["KEY", "VALUE"], &rows))
        }
    }
}

/// Prints what a call with an empty response did: a sentence for people, `value` as JSON.
pub(crate) fn print_done<T: Serialize>(
    format: Format,
    sentence: &str,
    value: &T,
) -> anyhow::Result<()> {
    match format {
        Format::Json => print_json(value),
        Format::Human => print_text(&format!("{sentence}\n")),
    }
}

/// Rows under a header, each column as wide as its widest cell; `(none)` without rows.
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    if rows.is_empty() {
        return "(none)\n".to_string();
    }
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i + 1 == widths.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
        out
    };
    let mut out = line(&mut headers.iter().copied());
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

/// `field: value` lines with the values aligned.
pub(crate) fn aligned(lines: &[(&str, String)]) -> String {
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    let mut out = String::new();
    for (k, v) in lines {
        out.push_str(&format!("{:<width$} {v}\n", format!("{k}:")));
    }
    out
}

/// Prints a value as a document on stdout: pretty JSON, or YAML with `--output yaml`.
pub(crate) fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    print_text(&document(value)?)
}

/// Writes text to stdout; a closed pipe is not an error worth a panic.
pub(crate) fn print_text(text: &str) -> anyhow::Result<()> {
    write_stdout(text.as_bytes())
}

/// Writes bytes to stdout as they are.
pub(crate) fn write_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// A wire enum value by its display name; unknown values show their number.
fn enum_name<T: WireEnum>(v: i32, show: impl Fn(T) -> String) -> String {
    match T::from_wire(v) {
        Ok(e) => show(e),
        Err(_) if v == 0 => "-".to_string(),
        Err(_) => format!("unknown({v})"),
    }
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_string()
    } else {
        s.to_string()
    }
}

/// A protobuf timestamp in RFC 3339, UTC, to the second. Times humantime cannot show (before
/// 1970, after 9999) are shown as seconds since the epoch.
pub(crate) fn rfc3339(t: &prost_types::Timestamp) -> String {
    match u64::try_from(t.seconds) {
        Ok(secs) if secs < 253_402_300_800 => {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
        }
        _ => format!("{}s since the epoch", t.seconds),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use kms_proto::kms::v1::Tag;

    use super::*;

    fn sample() -> KeyMetadata {
        KeyMetadata {
            key_id: "key-abc".into(),
            arn: "acs:kms:local:1234567890123456:key/key-abc".into(),
            key_spec: KeySpec::AliyunAes256.to_wire(),
            key_usage: KeyUsage::EncryptDecrypt.to_wire(),
            key_state: KeyState::Enabled.to_wire(),
            protection_level: ProtectionLevel::Software.to_wire(),
            origin: KeyOrigin::Kms.to_wire(),
            rotation_status: RotationStatus::Enabled.to_wire(),
            rotation_interval: Some(prost_types::Duration {
                seconds: 365 * 86_400,
                nanos: 0,
            }),
            creation_date: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 5,
            }),
            primary_key_version_id: "v-1".into(),
            aliases: vec!["alias/demo".into()],
            tags: vec![Tag {
                key: "env".into(),
                value: "dev".into(),
            }],
            is_default_key: true,
            ..Default::default()
        }
    }

    #[test]
    fn human_lines() {
        let text = aligned(&KeyView::from(&sample()).lines());
        for want in [
            "key_id:                 key-abc\n",
            "key_spec:               Aliyun_AES_256\n",
            "key_usage:              ENCRYPT/DECRYPT\n",
            "key_state:              Enabled\n",
            "origin:                 Aliyun_KMS\n",
            "rotation:               Enabled, every 365 days\n",
            "aliases:                alias/demo\n",
            "tags:                   env=dev\n",
            "creation_date:          2023-11-14T22:13:20Z\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }

    #[test]
    fn imported_keys_show_rotation_as_not_applicable() {
        let external = KeyMetadata {
            origin: KeyOrigin::External.to_wire(),
            rotation_status: RotationStatus::Disabled.to_wire(),
            rotation_interval: None,
            ..sample()
        };
        let text = aligned(&KeyView::from(&external).lines());
        assert!(
            text.contains("rotation:               Disabled (not applicable: imported material"),
            "{text}"
        );
    }

    #[test]
    fn json_uses_display_names() {
        let json = serde_json::to_value(KeyView::from(&sample())).unwrap();
        assert_eq!(json["key_spec"], "Aliyun_AES_256");
        assert_eq!(json["rotation_interval_days"], 365);
        assert_eq!(json["creation_date"], "2023-11-14T22:13:20Z");
        assert_eq!(json["tags"][0]["key"], "env");
    }

    #[test]
    fn tables_align_columns() {
        let text = table(
            &["ID", "STATE", "ALIASES"],
            &[
                vec!["key-1".into(), "Enabled".into(), "alias/a".into()],
                vec!["key-22222".into(), "Disabled".into(), "-".into()],
            ],
        );
        assert_eq!(
            text,
            "ID         STATE     ALIASES\n\
             key-1      Enabled   alias/a\n\
             key-22222  Disabled  -\n"
        );
        assert_eq!(table(&["A"], &[]), "(none)\n");
    }

    #[test]
    fn listings_as_json_name_their_items() {
        let views = vec![VersionView::from(&KeyVersion {
            key_id: "key-1".into(),
            key_version_id: "v".into(),
            creation_date: None,
            is_primary: true,
        })];
        let json = serde_json::to_value(Listing {
            items: ("key_versions", &views),
            next_page_token: "t",
        })
        .unwrap();
        assert_eq!(json["key_versions"][0]["is_primary"], true);
        assert_eq!(json["next_page_token"], "t");
        let instance = InstanceView::from(&KmsInstance {
            instance_type: 2,
            ..Default::default()
        });
        assert_eq!(
            serde_json::to_value(instance).unwrap()["instance_type"],
            "HARDWARE"
        );
        assert!(with_next("x\n".into(), "tok").contains("--page-token tok"));
    }

    #[test]
    fn odd_values_do_not_panic() {
        assert_eq!(enum_name(0, |v: KeySpec| v.to_string()), "-");
        assert_eq!(enum_name(99, |v: KeySpec| v.to_string()), "unknown(99)");
        for seconds in [i64::MIN, -1, 0, i64::MAX] {
            let _ = rfc3339(&prost_types::Timestamp { seconds, nanos: 0 });
        }
        assert_eq!(
            rfc3339(&prost_types::Timestamp {
                seconds: 0,
                nanos: 0
            }),
            "1970-01-01T00:00:00Z"
        );
    }
}
