//! Scenarios: what one request of each does, the keys a run creates for it (in a KMS instance
//! with room, made by an operator when needed), the data prepared before the clock starts
//! (ciphertexts, signatures), and the keys' scheduled deletion after the run.

use std::collections::HashMap;
use std::fmt;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use kms_proto::kms::v1::{
    AsymmetricDecryptRequest, AsymmetricDecryptResponse, AsymmetricEncryptRequest,
    AsymmetricSignRequest, AsymmetricSignResponse, AsymmetricVerifyRequest,
    AsymmetricVerifyResponse, CreateKeyRequest, CreateKmsInstanceRequest, DecryptRequest,
    DecryptResponse, DescribeKeyRequest, DescribeKeyResponse, DisableKeyRequest, EnableKeyRequest,
    EncryptRequest, EncryptResponse, GenerateDataKeyRequest, GenerateDataKeyResponse,
    GetKmsInstanceRequest, InstanceType, KeySpec, KeyUsage, ReEncryptRequest, ReEncryptResponse,
    ScheduleKeyDeletionRequest,
};
use tonic::{Code, Status};

use crate::connect::{Clients, Planes, setup_error};
use crate::load::{Call, CallFuture};

/// What each request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum)]
pub(crate) enum Scenario {
    /// Encrypt `--payload` bytes with a symmetric key (data plane)
    Encrypt,
    /// Decrypt a `--payload`-byte ciphertext (data plane)
    Decrypt,
    /// GenerateDataKey, 32 bytes (data plane)
    GenerateDataKey,
    /// ReEncrypt a `--payload`-byte ciphertext to a second key (data plane)
    ReEncrypt,
    /// AsymmetricSign a SHA-256 digest with a `--spec` key (data plane)
    Sign,
    /// AsymmetricVerify a signature with a `--spec` key (data plane)
    Verify,
    /// AsymmetricDecrypt (RSAES-OAEP-SHA-256) 32 bytes with an RSA `--spec` key (data plane)
    AsymmetricDecrypt,
    /// DescribeKey (control plane)
    DescribeKey,
    /// CreateKey of `--spec` (default Aliyun_AES_256), each acknowledged once durable (control
    /// plane)
    CreateKey,
    /// DisableKey, then Encrypt until the data plane refuses: the time from DisableKey's
    /// acknowledgement to the refusal (each worker cycles its own key)
    DisableRefusal,
    /// A weighted mix of data- and control-plane scenarios (`--mix`)
    Mixed,
}

impl Scenario {
    /// The name used on the command line.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Scenario::Encrypt => "encrypt",
            Scenario::Decrypt => "decrypt",
            Scenario::GenerateDataKey => "generate-data-key",
            Scenario::ReEncrypt => "re-encrypt",
            Scenario::Sign => "sign",
            Scenario::Verify => "verify",
            Scenario::AsymmetricDecrypt => "asymmetric-decrypt",
            Scenario::DescribeKey => "describe-key",
            Scenario::CreateKey => "create-key",
            Scenario::DisableRefusal => "disable-refusal",
            Scenario::Mixed => "mixed",
        }
    }

    /// Whether the scenario uses an asymmetric key of `--spec`.
    fn asymmetric(self) -> bool {
        matches!(
            self,
            Scenario::Sign | Scenario::Verify | Scenario::AsymmetricDecrypt
        )
    }

    /// Whether `--keys` spreads the scenario's requests over several keys.
    pub(crate) fn spreads(self) -> bool {
        matches!(
            self,
            Scenario::Encrypt | Scenario::GenerateDataKey | Scenario::DescribeKey
        )
    }

    /// Every scenario but `mixed`, for the suite and `--mix`.
    pub(crate) const SINGLE: [Scenario; 10] = [
        Scenario::Encrypt,
        Scenario::Decrypt,
        Scenario::GenerateDataKey,
        Scenario::ReEncrypt,
        Scenario::Sign,
        Scenario::Verify,
        Scenario::AsymmetricDecrypt,
        Scenario::DescribeKey,
        Scenario::CreateKey,
        Scenario::DisableRefusal,
    ];
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Key specs a scenario can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Spec {
    #[value(name = "Aliyun_AES_256", alias = "AES_256")]
    Aes256,
    #[value(name = "EC_P256")]
    EcP256,
    #[value(name = "EC_P256K")]
    EcP256k,
    #[value(name = "RSA_2048")]
    Rsa2048,
    #[value(name = "RSA_3072")]
    Rsa3072,
}

impl Spec {
    pub(crate) fn wire(self) -> KeySpec {
        match self {
            Spec::Aes256 => KeySpec::AliyunAes256,
            Spec::EcP256 => KeySpec::EcP256,
            Spec::EcP256k => KeySpec::EcP256k,
            Spec::Rsa2048 => KeySpec::Rsa2048,
            Spec::Rsa3072 => KeySpec::Rsa3072,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Spec::Aes256 => "Aliyun_AES_256",
            Spec::EcP256 => "EC_P256",
            Spec::EcP256k => "EC_P256K",
            Spec::Rsa2048 => "RSA_2048",
            Spec::Rsa3072 => "RSA_3072",
        }
    }

    pub(crate) fn is_rsa(self) -> bool {
        matches!(self, Spec::Rsa2048 | Spec::Rsa3072)
    }

