//! The local binding of the one drill runner (`roomkeeper-drill`): the drill
//! runs against a loopback cluster of node processes with its own control
//! loop (as `roomkeeper demo` does). [`World`] is the `DrillTarget`, the
//! [`Injector`] the `FaultInjector`, [`FileSink`] writes `history.json`,
//! `report.json` and `report.html`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use roomkeeper_chaos::drill::{default_topology, DrillManifest, DrillSpec, FaultKind, FaultSpec};
use roomkeeper_chaos::history::History;
use roomkeeper_chaos::report::{ControlState, DrillReport, GameDayRecord, NodeInvariant};
use roomkeeper_control::observation::ClusterObservation;
use roomkeeper_control::setup::{scale_playbook, token};
use roomkeeper_control::{ControlLoop, FileStore};
use roomkeeper_drill::{mark, ClientSide, DrillTarget, FaultInjector, ReportSink, RunConfig, Tick};
use roomkeeper_local::observe::observe;
use roomkeeper_local::sale::{node_signals, refresh_endpoints, traffic_map};
use roomkeeper_local::{LocalActuator, LocalCluster, LocalClusterConfig, RegionSpec};
use serde_json::json;

use super::gameday::{Command as GdCommand, FaultState, GameDay};
use super::inject::{Injector, World};
use roomkeeper_control::recorded_load::Storm;

const ROOM: &str = "drill-room";

/// How to run a drill.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub out_dir: PathBuf,
    pub seed: u64,
    pub base_port: u16,
    /// Force game-day mode on (the spec's `gameDay` also turns it on).
    pub game_day: bool,
    pub binary: PathBuf,
    pub runbooks_dir: Option<PathBuf>,
}

/// Runs a drill; writes `history.json`, `report.json` and `report.html` into
/// `opts.out_dir` and returns the report.
pub async fn run_drill(m: &DrillManifest, opts: &RunOptions) -> anyhow::Result<DrillReport> {
    let spec = &m.spec;
    let topology = spec.target.local.clone().unwrap_or_else(default_topology);
    std::fs::create_dir_all(&opts.out_dir)
        .with_context(|| format!("creating {}", opts.out_dir.display()))?;
    let data_dir = opts.out_dir.join("cluster");
    if data_dir.exists() {
        std::fs::remove_dir_all(&data_dir)
            .with_context(|| format!("clearing {}", data_dir.display()))?;
    }
    let control_dir = opts.out_dir.join("controller");
    if control_dir.exists() {
        std::fs::remove_dir_all(&control_dir)
            .with_context(|| format!("clearing {}", control_dir.display()))?;
    }
    let cfg = LocalClusterConfig {
        binary: opts.binary.clone(),
        data_dir: data_dir.clone(),
        regions: topology
            .regions
            .iter()
            .map(|r| RegionSpec {
                name: r.name.clone(),
                voters: r.voters as usize,
            })
            .collect(),
        base_port: opts.base_port,
        wan_latency_ms: topology.wan_latency_ms.unwrap_or(20),
        client_token: token("client"),
        admin_token: token("admin"),
    };
    let mut playbook = roomkeeper_playbook::default_playbook();
    let pb = spec.playbook.clone().unwrap_or_default();
    scale_playbook(
        &mut playbook,
        f64::from(pb.time_scale_percent.unwrap_or(20)) / 100.0,
    );
    playbook.dry_run |= pb.dry_run.unwrap_or(false);
    playbook.paused |= pb.paused.unwrap_or(false);
    let game_day = opts.game_day || spec.is_game_day();
    if game_day {
        playbook.paused = true;
    }
    let regions_total = topology.regions.len() as u32;
    let mut store = FileStore::open(&control_dir).context("opening the controller's directory")?;
    let control = ControlLoop::open(&mut store, playbook.clone(), regions_total)
        .await
        .context("opening the control loop")?;
    let cluster = LocalCluster::new(cfg).context("preparing the local cluster")?;
    let storm = Arc::new(Storm::default());
    let mut injector = Injector::new(opts.seed, cluster.cfg.wan_latency_ms);
    let mut world = World {
        cluster,
        control: Some(control),
        store,
        playbook,
        regions_total,
        traffic: Arc::new(Default::default()),
        storm: storm.clone(),
        endpoints: Arc::new(Default::default()),
        game_day: game_day.then(|| GameDay::start(opts.runbooks_dir.as_deref())),
        automation_resumed: false,
        observation_predates_fault: false,
    };
    let run = RunConfig {
        name: m.metadata.name.clone(),
        spec: spec.clone(),
        seed: opts.seed,
        room: ROOM.into(),
        // A fresh cluster per drill: no earlier run's buyers to avoid.
        buyer_prefix: String::new(),
        interruptible: true,
        echo: true,
        storm,
    };
    let mut sink = FileSink {
        dir: opts.out_dir.clone(),
    };
    let result = roomkeeper_drill::run(&run, &mut world, &mut injector, &mut sink).await;
    world.cluster.shutdown().await;
    let report = result.map_err(|e| anyhow::anyhow!(e))?;
    let keep = spec
        .record
        .as_ref()
        .and_then(|r| r.node_logs)
        .unwrap_or(false)
        || report.verdict != roomkeeper_chaos::report::Verdict::Pass;
    if !keep {
        if let Err(e) = std::fs::remove_dir_all(&data_dir) {
            tracing::warn!(error = %e, dir = %data_dir.display(), "could not remove the drill's node data");
        }
    }
    Ok(report)
}

