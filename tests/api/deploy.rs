//! The Kubernetes manifests (deploy/k8s): rendered with `kubectl kustomize`,
//! validated offline (kubernetes-validate for the built-in kinds, KEDA's
//! ScaledObject against the shape of its CRD), and held to the code: the
//! ConfigMap's configuration loads with the Secret's files, the ScaledObject
//! watches exactly the consumers that configuration makes, the probes and the
//! Service reach the configured listeners, the grace period covers shutdown.
//! Missing tools fail these tests: deploy/test.sh installs them. And the flow
//! the manifests rely on: replicas that do not provision wait, not ready, for
//! the provisioning Job.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::Value;
use softphone_bridge::config::Settings;
use softphone_bridge::http::{HEALTHZ_PATH, READYZ_PATH};
use softphone_bridge::pipeline;

use crate::helpers::{Bridge, FakeCrm, bridge_config, eventually, free_port, start_nats};

const KUSTOMIZATION: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/k8s");
/// deploy/python-tools.sh installs it (from deploy/requirements.txt).
const KUBERNETES_VALIDATE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/target/deploy-venv/bin/kubernetes-validate"
);
/// The oldest Kubernetes the manifests are for (`preStop.sleep` is on by
/// default from 1.30), and the newest whose schemas kubernetes-validate ships.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];

/// The kustomization rendered: its YAML text and each document.
fn render() -> (String, Vec<Value>) {
    let output = Command::new("kubectl")
        .args(["kustomize", KUSTOMIZATION])
        .output()
        .unwrap_or_else(|e| panic!("kubectl is needed to render deploy/k8s (deploy/test.sh): {e}"));
    assert!(
        output.status.success(),
        "kubectl kustomize deploy/k8s failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("YAML is UTF-8");
    let documents = serde_norway::Deserializer::from_str(&text)
        .map(|document| Value::deserialize(document).expect("each document is YAML"))
        .collect();
    (text, documents)
}

/// The one document of `kind`.
fn one<'a>(documents: &'a [Value], kind: &str) -> &'a Value {
    let mut found = documents.iter().filter(|d| d["kind"] == kind);
    let document = found
        .next()
        .unwrap_or_else(|| panic!("no {kind} in deploy/k8s"));
    assert!(found.next().is_none(), "one {kind} only");
    document
}

/// The item of a list of named items (volumes, mounts, ports, variables) called `name`.
fn named<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .find(|item| item["name"] == name)
        .unwrap_or_else(|| panic!("nothing named {name} in {list}"))
}

fn str_of<'a>(value: &'a Value, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {value}"))
}

#[test]
fn the_manifests_validate_offline() {
    let (text, documents) = render();
    let file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    std::fs::write(file.path(), &text).unwrap();
    assert!(
        Path::new(KUBERNETES_VALIDATE).is_file(),
        "{KUBERNETES_VALIDATE} is missing: run deploy/python-tools.sh (deploy/test.sh does)"
    );
    for version in KUBERNETES_VERSIONS {
        let output = Command::new(KUBERNETES_VALIDATE)
            .args(["--strict", "-k", version])
            .arg(file.path())
            .output()
            .expect("kubernetes-validate runs");
        let report = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "Kubernetes {version}:\n{report}");
        // Every built-in document was checked against a schema, not skipped.
        for document in documents.iter().filter(|d| d["kind"] != "ScaledObject") {
            let resource = format!(
                "{}/{}",
                str_of(&document["kind"], "kind").to_lowercase(),
                str_of(&document["metadata"]["name"], "metadata.name")
            );
            assert!(
                report.contains(&format!("passed for resource {resource} ")),
                "{resource} not validated against Kubernetes {version}:\n{report}"
            );
        }
    }
    let scaled = one(&documents, "ScaledObject");
    let scaled: ScaledObject = serde_json::from_value(scaled.clone())
        .unwrap_or_else(|e| panic!("the ScaledObject does not fit KEDA's CRD: {e}"));
    scaled.check();
}

