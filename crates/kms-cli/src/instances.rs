//! KMS instances on the control plane: `create-kms-instance`, `get-kms-instance`,
//! `list-kms-instances`, `share-kms-instance`, `unshare-kms-instance`,
//! `update-kms-instance`. Creating, sharing and changing quotas are for operators (principals
//! the control plane's config names).

use std::process::ExitCode;

use clap::{Args, Subcommand};
use kms_proto::kms::v1::{
    CreateKmsInstanceRequest, GetKmsInstanceRequest, KmsInstance, ListKmsInstancesRequest,
    ShareKmsInstanceRequest, UnshareKmsInstanceRequest, UpdateKmsInstanceRequest,
};

use kms_proto::convert::WireEnum;

use crate::args;
use crate::client::{Planes, RpcError, operator_only};
use crate::output::{self, Format};

/// Instance subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum InstanceCommand {
    /// Create a KMS instance (CreateKmsInstance; operators)
    ///
    /// A software or hardware instance owned by an account, holding at most --key-quota keys.
    /// Only principals the control plane's config lists as operators may create instances.
    #[command(after_help = "\
Examples:
  kmsctl --principal acs:ram::1000000000000000:user/operator \\
      create-kms-instance --type software --owner 1234567890123456 --key-quota 1000
  kmsctl create-kms-instance --type hardware --owner 1234567890123456 --access-management-quota 3")]
    CreateKmsInstance(CreateArgs),
    /// Show one KMS instance (GetKmsInstance)
    #[command(after_help = "\
Examples:
  kmsctl get-kms-instance kst-...
  kmsctl get-kms-instance --json kst-...")]
    GetKmsInstance(InstanceIdArg),
    /// List KMS instances (ListKmsInstances)
    ///
    /// Those the caller's account owns or that are shared with it; every instance for
    /// operators.
    #[command(after_help = "\
Examples:
  kmsctl list-kms-instances
  kmsctl list-kms-instances --page-size 10 --page-token ...")]
    ListKmsInstances(ListArgs),
    /// Share a KMS instance with another account (ShareKmsInstance; operators)
    ///
    /// The account may then see the instance and create keys in it, up to the instance's
    /// access-management quota of accounts.
    #[command(after_help = "\
Examples:
  kmsctl share-kms-instance kst-... --account 6543210987654321")]
    ShareKmsInstance(ShareArgs),
    /// Withdraw a share of a KMS instance (UnshareKmsInstance; operators)
    ///
    /// Keys the account already made in the instance stay.
    #[command(after_help = "\
Examples:
  kmsctl unshare-kms-instance kst-... --account 6543210987654321")]
    UnshareKmsInstance(ShareArgs),
    /// Change a KMS instance's quotas (UpdateKmsInstance; operators)
    ///
    /// Neither quota may go below what is in use: the keys the instance holds, and the other
    /// accounts using it (accounts it is shared with and accounts its key policies grant).
    #[command(after_help = "\
Examples:
  kmsctl update-kms-instance kst-... --key-quota 5000
  kmsctl update-kms-instance kst-... --access-management-quota 3")]
    UpdateKmsInstance(UpdateArgs),
}

#[derive(Debug, Args)]
pub(crate) struct CreateArgs {
    /// Kind of instance: SOFTWARE (software-protected keys: Aliyun_AES_256, RSA_2048, RSA_3072,
    /// EC_P256, EC_P256K) or HARDWARE (HSM-protected keys of all eight specs); any case
    #[arg(long = "type", value_name = "TYPE", value_parser = args::instance_type())]
    instance_type: kms_types::InstanceType,
    /// Account id (`<uid>`) that will own the instance
    #[arg(long, value_name = "ACCOUNT")]
    owner: String,
    /// Most keys the instance may hold (1–100000)
    #[arg(long, value_name = "N", default_value_t = 1000)]
    key_quota: i32,
    /// Most other accounts that may use the instance's keys, by share or key policy (0–1000)
    /// [default: 1]
    #[arg(long, value_name = "N")]
    access_management_quota: Option<i32>,
}

