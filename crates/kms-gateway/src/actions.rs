//! The KMS OpenAPI (2016-01-20) actions: each reads the reference's parameters, makes the gRPC
//! calls as the caller, and answers with the reference's PascalCase names. `docs/GATEWAY.md`
//! lists every action with its RPC and what differs.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine;
use kms_proto::convert::WireEnum;
use kms_proto::kms::v1 as pb;
use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::planes::Planes;

/// The JSON object an action answers with (without `RequestId`).
pub type Answer = Map<String, Value>;

/// Every action, in the order `docs/GATEWAY.md` lists them.
pub const ACTIONS: &[&str] = &[
    "CreateKey",
    "DescribeKey",
    "ListKeys",
    "UpdateKeyDescription",
    "EnableKey",
    "DisableKey",
    "ScheduleKeyDeletion",
    "CancelKeyDeletion",
    "SetDeletionProtection",
    "UpdateRotationPolicy",
    "CreateKeyVersion",
    "DescribeKeyVersion",
    "ListKeyVersions",
    "CreateAlias",
    "UpdateAlias",
    "DeleteAlias",
    "ListAliases",
    "ListAliasesByKeyId",
    "TagResources",
    "UntagResources",
    "ListTagResources",
    "TagResource",
    "UntagResource",
    "ListResourceTags",
    "Encrypt",
    "Decrypt",
    "ReEncrypt",
    "GenerateDataKey",
    "GenerateDataKeyWithoutPlaintext",
    "GenerateAndExportDataKey",
    "ExportDataKey",
    "AsymmetricEncrypt",
    "AsymmetricDecrypt",
    "AsymmetricSign",
    "AsymmetricVerify",
    "GetPublicKey",
    "GetParametersForImport",
    "ImportKeyMaterial",
    "DeleteKeyMaterial",
    "GetRandomPassword",
    "SetKeyPolicy",
    "GetKeyPolicy",
    "DescribeRegions",
];

/// One request's parameters and caller.
pub struct Call<'a> {
    /// The planes.
    pub planes: &'a Planes,
    /// The caller's principal ARN.
    pub principal: &'a str,
    /// Decoded parameters.
    pub params: &'a BTreeMap<String, String>,
    /// The region `DescribeRegions` answers.
    pub region: &'a str,
}

impl std::fmt::Debug for Call<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("principal", &self.principal)
            .finish_non_exhaustive()
    }
}

macro_rules! rpc {
    ($call:expr, $client:ident, $method:ident, $msg:expr) => {{
        let req = $call
            .planes
            .request($call.principal, $msg)
            .map_err(|s| ApiError::from_status(&s))?;
        $call
            .planes
            .$client()
            .$method(req)
            .await
            .map_err(|s| ApiError::from_status(&s))?
            .into_inner()
    }};
}

fn b64(bytes: &[u8]) -> Value {
    Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// `2024-01-31T12:00:00Z`, as the reference writes times.
fn time(t: Option<&prost_types::Timestamp>) -> Option<Value> {
    let t = t?;
    let secs = u64::try_from(t.seconds).ok()?;
    Some(Value::String(
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string(),
    ))
}

/// The account id of a principal ARN `acs:ram::<uid>:...`.
fn account_of(arn: &str) -> String {
    arn.split(':').nth(3).unwrap_or_default().to_string()
}

fn answer(pairs: impl IntoIterator<Item = (&'static str, Value)>) -> Answer {
    pairs
        .into_iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

impl Call<'_> {
    fn opt(&self, name: &str) -> Option<&str> {
        self.params
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn req(&self, name: &str) -> Result<&str, ApiError> {
        self.opt(name).ok_or_else(|| ApiError::missing(name))
    }

    fn bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.opt(name) {
            None => Ok(None),
            Some(v) if v.eq_ignore_ascii_case("true") => Ok(Some(true)),
            Some(v) if v.eq_ignore_ascii_case("false") => Ok(Some(false)),
            Some(v) => Err(ApiError::invalid(format!(
                "{name} must be true or false, not {v:?}"
            ))),
        }
    }

    fn int(&self, name: &str) -> Result<Option<i64>, ApiError> {
        self.opt(name)
            .map(|v| {
                v.trim()
                    .parse::<i64>()
                    .map_err(|_| ApiError::invalid(format!("{name} must be a number, not {v:?}")))
            })
            .transpose()
    }

    fn int32(&self, name: &str) -> Result<i32, ApiError> {
        self.int(name)?
            .map(|v| {
                i32::try_from(v).map_err(|_| ApiError::invalid(format!("{name} is out of range")))
            })
            .transpose()
            .map(Option::unwrap_or_default)
    }

    fn bytes(&self, name: &str) -> Result<Vec<u8>, ApiError> {
        let text = self.req(name)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| ApiError::invalid(format!("{name} is not base64")))
    }

    /// A JSON object of strings (an encryption context).
    fn context(&self, name: &str) -> Result<HashMap<String, String>, ApiError> {
        let Some(text) = self.opt(name) else {
            return Ok(HashMap::new());
        };
        let value: Value = serde_json::from_str(text)
            .map_err(|_| ApiError::invalid(format!("{name} is not a JSON object")))?;
        let Value::Object(map) = value else {
            return Err(ApiError::invalid(format!("{name} is not a JSON object")));
        };
        map.into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k, s)),
                other => Ok((k, other.to_string())),
            })
            .collect()
    }

    fn enum_param<T: FromStr<Err = kms_types::DomainError> + WireEnum>(
        &self,
        name: &str,
    ) -> Result<i32, ApiError> {
        match self.opt(name) {
            None => Ok(0),
            Some(v) => T::from_str(v)
                .map(WireEnum::to_wire)
                .map_err(|_| ApiError::invalid(format!("{name} {v:?} is not supported"))),
        }
    }

    fn rotation_interval(&self) -> Result<Option<prost_types::Duration>, ApiError> {
        let Some(text) = self.opt("RotationInterval") else {
            return Ok(None);
        };
        let seconds = text
            .strip_suffix('s')
            .and_then(|s| s.parse::<i64>().ok())
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "RotationInterval {text:?} is not a number of seconds such as 604800s"
                ))
            })?;
        Ok(Some(prost_types::Duration { seconds, nanos: 0 }))
    }

    /// `Tags` as a JSON list of `{TagKey, TagValue}`.
    fn json_tags(&self, name: &str) -> Result<Vec<pb::Tag>, ApiError> {
        let Some(text) = self.opt(name) else {
            return Ok(Vec::new());
        };
        let list: Vec<HashMap<String, String>> = serde_json::from_str(text).map_err(|_| {
            ApiError::invalid(format!(
                "{name} must be a JSON list of {{\"TagKey\": ..., \"TagValue\": ...}}"
            ))
        })?;
        Ok(list
            .into_iter()
            .map(|mut t| pb::Tag {
                key: t.remove("TagKey").unwrap_or_default(),
                value: t.remove("TagValue").unwrap_or_default(),
            })
            .collect())
    }

    /// A flattened list `Name.1`, `Name.2`... in order.
    fn flat_list(&self, prefix: &str) -> Vec<String> {
        self.flat_indices(prefix)
            .into_iter()
            .filter_map(|n| self.opt(&format!("{prefix}.{n}")).map(str::to_string))
            .collect()
    }

    fn flat_indices(&self, prefix: &str) -> Vec<u32> {
        let mut out: Vec<u32> = self
            .params
            .keys()
            .filter_map(|k| k.strip_prefix(prefix)?.strip_prefix('.'))
            .filter_map(|rest| rest.split('.').next()?.parse().ok())
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    fn page(&self) -> Result<(usize, usize), ApiError> {
        let number = self.int("PageNumber")?.unwrap_or(1);
        let size = self.int("PageSize")?.unwrap_or(10);
        if number < 1 {
            return Err(ApiError::invalid("PageNumber must be at least 1"));
        }
        if !(1..=100).contains(&size) {
            return Err(ApiError::invalid("PageSize must be 1–100"));
        }
        Ok((
            usize::try_from(number).unwrap_or(1),
            usize::try_from(size).unwrap_or(10),
        ))
    }
}

