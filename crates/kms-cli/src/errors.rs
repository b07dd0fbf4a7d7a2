//! How kmsctl reports a failure on stderr: `error: ...` (and `hint: ...`) lines for people, or,
//! with `--json` or `--output json|yaml`, one document `{"error": {...}}` naming the gRPC code,
//! the reason code, the message, the request id and the hint.
//!
//! `code` is the status code the service answered with, `UNAVAILABLE` when a plane could not
//! be reached or the TLS handshake failed, `INVALID_ARGUMENT` for a command line kmsctl
//! refuses, and null for a local failure such as an unreadable file.

use std::process::ExitCode;

use serde::Serialize;

use crate::client::{Hinted, RpcError, TlsFailure, Unreachable, code_name, reason};
use crate::output;

/// The document printed for a failure.
#[derive(Debug, Serialize)]
struct ErrorDoc {
    error: ErrorBody,
}

#[derive(Debug, Default, Serialize)]
struct ErrorBody {
    code: Option<&'static str>,
    reason: Option<String>,
    message: String,
    request_id: Option<String>,
    hint: Option<String>,
}

/// Reports `err` on stderr: as a document when `structured`, else as text.
pub(crate) fn report(err: &anyhow::Error, structured: bool) {
    if structured {
        print_doc(body(err), &format!("error: {err:#}"));
    } else {
        eprintln!("error: {err:#}");
    }
}

/// Reports a command line clap refused and gives the exit code; help and version print as
/// usual. The output format is read from the raw arguments, as clap did not finish.
pub(crate) fn usage(err: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    let structured = wants_document(std::env::args());
    if !structured
        || matches!(
            err.kind(),
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
        )
    {
        err.exit();
    }
    let text = err.render().to_string();
    let message = text
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ")
        .to_string();
    let hint = text
        .lines()
        .skip(1)
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    print_doc(
        ErrorBody {
            code: Some("INVALID_ARGUMENT"),
            message,
            hint: (!hint.is_empty()).then_some(hint),
            ..Default::default()
        },
        &text,
    );
    ExitCode::from(2)
}

/// Whether raw arguments ask for documents: `--json`, `--output json|yaml`.
fn wants_document(args: impl Iterator<Item = String>) -> bool {
    let args: Vec<String> = args.collect();
    let mut yaml = false;
    let mut doc = false;
    for (i, a) in args.iter().enumerate() {
        let value = match a.strip_prefix("--output=") {
            Some(v) => Some(v),
            None if a == "--output" => args.get(i + 1).map(String::as_str),
            None => None,
        };
        match value.map(str::to_ascii_lowercase).as_deref() {
            Some("json") => doc = true,
            Some("yaml") => {
                doc = true;
                yaml = true;
            }
            _ => doc |= a == "--json",
        }
    }
    if yaml {
        output::set_syntax(output::Syntax::Yaml);
    }
    doc
}

fn print_doc(body: ErrorBody, fallback: &str) {
    match output::document(&ErrorDoc { error: body }) {
        Ok(text) => eprint!("{text}"),
        Err(_) => eprintln!("{fallback}"),
    }
}

/// The fields of a failure: from the status the service answered with, or from kmsctl's own
/// connection errors; any other error is its message.
fn body(err: &anyhow::Error) -> ErrorBody {
    let (err, hint) = match err.downcast_ref::<Hinted>() {
        Some(h) => (&h.error, Some(h.hint.clone())),
        None => (err, None),
    };
    if let Some(rpc) = err.downcast_ref::<RpcError>() {
        let status = &rpc.0;
        let reason = reason(status);
        let message = match &reason {
            Some(r) => status
                .message()
                .strip_prefix(r.as_str())
                .and_then(|rest| rest.strip_prefix(": "))
                .unwrap_or(status.message()),
            None => status.message(),
        };
        return ErrorBody {
            code: Some(code_name(status.code())),
            reason,
            message: message.to_string(),
            request_id: rpc.request_id(),
            hint,
        };
    }
    if let Some(u) = err.downcast_ref::<Unreachable>() {
        return ErrorBody {
            code: Some("UNAVAILABLE"),
            message: u.message(),
            hint: Some(u.hint()),
            ..Default::default()
        };
    }
    if let Some(t) = err.downcast_ref::<TlsFailure>() {
        return ErrorBody {
            code: Some("UNAVAILABLE"),
            message: t.message(),
            hint: Some(t.hint()),
            ..Default::default()
        };
    }
    ErrorBody {
        message: format!("{err:#}"),
        hint,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use tonic::{Code, Status};
    use tonic_types::{ErrorDetails, StatusExt};

    use super::*;
    use crate::client::hinted;

    #[test]
    fn statuses_become_fields() {
        let mut status = Status::with_error_details(
            Code::NotFound,
            "the alias does not exist",
            ErrorDetails::with_error_info("Forbidden.AliasNotFound", "kms", []),
        );
        status
            .metadata_mut()
            .insert("x-request-id", "req-1".parse().unwrap());
        let err = hinted(RpcError(status), "list your aliases");
        let v = serde_json::to_value(body(&err)).unwrap();
        assert_eq!(v["code"], "NOT_FOUND");
        assert_eq!(v["reason"], "Forbidden.AliasNotFound");
        assert_eq!(v["message"], "the alias does not exist");
        assert_eq!(v["request_id"], "req-1");
        assert_eq!(v["hint"], "list your aliases");

        let by_message = anyhow::Error::from(RpcError(Status::failed_precondition(
            "Rejected.Disabled: the key is disabled",
        )));
        let v = serde_json::to_value(body(&by_message)).unwrap();
        assert_eq!(v["reason"], "Rejected.Disabled");
        assert_eq!(v["message"], "the key is disabled");

        let local = anyhow::anyhow!("cannot read blob.b64");
        let v = serde_json::to_value(body(&local)).unwrap();
        assert!(v["code"].is_null() && v["message"] == "cannot read blob.b64");
    }

    #[test]
    fn raw_arguments_that_ask_for_documents() {
        let args = |a: &[&str]| {
            a.iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .into_iter()
        };
        assert!(wants_document(args(&["kmsctl", "--json", "x"])));
        assert!(wants_document(args(&["kmsctl", "x", "--output", "JSON"])));
        assert!(wants_document(args(&["kmsctl", "--output=json", "x"])));
        assert!(!wants_document(args(&["kmsctl", "--output", "table", "x"])));
        assert!(!wants_document(args(&["kmsctl", "x"])));
    }
}
