//! The control loop end to end: `roomkeeper demo` runs real node processes
//! across three loopback regions, injects a fault, and the playbook engine
//! acts on the cluster. Each test reads the demo's JSON status while it runs
//! and its decision log (`controller/decisions.jsonl`) afterwards.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use roomkeeper_e2e::{binary, get};
use serde_json::Value;

struct DemoRun {
    stdout: String,
    stderr: String,
    success: bool,
    /// Every /status answer seen while the demo ran.
    statuses: Vec<Value>,
    /// The last /metrics text seen while the demo ran.
    metrics: String,
    /// Every /metrics text seen, oldest first (a poll can time out on a busy
    /// machine: a state that persists shows in any later one).
    metrics_seen: Vec<String>,
    decisions: Vec<Value>,
    outcomes: Vec<Value>,
}

impl DemoRun {
    fn executed(&self, action: &str) -> Vec<&Value> {
        self.decisions
            .iter()
            .filter(|d| d["action"] == action && d["disposition"] == "execute")
            .collect()
    }

    fn succeeded(&self, decision: &Value) -> bool {
        self.outcomes
            .iter()
            .any(|o| o["decision"] == decision["id"] && o["outcome"].get("succeeded").is_some())
    }

    /// The node the leader-kill scenario killed, from the demo's event list.
    fn killed_leader(&self) -> u64 {
        self.statuses
            .iter()
            .rev()
            .flat_map(|s| s["events"].as_array().cloned().unwrap_or_default())
            .find_map(|e| {
                e.as_str()?
                    .split("FAULT: SIGKILL leader node ")
                    .nth(1)?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no leader kill shown\n{}", self.context()))
    }

    fn last_status(&self) -> &Value {
        self.statuses
            .last()
            .expect("the demo answered /status at least once")
    }

    fn context(&self) -> String {
        let decisions: Vec<String> = self
            .decisions
            .iter()
            .map(|d| {
                format!(
                    "{} {} {} {} — {}",
                    d["tier"], d["action"], d["target"], d["disposition"], d["reason"]
                )
            })
            .collect();
        format!(
            "stdout:\n{}\nstderr tail:\n{}\ndecisions:\n{}",
            self.stdout,
            self.stderr
                .lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .join("\n"),
            decisions.join("\n")
        )
    }
}

fn run_demo(name: &str, port_slot: u16, args: &[&str], duration_secs: u64) -> DemoRun {
    let data_dir: PathBuf =
        std::env::temp_dir().join(format!("roomkeeper-pb-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    let base_port = 21_000 + port_slot * 10 + (std::process::id() % 50) as u16 * 200;
    let status_addr = format!("127.0.0.1:{}", base_port + 7);
    let duration = duration_secs.to_string();
    let mut demo_args: Vec<&str> = args.to_vec();
    demo_args.extend([
        "--duration-secs",
        &duration,
        "--plain",
        "--buyers",
        "8",
        "--think-ms",
        "30",
    ]);
    let child = roomkeeper_e2e::spawn_demo(&demo_args, &status_addr, base_port, &data_dir);
    let started = Instant::now();
    let mut statuses = Vec::new();
    let mut metrics = String::new();
    let mut metrics_seen = Vec::new();
    while started.elapsed() < Duration::from_secs(duration_secs.saturating_sub(1)) {
        if let Ok(r) = get(&status_addr, "/status") {
            if r.status == 200 && r.body.get("elapsed_secs").is_some() {
                statuses.push(r.body);
            }
        }
        if let Ok(r) = get(&status_addr, "/metrics") {
            if let Value::String(text) = r.body {
                if text.contains("roomkeeper_") {
                    metrics_seen.push(text.clone());
                    metrics = text;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let out = child.wait_with_output().expect("demo output");
    let mut decisions = Vec::new();
    let mut outcomes = Vec::new();
    if let Ok(text) = std::fs::read_to_string(data_dir.join("controller/decisions.jsonl")) {
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).expect("decision log lines are JSON");
            if v["kind"] == "decision" {
                decisions.push(v);
            } else {
                outcomes.push(v);
            }
        }
    }
    let run = DemoRun {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        success: out.status.success(),
        statuses,
        metrics,
        metrics_seen,
        decisions,
        outcomes,
    };
    if run.success {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    run
}

fn assert_clean_end(run: &DemoRun) {
    assert!(run.success, "demo failed\n{}", run.context());
    assert!(
        run.stdout.contains("acknowledged orders present"),
        "every acknowledged order must be read back after the run\n{}",
        run.context()
    );
    assert!(
        run.stdout.contains("invariants hold"),
        "invariants not checked\n{}",
        run.context()
    );
    assert!(!run.stdout.contains("VIOLATED"), "{}", run.context());
}

fn ok_orders(s: &Value) -> u64 {
    s["load"]["ok"].as_u64().unwrap_or(0)
}

#[test]
fn leader_killed_mid_load_is_restarted_by_t1_heal() {
    let run = run_demo(
        "leader-kill",
        0,
        &["--scenario", "leader-kill", "--fault-after-secs", "5"],
        22,
    );
    assert_clean_end(&run);
    let killed = run.killed_leader();
    let restarts = run.executed("restartNode");
    assert!(
        restarts
            .iter()
            .any(|d| d["target"]["node"] == killed && run.succeeded(d) && d["tier"] == "heal"),
        "T1 heal must restart node {killed}\n{}",
        run.context()
    );
    let last = run.last_status();
    let node = last["observation"]["nodes"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["node_id"] == killed))
        .expect("killed node observed");
    assert_eq!(
        node["process_alive"],
        true,
        "node {killed} runs again\n{}",
        run.context()
    );
    assert_ne!(last["observation"]["leader"], Value::Null);
    // "Why did it act?" has an answer in words, and the monitor's view is exported.
    let why = last["explanations"][format!("node/{killed}")]
        .as_str()
        .unwrap_or("");
    assert!(
        why.contains(&killed.to_string()) && why.len() > 40,
        "explanation: {why:?}\n{}",
        run.context()
    );
    for series in [
        "roomkeeper_playbook_decisions_total{action=\"restartNode\",disposition=\"execute\",tier=\"heal\"}",
        "roomkeeper_monitor_node_view_up{",
        "roomkeeper_monitor_shard_has_leader 1",
    ] {
        assert!(run.metrics.contains(series), "missing {series} in\n{}", run.metrics);
    }
}

fn region_loss(region: &str, slot: u16) {
    let run = run_demo(
        &format!("region-loss-{region}"),
        slot,
        &[
            "--scenario",
            "region-loss",
            "--lose-region",
            region,
            "--fault-after-secs",
            "5",
        ],
        32,
    );
    assert_clean_end(&run);
    let evac = run.executed("replaceVotersElsewhere");
    assert!(
        evac.iter()
            .any(|d| d["target"]["region"] == region && run.succeeded(d)),
        "T3 must replace the voters of {region}\n{}",
        run.context()
    );
    assert!(
        run.executed("setTrafficWeightZero")
            .iter()
            .any(|d| d["target"]["region"] == region),
        "traffic must move away from {region}\n{}",
        run.context()
    );
    // Once the evacuation is done, the lost region's nodes are no longer
    // members: no decision may target them, and no budget is spent on them
    // (the rate limit is never reached).
    let lost: Vec<Value> = run
        .statuses
        .iter()
        .find_map(|s| s["observation"]["nodes"].as_array())
        .map(|ns| {
            ns.iter()
                .filter(|n| n["region"] == region)
                .map(|n| n["node_id"].clone())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        !lost.is_empty(),
        "nodes of {region} seen\n{}",
        run.context()
    );
    let evacuated_at = evac
        .iter()
        .filter_map(|d| {
            run.outcomes
                .iter()
                .find(|o| o["decision"] == d["id"] && o["outcome"].get("succeeded").is_some())
        })
        .filter_map(|o| o["atMs"].as_u64())
        .min()
        .unwrap_or_else(|| panic!("no evacuation outcome\n{}", run.context()));
    for d in &run.decisions {
        let after = d["atMs"].as_u64().is_some_and(|t| t > evacuated_at);
        // The tier that was healing a lost node stands down with a record
        // once the node leaves the view; anything more is acting on a ghost.
        let acts = d["action"] != "recordEvent";
        assert!(
            !(after && acts && lost.contains(&d["target"]["node"])),
            "decision after the evacuation targets removed node {}: {d}\n{}",
            d["target"]["node"],
            run.context()
        );
        assert_ne!(
            d["phase"],
            "escalation",
            "the rate limit was reached: {d}\n{}",
            run.context()
        );
    }
    let last = run.last_status();
    assert_eq!(last["traffic_weights"][region], 0, "{}", run.context());
    let obs = &last["observation"];
    let voters = obs["voters"].as_array().expect("voters");
    assert_eq!(voters.len(), 5, "five voters restored\n{}", run.context());
    for v in voters {
        let n = obs["nodes"]
            .as_array()
            .and_then(|ns| ns.iter().find(|n| &n["node_id"] == v))
            .expect("voter observed");
        assert_ne!(
            n["region"],
            region,
            "voter {v} still in the lost region\n{}",
            run.context()
        );
        assert_eq!(
            n["process_alive"],
            true,
            "voter {v} is not running\n{}",
            run.context()
        );
    }
    // Orders kept flowing after the loss.
    let fault_at = run
        .statuses
        .iter()
        .position(|s| s["phase"] == "fault injected")
        .expect("fault phase seen");
    let before = ok_orders(&run.statuses[fault_at]);
    assert!(
        ok_orders(last) > before + 200,
        "orders did not continue after the loss\n{}",
        run.context()
    );
    // The shard had a leader in (almost) every observation after the fault.
    let leaderless = run.statuses[fault_at..]
        .iter()
        .filter(|s| s["observation"]["leader"].is_null())
        .count();
    assert!(
        leaderless <= 3,
        "the shard was leaderless in {leaderless} observations\n{}",
        run.context()
    );
}

#[test]
fn one_voter_region_lost_is_evacuated_and_five_voters_restored() {
    region_loss("ap-south", 1);
}

#[test]
fn two_voter_region_lost_keeps_quorum_and_is_evacuated() {
    region_loss("us-east", 2);
}

#[test]
fn a_flapping_node_is_restarted_within_its_budget_then_quarantined_and_a_human_paged() {
    // At a time scale of 0.05 the default guards allow 3 restarts of one node
    // per 30 s, with a back-off doubling from 0.5 s, and 6 cluster-changing
    // actions per 30 s: a node crashing two seconds after every start spends
    // its restart budget within the run.
    let run = run_demo(
        "flap",
        3,
        &[
            "--scenario",
            "node-flap",
            "--fault-after-secs",
            "4",
            "--playbook-time-scale",
            "0.05",
        ],
        45,
    );
    assert_clean_end(&run);
    let mut times: Vec<u64> = run
        .decisions
        .iter()
        .filter(|d| d["disposition"] == "execute")
        .filter(|d| {
            !matches!(
                d["action"].as_str(),
                Some("recordEvent" | "pageHuman" | "pauseSales" | "resumeSales")
            )
        })
        .filter_map(|d| d["atMs"].as_u64())
        .collect();
    times.sort_unstable();
    for (i, t) in times.iter().enumerate() {
        let in_window = times[i..].iter().take_while(|u| **u < t + 30_000).count();
        assert!(
            in_window <= 6,
            "{in_window} actions within one rate-limit window\n{}",
            run.context()
        );
    }
    // Restarts stop at the budget: the flapping node is restarted at most
    // three times, then quarantined, and a human is paged with the evidence.
    let restarts: Vec<&Value> = run.executed("restartNode");
    let flapping = restarts
        .first()
        .map(|d| d["target"]["node"].clone())
        .unwrap_or_else(|| panic!("T1 restarted nothing\n{}", run.context()));
    let of_flapping = restarts
        .iter()
        .filter(|d| d["target"]["node"] == flapping)
        .count();
    assert!(
        of_flapping <= 3,
        "node {flapping} restarted {of_flapping} times, past its budget of 3\n{}",
        run.context()
    );
    assert!(
        run.decisions.iter().any(|d| d["action"] == "pageHuman"
            && d["reason"].as_str().unwrap_or("").contains("quarantine")),
        "the engine must quarantine the node and page a human\n{}",
        run.context()
    );
    let last = run.last_status();
    assert!(
        last["quarantined_nodes"]
            .as_array()
            .is_some_and(|q| q.contains(&flapping)),
        "/status shows the quarantine\n{}",
        run.context()
    );
    let quarantined_series =
        format!("roomkeeper_playbook_node_quarantined{{node_id=\"{flapping}\"}} 1");
    assert!(
        run.metrics_seen
            .iter()
            .any(|text| text.contains(&quarantined_series)),
        "/metrics shows the quarantine ({} polls answered)\n{}",
        run.metrics_seen.len(),
        run.metrics
    );
    let weights = &last["traffic_weights"];
    for r in ["eu-west", "us-east", "ap-south"] {
        assert_eq!(weights[r], 100, "traffic untouched\n{}", run.context());
    }
}

#[test]
fn a_controller_cut_off_from_the_majority_takes_no_action() {
    let run = run_demo(
        "partition",
        4,
        &[
            "--scenario",
            "controller-partition",
            "--fault-after-secs",
            "4",
        ],
        20,
    );
    assert_clean_end(&run);
    let acted: Vec<&Value> = run
        .decisions
        .iter()
        .filter(|d| d["disposition"] == "execute")
        .filter(|d| !matches!(d["action"].as_str(), Some("recordEvent" | "pageHuman")))
        .collect();
    assert!(
        acted.is_empty(),
        "no action may be taken from a minority view: {acted:?}\n{}",
        run.context()
    );
    assert!(
        run.decisions
            .iter()
            .any(|d| d["disposition"]["suppressed"]["guard"].is_string()),
        "the suppressed decisions are recorded with their guard\n{}",
        run.context()
    );
    let weights = &run.last_status()["traffic_weights"];
    for r in ["eu-west", "us-east", "ap-south"] {
        assert_eq!(weights[r], 100, "traffic untouched\n{}", run.context());
    }
}

#[test]
fn lost_quorum_pauses_sales_and_they_resume_when_it_returns() {
    let run = run_demo(
        "quorum",
        5,
        &["--scenario", "quorum-loss", "--fault-after-secs", "4"],
        40,
    );
    assert_clean_end(&run);
    let pause = run.executed("pauseSales");
    let resume = run.executed("resumeSales");
    assert!(
        pause.iter().any(|d| run.succeeded(d)),
        "T4 must pause sales\n{}",
        run.context()
    );
    assert!(
        resume.iter().any(|d| run.succeeded(d)),
        "sales must resume once quorum returns\n{}",
        run.context()
    );
    let paused_seen = run.statuses.iter().any(|s| s["sales_paused"] == true);
    assert!(paused_seen, "status shows the pause\n{}", run.context());
    let last = run.last_status();
    assert_eq!(last["sales_paused"], false);
    let resumed_at = run
        .statuses
        .iter()
        .rposition(|s| s["sales_paused"] == true)
        .expect("pause seen");
    assert!(
        ok_orders(last) > ok_orders(&run.statuses[resumed_at]),
        "orders flow again\n{}",
        run.context()
    );
    // Converged back to normal: no region left drained (the observed bug: T2
    // drained a region during the global outage and its restore was rate
    // limited forever), no tier still active.
    for r in ["eu-west", "us-east", "ap-south"] {
        assert_eq!(
            last["traffic_weights"][r],
            100,
            "{r} left drained after quorum returned\n{}",
            run.context()
        );
    }
    let active: Vec<&Value> = last["active_tiers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|t| t.as_str().is_some_and(|t| t.ends_with(": active")))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        active.is_empty(),
        "tiers still active after the fault cleared: {active:?}\n{}",
        run.context()
    );
    assert!(
        !run.executed("setTrafficWeightZero").iter().any(|_| true),
        "no region is drained for a whole-cluster quorum loss\n{}",
        run.context()
    );
}

fn untouched_after_leader_kill(flag: &str, slot: u16, expect: &str) {
    let run = run_demo(
        flag.trim_start_matches("--"),
        slot,
        &["--scenario", "leader-kill", "--fault-after-secs", "4", flag],
        16,
    );
    assert_clean_end(&run);
    let killed = run.killed_leader();
    let about_killed: Vec<&Value> = run
        .decisions
        .iter()
        .filter(|d| d["action"] == "restartNode" && d["target"]["node"] == killed)
        .collect();
    assert!(
        !about_killed.is_empty(),
        "the engine still decides\n{}",
        run.context()
    );
    for d in &about_killed {
        let disposition = d["disposition"].to_string();
        assert!(
            disposition.contains(expect),
            "expected {expect}, got {disposition}\n{}",
            run.context()
        );
    }
    assert!(
        run.executed("restartNode").is_empty(),
        "{flag} must not act\n{}",
        run.context()
    );
    let node = run.last_status()["observation"]["nodes"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["node_id"] == killed))
        .cloned()
        .expect("killed node observed");
    assert_eq!(
        node["process_alive"],
        false,
        "{flag} left the killed node down\n{}",
        run.context()
    );
}

#[test]
fn dry_run_records_what_it_would_do_and_touches_nothing() {
    untouched_after_leader_kill("--dry-run", 6, "dryRun");
}

#[test]
fn paused_automation_records_and_touches_nothing() {
    untouched_after_leader_kill("--pause-automation", 7, "pause");
}

#[test]
fn an_invalid_playbook_is_refused_naming_the_field() {
    let dir = std::env::temp_dir().join(format!("roomkeeper-pb-invalid-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let yaml = roomkeeper_playbook::default_playbook().to_yaml();
    let cases = [
        (yaml.replacen("forMs: 5000", "forMs: -5", 1), "forMs"),
        (
            yaml.replacen("restartNode", "rebootEverything", 1),
            "rebootEverything",
        ),
    ];
    for (i, (text, field)) in cases.iter().enumerate() {
        assert_ne!(text, &yaml, "case {i} did not change the playbook");
        let path = dir.join(format!("bad-{i}.yaml"));
        std::fs::write(&path, text).expect("write playbook");
        let out = Command::new(binary())
            .args(["demo", "--duration-secs", "1", "--plain", "--playbook"])
            .arg(&path)
            .output()
            .expect("run demo");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "an invalid playbook must be refused");
        assert!(
            stderr.contains(field),
            "the error must name {field}:\n{stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A live window: the room is homed in us-east and on air for 25 s when
/// us-east turns slow. The `move` tier wants to drain us-east; the drain is
/// deferred, in words, and us-east keeps its traffic while the window lasts.
/// Once the window ends, the drain goes ahead on the next tick.
#[test]
fn a_live_window_defers_draining_a_slow_region_until_it_ends() {
    let run = run_demo(
        "live-window",
        9,
        &[
            "--scenario",
            "region-slow",
            "--lose-region",
            "us-east",
            "--room-home-region",
            "us-east",
            "--live-window-secs",
            "25",
            "--fault-after-secs",
            "6",
        ],
        45,
    );
    assert_clean_end(&run);
    let window_end: u64 = run
        .statuses
        .iter()
        .rev()
        .flat_map(|s| s["events"].as_array().cloned().unwrap_or_default())
        .find_map(|e| {
            e.as_str()?
                .split("window ends at unix ms ")
                .nth(1)?
                .trim_end_matches(')')
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no live window shown\n{}", run.context()));
    let drains: Vec<&Value> = run
        .decisions
        .iter()
        .filter(|d| d["action"] == "setTrafficWeightZero" && d["target"]["region"] == "us-east")
        .collect();
    let deferred = drains
        .iter()
        .find(|d| d["disposition"]["suppressed"]["guard"] == "liveWindow")
        .unwrap_or_else(|| panic!("no deferral recorded\n{}", run.context()));
    let why = deferred["disposition"]["suppressed"]["why"]
        .as_str()
        .unwrap_or_default();
    assert!(
        why.starts_with("deferred: room live-1 is live in us-east until ")
            && why.contains("expected peak 900 orders/s"),
        "{why}"
    );
    assert!(deferred["atMs"].as_u64().unwrap_or(u64::MAX) < window_end);
    // Nothing moved during the window.
    assert!(
        drains
            .iter()
            .filter(|d| d["disposition"] == "execute")
            .all(|d| d["atMs"].as_u64().unwrap_or(0) >= window_end),
        "drained during the window\n{}",
        run.context()
    );
    let drained = run.executed("setTrafficWeightZero");
    let after = drained
        .iter()
        .find(|d| d["target"]["region"] == "us-east")
        .unwrap_or_else(|| panic!("never drained after the window\n{}", run.context()));
    assert!(run.succeeded(after), "{}", run.context());
    assert!(
        run.metrics_seen
            .iter()
            .any(|m| m.contains("roomkeeper_guard_blocked_total{reason=\"live_window\"}")),
        "the deferral is counted"
    );
    assert_eq!(
        run.last_status()["traffic_weights"]["us-east"],
        0,
        "{}",
        run.context()
    );
}
