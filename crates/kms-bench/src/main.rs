//! `kms-bench`: load tests of both planes. `run` measures a scenario against the service,
//! `baseline` measures an in-process bare-gRPC baseline alone, and `compare` alternates the two
//! in one run and reports service/baseline ratios, which do not depend on the machine.

mod baseline;
mod connect;
mod load;
mod report;
mod rss;
mod scenario;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};

use crate::baseline::{HsmArgs, Kind};
use crate::connect::{Clients, ConnectArgs, Identity, Planes, PrincipalHeader};
use crate::load::Shape;
use crate::report::Phase;
use crate::scenario::{Protection, Scenario, Spec, Workload};

const EXAMPLES: &str = "\
Examples:
  # against `kmsctl dev up --dir .dev`: Encrypt 4 KiB, 32 in flight, for 10 s
  kms-bench run encrypt --dev-json .dev/dev.json --concurrency 32 --duration 10s
  # the service against its baseline (echo), 3 rounds each, ratios as JSON
  kms-bench compare encrypt --dev-json .dev/dev.json --concurrency 32 --duration 5s --json
  kms-bench compare sign --spec RSA_2048 --dev-json .dev/dev.json --duration 5s
  kms-bench compare encrypt --protection hsm --dev-json .dev/dev.json --duration 5s
  # open loop: 5,000 requests per second for 30 s, latency from each intended send time
  kms-bench run mixed --mix encrypt=70,decrypt=20,generate-data-key=10 --rate 5000 --duration 30s
  kms-bench run disable-refusal --dev-json .dev/dev.json --requests 200 --plot refusal.svg
  # a baseline alone
  kms-bench baseline aes-gcm --scenario generate-data-key --duration 5s

Exit status: 0 when every request succeeded, 2 when the run completed with failed requests
(the report counts them by gRPC code and reason), 1 when it could not run.";

/// Load tests of the KMS: scenarios against both planes, and in-process bare-gRPC baselines.
#[derive(Debug, Parser)]
#[command(
    version,
    about,
    after_help = EXAMPLES,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Without a subcommand: `run` (the scenario with `--op`)
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Measure a scenario against the service
    #[command(after_help = EXAMPLES)]
    Run(RunArgs),
    /// Alternate a scenario's baseline and the service, and report service/baseline ratios
    ///
    /// Each round runs the baseline, then the service, with the same load. The figures of
    /// each side are the median over the rounds; the ratios are throughput (service /
    /// baseline, higher is better) and p99 latency (service / baseline, lower is better).
    /// create-key and disable-refusal have absolute targets instead (5,000 keys/s; 10 ms p99):
    /// their ratios are to those.
    #[command(after_help = EXAMPLES)]
    Compare(CompareArgs),
    /// Measure a baseline alone, served in this process
    #[command(after_help = EXAMPLES)]
    Baseline(BaselineArgs),
}

#[derive(Debug, Clone, Args)]
struct RunArgs {
    /// The scenario
    #[arg(value_enum)]
    scenario: Option<Scenario>,
    /// The scenario (older spelling of the positional argument)
    #[arg(long = "op", value_enum, hide = true, conflicts_with = "scenario")]
    op: Option<Scenario>,
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(flatten)]
    work: WorkArgs,
    #[command(flatten)]
    load: LoadArgs,
    #[command(flatten)]
    output: OutputArgs,
    /// Sample the resident set of process PID (e.g. the data plane's, `pgrep -f kms-data`)
    /// every second during the run and report its first, last and highest value: for the
    /// memory and soak targets
    #[arg(long, value_name = "PID")]
    rss_of: Option<u32>,
}

