//! Runs one drill against a local loopback cluster: start the cluster and the
//! control loop (as `roomkeeper demo` does), run the recorded load, inject
//! and heal faults on schedule, evaluate abort conditions, heal, read the
//! final state, check the history, and write the report.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use roomkeeper_chaos::drill::{default_topology, DrillManifest, DrillSpec};
use roomkeeper_chaos::history::{History, OpKind};
use roomkeeper_chaos::recorder::Recorder;
use roomkeeper_chaos::report::{
    evaluate, order_counts, timeline, verdict, DecisionMark, DrillReport, EventMark, FaultRecord,
    NodeInvariant, Phases,
};
use roomkeeper_control::setup::{scale_playbook, token, ListingSpec};
use roomkeeper_control::{ControlLoop, FileStore};
use roomkeeper_local::observe::observe;
use roomkeeper_local::sale::{create_sale, final_read, refresh_endpoints, traffic_map};
use roomkeeper_local::{LocalActuator, LocalCluster, LocalClusterConfig, RegionSpec};
use roomkeeper_playbook::{Decision, Disposition, Target};
use serde_json::json;

use super::gameday::{Command as GdCommand, GameDay};
use super::inject::{Injector, World};
use roomkeeper_control::recorded_load::{Load, LoadConfig, Storm};

const ROOM: &str = "drill-room";
/// Each linearizability probe listing is used for this long.
const PROBE_WINDOW: Duration = Duration::from_secs(4);

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

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn disposition(d: &Disposition) -> String {
    match d {
        Disposition::Execute => "execute".into(),
        Disposition::DryRun => "dryRun".into(),
        Disposition::AwaitingApproval { .. } => "awaitingApproval".into(),
        Disposition::Suppressed { guard, .. } => format!("suppressed by {}", guard.name()),
    }
}

fn target(t: &Target) -> String {
    match t {
        Target::Node(n) => format!("node {n}"),
        Target::Region(r) => format!("region {r}"),
        Target::Shard => "shard".into(),
    }
}

fn mark(d: &Decision, start_unix: u64) -> DecisionMark {
    DecisionMark {
        at_ms: d.at_ms.saturating_sub(start_unix),
        tier: d.tier.clone(),
        level: d.level,
        action: format!("{:?}", d.action),
        target: target(&d.target),
        disposition: disposition(&d.disposition),
        reason: d.reason.clone(),
    }
}

struct Log {
    events: Vec<EventMark>,
}

