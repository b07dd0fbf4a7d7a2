//! `kmsctl audit verify FILE`: checks an audit log's chain and names the first problem (an
//! edited, deleted, inserted or reordered line, a line without a valid MAC, or lines cut off
//! the end) by its line number.
//!
//! Without `--plane` it checks offline what needs no key: each line's form and number, and the
//! links between lines. With `--plane control|data` it also has every MAC checked under that
//! plane's key by the control plane's `AuditService` (operators only; the key never leaves the
//! service: only digests and MACs are sent) and checks the log against its latest checkpoint,
//! naming a truncation. Each replica of a plane writes its own log; the checkpoint is the one
//! recorded for this log, named by its first line (`kms_runtime::audit::log_id`), or, when
//! none is, the plane's checkpoint from before logs had an identity.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use kms_proto::kms::v1::{GetAuditCheckpointRequest, VerifyAuditMacsRequest};
use kms_runtime::audit::{self, Checkpoint, MacCheck, Scan, VerifyError};
use kms_runtime::audit_wire;
use serde::Serialize;

use crate::client::{Planes, operator_only};
use crate::output::Format;

/// MAC checks sent per call, well within the request size limit.
const CHECKS_PER_CALL: usize = 500;

/// `kmsctl audit` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Check an audit log's chain; exit 0 with the number of lines verified, exit 1 at the
    /// first problem. With --plane, also check every MAC and the latest checkpoint (operators)
    #[command(after_help = "\
Examples:
  kmsctl audit verify /var/log/kms/control-audit.log
  kmsctl audit verify --plane control /var/log/kms/control-audit.log
  kmsctl audit verify --json --plane data .dev/logs/data-audit.log")]
    Verify(VerifyArgs),
}

/// Options of `kmsctl audit verify`.
#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// The audit log file
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// The plane that wrote the log: check every MAC under its key and the log against the
    /// latest checkpoint recorded for it, through the control plane (operators only)
    #[arg(long, value_name = "PLANE", value_parser = ["control", "data"])]
    plane: Option<String>,
}

#[derive(Debug, Serialize)]
struct CheckpointView {
    /// The log it is of; empty for the plane's checkpoint from before logs had an identity.
    log: String,
    lines: u64,
    time: String,
}

