//! A real Prometheus (Debian's `prometheus` package) scrapes a local 3-node
//! cluster with the chart's node rules loaded, and the alerts follow the
//! faults: a leader kill fires RoomkeeperNodeDown for that node (and not
//! RoomkeeperNoLeader: a new leader is elected), a quorum loss fires
//! RoomkeeperNoLeader, and both resolve once every node is back
//! (RoomkeeperLeaderElectionChurn may rightly still fire: its window is 15
//! minutes).
//!
//! The rules are the chart's file itself
//! (`charts/roomkeeper-operator/files/roomkeeper-nodes.rules.yaml`) with one
//! change: every `for:` is shortened to 2 s so the test runs in about a
//! minute; scrapes and evaluations run every second. The targets carry the
//! labels the chart's PodMonitor gives node pods (`namespace`,
//! `roomkeeper_cluster`).
//!
//! Without prometheus on PATH the test prints SKIPPED and passes, unless `CI`
//! is set.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use roomkeeper_e2e::k8s::skip_or_panic;
use roomkeeper_e2e::operator::repo_root;
use roomkeeper_e2e::{http, reserve_addr, Cluster, ClusterOptions};
use serde_json::Value;

const NODE_RULES: &str = "charts/roomkeeper-operator/files/roomkeeper-nodes.rules.yaml";

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

