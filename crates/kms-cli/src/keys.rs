//! Key management on the control plane: `create-key` and `describe-key`.

use std::process::ExitCode;

use anyhow::Context;
use kms_proto::convert::WireEnum;
use kms_proto::kms::v1::key_management_service_client::KeyManagementServiceClient;
use kms_proto::kms::v1::{
    CreateAliasRequest, CreateKeyRequest, DescribeKeyRequest, KeyMetadata, ListKeysRequest, Tag,
};
use tonic::{Code, Status};

use crate::client::{Authed, Planes, RpcError, reason};
use crate::output::{self, Format};
use crate::{CreateKeyArgs, DescribeKeyArgs};

/// `kmsctl create-key`.
pub(crate) async fn create_key(
    planes: &Planes,
    format: Format,
    args: CreateKeyArgs,
) -> anyhow::Result<ExitCode> {
    let if_not_exists = args.if_not_exists;
    let request = create_key_request(args)?;
    let mut client = planes.control().await?;
    let created = match client.create_key(request.clone()).await {
        Ok(response) => response.into_inner().key_metadata,
        Err(status) if if_not_exists && status.code() == Code::AlreadyExists => {
            Some(existing_key(&mut client, &request, status).await?)
        }
        Err(status) => return Err(RpcError(status).into()),
    };
    output::print_key(format, created.as_ref())?;
    Ok(ExitCode::SUCCESS)
}

/// For `create-key --if-not-exists` refused with `refusal` (`ALREADY_EXISTS`): the key that
/// exists in its place, if it is the one `request` asks for. A second default key: the
/// account's default key, given `request`'s alias if it has none yet. An alias in use: the key
/// it names, if its spec, usage, origin and instance are those asked for.
async fn existing_key(
    client: &mut KeyManagementServiceClient<Authed>,
    request: &CreateKeyRequest,
    refusal: Status,
) -> anyhow::Result<KeyMetadata> {
    let alias = (!request.alias.is_empty()).then_some(request.alias.as_str());
    match (reason(&refusal).as_deref(), alias) {
        (Some("Forbidden.DefaultKeyExists"), _) => {
            let listed = client
                .list_keys(ListKeysRequest {
                    default_keys_only: true,
                    ..Default::default()
                })
                .await
                .map_err(RpcError)?
                .into_inner()
                .keys;
            // Not listed: the caller may not describe it, and learns no more than the refusal.
            let Some(key) = listed.into_iter().next() else {
                return Err(RpcError(refusal).into());
            };
            match alias {
                Some(alias) if !key.aliases.iter().any(|a| a == alias) => {
                    client
                        .create_alias(CreateAliasRequest {
                            alias_name: alias.to_string(),
                            key_id: key.key_id.clone(),
                        })
                        .await
                        .map_err(RpcError)?;
                    describe(client, &key.key_id).await
                }
                _ => Ok(key),
            }
        }
        (Some("Forbidden.AliasExists"), Some(alias)) => {
            let key = describe(client, alias).await?;
            let asked = (
                request.kms_instance_id.as_str(),
                request.key_spec,
                request.key_usage,
                request.origin,
            );
            let found = (
                if key.is_default_key {
                    ""
                } else {
                    key.kms_instance_id.as_str()
                },
                key.key_spec,
                key.key_usage,
                key.origin,
            );
            if asked != found {
                let view = output::KeyView::from(&key);
                anyhow::bail!(
                    "{alias} already names {}, an {}, not the key asked for; --if-not-exists \
                     takes an existing key only when its instance, spec, usage and origin are \
                     those asked for: choose another alias",
                    key.key_id,
                    view.summary()
                );
            }
            Ok(key)
        }
        _ => Err(RpcError(refusal).into()),
    }
}

/// The metadata of the key `key` names.
async fn describe(
    client: &mut KeyManagementServiceClient<Authed>,
    key: &str,
) -> anyhow::Result<KeyMetadata> {
    client
        .describe_key(DescribeKeyRequest {
            key_id: key.to_string(),
        })
        .await
        .map_err(RpcError)?
        .into_inner()
        .key_metadata
        .context("the server answered without key metadata")
}