/// `items` cut to the requested page, with the reference's paging fields.
fn paged(call: &Call<'_>, list: &str, item: &str, items: Vec<Value>) -> Result<Answer, ApiError> {
    let (number, size) = call.page()?;
    let total = items.len();
    let page: Vec<Value> = items
        .into_iter()
        .skip((number - 1).saturating_mul(size))
        .take(size)
        .collect();
    let mut out = Answer::new();
    out.insert(list.to_string(), json!({ item: page }));
    out.insert("TotalCount".into(), json!(total));
    out.insert("PageNumber".into(), json!(number));
    out.insert("PageSize".into(), json!(size));
    Ok(out)
}

fn key_metadata(m: &pb::KeyMetadata) -> Value {
    let name = |v: Result<&'static str, ()>| v.map(Value::from).unwrap_or(Value::Null);
    let spec = name(
        kms_types::KeySpec::from_wire(m.key_spec)
            .map(kms_types::KeySpec::display_name)
            .map_err(|_| ()),
    );
    let usage = name(
        kms_types::KeyUsage::from_wire(m.key_usage)
            .map(kms_types::KeyUsage::display_name)
            .map_err(|_| ()),
    );
    let state = name(
        kms_types::KeyState::from_wire(m.key_state)
            .map(kms_types::KeyState::display_name)
            .map_err(|_| ()),
    );
    let origin = name(
        kms_types::KeyOrigin::from_wire(m.origin)
            .map(kms_types::KeyOrigin::display_name)
            .map_err(|_| ()),
    );
    let protection = name(
        kms_types::ProtectionLevel::from_wire(m.protection_level)
            .map(kms_types::ProtectionLevel::display_name)
            .map_err(|_| ()),
    );
    let rotation = name(
        kms_types::RotationStatus::from_wire(m.rotation_status)
            .map(kms_types::RotationStatus::display_name)
            .map_err(|_| ()),
    );
    let pairs = [
        ("KeyId", json!(m.key_id)),
        ("Arn", json!(m.arn)),
        ("KeyState", state),
        ("KeySpec", spec),
        ("KeyUsage", usage),
        ("Origin", origin),
        ("ProtectionLevel", protection),
        (
            "CreationDate",
            time(m.creation_date.as_ref()).unwrap_or(Value::Null),
        ),
        ("Creator", json!(account_of(&m.creator))),
        ("Description", json!(m.description)),
        ("AutomaticRotation", rotation),
        (
            "RotationInterval",
            m.rotation_interval
                .as_ref()
                .map(|d| json!(format!("{}s", d.seconds)))
                .unwrap_or(Value::Null),
        ),
        (
            "LastRotationDate",
            time(m.last_rotation_date.as_ref()).unwrap_or(Value::Null),
        ),
        (
            "NextRotationDate",
            time(m.next_rotation_date.as_ref()).unwrap_or(Value::Null),
        ),
        ("PrimaryKeyVersion", json!(m.primary_key_version_id)),
        (
            "DeleteDate",
            time(m.delete_date.as_ref()).unwrap_or(Value::Null),
        ),
        (
            "MaterialExpireTime",
            time(m.material_expire_time.as_ref()).unwrap_or(Value::Null),
        ),
        (
            "DKMSInstanceId",
            if m.kms_instance_id.is_empty() {
                Value::Null
            } else {
                json!(m.kms_instance_id)
            },
        ),
        (
            "DeletionProtection",
            json!(if m.deletion_protection {
                "Enabled"
            } else {
                "Disabled"
            }),
        ),
        (
            "DeletionProtectionDescription",
            json!(m.deletion_protection_description),
        ),
    ];
    Value::Object(answer(pairs))
}

