//! The deployment files against the code: the Dockerfile's checkable statements and its build
//! stage (staged and resolved by cargo), the Kubernetes manifests' probes, ports and grace
//! period, the ConfigMap's config, and every metric the Grafana dashboard and the Prometheus
//! alerts query, checked against a live /metrics of a gateway producing to a real broker;
//! `promtool check rules` on the alerts.
mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::*;
use event_gateway::proto::SERVICE_NAME;
use event_gateway::transport::http::health::{self, GRPC_LIVENESS_SERVICE};
use serde_json::Value;

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn dockerfile_statements_match_the_project() {
    let text = std::fs::read_to_string("Dockerfile").unwrap();
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let default_port = event_gateway::Config::default()
        .server
        .address
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();

    let expose: Vec<_> = lines.iter().filter(|l| l.starts_with("EXPOSE")).collect();
    assert_eq!(expose, vec![&format!("EXPOSE {default_port}").as_str()]);

    let users: Vec<_> = lines.iter().filter(|l| l.starts_with("USER")).collect();
    assert_eq!(users.len(), 1);
    assert!(
        !users[0].contains("root") && !users[0].contains(" 0"),
        "{}",
        users[0]
    );

    // The binary the image builds and runs is the one Cargo.toml declares.
    let manifest = std::fs::read_to_string("Cargo.toml").unwrap();
    assert!(manifest.contains("[[bin]]\nname = \"event-gateway\""));
    assert!(text.contains("cargo build --release --locked --bin event-gateway"));
    assert!(text.contains(
        "ENTRYPOINT [\"/usr/local/bin/event-gateway\", \"--config\", \"/etc/event-gateway/config.yaml\"]"
    ));
    assert!(text.contains("COPY --from=build /out/event-gateway /usr/local/bin/event-gateway"));

    // Every path copied from the build context exists.
    for l in &lines {
        if let Some(rest) = l.strip_prefix("COPY ")
            && !rest.starts_with("--from")
        {
            let parts: Vec<_> = rest.split_whitespace().collect();
            for src in &parts[..parts.len() - 1] {
                assert!(Path::new(src).exists(), "COPY source {src} missing");
            }
        }
    }
    // The README gives the same commands.
    let readme = std::fs::read_to_string("README.md").unwrap();
    assert!(readme.contains("docker build -t event-gateway ."));
    assert!(readme.contains("docker run --rm -p 8090:8090 event-gateway"));
}

/// The build stage's instructions (from `FROM ... AS build` to the next `FROM`), continuation
/// lines joined.
fn build_stage(dockerfile: &str) -> Vec<String> {
    let joined = dockerfile.replace("\\\n", " ");
    joined
        .lines()
        .map(str::trim)
        .skip_while(|l| !(l.starts_with("FROM ") && l.ends_with(" AS build")))
        .skip(1)
        .take_while(|l| !l.starts_with("FROM "))
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// Every file below `dir`, recursively, as paths relative to the crate.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .collect()
}