impl World {
    /// Runs one game-day poll: the human's commands. Returns events and
    /// whether every fault is to end now.
    async fn game_day_poll(&mut self, now_ms: u64) -> (Vec<String>, bool) {
        let Some(g) = self.game_day.as_mut() else {
            return (Vec::new(), false);
        };
        let (cmds, absent) = g.poll(now_ms);
        let mut events = Vec::new();
        let mut heal = false;
        if absent {
            self.resume_automation();
            events.push("game day: no operator present (stdin closed); human steps skipped, automation handed back to the playbook".to_string());
        }
        for c in cmds {
            events.push(match c {
                GdCommand::Restart(n) => {
                    self.cluster.kill(n).await;
                    match self.cluster.spawn(n) {
                        Ok(()) => format!("operator restarted node {n}"),
                        Err(e) => format!("operator restart of node {n} failed: {e}"),
                    }
                }
                GdCommand::Transfer(n) => match self.cluster.transfer_leader(n).await {
                    Ok(()) => format!("operator moved leadership to node {n}"),
                    Err(e) => format!("operator leader transfer to {n} failed: {e}"),
                },
                GdCommand::ResumeAutomation => {
                    self.resume_automation();
                    "operator handed control back to the playbook".into()
                }
                GdCommand::Heal => {
                    heal = true;
                    "operator asked to end every fault".into()
                }
            });
        }
        (events, heal)
    }

    fn resume_automation(&mut self) {
        self.playbook.paused = false;
        if let Some(c) = self.control.as_mut() {
            c.set_paused(false);
        }
        self.automation_resumed = true;
    }
}

impl DrillTarget for World {
    async fn prepare(&mut self) -> Result<(), String> {
        let voters: usize = self.cluster.cfg.regions.iter().map(|r| r.voters).sum();
        eprintln!(
            "drill: starting {voters} voters across {} regions (data in {}) …",
            self.cluster.cfg.regions.len(),
            self.cluster.cfg.data_dir.display()
        );
        self.cluster
            .start()
            .await
            .map_err(|e| format!("starting the cluster: {e}"))?;
        self.traffic = Arc::new(traffic_map(&self.cluster));
        Ok(())
    }

    fn client(&self) -> ClientSide {
        ClientSide {
            http: self.cluster.http.clone(),
            token: self.cluster.cfg.client_token.clone(),
            traffic: self.traffic.clone(),
            home_region: self.cluster.cfg.regions[0].name.clone(),
            endpoints: self.endpoints.clone(),
        }
    }

    async fn sale_address(&mut self) -> Result<String, String> {
        let leader = self
            .cluster
            .wait_leader(Duration::from_secs(10))
            .await
            .map_err(|e| format!("creating the sale: {e}"))?;
        self.cluster
            .info(leader)
            .map(|i| i.api_addr.clone())
            .ok_or_else(|| format!("creating the sale: node {leader} unknown"))
    }

    async fn observe(&mut self, at_unix_ms: u64) -> ClusterObservation {
        observe(&mut self.cluster, at_unix_ms).await
    }

