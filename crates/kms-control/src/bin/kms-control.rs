//! `kms-control`: the control-plane server.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use kms_control::clock::{Clock, OffsetFileClock, SystemClock};
use kms_control::config::{ControlParams, StoreParams};
use kms_control::grpc::{
    AccessKeyApi, AdminApi, AuditApi, DirectoryService, InstanceService, KeyService,
};
use kms_control::material::MaterialClient;
use kms_control::{ControlConfig, Registry, index, scheduler};
use kms_proto::kms::internal::v1::key_directory_server::KeyDirectoryServer;
use kms_proto::kms::v1::access_key_service_server::AccessKeyServiceServer;
use kms_proto::kms::v1::admin_service_server::AdminServiceServer;
use kms_proto::kms::v1::audit_service_server::AuditServiceServer;
use kms_proto::kms::v1::key_management_service_server::KeyManagementServiceServer;
use kms_proto::kms::v1::kms_instance_service_server::KmsInstanceServiceServer;
use kms_runtime::audit::{AuditChain, AuditKey, Plane};
use kms_runtime::auth::AuthLayer;
use kms_runtime::reload::{self, PeerTls, ServerTls};
use kms_runtime::{connections, serve, telemetry};
use kms_store::{EtcdStore, SledStore, Store};
use kms_types::Principal;

/// The KMS control plane: key metadata, lifecycle, aliases, tags and policies, kept in sled
/// or etcd.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Configuration file (TOML); `KMS_*` environment variables override its entries.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

use kms_control::SERVICES;

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let raw: ControlConfig =
        kms_runtime::config::load(args.config.as_deref(), "KMS_", std::env::vars())?;
    let params = raw
        .validate()
        .map_err(anyhow::Error::msg)
        .context("invalid configuration")?;
    let telemetry = telemetry::init(&params.log, &params.telemetry, "kms-control")
        .map_err(anyhow::Error::msg)
        .context("invalid configuration")?;
    if params.identity.dev_header {
        tracing::warn!(
            "identity.dev_header is on: any caller can claim any principal; use only for local development"
        );
    }

    let result = match &params.store {
        StoreParams::Sled(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create data_dir {}", dir.display()))?;
            let store = SledStore::open(dir)
                .with_context(|| format!("cannot open store in {}", dir.display()))?;
            run(Arc::new(store), params).await
        }
        StoreParams::Etcd(etcd) => {
            let options = etcd.options().context("cannot read the etcd settings")?;
            let store = tokio::task::spawn_blocking(move || EtcdStore::connect(options))
                .await
                .context("etcd connection task failed")?
                .context("cannot connect to etcd")?;
            run(Arc::new(store), params).await
        }
    };
    // The last spans go out before the process does.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    result
}

