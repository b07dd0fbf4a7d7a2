//! A key's details page: its metadata, **Deletion Protection**, description, aliases, **Edit
//! Tag**, key policy as JSON, rotation settings, the **Key Version** tab with **View Public
//! Key** and **Download**, the **Key Association** tab with **Check**, and the External
//! key-material flow (wrapping public key and import token, upload, delete, expiry).

use axum::Router;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use kms_proto::kms::v1::{
    Algorithm, CheckKeyAssociationRequest, CreateAliasRequest, CreateKeyVersionRequest,
    DeleteAliasRequest, DeleteKeyMaterialRequest, DescribeKeyRequest, GetKeyPolicyRequest,
    GetParametersForImportRequest, GetPublicKeyRequest, ImportKeyMaterialRequest, KeyMetadata,
    KeyOrigin, KeySpec, ListKeyVersionsRequest, SetDeletionProtectionRequest, SetKeyPolicyRequest,
    TagResourcesRequest, UntagResourcesRequest, UpdateAliasRequest, UpdateKeyDescriptionRequest,
    UpdateRotationPolicyRequest,
};
use maud::{Markup, html};
use serde::Deserialize;

use crate::keys::alias_name;
use crate::planes::ApiError;
use crate::session::{Session, csrf_matches};
use crate::view::{self, Nav, csrf, enc};
use crate::web::{Caller, Failure, PageResult, Posted, Refused, Shared, fail, page, see_other};

pub(crate) fn routes() -> Router<Shared> {
    Router::new()
        .route("/keys/{id}", get(details))
        .route("/keys/{id}/association", get(association))
        .route("/keys/{id}/deletion-protection", post(deletion_protection))
        .route("/keys/{id}/description", post(description))
        .route("/keys/{id}/aliases", post(aliases))
        .route("/keys/{id}/tags", post(tags))
        .route("/keys/{id}/policy", post(policy))
        .route("/keys/{id}/rotation", post(rotation))
        .route("/keys/{id}/versions", post(new_version))
        .route("/keys/{id}/public-key", get(public_key))
        .route("/keys/{id}/public-key.pem", get(public_key_pem))
        .route("/keys/{id}/import", get(import_page).post(import))
        .route("/keys/{id}/import/parameters", post(import_parameters))
        .route(
            "/keys/{id}/delete-material",
            get(delete_material_dialog).post(delete_material),
        )
        .route("/download", post(download))
}

#[derive(Debug, Default, Deserialize)]
struct DetailsQuery {
    #[serde(default)]
    tab: Option<String>,
    #[serde(default)]
    done: Option<String>,
}

fn key_url(id: &str) -> String {
    format!("/keys/{}", enc(id))
}

async fn describe(state: &Shared, caller: &Caller, id: &str) -> Result<KeyMetadata, Failure> {
    let back = "/keys";
    Ok(state
        .planes
        .keys(&caller.principal)
        .map_err(fail(caller, back))?
        .describe_key(DescribeKeyRequest {
            key_id: id.to_string(),
        })
        .await
        .map_err(fail(caller, back))?
        .into_inner()
        .key_metadata
        .unwrap_or_default())
}

async fn details(
    State(state): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<DetailsQuery>,
) -> PageResult {
    let tab = q.tab.as_deref().unwrap_or("details");
    render(&state, &caller, &id, tab, q.done.as_deref(), None).await
}

