//! Bring your own key and key association on the control plane: `get-parameters-for-import`,
//! `import-key-material`, `delete-key-material` and `check-association`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use base64::Engine;
use clap::{Args, Subcommand};
use kms_proto::convert::WireEnum;
use kms_proto::kms::v1::{
    CheckKeyAssociationRequest, CheckKeyAssociationResponse, DeleteKeyMaterialRequest,
    GetParametersForImportRequest, GetParametersForImportResponse, ImportKeyMaterialRequest,
};
use kms_types::{Algorithm, KeySpec};
use serde::Serialize;

use crate::args::{self, KeyArg};
use crate::client::{Planes, RpcError};
use crate::files::{self, Access};
use crate::output::{Format, aligned, print_done, print_json, print_text, rfc3339, table};

/// Import and association subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum ImportCommand {
    /// Get a token and a one-time RSA_2048 public key to wrap key material with
    /// (GetParametersForImport)
    ///
    /// For a key created with `--origin external`. Wrap AES material with RSAES_OAEP_SHA_256
    /// or RSAES_OAEP_SHA_1; wrap a private key (PKCS#8 DER) with RSA_AES_KEY_WRAP_SHA_256.
    /// The token and the public key are valid for 24 hours and import once. PKCS#1 v1.5
    /// wrapping is not offered (docs/IMPORT.md says why).
    #[command(after_help = "\
Examples:
  kmsctl get-parameters-for-import --key alias/byok --wrapping-algorithm RSAES_OAEP_SHA_256 \\
      --public-key-out import.der
  openssl rand -out aes.bin 32
  openssl pkeyutl -encrypt -pubin -keyform DER -inkey import.der -in aes.bin -out wrapped.bin \\
      -pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha256 -pkeyopt rsa_mgf1_md:sha256")]
    GetParametersForImport(ParametersArgs),
    /// Import wrapped key material into a key waiting for it (ImportKeyMaterial)
    ///
    /// The key goes from PendingImport to Enabled. A key that held material before takes
    /// only the same material again.
    #[command(after_help = "\
Examples:
  kmsctl import-key-material --key alias/byok --token itk-... --in wrapped.bin
  kmsctl import-key-material --key alias/byok --token itk-... --in wrapped.bin \\
      --expire 2027-01-01T00:00:00Z")]
    ImportKeyMaterial(ImportArgs),
    /// Delete a key's imported material at once (DeleteKeyMaterial)
    ///
    /// The key returns to PendingImport; crypto calls are refused until the same material is
    /// imported again.
    #[command(after_help = "Examples:\n  kmsctl delete-key-material --key alias/byok")]
    DeleteKeyMaterial(KeyArg),
    /// Who used a key in the last 365 days, and when each version last decrypted or verified
    /// (CheckKeyAssociation)
    ///
    /// Before deleting a key or retiring a version, check that nothing still calls it.
    #[command(after_help = "\
Examples:
  kmsctl check-association --key alias/demo
  kmsctl check-association --key key-... --json")]
    CheckAssociation(KeyArg),
}

