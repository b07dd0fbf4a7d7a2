//! The rest of the data plane: data keys, re-encryption, export, asymmetric operations,
//! signatures and random material. Binary inputs come from files (`--in`, `-` for stdin) or
//! base64 flags; binary outputs go to `--out` files or print as base64.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use clap::{Args, Subcommand, ValueEnum};
use kms_proto::convert::WireEnum;
use kms_proto::kms::v1::{
    AsymmetricDecryptRequest, AsymmetricEncryptRequest, AsymmetricSignRequest,
    AsymmetricVerifyRequest, ExportDataKeyRequest, GenerateAndExportDataKeyRequest,
    GenerateDataKeyRequest, GenerateDataKeyWithoutPlaintextRequest, GenerateRandomRequest,
    GetPublicKeyRequest, GetRandomPasswordRequest, KeySpec, ReEncryptRequest,
};
use kms_types::{Algorithm, DataKeySpec};
use serde_json::json;

use crate::args::{self, KeyArg};
use crate::client::{Planes, RpcError};
use crate::crypto::blob_from_file_bytes;
use crate::files::{Access, write};
use crate::output::{self, Format};
use crate::pairs_to_map;

/// Data-plane subcommands beyond encrypt and decrypt.
#[derive(Debug, Subcommand)]
pub(crate) enum CryptoOpsCommand {
    /// Make a data key sealed under a key (GenerateDataKey, or GenerateDataKeyWithoutPlaintext
    /// with --no-plaintext)
    #[command(after_help = "\
Examples:
  kmsctl generate-data-key --key alias/demo --out-blob dk.blob --out-plaintext dk.key
  kmsctl generate-data-key --key alias/demo --bytes 64 --context file=a.txt --json
  kmsctl generate-data-key --key alias/demo --spec AES_128 --no-plaintext --out-blob dk.blob")]
    GenerateDataKey(DataKeyArgs),
    /// Make a data key sealed under a key and encrypted to your RSA public key
    /// (GenerateAndExportDataKey)
    #[command(after_help = "\
Examples:
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out me.pem
  openssl pkey -in me.pem -pubout -out me.pub.pem
  kmsctl generate-and-export-data-key --key alias/demo --public-key me.pub.pem --out-blob dk.blob --out-exported dk.enc")]
    GenerateAndExportDataKey(ExportNewArgs),
    /// Encrypt a sealed data key to your RSA public key (ExportDataKey)
    #[command(
        after_help = "Examples:\n  kmsctl export-data-key --in dk.blob --public-key me.pub.pem --out dk.enc"
    )]
    ExportDataKey(ExportArgs),
    /// Move a ciphertext to another key or encryption context (ReEncrypt)
    #[command(
        after_help = "Examples:\n  kmsctl re-encrypt --in old.blob --key alias/new --from-context v=1 --to-context v=2 --out new.blob"
    )]
    ReEncrypt(ReEncryptArgs),
    /// Encrypt with an RSA key's public half, RSAES-OAEP (AsymmetricEncrypt)
    #[command(
        after_help = "Examples:\n  kmsctl asymmetric-encrypt --key alias/rsa --algorithm RSAES_OAEP_SHA_256 --in secret.txt --out secret.enc"
    )]
    AsymmetricEncrypt(AsymArgs),
    /// Decrypt with an RSA key, RSAES-OAEP (AsymmetricDecrypt); prints the plaintext as is,
    /// like decrypt
    #[command(after_help = "\
Examples:
  kmsctl asymmetric-decrypt --key alias/rsa --algorithm RSAES_OAEP_SHA_256 --in secret.enc --out secret.txt
  kmsctl asymmetric-decrypt --key alias/rsa --algorithm RSAES_OAEP_SHA_256 --in secret.enc --base64")]
    AsymmetricDecrypt(AsymDecryptArgs),
    /// Sign a message's SHA-256 digest (AsymmetricSign); the message is hashed here, or given
    /// as its digest with --message-type digest
    #[command(after_help = "\
Examples:
  kmsctl sign --key alias/ec --algorithm ECDSA_SHA_256 --in release.tar --out release.sig
  openssl dgst -sha256 -verify ec.pem -signature release.sig release.tar
  openssl dgst -sha256 -binary release.tar > release.sha256
  kmsctl sign --key alias/ec --algorithm ECDSA_SHA_256 --message-type digest --in release.sha256 --out release.sig")]
    Sign(SignArgs),
    /// Verify a signature over a message's SHA-256 digest (AsymmetricVerify); exit 1 if invalid
    #[command(after_help = "\
