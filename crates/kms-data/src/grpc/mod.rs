//! The data plane's gRPC services: convert the request, call the engine, convert back.

mod access_keys;
mod crypto;
mod material;

pub use access_keys::AccessKeyResolverApi;
pub use crypto::CryptoApi;
pub use material::MaterialService;

use kms_types::DomainError;
use tonic::Status;

pub(crate) fn status(e: DomainError) -> Status {
    kms_runtime::to_status(e)
}

/// Responses that name the key and version they used, for the audit line.
pub(crate) trait NamesKey {
    fn key(&self) -> (&str, &str);
}

macro_rules! names_key {
    ($($t:ty),* $(,)?) => {
        $(impl NamesKey for $t {
            fn key(&self) -> (&str, &str) {
                (&self.key_id, &self.key_version_id)
            }
        })*
    };
}

use kms_proto::kms::v1::*;

names_key!(
    EncryptResponse,
    DecryptResponse,
    ReEncryptResponse,
    GenerateDataKeyResponse,
    GenerateDataKeyWithoutPlaintextResponse,
    GenerateAndExportDataKeyResponse,
    ExportDataKeyResponse,
    AsymmetricEncryptResponse,
    AsymmetricDecryptResponse,
    AsymmetricSignResponse,
    AsymmetricVerifyResponse,
    GetPublicKeyResponse,
);

/// Notes the key and version a response names in the call's audit line, and answers.
pub(crate) fn answer<T: NamesKey>(
    note: &kms_runtime::audit::AuditNote,
    response: T,
) -> Result<tonic::Response<T>, Status> {
    let (key_id, version) = response.key();
    note.set_key(key_id, version);
    Ok(tonic::Response::new(response))
}