#[derive(Debug, Args)]
pub(crate) struct ParametersArgs {
    #[command(flatten)]
    key: KeyArg,
    /// RSAES_OAEP_SHA_256, RSAES_OAEP_SHA_1 (AES material) or RSA_AES_KEY_WRAP_SHA_256 (private
    /// keys)
    #[arg(long, value_name = "ALGORITHM", value_parser = args::import_wrapping_algorithm())]
    wrapping_algorithm: Algorithm,
    /// Spec of the import key
    #[arg(long, value_name = "SPEC", default_value = "RSA_2048", value_parser = args::key_spec())]
    wrapping_key_spec: KeySpec,
    /// Write the import public key (DER SubjectPublicKeyInfo) to FILE
    #[arg(long, value_name = "FILE")]
    public_key_out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct ImportArgs {
    #[command(flatten)]
    key: KeyArg,
    /// The import token from get-parameters-for-import
    #[arg(long, value_name = "TOKEN")]
    token: String,
    /// The wrapped key material, raw bytes
    #[arg(long = "in", value_name = "FILE")]
    input: PathBuf,
    /// When the material expires, RFC 3339 (e.g. 2027-01-01T00:00:00Z); the key then returns to
    /// PendingImport
    #[arg(long, value_name = "TIME", value_parser = args::rfc3339_time)]
    expire: Option<prost_types::Timestamp>,
}

/// `get-parameters-for-import` as JSON.
#[derive(Debug, Serialize)]
struct ParametersView {
    key_id: String,
    import_token: String,
    token_expire_time: Option<String>,
    /// Base64 of the DER SubjectPublicKeyInfo.
    public_key: String,
}

impl From<&GetParametersForImportResponse> for ParametersView {
    fn from(p: &GetParametersForImportResponse) -> Self {
        Self {
            key_id: p.key_id.clone(),
            import_token: p.import_token.clone(),
            token_expire_time: p.token_expire_time.as_ref().map(rfc3339),
            public_key: base64::engine::general_purpose::STANDARD.encode(&p.public_key),
        }
    }
}

/// `check-association` as JSON.
#[derive(Debug, Serialize)]
struct AssociationView {
    associations: Vec<CallerView>,
    version_usage: Vec<VersionUseView>,
}

#[derive(Debug, Serialize)]
struct CallerView {
    principal: String,
    operation: String,
    last_called_at: Option<String>,
}

#[derive(Debug, Serialize)]
struct VersionUseView {
    key_version_id: String,
    last_used_at: Option<String>,
}

impl From<&CheckKeyAssociationResponse> for AssociationView {
    fn from(r: &CheckKeyAssociationResponse) -> Self {
        Self {
            associations: r
                .associations
                .iter()
                .map(|a| CallerView {
                    principal: a.principal.clone(),
                    operation: a.operation.clone(),
                    last_called_at: a.last_called_at.as_ref().map(rfc3339),
                })
                .collect(),
            version_usage: r
                .version_usage
                .iter()
                .map(|v| VersionUseView {
                    key_version_id: v.key_version_id.clone(),
                    last_used_at: v.last_used_at.as_ref().map(rfc3339),
                })
                .collect(),
        }
    }
}

impl AssociationView {
    fn text(&self) -> String {
        let dash = |t: &Option<String>| t.clone().unwrap_or_else(|| "never".to_string());
        let callers: Vec<Vec<String>> = self
            .associations
            .iter()
            .map(|a| {
                vec![
                    a.principal.clone(),
                    a.operation.clone(),
                    dash(&a.last_called_at),
                ]
            })
            .collect();
        let versions: Vec<Vec<String>> = self
            .version_usage
            .iter()
            .map(|v| vec![v.key_version_id.clone(), dash(&v.last_used_at)])
            .collect();
        format!(
            "Callers in the last 365 days:\n{}\nVersions, last decrypt or verify:\n{}",
            table(&["PRINCIPAL", "OPERATION", "LAST CALLED"], &callers),
            table(&["KEY VERSION", "LAST USED"], &versions)
        )
    }
}

/// Runs an import or association subcommand.
pub(crate) async fn run(
    planes: &Planes,
    format: Format,
    command: ImportCommand,
) -> anyhow::Result<ExitCode> {
    let mut client = planes.control().await?;
    match command {
        ImportCommand::GetParametersForImport(a) => {
            let p = client
                .get_parameters_for_import(GetParametersForImportRequest {
                    key_id: a.key.key,
                    wrapping_algorithm: a.wrapping_algorithm.to_wire(),
                    wrapping_key_spec: a.wrapping_key_spec.to_wire(),
                })
                .await
                .map_err(RpcError)?
                .into_inner();
            if let Some(path) = &a.public_key_out {
                files::write(path, &p.public_key, Access::Public)?;
            }
            let view = ParametersView::from(&p);
            match format {
                Format::Json => print_json(&view)?,
                Format::Human => {
                    let mut lines = vec![
                        ("key_id", view.key_id.clone()),
                        ("import_token", view.import_token.clone()),
                        (
                            "token_expire_time",
                            view.token_expire_time.clone().unwrap_or_default(),
                        ),
                    ];
                    if let Some(path) = &a.public_key_out {
                        lines.push(("public_key_out", path.display().to_string()));
                    } else {
                        lines.push(("public_key", view.public_key.clone()));
                    }
                    print_text(&aligned(&lines))?;
                }
            }
        }
        ImportCommand::ImportKeyMaterial(a) => {
            let material = std::fs::read(&a.input)
                .with_context(|| format!("cannot read {}", a.input.display()))?;
            client
                .import_key_material(ImportKeyMaterialRequest {
                    key_id: a.key.key.clone(),
                    import_token: a.token,
                    encrypted_key_material: material,
                    key_material_expire_time: a.expire,
                })
                .await
                .map_err(RpcError)?;
            print_done(
                format,
                &format!("Imported key material into {}.", a.key.key),
                &serde_json::json!({ "key_id": a.key.key, "imported": true }),
            )?;
        }
        ImportCommand::DeleteKeyMaterial(a) => {
            client
                .delete_key_material(DeleteKeyMaterialRequest {
                    key_id: a.key.clone(),
                })
                .await
                .map_err(RpcError)?;
            print_done(
                format,
                &format!(
                    "Deleted the key material of {}; it waits for an import.",
                    a.key
                ),
                &serde_json::json!({ "key_id": a.key, "deleted": true }),
            )?;
        }
        ImportCommand::CheckAssociation(a) => {
            let r = client
                .check_key_association(CheckKeyAssociationRequest { key_id: a.key })
                .await
                .map_err(RpcError)?
                .into_inner();
            let view = AssociationView::from(&r);
            match format {
                Format::Json => print_json(&view)?,
                Format::Human => print_text(&view.text())?,
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use clap::Parser;
    use kms_proto::kms::v1::{KeyAssociation, VersionUsage};

    use super::*;
    use crate::{Cli, Command};

    fn parse(args: &[&str]) -> ImportCommand {
        let cli =
            Cli::try_parse_from(std::iter::once("kmsctl").chain(args.iter().copied())).unwrap();
        let Command::Import(command) = cli.command else {
            panic!("not an import command");
        };
        command
    }

    #[test]
    fn arguments() {
        let ImportCommand::GetParametersForImport(a) = parse(&[
            "get-parameters-for-import",
            "alias/k",
            "--wrapping-algorithm",
            "rsaes_oaep_sha_1",
        ]) else {
            panic!()
        };
        assert_eq!(a.wrapping_algorithm, Algorithm::RsaesOaepSha1);
        assert_eq!(a.wrapping_key_spec, KeySpec::Rsa2048);
        let ImportCommand::ImportKeyMaterial(a) = parse(&[
            "import-key-material",
            "alias/k",
            "--token",
            "itk-1",
            "--in",
            "w.bin",
            "--expire",
            "2030-01-02T03:04:05Z",
        ]) else {
            panic!()
        };
        assert_eq!(a.expire.map(|t| t.seconds), Some(1_893_553_445));
        assert!(
            Cli::try_parse_from([
                "kmsctl",
                "import-key-material",
                "k",
                "--token",
                "t",
                "--in",
                "f",
                "--expire",
                "tomorrow"
            ])
            .is_err()
        );
        assert!(matches!(
            parse(&["check-association", "alias/k"]),
            ImportCommand::CheckAssociation(_)
        ));
    }

    #[test]
    fn association_text() {
        let view = AssociationView::from(&CheckKeyAssociationResponse {
            associations: vec![KeyAssociation {
                principal: "acs:ram::1:user/app".into(),
                operation: "Decrypt".into(),
                last_called_at: Some(prost_types::Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 0,
                }),
            }],
            version_usage: vec![VersionUsage {
                key_version_id: "v1".into(),
                last_used_at: None,
            }],
        });
        let text = view.text();
        assert!(
            text.contains("acs:ram::1:user/app  Decrypt    2023-11-14T22:13:20Z"),
            "{text}"
        );
        assert!(text.contains("v1           never"), "{text}");
    }
}
