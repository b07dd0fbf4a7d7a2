//! `kms-data`: the data-plane server.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use kms_backend_pkcs11::Hsm;
use kms_data::DataConfig;
use kms_data::cache::KeyCache;
use kms_data::crypto::CryptoEngine;
use kms_data::directory::DirectoryClient;
use kms_data::grpc::{AccessKeyResolverApi, CryptoApi, MaterialService};
use kms_data::usage::UsageRecorder;
use kms_data::vault::KeyVault;
use kms_proto::kms::internal::v1::key_material_server::KeyMaterialServer;
use kms_proto::kms::v1::access_key_resolver_server::AccessKeyResolverServer;
use kms_proto::kms::v1::crypto_service_server::CryptoServiceServer;
use kms_runtime::audit::{AuditChain, AuditKey, Plane};
use kms_runtime::auth::AuthLayer;
use kms_runtime::reload::{self, PeerTls, ServerTls};
use kms_runtime::{connections, serve, telemetry};
use kms_types::Principal;

/// The KMS data plane: cryptographic operations against the HSM and in-process software keys.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Configuration file (TOML); `KMS_*` environment variables override its entries.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Open the HSM, create the root key when the token has none, and exit. Run it once, alone,
    /// before replicas start on a new token, so they do not each create one.
    #[arg(long)]
    prepare_hsm: bool,
}

