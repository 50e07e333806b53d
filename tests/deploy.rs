//! The deployment kit in `deploy/`, checked the way an operator would rely on it: every YAML
//! document parses and the pieces hang together (probes on the admin port, secrets only through
//! `secretKeyRef`, selectors that select the Deployment's pods, the HPA aimed at the
//! Deployment), the container configs pass `portcullis check-config`, and the Dockerfile builds
//! a multi-stage image that runs as a non-root user.
//!
//! Docker and a cluster are not needed: this reads the files and runs the real binary's
//! `check-config` on them.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

const SECRET_VARS: [&str; 2] = ["DATABASE_URL", "BETTER_AUTH_SECRET"];
const DUMMY_DATABASE_URL: &str =
    "postgres://portcullis:dummy@db.example.invalid:5432/portcullis?sslmode=verify-full";
const CONFIG_PATH_IN_IMAGE: &str = "/etc/portcullis/portcullis.toml";

// ---------------------------------------------------------------------------------------------
// reading deploy/
// ---------------------------------------------------------------------------------------------

fn deploy_dir() -> PathBuf {
    common::manifest_dir().join("deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Every `.yml` / `.yaml` file under `deploy/`, sorted.
fn yaml_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "yml" || e == "yaml") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&deploy_dir(), &mut out);
    out.sort();
    assert!(!out.is_empty(), "no YAML files under deploy/");
    out
}

/// Every document of a (possibly multi-document) YAML file, as JSON values; empty documents
/// (a trailing `---`) are skipped.
fn documents(path: &Path) -> Vec<Value> {
    let text = read(path);
    let mut out = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
        let yaml: serde_yaml_ng::Value = serde::Deserialize::deserialize(doc)
            .unwrap_or_else(|e| panic!("{} document {i}: not YAML: {e}", path.display()));
        if yaml.is_null() {
            continue;
        }
        let json = serde_json::to_value(&yaml)
            .unwrap_or_else(|e| panic!("{} document {i}: not JSON-shaped: {e}", path.display()));
        out.push(json);
    }
    out
}

fn is_compose(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.contains("compose"))
}

/// Every Kubernetes manifest document (everything in deploy/ that is not a compose file).
fn manifests() -> Vec<(PathBuf, Value)> {
    // The edge proxies' configs in forward-auth/ are no Kubernetes manifests
    // (tests/forward_auth.rs checks them).
    let proxies = deploy_dir().join("forward-auth");
    yaml_files()
        .into_iter()
        .filter(|p| !is_compose(p) && !p.starts_with(&proxies))
        .flat_map(|p| documents(&p).into_iter().map(move |d| (p.clone(), d)))
        .collect()
}

/// The one manifest of this kind.
#[track_caller]
fn only(kind: &str) -> Value {
    let all: Vec<Value> = manifests()
        .into_iter()
        .map(|(_, d)| d)
        .filter(|d| d["kind"] == kind)
        .collect();
    assert_eq!(all.len(), 1, "expected exactly one {kind} in deploy/");
    all.into_iter().next().unwrap()
}

fn compose() -> Value {
    let path = deploy_dir().join("docker-compose.yml");
    let mut docs = documents(&path);
    assert_eq!(docs.len(), 1, "docker-compose.yml holds one document");
    docs.remove(0)
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} must be a string, got {v}"))
}

fn labels_select(selector: &Value, labels: &Value, what: &str) {
    let selector = selector
        .as_object()
        .unwrap_or_else(|| panic!("{what}: selector must be a map of labels, got {selector}"));
    assert!(
        !selector.is_empty(),
        "{what}: empty selector selects everything"
    );
    for (k, v) in selector {
        assert_eq!(
            &labels[k], v,
            "{what}: selector {k}={v} does not match the Deployment's pod labels {labels}"
        );
    }
}

fn deployment() -> Value {
    only("Deployment")
}

fn pod_spec() -> Value {
    deployment()["spec"]["template"]["spec"].clone()
}

fn pod_labels() -> Value {
    deployment()["spec"]["template"]["metadata"]["labels"].clone()
}