impl Log {
    fn event(&mut self, at_ms: u64, text: impl Into<String>) {
        let text = text.into();
        eprintln!("[{:>6.1}s] {text}", at_ms as f64 / 1000.0);
        tracing::debug!(at_ms, %text, "drill event");
        self.events.push(EventMark { at_ms, text });
    }
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
    let mut world = World {
        cluster,
        control: Some(control),
        store,
        playbook,
        regions_total,
        traffic: Arc::new(Default::default()),
        storm: storm.clone(),
    };
    let result = run_inner(m, spec, opts, &mut world, game_day).await;
    world.cluster.shutdown().await;
    let report = result?;
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

async fn run_inner(
    m: &DrillManifest,
    spec: &DrillSpec,
    opts: &RunOptions,
    world: &mut World,
    game_day: bool,
) -> anyhow::Result<DrillReport> {
    let voters: u32 = world
        .cluster
        .cfg
        .regions
        .iter()
        .map(|r| r.voters as u32)
        .sum();
    eprintln!(
        "drill {}: starting {voters} voters across {} regions (data in {}) …",
        m.metadata.name,
        world.cluster.cfg.regions.len(),
        world.cluster.cfg.data_dir.display()
    );
    world
        .cluster
        .start()
        .await
        .context("starting the cluster")?;

    // The sale.
    let (skus, hot, mut listings) = roomkeeper_control::setup::catalog_listings(&spec.load.catalog);
    let probe_on = spec.load.linearizability_probe.unwrap_or(true);
    let probes: Vec<String> = if probe_on {
        (0..spec.duration_secs / PROBE_WINDOW.as_secs() + 2)
            .map(|i| format!("probe-{i:03}"))
            .collect()
    } else {
        Vec::new()
    };
    listings.extend(probes.iter().map(|s| ListingSpec {
        sku: s.clone(),
        stock: 15,
        per_buyer_limit: 5,
    }));
    let home = world.cluster.cfg.regions[0].name.clone();
    create_sale(&world.cluster, ROOM, "Drill flash sale", &home, &listings)
        .await
        .context("creating the sale")?;
    world.traffic = Arc::new(traffic_map(&world.cluster));

    let rec = Arc::new(Recorder::new());
    let start_unix = unix_ms();
    let stop = Arc::new(AtomicBool::new(false));
    let load = Load {
        cfg: Arc::new(LoadConfig {
            room: ROOM.into(),
            skus,
            hot_skus: hot,
            probe_skus: probes,
            probe_window: PROBE_WINDOW,
            clients: spec.load.clients,
            think: Duration::from_millis(spec.load.think_time_ms),
            client_timeout: Duration::from_millis(spec.load.client_timeout_ms.unwrap_or(3_000)),
            retry_deadline: Duration::from_millis(spec.load.retry_deadline_ms.unwrap_or(10_000)),
            client_token: world.cluster.cfg.client_token.clone(),
            seed: opts.seed,
            // A fresh cluster per drill: no earlier run's buyers to avoid.
            run_id: String::new(),
        }),
        rec: rec.clone(),
        traffic: world.traffic.clone(),
        stop: stop.clone(),
        storm: world.storm.clone(),
        http: world.cluster.http.clone(),
    };
    let tasks = load.start(probe_on);
    let mut log = Log { events: Vec::new() };
    log.event(
        0,
        format!(
            "load started: {} buyers, {} ms think time{}",
            spec.load.clients,
            spec.load.think_time_ms,
            if probe_on {
                ", linearizability probe on"
            } else {
                ""
            }
        ),
    );

    let mut injector = Injector::new(opts.seed, world.cluster.cfg.wan_latency_ms);
    let mut pending: BTreeSet<usize> = (0..spec.faults.len()).collect();
    let mut faults: BTreeMap<usize, FaultRecord> = BTreeMap::new();
    let mut decisions: Vec<DecisionMark> = Vec::new();
    let mut run_errors: Vec<String> = Vec::new();
    let mut abort_reason: Option<String> = None;
    let mut gd = game_day.then(|| GameDay::start(opts.runbooks_dir.as_deref()));
    let mut automation_resumed = false;
    let abort = spec.abort.clone().unwrap_or_default();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_progress = Instant::now();
    let mut last_invariants = Instant::now();
    let mut last_acked = 0u64;
    let mut last_repush = Instant::now();
    let end_ms = spec.duration_secs * 1000;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);

