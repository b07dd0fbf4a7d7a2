//! Baselines: `kms.v1.CryptoService` and `kms.v1.KeyManagementService` served in this process
//! over the same tonic stack as the planes, on a runtime of their own (as a plane has its own
//! process), answering with messages the size of the service's, and doing only the bare work of
//! each call: nothing (`echo`), AES-256-GCM with `ring` inline on the worker (`aes-gcm`), a
//! signature, verification or OAEP decryption with the data plane's own software backend on a
//! blocking thread (`ecdsa-p256`, `rsa-2048`, ...: the libraries and thread model the data
//! plane uses), or AES-GCM in the HSM through the data plane's own PKCS#11 backend, with the key
//! handle cached, on a blocking thread (`pkcs11-aes-gcm`). A load runs the same client code
//! against a baseline as against the service, so the ratio is the service's overhead.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use kms_backend::{Backend, GCM_IV_LEN, KeyHandle, PublicKeyRef, SecretBytes};
use kms_backend_pkcs11::{Hsm, HsmParams};
use kms_backend_soft::SoftBackend;
use kms_proto::kms::v1 as pb;
use kms_proto::kms::v1::crypto_service_server::{CryptoService, CryptoServiceServer};
use kms_proto::kms::v1::key_management_service_server::{
    KeyManagementService, KeyManagementServiceServer,
};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::Deserialize;
use tonic::{Request, Response, Status};

use crate::scenario::{Protection, Scenario, Spec, Templates};