async fn association(
    State(state): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
) -> PageResult {
    let back = key_url(&id);
    let checked = state
        .planes
        .keys(&caller.principal)
        .map_err(fail(&caller, &back))?
        .check_key_association(CheckKeyAssociationRequest { key_id: id.clone() })
        .await
        .map_err(fail(&caller, &back))?
        .into_inner();
    let result = html! {
        h3 { "Check result" }
        table class="association" {
            caption { "Principals that called the key in the last 365 days" }
            thead { tr { th scope="col" { "Principal" } th scope="col" { "Operation" } th scope="col" { "Last Called At" } } }
            tbody {
                @for a in &checked.associations {
                    tr { td { code { (a.principal) } } td { (a.operation) } td { (view::time(a.last_called_at.as_ref())) } }
                }
                @if checked.associations.is_empty() { tr { td colspan="3" { "No calls recorded." } } }
            }
        }
        table class="version-usage" {
            caption { "Last use of each key version" }
            thead { tr { th scope="col" { "Key Version" } th scope="col" { "Last Used At" } } }
            tbody {
                @for v in &checked.version_usage {
                    tr { td { code { (v.key_version_id) } } td { (view::time(v.last_used_at.as_ref())) } }
                }
            }
        }
    };
    render(&state, &caller, &id, "association", None, Some(result)).await
}

async fn render(
    state: &Shared,
    caller: &Caller,
    id: &str,
    tab: &str,
    done: Option<&str>,
    check: Option<Markup>,
) -> PageResult {
    let key = describe(state, caller, id).await?;
    let base = key_url(&key.key_id);
    let mut client = state
        .planes
        .keys(&caller.principal)
        .map_err(fail(caller, &base))?;
    let content = match tab {
        "versions" => {
            let versions = client
                .list_key_versions(ListKeyVersionsRequest {
                    key_id: key.key_id.clone(),
                    page_size: 100,
                    page_token: String::new(),
                })
                .await
                .map_err(fail(caller, &base))?
                .into_inner()
                .key_versions;
            versions_tab(caller, &key, &versions)
        }
        "association" => html! {
            p { "Who called the key, for which operation and when, and when each key version was last used. If the key is still in use, do not delete the key unless otherwise required." }
            form method="get" action=(format!("{base}/association")) {
                button type="submit" class="primary" { "Check" }
            }
            @if let Some(check) = &check { (check) }
        },
        _ => {
            // The policy is shown only to callers allowed to read it; the refusal is shown
            // in its place otherwise.
            let policy = client
                .get_key_policy(GetKeyPolicyRequest {
                    key_id: key.key_id.clone(),
                })
                .await
                .map(|r| r.into_inner().policy)
                .map_err(ApiError::from);
            details_tab(caller, &key, policy)
        }
    };
    let tab_link = |t: &str, label: &str| {
        html! { a href=(format!("{base}?tab={t}")) aria-current=[(tab == t).then_some("page")] { (label) } }
    };
    let body = html! {
        (view::done_notice(done))
        p { a href="/keys" { "Keys" } " / " code { (key.key_id) } }
        nav class="tabs" aria-label="Key details tabs" {
            (tab_link("details", "Details"))
            (tab_link("versions", "Key Version"))
            (tab_link("association", "Key Association"))
        }
        (content)
    };
    Ok(page(view::layout(caller, Nav::Keys, "Key Details", body)))
}

