//! `kmsctl audit verify FILE`: checks an audit log's hash chain offline and names the first
//! broken link (an edited, deleted, inserted or reordered line) by its line number.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde::Serialize;

use crate::output::Format;

/// `kmsctl audit` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Check an audit log's hash chain; exit 0 with the number of lines verified, exit 1 at the
    /// first broken link
    #[command(after_help = "\
Examples:
  kmsctl audit verify /var/log/kms/control-audit.log
  kmsctl audit verify --json .dev/logs/data-audit.log")]
    Verify(VerifyArgs),
}

/// Options of `kmsctl audit verify`.
#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// The audit log file
    #[arg(value_name = "FILE")]
    file: PathBuf,
}

#[derive(Debug, Serialize)]
struct Report {
    file: String,
    ok: bool,
    lines_verified: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    broken_line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// Runs an `audit` subcommand.
pub(crate) fn run(command: AuditCommand, format: Format) -> anyhow::Result<ExitCode> {
    let AuditCommand::Verify(args) = command;
    let file = args.file.display().to_string();
    let (report, code) = match kms_runtime::audit::verify(&args.file) {
        Ok(n) => (
            Report {
                file,
                ok: true,
                lines_verified: n,
                broken_line: None,
                reason: None,
            },
            ExitCode::SUCCESS,
        ),
        Err(err) => (
            Report {
                file,
                ok: false,
                lines_verified: err.line.saturating_sub(1),
                broken_line: Some(err.line),
                reason: Some(err.reason),
            },
            ExitCode::FAILURE,
        ),
    };
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Human => match (&report.broken_line, &report.reason) {
            (Some(0), Some(reason)) => eprintln!("error: {reason}"),
            (Some(line), Some(reason)) => {
                eprintln!("{}: line {line}: {reason}", report.file);
                if *line > 1 {
                    eprintln!("lines 1 to {} are intact", line - 1);
                }
            }
            _ => println!(
                "{}: {} lines verified; the hash chain is intact",
                report.file, report.lines_verified
            ),
        },
    }
    Ok(code)
}
