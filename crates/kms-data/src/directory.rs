//! The control plane's `KeyDirectory`, as the data plane calls it: keys, their changes, usage
//! reports and the data plane's audit checkpoints.

use kms_proto::convert::usage_record;
use kms_proto::kms::internal::v1::key_directory_client::KeyDirectoryClient;
use kms_proto::kms::internal::v1::{
    GetAccessKeyRequest, GetAccessKeyResponse, GetKeyRequest, ReportAuditCheckpointRequest,
    ReportUsageRequest,
};
use kms_runtime::replicas::Replicas;
use kms_types::{DomainError, KeyEntry, KeyVersionId, Principal, UsageEvent};
use tonic_types::StatusExt;

/// A client of `KeyDirectory` that identifies as the data plane. With several control-plane
/// replicas it calls one at a time and moves to the next when one is unavailable.
#[derive(Debug, Clone)]
pub struct DirectoryClient {
    replicas: Replicas,
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
        (tonic::Code::NotFound, Some("Forbidden.AccessKeyNotFound")) => {
            DomainError::AccessKeyNotFound
        }
        (tonic::Code::NotFound, _) => DomainError::KeyNotFound,
        (tonic::Code::InvalidArgument, Some(r)) if r.starts_with("InvalidParameter.") => {
            DomainError::invalid("KeyId", s.message().to_string())
        }
        (
            tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Cancelled
            | tonic::Code::Unknown,
            _,
        ) => DomainError::Unavailable("the control plane cannot be reached".into()),
        (code, _) => DomainError::Internal(format!(
            "KeyDirectory call failed: {code:?}: {}",
            s.message()
        )),
    }
}

impl DirectoryClient {
    /// A lazily connecting client for the control-plane replicas at `urls`.
    pub fn new(
        urls: &[String],
        service_principal: String,
        tls: Option<std::sync::Arc<kms_runtime::reload::PeerTls>>,
    ) -> Result<Self, String> {
        let replicas = Replicas::new("control_plane_url", urls, tls, |endpoint| {
            endpoint
                .connect_timeout(std::time::Duration::from_secs(2))
                .http2_keep_alive_interval(std::time::Duration::from_secs(1))
                .keep_alive_timeout(std::time::Duration::from_secs(2))
                .keep_alive_while_idle(true)
        })?;
        Ok(Self {
            replicas,
            service_principal,
        })
    }

    /// Opens the stream of key changes after `from_revision` on the current replica. A
    /// stream that cannot be opened, or that breaks, moves the next attempt to the next
    /// replica ([`DirectoryClient::watch_failed`]); revisions are the same on every replica.
    pub async fn watch(
        &self,
        from_revision: u64,
    ) -> Result<
        (
            usize,
            tonic::Streaming<kms_proto::kms::internal::v1::KeyEvent>,
        ),
        DomainError,
    > {
        let req = kms_runtime::identity::with_principal(
            tonic::Request::new(kms_proto::kms::internal::v1::WatchKeysRequest { from_revision }),
            &self.service_principal,
        )?;
        let (index, channel) = self.replicas.current();
        match KeyDirectoryClient::new(channel).watch_keys(req).await {
            Ok(stream) => Ok((index, stream.into_inner())),
            Err(status) => {
                self.replicas.failed(index);
                Err(directory_error(status))
            }
        }
    }

    /// Moves on from replica `index` after its watch stream broke.
    pub fn watch_failed(&self, index: usize) {
        self.replicas.failed(index);
    }

    /// The URL of replica `index`, for logs.
    pub fn replica_url(&self, index: usize) -> &str {
        self.replicas.url(index)
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
        let resp = self
            .replicas
            .call(|channel| {
                let req = self.request(req.clone(), 5);
                async move { KeyDirectoryClient::new(channel).get_key(req?).await }
            })
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
        self.replicas
            .call(|channel| {
                let req = self.request(req.clone(), 10);
                async move { KeyDirectoryClient::new(channel).report_usage(req?).await }
            })
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
        self.replicas
            .call(|channel| {
                let req = self.request(req.clone(), 5);
                async move {
                    KeyDirectoryClient::new(channel)
                        .report_audit_checkpoint(req?)
                        .await
                }
            })
            .await
            .map_err(directory_error)?;
        Ok(())
    }

    /// `message` as a request from this plane, with a deadline of `timeout_s` seconds.
    /// AccessKey pair `id` with its sealed secret, from `KeyDirectory.GetAccessKey`.
    pub async fn get_access_key(
        &self,
        id: &kms_types::AccessKeyId,
    ) -> Result<GetAccessKeyResponse, DomainError> {
        let req = GetAccessKeyRequest {
            access_key_id: id.to_string(),
        };
        let resp = self
            .replicas
            .call(|channel| {
                let req = self.request(req.clone(), 5);
                async move { KeyDirectoryClient::new(channel).get_access_key(req?).await }
            })
            .await
            .map_err(directory_error)?;
        Ok(resp.into_inner())
    }

    fn request<M>(&self, message: M, timeout_s: u64) -> Result<tonic::Request<M>, tonic::Status> {
        let mut req = kms_runtime::identity::with_principal(
            tonic::Request::new(message),
            &self.service_principal,
        )
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
        req.set_timeout(std::time::Duration::from_secs(timeout_s));
        Ok(req)
    }
}
