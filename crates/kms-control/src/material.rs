//! Where new and imported key material comes from: the data plane's `KeyMaterial` service,
//! behind the [`MaterialSource`] trait so the registry can be tested in process. Material (and
//! every import private key) arrives already wrapped under the HSM root key; the control plane
//! never sees plaintext. The same client fetches the control plane's audit-chain key and has
//! the data plane check MACs of its own audit log.

use kms_proto::convert::WireEnum;
use kms_proto::kms::internal::v1::key_material_client::KeyMaterialClient;
use kms_proto::kms::internal::v1::{
    CreateImportKeyRequest, GenerateKeyMaterialRequest, ImportMaterialRequest,
};
use kms_types::{
    Algorithm, DomainError, ImportTokenId, KeyId, KeySpec, KeyVersionId, ProtectionLevel,
};
use tonic::transport::Channel;

/// Wrapped material and public key of a new key version.
#[derive(Debug)]
pub struct NewMaterial {
    /// Material sealed under the root key.
    pub wrapped: Vec<u8>,
    /// SubjectPublicKeyInfo DER; empty for symmetric keys.
    pub public_key_der: Vec<u8>,
}

/// Makes the material of new key versions.
#[tonic::async_trait]
pub trait MaterialSource: Send + Sync + std::fmt::Debug + 'static {
    /// New material of `spec` at `protection` for `version` of `key_id`, wrapped.
    async fn generate(
        &self,
        key_id: &KeyId,
        version: &KeyVersionId,
        spec: KeySpec,
        protection: ProtectionLevel,
    ) -> Result<NewMaterial, DomainError>;

    /// A one-time import key pair for `token` of `key_id`: the public key, and the private
    /// key sealed under the root key.
    async fn create_import_key(
        &self,
        key_id: &KeyId,
        token: &ImportTokenId,
        algorithm: Algorithm,
        wrapping_key_spec: KeySpec,
    ) -> Result<NewImportKey, DomainError> {
        let _ = (key_id, token, algorithm, wrapping_key_spec);
        Err(DomainError::Internal(
            "this material source does not import".into(),
        ))
    }

    /// Opens the caller's wrapped material with the import key and seals it for the version.
    async fn import_material(
        &self,
        import: MaterialImport,
    ) -> Result<ImportedMaterial, DomainError> {
        let _ = import;
        Err(DomainError::Internal(
            "this material source does not import".into(),
        ))
    }
}

/// A one-time import key pair, from the data plane.
#[derive(Debug)]
pub struct NewImportKey {
    /// SubjectPublicKeyInfo DER, for the caller.
    pub public_key_der: Vec<u8>,
    /// The private key sealed under the root key, kept with the token.
    pub sealed_private_key: Vec<u8>,
}

/// What the data plane needs to import material into a key version.
#[derive(Debug, Clone)]
pub struct MaterialImport {
    /// The key.
    pub key_id: KeyId,
    /// The version the material becomes.
    pub version: KeyVersionId,
    /// The key's spec.
    pub spec: KeySpec,
    /// The key's protection level.
    pub protection: ProtectionLevel,
    /// How the caller wrapped the material (the token's algorithm).
    pub wrapping_algorithm: Algorithm,
    /// The token, which names the import key.
    pub token: ImportTokenId,
    /// The import private key, sealed.
    pub sealed_import_key: Vec<u8>,
    /// The caller's wrapped material.
    pub encrypted_material: Vec<u8>,
}

/// Imported material, sealed by the data plane.
#[derive(Debug)]
pub struct ImportedMaterial {
    /// Material sealed under the root key.
    pub wrapped: Vec<u8>,
    /// SubjectPublicKeyInfo DER; empty for symmetric keys.
    pub public_key_der: Vec<u8>,
    /// Keyed digest of the material (never a plain hash).
    pub digest: Vec<u8>,
}

/// A client of the data plane's `KeyMaterial` service that identifies as the control plane.
#[derive(Debug, Clone)]
pub struct MaterialClient {
    inner: KeyMaterialClient<Channel>,
    service_principal: String,
}

