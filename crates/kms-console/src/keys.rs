//! The Keys page: the **Default Key** and **Keys** tabs, the **Instance ID** drop-down, the
//! filters, the key list with its **Actions** and **Tag** columns, batch **Add Tag** /
//! **Remove Tag**, the **Create Key** form, and the Enable, Disable, Schedule Deletion and
//! Cancel Key Deletion actions with their confirmation pages.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use kms_proto::kms::v1::{
    CancelKeyDeletionRequest, CreateKeyRequest, DisableKeyRequest, EnableKeyRequest, KeyMetadata,
    KeyOrigin, KeySpec, KeyUsage, KmsInstance, ListKeysFilter, ListKeysRequest,
    ListKmsInstancesRequest, ScheduleKeyDeletionRequest, TagResourcesRequest,
    UntagResourcesRequest,
};
use maud::{Markup, html};
use serde::Deserialize;

use crate::planes::ApiError;
use crate::view::{self, Nav, csrf, enc};
use crate::web::{Caller, Fields, PageResult, Posted, Shared, fail, page, see_other};

pub(crate) fn routes() -> Router<Shared> {
    Router::new()
        .route("/keys", get(list).post(create))
        .route("/keys/new", get(create_form))
        .route("/keys/batch-tags", post(batch_tags))
        .route("/keys/{id}/enable", post(enable))
        .route("/keys/{id}/disable", get(disable_dialog).post(disable))
        .route(
            "/keys/{id}/schedule-deletion",
            get(schedule_dialog).post(schedule),
        )
        .route("/keys/{id}/cancel-deletion", post(cancel_deletion))
}

/// The list's query: tab, instance and filters.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ListQuery {
    #[serde(default)]
    tab: Option<String>,
    #[serde(default)]
    instance: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    spec: Option<String>,
    #[serde(default)]
    tag_key: Option<String>,
    #[serde(default)]
    tag_value: Option<String>,
    #[serde(default)]
    done: Option<String>,
}

