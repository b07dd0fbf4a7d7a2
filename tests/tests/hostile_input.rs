//! Hostile input on every RPC of every service, public and internal, through the real binaries.
//!
//! The requests are made from the proto descriptors (`kms_proto::FILE_DESCRIPTOR_SET`) as
//! dynamic messages and sent as raw gRPC, so an RPC added to `proto/` is swept without editing
//! this file; which plane serves a service is asked of the planes through reflection, and whom
//! to call as comes from the authorization table (`kms_types::authz`). For each method, from a
//! base request whose fields hold sensible values (a real key, blob, token...):
//!
//! - the request empty, the base, the base twice over (every field repeated on the wire);
//! - each field in turn, every other field left at its base: strings empty, at and past every
//!   length limit of the API contract, huge, non-ASCII, with control characters and path
//!   separators, and the base value bent (cut, doubled, suffixed); integers at zero, one, minus
//!   one, the limits of their types and either side of every limit of the contract; every enum
//!   at 0, at each defined value and at undefined numbers; bytes empty, random, truncated,
//!   bit-flipped and oversized; repeated fields empty and at and past their limits; maps with
//!   duplicate and empty keys, hostile keys and values, and too many entries; nested messages
//!   absent, empty and swept themselves;
//! - the wire form bent: unknown fields of every wire type, a known field with the wrong wire
//!   type, truncated encodings, random bytes, a length running past the end, nesting past any
//!   decoder's limit, and a request over the size cap.
//!
//! Every answer must be a precise status with a reason code: never `UNKNOWN`, `INTERNAL`,
//! `UNAVAILABLE` or `DATA_LOSS`, never a dropped connection, and an OK answer must decode as
//! the method's response message. Afterwards neither plane has logged a panic, both answer
//! their health checks, the store's indexes agree with its records, and both audit logs verify
//! under their keys and checkpoints. The number of requests tried per service is printed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kms_e2e::{ACCOUNT, ALICE, CONTROL_PRINCIPAL, DATA_PRINCIPAL, OPERATOR, Stack, consistency};
use kms_proto::kms::v1::*;
use kms_types::authz::{Callers, Rpc};
use prost::Message;
use prost::bytes::{Buf, BufMut};
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor,
    ReflectMessage, Value,
};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;

/// Imprecise answers shown per method when the sweep fails.
const EXAMPLES: usize = 6;
/// How much of an answer tells its kind, for choosing examples.
const KIND_CHARS: usize = 48;
/// Calls in flight at once.
const IN_FLIGHT: usize = 16;
/// How deep nested messages are swept field by field.
const MAX_DEPTH: usize = 3;
/// Bigger than the planes' request size cap (`limits.max_request_bytes`, 64 KiB).
const OVER_THE_CAP: usize = 70 * 1024;
/// A big string or bytes value that still fits under the cap.
const BIG: usize = 60_000;

// ---------------------------------------------------------------------------------------------
// Raw gRPC: the request is bytes we made, the answer bytes we decode ourselves.

/// A codec that sends the bytes it is given as the message and hands back the answer's bytes.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

/// Sends `body` to `path` as `principal`; for a server-streaming method, the first message
/// if one comes at once (a watch may stay silent).
async fn call(
    channel: Channel,
    path: &str,
    principal: &str,
    request_id: &str,
    body: Vec<u8>,
    streaming: bool,
) -> Result<Option<Vec<u8>>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unknown(format!("channel not ready: {e}")))?;
    let mut req = tonic::Request::new(body);
    req.metadata_mut()
        .insert("x-kms-principal", principal.parse().unwrap());
    req.metadata_mut()
        .insert("x-request-id", request_id.parse().unwrap());
    req.set_timeout(Duration::from_secs(30));
    let path = PathAndQuery::from_str(path).unwrap();
    if streaming {
        let mut stream = grpc
            .server_streaming(req, path, RawCodec)
            .await?
            .into_inner();
        match tokio::time::timeout(Duration::from_millis(50), stream.message()).await {
            Ok(first) => first,
            Err(_) => Ok(None),
        }
    } else {
        grpc.unary(req, path, RawCodec)
            .await
            .map(|r| Some(r.into_inner()))
    }
}

// ---------------------------------------------------------------------------------------------
// What the sweep starts from: real keys, blobs and tokens, for base requests that get past the
// first checks.

/// A key of the account and what can be made with it.
#[derive(Debug, Clone)]
struct KeyInfo {
    id: String,
    version: String,
    /// A blob `Encrypt` made (symmetric), or `AsymmetricEncrypt` (RSA).
    blob: Vec<u8>,
    /// A data-key blob `GenerateDataKey` made (symmetric keys).
    data_key_blob: Vec<u8>,
    /// A signature `AsymmetricSign` made (signing keys).
    signature: Vec<u8>,
    /// The algorithm its requests name.
    algorithm: Algorithm,
}

/// Everything base requests draw on.
#[derive(Debug)]
struct Fixtures {
    instance: String,
    /// A fresh symmetric key per method that acts on a key, so one method's state changes
    /// (disable, schedule deletion) do not leave the next methods' calls at the first check.
    per_method: HashMap<String, KeyInfo>,
    rsa_encrypt: KeyInfo,
    ec_sign: KeyInfo,
    external: KeyInfo,
    import_token: String,
    rsa_public_pem: Vec<u8>,
    policy: String,
}