impl MaterialClient {
    /// A lazily connecting client for `url`.
    pub fn new(
        url: &str,
        service_principal: String,
        tls: Option<tonic::transport::ClientTlsConfig>,
    ) -> Result<Self, String> {
        let mut endpoint = Channel::from_shared(url.to_string())
            .map_err(|e| format!("data_plane_url {url:?}: {e}"))?;
        if let Some(tls) = tls {
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| format!("data_plane_url {url:?}: {e}"))?;
        }
        let channel = endpoint
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(std::time::Duration::from_secs(60))
            .connect_lazy();
        Ok(Self {
            inner: KeyMaterialClient::new(channel),
            service_principal,
        })
    }

    /// The control plane's audit-chain key, derived by the data plane from the HSM root key.
    /// The received bytes are wiped once the key is built.
    pub async fn audit_key(&self) -> Result<kms_runtime::audit::AuditKey, DomainError> {
        let req = tonic::Request::new(kms_proto::kms::internal::v1::GetAuditKeyRequest {});
        let mut req = kms_runtime::identity::with_principal(req, &self.service_principal)?;
        req.set_timeout(std::time::Duration::from_secs(10));
        let resp = self
            .inner
            .clone()
            .get_audit_key(req)
            .await
            .map_err(|s| data_plane_error("GetAuditKey", &s))?;
        let mut bytes = zeroize::Zeroizing::new(resp.into_inner().key);
        let key = kms_runtime::audit::AuditKey::from_bytes(&bytes)
            .map_err(|e| DomainError::Internal(format!("data plane GetAuditKey: {e}")));
        zeroize::Zeroize::zeroize(&mut *bytes);
        key
    }

    /// Has the data plane check MACs under its own audit-chain key: the index of the first
    /// that does not match, if any.
    pub async fn verify_audit_macs(
        &self,
        checks: &[kms_runtime::audit::MacCheck],
    ) -> Result<Option<usize>, DomainError> {
        let req = tonic::Request::new(kms_proto::kms::internal::v1::VerifyPlaneAuditMacsRequest {
            checks: Some(kms_proto::kms::v1::VerifyAuditMacsRequest {
                plane: kms_runtime::audit::Plane::Data.as_str().to_string(),
                checks: kms_runtime::audit_wire::checks_to_wire(checks),
            }),
        });
        let req = kms_runtime::identity::with_principal(req, &self.service_principal)?;
        let resp = self
            .inner
            .clone()
            .verify_plane_audit_macs(req)
            .await
            .map_err(|s| data_plane_error("VerifyPlaneAuditMacs", &s))?
            .into_inner();
        let result = resp.result.ok_or_else(|| {
            DomainError::Internal("data plane VerifyPlaneAuditMacs: no result".into())
        })?;
        Ok(kms_runtime::audit_wire::first_mismatch(&result))
    }

    /// Asks the data plane for new material of `spec` at `protection`.
    pub async fn generate_material(
        &self,
        key_id: &KeyId,
        version: &KeyVersionId,
        spec: KeySpec,
        protection: ProtectionLevel,
    ) -> Result<NewMaterial, DomainError> {
        let req = tonic::Request::new(GenerateKeyMaterialRequest {
            key_id: key_id.to_string(),
            key_version_id: version.to_string(),
            key_spec: spec.to_wire(),
            protection_level: protection.to_wire(),
        });
        let req = kms_runtime::identity::with_principal(req, &self.service_principal)?;
        let resp = self
            .inner
            .clone()
            .generate(req)
            .await
            .map_err(|s| match s.code() {
                tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Cancelled => {
                    DomainError::Unavailable("the data plane cannot be reached".into())
                }
                _ => DomainError::Internal(format!(
                    "data plane Generate failed: {:?}: {}",
                    s.code(),
                    s.message()
                )),
            })?
            .into_inner();
        if resp.wrapped_material.is_empty() {
            return Err(DomainError::Internal(
                "data plane returned no material".into(),
            ));
        }
        Ok(NewMaterial {
            wrapped: resp.wrapped_material,
            public_key_der: resp.public_key_der,
        })
    }
}

fn data_plane_error(call: &str, s: &tonic::Status) -> DomainError {
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            DomainError::Unavailable("the data plane cannot be reached".into())
        }
        code => DomainError::Internal(format!(
            "data plane {call} failed: {code:?}: {}",
            s.message()
        )),
    }
}