#[derive(Debug, Serialize)]
struct Report {
    file: String,
    /// The file's log identity, from its first line.
    #[serde(skip_serializing_if = "Option::is_none")]
    log: Option<String>,
    ok: bool,
    lines_verified: usize,
    macs_checked: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    checkpoint: Option<CheckpointView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    broken_line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// Has the control plane check `scan`'s MACs and those of the checkpoint of log `log` (or, when
/// none is recorded, of the plane's checkpoint from before logs had an identity) under
/// `plane`'s key; then names the first problem: a MAC that fails before `broken` (the first
/// broken link, if any), `broken`, or the log's difference from the checkpoint.
async fn keyed(
    planes: &Planes,
    plane: &str,
    log: &str,
    scan: &Scan,
    broken: Option<VerifyError>,
) -> anyhow::Result<(Option<Checkpoint>, Result<(), VerifyError>)> {
    let mut client = planes.audit().await?;
    let mut checkpoint = None;
    let mut slots = vec![log];
    if !log.is_empty() {
        slots.push("");
    }
    for slot in slots {
        checkpoint = client
            .get_audit_checkpoint(GetAuditCheckpointRequest {
                plane: plane.to_string(),
                log: slot.to_string(),
            })
            .await
            .map_err(|s| operator_only(s, "audit verify --plane"))?
            .into_inner()
            .checkpoint
            .map(|c| audit_wire::checkpoint_from_wire(Some(&c)))
            .transpose()
            .map_err(|e| anyhow::anyhow!("the control plane sent an unreadable checkpoint: {e}"))?;
        if checkpoint.is_some() {
            break;
        }
    }
    let first_mismatch = |checks: &[MacCheck]| {
        let req = VerifyAuditMacsRequest {
            plane: plane.to_string(),
            checks: audit_wire::checks_to_wire(checks),
        };
        let mut client = client.clone();
        async move {
            let resp = client
                .verify_audit_macs(req)
                .await
                .map_err(|s| operator_only(s, "audit verify --plane"))?;
            Ok::<_, anyhow::Error>(audit_wire::first_mismatch(resp.get_ref()))
        }
    };
    if let Some(cp) = &checkpoint {
        let forged = || VerifyError {
            line: 0,
            reason: format!(
                "the checkpoint at {} does not verify under the {plane} plane's audit key (forged)",
                cp.time
            ),
        };
        let Some(check) = cp.mac_check() else {
            return Ok((checkpoint.clone(), Err(forged())));
        };
        if first_mismatch(&[check]).await?.is_some() {
            return Ok((checkpoint.clone(), Err(forged())));
        }
    }
    for (n, chunk) in scan.checks.chunks(CHECKS_PER_CALL).enumerate() {
        if let Some(i) = first_mismatch(chunk).await? {
            let failure = scan.mac_failure(n * CHECKS_PER_CALL + i);
            return Ok((checkpoint, Err(failure)));
        }
    }
    let against = match (broken, &checkpoint) {
        (Some(err), _) => Err(err),
        (None, Some(cp)) => scan.against(cp).map_err(|mut err| {
            if cp.log.is_empty() {
                err.reason.push_str(
                    " (against the plane's checkpoint from before logs had an identity, which \
                     may be another replica's log)",
                );
            }
            err
        }),
        (None, None) => Ok(()),
    };
    Ok((checkpoint, against))
}

/// Runs an `audit` subcommand.
pub(crate) async fn run(
    planes: &Planes,
    command: AuditCommand,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let AuditCommand::Verify(args) = command;
    let file = args.file.display().to_string();
    let mut report = Report {
        file,
        log: None,
        ok: false,
        lines_verified: 0,
        macs_checked: false,
        checkpoint: None,
        broken_line: None,
        reason: None,
    };
    let (scan, broken) = audit::scan_partial(&args.file);
    report.lines_verified = scan.lines;
    // A first line that names no log is reported by the scan; the plane's old slot is tried.
    report.log = audit::log_id(&args.file).ok().flatten();
    let outcome = match (&args.plane, broken) {
        (_, Some(err)) if err.line == 0 => Err(err),
        (None, Some(err)) => Err(err),
        (None, None) => Ok(()),
        (Some(plane), broken) => {
            let log = report.log.as_deref().unwrap_or_default();
            let (checkpoint, outcome) = keyed(planes, plane, log, &scan, broken).await?;
            report.macs_checked = true;
            report.checkpoint = checkpoint.map(|c| CheckpointView {
                log: c.log,
                lines: c.seq,
                time: c.time,
            });
            outcome
        }
    };
    let code = match outcome {
        Ok(()) => {
            report.ok = true;
            ExitCode::SUCCESS
        }
        Err(err) => {
            // Every line before the first problem holds.
            report.lines_verified = err.line.saturating_sub(1);
            report.broken_line = Some(err.line);
            report.reason = Some(err.reason);
            ExitCode::FAILURE
        }
    };
    match format {
        Format::Json => crate::output::print_json(&report)?,
        Format::Human => match (&report.broken_line, &report.reason) {
            (Some(0), Some(reason)) => eprintln!("error: {reason}"),
            (Some(line), Some(reason)) => {
                eprintln!("{}: line {line}: {reason}", report.file);
                if *line > 1 {
                    eprintln!("lines 1 to {} are intact", line - 1);
                }
            }
            _ => {
                let plane = args.plane.as_deref().unwrap_or_default();
                let detail = match (&report.checkpoint, report.macs_checked) {
                    (_, false) => "the chain's links are intact; MACs and truncation not \
                                   checked (give --plane control or --plane data)"
                        .to_string(),
                    (Some(cp), true) => format!(
                        "every MAC matches the {plane} plane's key; the checkpoint at {} \
                         recorded {} lines{}",
                        cp.time,
                        cp.lines,
                        if cp.log.is_empty() {
                            " (the plane's checkpoint from before logs had an identity)"
                        } else {
                            ""
                        }
                    ),
                    (None, true) => format!(
                        "every MAC matches the {plane} plane's key; no checkpoint is recorded \
                         for this log yet, so truncation is not checked"
                    ),
                };
                println!(
                    "{}: {} lines verified; {detail}",
                    report.file, report.lines_verified
                );
            }
        },
    }
    Ok(code)
}
