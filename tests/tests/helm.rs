//! The operator's Helm chart (`charts/roomkeeper-operator`), rendered and
//! checked by a real `helm` (built by `scripts/helm-bin.sh`):
//!
//! - `helm lint --strict` passes, with the optional objects on and off;
//! - the rendered ClusterRole and Role grant exactly the permissions of
//!   `deploy/rbac.yaml` (the RBAC the operator end-to-end test runs under), and
//!   the rendered CRDs are exactly the generated files in `crds/`, also from
//!   the packaged chart (`helm package` resolves the chart's symlinks);
//! - values are honoured, and bad values are refused by `values.schema.json`
//!   with a message naming the value;
//! - on a real API server every rendered object is accepted (server-side
//!   apply, CRDs first), and the Deployment's command line, run under the
//!   chart's ServiceAccount, takes the leader Lease, serves `/readyz`, meets no
//!   `Forbidden`, and releases the Lease on SIGTERM.
//!
//! helm: `ROOMKEEPER_HELM_BIN`, else the cache path of `scripts/helm-bin.sh`.
//! Without it every test prints `SKIPPED` and passes, unless `CI` is set.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DynamicObject, PostParams};
use roomkeeper_e2e::k8s::{eventually, init_test_tracing, skip_or_panic, KubeHarness};
use roomkeeper_e2e::operator::{apply_yaml, get, helm_path, repo_root};
use serde_json::{json, Value};

/// The chart, relative to the repository root.
const CHART: &str = "charts/roomkeeper-operator";
/// The label the operator's NetworkPolicies admit to the node admin port
/// (`OPERATOR_APP` in operator/src/resources.rs).
const OPERATOR_APP: &str = "roomkeeper-operator";

// ---------------------------------------------------------------- helm itself

struct Helm {
    bin: PathBuf,
    /// HELM_*_HOME: nothing of the user's helm set-up is read or written.
    home: PathBuf,
}

