//! `kms-console`: the KMS web console. It follows the key-management guide page by page
//! (Keys with its Default Key and Keys tabs, the Create Key form, key details, key versions,
//! key association, external key material; KMS Instances for operators) and is only a gRPC
//! client of the two planes: every action is a call made as the signed-in principal, so the
//! planes' policies and audit apply unchanged. It never opens the store, never loads a PKCS#11
//! module and never sees key material.
//!
//! Pages are rendered on the server with maud: templates are Rust macros checked at compile
//! time, every value spliced into them is HTML-escaped unless explicitly marked, and there are
//! no template files to ship. Pages work without JavaScript; `static/console.js` only submits
//! the Instance ID drop-down on change. CSS and JavaScript are compiled into the binary and
//! served from it, so the Content-Security-Policy allows nothing but the console itself.

mod config;
mod instances;
mod key;
mod keys;
mod planes;
mod session;
mod view;
mod web;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;

/// The KMS web console.
#[derive(Debug, Parser)]
#[command(name = "kms-console", version)]
struct Args {
    /// Config file (see deploy/config/console.toml); KMS_* environment variables override it
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// The peer address of a connection, over plain TCP or TLS.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(pub(crate) SocketAddr);

impl
    axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>>
    for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

/// A listener that completes a TLS handshake on every connection it hands out.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, addr) = match self.tcp.accept().await {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(stream)).await {
                Ok(Ok(tls)) => return (tls, addr),
                Ok(Err(e)) => tracing::debug!(%addr, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

fn server_tls(tls: &config::TlsConfig) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    kms_runtime::tls::install_crypto_provider();
    let chain = CertificateDer::pem_file_iter(&tls.cert_file)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("tls.cert_file {}: {e}", tls.cert_file.display()))?;
    let key = PrivateKeyDer::from_pem_file(&tls.key_file)
        .map_err(|e| anyhow::anyhow!("tls.key_file {}: {e}", tls.key_file.display()))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

fn session_secret(params: &config::Params) -> anyhow::Result<Vec<u8>> {
    match &params.session_secret_file {
        None => {
            tracing::info!("no session_secret_file: sessions end when the console stops");
            session::Sessions::random_secret()
        }
        Some(path) => {
            let secret = std::fs::read(path).map_err(|e| {
                anyhow::anyhow!("cannot read session_secret_file {}: {e}", path.display())
            })?;
            if secret.len() < 32 {
                anyhow::bail!(
                    "session_secret_file {} holds {} bytes; it needs at least 32 random bytes",
                    path.display(),
                    secret.len()
                );
            }
            Ok(secret)
        }
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kms-console: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let params = config::load(args.config.as_deref())?;
    let _telemetry = kms_runtime::telemetry::init(
        &params.log,
        &kms_runtime::telemetry::TelemetryConfig::default(),
        "kms-console",
    )
    .map_err(anyhow::Error::msg)?;
    if params.dev_json.is_some() {
        tracing::warn!(
            "dev sign-in is on: anyone who can reach the console can act as any principal of the dev stack"
        );
    }
    let state = Arc::new(web::AppState {
        planes: planes::Planes::new(&params)?,
        sessions: session::Sessions::new(
            &session_secret(&params)?,
            params.session_seconds,
            params.tls.is_some(),
        ),
        proxy: params.proxy.clone(),
        dev_json: params.dev_json.clone(),
    });
    let app = web::router(state).into_make_service_with_connect_info::<Peer>();
    let tcp = tokio::net::TcpListener::bind(params.listen_addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", params.listen_addr))?;
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    let stop = async {
        tokio::select! {
            () = shutdown => {},
            () = terminate => {},
        }
    };
    match &params.tls {
        Some(tls) => {
            let listener = TlsListener {
                tcp,
                acceptor: server_tls(tls)?,
            };
            tracing::info!(addr = %params.listen_addr, "kms-console serving HTTPS");
            axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await?;
        }
        None => {
            tracing::info!(addr = %params.listen_addr, "kms-console serving HTTP");
            axum::serve(tcp, app).with_graceful_shutdown(stop).await?;
        }
    }
    Ok(())
}
