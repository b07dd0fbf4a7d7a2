//! The data plane's gRPC services: convert the request, call the engine, convert back.

mod crypto;
mod material;

pub use crypto::CryptoApi;
pub use material::MaterialService;

use kms_types::DomainError;
use tonic::Status;

pub(crate) fn status(e: DomainError) -> Status {
    kms_runtime::to_status(e)
}
