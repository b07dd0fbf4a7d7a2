//! The page frame (navigation, who is signed in, the dev banner), the error page, and the
//! names the guide uses for the API's values. Everything spliced into markup goes through
//! maud, which escapes it.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kms_proto::kms::v1::{InstanceType, KeyOrigin, KeySpec, KeyState, KeyUsage, RotationStatus};
use maud::{DOCTYPE, Markup, html};

use crate::web::{Caller, Failure};

/// Which navigation entry a page belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nav {
    Keys,
    Instances,
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " - KMS console" }
            link rel="stylesheet" href="/static/console.css";
            script src="/static/console.js" defer {}
        }
    }
}

/// The warning shown whenever identity comes from the dev sign-in page.
pub(crate) fn dev_banner() -> Markup {
    html! {
        p class="dev-banner" role="note" {
            strong { "Development sign-in." }
            " Anyone who can reach this console can act as any principal of the dev stack. Never use this mode outside local development."
        }
    }
}

/// A page in the console's frame, for `caller`.
pub(crate) fn layout(caller: &Caller, nav: Nav, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                a class="skip" href="#main" { "Skip to content" }
                header {
                    @if caller.dev { (dev_banner()) }
                    nav aria-label="Main" {
                        ul {
                            li { a href="/keys" aria-current=[(nav == Nav::Keys).then_some("page")] { "Keys" } }
                            li { a href="/instances" aria-current=[(nav == Nav::Instances).then_some("page")] { "KMS Instances" } }
                        }
                    }
                    div class="whoami" {
                        "Signed in as " code { (caller.principal) }
                        @if caller.dev {
                            form method="post" action="/sign-out" class="inline" {
                                input type="hidden" name="csrf" value=(caller.session.csrf);
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main id="main" {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// A page outside the frame (sign-in, refusals).
pub(crate) fn bare_page(status: StatusCode, title: &str, body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body { main id="main" { h1 { (title) } (body) } }
        }
    };
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response()
}

/// The API's error: its code, reason code and message, and the way back.
pub(crate) fn error_page(failure: &Failure) -> Response {
    let e = &failure.error;
    let body = html! {
        div class="error" role="alert" {
            dl {
                dt { "Reason" } dd class="reason" { code { (e.reason.as_deref().unwrap_or("-")) } }
                dt { "Message" } dd class="message" { (e.message) }
                dt { "Status" } dd { code { (e.code_name()) } }
                @if let Some(id) = &e.request_id { dt { "Request ID" } dd { code { (id) } } }
            }
        }
        @if let Some(back) = &failure.back { p { a href=(back) { "Back" } } }
    };
    let markup = match &failure.caller {
        Some(caller) => layout(caller, Nav::Keys, "The request failed", body),
        None => html! { (body) },
    };
    (
        e.http_status(),
        [(axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response()
}

/// A notice after an action succeeded, from a fixed list (never text from the request).
pub(crate) fn done_notice(done: Option<&str>) -> Markup {
    let text = match done.unwrap_or_default() {
        "created" => "The key is created.",
        "enabled" => "The key is enabled.",
        "disabled" => "The key is disabled.",
        "scheduled" => "The key is scheduled for deletion.",
        "cancelled" => "The key deletion is cancelled.",
        "protection" => "Deletion Protection is updated.",
        "tags" => "The tags are updated.",
        "alias" => "The aliases are updated.",
        "policy" => "The key policy is saved.",
        "rotation" => "The rotation settings are saved.",
        "description" => "The description is saved.",
        "imported" => "The key material is imported.",
        "material-deleted" => "The key material is deleted.",
        "version" => "A new key version is created.",
        "instance" => "The KMS instance is updated.",
        _ => return html! {},
    };
    html! { p class="notice" role="status" { (text) } }
}

/// The guide's name of a key spec.
pub(crate) fn spec_name(spec: i32) -> &'static str {
    match KeySpec::try_from(spec) {
        Ok(KeySpec::AliyunAes256) => "Aliyun_AES_256",
        Ok(KeySpec::AliyunAes192) => "Aliyun_AES_192",
        Ok(KeySpec::AliyunAes128) => "Aliyun_AES_128",
        Ok(KeySpec::Rsa2048) => "RSA_2048",
        Ok(KeySpec::Rsa3072) => "RSA_3072",
        Ok(KeySpec::Rsa4096) => "RSA_4096",
        Ok(KeySpec::EcP256) => "EC_P256",
        Ok(KeySpec::EcP256k) => "EC_P256K",
        _ => "-",
    }
}

/// Every key spec with its guide name, symmetric first.
pub(crate) const SPECS: &[(KeySpec, &str, bool)] = &[
    (KeySpec::AliyunAes256, "Aliyun_AES_256", true),
    (KeySpec::AliyunAes192, "Aliyun_AES_192", true),
    (KeySpec::AliyunAes128, "Aliyun_AES_128", true),
    (KeySpec::Rsa2048, "RSA_2048", false),
    (KeySpec::Rsa3072, "RSA_3072", false),
    (KeySpec::Rsa4096, "RSA_4096", false),
    (KeySpec::EcP256, "EC_P256", false),
    (KeySpec::EcP256k, "EC_P256K", false),
];

/// A key spec from its guide name.
pub(crate) fn spec_from_name(name: &str) -> Option<KeySpec> {
    SPECS
        .iter()
        .find(|(_, n, _)| *n == name)
        .map(|(s, _, _)| *s)
}

/// Whether a spec is asymmetric.
pub(crate) fn is_asymmetric(spec: i32) -> bool {
    SPECS.iter().any(|(s, _, sym)| *s as i32 == spec && !*sym)
}

/// The guide's name of a key usage.
pub(crate) fn usage_name(usage: i32) -> &'static str {
    match KeyUsage::try_from(usage) {
        Ok(KeyUsage::EncryptDecrypt) => "ENCRYPT/DECRYPT",
        Ok(KeyUsage::SignVerify) => "SIGN/VERIFY",
        _ => "-",
    }
}

/// The console's name of a key state (the guide's words where it has them).
pub(crate) fn state_name(state: i32) -> &'static str {
    match KeyState::try_from(state) {
        Ok(KeyState::Enabled) => "Enabled",
        Ok(KeyState::Disabled) => "Disabled",
        Ok(KeyState::PendingDeletion) => "Pending Deletion",
        Ok(KeyState::PendingImport) => "Pending Import",
        _ => "-",
    }
}

/// Key states with their names and form values.
pub(crate) const STATES: &[(KeyState, &str, &str)] = &[
    (KeyState::Enabled, "Enabled", "enabled"),
    (KeyState::Disabled, "Disabled", "disabled"),
    (
        KeyState::PendingDeletion,
        "Pending Deletion",
        "pending-deletion",
    ),
    (KeyState::PendingImport, "Pending Import", "pending-import"),
];

/// The guide's name of a key origin (Key Material Source).
pub(crate) fn origin_name(origin: i32) -> &'static str {
    match KeyOrigin::try_from(origin) {
        Ok(KeyOrigin::Kms) => "Key Management Service",
        Ok(KeyOrigin::External) => "External",
        _ => "-",
    }
}

/// The name of a rotation status.
pub(crate) fn rotation_name(status: i32) -> &'static str {
    match RotationStatus::try_from(status) {
        Ok(RotationStatus::Enabled) => "Enabled",
        Ok(RotationStatus::Disabled) => "Disabled",
        Ok(RotationStatus::Suspended) => "Suspended",
        _ => "-",
    }
}

/// The name of an instance type.
pub(crate) fn instance_type_name(t: i32) -> &'static str {
    match InstanceType::try_from(t) {
        Ok(InstanceType::Software) => "Software key management",
        Ok(InstanceType::Hardware) => "Hardware key management",
        _ => "-",
    }
}

/// A timestamp as RFC 3339 in UTC, or `-`.
pub(crate) fn time(t: Option<&prost_types::Timestamp>) -> String {
    let Some(t) = t else {
        return "-".into();
    };
    let Ok(secs) = u64::try_from(t.seconds) else {
        return "-".into();
    };
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    humantime::format_rfc3339_seconds(at).to_string()
}

/// A duration in whole days, or `-`.
pub(crate) fn days(d: Option<&prost_types::Duration>) -> String {
    match d {
        Some(d) if d.seconds > 0 => format!("{}", d.seconds / 86_400),
        _ => "-".into(),
    }
}

/// The hidden CSRF field of every form.
pub(crate) fn csrf(caller: &Caller) -> Markup {
    html! { input type="hidden" name="csrf" value=(caller.session.csrf); }
}

/// Percent-encodes a path segment or query value.
pub(crate) fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