/// `a/b/../c` as `a/c` (paths in include_str! climb out of their module's folder).
fn normalize(path: &Path) -> std::path::PathBuf {
    let mut out = std::path::PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// No Docker engine runs here, so this is the image's guard: it stages exactly what the build
/// stage copies from the context (less what `.dockerignore` keeps out) and has cargo resolve
/// the manifest, the lock file and every target it names, then checks that the files the
/// build reads past the manifest (proto/ for build.rs, include_str! targets) were copied. A
/// target whose source the image lacks fails here as `docker build` would (`can't find auth
/// bench at benches/auth.rs`).
#[test]
fn the_image_build_stage_resolves() {
    let text = std::fs::read_to_string("Dockerfile").unwrap();
    let ignored: Vec<String> = std::fs::read_to_string(".dockerignore")
        .expect(".dockerignore keeps target/ and test data out of the context")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    for kept_out in ["target", "data", ".git"] {
        assert!(
            ignored.iter().any(|i| i == kept_out),
            ".dockerignore lacks {kept_out}"
        );
    }
    let stage = tempfile::tempdir().unwrap();
    let steps = build_stage(&text);
    assert!(
        steps.iter().any(|s| s.starts_with("RUN ")
            && s.contains("cargo build --release --locked --bin event-gateway")),
        "the build stage builds the binary: {steps:#?}"
    );
    let mut copied = 0;
    for step in &steps {
        let Some(rest) = step.strip_prefix("COPY ") else {
            continue;
        };
        assert!(!rest.starts_with("--from"), "{step}");
        let parts: Vec<&str> = rest.split_whitespace().collect();
        let (dst, srcs) = parts.split_last().unwrap();
        for src in srcs {
            assert!(
                !ignored.iter().any(|i| i == src),
                "{src} is in .dockerignore"
            );
            let to = if dst.ends_with('/') {
                stage.path().join(dst).join(src)
            } else {
                stage.path().join(dst)
            };
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            // cp -R: Docker copies a directory's contents to the destination, as this does.
            let ok = std::process::Command::new("cp")
                .arg("-R")
                .arg(src)
                .arg(&to)
                .status()
                .unwrap()
                .success();
            assert!(ok, "COPY {src} {dst}");
            copied += 1;
        }
    }
    assert!(copied >= 4, "{steps:#?}");
    // What cargo reads past the manifest, which `cargo fetch` does not: build.rs compiles every
    // file under proto/, and include_str!/include_bytes! name files from the sources.
    let mut needed: Vec<std::path::PathBuf> = files_under(Path::new("proto"));
    for source in files_under(Path::new("src")) {
        let text = std::fs::read_to_string(&source).unwrap_or_default();
        for macro_name in ["include_str!(\"", "include_bytes!(\""] {
            for (i, _) in text.match_indices(macro_name) {
                let rest = &text[i + macro_name.len()..];
                let relative = &rest[..rest.find('"').unwrap()];
                let path = source.parent().unwrap().join(relative);
                needed.push(normalize(&path));
            }
        }
    }
    assert!(needed.len() > 3, "{needed:?}");
    for file in &needed {
        assert!(
            stage.path().join(file).is_file(),
            "the image's build needs {} but the Dockerfile does not copy it",
            file.display()
        );
    }
    // `cargo fetch` parses the manifest with every target and checks the lock file (--locked)
    // without compiling: enough to prove `cargo build` would start. --offline: this test runs
    // after the crate's own build, which fetched every dependency of this platform; the image
    // builds for this platform too. Without `--target`, cargo fetch wants the dependencies of
    // every platform (wasm-bindgen, for one), which no build here downloads: on a machine whose
    // cargo cache had never seen them, this test failed.
    let rustc = std::process::Command::new(std::env::var("RUSTC").unwrap_or("rustc".into()))
        .arg("-vV")
        .output()
        .unwrap();
    let host = String::from_utf8_lossy(&rustc.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .expect("rustc -vV names the host platform");
    stdout_of(
        std::process::Command::new(env!("CARGO"))
            .args(["fetch", "--locked", "--offline", "--target", &host])
            .current_dir(stage.path()),
        "cargo cannot resolve what the Dockerfile's build stage copies",
    );
}

/// What `cmd` printed on stdout; a failure fails the test with `what` and all it printed.
fn stdout_of(cmd: &mut std::process::Command, what: &str) -> Vec<u8> {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{what}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The manifests as `kubectl kustomize` renders an overlay: one value per document.
fn render(kubectl: &std::path::Path, overlay: &str) -> Vec<Value> {
    let rendered = stdout_of(
        std::process::Command::new(kubectl).args([
            "kustomize",
            &format!("deploy/kubernetes/overlays/{overlay}"),
        ]),
        &format!("kubectl kustomize {overlay}"),
    );
    serde_yaml::Deserializer::from_slice(&rendered)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// The one document of `kind` (a generated ConfigMap's name carries a hash).
fn find_kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let all: Vec<_> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(all.len(), 1, "one {kind}");
    all[0]
}

/// #27: both overlays render, and each agrees with the code and with itself.
#[test]
fn kubernetes_overlays_are_consistent_with_the_code_and_themselves() {
    let Some(kubectl) = require(Tool::Kubectl) else {
        return;
    };
    for overlay in ["plaintext", "tls"] {
        let docs = render(&kubectl, overlay);
        manifests_agree_with_the_code(overlay, &docs);
        manifests_agree_with_themselves(overlay, &docs);
    }
}

/// Ports, schemes and names that must agree between the rendered documents (#27).
fn manifests_agree_with_themselves(overlay: &str, docs: &[Value]) {
    let tls = overlay == "tls";
    let sts = find(docs, "StatefulSet", "event-gateway");
    let pod = &sts["spec"]["template"];
    let labels = &pod["metadata"]["labels"];
    // Namespace-agnostic: nothing names a namespace (applied with -n, or an overlay's own).
    for d in docs {
        assert!(d["metadata"].get("namespace").is_none(), "{overlay}: {d}");
        assert!(
            !serde_yaml::to_string(d).unwrap().contains(".default."),
            "{overlay}: a hard-coded namespace in {}",
            d["metadata"]["name"]
        );
    }
    // The StatefulSet's governing Service exists and is headless.
    let governing = find(
        docs,
        "Service",
        sts["spec"]["serviceName"].as_str().unwrap(),
    );
    assert_eq!(governing["spec"]["clusterIP"], "None", "{overlay}");
    assert_eq!(&governing["spec"]["selector"], labels);
    // Every Service port says what it carries: https with TLS; http and h2c without.
    for svc in docs.iter().filter(|d| d["kind"] == "Service") {
        for port in svc["spec"]["ports"].as_array().unwrap() {
            let want = match (tls, port["name"].as_str().unwrap()) {
                (true, _) => "https",
                (false, "http") => "http",
                (false, "grpc") => "kubernetes.io/h2c",
                (_, other) => panic!("{overlay}: port {other}"),
            };
            assert_eq!(port["appProtocol"], want, "{overlay}: {port}");
        }
    }
    // Prometheus scrapes with the listener's scheme, annotations and ServiceMonitor alike.
    let scheme = if tls { "https" } else { "http" };
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scheme"], scheme, "{overlay}");
    assert_eq!(annotations["prometheus.io/port"], "8090");
    let config = event_gateway::Config::default();
    assert_eq!(
        annotations["prometheus.io/path"],
        config.metrics.path.as_str()
    );
    let monitor = find_kind(docs, "ServiceMonitor");
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["scheme"], scheme, "{overlay}");
    assert_eq!(endpoint["path"], config.metrics.path.as_str());
    let service = find(docs, "Service", "event-gateway");
    assert!(
        service["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == endpoint["port"]),
        "{overlay}: the ServiceMonitor's port is the Service's"
    );
    assert_eq!(
        &monitor["spec"]["selector"]["matchLabels"],
        &service["metadata"]["labels"]
    );
    // The label the alerts and the dashboard select on reaches every series.
    assert_eq!(
        monitor["spec"]["targetLabels"][0], "app.kubernetes.io/name",
        "{overlay}"
    );
    if tls {
        let certificate = find_kind(docs, "Certificate");
        let names: Vec<&str> = certificate["spec"]["dnsNames"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap())
            .collect();
        for svc in docs.iter().filter(|d| d["kind"] == "Service") {
            assert!(names.contains(&svc["metadata"]["name"].as_str().unwrap()));
        }
        assert_eq!(
            endpoint["tlsConfig"]["ca"]["secret"]["name"],
            certificate["spec"]["secretName"]
        );
        assert!(names.contains(&endpoint["tlsConfig"]["serverName"].as_str().unwrap()));
    }
    // No API token in the pod; replicas spread over zones and nodes.
    let spec = &pod["spec"];
    assert_eq!(spec["automountServiceAccountToken"], false, "{overlay}");
    let account = find(
        docs,
        "ServiceAccount",
        spec["serviceAccountName"].as_str().unwrap(),
    );
    assert_eq!(account["automountServiceAccountToken"], false);
    let spread = spec["topologySpreadConstraints"].as_array().unwrap();
    let keys: Vec<_> = spread.iter().map(|c| c["topologyKey"].clone()).collect();
    assert!(keys.contains(&"topology.kubernetes.io/zone".into()));
    assert!(keys.contains(&"kubernetes.io/hostname".into()));
    for c in spread {
        assert_eq!(&c["labelSelector"]["matchLabels"], labels);
    }
    // The NetworkPolicy selects the pods and lets the gateway's port in.
    let policy = find_kind(docs, "NetworkPolicy");
    assert_eq!(&policy["spec"]["podSelector"]["matchLabels"], labels);
    let ingress_ports: Vec<_> = policy["spec"]["ingress"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| {
            r["ports"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["port"].clone())
        })
        .collect();
    assert_eq!(ingress_ports, vec![Value::from(8090)], "{overlay}");
}

/// What the rendered overlay claims of the gateway: its port, probe endpoints, mounted files,
/// grace period and spool against the code and the overlay's own config.
fn manifests_agree_with_the_code(overlay: &str, docs: &[Value]) {
    let deployment = find(docs, "StatefulSet", "event-gateway");
    let service = find(docs, "Service", "event-gateway");
    let configmap = find_kind(docs, "ConfigMap");
    let hpa = find(docs, "HorizontalPodAutoscaler", "event-gateway");
    let pdb = find(docs, "PodDisruptionBudget", "event-gateway");

    assert_eq!(deployment["spec"]["replicas"], 3);
    let pod = &deployment["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(c["ports"][0]["containerPort"], 8090);

    // Probes point at endpoints the gateway serves.
    let grpc_services = [GRPC_LIVENESS_SERVICE, SERVICE_NAME, ""];
    let http_paths = [
        health::ROUTE_LIVE,
        health::ROUTE_READY,
        health::ROUTE_HEALTH,
    ];
    // The ConfigMap's config is a valid gateway config.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, configmap["data"]["config.yaml"].as_str().unwrap()).unwrap();
    let config = event_gateway::Config::load(Some(&path)).unwrap();
    assert!(!config.kafka.brokers.is_empty());

    // With TLS on, probes are HTTPS (the kubelet's gRPC probes cannot speak TLS); without,
    // the native gRPC probes against grpc.health.v1, as the design promises.
    let tls = config.tls.cert_file.is_some();
    assert_eq!(tls, overlay == "tls", "{overlay}: TLS in its config");
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let p = &c[probe];
        if let Some(g) = p.get("grpc") {
            assert!(!tls, "{probe}: a gRPC probe cannot reach a TLS listener");
            assert_eq!(g["port"], 8090, "{probe}");
            let svc = g["service"].as_str().unwrap_or("");
            assert!(grpc_services.contains(&svc), "{probe}: {svc}");
        } else {
            let h = &p["httpGet"];
            assert_eq!(h["port"], 8090, "{probe}");
            assert!(http_paths.contains(&h["path"].as_str().unwrap()), "{probe}");
            assert_eq!(h["scheme"].as_str() == Some("HTTPS"), tls, "{probe}");
        }
    }
    let live = &c["livenessProbe"];
    assert!(
        live["grpc"]["service"] == GRPC_LIVENESS_SERVICE
            || live["httpGet"]["path"] == health::ROUTE_LIVE
    );
    let ready = &c["readinessProbe"];
    assert!(
        ready["grpc"]["service"] == SERVICE_NAME || ready["httpGet"]["path"] == health::ROUTE_READY
    );

    // The keys file and the certificate the config names are mounted, as whole directories
    // (a subPath mount would never see a rotated Secret), from Secrets the manifests define.
    let mounts = c["volumeMounts"].as_array().unwrap();
    let volumes = pod["volumes"].as_array().unwrap();
    let api_keys = find(docs, "Secret", "event-gateway-api-keys");
    let mut named: Vec<(&std::path::Path, &str)> = vec![(
        config
            .auth
            .api_keys_file
            .as_deref()
            .expect("the ConfigMap names the keys file"),
        api_keys["metadata"]["name"].as_str().unwrap(),
    )];
    if tls {
        let certificate = find_kind(docs, "Certificate");
        let secret = certificate["spec"]["secretName"].as_str().unwrap();
        named.push((config.tls.cert_file.as_deref().unwrap(), secret));
        named.push((config.tls.key_file.as_deref().unwrap(), secret));
    }
    for (file, secret) in named {
        let mount = mounts
            .iter()
            .find(|m| {
                file.starts_with(m["mountPath"].as_str().unwrap())
                    && m["mountPath"] != "/etc/event-gateway"
            })
            .unwrap_or_else(|| panic!("{} is not on a mounted Secret", file.display()));
        assert!(mount.get("subPath").is_none());
        let volume = volumes.iter().find(|v| v["name"] == mount["name"]).unwrap();
        assert_eq!(volume["secret"]["secretName"], secret, "{}", file.display());
    }
    // The example keys file is a valid one.
    let keys = dir.path().join("keys.yaml");
    std::fs::write(&keys, api_keys["stringData"]["keys.yaml"].as_str().unwrap()).unwrap();
    let mut auth = config.auth.clone();
    auth.api_keys_file = Some(keys);
    let meter = opentelemetry::global::meter("deploy-test");
    event_gateway::core::auth::Authenticator::new(&auth, &meter).unwrap();

    // The grace period covers preStop, the drain delay, the drain and the flush.
    let pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap();
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    // Drain, forwarding the spool and the flush each get drain_timeout.
    let needed = pre_stop
        + config.shutdown.drain_delay.as_secs()
        + 3 * config.shutdown.drain_timeout.as_secs();
    assert!(grace >= needed, "grace {grace}s < needed {needed}s");

    // Memory limit above the measured peak under 10,000 connections (docs/benchmarks.md).
    assert_eq!(c["resources"]["limits"]["memory"], "384Mi");

    // The spool the config enables lives on a claim per replica, mounted at the data dir.
    assert_eq!(deployment["kind"], "StatefulSet");
    assert!(config.spool.enabled);
    let spool_dir = config.spool.dir_in(&config.storage);
    let claim = &deployment["spec"]["volumeClaimTemplates"][0];
    let mount = mounts
        .iter()
        .find(|m| spool_dir.starts_with(m["mountPath"].as_str().unwrap()) && m["mountPath"] != "/")
        .expect("the spool directory is on a mount");
    assert_eq!(mount["name"], claim["metadata"]["name"]);
    assert!(
        volumes.iter().all(|v| v["name"] != mount["name"]),
        "a claim, not an emptyDir"
    );

    // Service, HPA and PDB select and target the StatefulSet.
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert_eq!(&service["spec"]["selector"], labels);
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], labels);
    assert_eq!(
        hpa["spec"]["scaleTargetRef"]["name"],
        deployment["metadata"]["name"]
    );
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], deployment["kind"]);
    for port in service["spec"]["ports"].as_array().unwrap() {
        assert_eq!(port["targetPort"], 8090);
    }
}

