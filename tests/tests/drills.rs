//! The short CI suite of chaos drills, through the real binary:
//! `roomkeeper drill run chaos/drills/<name>.yaml`. Each drill starts a
//! five-voter, three-region loopback cluster, runs a recorded flash-sale load,
//! injects its faults, heals, reads the final state back and runs the history
//! checker. The tests assert the verdict, the report files, and that the
//! history was large enough for the verdict to mean something.
//!
//! Run: `cargo build --release -p roomkeeper && ROOMKEEPER_BIN=target/release/roomkeeper
//! cargo test -p roomkeeper-e2e --test drills -- --test-threads=1`

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use roomkeeper_e2e::binary;
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct Run {
    out: PathBuf,
    output: Output,
    report: Value,
}

impl Run {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).to_string()
    }
    fn context(&self) -> String {
        let err = String::from_utf8_lossy(&self.output.stderr);
        let tail: Vec<&str> = err.lines().rev().take(40).collect();
        format!(
            "stdout:\n{}\nstderr tail:\n{}",
            self.stdout(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }
}

fn run_drill(file: &Path, name: &str, port: u16) -> Run {
    run_drill_with_input(file, name, port, None)
}

/// Runs a drill; `input`, when given, is the operator's stdin (then closed).
fn run_drill_with_input(file: &Path, name: &str, port: u16, input: Option<&str>) -> Run {
    let out = std::env::temp_dir().join(format!("roomkeeper-drill-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let mut child = Command::new(binary())
        .current_dir(repo())
        .args(["drill", "run"])
        .arg(file)
        .arg("--out")
        .arg(&out)
        .args(["--seed", "42", "--base-port", &port.to_string()])
        .env("ROOMKEEPER_LOG", "warn")
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run roomkeeper drill");
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        use std::io::Write;
        stdin
            .write_all(text.as_bytes())
            .expect("write the operator's input");
        // Dropping stdin closes it: the operator's input ends here.
    }
    let output = child.wait_with_output().expect("wait for roomkeeper drill");
    let report = std::fs::read(out.join("report.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    Run {
        out,
        output,
        report,
    }
}

/// Runs a library drill and checks what every passing drill must show.
fn passing(name: &str, port: u16) -> Run {
    let r = run_drill(
        &repo().join("chaos/drills").join(format!("{name}.yaml")),
        name,
        port,
    );
    assert!(
        r.output.status.success(),
        "drill {name} did not pass\n{}",
        r.context()
    );
    assert!(r.stdout().lines().any(|l| l == "PASS"), "{}", r.context());
    for f in ["history.json", "report.json", "report.html"] {
        assert!(r.out.join(f).is_file(), "{f} missing\n{}", r.context());
    }
    let rep = &r.report;
    assert_eq!(rep["verdict"], "PASS", "{}", r.context());
    // The checker ran on a non-trivial history and found it valid.
    assert_eq!(rep["check"]["valid"], true);
    let acked = rep["check"]["acknowledged"].as_u64().unwrap_or(0);
    assert!(
        acked > 500,
        "only {acked} acknowledged orders\n{}",
        r.context()
    );
    assert_eq!(rep["check"]["rpo"], 0);
    assert!(
        rep["orders"]["reads"].as_u64().unwrap_or(0) > 20,
        "the linearizability probe read stock"
    );
    assert!(
        rep["check"]["linearizability_skipped"]
            .as_array()
            .is_some_and(|a| a.is_empty()),
        "every probe listing was judged: {}",
        rep["check"]["linearizability_skipped"]
    );
    let history: Value =
        serde_json::from_slice(&std::fs::read(r.out.join("history.json")).expect("history"))
            .expect("history json");
    let ops = history["ops"].as_array().map_or(0, |o| o.len());
    assert!(
        ops as u64 > acked,
        "history holds every attempt ({ops} ops)"
    );
    assert!(
        history["final_orders"].as_object().map_or(0, |o| o.len()) as u64 >= acked,
        "the final read found every acknowledged order"
    );
    // Every fault was injected and healed; every probe was evaluated.
    let faults = rep["faults"].as_array().expect("faults");
    assert!(!faults.is_empty(), "no fault injected\n{}", r.context());
    assert!(
        faults.iter().all(|f| f["end_ms"].is_u64()),
        "a fault was never healed"
    );
    assert!(rep["probes"]
        .as_array()
        .is_some_and(|p| !p.is_empty() && p.iter().all(|p| p["passed"] == true)));
    let html = std::fs::read_to_string(r.out.join("report.html")).expect("html");
    assert!(html.contains("<svg") && html.contains("PASS"));
    r
}

#[test]
fn leader_kill_passes_and_the_playbook_heals() {
    let r = passing("leader-kill", 17500);
    let rep = &r.report;
    assert!(rep["faults"][0]["detail"]
        .as_str()
        .unwrap_or("")
        .starts_with("SIGKILL node(s)"));
    assert!(
        rep["decisions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|d| d["tier"] == "heal" && d["action"] == "RestartNode"),
        "T1 heal restarted the killed leader"
    );
    assert!(r.out.join("controller/decisions.jsonl").is_file());
    // `drill report` renders the run again.
    let html = r.out.join("again.html");
    let o = Command::new(binary())
        .args(["drill", "report"])
        .arg(&r.out)
        .arg("--out")
        .arg(&html)
        .output()
        .expect("drill report");
    assert!(o.status.success());
    assert!(std::fs::read_to_string(&html)
        .expect("html")
        .contains("leader-kill"));
    let o = Command::new(binary())
        .args(["drill", "report"])
        .arg(r.out.join("report.json"))
        .output()
        .expect("drill report");
    assert!(String::from_utf8_lossy(&o.stdout).contains("checker: valid"));
    let _ = std::fs::remove_dir_all(&r.out);
}

/// The probe of `kind` in a report.
fn probe<'a>(report: &'a Value, kind: &str) -> &'a Value {
    report["probes"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["kind"] == kind))
        .unwrap_or(&Value::Null)
}

/// A minority region cut off: buyers sent there wait or are refused, so
/// accepted orders/s fall; the client-side signals show it, T2 drains the
/// region, throughput holds, and after the heal the region is restored.
#[test]
fn minority_region_partition_passes() {
    let r = passing("partition-minority-region", 17520);
    assert!(r.report["faults"][0]["detail"]
        .as_str()
        .unwrap_or("")
        .contains("cut off from the other regions"));
    for kind in ["throughput", "fullRecovery", "ordersAccepted"] {
        assert_eq!(
            probe(&r.report, kind)["passed"],
            true,
            "{kind}\n{}",
            r.context()
        );
    }
    let decisions = r.report["decisions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let acted = |action: &str| {
        decisions
            .iter()
            .any(|d| d["tier"] == "move" && d["action"] == action && d["disposition"] == "execute")
    };
    assert!(
        acted("SetTrafficWeightZero") && acted("RestoreTrafficWeight"),
        "T2 drained the cut-off region on what buyers felt and restored it\n{}",
        r.context()
    );
    assert!(
        r.report["final_control"]["stranded"]
            .as_array()
            .is_some_and(|s| s.is_empty()),
        "{}",
        r.report["final_control"]
    );
    let _ = std::fs::remove_dir_all(&r.out);
}

/// The same drill with the playbook in dry-run (it decides, nothing acts) —
/// the behaviour before the drill's load fed client-side signals: buyers
/// lose most of their throughput for the whole partition and the
/// hypothesis fails on it.
#[test]
fn minority_region_partition_fails_its_hypothesis_without_the_playbooks_reaction() {
    let dir = std::env::temp_dir().join(format!("roomkeeper-drillfile-dry-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let mut drill: Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo().join("chaos/drills/partition-minority-region.yaml"))
            .expect("drill file"),
    )
    .expect("yaml");
    drill["spec"]["playbook"] = serde_json::json!({"dryRun": true});
    let file = dir.join("partition-minority-region.yaml");
    std::fs::write(&file, serde_yaml::to_string(&drill).expect("yaml")).expect("write");
    let r = run_drill(&file, "partition-minority-region-dry", 17640);
    assert!(!r.output.status.success(), "{}", r.context());
    assert_eq!(r.report["verdict"], "FAIL", "{}", r.context());
    let t = probe(&r.report, "throughput");
    assert_eq!(t["passed"], false, "{t}\n{}", r.context());
    // What failed is what buyers got, not the data.
    assert_eq!(r.report["check"]["valid"], true);
    assert_eq!(probe(&r.report, "invariants")["passed"], true);
    let _ = std::fs::remove_dir_all(&r.out);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn paused_leader_passes() {
    let r = passing("pause-leader", 17540);
    assert!(r.report["faults"][0]["detail"]
        .as_str()
        .unwrap_or("")
        .starts_with("SIGSTOP"));
    let _ = std::fs::remove_dir_all(&r.out);
}

#[test]
fn ambiguous_retry_storm_keeps_one_effect_per_key() {
    let r = passing("ambiguous-retry-storm", 17560);
    let o = &r.report["orders"];
    // The storm made outcomes ambiguous and clients retried them with the same key.
    assert!(
        o["unknown_ops"].as_u64().unwrap_or(0) > 20,
        "too few ambiguous answers: {o}"
    );
    assert!(
        o["retries"].as_u64().unwrap_or(0) > 20,
        "too few retries: {o}"
    );
    let _ = std::fs::remove_dir_all(&r.out);
}

#[test]
fn a_drill_whose_hypothesis_does_not_hold_fails_with_a_nonzero_exit() {
    let dir = std::env::temp_dir().join(format!("roomkeeper-drillfile-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("impossible.yaml");
    std::fs::write(
        &file,
        "apiVersion: roomkeeper.dev/v1alpha1\nkind: ChaosDrill\nmetadata: {name: impossible}\nspec:\n  target: {cluster: local}\n  durationSecs: 10\n  faults:\n    - {kind: killLeader, afterSecs: 4, durationSecs: 4}\n  load: {clients: 4, thinkTimeMs: 20, catalog: {skus: 2, stock: 100000}, linearizabilityProbe: false}\n  hypothesis:\n    probes:\n      - {kind: rto, maxMs: 1}\n",
    )
    .expect("write");
    let r = run_drill(&file, "impossible", 17580);
    assert!(!r.output.status.success(), "{}", r.context());
    assert_eq!(r.report["verdict"], "FAIL", "{}", r.context());
    assert!(r.stdout().contains("[FAIL] RTO ≤ 1 ms"), "{}", r.context());
    // The history itself was fine: the failure is the hypothesis, not the data.
    assert_eq!(r.report["check"]["valid"], true);
    let _ = std::fs::remove_dir_all(&r.out);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_game_day_without_an_operator_records_it_and_hands_over_to_automation() {
    let dir = std::env::temp_dir().join(format!("roomkeeper-drillfile-gd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("gd.yaml");
    std::fs::write(
        &file,
        "apiVersion: roomkeeper.dev/v1alpha1\nkind: ChaosDrill\nmetadata: {name: gd}\nspec:\n  target: {cluster: local}\n  durationSecs: 20\n  gameDay: true\n  faults:\n    - {kind: killNode, afterSecs: 4, select: {role: follower}}\n  load: {clients: 4, thinkTimeMs: 20, catalog: {skus: 2, stock: 100000}}\n  hypothesis:\n    probes:\n      - {kind: invariants}\n      - {kind: playbookTier, tier: heal, withinSecs: 12}\n",
    )
    .expect("write");
    let r = run_drill(&file, "gd", 17600);
    assert!(r.output.status.success(), "{}", r.context());
    let gd = &r.report["game_day"];
    assert_eq!(gd["operator_present"], false, "{gd}");
    assert!(
        gd["note"]
            .as_str()
            .unwrap_or("")
            .contains("no operator present"),
        "{gd}"
    );
    // Automation took over: T1 restarted the node and was executed, not suppressed.
    assert!(
        r.report["decisions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|d| d["tier"] == "heal" && d["disposition"] == "execute"),
        "{}",
        r.context()
    );
    let _ = std::fs::remove_dir_all(&r.out);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A scripted operator on stdin: detects, names the T1 runbook, tries a
/// useless leader transfer, then restarts the killed node. The score counts
/// the restart (its node answers again) and not the transfer, and says why.
#[test]
fn a_game_day_is_scored_by_the_command_that_fixed_the_fault() {
    let dir =
        std::env::temp_dir().join(format!("roomkeeper-drillfile-gdop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("gdop.yaml");
    std::fs::write(
        &file,
        "apiVersion: roomkeeper.dev/v1alpha1\nkind: ChaosDrill\nmetadata: {name: gdop}\nspec:\n  target: {cluster: local}\n  durationSecs: 20\n  gameDay: true\n  faults:\n    - {kind: killNode, afterSecs: 4, select: {nodeId: 2}}\n  load: {clients: 4, thinkTimeMs: 20, catalog: {skus: 2, stock: 100000}}\n  hypothesis:\n    probes:\n      - {kind: invariants}\n",
    )
    .expect("write");
    let r = run_drill_with_input(
        &file,
        "gdop",
        17660,
        Some("\nrunbooks/tier-t1-heal.md\ntransfer 99\nrestart 2\ndone\n"),
    );
    assert!(r.output.status.success(), "{}", r.context());
    let gd = &r.report["game_day"];
    assert_eq!(gd["operator_present"], true, "{gd}");
    let steps = gd["steps"].as_array().expect("steps");
    let step = |name: &str, answer: Option<&str>| -> &Value {
        steps
            .iter()
            .find(|s| s["step"] == name && answer.is_none_or(|a| s["answer"] == a))
            .unwrap_or_else(|| panic!("no step {name} {answer:?} in {gd}"))
    };
    let restart = step("command", Some("restart 2"));
    assert!(
        restart["explanation"]
            .as_str()
            .unwrap_or("")
            .contains("node 2 was down and answers again"),
        "{gd}\n{}",
        r.context()
    );
    let transfer = step("command", Some("transfer 99"));
    assert!(
        transfer["explanation"]
            .as_str()
            .unwrap_or("")
            .starts_with("changed nothing"),
        "{gd}"
    );
    assert_eq!(step("runbook chosen", None)["points"], 20, "{gd}");
    assert_eq!(step("detected", None)["points"], 40, "{gd}");
    let recovered = step("recovered", None);
    assert_eq!(recovered["points"], 40, "{gd}");
    assert_eq!(gd["score"], 100, "{gd}");
    // The report shows the explanation.
    let html = std::fs::read_to_string(r.out.join("report.html")).expect("report.html");
    assert!(
        html.contains("node 2 was down and answers again"),
        "report.html"
    );
    assert!(r.stdout().contains("score 100/100"), "{}", r.context());
    let _ = std::fs::remove_dir_all(&r.out);
    let _ = std::fs::remove_dir_all(&dir);
}