/// The gateway container (the one running the `portcullis` image).
fn gateway_container() -> Value {
    let containers = pod_spec()["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(containers.len(), 1, "one container per gateway pod");
    containers.into_iter().next().unwrap()
}

/// A container port by name or number, as its number.
fn resolve_port(container: &Value, port: &Value) -> u64 {
    if let Some(n) = port.as_u64() {
        return n;
    }
    let name = str_of(port, "port");
    container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no container port named {name}"))
}

/// The container port named `name`.
fn named_port(container: &Value, name: &str) -> u64 {
    resolve_port(container, &Value::String(name.into()))
}

fn toml_of(text: &str, what: &str) -> toml::Value {
    text.parse()
        .unwrap_or_else(|e| panic!("{what} is not TOML: {e}"))
}

/// The config the Kubernetes pods run (from the ConfigMap).
fn configmap_config_text() -> String {
    let cm = only("ConfigMap");
    str_of(
        &cm["data"]["portcullis.toml"],
        "ConfigMap data portcullis.toml",
    )
    .to_string()
}

fn port_of(config: &toml::Value, key: &str) -> u64 {
    let addr = config["server"][key].as_str().unwrap();
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    u64::from(addr.port())
}

/// Runs `check-config` on `config_text` (written to a temp file) with `env`.
fn check_config(config_text: &str, env: &[(&str, &str)]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.toml");
    std::fs::write(&path, config_text).unwrap();
    let (status, _, stderr) = common::run_bin(
        &["check-config", "--config", path.to_str().unwrap()],
        env,
        dir.path(),
        Duration::from_secs(30),
    );
    (status.success(), stderr)
}

// ---------------------------------------------------------------------------------------------
// manifests
// ---------------------------------------------------------------------------------------------

#[test]
fn every_yaml_document_in_deploy_parses_and_names_itself() {
    let mut seen = BTreeSet::new();
    for (path, doc) in manifests() {
        let at = path.display();
        let api = doc["apiVersion"].as_str().unwrap_or_default();
        let kind = doc["kind"].as_str().unwrap_or_default();
        let name = doc["metadata"]["name"].as_str().unwrap_or_default();
        assert!(
            !api.is_empty(),
            "{at}: a document without apiVersion: {doc}"
        );
        assert!(!kind.is_empty(), "{at}: a document without kind: {doc}");
        assert!(!name.is_empty(), "{at}: {kind} without metadata.name");
        assert!(
            seen.insert((kind.to_string(), name.to_string())),
            "{at}: {kind}/{name} defined twice"
        );
    }
    for kind in [
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ConfigMap",
    ] {
        assert!(
            seen.iter().any(|(k, _)| k == kind),
            "deploy/k8s has no {kind}"
        );
    }
    let services = compose();
    assert!(
        services["services"].is_object(),
        "docker-compose.yml has no services"
    );
}

#[test]
fn deployment_probes_hit_healthz_and_readyz_on_the_admin_port() {
    let c = gateway_container();
    let admin = named_port(&c, "admin");
    let config = toml_of(&configmap_config_text(), "the ConfigMap's portcullis.toml");
    assert_eq!(
        admin,
        port_of(&config, "admin_listen"),
        "container port `admin` must be server.admin_listen's port"
    );
    assert_eq!(
        named_port(&c, "http"),
        port_of(&config, "listen"),
        "container port `http` must be server.listen's port"
    );
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &c[probe]["httpGet"];
        assert!(
            get.is_object(),
            "{probe} must be an httpGet probe: {}",
            c[probe]
        );
        assert_eq!(get["path"], path, "{probe} path");
        assert_eq!(
            resolve_port(&c, &get["port"]),
            admin,
            "{probe} must probe the admin port, not the public one"
        );
        assert!(
            get["scheme"].is_null() || get["scheme"] == "HTTP",
            "{probe}: the admin listener speaks plain HTTP"
        );
    }
}

/// Walks every value in `v`, calling `f(path, key, value)` for each map entry.
fn walk(v: &Value, path: &str, f: &mut dyn FnMut(&str, &str, &Value)) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                f(path, k, child);
                walk(child, &format!("{path}.{k}"), f);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                walk(child, &format!("{path}[{i}]"), f);
            }
        }
        _ => {}
    }
}