#[derive(Debug, Clone, Args)]
struct CompareArgs {
    /// The scenario
    #[arg(value_enum)]
    scenario: Scenario,
    /// Rounds of baseline then service
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,
    /// The baseline [default: the scenario's, as the targets pair them: echo for encrypt,
    /// decrypt, re-encrypt, describe-key and mixed; aes-gcm for generate-data-key;
    /// ecdsa-p256/rsa-2048/... for sign, verify and asymmetric-decrypt by --spec;
    /// pkcs11-aes-gcm for symmetric scenarios with --protection hsm]
    #[arg(long, value_enum)]
    baseline: Option<Kind>,
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(flatten)]
    work: WorkArgs,
    #[command(flatten)]
    load: LoadArgs,
    #[command(flatten)]
    output: OutputArgs,
    #[command(flatten)]
    hsm: HsmArgs,
}

#[derive(Debug, Clone, Args)]
struct BaselineArgs {
    /// The baseline
    #[arg(value_enum)]
    kind: Kind,
    /// The requests to send it
    #[arg(long, value_enum, default_value_t = Scenario::Encrypt)]
    scenario: Scenario,
    /// HTTP/2 connections to the baseline
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    connections: u16,
    /// `dev.json` of `kmsctl dev up`, for the HSM baseline's token
    #[arg(long, value_name = "FILE")]
    dev_json: Option<PathBuf>,
    #[command(flatten)]
    work: WorkArgs,
    #[command(flatten)]
    load: LoadArgs,
    #[command(flatten)]
    output: OutputArgs,
    #[command(flatten)]
    hsm: HsmArgs,
}

#[derive(Debug, Clone, Args)]
struct WorkArgs {
    /// Plaintext bytes of encrypt, decrypt and re-encrypt (1–6144)
    #[arg(long, value_name = "BYTES", default_value_t = 4096)]
    payload: usize,
    /// Key spec of sign, verify and asymmetric-decrypt [default: EC_P256; RSA_2048 for
    /// asymmetric-decrypt], and of create-key [default: Aliyun_AES_256]
    #[arg(long, value_enum)]
    spec: Option<Spec>,
    /// Software- or HSM-protected keys
    #[arg(long, value_enum, default_value_t = Protection::Software)]
    protection: Protection,
    /// Weights of `mixed`: SCENARIO=WEIGHT,...
    #[arg(long, value_name = "MIX", value_parser = scenario::parse_mix,
          default_value = "encrypt=70,decrypt=20,generate-data-key=10")]
    mix: scenario::Mix,
    /// Use this existing symmetric key (id, alias or ARN) instead of creating one; it is not
    /// deleted afterwards
    #[arg(long, value_name = "KEY", conflicts_with = "keys")]
    key: Option<String>,
    /// Spread encrypt, generate-data-key and describe-key over this many keys made for the
    /// run (request i uses key i mod N), e.g. to read the data plane's memory with N keys
    /// cached
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    keys: u32,
    /// KMS instance to create the run's keys in [default: dev.json's when it has room, else a
    /// new one made as the operator]
    #[arg(long, value_name = "INSTANCE_ID")]
    instance: Option<String>,
    /// Keep the keys the run created instead of scheduling their deletion (7 days)
    #[arg(long)]
    keep_keys: bool,
}

#[derive(Debug, Clone, Args)]
struct LoadArgs {
    /// Closed loop: requests in flight [default: 16]. With --rate: the most in flight at once
    /// [default: 1024]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    concurrency: Option<u32>,
    /// Open loop: requests per second, each one's latency measured from when it was due
    #[arg(long, value_name = "PER_SECOND")]
    rate: Option<f64>,
    /// Stop after this long, e.g. 10s or 1m [default: none; with neither bound, 2000 requests]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Stop after this many requests (per phase)
    #[arg(long, value_name = "N")]
    requests: Option<u64>,
}

#[derive(Debug, Clone, Args)]
struct OutputArgs {
    /// Print the report as JSON on stdout
    #[arg(long)]
    json: bool,
    /// Write an SVG chart of latency by percentile to FILE
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = s.trim().split_at(
        s.trim()
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.trim().len()),
    );
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 10s, 500ms or 2m"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1e3,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: the unit must be ms, s, m or h")),
    };
    if !(secs > 0.0 && secs.is_finite()) {
        return Err(format!("{s:?} must be longer than zero"));
    }
    Ok(Duration::from_secs_f64(secs))
}