/// The bare work a baseline does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Kind {
    /// Answers with a response of the service's size, computing nothing
    Echo,
    /// AES-256-GCM with ring on the request's payload (a 32-byte data key for
    /// GenerateDataKey), inline on the worker
    AesGcm,
    /// ECDSA P-256 with the data plane's software backend (p256), on a blocking thread
    #[value(name = "ecdsa-p256")]
    EcdsaP256,
    /// ECDSA secp256k1 with the data plane's software backend (k256), on a blocking thread
    #[value(name = "ecdsa-p256k")]
    EcdsaP256k,
    /// RSA 2048 with the data plane's software backend (rsa), on a blocking thread
    #[value(name = "rsa-2048")]
    Rsa2048,
    /// RSA 3072 with the data plane's software backend (rsa), on a blocking thread
    #[value(name = "rsa-3072")]
    Rsa3072,
    /// AES-256-GCM inside the HSM through the data plane's PKCS#11 backend, key handle cached,
    /// on a blocking thread
    #[value(name = "pkcs11-aes-gcm")]
    Pkcs11AesGcm,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Echo => "echo",
            Kind::AesGcm => "aes-gcm",
            Kind::EcdsaP256 => "ecdsa-p256",
            Kind::EcdsaP256k => "ecdsa-p256k",
            Kind::Rsa2048 => "rsa-2048",
            Kind::Rsa3072 => "rsa-3072",
            Kind::Pkcs11AesGcm => "pkcs11-aes-gcm",
        }
    }

    fn soft_spec(self) -> Option<kms_types::KeySpec> {
        Some(match self {
            Kind::EcdsaP256 => kms_types::KeySpec::EcP256,
            Kind::EcdsaP256k => kms_types::KeySpec::EcP256K,
            Kind::Rsa2048 => kms_types::KeySpec::Rsa2048,
            Kind::Rsa3072 => kms_types::KeySpec::Rsa3072,
            _ => return None,
        })
    }

    /// The baseline a scenario is compared with, as the performance targets pair them; `None`
    /// for the scenarios whose target is absolute (create-key, disable-refusal).
    pub(crate) fn for_scenario(
        scenario: Scenario,
        protection: Protection,
        spec: Spec,
    ) -> Result<Option<Kind>> {
        let asym = |spec: Spec| match spec {
            Spec::EcP256 => Ok(Kind::EcdsaP256),
            Spec::EcP256k => Ok(Kind::EcdsaP256k),
            Spec::Rsa2048 => Ok(Kind::Rsa2048),
            Spec::Rsa3072 => Ok(Kind::Rsa3072),
            Spec::Aes256 => bail!("{scenario} needs an asymmetric --spec"),
        };
        Ok(match (scenario, protection) {
            (Scenario::CreateKey | Scenario::DisableRefusal, _) => None,
            (Scenario::DescribeKey | Scenario::Mixed, _) => Some(Kind::Echo),
            (Scenario::Encrypt | Scenario::Decrypt | Scenario::ReEncrypt, Protection::Software) => {
                Some(Kind::Echo)
            }
            (Scenario::GenerateDataKey, Protection::Software) => Some(Kind::AesGcm),
            (
                Scenario::Encrypt
                | Scenario::Decrypt
                | Scenario::ReEncrypt
                | Scenario::GenerateDataKey,
                Protection::Hsm,
            ) => Some(Kind::Pkcs11AesGcm),
            (
                Scenario::Sign | Scenario::Verify | Scenario::AsymmetricDecrypt,
                Protection::Software,
            ) => Some(asym(spec)?),
            (Scenario::Sign | Scenario::Verify | Scenario::AsymmetricDecrypt, Protection::Hsm) => {
                bail!(
                    "no baseline for HSM {scenario}: the baselines cover software signatures and HSM \
                 AES-GCM; pass --baseline echo to compare with a bare call"
                )
            }
        })
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where the HSM baseline finds the token the data plane uses.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct HsmArgs {
    /// SoftHSM2 config of the data plane's token (sets SOFTHSM2_CONF for this process)
    /// [default: DIR/softhsm/softhsm2.conf beside --dev-json]
    #[arg(long, value_name = "FILE")]
    pub(crate) softhsm_conf: Option<PathBuf>,
    /// The data plane's config file: its `[hsm]` table names the module, token, PIN and root
    /// key the HSM baseline uses [default: DIR/data.toml beside --dev-json]
    #[arg(long, value_name = "FILE")]
    pub(crate) hsm_config: Option<PathBuf>,
    /// PKCS#11 module path, overriding --hsm-config's
    #[arg(long, value_name = "FILE")]
    pub(crate) hsm_module: Option<PathBuf>,
    /// Token label, overriding --hsm-config's
    #[arg(long, value_name = "LABEL")]
    pub(crate) hsm_token: Option<String>,
    /// File whose first line is the token's user PIN, overriding --hsm-config's
    #[arg(long, value_name = "FILE")]
    pub(crate) hsm_pin_file: Option<PathBuf>,
}

impl HsmArgs {
    /// These flags with the paths `dev up` uses under `dev_dir` where none were given.
    pub(crate) fn with_dev_dir(mut self, dev_dir: Option<&Path>) -> Self {
        if let Some(dir) = dev_dir {
            if self.softhsm_conf.is_none() {
                self.softhsm_conf = Some(dir.join("softhsm/softhsm2.conf"));
            }
            if self.hsm_config.is_none() {
                self.hsm_config = Some(dir.join("data.toml"));
            }
        }
        self
    }
}

#[derive(Debug, Default, Deserialize)]
struct DataConfig {
    #[serde(default)]
    hsm: HsmTable,
}

#[derive(Debug, Default, Deserialize)]
struct HsmTable {
    module_path: Option<PathBuf>,
    token_label: Option<String>,
    user_pin: Option<String>,
    user_pin_file: Option<PathBuf>,
    root_key_label: Option<String>,
}

/// The data plane's HSM settings from `args`.
fn hsm_params(args: &HsmArgs) -> Result<HsmParams> {
    let table = match &args.hsm_config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| {
                format!("cannot read the data plane's config {}", path.display())
            })?;
            toml::from_str::<DataConfig>(&text)
                .with_context(|| format!("{} has no readable [hsm] table", path.display()))?
                .hsm
        }
        None => HsmTable::default(),
    };
    let module_path = args
        .hsm_module
        .clone()
        .or(table.module_path)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"));
    let Some(token_label) = args.hsm_token.clone().or(table.token_label) else {
        bail!(
            "the pkcs11-aes-gcm baseline needs the data plane's token: pass --hsm-config with \
             the data plane's config, or --hsm-token and --hsm-pin-file (or --dev-json)"
        );
    };
    let pin = match (
        args.hsm_pin_file.as_ref().or(table.user_pin_file.as_ref()),
        table.user_pin,
    ) {
        (Some(file), _) => std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the PIN file {}", file.display()))?
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string(),
        (None, Some(pin)) => pin,
        (None, None) => bail!("no user PIN for the token {token_label}: pass --hsm-pin-file"),
    };
    Ok(HsmParams {
        module_path,
        token_label,
        user_pin: secrecy::SecretString::from(pin),
        root_key_label: table
            .root_key_label
            .unwrap_or_else(|| "kms-root-v1".to_string()),
        max_sessions: 8,
    })
}