fn nonempty(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// The instances the caller may see, for the Instance ID drop-down.
pub(crate) async fn instances_of(
    state: &Shared,
    caller: &Caller,
) -> Result<Vec<KmsInstance>, ApiError> {
    let mut client = state.planes.instances(&caller.principal)?;
    let mut out = Vec::new();
    let mut token = String::new();
    for _ in 0..20 {
        let r = client
            .list_kms_instances(ListKmsInstancesRequest {
                page_size: 100,
                page_token: token.clone(),
            })
            .await?
            .into_inner();
        out.extend(r.kms_instances);
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    Ok(out)
}

async fn list_keys(
    state: &Shared,
    caller: &Caller,
    request: ListKeysRequest,
) -> Result<Vec<KeyMetadata>, ApiError> {
    let mut client = state.planes.keys(&caller.principal)?;
    let mut out = Vec::new();
    let mut request = request;
    for _ in 0..20 {
        let r = client.list_keys(request.clone()).await?.into_inner();
        out.extend(r.keys);
        if r.next_page_token.is_empty() {
            break;
        }
        request.page_token = r.next_page_token;
    }
    Ok(out)
}

async fn list(
    State(state): State<Shared>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> PageResult {
    let back = "/keys";
    let default_tab = q.tab.as_deref() == Some("default");
    let instances = instances_of(&state, &caller)
        .await
        .map_err(fail(&caller, back))?;
    let instance = nonempty(&q.instance)
        .map(str::to_string)
        .or_else(|| instances.first().map(|i| i.kms_instance_id.clone()))
        .unwrap_or_default();
    let filter = ListKeysFilter {
        key_state: nonempty(&q.state).and_then(|s| {
            view::STATES
                .iter()
                .find(|(_, _, v)| *v == s)
                .map(|(st, _, _)| *st as i32)
        }),
        key_spec: nonempty(&q.spec)
            .and_then(view::spec_from_name)
            .map(|s| s as i32),
        tag_key: nonempty(&q.tag_key).map(str::to_string),
        tag_value: nonempty(&q.tag_value).map(str::to_string),
        ..Default::default()
    };
    let request = ListKeysRequest {
        kms_instance_id: if default_tab {
            String::new()
        } else {
            instance.clone()
        },
        default_keys_only: default_tab,
        filters: Some(filter),
        page_size: 100,
        page_token: String::new(),
    };
    let keys = if default_tab || !instance.is_empty() {
        list_keys(&state, &caller, request)
            .await
            .map_err(fail(&caller, back))?
    } else {
        Vec::new()
    };
    let tab_link = |tab: &str| format!("/keys?tab={tab}&instance={}", enc(&instance));
    let body = html! {
        (view::done_notice(q.done.as_deref()))
        nav class="tabs" aria-label="Key tabs" {
            a href=(tab_link("default")) aria-current=[default_tab.then_some("page")] { "Default Key" }
            a href=(tab_link("keys")) aria-current=[(!default_tab).then_some("page")] { "Keys" }
        }
        @if default_tab {
            @if keys.is_empty() {
                p { "The default key of your account is not enabled." }
                p { a class="button" href="/keys/new?default=1" { "Enable" } }
            }
        } @else {
            form method="get" action="/keys" class="filters" {
                input type="hidden" name="tab" value="keys";
                label for="instance" { "Instance ID" }
                select id="instance" name="instance" class="autosubmit" {
                    @if instances.is_empty() { option value="" { "(no KMS instance)" } }
                    @for i in &instances {
                        option value=(i.kms_instance_id) selected[i.kms_instance_id == instance] {
                            (i.kms_instance_id) " (" (view::instance_type_name(i.instance_type)) ")"
                        }
                    }
                }
                label for="state" { "State" }
                select id="state" name="state" {
                    option value="" { "All" }
                    @for (_, name, value) in view::STATES {
                        option value=(value) selected[nonempty(&q.state) == Some(*value)] { (name) }
                    }
                }
                label for="spec" { "Key Specifications" }
                select id="spec" name="spec" {
                    option value="" { "All" }
                    @for (_, name, _) in view::SPECS {
                        option value=(name) selected[nonempty(&q.spec) == Some(*name)] { (name) }
                    }
                }
                label for="filter-tag-key" { "Tag Key" }
                input id="filter-tag-key" name="tag_key" value=(nonempty(&q.tag_key).unwrap_or_default());
                label for="filter-tag-value" { "Tag Value" }
                input id="filter-tag-value" name="tag_value" value=(nonempty(&q.tag_value).unwrap_or_default());
                button type="submit" { "Filter" }
            }
            @if !instance.is_empty() {
                p { a class="button primary" id="create-key" href=(format!("/keys/new?instance={}", enc(&instance))) { "Create Key" } }
            }
        }
        (key_table(&caller, &keys, !default_tab))
    };
    let title = if default_tab {
        "Keys: Default Key"
    } else {
        "Keys"
    };
    Ok(page(view::layout(&caller, Nav::Keys, title, body)))
}

fn key_table(caller: &Caller, keys: &[KeyMetadata], batch: bool) -> Markup {
    html! {
        @if keys.is_empty() {
            p class="empty" { "No keys." }
        } @else {
            form method="post" action="/keys/batch-tags" id="batch" {
                (csrf(caller))
                table class="keys" {
                    caption { "Keys" }
                    thead { tr {
                        @if batch { th scope="col" { span class="sr" { "Select" } } }
                        th scope="col" { "Key ID" }
                        th scope="col" { "Key Alias" }
                        th scope="col" { "Status" }
                        th scope="col" { "Key Specifications" }
                        th scope="col" { "Key Usage" }
                        th scope="col" { "Tag" }
                        th scope="col" { "Actions" }
                    } }
                    tbody {
                        @for k in keys {
                            tr data-key-id=(k.key_id) {
                                @if batch {
                                    td { input type="checkbox" name="key_id" value=(k.key_id) id=(format!("select-{}", k.key_id)) aria-label=(format!("Select {}", k.key_id)); }
                                }
                                td { a href=(format!("/keys/{}", enc(&k.key_id))) { code { (k.key_id) } } }
                                td { @for a in &k.aliases { span class="alias" { (a) } " " } }
                                td class="state" { (view::state_name(k.key_state)) }
                                td { (view::spec_name(k.key_spec)) }
                                td { (view::usage_name(k.key_usage)) }
                                td class="tags" {
                                    @for t in &k.tags { span class="tag" { (t.key) ":" (t.value) } " " }
                                    @if !k.is_default_key {
                                        a href=(format!("/keys/{}#tags", enc(&k.key_id))) { "Edit Tag" }
                                    }
                                }
                                td class="actions" { (actions(k)) }
                            }
                        }
                    }
                }
                @if batch {
                    fieldset class="batch" {
                        legend { "Selected keys" }
                        label for="batch-tag-key" { "Tag Key" }
                        input id="batch-tag-key" name="tag_key";
                        label for="batch-tag-value" { "Tag Value" }
                        input id="batch-tag-value" name="tag_value";
                        button type="submit" name="op" value="add" { "Add Tag" }
                        button type="submit" name="op" value="remove" { "Remove Tag" }
                    }
                }
            }
            @for k in keys {
                form method="post" action=(format!("/keys/{}/enable", enc(&k.key_id))) id=(format!("enable-{}", k.key_id)) class="hidden-form" { (csrf(caller)) }
                form method="post" action=(format!("/keys/{}/cancel-deletion", enc(&k.key_id))) id=(format!("cancel-{}", k.key_id)) class="hidden-form" { (csrf(caller)) }
            }
        }
    }
}

/// The links and buttons of the Actions column for one key.
fn actions(k: &KeyMetadata) -> Markup {
    use kms_proto::kms::v1::KeyState;
    let id = enc(&k.key_id);
    let state = KeyState::try_from(k.key_state).ok();
    html! {
        a href=(format!("/keys/{id}")) { "Details" }
        " "
        @match state {
            Some(KeyState::Enabled) => {
                a href=(format!("/keys/{id}/disable")) { "Disable" }
                " "
                a href=(format!("/keys/{id}/schedule-deletion")) { "Schedule Deletion" }
            }
            Some(KeyState::Disabled) => {
                button type="submit" form=(format!("enable-{}", k.key_id)) { "Enable" }
                " "
                a href=(format!("/keys/{id}/schedule-deletion")) { "Schedule Deletion" }
            }
            Some(KeyState::PendingDeletion) => {
                button type="submit" form=(format!("cancel-{}", k.key_id)) { "Cancel Key Deletion" }
            }
            Some(KeyState::PendingImport) => {
                a href=(format!("/keys/{id}/import")) { "Import Key Material" }
                " "
                a href=(format!("/keys/{id}/schedule-deletion")) { "Schedule Deletion" }
            }
            _ => {}
        }
    }
}

#[derive(Debug, Deserialize)]
struct CreateQuery {
    #[serde(default)]
    instance: Option<String>,
    #[serde(default)]
    default: Option<String>,
}

async fn create_form(
    State(state): State<Shared>,
    caller: Caller,
    Query(q): Query<CreateQuery>,
) -> PageResult {
    let default_key = q.default.is_some();
    let instances = if default_key {
        Vec::new()
    } else {
        instances_of(&state, &caller)
            .await
            .map_err(fail(&caller, "/keys"))?
    };
    let selected = nonempty(&q.instance).unwrap_or_default().to_string();
    let body = html! {
        form method="post" action="/keys" class="create" {
            (csrf(&caller))
            @if default_key {
                input type="hidden" name="default" value="1";
                p { "The default key is an Aliyun_AES_256 key for ENCRYPT/DECRYPT; an account has one." }
            } @else {
                label for="kms_instance_id" { "Instance ID" }
                select id="kms_instance_id" name="kms_instance_id" required {
                    @for i in &instances {
                        option value=(i.kms_instance_id) selected[i.kms_instance_id == selected] {
                            (i.kms_instance_id) " (" (view::instance_type_name(i.instance_type)) ")"
                        }
                    }
                }
                fieldset {
                    legend { "Key Type" }
                    input type="radio" id="type-symmetric" name="key_type" value="symmetric" checked;
                    label for="type-symmetric" { "Symmetric Key" }
                    input type="radio" id="type-asymmetric" name="key_type" value="asymmetric";
                    label for="type-asymmetric" { "Asymmetric Key" }
                }
                label for="key_spec" { "Key Specifications" }
                select id="key_spec" name="key_spec" {
                    @for (_, name, _) in view::SPECS { option value=(name) { (name) } }
                }
                label for="key_usage" { "Key Usage" }
                select id="key_usage" name="key_usage" {
                    option value="ENCRYPT/DECRYPT" { "ENCRYPT/DECRYPT" }
                    option value="SIGN/VERIFY" { "SIGN/VERIFY" }
                }
            }
            label for="alias" { "Key Alias" }
            input id="alias" name="alias" placeholder="alias/example" aria-describedby="alias-help";
            p id="alias-help" class="help" { "The alias can contain letters, digits, underscores (_), hyphens (-), and forward slashes (/)." }
            @if !default_key {
                fieldset {
                    legend { "Tags" }
                    @for i in 0..3 {
                        div class="tag-row" {
                            label for=(format!("tag-key-{i}")) { "Tag Key" }
                            input id=(format!("tag-key-{i}")) name="tag_key";
                            label for=(format!("tag-value-{i}")) { "Tag Value" }
                            input id=(format!("tag-value-{i}")) name="tag_value";
                        }
                    }
                }
                div {
                    input type="checkbox" id="rotation" name="rotation" value="on" checked;
                    label for="rotation" { "Automatic Rotation" }
                    " (symmetric keys only)"
                }
                label for="rotation_days" { "Rotation Period" }
                input type="number" id="rotation_days" name="rotation_days" min="7" max="365" value="365";
                " days"
            }
            fieldset {
                legend { "Key Material Source" }
                input type="radio" id="origin-kms" name="origin" value="kms" checked;
                label for="origin-kms" { "Key Management Service" }
                input type="radio" id="origin-external" name="origin" value="external";
                label for="origin-external" { "External" }
                div {
                    input type="checkbox" id="external-ack" name="external_ack" value="on";
                    label for="external-ack" { "I understand the implications of using the external key materials" }
                }
            }
            label for="description" { "Description" }
            textarea id="description" name="description" rows="3" {}
            @if !default_key {
                fieldset {
                    legend { "Policy" }
                    input type="radio" id="policy-default" name="policy_kind" value="default" checked;
                    label for="policy-default" { "Default Policy" }
                    input type="radio" id="policy-custom" name="policy_kind" value="custom";
                    label for="policy-custom" { "Custom Policy" }
                    label for="policy" { "Policy document (JSON)" }
                    textarea id="policy" name="policy" rows="8" {}
                }
            }
            button type="submit" class="primary" { "OK" }
            " "
            a href="/keys" { "Cancel" }
        }
    };
    let title = if default_key {
        "Enable the Default Key"
    } else {
        "Create Key"
    };
    Ok(page(view::layout(&caller, Nav::Keys, title, body)))
}

/// `alias/` in front of an alias name given without it.
pub(crate) fn alias_name(s: &str) -> String {
    if s.starts_with("alias/") {
        s.to_string()
    } else {
        format!("alias/{s}")
    }
}

fn create_request(f: &Fields) -> Result<CreateKeyRequest, ApiError> {
    let default_key = f.get("default") == "1";
    let external = f.get("origin") == "external";
    if external && f.get("external_ack") != "on" {
        return Err(ApiError::local(
            "select I understand the implications of using the external key materials to use External key material",
        ));
    }
    let (spec, usage) = if default_key {
        (KeySpec::AliyunAes256, KeyUsage::EncryptDecrypt)
    } else {
        let spec = view::spec_from_name(f.get("key_spec"))
            .ok_or_else(|| ApiError::local("choose Key Specifications"))?;
        let asymmetric = view::is_asymmetric(spec as i32);
        match (f.get("key_type"), asymmetric) {
            ("symmetric", true) => {
                return Err(ApiError::local(
                    "a Symmetric Key takes Aliyun_AES_256, Aliyun_AES_192 or Aliyun_AES_128",
                ));
            }
            ("asymmetric", false) => {
                return Err(ApiError::local(
                    "an Asymmetric Key takes RSA_2048, RSA_3072, RSA_4096, EC_P256 or EC_P256K",
                ));
            }
            _ => {}
        }
        let usage = match f.get("key_usage") {
            "SIGN/VERIFY" => KeyUsage::SignVerify,
            _ => KeyUsage::EncryptDecrypt,
        };
        (spec, usage)
    };
    let symmetric = !view::is_asymmetric(spec as i32);
    let rotation = f.get("rotation") == "on";
    let (enable_rotation, interval) = if default_key || !symmetric || external {
        (None, None)
    } else if rotation {
        let days: i64 = f
            .get("rotation_days")
            .parse()
            .map_err(|_| ApiError::local("Rotation Period must be a number of days, 7 to 365"))?;
        (
            Some(true),
            Some(prost_types::Duration {
                seconds: days.saturating_mul(86_400),
                nanos: 0,
            }),
        )
    } else {
        (Some(false), None)
    };
    let alias = f.get("alias");
    Ok(CreateKeyRequest {
        kms_instance_id: if default_key {
            String::new()
        } else {
            f.get("kms_instance_id").to_string()
        },
        key_spec: spec as i32,
        key_usage: usage as i32,
        origin: if external {
            KeyOrigin::External
        } else {
            KeyOrigin::Kms
        } as i32,
        description: f.get("description").to_string(),
        alias: if alias.is_empty() {
            String::new()
        } else {
            alias_name(alias)
        },
        tags: f.tags(),
        enable_automatic_rotation: enable_rotation,
        rotation_interval: interval,
        policy: if f.get("policy_kind") == "custom" {
            f.get("policy").to_string()
        } else {
            String::new()
        },
    })
}

async fn create(State(state): State<Shared>, caller: Caller, Posted(f): Posted) -> PageResult {
    let back = "/keys";
    let request = create_request(&f).map_err(fail(&caller, back))?;
    let key = state
        .planes
        .keys(&caller.principal)
        .map_err(fail(&caller, back))?
        .create_key(request)
        .await
        .map_err(fail(&caller, back))?
        .into_inner()
        .key_metadata
        .unwrap_or_default();
    Ok(see_other(&format!(
        "/keys/{}?done=created",
        enc(&key.key_id)
    )))
}

async fn batch_tags(State(state): State<Shared>, caller: Caller, Posted(f): Posted) -> PageResult {
    let back = "/keys";
    let key_ids = f.all("key_id");
    if key_ids.is_empty() {
        return Err(fail(&caller, back)(ApiError::local(
            "select at least one key",
        )));
    }
    let mut client = state
        .planes
        .keys(&caller.principal)
        .map_err(fail(&caller, back))?;
    match f.get("op") {
        "remove" => {
            let tag_keys: Vec<String> = f.tags().into_iter().map(|t| t.key).collect();
            client
                .untag_resources(UntagResourcesRequest { key_ids, tag_keys })
                .await
                .map_err(fail(&caller, back))?;
        }
        _ => {
            client
                .tag_resources(TagResourcesRequest {
                    key_ids,
                    tags: f.tags(),
                })
                .await
                .map_err(fail(&caller, back))?;
        }
    }
    Ok(see_other("/keys?done=tags"))
}

/// Where to go after an action on a key: its details page.
fn after(id: &str, done: &str) -> String {
    format!("/keys/{}?done={done}", enc(id))
}

async fn enable(
    State(state): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
    Posted(_): Posted,
) -> PageResult {
    let back = format!("/keys/{}", enc(&id));
    state
        .planes
        .keys(&caller.principal)
        .map_err(fail(&caller, &back))?
        .enable_key(EnableKeyRequest { key_id: id.clone() })
        .await
        .map_err(fail(&caller, &back))?;
    Ok(see_other(&after(&id, "enabled")))
}

async fn disable_dialog(caller: Caller, Path(id): Path<String>) -> PageResult {
    let body = html! {
        div class="dialog" role="alertdialog" aria-labelledby="dialog-title" {
            h2 id="dialog-title" { "Disable Key" }
            p { "You cannot use disabled keys for cryptographic operations: every Encrypt, Decrypt, GenerateDataKey, Sign and Verify call with key " code { (id) } " is refused until it is enabled again. Automatic rotation is suspended." }
            p { "Before you disable the key, make sure that it does not affect your workloads. "
                a href=(format!("/keys/{}/association", enc(&id))) { "Key Association" }
                " shows who used the key recently." }
            form method="post" action=(format!("/keys/{}/disable", enc(&id))) {
                (csrf(&caller))
                button type="submit" class="primary" { "OK" }
                " "
                a href=(format!("/keys/{}", enc(&id))) { "Cancel" }
            }
        }
    };
    Ok(page(view::layout(&caller, Nav::Keys, "Disable Key", body)))
}

async fn disable(
    State(state): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
    Posted(_): Posted,
) -> PageResult {
    let back = format!("/keys/{}", enc(&id));
    state
        .planes
        .keys(&caller.principal)
        .map_err(fail(&caller, &back))?
        .disable_key(DisableKeyRequest { key_id: id.clone() })
        .await
        .map_err(fail(&caller, &back))?;
    Ok(see_other(&after(&id, "disabled")))
}

async fn schedule_dialog(caller: Caller, Path(id): Path<String>) -> PageResult {
    let body = html! {
        div class="dialog" role="alertdialog" aria-labelledby="dialog-title" {
            h2 id="dialog-title" { "Schedule Deletion" }
            p class="warning" {
                strong { "Warning: " }
                "The system deletes the key when the scheduled deletion period elapses. After the key is deleted, you cannot decrypt the data that is encrypted by using the key or related data keys. Before you delete a key, make sure that the key is no longer in use. If you delete a key that is in use, your services may become unavailable."
            }
            p { "While the key is in the Pending Deletion state you cannot use it to encrypt data, decrypt data, or generate data keys. You can click Cancel Key Deletion before the period elapses. "
                a href=(format!("/keys/{}/association", enc(&id))) { "Key Association" }
                " shows who used the key recently." }
            form method="post" action=(format!("/keys/{}/schedule-deletion", enc(&id))) {
                (csrf(&caller))
                label for="pending_days" { "Scheduled deletion period (7 to 366 days)" }
                input type="number" id="pending_days" name="pending_days" min="7" max="366" value="30" required;
                button type="submit" class="primary" { "OK" }
                " "
                a href=(format!("/keys/{}", enc(&id))) { "Cancel" }
            }
        }
    };
    Ok(page(view::layout(
        &caller,
        Nav::Keys,
        "Schedule Deletion",
        body,
    )))
}

async fn schedule(
    State(state): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
    Posted(f): Posted,
) -> PageResult {
    let back = format!("/keys/{}", enc(&id));
    let days: i32 = f.get("pending_days").parse().map_err(|_| {
        fail(&caller, &back)(ApiError::local(
            "the scheduled deletion period is a number of days, 7 to 366",
        ))
    })?;
    state
        .planes
        .keys(&caller.principal)
        .map_err(fail(&caller, &back))?
        .schedule_key_deletion(ScheduleKeyDeletionRequest {
            key_id: id.clone(),
            pending_window_in_days: days,
        })
        .await
        .map_err(fail(&caller, &back))?;
    Ok(see_other(&after(&id, "scheduled")))
}

async fn cancel_deletion(
    State(state): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
    Posted(_): Posted,
) -> PageResult {
    let back = format!("/keys/{}", enc(&id));
    state
        .planes
        .keys(&caller.principal)
        .map_err(fail(&caller, &back))?
        .cancel_key_deletion(CancelKeyDeletionRequest { key_id: id.clone() })
        .await
        .map_err(fail(&caller, &back))?;
    Ok(see_other(&after(&id, "cancelled")))
}
