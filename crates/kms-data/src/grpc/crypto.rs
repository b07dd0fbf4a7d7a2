//! `kms.v1.CryptoService`.

use std::sync::Arc;

use kms_proto::convert::WireEnum;
use kms_proto::kms::v1::crypto_service_server::CryptoService;
use kms_proto::kms::v1::*;
use kms_runtime::caller;
use kms_types::authz::Rpc;
use kms_types::{DataKeySpec, DomainError, KeyVersionId, Principal, UsageOp};
use tonic::{Request, Response, Status};

use super::{answer, status};
use crate::crypto::{CryptoEngine, DataKey, ExportTo, PasswordRules};
use crate::usage::UsageRecorder;
use kms_runtime::audit::AuditNote;

/// An optional data-key spec: 0 means "not given".
fn optional_data_key_spec(v: i32) -> Result<Option<DataKeySpec>, Status> {
    if v == 0 {
        Ok(None)
    } else {
        DataKeySpec::from_wire(v).map(Some).map_err(status)
    }
}

/// Cryptographic operations for callers.
#[derive(Debug)]
pub struct CryptoApi {
    engine: Arc<CryptoEngine>,
    usage: Arc<UsageRecorder>,
}

impl CryptoApi {
    /// A service over `engine`, noting every successful use of a key in `usage`.
    pub fn new(engine: Arc<CryptoEngine>, usage: Arc<UsageRecorder>) -> Self {
        Self { engine, usage }
    }

    /// Notes a successful use of a key version for key association.
    fn used(&self, principal: &Principal, op: UsageOp, key_id: &str, version: KeyVersionId) {
        self.usage.record(key_id, version, principal, op);
    }

    /// A new data key for either GenerateDataKey RPC, noted for audit and usage.
    async fn data_key(
        &self,
        request: Request<GenerateDataKeyRequest>,
        rpc: Rpc,
        op: UsageOp,
    ) -> Result<(AuditNote, DataKey), Status> {
        let principal = caller(&request).map_err(status)?;
        let note = AuditNote::of(&request);
        let req = request.into_inner();
        note.set_key(&req.key_id, "");
        let spec = optional_data_key_spec(req.key_spec)?;
        let dk = self
            .engine
            .generate_data_key(
                &principal,
                rpc,
                &req.key_id,
                spec,
                req.number_of_bytes,
                req.encryption_context,
                req.dry_run,
            )
            .await
            .map_err(status)?;
        self.used(&principal, op, &dk.key_id, dk.key_version_id);
        Ok((note, dk))
    }
}

#[tonic::async_trait]
impl CryptoService for CryptoApi {
    async fn encrypt(
        &self,
        request: Request<EncryptRequest>,
    ) -> Result<Response<EncryptResponse>, Status> {
        let principal = caller(&request).map_err(status)?;
        let note = AuditNote::of(&request);
        let req = request.into_inner();
        note.set_key(&req.key_id, "");
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
        self.used(
            &principal,
            UsageOp::Encrypt,
            &sealed.key_id,
            sealed.key_version_id,
        );
        answer(
            &note,
            EncryptResponse {
                key_id: sealed.key_id,
                key_version_id: sealed.key_version_id.to_string(),
                ciphertext_blob: sealed.blob,
            },
        )
    }

    async fn decrypt(
        &self,
        request: Request<DecryptRequest>,
    ) -> Result<Response<DecryptResponse>, Status> {
        let principal = caller(&request).map_err(status)?;
        let note = AuditNote::of(&request);
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
        self.used(
            &principal,
            UsageOp::Decrypt,
            &opened.key_id,
            opened.key_version_id,
        );
        answer(
            &note,
            DecryptResponse {
                key_id: opened.key_id,
                key_version_id: opened.key_version_id.to_string(),
                plaintext: opened.plaintext.expose().to_vec(),
            },
        )
    }

    async fn re_encrypt(
        &self,
        request: Request<ReEncryptRequest>,
    ) -> Result<Response<ReEncryptResponse>, Status> {
        let principal = caller(&request).map_err(status)?;
        let note = AuditNote::of(&request);
        let req = request.into_inner();
        let out = self
            .engine
            .re_encrypt(
                &principal,
                req.ciphertext_blob,
                req.source_encryption_context,
                &req.destination_key_id,
                req.destination_encryption_context,
                req.dry_run,
            )
            .await
            .map_err(status)?;
        self.used(
            &principal,
            UsageOp::ReEncryptFrom,
            &out.source_key_id,
            out.source_key_version_id,
        );
        self.used(
            &principal,
            UsageOp::ReEncryptTo,
            &out.sealed.key_id,
            out.sealed.key_version_id,
        );
        answer(
            &note,
            ReEncryptResponse {
                ciphertext_blob: out.sealed.blob,
                key_id: out.sealed.key_id,
                key_version_id: out.sealed.key_version_id.to_string(),
                source_key_id: out.source_key_id,
                source_key_version_id: out.source_key_version_id.to_string(),
            },
        )
    }