#[test]
fn secrets_reach_the_pods_only_through_secret_key_refs() {
    // Nowhere in the manifests: no literal value for a secret variable, no Secret with data.
    for (path, doc) in manifests() {
        let at = path.display().to_string();
        assert!(
            !(doc["kind"] == "Secret"
                && (doc["data"].is_object() || doc["stringData"].is_object())),
            "{at}: a Secret with literal data; create it with kubectl instead (docs/deployment.md)"
        );
        walk(&doc, "", &mut |p, key, value| {
            assert!(
                !SECRET_VARS.contains(&key),
                "{at}: {p}.{key} holds a literal secret value: {value}"
            );
            if key == "env" {
                for e in value.as_array().into_iter().flatten() {
                    let name = e["name"].as_str().unwrap_or_default();
                    if SECRET_VARS.contains(&name) {
                        assert!(
                            e.get("value").is_none(),
                            "{at}: env {name} must not carry a literal value"
                        );
                        let r = &e["valueFrom"]["secretKeyRef"];
                        assert!(
                            r["name"].is_string() && r["key"].is_string(),
                            "{at}: env {name} must come from valueFrom.secretKeyRef, got {e}"
                        );
                    }
                }
            }
        });
    }
    // The gateway container gets both, from a Secret.
    let c = gateway_container();
    let env = c["env"].as_array().cloned().unwrap_or_default();
    for var in SECRET_VARS {
        let e = env
            .iter()
            .find(|e| e["name"] == var)
            .unwrap_or_else(|| panic!("the gateway container does not get {var}"));
        assert!(
            e["valueFrom"]["secretKeyRef"]["name"].is_string(),
            "{var}: {e}"
        );
    }
    assert!(
        c["envFrom"].is_null(),
        "envFrom would hide where the secrets come from; use secretKeyRef per variable"
    );
    // The ConfigMap's config names the env var but holds no secret.
    let config = configmap_config_text();
    let parsed = toml_of(&config, "the ConfigMap's portcullis.toml");
    assert_eq!(
        parsed["tokens"]["secret_env"].as_str(),
        Some("BETTER_AUTH_SECRET")
    );
    let url = parsed["store"]["url"].as_str().unwrap();
    assert!(
        !url.contains('@'),
        "store.url in the ConfigMap must not carry credentials: {url}"
    );
}

#[test]
fn gateway_pods_run_as_non_root_with_a_read_only_root_and_bounded_resources() {
    let pod = pod_spec();
    let c = gateway_container();
    let run_as_non_root = c["securityContext"]["runAsNonRoot"]
        .as_bool()
        .or_else(|| pod["securityContext"]["runAsNonRoot"].as_bool());
    assert_eq!(run_as_non_root, Some(true), "runAsNonRoot must be true");
    let uid = c["securityContext"]["runAsUser"]
        .as_u64()
        .or_else(|| pod["securityContext"]["runAsUser"].as_u64());
    assert!(uid.is_none_or(|u| u != 0), "runAsUser must not be 0");
    let sc = &c["securityContext"];
    assert_eq!(
        sc["allowPrivilegeEscalation"], false,
        "allowPrivilegeEscalation"
    );
    assert_eq!(sc["readOnlyRootFilesystem"], true, "readOnlyRootFilesystem");
    assert!(sc["privileged"].is_null() || sc["privileged"] == false);
    assert!(
        sc["capabilities"]["drop"]
            .as_array()
            .is_some_and(|d| d.iter().any(|c| c == "ALL")),
        "capabilities must drop ALL"
    );
    for (kind, res) in [
        ("requests", "cpu"),
        ("requests", "memory"),
        ("limits", "memory"),
    ] {
        assert!(
            c["resources"][kind][res].is_string() || c["resources"][kind][res].is_number(),
            "resources.{kind}.{res} must be set"
        );
    }
    assert!(
        deployment()["spec"]["replicas"].as_u64().unwrap_or(1) >= 2,
        "at least two replicas"
    );
}

