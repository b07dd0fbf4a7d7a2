//! The files under `deploy/` checked against what the binaries accept: every configuration a
//! manifest, the compose file or a systemd unit hands a plane is loaded through the planes'
//! own loader (with the `KMS_*` variables set beside it) and validated; then every port a
//! Service, probe, network policy, compose mapping or `EXPOSE` names must be one the config
//! listens on, every probe must ask for a service the plane reports, every file the config
//! reads must be mounted where it says (from a Secret key that exists), and every directory
//! it writes must be writable there. The image's token script and `kmsctl dev certs` are run
//! with the arguments the deployments give them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use kms_control::ControlConfig;
use kms_control::config::StoreParams;
use kms_data::DataConfig;
use kms_e2e::{CONTROL_PRINCIPAL, DATA_PRINCIPAL, bin_path, cert_stem};
use serde::Deserialize;
use serde_yaml_ng::Value;

/// Where Debian's softhsm2 package puts the PKCS#11 module the image installs.
const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// What `kms-prepare-token` reads besides `KMS_*`-free names; the planes take every `KMS_*`
/// variable as a setting, so these must not start with it.
const TOKEN_SCRIPT_VARS: &[&str] = &["TOKEN_LABEL", "TOKEN_DIR", "USER_PIN_FILE", "SO_PIN_FILE"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plane {
    Control,
    Data,
}

impl Plane {
    fn of_binary(bin: &str) -> Option<Plane> {
        match bin.rsplit('/').next() {
            Some("kms-control") => Some(Plane::Control),
            Some("kms-data") => Some(Plane::Data),
            _ => None,
        }
    }

    /// The health service names the plane reports: each service, and "" for the plane.
    fn health_services(self) -> BTreeSet<&'static str> {
        let services = match self {
            Plane::Control => kms_control::SERVICES,
            Plane::Data => kms_data::SERVICES,
        };
        services.iter().copied().chain([""]).collect()
    }
}

/// A plane's config as loaded and validated: what it listens on, reads and writes.
#[derive(Debug)]
struct Loaded {
    plane: Plane,
    grpc: u16,
    health: Option<u16>,
    metrics: Option<u16>,
    /// The other plane's URLs (`data_plane_url` / `control_plane_url`).
    peer_urls: Vec<String>,
    /// TLS files and the PIN file.
    reads: Vec<PathBuf>,
    /// Directories written: sled's, the audit log's.
    writes: Vec<PathBuf>,
    token_label: Option<String>,
    pin_file: Option<PathBuf>,
    principal: String,
}

impl Loaded {
    fn ports(&self) -> BTreeSet<u16> {
        [Some(self.grpc), self.health, self.metrics]
            .into_iter()
            .flatten()
            .collect()
    }
}

fn port(addr: &str) -> u16 {
    addr.parse::<SocketAddr>()
        .unwrap_or_else(|e| panic!("{addr}: {e}"))
        .port()
}

/// Host and port of a URL like `https://host:port`.
fn host_port(url: &str) -> (String, u16) {
    let rest = url.split("://").nth(1).unwrap();
    let (host, port) = rest.rsplit_once(':').unwrap();
    (host.to_string(), port.parse().unwrap())
}

