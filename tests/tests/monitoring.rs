//! The operations plane's monitoring, checked without a cluster:
//!
//! - the nodes' alert rules (`charts/roomkeeper-operator/files/roomkeeper-nodes.rules.yaml`)
//!   pass `promtool check rules` and the unit tests of `tests/rules/` (burn
//!   rates at their thresholds), and so does the PrometheusRule the chart
//!   renders from them;
//! - every alert has a summary, a description, a severity and a runbook_url
//!   that points at an existing `runbooks/<file>.md`; every runbook (each
//!   `runbooks/*.md` but a README.md, not only the alerts' and the tiers')
//!   has the sections Meaning, Impact, Diagnosis, Mitigation, Escalation and
//!   Related drill; every relative link in `runbooks/`
//!   resolves; every `roomkeeper …` and `kubectl roomkeeper …` command a
//!   runbook names exists (run with `--help` against the built binary; the
//!   plugin's verbs as `roomkeeper kubectl …`);
//! - the Grafana dashboard is valid JSON, every panel's PromQL parses
//!   (promtool, through a throwaway rule file), and every metric it names is
//!   registered by the code.
//!
//! promtool comes from Debian's `prometheus` package (scripts/test.sh installs
//! it); helm from `scripts/helm-bin.sh`. Without them a test prints SKIPPED
//! and passes, unless `CI` is set.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use roomkeeper_e2e::k8s::skip_or_panic;
use roomkeeper_e2e::operator::{helm_path, repo_root};
use serde::Deserialize;
use serde_yaml::Value;

const NODE_RULES: &str = "charts/roomkeeper-operator/files/roomkeeper-nodes.rules.yaml";
const OPERATOR_RULES: &str = "charts/roomkeeper-operator/templates/prometheusrule.yaml";
const RULE_TESTS: &[&str] = &[
    "tests/rules/roomkeeper-nodes.test.yaml",
    "tests/rules/roomkeeper-nodes-3d.test.yaml",
    "tests/rules/roomkeeper-operator-view.test.yaml",
];
const DASHBOARD: &str = "charts/roomkeeper-operator/files/dashboards/roomkeeper.json";
/// The runbook base URL the rule file is written with (the chart replaces it).
const RUNBOOK_BASE: &str = "https://github.com/roomkeeper/roomkeeper/blob/main/runbooks";
const SECTIONS: &[&str] = &[
    "Meaning",
    "Impact",
    "Diagnosis",
    "Mitigation",
    "Escalation",
    "Related drill",
];

/// `promtool` on PATH (Debian's `prometheus` package).
pub fn promtool(test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("promtool"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        skip_or_panic(
            test,
            "promtool is missing (apt-get install prometheus; scripts/test.sh does)",
        );
    }
    found
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

fn read(rel: &str) -> String {
    let p = repo_root().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn scratch(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "roomkeeper-monitoring-{}-{test}",
        std::process::id()
    ));
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

// ------------------------------------------------------------------- rules

#[test]
fn node_rules_pass_promtool_check_and_unit_tests() {
    let Some(promtool) = promtool("node_rules_pass_promtool_check_and_unit_tests") else {
        return;
    };
    let out = run_ok(
        Command::new(&promtool)
            .args(["check", "rules", NODE_RULES])
            .current_dir(repo_root()),
    );
    assert!(out.contains("SUCCESS"), "{out}");
    let out = run_ok(
        Command::new(&promtool)
            .args(["test", "rules"])
            .args(RULE_TESTS)
            .current_dir(repo_root()),
    );
    assert!(out.contains("SUCCESS"), "{out}");
}

/// One alerting rule: its name, labels and annotations.
struct Alert {
    name: String,
    severity: String,
    annotations: serde_yaml::Mapping,
}

fn alerts_of(groups: &Value) -> Vec<Alert> {
    let mut out = Vec::new();
    for g in groups.as_sequence().expect("groups is a list") {
        for r in g["rules"].as_sequence().expect("rules is a list") {
            let Some(name) = r["alert"].as_str() else {
                continue;
            };
            out.push(Alert {
                name: name.to_string(),
                severity: r["labels"]["severity"].as_str().unwrap_or("").to_string(),
                annotations: r["annotations"].as_mapping().cloned().unwrap_or_default(),
            });
        }
    }
    out
}

fn node_alerts() -> Vec<Alert> {
    let file: Value = serde_yaml::from_str(&read(NODE_RULES)).expect("rule file is YAML");
    alerts_of(&file["groups"])
}

/// The operator's own alerts (a Helm template): `- alert:` names and their
/// runbook file, read from the template text.
fn operator_alerts() -> Vec<(String, String)> {
    let text = read(OPERATOR_RULES);
    let mut out = Vec::new();
    let mut name = None;
    for line in text.lines().map(str::trim) {
        if let Some(n) = line.strip_prefix("- alert: ") {
            name = Some(n.trim().to_string());
        }
        if let Some(u) = line.strip_prefix("runbook_url: {{ $runbooks }}/") {
            let n = name.take().expect("runbook_url after an alert");
            out.push((n, u.trim().to_string()));
        }
    }
    assert!(!out.is_empty(), "no alerts found in {OPERATOR_RULES}");
    out
}

// ---------------------------------------------------------------- runbooks

fn runbook_files() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(repo_root().join("runbooks"))
        .expect("runbooks/")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    v.sort();
    v
}