    /// The signing algorithm the scenario uses with this spec.
    pub(crate) fn sign_algorithm(self) -> kms_proto::kms::v1::Algorithm {
        if self.is_rsa() {
            kms_proto::kms::v1::Algorithm::RsaPssSha256
        } else {
            kms_proto::kms::v1::Algorithm::EcdsaSha256
        }
    }
}

/// Where the keys live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Protection {
    /// Software-protected keys, in a software KMS instance
    Software,
    /// HSM-protected keys, in a hardware KMS instance
    Hsm,
}

impl Protection {
    fn instance_type(self) -> InstanceType {
        match self {
            Protection::Software => InstanceType::Software,
            Protection::Hsm => InstanceType::Hardware,
        }
    }
}

/// Weights of `mixed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mix(pub(crate) Vec<(Scenario, u32)>);

/// `--mix encrypt=70,decrypt=20,generate-data-key=10`.
pub(crate) fn parse_mix(text: &str) -> Result<Mix, String> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, weight) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?} is not SCENARIO=WEIGHT"))?;
        let scenario = Scenario::from_str(name.trim(), true).map_err(|_| {
            format!(
                "{name:?} is not a scenario; one of {}",
                Scenario::SINGLE.map(Scenario::name).join(", ")
            )
        })?;
        if matches!(
            scenario,
            Scenario::Mixed | Scenario::CreateKey | Scenario::DisableRefusal
        ) {
            return Err(format!(
                "{scenario} cannot be part of a mix: it changes the keys the others use or \
                 piles up keys"
            ));
        }
        let weight: u32 = weight
            .trim()
            .parse()
            .map_err(|_| format!("weight {weight:?} of {name} is not a whole number"))?;
        if weight > 0 {
            out.push((scenario, weight));
        }
    }
    if out.is_empty() {
        return Err("the mix names no scenario with a weight above 0".into());
    }
    Ok(Mix(out))
}

/// What a run asks for.
#[derive(Debug, Clone)]
pub(crate) struct Workload {
    pub(crate) scenario: Scenario,
    pub(crate) payload: usize,
    pub(crate) spec: Option<Spec>,
    pub(crate) protection: Protection,
    pub(crate) mix: Vec<(Scenario, u32)>,
    /// Use this existing symmetric key instead of creating one (not deleted afterwards).
    pub(crate) key: Option<String>,
    /// Keys encrypt, generate-data-key and describe-key spread their requests over.
    pub(crate) keys: usize,
    /// Make the run's keys in this instance.
    pub(crate) instance: Option<String>,
    /// Keep the run's keys instead of scheduling their deletion.
    pub(crate) keep_keys: bool,
    /// Workers (for disable-refusal: one key each).
    pub(crate) concurrency: usize,
    /// The run's request bound, to size a new instance for create-key.
    pub(crate) requests: Option<u64>,
    /// How many times the load runs against one preparation (`compare`'s rounds): create-key
    /// makes `requests` keys each time, all counted against the instance until the run ends.
    pub(crate) passes: u32,
}

impl Workload {
    /// The spec of the scenario's key.
    pub(crate) fn spec_for(&self, scenario: Scenario) -> Spec {
        match (scenario, self.spec) {
            (Scenario::AsymmetricDecrypt, None) => Spec::Rsa2048,
            (s, None) if s.asymmetric() => Spec::EcP256,
            (s, Some(spec)) if s.asymmetric() || s == Scenario::CreateKey => spec,
            _ => Spec::Aes256,
        }
    }

    /// The scenarios whose data must be prepared.
    pub(crate) fn parts(&self) -> Vec<Scenario> {
        if self.scenario == Scenario::Mixed {
            self.mix.iter().map(|(s, _)| *s).collect()
        } else {
            vec![self.scenario]
        }
    }

    /// Refuses combinations that cannot run.
    pub(crate) fn check(&self) -> Result<()> {
        if !(1..=6144).contains(&self.payload) {
            bail!("--payload must be 1 to 6144 bytes (Encrypt takes at most 6 KiB)");
        }
        for s in self.parts() {
            let spec = self.spec_for(s);
            if s == Scenario::AsymmetricDecrypt && !spec.is_rsa() {
                bail!("asymmetric-decrypt needs an RSA key: --spec RSA_2048 or RSA_3072");
            }
            if s.asymmetric() && spec == Spec::Aes256 {
                bail!(
                    "{s} needs an asymmetric key: --spec EC_P256, EC_P256K, RSA_2048 or RSA_3072"
                );
            }
        }
        if self.keys > 1 && !self.parts().iter().any(|s| s.spreads()) {
            bail!("--keys spreads encrypt, generate-data-key and describe-key over several keys");
        }
        if self.scenario == Scenario::Mixed && self.mix.is_empty() {
            bail!("mixed needs --mix, e.g. --mix encrypt=70,decrypt=20,generate-data-key=10");
        }
        Ok(())
    }
}

/// Responses of the service kept from the preparation calls: the in-process baselines answer
/// with messages of the same size.
#[derive(Debug, Clone, Default)]
pub(crate) struct Templates {
    pub(crate) encrypt: Option<EncryptResponse>,
    pub(crate) decrypt: Option<DecryptResponse>,
    pub(crate) generate_data_key: Option<GenerateDataKeyResponse>,
    pub(crate) re_encrypt: Option<ReEncryptResponse>,
    pub(crate) sign: Option<AsymmetricSignResponse>,
    pub(crate) verify: Option<AsymmetricVerifyResponse>,
    pub(crate) asymmetric_decrypt: Option<AsymmetricDecryptResponse>,
    pub(crate) describe_key: Option<DescribeKeyResponse>,
}