#[test]
fn the_manifests_agree_with_the_code() {
    let (_, documents) = render();
    let deployment = one(&documents, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let mount = |volume: &str| {
        let mount = named(&container["volumeMounts"], volume);
        PathBuf::from(str_of(&mount["mountPath"], "mountPath"))
    };
    let volume = |name: &str| named(&pod["volumes"], name);

    // The configuration: the ConfigMap's file, where SOFTPHONE_BRIDGE_CONFIG says.
    let config_map = one(&documents, "ConfigMap");
    assert_eq!(
        volume("config")["configMap"]["name"],
        config_map["metadata"]["name"]
    );
    let data = config_map["data"].as_object().expect("ConfigMap data");
    assert_eq!(data.len(), 1, "one file in the ConfigMap");
    let (file_name, toml) = data.iter().next().unwrap();
    let config_env = named(&container["env"], softphone_bridge::config::CONFIG_ENV);
    assert_eq!(
        PathBuf::from(str_of(&config_env["value"], "the config variable")),
        mount("config").join(file_name)
    );

    // It loads with the Secret's files where the *_file settings name them.
    let secret = one(&documents, "Secret");
    assert_eq!(
        volume("secrets")["secret"]["secretName"],
        secret["metadata"]["name"]
    );
    let secrets_dir = tempfile::tempdir().unwrap();
    for (key, value) in secret["stringData"].as_object().expect("stringData") {
        std::fs::write(secrets_dir.path().join(key), str_of(value, key)).unwrap();
    }
    let mounted = mount("secrets");
    let toml = str_of(toml, "the configuration");
    // Every file setting names a key of the Secret, where it is mounted.
    let keys = secret["stringData"].as_object().unwrap();
    let files = file_settings(&toml::from_str(toml).expect("the configuration is TOML"));
    assert!(!files.is_empty());
    for (key, path) in &files {
        let name = Path::new(path)
            .strip_prefix(&mounted)
            .unwrap_or_else(|_| panic!("{key} = {path:?} is not under {}", mounted.display()));
        assert!(
            keys.contains_key(name.to_str().unwrap()),
            "{key} = {path:?}: the Secret has no key {name:?}"
        );
    }
    let toml = toml.replace(
        &format!("{}/", mounted.display()),
        &format!("{}/", secrets_dir.path().display()),
    );
    let config = secrets_dir.path().join(file_name);
    std::fs::write(&config, &toml).unwrap();
    let settings = Settings::load(Some(config.as_path()))
        .unwrap_or_else(|e| panic!("the ConfigMap's configuration does not load: {e}"));
    let rendered = settings.to_redacted_toml();
    for (key, value) in secret["stringData"].as_object().unwrap() {
        assert!(!rendered.contains(str_of(value, key)), "{key} shown");
    }

    // Replicas bind; the Job provisions, from the same configuration.
    assert!(!settings.streams.provision_on_start);
    assert_eq!(container["args"], serde_json::json!(["run"]));
    let job = one(&documents, "Job");
    let job_pod = &job["spec"]["template"]["spec"];
    assert_eq!(
        job_pod["containers"][0]["args"],
        serde_json::json!(["provision"])
    );
    assert_eq!(
        job_pod["volumes"], pod["volumes"],
        "the Job's configuration"
    );
    assert_eq!(
        job_pod["containers"][0]["volumeMounts"],
        container["volumeMounts"]
    );

    // Probes on the ops listener; the Service on the command API.
    let port = |name: &str| {
        named(&container["ports"], name)["containerPort"]
            .as_u64()
            .expect("a port number")
    };
    let listen_port = |addr: &Option<String>| {
        let addr = addr.as_deref().expect("the listener is configured");
        addr.rsplit_once(':').unwrap().1.parse::<u64>().unwrap()
    };
    assert_eq!(port("ops"), listen_port(&settings.http.ops_listen));
    assert_eq!(port("http"), listen_port(&settings.http.listen));
    for (probe, path) in [
        ("startupProbe", HEALTHZ_PATH),
        ("livenessProbe", HEALTHZ_PATH),
        ("readinessProbe", READYZ_PATH),
    ] {
        assert_eq!(container[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(container[probe]["httpGet"]["port"], "ops", "{probe}");
    }
    let service = one(&documents, "Service");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http");
    let pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        .as_object()
        .unwrap();
    let selects_the_pods = |selector: &Value| {
        selector
            .as_object()
            .expect("a selector")
            .iter()
            .all(|(k, v)| pod_labels.get(k) == Some(v))
    };
    assert!(selects_the_pods(&service["spec"]["selector"]));
    let budget = one(&documents, "PodDisruptionBudget");
    assert!(selects_the_pods(&budget["spec"]["selector"]["matchLabels"]));

    // Non-root, read-only root file system, bounded memory.
    for (what, pod) in [("Deployment", pod), ("Job", job_pod)] {
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{what}");
        let container = &pod["containers"][0];
        assert_eq!(
            container["securityContext"]["readOnlyRootFilesystem"], true,
            "{what}"
        );
        assert!(
            container["resources"]["limits"]["memory"].is_string(),
            "{what}"
        );
    }

    // The grace period covers the preStop pause and the longest shutdown.
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    let pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap_or(0);
    let stop = softphone_bridge::startup::stop_within(&settings).as_secs();
    assert!(
        grace > pause + stop,
        "terminationGracePeriodSeconds {grace} <= preStop {pause} s + shutdown {stop} s"
    );

    // KEDA scales this Deployment on the backlog of exactly the pipeline's consumers.
    let scaled: ScaledObject =
        serde_json::from_value(one(&documents, "ScaledObject").clone()).unwrap();
    assert_eq!(
        Some(&scaled.spec.scale_target_ref.name),
        deployment["metadata"]["name"]
            .as_str()
            .map(str::to_owned)
            .as_ref()
    );
    let watched: BTreeSet<(String, String)> = scaled
        .spec
        .triggers
        .iter()
        .map(|t| (t.metadata["stream"].clone(), t.metadata["consumer"].clone()))
        .collect();
    let consumers: BTreeSet<(String, String)> = pipeline::consumers(&settings)
        .into_iter()
        .map(|c| (c.stream.to_owned(), c.name))
        .collect();
    assert_eq!(
        watched, consumers,
        "the ScaledObject's triggers are not the pipeline's consumers"
    );
    assert_eq!(
        watched.len(),
        scaled.spec.triggers.len(),
        "one trigger each"
    );
}

/// Every `<key>_file = "path"` of a configuration (and each path of a list).
fn file_settings(table: &toml::Table) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for (key, value) in table {
        match value {
            toml::Value::Table(inner) => found.extend(
                file_settings(inner)
                    .into_iter()
                    .map(|(k, path)| (format!("{key}.{k}"), path)),
            ),
            toml::Value::Array(items) => {
                for item in items {
                    match item {
                        toml::Value::Table(inner) => found.extend(file_settings(inner)),
                        toml::Value::String(path) if key.ends_with("_file") => {
                            found.push((key.clone(), path.clone()))
                        }
                        _ => {}
                    }
                }
            }
            toml::Value::String(path) if key.ends_with("_file") => {
                found.push((key.clone(), path.clone()))
            }
            _ => {}
        }
    }
    found
}

/// A KEDA ScaledObject (`keda.sh/v1alpha1`), with the fields of its CRD:
/// anything else is refused, as the API server would. (Fields are read by
/// serde to check their types; the test looks at some of them.)
#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScaledObject {
    #[serde(rename = "apiVersion")]
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    spec: ScaledObjectSpec,
}

#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ObjectMeta {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ScaledObjectSpec {
    scale_target_ref: ScaleTargetRef,
    #[serde(default)]
    polling_interval: Option<u32>,
    #[serde(default)]
    initial_cooldown_period: Option<u32>,
    #[serde(default)]
    cooldown_period: Option<u32>,
    #[serde(default)]
    idle_replica_count: Option<u32>,
    #[serde(default)]
    min_replica_count: Option<u32>,
    #[serde(default)]
    max_replica_count: Option<u32>,
    #[serde(default)]
    advanced: Option<Value>,
    #[serde(default)]
    fallback: Option<Value>,
    triggers: Vec<Trigger>,
}

