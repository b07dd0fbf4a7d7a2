//! The KMS Instances page, for operators: the instances with their quotas in use, creating one
//! (software or hardware, owner account, quotas), sharing and unsharing it, changing quotas.
//! Other callers see the instances they own or share, and the API's refusal if they try more.

use axum::Router;
use axum::extract::{Query, State};
use axum::routing::{get, post};
use kms_proto::kms::v1::{
    CreateKmsInstanceRequest, InstanceType, ShareKmsInstanceRequest, UnshareKmsInstanceRequest,
    UpdateKmsInstanceRequest,
};
use maud::html;
use serde::Deserialize;

use crate::keys::instances_of;
use crate::planes::ApiError;
use crate::view::{self, Nav, csrf};
use crate::web::{Caller, PageResult, Posted, Shared, fail, page, see_other};

pub(crate) fn routes() -> Router<Shared> {
    Router::new()
        .route("/instances", get(list).post(create))
        .route("/instances/share", post(share))
        .route("/instances/quota", post(quota))
}

#[derive(Debug, Default, Deserialize)]
struct Done {
    #[serde(default)]
    done: Option<String>,
}

async fn list(State(state): State<Shared>, caller: Caller, Query(q): Query<Done>) -> PageResult {
    let instances = instances_of(&state, &caller)
        .await
        .map_err(fail(&caller, "/keys"))?;
    let body = html! {
        (view::done_notice(q.done.as_deref()))
        table class="instances" {
            caption { "KMS Instances" }
            thead { tr {
                th scope="col" { "Instance ID" }
                th scope="col" { "Type" }
                th scope="col" { "Owner Account" }
                th scope="col" { "Keys (in use / quota)" }
                th scope="col" { "Access Management Quota" }
                th scope="col" { "Shared With" }
                th scope="col" { "Actions" }
            } }
            tbody {
                @for i in &instances {
                    tr data-instance-id=(i.kms_instance_id) {
                        td { code { (i.kms_instance_id) } }
                        td { (view::instance_type_name(i.instance_type)) }
                        td { code { (i.owner_account_id) } }
                        td class="key-quota" { (i.key_count) " / " (i.key_quota) }
                        td class="access-quota" { (i.shared_with_account_ids.len()) " shared / " (i.access_management_quota) }
                        td class="shared" {
                            @for a in &i.shared_with_account_ids {
                                span class="account" { code { (a) } }
                                form method="post" action="/instances/share" class="inline" {
                                    (csrf(&caller))
                                    input type="hidden" name="kms_instance_id" value=(i.kms_instance_id);
                                    input type="hidden" name="account_id" value=(a);
                                    button type="submit" name="op" value="unshare" { "Unshare " (a) }
                                }
                                " "
                            }
                        }
                        td {
                            form method="post" action="/instances/share" {
                                (csrf(&caller))
                                input type="hidden" name="kms_instance_id" value=(i.kms_instance_id);
                                label for=(format!("share-{}", i.kms_instance_id)) { "Account ID" }
                                input id=(format!("share-{}", i.kms_instance_id)) name="account_id" inputmode="numeric";
                                button type="submit" name="op" value="share" { "Share" }
                            }
                            form method="post" action="/instances/quota" {
                                (csrf(&caller))
                                input type="hidden" name="kms_instance_id" value=(i.kms_instance_id);
                                label for=(format!("quota-{}", i.kms_instance_id)) { "Key Quota" }
                                input type="number" id=(format!("quota-{}", i.kms_instance_id)) name="key_quota" min="1" value=(i.key_quota);
                                label for=(format!("access-{}", i.kms_instance_id)) { "Access Management Quota" }
                                input type="number" id=(format!("access-{}", i.kms_instance_id)) name="access_management_quota" min="0" value=(i.access_management_quota);
                                button type="submit" { "Update Quotas" }
                            }
                        }
                    }
                }
                @if instances.is_empty() { tr { td colspan="7" { "No KMS instances." } } }
            }
        }
        h2 { "Create KMS Instance" }
        p { "Operators only." }
        form method="post" action="/instances" id="create-instance" {
            (csrf(&caller))
            fieldset {
                legend { "Type" }
                input type="radio" id="type-software" name="instance_type" value="software" checked;
                label for="type-software" { "Software key management" }
                input type="radio" id="type-hardware" name="instance_type" value="hardware";
                label for="type-hardware" { "Hardware key management" }
            }
            label for="owner_account_id" { "Owner Account" }
            input id="owner_account_id" name="owner_account_id" inputmode="numeric" required;
            label for="key_quota" { "Key Quota" }
            input type="number" id="key_quota" name="key_quota" min="1" value="1000";
            label for="access_management_quota" { "Access Management Quota" }
            input type="number" id="access_management_quota" name="access_management_quota" min="0" value="1";
            button type="submit" class="primary" { "Create" }
        }
    };
    Ok(page(view::layout(
        &caller,
        Nav::Instances,
        "KMS Instances",
        body,
    )))
}

fn number(value: &str, what: &str) -> Result<i32, ApiError> {
    value
        .parse()
        .map_err(|_| ApiError::local(format!("{what} must be a whole number")))
}

async fn create(State(state): State<Shared>, caller: Caller, Posted(f): Posted) -> PageResult {
    let back = "/instances";
    let instance_type = match f.get("instance_type") {
        "hardware" => InstanceType::Hardware,
        _ => InstanceType::Software,
    };
    let key_quota = number(f.get("key_quota"), "Key Quota").map_err(fail(&caller, back))?;
    let access = number(f.get("access_management_quota"), "Access Management Quota")
        .map_err(fail(&caller, back))?;
    state
        .planes
        .instances(&caller.principal)
        .map_err(fail(&caller, back))?
        .create_kms_instance(CreateKmsInstanceRequest {
            instance_type: instance_type as i32,
            owner_account_id: f.get("owner_account_id").to_string(),
            key_quota,
            access_management_quota: Some(access),
        })
        .await
        .map_err(fail(&caller, back))?;
    Ok(see_other("/instances?done=instance"))
}

async fn share(State(state): State<Shared>, caller: Caller, Posted(f): Posted) -> PageResult {
    let back = "/instances";
    let mut client = state
        .planes
        .instances(&caller.principal)
        .map_err(fail(&caller, back))?;
    let kms_instance_id = f.get("kms_instance_id").to_string();
    let account_id = f.get("account_id").to_string();
    if f.get("op") == "unshare" {
        client
            .unshare_kms_instance(UnshareKmsInstanceRequest {
                kms_instance_id,
                account_id,
            })
            .await
            .map_err(fail(&caller, back))?;
    } else {
        client
            .share_kms_instance(ShareKmsInstanceRequest {
                kms_instance_id,
                account_id,
            })
            .await
            .map_err(fail(&caller, back))?;
    }
    Ok(see_other("/instances?done=instance"))
}

async fn quota(State(state): State<Shared>, caller: Caller, Posted(f): Posted) -> PageResult {
    let back = "/instances";
    let key_quota = number(f.get("key_quota"), "Key Quota").map_err(fail(&caller, back))?;
    let access = number(f.get("access_management_quota"), "Access Management Quota")
        .map_err(fail(&caller, back))?;
    state
        .planes
        .instances(&caller.principal)
        .map_err(fail(&caller, back))?
        .update_kms_instance(UpdateKmsInstanceRequest {
            kms_instance_id: f.get("kms_instance_id").to_string(),
            key_quota: Some(key_quota),
            access_management_quota: Some(access),
        })
        .await
        .map_err(fail(&caller, back))?;
    Ok(see_other("/instances?done=instance"))
}