fn details_tab(caller: &Caller, key: &KeyMetadata, policy: Result<String, ApiError>) -> Markup {
    let base = key_url(&key.key_id);
    let external = key.origin == KeyOrigin::External as i32;
    let symmetric = !view::is_asymmetric(key.key_spec);
    html! {
        section aria-labelledby="basic" id="basic-section" {
            h2 id="basic" { "Basic Information" }
            dl class="meta" {
                dt { "Key ID" } dd id="key-id" { code { (key.key_id) } }
                dt { "ARN" } dd { code { (key.arn) } }
                dt { "Instance ID" } dd { (if key.is_default_key { "(default key)" } else { key.kms_instance_id.as_str() }) }
                dt { "Status" } dd id="key-state" { (view::state_name(key.key_state)) }
                dt { "Key Specifications" } dd { (view::spec_name(key.key_spec)) }
                dt { "Key Usage" } dd { (view::usage_name(key.key_usage)) }
                dt { "Key Material Source" } dd { (view::origin_name(key.origin)) }
                dt { "Protection Level" } dd { (if key.protection_level == kms_proto::kms::v1::ProtectionLevel::Hsm as i32 { "HSM" } else { "Software" }) }
                dt { "Creator" } dd { code { (key.creator) } }
                dt { "Created At" } dd { (view::time(key.creation_date.as_ref())) }
                @if key.delete_date.is_some() { dt { "Scheduled Deletion" } dd { (view::time(key.delete_date.as_ref())) } }
                dt { "Primary Key Version" } dd { code { (key.primary_key_version_id) } }
                dt { "Description" } dd id="key-description" { (key.description) }
                dt { "Key Alias" } dd { @for a in &key.aliases { span class="alias" { (a) } " " } }
            }
            div class="actions" {
                @match kms_proto::kms::v1::KeyState::try_from(key.key_state).ok() {
                    Some(kms_proto::kms::v1::KeyState::Enabled) => {
                        a href=(format!("{base}/disable")) { "Disable" } " "
                        a href=(format!("{base}/schedule-deletion")) { "Schedule Deletion" }
                    }
                    Some(kms_proto::kms::v1::KeyState::Disabled) => {
                        form method="post" action=(format!("{base}/enable")) class="inline" { (csrf(caller)) button type="submit" { "Enable" } }
                        " " a href=(format!("{base}/schedule-deletion")) { "Schedule Deletion" }
                    }
                    Some(kms_proto::kms::v1::KeyState::PendingDeletion) => {
                        form method="post" action=(format!("{base}/cancel-deletion")) class="inline" { (csrf(caller)) button type="submit" { "Cancel Key Deletion" } }
                    }
                    Some(kms_proto::kms::v1::KeyState::PendingImport) => {
                        a href=(format!("{base}/schedule-deletion")) { "Schedule Deletion" }
                    }
                    _ => {}
                }
            }
        }
        section aria-labelledby="protection" {
            h2 id="protection" { "Deletion Protection" }
            p id="deletion-protection-state" { "Deletion Protection is " strong { (if key.deletion_protection { "on" } else { "off" }) } "." }
            form method="post" action=(format!("{base}/deletion-protection")) {
                (csrf(caller))
                @if key.deletion_protection {
                    input type="hidden" name="enable" value="false";
                    button type="submit" id="deletion-protection-toggle" { "Turn off Deletion Protection" }
                } @else {
                    input type="hidden" name="enable" value="true";
                    label for="protection-description" { "Reason (optional)" }
                    input id="protection-description" name="description";
                    button type="submit" id="deletion-protection-toggle" { "Turn on Deletion Protection" }
                }
            }
        }
        section aria-labelledby="desc" {
            h2 id="desc" { "Description" }
            form method="post" action=(format!("{base}/description")) {
                (csrf(caller))
                label for="description" { "Description" }
                textarea id="description" name="description" rows="2" { (key.description) }
                button type="submit" { "Save Description" }
            }
        }
        section aria-labelledby="aliases" {
            h2 id="aliases" { "Aliases" }
            ul {
                @for a in &key.aliases {
                    li {
                        code { (a) } " "
                        form method="post" action=(format!("{base}/aliases")) class="inline" {
                            (csrf(caller))
                            input type="hidden" name="alias" value=(a);
                            button type="submit" name="op" value="delete" { "Delete Alias " (a) }
                        }
                    }
                }
            }
            form method="post" action=(format!("{base}/aliases")) {
                (csrf(caller))
                label for="new-alias" { "Key Alias" }
                input id="new-alias" name="alias" placeholder="alias/example";
                button type="submit" name="op" value="create" { "Create Alias" }
            }
            form method="post" action=(format!("{base}/aliases")) {
                (csrf(caller))
                label for="move-alias" { "Existing alias to point at this key" }
                input id="move-alias" name="alias" placeholder="alias/example";
                button type="submit" name="op" value="update" { "Update Alias" }
            }
        }
        section aria-labelledby="tags" id="tags-section" {
            h2 id="tags" { "Tag" }
            @if key.is_default_key {
                p { "You cannot add tags to default keys." }
            } @else {
                h3 { "Edit Tag" }
                ul class="tag-list" {
                    @for t in &key.tags {
                        li {
                            span class="tag" { (t.key) ":" (t.value) } " "
                            form method="post" action=(format!("{base}/tags")) class="inline" {
                                (csrf(caller))
                                input type="hidden" name="tag_key" value=(t.key);
                                button type="submit" name="op" value="remove" { "Remove " (t.key) }
                            }
                        }
                    }
                }
                form method="post" action=(format!("{base}/tags")) {
                    (csrf(caller))
                    @for i in 0..2 {
                        div class="tag-row" {
                            label for=(format!("edit-tag-key-{i}")) { "Tag Key" }
                            input id=(format!("edit-tag-key-{i}")) name="tag_key";
                            label for=(format!("edit-tag-value-{i}")) { "Tag Value" }
                            input id=(format!("edit-tag-value-{i}")) name="tag_value";
                        }
                    }
                    button type="submit" name="op" value="add" { "OK" }
                }
            }
        }
        section aria-labelledby="policy-h" {
            h2 id="policy-h" { "Key Policy" }
            @match &policy {
                Ok(p) => {
                    form method="post" action=(format!("{base}/policy")) {
                        (csrf(caller))
                        label for="policy" { "Policy document (JSON)" }
                        textarea id="policy" name="policy" rows="12" { (p) }
                        button type="submit" { "Save Policy" }
                    }
                }
                Err(e) => {
                    p class="error" role="alert" { "The policy cannot be shown: " code { (e.reason.as_deref().unwrap_or("-")) } " " (e.message) }
                }
            }
        }
        @if symmetric && !external {
            section aria-labelledby="rotation-h" {
                h2 id="rotation-h" { "Rotation Settings" }
                dl class="meta" {
                    dt { "Automatic Rotation" } dd { (view::rotation_name(key.rotation_status)) }
                    dt { "Rotation Period (days)" } dd id="rotation-period" { (view::days(key.rotation_interval.as_ref())) }
                    dt { "Last Rotation" } dd { (view::time(key.last_rotation_date.as_ref())) }
                    dt { "Next Rotation" } dd { (view::time(key.next_rotation_date.as_ref())) }
                }
                form method="post" action=(format!("{base}/rotation")) {
                    (csrf(caller))
                    input type="checkbox" id="rotation" name="rotation" value="on" checked[key.rotation_status != kms_proto::kms::v1::RotationStatus::Disabled as i32];
                    label for="rotation" { "Automatic Rotation" }
                    label for="rotation_days" { "Rotation Period" }
                    input type="number" id="rotation_days" name="rotation_days" min="7" max="365" value=(key.rotation_interval.as_ref().map(|d| d.seconds / 86_400).filter(|d| *d > 0).unwrap_or(365));
                    " days "
                    button type="submit" { "Save Rotation Settings" }
                }
            }
        }
        @if external {
            section aria-labelledby="material-h" {
                h2 id="material-h" { "Key Material" }
                p { "Key Material Source: External. Material expires: " span id="material-expiry" { (view::time(key.material_expire_time.as_ref())) } }
                p {
                    a href=(format!("{base}/import")) { "Import Key Material" } " "
                    @if key.key_state != kms_proto::kms::v1::KeyState::PendingImport as i32 {
                        a href=(format!("{base}/delete-material")) { "Delete Key Material" }
                    }
                }
            }
        }
    }
}