struct Prometheus {
    child: Child,
    addr: String,
    dir: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Prometheus {
    /// Starts prometheus scraping `targets` (admin addresses) every second.
    fn start(bin: &PathBuf, targets: &[(u64, String)], reserved_addr: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("roomkeeper-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("prometheus dir");
        let rules = std::fs::read_to_string(repo_root().join(NODE_RULES)).expect("rule file");
        let fast: String = rules
            .lines()
            .map(|l| match l.trim_start().strip_prefix("for: ") {
                Some(_) => format!("{}for: 2s", &l[..l.len() - l.trim_start().len()]),
                None => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        assert!(fast.contains("for: 2s"), "no for: clause was shortened");
        std::fs::write(dir.join("rules.yaml"), fast).expect("write rules");
        let static_configs: Vec<Value> = targets
            .iter()
            .map(|(_, addr)| {
                serde_json::json!({
                    "targets": [addr],
                    "labels": {"namespace": "e2e", "roomkeeper_cluster": "local"},
                })
            })
            .collect();
        let config = serde_json::json!({
            "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
            "rule_files": [dir.join("rules.yaml")],
            "scrape_configs": [{"job_name": "roomkeeper-nodes", "metrics_path": "/metrics", "static_configs": static_configs}],
        });
        // JSON is YAML.
        std::fs::write(dir.join("prometheus.yml"), config.to_string()).expect("write config");
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("log file");
        let child = Command::new(bin)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={reserved_addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let p = Prometheus {
            child,
            addr: reserved_addr.to_string(),
            dir,
        };
        p.wait_for("prometheus ready", Duration::from_secs(30), |p| {
            http(
                "GET",
                &p.addr,
                "/-/ready",
                None,
                None,
                Duration::from_secs(2),
            )
            .is_ok_and(|r| r.status == 200)
        });
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    fn wait_for(&self, what: &str, timeout: Duration, mut cond: impl FnMut(&Self) -> bool) {
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            if cond(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!(
            "timed out after {timeout:?} waiting for {what}; firing: {:?}\nprometheus log tail:\n{}",
            self.alerts(),
            self.log().lines().rev().take(20).collect::<Vec<_>>().join("\n")
        );
    }

    /// `(alertname, state, labels)` of every pending or firing alert.
    fn alerts(&self) -> Vec<(String, String, Value)> {
        let Ok(r) = http(
            "GET",
            &self.addr,
            "/api/v1/alerts",
            None,
            None,
            Duration::from_secs(2),
        ) else {
            return Vec::new();
        };
        r.body["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                (
                    a["labels"]["alertname"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    a["state"].as_str().unwrap_or_default().to_string(),
                    a["labels"].clone(),
                )
            })
            .collect()
    }

    fn firing(&self, name: &str) -> Vec<Value> {
        self.alerts()
            .into_iter()
            .filter(|(n, s, _)| n == name && s == "firing")
            .map(|(_, _, l)| l)
            .collect()
    }

    fn any(&self, name: &str) -> bool {
        self.alerts().iter().any(|(n, _, _)| n == name)
    }

    /// How many targets are up (the last scrape worked).
    fn targets_up(&self) -> usize {
        http(
            "GET",
            &self.addr,
            "/api/v1/targets",
            None,
            None,
            Duration::from_secs(2),
        )
        .map(|r| {
            r.body["data"]["activeTargets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|t| t["health"] == "up")
                .count()
        })
        .unwrap_or(0)
    }
}

#[test]
fn alerts_fire_on_leader_kill_and_quorum_loss_and_resolve_after_heal() {
    let Some(bin) = on_path("prometheus") else {
        skip_or_panic(
            "alerts_fire_on_leader_kill_and_quorum_loss_and_resolve_after_heal",
            "no prometheus on PATH (apt-get install prometheus)",
        );
        return;
    };
    let started = Instant::now();
    let mut cluster = Cluster::start_initialized(ClusterOptions::nodes(3));
    let targets: Vec<(u64, String)> = cluster
        .nodes
        .iter()
        .map(|n| (n.id, n.admin_addr.clone()))
        .collect();
    let (addr, _reserved) = reserve_addr();
    let prom = Prometheus::start(&bin, &targets, &addr);
    prom.wait_for("3 targets up", Duration::from_secs(20), |p| {
        p.targets_up() == 3
    });
    // A healthy cluster: every node's invariant audit ran and found nothing
    // (the series RoomkeeperInvariantViolated reads), and nothing pages.
    prom.wait_for("3 clean invariant audits", Duration::from_secs(20), |p| {
        http(
            "GET",
            &p.addr,
            "/api/v1/query?query=roomkeeper_state_invariant_violated",
            None,
            None,
            Duration::from_secs(2),
        )
        .is_ok_and(|r| {
            let v = r.body["data"]["result"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            v.len() == 3 && v.iter().all(|s| s["value"][1] == "0")
        })
    });
    std::thread::sleep(Duration::from_secs(4));
    let noisy: Vec<_> = prom.alerts();
    assert!(noisy.is_empty(), "alerts on a healthy cluster: {noisy:?}");

    // 1. Leader kill: the node is down, a new leader is elected.
    let leader = cluster.wait_leader(Duration::from_secs(10));
    let leader_addr = cluster.node(leader).admin_addr.clone();
    cluster.kill(leader);
    prom.wait_for(
        "RoomkeeperNodeDown for the killed leader",
        Duration::from_secs(30),
        |p| {
            p.firing("RoomkeeperNodeDown").iter().any(|l| {
                l["instance"] == leader_addr.as_str() && l["roomkeeper_cluster"] == "local"
            })
        },
    );
    let new_leader = cluster.wait_leader(Duration::from_secs(10));
    assert_ne!(new_leader, leader);
    assert!(
        prom.firing("RoomkeeperNoLeader").is_empty(),
        "a leader kill must not page RoomkeeperNoLeader: {:?}",
        prom.alerts()
    );
    cluster.restart(leader);
    prom.wait_for(
        "RoomkeeperNodeDown resolved",
        Duration::from_secs(30),
        |p| !p.any("RoomkeeperNodeDown"),
    );
    eprintln!("leader kill: fired and resolved at {:?}", started.elapsed());

    // 2. Quorum loss: two of three voters down, the third cannot elect.
    let leader = cluster.wait_leader(Duration::from_secs(10));
    let other = cluster
        .ids()
        .into_iter()
        .find(|i| *i != leader)
        .expect("a follower");
    cluster.kill(leader);
    cluster.kill(other);
    prom.wait_for("RoomkeeperNoLeader firing", Duration::from_secs(30), |p| {
        p.firing("RoomkeeperNoLeader")
            .iter()
            .any(|l| l["namespace"] == "e2e" && l["roomkeeper_cluster"] == "local")
    });
    // Each NodeDown fires after its own `for:` time, so the second may still
    // be pending at the moment NoLeader fires.
    prom.wait_for(
        "RoomkeeperNodeDown firing for both killed nodes",
        Duration::from_secs(30),
        |p| p.firing("RoomkeeperNodeDown").len() == 2,
    );

    // Heal: both back, a leader again, every alert resolves.
    cluster.restart(leader);
    cluster.restart(other);
    cluster.wait_leader(Duration::from_secs(20));
    prom.wait_for(
        "RoomkeeperNoLeader and RoomkeeperNodeDown resolved",
        Duration::from_secs(30),
        |p| !p.any("RoomkeeperNoLeader") && !p.any("RoomkeeperNodeDown"),
    );
    // The kills and restarts moved leadership several times within 15
    // minutes: RoomkeeperLeaderElectionChurn may rightly still fire (its
    // window is 15 minutes), nothing else may.
    let left: Vec<_> = prom
        .alerts()
        .into_iter()
        .filter(|(n, _, _)| n != "RoomkeeperLeaderElectionChurn")
        .collect();
    assert!(left.is_empty(), "alerts left after heal: {left:?}");
    eprintln!("quorum loss: fired and resolved at {:?}", started.elapsed());
}