/// The bare work, ready.
enum Work {
    Echo,
    AesGcm {
        key: Box<LessSafeKey>,
        rng: SystemRandom,
        /// The payload sealed under `key` with `iv`, which Decrypt and ReEncrypt open.
        sealed: Vec<u8>,
        iv: [u8; GCM_IV_LEN],
    },
    Soft {
        soft: Arc<SoftBackend>,
        handle: KeyHandle,
        sign_algorithm: kms_types::Algorithm,
        signature: Vec<u8>,
        ciphertext: Vec<u8>,
    },
    Pkcs11 {
        hsm: Arc<Hsm>,
        handle: KeyHandle,
        rng: SystemRandom,
        sealed: Vec<u8>,
        iv: [u8; GCM_IV_LEN],
    },
}

struct Inner {
    work: Work,
    templates: Templates,
}

/// A baseline service (both traits).
#[derive(Clone)]
struct Baseline(Arc<Inner>);

impl fmt::Debug for Baseline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Baseline")
    }
}

const DIGEST: [u8; 32] = [0x42; 32];

fn internal<E: fmt::Display>(e: E) -> Status {
    Status::internal(e.to_string())
}

impl Work {
    fn new(kind: Kind, payload: usize, hsm: Option<&HsmArgs>) -> Result<Self> {
        let rng = SystemRandom::new();
        let plaintext = vec![0x5a; payload];
        match kind {
            Kind::Echo => Ok(Work::Echo),
            Kind::AesGcm => {
                let mut raw = [0u8; 32];
                rng.fill(&mut raw)
                    .map_err(|_| anyhow::anyhow!("no randomness"))?;
                let key = Box::new(LessSafeKey::new(
                    UnboundKey::new(&AES_256_GCM, &raw)
                        .map_err(|_| anyhow::anyhow!("AES key rejected"))?,
                ));
                let iv = [7u8; GCM_IV_LEN];
                let mut sealed = plaintext;
                key.seal_in_place_append_tag(
                    Nonce::assume_unique_for_key(iv),
                    Aad::empty(),
                    &mut sealed,
                )
                .map_err(|_| anyhow::anyhow!("AES-GCM failed"))?;
                Ok(Work::AesGcm {
                    key,
                    rng,
                    sealed,
                    iv,
                })
            }
            Kind::EcdsaP256 | Kind::EcdsaP256k | Kind::Rsa2048 | Kind::Rsa3072 => {
                let spec = kind.soft_spec().context("not a software key baseline")?;
                let soft = Arc::new(SoftBackend::new());
                let generated = soft.generate(spec).map_err(internal_err)?;
                let handle = soft.load(spec, &generated.material).map_err(internal_err)?;
                let sign_algorithm = if matches!(kind, Kind::Rsa2048 | Kind::Rsa3072) {
                    kms_types::Algorithm::RsaPssSha256
                } else {
                    kms_types::Algorithm::EcdsaSha256
                };
                let signature = soft
                    .sign(&handle, sign_algorithm, &DIGEST)
                    .map_err(internal_err)?;
                let ciphertext = if matches!(kind, Kind::Rsa2048 | Kind::Rsa3072) {
                    soft.asym_encrypt(
                        PublicKeyRef::Handle(&handle),
                        kms_types::Algorithm::RsaesOaepSha256,
                        &[0x17; 32],
                    )
                    .map_err(internal_err)?
                } else {
                    Vec::new()
                };
                Ok(Work::Soft {
                    soft,
                    handle,
                    sign_algorithm,
                    signature,
                    ciphertext,
                })
            }
            Kind::Pkcs11AesGcm => {
                let args = hsm.cloned().unwrap_or_default();
                let params = hsm_params(&args)?;
                let token = params.token_label.clone();
                let hsm = Hsm::open(&params).with_context(|| {
                    format!(
                        "cannot open the HSM token {token:?} (module {}, SOFTHSM2_CONF {})",
                        params.module_path.display(),
                        std::env::var("SOFTHSM2_CONF").unwrap_or_else(|_| "unset".into())
                    )
                })?;
                let spec = kms_types::KeySpec::AliyunAes256;
                let context = b"kms-bench pkcs11-aes-gcm baseline";
                let sealed_key = hsm.generate_sealed(spec, context).map_err(internal_err)?;
                let handle = hsm
                    .load_sealed(spec, context, &sealed_key.sealed)
                    .map_err(internal_err)?;
                let iv = [7u8; GCM_IV_LEN];
                let sealed = hsm
                    .aead_encrypt(&handle, &iv, &[], &plaintext)
                    .map_err(internal_err)?;
                Ok(Work::Pkcs11 {
                    hsm: Arc::new(hsm),
                    handle,
                    rng,
                    sealed,
                    iv,
                })
            }
        }
    }
}