fn versions_tab(
    caller: &Caller,
    key: &KeyMetadata,
    versions: &[kms_proto::kms::v1::KeyVersion],
) -> Markup {
    let base = key_url(&key.key_id);
    let asymmetric = view::is_asymmetric(key.key_spec);
    html! {
        table class="versions" {
            caption { "Key Version" }
            thead { tr { th scope="col" { "Key Version ID" } th scope="col" { "Created At" } th scope="col" { "Primary" } th scope="col" { "Actions" } } }
            tbody {
                @for v in versions {
                    tr {
                        td { code { (v.key_version_id) } }
                        td { (view::time(v.creation_date.as_ref())) }
                        td { @if v.is_primary { strong class="primary-marker" { "Primary" } } }
                        td {
                            @if asymmetric {
                                a href=(format!("{base}/public-key?version={}", enc(&v.key_version_id))) { "View Public Key" }
                            }
                        }
                    }
                }
            }
        }
        @if !asymmetric && key.origin == KeyOrigin::Kms as i32 {
            form method="post" action=(format!("{base}/versions")) {
                (csrf(caller))
                button type="submit" { "Create Key Version" }
            }
        }
    }
}

#[derive(Debug, Deserialize)]
struct VersionQuery {
    #[serde(default)]
    version: Option<String>,
}