    loop {
        tokio::select! {
            _ = &mut ctrl_c => {
                abort_reason = Some("interrupted (Ctrl-C)".into());
                break;
            }
            _ = tick.tick() => {}
        }
        let now = rec.now_ms();
        if now >= end_ms {
            break;
        }
        let obs = observe(&mut world.cluster, unix_ms()).await;

        // Faults due now.
        let due: Vec<usize> = pending
            .iter()
            .copied()
            .filter(|i| spec.faults[*i].after_secs * 1000 <= now)
            .collect();
        for i in due {
            pending.remove(&i);
            let f = &spec.faults[i];
            match injector.inject(world, &obs, i, f).await {
                Ok(detail) => {
                    log.event(rec.now_ms(), format!("FAULT {i} {}: {detail}", f.kind));
                    faults.insert(
                        i,
                        FaultRecord {
                            index: i,
                            kind: f.kind.to_string(),
                            detail,
                            start_ms: rec.now_ms(),
                            end_ms: None,
                        },
                    );
                    if let Some(g) = gd.as_mut() {
                        g.fault_started(rec.now_ms());
                    }
                }
                Err(e) => {
                    let msg = format!("fault {i} {} could not be injected: {e}", f.kind);
                    log.event(rec.now_ms(), msg.clone());
                    run_errors.push(msg);
                }
            }
        }
        // Faults that end now.
        let ending: Vec<usize> = injector
            .active
            .values()
            .filter(|a| a.finished || a.heal_at.is_some_and(|t| Instant::now() >= t))
            .map(|a| a.index)
            .collect();
        for i in ending {
            heal_one(
                &mut injector,
                world,
                &mut faults,
                &mut log,
                &mut run_errors,
                &rec,
                i,
            )
            .await;
        }
        for e in injector.step(world).await {
            log.event(rec.now_ms(), e);
        }
        if last_repush.elapsed() >= Duration::from_secs(1) {
            last_repush = Instant::now();
            injector.repush(world).await;
        }

        // Game day.
        if let Some(g) = gd.as_mut() {
            let (cmds, absent) = g.poll(rec.now_ms());
            if absent {
                world.playbook.paused = false;
                if let Some(c) = world.control.as_mut() {
                    c.set_paused(false);
                }
                automation_resumed = true;
                log.event(
                    rec.now_ms(),
                    "game day: no operator present (stdin closed); human steps skipped, automation handed back to the playbook",
                );
            }
            for c in cmds {
                let msg = match c {
                    GdCommand::Restart(n) => {
                        world.cluster.kill(n).await;
                        match world.cluster.spawn(n) {
                            Ok(()) => format!("operator restarted node {n}"),
                            Err(e) => format!("operator restart of node {n} failed: {e}"),
                        }
                    }
                    GdCommand::Transfer(n) => match world.cluster.transfer_leader(n).await {
                        Ok(()) => format!("operator moved leadership to node {n}"),
                        Err(e) => format!("operator leader transfer to {n} failed: {e}"),
                    },
                    GdCommand::ResumeAutomation => {
                        world.playbook.paused = false;
                        if let Some(c) = world.control.as_mut() {
                            c.set_paused(false);
                        }
                        automation_resumed = true;
                        "operator handed control back to the playbook".into()
                    }
                    GdCommand::Heal => {
                        let idx: Vec<usize> = injector.active.keys().copied().collect();
                        for i in idx {
                            heal_one(
                                &mut injector,
                                world,
                                &mut faults,
                                &mut log,
                                &mut run_errors,
                                &rec,
                                i,
                            )
                            .await;
                        }
                        "operator ended every fault".into()
                    }
                };
                log.event(rec.now_ms(), msg);
            }
        }

        // The control loop.
        if let Some(control) = world.control.as_mut() {
            let signals = BTreeMap::new();
            let mut actuator = LocalActuator {
                cluster: &mut world.cluster,
                traffic: &world.traffic,
            };
            let mut journal = world.store.clone();
            match control
                .tick(
                    &obs,
                    &signals,
                    &mut actuator,
                    &mut world.store,
                    &mut journal,
                )
                .await
            {
                Ok(ds) => {
                    for d in &ds {
                        let mk = mark(d, start_unix);
                        if d.disposition.is_execute() {
                            log.event(
                                mk.at_ms,
                                format!(
                                    "playbook {} {} {}: {}",
                                    mk.tier, mk.action, mk.target, mk.reason
                                ),
                            );
                        }
                        decisions.push(mk);
                    }
                }
                Err(e) => log.event(rec.now_ms(), format!("control loop error: {e}")),
            }
            refresh_endpoints(&world.cluster, &world.traffic, &control.quarantined());
        }

        // Abort conditions.
        if let Some(secs) = abort.no_orders_for_secs {
            let since = rec.last_ack_ms().unwrap_or(0);
            if now.saturating_sub(since) > secs * 1000 {
                abort_reason = Some(format!("no order acknowledged for {secs} s"));
            }
        }
        if let Some(max) = abort.max_unknown_ops {
            if rec.unknown() > max {
                abort_reason = Some(format!(
                    "{} operations with an unknown outcome (limit {max})",
                    rec.unknown()
                ));
            }
        }
        if abort.on_invariant_violation.unwrap_or(true)
            && last_invariants.elapsed() >= Duration::from_secs(5)
        {
            last_invariants = Instant::now();
            for inv in node_invariants(
                &mut world.cluster,
                injector.paused(),
                Duration::from_secs(1),
            )
            .await
            {
                if !inv.ok {
                    abort_reason = Some(format!(
                        "node {} broke an invariant: {}",
                        inv.node, inv.detail
                    ));
                }
            }
        }
        if abort_reason.is_some() {
            break;
        }

        if last_progress.elapsed() >= Duration::from_secs(2) {
            let acked = rec.acked();
            let rate = (acked - last_acked) as f64 / last_progress.elapsed().as_secs_f64();
            last_acked = acked;
            last_progress = Instant::now();
            let active: Vec<String> = injector
                .active
                .values()
                .map(|a| a.kind.to_string())
                .collect();
            eprintln!(
                "[{:>6.1}s] leader {} · acked {acked} ({rate:.0}/s) · unknown {} · faults: {}{}",
                now as f64 / 1000.0,
                obs.leader
                    .map(|l| l.to_string())
                    .unwrap_or_else(|| "none".into()),
                rec.unknown(),
                if active.is_empty() {
                    "none".into()
                } else {
                    active.join(", ")
                },
                if world.traffic.is_paused() {
                    " · SALES PAUSED"
                } else {
                    ""
                }
            );
        }
    }

