//! `kms-gateway`: the reference cloud's KMS OpenAPI (2016-01-20) over HTTP or HTTPS, so its
//! official SDKs work against this service unchanged. It verifies each request's signature
//! (RPC HMAC-SHA1, ACS3-HMAC-SHA256, ACS4-HMAC-SHA256) under the secret of the AccessKey pair it
//! names, then makes the gRPC calls to the planes as that pair's principal. It keeps no state
//! beyond its configuration, a one-second cache of resolved pairs and the nonces it saw.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tower::ServiceExt;

use kms_gateway::config::{self, GatewayConfig, GatewayParams};
use kms_gateway::{api, auth, planes};

/// The HTTP gateway for the reference cloud's KMS SDKs.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Configuration file (TOML); `KMS_*` environment variables override its entries.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let raw: GatewayConfig =
        kms_runtime::config::load(args.config.as_deref(), "KMS_", std::env::vars())?;
    let params = raw
        .validate()
        .map_err(anyhow::Error::msg)
        .context("invalid configuration")?;
    let _telemetry = kms_runtime::telemetry::init(&params.log, &params.telemetry, "kms-gateway")
        .map_err(anyhow::Error::msg)
        .context("invalid configuration")?;
    // ring as rustls's provider, for HTTPS and for TLS towards the planes.
    kms_runtime::tls::install_crypto_provider();
    let planes = planes::Planes::new(
        &params.control_plane_url,
        &params.data_plane_url,
        &params.principal_header,
        params.service_principal.arn().to_string(),
        params.planes_tls.as_ref(),
    )
    .map_err(anyhow::Error::msg)?;
    let state = Arc::new(api::AppState {
        verifier: auth::Verifier::new(
            planes.clone(),
            params.max_clock_skew,
            params.nonce_ttl,
            params.max_nonces,
            params.secret_ttl,
        ),
        planes,
        region: params.region.clone(),
        host_id: host_id(&params),
    });
    let router = api::router(state);
    let listener = tokio::net::TcpListener::bind(&params.listen_addr)
        .await
        .with_context(|| format!("cannot listen on {}", params.listen_addr))?;
    let local = listener.local_addr()?;
    match &params.tls {
        None => {
            tracing::info!(addr = %local, "gateway serving HTTP");
            axum::serve(listener, router)
                .with_graceful_shutdown(kms_runtime::serve::shutdown_signal())
                .await
                .context("server failed")?;
        }
        Some(tls) => {
            let acceptor = tls_acceptor(tls)?;
            tracing::info!(addr = %local, "gateway serving HTTPS");
            serve_tls(listener, router, acceptor).await;
        }
    }
    tracing::info!("gateway stopped");
    Ok(())
}

/// `HostId` in error answers: the listening address as configured.
fn host_id(params: &GatewayParams) -> String {
    params.listen_addr.clone()
}

fn tls_acceptor(tls: &config::TlsConfig) -> Result<tokio_rustls::TlsAcceptor> {
    let chain = CertificateDer::pem_file_iter(&tls.cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read certificates from {}", tls.cert_file.display()))?;
    let key = PrivateKeyDer::from_pem_file(&tls.key_file)
        .with_context(|| format!("cannot read a private key from {}", tls.key_file.display()))?;
    let mut server = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the certificate and key do not make a TLS identity")?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
}

/// Accepts TLS connections and serves HTTP/1.1 on each until a shutdown signal.
async fn serve_tls(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    acceptor: tokio_rustls::TlsAcceptor,
) {
    let shutdown = kms_runtime::serve::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let Ok((tcp, peer)) = accepted else {
            continue;
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(tls) => tls,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let service =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    router.clone().oneshot(req.map(axum::body::Body::new))
                });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}