async fn fetch_public_key(
    state: &Shared,
    caller: &Caller,
    id: &str,
    version: &str,
) -> Result<kms_proto::kms::v1::GetPublicKeyResponse, Failure> {
    let back = format!("{}?tab=versions", key_url(id));
    Ok(state
        .planes
        .crypto(&caller.principal)
        .map_err(fail(caller, &back))?
        .get_public_key(GetPublicKeyRequest {
            key_id: id.to_string(),
            key_version_id: version.to_string(),
        })
        .await
        .map_err(fail(caller, &back))?
        .into_inner())
}

async fn public_key(
    State(state): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<VersionQuery>,
) -> PageResult {
    let version = q.version.unwrap_or_default();
    let pk = fetch_public_key(&state, &caller, &id, &version).await?;
    let body = html! {
        div class="dialog" role="dialog" aria-labelledby="dialog-title" {
            h2 id="dialog-title" { "View Public Key" }
            p { "Key " code { (pk.key_id) } ", version " code { (pk.key_version_id) } ". You cannot download the private key of an asymmetric key." }
            pre id="public-key" { (pk.public_key) }
            p {
                a class="button primary" id="download-public-key" download="publicKey.pem"
                    href=(format!("{}/public-key.pem?version={}", key_url(&id), enc(&pk.key_version_id))) { "Download" }
                " "
                a href=(format!("{}?tab=versions", key_url(&id))) { "Close" }
            }
        }
    };
    Ok(page(view::layout(
        &caller,
        Nav::Keys,
        "View Public Key",
        body,
    )))
}

async fn public_key_pem(
    State(state): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<VersionQuery>,
) -> Result<Response, Failure> {
    let version = q.version.unwrap_or_default();
    let pk = fetch_public_key(&state, &caller, &id, &version).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-pem-file".to_string()),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"publicKey.pem\"".to_string(),
            ),
        ],
        pk.public_key,
    )
        .into_response())
}

async fn deletion_protection(
    State(state): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
    Posted(f): Posted,
) -> PageResult {
    let back = key_url(&id);
    state
        .planes
        .keys(&caller.principal)
        .map_err(fail(&caller, &back))?
        .set_deletion_protection(SetDeletionProtectionRequest {
            key_id: id.clone(),
            enable_deletion_protection: f.get("enable") == "true",
            deletion_protection_description: f.get("description").to_string(),
        })
        .await
        .map_err(fail(&caller, &back))?;
    Ok(see_other(&format!("{back}?done=protection")))
}

async fn description(
    State(state): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
    Posted(f): Posted,
) -> PageResult {
    let back = key_url(&id);
    state
        .planes
        .keys(&caller.principal)
        .map_err(fail(&caller, &back))?
        .update_key_description(UpdateKeyDescriptionRequest {
            key_id: id.clone(),
            description: f.get("description").to_string(),
        })
        .await
        .map_err(fail(&caller, &back))?;
    Ok(see_other(&format!("{back}?done=description")))
}