#[derive(Debug, Args)]
pub(crate) struct UpdateArgs {
    /// KMS instance id, `kst-...`
    #[arg(value_name = "INSTANCE")]
    instance: String,
    /// New most keys the instance may hold (1–100000), at least the keys it holds
    #[arg(
        long,
        value_name = "N",
        required_unless_present = "access_management_quota"
    )]
    key_quota: Option<i32>,
    /// New most other accounts that may use the instance's keys (0–1000), at least those that
    /// do
    #[arg(long, value_name = "N")]
    access_management_quota: Option<i32>,
}

#[derive(Debug, Args)]
pub(crate) struct InstanceIdArg {
    /// KMS instance id, `kst-...`
    #[arg(value_name = "INSTANCE")]
    instance: String,
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    page: crate::lifecycle::PageArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ShareArgs {
    /// KMS instance id, `kst-...`
    #[arg(value_name = "INSTANCE")]
    instance: String,
    /// Account id (`<uid>`) to share with or withdraw the share from
    #[arg(long, value_name = "ACCOUNT")]
    account: String,
}

/// Runs an instance subcommand.
pub(crate) async fn run(
    planes: &Planes,
    format: Format,
    command: InstanceCommand,
) -> anyhow::Result<ExitCode> {
    let mut client = planes.instances().await?;
    let one = |i: Option<KmsInstance>| output::print_instance(format, i.as_ref());
    match command {
        InstanceCommand::CreateKmsInstance(a) => one(client
            .create_kms_instance(CreateKmsInstanceRequest {
                instance_type: a.instance_type.to_wire(),
                owner_account_id: a.owner,
                key_quota: a.key_quota,
                access_management_quota: a.access_management_quota,
            })
            .await
            .map_err(|s| operator_only(s, "create-kms-instance"))?
            .into_inner()
            .kms_instance)?,
        InstanceCommand::GetKmsInstance(a) => one(client
            .get_kms_instance(GetKmsInstanceRequest {
                kms_instance_id: a.instance,
            })
            .await
            .map_err(RpcError)?
            .into_inner()
            .kms_instance)?,
        InstanceCommand::ListKmsInstances(a) => {
            let mut request = ListKmsInstancesRequest {
                page_size: a.page.page_size,
                page_token: a.page.page_token.clone().unwrap_or_default(),
            };
            let mut all = Vec::new();
            let next = loop {
                let page = client
                    .list_kms_instances(request.clone())
                    .await
                    .map_err(RpcError)?
                    .into_inner();
                all.extend(page.kms_instances);
                if !a.page.all || page.next_page_token.is_empty() {
                    break page.next_page_token;
                }
                request.page_token = page.next_page_token;
            };
            output::print_instances(format, &all, &next)?;
        }
        InstanceCommand::ShareKmsInstance(a) => one(client
            .share_kms_instance(ShareKmsInstanceRequest {
                kms_instance_id: a.instance,
                account_id: a.account,
            })
            .await
            .map_err(|s| operator_only(s, "share-kms-instance"))?
            .into_inner()
            .kms_instance)?,
        InstanceCommand::UpdateKmsInstance(a) => one(client
            .update_kms_instance(UpdateKmsInstanceRequest {
                kms_instance_id: a.instance,
                key_quota: a.key_quota,
                access_management_quota: a.access_management_quota,
            })
            .await
            .map_err(|s| operator_only(s, "update-kms-instance"))?
            .into_inner()
            .kms_instance)?,
        InstanceCommand::UnshareKmsInstance(a) => one(client
            .unshare_kms_instance(UnshareKmsInstanceRequest {
                kms_instance_id: a.instance,
                account_id: a.account,
            })
            .await
            .map_err(|s| operator_only(s, "unshare-kms-instance"))?
            .into_inner()
            .kms_instance)?,
    }
    Ok(ExitCode::SUCCESS)
}
