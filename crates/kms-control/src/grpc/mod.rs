//! The control plane's gRPC services: convert the request, call the registry, convert back.

mod access_keys;
mod admin;
mod audit;
mod directory;
mod instances;
mod keys;

pub use access_keys::{AccessKeyApi, access_key_to_wire};
pub use admin::AdminApi;
pub use audit::AuditApi;
pub use directory::DirectoryService;
pub use instances::InstanceService;
pub use keys::KeyService;

use kms_types::DomainError;
use tonic::Status;

/// Converts a domain result into a gRPC one.
pub(crate) fn status(e: DomainError) -> Status {
    kms_runtime::to_status(e)
}