fn internal_err<E: fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

fn fresh_iv(rng: &SystemRandom) -> Result<[u8; GCM_IV_LEN], Status> {
    let mut iv = [0u8; GCM_IV_LEN];
    rng.fill(&mut iv)
        .map_err(|_| Status::internal("no randomness"))?;
    Ok(iv)
}

impl Baseline {
    /// AES-GCM seal of `plaintext` with the baseline's key, as this baseline does it.
    async fn seal(&self, plaintext: Vec<u8>) -> Result<Vec<u8>, Status> {
        match &self.0.work {
            Work::AesGcm { key, rng, .. } => {
                let iv = fresh_iv(rng)?;
                let mut out = plaintext;
                key.seal_in_place_append_tag(
                    Nonce::assume_unique_for_key(iv),
                    Aad::empty(),
                    &mut out,
                )
                .map_err(|_| Status::internal("seal failed"))?;
                Ok(out)
            }
            Work::Pkcs11 {
                hsm, handle, rng, ..
            } => {
                let iv = fresh_iv(rng)?;
                let (hsm, handle) = (Arc::clone(hsm), handle.clone());
                tokio::task::spawn_blocking(move || hsm.aead_encrypt(&handle, &iv, &[], &plaintext))
                    .await
                    .map_err(internal)?
                    .map_err(internal)
            }
            Work::Echo | Work::Soft { .. } => Ok(plaintext),
        }
    }

    /// AES-GCM open of the baseline's own sealed payload.
    async fn open(&self) -> Result<usize, Status> {
        match &self.0.work {
            Work::AesGcm {
                key, sealed, iv, ..
            } => {
                let mut buf = sealed.clone();
                let out = key
                    .open_in_place(Nonce::assume_unique_for_key(*iv), Aad::empty(), &mut buf)
                    .map_err(|_| Status::internal("open failed"))?;
                Ok(out.len())
            }
            Work::Pkcs11 {
                hsm,
                handle,
                sealed,
                iv,
                ..
            } => {
                let (hsm, handle, sealed, iv) =
                    (Arc::clone(hsm), handle.clone(), sealed.clone(), *iv);
                let out: SecretBytes = tokio::task::spawn_blocking(move || {
                    hsm.aead_decrypt(&handle, &iv, &[], &sealed)
                })
                .await
                .map_err(internal)?
                .map_err(internal)?;
                Ok(out.expose().len())
            }
            Work::Echo | Work::Soft { .. } => Ok(0),
        }
    }

    fn template<T: Clone>(&self, t: &Option<T>, what: &str) -> Result<T, Status> {
        t.clone().ok_or_else(|| {
            Status::unimplemented(format!(
                "this baseline has no {what} response to answer with"
            ))
        })
    }
}

/// Pads or cuts `bytes` to `len`, so a response keeps the service's size.
fn sized(mut bytes: Vec<u8>, len: usize) -> Vec<u8> {
    bytes.resize(len, 0);
    bytes
}

/// An `async_trait` impl of `$service` with the methods given, every other method answering
/// `UNIMPLEMENTED` (the macro writes the whole impl, so `async_trait` sees every method).
macro_rules! baseline_impl {
    ($service:ident { $($body:tt)* } stubs { $($name:ident($req:ident) -> $resp:ident;)* }) => {
        #[tonic::async_trait]
        impl $service for Baseline {
            $($body)*
            $(
                async fn $name(
                    &self,
                    _request: Request<pb::$req>,
                ) -> Result<Response<pb::$resp>, Status> {
                    Err(Status::unimplemented("not part of the baseline"))
                }
            )*
        }
    };
}

