//! The HTTP gateway in `kmsctl dev up`: its config, an AccessKey pair for the dev account's
//! root (kept across starts while it is still enabled), and its `dev.json` entries.

use super::*;

/// The gateway's service principal in the dev configs; the data plane's `gateway_principals`
/// lists it.
pub(crate) const GATEWAY_SERVICE_PRINCIPAL: &str = "acs:ram::1000000000000000:role/kms-gateway";

/// The `dev.json` entries of the gateway.
#[derive(Debug, Serialize, serde::Deserialize)]
pub(crate) struct DevInfoGateway {
    /// `http://<addr>`, the SDKs' endpoint.
    gateway_url: String,
    /// A pair acting as the dev account's root.
    access_key_id: String,
    access_key_secret: String,
}

/// The gateway's config under `layout`, listening on `addr`, calling the planes.
pub(crate) fn render_gateway_toml(
    addr: SocketAddr,
    control: SocketAddr,
    data: SocketAddr,
) -> String {
    format!(
        "{GENERATED_HEADER}\
         listen_addr = {listen}\n\
         control_plane_url = {control}\n\
         data_plane_url = {data}\n\
         \n\
         [identity]\n\
         service_principal = {me}\n\
         principal_header = \"x-kms-principal\"\n\
         \n\
         [log]\n\
         level = \"info\"\n\
         format = \"text\"\n",
        listen = toml_str(&addr.to_string()),
        control = toml_str(&plane_url(control, false)),
        data = toml_str(&plane_url(data, false)),
        me = toml_str(GATEWAY_SERVICE_PRINCIPAL),
    )
}

/// The gateway's launch, its config written and a pair for the dev account made (or the one of
/// the previous start kept); `None` with `--mtls`, where the planes take no development
/// header and the gateway has no client certificate.
pub(crate) async fn launch(
    args: &UpArgs,
    layout: &Layout,
) -> anyhow::Result<Option<(Launch, DevInfoGateway)>> {
    if args.mtls {
        println!(
            "kms-gateway not started: with --mtls the planes take no development header, \
             which the gateway names its callers with"
        );
        return Ok(None);
    }
    let addr = args.gateway_addr;
    check_port_free("kms-gateway", addr, "--gateway-addr")?;
    let program = find_binary(args.bin_dir.as_deref(), "kms-gateway")?;
    let config = layout.dir.join("gateway.toml");
    write_file(
        &config,
        &render_gateway_toml(addr, args.control_addr, args.data_addr),
    )?;
    let (access_key_id, access_key_secret) = ensure_access_key(layout, args.control_addr).await?;
    let launch = Launch {
        name: "kms-gateway".into(),
        program,
        args: vec!["--config".into(), config.into()],
        addr,
        env: Vec::new(),
        health: Health::Http(addr),
    };
    Ok(Some((
        launch,
        DevInfoGateway {
            gateway_url: format!("http://{addr}"),
            access_key_id,
            access_key_secret,
        },
    )))
}

/// The pair the previous `dev.json` names, when it is still enabled; a new one otherwise.
async fn ensure_access_key(
    layout: &Layout,
    control: SocketAddr,
) -> anyhow::Result<(String, String)> {
    use kms_proto::kms::v1::access_key_service_client::AccessKeyServiceClient;
    use kms_proto::kms::v1::{AccessKeyStatus, CreateAccessKeyRequest, ListAccessKeysRequest};

    let url = plane_url(control, false);
    let channel = crate::client::endpoint(&url)?
        .connect()
        .await
        .with_context(|| format!("cannot reach kms-control on {url}"))?;
    let mut client = AccessKeyServiceClient::with_interceptor(
        channel,
        crate::client::PrincipalHeader::new(OPERATOR_PRINCIPAL)?,
    );
    let previous = std::fs::read(&layout.dev_json)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<DevInfoGateway>(&bytes).ok());
    if let Some(previous) = previous {
        let listed = client
            .list_access_keys(ListAccessKeysRequest {
                principal: ACCOUNT_PRINCIPAL.into(),
            })
            .await
            .map_err(RpcError)?
            .into_inner()
            .access_keys;
        if listed.iter().any(|k| {
            k.access_key_id == previous.access_key_id && k.status == AccessKeyStatus::Enabled as i32
        }) {
            return Ok((previous.access_key_id, previous.access_key_secret));
        }
    }
    let created = client
        .create_access_key(CreateAccessKeyRequest {
            principal: ACCOUNT_PRINCIPAL.into(),
        })
        .await
        .map_err(RpcError)?
        .into_inner();
    let id = created
        .access_key
        .map(|k| k.access_key_id)
        .context("CreateAccessKey answered without the pair")?;
    println!("AccessKey pair {id} made for {ACCOUNT_PRINCIPAL}");
    Ok((id, created.access_key_secret))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn gateway_toml_parses_and_names_the_planes() {
        let text = render_gateway_toml(
            "127.0.0.1:8703".parse().unwrap(),
            "127.0.0.1:8700".parse().unwrap(),
            "127.0.0.1:8701".parse().unwrap(),
        );
        let t: toml::Table = text.parse().unwrap();
        assert_eq!(t["listen_addr"].as_str(), Some("127.0.0.1:8703"));
        assert_eq!(
            t["control_plane_url"].as_str(),
            Some("http://127.0.0.1:8700")
        );
        assert_eq!(t["data_plane_url"].as_str(), Some("http://127.0.0.1:8701"));
        assert_eq!(
            t["identity"]["service_principal"].as_str(),
            Some(GATEWAY_SERVICE_PRINCIPAL)
        );
    }
}
