//! Aliases on the control plane: `create-alias`, `update-alias`, `delete-alias`,
//! `list-aliases`, `list-aliases-by-key-id`.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use kms_proto::kms::v1::key_management_service_client::KeyManagementServiceClient;
use kms_proto::kms::v1::{
    CreateAliasRequest, DeleteAliasRequest, DescribeKeyRequest, ListAliasesByKeyIdRequest,
    ListAliasesRequest, UpdateAliasRequest,
};
use kms_types::KeyRef;

use crate::args;
use crate::client::{Authed, Planes, RpcError};
use crate::lifecycle::{KeyListArgs, PageArgs};
use crate::output::{self, Format};

/// Alias subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum AliasCommand {
    /// Create an alias for a key (CreateAlias)
    ///
    /// Aliases are unique in an account; a key may have many. Refused for keys pending
    /// deletion.
    #[command(after_help = "\
Examples:
  kmsctl create-alias alias/orders --key key-...
  kmsctl create-alias alias/team/app --key alias/orders")]
    CreateAlias(AliasKeyArgs),
    /// Point an existing alias at another key (UpdateAlias)
    #[command(after_help = "Examples:\n  kmsctl update-alias alias/orders --key key-...")]
    UpdateAlias(AliasKeyArgs),
    /// Delete an alias (DeleteAlias)
    ///
    /// The key it pointed at is unaffected.
    #[command(after_help = "Examples:\n  kmsctl delete-alias alias/orders")]
    DeleteAlias(AliasArg),
    /// List the account's aliases (ListAliases)
    #[command(after_help = "\
Examples:
  kmsctl list-aliases
  kmsctl list-aliases --all --json")]
    ListAliases(ListArgs),
    /// List the aliases of one key (ListAliasesByKeyId)
    #[command(after_help = "Examples:\n  kmsctl list-aliases-by-key-id --key key-...")]
    ListAliasesByKeyId(KeyListArgs),
}

#[derive(Debug, Args)]
pub(crate) struct AliasKeyArgs {
    /// `alias/` followed by 1–255 letters, digits, `_`, `-` and `/`
    #[arg(value_name = "alias/NAME")]
    alias: String,
    /// The key: id, alias or ARN
    #[arg(long, value_name = "KEY", value_parser = args::key_ref)]
    key: String,
}

#[derive(Debug, Args)]
pub(crate) struct AliasArg {
    /// The alias, `alias/NAME`
    #[arg(value_name = "alias/NAME")]
    alias: String,
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    page: PageArgs,
}

/// The id of the key `a.key` names, now that `a.alias` points at it: the control plane's word
/// for the alias, else the id in the reference itself; `None` for an alias the caller may not
/// describe.
async fn resolved_key_id(
    client: &mut KeyManagementServiceClient<Authed>,
    a: &AliasKeyArgs,
) -> Option<String> {
    let described = client
        .describe_key(DescribeKeyRequest {
            key_id: a.alias.clone(),
        })
        .await
        .ok()
        .and_then(|r| r.into_inner().key_metadata)
        .map(|m| m.key_id);
    described.or_else(|| match KeyRef::parse(&a.key) {
        Ok(KeyRef::Id(id)) | Ok(KeyRef::Arn { key_id: id, .. }) => Some(id.to_string()),
        _ => None,
    })
}

/// Prints where an alias now points: the key id, and the reference given when it differs.
async fn print_alias_target(
    client: &mut KeyManagementServiceClient<Authed>,
    format: Format,
    a: &AliasKeyArgs,
) -> anyhow::Result<()> {
    let key_id = resolved_key_id(client, a).await;
    let sentence = match &key_id {
        Some(id) if *id == a.key => format!("{} now points at {id}", a.alias),
        Some(id) => format!("{} now points at {id} ({})", a.alias, a.key),
        None => format!("{} now points at {}", a.alias, a.key),
    };
    output::print_done(
        format,
        &sentence,
        &serde_json::json!({ "alias_name": a.alias, "key_id": key_id, "key": a.key }),
    )
}

/// Runs an alias subcommand.
pub(crate) async fn run(
    planes: &Planes,
    format: Format,
    command: AliasCommand,
) -> anyhow::Result<ExitCode> {
    let mut client = planes.control().await?;
    match command {
        AliasCommand::CreateAlias(a) => {
            client
                .create_alias(CreateAliasRequest {
                    alias_name: a.alias.clone(),
                    key_id: a.key.clone(),
                })
                .await
                .map_err(RpcError)?;
            print_alias_target(&mut client, format, &a).await?;
        }
        AliasCommand::UpdateAlias(a) => {
            client
                .update_alias(UpdateAliasRequest {
                    alias_name: a.alias.clone(),
                    key_id: a.key.clone(),
                })
                .await
                .map_err(RpcError)?;
            print_alias_target(&mut client, format, &a).await?;
        }
        AliasCommand::DeleteAlias(a) => {
            client
                .delete_alias(DeleteAliasRequest {
                    alias_name: a.alias.clone(),
                })
                .await
                .map_err(RpcError)?;
            output::print_done(
                format,
                &format!("{} deleted", a.alias),
                &serde_json::json!({ "alias_name": a.alias, "deleted": true }),
            )?;
        }
        AliasCommand::ListAliases(a) => {
            let mut request = ListAliasesRequest {
                page_size: a.page.page_size,
                page_token: a.page.page_token.clone().unwrap_or_default(),
            };
            let mut all = Vec::new();
            let next = loop {
                let page = client
                    .list_aliases(request.clone())
                    .await
                    .map_err(RpcError)?
                    .into_inner();
                all.extend(page.aliases);
                if !a.page.all || page.next_page_token.is_empty() {
                    break page.next_page_token;
                }
                request.page_token = page.next_page_token;
            };
            output::print_aliases(format, &all, &next)?;
        }
        AliasCommand::ListAliasesByKeyId(a) => {
            let mut request = ListAliasesByKeyIdRequest {
                key_id: a.key.key.clone(),
                page_size: a.page.page_size,
                page_token: a.page.page_token.clone().unwrap_or_default(),
            };
            let mut all = Vec::new();
            let next = loop {
                let page = client
                    .list_aliases_by_key_id(request.clone())
                    .await
                    .map_err(RpcError)?
                    .into_inner();
                all.extend(page.aliases);
                if !a.page.all || page.next_page_token.is_empty() {
                    break page.next_page_token;
                }
                request.page_token = page.next_page_token;
            };
            output::print_aliases(format, &all, &next)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