impl LoadArgs {
    fn shape(&self) -> Result<Shape> {
        if let Some(r) = self.rate
            && !(r > 0.0 && r.is_finite())
        {
            bail!("--rate must be a positive number of requests per second");
        }
        let requests = match (self.requests, self.duration) {
            (None, None) => Some(2000),
            (r, _) => r,
        };
        if requests == Some(0) {
            bail!("--requests must be at least 1");
        }
        let default = if self.rate.is_some() { 1024 } else { 16 };
        Ok(Shape {
            concurrency: self.concurrency.map(|c| c as usize).unwrap_or(default),
            rate: self.rate,
            requests,
            duration: self.duration,
        })
    }

    fn json(&self, shape: &Shape) -> Value {
        json!({
            "mode": if shape.rate.is_some() { "open" } else { "closed" },
            "concurrency": shape.concurrency,
            "rate": shape.rate,
            "requests": shape.requests,
            "duration_s": shape.duration.map(|d| d.as_secs_f64()),
        })
    }
}

impl WorkArgs {
    fn workload(&self, scenario: Scenario, shape: &Shape, passes: u32) -> Workload {
        Workload {
            scenario,
            payload: self.payload,
            spec: self.spec,
            protection: self.protection,
            mix: if scenario == Scenario::Mixed {
                self.mix.0.clone()
            } else {
                Vec::new()
            },
            key: self.key.clone(),
            keys: self.keys as usize,
            instance: self.instance.clone(),
            keep_keys: self.keep_keys,
            concurrency: shape.concurrency,
            requests: shape.requests,
            passes,
        }
    }
}

fn workload_json(work: &Workload) -> Value {
    json!({
        "scenario": work.scenario.name(),
        "payload_bytes": work.payload,
        "spec": work.spec_for(work.parts().first().copied().unwrap_or(work.scenario)).name(),
        "protection": match work.protection { Protection::Software => "software", Protection::Hsm => "hsm" },
        "mix": work.mix.iter().map(|(s, w)| (s.name().to_string(), json!(w))).collect::<serde_json::Map<_, _>>(),
    })
}