async fn create_key(stack: &Stack, req: CreateKeyRequest) -> KeyMetadata {
    stack
        .keys(Some(ALICE))
        .unwrap()
        .create_key(req)
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap()
}

async fn symmetric_key(stack: &Stack, instance: &str) -> KeyInfo {
    let meta = create_key(
        stack,
        CreateKeyRequest {
            kms_instance_id: instance.into(),
            key_spec: KeySpec::AliyunAes256 as i32,
            ..Default::default()
        },
    )
    .await;
    let mut crypto = stack.crypto(Some(ALICE)).unwrap();
    let context: HashMap<String, String> = [("app".to_string(), "sweep".to_string())].into();
    let blob = crypto
        .encrypt(EncryptRequest {
            key_id: meta.key_id.clone(),
            plaintext: b"sweep".to_vec(),
            encryption_context: context.clone(),
            dry_run: false,
        })
        .await
        .unwrap()
        .into_inner()
        .ciphertext_blob;
    let data_key_blob = crypto
        .generate_data_key(GenerateDataKeyRequest {
            key_id: meta.key_id.clone(),
            encryption_context: context,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .ciphertext_blob;
    KeyInfo {
        id: meta.key_id,
        version: meta.primary_key_version_id,
        blob,
        data_key_blob,
        signature: Vec::new(),
        algorithm: Algorithm::RsaesOaepSha256,
    }
}

impl Fixtures {
    async fn make(stack: &Stack, methods: &[String]) -> Self {
        let instance = stack
            .instances(Some(OPERATOR))
            .unwrap()
            .create_kms_instance(CreateKmsInstanceRequest {
                instance_type: InstanceType::Software as i32,
                owner_account_id: ACCOUNT.into(),
                key_quota: 1_000,
                access_management_quota: Some(5),
            })
            .await
            .unwrap()
            .into_inner()
            .kms_instance
            .unwrap()
            .kms_instance_id;
        let mut per_method = HashMap::new();
        for m in methods {
            per_method.insert(m.clone(), symmetric_key(stack, &instance).await);
        }
        // An alias that UpdateAlias and DeleteAlias find, and ListKeys can filter on.
        stack
            .keys(Some(ALICE))
            .unwrap()
            .create_alias(CreateAliasRequest {
                alias_name: "alias/sweep".into(),
                key_id: per_method.values().next().unwrap().id.clone(),
            })
            .await
            .unwrap();

        let mut crypto = stack.crypto(Some(ALICE)).unwrap();
        let rsa = create_key(
            stack,
            CreateKeyRequest {
                kms_instance_id: instance.clone(),
                key_spec: KeySpec::Rsa2048 as i32,
                key_usage: KeyUsage::EncryptDecrypt as i32,
                ..Default::default()
            },
        )
        .await;
        let rsa_blob = crypto
            .asymmetric_encrypt(AsymmetricEncryptRequest {
                key_id: rsa.key_id.clone(),
                algorithm: Algorithm::RsaesOaepSha256 as i32,
                plaintext: b"sweep".to_vec(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .ciphertext_blob;
        let rsa_public_pem = crypto
            .get_public_key(GetPublicKeyRequest {
                key_id: rsa.key_id.clone(),
                key_version_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .public_key
            .into_bytes();
        let ec = create_key(
            stack,
            CreateKeyRequest {
                kms_instance_id: instance.clone(),
                key_spec: KeySpec::EcP256 as i32,
                key_usage: KeyUsage::SignVerify as i32,
                ..Default::default()
            },
        )
        .await;
        let signature = crypto
            .asymmetric_sign(AsymmetricSignRequest {
                key_id: ec.key_id.clone(),
                algorithm: Algorithm::EcdsaSha256 as i32,
                digest: vec![7; 32],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .value;
        let external = create_key(
            stack,
            CreateKeyRequest {
                kms_instance_id: instance.clone(),
                key_spec: KeySpec::AliyunAes256 as i32,
                origin: KeyOrigin::External as i32,
                ..Default::default()
            },
        )
        .await;
        let import_token = stack
            .keys(Some(ALICE))
            .unwrap()
            .get_parameters_for_import(GetParametersForImportRequest {
                key_id: external.key_id.clone(),
                wrapping_algorithm: Algorithm::RsaesOaepSha256 as i32,
                wrapping_key_spec: KeySpec::Rsa2048 as i32,
            })
            .await
            .unwrap()
            .into_inner()
            .import_token;
        let policy = serde_json::json!({
            "Version": "1",
            "Statement": [{
                "Effect": "Allow",
                "Principal": {"RAM": [format!("acs:ram::{ACCOUNT}:*")]},
                "Action": ["kms:*"],
                "Resource": ["*"],
            }],
        })
        .to_string();
        Self {
            instance,
            per_method,
            rsa_encrypt: KeyInfo {
                id: rsa.key_id,
                version: rsa.primary_key_version_id,
                blob: rsa_blob,
                data_key_blob: Vec::new(),
                signature: Vec::new(),
                algorithm: Algorithm::RsaesOaepSha256,
            },
            ec_sign: KeyInfo {
                id: ec.key_id,
                version: ec.primary_key_version_id,
                blob: Vec::new(),
                data_key_blob: Vec::new(),
                signature,
                algorithm: Algorithm::EcdsaSha256,
            },
            external: KeyInfo {
                id: external.key_id,
                version: external.primary_key_version_id,
                blob: Vec::new(),
                data_key_blob: Vec::new(),
                signature: Vec::new(),
                algorithm: Algorithm::RsaesOaepSha256,
            },
            import_token,
            rsa_public_pem,
            policy,
        }
    }

    /// The key a method's base request names: an RSA key for asymmetric encryption, an EC key
    /// for signatures and public keys, the External key for import, else the method's own.
    fn key_for(&self, method: &str) -> &KeyInfo {
        if method.starts_with("AsymmetricEncrypt") || method.starts_with("AsymmetricDecrypt") {
            &self.rsa_encrypt
        } else if method.starts_with("AsymmetricSign")
            || method.starts_with("AsymmetricVerify")
            || method == "GetPublicKey"
        {
            &self.ec_sign
        } else if method.contains("Import") || method == "DeleteKeyMaterial" {
            &self.external
        } else {
            self.per_method.get(method).unwrap_or(&self.rsa_encrypt)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Base requests: sensible values by field name, so the variants of one field get past the
// checks of the others.

/// Where a message is built: the method it is for and whether its service is internal.
#[derive(Clone, Copy)]
struct Site<'a> {
    method: &'a str,
    internal: bool,
    fixtures: &'a Fixtures,
}

impl Site<'_> {
    fn key(&self) -> &KeyInfo {
        self.fixtures.key_for(self.method)
    }

    fn string(&self, message: &str, field: &str) -> String {
        let key = self.key();
        match (message, field) {
            ("kms.v1.CreateKeyRequest", "alias") => String::new(),
            (_, "key_id" | "destination_key_id") => key.id.clone(),
            (_, "key_ids") => key.id.clone(),
            (_, "key_version_id") => key.version.clone(),
            (_, "kms_instance_id") => self.fixtures.instance.clone(),
            (_, "alias_name" | "alias") => "alias/sweep".into(),
            (_, "description" | "deletion_protection_description") => "sweep".into(),
            (_, "policy") => self.fixtures.policy.clone(),
            (_, "key" | "tag_key" | "tag_keys") => "env".into(),
            (_, "value" | "tag_value") => "sweep".into(),
            (_, "owner_account_id") => ACCOUNT.into(),
            (_, "account_id") => "5555555555555555".into(),
            (_, "import_token") => self.fixtures.import_token.clone(),
            (_, "import_key_id") => format!("itk-{}", "0".repeat(32)),
            (_, "plane") if self.internal => "data".into(),
            (_, "plane") => "control".into(),
            (_, "head" | "mac") => "0".repeat(64),
            (_, "time") => "2026-01-01T00:00:00Z".into(),
            (_, "principal") => ALICE.into(),
            (_, "operation") => "Encrypt".into(),
            (_, "log" | "page_token" | "exclude_characters") => String::new(),
            _ => "sweep".into(),
        }
    }

    fn bytes(&self, field: &str) -> Vec<u8> {
        let key = self.key();
        match field {
            "plaintext" => b"sweep".to_vec(),
            "ciphertext_blob" if self.method == "ExportDataKey" => key.data_key_blob.clone(),
            "ciphertext_blob" => key.blob.clone(),
            "digest" | "mac" | "key" => vec![7; 32],
            "value" => key.signature.clone(),
            "public_key" => self.fixtures.rsa_public_pem.clone(),
            _ => pseudo_random(256, 1),
        }
    }

    fn int(&self, field: &str) -> i64 {
        match field {
            "length" | "number_of_bytes" | "password_length" => 32,
            "page_size" => 10,
            "pending_window_in_days" => 7,
            "key_quota" => 1_000,
            "access_management_quota" => 5,
            "from_revision" | "revision" => 0,
            _ => 1,
        }
    }

    fn enumeration(&self, field: &FieldDescriptor, values: &[i32]) -> i32 {
        match field.name() {
            "algorithm" => self.key().algorithm as i32,
            "wrapping_algorithm" => Algorithm::RsaesOaepSha256 as i32,
            "wrapping_key_spec" => KeySpec::Rsa2048 as i32,
            _ => values.iter().copied().find(|v| *v != 0).unwrap_or(0),
        }
    }

    /// A sensible value of one element of `field` (for a list or map field, one entry).
    fn scalar(&self, field: &FieldDescriptor, depth: usize) -> Option<Value> {
        let message = field.parent_message();
        let name = field.name();
        Some(match field.kind() {
            Kind::String => Value::String(self.string(message.full_name(), name)),
            Kind::Bytes => Value::Bytes(self.bytes(name).into()),
            Kind::Bool => Value::Bool(false),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
                Value::I32(i32::try_from(self.int(name)).unwrap())
            }
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(self.int(name)),
            Kind::Uint32 | Kind::Fixed32 => Value::U32(u32::try_from(self.int(name)).unwrap()),
            Kind::Uint64 | Kind::Fixed64 => Value::U64(u64::try_from(self.int(name)).unwrap()),
            Kind::Float => Value::F32(1.0),
            Kind::Double => Value::F64(1.0),
            Kind::Enum(e) => {
                let values: Vec<i32> = e.values().map(|v| v.number()).collect();
                Value::EnumNumber(self.enumeration(field, &values))
            }
            Kind::Message(m) => {
                // Times and intervals are left out of base requests: unset is the ordinary
                // case (no expiry, the default interval); they are swept as fields.
                if m.full_name().starts_with("google.protobuf.") || depth >= MAX_DEPTH {
                    return None;
                }
                Value::Message(self.base(&m, depth + 1))
            }
        })
    }

    /// The base request (or nested message) of type `desc`.
    fn base(&self, desc: &MessageDescriptor, depth: usize) -> DynamicMessage {
        let mut msg = DynamicMessage::new(desc.clone());
        for field in desc.fields() {
            if field.is_map() {
                let mut map = HashMap::new();
                map.insert(MapKey::String("app".into()), Value::String("sweep".into()));
                msg.set_field(&field, Value::Map(map));
            } else if let Some(value) = self.scalar(&field, depth) {
                if field.is_list() {
                    msg.set_field(&field, Value::List(vec![value]));
                } else {
                    msg.set_field(&field, value);
                }
            }
        }
        msg
    }
}

// ---------------------------------------------------------------------------------------------
// Hostile values by type.

/// Deterministic bytes: xorshift from `seed`.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Lengths at and either side of every length limit of the API contract (tags 128, alias names
/// 255 after `alias/`, descriptions and contexts 8,192, plaintext 6 KiB, policies 32,768), and
/// a big one under the request cap.
const LENGTHS: &[usize] = &[
    0, 1, 2, 31, 32, 33, 127, 128, 129, 255, 256, 261, 262, 1024, 6144, 6145, 8192, 8193, 32768,
    32769, BIG,
];

fn hostile_strings(base: &str) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = LENGTHS
        .iter()
        .map(|n| (format!("{n} chars"), "a".repeat(*n)))
        .collect();
    for (label, text) in [
        ("4097 two-byte chars", "é".repeat(4097)),
        ("8193 two-byte chars", "é".repeat(8193)),
        ("non-ASCII", "ключ-🔑-鍵".to_string()),
        ("NUL", "\0".to_string()),
        (
            "control chars",
            "\u{1}\u{7}\u{1b}[31m\r\n\t\u{7f}".to_string(),
        ),
        ("path traversal", "../../../../etc/passwd".to_string()),
        ("backslashes", "..\\..\\windows\\system32".to_string()),
        ("percent-encoded", "%2e%2e%2f%00".to_string()),
        ("JSON", "{\"Version\":\"1\",\"Statement\":[]}".to_string()),
        ("whitespace", " \t ".to_string()),
        ("right-to-left override", "\u{202e}yek".to_string()),
        ("byte-order mark", "\u{feff}".to_string()),
        ("alias traversal", "alias/../../x".to_string()),
        ("reserved alias", "alias/acs/x".to_string()),
        (
            "ARN of another account",
            format!("acs:kms:local:6543210987654321:key/key-{}", "0".repeat(32)),
        ),
        ("principal of another account", MALLORY_ROOT.to_string()),
        ("negative number", "-1".to_string()),
    ] {
        v.push((label.to_string(), text));
    }
    if !base.is_empty() {
        let cut = base
            .char_indices()
            .map(|(i, _)| i)
            .nth(base.chars().count() / 2)
            .unwrap_or(0);
        for (label, text) in [
            ("base + NUL", format!("{base}\0")),
            ("base + newline", format!("{base}\n")),
            ("base + /../x", format!("{base}/../x")),
            ("space + base", format!(" {base}")),
            ("base uppercased", base.to_uppercase()),
            ("base + é", format!("{base}é")),
            ("base twice", base.repeat(2)),
            ("base cut", base[..cut].to_string()),
        ] {
            v.push((label.to_string(), text));
        }
    }
    v
}

const MALLORY_ROOT: &str = "acs:ram::6543210987654321:root";

/// Integers at zero, one, minus one, and either side of every numeric limit of the contract
/// (page sizes 1–100, windows 7–366 days, 1–1,024 bytes, passwords 8–128, tags 20 and keys 50
/// per call, quotas 1–100,000 and 0–1,000, plaintext 6 KiB).
const I32S: &[i32] = &[
    0,
    1,
    -1,
    2,
    6,
    7,
    8,
    19,
    20,
    21,
    31,
    32,
    33,
    49,
    50,
    51,
    99,
    100,
    101,
    127,
    128,
    129,
    365,
    366,
    367,
    999,
    1000,
    1001,
    1024,
    1025,
    6144,
    6145,
    100_000,
    100_001,
    i32::MAX,
    i32::MIN,
];

/// Seconds: days either side of the rotation interval's 7–365, times far away and odd.
const I64S: &[i64] = &[
    0,
    1,
    -1,
    86_399,
    86_400,
    6 * 86_400,
    7 * 86_400,
    7 * 86_400 + 1,
    365 * 86_400,
    366 * 86_400,
    1_700_000_000,
    253_402_300_800,
    i64::MAX / 1000,
    i64::MAX / 1000 + 1,
    i64::MAX,
    i64::MIN,
    i32::MAX as i64 + 1,
];

const U64S: &[u64] = &[
    0,
    1,
    2,
    20,
    21,
    100,
    101,
    u32::MAX as u64,
    i64::MAX as u64,
    i64::MAX as u64 + 1,
    u64::MAX,
];

fn hostile_bytes(base: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = [
        0, 1, 12, 15, 16, 17, 31, 32, 33, 47, 48, 49, 64, 255, 256, 257, 512, 1024, 1025, 6144,
        6145, 8192, 8193, BIG,
    ]
    .iter()
    .map(|n| {
        (
            format!("{n} random bytes"),
            pseudo_random(*n, *n as u64 + 7),
        )
    })
    .collect();
    v.push(("48 zero bytes".into(), vec![0; 48]));
    v.push((
        "PEM garbage".into(),
        b"-----BEGIN PUBLIC KEY-----\n!!\n-----END PUBLIC KEY-----\n".to_vec(),
    ));
    if !base.is_empty() {
        let n = base.len();
        v.push(("base minus its last byte".into(), base[..n - 1].to_vec()));
        v.push(("base cut in half".into(), base[..n / 2].to_vec()));
        v.push(("base's first 36 bytes".into(), base[..n.min(36)].to_vec()));
        for at in [0, 3, 4, 19, 20, 31, 32, n / 2, n - 1] {
            if at < n {
                let mut b = base.to_vec();
                b[at] ^= 0x01;
                v.push((format!("base with bit 0 of byte {at} flipped"), b));
            }
        }
        let mut longer = base.to_vec();
        longer.push(0);
        v.push(("base + a zero byte".into(), longer));
        v.push(("base twice".into(), base.repeat(2)));
    }
    v
}

/// One variant: what it is, and the request's bytes.
type Variant = (String, Vec<u8>);

/// Values of one element of `field` (a scalar, an enum, a nested message) worth trying, each
/// labelled; `base` is the field's base element if it has one.
fn element_variants(
    site: &Site<'_>,
    field: &FieldDescriptor,
    base: Option<&Value>,
    depth: usize,
) -> Vec<(String, Value)> {
    match field.kind() {
        Kind::String => {
            let base = base.and_then(Value::as_str).unwrap_or("");
            hostile_strings(base)
                .into_iter()
                .map(|(l, s)| (l, Value::String(s)))
                .collect()
        }
        Kind::Bytes => {
            let base = base
                .and_then(Value::as_bytes)
                .map(|b| b.to_vec())
                .unwrap_or_default();
            hostile_bytes(&base)
                .into_iter()
                .map(|(l, b)| (l, Value::Bytes(b.into())))
                .collect()
        }
        Kind::Bool => vec![
            ("true".into(), Value::Bool(true)),
            ("false".into(), Value::Bool(false)),
        ],
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => I32S
            .iter()
            .map(|n| (n.to_string(), Value::I32(*n)))
            .collect(),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => I64S
            .iter()
            .chain(
                I32S.iter()
                    .map(|n| i64::from(*n))
                    .collect::<Vec<_>>()
                    .iter(),
            )
            .map(|n| (n.to_string(), Value::I64(*n)))
            .collect(),
        Kind::Uint32 | Kind::Fixed32 => U64S
            .iter()
            .filter_map(|n| u32::try_from(*n).ok())
            .map(|n| (n.to_string(), Value::U32(n)))
            .collect(),
        Kind::Uint64 | Kind::Fixed64 => U64S
            .iter()
            .map(|n| (n.to_string(), Value::U64(*n)))
            .collect(),
        Kind::Float => [0.0, -1.0, f32::NAN, f32::INFINITY, f32::MAX]
            .iter()
            .map(|n| (n.to_string(), Value::F32(*n)))
            .collect(),
        Kind::Double => [0.0, -1.0, f64::NAN, f64::INFINITY, f64::MAX]
            .iter()
            .map(|n| (n.to_string(), Value::F64(*n)))
            .collect(),
        Kind::Enum(e) => {
            let defined: Vec<i32> = e.values().map(|v| v.number()).collect();
            let max = defined.iter().copied().max().unwrap_or(0);
            let mut numbers = defined.clone();
            numbers.extend([max + 1, 99, -1, i32::MAX, i32::MIN]);
            numbers
                .into_iter()
                .map(|n| {
                    let label = if defined.contains(&n) {
                        e.get_value(n)
                            .map_or(n.to_string(), |v| v.name().to_string())
                    } else {
                        format!("undefined {n}")
                    };
                    (label, Value::EnumNumber(n))
                })
                .collect()
        }
        Kind::Message(m) => {
            let base = match base.and_then(Value::as_message) {
                Some(b) => b.clone(),
                None => site.base(&m, depth + 1),
            };
            let mut v = vec![
                (
                    "empty".to_string(),
                    Value::Message(DynamicMessage::new(m.clone())),
                ),
                ("base".to_string(), Value::Message(base.clone())),
            ];
            if depth < MAX_DEPTH {
                for (label, msg) in message_variants(site, &base, depth + 1) {
                    v.push((label, Value::Message(msg)));
                }
            }
            v
        }
    }
}

/// The variants of a message made by changing one field at a time (recursing into nested
/// messages), as messages.
fn message_variants(
    site: &Site<'_>,
    base: &DynamicMessage,
    depth: usize,
) -> Vec<(String, DynamicMessage)> {
    let mut out = Vec::new();
    let desc = base.descriptor();
    for field in desc.fields() {
        let name = field.name().to_string();
        let current = base.get_field(&field).into_owned();
        let with = |value: Value| {
            let mut m = base.clone();
            m.set_field(&field, value);
            m
        };
        let without = || {
            let mut m = base.clone();
            m.clear_field(&field);
            m
        };
        out.push((format!("{name} unset"), without()));
        if field.is_map() {
            for (label, map) in map_variants(&field) {
                out.push((format!("{name} {label}"), with(Value::Map(map))));
            }
        } else if field.is_list() {
            let first = current.as_list().and_then(|l| l.first()).cloned();
            let element = first.clone().or_else(|| site.scalar(&field, depth));
            if let Some(element) = &element {
                for n in [2, 20, 21, 50, 51, 1000] {
                    out.push((
                        format!("{name} with {n} base elements"),
                        with(Value::List(vec![element.clone(); n])),
                    ));
                }
            }
            for (label, value) in element_variants(site, &field, first.as_ref(), depth) {
                out.push((
                    format!("{name} = [{label}]"),
                    with(Value::List(vec![value])),
                ));
            }
        } else {
            for (label, value) in element_variants(site, &field, Some(&current), depth) {
                out.push((format!("{name} = {label}"), with(value)));
            }
        }
    }
    out
}

/// Maps (string → string, the only kind in the API) worth trying.
fn map_variants(field: &FieldDescriptor) -> Vec<(String, HashMap<MapKey, Value>)> {
    let Kind::Message(entry) = field.kind() else {
        return Vec::new();
    };
    if !matches!(entry.map_entry_key_field().kind(), Kind::String)
        || !matches!(entry.map_entry_value_field().kind(), Kind::String)
    {
        return Vec::new();
    }
    let map = |pairs: Vec<(String, String)>| -> HashMap<MapKey, Value> {
        pairs
            .into_iter()
            .map(|(k, v)| (MapKey::String(k), Value::String(v)))
            .collect()
    };
    let mut v = vec![
        ("empty".into(), map(vec![])),
        (
            "with an empty key".into(),
            map(vec![(String::new(), "v".into())]),
        ),
        (
            "with an empty value".into(),
            map(vec![("k".into(), String::new())]),
        ),
        (
            "with 1000 entries".into(),
            map((0..1000).map(|i| (format!("k{i}"), "v".into())).collect()),
        ),
        (
            "of 8,192 bytes".into(),
            map(vec![("k".into(), "v".repeat(8191))]),
        ),
        (
            "of 8,193 bytes".into(),
            map(vec![("k".into(), "v".repeat(8192))]),
        ),
    ];
    for (label, text) in hostile_strings("") {
        v.push((
            format!("key {label}"),
            map(vec![(text.clone(), "v".into())]),
        ));
        v.push((format!("value {label}"), map(vec![("k".into(), text)])));
    }
    v
}

// ---------------------------------------------------------------------------------------------
// The wire form bent.

fn varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn tag(field: u32, wire_type: u8) -> Vec<u8> {
    let mut out = Vec::new();
    varint((u64::from(field) << 3) | u64::from(wire_type), &mut out);
    out
}

/// Requests whose encoding is bent, from the base's encoding.
fn wire_variants(base: &DynamicMessage) -> Vec<Variant> {
    let encoded = base.encode_to_vec();
    let with = |suffix: &[u8]| [encoded.as_slice(), suffix].concat();
    let mut v: Vec<Variant> = vec![
        ("empty request".into(), Vec::new()),
        ("base".into(), encoded.clone()),
        ("base twice over".into(), encoded.repeat(2)),
        (
            "unknown varint field".into(),
            with(&[tag(1000, 0), vec![0x2a]].concat()),
        ),
        (
            "unknown fixed64 field".into(),
            with(&[tag(1001, 1), vec![9; 8]].concat()),
        ),
        (
            "unknown length-delimited field".into(),
            with(&[tag(1002, 2), vec![3], b"abc".to_vec()].concat()),
        ),
        (
            "unknown fixed32 field".into(),
            with(&[tag(1003, 5), vec![9; 4]].concat()),
        ),
        (
            "unknown group".into(),
            with(&[tag(1004, 3), tag(1, 0), vec![1], tag(1004, 4)].concat()),
        ),
        ("field number 0".into(), vec![0x02, 0x00]),
        ("wire type 6".into(), with(&tag(7, 6))),
        ("wire type 7".into(), with(&tag(7, 7))),
        ("group end without start".into(), with(&tag(5, 4))),
        (
            "overlong varint".into(),
            with(&[tag(1000, 0), vec![0xff; 11]].concat()),
        ),
        (
            "length past the end".into(),
            with(&[tag(1002, 2), vec![0xff, 0xff, 0x03], b"x".to_vec()].concat()),
        ),
        ("nesting 200 deep".into(), {
            let mut b = Vec::new();
            for _ in 0..200 {
                let mut outer = tag(1005, 2);
                varint(b.len() as u64, &mut outer);
                outer.extend_from_slice(&b);
                b = outer;
            }
            with(&b)
        }),
        ("random 1 byte".into(), pseudo_random(1, 11)),
        ("random 7 bytes".into(), pseudo_random(7, 12)),
        ("random 64 bytes".into(), pseudo_random(64, 13)),
        ("random 4096 bytes".into(), pseudo_random(4096, 14)),
        ("over the size cap".into(), {
            let mut big = tag(1006, 2);
            varint(OVER_THE_CAP as u64, &mut big);
            big.extend(std::iter::repeat_n(b'x', OVER_THE_CAP));
            with(&big)
        }),
    ];
    let n = encoded.len();
    for cut in [1, n / 3, n / 2, n.saturating_sub(1)] {
        if cut > 0 && cut < n {
            v.push((
                format!("encoding cut at {cut} of {n} bytes"),
                encoded[..cut].to_vec(),
            ));
        }
    }
    for field in base.descriptor().fields() {
        // The field with the wire type it does not have.
        let wrong = match field.kind() {
            Kind::String | Kind::Bytes | Kind::Message(_) => {
                [tag(field.number(), 0), vec![1]].concat()
            }
            _ if field.is_list() || field.is_map() => [tag(field.number(), 5), vec![1; 4]].concat(),
            _ => [tag(field.number(), 2), vec![2, 1, 1]].concat(),
        };
        v.push((
            format!("{} with the wrong wire type", field.name()),
            with(&wrong),
        ));
        if field.is_map() {
            // Two entries with the same key: an encoding no map can hold.
            let mut one = DynamicMessage::new(base.descriptor());
            let mut two = DynamicMessage::new(base.descriptor());
            let entry = |value: &str| {
                let mut m = HashMap::new();
                m.insert(MapKey::String("dup".into()), Value::String(value.into()));
                Value::Map(m)
            };
            one.set_field(&field, entry("1"));
            two.set_field(&field, entry("2"));
            v.push((
                format!("{} with a duplicate key", field.name()),
                [encoded.clone(), one.encode_to_vec(), two.encode_to_vec()].concat(),
            ));
        }
    }
    v
}

// ---------------------------------------------------------------------------------------------

/// A method to sweep: where, as whom, and its descriptors.
#[derive(Clone)]
struct Target {
    service: String,
    method: String,
    path: String,
    channel: Channel,
    principal: &'static str,
    streaming: bool,
    output: MessageDescriptor,
}

/// What went wrong with one request.
#[derive(Debug)]
struct Failure {
    path: String,
    variant: String,
    what: String,
}

/// Why an answer is not precise, if it is not.
fn judge(target: &Target, answer: &Result<Option<Vec<u8>>, Status>) -> Option<String> {
    match answer {
        Ok(None) => None,
        Ok(Some(bytes)) => DynamicMessage::decode(target.output.clone(), bytes.as_slice())
            .err()
            .map(|e| {
                format!(
                    "OK, but the answer is not a {}: {e}",
                    target.output.full_name()
                )
            }),
        Err(status) => {
            use tonic::Code;
            let reason = kms_e2e::reason(status);
            if matches!(
                status.code(),
                Code::Unknown | Code::Internal | Code::Unavailable | Code::DataLoss
            ) {
                return Some(format!(
                    "{:?} {reason:?}: {}",
                    status.code(),
                    status.message()
                ));
            }
            if reason.is_empty() || !status.message().starts_with(&reason) {
                return Some(format!(
                    "{:?} without a reason code: {}",
                    status.code(),
                    status.message()
                ));
            }
            None
        }
    }
}

/// The services each plane serves, by reflection.
async fn served(stack: &Stack, addr: &str) -> Vec<String> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = ServerReflectionClient::new(stack.channel(addr, None).unwrap())
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    match answers.message().await.unwrap().unwrap().message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("not a service list: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_answers_hostile_input_precisely() {
    let began = Instant::now();
    let mut stack = Stack::start().await.unwrap();
    let pool = DescriptorPool::decode(kms_proto::FILE_DESCRIPTOR_SET).unwrap();
    let control = served(&stack, stack.control_addr()).await;
    let data = served(&stack, stack.data_addr()).await;

    let mut targets = Vec::new();
    for service in pool.services() {
        let name = service.full_name().to_string();
        if !name.starts_with("kms.") {
            continue;
        }
        let (channel_addr, other_plane) = match (control.contains(&name), data.contains(&name)) {
            (true, false) => (stack.control_addr().to_string(), DATA_PRINCIPAL),
            (false, true) => (stack.data_addr().to_string(), CONTROL_PRINCIPAL),
            served => panic!("{name} is served by (control, data) = {served:?}"),
        };
        let channel = stack.channel(&channel_addr, None).unwrap();
        for method in service.methods() {
            let path = format!("/{name}/{}", method.name());
            let rpc = Rpc::ALL
                .iter()
                .find(|r| r.path() == path)
                .unwrap_or_else(|| panic!("{path} has no row in the authorization table"));
            let principal = match rpc.rule().callers {
                Callers::Operators | Callers::OperatorsOnly => OPERATOR,
                Callers::PeerPlane => other_plane,
                Callers::Gateway => kms_e2e::GATEWAY_PRINCIPAL,
                Callers::OwnAccount | Callers::KeyPolicy | Callers::KeyPolicyOwnAccount => ALICE,
            };
            assert!(
                !method.is_client_streaming(),
                "{path}: client streaming is not swept"
            );
            targets.push((
                Target {
                    service: name.clone(),
                    method: method.name().to_string(),
                    path,
                    channel: channel.clone(),
                    principal,
                    streaming: method.is_server_streaming(),
                    output: method.output(),
                },
                method.input(),
            ));
        }
    }
    let methods: Vec<String> = targets.iter().map(|(t, _)| t.method.clone()).collect();
    let fixtures = Fixtures::make(&stack, &methods).await;
    eprintln!(
        "hostile input: {} methods, fixtures ready after {} ms",
        targets.len(),
        began.elapsed().as_millis()
    );

    let gate = Arc::new(Semaphore::new(IN_FLIGHT));
    let failures = Arc::new(Mutex::new(Vec::<Failure>::new()));
    let answers = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    let mut tried: BTreeMap<String, usize> = BTreeMap::new();
    let mut calls = JoinSet::new();
    let mut serial = 0u64;
    for (target, input) in &targets {
        let site = Site {
            method: &target.method,
            internal: target.service.starts_with("kms.internal."),
            fixtures: &fixtures,
        };
        let base = site.base(input, 0);
        let mut variants = wire_variants(&base);
        variants.extend(
            message_variants(&site, &base, 0)
                .into_iter()
                .map(|(label, msg)| (label, msg.encode_to_vec())),
        );
        *tried.entry(target.service.clone()).or_default() += variants.len();
        for (label, body) in variants {
            serial += 1;
            let permit = Arc::clone(&gate).acquire_owned().await.unwrap();
            let target = target.clone();
            let failures = Arc::clone(&failures);
            let answers = Arc::clone(&answers);
            let request_id = format!("sweep-{serial}");
            calls.spawn(async move {
                let answer = call(
                    target.channel.clone(),
                    &target.path,
                    target.principal,
                    &request_id,
                    body,
                    target.streaming,
                )
                .await;
                drop(permit);
                let kind = match &answer {
                    Ok(_) => "OK".to_string(),
                    Err(status) => format!("{:?} {}", status.code(), kms_e2e::reason(status)),
                };
                *answers.lock().unwrap().entry(kind).or_default() += 1;
                if let Some(what) = judge(&target, &answer) {
                    failures.lock().unwrap().push(Failure {
                        path: target.path.clone(),
                        variant: label,
                        what: format!("{what} ({request_id})"),
                    });
                }
            });
            while calls.try_join_next().is_some() {}
        }
    }
    while let Some(done) = calls.join_next().await {
        done.unwrap();
    }
    let total: usize = tried.values().sum();
    for (service, n) in &tried {
        eprintln!("hostile input: {service}: {n} requests");
    }
    for (kind, n) in answers.lock().unwrap().iter() {
        eprintln!("hostile input: answered {kind}: {n}");
    }
    eprintln!(
        "hostile input: {total} requests in all, sweep done after {} ms",
        began.elapsed().as_millis()
    );

    let failures = std::mem::take(&mut *failures.lock().unwrap());
    let mut by_method: BTreeMap<&str, Vec<&Failure>> = BTreeMap::new();
    for f in &failures {
        by_method.entry(&f.path).or_default().push(f);
    }
    for (path, list) in &by_method {
        eprintln!("IMPRECISE {path}: {} requests, for example:", list.len());
        // One example of each kind of answer: the same code and the start of its message.
        let mut kinds = std::collections::BTreeSet::new();
        for f in list {
            let kind: String = f.what.chars().take(KIND_CHARS).collect();
            if kinds.insert(kind) && kinds.len() <= EXAMPLES {
                eprintln!("    [{}]: {}", f.variant, f.what);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} requests were not answered precisely (examples above)",
        failures.len()
    );

    // Both planes came through it.
    consistency::no_panics(&stack).unwrap();
    consistency::both_healthy(&stack).await.unwrap();
    // A graceful stop records each plane's last audit checkpoint; then the store is read
    // directly, and the logs are verified where their keys are.
    stack.stop().await.unwrap();
    let keys = consistency::check_store(&stack.store_entries().unwrap()).unwrap();
    stack.restart().await.unwrap();
    for plane in ["control", "data"] {
        consistency::verify_audit_log(&stack, plane).await.unwrap();
    }
    consistency::no_panics(&stack).unwrap();
    stack.stop().await.unwrap();
    eprintln!(
        "hostile input: store consistent ({keys} keys), both audit logs verify; {} ms in all",
        began.elapsed().as_millis()
    );
}