    async fn tick(&mut self, obs: &ClusterObservation, start_unix_ms: u64, now_ms: u64) -> Tick {
        // The runner observes, injects due faults, then ticks with that
        // observation: on the fault's own tick it shows the cluster before
        // the fault, so the human's commands wait for the next tick.
        let (mut events, heal_all_faults) = if std::mem::take(&mut self.observation_predates_fault)
        {
            (Vec::new(), false)
        } else {
            if let Some(g) = self.game_day.as_mut() {
                g.observe(now_ms, FaultState::of(obs));
            }
            self.game_day_poll(now_ms).await
        };
        let mut decisions = Vec::new();
        if let Some(control) = self.control.as_mut() {
            let signals = node_signals(&self.cluster, &self.endpoints);
            let mut actuator = LocalActuator {
                cluster: &mut self.cluster,
                traffic: &self.traffic,
            };
            let mut journal = self.store.clone();
            match control
                .tick(obs, &signals, &mut actuator, &mut self.store, &mut journal)
                .await
            {
                Ok(ds) => decisions.extend(ds.iter().map(|d| mark(d, start_unix_ms))),
                Err(e) => events.push(format!("control loop error: {e}")),
            }
            refresh_endpoints(&self.cluster, &self.traffic, &control.quarantined());
        }
        Tick {
            decisions,
            events,
            heal_all_faults,
        }
    }

    async fn audit(
        &mut self,
        skip: &BTreeSet<u64>,
        timeout: Duration,
    ) -> (Vec<NodeInvariant>, Vec<String>) {
        (
            node_invariants(&mut self.cluster, skip, timeout).await,
            Vec::new(),
        )
    }

    async fn heal_everything(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        if self.control.is_none() {
            if let Err(e) = self.restart_controller().await {
                errors.push(format!("controller restart failed: {e}"));
            }
        }
        let ids: Vec<u64> = self.cluster.nodes.keys().copied().collect();
        for id in ids {
            self.cluster.unblock(id);
            if !self.cluster.is_running(id) {
                if let Err(e) = self.cluster.spawn(id) {
                    errors.push(format!(
                        "node {id} could not be started for the final read: {e}"
                    ));
                }
            }
        }
        self.cluster.clear_faults().await;
        settle(&mut self.cluster, Duration::from_secs(30)).await;
        self.cluster.clear_faults().await;
        errors
    }

    async fn final_read_addresses(&mut self) -> Vec<String> {
        let ids: Vec<u64> = self.cluster.nodes.keys().copied().collect();
        let mut addrs = Vec::new();
        for id in ids {
            if self.cluster.is_running(id) {
                if let Some(i) = self.cluster.info(id) {
                    addrs.push(i.api_addr.clone());
                }
            }
        }
        if let Some(l) = self
            .cluster
            .leader()
            .await
            .and_then(|l| self.cluster.info(l))
        {
            addrs.retain(|a| *a != l.api_addr);
            addrs.insert(0, l.api_addr.clone());
        }
        addrs
    }

    async fn control_state(&mut self, obs: &ClusterObservation, at: u64) -> Option<ControlState> {
        let memory = self.control.as_ref()?.memory();
        let routing = Some(self.traffic.as_ref());
        Some(roomkeeper_control::state::control_state(
            memory, obs, routing, at,
        ))
    }

    fn fault_started(&mut self, at_ms: u64) {
        if let Some(g) = self.game_day.as_mut() {
            g.fault_started(at_ms);
            self.observation_predates_fault = true;
        }
    }

    fn faults_healed(&mut self, at_ms: u64) {
        if let Some(g) = self.game_day.as_mut() {
            g.faults_ended(at_ms);
        }
    }

    fn progress_note(&self) -> String {
        if self.traffic.is_paused() {
            "SALES PAUSED".into()
        } else {
            String::new()
        }
    }

    fn game_day(&mut self) -> Option<GameDayRecord> {
        let resumed = self.automation_resumed;
        self.game_day.take().map(|g| g.finish(resumed))
    }
}

impl FaultInjector<World> for Injector {
    fn check(&self, spec: &DrillSpec) -> Result<(), String> {
        roomkeeper_drill::check_kinds(spec, &FaultKind::ALL, "the local drill runner")
    }

