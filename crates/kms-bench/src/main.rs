//! `kms-bench`: drives one operation against a running KMS and, in the same run, the bare gRPC
//! baseline (a `grpc.health.v1` check on the same plane over the same kind of connection), so
//! results read as ratios that do not depend on the machine.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use kms_proto::kms::v1::crypto_service_client::CryptoServiceClient;
use kms_proto::kms::v1::key_management_service_client::KeyManagementServiceClient;
use kms_proto::kms::v1::{
    CreateKeyRequest, DecryptRequest, DescribeKeyRequest, EncryptRequest, GenerateDataKeyRequest,
};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// Load generator for the KMS: one operation against its bare-gRPC baseline.
#[derive(Debug, Parser)]
#[command(
    version,
    about,
    after_help = "Example:\n  kms-bench --principal acs:ram::1234567890123456:root --key alias/demo --op encrypt --requests 5000 --concurrency 32"
)]
struct Args {
    /// Control-plane URL.
    #[arg(
        long,
        env = "KMS_CONTROL_ADDR",
        default_value = "http://127.0.0.1:7700"
    )]
    control: String,
    /// Data-plane URL.
    #[arg(long, env = "KMS_DATA_ADDR", default_value = "http://127.0.0.1:7701")]
    data: String,
    /// Principal ARN to call as (dev identity header).
    #[arg(long, env = "KMS_PRINCIPAL")]
    principal: String,
    /// Key to use (id, alias or ARN); without it the account's default key is created with
    /// alias `alias/kms-bench`, or reused when that alias exists.
    #[arg(long)]
    key: Option<String>,
    /// The operation to measure.
    #[arg(long, value_enum, default_value_t = Op::Encrypt)]
    op: Op,
    /// Requests per phase.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Plaintext size for encrypt and decrypt, in bytes (1–6144).
    #[arg(long, default_value_t = 256)]
    payload: usize,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// KMS instance the keys of `--op create-key` are made in (it needs the quota for
    /// them); its keys are durable writes through the control plane's store.
    #[arg(long, value_name = "INSTANCE_ID")]
    instance: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Op {
    Encrypt,
    Decrypt,
    GenerateDataKey,
    DescribeKey,
    CreateKey,
}

#[derive(Debug, Clone)]
struct As(String);

impl tonic::service::Interceptor for As {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let value = self
            .0
            .parse()
            .map_err(|_| tonic::Status::invalid_argument("principal is not a header value"))?;
        req.metadata_mut().insert("x-kms-principal", value);
        Ok(req)
    }
}

type Crypto = CryptoServiceClient<InterceptedService<Channel, As>>;
type Keys = KeyManagementServiceClient<InterceptedService<Channel, As>>;

/// What one phase measured.
#[derive(Debug)]
struct Phase {
    name: String,
    ok: usize,
    errors: usize,
    first_error: Option<String>,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Phase {
    fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let idx = ((self.latencies.len() - 1) as f64 * p).round() as usize;
        self.latencies[idx.min(self.latencies.len() - 1)]
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "ok": self.ok,
            "errors": self.errors,
            "seconds": self.elapsed.as_secs_f64(),
            "per_second": self.throughput(),
            "p50_ms": self.percentile(0.5).as_secs_f64() * 1e3,
            "p99_ms": self.percentile(0.99).as_secs_f64() * 1e3,
        })
    }
}