async fn aliases(
    State(state): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
    Posted(f): Posted,
) -> PageResult {
    let back = key_url(&id);
    let alias = f.get("alias");
    if alias.is_empty() {
        return Err(fail(&caller, &back)(ApiError::local("enter a Key Alias")));
    }
    let alias_name = alias_name(alias);
    let mut client = state
        .planes
        .keys(&caller.principal)
        .map_err(fail(&caller, &back))?;
    match f.get("op") {
        "delete" => {
            client
                .delete_alias(DeleteAliasRequest { alias_name })
                .await
                .map_err(fail(&caller, &back))?;
        }
        "update" => {
            client
                .update_alias(UpdateAliasRequest {
                    alias_name,
                    key_id: id.clone(),
                })
                .await
                .map_err(fail(&caller, &back))?;
        }
        _ => {
            client
                .create_alias(CreateAliasRequest {
                    alias_name,
                    key_id: id.clone(),
                })
                .await
                .map_err(fail(&caller, &back))?;
        }
    }
    Ok(see_other(&format!("{back}?done=alias")))
}

async fn tags(
    State(state): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
    Posted(f): Posted,
) -> PageResult {
    let back = key_url(&id);
    let mut client = state
        .planes
        .keys(&caller.principal)
        .map_err(fail(&caller, &back))?;
    if f.get("op") == "remove" {
        client
            .untag_resources(UntagResourcesRequest {
                key_ids: vec![id.clone()],
                tag_keys: f.all("tag_key"),
            })
            .await
            .map_err(fail(&caller, &back))?;
    } else {
        let tags = f.tags();
        if tags.is_empty() {
            return Err(fail(&caller, &back)(ApiError::local("enter a Tag Key")));
        }
        client
            .tag_resources(TagResourcesRequest {
                key_ids: vec![id.clone()],
                tags,
            })
            .await
            .map_err(fail(&caller, &back))?;
    }
    Ok(see_other(&format!("{back}?done=tags")))
}

async fn policy(
    State(state): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
    Posted(f): Posted,
) -> PageResult {
    let back = key_url(&id);
    let document = f.get("policy").to_string();
    if let Err(e) = serde_json::from_str::<serde_json::Value>(&document) {
        return Err(fail(&caller, &back)(ApiError::local(format!(
            "the policy is not JSON: {e}"
        ))));
    }
    state
        .planes
        .keys(&caller.principal)
        .map_err(fail(&caller, &back))?
        .set_key_policy(SetKeyPolicyRequest {
            key_id: id.clone(),
            policy: document,
        })
        .await
        .map_err(fail(&caller, &back))?;
    Ok(see_other(&format!("{back}?done=policy")))
}

async fn rotation(
    State(state): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
    Posted(f): Posted,
) -> PageResult {
    let back = key_url(&id);
    let on = f.get("rotation") == "on";
    let interval = if on {
        let days: i64 = f.get("rotation_days").parse().map_err(|_| {
            fail(&caller, &back)(ApiError::local(
                "Rotation Period must be a number of days, 7 to 365",
            ))
        })?;
        Some(prost_types::Duration {
            seconds: days.saturating_mul(86_400),
            nanos: 0,
        })
    } else {
        None
    };
    state
        .planes
        .keys(&caller.principal)
        .map_err(fail(&caller, &back))?
        .update_rotation_policy(UpdateRotationPolicyRequest {
            key_id: id.clone(),
            enable_automatic_rotation: Some(on),
            rotation_interval: interval,
        })
        .await
        .map_err(fail(&caller, &back))?;
    Ok(see_other(&format!("{back}?done=rotation")))
}

async fn new_version(
    State(state): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
    Posted(_): Posted,
) -> PageResult {
    let back = key_url(&id);
    state
        .planes
        .keys(&caller.principal)
        .map_err(fail(&caller, &back))?
        .create_key_version(CreateKeyVersionRequest { key_id: id.clone() })
        .await
        .map_err(fail(&caller, &back))?;
    Ok(see_other(&format!("{back}?tab=versions&done=version")))
}

/// The wrapping algorithms a person may pick, with the API's values.
const WRAPPING: &[(&str, Algorithm)] = &[
    ("RSAES_OAEP_SHA_256", Algorithm::RsaesOaepSha256),
    ("RSAES_OAEP_SHA_1", Algorithm::RsaesOaepSha1),
    ("RSA_AES_KEY_WRAP_SHA_256", Algorithm::RsaAesKeyWrapSha256),
];