/// What one request of a single scenario needs, made before the clock starts.
#[derive(Debug, Clone)]
enum Prepared {
    Encrypt {
        keys: Spread,
        payload: Vec<u8>,
    },
    Decrypt {
        blob: Vec<u8>,
    },
    GenerateDataKey {
        keys: Spread,
    },
    ReEncrypt {
        blob: Vec<u8>,
        destination: String,
    },
    Sign {
        key: String,
        algorithm: i32,
        digest: Vec<u8>,
    },
    Verify {
        key: String,
        algorithm: i32,
        digest: Vec<u8>,
        signature: Vec<u8>,
    },
    AsymmetricDecrypt {
        key: String,
        algorithm: i32,
        ciphertext: Vec<u8>,
    },
    DescribeKey {
        keys: Spread,
    },
    CreateKey {
        instance: String,
        spec: Spec,
        made: Arc<Mutex<Vec<String>>>,
    },
    DisableRefusal {
        /// The keys no cycle is using: one per request in flight, and a cycle takes one for
        /// itself, so two cycles never enable and disable the same key at once.
        free: Arc<Mutex<Vec<String>>>,
    },
}

/// The keys a scenario's requests are spread over: request `i` uses key `i mod len`.
#[derive(Debug, Clone)]
struct Spread(Arc<[String]>);

impl Spread {
    fn one(key: String) -> Self {
        Self(Arc::from(vec![key]))
    }

    fn key(&self, i: u64) -> String {
        self.0[(i % self.0.len() as u64) as usize].clone()
    }
}

/// A run's keys and prepared requests.
#[derive(Debug)]
pub(crate) struct Run {
    parts: Vec<(Prepared, u32)>,
    total_weight: u32,
    /// Keys this run created, to schedule for deletion.
    created: Vec<String>,
    created_by_calls: Option<Arc<Mutex<Vec<String>>>>,
    pub(crate) templates: Templates,
    /// The instance the keys were made in.
    pub(crate) instance: Option<String>,
}

/// SHA-256-sized digest signed by sign and verify.
const DIGEST: [u8; 32] = [0x42; 32];
/// Plaintext size of asymmetric-decrypt.
const ASYM_PLAINTEXT: usize = 32;

/// Creates the run's keys and prepares every part of `work`. When preparing fails, the keys
/// made so far are scheduled for deletion (unless `--keep-keys`).
pub(crate) async fn prepare(planes: &Planes, clients: &Clients, work: &Workload) -> Result<Run> {
    work.check()?;
    let mut run = Run {
        parts: Vec::new(),
        total_weight: 0,
        created: Vec::new(),
        created_by_calls: None,
        templates: Templates::default(),
        instance: None,
    };
    match prepare_into(&mut run, planes, clients, work).await {
        Ok(()) => Ok(run),
        Err(e) => {
            if !work.keep_keys && !run.created.is_empty() {
                let (_, failed) = run.clean_up(clients).await;
                if let Some(f) = failed {
                    eprintln!("warning: scheduling the run's keys for deletion failed: {f}");
                }
            }
            Err(e)
        }
    }
}