fn sections_missing(path: &Path) -> Vec<&'static str> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let headings: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(str::trim)
        .collect();
    SECTIONS
        .iter()
        .copied()
        .filter(|s| !headings.contains(s))
        .collect()
}

#[test]
fn every_alert_has_annotations_and_a_runbook_with_every_section() {
    let root = repo_root();
    let mut problems = Vec::new();
    let mut runbooks = BTreeSet::new();
    let alerts = node_alerts();
    assert!(alerts.len() >= 10, "only {} node alerts", alerts.len());
    for a in &alerts {
        for key in ["summary", "description", "runbook_url"] {
            if !a.annotations.contains_key(key) {
                problems.push(format!("{}: no {key} annotation", a.name));
            }
        }
        if !["critical", "warning"].contains(&a.severity.as_str()) {
            problems.push(format!("{}: severity {:?}", a.name, a.severity));
        }
        let url = a.annotations.get("runbook_url").and_then(Value::as_str);
        let want = format!("{RUNBOOK_BASE}/{}.md", a.name);
        if url != Some(want.as_str()) {
            problems.push(format!("{}: runbook_url {url:?}, want {want}", a.name));
        }
        runbooks.insert(format!("{}.md", a.name));
    }
    for (name, file) in operator_alerts() {
        if !root.join("runbooks").join(&file).is_file() {
            problems.push(format!("{name}: runbook {file} does not exist"));
        }
        runbooks.insert(file);
    }
    // Every runbook, not only the alerts' and the tiers': the operator's
    // Events and the nodes' errors link the others.
    for f in runbook_files() {
        let n = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if n != "README.md" {
            runbooks.insert(n.to_string());
        }
    }
    assert!(
        runbooks.iter().any(|r| r.starts_with("tier-t4")),
        "{runbooks:?}"
    );
    for r in &runbooks {
        let p = root.join("runbooks").join(r);
        if !p.is_file() {
            problems.push(format!("runbooks/{r} does not exist"));
            continue;
        }
        let missing = sections_missing(&p);
        if !missing.is_empty() {
            problems.push(format!("runbooks/{r} lacks sections {missing:?}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Relative link targets `](target)` of a markdown text.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        if let Some(end) = rest.find(')') {
            out.push(rest[..end].to_string());
        }
    }
    out
}

#[test]
fn every_runbook_link_resolves_and_every_related_drill_exists() {
    let mut problems = Vec::new();
    for f in runbook_files() {
        let text = std::fs::read_to_string(&f).expect("runbook");
        let dir = f.parent().expect("runbooks dir");
        for l in links(&text) {
            if l.starts_with("http://") || l.starts_with("https://") || l.starts_with('#') {
                continue;
            }
            let path = l.split('#').next().unwrap_or_default();
            if !dir.join(path).exists() {
                problems.push(format!("{}: link {l} points nowhere", f.display()));
            }
        }
        if let Some(i) = text.find("\n## Related drill") {
            let section = &text[i..];
            if !links(section)
                .iter()
                .any(|l| l.starts_with("../chaos/drills/") && dir.join(l).is_file())
            {
                problems.push(format!(
                    "{}: Related drill links no drill file",
                    f.display()
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Code of a markdown text: inline `spans` and fenced blocks, line by line.
fn code_lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            out.push(line.to_string());
            continue;
        }
        let parts: Vec<&str> = line.split('`').collect();
        out.extend(parts.iter().skip(1).step_by(2).map(|s| s.to_string()));
    }
    out
}

/// The subcommand path of every `roomkeeper …` invocation in `code`: the
/// words after `roomkeeper` up to the first option, placeholder or path.
/// `kubectl roomkeeper VERB` (the plugin) is `roomkeeper kubectl VERB`.
fn roomkeeper_commands(code: &str) -> Vec<Vec<String>> {
    let words: Vec<&str> = code.split_whitespace().collect();
    let mut out = Vec::new();
    for (i, w) in words.iter().enumerate() {
        let plugin = *w == "kubectl-roomkeeper"
            || (*w == "roomkeeper" && i > 0 && words[i - 1] == "kubectl");
        if *w != "roomkeeper" && !plugin {
            continue;
        }
        let prefix = plugin.then(|| "kubectl".to_string());
        let path: Vec<String> = prefix
            .into_iter()
            .chain(
                words[i + 1..]
                    .iter()
                    .take_while(|w| {
                        w.chars().next().is_some_and(|c| c.is_ascii_lowercase())
                            && w.chars().all(|c| c.is_ascii_lowercase() || c == '-')
                    })
                    .map(|w| w.to_string()),
            )
            .collect();
        out.push(path);
    }
    out
}

#[test]
fn every_roomkeeper_command_in_a_runbook_exists() {
    let bin = roomkeeper_e2e::binary();
    let mut problems = Vec::new();
    let mut checked = BTreeSet::new();
    for f in runbook_files() {
        let text = std::fs::read_to_string(&f).expect("runbook");
        for code in code_lines(&text) {
            for path in roomkeeper_commands(&code) {
                if !checked.insert(path.clone()) {
                    continue;
                }
                let out = Command::new(&bin)
                    .args(&path)
                    .arg("--help")
                    .output()
                    .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
                if !out.status.success() {
                    problems.push(format!(
                        "{}: `roomkeeper {}` does not exist: {}",
                        f.display(),
                        path.join(" "),
                        String::from_utf8_lossy(&out.stderr).trim()
                    ));
                }
            }
        }
    }
    assert!(
        checked
            .iter()
            .any(|p| p.first().is_some_and(|w| w == "drill")),
        "no runbook names a roomkeeper command: the extraction is broken ({checked:?})"
    );
    assert!(
        checked.iter().any(|p| p.len() > 1 && p[0] == "kubectl"),
        "no runbook names a `kubectl roomkeeper` verb: the extraction is broken ({checked:?})"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_command_extraction_finds_commands_and_stops_at_arguments() {
    assert_eq!(
        roomkeeper_commands("roomkeeper drill run chaos/drills/x.yaml --seed 1"),
        vec![vec!["drill".to_string(), "run".to_string()]]
    );
    assert_eq!(
        roomkeeper_commands("sudo roomkeeper node --id 3"),
        vec![vec!["node".to_string()]]
    );
    assert_eq!(
        roomkeeper_commands("kubectl roomkeeper approve <name> -n shop"),
        vec![vec!["kubectl".to_string(), "approve".to_string()]]
    );
    assert_eq!(
        roomkeeper_commands("kubectl roomkeeper drill report NAME"),
        vec![vec![
            "kubectl".to_string(),
            "drill".to_string(),
            "report".to_string()
        ]]
    );
    assert_eq!(
        code_lines("run `roomkeeper operator run` now\n```\nroomkeeper drill report <dir>\n```"),
        vec!["roomkeeper operator run", "roomkeeper drill report <dir>"]
    );
}

// --------------------------------------------------------------- dashboard

/// Every PromQL expression of the dashboard: panel targets and annotations.
fn dashboard_exprs(dash: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().expect("every target has an expr");
            out.push((format!("panel {:?}", p["title"]), expr.to_string()));
        }
    }
    for a in dash["annotations"]["list"].as_array().into_iter().flatten() {
        if let Some(expr) = a["expr"].as_str() {
            out.push((format!("annotation {:?}", a["name"]), expr.to_string()));
        }
    }
    out
}

/// Grafana's variables replaced by values PromQL accepts.
fn without_grafana_variables(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h")
        .replace("$namespace", "ns")
        .replace("$cluster", "cluster")
}

/// Metric names registered by the workspace's code (string literals).
fn registered_metrics() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut stack: Vec<PathBuf> = [
        "api",
        "order-store",
        "control",
        "operator",
        "local",
        "roomkeeper",
    ]
    .iter()
    .map(|d| repo_root().join(d).join("src"))
    .collect();
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("source dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).expect("source");
                for lit in text.split('"').skip(1).step_by(2) {
                    if lit.starts_with("roomkeeper_")
                        && lit.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    {
                        names.insert(lit.to_string());
                    }
                }
            }
        }
    }
    names
}

/// The recording rules of the node rule file.
fn recorded_series() -> BTreeSet<String> {
    let file: Value = serde_yaml::from_str(&read(NODE_RULES)).expect("rule file");
    let mut out = BTreeSet::new();
    for g in file["groups"].as_sequence().expect("groups") {
        for r in g["rules"].as_sequence().expect("rules") {
            if let Some(n) = r["record"].as_str() {
                out.insert(n.to_string());
            }
        }
    }
    out
}

/// Label names of ours that look like metric names in PromQL text.
const LABELS: &[&str] = &["roomkeeper_cluster", "roomkeeper_namespace"];

/// Names in `expr` that must exist: `roomkeeper_*` metrics and `roomkeeper:*`
/// recorded series.
fn names_in(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| t.starts_with("roomkeeper_") || t.starts_with("roomkeeper:"))
        .filter(|t| !LABELS.contains(t))
        .map(str::to_string)
        .collect()
}

#[test]
fn dashboard_is_valid_and_names_only_exported_metrics() {
    let text = read(DASHBOARD);
    let dash: serde_json::Value = serde_json::from_str(&text).expect("dashboard is valid JSON");
    let exprs = dashboard_exprs(&dash);
    assert!(exprs.len() >= 15, "only {} expressions", exprs.len());
    let titles: Vec<&str> = dash["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .filter_map(|p| p["title"].as_str())
        .collect();
    for want in [
        "Orders per second by region",
        "Order acceptance by region",
        "Order latency percentiles",
        "Leader per region",
        "Replication lag by follower (entries)",
        "Availability burn rate (1 = spending the budget exactly)",
    ] {
        assert!(titles.contains(&want), "no panel {want:?} in {titles:?}");
    }

    let registered = registered_metrics();
    assert!(
        registered.contains("roomkeeper_raft_is_leader"),
        "{registered:?}"
    );
    let recorded = recorded_series();
    let mut problems = Vec::new();
    for (what, expr) in &exprs {
        for name in names_in(expr) {
            let ok = if name.contains(':') {
                recorded.contains(&name)
            } else {
                let base = ["_bucket", "_count", "_sum"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .filter(|b| registered.contains(*b));
                registered.contains(&name) || base.is_some()
            };
            if !ok {
                problems.push(format!("{what}: {name} is neither registered nor recorded"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // PromQL: every expression as a recording rule of a throwaway file.
    let Some(promtool) = promtool("dashboard_is_valid_and_names_only_exported_metrics") else {
        return;
    };
    let rules: Vec<serde_json::Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, (_, e))| {
            serde_json::json!({"record": format!("dashboard:expr_{i}"), "expr": without_grafana_variables(e)})
        })
        .collect();
    let file = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    let dir = scratch("dashboard");
    let path = dir.join("dashboard-exprs.yaml");
    // JSON is YAML: promtool reads it as a rule file.
    std::fs::write(&path, file.to_string()).expect("write rule file");
    let out = run_ok(Command::new(&promtool).arg("check").arg("rules").arg(&path));
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", exprs.len())),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_metric_name_extraction_skips_labels() {
    assert_eq!(
        names_in(
            r#"sum by (roomkeeper_cluster) (rate(roomkeeper_orders_total{roomkeeper_cluster="x"}[5m])) / roomkeeper:slo_x:ratio"#
        ),
        vec!["roomkeeper_orders_total", "roomkeeper:slo_x:ratio"]
    );
}

// ------------------------------------------------------------------- chart

/// `ROOMKEEPER_HELM_BIN`, else the cache path of `scripts/helm-bin.sh` (the
/// helm version tests/helm-bin/go.mod pins).
fn helm(test: &str) -> Option<PathBuf> {
    let bin = helm_path();
    if bin.is_file() {
        Some(bin)
    } else {
        skip_or_panic(
            test,
            &format!("no helm at {} (run scripts/helm-bin.sh)", bin.display()),
        );
        None
    }
}

#[test]
fn chart_renders_the_node_monitoring_and_its_rules_pass_promtool() {
    let test = "chart_renders_the_node_monitoring_and_its_rules_pass_promtool";
    let (Some(helm), Some(promtool)) = (helm(test), promtool(test)) else {
        return;
    };
    let dir = scratch("chart");
    let out = Command::new(&helm)
        .args([
            "template",
            "rk",
            "charts/roomkeeper-operator",
            "--namespace",
            "ops",
            "--set",
            "metrics.prometheusRule.enabled=true",
            "--set",
            "metrics.prometheusRule.runbookBaseUrl=https://runbooks.example.com/rk/",
            "--set",
            "metrics.podMonitor.enabled=true",
            "--set",
            "grafanaDashboard.enabled=true",
            "--set",
            "metrics.prometheusRule.approvalPendingMinutes=12",
        ])
        .current_dir(repo_root())
        .env("HELM_CONFIG_HOME", dir.join("config"))
        .env("HELM_CACHE_HOME", dir.join("cache"))
        .env("HELM_DATA_HOME", dir.join("data"))
        .output()
        .expect("helm template");
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered = String::from_utf8_lossy(&out.stdout).to_string();
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&rendered)
        .map(|d| Value::deserialize(d).expect("rendered YAML"))
        .filter(|d| !d.is_null())
        .collect();
    let kind = |k: &str| -> Vec<&Value> { docs.iter().filter(|d| d["kind"] == k).collect() };

    // The PrometheusRule: the operator's alerts and every node alert, with the
    // runbook base URL of the values, and promtool accepts its groups.
    let rules = kind("PrometheusRule");
    assert_eq!(rules.len(), 1, "{rendered}");
    let groups = &rules[0]["spec"]["groups"];
    let alerts = alerts_of(groups);
    let names: BTreeSet<&str> = alerts.iter().map(|a| a.name.as_str()).collect();
    for a in node_alerts() {
        assert!(names.contains(a.name.as_str()), "{} not rendered", a.name);
    }
    for (a, _) in operator_alerts() {
        assert!(names.contains(a.as_str()), "{a} not rendered");
    }
    for a in &alerts {
        let url = a.annotations.get("runbook_url").and_then(Value::as_str);
        assert!(
            url.is_some_and(|u| u.starts_with("https://runbooks.example.com/rk/")),
            "{}: {url:?}",
            a.name
        );
    }
    // The approval alert's threshold is the chart value, in seconds.
    let approval = groups
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_sequence().into_iter().flatten())
        .find(|r| r["alert"] == "RoomkeeperApprovalPendingTooLong")
        .expect("RoomkeeperApprovalPendingTooLong rendered");
    let expr = approval["expr"].as_str().expect("expr");
    assert!(expr.contains("> 720 # approvalPendingSeconds"), "{expr}");
    let path = dir.join("rendered-rules.yaml");
    let mut file = serde_yaml::Mapping::new();
    file.insert("groups".into(), groups.clone());
    std::fs::write(&path, serde_yaml::to_string(&file).expect("yaml")).expect("write");
    let out = run_ok(Command::new(&promtool).arg("check").arg("rules").arg(&path));
    assert!(out.contains("SUCCESS"), "{out}");

    // The PodMonitor scrapes the node pods' plain metrics port and names the cluster.
    let pm = kind("PodMonitor");
    assert_eq!(pm.len(), 1, "{rendered}");
    let spec = &pm[0]["spec"];
    assert_eq!(
        spec["selector"]["matchLabels"]["app.kubernetes.io/name"],
        "roomkeeper-node"
    );
    let ep = &spec["podMetricsEndpoints"][0];
    assert_eq!(ep["port"], "metrics");
    assert_eq!(ep["path"], "/metrics");
    assert_eq!(ep["relabelings"][0]["targetLabel"], "roomkeeper_cluster");

    // The dashboard ConfigMap, labelled for Grafana's sidecar, holds the file.
    let dash = kind("ConfigMap")
        .into_iter()
        .find(|c| c["metadata"]["labels"]["grafana_dashboard"] == "1")
        .expect("a ConfigMap labelled grafana_dashboard: \"1\"");
    let json = dash["data"]["roomkeeper.json"]
        .as_str()
        .expect("roomkeeper.json");
    let parsed: serde_json::Value = serde_json::from_str(json).expect("dashboard JSON");
    let file: serde_json::Value = serde_json::from_str(&read(DASHBOARD)).expect("dashboard file");
    assert_eq!(parsed, file);
    let _ = std::fs::remove_dir_all(dir);
}
