//! `kmsctl admin`: operators' work on the service as a whole.
//!
//! - `backup --out FILE` streams a snapshot of the control plane's store from
//!   `AdminService.Backup` (operators only) while the control plane serves, into a new file
//!   beside FILE; it reads the file back whole (format version, entry count, checksum) and
//!   only then puts it in place, mode 0600.
//! - `restore --in FILE` loads a backup into an empty store, with the control plane stopped:
//!   a sled directory (`--dir`), or the store a control plane's config names (`--config`,
//!   sled or etcd). It checks the whole file before writing anything.
//!
//! On a terminal both show their progress on stderr. The file format is
//! `kms_store::backup`'s; `docs/OPERATIONS.md` says how to use them.

use std::fs::File;
use std::io::{BufReader, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::Context;
use clap::{ArgGroup, Args, Subcommand};
use kms_proto::kms::v1::BackupRequest;
use kms_store::backup::{self, BackupError, BackupSummary};
use kms_store::config::{StoreConfig, StoreParams};
use kms_store::{EtcdStore, SledStore, Store};
use serde::{Deserialize, Serialize};

use crate::client::{Planes, RpcError};
use crate::files::{Access, NewFile};
use crate::output::Format;

/// `kmsctl admin` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum AdminCommand {
    /// Back up the control plane's store while it serves (operators)
    ///
    /// Writes a snapshot of every record as of one moment, key material only sealed under the
    /// HSM root key; FILE appears only once the backup has arrived whole and checks out.
    #[command(after_help = "\
Examples:
  kmsctl admin backup --out kms-2025-01-31.kmsbak
  kmsctl admin backup --json --out /var/backups/kms/latest.kmsbak")]
    Backup(BackupArgs),
    /// Load a backup into an empty store, with the control plane stopped
    ///
    /// Checks the whole file first (format version, entry count, checksum) and writes nothing
    /// from a file that fails; refuses a store that holds anything.
    #[command(after_help = "\
Examples:
  kmsctl admin restore --dir /var/lib/kms/control --in kms-2025-01-31.kmsbak
  kmsctl admin restore --config /etc/kms/control.toml --in kms-2025-01-31.kmsbak")]
    Restore(RestoreArgs),
}

