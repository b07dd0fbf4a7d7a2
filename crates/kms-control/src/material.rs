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
use kms_runtime::replicas::Replicas;
use kms_types::{
    AccessKeyId, Algorithm, DomainError, ImportTokenId, KeyId, KeySpec, KeyVersionId,
    ProtectionLevel,
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

    /// A new secret for AccessKey pair `id`, and the same sealed under the root key.
    async fn new_access_key_secret(
        &self,
        id: &AccessKeyId,
    ) -> Result<NewAccessKeySecret, DomainError> {
        let _ = id;
        Err(DomainError::Internal(
            "this material source makes no access key secrets".into(),
        ))
    }
}

/// A new AccessKey secret, from the data plane.
pub struct NewAccessKeySecret {
    /// The secret, shown once to the operator; wiped on drop.
    pub secret: zeroize::Zeroizing<String>,
    /// The same sealed under the root key, bound to the access key id.
    pub sealed: Vec<u8>,
}

impl std::fmt::Debug for NewAccessKeySecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewAccessKeySecret")
            .field("secret", &"[redacted]")
            .finish_non_exhaustive()
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
/// With several data-plane replicas it calls one at a time and moves to the next when one is
/// unavailable: every `KeyMaterial` call only computes, so sending one twice changes nothing.
#[derive(Debug, Clone)]
pub struct MaterialClient {
    replicas: Replicas,
    service_principal: String,
}

impl MaterialClient {
    /// A lazily connecting client for the data-plane replicas at `urls`.
    pub fn new(
        urls: &[String],
        service_principal: String,
        tls: Option<std::sync::Arc<kms_runtime::reload::PeerTls>>,
    ) -> Result<Self, String> {
        let replicas = Replicas::new("data_plane_url", urls, tls, |endpoint| {
            endpoint
                .connect_timeout(std::time::Duration::from_secs(5))
                .timeout(std::time::Duration::from_secs(60))
        })?;
        Ok(Self {
            replicas,
            service_principal,
        })
    }

    /// Sends `message` as this plane, with `timeout` when given, through `rpc` on the current
    /// replica (and the next ones while it is unavailable).
    async fn call<M, R, F, Fut>(
        &self,
        message: M,
        timeout: Option<std::time::Duration>,
        rpc: F,
    ) -> Result<R, tonic::Status>
    where
        M: Clone,
        F: Fn(KeyMaterialClient<Channel>, tonic::Request<M>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        self.replicas
            .call(|channel| {
                let req = kms_runtime::identity::with_principal(
                    tonic::Request::new(message.clone()),
                    &self.service_principal,
                )
                .map(|mut req| {
                    if let Some(t) = timeout {
                        req.set_timeout(t);
                    }
                    req
                })
                .map_err(|e| tonic::Status::internal(e.to_string()));
                let client = KeyMaterialClient::new(channel);
                let sent = req.map(|req| rpc(client, req));
                async move { sent?.await.map(tonic::Response::into_inner) }
            })
            .await
    }

    /// The control plane's audit-chain key, derived by the data plane from the HSM root key.
    /// The received bytes are wiped once the key is built.
    pub async fn audit_key(&self) -> Result<kms_runtime::audit::AuditKey, DomainError> {
        let resp = self
            .call(
                kms_proto::kms::internal::v1::GetAuditKeyRequest {},
                Some(std::time::Duration::from_secs(10)),
                |mut c, req| async move { c.get_audit_key(req).await },
            )
            .await
            .map_err(|s| data_plane_error("GetAuditKey", &s))?;
        let mut bytes = zeroize::Zeroizing::new(resp.key);
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
        let message = kms_proto::kms::internal::v1::VerifyPlaneAuditMacsRequest {
            checks: Some(kms_proto::kms::v1::VerifyAuditMacsRequest {
                plane: kms_runtime::audit::Plane::Data.as_str().to_string(),
                checks: kms_runtime::audit_wire::checks_to_wire(checks),
            }),
        };
        let resp = self
            .call(message, None, |mut c, req| async move {
                c.verify_plane_audit_macs(req).await
            })
            .await
            .map_err(|s| data_plane_error("VerifyPlaneAuditMacs", &s))?;
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
        let message = GenerateKeyMaterialRequest {
            key_id: key_id.to_string(),
            key_version_id: version.to_string(),
            key_spec: spec.to_wire(),
            protection_level: protection.to_wire(),
        };
        let resp = self
            .call(
                message,
                None,
                |mut c, req| async move { c.generate(req).await },
            )
            .await
            .map_err(|s| match s.code() {
                tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Cancelled
                | tonic::Code::Unknown => {
                    DomainError::Unavailable("the data plane cannot be reached".into())
                }
                _ => DomainError::Internal(format!(
                    "data plane Generate failed: {:?}: {}",
                    s.code(),
                    s.message()
                )),
            })?;
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
        tonic::Code::Unavailable
        | tonic::Code::DeadlineExceeded
        | tonic::Code::Cancelled
        | tonic::Code::Unknown => {
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

    async fn new_access_key_secret(
        &self,
        id: &AccessKeyId,
    ) -> Result<NewAccessKeySecret, DomainError> {
        let message = kms_proto::kms::internal::v1::GenerateAccessKeySecretRequest {
            access_key_id: id.to_string(),
        };
        let resp = self
            .call(
                message,
                Some(std::time::Duration::from_secs(10)),
                |mut c, req| async move { c.generate_access_key_secret(req).await },
            )
            .await
            .map_err(|s| data_plane_error("GenerateAccessKeySecret", &s))?;
        Ok(NewAccessKeySecret {
            secret: zeroize::Zeroizing::new(resp.secret),
            sealed: resp.sealed_secret,
        })
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
        (
            tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Cancelled
            | tonic::Code::Unknown,
            _,
        ) => DomainError::Unavailable("the data plane cannot be reached".into()),
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
        let message = CreateImportKeyRequest {
            key_id: key_id.to_string(),
            import_key_id: token.to_string(),
            wrapping_algorithm: algorithm.to_wire(),
            wrapping_key_spec: wrapping_key_spec.to_wire(),
        };
        let resp = self
            .call(message, None, |mut c, req| async move {
                c.create_import_key(req).await
            })
            .await
            .map_err(|s| import_error("CreateImportKey", s))?;
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
        let message = ImportMaterialRequest {
            key_id: import.key_id.to_string(),
            key_version_id: import.version.to_string(),
            key_spec: import.spec.to_wire(),
            protection_level: import.protection.to_wire(),
            wrapping_algorithm: import.wrapping_algorithm.to_wire(),
            wrapped_private_key: import.sealed_import_key,
            encrypted_key_material: import.encrypted_material,
            import_key_id: import.token.to_string(),
        };
        let resp = self
            .call(message, None, |mut c, req| async move {
                c.import_material(req).await
            })
            .await
            .map_err(|s| import_error("ImportMaterial", s))?;
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