async fn prepare_into(
    run: &mut Run,
    planes: &Planes,
    clients: &Clients,
    work: &Workload,
) -> Result<()> {
    let parts = work.parts();
    // Keys needed, for the instance's room: one per part, two for re-encrypt, one per worker
    // for disable-refusal; create-key needs its own count.
    let mut needed: i64 = 0;
    for s in &parts {
        needed += match s {
            Scenario::ReEncrypt if work.key.is_some() => 0,
            Scenario::ReEncrypt => 2,
            Scenario::DisableRefusal => work.concurrency as i64,
            Scenario::CreateKey => i64::try_from(work.requests.unwrap_or(100_000))
                .unwrap_or(i64::MAX)
                .saturating_mul(i64::from(work.passes.max(1))),
            Scenario::Encrypt
            | Scenario::Decrypt
            | Scenario::GenerateDataKey
            | Scenario::DescribeKey
                if work.key.is_some() =>
            {
                0
            }
            _ => 1,
        };
    }
    if parts.iter().any(|s| s.spreads()) {
        needed += work.keys as i64 - 1;
    }
    let fresh_instance = parts.contains(&Scenario::CreateKey);
    if needed > 0 {
        run.instance = Some(instance_for(planes, work, needed, fresh_instance).await?);
    }
    let instance = run.instance.clone().unwrap_or_default();
    let mut keys = clients.keys(0);
    let mut crypto = clients.crypto(0);
    let caller = &planes.caller;

    // One key per spec and usage, shared by the parts that can share it.
    let mut made: HashMap<(i32, i32), String> = HashMap::new();
    let mut keyring = Keyring {
        made: &mut made,
        spread: None,
        work,
        instance: &instance,
        caller,
    };

    for (s, weight) in parts.iter().map(|s| {
        let w = work
            .mix
            .iter()
            .find(|(m, _)| m == s)
            .map(|(_, w)| *w)
            .unwrap_or(1);
        (*s, w)
    }) {
        let spec = work.spec_for(s);
        let prepared = match s {
            Scenario::Encrypt | Scenario::Decrypt | Scenario::ReEncrypt => {
                let key = keyring
                    .get(
                        &mut keys,
                        Spec::Aes256,
                        KeyUsage::EncryptDecrypt,
                        &mut run.created,
                    )
                    .await?;
                let payload = vec![0x5a; work.payload];
                let enc = crypto
                    .encrypt(EncryptRequest {
                        key_id: key.clone(),
                        plaintext: payload.clone(),
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| setup_error(e, "Encrypt (preparing the run)", caller))?
                    .into_inner();
                let blob = enc.ciphertext_blob.clone();
                run.templates.encrypt = Some(enc);
                match s {
                    Scenario::Encrypt => Prepared::Encrypt {
                        keys: keyring.spread(clients, key, &mut run.created).await?,
                        payload,
                    },
                    Scenario::Decrypt => {
                        let dec = crypto
                            .decrypt(DecryptRequest {
                                ciphertext_blob: blob.clone(),
                                ..Default::default()
                            })
                            .await
                            .map_err(|e| setup_error(e, "Decrypt (preparing the run)", caller))?
                            .into_inner();
                        run.templates.decrypt = Some(dec);
                        Prepared::Decrypt { blob }
                    }
                    _ => {
                        // The destination is a second key, so ReEncrypt opens and seals.
                        let destination = if work.key.is_some() {
                            key.clone()
                        } else {
                            let id = create_key(
                                &mut keys,
                                &instance,
                                Spec::Aes256,
                                KeyUsage::EncryptDecrypt,
                                caller,
                            )
                            .await?;
                            run.created.push(id.clone());
                            id
                        };
                        let re = crypto
                            .re_encrypt(ReEncryptRequest {
                                ciphertext_blob: blob.clone(),
                                destination_key_id: destination.clone(),
                                ..Default::default()
                            })
                            .await
                            .map_err(|e| setup_error(e, "ReEncrypt (preparing the run)", caller))?
                            .into_inner();
                        run.templates.re_encrypt = Some(re);
                        Prepared::ReEncrypt { blob, destination }
                    }
                }
            }
            Scenario::GenerateDataKey => {
                let key = keyring
                    .get(
                        &mut keys,
                        Spec::Aes256,
                        KeyUsage::EncryptDecrypt,
                        &mut run.created,
                    )
                    .await?;
                let r = crypto
                    .generate_data_key(GenerateDataKeyRequest {
                        key_id: key.clone(),
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| setup_error(e, "GenerateDataKey (preparing the run)", caller))?
                    .into_inner();
                run.templates.generate_data_key = Some(r);
                Prepared::GenerateDataKey {
                    keys: keyring.spread(clients, key, &mut run.created).await?,
                }
            }
            Scenario::Sign | Scenario::Verify => {
                let key = keyring
                    .get(&mut keys, spec, KeyUsage::SignVerify, &mut run.created)
                    .await?;
                let algorithm = spec.sign_algorithm() as i32;
                let signed = crypto
                    .asymmetric_sign(AsymmetricSignRequest {
                        key_id: key.clone(),
                        algorithm,
                        digest: DIGEST.to_vec(),
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| setup_error(e, "AsymmetricSign (preparing the run)", caller))?
                    .into_inner();
                let signature = signed.value.clone();
                run.templates.sign = Some(signed);
                if s == Scenario::Sign {
                    Prepared::Sign {
                        key,
                        algorithm,
                        digest: DIGEST.to_vec(),
                    }
                } else {
                    let v = crypto
                        .asymmetric_verify(AsymmetricVerifyRequest {
                            key_id: key.clone(),
                            algorithm,
                            digest: DIGEST.to_vec(),
                            value: signature.clone(),
                            ..Default::default()
                        })
                        .await
                        .map_err(|e| {
                            setup_error(e, "AsymmetricVerify (preparing the run)", caller)
                        })?
                        .into_inner();
                    if !v.value {
                        bail!(
                            "the service did not verify its own signature while preparing the run"
                        );
                    }
                    run.templates.verify = Some(v);
                    Prepared::Verify {
                        key,
                        algorithm,
                        digest: DIGEST.to_vec(),
                        signature,
                    }
                }
            }
            Scenario::AsymmetricDecrypt => {
                let key = keyring
                    .get(&mut keys, spec, KeyUsage::EncryptDecrypt, &mut run.created)
                    .await?;
                let algorithm = kms_proto::kms::v1::Algorithm::RsaesOaepSha256 as i32;
                let ciphertext = crypto
                    .asymmetric_encrypt(AsymmetricEncryptRequest {
                        key_id: key.clone(),
                        algorithm,
                        plaintext: vec![0x17; ASYM_PLAINTEXT],
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| setup_error(e, "AsymmetricEncrypt (preparing the run)", caller))?
                    .into_inner()
                    .ciphertext_blob;
                let d = crypto
                    .asymmetric_decrypt(AsymmetricDecryptRequest {
                        key_id: key.clone(),
                        algorithm,
                        ciphertext_blob: ciphertext.clone(),
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| setup_error(e, "AsymmetricDecrypt (preparing the run)", caller))?
                    .into_inner();
                run.templates.asymmetric_decrypt = Some(d);
                Prepared::AsymmetricDecrypt {
                    key,
                    algorithm,
                    ciphertext,
                }
            }
            Scenario::DescribeKey => {
                let key = keyring
                    .get(
                        &mut keys,
                        Spec::Aes256,
                        KeyUsage::EncryptDecrypt,
                        &mut run.created,
                    )
                    .await?;
                let d = keys
                    .describe_key(DescribeKeyRequest {
                        key_id: key.clone(),
                    })
                    .await
                    .map_err(|e| setup_error(e, "DescribeKey (preparing the run)", caller))?
                    .into_inner();
                run.templates.describe_key = Some(d);
                Prepared::DescribeKey {
                    keys: keyring.spread(clients, key, &mut run.created).await?,
                }
            }
            Scenario::CreateKey => {
                let made = Arc::new(Mutex::new(Vec::new()));
                run.created_by_calls = Some(Arc::clone(&made));
                Prepared::CreateKey {
                    instance: instance.clone(),
                    spec,
                    made,
                }
            }
            Scenario::DisableRefusal => {
                let mut ks = Vec::new();
                for _ in 0..work.concurrency.max(1) {
                    let id = create_key(
                        &mut keys,
                        &instance,
                        Spec::Aes256,
                        KeyUsage::EncryptDecrypt,
                        caller,
                    )
                    .await?;
                    run.created.push(id.clone());
                    ks.push(id);
                }
                Prepared::DisableRefusal {
                    free: Arc::new(Mutex::new(ks)),
                }
            }
            Scenario::Mixed => bail!("mixed cannot be part of itself"),
        };
        run.total_weight += weight;
        run.parts.push((prepared, weight));
    }
    Ok(())
}

/// A run prepared without the service, for a baseline alone: the same requests, with
/// stand-in ids and ciphertexts of the service's sizes.
pub(crate) fn offline(work: &Workload) -> Result<Run> {
    work.check()?;
    let key = "key-00000000000000000000000000000000".to_string();
    let blob = vec![0u8; work.payload + 48];
    let mut run = Run {
        parts: Vec::new(),
        total_weight: 0,
        created: Vec::new(),
        created_by_calls: None,
        templates: Templates::default(),
        instance: None,
    };
    for s in work.parts() {
        let weight = work
            .mix
            .iter()
            .find(|(m, _)| *m == s)
            .map(|(_, w)| *w)
            .unwrap_or(1);
        let spec = work.spec_for(s);
        let prepared = match s {
            Scenario::Encrypt => Prepared::Encrypt {
                keys: Spread::one(key.clone()),
                payload: vec![0x5a; work.payload],
            },
            Scenario::Decrypt => Prepared::Decrypt { blob: blob.clone() },
            Scenario::GenerateDataKey => Prepared::GenerateDataKey {
                keys: Spread::one(key.clone()),
            },
            Scenario::ReEncrypt => Prepared::ReEncrypt {
                blob: blob.clone(),
                destination: key.clone(),
            },
            Scenario::Sign => Prepared::Sign {
                key: key.clone(),
                algorithm: spec.sign_algorithm() as i32,
                digest: DIGEST.to_vec(),
            },
            Scenario::Verify => Prepared::Verify {
                key: key.clone(),
                algorithm: spec.sign_algorithm() as i32,
                digest: DIGEST.to_vec(),
                signature: vec![0; 72],
            },
            Scenario::AsymmetricDecrypt => Prepared::AsymmetricDecrypt {
                key: key.clone(),
                algorithm: kms_proto::kms::v1::Algorithm::RsaesOaepSha256 as i32,
                ciphertext: vec![0; 256],
            },
            Scenario::DescribeKey => Prepared::DescribeKey {
                keys: Spread::one(key.clone()),
            },
            Scenario::CreateKey | Scenario::DisableRefusal | Scenario::Mixed => bail!(
                "{s} has no baseline: its target is absolute (create-key: keys per second; \
                 disable-refusal: milliseconds)"
            ),
        };
        run.total_weight += weight;
        run.parts.push((prepared, weight));
    }
    Ok(run)
}

/// The keys a run made, one per spec and usage.
struct Keyring<'a> {
    made: &'a mut HashMap<(i32, i32), String>,
    /// The symmetric keys `--keys` spreads requests over, made once.
    spread: Option<Spread>,
    work: &'a Workload,
    instance: &'a str,
    caller: &'a crate::connect::Identity,
}

impl Keyring<'_> {
    /// The key of `spec` and `usage`: `--key` for the symmetric one when given, else one made
    /// for the run (once).
    async fn get(
        &mut self,
        keys: &mut KeysClient,
        spec: Spec,
        usage: KeyUsage,
        created: &mut Vec<String>,
    ) -> Result<String> {
        if spec == Spec::Aes256
            && let Some(k) = &self.work.key
        {
            return Ok(k.clone());
        }
        let slot = (spec.wire() as i32, usage as i32);
        if let Some(k) = self.made.get(&slot) {
            return Ok(k.clone());
        }
        let id = create_key(keys, self.instance, spec, usage, self.caller).await?;
        created.push(id.clone());
        self.made.insert(slot, id.clone());
        Ok(id)
    }
}

impl Keyring<'_> {
    /// `first` and `--keys` - 1 more symmetric keys made for the run (once, shared by the
    /// parts), 64 CreateKey calls in flight, with a progress line on a terminal.
    async fn spread(
        &mut self,
        clients: &Clients,
        first: String,
        created: &mut Vec<String>,
    ) -> Result<Spread> {
        if let Some(s) = &self.spread {
            return Ok(s.clone());
        }
        let more = self.work.keys.saturating_sub(1);
        let mut all = Vec::with_capacity(more + 1);
        all.push(first);
        let show = more > 0 && std::io::stderr().is_terminal();
        let mut set = tokio::task::JoinSet::new();
        let mut failure = None;
        let mut take = |r: Result<Result<String>, tokio::task::JoinError>| {
            match r.map_err(anyhow::Error::from).and_then(|r| r) {
                Ok(id) => {
                    created.push(id.clone());
                    all.push(id);
                }
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
            if show && all.len() % 500 == 0 {
                eprint!("\rmaking the run's keys: {}/{}", all.len(), more + 1);
            }
            failure.is_some()
        };
        // After a failure no more keys are asked for; those in flight are still collected,
        // so every key made is scheduled for deletion.
        let mut failed = false;
        for n in 0..more {
            if failed {
                break;
            }
            let mut keys = clients.keys(n as u64);
            let (instance, caller) = (self.instance.to_string(), self.caller.clone());
            set.spawn(async move {
                create_key(
                    &mut keys,
                    &instance,
                    Spec::Aes256,
                    KeyUsage::EncryptDecrypt,
                    &caller,
                )
                .await
            });
            if set.len() >= 64
                && let Some(r) = set.join_next().await
            {
                failed = take(r);
            }
        }
        while let Some(r) = set.join_next().await {
            take(r);
        }
        if show {
            eprintln!("\rmaking the run's keys: {}/{}", all.len(), more + 1);
        }
        if let Some(e) = failure {
            return Err(e);
        }
        let spread = Spread(Arc::from(all));
        self.spread = Some(spread.clone());
        Ok(spread)
    }
}

type KeysClient = kms_proto::kms::v1::key_management_service_client::KeyManagementServiceClient<
    crate::connect::Authed,
>;

/// An instance of the caller's account with room for `needed` more keys: `--instance`, or
/// dev.json's of the right type when it has room (and `fresh` is not asked), or a new one made
/// by the operator.
async fn instance_for(
    planes: &Planes,
    work: &Workload,
    needed: i64,
    fresh: bool,
) -> Result<String> {
    if let Some(id) = &work.instance {
        return Ok(id.clone());
    }
    let kind = work.protection.instance_type();
    if !fresh && let Some(dev) = &planes.dev {
        let id = match kind {
            InstanceType::Hardware => &dev.hardware_instance_id,
            _ => &dev.software_instance_id,
        };
        if !id.is_empty() {
            let mut instances = planes.caller_instances().await?;
            if let Ok(found) = instances
                .get_kms_instance(GetKmsInstanceRequest {
                    kms_instance_id: id.clone(),
                })
                .await
                && let Some(i) = found.into_inner().kms_instance
                && i64::from(i.key_quota) - i64::from(i.key_count) >= needed
            {
                return Ok(id.clone());
            }
        }
    }
    let Some(mut operator) = planes.operator_instances().await? else {
        bail!(
            "the run needs a {} KMS instance with room for {needed} keys: pass --instance ID, \
             or let kms-bench create one as an operator with --operator-principal ARN (or \
             --operator-cert/--operator-cert-key, or --dev-json of `kmsctl dev up`)",
            kind.as_str_name().to_lowercase()
        );
    };
    let Some(owner) = planes.account() else {
        bail!(
            "cannot tell the caller's account to make an instance for it: pass --account ID \
             (or --principal), or --instance ID of an instance the caller may use"
        );
    };
    let quota = i32::try_from(needed.clamp(100, 100_000)).unwrap_or(100_000);
    let op = planes.operator.clone().unwrap_or(crate::connect::Identity {
        principal: None,
        tls: None,
    });
    let made = operator
        .create_kms_instance(CreateKmsInstanceRequest {
            instance_type: kind as i32,
            owner_account_id: owner,
            key_quota: quota,
            access_management_quota: None,
        })
        .await
        .map_err(|e| {
            let mut err = setup_error(e, "CreateKmsInstance", &op);
            err = err.context(
                "the operator principal must be listed in the control plane's `operators`",
            );
            err
        })?
        .into_inner()
        .kms_instance
        .context("CreateKmsInstance answered without the instance")?;
    Ok(made.kms_instance_id)
}

async fn create_key(
    keys: &mut kms_proto::kms::v1::key_management_service_client::KeyManagementServiceClient<
        crate::connect::Authed,
    >,
    instance: &str,
    spec: Spec,
    usage: KeyUsage,
    caller: &crate::connect::Identity,
) -> Result<String> {
    let created = keys
        .create_key(create_request(instance, spec, usage, "kms-bench run key"))
        .await
        .map_err(|e| {
            setup_error(
                e,
                &format!("CreateKey {} in instance {instance}", spec.name()),
                caller,
            )
        })?
        .into_inner();
    created
        .key_metadata
        .map(|m| m.key_id)
        .context("CreateKey answered without the key's metadata")
}

fn create_request(
    instance: &str,
    spec: Spec,
    usage: KeyUsage,
    description: &str,
) -> CreateKeyRequest {
    CreateKeyRequest {
        kms_instance_id: instance.to_string(),
        key_spec: spec.wire() as i32,
        key_usage: usage as i32,
        description: description.to_string(),
        enable_automatic_rotation: (spec == Spec::Aes256).then_some(false),
        ..Default::default()
    }
}

/// Splits `i` over the weights: a fixed pseudo-random choice per request number.
fn pick(i: u64, total: u32) -> u32 {
    // splitmix64
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z % u64::from(total.max(1))) as u32
}

impl Run {
    /// The call that makes request `i` against `clients`.
    pub(crate) fn call(self: &Arc<Self>, clients: Clients) -> Call {
        let run = Arc::clone(self);
        let clients = Arc::new(clients);
        Arc::new(move |i| {
            let run = Arc::clone(&run);
            let clients = Arc::clone(&clients);
            Box::pin(async move {
                let part = if run.parts.len() == 1 {
                    &run.parts[0].0
                } else {
                    let mut at = pick(i, run.total_weight);
                    let mut chosen = &run.parts[0].0;
                    for (p, w) in &run.parts {
                        if at < *w {
                            chosen = p;
                            break;
                        }
                        at -= w;
                    }
                    chosen
                };
                one(part, &clients, i).await
            }) as CallFuture
        })
    }

    /// Every key the run created.
    pub(crate) fn created(&self) -> Vec<String> {
        let mut all = self.created.clone();
        if let Some(m) = &self.created_by_calls {
            all.extend(
                m.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .iter()
                    .cloned(),
            );
        }
        all
    }

    /// Schedules deletion of every key the run created (the shortest window, 7 days); returns
    /// how many were scheduled and the first failure.
    pub(crate) async fn clean_up(&self, clients: &Clients) -> (usize, Option<String>) {
        let keys = self.created();
        let mut scheduled = 0;
        let mut first_error = None;
        let mut set = tokio::task::JoinSet::new();
        for (n, key) in keys.into_iter().enumerate() {
            let mut c = clients.keys(n as u64);
            set.spawn(async move {
                c.schedule_key_deletion(ScheduleKeyDeletionRequest {
                    key_id: key.clone(),
                    pending_window_in_days: 7,
                })
                .await
                .map_err(|e| {
                    format!(
                        "{key}: {}: {}",
                        crate::connect::code_name(e.code()),
                        e.message()
                    )
                })
            });
            if set.len() >= 32
                && let Some(r) = set.join_next().await
            {
                tally(r, &mut scheduled, &mut first_error);
            }
        }
        while let Some(r) = set.join_next().await {
            tally(r, &mut scheduled, &mut first_error);
        }
        (scheduled, first_error)
    }
}

fn tally<T>(
    r: Result<Result<T, String>, tokio::task::JoinError>,
    scheduled: &mut usize,
    first_error: &mut Option<String>,
) {
    match r {
        Ok(Ok(_)) => *scheduled += 1,
        Ok(Err(e)) => {
            first_error.get_or_insert(e);
        }
        Err(e) => {
            first_error.get_or_insert(e.to_string());
        }
    }
}

/// How long disable-refusal waits for the data plane to serve or refuse before counting a
/// failure.
const PROPAGATION_LIMIT: Duration = Duration::from_secs(10);

async fn one(part: &Prepared, clients: &Clients, i: u64) -> Result<Option<Duration>, Status> {
    let mut crypto = clients.crypto(i);
    let mut keys = clients.keys(i);
    match part {
        Prepared::Encrypt { keys, payload } => crypto
            .encrypt(EncryptRequest {
                key_id: keys.key(i),
                plaintext: payload.clone(),
                ..Default::default()
            })
            .await
            .map(|_| None),
        Prepared::Decrypt { blob } => crypto
            .decrypt(DecryptRequest {
                ciphertext_blob: blob.clone(),
                ..Default::default()
            })
            .await
            .map(|_| None),
        Prepared::GenerateDataKey { keys } => crypto
            .generate_data_key(GenerateDataKeyRequest {
                key_id: keys.key(i),
                ..Default::default()
            })
            .await
            .map(|_| None),
        Prepared::ReEncrypt { blob, destination } => crypto
            .re_encrypt(ReEncryptRequest {
                ciphertext_blob: blob.clone(),
                destination_key_id: destination.clone(),
                ..Default::default()
            })
            .await
            .map(|_| None),
        Prepared::Sign {
            key,
            algorithm,
            digest,
        } => crypto
            .asymmetric_sign(AsymmetricSignRequest {
                key_id: key.clone(),
                algorithm: *algorithm,
                digest: digest.clone(),
                ..Default::default()
            })
            .await
            .map(|_| None),
        Prepared::Verify {
            key,
            algorithm,
            digest,
            signature,
        } => {
            let r = crypto
                .asymmetric_verify(AsymmetricVerifyRequest {
                    key_id: key.clone(),
                    algorithm: *algorithm,
                    digest: digest.clone(),
                    value: signature.clone(),
                    ..Default::default()
                })
                .await?;
            if r.into_inner().value {
                Ok(None)
            } else {
                Err(Status::new(
                    Code::Unknown,
                    "Bench.NotVerified: a valid signature was reported invalid",
                ))
            }
        }
        Prepared::AsymmetricDecrypt {
            key,
            algorithm,
            ciphertext,
        } => crypto
            .asymmetric_decrypt(AsymmetricDecryptRequest {
                key_id: key.clone(),
                algorithm: *algorithm,
                ciphertext_blob: ciphertext.clone(),
                ..Default::default()
            })
            .await
            .map(|_| None),
        Prepared::DescribeKey { keys: spread } => keys
            .describe_key(DescribeKeyRequest {
                key_id: spread.key(i),
            })
            .await
            .map(|_| None),
        Prepared::CreateKey {
            instance,
            spec,
            made,
        } => {
            let usage = if *spec == Spec::Aes256 {
                KeyUsage::EncryptDecrypt
            } else {
                KeyUsage::SignVerify
            };
            let r = keys
                .create_key(create_request(
                    instance,
                    *spec,
                    usage,
                    &format!("kms-bench {i}"),
                ))
                .await?;
            if let Some(m) = r.into_inner().key_metadata {
                made.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(m.key_id);
            }
            Ok(None)
        }
        Prepared::DisableRefusal { free } => {
            let taken = free.lock().unwrap_or_else(PoisonError::into_inner).pop();
            let Some(key) = taken else {
                return Err(Status::new(
                    Code::Internal,
                    "Bench.NoFreeKey: more disable-refusal cycles in flight than keys",
                ));
            };
            let timed = disable_refusal(&mut keys, &mut crypto, &key).await;
            free.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(key);
            timed
        }
    }
}

/// One disable → refusal cycle on `key`: enable it and wait until the data plane serves it,
/// disable it, then Encrypt until the data plane refuses; the time from DisableKey's answer to
/// the refusal.
async fn disable_refusal(
    keys: &mut kms_proto::kms::v1::key_management_service_client::KeyManagementServiceClient<
        crate::connect::Authed,
    >,
    crypto: &mut kms_proto::kms::v1::crypto_service_client::CryptoServiceClient<
        crate::connect::Authed,
    >,
    key: &str,
) -> Result<Option<Duration>, Status> {
    let encrypt = || EncryptRequest {
        key_id: key.to_string(),
        plaintext: vec![1; 16],
        ..Default::default()
    };
    keys.enable_key(EnableKeyRequest {
        key_id: key.to_string(),
    })
    .await?;
    let since = Instant::now();
    loop {
        match crypto.encrypt(encrypt()).await {
            Ok(_) => break,
            Err(e)
                if e.code() == Code::FailedPrecondition && since.elapsed() < PROPAGATION_LIMIT => {}
            Err(e) => return Err(e),
        }
    }
    keys.disable_key(DisableKeyRequest {
        key_id: key.to_string(),
    })
    .await?;
    let acknowledged = Instant::now();
    loop {
        match crypto.encrypt(encrypt()).await {
            Err(e) if e.code() == Code::FailedPrecondition => {
                return Ok(Some(acknowledged.elapsed()));
            }
            Err(e) => return Err(e),
            Ok(_) if acknowledged.elapsed() > PROPAGATION_LIMIT => {
                return Err(Status::new(
                    Code::DeadlineExceeded,
                    "Bench.NotRefused: the data plane still served a disabled key after 10 s",
                ));
            }
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn mix_parses_and_refuses_what_it_cannot_run() {
        let m = parse_mix("encrypt=70, decrypt=20,generate-data-key=10")
            .unwrap()
            .0;
        assert_eq!(
            m,
            vec![
                (Scenario::Encrypt, 70),
                (Scenario::Decrypt, 20),
                (Scenario::GenerateDataKey, 10)
            ]
        );
        assert!(
            parse_mix("encrypt")
                .unwrap_err()
                .contains("SCENARIO=WEIGHT")
        );
        assert!(
            parse_mix("frobnicate=1")
                .unwrap_err()
                .contains("not a scenario")
        );
        assert!(
            parse_mix("create-key=1")
                .unwrap_err()
                .contains("cannot be part")
        );
        assert!(parse_mix("encrypt=x").unwrap_err().contains("whole number"));
        assert!(parse_mix("encrypt=0").is_err());
    }

    #[test]
    fn picks_follow_the_weights() {
        let mut counts = [0u32; 3];
        for i in 0..10_000 {
            let at = pick(i, 100);
            counts[match at {
                0..70 => 0,
                70..90 => 1,
                _ => 2,
            }] += 1;
        }
        assert!((6500..7500).contains(&counts[0]), "{counts:?}");
        assert!((1500..2500).contains(&counts[1]), "{counts:?}");
        assert!((500..1500).contains(&counts[2]), "{counts:?}");
    }

    #[test]
    fn specs_fit_their_scenarios() {
        let w = |scenario, spec| Workload {
            scenario,
            payload: 4096,
            spec,
            protection: Protection::Software,
            mix: vec![],
            key: None,
            keys: 1,
            instance: None,
            keep_keys: false,
            concurrency: 1,
            requests: None,
            passes: 1,
        };
        assert_eq!(
            w(Scenario::Sign, None).spec_for(Scenario::Sign),
            Spec::EcP256
        );
        assert_eq!(
            w(Scenario::AsymmetricDecrypt, None).spec_for(Scenario::AsymmetricDecrypt),
            Spec::Rsa2048
        );
        assert!(
            w(Scenario::AsymmetricDecrypt, Some(Spec::EcP256))
                .check()
                .is_err()
        );
        assert_eq!(
            w(Scenario::Encrypt, Some(Spec::EcP256)).spec_for(Scenario::Encrypt),
            Spec::Aes256
        );
        assert!(w(Scenario::Mixed, None).check().is_err());
        let spread = |scenario| Workload {
            keys: 10,
            ..w(scenario, None)
        };
        assert!(spread(Scenario::Encrypt).check().is_ok());
        assert!(spread(Scenario::DescribeKey).check().is_ok());
        assert!(spread(Scenario::Sign).check().is_err());
        assert!(spread(Scenario::Decrypt).check().is_err());
    }

    #[test]
    fn a_spread_uses_every_key_in_turn() {
        let s = Spread(Arc::from(vec!["a".to_string(), "b".into(), "c".into()]));
        let used: Vec<String> = (0..6).map(|i| s.key(i)).collect();
        assert_eq!(used, ["a", "b", "c", "a", "b", "c"]);
    }
}