use kms_data::SERVICES;

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let raw: DataConfig =
        kms_runtime::config::load(args.config.as_deref(), "KMS_", std::env::vars())?;
    let params = raw
        .validate()
        .map_err(anyhow::Error::msg)
        .context("invalid configuration")?;
    let telemetry = telemetry::init(&params.log, &params.telemetry, "kms-data")
        .map_err(anyhow::Error::msg)
        .context("invalid configuration")?;
    if params.identity.dev_header {
        tracing::warn!(
            "identity.dev_header is on: any caller can claim any principal; use only for local development"
        );
    }

    let hsm = open_hsm(&params.hsm).await?;
    tracing::info!(
        token = %params.hsm.token_label,
        mechanisms = hsm.mechanism_names().len(),
        "HSM ready; root key loaded"
    );
    if args.prepare_hsm {
        tracing::info!("root key ready; exiting (--prepare-hsm)");
        return Ok(());
    }
    let hsm = Arc::new(hsm);
    let vault = Arc::new(KeyVault::new(Arc::clone(&hsm)));
    // The data plane keys its own audit log with a key derived from the root key.
    let audit_key = {
        let vault = Arc::clone(&vault);
        let secret = tokio::task::spawn_blocking(move || vault.derive_audit_key(Plane::Data))
            .await
            .context("audit key task failed")?
            .map_err(|e| anyhow::anyhow!("cannot derive the audit key: {e}"))?;
        AuditKey::from_bytes(secret.expose()).context("cannot derive the audit key")?
    };
    let peer_tls = match &params.identity.tls {
        Some(t) => Some(Arc::new(
            PeerTls::peer(t).context("cannot set up TLS to the control plane")?,
        )),
        None => None,
    };
    let server_tls = match &params.identity.tls {
        Some(t) => Some(Arc::new(
            ServerTls::server(t).context("cannot set up the server's TLS")?,
        )),
        None => None,
    };
    // Certificates are read again when their files change, and on SIGHUP.
    let _tls_watch = reload::watch_plane(server_tls.as_ref(), peer_tls.as_ref());
    let directory = DirectoryClient::new(
        &params.control_plane_urls,
        params.identity.service_principal.clone(),
        peer_tls.clone(),
    )
    .map_err(anyhow::Error::msg)?;
    // Key usage for CheckKeyAssociation, batched to the control plane off the call path.
    let usage = Arc::new(UsageRecorder::new());
    let (stop_usage, usage_stopped) = tokio::sync::oneshot::channel::<()>();
    let reporter = {
        let usage = Arc::clone(&usage);
        let directory = directory.clone();
        tokio::spawn(async move {
            usage
                .run(directory, async {
                    let _ = usage_stopped.await;
                })
                .await;
        })
    };
    let checkpoint_directory = directory.clone();
    let access_key_directory = directory.clone();
    let cache = Arc::new(KeyCache::new(directory, params.cache));
    tokio::spawn(kms_data::watch::follow(Arc::clone(&cache)));
    kms_data::metrics::init(hsm, Arc::clone(&cache));
    let engine = Arc::new(CryptoEngine::new(cache, Arc::clone(&vault)));
    let peer =
        Principal::parse(&params.identity.peer_principal).map_err(|e| anyhow::anyhow!("{e}"))?;

    let edge = AuthLayer::from_config(
        &params.identity,
        &params.audit,
        AuditChain {
            plane: Plane::Data,
            key: audit_key.clone(),
        },
        &params.limits,
    )
    .context("cannot set up identity, audit and limits")?;
    // Checkpoints of the audit log go to the control plane's store, and a last one after the
    // server has drained.
    let (stop_checkpoints, checkpoints_stopped) = tokio::sync::oneshot::channel::<()>();
    let checkpoints = {
        let log = edge.audit_log().clone();
        let directory = checkpoint_directory;
        tokio::spawn(async move {
            kms_runtime::audit::keep_checkpoints(
                log,
                async {
                    let _ = checkpoints_stopped.await;
                },
                |cp| {
                    let directory = directory.clone();
                    async move {
                        directory
                            .report_audit_checkpoint(&cp)
                            .await
                            .map_err(|e| e.to_string())
                    }
                },
            )
            .await;
        })
    };
    let max_request = params.limits.max_decoding_message_size();
    let (listener, local) = serve::bind(&params.listen_addr)
        .await
        .map_err(anyhow::Error::msg)?;
    let (health_reporter, health) = serve::health(SERVICES).await;
    serve::serve_health(&params.health, health.clone())
        .await
        .map_err(anyhow::Error::msg)?;
    let reflection =
        serve::reflection(kms_proto::FILE_DESCRIPTOR_SET, SERVICES).map_err(anyhow::Error::msg)?;

    if let Some(addr) = kms_runtime::metrics::serve(&params.metrics)
        .await
        .map_err(anyhow::Error::msg)?
    {
        tracing::info!(addr = %addr, "metrics at http://{addr}/metrics");
    }
    tracing::info!(addr = %local, control_plane = %params.control_plane_urls.join(","), "data plane listening");
    let shutdown = async move {
        serve::shutdown_signal().await;
        serve::mark_not_serving(&health_reporter, SERVICES).await;
    };
    let incoming = connections::listen(listener, &params.limits, server_tls);
    tracing::info!(
        max_connections = incoming.max_connections(),
        "connection cap in force"
    );
    let router = connections::server(&params.limits)
        .layer(connections::StreamLayer::new(&params.limits))
        .layer(edge)
        .add_service(health)
        .add_service(reflection.0)
        .add_service(reflection.1)
        .add_service(
            CryptoServiceServer::new(CryptoApi::new(engine, usage))
                .max_decoding_message_size(max_request),
        )
        .add_service(
            AccessKeyResolverServer::new(AccessKeyResolverApi::new(
                access_key_directory,
                Arc::clone(&vault),
                params.gateway_principals.clone(),
            ))
            .max_decoding_message_size(max_request),
        )
        .add_service(
            KeyMaterialServer::new(MaterialService::new(vault, peer, audit_key))
                .max_decoding_message_size(max_request),
        );
    connections::serve(router, incoming, shutdown)
        .await
        .context("server failed")?;
    // Report what the drained calls used before leaving.
    let _ = stop_usage.send(());
    let _ = reporter.await;
    // The last checkpoint covers every line the drained calls wrote.
    let _ = stop_checkpoints.send(());
    let _ = checkpoints.await;
    tracing::info!("data plane stopped");
    // The last spans go out before the process does.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    Ok(())
}

/// Attempts at opening the HSM before giving up, when it fails in a PKCS#11 call.
const HSM_OPEN_ATTEMPTS: u32 = 5;

/// Opens the HSM. A PKCS#11 failure while opening is tried again a few times, with a pause
/// doubling from 100 ms: a file-backed token (SoftHSM) shared by several replicas can fail a
/// read while another replica writes it. Anything else (a wrong PIN above all, which must
/// not be retried towards a lockout) stops at once.
async fn open_hsm(params: &kms_backend_pkcs11::HsmParams) -> Result<Hsm> {
    let mut pause = std::time::Duration::from_millis(100);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let p = params.clone();
        match tokio::task::spawn_blocking(move || Hsm::open(&p))
            .await
            .context("HSM start-up task failed")?
        {
            Ok(hsm) => return Ok(hsm),
            Err(e @ kms_backend_pkcs11::HsmError::Pkcs11 { .. }) if attempt < HSM_OPEN_ATTEMPTS => {
                tracing::warn!(error = %e, attempt, "cannot open the HSM yet; trying again");
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            Err(e) => return Err(e).context("cannot start the HSM backend"),
        }
    }
}