/// Alerts and dashboard panels select on a label every scrape setup produces
/// (`app_kubernetes_io_name`), never on `job`, which an annotation-based scrape names
/// differently from a ServiceMonitor (#27).
#[test]
fn alerts_and_dashboard_do_not_select_on_job() {
    let dashboard = std::fs::read_to_string("deploy/grafana/dashboard.json").unwrap();
    let alerts = std::fs::read_to_string("deploy/prometheus/alerts.yaml").unwrap();
    for (file, text) in [("dashboard", &dashboard), ("alerts", &alerts)] {
        assert!(!text.contains("job="), "{file} selects on job");
    }
    let prometheus = std::fs::read_to_string("deploy/prometheus/prometheus.yml").unwrap();
    assert!(prometheus.contains("labels: {app_kubernetes_io_name: event-gateway}"));
}

/// Metric names referenced by a PromQL expression (ours all start with these prefixes).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut cur = String::new();
    for ch in expr.chars().chain(std::iter::once(' ')) {
        if ch.is_ascii_alphanumeric() || ch == '_' || ch == ':' {
            cur.push(ch);
        } else {
            if ["http_", "grpc_", "events_", "kafka_", "sink_", "process_"]
                .iter()
                .any(|p| cur.starts_with(p))
            {
                out.insert(cur.clone());
            }
            cur.clear();
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_and_alerts_query_metrics_the_gateway_exports() {
    let Some(_) = require(Tool::Tansu) else {
        return;
    };
    let broker = Broker::start("events", 1).await;
    let mut config = test_config(&std::env::temp_dir());
    config.kafka.brokers = vec![broker.bootstrap()];
    let gw = TestGateway::start(config).await;
    gw.wait_ready().await;
    let c = http();
    let (s, _) = post_json(&c, &gw.url("/api/v1/events"), SEED_EVENT).await;
    assert_eq!(s, 200);
    let (s, _) = post_json(&c, &gw.url("/api/v1/events"), r#"{"type":"","source":"s"}"#).await;
    assert_eq!(s, 400);
    gw.grpc_ingest_seed().await;
    // Broker statistics arrive every second; wait until they are in the exposition.
    gw.wait_metrics_containing("kafka_broker_rtt_seconds{")
        .await;
    let text = gw.metrics().await;
    let mut exported = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let (name, kind) = (it.next().unwrap(), it.next().unwrap());
            exported.insert(name.to_owned());
            if kind == "histogram" {
                for suffix in ["_bucket", "_count", "_sum"] {
                    exported.insert(format!("{name}{suffix}"));
                }
            }
        }
    }

    let mut exprs = Vec::new();
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string("deploy/grafana/dashboard.json").unwrap())
            .unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            exprs.push(t["expr"].as_str().unwrap().to_owned());
        }
    }
    let dashboard_count = exprs.len();
    let alerts = yaml("deploy/prometheus/alerts.yaml");
    for rule in alerts["groups"][0]["rules"].as_array().unwrap() {
        exprs.push(rule["expr"].as_str().unwrap().to_owned());
    }
    assert!(dashboard_count >= 12 && exprs.len() > dashboard_count);
    let mut used = BTreeSet::new();
    for e in &exprs {
        for name in metric_names(e) {
            assert!(
                exported.contains(&name),
                "{name} (in `{e}`) is not exported"
            );
            used.insert(name);
        }
    }
    // The dashboard covers what the issue asks for.
    for must in [
        "http_requests_total",
        "http_request_duration_seconds_bucket",
        "events_ingested_total",
        "events_ingested_failed_total",
        "kafka_producer_queue_depth",
        "kafka_broker_rtt_seconds",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ] {
        assert!(used.contains(must), "{must} unused");
    }
}

