//! Serving helpers: bind, health (also on a plain-text port of its own for orchestrators'
//! probes), reflection, and shutdown on SIGTERM or SIGINT.

use std::net::SocketAddr;

use serde::Deserialize;
use tokio::net::TcpListener;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;

/// `[health]`: `grpc.health.v1` on a port of its own, in plain text, for probes that cannot
/// present a client certificate (Kubernetes' `grpc:` probes speak no TLS).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Address to serve health checks on; none when unset.
    #[serde(default)]
    pub listen_addr: Option<String>,
}

impl HealthConfig {
    /// Checks the values; called once at start.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(addr) = &self.listen_addr {
            addr.parse::<SocketAddr>().map_err(|e| {
                format!("health.listen_addr {addr:?} is not an address like 0.0.0.0:7710: {e}")
            })?;
        }
        Ok(())
    }
}

/// Serves `health` alone, in plain text and outside the edge layer (it says only whether
/// the plane serves), on `config.listen_addr` when set, until the process ends; the address
/// bound. The health service is the plane's own, so a plane that drains reports NOT_SERVING
/// here too.
pub async fn serve_health<T: Health>(
    config: &HealthConfig,
    health: HealthServer<T>,
) -> Result<Option<SocketAddr>, String> {
    let Some(addr) = &config.listen_addr else {
        return Ok(None);
    };
    let (listener, local) = bind(addr).await?;
    tracing::info!(addr = %local, "health checks listening (plain text, grpc.health.v1 only)");
    tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the health port stopped");
        }
    });
    Ok(Some(local))
}
/// Binds `addr`; the error names the address.
pub async fn bind(addr: &str) -> Result<(TcpListener, SocketAddr), String> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot read the address bound for {addr}: {e}"))?;
    Ok((listener, local))
}

/// The `grpc.health.v1` service, with `services` (and the whole server, `""`) serving.
pub async fn health(
    services: &[&str],
) -> (
    HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    let (reporter, service) = tonic_health::server::health_reporter();
    for name in services.iter().chain(std::iter::once(&"")) {
        reporter
            .set_service_status(*name, ServingStatus::Serving)
            .await;
    }
    (reporter, service)
}

/// Marks every service not serving, so load balancers drain before the listener closes.
pub async fn mark_not_serving(reporter: &HealthReporter, services: &[&str]) {
    for name in services.iter().chain(std::iter::once(&"")) {
        reporter
            .set_service_status(*name, ServingStatus::NotServing)
            .await;
    }
}

/// Server reflection as both `grpc.reflection.v1` and `grpc.reflection.v1alpha` (several
/// clients speak only the older one), advertising exactly `services` (the ones this plane
/// serves), health and reflection: the descriptor set describes both planes.
pub fn reflection(
    file_descriptor_set: &'static [u8],
    services: &[&str],
) -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    String,
> {
    let builder = || {
        let mut b = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(file_descriptor_set)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .with_service_name("grpc.reflection.v1alpha.ServerReflection");
        for service in services {
            b = b.with_service_name(*service);
        }
        b
    };
    let v1 = builder()
        // The v1alpha descriptor too, so both reflection services are described.
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| format!("cannot build the reflection service: {e}"))?;
    let v1alpha = builder()
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| format!("cannot build the reflection service: {e}"))?;
    Ok((v1, v1alpha))
}

/// Resolves on the first SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stopping only when killed");
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
        _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus as Status;
    use tonic_health::pb::health_client::HealthClient;

    #[tokio::test]
    async fn the_health_port_answers_in_plain_text_with_the_planes_status() {
        let services = ["kms.v1.CryptoService"];
        let (reporter, health) = health(&services).await;
        assert_eq!(
            serve_health(&HealthConfig::default(), health.clone())
                .await
                .unwrap(),
            None
        );
        let config = HealthConfig {
            listen_addr: Some("127.0.0.1:0".into()),
        };
        config.validate().unwrap();
        let addr = serve_health(&config, health).await.unwrap().unwrap();
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let client = HealthClient::new(channel);
        let status = |service: &str| {
            let mut client = client.clone();
            let service = service.to_string();
            async move {
                client
                    .check(HealthCheckRequest { service })
                    .await
                    .map(|r| r.into_inner().status)
                    .map_err(|s| s.code())
            }
        };
        assert_eq!(status("").await, Ok(Status::Serving as i32));
        assert_eq!(
            status("kms.v1.CryptoService").await,
            Ok(Status::Serving as i32)
        );
        assert_eq!(status("kms.v1.Other").await, Err(tonic::Code::NotFound));
        mark_not_serving(&reporter, &services).await;
        assert_eq!(status("").await, Ok(Status::NotServing as i32));
        assert!(
            HealthConfig {
                listen_addr: Some("7710".into())
            }
            .validate()
            .is_err()
        );
    }
}