#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ScaleTargetRef {
    name: String,
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    env_source_container_name: Option<String>,
}

#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Trigger {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    name: Option<String>,
    /// KEDA's metadata is a map of strings: `lagThreshold: 10` unquoted is refused.
    metadata: BTreeMap<String, String>,
    #[serde(default)]
    authentication_ref: Option<Value>,
    #[serde(default)]
    metric_type: Option<String>,
    #[serde(default)]
    use_cached_metrics: Option<bool>,
}

impl ScaledObject {
    /// What the CRD and the nats-jetstream scaler require beyond field names and types.
    fn check(&self) {
        assert_eq!(self.api_version, "keda.sh/v1alpha1");
        assert_eq!(self.kind, "ScaledObject");
        assert!(!self.metadata.name.is_empty());
        let spec = &self.spec;
        let min = spec.min_replica_count.unwrap_or(0);
        assert!(
            min >= 1,
            "minReplicaCount {min}: the command API and the load responder need a replica"
        );
        assert!(spec.max_replica_count.unwrap_or(100) >= min);
        assert!(spec.idle_replica_count.is_none(), "no scaling to zero");
        if let Some(kind) = &spec.scale_target_ref.kind {
            assert_eq!(kind, "Deployment");
        }
        assert!(!spec.triggers.is_empty());
        let mut names = BTreeSet::new();
        for trigger in &spec.triggers {
            assert_eq!(trigger.kind, "nats-jetstream", "{trigger:?}");
            if let Some(name) = &trigger.name {
                assert!(names.insert(name), "trigger names are unique: {name}");
            }
            if let Some(metric) = &trigger.metric_type {
                assert!(
                    ["AverageValue", "Value", "Utilization"].contains(&metric.as_str()),
                    "{metric}"
                );
            }
            // https://keda.sh/docs/latest/scalers/nats-jetstream/
            let required = [
                "natsServerMonitoringEndpoint",
                "account",
                "stream",
                "consumer",
                "lagThreshold",
            ];
            let optional = ["activationLagThreshold", "useHttps"];
            for key in required {
                let value = trigger.metadata.get(key);
                assert!(
                    value.is_some_and(|v| !v.is_empty()),
                    "{key} missing: {trigger:?}"
                );
            }
            for key in trigger.metadata.keys() {
                assert!(
                    required.contains(&key.as_str()) || optional.contains(&key.as_str()),
                    "{key} is not a nats-jetstream parameter"
                );
            }
            let threshold = &trigger.metadata["lagThreshold"];
            assert!(
                threshold.parse::<u64>().is_ok_and(|t| t > 0),
                "lagThreshold {threshold:?}"
            );
            if let Some(https) = trigger.metadata.get("useHttps") {
                assert!(["true", "false"].contains(&https.as_str()), "{https}");
            }
            let endpoint = &trigger.metadata["natsServerMonitoringEndpoint"];
            assert!(
                !endpoint.contains("://") && endpoint.contains(':'),
                "host:port, without a scheme: {endpoint}"
            );
        }
    }
}