#[test]
fn alert_rules_pass_promtool() {
    let Some(promtool) = require(Tool::Promtool) else {
        return;
    };
    stdout_of(
        std::process::Command::new(promtool).args([
            "check",
            "rules",
            "deploy/prometheus/alerts.yaml",
        ]),
        "promtool check rules",
    );
}

/// The final stage's `ENTRYPOINT` and `CMD` of the Dockerfile (exec form), as (entrypoint,
/// cmd), and its `ENV` assignments.
fn image_exec() -> (Vec<String>, Vec<String>, Vec<(String, String)>) {
    let text = std::fs::read_to_string("Dockerfile").unwrap();
    // Continuation lines joined, so an ENV over several lines is one statement.
    let joined = text.replace("\\\n", " ");
    let last_stage = joined.rsplit("\nFROM ").next().unwrap();
    let exec = |kw: &str| -> Vec<String> {
        last_stage
            .lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix(kw))
            .map(|json| serde_json::from_str(json.trim()).expect("exec form"))
            .unwrap_or_default()
    };
    let mut env = Vec::new();
    for l in last_stage.lines() {
        if let Some(rest) = l.trim().strip_prefix("ENV ") {
            for kv in rest.split_whitespace() {
                let (k, v) = kv.split_once('=').expect("ENV key=value");
                env.push((k.to_owned(), v.to_owned()));
            }
        }
    }
    (exec("ENTRYPOINT "), exec("CMD "), env)
}