fn key_version(v: &pb::KeyVersion) -> Value {
    Value::Object(answer([
        ("KeyId", json!(v.key_id)),
        ("KeyVersionId", json!(v.key_version_id)),
        (
            "CreationDate",
            time(v.creation_date.as_ref()).unwrap_or(Value::Null),
        ),
    ]))
}

fn alias(a: &pb::Alias) -> Value {
    json!({"AliasName": a.alias_name, "AliasArn": a.alias_arn, "KeyId": a.key_id})
}

/// Runs `action`.
pub async fn run(call: &Call<'_>, action: &str) -> Result<Answer, ApiError> {
    match action {
        "CreateKey" => create_key(call).await,
        "DescribeKey" => {
            let r = rpc!(
                call,
                keys,
                describe_key,
                pb::DescribeKeyRequest {
                    key_id: call.req("KeyId")?.into(),
                }
            );
            Ok(answer([(
                "KeyMetadata",
                r.key_metadata
                    .as_ref()
                    .map(key_metadata)
                    .unwrap_or_default(),
            )]))
        }
        "ListKeys" => list_keys(call).await,
        "UpdateKeyDescription" => {
            rpc!(
                call,
                keys,
                update_key_description,
                pb::UpdateKeyDescriptionRequest {
                    key_id: call.req("KeyId")?.into(),
                    description: call.opt("Description").unwrap_or_default().into(),
                }
            );
            Ok(Answer::new())
        }
        "EnableKey" => {
            rpc!(
                call,
                keys,
                enable_key,
                pb::EnableKeyRequest {
                    key_id: call.req("KeyId")?.into(),
                }
            );
            Ok(Answer::new())
        }
        "DisableKey" => {
            rpc!(
                call,
                keys,
                disable_key,
                pb::DisableKeyRequest {
                    key_id: call.req("KeyId")?.into(),
                }
            );
            Ok(Answer::new())
        }
        "ScheduleKeyDeletion" => {
            rpc!(
                call,
                keys,
                schedule_key_deletion,
                pb::ScheduleKeyDeletionRequest {
                    key_id: call.req("KeyId")?.into(),
                    pending_window_in_days: call.int32("PendingWindowInDays")?,
                }
            );
            Ok(Answer::new())
        }
        "CancelKeyDeletion" => {
            rpc!(
                call,
                keys,
                cancel_key_deletion,
                pb::CancelKeyDeletionRequest {
                    key_id: call.req("KeyId")?.into(),
                }
            );
            Ok(Answer::new())
        }
        "SetDeletionProtection" => {
            rpc!(
                call,
                keys,
                set_deletion_protection,
                pb::SetDeletionProtectionRequest {
                    key_id: call.req("ProtectedResourceArn")?.into(),
                    enable_deletion_protection: call
                        .bool("EnableDeletionProtection")?
                        .ok_or_else(|| ApiError::missing("EnableDeletionProtection"))?,
                    deletion_protection_description: call
                        .opt("DeletionProtectionDescription")
                        .unwrap_or_default()
                        .into(),
                }
            );
            Ok(Answer::new())
        }
        "UpdateRotationPolicy" => {
            rpc!(
                call,
                keys,
                update_rotation_policy,
                pb::UpdateRotationPolicyRequest {
                    key_id: call.req("KeyId")?.into(),
                    enable_automatic_rotation: Some(
                        call.bool("EnableAutomaticRotation")?
                            .ok_or_else(|| ApiError::missing("EnableAutomaticRotation"))?,
                    ),
                    rotation_interval: call.rotation_interval()?,
                }
            );
            Ok(Answer::new())
        }
        "CreateKeyVersion" => {
            let r = rpc!(
                call,
                keys,
                create_key_version,
                pb::CreateKeyVersionRequest {
                    key_id: call.req("KeyId")?.into(),
                }
            );
            Ok(answer([(
                "KeyVersion",
                r.key_version.as_ref().map(key_version).unwrap_or_default(),
            )]))
        }
        "DescribeKeyVersion" => {
            let r = rpc!(
                call,
                keys,
                describe_key_version,
                pb::DescribeKeyVersionRequest {
                    key_id: call.req("KeyId")?.into(),
                    key_version_id: call.req("KeyVersionId")?.into(),
                }
            );
            Ok(answer([(
                "KeyVersion",
                r.key_version.as_ref().map(key_version).unwrap_or_default(),
            )]))
        }
        "ListKeyVersions" => {
            let key_id = call.req("KeyId")?.to_string();
            let mut items = Vec::new();
            let mut token = String::new();
            loop {
                let r = rpc!(
                    call,
                    keys,
                    list_key_versions,
                    pb::ListKeyVersionsRequest {
                        key_id: key_id.clone(),
                        page_size: 100,
                        page_token: token,
                    }
                );
                items.extend(r.key_versions.iter().map(key_version));
                if r.next_page_token.is_empty() {
                    break;
                }
                token = r.next_page_token;
            }
            paged(call, "KeyVersions", "KeyVersion", items)
        }
        "CreateAlias" => {
            rpc!(
                call,
                keys,
                create_alias,
                pb::CreateAliasRequest {
                    alias_name: call.req("AliasName")?.into(),
                    key_id: call.req("KeyId")?.into(),
                }
            );
            Ok(Answer::new())
        }
        "UpdateAlias" => {
            rpc!(
                call,
                keys,
                update_alias,
                pb::UpdateAliasRequest {
                    alias_name: call.req("AliasName")?.into(),
                    key_id: call.req("KeyId")?.into(),
                }
            );
            Ok(Answer::new())
        }
        "DeleteAlias" => {
            rpc!(
                call,
                keys,
                delete_alias,
                pb::DeleteAliasRequest {
                    alias_name: call.req("AliasName")?.into(),
                }
            );
            Ok(Answer::new())
        }
        "ListAliases" => {
            let mut items = Vec::new();
            let mut token = String::new();
            loop {
                let r = rpc!(
                    call,
                    keys,
                    list_aliases,
                    pb::ListAliasesRequest {
                        page_size: 100,
                        page_token: token,
                    }
                );
                items.extend(r.aliases.iter().map(alias));
                if r.next_page_token.is_empty() {
                    break;
                }
                token = r.next_page_token;
            }
            paged(call, "Aliases", "Alias", items)
        }
        "ListAliasesByKeyId" => {
            let key_id = call.req("KeyId")?.to_string();
            let mut items = Vec::new();
            let mut token = String::new();
            loop {
                let r = rpc!(
                    call,
                    keys,
                    list_aliases_by_key_id,
                    pb::ListAliasesByKeyIdRequest {
                        key_id: key_id.clone(),
                        page_size: 100,
                        page_token: token,
                    }
                );
                items.extend(r.aliases.iter().map(alias));
                if r.next_page_token.is_empty() {
                    break;
                }
                token = r.next_page_token;
            }
            paged(call, "Aliases", "Alias", items)
        }
        "TagResources" => {
            let key_ids = call.flat_list("ResourceId");
            let tags: Vec<pb::Tag> = call
                .flat_indices("Tag")
                .into_iter()
                .map(|n| pb::Tag {
                    key: call.opt(&format!("Tag.{n}.Key")).unwrap_or_default().into(),
                    value: call
                        .opt(&format!("Tag.{n}.Value"))
                        .unwrap_or_default()
                        .into(),
                })
                .collect();
            check_resource_type(call)?;
            rpc!(
                call,
                keys,
                tag_resources,
                pb::TagResourcesRequest { key_ids, tags }
            );
            Ok(Answer::new())
        }
        "UntagResources" => {
            check_resource_type(call)?;
            let key_ids = call.flat_list("ResourceId");
            let mut tag_keys = call.flat_list("TagKey");
            if call.bool("All")?.unwrap_or(false) && tag_keys.is_empty() {
                for key_id in &key_ids {
                    let r = rpc!(
                        call,
                        keys,
                        list_resource_tags,
                        pb::ListResourceTagsRequest {
                            key_id: key_id.clone(),
                        }
                    );
                    tag_keys.extend(r.tags.into_iter().map(|t| t.key));
                }
                tag_keys.sort();
                tag_keys.dedup();
                if tag_keys.is_empty() {
                    return Ok(Answer::new());
                }
            }
            rpc!(
                call,
                keys,
                untag_resources,
                pb::UntagResourcesRequest { key_ids, tag_keys }
            );
            Ok(Answer::new())
        }
        "ListTagResources" => {
            check_resource_type(call)?;
            let wanted: Vec<String> = call
                .flat_indices("Tag")
                .into_iter()
                .filter_map(|n| call.opt(&format!("Tag.{n}.Key")).map(str::to_string))
                .collect();
            let mut items = Vec::new();
            for key_id in call.flat_list("ResourceId") {
                let r = rpc!(
                    call,
                    keys,
                    list_resource_tags,
                    pb::ListResourceTagsRequest {
                        key_id: key_id.clone(),
                    }
                );
                for t in r.tags {
                    if wanted.is_empty() || wanted.contains(&t.key) {
                        items.push(json!({
                            "ResourceId": key_id,
                            "ResourceType": "key",
                            "TagKey": t.key,
                            "TagValue": t.value,
                        }));
                    }
                }
            }
            Ok(answer([("TagResources", json!({ "TagResource": items }))]))
        }
        "TagResource" => {
            rpc!(
                call,
                keys,
                tag_resources,
                pb::TagResourcesRequest {
                    key_ids: vec![call.req("KeyId")?.into()],
                    tags: call.json_tags("Tags")?,
                }
            );
            Ok(Answer::new())
        }
        "UntagResource" => {
            let text = call.req("TagKeys")?;
            let tag_keys: Vec<String> = serde_json::from_str(text)
                .map_err(|_| ApiError::invalid("TagKeys must be a JSON list of strings"))?;
            rpc!(
                call,
                keys,
                untag_resources,
                pb::UntagResourcesRequest {
                    key_ids: vec![call.req("KeyId")?.into()],
                    tag_keys,
                }
            );
            Ok(Answer::new())
        }
        "ListResourceTags" => {
            let key_id = call.req("KeyId")?.to_string();
            let r = rpc!(
                call,
                keys,
                list_resource_tags,
                pb::ListResourceTagsRequest {
                    key_id: key_id.clone(),
                }
            );
            let tags: Vec<Value> = r
                .tags
                .iter()
                .map(|t| json!({"KeyId": key_id, "TagKey": t.key, "TagValue": t.value}))
                .collect();
            Ok(answer([("Tags", json!({ "Tag": tags }))]))
        }
        "SetKeyPolicy" => {
            rpc!(
                call,
                keys,
                set_key_policy,
                pb::SetKeyPolicyRequest {
                    key_id: call.req("KeyId")?.into(),
                    policy: call.req("Policy")?.into(),
                }
            );
            Ok(Answer::new())
        }
        "GetKeyPolicy" => {
            let r = rpc!(
                call,
                keys,
                get_key_policy,
                pb::GetKeyPolicyRequest {
                    key_id: call.req("KeyId")?.into(),
                }
            );
            Ok(answer([("Policy", json!(r.policy))]))
        }
        "GetParametersForImport" => {
            let r = rpc!(
                call,
                keys,
                get_parameters_for_import,
                pb::GetParametersForImportRequest {
                    key_id: call.req("KeyId")?.into(),
                    wrapping_algorithm: call
                        .enum_param::<kms_types::Algorithm>("WrappingAlgorithm")?,
                    wrapping_key_spec: call.enum_param::<kms_types::KeySpec>("WrappingKeySpec")?,
                }
            );
            Ok(answer([
                ("KeyId", json!(r.key_id)),
                ("ImportToken", json!(r.import_token)),
                ("PublicKey", b64(&r.public_key)),
                (
                    "TokenExpireTime",
                    time(r.token_expire_time.as_ref()).unwrap_or(Value::Null),
                ),
            ]))
        }
        "ImportKeyMaterial" => {
            let expire = call
                .int("KeyMaterialExpireUnix")?
                .filter(|s| *s > 0)
                .map(|seconds| prost_types::Timestamp { seconds, nanos: 0 });
            rpc!(
                call,
                keys,
                import_key_material,
                pb::ImportKeyMaterialRequest {
                    key_id: call.req("KeyId")?.into(),
                    import_token: call.req("ImportToken")?.into(),
                    encrypted_key_material: call.bytes("EncryptedKeyMaterial")?,
                    key_material_expire_time: expire,
                }
            );
            Ok(Answer::new())
        }
        "DeleteKeyMaterial" => {
            rpc!(
                call,
                keys,
                delete_key_material,
                pb::DeleteKeyMaterialRequest {
                    key_id: call.req("KeyId")?.into(),
                }
            );
            Ok(Answer::new())
        }
        "DescribeRegions" => Ok(answer([(
            "Regions",
            json!({"Region": [{"RegionId": call.region}]}),
        )])),
        _ => crypto(call, action).await,
    }
}