baseline_impl! {
CryptoService {
    async fn encrypt(
        &self,
        request: Request<pb::EncryptRequest>,
    ) -> Result<Response<pb::EncryptResponse>, Status> {
        let mut t = self.template(&self.0.templates.encrypt, "Encrypt")?;
        let len = t.ciphertext_blob.len();
        let sealed = self.seal(request.into_inner().plaintext).await?;
        t.ciphertext_blob = sized(sealed, len);
        Ok(Response::new(t))
    }

    async fn decrypt(
        &self,
        _request: Request<pb::DecryptRequest>,
    ) -> Result<Response<pb::DecryptResponse>, Status> {
        let t = self.template(&self.0.templates.decrypt, "Decrypt")?;
        self.open().await?;
        Ok(Response::new(t))
    }

    async fn re_encrypt(
        &self,
        _request: Request<pb::ReEncryptRequest>,
    ) -> Result<Response<pb::ReEncryptResponse>, Status> {
        let mut t = self.template(&self.0.templates.re_encrypt, "ReEncrypt")?;
        let len = t.ciphertext_blob.len();
        let n = self.open().await?;
        let sealed = self.seal(vec![0x5a; n]).await?;
        t.ciphertext_blob = sized(sealed, len);
        Ok(Response::new(t))
    }

    async fn generate_data_key(
        &self,
        _request: Request<pb::GenerateDataKeyRequest>,
    ) -> Result<Response<pb::GenerateDataKeyResponse>, Status> {
        let mut t = self.template(&self.0.templates.generate_data_key, "GenerateDataKey")?;
        let len = t.ciphertext_blob.len();
        let mut data_key = vec![0u8; t.plaintext.len().max(1)];
        match &self.0.work {
            Work::AesGcm { rng, .. } | Work::Pkcs11 { rng, .. } => {
                rng.fill(&mut data_key)
                    .map_err(|_| Status::internal("no randomness"))?;
            }
            Work::Echo | Work::Soft { .. } => {}
        }
        t.plaintext = data_key.clone();
        t.ciphertext_blob = sized(self.seal(data_key).await?, len);
        Ok(Response::new(t))
    }

    async fn asymmetric_sign(
        &self,
        _request: Request<pb::AsymmetricSignRequest>,
    ) -> Result<Response<pb::AsymmetricSignResponse>, Status> {
        let mut t = self.template(&self.0.templates.sign, "AsymmetricSign")?;
        if let Work::Soft {
            soft,
            handle,
            sign_algorithm,
            ..
        } = &self.0.work
        {
            let (soft, handle, alg) = (Arc::clone(soft), handle.clone(), *sign_algorithm);
            t.value = tokio::task::spawn_blocking(move || soft.sign(&handle, alg, &DIGEST))
                .await
                .map_err(internal)?
                .map_err(internal)?;
        }
        Ok(Response::new(t))
    }

    async fn asymmetric_verify(
        &self,
        _request: Request<pb::AsymmetricVerifyRequest>,
    ) -> Result<Response<pb::AsymmetricVerifyResponse>, Status> {
        let mut t = self.template(&self.0.templates.verify, "AsymmetricVerify")?;
        if let Work::Soft {
            soft,
            handle,
            sign_algorithm,
            signature,
            ..
        } = &self.0.work
        {
            let (soft, handle, alg, sig) = (
                Arc::clone(soft),
                handle.clone(),
                *sign_algorithm,
                signature.clone(),
            );
            t.value = tokio::task::spawn_blocking(move || {
                soft.verify(PublicKeyRef::Handle(&handle), alg, &DIGEST, &sig)
            })
            .await
            .map_err(internal)?
            .map_err(internal)?;
        }
        Ok(Response::new(t))
    }

    async fn asymmetric_decrypt(
        &self,
        _request: Request<pb::AsymmetricDecryptRequest>,
    ) -> Result<Response<pb::AsymmetricDecryptResponse>, Status> {
        let mut t = self.template(&self.0.templates.asymmetric_decrypt, "AsymmetricDecrypt")?;
        if let Work::Soft {
            soft,
            handle,
            ciphertext,
            ..
        } = &self.0.work
        {
            if ciphertext.is_empty() {
                return Err(Status::unimplemented("an EC key does not decrypt"));
            }
            let (soft, handle, ct) = (Arc::clone(soft), handle.clone(), ciphertext.clone());
            let out = tokio::task::spawn_blocking(move || {
                soft.asym_decrypt(&handle, kms_types::Algorithm::RsaesOaepSha256, &ct)
            })
            .await
            .map_err(internal)?
            .map_err(internal)?;
            t.plaintext = out.expose().to_vec();
        }
        Ok(Response::new(t))
    }

}
    stubs {
        generate_data_key_without_plaintext(GenerateDataKeyWithoutPlaintextRequest) -> GenerateDataKeyWithoutPlaintextResponse;
        generate_and_export_data_key(GenerateAndExportDataKeyRequest) -> GenerateAndExportDataKeyResponse;
        export_data_key(ExportDataKeyRequest) -> ExportDataKeyResponse;
        asymmetric_encrypt(AsymmetricEncryptRequest) -> AsymmetricEncryptResponse;
        get_public_key(GetPublicKeyRequest) -> GetPublicKeyResponse;
        generate_random(GenerateRandomRequest) -> GenerateRandomResponse;
        get_random_password(GetRandomPasswordRequest) -> GetRandomPasswordResponse;
    }
}