fn strings(v: &Value) -> Option<Vec<String>> {
    v.as_array().map(|a| {
        a.iter()
            .map(|x| x.as_str().expect("a string").to_owned())
            .collect()
    })
}

/// A pod's filesystem for `event-gateway check`: the container paths the command line, the
/// config and the environment name, under a temporary root.
struct Rooted {
    root: tempfile::TempDir,
    pki: TestPki,
}

impl Rooted {
    fn new() -> Self {
        let r = Self {
            root: tempfile::tempdir().unwrap(),
            pki: TestPki::new(),
        };
        // The TLS Secret (cert-manager's keys: tls.crt, tls.key, ca.crt).
        let tls = r.path("/etc/event-gateway/tls");
        std::fs::create_dir_all(&tls).unwrap();
        std::fs::copy(r.pki.path("server.pem"), tls.join("tls.crt")).unwrap();
        std::fs::copy(r.pki.path("server.key"), tls.join("tls.key")).unwrap();
        std::fs::copy(r.pki.path("ca.pem"), tls.join("ca.crt")).unwrap();
        std::fs::create_dir_all(r.path("/var/lib/event-gateway")).unwrap();
        r
    }

    fn path(&self, container_path: &str) -> std::path::PathBuf {
        self.root
            .path()
            .join(container_path.trim_start_matches('/'))
    }