fn check_resource_type(call: &Call<'_>) -> Result<(), ApiError> {
    match call.opt("ResourceType") {
        None => Ok(()),
        Some(t) if t.eq_ignore_ascii_case("key") => Ok(()),
        Some(t) => Err(ApiError::invalid(format!(
            "ResourceType {t:?} is not supported; this service tags keys only"
        ))),
    }
}

async fn create_key(call: &Call<'_>) -> Result<Answer, ApiError> {
    let spec = call.enum_param::<kms_types::KeySpec>("KeySpec")?;
    let spec = if spec == 0 {
        kms_types::KeySpec::AliyunAes256.to_wire()
    } else {
        spec
    };
    let usage = call.enum_param::<kms_types::KeyUsage>("KeyUsage")?;
    let usage = if usage == 0 {
        kms_types::KeySpec::from_wire(spec)
            .map(|s| s.default_usage().to_wire())
            .unwrap_or_default()
    } else {
        usage
    };
    let origin = call.enum_param::<kms_types::KeyOrigin>("Origin")?;
    let r = rpc!(
        call,
        keys,
        create_key,
        pb::CreateKeyRequest {
            kms_instance_id: call.opt("DKMSInstanceId").unwrap_or_default().into(),
            key_spec: spec,
            key_usage: usage,
            origin: if origin == 0 {
                kms_types::KeyOrigin::Kms.to_wire()
            } else {
                origin
            },
            description: call.opt("Description").unwrap_or_default().into(),
            alias: String::new(),
            tags: call.json_tags("Tags")?,
            enable_automatic_rotation: call.bool("EnableAutomaticRotation")?,
            rotation_interval: call.rotation_interval()?,
            policy: call.opt("Policy").unwrap_or_default().into(),
        }
    );
    Ok(answer([(
        "KeyMetadata",
        r.key_metadata
            .as_ref()
            .map(key_metadata)
            .unwrap_or_default(),
    )]))
}

