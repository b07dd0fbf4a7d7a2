//! `kmsctl access-key`: operators manage the AccessKey pairs the HTTP gateway (`kms-gateway`)
//! verifies signed requests with (`AccessKeyService` on the control plane). `create` prints the
//! secret, which is shown this once and never again.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use kms_proto::kms::v1::{
    AccessKey, AccessKeyStatus, CreateAccessKeyRequest, DeleteAccessKeyRequest,
    DisableAccessKeyRequest, ListAccessKeysRequest,
};
use serde::Serialize;

use crate::client::{Planes, operator_only};
use crate::output::{self, Format};

/// `kmsctl access-key` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum AccessKeyCommand {
    /// Create an AccessKey pair acting as a principal (CreateAccessKey; operators)
    ///
    /// Prints the id and the secret; the secret is shown only now.
    #[command(after_help = "\
Examples:
  kmsctl access-key create --principal-arn acs:ram::1234567890123456:root
  kmsctl access-key create --json --principal-arn acs:ram::1234567890123456:user/app")]
    Create(CreateArgs),
    /// List AccessKey pairs, never their secrets (ListAccessKeys; operators)
    #[command(after_help = "\
Examples:
  kmsctl access-key list
  kmsctl access-key list --principal-arn acs:ram::1234567890123456:root")]
    List(ListArgs),
    /// Disable an AccessKey pair; the gateway refuses it within a second (DisableAccessKey)
    #[command(after_help = "\
Examples:
  kmsctl access-key disable LTAI...")]
    Disable(IdArg),
    /// Delete an AccessKey pair for good (DeleteAccessKey; operators)
    #[command(after_help = "\
Examples:
  kmsctl access-key delete LTAI...")]
    Delete(IdArg),
}

/// Options of `access-key create`.
#[derive(Debug, Args)]
pub(crate) struct CreateArgs {
    /// The principal ARN the pair acts as (`acs:ram::<uid>:root`, `acs:ram::<uid>:user/<name>`)
    #[arg(long = "principal-arn", value_name = "ARN")]
    principal_arn: String,
}

/// Options of `access-key list`.
#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Only the pairs of this principal ARN
    #[arg(long = "principal-arn", value_name = "ARN")]
    principal_arn: Option<String>,
}

/// An access key id.
#[derive(Debug, Args)]
pub(crate) struct IdArg {
    /// Access key id, `LTAI...`
    #[arg(value_name = "ACCESS_KEY_ID")]
    access_key_id: String,
}

#[derive(Debug, Serialize)]
struct AccessKeyView {
    access_key_id: String,
    principal: String,
    status: &'static str,
    creation_date: String,
    creator: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    access_key_secret: Option<String>,
}

fn view(k: &AccessKey, secret: Option<String>) -> AccessKeyView {
    AccessKeyView {
        access_key_id: k.access_key_id.clone(),
        principal: k.principal.clone(),
        status: match AccessKeyStatus::try_from(k.status) {
            Ok(AccessKeyStatus::Enabled) => "Enabled",
            Ok(AccessKeyStatus::Disabled) => "Disabled",
            _ => "Unknown",
        },
        creation_date: k
            .creation_date
            .as_ref()
            .map(output::rfc3339)
            .unwrap_or_default(),
        creator: k.creator.clone(),
        access_key_secret: secret,
    }
}

fn print_one(format: Format, v: &AccessKeyView) -> anyhow::Result<()> {
    match format {
        Format::Json => output::print_json(v),
        Format::Human => {
            let mut lines = vec![
                ("access_key_id", v.access_key_id.clone()),
                ("principal", v.principal.clone()),
                ("status", v.status.to_string()),
                ("creation_date", v.creation_date.clone()),
                ("creator", v.creator.clone()),
            ];
            if let Some(secret) = &v.access_key_secret {
                lines.push(("access_key_secret", secret.clone()));
            }
            output::print_text(&output::aligned(&lines))
        }
    }
}

/// Runs an `access-key` subcommand.
pub(crate) async fn run(
    planes: &Planes,
    format: Format,
    command: AccessKeyCommand,
) -> anyhow::Result<ExitCode> {
    let mut client = planes.access_keys().await?;
    match command {
        AccessKeyCommand::Create(a) => {
            let resp = client
                .create_access_key(CreateAccessKeyRequest {
                    principal: a.principal_arn,
                })
                .await
                .map_err(|s| operator_only(s, "access-key create"))?
                .into_inner();
            let Some(key) = resp.access_key else {
                anyhow::bail!("the server answered without the access key");
            };
            print_one(format, &view(&key, Some(resp.access_key_secret)))?;
        }
        AccessKeyCommand::List(a) => {
            let keys = client
                .list_access_keys(ListAccessKeysRequest {
                    principal: a.principal_arn.unwrap_or_default(),
                })
                .await
                .map_err(|s| operator_only(s, "access-key list"))?
                .into_inner()
                .access_keys;
            let views: Vec<AccessKeyView> = keys.iter().map(|k| view(k, None)).collect();
            match format {
                Format::Json => output::print_json(&views)?,
                Format::Human => {
                    let rows: Vec<Vec<String>> = views
                        .iter()
                        .map(|v| {
                            vec![
                                v.access_key_id.clone(),
                                v.principal.clone(),
                                v.status.to_string(),
                                v.creation_date.clone(),
                            ]
                        })
                        .collect();
                    output::print_text(&output::table(
                        &["ACCESS KEY ID", "PRINCIPAL", "STATUS", "CREATED"],
                        &rows,
                    ))?;
                }
            }
        }
        AccessKeyCommand::Disable(a) => {
            let resp = client
                .disable_access_key(DisableAccessKeyRequest {
                    access_key_id: a.access_key_id,
                })
                .await
                .map_err(|s| operator_only(s, "access-key disable"))?
                .into_inner();
            let Some(key) = resp.access_key else {
                anyhow::bail!("the server answered without the access key");
            };
            print_one(format, &view(&key, None))?;
        }
        AccessKeyCommand::Delete(a) => {
            client
                .delete_access_key(DeleteAccessKeyRequest {
                    access_key_id: a.access_key_id.clone(),
                })
                .await
                .map_err(|s| operator_only(s, "access-key delete"))?;
            output::print_done(
                format,
                &format!("deleted access key {}", a.access_key_id),
                &serde_json::json!({"access_key_id": a.access_key_id, "deleted": true}),
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
