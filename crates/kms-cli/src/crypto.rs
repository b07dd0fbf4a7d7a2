//! Cryptography on the data plane: `encrypt` and `decrypt`, and reading ciphertext blobs given
//! as raw bytes or base64.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, general_purpose::STANDARD};
use kms_proto::kms::v1::{DecryptRequest, EncryptRequest};
use serde::Serialize;
use tonic::Status;

use crate::client::{Planes, RpcError, hinted, is_dry_run_success, reason};
use crate::files::{self, Access};
use crate::output::{self, Format};
use crate::{DecryptArgs, EncryptArgs, pairs_to_map};

/// The most plaintext `Encrypt` takes.
const MAX_PLAINTEXT: usize = 6 * 1024;

/// The magic every ciphertext blob starts with.
const BLOB_MAGIC: &[u8] = b"KMS1";

/// Standard alphabet; padding optional when decoding.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

#[derive(Debug, Serialize)]
struct EncryptOutput {
    key_id: String,
    key_version_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    ciphertext_blob: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    out: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct DecryptOutput {
    key_id: String,
    key_version_id: String,
    /// Base64.
    #[serde(skip_serializing_if = "Option::is_none")]
    plaintext: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    out: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct DryRunOutput {
    dry_run: bool,
    would_succeed: bool,
}

/// `kmsctl encrypt`.
pub(crate) async fn encrypt(
    planes: &Planes,
    format: Format,
    args: EncryptArgs,
) -> anyhow::Result<ExitCode> {
    let plaintext = match (&args.plaintext, &args.input) {
        (Some(text), _) => text.as_bytes().to_vec(),
        (None, Some(path)) => read_input(path)?,
        (None, None) => anyhow::bail!("give the plaintext with --plaintext or --in"),
    };
    let request = EncryptRequest {
        key_id: args.key,
        plaintext,
        encryption_context: pairs_to_map(&args.context, "encryption context")?,
        dry_run: args.dry_run,
    };
    let size = request.plaintext.len();
    let mut client = planes.data().await?;
    let response = match client.encrypt(request).await {
        Ok(r) => r.into_inner(),
        Err(status) if too_large(&status, size) => {
            return Err(hinted(
                RpcError(status),
                format!(
                    "encrypt takes at most {MAX_PLAINTEXT} bytes (6 KiB); for large data use \
                     envelope encryption: `kmsctl generate-data-key --key KEY --out-blob \
                     data-key.blob --out-plaintext data-key` makes a data key to encrypt the \
                     data with locally; keep data-key.blob beside the encrypted data and get \
                     the data key back with `kmsctl decrypt --in data-key.blob`"
                ),
            ));
        }
        Err(status) => return rpc_failure(status, args.dry_run, format),
    };
    if args.dry_run {
        return dry_run_done(format);
    }
    if let Some(path) = &args.out {
        files::write(path, &response.ciphertext_blob, Access::Public)?;
    }
    let blob = STANDARD.encode(&response.ciphertext_blob);
    match format {
        Format::Json => output::print_json(&EncryptOutput {
            key_id: response.key_id,
            key_version_id: response.key_version_id,
            ciphertext_blob: args.out.is_none().then_some(blob),
            out: args.out,
        })?,
        Format::Human if args.out.is_none() => output::print_text(&format!("{blob}\n"))?,
        Format::Human => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// `kmsctl decrypt`.
pub(crate) async fn decrypt(
    planes: &Planes,
    format: Format,
    args: DecryptArgs,
) -> anyhow::Result<ExitCode> {
    let blob = match (&args.ciphertext, &args.input) {
        (Some(text), _) => LENIENT
            .decode(strip_whitespace(text.as_bytes()))
            .context("--ciphertext is not valid base64")?,
        (None, Some(path)) => blob_from_file_bytes(read_input(path)?),
        (None, None) => anyhow::bail!("give the ciphertext with --ciphertext or --in"),
    };
    let request = DecryptRequest {
        ciphertext_blob: blob,
        encryption_context: pairs_to_map(&args.context, "encryption context")?,
        dry_run: args.dry_run,
    };
    let mut client = planes.data().await?;
    let response = match client.decrypt(request).await {
        Ok(r) => r.into_inner(),
        Err(status) => return rpc_failure(status, args.dry_run, format),
    };
    if args.dry_run {
        return dry_run_done(format);
    }
    if let Some(path) = &args.out {
        files::write(path, &response.plaintext, Access::Secret)?;
    }
    match format {
        Format::Json => output::print_json(&DecryptOutput {
            key_id: response.key_id,
            key_version_id: response.key_version_id,
            plaintext: args
                .out
                .is_none()
                .then(|| STANDARD.encode(&response.plaintext)),
            out: args.out,
        })?,
        Format::Human if args.out.is_some() => {}
        Format::Human if args.base64 => {
            output::print_text(&format!("{}\n", STANDARD.encode(&response.plaintext)))?;
        }
        Format::Human => output::write_stdout(&response.plaintext)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether `status` refuses a plaintext of `size` bytes for its size.
fn too_large(status: &Status, size: usize) -> bool {
    match reason(status).as_deref() {
        Some("Rejected.RequestTooLarge") => true,
        Some("InvalidParameter.Plaintext") => size > MAX_PLAINTEXT,
        _ => false,
    }
}

/// A failed call; for a dry run, the "would have succeeded" answer is a success.
fn rpc_failure(status: Status, dry_run: bool, format: Format) -> anyhow::Result<ExitCode> {
    if dry_run && is_dry_run_success(&status) {
        return dry_run_done(format);
    }
    Err(RpcError(status).into())
}

fn dry_run_done(format: Format) -> anyhow::Result<ExitCode> {
    match format {
        Format::Json => output::print_json(&DryRunOutput {
            dry_run: true,
            would_succeed: true,
        })?,
        Format::Human => output::print_text("dry run: the request would succeed\n")?,
    }
    Ok(ExitCode::SUCCESS)
}

/// The blob in a file's bytes: base64 text (whitespace ignored) that decodes to something
/// starting with `KMS1`, or else the bytes themselves.
pub(crate) fn blob_from_file_bytes(bytes: Vec<u8>) -> Vec<u8> {
    match LENIENT.decode(strip_whitespace(&bytes)) {
        Ok(decoded) if decoded.starts_with(BLOB_MAGIC) => decoded,
        _ => bytes,
    }
}

fn strip_whitespace(bytes: &[u8]) -> Vec<u8> {
    bytes
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect()
}

/// Reads a file, or stdin for `-`.
fn read_input(path: &Path) -> anyhow::Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("cannot read stdin")?;
        return Ok(buf);
    }
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn blob() -> Vec<u8> {
        let mut b = b"KMS1".to_vec();
        b.extend((0u8..=255).cycle().skip(7).take(60));
        b
    }

    #[test]
    fn base64_files_are_decoded() {
        let raw = blob();
        let b64 = STANDARD.encode(&raw);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b64.clone().into_bytes(), "plain"),
            (format!("{b64}\n").into_bytes(), "trailing newline"),
            (
                format!("  {b64}\r\n\n").into_bytes(),
                "surrounding whitespace",
            ),
            (
                format!("{}\n{}\n", &b64[..40], &b64[40..]).into_bytes(),
                "wrapped lines",
            ),
            (b64.trim_end_matches('=').as_bytes().to_vec(), "no padding"),
        ];
        for (input, name) in cases {
            assert_eq!(blob_from_file_bytes(input), raw, "{name}");
        }
    }

    #[test]
    fn raw_files_are_kept() {
        let raw = blob();
        assert_eq!(blob_from_file_bytes(raw.clone()), raw);
        // Valid base64 that does not decode to a blob stays as it is.
        let text = b"aGVsbG8=".to_vec();
        assert_eq!(blob_from_file_bytes(text.clone()), text);
        // Raw bytes that happen to be base64 text of something else stay raw.
        let ascii = b"KMS1abcd".to_vec();
        assert_eq!(blob_from_file_bytes(ascii.clone()), ascii);
        assert_eq!(blob_from_file_bytes(Vec::new()), Vec::<u8>::new());
    }
}