async fn run_phase<F, Fut>(name: &str, requests: usize, concurrency: usize, call: F) -> Phase
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), tonic::Status>> + Send + 'static,
{
    use std::io::IsTerminal;
    let interactive = std::io::stderr().is_terminal();
    let call = Arc::new(call);
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (call, next, done) = (Arc::clone(&call), Arc::clone(&next), Arc::clone(&done));
        let name = name.to_string();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let (mut errors, mut first_error) = (0usize, None);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    break;
                }
                let t = Instant::now();
                match call(i).await {
                    Ok(()) => lat.push(t.elapsed()),
                    Err(e) => {
                        errors += 1;
                        first_error
                            .get_or_insert_with(|| format!("{:?}: {}", e.code(), e.message()));
                    }
                }
                let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                if interactive && requests >= 10 && d % (requests / 10) == 0 {
                    eprint!("\r{name}: {d}/{requests}");
                }
            }
            (lat, errors, first_error)
        }));
    }
    let mut phase = Phase {
        name: name.to_string(),
        ok: 0,
        errors: 0,
        first_error: None,
        elapsed: Duration::ZERO,
        latencies: Vec::with_capacity(requests),
    };
    for t in tasks {
        if let Ok((lat, errors, first)) = t.await {
            phase.ok += lat.len();
            phase.latencies.extend(lat);
            phase.errors += errors;
            if phase.first_error.is_none() {
                phase.first_error = first;
            }
        }
    }
    phase.elapsed = start.elapsed();
    phase.latencies.sort_unstable();
    eprintln!(
        "\r{name}: {requests}/{requests} done in {:.2?}",
        phase.elapsed
    );
    phase
}

