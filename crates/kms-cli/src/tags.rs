//! Tags on the control plane: `tag-resources`, `untag-resources`, `list-resource-tags`.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use kms_proto::kms::v1::{
    ListResourceTagsRequest, Tag, TagResourcesRequest, UntagResourcesRequest,
};

use crate::args::{self, KeyArg};
use crate::client::{Planes, RpcError};
use crate::output::{self, Format};
use crate::parse_pair;

/// Tag subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum TagCommand {
    /// Tag keys (TagResources)
    ///
    /// Adds the tags to 1–50 keys, replacing the values of tag keys a key already has. All or
    /// nothing: one key that cannot take the tags leaves every key as it was.
    #[command(after_help = "\
Examples:
  kmsctl tag-resources --key alias/orders --tag env=prod --tag team=payments
  kmsctl tag-resources --key key-1... --key key-2... --tag cost-center=42")]
    TagResources(TagArgs),
    /// Remove tags from keys (UntagResources)
    ///
    /// Removes the tags with the given tag keys from 1–50 keys; all or nothing.
    #[command(after_help = "\
Examples:
  kmsctl untag-resources --key alias/orders --tag-key env --tag-key team")]
    UntagResources(UntagArgs),
    /// List a key's tags (ListResourceTags)
    #[command(after_help = "Examples:\n  kmsctl list-resource-tags --key alias/orders")]
    ListResourceTags(KeyArg),
}

#[derive(Debug, Args)]
pub(crate) struct TagArgs {
    /// A key to tag (id, alias or ARN); repeatable, up to 50
    #[arg(long = "key", value_name = "KEY", required = true, value_parser = args::key_ref)]
    keys: Vec<String>,
    /// A tag; repeatable
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_pair, required = true)]
    tags: Vec<(String, String)>,
}

#[derive(Debug, Args)]
pub(crate) struct UntagArgs {
    /// A key to untag (id, alias or ARN); repeatable, up to 50
    #[arg(long = "key", value_name = "KEY", required = true, value_parser = args::key_ref)]
    keys: Vec<String>,
    /// The key of a tag to remove; repeatable
    #[arg(long = "tag-key", value_name = "TAG_KEY", required = true)]
    tag_keys: Vec<String>,
}

/// Runs a tag subcommand.
pub(crate) async fn run(
    planes: &Planes,
    format: Format,
    command: TagCommand,
) -> anyhow::Result<ExitCode> {
    let mut client = planes.control().await?;
    match command {
        TagCommand::TagResources(a) => {
            let tags: Vec<Tag> = a
                .tags
                .into_iter()
                .map(|(key, value)| Tag { key, value })
                .collect();
            client
                .tag_resources(TagResourcesRequest {
                    key_ids: a.keys.clone(),
                    tags: tags.clone(),
                })
                .await
                .map_err(RpcError)?;
            output::print_done(
                format,
                &format!("tagged {} key(s)", a.keys.len()),
                &serde_json::json!({
                    "key_ids": a.keys,
                    "tags": tags.iter().map(|t| serde_json::json!({"key": t.key, "value": t.value})).collect::<Vec<_>>(),
                }),
            )?;
        }
        TagCommand::UntagResources(a) => {
            client
                .untag_resources(UntagResourcesRequest {
                    key_ids: a.keys.clone(),
                    tag_keys: a.tag_keys.clone(),
                })
                .await
                .map_err(RpcError)?;
            output::print_done(
                format,
                &format!("untagged {} key(s)", a.keys.len()),
                &serde_json::json!({ "key_ids": a.keys, "tag_keys": a.tag_keys }),
            )?;
        }
        TagCommand::ListResourceTags(a) => {
            let tags = client
                .list_resource_tags(ListResourceTagsRequest { key_id: a.key })
                .await
                .map_err(RpcError)?
                .into_inner()
                .tags;
            output::print_tags(format, &tags)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