async fn import_page(
    State(state): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
) -> PageResult {
    let key = describe(&state, &caller, &id).await?;
    let base = key_url(&key.key_id);
    let body = html! {
        p { "Key " code { (key.key_id) } " (" (view::spec_name(key.key_spec)) "), Key Material Source: " (view::origin_name(key.origin)) ", status " (view::state_name(key.key_state)) "." }
        h2 { "1. Obtain the parameters for import" }
        form method="post" action=(format!("{base}/import/parameters")) {
            (csrf(&caller))
            label for="wrapping_algorithm" { "Wrapping Algorithm" }
            select id="wrapping_algorithm" name="wrapping_algorithm" {
                @for (name, _) in WRAPPING { option value=(name) { (name) } }
            }
            label for="wrapping_key_spec" { "Wrapping Key Specifications" }
            select id="wrapping_key_spec" name="wrapping_key_spec" { option value="RSA_2048" { "RSA_2048" } }
            button type="submit" class="primary" { "Obtain Parameters" }
        }
        (upload_form(&caller, &base, ""))
    };
    Ok(page(view::layout(
        &caller,
        Nav::Keys,
        "Import Key Material",
        body,
    )))
}

fn upload_form(caller: &Caller, base: &str, token: &str) -> Markup {
    html! {
        h2 { "2. Upload the wrapped key material" }
        form method="post" action=(format!("{base}/import")) enctype="multipart/form-data" {
            (csrf(caller))
            label for="import_token" { "Import Token" }
            textarea id="import_token" name="import_token" rows="4" required { (token) }
            label for="material" { "Encrypted Key Material (file)" }
            input type="file" id="material" name="material" required;
            label for="expire_days" { "Key material expires after (days; empty: never)" }
            input type="number" id="expire_days" name="expire_days" min="1";
            button type="submit" class="primary" { "OK" }
        }
    }
}

/// DER bytes as a PEM block.
fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

async fn import_parameters(
    State(state): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
    Posted(f): Posted,
) -> PageResult {
    let base = key_url(&id);
    let back = format!("{base}/import");
    let algorithm = WRAPPING
        .iter()
        .find(|(n, _)| *n == f.get("wrapping_algorithm"))
        .map(|(_, a)| *a)
        .ok_or_else(|| fail(&caller, &back)(ApiError::local("choose a Wrapping Algorithm")))?;
    let params = state
        .planes
        .keys(&caller.principal)
        .map_err(fail(&caller, &back))?
        .get_parameters_for_import(GetParametersForImportRequest {
            key_id: id.clone(),
            wrapping_algorithm: algorithm as i32,
            wrapping_key_spec: KeySpec::Rsa2048 as i32,
        })
        .await
        .map_err(fail(&caller, &back))?
        .into_inner();
    let public_pem = pem("PUBLIC KEY", &params.public_key);
    let body = html! {
        h2 { "1. Parameters for import" }
        p { "The wrapping public key and the import token expire at " strong id="token-expiry" { (view::time(params.token_expire_time.as_ref())) } "." }
        h3 { "Wrapping public key" }
        pre id="wrapping-public-key" { (public_pem) }
        (download_button(&caller, "publicKey.pem", &public_pem, "Download the wrapping public key"))
        h3 { "Import token" }
        pre id="import-token" class="wrap" { (params.import_token) }
        (download_button(&caller, "importToken.txt", &params.import_token, "Download the import token"))
        (upload_form(&caller, &base, &params.import_token))
    };
    Ok(page(view::layout(
        &caller,
        Nav::Keys,
        "Import Key Material",
        body,
    )))
}

fn download_button(caller: &Caller, name: &str, content: &str, label: &str) -> Markup {
    html! {
        form method="post" action="/download" class="inline" {
            (csrf(caller))
            input type="hidden" name="name" value=(name);
            input type="hidden" name="content" value=(content);
            button type="submit" { (label) }
        }
    }
}