async fn resolve_key(keys: &mut Keys, wanted: Option<&str>) -> Result<String> {
    if let Some(k) = wanted {
        let meta = keys
            .describe_key(DescribeKeyRequest {
                key_id: k.to_string(),
            })
            .await
            .with_context(|| format!("cannot describe key {k}"))?;
        return Ok(meta
            .into_inner()
            .key_metadata
            .map(|m| m.key_id)
            .unwrap_or_default());
    }
    if let Ok(meta) = keys
        .describe_key(DescribeKeyRequest {
            key_id: "alias/kms-bench".into(),
        })
        .await
    {
        return Ok(meta
            .into_inner()
            .key_metadata
            .map(|m| m.key_id)
            .unwrap_or_default());
    }
    let created = keys
        .create_key(CreateKeyRequest {
            alias: "alias/kms-bench".into(),
            description: "created by kms-bench".into(),
            ..Default::default()
        })
        .await
        .context("cannot create a key for the benchmark (the account may already have its default key: pass --key)")?;
    Ok(created
        .into_inner()
        .key_metadata
        .map(|m| m.key_id)
        .unwrap_or_default())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if !(1..=6144).contains(&args.payload) {
        bail!("--payload must be 1 to 6144 bytes");
    }
    let data = Channel::from_shared(args.data.clone())?
        .connect()
        .await
        .with_context(|| format!("cannot reach the data plane at {}", args.data))?;
    let control = Channel::from_shared(args.control.clone())?
        .connect()
        .await
        .with_context(|| format!("cannot reach the control plane at {}", args.control))?;
    let who = As(args.principal.clone());
    let mut keys: Keys = KeyManagementServiceClient::with_interceptor(control.clone(), who.clone());
    let crypto: Crypto = CryptoServiceClient::with_interceptor(data.clone(), who.clone());
    let key_id = resolve_key(&mut keys, args.key.as_deref()).await?;
    let payload = vec![0x5au8; args.payload];
    let blob = crypto
        .clone()
        .encrypt(EncryptRequest {
            key_id: key_id.clone(),
            plaintext: payload.clone(),
            ..Default::default()
        })
        .await
        .context("warm-up Encrypt failed")?
        .into_inner()
        .ciphertext_blob;

    if args.op == Op::CreateKey && args.instance.is_none() {
        bail!("--op create-key needs --instance: the KMS instance to make the keys in");
    }
    let plane = if matches!(args.op, Op::DescribeKey | Op::CreateKey) {
        control.clone()
    } else {
        data.clone()
    };
    let health = HealthClient::new(plane);
    let baseline = run_phase(
        "baseline (grpc.health.v1 Check)",
        args.requests,
        args.concurrency,
        move |_| {
            let mut h = health.clone();
            async move {
                h.check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map(|_| ())
            }
        },
    )
    .await;

    let (op_name, phase) = match args.op {
        Op::Encrypt => {
            let (c, k, p) = (crypto.clone(), key_id.clone(), payload.clone());
            let phase = run_phase("Encrypt", args.requests, args.concurrency, move |_| {
                let (mut c, k, p) = (c.clone(), k.clone(), p.clone());
                async move {
                    c.encrypt(EncryptRequest {
                        key_id: k,
                        plaintext: p,
                        ..Default::default()
                    })
                    .await
                    .map(|_| ())
                }
            })
            .await;
            ("Encrypt", phase)
        }
        Op::Decrypt => {
            let (c, b) = (crypto.clone(), blob.clone());
            let phase = run_phase("Decrypt", args.requests, args.concurrency, move |_| {
                let (mut c, b) = (c.clone(), b.clone());
                async move {
                    c.decrypt(DecryptRequest {
                        ciphertext_blob: b,
                        ..Default::default()
                    })
                    .await
                    .map(|_| ())
                }
            })
            .await;
            ("Decrypt", phase)
        }
        Op::GenerateDataKey => {
            let (c, k) = (crypto.clone(), key_id.clone());
            let phase = run_phase(
                "GenerateDataKey",
                args.requests,
                args.concurrency,
                move |_| {
                    let (mut c, k) = (c.clone(), k.clone());
                    async move {
                        c.generate_data_key(GenerateDataKeyRequest {
                            key_id: k,
                            ..Default::default()
                        })
                        .await
                        .map(|_| ())
                    }
                },
            )
            .await;
            ("GenerateDataKey", phase)
        }
        Op::DescribeKey => {
            let (c, k) = (keys.clone(), key_id.clone());
            let phase = run_phase("DescribeKey", args.requests, args.concurrency, move |_| {
                let (mut c, k) = (c.clone(), k.clone());
                async move {
                    c.describe_key(DescribeKeyRequest { key_id: k })
                        .await
                        .map(|_| ())
                }
            })
            .await;
            ("DescribeKey", phase)
        }
        Op::CreateKey => {
            let (c, instance) = (keys.clone(), args.instance.clone().unwrap_or_default());
            let phase = run_phase("CreateKey", args.requests, args.concurrency, move |i| {
                let (mut c, instance) = (c.clone(), instance.clone());
                async move {
                    c.create_key(CreateKeyRequest {
                        kms_instance_id: instance,
                        description: format!("kms-bench {i}"),
                        enable_automatic_rotation: Some(false),
                        ..Default::default()
                    })
                    .await
                    .map(|_| ())
                }
            })
            .await;
            ("CreateKey", phase)
        }
    };

    let ratio = phase.throughput() / baseline.throughput().max(1e-9);
    let p50_ratio =
        phase.percentile(0.5).as_secs_f64() / baseline.percentile(0.5).as_secs_f64().max(1e-9);
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "op": op_name,
                "key_id": key_id,
                "requests": args.requests,
                "concurrency": args.concurrency,
                "payload_bytes": args.payload,
                "baseline": baseline.json(),
                "operation": phase.json(),
                "throughput_ratio": ratio,
                "p50_latency_ratio": p50_ratio,
            })
        );
    } else {
        println!(
            "{:<34} {:>8} {:>7} {:>12} {:>9} {:>9}",
            "phase", "ok", "errors", "per second", "p50 ms", "p99 ms"
        );
        for p in [&baseline, &phase] {
            println!(
                "{:<34} {:>8} {:>7} {:>12.0} {:>9.3} {:>9.3}",
                p.name,
                p.ok,
                p.errors,
                p.throughput(),
                p.percentile(0.5).as_secs_f64() * 1e3,
                p.percentile(0.99).as_secs_f64() * 1e3
            );
        }
        println!(
            "{op_name} throughput = {ratio:.3} × baseline; p50 latency = {p50_ratio:.2} × baseline"
        );
    }
    for p in [&baseline, &phase] {
        if let Some(e) = &p.first_error {
            eprintln!("{}: {} errors, the first: {e}", p.name, p.errors);
        }
    }
    if phase.errors > 0 || baseline.errors > 0 {
        bail!("some requests failed");
    }
    Ok(())
}