/// Serves the control plane on `store` until a shutdown signal.
async fn run<S: Store>(store: Arc<S>, params: ControlParams) -> Result<()> {
    let peer_tls = match &params.identity.tls {
        Some(t) => Some(Arc::new(
            PeerTls::peer(t).context("cannot set up TLS to the data plane")?,
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
    let material = MaterialClient::new(
        &params.data_plane_urls,
        params.identity.service_principal.clone(),
        peer_tls.clone(),
    )
    .map_err(anyhow::Error::msg)?;
    let migrate_store = Arc::clone(&store);
    let migrated = tokio::task::spawn_blocking(move || index::migrate(&*migrate_store))
        .await
        .context("store migration task failed")?
        .map_err(|e| anyhow::anyhow!("cannot bring the store to the current layout: {e}"))?;
    if migrated > 0 {
        tracing::info!(keys = migrated, "store migrated to the current layout");
    }
    let clock: Arc<dyn Clock> = match &params.clock_offset_file {
        Some(path) => {
            tracing::warn!(path = %path.display(), "clock.offset_file is set: time is moved by the offset in this file; use only for tests and drills");
            Arc::new(OffsetFileClock::new(path.clone()))
        }
        None => Arc::new(SystemClock),
    };
    let replica = format!(
        "{}/{}/{}",
        params.listen_addr,
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    );
    let registry = Arc::new(
        Registry::new(store, params.region.clone(), clock, material.clone())
            .with_operators(params.operators.clone())
            .with_replica(replica, params.scheduler_lease),
    );
    let scheduler = tokio::spawn(scheduler::run(
        Arc::clone(&registry),
        params.scheduler_interval,
    ));
    if params.metrics.listen_addr.is_some() {
        kms_control::metrics::init(
            Arc::clone(&registry),
            match &params.store {
                StoreParams::Sled(dir) => Some(dir.clone()),
                StoreParams::Etcd(_) => None,
            },
        );
    }
    let peer =
        Principal::parse(&params.identity.peer_principal).map_err(|e| anyhow::anyhow!("{e}"))?;

    // No call is served before the audit log can be keyed: the key is derived from the HSM
    // root key, which only the data plane reaches.
    let audit_key = tokio::select! {
        key = fetch_audit_key(&material) => key,
        () = serve::shutdown_signal() => {
            tracing::info!("stopped while waiting for the audit key");
            return Ok(());
        }
    };
    let edge = AuthLayer::from_config(
        &params.identity,
        &params.audit,
        AuditChain {
            plane: Plane::Control,
            key: audit_key.clone(),
        },
        &params.limits,
    )
    .context("cannot set up identity, audit and limits")?;
    // Checkpoints of the audit log go to the store, and a last one after the server has
    // drained.
    let (stop_checkpoints, checkpoints_stopped) = tokio::sync::oneshot::channel::<()>();
    let checkpoints = {
        let log = edge.audit_log().clone();
        let registry = Arc::clone(&registry);
        tokio::spawn(async move {
            kms_runtime::audit::keep_checkpoints(
                log,
                async {
                    let _ = checkpoints_stopped.await;
                },
                |cp| {
                    let registry = Arc::clone(&registry);
                    async move {
                        registry
                            .record_audit_checkpoint(cp)
                            .await
                            .map(|_| ())
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
    tracing::info!(addr = %local, region = %params.region, store = %params.store.describe(), replica = registry.replica(), "control plane listening");
    let closing = Arc::clone(&registry);
    let shutdown = async move {
        serve::shutdown_signal().await;
        serve::mark_not_serving(&health_reporter, SERVICES).await;
        // End WatchKeys streams and the scheduler, so draining does not wait on them.
        closing.close();
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
            KeyManagementServiceServer::new(KeyService::new(Arc::clone(&registry)))
                .max_decoding_message_size(max_request),
        )
        .add_service(
            KmsInstanceServiceServer::new(InstanceService::new(Arc::clone(&registry)))
                .max_decoding_message_size(max_request),
        )
        .add_service(
            KeyDirectoryServer::new(DirectoryService::new(Arc::clone(&registry), peer))
                .max_decoding_message_size(max_request),
        )
        .add_service(
            AuditServiceServer::new(AuditApi::new(Arc::clone(&registry), audit_key, material))
                .max_decoding_message_size(max_request),
        )
        .add_service(
            AccessKeyServiceServer::new(AccessKeyApi::new(Arc::clone(&registry)))
                .max_decoding_message_size(max_request),
        )
        .add_service(
            AdminServiceServer::new(AdminApi::new(Arc::clone(&registry)))
                .max_decoding_message_size(max_request),
        );
    connections::serve(router, incoming, shutdown)
        .await
        .context("server failed")?;
    // The last checkpoint covers every line the drained calls wrote.
    let _ = stop_checkpoints.send(());
    let _ = checkpoints.await;
    registry.close();
    let _ = scheduler.await;
    tracing::info!("control plane stopped");
    Ok(())
}

/// The control plane's audit key from the data plane, asked again (with a growing pause, at
/// most 5 s) until it answers.
async fn fetch_audit_key(material: &MaterialClient) -> AuditKey {
    let mut pause = std::time::Duration::from_millis(100);
    loop {
        match material.audit_key().await {
            Ok(key) => {
                tracing::info!("audit key received from the data plane");
                return key;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot get the audit key from the data plane yet; retrying");
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_secs(5));
    }
}
