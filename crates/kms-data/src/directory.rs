//! The control plane's `KeyDirectory`, as the data plane calls it: keys, their changes, usage
//! reports and the data plane's audit checkpoints.

use kms_proto::convert::usage_record;
use kms_proto::kms::internal::v1::key_directory_client::KeyDirectoryClient;
use kms_proto::kms::internal::v1::{
    GetKeyRequest, ReportAuditCheckpointRequest, ReportUsageRequest,
};
use kms_types::{DomainError, KeyEntry, KeyVersionId, Principal, UsageEvent};
use tonic::transport::Channel;
use tonic_types::StatusExt;

/// A client of `KeyDirectory` that identifies as the data plane.
#[derive(Debug, Clone)]
pub struct DirectoryClient {
    inner: KeyDirectoryClient<Channel>,
    service_principal: String,
}

/// How to find a key in the directory.
#[derive(Debug, Clone, Copy)]
pub enum Lookup<'a> {
    /// By id, alias or ARN, resolving aliases in the caller's account.
    Key(&'a str, &'a Principal),
    /// By one of its versions.
    Version(&'a KeyVersionId),
}

fn directory_error(s: tonic::Status) -> DomainError {
    let reason = s.get_details_error_info().map(|i| i.reason);
    match (s.code(), reason.as_deref()) {
        (tonic::Code::NotFound, Some("Forbidden.AliasNotFound")) => DomainError::AliasNotFound,
        (tonic::Code::NotFound, _) => DomainError::KeyNotFound,
        (tonic::Code::InvalidArgument, Some(r)) if r.starts_with("InvalidParameter.") => {
            DomainError::invalid("KeyId", s.message().to_string())
        }
        (tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled, _) => {
            DomainError::Unavailable("the control plane cannot be reached".into())
        }
        (code, _) => DomainError::Internal(format!(
            "KeyDirectory call failed: {code:?}: {}",
            s.message()
        )),
    }
}

impl DirectoryClient {
    /// A lazily connecting client for `url`.
    pub fn new(
        url: &str,
        service_principal: String,
        tls: Option<tonic::transport::ClientTlsConfig>,
    ) -> Result<Self, String> {
        let mut endpoint = Channel::from_shared(url.to_string())
            .map_err(|e| format!("control_plane_url {url:?}: {e}"))?;
        if let Some(tls) = tls {
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| format!("control_plane_url {url:?}: {e}"))?;
        }
        let channel = endpoint
            .connect_timeout(std::time::Duration::from_secs(2))
            .http2_keep_alive_interval(std::time::Duration::from_secs(1))
            .keep_alive_timeout(std::time::Duration::from_secs(2))
            .keep_alive_while_idle(true)
            .connect_lazy();
        Ok(Self {
            inner: KeyDirectoryClient::new(channel),
            service_principal,
        })
    }

    /// Opens the stream of key changes after `from_revision`.
    pub async fn watch(
        &self,
        from_revision: u64,
    ) -> Result<tonic::Streaming<kms_proto::kms::internal::v1::KeyEvent>, DomainError> {
        let req = kms_runtime::identity::with_principal(
            tonic::Request::new(kms_proto::kms::internal::v1::WatchKeysRequest { from_revision }),
            &self.service_principal,
        )?;
        self.inner
            .clone()
            .watch_keys(req)
            .await
            .map(tonic::Response::into_inner)
            .map_err(directory_error)
    }

    /// Fetches a key's entry and the directory revision it was read at.
    pub async fn get(&self, lookup: Lookup<'_>) -> Result<(KeyEntry, u64), DomainError> {
        let req = match lookup {
            Lookup::Key(key_id, caller) => GetKeyRequest {
                key_id: key_id.to_string(),
                key_version_id: String::new(),
                principal: caller.arn().to_string(),
            },
            Lookup::Version(version) => GetKeyRequest {
                key_id: String::new(),
                key_version_id: version.to_string(),
                principal: String::new(),
            },
        };
        let mut req = kms_runtime::identity::with_principal(
            tonic::Request::new(req),
            &self.service_principal,
        )?;
        req.set_timeout(std::time::Duration::from_secs(5));
        let resp = self
            .inner
            .clone()
            .get_key(req)
            .await
            .map_err(directory_error)?
            .into_inner();
        let entry = resp
            .key
            .ok_or_else(|| DomainError::Internal("KeyDirectory.GetKey returned no key".into()))?;
        let entry = KeyEntry::try_from(entry).map_err(|e| {
            DomainError::Internal(format!("KeyDirectory.GetKey returned a bad entry: {e}"))
        })?;
        Ok((entry, resp.revision))
    }

    /// Sends usage records to `KeyDirectory.ReportUsage`.
    pub async fn report_usage(&self, events: &[UsageEvent]) -> Result<(), DomainError> {
        let req = ReportUsageRequest {
            records: events.iter().map(usage_record).collect(),
        };
        let mut req = kms_runtime::identity::with_principal(
            tonic::Request::new(req),
            &self.service_principal,
        )?;
        req.set_timeout(std::time::Duration::from_secs(10));
        self.inner
            .clone()
            .report_usage(req)
            .await
            .map_err(directory_error)?;
        Ok(())
    }

    /// Records a checkpoint of the data plane's audit log with
    /// `KeyDirectory.ReportAuditCheckpoint`.
    pub async fn report_audit_checkpoint(
        &self,
        checkpoint: &kms_runtime::audit::Checkpoint,
    ) -> Result<(), DomainError> {
        let req = ReportAuditCheckpointRequest {
            checkpoint: Some(kms_runtime::audit_wire::checkpoint_to_wire(checkpoint)),
        };
        let mut req = kms_runtime::identity::with_principal(
            tonic::Request::new(req),
            &self.service_principal,
        )?;
        req.set_timeout(std::time::Duration::from_secs(5));
        self.inner
            .clone()
            .report_audit_checkpoint(req)
            .await
            .map_err(directory_error)?;
        Ok(())
    }
}