    async fn generate_data_key(
        &self,
        request: Request<GenerateDataKeyRequest>,
    ) -> Result<Response<GenerateDataKeyResponse>, Status> {
        let (note, dk) = self
            .data_key(request, Rpc::GenerateDataKey, UsageOp::GenerateDataKey)
            .await?;
        answer(
            &note,
            GenerateDataKeyResponse {
                key_id: dk.key_id,
                key_version_id: dk.key_version_id.to_string(),
                ciphertext_blob: dk.blob,
                plaintext: dk.plaintext.expose().to_vec(),
            },
        )
    }

    async fn generate_data_key_without_plaintext(
        &self,
        request: Request<GenerateDataKeyWithoutPlaintextRequest>,
    ) -> Result<Response<GenerateDataKeyWithoutPlaintextResponse>, Status> {
        // The same request shape; only the answer leaves the plaintext out.
        let request = request.map(|r| GenerateDataKeyRequest {
            key_id: r.key_id,
            key_spec: r.key_spec,
            number_of_bytes: r.number_of_bytes,
            encryption_context: r.encryption_context,
            dry_run: r.dry_run,
        });
        let (note, dk) = self
            .data_key(
                request,
                Rpc::GenerateDataKeyWithoutPlaintext,
                UsageOp::GenerateDataKeyWithoutPlaintext,
            )
            .await?;
        answer(
            &note,
            GenerateDataKeyWithoutPlaintextResponse {
                key_id: dk.key_id,
                key_version_id: dk.key_version_id.to_string(),
                ciphertext_blob: dk.blob,
            },
        )
    }

    async fn generate_random(
        &self,
        request: Request<GenerateRandomRequest>,
    ) -> Result<Response<GenerateRandomResponse>, Status> {
        let principal = caller(&request).map_err(status)?;
        let random = self
            .engine
            .generate_random(&principal, request.get_ref().length)
            .await
            .map_err(status)?;
        Ok(Response::new(GenerateRandomResponse { random }))
    }

    async fn get_random_password(
        &self,
        request: Request<GetRandomPasswordRequest>,
    ) -> Result<Response<GetRandomPasswordResponse>, Status> {
        let principal = caller(&request).map_err(status)?;
        let req = request.into_inner();
        let rules = PasswordRules {
            length: req.password_length,
            exclude_characters: req.exclude_characters,
            exclude_lowercase: req.exclude_lowercase,
            exclude_uppercase: req.exclude_uppercase,
            exclude_numbers: req.exclude_numbers,
            exclude_punctuation: req.exclude_punctuation,
            require_each_included_type: req.require_each_included_type,
        };
        let password = self
            .engine
            .random_password(&principal, rules)
            .await
            .map_err(status)?;
        let password = String::from_utf8(password.expose().to_vec())
            .map_err(|_| status(DomainError::Internal("password is not ASCII".into())))?;
        Ok(Response::new(GetRandomPasswordResponse { password }))
    }

    async fn generate_and_export_data_key(
        &self,
        request: Request<GenerateAndExportDataKeyRequest>,
    ) -> Result<Response<GenerateAndExportDataKeyResponse>, Status> {
        let principal = caller(&request).map_err(status)?;
        let note = AuditNote::of(&request);
        let req = request.into_inner();
        note.set_key(&req.key_id, "");
        let spec = optional_data_key_spec(req.key_spec)?;
        let export = ExportTo {
            public_key: req.public_key,
            wrapping_algorithm: req.wrapping_algorithm,
            wrapping_key_spec: req.wrapping_key_spec,
        };
        let (dk, exported) = self
            .engine
            .generate_and_export(
                &principal,
                &req.key_id,
                spec,
                req.number_of_bytes,
                req.encryption_context,
                export,
                req.dry_run,
            )
            .await
            .map_err(status)?;
        self.used(
            &principal,
            UsageOp::GenerateAndExportDataKey,
            &dk.key_id,
            dk.key_version_id,
        );
        answer(
            &note,
            GenerateAndExportDataKeyResponse {
                key_id: dk.key_id,
                key_version_id: dk.key_version_id.to_string(),
                ciphertext_blob: dk.blob,
                exported_data_key: exported,
            },
        )
    }

    async fn export_data_key(
        &self,
        request: Request<ExportDataKeyRequest>,
    ) -> Result<Response<ExportDataKeyResponse>, Status> {
        let principal = caller(&request).map_err(status)?;
        let note = AuditNote::of(&request);
        let req = request.into_inner();
        let export = ExportTo {
            public_key: req.public_key,
            wrapping_algorithm: req.wrapping_algorithm,
            wrapping_key_spec: req.wrapping_key_spec,
        };
        let out = self
            .engine
            .export_data_key(
                &principal,
                req.ciphertext_blob,
                req.encryption_context,
                export,
                req.dry_run,
            )
            .await
            .map_err(status)?;
        self.used(
            &principal,
            UsageOp::ExportDataKey,
            &out.key_id,
            out.key_version_id,
        );
        answer(
            &note,
            ExportDataKeyResponse {
                key_id: out.key_id,
                key_version_id: out.key_version_id.to_string(),
                exported_data_key: out.value,
            },
        )
    }