baseline_impl! {
KeyManagementService {
    async fn describe_key(
        &self,
        _request: Request<pb::DescribeKeyRequest>,
    ) -> Result<Response<pb::DescribeKeyResponse>, Status> {
        Ok(Response::new(
            self.template(&self.0.templates.describe_key, "DescribeKey")?,
        ))
    }

}
    stubs {
        create_key(CreateKeyRequest) -> CreateKeyResponse;
        list_keys(ListKeysRequest) -> ListKeysResponse;
        enable_key(EnableKeyRequest) -> EnableKeyResponse;
        disable_key(DisableKeyRequest) -> DisableKeyResponse;
        update_key_description(UpdateKeyDescriptionRequest) -> UpdateKeyDescriptionResponse;
        set_deletion_protection(SetDeletionProtectionRequest) -> SetDeletionProtectionResponse;
        schedule_key_deletion(ScheduleKeyDeletionRequest) -> ScheduleKeyDeletionResponse;
        cancel_key_deletion(CancelKeyDeletionRequest) -> CancelKeyDeletionResponse;
        update_rotation_policy(UpdateRotationPolicyRequest) -> UpdateRotationPolicyResponse;
        create_key_version(CreateKeyVersionRequest) -> CreateKeyVersionResponse;
        describe_key_version(DescribeKeyVersionRequest) -> DescribeKeyVersionResponse;
        list_key_versions(ListKeyVersionsRequest) -> ListKeyVersionsResponse;
        create_alias(CreateAliasRequest) -> CreateAliasResponse;
        update_alias(UpdateAliasRequest) -> UpdateAliasResponse;
        delete_alias(DeleteAliasRequest) -> DeleteAliasResponse;
        list_aliases(ListAliasesRequest) -> ListAliasesResponse;
        list_aliases_by_key_id(ListAliasesByKeyIdRequest) -> ListAliasesByKeyIdResponse;
        tag_resources(TagResourcesRequest) -> TagResourcesResponse;
        untag_resources(UntagResourcesRequest) -> UntagResourcesResponse;
        list_resource_tags(ListResourceTagsRequest) -> ListResourceTagsResponse;
        set_key_policy(SetKeyPolicyRequest) -> SetKeyPolicyResponse;
        get_key_policy(GetKeyPolicyRequest) -> GetKeyPolicyResponse;
        get_parameters_for_import(GetParametersForImportRequest) -> GetParametersForImportResponse;
        import_key_material(ImportKeyMaterialRequest) -> ImportKeyMaterialResponse;
        delete_key_material(DeleteKeyMaterialRequest) -> DeleteKeyMaterialResponse;
        check_key_association(CheckKeyAssociationRequest) -> CheckKeyAssociationResponse;
    }
}