/// Hands a public text back as a file to save: the wrapping public key and the import token,
/// which the API gives once per call. Only those two names are served.
async fn download(_caller: Caller, Posted(f): Posted) -> Response {
    let name = match f.get("name") {
        "publicKey.pem" => "publicKey.pem",
        "importToken.txt" => "importToken.txt",
        _ => {
            return Refused(
                "Only the wrapping public key and the import token are downloaded here.",
            )
            .into_response();
        }
    };
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        f.get("content").to_string(),
    )
        .into_response()
}

/// The largest wrapped material accepted: an RSA-4096 key wrapped is about 3 KiB.
const MAX_MATERIAL: usize = 16 * 1024;

async fn import(
    State(state): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
    session: axum::Extension<Session>,
    mut multipart: Multipart,
) -> PageResult {
    let base = key_url(&id);
    let back = format!("{base}/import");
    let mut csrf_value = String::new();
    let mut token = String::new();
    let mut material = Vec::new();
    let mut expire_days = String::new();
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|_| fail(&caller, &back)(ApiError::local("the form could not be read")))?
    {
        let name = field.name().unwrap_or_default().to_string();
        let bytes = field
            .bytes()
            .await
            .map_err(|_| fail(&caller, &back)(ApiError::local("the form could not be read")))?;
        match name.as_str() {
            "csrf" => csrf_value = String::from_utf8_lossy(&bytes).trim().to_string(),
            "import_token" => token = String::from_utf8_lossy(&bytes).trim().to_string(),
            "expire_days" => expire_days = String::from_utf8_lossy(&bytes).trim().to_string(),
            "material" => {
                if bytes.len() > MAX_MATERIAL {
                    return Err(fail(&caller, &back)(ApiError::local(
                        "the encrypted key material file is too large",
                    )));
                }
                material = bytes.to_vec();
            }
            _ => {}
        }
    }
    if !csrf_matches(&session, &csrf_value) {
        return Ok(Refused("The form's security token is missing or belongs to another session: reload the page and submit again.").into_response());
    }
    let expire = if expire_days.is_empty() {
        None
    } else {
        let days: i64 = expire_days
            .parse()
            .map_err(|_| fail(&caller, &back)(ApiError::local("the expiry is a number of days")))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Some(prost_types::Timestamp {
            seconds: i64::try_from(now).unwrap_or(0) + days.saturating_mul(86_400),
            nanos: 0,
        })
    };
    state
        .planes
        .keys(&caller.principal)
        .map_err(fail(&caller, &back))?
        .import_key_material(ImportKeyMaterialRequest {
            key_id: id.clone(),
            import_token: token,
            encrypted_key_material: material,
            key_material_expire_time: expire,
        })
        .await
        .map_err(fail(&caller, &back))?;
    Ok(see_other(&format!("{base}?done=imported")))
}

async fn delete_material_dialog(caller: Caller, Path(id): Path<String>) -> PageResult {
    let base = key_url(&id);
    let body = html! {
        div class="dialog" role="alertdialog" aria-labelledby="dialog-title" {
            h2 id="dialog-title" { "Delete Key Material" }
            p class="warning" { "After the key material is deleted the key returns to Pending Import and cannot be used until the same material is imported again. Data encrypted under it cannot be decrypted until then." }
            form method="post" action=(format!("{base}/delete-material")) {
                (csrf(&caller))
                button type="submit" class="primary" { "OK" }
                " " a href=(base.clone()) { "Cancel" }
            }
        }
    };
    Ok(page(view::layout(
        &caller,
        Nav::Keys,
        "Delete Key Material",
        body,
    )))
}

async fn delete_material(
    State(state): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
    Posted(_): Posted,
) -> PageResult {
    let back = key_url(&id);
    state
        .planes
        .keys(&caller.principal)
        .map_err(fail(&caller, &back))?
        .delete_key_material(DeleteKeyMaterialRequest { key_id: id.clone() })
        .await
        .map_err(fail(&caller, &back))?;
    Ok(see_other(&format!("{back}?done=material-deleted")))
}