/// Most filter combinations one `ListKeys` runs (each a listing of the planes).
const MAX_FILTER_COMBINATIONS: usize = 16;

/// `Filters`: `[{"Key": "KeyState", "Values": ["Enabled", "Disabled"]}, ...]`: the values of a
/// key are alternatives, the keys all apply. The planes take one value per field, so the answer
/// is every combination of values, one listing each (`None`: no filter).
fn list_filters(call: &Call<'_>) -> Result<Vec<Option<pb::ListKeysFilter>>, ApiError> {
    let Some(text) = call.opt("Filters") else {
        return Ok(vec![None]);
    };
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Filter {
        key: String,
        values: Vec<String>,
    }
    let filters: Vec<Filter> = serde_json::from_str(text).map_err(|_| {
        ApiError::invalid("Filters must be a JSON list of {\"Key\": ..., \"Values\": [...]}")
    })?;
    let mut combinations = vec![pb::ListKeysFilter::default()];
    for f in filters {
        if f.values.is_empty() {
            return Err(ApiError::invalid(format!("filter {} has no values", f.key)));
        }
        let mut next = Vec::new();
        for value in &f.values {
            let bad = || ApiError::invalid(format!("filter {} value {value:?} is unknown", f.key));
            for base in &combinations {
                let mut out = base.clone();
                match f.key.as_str() {
                    "KeyState" => {
                        let state = kms_types::KeyState::ALL
                            .iter()
                            .find(|s| s.display_name().eq_ignore_ascii_case(value))
                            .ok_or_else(bad)?;
                        out.key_state = Some(state.to_wire());
                    }
                    "KeySpec" => {
                        out.key_spec = Some(
                            kms_types::KeySpec::from_str(value)
                                .map_err(|_| bad())?
                                .to_wire(),
                        );
                    }
                    "KeyUsage" => {
                        out.key_usage = Some(
                            kms_types::KeyUsage::from_str(value)
                                .map_err(|_| bad())?
                                .to_wire(),
                        );
                    }
                    "ProtectionLevel" => {
                        out.protection_level = Some(
                            kms_types::ProtectionLevel::from_str(value)
                                .map_err(|_| bad())?
                                .to_wire(),
                        );
                    }
                    "CreatorType" if value == "User" => {}
                    other => {
                        return Err(ApiError::invalid(format!(
                            "filter {other:?} is not supported: KeyState, KeySpec, KeyUsage, \
                             ProtectionLevel, CreatorType (User)"
                        )));
                    }
                }
                next.push(out);
            }
        }
        if next.len() > MAX_FILTER_COMBINATIONS {
            return Err(ApiError::invalid(format!(
                "Filters name more than {MAX_FILTER_COMBINATIONS} combinations of values"
            )));
        }
        combinations = next;
    }
    Ok(combinations.into_iter().map(Some).collect())
}