/// Options of `kmsctl admin backup`.
#[derive(Debug, Args)]
pub(crate) struct BackupArgs {
    /// File to write the backup to (mode 0600); it appears only once received whole and checked
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

/// Options of `kmsctl admin restore`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").required(true).args(["dir", "config"])))]
pub(crate) struct RestoreArgs {
    /// The control plane's sled directory (its `data_dir`); made if missing, must be empty
    #[arg(long, value_name = "DATA_DIR")]
    dir: Option<PathBuf>,
    /// The control plane's config: restore into the store its `data_dir` or `[store]` names,
    /// sled or etcd (`KMS_*` overrides apply, as for the control plane)
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The backup file
    #[arg(long = "in", value_name = "FILE")]
    input: PathBuf,
}

/// Runs an `admin` subcommand.
pub(crate) async fn run(
    planes: &Planes,
    format: Format,
    command: AdminCommand,
) -> anyhow::Result<ExitCode> {
    match command {
        AdminCommand::Backup(args) => backup_to_file(planes, format, args).await,
        AdminCommand::Restore(args) => tokio::task::spawn_blocking(move || restore(format, args))
            .await
            .context("the restore stopped unexpectedly")?,
    }
}

/// A backup as printed.
#[derive(Debug, Serialize)]
struct BackupView {
    file: String,
    entries: u64,
    bytes: u64,
    layout: u32,
    created: String,
    /// Where it was restored to (restore only).
    #[serde(skip_serializing_if = "Option::is_none")]
    store: Option<String>,
}

impl BackupView {
    fn new(file: &Path, summary: &BackupSummary, store: Option<String>) -> Self {
        let created = UNIX_EPOCH + Duration::from_millis(summary.header.created_ms);
        Self {
            file: file.display().to_string(),
            entries: summary.entries,
            bytes: summary.bytes,
            layout: summary.header.layout,
            created: humantime::format_rfc3339_millis(created).to_string(),
            store,
        }
    }
}

async fn backup_to_file(
    planes: &Planes,
    format: Format,
    args: BackupArgs,
) -> anyhow::Result<ExitCode> {
    let mut client = planes.admin().await?;
    let mut chunks = client
        .backup(BackupRequest {})
        .await
        .map_err(RpcError)?
        .into_inner();
    let mut out = NewFile::create(&args.out, Access::Secret)?;
    let mut progress = Progress::on_terminal();
    let mut received = 0u64;
    let incomplete = || {
        format!(
            "the backup did not arrive whole; {} was not written",
            args.out.display()
        )
    };
    while let Some(chunk) = chunks
        .message()
        .await
        .map_err(RpcError)
        .with_context(incomplete)?
    {
        out.write_all(&chunk.data)?;
        received += chunk.data.len() as u64;
        progress.show(|| format!("received {}", size(received)));
    }
    progress.done();
    let summary = File::open(out.written())
        .map_err(BackupError::from)
        .and_then(|f| backup::verify(BufReader::new(f)))
        .with_context(incomplete)?;
    out.commit()?;
    let view = BackupView::new(&args.out, &summary, None);
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&view)?),
        Format::Human => println!(
            "backup of {} entries ({}, store layout {}, taken {}) written to {}",
            view.entries,
            size(view.bytes),
            view.layout,
            view.created,
            view.file
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// The part of a control plane's config that says where its store is; the rest is ignored.
#[derive(Debug, Deserialize)]
struct StoreSection {
    #[serde(default)]
    data_dir: Option<PathBuf>,
    #[serde(default)]
    store: StoreConfig,
}

fn restore(format: Format, args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let params = match (args.dir, &args.config) {
        (Some(dir), _) => StoreParams::Sled(dir),
        (None, Some(path)) => {
            let section: StoreSection =
                kms_runtime::config::load(Some(path), "KMS_", std::env::vars())?;
            section
                .store
                .params(section.data_dir)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("invalid configuration in {}", path.display()))?
        }
        (None, None) => anyhow::bail!("give --dir or --config: where to restore to"),
    };
    let summary = match &params {
        StoreParams::Sled(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let store = SledStore::open(dir).with_context(|| {
                format!(
                    "cannot open the store in {} (a control plane running on it holds it: stop \
                     it first)",
                    dir.display()
                )
            })?;
            restore_into(&store, &args.input, &params)?
        }
        StoreParams::Etcd(etcd) => {
            let store = EtcdStore::connect(etcd.options()?)
                .with_context(|| format!("cannot open the store: {}", params.describe()))?;
            restore_into(&store, &args.input, &params)?
        }
    };
    let view = BackupView::new(&args.input, &summary, Some(params.describe()));
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&view)?),
        Format::Human => {
            println!(
                "restored {} entries (store layout {}, taken {}) from {} into {}",
                view.entries,
                view.layout,
                view.created,
                view.file,
                params.describe()
            );
            println!(
                "next: start the control plane on it, then restart the data planes so their \
                 caches hold nothing newer than the backup"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn restore_into<S: Store>(
    store: &S,
    input: &Path,
    params: &StoreParams,
) -> anyhow::Result<BackupSummary> {
    let total = std::fs::metadata(input)
        .with_context(|| format!("cannot read {}", input.display()))?
        .len();
    let progress = std::cell::RefCell::new(Progress::on_terminal());
    let mut passes = 0;
    let open = || {
        passes += 1;
        let file = File::open(input)?;
        // The first reading only checks: show how far it got.
        Ok(Counting {
            inner: BufReader::new(file),
            read: 0,
            show: (passes == 1).then_some(|read: u64| {
                progress
                    .borrow_mut()
                    .show(|| format!("checking {} of {}", size(read), size(total)));
            }),
        })
    };
    let summary = backup::restore(store, open, |written, of| {
        progress
            .borrow_mut()
            .show(|| format!("restored {written} of {of} entries"));
    });
    progress.borrow_mut().done();
    match summary {
        Ok(summary) => Ok(summary),
        Err(BackupError::NotEmpty) => Err(anyhow::anyhow!(
            "{} is not empty: a backup is restored only into an empty store; restore into a new \
             data directory (or an unused etcd prefix), or empty this one first",
            params.describe()
        )),
        Err(e @ BackupError::Store(_)) => Err(anyhow::Error::new(e).context(format!(
            "restoring into {} failed part way: empty it and restore again",
            params.describe()
        ))),
        Err(e) => Err(anyhow::Error::new(e).context(format!(
            "{} cannot be restored; nothing was written",
            input.display()
        ))),
    }
}

/// A reader that counts what passes through it and tells `show`.
struct Counting<R, F> {
    inner: R,
    read: u64,
    show: Option<F>,
}

impl<R: Read, F: FnMut(u64)> Read for Counting<R, F> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if let Some(show) = &mut self.show {
            show(self.read);
        }
        Ok(n)
    }
}

