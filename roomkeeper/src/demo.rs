//! `roomkeeper demo`: the main job on one machine. Three regions on loopback
//! (one address range each), five voters spread 2-2-1, WAN latency between
//! regions, a flash-sale load, the control loop, and a live status view in the
//! terminal plus a JSON status endpoint. `--scenario` injects a fault mid-sale.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::routing::get;
use axum::{Json, Router};
use clap::{Args, ValueEnum};
use roomkeeper_control::load::{start_buyers, FlashSale, LoadStats, LoadSummary};
use roomkeeper_control::observation::{hide_regions, ClusterObservation};
use roomkeeper_control::setup::ListingSpec;
use roomkeeper_control::{ControlLoop, FileStore};
use roomkeeper_local::observe::observe;
use roomkeeper_local::sale::{create_sale, refresh_endpoints, traffic_map};
use roomkeeper_local::{LocalActuator, LocalCluster, LocalClusterConfig, RegionSpec};
use roomkeeper_playbook::Target;
use serde::Serialize;
use serde_json::json;

/// A fault the demo injects mid-sale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// No fault: a steady flash sale.
    None,
    /// SIGKILL the Raft leader.
    LeaderKill,
    /// Lose every node of one region.
    RegionLoss,
    /// A follower crashes and comes back every few seconds.
    NodeFlap,
    /// Lose a majority of voters, then bring them back.
    QuorumLoss,
    /// Cut the controller off from two of the three regions (the cluster is fine).
    ControllerPartition,
    /// Slow one region (`--lose-region`): its nodes reach the others only
    /// after 600 ms, so orders through them are slow (degraded, not lost).
    RegionSlow,
}

impl Scenario {
    /// The name a person types (`leader-kill`, …).
    pub fn name(self) -> &'static str {
        match self {
            Scenario::None => "none",
            Scenario::LeaderKill => "leader-kill",
            Scenario::RegionLoss => "region-loss",
            Scenario::NodeFlap => "node-flap",
            Scenario::QuorumLoss => "quorum-loss",
            Scenario::ControllerPartition => "controller-partition",
            Scenario::RegionSlow => "region-slow",
        }
    }
}