async fn list_keys(call: &Call<'_>) -> Result<Answer, ApiError> {
    let mut seen = std::collections::HashSet::new();
    let mut items = Vec::new();
    for filters in list_filters(call)? {
        let mut token = String::new();
        loop {
            let r = rpc!(
                call,
                keys,
                list_keys,
                pb::ListKeysRequest {
                    kms_instance_id: String::new(),
                    default_keys_only: false,
                    filters: filters.clone(),
                    page_size: 100,
                    page_token: token,
                }
            );
            for k in &r.keys {
                if seen.insert(k.key_id.clone()) {
                    items.push(json!({"KeyId": k.key_id, "KeyArn": k.arn}));
                }
            }
            if r.next_page_token.is_empty() {
                break;
            }
            token = r.next_page_token;
        }
    }
    paged(call, "Keys", "Key", items)
}

async fn crypto(call: &Call<'_>, action: &str) -> Result<Answer, ApiError> {
    let dry_run = call.bool("DryRun")?.unwrap_or(false);
    match action {
        "Encrypt" => {
            let r = rpc!(
                call,
                crypto,
                encrypt,
                pb::EncryptRequest {
                    key_id: call.req("KeyId")?.into(),
                    plaintext: call.bytes("Plaintext")?,
                    encryption_context: call.context("EncryptionContext")?,
                    dry_run,
                }
            );
            Ok(answer([
                ("KeyId", json!(r.key_id)),
                ("KeyVersionId", json!(r.key_version_id)),
                ("CiphertextBlob", b64(&r.ciphertext_blob)),
            ]))
        }
        "Decrypt" => {
            let r = rpc!(
                call,
                crypto,
                decrypt,
                pb::DecryptRequest {
                    ciphertext_blob: call.bytes("CiphertextBlob")?,
                    encryption_context: call.context("EncryptionContext")?,
                    dry_run,
                }
            );
            let plaintext = zeroize::Zeroizing::new(r.plaintext);
            Ok(answer([
                ("KeyId", json!(r.key_id)),
                ("KeyVersionId", json!(r.key_version_id)),
                ("Plaintext", b64(&plaintext)),
            ]))
        }
        "ReEncrypt" => {
            if call.opt("SourceKeyId").is_some() || call.opt("SourceEncryptionAlgorithm").is_some()
            {
                return Err(ApiError::invalid(
                    "re-encrypting an asymmetric ciphertext (SourceKeyId, \
                     SourceEncryptionAlgorithm) is not supported",
                ));
            }
            let r = rpc!(
                call,
                crypto,
                re_encrypt,
                pb::ReEncryptRequest {
                    ciphertext_blob: call.bytes("CiphertextBlob")?,
                    source_encryption_context: call.context("SourceEncryptionContext")?,
                    destination_key_id: call.req("DestinationKeyId")?.into(),
                    destination_encryption_context: call.context("DestinationEncryptionContext")?,
                    dry_run,
                }
            );
            Ok(answer([
                ("KeyId", json!(r.key_id)),
                ("KeyVersionId", json!(r.key_version_id)),
                ("CiphertextBlob", b64(&r.ciphertext_blob)),
                ("SourceKeyId", json!(r.source_key_id)),
                ("SourceKeyVersionId", json!(r.source_key_version_id)),
            ]))
        }
        "GenerateDataKey" => {
            let r = rpc!(
                call,
                crypto,
                generate_data_key,
                pb::GenerateDataKeyRequest {
                    key_id: call.req("KeyId")?.into(),
                    key_spec: call.enum_param::<kms_types::DataKeySpec>("KeySpec")?,
                    number_of_bytes: call.int32("NumberOfBytes")?,
                    encryption_context: call.context("EncryptionContext")?,
                    dry_run,
                }
            );
            let plaintext = zeroize::Zeroizing::new(r.plaintext);
            Ok(answer([
                ("KeyId", json!(r.key_id)),
                ("KeyVersionId", json!(r.key_version_id)),
                ("CiphertextBlob", b64(&r.ciphertext_blob)),
                ("Plaintext", b64(&plaintext)),
            ]))
        }
        "GenerateDataKeyWithoutPlaintext" => {
            let r = rpc!(
                call,
                crypto,
                generate_data_key_without_plaintext,
                pb::GenerateDataKeyWithoutPlaintextRequest {
                    key_id: call.req("KeyId")?.into(),
                    key_spec: call.enum_param::<kms_types::DataKeySpec>("KeySpec")?,
                    number_of_bytes: call.int32("NumberOfBytes")?,
                    encryption_context: call.context("EncryptionContext")?,
                    dry_run,
                }
            );
            Ok(answer([
                ("KeyId", json!(r.key_id)),
                ("KeyVersionId", json!(r.key_version_id)),
                ("CiphertextBlob", b64(&r.ciphertext_blob)),
            ]))
        }
        "GenerateAndExportDataKey" => {
            let r = rpc!(
                call,
                crypto,
                generate_and_export_data_key,
                pb::GenerateAndExportDataKeyRequest {
                    key_id: call.req("KeyId")?.into(),
                    key_spec: call.enum_param::<kms_types::DataKeySpec>("KeySpec")?,
                    number_of_bytes: call.int32("NumberOfBytes")?,
                    encryption_context: call.context("EncryptionContext")?,
                    public_key: call.bytes("PublicKeyBlob")?,
                    wrapping_algorithm: call
                        .enum_param::<kms_types::Algorithm>("WrappingAlgorithm")?,
                    wrapping_key_spec: call.enum_param::<kms_types::KeySpec>("WrappingKeySpec")?,
                    dry_run,
                }
            );
            Ok(answer([
                ("KeyId", json!(r.key_id)),
                ("KeyVersionId", json!(r.key_version_id)),
                ("CiphertextBlob", b64(&r.ciphertext_blob)),
                ("ExportedDataKey", b64(&r.exported_data_key)),
            ]))
        }
        "ExportDataKey" => {
            let r = rpc!(
                call,
                crypto,
                export_data_key,
                pb::ExportDataKeyRequest {
                    ciphertext_blob: call.bytes("CiphertextBlob")?,
                    encryption_context: call.context("EncryptionContext")?,
                    public_key: call.bytes("PublicKeyBlob")?,
                    wrapping_algorithm: call
                        .enum_param::<kms_types::Algorithm>("WrappingAlgorithm")?,
                    wrapping_key_spec: call.enum_param::<kms_types::KeySpec>("WrappingKeySpec")?,
                    dry_run,
                }
            );
            Ok(answer([
                ("KeyId", json!(r.key_id)),
                ("KeyVersionId", json!(r.key_version_id)),
                ("ExportedDataKey", b64(&r.exported_data_key)),
            ]))
        }
        "AsymmetricEncrypt" => {
            let r = rpc!(
                call,
                crypto,
                asymmetric_encrypt,
                pb::AsymmetricEncryptRequest {
                    key_id: call.req("KeyId")?.into(),
                    key_version_id: call.opt("KeyVersionId").unwrap_or_default().into(),
                    algorithm: call.enum_param::<kms_types::Algorithm>("Algorithm")?,
                    plaintext: call.bytes("Plaintext")?,
                    dry_run,
                }
            );
            Ok(answer([
                ("KeyId", json!(r.key_id)),
                ("KeyVersionId", json!(r.key_version_id)),
                ("CiphertextBlob", b64(&r.ciphertext_blob)),
            ]))
        }
        "AsymmetricDecrypt" => {
            let r = rpc!(
                call,
                crypto,
                asymmetric_decrypt,
                pb::AsymmetricDecryptRequest {
                    key_id: call.req("KeyId")?.into(),
                    key_version_id: call.opt("KeyVersionId").unwrap_or_default().into(),
                    algorithm: call.enum_param::<kms_types::Algorithm>("Algorithm")?,
                    ciphertext_blob: call.bytes("CiphertextBlob")?,
                    dry_run,
                }
            );
            let plaintext = zeroize::Zeroizing::new(r.plaintext);
            Ok(answer([
                ("KeyId", json!(r.key_id)),
                ("KeyVersionId", json!(r.key_version_id)),
                ("Plaintext", b64(&plaintext)),
            ]))
        }
        "AsymmetricSign" => {
            let r = rpc!(
                call,
                crypto,
                asymmetric_sign,
                pb::AsymmetricSignRequest {
                    key_id: call.req("KeyId")?.into(),
                    key_version_id: call.opt("KeyVersionId").unwrap_or_default().into(),
                    algorithm: call.enum_param::<kms_types::Algorithm>("Algorithm")?,
                    digest: call.bytes("Digest")?,
                    dry_run,
                }
            );
            Ok(answer([
                ("KeyId", json!(r.key_id)),
                ("KeyVersionId", json!(r.key_version_id)),
                ("Value", b64(&r.value)),
            ]))
        }
        "AsymmetricVerify" => {
            let r = rpc!(
                call,
                crypto,
                asymmetric_verify,
                pb::AsymmetricVerifyRequest {
                    key_id: call.req("KeyId")?.into(),
                    key_version_id: call.opt("KeyVersionId").unwrap_or_default().into(),
                    algorithm: call.enum_param::<kms_types::Algorithm>("Algorithm")?,
                    digest: call.bytes("Digest")?,
                    value: call.bytes("Value")?,
                    dry_run,
                }
            );
            Ok(answer([
                ("KeyId", json!(r.key_id)),
                ("KeyVersionId", json!(r.key_version_id)),
                ("Value", json!(r.value)),
            ]))
        }
        "GetPublicKey" => {
            let r = rpc!(
                call,
                crypto,
                get_public_key,
                pb::GetPublicKeyRequest {
                    key_id: call.req("KeyId")?.into(),
                    key_version_id: call.opt("KeyVersionId").unwrap_or_default().into(),
                }
            );
            Ok(answer([
                ("KeyId", json!(r.key_id)),
                ("KeyVersionId", json!(r.key_version_id)),
                ("PublicKey", json!(r.public_key)),
            ]))
        }
        "GetRandomPassword" => {
            let length = call.int32("PasswordLength")?;
            let r = rpc!(
                call,
                crypto,
                get_random_password,
                pb::GetRandomPasswordRequest {
                    password_length: if length == 0 { 32 } else { length },
                    exclude_characters: call.opt("ExcludeCharacters").unwrap_or_default().into(),
                    exclude_lowercase: call.bool("ExcludeLowercase")?.unwrap_or(false),
                    exclude_uppercase: call.bool("ExcludeUppercase")?.unwrap_or(false),
                    exclude_numbers: call.bool("ExcludeNumbers")?.unwrap_or(false),
                    exclude_punctuation: call.bool("ExcludePunctuation")?.unwrap_or(false),
                    require_each_included_type: call
                        .bool("RequireEachIncludedType")?
                        .unwrap_or(false),
                }
            );
            let password = zeroize::Zeroizing::new(r.password);
            Ok(answer([("RandomPassword", json!(password.as_str()))]))
        }
        _ => Err(ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "InvalidAction.NotFound",
            format!("Specified api {action:?} is not found, please check your url and method."),
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn with<T>(p: &BTreeMap<String, String>, f: impl FnOnce(&Call<'_>) -> T) -> T {
        let planes = Planes::new(
            "http://127.0.0.1:1",
            "http://127.0.0.1:1",
            &http::HeaderName::from_static("x-kms-principal"),
            "acs:ram::1:root".into(),
            None,
        )
        .unwrap();
        f(&Call {
            planes: &planes,
            principal: "acs:ram::1:root",
            params: p,
            region: "local",
        })
    }

    #[tokio::test]
    async fn parameters_read_as_the_sdks_send_them() {
        let p = params(&[
            ("A", "True"),
            ("B", "false"),
            ("C", "yes"),
            ("ResourceId.2", "k2"),
            ("ResourceId.1", "k1"),
            ("ResourceId.10", "k10"),
            ("Tag.1.Key", "a"),
            ("Tag.1.Value", "b"),
            ("Ctx", r#"{"x":"1","y":2}"#),
            ("Tags", r#"[{"TagKey":"t","TagValue":"v"}]"#),
            (
                "Filters",
                r#"[{"Key":"KeyState","Values":["Enabled"]},{"Key":"KeySpec","Values":["EC_P256"]}]"#,
            ),
            ("PageNumber", "2"),
            ("PageSize", "1"),
        ]);
        with(&p, |c| {
            assert_eq!(c.bool("A").unwrap(), Some(true));
            assert_eq!(c.bool("B").unwrap(), Some(false));
            assert_eq!(c.bool("C").unwrap_err().code, "InvalidParameter");
            assert_eq!(c.bool("D").unwrap(), None);
            assert_eq!(c.flat_list("ResourceId"), vec!["k1", "k2", "k10"]);
            assert_eq!(c.flat_indices("Tag"), vec![1]);
            let ctx = c.context("Ctx").unwrap();
            assert_eq!(ctx["x"], "1");
            assert_eq!(ctx["y"], "2");
            assert_eq!(c.json_tags("Tags").unwrap()[0].key, "t");
            let f = list_filters(c).unwrap();
            assert_eq!(f.len(), 1);
            let f = f[0].clone().unwrap();
            assert_eq!(f.key_state, Some(1));
            assert_eq!(f.key_spec, Some(7));
            let page = paged(c, "Keys", "Key", vec![json!(1), json!(2), json!(3)]).unwrap();
            assert_eq!(page["Keys"]["Key"], json!([2]));
            assert_eq!(page["TotalCount"], json!(3));
            assert_eq!(page["PageNumber"], json!(2));
        });
        let many = params(&[(
            "Filters",
            r#"[{"Key":"KeyState","Values":["Enabled","Disabled"]},{"Key":"KeySpec","Values":["EC_P256","RSA_2048"]}]"#,
        )]);
        let combos = with(&many, |c| list_filters(c).unwrap());
        assert_eq!(combos.len(), 4);
        let pairs: std::collections::BTreeSet<(Option<i32>, Option<i32>)> = combos
            .iter()
            .map(|f| {
                let f = f.clone().unwrap();
                (f.key_state, f.key_spec)
            })
            .collect();
        assert_eq!(pairs.len(), 4);
        let missing = with(&params(&[]), |c| c.req("KeyId").unwrap_err());
        assert_eq!(missing.code, "MissingParameter");
    }

    /// `docs/GATEWAY.md` has a row for every action under `## Actions`, and no other.
    #[test]
    fn the_gateway_notes_list_every_action() {
        let doc = include_str!("../../../docs/GATEWAY.md");
        let start = doc.find("\n## Actions\n").expect("a section ## Actions");
        let section = &doc[start + 1..];
        let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
        let rows: Vec<&str> = section
            .lines()
            .filter_map(|l| l.strip_prefix("| `")?.split('`').next())
            .collect();
        assert_eq!(
            rows, ACTIONS,
            "docs/GATEWAY.md, ## Actions, in the order of ACTIONS"
        );
    }
}