Examples:
  kmsctl verify --key alias/ec --algorithm ECDSA_SHA_256 --in release.tar --signature release.sig
  kmsctl verify --key alias/ec --algorithm ECDSA_SHA_256 --message-type digest --in release.sha256 --signature release.sig")]
    Verify(VerifyArgs),
    /// An asymmetric key's public key as PEM (GetPublicKey), the console's "View Public Key →
    /// Download"
    #[command(after_help = "\
Examples:
  kmsctl get-public-key --key alias/ec --out ec.pem
  kmsctl get-public-key --key key-... --version 2b4c... --out old.pem
  openssl pkey -pubin -in ec.pem -text -noout")]
    GetPublicKey(PublicKeyArgs),
    /// Random bytes from the HSM (GenerateRandom), as base64 or to a file
    #[command(
        after_help = "Examples:\n  kmsctl generate-random --bytes 32\n  kmsctl generate-random --bytes 1024 --out seed.bin"
    )]
    GenerateRandom(RandomArgs),
    /// A random password (GetRandomPassword)
    #[command(
        after_help = "Examples:\n  kmsctl random-password --length 24 --exclude-punctuation --require-each-type"
    )]
    RandomPassword(PasswordArgs),
}

#[derive(Debug, Args)]
pub(crate) struct DataKeyArgs {
    /// The key to seal the data key under (id, alias or ARN)
    #[arg(long, value_name = "KEY", value_parser = args::key_ref)]
    key: String,
    /// Data key size by name: AES_256 or AES_128
    #[arg(long, value_name = "SPEC", value_parser = args::data_key_spec())]
    spec: Option<DataKeySpec>,
    /// Data key size in bytes, 1–1024; wins over --spec [default: 32]
    #[arg(long, value_name = "N", default_value_t = 0, hide_default_value = true)]
    bytes: i32,
    /// Encryption context entry, repeatable
    #[arg(long = "context", value_name = "K=V", value_parser = crate::parse_pair)]
    context: Vec<(String, String)>,
    /// Do not return the plaintext (GenerateDataKeyWithoutPlaintext)
    #[arg(long)]
    no_plaintext: bool,
    /// Write the sealed data key (ciphertext blob) here
    #[arg(long, value_name = "FILE")]
    out_blob: Option<PathBuf>,
    /// Write the plaintext data key here (mode 0600) instead of printing it
    #[arg(long, value_name = "FILE")]
    out_plaintext: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct WrapTo {
    /// Your RSA_2048 public key, PEM or DER SubjectPublicKeyInfo
    #[arg(long, value_name = "FILE")]
    public_key: PathBuf,
    /// RSAES_OAEP_SHA_256 or RSAES_OAEP_SHA_1
    #[arg(long, value_name = "ALGORITHM", default_value = "RSAES_OAEP_SHA_256", value_parser = args::oaep_algorithm())]
    wrapping_algorithm: Algorithm,
}

#[derive(Debug, Args)]
pub(crate) struct ExportNewArgs {
    /// The key to seal the data key under
    #[arg(long, value_name = "KEY", value_parser = args::key_ref)]
    key: String,
    #[command(flatten)]
    wrap: WrapTo,
    /// Data key size in bytes, 1–1024 [default: 32]
    #[arg(long, value_name = "N", default_value_t = 0, hide_default_value = true)]
    bytes: i32,
    /// Encryption context entry, repeatable
    #[arg(long = "context", value_name = "K=V", value_parser = crate::parse_pair)]
    context: Vec<(String, String)>,
    /// Write the sealed data key here
    #[arg(long, value_name = "FILE")]
    out_blob: Option<PathBuf>,
    /// Write the data key encrypted to your public key here
    #[arg(long, value_name = "FILE")]
    out_exported: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    /// The sealed data key: a blob file, raw or base64 (`-` for stdin)
    #[arg(long = "in", value_name = "FILE")]
    input: PathBuf,
    #[command(flatten)]
    wrap: WrapTo,
    /// Encryption context entry, repeatable
    #[arg(long = "context", value_name = "K=V", value_parser = crate::parse_pair)]
    context: Vec<(String, String)>,
    /// Write the exported key here instead of printing it as base64
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct ReEncryptArgs {
    /// The ciphertext blob, raw or base64 (`-` for stdin)
    #[arg(long = "in", value_name = "FILE")]
    input: PathBuf,
    /// The key to seal the ciphertext under from now on (id, alias or ARN; `--to` is the older
    /// name)
    #[arg(long, value_name = "KEY", alias = "to", value_parser = args::key_ref)]
    key: String,
    /// Encryption context the blob was sealed with, repeatable
    #[arg(long = "from-context", value_name = "K=V", value_parser = crate::parse_pair)]
    from_context: Vec<(String, String)>,
    /// Encryption context to seal with, repeatable
    #[arg(long = "to-context", value_name = "K=V", value_parser = crate::parse_pair)]
    to_context: Vec<(String, String)>,
    /// Write the new blob here instead of printing it as base64
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct AsymArgs {
    /// The RSA key (id, alias or ARN)
    #[arg(long, value_name = "KEY", value_parser = args::key_ref)]
    key: String,
    /// Key version [default: the primary version]
    #[arg(long, value_name = "VERSION")]
    version: Option<String>,
    /// RSAES_OAEP_SHA_256 or RSAES_OAEP_SHA_1
    #[arg(long, value_name = "ALGORITHM", value_parser = args::oaep_algorithm())]
    algorithm: Algorithm,
    /// Input file (`-` for stdin)
    #[arg(long = "in", value_name = "FILE")]
    input: PathBuf,
    /// Output file [default: print it: the ciphertext as base64, the plaintext as it is]
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct AsymDecryptArgs {
    #[command(flatten)]
    asym: AsymArgs,
    /// Print the plaintext as base64 (for binary plaintext)
    #[arg(long, conflicts_with = "out")]
    base64: bool,
}

/// `--message-type` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum MessageType {
    /// --in is the message; kmsctl sends its SHA-256 digest
    Raw,
    /// --in is the message's SHA-256 digest, 32 bytes
    Digest,
}

#[derive(Debug, Args)]
pub(crate) struct SignArgs {
    /// The signing key (id, alias or ARN)
    #[arg(long, value_name = "KEY", value_parser = args::key_ref)]
    key: String,
    /// Key version [default: the primary version]
    #[arg(long, value_name = "VERSION")]
    version: Option<String>,
    /// RSA_PSS_SHA_256, RSA_PKCS1_SHA_256 or ECDSA_SHA_256
    #[arg(long, value_name = "ALGORITHM", value_parser = args::signing_algorithm())]
    algorithm: Algorithm,
    /// The message to sign (`-` for stdin); its SHA-256 digest is what is sent
    #[arg(long = "in", value_name = "FILE")]
    input: PathBuf,
    /// What --in holds: the message (raw) or its SHA-256 digest (digest)
    #[arg(long, value_enum, ignore_case = true, default_value_t = MessageType::Raw)]
    message_type: MessageType,
    /// Write the signature here [default: print base64]
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// The key (id, alias or ARN)
    #[arg(long, value_name = "KEY", value_parser = args::key_ref)]
    key: String,
    /// Key version [default: the primary version]
    #[arg(long, value_name = "VERSION")]
    version: Option<String>,
    /// RSA_PSS_SHA_256, RSA_PKCS1_SHA_256 or ECDSA_SHA_256
    #[arg(long, value_name = "ALGORITHM", value_parser = args::signing_algorithm())]
    algorithm: Algorithm,
    /// The signed message (`-` for stdin)
    #[arg(long = "in", value_name = "FILE")]
    input: PathBuf,
    /// What --in holds: the message (raw) or its SHA-256 digest (digest)
    #[arg(long, value_enum, ignore_case = true, default_value_t = MessageType::Raw)]
    message_type: MessageType,
    /// The signature file (raw bytes)
    #[arg(long, value_name = "FILE")]
    signature: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct PublicKeyArgs {
    #[command(flatten)]
    key: KeyArg,
    /// Key version [default: the primary version]
    #[arg(long, value_name = "VERSION")]
    version: Option<String>,
    /// Write the PEM here instead of printing it
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct RandomArgs {
    /// How many bytes, 1–1024 (`--length` is the older name)
    #[arg(long, value_name = "N", alias = "length")]
    bytes: i32,
    /// Write the bytes here instead of printing base64
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct PasswordArgs {
    /// Length, 8–128 [default: 32]
    #[arg(long, value_name = "N", default_value_t = 0, hide_default_value = true)]
    length: i32,
    /// Characters never to use
    #[arg(long, value_name = "CHARS", default_value = "")]
    exclude_characters: String,
    #[arg(long)]
    exclude_lowercase: bool,
    #[arg(long)]
    exclude_uppercase: bool,
    #[arg(long)]
    exclude_numbers: bool,
    #[arg(long)]
    exclude_punctuation: bool,
    /// At least one character of every type not excluded
    #[arg(long)]
    require_each_type: bool,
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).context("cannot read stdin")?;
        return Ok(buf);
    }
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Writes `bytes` to `out` or prints them as base64 (human) / puts them in the JSON object.
fn emit(
    format: Format,
    out: Option<&Path>,
    access: Access,
    field: &str,
    bytes: &[u8],
    mut extra: serde_json::Value,
) -> anyhow::Result<()> {
    if let Some(path) = out {
        write(path, bytes, access)?;
    }
    match format {
        Format::Json => {
            if out.is_none() {
                extra[field] = json!(STANDARD.encode(bytes));
            }
            output::print_json(&extra)
        }
        Format::Human if out.is_none() => {
            output::print_text(&format!("{}\n", STANDARD.encode(bytes)))
        }
        Format::Human => Ok(()),
    }
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).to_vec()
}

/// The digest to sign or verify: of the message in `input`, or read from it.
fn digest(input: &Path, kind: MessageType) -> anyhow::Result<Vec<u8>> {
    let bytes = read(input)?;
    match kind {
        MessageType::Raw => Ok(sha256(&bytes)),
        MessageType::Digest if bytes.len() == 32 => Ok(bytes),
        MessageType::Digest => anyhow::bail!(
            "--message-type digest takes the message's SHA-256 digest, 32 bytes, and {} holds \
             {} bytes; make it with `openssl dgst -sha256 -binary MESSAGE > {}`, or sign the \
             message itself with --message-type raw",
            input.display(),
            bytes.len(),
            input.display()
        ),
    }
}

/// Runs a data-plane subcommand.
pub(crate) async fn run(
    planes: &Planes,
    format: Format,
    command: CryptoOpsCommand,
) -> anyhow::Result<ExitCode> {
    let mut client = planes.data().await?;
    match command {
        CryptoOpsCommand::GenerateDataKey(a) => {
            let key_spec = a.spec.map_or(0, WireEnum::to_wire);
            let context = pairs_to_map(&a.context, "encryption context")?;
            let (key_id, version, blob, plaintext) = if a.no_plaintext {
                let r = client
                    .generate_data_key_without_plaintext(GenerateDataKeyWithoutPlaintextRequest {
                        key_id: a.key,
                        key_spec,
                        number_of_bytes: a.bytes,
                        encryption_context: context,
                        dry_run: false,
                    })
                    .await
                    .map_err(RpcError)?
                    .into_inner();
                (r.key_id, r.key_version_id, r.ciphertext_blob, None)
            } else {
                let r = client
                    .generate_data_key(GenerateDataKeyRequest {
                        key_id: a.key,
                        key_spec,
                        number_of_bytes: a.bytes,
                        encryption_context: context,
                        dry_run: false,
                    })
                    .await
                    .map_err(RpcError)?
                    .into_inner();
                (
                    r.key_id,
                    r.key_version_id,
                    r.ciphertext_blob,
                    Some(r.plaintext),
                )
            };
            if let Some(p) = &a.out_blob {
                write(p, &blob, Access::Public)?;
            }
            if let (Some(p), Some(pt)) = (&a.out_plaintext, &plaintext) {
                write(p, pt, Access::Secret)?;
            }
            let show_plain = plaintext
                .filter(|_| a.out_plaintext.is_none())
                .map(|p| STANDARD.encode(p));
            let show_blob = a.out_blob.is_none().then(|| STANDARD.encode(&blob));
            match format {
                Format::Json => output::print_json(&json!({
                    "key_id": key_id, "key_version_id": version,
                    "ciphertext_blob": show_blob, "plaintext": show_plain,
                }))?,
                Format::Human => {
                    let mut lines = vec![("key_id", key_id), ("key_version_id", version)];
                    if let Some(b) = show_blob {
                        lines.push(("ciphertext_blob", b));
                    }
                    if let Some(p) = show_plain {
                        lines.push(("plaintext", p));
                    }
                    output::print_text(&output::aligned(&lines))?;
                }
            }
        }
        CryptoOpsCommand::GenerateAndExportDataKey(a) => {
            let r = client
                .generate_and_export_data_key(GenerateAndExportDataKeyRequest {
                    key_id: a.key,
                    key_spec: 0,
                    number_of_bytes: a.bytes,
                    encryption_context: pairs_to_map(&a.context, "encryption context")?,
                    public_key: read(&a.wrap.public_key)?,
                    wrapping_algorithm: a.wrap.wrapping_algorithm.to_wire(),
                    wrapping_key_spec: KeySpec::Rsa2048 as i32,
                    dry_run: false,
                })
                .await
                .map_err(RpcError)?
                .into_inner();
            if let Some(p) = &a.out_blob {
                write(p, &r.ciphertext_blob, Access::Public)?;
            }
            if let Some(p) = &a.out_exported {
                write(p, &r.exported_data_key, Access::Public)?;
            }
            let blob = a
                .out_blob
                .is_none()
                .then(|| STANDARD.encode(&r.ciphertext_blob));
            let exported = a
                .out_exported
                .is_none()
                .then(|| STANDARD.encode(&r.exported_data_key));
            match format {
                Format::Json => output::print_json(&json!({
                    "key_id": r.key_id, "key_version_id": r.key_version_id,
                    "ciphertext_blob": blob, "exported_data_key": exported,
                }))?,
                Format::Human => {
                    let mut lines =
                        vec![("key_id", r.key_id), ("key_version_id", r.key_version_id)];
                    if let Some(b) = blob {
                        lines.push(("ciphertext_blob", b));
                    }
                    if let Some(e) = exported {
                        lines.push(("exported_data_key", e));
                    }
                    output::print_text(&output::aligned(&lines))?;
                }
            }
        }
        CryptoOpsCommand::ExportDataKey(a) => {
            let r = client
                .export_data_key(ExportDataKeyRequest {
                    ciphertext_blob: blob_from_file_bytes(read(&a.input)?),
                    encryption_context: pairs_to_map(&a.context, "encryption context")?,
                    public_key: read(&a.wrap.public_key)?,
                    wrapping_algorithm: a.wrap.wrapping_algorithm.to_wire(),
                    wrapping_key_spec: KeySpec::Rsa2048 as i32,
                    dry_run: false,
                })
                .await
                .map_err(RpcError)?
                .into_inner();
            let extra = json!({"key_id": r.key_id, "key_version_id": r.key_version_id});
            emit(
                format,
                a.out.as_deref(),
                Access::Public,
                "exported_data_key",
                &r.exported_data_key,
                extra,
            )?;
        }
        CryptoOpsCommand::ReEncrypt(a) => {
            let r = client
                .re_encrypt(ReEncryptRequest {
                    ciphertext_blob: blob_from_file_bytes(read(&a.input)?),
                    source_encryption_context: pairs_to_map(
                        &a.from_context,
                        "source encryption context",
                    )?,
                    destination_key_id: a.key,
                    destination_encryption_context: pairs_to_map(
                        &a.to_context,
                        "destination encryption context",
                    )?,
                    dry_run: false,
                })
                .await
                .map_err(RpcError)?
                .into_inner();
            let extra = json!({
                "key_id": r.key_id, "key_version_id": r.key_version_id,
                "source_key_id": r.source_key_id, "source_key_version_id": r.source_key_version_id,
            });
            emit(
                format,
                a.out.as_deref(),
                Access::Public,
                "ciphertext_blob",
                &r.ciphertext_blob,
                extra,
            )?;
        }
        CryptoOpsCommand::AsymmetricEncrypt(a) => {
            let r = client
                .asymmetric_encrypt(AsymmetricEncryptRequest {
                    key_id: a.key,
                    key_version_id: a.version.unwrap_or_default(),
                    algorithm: a.algorithm.to_wire(),
                    plaintext: read(&a.input)?,
                    dry_run: false,
                })
                .await
                .map_err(RpcError)?
                .into_inner();
            let extra = json!({"key_id": r.key_id, "key_version_id": r.key_version_id});
            emit(
                format,
                a.out.as_deref(),
                Access::Public,
                "ciphertext_blob",
                &r.ciphertext_blob,
                extra,
            )?;
        }
        CryptoOpsCommand::AsymmetricDecrypt(AsymDecryptArgs { asym: a, base64 }) => {
            let r = client
                .asymmetric_decrypt(AsymmetricDecryptRequest {
                    key_id: a.key,
                    key_version_id: a.version.unwrap_or_default(),
                    algorithm: a.algorithm.to_wire(),
                    ciphertext_blob: read(&a.input)?,
                    dry_run: false,
                })
                .await
                .map_err(RpcError)?
                .into_inner();
            if format == Format::Human && a.out.is_none() && !base64 {
                // As decrypt: the plaintext as it is.
                output::write_stdout(&r.plaintext)?;
            } else {
                let extra = json!({"key_id": r.key_id, "key_version_id": r.key_version_id});
                emit(
                    format,
                    a.out.as_deref(),
                    Access::Secret,
                    "plaintext",
                    &r.plaintext,
                    extra,
                )?;
            }
        }
        CryptoOpsCommand::Sign(a) => {
            let r = client
                .asymmetric_sign(AsymmetricSignRequest {
                    key_id: a.key,
                    key_version_id: a.version.unwrap_or_default(),
                    algorithm: a.algorithm.to_wire(),
                    digest: digest(&a.input, a.message_type)?,
                    dry_run: false,
                })
                .await
                .map_err(RpcError)?
                .into_inner();
            let extra = json!({"key_id": r.key_id, "key_version_id": r.key_version_id});
            emit(
                format,
                a.out.as_deref(),
                Access::Public,
                "signature",
                &r.value,
                extra,
            )?;
        }
        CryptoOpsCommand::Verify(a) => {
            let r = client
                .asymmetric_verify(AsymmetricVerifyRequest {
                    key_id: a.key,
                    key_version_id: a.version.unwrap_or_default(),
                    algorithm: a.algorithm.to_wire(),
                    digest: digest(&a.input, a.message_type)?,
                    value: read(&a.signature)?,
                    dry_run: false,
                })
                .await
                .map_err(RpcError)?
                .into_inner();
            match format {
                Format::Json => output::print_json(&json!({
                    "key_id": r.key_id, "key_version_id": r.key_version_id, "valid": r.value,
                }))?,
                Format::Human => output::print_text(if r.value { "valid\n" } else { "INVALID\n" })?,
            }
            if !r.value {
                return Ok(ExitCode::FAILURE);
            }
        }
        CryptoOpsCommand::GetPublicKey(a) => {
            let r = client
                .get_public_key(GetPublicKeyRequest {
                    key_id: a.key.key,
                    key_version_id: a.version.unwrap_or_default(),
                })
                .await
                .map_err(RpcError)?
                .into_inner();
            if let Some(path) = &a.out {
                write(path, r.public_key.as_bytes(), Access::Public)?;
            }
            match format {
                Format::Json => output::print_json(&json!({
                    "key_id": r.key_id, "key_version_id": r.key_version_id,
                    "public_key": a.out.is_none().then_some(&r.public_key),
                    "out": a.out,
                }))?,
                Format::Human if a.out.is_none() => output::print_text(&r.public_key)?,
                Format::Human => {}
            }
        }
        CryptoOpsCommand::GenerateRandom(a) => {
            let r = client
                .generate_random(GenerateRandomRequest { length: a.bytes })
                .await
                .map_err(RpcError)?
                .into_inner();
            emit(
                format,
                a.out.as_deref(),
                Access::Secret,
                "random",
                &r.random,
                json!({}),
            )?;
        }
        CryptoOpsCommand::RandomPassword(a) => {
            let r = client
                .get_random_password(GetRandomPasswordRequest {
                    password_length: a.length,
                    exclude_characters: a.exclude_characters,
                    exclude_lowercase: a.exclude_lowercase,
                    exclude_uppercase: a.exclude_uppercase,
                    exclude_numbers: a.exclude_numbers,
                    exclude_punctuation: a.exclude_punctuation,
                    require_each_included_type: a.require_each_type,
                })
                .await
                .map_err(RpcError)?
                .into_inner();
            match format {
                Format::Json => output::print_json(&json!({"password": r.password}))?,
                Format::Human => output::print_text(&format!("{}\n", r.password))?,
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