/// Responses of plausible sizes for a baseline run without the service: ids as long as the
/// service's, a ciphertext blob of the payload plus the v1 framing (header, IV and tag).
pub(crate) fn synthetic_templates(payload: usize) -> Templates {
    let key_id = format!("key-{}", "0".repeat(32));
    let version = "0".repeat(36);
    let blob_overhead = 4 + 16 + 12 + 16;
    let metadata = pb::KeyMetadata {
        key_id: key_id.clone(),
        arn: format!("acs:kms:local:1234567890123456:key/{key_id}"),
        kms_instance_id: format!("kst-{}", "0".repeat(24)),
        key_spec: pb::KeySpec::AliyunAes256 as i32,
        key_usage: pb::KeyUsage::EncryptDecrypt as i32,
        key_state: 1,
        protection_level: 1,
        origin: 1,
        description: "kms-bench run key".into(),
        creator: "1234567890123456".into(),
        creation_date: Some(prost_timestamp()),
        ..Default::default()
    };
    Templates {
        encrypt: Some(pb::EncryptResponse {
            key_id: key_id.clone(),
            key_version_id: version.clone(),
            ciphertext_blob: vec![0; payload + blob_overhead],
        }),
        decrypt: Some(pb::DecryptResponse {
            key_id: key_id.clone(),
            key_version_id: version.clone(),
            plaintext: vec![0; payload],
        }),
        generate_data_key: Some(pb::GenerateDataKeyResponse {
            key_id: key_id.clone(),
            key_version_id: version.clone(),
            ciphertext_blob: vec![0; 32 + blob_overhead],
            plaintext: vec![0; 32],
        }),
        re_encrypt: Some(pb::ReEncryptResponse {
            ciphertext_blob: vec![0; payload + blob_overhead],
            key_id: key_id.clone(),
            key_version_id: version.clone(),
            source_key_id: key_id.clone(),
            source_key_version_id: version.clone(),
        }),
        sign: Some(pb::AsymmetricSignResponse {
            key_id: key_id.clone(),
            key_version_id: version.clone(),
            value: vec![0; 72],
        }),
        verify: Some(pb::AsymmetricVerifyResponse {
            key_id: key_id.clone(),
            key_version_id: version.clone(),
            value: true,
        }),
        asymmetric_decrypt: Some(pb::AsymmetricDecryptResponse {
            key_id,
            key_version_id: version,
            plaintext: vec![0; 32],
        }),
        describe_key: Some(pb::DescribeKeyResponse {
            key_metadata: Some(metadata),
        }),
    }
}

fn prost_timestamp() -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: 1_700_000_000,
        nanos: 0,
    }
}

/// A running baseline server: its address, and its runtime's thread (stopped on drop).
#[derive(Debug)]
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    pub(crate) kind: Kind,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts a `kind` baseline on 127.0.0.1 on a multi-threaded runtime of its own (as many
/// workers as the planes' default), answering with `templates`.
pub(crate) async fn start(
    kind: Kind,
    payload: usize,
    templates: Templates,
    hsm: Option<&HsmArgs>,
) -> Result<Server> {
    let hsm = hsm.cloned();
    let work = tokio::task::spawn_blocking(move || Work::new(kind, payload, hsm.as_ref()))
        .await
        .context("the baseline's setup panicked")??;
    let service = Baseline(Arc::new(Inner { work, templates }));
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .context("cannot bind the baseline server to 127.0.0.1")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Result<()>>();
    let thread = std::thread::Builder::new()
        .name(format!("baseline-{kind}"))
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("baseline-worker")
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.into()));
                    return;
                }
            };
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.into()));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let incoming =
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
                // The planes' own builder (keepalive, streams per connection), with their
                // default limits.
                let _ = kms_runtime::connections::server(&kms_runtime::LimitsConfig::default())
                    .add_service(CryptoServiceServer::from_arc(Arc::new(service.clone())))
                    .add_service(KeyManagementServiceServer::from_arc(Arc::new(service)))
                    .serve_with_incoming_shutdown(incoming, async {
                        let _ = stop_rx.await;
                    })
                    .await;
            });
        })
        .context("cannot start the baseline's thread")?;
    ready_rx
        .await
        .context("the baseline's runtime did not start")??;
    Ok(Server {
        addr,
        kind,
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}