/// Loads `text` as `plane`'s config through the planes' loader with the `KMS_*` entries of
/// `env`, and validates it. The PIN file a data-plane config names is recorded, and a file in a
/// temporary directory stands in for it while validating.
fn load(plane: Plane, text: &str, env: &BTreeMap<String, String>, what: &str) -> Loaded {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(&file, text).unwrap();
    let vars: Vec<(String, String)> = env
        .iter()
        .filter(|(k, _)| k.starts_with("KMS_"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let tls_reads = |tls: &Option<kms_runtime::TlsConfig>| -> Vec<PathBuf> {
        let tls = tls
            .as_ref()
            .unwrap_or_else(|| panic!("{what}: no [identity.tls]; deployments serve mTLS"));
        let mut files = tls.server_files();
        files.extend(tls.peer_files());
        files
    };
    match plane {
        Plane::Control => {
            let raw: ControlConfig = kms_runtime::config::load(Some(&file), "KMS_", vars)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let p = raw
                .validate()
                .unwrap_or_else(|e| panic!("{what}: invalid: {e}"));
            let mut writes = vec![p.audit.path.parent().unwrap().to_path_buf()];
            if let StoreParams::Sled(dir) = &p.store {
                writes.push(dir.clone());
            }
            Loaded {
                plane,
                grpc: port(&p.listen_addr),
                health: p.health.listen_addr.as_deref().map(port),
                metrics: p.metrics.listen_addr.as_deref().map(port),
                peer_urls: p.data_plane_urls.clone(),
                reads: tls_reads(&p.identity.tls),
                writes,
                token_label: None,
                pin_file: None,
                principal: p.identity.service_principal.clone(),
            }
        }
        Plane::Data => {
            let raw: DataConfig = kms_runtime::config::load(Some(&file), "KMS_", vars.clone())
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let pin_file = raw
                .hsm
                .user_pin_file
                .clone()
                .unwrap_or_else(|| panic!("{what}: the PIN must come from a file"));
            assert!(raw.hsm.user_pin.is_none(), "{what}: a PIN in the config");
            let stand_in = dir.path().join("pin");
            std::fs::write(&stand_in, "1234\n").unwrap();
            let mut vars = vars;
            vars.push((
                "KMS_HSM__USER_PIN_FILE".into(),
                stand_in.display().to_string(),
            ));
            let raw: DataConfig = kms_runtime::config::load(Some(&file), "KMS_", vars)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let p = raw
                .validate()
                .unwrap_or_else(|e| panic!("{what}: invalid: {e}"));
            assert_eq!(
                p.hsm.module_path,
                Path::new(SOFTHSM_MODULE),
                "{what}: the module the image's softhsm2 package installs"
            );
            let mut reads = tls_reads(&p.identity.tls);
            reads.push(pin_file.clone());
            Loaded {
                plane,
                grpc: port(&p.listen_addr),
                health: p.health.listen_addr.as_deref().map(port),
                metrics: p.metrics.listen_addr.as_deref().map(port),
                peer_urls: p.control_plane_urls.clone(),
                reads,
                writes: vec![p.audit.path.parent().unwrap().to_path_buf()],
                token_label: Some(p.hsm.token_label.clone()),
                pin_file: Some(pin_file),
                principal: p.identity.service_principal.clone(),
            }
        }
    }
}

/// The token directory SoftHSM uses in the image and on hosts: `deploy/docker/softhsm2.conf`.
fn token_dir() -> PathBuf {
    let conf = read(&repo().join("deploy/docker/softhsm2.conf"));
    let line = conf
        .lines()
        .find_map(|l| l.strip_prefix("directories.tokendir = "))
        .unwrap();
    PathBuf::from(line.trim())
}

/// The file names `kmsctl dev certs` writes for both planes' service principals.
fn dev_cert_names() -> BTreeSet<String> {
    let mut names: BTreeSet<String> = ["ca.pem", "control.pem", "control-key.pem", "data.pem"]
        .into_iter()
        .chain(["data-key.pem"])
        .map(str::to_string)
        .collect();
    for p in [CONTROL_PRINCIPAL, DATA_PRINCIPAL] {
        names.insert(format!("{}.pem", cert_stem(p)));
        names.insert(format!("{}-key.pem", cert_stem(p)));
    }
    names
}

fn under(path: &Path, dir: &Path) -> bool {
    path.starts_with(dir)
}

// ----------------------------------------------------------------------------------------
// Kubernetes

/// Every YAML document of `path`.
fn documents(path: &Path) -> Vec<Value> {
    let text = read(path);
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn s<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: not a string: {v:?}"))
}

fn seq(v: &Value) -> Vec<Value> {
    v.as_sequence().cloned().unwrap_or_default()
}

fn labels(v: &Value) -> BTreeMap<String, String> {
    v.as_mapping()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (s(k, "label").to_string(), s(v, "label").to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// A volume mount: where, from which volume, read-only or not, the sub-path.
#[derive(Debug)]
struct Mount {
    path: PathBuf,
    volume: String,
    read_only: bool,
    sub_path: Option<String>,
}

fn mounts(container: &Value) -> Vec<Mount> {
    seq(&container["volumeMounts"])
        .iter()
        .map(|m| Mount {
            path: PathBuf::from(s(&m["mountPath"], "mountPath")),
            volume: s(&m["name"], "mount name").to_string(),
            read_only: m["readOnly"].as_bool().unwrap_or(false),
            sub_path: m["subPath"].as_str().map(str::to_string),
        })
        .collect()
}

/// The container's environment: literal values, and a stand-in for values from elsewhere.
fn env_of(container: &Value) -> BTreeMap<String, String> {
    seq(&container["env"])
        .iter()
        .map(|e| {
            let value = e["value"].as_str().unwrap_or("stand-in-0").to_string();
            (s(&e["name"], "env name").to_string(), value)
        })
        .collect()
}

struct Cluster {
    docs: Vec<(String, Value)>,
}

impl Cluster {
    fn kind(&self, kind: &str) -> Vec<&Value> {
        self.docs
            .iter()
            .filter(|(_, d)| d["kind"].as_str() == Some(kind))
            .map(|(_, d)| d)
            .collect()
    }

    fn named(&self, kind: &str, name: &str) -> &Value {
        self.kind(kind)
            .into_iter()
            .find(|d| d["metadata"]["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    }
}

/// Checks one plane's workload: the config its container is given, loaded with its
/// environment and the overlay's patches; ports, probes, mounts. Returns the loaded config and
/// the Secret keys its volumes mount.
fn check_workload(
    cluster: &Cluster,
    workload: &Value,
    extra_env: &BTreeMap<String, String>,
) -> (
    Loaded,
    BTreeMap<String, BTreeSet<String>>,
    BTreeMap<String, u16>,
) {
    let name = s(&workload["metadata"]["name"], "name");
    let pod = &workload["spec"]["template"]["spec"];
    let pod_labels = labels(&workload["spec"]["template"]["metadata"]["labels"]);
    assert!(
        selects(
            &labels(&workload["spec"]["selector"]["matchLabels"]),
            &pod_labels
        ),
        "{name}: its selector does not select its pods"
    );
    let security = &pod["securityContext"];
    assert_eq!(security["runAsNonRoot"].as_bool(), Some(true), "{name}");
    assert_ne!(security["runAsUser"].as_u64().unwrap_or(0), 0, "{name}");

    let volumes: BTreeMap<String, Value> = seq(&pod["volumes"])
        .into_iter()
        .map(|v| (s(&v["name"], "volume").to_string(), v))
        .collect();
    let claim_templates: BTreeSet<String> = seq(&workload["spec"]["volumeClaimTemplates"])
        .iter()
        .map(|t| s(&t["metadata"]["name"], "claim").to_string())
        .collect();
    let mut secret_keys: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut loaded = None;

    for (init, container) in seq(&pod["initContainers"])
        .into_iter()
        .map(|c| (true, c))
        .chain(seq(&pod["containers"]).into_iter().map(|c| (false, c)))
    {
        let cname = s(&container["name"], "container").to_string();
        let what = format!("{name}/{cname}");
        let command: Vec<String> = seq(&container["command"])
            .iter()
            .map(|c| s(c, "command").to_string())
            .collect();
        let sc = &container["securityContext"];
        assert_eq!(
            sc["allowPrivilegeEscalation"].as_bool(),
            Some(false),
            "{what}"
        );
        assert_eq!(
            seq(&sc["capabilities"]["drop"]),
            vec![Value::from("ALL")],
            "{what}"
        );
        let (plane, config_path) = match command.as_slice() {
            [bin, flag, path] if flag == "--config" => (
                Plane::of_binary(bin).unwrap_or_else(|| panic!("{what}: runs {bin}")),
                path.clone(),
            ),
            [script, path] if script == "kms-prepare-token" => (Plane::Data, path.clone()),
            other => panic!("{what}: unexpected command {other:?}"),
        };
        assert!(init == (command[0] == "kms-prepare-token"), "{what}");
        let mut env = env_of(&container);
        env.extend(extra_env.clone());
        for key in env.keys() {
            assert!(
                key.starts_with("KMS_") || (init && TOKEN_SCRIPT_VARS.contains(&key.as_str())),
                "{what}: {key} is read by nothing"
            );
        }
        let mounts = mounts(&container);
        let mount_of = |path: &Path| -> &Mount {
            mounts
                .iter()
                .filter(|m| under(path, &m.path))
                .max_by_key(|m| m.path.as_os_str().len())
                .unwrap_or_else(|| panic!("{what}: {} is on no volume", path.display()))
        };
        // The config: a ConfigMap key mounted at the path the command names.
        let mount = mount_of(Path::new(&config_path));
        let cm_name = s(
            &volumes[&mount.volume]["configMap"]["name"],
            "configMap volume",
        );
        let key = mount.sub_path.clone().unwrap_or_else(|| {
            Path::new(&config_path)
                .strip_prefix(&mount.path)
                .unwrap()
                .display()
                .to_string()
        });
        let text = cluster.named("ConfigMap", cm_name)["data"][key.as_str()]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: ConfigMap {cm_name} has no {key}"))
            .to_string();
        let config = load(plane, &text, &env, &what);

        // Files read: on a volume, from a Secret key that the volume projects.
        for file in &config.reads {
            if init && config.pin_file.as_ref() != Some(file) {
                continue;
            }
            let m = mount_of(file);
            let volume = &volumes[&m.volume];
            let rel = file.strip_prefix(&m.path).unwrap().display().to_string();
            let secret = volume["secret"]["secretName"]
                .as_str()
                .unwrap_or_else(|| panic!("{what}: {} is not from a Secret", file.display()));
            let items: BTreeMap<String, String> = seq(&volume["secret"]["items"])
                .iter()
                .map(|i| {
                    (
                        s(&i["path"], "path").to_string(),
                        s(&i["key"], "key").to_string(),
                    )
                })
                .collect();
            let key = items
                .get(&rel)
                .unwrap_or_else(|| panic!("{what}: {} is no item of {secret}", file.display()));
            assert!(
                m.sub_path.is_none(),
                "{what}: a subPath Secret mount is never updated"
            );
            secret_keys
                .entry(secret.to_string())
                .or_default()
                .insert(key.clone());
        }
        // Directories written: a writable volume that is not a ConfigMap or Secret.
        let mut writes = if init {
            Vec::new()
        } else {
            config.writes.clone()
        };
        if plane == Plane::Data {
            writes.push(token_dir());
        }
        for dir in &writes {
            let m = mount_of(dir);
            assert!(!m.read_only, "{what}: {} is read-only", dir.display());
            let v = volumes.get(&m.volume);
            assert!(
                claim_templates.contains(&m.volume)
                    || v.is_some_and(|v| {
                        !v["emptyDir"].is_null() || !v["persistentVolumeClaim"].is_null()
                    }),
                "{what}: {} is not on a writable volume",
                dir.display()
            );
        }
        if init {
            assert_eq!(
                env.get("TOKEN_LABEL"),
                config.token_label.as_ref(),
                "{what}: the token label"
            );
            assert_eq!(
                env.get("USER_PIN_FILE").map(PathBuf::from),
                config.pin_file,
                "{what}: the PIN file"
            );
            let so_pin = PathBuf::from(&env["SO_PIN_FILE"]);
            let m = mount_of(&so_pin);
            assert!(volumes[&m.volume]["secret"].is_mapping(), "{what}");
            continue;
        }

        // Ports and probes.
        let ports: BTreeMap<String, u16> = seq(&container["ports"])
            .iter()
            .map(|p| {
                (
                    s(&p["name"], "port name").to_string(),
                    u16::try_from(p["containerPort"].as_u64().unwrap()).unwrap(),
                )
            })
            .collect();
        let expected: BTreeMap<String, u16> = [
            ("grpc", Some(config.grpc)),
            ("health", config.health),
            ("metrics", config.metrics),
        ]
        .into_iter()
        .filter_map(|(n, p)| p.map(|p| (n.to_string(), p)))
        .collect();
        assert_eq!(
            ports, expected,
            "{what}: container ports against the config"
        );
        for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
            let grpc = &container[probe]["grpc"];
            assert!(grpc.is_mapping(), "{what}: {probe} is not a grpc probe");
            assert_eq!(
                grpc["port"].as_u64().map(|p| u16::try_from(p).unwrap()),
                config.health,
                "{what}: {probe} is not on the health port"
            );
            let service = grpc["service"].as_str().unwrap_or("");
            assert!(
                config.plane.health_services().contains(service),
                "{what}: {probe} asks for {service:?}, which the plane does not report"
            );
        }
        assert!(
            !container["readinessProbe"]["grpc"]["service"].is_null(),
            "{what}: readiness names a service"
        );
        loaded = Some((config, ports));
    }
    let (config, ports) = loaded.unwrap_or_else(|| panic!("{name}: no plane runs in it"));
    (config, secret_keys, ports)
}

/// Kustomize JSON patches of an overlay that add environment variables to `name`'s
/// containers.
fn patched_env(overlay: &Value, kind: &str, name: &str) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for patch in seq(&overlay["patches"]) {
        if patch["target"]["kind"].as_str() != Some(kind)
            || patch["target"]["name"].as_str() != Some(name)
        {
            continue;
        }
        let ops: Value = serde_yaml_ng::from_str(s(&patch["patch"], "patch")).unwrap();
        for op in seq(&ops) {
            if s(&op["path"], "path").ends_with("/env/-") {
                env.insert(
                    s(&op["value"]["name"], "env").to_string(),
                    s(&op["value"]["value"], "env").to_string(),
                );
            }
        }
    }
    env
}

#[test]
fn kubernetes_manifests_match_the_binaries() {
    let base = repo().join("deploy/kubernetes/base");
    let kustomization: Value = serde_yaml_ng::from_str(&read(&base.join("kustomization.yaml")))
        .expect("base kustomization");
    let listed: BTreeSet<String> = seq(&kustomization["resources"])
        .iter()
        .map(|r| s(r, "resource").to_string())
        .collect();
    let on_disk: BTreeSet<String> = std::fs::read_dir(&base)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    assert_eq!(
        listed, on_disk,
        "every manifest of the base is a resource of it"
    );
    let cluster = Cluster {
        docs: listed
            .iter()
            .flat_map(|f| {
                documents(&base.join(f))
                    .into_iter()
                    .map(move |d| (f.clone(), d))
            })
            .collect(),
    };
    let overlay_dir = repo().join("deploy/kubernetes/overlays/dev");
    let overlay: Value =
        serde_yaml_ng::from_str(&read(&overlay_dir.join("kustomization.yaml"))).unwrap();
    assert!(seq(&overlay["resources"]).contains(&Value::from("../../base")));
    for patch in seq(&overlay["patches"]) {
        cluster.named(
            s(&patch["target"]["kind"], "kind"),
            s(&patch["target"]["name"], "name"),
        );
    }

    let control_set = cluster.named("StatefulSet", "kms-control");
    let data_deploy = cluster.named("Deployment", "kms-data");
    let (control, mut secrets, control_ports) = check_workload(
        &cluster,
        control_set,
        &patched_env(&overlay, "StatefulSet", "kms-control"),
    );
    let (data, data_secrets, data_ports) = check_workload(
        &cluster,
        data_deploy,
        &patched_env(&overlay, "Deployment", "kms-data"),
    );
    for (k, v) in data_secrets {
        secrets.entry(k).or_default().extend(v);
    }
    assert_eq!(control.plane, Plane::Control);
    assert_eq!(data.plane, Plane::Data);

    // Services: each selects one plane's pods and forwards to its ports.
    let pods = [
        (
            "kms-control",
            labels(&control_set["spec"]["template"]["metadata"]["labels"]),
            &control,
            &control_ports,
        ),
        (
            "kms-data",
            labels(&data_deploy["spec"]["template"]["metadata"]["labels"]),
            &data,
            &data_ports,
        ),
    ];
    let mut service_of = BTreeMap::new();
    for svc in cluster.kind("Service") {
        let svc_name = s(&svc["metadata"]["name"], "service").to_string();
        let selector = labels(&svc["spec"]["selector"]);
        let (workload, _, config, ports) = pods
            .iter()
            .find(|(_, l, _, _)| selects(&selector, l))
            .unwrap_or_else(|| panic!("Service {svc_name} selects no plane"));
        for p in seq(&svc["spec"]["ports"]) {
            let target = match &p["targetPort"] {
                Value::String(name) => *ports
                    .get(name)
                    .unwrap_or_else(|| panic!("Service {svc_name}: no port named {name}")),
                other => u16::try_from(other.as_u64().unwrap()).unwrap(),
            };
            let number = u16::try_from(p["port"].as_u64().unwrap()).unwrap();
            assert!(
                config.ports().contains(&target) && number == target,
                "Service {svc_name}: port {number} → {target}, the config listens on {:?}",
                config.ports()
            );
            if p["name"].as_str() == Some("metrics") {
                assert_eq!(Some(target), config.metrics, "Service {svc_name}");
            }
        }
        service_of.insert(svc_name, (*workload, svc["spec"]["clusterIP"].clone()));
    }
    // The StatefulSet's pods are named through a headless Service.
    let governing = s(&control_set["spec"]["serviceName"], "serviceName");
    assert_eq!(service_of[governing].0, "kms-control");
    assert_eq!(service_of[governing].1.as_str(), Some("None"));
    // Each plane dials the other at a name the cluster resolves to it, on its gRPC port.
    for (config, peer, peer_config) in [
        (&control, "kms-data", &data),
        (&data, "kms-control", &control),
    ] {
        for url in &config.peer_urls {
            let (host, port) = host_port(url);
            assert!(url.starts_with("https://"), "{url}");
            let resolves = match host.split_once('.') {
                Some((pod, svc)) => {
                    pod == format!("{}-0", s(&control_set["metadata"]["name"], "name"))
                        && svc == governing
                        && peer == "kms-control"
                }
                None => service_of.get(&host).is_some_and(|(w, _)| *w == peer),
            };
            assert!(resolves, "{url} does not name a {peer} pod or Service");
            assert_eq!(port, peer_config.grpc, "{url}");
        }
    }

    // Autoscaling and disruptions keep several data-plane replicas.
    let data_labels = &pods[1].1;
    assert!(data_deploy["spec"]["replicas"].as_u64().unwrap() >= 2);
    let hpa = cluster.named("HorizontalPodAutoscaler", "kms-data");
    assert_eq!(
        hpa["spec"]["scaleTargetRef"]["kind"].as_str(),
        Some("Deployment")
    );
    assert_eq!(
        hpa["spec"]["scaleTargetRef"]["name"].as_str(),
        Some("kms-data")
    );
    assert!(hpa["spec"]["minReplicas"].as_u64().unwrap() >= 2);
    let pdb = cluster.named("PodDisruptionBudget", "kms-data");
    assert!(selects(
        &labels(&pdb["spec"]["selector"]["matchLabels"]),
        data_labels
    ));

    // Network policies: each plane's gRPC port only from named peers, the control plane's
    // from the data plane among them; no port the plane does not listen on.
    for (plane_name, plane_labels, config, _) in &pods {
        let policy = cluster
            .kind("NetworkPolicy")
            .into_iter()
            .find(|p| {
                selects(
                    &labels(&p["spec"]["podSelector"]["matchLabels"]),
                    plane_labels,
                )
            })
            .unwrap_or_else(|| panic!("no NetworkPolicy selects {plane_name}"));
        let mut grpc_from_data = false;
        for rule in seq(&policy["spec"]["ingress"]) {
            let ports: Vec<u16> = seq(&rule["ports"])
                .iter()
                .map(|p| u16::try_from(p["port"].as_u64().unwrap()).unwrap())
                .collect();
            for p in &ports {
                assert!(
                    config.ports().contains(p),
                    "{plane_name}: policy names port {p}"
                );
            }
            if ports.contains(&config.grpc) {
                let from = seq(&rule["from"]);
                assert!(
                    !from.is_empty(),
                    "{plane_name}: the gRPC port is open to all"
                );
                grpc_from_data |= from
                    .iter()
                    .any(|f| selects(&labels(&f["podSelector"]["matchLabels"]), data_labels));
            }
        }
        if *plane_name == "kms-control" {
            assert!(
                grpc_from_data,
                "the data plane cannot reach the control plane"
            );
        }
    }

    // The overlay's Secrets hold every key the workloads mount.
    let generated: BTreeMap<String, BTreeSet<String>> = seq(&overlay["secretGenerator"])
        .iter()
        .map(|g| {
            let keys = seq(&g["files"])
                .iter()
                .map(|f| {
                    let f = s(f, "file");
                    match f.split_once('=') {
                        Some((key, _)) => key.to_string(),
                        None => f.rsplit('/').next().unwrap().to_string(),
                    }
                })
                .collect();
            (s(&g["name"], "name").to_string(), keys)
        })
        .collect();
    assert_eq!(
        overlay["generatorOptions"]["disableNameSuffixHash"].as_bool(),
        Some(true),
        "a hashed Secret name changes on rotation and restarts every pod"
    );
    for (secret, keys) in &secrets {
        let made = generated
            .get(secret)
            .unwrap_or_else(|| panic!("the dev overlay makes no Secret {secret}"));
        assert!(
            keys.is_subset(made),
            "{secret}: {keys:?} not all in {made:?}"
        );
    }
    // The TLS files are the ones `kmsctl dev certs` makes, as the overlay says to run it.
    assert!(generated["kms-tls"].is_subset(&dev_cert_names()));
    let instructions = read(&overlay_dir.join("kustomization.yaml"));
    for url in control.peer_urls.iter().chain(&data.peer_urls) {
        let host = host_port(url).0;
        assert!(
            instructions.contains(&format!("--san {host}")),
            "the dev overlay's certificates do not name {host}"
        );
    }
}

// ----------------------------------------------------------------------------------------
// Compose

#[test]
fn compose_file_matches_the_binaries() {
    let dir = repo().join("deploy/docker");
    let mut compose: Value = serde_yaml_ng::from_str(&read(&dir.join("compose.yaml"))).unwrap();
    compose.apply_merge().unwrap();
    let services = compose["services"].as_mapping().unwrap().clone();
    let volumes_declared: BTreeSet<String> = compose["volumes"]
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| s(k, "volume").to_string())
        .collect();
    let mut planes: BTreeMap<String, Loaded> = BTreeMap::new();
    let mut token_volume = None;
    let mut tls_volume = None;
    for (name, svc) in &services {
        let name = s(name, "service").to_string();
        let build = &svc["build"];
        let context = dir.join(s(&build["context"], "build context"));
        assert!(
            context
                .join(s(&build["dockerfile"], "dockerfile"))
                .is_file(),
            "{name}"
        );
        let command: Vec<String> = seq(&svc["command"])
            .iter()
            .map(|c| s(c, "command").to_string())
            .collect();
        let env: BTreeMap<String, String> = svc["environment"]
            .as_mapping()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (s(k, "env").to_string(), s(v, "env").to_string()))
                    .collect()
            })
            .unwrap_or_default();
        // Mounts: named volumes (read-only with :ro) and secrets under /run/secrets.
        let mut mounts: Vec<(PathBuf, String, bool)> = seq(&svc["volumes"])
            .iter()
            .map(|v| {
                let parts: Vec<&str> = s(v, "volume").split(':').collect();
                assert!(
                    volumes_declared.contains(parts[0]),
                    "{name}: volume {}",
                    parts[0]
                );
                (
                    PathBuf::from(parts[1]),
                    parts[0].to_string(),
                    parts.get(2) == Some(&"ro"),
                )
            })
            .collect();
        for secret in seq(&svc["secrets"]) {
            let secret = s(&secret, "secret");
            let file = compose["secrets"][secret]["file"].as_str().unwrap();
            assert!(
                file.starts_with("./secrets/"),
                "{name}: secret {secret} from {file}"
            );
            mounts.push((
                Path::new("/run/secrets").join(secret),
                format!("secret:{secret}"),
                true,
            ));
        }
        let mount_of = |path: &Path| {
            mounts
                .iter()
                .filter(|(m, _, _)| under(path, m))
                .max_by_key(|(m, _, _)| m.as_os_str().len())
                .unwrap_or_else(|| panic!("{name}: {} is on no volume", path.display()))
                .clone()
        };
        let (plane, config_path, token_script) = match command.as_slice() {
            [bin, flag, path] if flag == "--config" => {
                (Plane::of_binary(bin).unwrap(), path.clone(), false)
            }
            [script, path] if script == "kms-prepare-token" => (Plane::Data, path.clone(), true),
            [sh, _, line] if sh == "sh" && line.contains("kmsctl dev certs") => {
                // The certificates service: run its kmsctl as it would run.
                let args: Vec<&str> = line
                    .split("kmsctl ")
                    .nth(1)
                    .unwrap()
                    .split_whitespace()
                    .collect();
                let out_dir =
                    PathBuf::from(args[args.iter().position(|a| *a == "--dir").unwrap() + 1]);
                let (_, volume, ro) = mount_of(&out_dir.join("ca.pem"));
                assert!(!ro);
                tls_volume = Some((volume, out_dir.clone(), args.join(" ")));
                continue;
            }
            other => panic!("{name}: unexpected command {other:?}"),
        };
        let target_of = |cfg: &Value| s(&cfg["target"], "target").to_string();
        let config = seq(&svc["configs"])
            .into_iter()
            .find(|c| target_of(c) == config_path)
            .unwrap_or_else(|| panic!("{name}: nothing at {config_path}"));
        let source = s(&config["source"], "source");
        let file = dir.join(s(&compose["configs"][source]["file"], "config file"));
        for key in env.keys() {
            assert!(
                key.starts_with("KMS_")
                    || (token_script && TOKEN_SCRIPT_VARS.contains(&key.as_str())),
                "{name}: {key} is read by nothing"
            );
        }
        let loaded = load(plane, &read(&file), &env, &name);
        if plane == Plane::Data {
            let (_, token_vol, ro) = mount_of(&token_dir());
            assert!(!ro, "{name}: the token directory is read-only");
            assert!(!token_vol.starts_with("secret:"));
            match &token_volume {
                None => token_volume = Some(token_vol),
                Some(v) => assert_eq!(v, &token_vol, "{name}: another token volume"),
            }
        }
        let pin = loaded.pin_file.clone().unwrap_or_default();
        if token_script {
            assert_eq!(
                env.get("TOKEN_LABEL"),
                loaded.token_label.as_ref(),
                "{name}"
            );
            assert_eq!(env.get("USER_PIN_FILE").map(PathBuf::from), loaded.pin_file);
            assert!(
                mount_of(Path::new(&env["SO_PIN_FILE"]))
                    .1
                    .starts_with("secret:")
            );
            assert!(mount_of(&pin).1.starts_with("secret:"));
            continue;
        }
        for file in &loaded.reads {
            let (_, volume, _) = mount_of(file);
            if *file == pin {
                assert!(
                    volume.starts_with("secret:"),
                    "{name}: the PIN is not a secret"
                );
            }
        }
        for dir in &loaded.writes {
            let (_, volume, ro) = mount_of(dir);
            assert!(
                !ro && !volume.starts_with("secret:"),
                "{name}: {} not writable",
                dir.display()
            );
        }
        for p in seq(&svc["ports"]) {
            let mapping = s(&p, "port");
            let container: u16 = mapping.rsplit(':').next().unwrap().parse().unwrap();
            assert!(
                mapping.starts_with("127.0.0.1:"),
                "{name}: {mapping} beyond loopback"
            );
            assert!(
                loaded.ports().contains(&container),
                "{name}: publishes {container}, the config listens on {:?}",
                loaded.ports()
            );
        }
        planes.insert(name, loaded);
    }
    let (tls_volume, tls_dir, certs_args) = tls_volume.expect("a certificates service");
    for (name, loaded) in &planes {
        for file in loaded
            .reads
            .iter()
            .filter(|f| Some(*f) != loaded.pin_file.as_ref())
        {
            assert!(under(file, &tls_dir), "{name}: {}", file.display());
            let svc = &services[&Value::from(name.as_str())];
            let mounted = seq(&svc["volumes"])
                .iter()
                .any(|v| s(v, "volume") == format!("{tls_volume}:{}:ro", tls_dir.display()));
            assert!(
                mounted,
                "{name}: the certificates' volume is not mounted read-only"
            );
        }
        // The other plane is a compose service running it, on its gRPC port.
        for url in &loaded.peer_urls {
            let (host, port) = host_port(url);
            let peer = planes
                .get(&host)
                .unwrap_or_else(|| panic!("{url}: no service {host}"));
            assert_ne!(peer.plane, loaded.plane);
            assert_eq!(port, peer.grpc, "{url}");
            assert!(
                certs_args.contains(&format!("--san {host}")),
                "certificates lack {host}"
            );
        }
    }
    assert_eq!(planes.len(), 2);

    // kmsctl dev certs, run as the certificates service runs it, writes every file the
    // planes read.
    let out = tempfile::tempdir().unwrap();
    let args = certs_args.replace(
        &tls_dir.display().to_string(),
        &out.path().display().to_string(),
    );
    let status = std::process::Command::new(bin_path("kmsctl").unwrap())
        .args(args.split_whitespace())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "kmsctl {args}");
    for loaded in planes.values() {
        for file in loaded
            .reads
            .iter()
            .filter(|f| Some(*f) != loaded.pin_file.as_ref())
        {
            let name = file.file_name().unwrap();
            assert!(
                out.path().join(name).is_file(),
                "kmsctl dev certs made no {name:?}"
            );
        }
        assert!(
            loaded
                .reads
                .iter()
                .any(|f| f.file_name().unwrap().to_string_lossy()
                    == format!("{}.pem", cert_stem(&loaded.principal))),
            "the plane's client certificate names its principal"
        );
    }
}