    async fn inject(
        &mut self,
        w: &mut World,
        index: usize,
        fault: &FaultSpec,
        obs: &ClusterObservation,
    ) -> Result<String, String> {
        Injector::inject(self, w, obs, index, fault)
            .await
            .map_err(|e| e.to_string())
    }

    async fn heal(&mut self, w: &mut World, index: usize) -> Result<String, String> {
        Injector::heal(self, w, index)
            .await
            .map_err(|e| e.to_string())
    }

    async fn step(&mut self, w: &mut World) -> Vec<(usize, String)> {
        let events = self.step_faults(w).await;
        if self.last_repush.elapsed() >= Duration::from_secs(1) {
            self.last_repush = Instant::now();
            self.repush(w).await;
        }
        events
    }

    fn finished(&self) -> Vec<usize> {
        self.active
            .values()
            .filter(|a| a.finished)
            .map(|a| a.index)
            .collect()
    }

    fn busy(&self) -> Vec<usize> {
        self.active
            .values()
            .filter(|a| a.kind == FaultKind::RollingRestart && !a.finished)
            .map(|a| a.index)
            .collect()
    }

    fn paused(&self) -> BTreeSet<u64> {
        Injector::paused(self).clone()
    }
}

/// The local outputs: files in the run directory.
pub struct FileSink {
    pub dir: PathBuf,
}

impl ReportSink for FileSink {
    async fn write(&mut self, report: &DrillReport, history: &History) -> Result<(), String> {
        write_outputs(&self.dir, report, history, &report.spec).map_err(|e| format!("{e:#}"))
    }
}

/// Waits for a leader and for every running node to apply the leader's log.
async fn settle(cluster: &mut LocalCluster, timeout: Duration) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        cluster.apply_wan_latency().await;
        if let Some(l) = cluster.leader().await {
            if let Some(ls) = cluster.status(l).await {
                let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
                let mut all = true;
                for id in ids {
                    if !cluster.is_running(id) {
                        continue;
                    }
                    let member = ls.voters.contains(&id) || ls.learners.contains(&id);
                    match cluster.status(id).await {
                        Some(s) if !member || s.applied_index >= ls.committed_index => {}
                        _ => all = false,
                    }
                }
                if all {
                    return;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Every running (not paused) node's own invariant check.
async fn node_invariants(
    cluster: &mut LocalCluster,
    paused: &BTreeSet<u64>,
    timeout: Duration,
) -> Vec<NodeInvariant> {
    let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
    let mut running = Vec::new();
    for id in ids {
        if cluster.is_running(id) && !paused.contains(&id) {
            running.push(id);
        }
    }
    let c: &LocalCluster = cluster;
    let checks = running.iter().map(|id| async move {
        let info = c.info(*id)?.clone();
        let r = c
            .http
            .get(
                &info.admin_addr,
                "/admin/invariants",
                Some(&c.cfg.admin_token),
                timeout,
            )
            .await
            .ok()?;
        if r.status != 200 {
            return None;
        }
        let ok = r.body["ok"] == json!(true);
        Some(NodeInvariant {
            node: *id,
            ok,
            detail: if ok {
                format!(
                    "invariants hold at applied index {}",
                    r.body["applied_index"]
                )
            } else {
                r.body.to_string()
            },
        })
    });
    futures_util::future::join_all(checks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

fn write_outputs(
    dir: &Path,
    report: &DrillReport,
    history: &History,
    spec: &DrillSpec,
) -> anyhow::Result<()> {
    let write = |name: &str, bytes: Vec<u8>| -> anyhow::Result<()> {
        let p = dir.join(name);
        std::fs::write(&p, bytes).with_context(|| format!("writing {}", p.display()))
    };
    if spec.record.as_ref().and_then(|r| r.history).unwrap_or(true) {
        write("history.json", serde_json::to_vec(history)?)?;
    }
    write("report.json", serde_json::to_vec_pretty(report)?)?;
    write("report.html", report.html().into_bytes())?;
    if !spec
        .record
        .as_ref()
        .and_then(|r| r.decisions)
        .unwrap_or(true)
    {
        let p = dir.join("controller").join("decisions.jsonl");
        if p.exists() {
            std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    Ok(())
}