/// One line of progress on stderr, redrawn at most ten times a second, and only when stderr
/// is a terminal.
struct Progress {
    on: bool,
    last: Option<Instant>,
    shown: bool,
}

impl Progress {
    fn on_terminal() -> Self {
        Self {
            on: std::io::stderr().is_terminal(),
            last: None,
            shown: false,
        }
    }

    fn show(&mut self, line: impl FnOnce() -> String) {
        if !self.on
            || self
                .last
                .is_some_and(|t| t.elapsed() < Duration::from_millis(100))
        {
            return;
        }
        self.last = Some(Instant::now());
        self.shown = true;
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r{}\x1b[K", line());
        let _ = err.flush();
    }

    /// Clears the line.
    fn done(&mut self) {
        if self.shown {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
            self.shown = false;
        }
    }
}

/// `bytes` for people: `512 B`, `12.3 KiB`, `4.0 MiB`.
fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn sizes_read_well() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(5 * 1024 * 1024), "5.0 MiB");
    }

    #[test]
    fn the_store_section_is_read_from_a_whole_control_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.toml");
        std::fs::write(
            &path,
            "listen_addr = \"127.0.0.1:7700\"\ndata_dir = \"/var/lib/kms\"\n\
             data_plane_url = \"http://127.0.0.1:7701\"\n[audit]\npath = \"a.log\"\n\
             [store]\nengine = \"etcd\"\n[store.etcd]\nendpoints = [\"http://e:2379\"]\n",
        )
        .unwrap();
        let section: StoreSection =
            kms_runtime::config::load(Some(&path), "KMS_", Vec::new()).unwrap();
        let params = section.store.params(section.data_dir).unwrap();
        assert!(
            matches!(&params, StoreParams::Etcd(e) if e.prefix == "kms/"),
            "{params:?}"
        );
        // An override of the kind the control plane reads applies here too.
        let section: StoreSection = kms_runtime::config::load(
            Some(&path),
            "KMS_",
            vec![("KMS_STORE__ENGINE".to_string(), "sled".to_string())],
        )
        .unwrap();
        let params = section.store.params(section.data_dir).unwrap();
        assert!(
            matches!(&params, StoreParams::Sled(d) if d == Path::new("/var/lib/kms")),
            "{params:?}"
        );
    }

    #[test]
    fn restore_into_a_directory_refuses_a_bad_file_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("backup");
        let mut writer = backup::BackupWriter::new(backup::BackupHeader {
            layout: 3,
            created_ms: 0,
        });
        writer.entry(b"k/1", b"sealed").unwrap();
        let mut bytes = writer.take();
        bytes.extend(writer.finish());
        std::fs::write(&file, &bytes[..bytes.len() - 3]).unwrap();
        let data = dir.path().join("data");
        let args = RestoreArgs {
            dir: Some(data.clone()),
            config: None,
            input: file.clone(),
        };
        let err = format!("{:#}", restore(Format::Human, args).unwrap_err());
        assert!(
            err.contains("truncated") && err.contains("nothing was written"),
            "{err}"
        );
        let store = SledStore::open(&data).unwrap();
        assert!(store.scan_prefix(b"", None, 1).unwrap().is_empty());
        drop(store);

        std::fs::write(&file, &bytes).unwrap();
        let args = RestoreArgs {
            dir: Some(data.clone()),
            config: None,
            input: file.clone(),
        };
        restore(Format::Json, args).unwrap();
        let args = RestoreArgs {
            dir: Some(data.clone()),
            config: None,
            input: file,
        };
        let err = format!("{:#}", restore(Format::Human, args).unwrap_err());
        assert!(err.contains("is not empty"), "{err}");
    }
}