    async fn asymmetric_encrypt(
        &self,
        request: Request<AsymmetricEncryptRequest>,
    ) -> Result<Response<AsymmetricEncryptResponse>, Status> {
        let principal = caller(&request).map_err(status)?;
        let note = AuditNote::of(&request);
        let req = request.into_inner();
        note.set_key(&req.key_id, &req.key_version_id);
        let out = self
            .engine
            .asym_encrypt(
                &principal,
                &req.key_id,
                &req.key_version_id,
                req.algorithm,
                req.plaintext,
                req.dry_run,
            )
            .await
            .map_err(status)?;
        self.used(
            &principal,
            UsageOp::AsymmetricEncrypt,
            &out.key_id,
            out.key_version_id,
        );
        answer(
            &note,
            AsymmetricEncryptResponse {
                key_id: out.key_id,
                key_version_id: out.key_version_id.to_string(),
                ciphertext_blob: out.value,
            },
        )
    }

    async fn asymmetric_decrypt(
        &self,
        request: Request<AsymmetricDecryptRequest>,
    ) -> Result<Response<AsymmetricDecryptResponse>, Status> {
        let principal = caller(&request).map_err(status)?;
        let note = AuditNote::of(&request);
        let req = request.into_inner();
        note.set_key(&req.key_id, &req.key_version_id);
        let out = self
            .engine
            .asym_decrypt(
                &principal,
                &req.key_id,
                &req.key_version_id,
                req.algorithm,
                req.ciphertext_blob,
                req.dry_run,
            )
            .await
            .map_err(status)?;
        self.used(
            &principal,
            UsageOp::AsymmetricDecrypt,
            &out.key_id,
            out.key_version_id,
        );
        answer(
            &note,
            AsymmetricDecryptResponse {
                key_id: out.key_id,
                key_version_id: out.key_version_id.to_string(),
                plaintext: out.value.expose().to_vec(),
            },
        )
    }

    async fn asymmetric_sign(
        &self,
        request: Request<AsymmetricSignRequest>,
    ) -> Result<Response<AsymmetricSignResponse>, Status> {
        let principal = caller(&request).map_err(status)?;
        let note = AuditNote::of(&request);
        let req = request.into_inner();
        note.set_key(&req.key_id, &req.key_version_id);
        let out = self
            .engine
            .sign(
                &principal,
                &req.key_id,
                &req.key_version_id,
                req.algorithm,
                req.digest,
                req.dry_run,
            )
            .await
            .map_err(status)?;
        self.used(
            &principal,
            UsageOp::AsymmetricSign,
            &out.key_id,
            out.key_version_id,
        );
        answer(
            &note,
            AsymmetricSignResponse {
                key_id: out.key_id,
                key_version_id: out.key_version_id.to_string(),
                value: out.value,
            },
        )
    }

    async fn asymmetric_verify(
        &self,
        request: Request<AsymmetricVerifyRequest>,
    ) -> Result<Response<AsymmetricVerifyResponse>, Status> {
        let principal = caller(&request).map_err(status)?;
        let note = AuditNote::of(&request);
        let req = request.into_inner();
        note.set_key(&req.key_id, &req.key_version_id);
        let out = self
            .engine
            .verify(
                &principal,
                &req.key_id,
                &req.key_version_id,
                req.algorithm,
                req.digest,
                req.value,
                req.dry_run,
            )
            .await
            .map_err(status)?;
        self.used(
            &principal,
            UsageOp::AsymmetricVerify,
            &out.key_id,
            out.key_version_id,
        );
        answer(
            &note,
            AsymmetricVerifyResponse {
                key_id: out.key_id,
                key_version_id: out.key_version_id.to_string(),
                value: out.value,
            },
        )
    }

    async fn get_public_key(
        &self,
        request: Request<GetPublicKeyRequest>,
    ) -> Result<Response<GetPublicKeyResponse>, Status> {
        let principal = caller(&request).map_err(status)?;
        let note = AuditNote::of(&request);
        let req = request.get_ref();
        let out = self
            .engine
            .public_key(&principal, &req.key_id, &req.key_version_id)
            .await
            .map_err(status)?;
        self.used(
            &principal,
            UsageOp::GetPublicKey,
            &out.key_id,
            out.key_version_id,
        );
        answer(
            &note,
            GetPublicKeyResponse {
                key_id: out.key_id,
                key_version_id: out.key_version_id.to_string(),
                public_key: out.value,
            },
        )
    }
}