/// The Kubernetes flow: replicas with `provision_on_start = false` create
/// nothing and are not ready until the provisioning Job has run; then they
/// are, without a restart.
#[tokio::test]
async fn replicas_wait_for_the_provisioning_job() {
    let nats = start_nats().await;
    let crm = FakeCrm::start().await;
    let ops = format!("127.0.0.1:{}", free_port());
    let config = bridge_config(
        &crm.url(),
        &format!("[streams]\nprovision_on_start = false\n[http]\nops_listen = \"{ops}\"\n"),
    );
    let replica = Bridge::start(&nats.url, &config);
    replica.logged("Not ready; retrying.").await;
    let http = reqwest::Client::new();
    let readyz = || async {
        let response = http.get(format!("http://{ops}/readyz")).send().await.ok()?;
        Some(response.status().as_u16())
    };
    assert_eq!(eventually("/readyz", readyz).await, 503);
    let js = async_nats::jetstream::new(async_nats::connect(&nats.url).await.unwrap());
    assert!(
        js.get_stream(softphone_bridge::contract::EVENTS_STREAM)
            .await
            .is_err(),
        "a replica provisioned the streams"
    );

    let file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(file.path(), &config).unwrap();
    let job = crate::cli::bridge(
        &["--config", file.path().to_str().unwrap(), "provision"],
        &[("SOFTPHONE_BRIDGE_NATS__URL", &nats.url)],
    );
    assert!(job.status.success(), "{}", crate::cli::stderr(&job));
    eventually("the replica to be ready", || async {
        (readyz().await? == 200).then_some(())
    })
    .await;
    replica.terminate();
    let (status, stderr) = replica.wait().await;
    assert!(status.success(), "{stderr}");
}