/// `kmsctl describe-key`.
pub(crate) async fn describe_key(
    planes: &Planes,
    format: Format,
    args: DescribeKeyArgs,
) -> anyhow::Result<ExitCode> {
    let mut client = planes.control().await?;
    let response = client
        .describe_key(DescribeKeyRequest {
            key_id: args.key.key,
        })
        .await
        .map_err(RpcError)?
        .into_inner();
    output::print_key(format, response.key_metadata.as_ref())?;
    Ok(ExitCode::SUCCESS)
}

/// Builds the request; reads the policy file. Field rules are the server's to check.
fn create_key_request(args: CreateKeyArgs) -> anyhow::Result<CreateKeyRequest> {
    if let Some(alias) = &args.alias
        && !alias.starts_with("alias/")
    {
        anyhow::bail!("alias {alias:?} must start with `alias/`, e.g. alias/{alias}");
    }
    let policy = match &args.policy_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read policy file {}", path.display()))?,
        None => String::new(),
    };
    let origin = args.origin;
    let usage = args.usage.unwrap_or_else(|| args.spec.default_usage());
    let enable_automatic_rotation = match (args.rotation_days, args.no_rotation) {
        (Some(_), _) => Some(true),
        (None, true) => Some(false),
        (None, false) => None,
    };
    Ok(CreateKeyRequest {
        kms_instance_id: args.instance.unwrap_or_default(),
        key_spec: args.spec.to_wire(),
        key_usage: usage.to_wire(),
        origin: origin.to_wire(),
        description: args.description.unwrap_or_default(),
        alias: args.alias.unwrap_or_default(),
        tags: args
            .tags
            .into_iter()
            .map(|(key, value)| Tag { key, value })
            .collect(),
        enable_automatic_rotation,
        rotation_interval: args.rotation_days.map(|days| prost_types::Duration {
            seconds: i64::from(days) * 86_400,
            nanos: 0,
        }),
        policy,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use clap::Parser;
    use kms_types::{KeyOrigin, KeySpec, KeyUsage};

    use super::*;
    use crate::{Cli, Command};

    fn request(args: &[&str]) -> anyhow::Result<CreateKeyRequest> {
        let cli = Cli::try_parse_from(["kmsctl", "create-key"].iter().chain(args)).unwrap();
        let Command::CreateKey(args) = cli.command else {
            panic!("not create-key");
        };
        create_key_request(args)
    }

    #[test]
    fn defaults() {
        let r = request(&[]).unwrap();
        assert_eq!(r.key_spec, KeySpec::AliyunAes256.to_wire());
        assert_eq!(r.key_usage, KeyUsage::EncryptDecrypt.to_wire());
        assert_eq!(r.origin, KeyOrigin::Kms.to_wire());
        assert_eq!(r.enable_automatic_rotation, None);
        assert!(r.kms_instance_id.is_empty() && r.policy.is_empty());
    }

    #[test]
    fn usage_follows_spec_and_rotation_flags() {
        let r = request(&["--spec", "EC_P256", "--rotation-days", "30"]).unwrap();
        assert_eq!(r.key_usage, KeyUsage::SignVerify.to_wire());
        assert_eq!(r.enable_automatic_rotation, Some(true));
        assert_eq!(r.rotation_interval.map(|d| d.seconds), Some(30 * 86_400));
        let r = request(&["--no-rotation", "--tag", "a=b"]).unwrap();
        assert_eq!(r.enable_automatic_rotation, Some(false));
        assert_eq!(
            r.tags,
            vec![Tag {
                key: "a".into(),
                value: "b".into()
            }]
        );
    }

    #[test]
    fn alias_needs_prefix_and_policy_file_must_exist() {
        let err = request(&["--alias", "demo"]).unwrap_err().to_string();
        assert!(err.contains("alias/demo"), "{err}");
        let err = request(&["--policy-file", "/nonexistent/policy.json"]).unwrap_err();
        assert!(
            format!("{err:#}").contains("/nonexistent/policy.json"),
            "{err:#}"
        );
    }
}