// ----------------------------------------------------------------------------------------
// systemd

/// A unit file: every `Key=value` by section, repeated keys in order.
fn unit(path: &Path) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut section = String::new();
    for line in read(path).lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{}: {line}", path.display()));
        out.entry(format!("{section}.{key}"))
            .or_default()
            .push(value.to_string());
    }
    out
}

#[test]
fn systemd_units_match_the_binaries() {
    let dir = repo().join("deploy/systemd");
    for (file, plane) in [
        ("kms-control.service", Plane::Control),
        ("kms-data.service", Plane::Data),
    ] {
        let u = unit(&dir.join(file));
        let one = |key: &str| -> String {
            let values = u
                .get(&format!("Service.{key}"))
                .unwrap_or_else(|| panic!("{file}: no {key}"));
            values.last().unwrap().clone()
        };
        for (key, want) in [
            ("NoNewPrivileges", "yes"),
            ("ProtectSystem", "strict"),
            ("PrivateTmp", "yes"),
            ("ProtectHome", "yes"),
            ("CapabilityBoundingSet", ""),
            ("AmbientCapabilities", ""),
            ("User", "kms"),
            ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ] {
            assert_eq!(one(key), want, "{file}: {key}");
        }
        let sysusers = read(&dir.join("kms.sysusers"));
        assert!(
            sysusers.lines().any(|l| l.starts_with("u kms ")),
            "kms.sysusers"
        );
        let exec: Vec<String> = one("ExecStart")
            .split_whitespace()
            .map(str::to_string)
            .collect();
        assert_eq!(Plane::of_binary(&exec[0]), Some(plane), "{file}");
        assert_eq!(exec[1], "--config", "{file}");
        // The installed config is the reference one (the unit's install steps copy it).
        let config_path = PathBuf::from(&exec[2]);
        let name = config_path.strip_prefix("/etc/kms").unwrap();
        let reference = repo().join("deploy/config").join(name);
        let env: BTreeMap<String, String> = u
            .get("Service.Environment")
            .into_iter()
            .flatten()
            .map(|e| {
                let (k, v) = e.split_once('=').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect();
        for key in env.keys() {
            assert!(
                key.starts_with("KMS_")
                    || key == "SOFTHSM2_CONF"
                    || TOKEN_SCRIPT_VARS.contains(&key.as_str()),
                "{file}: {key} is read by nothing"
            );
        }
        let loaded = load(plane, &read(&reference), &env, file);
        let states: Vec<PathBuf> = one("StateDirectory")
            .split_whitespace()
            .map(|d| Path::new("/var/lib").join(d))
            .collect();
        let logs: Vec<PathBuf> = one("LogsDirectory")
            .split_whitespace()
            .map(|d| Path::new("/var/log").join(d))
            .collect();
        let writable = |p: &Path| states.iter().chain(&logs).any(|d| under(p, d));
        for w in &loaded.writes {
            assert!(
                writable(w),
                "{file}: {} is not writable under ProtectSystem=strict",
                w.display()
            );
        }
        for r in &loaded.reads {
            assert!(
                under(r, Path::new("/etc/kms")),
                "{file}: reads {}",
                r.display()
            );
        }
        if plane == Plane::Data {
            assert_eq!(env["SOFTHSM2_CONF"], "/etc/kms/softhsm2.conf");
            assert!(writable(&token_dir()), "{file}: the token directory");
            assert_eq!(env.get("TOKEN_LABEL"), loaded.token_label.as_ref());
            assert_eq!(env.get("USER_PIN_FILE").map(PathBuf::from), loaded.pin_file);
            assert_eq!(PathBuf::from(&env["TOKEN_DIR"]), token_dir());
            assert_eq!(
                one("ExecStartPre"),
                format!("/usr/local/bin/kms-prepare-token {}", config_path.display())
            );
        }
    }
}

// ----------------------------------------------------------------------------------------
// Dockerfile

#[test]
fn dockerfile_builds_what_the_deployments_run() {
    let text = read(&repo().join("deploy/docker/Dockerfile"));
    // Instructions, continuation lines joined, comments dropped.
    let mut instructions: Vec<String> = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                instructions.push(std::mem::take(&mut current));
            }
        }
    }
    let stages: Vec<usize> = instructions
        .iter()
        .enumerate()
        .filter(|(_, i)| i.starts_with("FROM "))
        .map(|(n, _)| n)
        .collect();
    assert_eq!(stages.len(), 2, "a build stage and a runtime stage");
    let (build, runtime) = instructions.split_at(stages[1]);
    assert!(runtime[0].contains("-slim"), "{}", runtime[0]);
    let joined = |part: &[String]| part.join("\n");
    assert!(
        joined(build).contains("protobuf-compiler"),
        "the etcd client needs protoc"
    );
    let cargo = build.iter().find(|i| i.contains("cargo build")).unwrap();
    let words: Vec<&str> = cargo.split_whitespace().collect();
    let built: BTreeSet<&str> = words
        .windows(2)
        .filter(|w| w[0] == "--bin")
        .map(|w| w[1])
        .collect();
    assert_eq!(built, BTreeSet::from(["kms-control", "kms-data", "kmsctl"]));
    for bin in built {
        assert!(bin_path(bin).is_ok(), "{bin} is no binary of the workspace");
    }
    assert!(cargo.contains("--locked"));
    assert!(
        joined(runtime).contains("softhsm2"),
        "the runtime image lacks SoftHSM2"
    );
    let user = runtime
        .iter()
        .rev()
        .find_map(|i| i.strip_prefix("USER "))
        .expect("a USER");
    let uid: u32 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .expect("a numeric user");
    assert_ne!(uid, 0, "runs as root");
    for i in runtime
        .iter()
        .filter(|i| i.starts_with("COPY ") && !i.contains("--from"))
    {
        let words: Vec<&str> = i
            .split_whitespace()
            .filter(|w| !w.starts_with("--"))
            .collect();
        let source = words[1];
        assert!(repo().join(source).exists(), "COPY {source}: no such file");
    }
    assert!(
        runtime
            .iter()
            .any(|i| i == "ENV SOFTHSM2_CONF=/etc/kms/softhsm2.conf")
    );
    assert!(
        runtime
            .iter()
            .any(|i| i.starts_with("COPY deploy/docker/softhsm2.conf /etc/kms/softhsm2.conf"))
    );
    assert!(runtime.iter().any(|i| i.ends_with("deploy/docker/prepare-token.sh /usr/local/bin/kms-prepare-token")));
    // Every port a deployment's config listens on is exposed.
    let exposed: BTreeSet<u16> = runtime
        .iter()
        .filter_map(|i| i.strip_prefix("EXPOSE "))
        .flat_map(|p| p.split_whitespace().map(|p| p.parse::<u16>().unwrap()))
        .collect();
    let dir = repo().join("deploy/docker");
    for (file, plane) in [("control.toml", Plane::Control), ("data.toml", Plane::Data)] {
        let loaded = load(plane, &read(&dir.join(file)), &BTreeMap::new(), file);
        assert!(
            loaded.ports().is_subset(&exposed),
            "{file}: {:?} not all exposed in {exposed:?}",
            loaded.ports()
        );
    }
}