/// Node ids as a person reads them: `1, 2, 3` (or `none`).
fn ids(ids: &[u64]) -> String {
    if ids.is_empty() {
        return "none".into();
    }
    ids.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Flags of `roomkeeper demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Fault to inject after the warm-up.
    #[arg(long, value_enum, default_value_t = Scenario::None)]
    pub scenario: Scenario,
    /// Region lost by `--scenario region-loss`.
    #[arg(long, default_value = "us-east")]
    pub lose_region: String,
    /// Seconds before the fault is injected.
    #[arg(long, default_value_t = 10)]
    pub fault_after_secs: u64,
    /// Stop after this many seconds (0: run until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    pub duration_secs: u64,
    /// One-way latency added between regions, in milliseconds.
    #[arg(long, default_value_t = 20)]
    pub wan_latency_ms: u64,
    /// Concurrent buyers.
    #[arg(long, default_value_t = 24)]
    pub buyers: usize,
    /// Pause of each buyer between orders, in milliseconds.
    #[arg(long, default_value_t = 20)]
    pub think_ms: u64,
    /// Address of the JSON status endpoint (GET /status).
    #[arg(long, default_value = "127.0.0.1:7480")]
    pub status_addr: String,
    /// First of the three ports each node uses (raft, client API, admin API).
    #[arg(long, default_value_t = 17100)]
    pub base_port: u16,
    /// Where node data, logs and the controller's decision record go
    /// (default: a fresh temporary directory, kept after the run).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Remove the data directory when the demo ends (it is kept by default, so
    /// `controller/decisions.jsonl` and the node logs can be read afterwards).
    #[arg(long)]
    pub clean: bool,
    /// Print one status line at a time instead of redrawing the screen.
    #[arg(long)]
    pub plain: bool,
    /// Failover playbook (YAML, the FailoverPlaybook spec); default: the shipped playbook.
    #[arg(long)]
    pub playbook: Option<PathBuf>,
    /// Multiplies every duration of the playbook (hold-downs, cooldowns, windows),
    /// so a demo shows in seconds what production waits minutes for.
    #[arg(long, default_value_t = 0.2)]
    pub playbook_time_scale: f64,
    /// Decide and record, but do not act.
    #[arg(long)]
    pub dry_run: bool,
    /// Pause automation: decisions are recorded as suppressed by the global pause.
    #[arg(long)]
    pub pause_automation: bool,
    /// Home region of the sale's room.
    #[arg(long, default_value = "eu-west")]
    pub room_home_region: String,
    /// Give the room a live window from when the sale opens to this many
    /// seconds later (expected peak 900 orders/s); 0: none.
    #[arg(long, default_value_t = 0)]
    pub live_window_secs: u64,
}

/// What the status view and endpoint show.
#[derive(Debug, Clone, Serialize)]
pub struct DemoStatus {
    pub elapsed_secs: u64,
    pub scenario: Scenario,
    pub phase: String,
    pub observation: Option<ClusterObservation>,
    pub load: Option<LoadSummary>,
    pub traffic_weights: std::collections::BTreeMap<String, u32>,
    pub sales_paused: bool,
    pub active_tiers: Vec<String>,
    /// Nodes the playbook quarantined after their restart budget was spent.
    pub quarantined_nodes: Vec<u64>,
    /// What is left of every guard's budget.
    pub budgets: Option<roomkeeper_playbook::GuardBudgets>,
    pub decisions: Vec<String>,
    /// "Why did it act / why did it not act", per target, in words.
    pub explanations: std::collections::BTreeMap<String, String>,
    pub events: Vec<String>,
}

const REGIONS: [(&str, usize); 3] = [("eu-west", 2), ("us-east", 2), ("ap-south", 1)];
/// `println!` that ignores a closed terminal (after SIGHUP) rather than
/// panicking in the middle of the shutdown.
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

const ROOM: &str = "live-1";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let data_dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("roomkeeper-demo-{}", std::process::id())),
    };
    let binary = std::env::current_exe().context("locating the roomkeeper binary")?;
    let client_token = roomkeeper_control::setup::token("client");
    let cfg = LocalClusterConfig {
        binary,
        data_dir: data_dir.clone(),
        regions: REGIONS
            .iter()
            .map(|(n, v)| RegionSpec {
                name: n.to_string(),
                voters: *v,
            })
            .collect(),
        base_port: args.base_port,
        wan_latency_ms: args.wan_latency_ms,
        client_token: client_token.clone(),
        admin_token: roomkeeper_control::setup::token("admin"),
    };
    eprintln!(
        "roomkeeper demo: data and node logs in {}",
        data_dir.display()
    );
    let mut cluster = LocalCluster::new(cfg).context("preparing the local cluster")?;
    let status = Arc::new(Mutex::new(DemoStatus {
        elapsed_secs: 0,
        scenario: args.scenario,
        phase: "starting".into(),
        observation: None,
        load: None,
        traffic_weights: Default::default(),
        sales_paused: false,
        active_tiers: Vec::new(),
        quarantined_nodes: Vec::new(),
        budgets: None,
        decisions: Vec::new(),
        explanations: Default::default(),
        events: Vec::new(),
    }));
    let stop_signal = StopSignal::listen().context("listening for SIGINT, SIGTERM and SIGHUP")?;
    let in_sale = AtomicBool::new(false);
    let result = {
        let sale = run_inner(
            &args,
            &mut cluster,
            client_token,
            status,
            stop_signal.clone(),
            &in_sale,
        );
        tokio::pin!(sale);
        // Until the sale runs, a signal stops everything at once; from then on
        // the loop handles it, checking the orders before the nodes stop.
        let early = async {
            let name = stop_signal.received().await;
            if in_sale.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            name
        };
        tokio::select! {
            r = &mut sale => r,
            name = early => {
                say!("{name} during start-up: stopping every process");
                Ok(())
            }
        }
    };
    cluster.shutdown().await;
    if args.clean {
        if let Err(e) = std::fs::remove_dir_all(&data_dir) {
            eprintln!("could not remove {}: {e}", data_dir.display());
        }
    } else {
        say!(
            "data kept in {} (decisions: controller/decisions.jsonl; node logs: node-<id>.log; --clean removes it)",
            data_dir.display()
        );
    }
    result
}

fn event(status: &Mutex<DemoStatus>, started: Instant, msg: impl Into<String>) {
    let line = format!("[{:>5.1}s] {}", started.elapsed().as_secs_f64(), msg.into());
    if let Ok(mut s) = status.lock() {
        s.events.push(line);
        let n = s.events.len();
        if n > 200 {
            s.events.drain(..n - 200);
        }
    }
}

/// The first of SIGINT (Ctrl-C), SIGTERM or SIGHUP (the terminal closed),
/// caught from the demo's first moment: whichever arrives, the demo stops its
/// node processes before it exits instead of leaving them holding their ports.
#[derive(Clone)]
struct StopSignal(tokio::sync::watch::Receiver<Option<&'static str>>);

impl StopSignal {
    fn listen() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut hup = signal(SignalKind::hangup())?;
        let (tx, rx) = tokio::sync::watch::channel(None);
        tokio::spawn(async move {
            let name = tokio::select! {
                _ = int.recv() => "Ctrl-C",
                _ = term.recv() => "SIGTERM",
                _ = hup.recv() => "SIGHUP",
            };
            let _ = tx.send(Some(name));
        });
        Ok(Self(rx))
    }

    /// Resolves with the signal's name once one has arrived.
    async fn received(&self) -> &'static str {
        let mut rx = self.0.clone();
        let name = match rx.wait_for(Option::is_some).await {
            Ok(name) => *name,
            // The watcher is gone (the runtime is shutting down): never.
            Err(_) => std::future::pending().await,
        };
        name.unwrap_or("a signal")
    }
}

async fn run_inner(
    args: &DemoArgs,
    cluster: &mut LocalCluster,
    client_token: String,
    status: Arc<Mutex<DemoStatus>>,
    stop_signal: StopSignal,
    in_sale: &AtomicBool,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut playbook = match &args.playbook {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading playbook {}", p.display()))?;
            roomkeeper_playbook::Playbook::from_yaml(&text)
                .map_err(|e| anyhow::anyhow!("playbook {}: {e}", p.display()))?
        }
        None => roomkeeper_playbook::default_playbook(),
    };
    anyhow::ensure!(
        args.playbook_time_scale > 0.0 && args.playbook_time_scale <= 10.0,
        "--playbook-time-scale must be in (0, 10], got {}",
        args.playbook_time_scale
    );
    roomkeeper_control::setup::scale_playbook(&mut playbook, args.playbook_time_scale);
    playbook.dry_run |= args.dry_run;
    playbook.paused |= args.pause_automation;
    let mut store = FileStore::open(&cluster.cfg.data_dir.join("controller"))
        .context("opening the controller's directory")?;
    let mut journal = store.clone();
    let mut control = ControlLoop::open(&mut store, playbook, REGIONS.len() as u32)
        .await
        .context("opening the control loop")?;
    eprintln!("starting 5 voters across {} regions …", REGIONS.len());
    cluster.start().await.context("starting the cluster")?;
    if let Some(first) = cluster.nodes.values().next() {
        // The nodes' APIs are TLS under the demo's throwaway CA; this is how a
        // person calls one by hand while the demo runs.
        let tls = cluster.operator_dir.display();
        eprintln!(
            "nodes serve TLS under a throwaway CA; call one with:\n  curl --cacert {tls}/ca.crt --cert {tls}/tls.crt --key {tls}/tls.key \\\n    -H 'authorization: Bearer {}' https://{}/admin/status",
            cluster.cfg.admin_token, first.info.admin_addr
        );
    }
    event(
        &status,
        started,
        "cluster formed: 5 voters (eu-west 2, us-east 2, ap-south 1)",
    );

    // The JSON status endpoint.
    let listener = tokio::net::TcpListener::bind(&args.status_addr)
        .await
        .with_context(|| format!("binding the status endpoint on {}", args.status_addr))?;
    let st = status.clone();
    let control_metrics = control.metrics.clone();
    let app = Router::new()
        .route(
            "/status",
            get(move || {
                let st = st.clone();
                async move {
                    match st.lock() {
                        Ok(s) => Json(json!(*s)),
                        Err(_) => Json(json!({"error": "status unavailable"})),
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let m = control_metrics.clone();
                async move { m.map(|m| m.render()).unwrap_or_default() }
            }),
        );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    // The sale: one live room, 16 SKUs.
    let skus: Vec<String> = (1..=16).map(|i| format!("sku-{i:02}")).collect();
    let listings: Vec<ListingSpec> = skus
        .iter()
        .map(|sku| ListingSpec {
            sku: sku.clone(),
            stock: 200_000,
            per_buyer_limit: 5,
        })
        .collect();
    anyhow::ensure!(
        REGIONS.iter().any(|(r, _)| *r == args.room_home_region),
        "--room-home-region must be one of {:?}, got {:?}",
        REGIONS.iter().map(|(r, _)| *r).collect::<Vec<_>>(),
        args.room_home_region
    );
    create_sale(
        cluster,
        ROOM,
        "Midnight flash sale",
        &args.room_home_region,
        &listings,
    )
    .await?;
    if args.live_window_secs > 0 {
        let start_ms = now_ms();
        let end_ms = start_ms + args.live_window_secs * 1000;
        let leader = cluster.wait_leader(Duration::from_secs(10)).await?;
        let api = cluster
            .info(leader)
            .map(|i| i.api_addr.clone())
            .context("the leader has no address")?;
        let r = cluster
            .http
            .put(
                &api,
                &format!("/v1/rooms/{ROOM}"),
                &json!({
                    "title": "Midnight flash sale",
                    "home_region": args.room_home_region,
                    "state": "live",
                    "live_windows": [{
                        "start_ms": start_ms,
                        "end_ms": end_ms,
                        "expected_peak_orders_per_s": 900,
                    }],
                }),
                Some(&client_token),
                Duration::from_secs(5),
            )
            .await
            .context("setting the room's live window")?;
        anyhow::ensure!(r.status == 200, "setting the live window: {}", r.body);
        event(
            &status,
            started,
            format!(
                "room {ROOM} is live in {} for {} s (expected peak 900 orders/s; window ends at unix ms {end_ms})",
                args.room_home_region, args.live_window_secs
            ),
        );
    }
    let traffic = Arc::new(traffic_map(cluster));
    let stats = Arc::new(LoadStats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let buyers = start_buyers(
        FlashSale {
            room: ROOM.into(),
            skus,
            buyers: args.buyers,
            think_time: Duration::from_millis(args.think_ms),
            client_token,
        },
        cluster.http.clone(),
        traffic.clone(),
        stats.clone(),
        stop.clone(),
    );
    event(
        &status,
        started,
        format!("flash sale open: {} buyers on 16 SKUs", args.buyers),
    );

    let tty = std::io::stdout().is_terminal() && !args.plain;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut fault_injected = false;
    let mut flap_up_since: Option<Instant> = None;
    let mut flapping: Option<u64> = None;
    let mut quorum_restore_at: Option<(Instant, Vec<u64>)> = None;
    let mut hidden_regions: Vec<String> = Vec::new();
    anyhow::ensure!(
        REGIONS.iter().any(|(r, _)| *r == args.lose_region),
        "--lose-region must be one of {:?}, got {:?}",
        REGIONS.iter().map(|(r, _)| *r).collect::<Vec<_>>(),
        args.lose_region
    );
    in_sale.store(true, Ordering::SeqCst);
    let signalled = stop_signal.received();
    tokio::pin!(signalled);
    let mut last_print = Instant::now() - Duration::from_secs(10);
    loop {
        tokio::select! {
            name = &mut signalled => {
                event(&status, started, format!("{name}: stopping every process"));
                break;
            }
            _ = tick.tick() => {}
        }
        let elapsed = started.elapsed();
        if args.duration_secs > 0 && elapsed.as_secs() >= args.duration_secs {
            break;
        }
        let mut obs = observe(cluster, now_ms()).await;
        if !hidden_regions.is_empty() {
            hide_regions(&mut obs, &hidden_regions);
        }

        // Scenario driver.
        if args.scenario != Scenario::None
            && !fault_injected
            && elapsed.as_secs() >= args.fault_after_secs
        {
            fault_injected = true;
            match args.scenario {
                Scenario::LeaderKill => {
                    if let Some(l) = obs.leader {
                        cluster.kill(l).await;
                        event(&status, started, format!("FAULT: SIGKILL leader node {l}"));
                    }
                }
                Scenario::RegionLoss => {
                    let victims: Vec<u64> = cluster
                        .nodes
                        .values()
                        .filter(|n| n.info.region == args.lose_region)
                        .map(|n| n.id)
                        .collect();
                    for v in &victims {
                        cluster.block(*v, None);
                        cluster.kill(*v).await;
                    }
                    event(
                        &status,
                        started,
                        format!(
                            "FAULT: region {} lost (nodes {} gone for good)",
                            args.lose_region,
                            ids(&victims)
                        ),
                    );
                }
                Scenario::NodeFlap => {
                    flapping = obs
                        .nodes
                        .iter()
                        .find(|n| Some(n.node_id) != obs.leader)
                        .map(|n| n.node_id);
                    event(
                        &status,
                        started,
                        format!(
                            "FAULT: node {} starts flapping",
                            flapping.map_or_else(
                                || "none (no follower)".to_string(),
                                |n| n.to_string()
                            )
                        ),
                    );
                }
                Scenario::QuorumLoss => {
                    // One node per region, so the controller still sees every region
                    // while three of five voters are gone.
                    let mut victims: Vec<u64> = Vec::new();
                    for (region, _) in REGIONS {
                        if let Some(n) = cluster.nodes.values().find(|n| n.info.region == region) {
                            victims.push(n.id);
                        }
                    }
                    let back = Instant::now() + Duration::from_secs(15);
                    for v in &victims {
                        cluster.block(*v, Some(back));
                        cluster.kill(*v).await;
                    }
                    event(
                        &status,
                        started,
                        format!(
                            "FAULT: quorum lost (hosts of nodes {} down for 15 s)",
                            ids(&victims)
                        ),
                    );
                    quorum_restore_at = Some((back, victims));
                }
                Scenario::ControllerPartition => {
                    hidden_regions = vec!["eu-west".to_string(), "us-east".to_string()];
                    event(
                        &status,
                        started,
                        "FAULT: the controller is cut off from eu-west and us-east (the cluster itself is healthy)",
                    );
                }
                Scenario::RegionSlow => {
                    let slow: Vec<u64> = cluster
                        .nodes
                        .values()
                        .filter(|n| n.info.region == args.lose_region)
                        .map(|n| n.id)
                        .collect();
                    let others: Vec<u64> = cluster
                        .nodes
                        .keys()
                        .copied()
                        .filter(|id| !slow.contains(id))
                        .collect();
                    for v in &slow {
                        let mut f = cluster.faults(*v);
                        for o in &others {
                            f.peer_delay_ms.insert(*o, 600);
                        }
                        cluster.set_faults(*v, f).await?;
                    }
                    event(
                        &status,
                        started,
                        format!(
                            "FAULT: region {} slow (nodes {} reach the others after 600 ms)",
                            args.lose_region,
                            ids(&slow)
                        ),
                    );
                }
                Scenario::None => {}
            }
        }
        // A crash-looping node: it dies about two seconds after every start;
        // bringing it back is the playbook's job.
        if let Some(f) = flapping {
            if cluster.is_running(f) {
                let since = *flap_up_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= Duration::from_secs(2) {
                    cluster.kill(f).await;
                    flap_up_since = None;
                    event(&status, started, format!("flap: node {f} crashed"));
                }
            }
        }
        if let Some((at, victims)) = quorum_restore_at.clone() {
            if Instant::now() >= at {
                // The hosts come back and their service manager starts the nodes.
                for v in &victims {
                    cluster.unblock(*v);
                    if !cluster.is_running(*v) {
                        cluster.spawn(*v)?;
                    }
                }
                cluster.apply_wan_latency().await;
                event(
                    &status,
                    started,
                    format!(
                        "hosts of nodes {} are back and their nodes start: quorum can return",
                        ids(&victims)
                    ),
                );
                quorum_restore_at = None;
            }
        }

        let signals = roomkeeper_local::sale::node_signals(cluster, &stats.endpoints);
        let mut actuator = LocalActuator {
            cluster,
            traffic: &traffic,
        };
        match control
            .tick(&obs, &signals, &mut actuator, &mut store, &mut journal)
            .await
        {
            Ok(decisions) => {
                for d in decisions.iter().filter(|d| {
                    d.disposition.is_execute()
                        || matches!(d.disposition, roomkeeper_playbook::Disposition::DryRun)
                }) {
                    event(
                        &status,
                        started,
                        format!(
                            "{} {}: {}",
                            d.tier,
                            roomkeeper_playbook::action_phrase(d.action, &d.target),
                            d.reason
                        ),
                    );
                }
            }
            Err(e) => event(&status, started, format!("control loop error: {e}")),
        }
        refresh_endpoints(cluster, &traffic, &control.quarantined());

        let load = stats.summary();
        if let Ok(mut s) = status.lock() {
            s.sales_paused = traffic.is_paused();
            s.active_tiers = control
                .memory()
                .activations()
                .iter()
                .map(|a| {
                    let phase = match a.phase {
                        roomkeeper_playbook::ActivationPhase::Active => "active",
                        _ => "standing down",
                    };
                    format!("T{} {} on {}: {phase}", a.level, a.tier, a.target)
                })
                .collect();
            s.decisions = control.recent.iter().cloned().collect();
            s.quarantined_nodes = control.quarantined();
            s.budgets = control.budgets().cloned();
            let mut explanations = std::collections::BTreeMap::new();
            explanations.insert("shard".to_string(), control.explain(&Target::Shard));
            for (region, _) in REGIONS {
                explanations.insert(
                    format!("region/{region}"),
                    control.explain(&Target::Region(region.to_string())),
                );
            }
            for id in cluster.nodes.keys() {
                explanations.insert(format!("node/{id}"), control.explain(&Target::Node(*id)));
            }
            s.explanations = explanations;
            s.elapsed_secs = elapsed.as_secs();
            s.phase = if fault_injected {
                "fault injected".into()
            } else {
                "steady".into()
            };
            s.observation = Some(obs.clone());
            s.load = Some(load.clone());
            s.traffic_weights = traffic.weights();
        }
        if tty {
            render(&status, true);
        } else if last_print.elapsed() >= Duration::from_secs(2) {
            last_print = Instant::now();
            render(&status, false);
        }
    }
    // Stopping (Ctrl-C or --duration-secs) checks the orders before anything
    // is torn down, within a bound: the whole ending takes under 10 s.
    let ending = Instant::now();
    stop.store(true, Ordering::Relaxed);
    for b in buyers {
        let _ = tokio::time::timeout(Duration::from_secs(2), b).await;
    }
    let load = stats.summary();
    say!(
        "\nsummary: {} orders acknowledged, {} refused by the store, {} errors, {} retries; longest gap between acknowledged orders {} ms",
        load.ok, load.rejected, load.errors, load.retries, load.longest_gap_ms
    );
    bring_back_stopped_nodes(cluster).await;
    let budget = Duration::from_secs(8).saturating_sub(ending.elapsed());
    let verdict = check_acknowledged(cluster, &stats.acknowledged(), budget).await;
    say!("{verdict}");
    check_invariants(cluster).await;
    Ok(())
}

/// Nodes stopped by the scenario (a host outage that has not ended yet, a
/// killed leader the playbook has not restarted) are started again, so the
/// check reads from a cluster with its quorum. Nodes whose host is gone for
/// good (a lost region) and quarantined flappers stay down.
async fn bring_back_stopped_nodes(cluster: &mut LocalCluster) {
    let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
    let mut started = Vec::new();
    for id in ids {
        if cluster.is_running(id) || !cluster.is_temporarily_blocked(id) {
            continue;
        }
        cluster.unblock(id);
        if cluster.spawn(id).is_ok() {
            started.push(id);
        }
    }
    if !started.is_empty() {
        let list: Vec<String> = started.iter().map(u64::to_string).collect();
        say!(
            "started nodes {} again (their hosts' outage was still on) to check the orders",
            list.join(", ")
        );
        cluster.apply_wan_latency().await;
    }
}

/// Reads every acknowledged order back, linearizably, by buyer (one request
/// per buyer, not per order) from the surviving nodes, leader first, and says
/// in words whether every one is there. Gives up at `budget` and says how
/// many it could not read rather than calling them lost.
async fn check_acknowledged(
    cluster: &mut LocalCluster,
    acked: &[(u64, String, u64)],
    budget: Duration,
) -> String {
    if acked.is_empty() {
        return "acknowledged orders: none were acknowledged, nothing to check".into();
    }
    let deadline = Instant::now() + budget;
    let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
    let mut addrs = Vec::new();
    for id in ids {
        if cluster.is_running(id) {
            if let Some(info) = cluster.info(id) {
                addrs.push(info.api_addr.clone());
            }
        }
    }
    if addrs.is_empty() {
        return format!(
            "acknowledged orders: {} NOT CHECKED: no node is running",
            acked.len()
        );
    }
    let wait_leader = deadline
        .saturating_duration_since(Instant::now())
        .min(Duration::from_secs(4));
    if let Some(leader) = cluster
        .wait_leader(wait_leader)
        .await
        .ok()
        .and_then(|l| cluster.info(l))
    {
        addrs.retain(|a| *a != leader.api_addr);
        addrs.insert(0, leader.api_addr.clone());
    }
    let mut by_buyer: BTreeMap<&str, Vec<(u64, u64)>> = BTreeMap::new();
    for (id, buyer, qty) in acked {
        by_buyer
            .entry(buyer.as_str())
            .or_default()
            .push((*id, *qty));
    }
    let buyers: Vec<String> = by_buyer.keys().map(|b| b.to_string()).collect();
    let http = cluster.http.clone();
    let token = cluster.cfg.client_token.clone();
    let per_task = buyers.len().div_ceil(32).max(1);
    let reads = buyers.chunks(per_task).map(|chunk| {
        let (http, token, addrs) = (http.clone(), token.clone(), addrs.clone());
        let chunk = chunk.to_vec();
        async move {
            let mut seen: Vec<(String, Option<BTreeMap<u64, u64>>)> = Vec::new();
            for buyer in chunk {
                let path = format!("/v1/buyers/{buyer}/orders?consistency=linearizable");
                let mut orders = None;
                for attempt in 0..addrs.len() * 2 {
                    if Instant::now() >= deadline {
                        break;
                    }
                    let addr = &addrs[attempt % addrs.len()];
                    let left = deadline.saturating_duration_since(Instant::now());
                    match http
                        .get(addr, &path, Some(&token), left.min(Duration::from_secs(2)))
                        .await
                    {
                        Ok(r) if r.status == 200 => {
                            orders = Some(
                                r.body
                                    .as_array()
                                    .into_iter()
                                    .flatten()
                                    .filter(|o| {
                                        o["room"] == json!(ROOM) && o["status"] != "cancelled"
                                    })
                                    .filter_map(|o| {
                                        Some((o["order_id"].as_u64()?, o["qty"].as_u64()?))
                                    })
                                    .collect(),
                            );
                            break;
                        }
                        _ => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
                seen.push((buyer, orders));
            }
            seen
        }
    });
    let results: Vec<(String, Option<BTreeMap<u64, u64>>)> = futures_util::future::join_all(reads)
        .await
        .into_iter()
        .flatten()
        .collect();
    let (mut present, mut lost, mut unread) = (0usize, Vec::new(), 0usize);
    for (buyer, orders) in &results {
        let expected = by_buyer
            .get(buyer.as_str())
            .map(Vec::as_slice)
            .unwrap_or_default();
        match orders {
            None => unread += expected.len(),
            Some(found) => {
                for (id, qty) in expected {
                    if found.get(id) == Some(qty) {
                        present += 1;
                    } else {
                        lost.push(*id);
                    }
                }
            }
        }
    }
    if lost.is_empty() && unread == 0 {
        format!(
            "all {present} acknowledged orders present on the surviving nodes (read back linearizably by buyer, {} buyers)",
            buyers.len()
        )
    } else if lost.is_empty() {
        format!(
            "acknowledged orders: {present} present, {unread} NOT CHECKED (no node answered for their buyers before the deadline); none found missing"
        )
    } else {
        let first: Vec<String> = lost.iter().take(10).map(u64::to_string).collect();
        format!(
            "acknowledged orders: {} LOST or altered (order ids {}{}), {present} present, {unread} not checked",
            lost.len(),
            first.join(", "),
            if lost.len() > 10 { ", …" } else { "" }
        )
    }
}

async fn check_invariants(cluster: &mut LocalCluster) {
    let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
    for id in ids {
        if !cluster.is_running(id) {
            continue;
        }
        let Some(info) = cluster.info(id).cloned() else {
            continue;
        };
        match cluster
            .http
            .get(
                &info.admin_addr,
                "/admin/invariants",
                Some(&cluster.cfg.admin_token),
                Duration::from_secs(3),
            )
            .await
        {
            Ok(r) if r.body["ok"] == json!(true) => say!(
                "node {id}: invariants hold at applied index {}",
                r.body["applied_index"]
            ),
            Ok(r) => say!("node {id}: INVARIANT VIOLATED: {}", r.body),
            Err(e) => say!("node {id}: could not check invariants: {e}"),
        }
    }
}

fn render(status: &Mutex<DemoStatus>, redraw: bool) {
    let Ok(s) = status.lock() else { return };
    let mut out = String::new();
    if redraw {
        out.push_str("\x1b[2J\x1b[H");
    }
    let load = s.load.clone();
    let (ok, ops, p99, err) = load
        .as_ref()
        .map(|l| (l.ok, l.orders_per_sec, l.p99_ms, l.errors))
        .unwrap_or_default();
    if !redraw {
        let leader = s.observation.as_ref().and_then(|o| o.leader);
        let alive = s
            .observation
            .as_ref()
            .map(|o| o.nodes.iter().filter(|n| n.status.is_some()).count())
            .unwrap_or(0);
        out.push_str(&format!(
            "t={:>4}s {:<14} leader={:<5} nodes-up={} orders/s={:>6.0} p99={:>6.1}ms ok={} errors={}\n",
            s.elapsed_secs,
            s.phase,
            leader.map(|l| l.to_string()).unwrap_or_else(|| "none".into()),
            alive,
            ops,
            p99,
            ok,
            err
        ));
        if let Some(e) = s.events.last() {
            out.push_str(&format!("        last event: {e}\n"));
        }
        let _ = write!(std::io::stdout().lock(), "{out}");
        let _ = std::io::stdout().flush();
        return;
    }
    out.push_str(&format!(
        "roomkeeper demo — scenario {} — {} — t={}s   (Ctrl-C stops everything)\n\n",
        s.scenario.name(),
        s.phase,
        s.elapsed_secs
    ));
    if let Some(o) = &s.observation {
        out.push_str(&format!(
            "leader: {}   term: {}   voters: {}   learners: {}\n\n",
            o.leader
                .map(|l| l.to_string())
                .unwrap_or_else(|| "NONE".into()),
            o.term,
            ids(&o.voters),
            ids(&o.learners)
        ));
        out.push_str("REGION     WEIGHT  NODE  PROCESS  ROLE        TERM  APPLIED   LAG\n");
        for region in o.regions() {
            let weight = s.traffic_weights.get(&region).copied().unwrap_or(100);
            for n in o.nodes.iter().filter(|n| n.region == region) {
                let lag = o
                    .leader_status()
                    .and_then(|l| l.replication.get(&n.node_id.to_string()))
                    .map(|r| r.lag.to_string())
                    .unwrap_or_else(|| "-".into());
                let (role, term, applied) = n
                    .status
                    .as_ref()
                    .map(|st| {
                        (
                            st.role.clone(),
                            st.term.to_string(),
                            st.applied_index.to_string(),
                        )
                    })
                    .unwrap_or_else(|| ("unreachable".into(), "-".into(), "-".into()));
                out.push_str(&format!(
                    "{:<10} {:>6}  {:>4}  {:<7}  {:<10} {:>5} {:>8} {:>5}\n",
                    region,
                    weight,
                    n.node_id,
                    if n.process_alive == Some(false) {
                        "DOWN"
                    } else {
                        "up"
                    },
                    role,
                    term,
                    applied,
                    lag
                ));
            }
        }
    }
    if let Some(l) = &load {
        out.push_str(&format!(
            "\norders/s {:>7.0}   p50 {:>6.1} ms   p99 {:>6.1} ms   acknowledged {}   refused {}   errors {}   retries {}   longest gap {} ms\n",
            l.orders_per_sec, l.p50_ms, l.p99_ms, l.ok, l.rejected, l.errors, l.retries, l.longest_gap_ms
        ));
    }
    out.push_str(&format!(
        "sales: {}   active tiers: {}\n",
        if s.sales_paused { "PAUSED" } else { "open" },
        if s.active_tiers.is_empty() {
            "none".to_string()
        } else {
            s.active_tiers.join("; ")
        }
    ));
    out.push_str("\nlast decisions:\n");
    for d in s.decisions.iter().rev().take(6).rev() {
        out.push_str(&format!("  {}\n", one_line(d)));
    }
    out.push_str("\nrecent events:\n");
    for e in s.events.iter().rev().take(8).rev() {
        out.push_str(&format!("  {}\n", one_line(e)));
    }
    let _ = write!(std::io::stdout().lock(), "{out}");
    let _ = std::io::stdout().flush();
}

/// Cuts a line to what a terminal row shows; the full text is in /status and
/// the decision log.
fn one_line(text: &str) -> String {
    const WIDTH: usize = 150;
    match text.char_indices().nth(WIDTH) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}