    /// `text` with every container path under the root.
    fn rewrite(&self, text: &str) -> String {
        let root = self.root.path().display().to_string();
        text.replace("/etc/event-gateway", &format!("{root}/etc/event-gateway"))
            .replace(
                "/var/lib/event-gateway",
                &format!("{root}/var/lib/event-gateway"),
            )
    }

    fn write(&self, container_path: &str, text: &str) {
        let p = self.path(container_path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, self.rewrite(text)).unwrap();
    }

    /// Runs the composed command line with `check` appended: (exit code, stderr).
    fn check(&self, argv: &[String], env: &[(String, String)]) -> (Option<i32>, String) {
        assert_eq!(
            argv.first().map(String::as_str),
            Some("/usr/local/bin/event-gateway"),
            "the command runs the gateway: {argv:?}"
        );
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_event-gateway"));
        cmd.env_clear()
            .args(argv[1..].iter().map(|a| self.rewrite(a)))
            .arg("check")
            .current_dir(self.root.path());
        for (k, v) in env {
            cmd.env(k, self.rewrite(v));
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// #30: the StatefulSet's pod ran `event-gateway --config X --config X` (the image's
/// ENTRYPOINT plus the manifest's `args`) and exited 2 on every replica. The command line is
/// composed here as Kubernetes composes it (`command` replaces ENTRYPOINT, `args` replaces
/// CMD) and run with `check` against the ConfigMap's config, the mounted Secrets and the
/// container's environment: a manifest that cannot start fails the suite.
#[test]
fn the_statefulset_pod_command_line_starts() {
    let Some(kubectl) = require(Tool::Kubectl) else {
        return;
    };
    for overlay in ["plaintext", "tls"] {
        pod_command_line_starts(&render(&kubectl, overlay));
    }
}

fn pod_command_line_starts(docs: &[Value]) {
    let (entrypoint, cmd, image_env) = image_exec();
    let sts = find(docs, "StatefulSet", "event-gateway");
    let c = &sts["spec"]["template"]["spec"]["containers"][0];
    let argv = match (strings(&c["command"]), strings(&c["args"])) {
        (Some(command), Some(args)) => [command, args].concat(),
        (Some(command), None) => command,
        (None, Some(args)) => [entrypoint, args].concat(),
        (None, None) => [entrypoint, cmd].concat(),
    };
    let r = Rooted::new();
    // Volumes as the pod mounts them: the ConfigMap's files and the API keys Secret.
    let configmap = find_kind(docs, "ConfigMap");
    let keys = find(docs, "Secret", "event-gateway-api-keys");
    for m in c["volumeMounts"].as_array().unwrap() {
        let mount = m["mountPath"].as_str().unwrap();
        let volume = sts["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == m["name"]);
        let data = match volume {
            Some(v) if v["configMap"]["name"] == configmap["metadata"]["name"] => {
                &configmap["data"]
            }
            Some(v) if v["secret"]["secretName"] == keys["metadata"]["name"] => &keys["stringData"],
            _ => continue,
        };
        for (file, text) in data.as_object().unwrap() {
            r.write(&format!("{mount}/{file}"), text.as_str().unwrap());
        }
    }
    let mut env = image_env;
    for e in c["env"].as_array().into_iter().flatten() {
        if let Some(v) = e["value"].as_str() {
            env.push((e["name"].as_str().unwrap().to_owned(), v.to_owned()));
        }
    }
    let (code, stderr) = r.check(&argv, &env);
    assert_eq!(code, Some(0), "the pod would not start: {argv:?}\n{stderr}");
}

/// The same for the Compose file's gateway service (`entrypoint` replaces ENTRYPOINT and
/// drops CMD, `command` replaces CMD), with the image's own config.yaml.
#[test]
fn the_compose_gateway_command_line_starts() {
    let (entrypoint, cmd, image_env) = image_exec();
    let compose = yaml("deploy/docker-compose.yaml");
    let svc = &compose["services"]["gateway"];
    let argv = match (strings(&svc["entrypoint"]), strings(&svc["command"])) {
        (Some(e), c) => [e, c.unwrap_or_default()].concat(),
        (None, Some(c)) => [entrypoint, c].concat(),
        (None, None) => [entrypoint, cmd].concat(),
    };
    let r = Rooted::new();
    r.write(
        "/etc/event-gateway/config.yaml",
        &std::fs::read_to_string("config.yaml").unwrap(),
    );
    let mut env = image_env;
    for (k, v) in svc["environment"].as_object().unwrap() {
        env.push((k.clone(), v.as_str().unwrap().to_owned()));
    }
    let (code, stderr) = r.check(&argv, &env);
    assert_eq!(
        code,
        Some(0),
        "the container would not start: {argv:?}\n{stderr}"
    );
}