// ----------------------------------------------------------------------------------------
// The token script

/// `kms-prepare-token`, as the image runs it: twice at once on a new token directory, then
/// again. Each run succeeds, so exactly one root key was made (a second one stops kms-data).
#[test]
fn the_token_script_prepares_one_token_and_root_key() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let tokens = root.join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    let conf = root.join("softhsm2.conf");
    std::fs::write(
        &conf,
        read(&repo().join("deploy/docker/softhsm2.conf")).replace(
            &token_dir().display().to_string(),
            &tokens.display().to_string(),
        ),
    )
    .unwrap();
    std::fs::write(root.join("pin"), "2468-user\n").unwrap();
    std::fs::write(root.join("so-pin"), "1357-so\n").unwrap();
    let config = repo().join("deploy/docker/data.toml");
    let bin_dir = bin_path("kms-data")
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = || {
        let mut cmd = std::process::Command::new("sh");
        cmd.arg(repo().join("deploy/docker/prepare-token.sh"))
            .arg(&config)
            .env("PATH", &path)
            .env("SOFTHSM2_CONF", &conf)
            .env("TOKEN_DIR", &tokens)
            .env("TOKEN_LABEL", "kms")
            .env("USER_PIN_FILE", root.join("pin"))
            .env("SO_PIN_FILE", root.join("so-pin"))
            .env("KMS_HSM__USER_PIN_FILE", root.join("pin"))
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("KMS_") && name != "KMS_HSM__USER_PIN_FILE" {
                cmd.env_remove(name);
            }
        }
        cmd.spawn().unwrap()
    };
    let (a, b) = (run(), run());
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "kms-prepare-token failed");
    }
    let out = run().wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kms-prepare-token failed on a prepared token"
    );
}