/// The SOFTHSM2_CONF this invocation needs, when it starts the HSM baseline.
fn softhsm_conf(cli: &Cli) -> Option<PathBuf> {
    let (hsm, dev) = match &cli.command {
        Some(Command::Compare(a)) => (&a.hsm, a.connect.dev_json.as_ref()),
        Some(Command::Baseline(a)) => (&a.hsm, a.dev_json.as_ref()),
        _ => return None,
    };
    let dir = dev.and_then(|d| d.parent().map(|p| p.to_path_buf()));
    hsm.clone()
        .with_dev_dir(dir.as_deref())
        .softhsm_conf
        .filter(|p| p.exists())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The PKCS#11 module reads SOFTHSM2_CONF when it loads; this process cannot change its own
    // environment safely once threads run, so it starts itself again with the variable set.
    if let Some(conf) = softhsm_conf(&cli)
        && std::env::var_os("SOFTHSM2_CONF").as_deref() != Some(conf.as_os_str())
    {
        use std::os::unix::process::CommandExt;
        let exe = std::env::current_exe();
        if let Ok(exe) = exe {
            let err = std::process::Command::new(exe)
                .args(std::env::args_os().skip(1))
                .env("SOFTHSM2_CONF", &conf)
                .exec();
            eprintln!(
                "error: cannot start again with SOFTHSM2_CONF={}: {err}",
                conf.display()
            );
            return ExitCode::FAILURE;
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Some(Command::Run(a)) => run(a).await,
            Some(Command::Compare(a)) => compare(a).await,
            Some(Command::Baseline(a)) => baseline_alone(a).await,
            None => run(cli.run).await,
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Channels and clients of both planes.
async fn connect(planes: &Planes) -> Result<Clients> {
    let data = planes.data_channels().await?;
    let control = planes.control_channels().await?;
    planes.clients(&data, &control)
}

/// Clients of a baseline server at `addr`, over `connections` channels.
async fn baseline_clients(addr: std::net::SocketAddr, connections: usize) -> Result<Clients> {
    let url = format!("http://{addr}");
    let mut channels = Vec::new();
    for _ in 0..connections.max(1) {
        channels.push(
            connect::endpoint(&url)?
                .connect()
                .await
                .with_context(|| format!("cannot reach the baseline at {url}"))?,
        );
    }
    let planes = Planes {
        control: url.clone(),
        data: url,
        caller: Identity {
            principal: None,
            tls: None,
        },
        operator: None,
        dev: None,
        connections,
        account: None,
    };
    let _ = PrincipalHeader::none();
    planes.clients(&channels, &channels)
}

fn write_plot(path: &std::path::Path, title: &str, phases: &[&Phase]) -> Result<()> {
    std::fs::write(path, report::svg(title, phases))
        .with_context(|| format!("cannot write the chart to {}", path.display()))
}

async fn run(args: RunArgs) -> Result<bool> {
    let scenario = args.scenario.or(args.op).unwrap_or(Scenario::Encrypt);
    let shape = args.load.shape()?;
    if scenario == Scenario::DisableRefusal && shape.rate.is_some() {
        bail!("disable-refusal runs closed loop only: each worker cycles its own key");
    }
    let work = args.work.workload(scenario, &shape, 1);
    work.check()?;
    let planes = Planes::resolve(&args.connect)?;
    let clients = connect(&planes).await?;
    let prepared = Arc::new(scenario::prepare(&planes, &clients, &work).await?);
    let sampler = match args.rss_of {
        Some(pid) => Some(rss::Sampler::start(pid)?),
        None => None,
    };
    let measured = load::run(scenario.name(), &shape, prepared.call(clients.clone())).await;
    let rss = match sampler {
        Some(s) => Some(s.stop().await),
        None => None,
    };
    let phase = Phase {
        target: "service".into(),
        measured,
    };
    let (created, scheduled, cleanup_error) = clean_up(&prepared, &clients, work.keep_keys).await;
    if args.output.json {
        let mut out = phase.json();
        if let (Some(o), Value::Object(w)) = (out.as_object_mut(), workload_json(&work)) {
            o.extend(w);
            o.insert("load".into(), args.load.json(&shape));
            o.insert("connections".into(), json!(planes.connections));
            o.insert("instance".into(), json!(prepared.instance));
            o.insert("keys_created".into(), json!(created));
            o.insert("keys_scheduled_for_deletion".into(), json!(scheduled));
            if let Some(r) = &rss {
                o.insert("rss".into(), r.json());
            }
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "{} ({}, {} connection(s), {})",
            scenario,
            describe_shape(&shape),
            planes.connections,
            describe_work(&work)
        );
        report::print_table(&[&phase]);
        if let Some(r) = &rss {
            println!("{}", r.line());
        }
        if created > 0 {
            println!("keys created: {created}, scheduled for deletion: {scheduled}");
        }
    }
    if let Some(e) = cleanup_error {
        eprintln!("warning: scheduling the run's keys for deletion failed: {e}");
    }
    if let Some(path) = &args.output.plot {
        write_plot(path, &format!("kms-bench {scenario}"), &[&phase])?;
    }
    Ok(phase.measured.errors == 0)
}

async fn clean_up(
    prepared: &scenario::Run,
    clients: &Clients,
    keep: bool,
) -> (usize, usize, Option<String>) {
    let created = prepared.created().len();
    if keep || created == 0 {
        return (created, 0, None);
    }
    let (scheduled, error) = prepared.clean_up(clients).await;
    (created, scheduled, error)
}

fn describe_shape(shape: &Shape) -> String {
    let bound = match (shape.requests, shape.duration) {
        (Some(r), Some(d)) => format!("{r} requests or {:.1?}", d),
        (Some(r), None) => format!("{r} requests"),
        (None, Some(d)) => format!("{:.1?}", d),
        (None, None) => "unbounded".into(),
    };
    match shape.rate {
        Some(r) => format!(
            "open loop at {r}/s, at most {} in flight, {bound}",
            shape.concurrency
        ),
        None => format!("closed loop, {} in flight, {bound}", shape.concurrency),
    }
}

fn describe_work(work: &Workload) -> String {
    let mut parts = vec![format!(
        "{} keys",
        match work.protection {
            Protection::Software => "software",
            Protection::Hsm => "HSM",
        }
    )];
    if work.parts().iter().any(|s| {
        matches!(
            s,
            Scenario::Encrypt | Scenario::Decrypt | Scenario::ReEncrypt
        )
    }) {
        parts.push(format!("{} B payload", work.payload));
    }
    if work.parts().iter().any(|s| {
        matches!(
            s,
            Scenario::Sign | Scenario::Verify | Scenario::AsymmetricDecrypt | Scenario::CreateKey
        )
    }) {
        parts.push(work.spec_for(work.parts()[0]).name().to_string());
    }
    parts.join(", ")
}

/// The median of `values` (the mean of the middle two for an even count).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return 0.0;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Absolute targets of the scenarios without a baseline: (keys per second, p99 ms).
fn absolute_target(scenario: Scenario) -> (Option<f64>, Option<f64>) {
    match scenario {
        Scenario::CreateKey => (Some(5000.0), None),
        Scenario::DisableRefusal => (None, Some(10.0)),
        _ => (None, None),
    }
}

async fn compare(args: CompareArgs) -> Result<bool> {
    let scenario = args.scenario;
    let shape = args.load.shape()?;
    if scenario == Scenario::DisableRefusal && shape.rate.is_some() {
        bail!("disable-refusal runs closed loop only: each worker cycles its own key");
    }
    let work = args.work.workload(scenario, &shape, args.rounds);
    work.check()?;
    let kind = match args.baseline {
        Some(k) => {
            if matches!(scenario, Scenario::CreateKey | Scenario::DisableRefusal) {
                bail!("{scenario} has an absolute target, not a baseline: leave out --baseline");
            }
            Some(k)
        }
        None => Kind::for_scenario(scenario, work.protection, work.spec_for(work.parts()[0]))?,
    };
    let planes = Planes::resolve(&args.connect)?;
    let clients = connect(&planes).await?;
    let prepared = Arc::new(scenario::prepare(&planes, &clients, &work).await?);
    let hsm = args
        .hsm
        .clone()
        .with_dev_dir(planes.dev.as_ref().map(|d| d.dir.as_path()));
    let server = match kind {
        Some(k) => {
            Some(baseline::start(k, work.payload, prepared.templates.clone(), Some(&hsm)).await?)
        }
        None => None,
    };
    let outcome =
        compare_rounds(&args, &shape, &planes, &clients, &prepared, server.as_ref()).await;
    drop(server);
    let (created, scheduled, cleanup_error) = clean_up(&prepared, &clients, work.keep_keys).await;
    if let Some(e) = &cleanup_error {
        eprintln!("warning: scheduling the run's keys for deletion failed: {e}");
    }
    let (baseline_rounds, service_rounds) = outcome?;

    let svc_tp = median(
        service_rounds
            .iter()
            .map(|p| p.measured.throughput())
            .collect(),
    );
    let svc_p99 = median(service_rounds.iter().map(Phase::p99_ms).collect());
    let (ratio_tp, ratio_p99, against) = match kind {
        Some(k) => {
            let bl_tp = median(
                baseline_rounds
                    .iter()
                    .map(|p| p.measured.throughput())
                    .collect(),
            );
            let bl_p99 = median(baseline_rounds.iter().map(Phase::p99_ms).collect());
            (
                Some(svc_tp / bl_tp.max(1e-9)),
                Some(svc_p99 / bl_p99.max(1e-9)),
                json!({"baseline": k.name(), "per_second": bl_tp, "p99_ms": bl_p99}),
            )
        }
        None => {
            let (tp, p99) = absolute_target(scenario);
            (
                tp.map(|t| svc_tp / t),
                p99.map(|t| svc_p99 / t),
                json!({"absolute_target": {"per_second": tp, "p99_ms": p99}}),
            )
        }
    };
    let errors: u64 = baseline_rounds
        .iter()
        .chain(&service_rounds)
        .map(|p| p.measured.errors)
        .sum();

    if args.output.json {
        let mut out = json!({
            "statistic": "median over rounds",
            "rounds": args.rounds,
            "baseline": kind.map(Kind::name),
            "against": against,
            "service": {
                "per_second": svc_tp,
                "p99_ms": svc_p99,
                "rounds": service_rounds.iter().map(Phase::json).collect::<Vec<_>>(),
            },
            "baseline_rounds": baseline_rounds.iter().map(Phase::json).collect::<Vec<_>>(),
            "ratio": {"throughput": ratio_tp, "p99": ratio_p99},
            "errors": errors,
            "load": args.load.json(&shape),
            "connections": planes.connections,
            "instance": prepared.instance,
            "keys_created": created,
            "keys_scheduled_for_deletion": scheduled,
        });
        if let (Some(o), Value::Object(w)) = (out.as_object_mut(), workload_json(&work)) {
            o.extend(w);
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "{} against {} ({}, {} connection(s), {}; {} rounds, median)",
            scenario,
            kind.map(Kind::name).unwrap_or("its absolute target"),
            describe_shape(&shape),
            planes.connections,
            describe_work(&work),
            args.rounds
        );
        let phases: Vec<&Phase> = baseline_rounds
            .iter()
            .zip(&service_rounds)
            .flat_map(|(b, s)| [b, s])
            .chain(if kind.is_none() {
                service_rounds.iter().collect::<Vec<_>>()
            } else {
                Vec::new()
            })
            .collect();
        report::print_table(&phases);
        match (kind, ratio_tp, ratio_p99) {
            (Some(k), Some(tp), Some(p99)) => println!(
                "service / {k}: throughput {tp:.3}×, p99 latency {p99:.3}× (medians over {} rounds)",
                args.rounds
            ),
            _ => {
                if let Some(tp) = ratio_tp {
                    println!("service: {svc_tp:.0}/s = {tp:.3}× the target of 5,000/s");
                }
                if let Some(p99) = ratio_p99 {
                    println!("service: p99 {svc_p99:.3} ms = {p99:.3}× the target of 10 ms");
                }
            }
        }
    }
    if let Some(path) = &args.output.plot {
        // The last round of each side.
        let mut last: Vec<&Phase> = Vec::new();
        if let Some(b) = baseline_rounds.last() {
            last.push(b);
        }
        if let Some(s) = service_rounds.last() {
            last.push(s);
        }
        write_plot(path, &format!("kms-bench compare {scenario}"), &last)?;
    }
    Ok(errors == 0)
}

async fn compare_rounds(
    args: &CompareArgs,
    shape: &Shape,
    planes: &Planes,
    clients: &Clients,
    prepared: &Arc<scenario::Run>,
    server: Option<&baseline::Server>,
) -> Result<(Vec<Phase>, Vec<Phase>)> {
    let baseline = match server {
        Some(s) => Some((s.kind, baseline_clients(s.addr, planes.connections).await?)),
        None => None,
    };
    let mut baseline_rounds = Vec::new();
    let mut service_rounds = Vec::new();
    for round in 1..=args.rounds {
        if let Some((kind, bc)) = &baseline {
            let label = format!("round {round}: {kind}");
            let measured = load::run(&label, shape, prepared.call(bc.clone())).await;
            baseline_rounds.push(Phase {
                target: kind.name().to_string(),
                measured,
            });
        }
        let label = format!("round {round}: service");
        let measured = load::run(&label, shape, prepared.call(clients.clone())).await;
        service_rounds.push(Phase {
            target: "service".into(),
            measured,
        });
    }
    Ok((baseline_rounds, service_rounds))
}

async fn baseline_alone(args: BaselineArgs) -> Result<bool> {
    let shape = args.load.shape()?;
    let work = args.work.workload(args.scenario, &shape, 1);
    let prepared = Arc::new(scenario::offline(&work)?);
    let dev_dir = args
        .dev_json
        .as_ref()
        .and_then(|d| d.parent().map(|p| p.to_path_buf()));
    let hsm = args.hsm.clone().with_dev_dir(dev_dir.as_deref());
    let server = baseline::start(
        args.kind,
        work.payload,
        baseline::synthetic_templates(work.payload),
        Some(&hsm),
    )
    .await?;
    let clients = baseline_clients(server.addr, usize::from(args.connections)).await?;
    let measured = load::run(args.kind.name(), &shape, prepared.call(clients)).await;
    drop(server);
    let phase = Phase {
        target: args.kind.name().into(),
        measured,
    };
    if args.output.json {
        let mut out = phase.json();
        if let (Some(o), Value::Object(w)) = (out.as_object_mut(), workload_json(&work)) {
            o.extend(w);
            o.insert("load".into(), args.load.json(&shape));
            o.insert("connections".into(), json!(args.connections));
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "baseline {} with {} requests ({})",
            args.kind,
            args.scenario,
            describe_shape(&shape)
        );
        report::print_table(&[&phase]);
    }
    if let Some(path) = &args.output.plot {
        write_plot(
            path,
            &format!("kms-bench baseline {}", args.kind),
            &[&phase],
        )?;
    }
    Ok(phase.measured.errors == 0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_flag_has_help() {
        fn walk(cmd: &clap::Command) {
            for arg in cmd.get_arguments() {
                if arg.is_hide_set() || ["help", "version"].contains(&arg.get_id().as_str()) {
                    continue;
                }
                assert!(
                    arg.get_help().is_some(),
                    "{} --{} has no help",
                    cmd.get_name(),
                    arg.get_id()
                );
            }
            for sub in cmd.get_subcommands() {
                walk(sub);
            }
        }
        walk(&Cli::command());
    }

    #[test]
    fn older_invocation_still_parses() {
        let cli = Cli::try_parse_from([
            "kms-bench",
            "--principal",
            "acs:ram::1234567890123456:root",
            "--op",
            "describe-key",
            "--requests",
            "40",
        ])
        .unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.run.op, Some(Scenario::DescribeKey));
        let cli =
            Cli::try_parse_from(["kms-bench", "compare", "sign", "--spec", "RSA_2048"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Compare(_))));
    }

    #[test]
    fn durations_and_medians() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("ten").is_err());
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn scenarios_map_to_the_targets_baselines() {
        let k = |s, p, spec| Kind::for_scenario(s, p, spec).unwrap();
        use Protection::*;
        assert_eq!(
            k(Scenario::Encrypt, Software, Spec::Aes256),
            Some(Kind::Echo)
        );
        assert_eq!(
            k(Scenario::DescribeKey, Software, Spec::Aes256),
            Some(Kind::Echo)
        );
        assert_eq!(
            k(Scenario::GenerateDataKey, Software, Spec::Aes256),
            Some(Kind::AesGcm)
        );
        assert_eq!(
            k(Scenario::Sign, Software, Spec::EcP256),
            Some(Kind::EcdsaP256)
        );
        assert_eq!(
            k(Scenario::Sign, Software, Spec::Rsa2048),
            Some(Kind::Rsa2048)
        );
        assert_eq!(
            k(Scenario::Encrypt, Hsm, Spec::Aes256),
            Some(Kind::Pkcs11AesGcm)
        );
        assert_eq!(k(Scenario::CreateKey, Software, Spec::Aes256), None);
        assert!(Kind::for_scenario(Scenario::Sign, Hsm, Spec::EcP256).is_err());
    }
}