/// The helm binary, or `None` after a loud SKIPPED; panics under CI.
fn helm_or_skip(test: &str) -> Option<Helm> {
    let bin = helm_path();
    if !bin.is_file() {
        skip_or_panic(
            test,
            &format!(
                "no helm at {} (run scripts/helm-bin.sh, or set ROOMKEEPER_HELM_BIN)",
                bin.display()
            ),
        );
        return None;
    }
    let home = std::env::temp_dir().join(format!("roomkeeper-helm-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&home).expect("helm home");
    Some(Helm { bin, home })
}

impl Drop for Helm {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

/// stderr without helm's notice that the chart's `crds` and
/// `files/rbac.yaml` are symlinks.
fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.contains("found symbolic link in path"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Helm {
    fn run(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .args(args)
            .current_dir(repo_root())
            .env("HELM_CONFIG_HOME", self.home.join("config"))
            .env("HELM_CACHE_HOME", self.home.join("cache"))
            .env("HELM_DATA_HOME", self.home.join("data"))
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", self.bin.display()))
    }

    /// `helm template <release> <chart> -n <ns> --include-crds <extra…>`:
    /// the rendered objects, or helm's error message.
    fn template_result(
        &self,
        chart: &str,
        release: &str,
        ns: &str,
        extra: &[&str],
    ) -> Result<Vec<Value>, String> {
        let mut args = vec![
            "template",
            release,
            chart,
            "--namespace",
            ns,
            "--include-crds",
        ];
        args.extend_from_slice(extra);
        let out = self.run(&args);
        if !out.status.success() {
            return Err(stderr_of(&out));
        }
        Ok(parse_docs(&String::from_utf8_lossy(&out.stdout))
            .unwrap_or_else(|e| panic!("helm template printed invalid YAML: {e:#}")))
    }

    fn template(&self, release: &str, ns: &str, extra: &[&str]) -> Vec<Value> {
        self.template_result(CHART, release, ns, extra)
            .unwrap_or_else(|e| panic!("helm template {extra:?} failed:\n{e}"))
    }
}

/// Every non-empty document of a multi-document YAML text, as JSON values.
fn parse_docs(text: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let v = <serde_yaml::Value as serde::Deserialize>::deserialize(doc)?;
        if v.is_null() {
            continue;
        }
        out.push(serde_json::to_value(v)?);
    }
    Ok(out)
}

fn kind_of(v: &Value) -> &str {
    v["kind"].as_str().unwrap_or("")
}

fn name_of(v: &Value) -> &str {
    v["metadata"]["name"].as_str().unwrap_or("")
}

/// The one object of `kind`; panics when there is none or more than one.
fn one<'a>(objs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = objs.iter().filter(|o| kind_of(o) == kind).collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {kind}, rendered {}",
        found.len()
    );
    found[0]
}

fn kinds(objs: &[Value]) -> BTreeSet<String> {
    objs.iter().map(|o| kind_of(o).to_string()).collect()
}

/// What a list of RBAC rules grants, one (apiGroup, resource, verb) per
/// permission: two rule lists grant the same iff these sets are equal,
/// however the rules are grouped or ordered.
fn permissions(rules: &Value) -> BTreeSet<(String, String, String)> {
    let strs = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut out = BTreeSet::new();
    for rule in rules.as_array().expect("rules is a list") {
        assert!(
            rule.get("resourceNames").is_none() && rule.get("nonResourceURLs").is_none(),
            "rule {rule} uses resourceNames/nonResourceURLs, which this comparison does not cover"
        );
        for g in strs(&rule["apiGroups"]) {
            for r in strs(&rule["resources"]) {
                for v in strs(&rule["verbs"]) {
                    out.insert((g.clone(), r.clone(), v));
                }
            }
        }
    }
    out
}

fn repo_rbac() -> Vec<Value> {
    let text =
        std::fs::read_to_string(repo_root().join("deploy/rbac.yaml")).expect("deploy/rbac.yaml");
    parse_docs(&text).expect("deploy/rbac.yaml parses")
}

/// crds/*.yaml, by CRD name.
fn repo_crds() -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(repo_root().join("crds")).expect("crds/") {
        let path = entry.expect("crds/ entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("CRD file");
        for doc in parse_docs(&text).expect("CRD parses") {
            out.insert(name_of(&doc).to_string(), doc);
        }
    }
    assert!(!out.is_empty(), "no CRDs in crds/");
    out
}

fn rendered_crds(objs: &[Value]) -> BTreeMap<String, Value> {
    objs.iter()
        .filter(|o| kind_of(o) == "CustomResourceDefinition")
        .map(|o| (name_of(o).to_string(), o.clone()))
        .collect()
}

fn container(objs: &[Value]) -> &Value {
    let c = &one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    assert!(c.is_object(), "the Deployment has no container");
    c
}

fn args_of(objs: &[Value]) -> Vec<String> {
    container(objs)["args"]
        .as_array()
        .expect("container args")
        .iter()
        .map(|a| a.as_str().expect("string arg").to_string())
        .collect()
}

// ---------------------------------------------------------------------- tests

#[test]
fn chart_lints_strict() {
    let Some(helm) = helm_or_skip("chart_lints_strict") else {
        return;
    };
    for extra in [
        &[][..],
        &[
            "--set",
            "metrics.serviceMonitor.enabled=true",
            "--set",
            "metrics.prometheusRule.enabled=true",
            "--set",
            "replicaCount=1",
        ][..],
    ] {
        let mut args = vec!["lint", "--strict", CHART];
        args.extend_from_slice(extra);
        let out = helm.run(&args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "helm lint --strict {extra:?} failed:\n{stdout}\n{}",
            stderr_of(&out)
        );
        assert!(stdout.contains("0 chart(s) failed"), "{stdout}");
        assert!(
            !stdout.contains("[WARNING]") && !stdout.contains("[ERROR]"),
            "{stdout}"
        );
    }
}

#[test]
fn chart_rbac_and_crds_are_the_repositorys() {
    let Some(helm) = helm_or_skip("chart_rbac_and_crds_are_the_repositorys") else {
        return;
    };
    // The release deploy/README.md installs: the same names as deploy/rbac.yaml.
    let all = helm.template("roomkeeper-operator", "roomkeeper-system", &[]);
    let rbac = repo_rbac();
    // deploy/approver-rbac.yaml (who may answer approvals), shipped as is;
    // the rest must be deploy/rbac.yaml's.
    let approver = parse_docs(
        &std::fs::read_to_string(repo_root().join("deploy/approver-rbac.yaml"))
            .expect("deploy/approver-rbac.yaml"),
    )
    .expect("deploy/approver-rbac.yaml parses");
    let (shipped, objs): (Vec<Value>, Vec<Value>) = all.iter().cloned().partition(|o| {
        approver
            .iter()
            .any(|a| kind_of(a) == kind_of(o) && name_of(a) == name_of(o))
    });
    assert_eq!(
        shipped, approver,
        "the chart ships deploy/approver-rbac.yaml"
    );
    let role = one(&approver, "ClusterRole");
    assert_eq!(role["metadata"]["name"], "roomkeeper-approver");
    let grants = permissions(&role["rules"]);
    for verb in ["update", "patch"] {
        assert!(
            grants.contains(&(
                "roomkeeper.dev".to_string(),
                "failoverapprovals".to_string(),
                verb.to_string()
            )),
            "roomkeeper-approver may {verb} failoverapprovals: {grants:?}"
        );
    }

    for kind in ["ClusterRole", "Role"] {
        let want = permissions(&one(&rbac, kind)["rules"]);
        let got = permissions(&one(&objs, kind)["rules"]);
        assert_eq!(
            got,
            want,
            "the chart's {kind} differs from deploy/rbac.yaml:\n  only in the chart: {:?}\n  only in deploy/rbac.yaml: {:?}",
            got.difference(&want).collect::<Vec<_>>(),
            want.difference(&got).collect::<Vec<_>>()
        );
        assert!(!got.is_empty());
    }
    // Same names and namespaces, same bindings.
    for kind in [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
    ] {
        let (want, got) = (one(&rbac, kind), one(&objs, kind));
        assert_eq!(
            got["metadata"]["name"], want["metadata"]["name"],
            "{kind} name"
        );
        assert_eq!(
            got["metadata"]["namespace"], want["metadata"]["namespace"],
            "{kind} namespace"
        );
        if kind.ends_with("Binding") {
            assert_eq!(got["roleRef"], want["roleRef"], "{kind} roleRef");
            assert_eq!(got["subjects"], want["subjects"], "{kind} subjects");
        }
    }
    // The Deployment runs as that ServiceAccount; Helm owns no Namespace.
    assert_eq!(
        one(&objs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"],
        one(&rbac, "ServiceAccount")["metadata"]["name"]
    );
    assert!(
        !kinds(&objs).contains("Namespace"),
        "a chart must not create its namespace"
    );

    // CRDs: exactly the generated files, from the chart directory and from the
    // packaged chart (where helm resolved the crds/ symlink into real files).
    let want = repo_crds();
    assert_eq!(
        rendered_crds(&objs),
        want,
        "the chart's CRDs differ from crds/"
    );
    let pkg_dir = helm.home.join("package");
    let out = helm.run(&["package", CHART, "--destination", pkg_dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "helm package failed: {}",
        stderr_of(&out)
    );
    let tgz = pkg_dir.join(format!(
        "roomkeeper-operator-{}.tgz",
        chart_yaml()["version"].as_str().unwrap()
    ));
    assert!(tgz.is_file(), "no {}", tgz.display());
    let packaged = helm
        .template_result(
            tgz.to_str().unwrap(),
            "roomkeeper-operator",
            "roomkeeper-system",
            &[],
        )
        .unwrap_or_else(|e| panic!("helm template of the package failed: {e}"));
    assert_eq!(
        rendered_crds(&packaged),
        want,
        "the packaged chart's CRDs differ from crds/"
    );
    assert_eq!(
        packaged, all,
        "the packaged chart renders differently from the chart directory"
    );
    let list = Command::new("tar")
        .arg("tzf")
        .arg(&tgz)
        .output()
        .expect("tar");
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.contains("roomkeeper-operator/files/rbac.yaml"),
        "{list}"
    );
    assert!(
        !list.contains("crds/README.md"),
        "the CRD README is packaged:\n{list}"
    );
}

fn chart_yaml() -> Value {
    let text =
        std::fs::read_to_string(repo_root().join(CHART).join("Chart.yaml")).expect("Chart.yaml");
    serde_json::to_value(
        serde_yaml::from_str::<serde_yaml::Value>(&text).expect("Chart.yaml parses"),
    )
    .expect("Chart.yaml as JSON")
}

#[test]
fn chart_defaults_are_the_documented_ones() {
    let Some(helm) = helm_or_skip("chart_defaults_are_the_documented_ones") else {
        return;
    };
    let chart = chart_yaml();
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(
        chart["appVersion"].as_str(),
        Some(env!("CARGO_PKG_VERSION")),
        "Chart.yaml appVersion must be the workspace version"
    );

    let objs = helm.template("rk", "ops", &[]);
    assert_eq!(
        kinds(&objs),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "CustomResourceDefinition",
            "Deployment",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding"
        ]
        .into_iter()
        .map(String::from)
        .collect::<BTreeSet<_>>(),
        "ServiceMonitor and PrometheusRule are off by default"
    );
    let deploy = one(&objs, "Deployment");
    assert_eq!(deploy["metadata"]["name"], "rk-roomkeeper-operator");
    assert_eq!(
        deploy["spec"]["replicas"], 2,
        "two replicas for Lease failover"
    );
    let pod = &deploy["spec"]["template"];
    assert_eq!(
        pod["metadata"]["labels"]["app.kubernetes.io/name"], OPERATOR_APP,
        "the NetworkPolicies the operator writes admit the admin port only from this label"
    );
    for (k, v) in deploy["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(&pod["metadata"]["labels"][k], v, "selector label {k}");
    }
    let c = container(&objs);
    assert_eq!(
        c["image"].as_str(),
        Some(
            format!(
                "ghcr.io/roomkeeper/roomkeeper:{}",
                env!("CARGO_PKG_VERSION")
            )
            .as_str()
        )
    );
    assert_eq!(c["command"], json!(["roomkeeper"]));
    assert_eq!(
        args_of(&objs),
        [
            "operator",
            "run",
            "--lease-name=rk-roomkeeper-operator",
            "--lease-duration-secs=15",
            "--http-addr=0.0.0.0:8080"
        ]
    );
    let env: BTreeMap<&str, &Value> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e))
        .collect();
    assert_eq!(
        env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(
        env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    // Regions in other Kubernetes clusters admit the admin port from it (D57).
    assert_eq!(
        env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"],
        "status.podIP"
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"],
        json!({"path": "/readyz", "port": "metrics"})
    );
    assert_eq!(
        c["livenessProbe"]["httpGet"],
        json!({"path": "/healthz", "port": "metrics"})
    );
    assert_eq!(
        c["ports"],
        json!([{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}])
    );
    // Hardened: non-root, read-only root, no capabilities, RuntimeDefault seccomp.
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    let psc = &pod["spec"]["securityContext"];
    assert_eq!(psc["runAsNonRoot"], true);
    assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault");
    // Replicas spread over nodes unless affinity is set.
    assert_eq!(
        pod["spec"]["affinity"]["podAntiAffinity"]
            ["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
            ["topologyKey"],
        "kubernetes.io/hostname"
    );
    // The metrics Service selects the pods and serves the named port.
    let svc = one(&objs, "Service");
    for (k, v) in svc["spec"]["selector"].as_object().unwrap() {
        assert_eq!(
            &pod["metadata"]["labels"][k], v,
            "Service selector label {k}"
        );
    }
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "metrics");
    // The Lease lives in the release namespace, where the Role is.
    assert_eq!(one(&objs, "Role")["metadata"]["namespace"], "ops");
    assert_eq!(
        one(&objs, "PodDisruptionBudget")["spec"]["maxUnavailable"],
        1
    );
}

#[test]
fn chart_values_are_honoured() {
    let Some(helm) = helm_or_skip("chart_values_are_honoured") else {
        return;
    };
    let objs = helm.template(
        "rk",
        "ops",
        &[
            "--set",
            "replicaCount=3",
            "--set",
            "image.repository=registry.example/rk",
            "--set",
            "image.tag=9.9.9",
            "--set",
            "image.pullPolicy=Always",
            "--set",
            "imagePullSecrets[0].name=pull",
            "--set",
            "metrics.port=9100",
            "--set",
            "leaderElection.leaseDurationSeconds=30",
            "--set",
            "leaderElection.leaseName=my-lease",
            "--set",
            "logLevel=debug",
            "--set",
            "podAnnotations.a=b",
            "--set",
            "nodeSelector.pool=ops",
            "--set",
            "tolerations[0].key=dedicated",
            "--set",
            "tolerations[0].operator=Exists",
            "--set",
            "metrics.serviceMonitor.enabled=true",
            "--set",
            "metrics.serviceMonitor.labels.release=kube-prometheus",
            "--set",
            "metrics.prometheusRule.enabled=true",
        ],
    );
    let deploy = one(&objs, "Deployment");
    let pod = &deploy["spec"]["template"];
    assert_eq!(deploy["spec"]["replicas"], 3);
    let c = container(&objs);
    assert_eq!(c["image"], "registry.example/rk:9.9.9");
    assert_eq!(c["imagePullPolicy"], "Always");
    assert_eq!(pod["spec"]["imagePullSecrets"], json!([{"name": "pull"}]));
    assert_eq!(pod["metadata"]["annotations"]["a"], "b");
    assert_eq!(pod["spec"]["nodeSelector"], json!({"pool": "ops"}));
    assert_eq!(
        pod["spec"]["tolerations"],
        json!([{"key": "dedicated", "operator": "Exists"}])
    );
    let args = args_of(&objs);
    for want in [
        "--lease-duration-secs=30",
        "--lease-name=my-lease",
        "--http-addr=0.0.0.0:9100",
    ] {
        assert!(args.iter().any(|a| a == want), "{want} not in {args:?}");
    }
    assert!(c["env"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["name"] == "ROOMKEEPER_LOG" && e["value"] == "debug"));
    assert_eq!(c["ports"][0]["containerPort"], 9100);
    let svc = one(&objs, "Service");
    assert_eq!(svc["spec"]["ports"][0]["port"], 9100);

    // The ServiceMonitor selects the metrics Service, in its namespace, on its port.
    let sm = one(&objs, "ServiceMonitor");
    assert_eq!(sm["metadata"]["labels"]["release"], "kube-prometheus");
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(
            &svc["metadata"]["labels"][k], v,
            "ServiceMonitor selector label {k}"
        );
    }
    assert_eq!(
        sm["spec"]["namespaceSelector"]["matchNames"],
        json!(["ops"])
    );
    assert_eq!(
        sm["spec"]["endpoints"][0]["port"],
        svc["spec"]["ports"][0]["name"]
    );
    assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");

    // Every operator alert has a severity and a runbook that exists in
    // runbooks/, and selects the operator's own series. (The nodes' groups of
    // the same PrometheusRule are checked by tests/tests/monitoring.rs.)
    let rule = one(&objs, "PrometheusRule");
    let alerts: Vec<&Value> = rule["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["name"] == "roomkeeper-operator")
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert!(alerts.len() >= 3, "{alerts:?}");
    for a in alerts {
        let name = a["alert"].as_str().expect("alert name");
        assert!(a["labels"]["severity"].is_string(), "{name}: no severity");
        let url = a["annotations"]["runbook_url"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no runbook_url"));
        let file = url
            .rsplit_once("/runbooks/")
            .map(|(_, f)| f)
            .unwrap_or_else(|| panic!("{name}: runbook_url {url} is not under runbooks/"));
        assert!(
            repo_root().join("runbooks").join(file).is_file(),
            "{name}: runbooks/{file} does not exist"
        );
        let expr = a["expr"].as_str().unwrap();
        assert!(
            expr.contains(r#"namespace="ops", service="rk-roomkeeper-operator-metrics""#),
            "{name} does not select the release's series: {expr}"
        );
    }

    // One replica: no PodDisruptionBudget (it would block every drain).
    let single = helm.template("rk", "ops", &["--set", "replicaCount=1"]);
    assert!(!kinds(&single).contains("PodDisruptionBudget"));
    // Without RBAC and ServiceAccount creation: none rendered, the named one used.
    let bare = helm.template(
        "rk",
        "ops",
        &[
            "--set",
            "rbac.create=false",
            "--set",
            "serviceAccount.create=false",
            "--set",
            "serviceAccount.name=existing",
        ],
    );
    for kind in [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
    ] {
        assert!(
            !kinds(&bare).contains(kind),
            "{kind} rendered with create=false"
        );
    }
    assert_eq!(
        one(&bare, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"],
        "existing"
    );
    // A user's affinity replaces the default anti-affinity.
    let aff = helm.template(
        "rk",
        "ops",
        &["--set", "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].key=pool",
          "--set", "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].operator=Exists"],
    );
    let a = &one(&aff, "Deployment")["spec"]["template"]["spec"]["affinity"];
    assert!(
        a["podAntiAffinity"].is_null() && a["nodeAffinity"].is_object(),
        "{a}"
    );
}

#[test]
fn chart_refuses_bad_values() {
    let Some(helm) = helm_or_skip("chart_refuses_bad_values") else {
        return;
    };
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--set", "replicaCount=abc"],
            &["/replicaCount", "got string, want integer"],
        ),
        (&["--set", "replicaCount=-1"], &["/replicaCount", "minimum"]),
        (
            &["--set", "replicas=3"],
            &["additional properties 'replicas' not allowed"],
        ),
        (
            &["--set", "metrics.serviceMonitor.enable=true"],
            &["/metrics/serviceMonitor", "'enable' not allowed"],
        ),
        (
            &["--set", "image.pullPolicy=Sometimes"],
            &["/image/pullPolicy", "IfNotPresent"],
        ),
        (
            &["--set", "leaderElection.leaseDurationSeconds=2"],
            &["/leaderElection/leaseDurationSeconds", "minimum"],
        ),
        (
            &["--set", "metrics.port=70000"],
            &["/metrics/port", "maximum"],
        ),
        (
            &["--set", "metrics.serviceMonitor.interval=soon"],
            &["/metrics/serviceMonitor/interval"],
        ),
        (
            &["--set", "fullnameOverride=Bad_Name"],
            &["/fullnameOverride"],
        ),
        (
            &["--set", "serviceAccount.create=false"],
            &["serviceAccount.name is required when serviceAccount.create is false"],
        ),
    ];
    for (args, want) in cases {
        match helm.template_result(CHART, "rk", "ops", args) {
            Ok(_) => panic!("helm template {args:?} rendered; it must be refused"),
            Err(msg) => {
                for w in *want {
                    assert!(
                        msg.contains(w),
                        "helm template {args:?}: message lacks {w:?}:\n{msg}"
                    );
                }
            }
        }
    }
}

// ------------------------------------------------------- a real API server

const NS: &str = "rk-helm";
const RELEASE: &str = "helm-e2e";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_objects_are_accepted_by_a_real_api_server() {
    init_test_tracing();
    let Some(helm) = helm_or_skip("chart_objects_are_accepted_by_a_real_api_server") else {
        return;
    };
    let started = Instant::now();
    let Some(h) = KubeHarness::start_or_skip("helm").await else {
        return;
    };
    eprintln!(
        "control plane up in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    // Held until the operator is gone (see roomkeeper_e2e::ports).
    let metrics = roomkeeper_e2e::ports::reserve().expect("a loopback port");
    let result = scenario(&h, &helm, metrics.port()).await;
    if let Err(e) = result {
        eprintln!("{}", h.dump_logs(40));
        eprintln!(
            "--- operator ---\n{}",
            roomkeeper_e2e::k8s::tail_file(&h.dir().join("operator-helm.log"), 60)
        );
        panic!("helm chart on a real API server: {e:#}");
    }
    eprintln!("passed in {:.1}s", started.elapsed().as_secs_f64());
}

async fn scenario(h: &KubeHarness, helm: &Helm, port: u16) -> Result<()> {
    let client = h.admin_client();
    // Everything the chart can render, except the prometheus-operator kinds
    // (their CRDs are not installed here; the ServiceMonitor and
    // PrometheusRule are checked by rendering above).
    let port_arg = format!("metrics.port={port}");
    let objs = helm.template(RELEASE, NS, &["--set", &port_arg]);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": NS}}))?,
        )
        .await
        .or_else(|e| match e {
            // An existing cluster (ROOMKEEPER_E2E_USE_KUBECONFIG) from an earlier run.
            kube::Error::Api(ref a) if a.code == 409 => Ok(Namespace::default()),
            e => Err(e),
        })
        .context("creating the release namespace")?;

    // CRDs first (what `helm install` does with crds/), then the rest.
    let (crds, rest): (Vec<&Value>, Vec<&Value>) = objs
        .iter()
        .partition(|o| kind_of(o) == "CustomResourceDefinition");
    ensure!(!crds.is_empty() && !rest.is_empty());
    let mut applied: Vec<DynamicObject> = Vec::new();
    for o in crds.iter().chain(rest.iter()) {
        let text = serde_yaml::to_string(o)?;
        let got = apply_yaml(&client, &text, NS)
            .await
            .with_context(|| format!("the API server refused {} {}", kind_of(o), name_of(o)))?;
        applied.extend(got);
    }
    ensure!(
        applied.len() == objs.len(),
        "applied {} of {} objects",
        applied.len(),
        objs.len()
    );
    for (o, a) in objs.iter().zip(&applied) {
        ensure!(
            a.metadata.uid.is_some(),
            "{} {} has no uid",
            kind_of(o),
            name_of(o)
        );
        if let Some(ns) = o["metadata"]["namespace"].as_str() {
            ensure!(
                a.metadata.namespace.as_deref() == Some(ns),
                "{} {} in the wrong namespace",
                kind_of(o),
                name_of(o)
            );
        }
    }
    eprintln!(
        "the API server accepted all {} rendered objects",
        applied.len()
    );

    // The Deployment's own command line, as its pod would run it, under the
    // chart's ServiceAccount (through its bindings).
    let deploy = one(&objs, "Deployment");
    let sa = deploy["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .context("serviceAccountName")?;
    let kubeconfig = h.service_account_kubeconfig(NS, sa).await?;
    let pod_name = format!("{}-7d9f-abcde", name_of(deploy));
    let mut op = ChartOperator::start(h.dir(), &objs, &kubeconfig, &pod_name)?;
    let addr = format!("127.0.0.1:{port}");
    eventually(Duration::from_secs(40), "/readyz to answer 200 (leader)", || {
        let addr = addr.clone();
        async move { matches!(get(&addr, "/readyz"), Ok((200, body)) if body.contains("leader")) }
    })
    .await?;
    let (code, _) = get(&addr, "/healthz")?;
    ensure!(code == 200, "/healthz answered {code}");
    let (code, metrics) = get(&addr, "/metrics")?;
    ensure!(
        code == 200 && metrics.contains("roomkeeper_operator_leader 1"),
        "/metrics: {code} {metrics}"
    );
    let leases: Api<Lease> = Api::namespaced(client.clone(), NS);
    let lease_name = args_of(&objs)
        .iter()
        .find_map(|a| a.strip_prefix("--lease-name=").map(String::from))
        .context("--lease-name")?;
    let holder = |l: &Lease| l.spec.as_ref().and_then(|s| s.holder_identity.clone());
    let lease = leases.get(&lease_name).await.context("the Lease")?;
    ensure!(
        holder(&lease).as_deref() == Some(pod_name.as_str()),
        "Lease holder {:?}",
        holder(&lease)
    );
    // Let the controllers start their watches under the chart's RBAC.
    tokio::time::sleep(Duration::from_secs(3)).await;
    op.terminate(Duration::from_secs(15))?;
    let log = std::fs::read_to_string(&op.log)?;
    ensure!(
        !log.to_lowercase().contains("forbidden"),
        "the operator was refused something:\n{log}"
    );
    let lease = leases.get(&lease_name).await?;
    ensure!(
        holder(&lease).is_none(),
        "the Lease is still held after SIGTERM: {:?}",
        holder(&lease)
    );
    Ok(())
}

/// The chart's operator container run as a local process: its command and
/// args as rendered, its env with the downward API resolved as the kubelet
/// would, and the ServiceAccount's kubeconfig in place of the mounted token.
struct ChartOperator {
    child: Option<Child>,
    log: PathBuf,
}

impl ChartOperator {
    fn start(
        dir: &Path,
        objs: &[Value],
        kubeconfig: &Path,
        pod_name: &str,
    ) -> Result<ChartOperator> {
        let c = container(objs);
        let command = c["command"].as_array().context("command")?;
        ensure!(
            command == &vec![json!("roomkeeper")],
            "unexpected command {command:?}"
        );
        let mut cmd = Command::new(roomkeeper_e2e::binary());
        cmd.args(args_of(objs))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default());
        for e in c["env"].as_array().context("env")? {
            let name = e["name"].as_str().context("env name")?;
            let value = if let Some(v) = e["value"].as_str() {
                v.to_string()
            } else {
                match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                    Some("metadata.name") => pod_name.to_string(),
                    Some("metadata.namespace") => NS.to_string(),
                    // The process runs on the host: its address there.
                    Some("status.podIP") => "127.0.0.1".to_string(),
                    _ => {
                        bail!("env {name}: {e} is not resolved by this test; extend ChartOperator")
                    }
                }
            };
            cmd.env(name, value);
        }
        cmd.env("KUBECONFIG", kubeconfig);
        let log = dir.join("operator-helm.log");
        let out = File::create(&log)?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = cmd.spawn().context("starting the operator")?;
        Ok(ChartOperator {
            child: Some(child),
            log,
        })
    }

    fn terminate(&mut self, within: Duration) -> Result<()> {
        let Some(mut c) = self.child.take() else {
            return Ok(());
        };
        let pid = c.id();
        roomkeeper_e2e::signal_pid(pid, roomkeeper_e2e::Signal::SIGTERM)
            .with_context(|| format!("could not signal the operator (pid {pid})"))?;
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = c.try_wait()? {
                ensure!(
                    status.success(),
                    "the operator exited with {status} after SIGTERM"
                );
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = c.kill();
        let _ = c.wait();
        bail!("the operator did not stop within {within:?} of SIGTERM")
    }
}

impl Drop for ChartOperator {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