    // Stop, heal, read back, check.
    if let Some(r) = &abort_reason {
        log.event(
            rec.now_ms(),
            format!("ABORT: {r}; healing every fault first"),
        );
    }
    let load_end_ms = rec.now_ms();
    stop.store(true, Ordering::Relaxed);
    let idx: Vec<usize> = injector.active.keys().copied().collect();
    for i in idx {
        heal_one(
            &mut injector,
            world,
            &mut faults,
            &mut log,
            &mut run_errors,
            &rec,
            i,
        )
        .await;
    }
    for i in pending {
        log.event(
            load_end_ms,
            format!("fault {i} {} never injected", spec.faults[i].kind),
        );
    }
    let wait = Duration::from_millis(spec.load.retry_deadline_ms.unwrap_or(10_000))
        + Duration::from_secs(5);
    for t in tasks {
        if tokio::time::timeout(wait, t).await.is_err() {
            run_errors.push("a load task did not stop in time".into());
        }
    }
    if world.control.is_none() {
        if let Err(e) = world.restart_controller().await {
            run_errors.push(format!("controller restart failed: {e}"));
        }
    }
    let ids: Vec<u64> = world.cluster.nodes.keys().copied().collect();
    for id in ids {
        world.cluster.unblock(id);
        if !world.cluster.is_running(id) {
            if let Err(e) = world.cluster.spawn(id) {
                run_errors.push(format!(
                    "node {id} could not be started for the final read: {e}"
                ));
            }
        }
    }
    world.cluster.clear_faults().await;
    log.event(
        rec.now_ms(),
        "healed: every node running, injected faults removed; reading the final state",
    );
    settle(&mut world.cluster, Duration::from_secs(30)).await;
    world.cluster.clear_faults().await;

    let ops = rec.ops();
    let mut buyers: Vec<(String, String)> = ops
        .iter()
        .filter_map(|o| match &o.kind {
            OpKind::PlaceOrder { buyer, key, .. } => Some((buyer.clone(), key.clone())),
            _ => None,
        })
        .collect();
    buyers.sort();
    buyers.dedup();
    let mut history = History {
        ops,
        ..History::default()
    };
    match final_read(&mut world.cluster, ROOM, &buyers).await {
        Ok(f) => {
            history.listings = f.listings;
            history.final_stock_left = f.stock_left;
            history.final_orders = f.orders;
        }
        Err(e) => run_errors.push(format!("final read failed: {e}")),
    }
    let invariants =
        node_invariants(&mut world.cluster, &BTreeSet::new(), Duration::from_secs(5)).await;
    let h2 = history.clone();
    let check = tokio::task::spawn_blocking(move || roomkeeper_chaos::check(&h2))
        .await
        .context("the history checker panicked")?;

    let fault_start = faults.values().map(|f| f.start_ms).min();
    let fault_end = faults.values().filter_map(|f| f.end_ms).max();
    let phases = Phases {
        fault_start_ms: fault_start,
        fault_end_ms: fault_end,
        end_ms: load_end_ms,
    };
    let probes = evaluate(
        &spec.hypothesis.probes,
        &history,
        &check,
        &phases,
        &decisions,
        &invariants,
    );
    let v = verdict(
        abort_reason.is_some(),
        &run_errors,
        &check,
        &invariants,
        &probes,
    );
    let bucket_ms = spec
        .record
        .as_ref()
        .and_then(|r| r.timeline_bucket_ms)
        .unwrap_or(1000);
    let report = DrillReport {
        name: m.metadata.name.clone(),
        description: spec.description.clone(),
        started_unix_ms: start_unix,
        duration_ms: load_end_ms,
        seed: opts.seed,
        verdict: v,
        abort_reason,
        run_errors,
        probes,
        orders: order_counts(&history),
        check,
        faults: faults.into_values().collect(),
        decisions,
        events: log.events,
        invariants,
        timeline: timeline(&history, bucket_ms, load_end_ms),
        bucket_ms,
        game_day: gd.map(|g| g.finish(automation_resumed)),
        spec: spec.clone(),
    };
    write_outputs(&opts.out_dir, &report, &history, spec)?;
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
async fn heal_one(
    injector: &mut Injector,
    world: &mut World,
    faults: &mut BTreeMap<usize, FaultRecord>,
    log: &mut Log,
    run_errors: &mut Vec<String>,
    rec: &Recorder,
    i: usize,
) {
    match injector.heal(world, i).await {
        Ok(what) => {
            if let Some(f) = faults.get_mut(&i) {
                f.end_ms = Some(rec.now_ms());
                log.event(rec.now_ms(), format!("HEAL {i} {}: {what}", f.kind));
            }
        }
        Err(e) => {
            let msg = format!("fault {i} could not be healed: {e}");
            log.event(rec.now_ms(), msg.clone());
            run_errors.push(msg);
            if let Some(f) = faults.get_mut(&i) {
                f.end_ms = Some(rec.now_ms());
            }
        }
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