#[tonic::async_trait]
impl MaterialSource for MaterialClient {
    async fn generate(
        &self,
        key_id: &KeyId,
        version: &KeyVersionId,
        spec: KeySpec,
        protection: ProtectionLevel,
    ) -> Result<NewMaterial, DomainError> {
        self.generate_material(key_id, version, spec, protection)
            .await
    }

    async fn create_import_key(
        &self,
        key_id: &KeyId,
        token: &ImportTokenId,
        algorithm: Algorithm,
        wrapping_key_spec: KeySpec,
    ) -> Result<NewImportKey, DomainError> {
        self.new_import_key(key_id, token, algorithm, wrapping_key_spec)
            .await
    }

    async fn import_material(
        &self,
        import: MaterialImport,
    ) -> Result<ImportedMaterial, DomainError> {
        self.import(import).await
    }
}

/// A data-plane failure of an import call: what the caller sent is refused with the field the
/// data plane named (its `InvalidParameter.<Field>` reason code); the rest is the data plane's.
fn import_error(call: &str, s: tonic::Status) -> DomainError {
    const CALLER_FIELDS: &[&str] = &[
        "EncryptedKeyMaterial",
        "KeyMaterial",
        "WrappingAlgorithm",
        "WrappingKeySpec",
    ];
    let field = kms_runtime::status::reason_of(&s).and_then(|reason| {
        let field = reason.strip_prefix("InvalidParameter.")?;
        CALLER_FIELDS.iter().copied().find(|f| *f == field)
    });
    match (s.code(), field) {
        (tonic::Code::InvalidArgument, Some(field)) => {
            let text = s.message();
            let text = text
                .split_once(": ")
                .map_or(text, |(_, rest)| rest)
                .to_string();
            DomainError::invalid(field, text)
        }
        (tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled, _) => {
            DomainError::Unavailable("the data plane cannot be reached".into())
        }
        (code, _) => DomainError::Internal(format!(
            "data plane {call} failed: {code:?}: {}",
            s.message()
        )),
    }
}

impl MaterialClient {
    /// Asks the data plane for an import key pair for `token`.
    pub async fn new_import_key(
        &self,
        key_id: &KeyId,
        token: &ImportTokenId,
        algorithm: Algorithm,
        wrapping_key_spec: KeySpec,
    ) -> Result<NewImportKey, DomainError> {
        let req = tonic::Request::new(CreateImportKeyRequest {
            key_id: key_id.to_string(),
            import_key_id: token.to_string(),
            wrapping_algorithm: algorithm.to_wire(),
            wrapping_key_spec: wrapping_key_spec.to_wire(),
        });
        let req = kms_runtime::identity::with_principal(req, &self.service_principal)?;
        let resp = self
            .inner
            .clone()
            .create_import_key(req)
            .await
            .map_err(|s| import_error("CreateImportKey", s))?
            .into_inner();
        if resp.public_key_der.is_empty() || resp.wrapped_private_key.is_empty() {
            return Err(DomainError::Internal(
                "data plane returned no import key".into(),
            ));
        }
        Ok(NewImportKey {
            public_key_der: resp.public_key_der,
            sealed_private_key: resp.wrapped_private_key,
        })
    }

    /// Asks the data plane to import material.
    pub async fn import(&self, import: MaterialImport) -> Result<ImportedMaterial, DomainError> {
        let req = tonic::Request::new(ImportMaterialRequest {
            key_id: import.key_id.to_string(),
            key_version_id: import.version.to_string(),
            key_spec: import.spec.to_wire(),
            protection_level: import.protection.to_wire(),
            wrapping_algorithm: import.wrapping_algorithm.to_wire(),
            wrapped_private_key: import.sealed_import_key,
            encrypted_key_material: import.encrypted_material,
            import_key_id: import.token.to_string(),
        });
        let req = kms_runtime::identity::with_principal(req, &self.service_principal)?;
        let resp = self
            .inner
            .clone()
            .import_material(req)
            .await
            .map_err(|s| import_error("ImportMaterial", s))?
            .into_inner();
        if resp.wrapped_material.is_empty() || resp.material_digest.is_empty() {
            return Err(DomainError::Internal(
                "data plane returned no imported material".into(),
            ));
        }
        Ok(ImportedMaterial {
            wrapped: resp.wrapped_material,
            public_key_der: resp.public_key_der,
            digest: resp.material_digest,
        })
    }
}
