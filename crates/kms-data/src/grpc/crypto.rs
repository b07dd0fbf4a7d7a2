//! `kms.v1.CryptoService`.

use std::sync::Arc;

use kms_proto::kms::v1::crypto_service_server::CryptoService;
use kms_proto::kms::v1::*;
use kms_runtime::caller;
use tonic::{Request, Response, Status};

use super::status;
use crate::crypto::CryptoEngine;

/// Cryptographic operations for callers.
#[derive(Debug)]
pub struct CryptoApi {
    engine: Arc<CryptoEngine>,
}

impl CryptoApi {
    /// A service over `engine`.
    pub fn new(engine: Arc<CryptoEngine>) -> Self {
        Self { engine }
    }
}

#[tonic::async_trait]
impl CryptoService for CryptoApi {
    async fn encrypt(
        &self,
        request: Request<EncryptRequest>,
    ) -> Result<Response<EncryptResponse>, Status> {
        let principal = caller(&request).map_err(status)?;
        let req = request.into_inner();
        let sealed = self
            .engine
            .encrypt(
                &principal,
                &req.key_id,
                req.plaintext,
                req.encryption_context,
                req.dry_run,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(EncryptResponse {
            key_id: sealed.key_id,
            key_version_id: sealed.key_version_id.to_string(),
            ciphertext_blob: sealed.blob,
        }))
    }

    async fn decrypt(
        &self,
        request: Request<DecryptRequest>,
    ) -> Result<Response<DecryptResponse>, Status> {
        let principal = caller(&request).map_err(status)?;
        let req = request.into_inner();
        let opened = self
            .engine
            .decrypt(
                &principal,
                req.ciphertext_blob,
                req.encryption_context,
                req.dry_run,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(DecryptResponse {
            key_id: opened.key_id,
            key_version_id: opened.key_version_id.to_string(),
            plaintext: opened.plaintext.expose().to_vec(),
        }))
    }

    kms_runtime::unimplemented_rpcs! {
        "kms.v1.CryptoService";
        re_encrypt(ReEncryptRequest) -> ReEncryptResponse = "ReEncrypt";
        generate_data_key(GenerateDataKeyRequest) -> GenerateDataKeyResponse = "GenerateDataKey";
        generate_data_key_without_plaintext(GenerateDataKeyWithoutPlaintextRequest) -> GenerateDataKeyWithoutPlaintextResponse = "GenerateDataKeyWithoutPlaintext";
        generate_and_export_data_key(GenerateAndExportDataKeyRequest) -> GenerateAndExportDataKeyResponse = "GenerateAndExportDataKey";
        export_data_key(ExportDataKeyRequest) -> ExportDataKeyResponse = "ExportDataKey";
        asymmetric_encrypt(AsymmetricEncryptRequest) -> AsymmetricEncryptResponse = "AsymmetricEncrypt";
        asymmetric_decrypt(AsymmetricDecryptRequest) -> AsymmetricDecryptResponse = "AsymmetricDecrypt";
        asymmetric_sign(AsymmetricSignRequest) -> AsymmetricSignResponse = "AsymmetricSign";
        asymmetric_verify(AsymmetricVerifyRequest) -> AsymmetricVerifyResponse = "AsymmetricVerify";
        get_public_key(GetPublicKeyRequest) -> GetPublicKeyResponse = "GetPublicKey";
        generate_random(GenerateRandomRequest) -> GenerateRandomResponse = "GenerateRandom";
        get_random_password(GetRandomPasswordRequest) -> GetRandomPasswordResponse = "GetRandomPassword";
    }
}