#[test]
fn termination_grace_outlasts_the_gateways_own_drain() {
    let config = toml_of(&configmap_config_text(), "the ConfigMap's portcullis.toml");
    let grace = config["server"]
        .get("grace_period_secs")
        .and_then(toml::Value::as_integer)
        .unwrap_or(10);
    let pre_stop = gateway_container()["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_i64()
        .unwrap_or(0);
    let termination = pod_spec()["terminationGracePeriodSeconds"]
        .as_i64()
        .unwrap_or(30);
    assert!(
        termination > pre_stop + grace + 1,
        "terminationGracePeriodSeconds ({termination}) must exceed the preStop pause \
         ({pre_stop}) + server.grace_period_secs ({grace}) + the shutdown slack (1)"
    );
}

#[test]
fn config_comes_from_the_configmap_mounted_where_the_image_looks() {
    let pod = pod_spec();
    let c = gateway_container();
    let cm = only("ConfigMap");
    let cm_name = str_of(&cm["metadata"]["name"], "ConfigMap name");
    let volume = pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["configMap"]["name"] == cm_name)
        .unwrap_or_else(|| panic!("no volume from ConfigMap {cm_name}"));
    let mount = c["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["name"] == volume["name"])
        .unwrap_or_else(|| panic!("volume {} is not mounted", volume["name"]));
    assert_eq!(mount["mountPath"], "/etc/portcullis");
    let args: Vec<&str> = c["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let at = args
        .iter()
        .position(|a| *a == "--config")
        .expect("the container passes --config");
    assert_eq!(args.first(), Some(&"serve"));
    assert_eq!(args.get(at + 1), Some(&CONFIG_PATH_IN_IMAGE));
}

#[test]
fn hpa_scales_the_deployment_on_cpu() {
    let hpa = only("HorizontalPodAutoscaler");
    assert_eq!(hpa["apiVersion"], "autoscaling/v2");
    let target = &hpa["spec"]["scaleTargetRef"];
    assert_eq!(target["kind"], "Deployment");
    assert_eq!(target["apiVersion"], "apps/v1");
    assert_eq!(
        target["name"],
        deployment()["metadata"]["name"],
        "the HPA must target the Deployment by name"
    );
    let min = hpa["spec"]["minReplicas"].as_u64().unwrap_or(1);
    let max = hpa["spec"]["maxReplicas"].as_u64().unwrap_or(0);
    assert!(min >= 2 && max > min, "replicas {min}..{max}");
    let metrics = hpa["spec"]["metrics"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        metrics
            .iter()
            .any(|m| m["type"] == "Resource" && m["resource"]["name"] == "cpu"),
        "the HPA scales on CPU: {metrics:?}"
    );
    // Utilisation is relative to the request: without one the HPA cannot compute it.
    assert!(gateway_container()["resources"]["requests"]["cpu"].is_string());
}

#[test]
fn deployment_service_pdb_and_network_policy_select_the_same_pods() {
    let d = deployment();
    let labels = pod_labels();
    labels_select(
        &d["spec"]["selector"]["matchLabels"],
        &labels,
        "Deployment selector",
    );
    let pdb = only("PodDisruptionBudget");
    assert_eq!(pdb["apiVersion"], "policy/v1");
    labels_select(&pdb["spec"]["selector"]["matchLabels"], &labels, "PDB");
    let svc = only("Service");
    labels_select(&svc["spec"]["selector"], &labels, "Service");
    for (_, np) in manifests()
        .into_iter()
        .filter(|(_, d)| d["kind"] == "NetworkPolicy")
    {
        labels_select(
            &np["spec"]["podSelector"]["matchLabels"],
            &labels,
            "NetworkPolicy",
        );
    }
}

#[test]
fn only_the_public_port_is_exposed_by_services() {
    let c = gateway_container();
    let public = named_port(&c, "http");
    let admin = named_port(&c, "admin");
    for (path, svc) in manifests()
        .into_iter()
        .filter(|(_, d)| d["kind"] == "Service")
    {
        let ports = svc["spec"]["ports"].as_array().cloned().unwrap_or_default();
        assert!(
            !ports.is_empty(),
            "{}: Service without ports",
            path.display()
        );
        for p in ports {
            let target = if p["targetPort"].is_null() {
                p["port"].as_u64().unwrap()
            } else {
                resolve_port(&c, &p["targetPort"])
            };
            assert_ne!(
                target,
                admin,
                "{}: the admin port must stay private",
                path.display()
            );
            assert_eq!(target, public, "{}: Service port {p}", path.display());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// docker compose
// ---------------------------------------------------------------------------------------------

#[test]
fn compose_runs_postgres_an_upstream_and_the_gateway_from_the_dockerfile() {
    let c = compose();
    let services = c["services"].as_object().expect("services");
    let names: BTreeSet<&str> = services.keys().map(String::as_str).collect();
    for name in ["postgres", "app", "portcullis"] {
        assert!(
            names.contains(name),
            "compose service {name} missing: {names:?}"
        );
    }

    let pg = &services["postgres"];
    assert!(str_of(&pg["image"], "postgres image").starts_with("postgres:16"));
    assert!(
        pg["healthcheck"]["test"].is_array(),
        "postgres needs a healthcheck"
    );

    let gw = &services["portcullis"];
    let context = deploy_dir().join(str_of(&gw["build"]["context"], "build.context"));
    let dockerfile = context.join(str_of(&gw["build"]["dockerfile"], "build.dockerfile"));
    assert!(
        dockerfile.is_file() && context.join("Cargo.toml").is_file(),
        "the gateway builds from the repository root with deploy/Dockerfile"
    );
    assert_eq!(
        gw["depends_on"]["postgres"]["condition"], "service_healthy",
        "the gateway waits for a healthy Postgres"
    );

    // Secrets come from the environment of whoever runs compose, never from the file.
    let env = &gw["environment"];
    let secret = str_of(&env["BETTER_AUTH_SECRET"], "BETTER_AUTH_SECRET");
    assert!(
        secret.starts_with("${BETTER_AUTH_SECRET:?"),
        "BETTER_AUTH_SECRET must be required from the environment, got {secret}"
    );
    let url = str_of(&env["DATABASE_URL"], "DATABASE_URL");
    assert!(url.starts_with("postgres://"), "DATABASE_URL: {url}");
    assert!(
        url.contains("${POSTGRES_PASSWORD"),
        "the database password comes from the environment: {url}"
    );
    assert!(
        str_of(&pg["environment"]["POSTGRES_PASSWORD"], "POSTGRES_PASSWORD")
            .starts_with("${POSTGRES_PASSWORD:?")
    );

    // Ports: the public one published, the admin one on loopback only.
    let ports: Vec<&str> = gw["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| str_of(p, "port mapping"))
        .collect();
    assert!(
        ports.iter().any(|p| p.ends_with(":8080")),
        "8080 published: {ports:?}"
    );
    for p in ports.iter().filter(|p| p.ends_with(":9090")) {
        assert!(
            p.starts_with("127.0.0.1:"),
            "the admin port must be bound to 127.0.0.1 only: {p}"
        );
    }
    assert!(
        ports.iter().any(|p| p.ends_with(":9090")),
        "9090 on loopback: {ports:?}"
    );

    // The upstream is named as deploy/portcullis.toml names it: the compose service `app`,
    // resolved by the network's DNS.
    let config = toml_of(
        &read(&deploy_dir().join("portcullis.toml")),
        "deploy/portcullis.toml",
    );
    let app_addr = config["upstream"][0]["addrs"][0].as_str().unwrap();
    let port = services["app"]["environment"]["HTTP_PORT"]
        .as_str()
        .expect("the app service's HTTP_PORT");
    assert_eq!(
        app_addr,
        format!("app:{port}"),
        "deploy/portcullis.toml must name the compose service app on its port"
    );
}

// ---------------------------------------------------------------------------------------------
// the container configs through the real binary
// ---------------------------------------------------------------------------------------------

#[test]
fn container_configs_pass_check_config_with_secrets_from_the_environment() {
    let secret = "deploy-test-secret-0123456789-abcdefghijklmnop";
    let env = [
        ("BETTER_AUTH_SECRET", secret),
        ("DATABASE_URL", DUMMY_DATABASE_URL),
    ];
    let image_config = read(&deploy_dir().join("portcullis.toml"));
    for (what, text) in [
        ("deploy/portcullis.toml", image_config.as_str()),
        (
            "deploy/k8s/configmap.yaml",
            configmap_config_text().as_str(),
        ),
    ] {
        let (ok, stderr) = check_config(text, &env);
        assert!(ok, "{what} must pass check-config:\n{stderr}");
        // The secret really comes from the environment: without it the config is refused.
        let (ok, stderr) = check_config(text, &[("DATABASE_URL", DUMMY_DATABASE_URL)]);
        assert!(!ok, "{what} passed check-config without BETTER_AUTH_SECRET");
        assert!(
            stderr.contains("BETTER_AUTH_SECRET"),
            "the refusal names the variable: {stderr}"
        );

        let config = toml_of(text, what);
        assert_eq!(port_of(&config, "listen"), 8080, "{what}: public port");
        assert_eq!(port_of(&config, "admin_listen"), 9090, "{what}: admin port");
        for key in ["listen", "admin_listen"] {
            assert!(
                config["server"][key]
                    .as_str()
                    .unwrap()
                    .starts_with("0.0.0.0:"),
                "{what}: server.{key} must listen on all interfaces inside a container"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Dockerfile
// ---------------------------------------------------------------------------------------------

/// Dockerfile instructions as (KEYWORD, arguments), continuation lines joined, comments dropped.
fn dockerfile() -> Vec<(String, String)> {
    let text = read(&deploy_dir().join("Dockerfile"));
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(stripped) = trimmed.strip_suffix('\\') {
            current.push_str(stripped);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (kw, args) = current
            .split_once(char::is_whitespace)
            .unwrap_or((&current, ""));
        out.push((kw.to_ascii_uppercase(), args.trim().to_string()));
        current.clear();
    }
    out
}

#[test]
fn dockerfile_is_multi_stage_and_runs_as_a_non_root_user() {
    let ins = dockerfile();
    let froms: Vec<usize> = ins
        .iter()
        .enumerate()
        .filter(|(_, (k, _))| k == "FROM")
        .map(|(i, _)| i)
        .collect();
    assert!(froms.len() >= 2, "multi-stage: at least two FROM");
    let (_, first) = &ins[froms[0]];
    assert!(
        first.to_ascii_lowercase().contains(" as "),
        "the build stage is named (FROM … AS builder): {first}"
    );
    let builder = first.rsplit(' ').next().unwrap().to_string();
    assert!(
        ins.iter()
            .any(|(k, a)| k == "RUN" && a.contains("cargo build --release --locked")),
        "the builder runs cargo build --release --locked"
    );

    let runtime = &ins[*froms.last().unwrap()..];
    assert!(
        runtime
            .iter()
            .any(|(k, a)| k == "COPY" && a.contains(&format!("--from={builder}"))),
        "the runtime stage copies the binary from the {builder} stage"
    );
    let user = runtime
        .iter()
        .rev()
        .find(|(k, _)| k == "USER")
        .map(|(_, a)| a.clone())
        .expect("the runtime stage sets USER");
    let uid = user.split(':').next().unwrap();
    assert!(
        !matches!(uid, "root" | "0") && uid.parse::<u32>().is_ok(),
        "USER must be a numeric non-root UID (Kubernetes can then verify runAsNonRoot): {user}"
    );
    let exposed: BTreeSet<&str> = runtime
        .iter()
        .filter(|(k, _)| k == "EXPOSE")
        .flat_map(|(_, a)| a.split_whitespace())
        .collect();
    assert_eq!(exposed, BTreeSet::from(["8080", "9090"]), "EXPOSE");
    let entry = runtime
        .iter()
        .find(|(k, _)| k == "ENTRYPOINT")
        .expect("ENTRYPOINT");
    assert_eq!(entry.1, r#"["portcullis"]"#);
    let cmd = runtime.iter().find(|(k, _)| k == "CMD").expect("CMD");
    let cmd: Vec<String> = serde_json::from_str(&cmd.1).expect("CMD in exec (JSON) form");
    assert_eq!(cmd, ["serve", "--config", CONFIG_PATH_IN_IMAGE]);
    assert!(
        runtime.iter().any(|(k, a)| k == "COPY"
            && a.split_whitespace().collect::<Vec<_>>()
                == ["deploy/portcullis.toml", CONFIG_PATH_IN_IMAGE]),
        "the image carries deploy/portcullis.toml at {CONFIG_PATH_IN_IMAGE}"
    );
}

#[test]
fn dockerfile_copies_only_what_exists_and_what_the_ignore_file_lets_through() {
    let root = common::manifest_dir();
    let ignore = read(&deploy_dir().join("Dockerfile.dockerignore"));
    let let_through: BTreeSet<&str> = ignore
        .lines()
        .filter_map(|l| l.trim().strip_prefix('!'))
        .map(|p| p.trim_end_matches('/'))
        .collect();
    assert!(
        ignore.lines().any(|l| l.trim() == "*"),
        "the ignore file starts from nothing (target/ is gigabytes)"
    );
    for (_, args) in dockerfile().iter().filter(|(k, _)| k == "COPY") {
        if args.contains("--from=") {
            continue;
        }
        let words: Vec<&str> = args
            .split_whitespace()
            .filter(|w| !w.starts_with("--"))
            .collect();
        let (_, sources) = words.split_last().expect("COPY src… dest");
        for src in sources {
            let src = src.trim_start_matches("./").trim_end_matches('/');
            assert!(
                root.join(src).exists(),
                "Dockerfile copies {src}, which is not in the repository"
            );
            assert!(
                let_through.contains(src),
                "Dockerfile copies {src}, but deploy/Dockerfile.dockerignore leaves it out"
            );
        }
    }
}
