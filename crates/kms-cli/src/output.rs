//! Rendering of responses: aligned `field: value` text for people, JSON with `--json`.
//! Enum values are shown by their display names (`Aliyun_AES_256`), times as RFC 3339.

use std::io::Write;
use std::time::{Duration, UNIX_EPOCH};

use kms_proto::convert::WireEnum;
use kms_proto::kms::v1::KeyMetadata;
use kms_types::{KeyOrigin, KeySpec, KeyState, KeyUsage, ProtectionLevel, RotationStatus};
use serde::Serialize;

/// How to print a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// Text for people.
    Human,
    /// JSON, one document per response.
    Json,
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
                "instance",
                if self.is_default_key || self.kms_instance_id.is_empty() {
                    "(default key)".to_string()
                } else {
                    self.kms_instance_id.clone()
                },
            ),
            ("spec", self.key_spec.clone()),
            ("usage", self.key_usage.clone()),
            ("state", self.key_state.clone()),
            ("protection", self.protection_level.clone()),
            ("origin", self.origin.clone()),
            ("primary version", or_dash(&self.primary_key_version_id)),
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
            lines.push(("deletion protection", text));
        }
        if let Some(d) = &self.delete_date {
            lines.push(("delete date", d.clone()));
        }
        if let Some(d) = &self.material_expire_time {
            lines.push(("material expires", d.clone()));
        }
        if !self.creator.is_empty() {
            lines.push(("creator", self.creator.clone()));
        }
        lines.push((
            "creation date",
            self.creation_date.clone().unwrap_or_else(|| "-".into()),
        ));
        lines
    }

    fn rotation_text(&self) -> String {
        let mut text = self.rotation_status.clone();
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

/// `field: value` lines with the values aligned.
pub(crate) fn aligned(lines: &[(&str, String)]) -> String {
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    let mut out = String::new();
    for (k, v) in lines {
        out.push_str(&format!("{:<width$} {v}\n", format!("{k}:")));
    }
    out
}

/// Prints a value as pretty JSON on stdout.
pub(crate) fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    print_text(&text)
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
            "key_id:          key-abc\n",
            "spec:            Aliyun_AES_256\n",
            "usage:           ENCRYPT/DECRYPT\n",
            "state:           Enabled\n",
            "origin:          Aliyun_KMS\n",
            "rotation:        Enabled, every 365 days\n",
            "aliases:         alias/demo\n",
            "tags:            env=dev\n",
            "creation date:   2023-11-14T22:13:20Z\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
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
