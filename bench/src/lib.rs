//! The flash-sale benchmark behind `roomkeeper bench`: a closed-loop load
//! generator that measures our store and its peers (etcd, Redis) in the same
//! run on the same machine, so every figure can be read as a ratio. See
//! docs/benchmarks.md for the method and README.md for this crate's boundary.
//!
//! The public surface is [`BenchArgs`] (clap arguments, flattened into the
//! binary's `bench` subcommand) and [`run`]. Everything else is internal.
#![forbid(unsafe_code)]

mod cpu;
mod etcd;
mod framed;
mod http;
mod latency;
mod leader;
mod nats;
mod plot;
mod procs;
mod redis;
mod report;
mod roomkeeper;
mod workload;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use report::{KillReport, Status, TargetResult};
use workload::LoadStats;

/// Price of every listing.
pub(crate) const PRICE_CENTS: u64 = 1999;
/// High enough never to bind during a run.
pub(crate) const PER_BUYER_LIMIT: u64 = 1_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Catalog {
    /// 16 SKUs: every buyer fights over the same few counters.
    Hot,
    /// 10,000 SKUs: little contention per SKU.
    Wide,
    /// The hot catalog after the sale: 16 SKUs with no stock, every order is
    /// refused `sold_out` (what a refusal costs the store).
    SoldOut,
}

impl Catalog {
    pub(crate) fn skus(self) -> usize {
        match self {
            Catalog::Hot | Catalog::SoldOut => 16,
            Catalog::Wide => 10_000,
        }
    }

    /// Stock per SKU: large enough never to sell out during a run (none for sold-out).
    pub(crate) fn stock(self) -> u64 {
        match self {
            Catalog::Hot => 100_000_000,
            Catalog::Wide => 1_000_000,
            Catalog::SoldOut => 0,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Catalog::Hot => "hot",
            Catalog::Wide => "wide",
            Catalog::SoldOut => "sold-out",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetSel {
    Roomkeeper,
    Etcd,
    Redis,
    /// Redis driven by `redis-benchmark` instead of the bench's client.
    RedisBenchmark,
    /// NATS JetStream, three members, KV compare-and-set.
    Nats,
    All,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Steady load for the whole run.
    Steady,
    /// SIGKILL the leader half-way through the measurement (roomkeeper, etcd).
    LeaderKill,
}

impl Scenario {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Scenario::Steady => "steady",
            Scenario::LeaderKill => "leader-kill",
        }
    }
}

/// Flash-sale load generator: roomkeeper against etcd and Redis, same run.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Warm-up seconds (load runs, nothing is counted).
    #[arg(long, default_value_t = 2)]
    pub warmup_secs: u64,
    /// Concurrent buyers (closed loop: one order in flight each). Several,
    /// comma-separated, run every target at each count in turn (a sweep;
    /// see `--plot`).
    #[arg(long, value_delimiter = ',', default_value = "64")]
    pub clients: Vec<usize>,
    /// Write orders/s and p99 against client count, one line per target,
    /// as an SVG to this file (most useful with several `--clients`).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// hot: 16 SKUs; wide: 10,000 SKUs.
    #[arg(long, value_enum, default_value_t = Catalog::Hot)]
    pub catalog: Catalog,
    /// Which stores to measure (one after another, each alone on the machine).
    #[arg(long, value_enum, default_value_t = TargetSel::All)]
    pub target: TargetSel,
    /// steady, or leader-kill (SIGKILL the leader mid-run; roomkeeper and etcd).
    #[arg(long, value_enum, default_value_t = Scenario::Steady)]
    pub scenario: Scenario,
    /// When to kill the leader, seconds since the start (default: half-way
    /// through the measurement).
    #[arg(long)]
    pub kill_at_secs: Option<f64>,
    /// Run every target this many times (alternating) and report, per
    /// target, the round with the median orders/s.
    #[arg(long, default_value_t = 1)]
    pub rounds: u32,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Use existing roomkeeper nodes (client API addresses, comma-separated)
    /// instead of starting three.
    #[arg(long, value_delimiter = ',')]
    pub roomkeeper_api: Vec<String>,
    /// Admin API addresses of those nodes, to send writes to the leader.
    #[arg(long, value_delimiter = ',')]
    pub roomkeeper_admin: Vec<String>,
    /// Client API token for existing nodes.
    #[arg(long, env = "ROOMKEEPER_CLIENT_TOKEN", hide_env_values = true)]
    pub client_token: Option<String>,
    /// Admin API token for existing nodes.
    #[arg(long, env = "ROOMKEEPER_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Room id to create (default: a fresh `bench-<run id>`).
    #[arg(long)]
    pub room: Option<String>,
    /// etcd clients go to the leader (default); with this, spread over all
    /// three members (followers forward to the leader).
    #[arg(long)]
    pub etcd_spread: bool,
    /// etcd binary (Debian: etcd-server).
    #[arg(long, default_value = "etcd")]
    pub etcd_bin: String,
    /// Redis binary (Debian: redis-server).
    #[arg(long, default_value = "redis-server")]
    pub redis_bin: String,
    /// Redis's load tool (Debian: redis-tools), for the `redis-benchmark` target.
    #[arg(long, default_value = "redis-benchmark")]
    pub redis_benchmark_bin: String,
    /// nats-server binary (scripts/bench.sh builds it from its Go module).
    #[arg(long, env = "ROOMKEEPER_NATS_BIN", default_value = "nats-server")]
    pub nats_bin: String,
    /// Log filter (ROOMKEEPER_LOG) of the roomkeeper nodes the bench starts.
    #[arg(long, default_value = "info,openraft=warn")]
    pub node_log: String,
    /// roomkeeper binary to start the nodes from (default: this binary).
    #[arg(long)]
    pub node_bin: Option<PathBuf>,
    /// Keep the scratch directories (data, logs) of the started servers.
    #[arg(long)]
    pub keep_dir: bool,
    /// Start roomkeeper's nodes with TLS on the client and admin APIs (a
    /// throwaway CA) and speak TLS to them; default plain HTTP, as etcd and
    /// Redis run here without TLS.
    #[arg(long)]
    pub http_tls: bool,
    /// How the buyers talk to roomkeeper: framed (the framed order protocol,
    /// pipelined over a few shared connections; docs/framed-api.md) or http
    /// (HTTP/1.1 + JSON, one connection per buyer). Use http with a
    /// `--node-bin` older than the framed protocol.
    #[arg(long, value_enum, default_value_t = RkClient::Framed)]
    pub roomkeeper_client: RkClient,
    /// Framed connections the buyers share.
    #[arg(long, default_value_t = 2)]
    pub framed_connections: usize,
}

/// The client that drives roomkeeper.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RkClient {
    Framed,
    Http,
}

/// Why `roomkeeper bench` failed. Missed performance targets are not
/// failures (they are reported as `MISS`); these are.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The arguments make no sense together.
    #[error("{0}")]
    InvalidArgs(String),
    /// Ctrl-C or SIGTERM; the servers the bench started were stopped.
    #[error("interrupted by {0}; the servers the bench started were stopped")]
    Interrupted(&'static str),
    /// The run could not start (no randomness for its id).
    #[error("the bench could not start")]
    Start(#[source] anyhow::Error),
    /// roomkeeper could not be started or driven.
    #[error("roomkeeper failed during the bench")]
    Roomkeeper(#[source] anyhow::Error),
    /// Acknowledged orders missing or altered after the leader kill.
    #[error(
        "roomkeeper lost {lost} and altered {mismatched} acknowledged orders after the leader kill"
    )]
    OrdersLost { lost: u64, mismatched: u64 },
    /// Stock sold per the store disagrees with the orders it acknowledged.
    #[error("roomkeeper audit failed: store sold {sold} units, bench acknowledged {acknowledged} (+{unknown} unknown)")]
    AuditFailed {
        sold: u64,
        acknowledged: u64,
        unknown: u64,
    },
    /// The JSON report or the plot could not be written.
    #[error("writing the results to {path}")]
    WriteResults {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Everything a target needs to run the workload.
pub(crate) struct Ctx {
    pub run_id: String,
    pub room: String,
    pub catalog: Catalog,
    pub clients: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub scenario: Scenario,
    pub kill_at_secs: Option<f64>,
    pub keep_dir: bool,
    pub etcd_bin: String,
    pub redis_bin: String,
    pub redis_benchmark_bin: String,
    pub nats_bin: String,
    pub etcd_spread: bool,
    pub rk_api: Vec<String>,
    pub rk_admin: Vec<String>,
    pub client_token: Option<String>,
    pub admin_token: Option<String>,
    pub node_log: String,
    pub node_bin: Option<PathBuf>,
    pub http_tls: bool,
    pub rk_client: RkClient,
    pub framed_connections: usize,
}

impl Ctx {
    pub(crate) fn kill_at(&self) -> Duration {
        match self.kill_at_secs {
            Some(s) => Duration::from_secs_f64(s.max(0.0)),
            None => self.warmup + self.duration / 2,
        }
    }

    /// The load plan of `target` in this run, measuring `server_pids`' CPU.
    pub(crate) fn plan(
        &self,
        target: &str,
        record_acks: bool,
        server_pids: Vec<u32>,
    ) -> workload::Plan {
        workload::Plan {
            label: format!("{target} {} {}c", self.catalog.name(), self.clients),
            run_id: self.run_id.clone(),
            skus: self.catalog.skus(),
            warmup: self.warmup,
            duration: self.duration,
            record_acks,
            retry_grace: self.retry_grace(),
            server_pids,
        }
    }

    /// The result of a target that cannot run here, said loudly on stderr.
    pub(crate) fn skipped(&self, target: &str, why: String) -> report::TargetResult {
        eprintln!("\n!!!!! SKIPPED {target}: {why}\n");
        report::TargetResult::skipped(
            target,
            self.scenario.name(),
            self.catalog.name(),
            self.clients,
            why,
        )
    }

    /// How long an order that was started keeps retrying after the end.
    pub(crate) fn retry_grace(&self) -> Duration {
        match self.scenario {
            Scenario::Steady => Duration::ZERO,
            Scenario::LeaderKill => Duration::from_secs(10),
        }
    }
}

/// A SIGKILL the bench delivered during a run.
pub(crate) struct KillEvent {
    pub name: String,
    /// Since the start of the run.
    pub at: Duration,
    pub unix_ms: u64,
}

impl KillEvent {
    pub(crate) fn now(name: String, start: std::time::Instant) -> Self {
        Self {
            name,
            at: start.elapsed(),
            unix_ms: unix_ms(),
        }
    }
}

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(crate) fn kill_report(
    stats: &LoadStats,
    kill: KillEvent,
    verification: Option<&roomkeeper::Verification>,
) -> KillReport {
    let (gap, gap_start) = stats.longest_gap_ms();
    let kill_ms = kill.at.as_millis() as u64;
    let first_ok_after_kill_ms = stats
        .slots
        .iter()
        .enumerate()
        .skip(kill_ms as usize + 1)
        .find(|(_, c)| **c > 0)
        .map(|(i, _)| i as u64 - kill_ms);
    KillReport {
        killed: kill.name,
        kill_at_ms: kill_ms,
        kill_unix_ms: kill.unix_ms,
        longest_gap_ms: gap,
        gap_start_ms: gap_start,
        first_ok_after_kill_ms,
        acknowledged: stats.ok_total,
        verified: verification.map(|v| v.verified),
        lost: verification.map(|v| v.lost),
        mismatched: verification.map(|v| v.mismatched),
        unverifiable: verification.map(|v| v.unverifiable),
    }
}

#[derive(Serialize)]
struct JsonReport<'a> {
    tool: &'static str,
    version: &'static str,
    run_id: &'a str,
    started_unix_ms: u64,
    host: HostInfo,
    config: JsonConfig<'a>,
    /// Per target, the round with the median orders/s.
    results: &'a [TargetResult],
    /// Every round (with `--rounds` > 1).
    #[serde(skip_serializing_if = "<[TargetResult]>::is_empty")]
    all_rounds: &'a [TargetResult],
    targets: &'a [report::TargetCheck],
}

#[derive(Serialize)]
struct HostInfo {
    cores: usize,
    kernel: Option<String>,
}

#[derive(Serialize)]
struct JsonConfig<'a> {
    rounds: u32,
    scenario: Scenario,
    catalog: Catalog,
    skus: usize,
    clients: &'a [usize],
    warmup_secs: u64,
    duration_secs: u64,
    target: TargetSel,
    room: &'a str,
    etcd_spread: bool,
    external_roomkeeper: bool,
}

fn validate(args: &BenchArgs) -> std::result::Result<(), BenchError> {
    let invalid = |why: &str| Err(BenchError::InvalidArgs(why.to_string()));
    if args.clients.is_empty() || args.clients.contains(&0) {
        return invalid("--clients must be at least 1 (each count of a sweep too)");
    }
    if args.clients.len() > 12 {
        return invalid("--clients takes at most 12 counts");
    }
    if args.clients.len() > 1 && args.scenario == Scenario::LeaderKill {
        return invalid("--scenario leader-kill takes one --clients count");
    }
    if args.rounds == 0 || args.rounds > 20 {
        return invalid("--rounds must be between 1 and 20");
    }
    if args.duration_secs == 0 {
        return invalid("--duration-secs must be at least 1");
    }
    if args.duration_secs > 3600 || args.warmup_secs > 600 {
        return invalid("--duration-secs is limited to 3600 and --warmup-secs to 600");
    }
    if args.scenario == Scenario::LeaderKill {
        if matches!(
            args.target,
            TargetSel::Redis | TargetSel::RedisBenchmark | TargetSel::Nats
        ) {
            return invalid(
                "--scenario leader-kill applies to roomkeeper and etcd (Redis runs one node; \
                 the NATS peer has no kill scenario yet)",
            );
        }
        if let Some(k) = args.kill_at_secs {
            let end = (args.warmup_secs + args.duration_secs) as f64;
            if !(args.warmup_secs as f64..end).contains(&k) {
                return invalid(&format!(
                    "--kill-at-secs must fall inside the measurement ({}..{end} s)",
                    args.warmup_secs
                ));
            }
        }
    }
    if args.roomkeeper_api.is_empty() && !args.roomkeeper_admin.is_empty() {
        return invalid("--roomkeeper-admin only makes sense with --roomkeeper-api");
    }
    Ok(())
}

async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = tokio::signal::ctrl_c() => "Ctrl-C",
                _ = term.recv() => "SIGTERM",
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                "Ctrl-C"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}

/// Runs every target `args.rounds` times at `ctx.clients`; returns the
/// median round per target and every round.
async fn run_targets(
    args: &BenchArgs,
    ctx: &Ctx,
    targets: &[TargetSel],
    roomkeeper_failure: &mut Option<anyhow::Error>,
) -> (Vec<TargetResult>, Vec<TargetResult>) {
    eprintln!(
        "roomkeeper bench: run {} · {} · {} catalog ({} SKUs) · {} clients · {} s warm-up + {} s measured",
        ctx.run_id,
        ctx.scenario.name(),
        ctx.catalog.name(),
        ctx.catalog.skus(),
        ctx.clients,
        args.warmup_secs,
        args.duration_secs
    );

    // Every round runs every target once, in turn; a target whose binary is
    // missing is skipped once and not retried.
    let mut rounds: Vec<Vec<TargetResult>> = vec![Vec::new(); targets.len()];
    for round in 1..=args.rounds {
        if args.rounds > 1 {
            eprintln!("\n##### round {round} of {}", args.rounds);
        }
        for (i, t) in targets.iter().enumerate() {
            if rounds[i].iter().any(|r| r.status == Status::Skipped) {
                continue;
            }
            let (name, client, outcome) = match t {
                TargetSel::Etcd => (etcd::TARGET, etcd::CLIENT.into(), etcd::run(ctx).await),
                TargetSel::Redis => (redis::TARGET, redis::CLIENT.into(), redis::run(ctx).await),
                TargetSel::RedisBenchmark => (
                    redis::RB_TARGET,
                    redis::RB_CLIENT.into(),
                    redis::run_redis_benchmark(ctx).await,
                ),
                TargetSel::Nats => (nats::TARGET, nats::CLIENT.into(), nats::run(ctx).await),
                TargetSel::Roomkeeper | TargetSel::All => (
                    roomkeeper::TARGET,
                    roomkeeper::client_name(ctx),
                    roomkeeper::run(ctx).await,
                ),
            };
            let mut result = match outcome {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("\n!!!!! FAILED {name}: {e:#}\n");
                    let r = TargetResult::failed(
                        name,
                        ctx.scenario.name(),
                        ctx.catalog.name(),
                        ctx.clients,
                        format!("{e:#}"),
                    );
                    if name == roomkeeper::TARGET {
                        roomkeeper_failure.get_or_insert(e);
                    }
                    r
                }
            };
            result.client = client;
            rounds[i].push(result);
        }
    }
    let every: Vec<TargetResult> = rounds.iter().flatten().cloned().collect();
    let medians: Vec<TargetResult> = rounds
        .into_iter()
        .filter_map(report::median_round)
        .collect();
    (medians, every)
}

/// Runs the benchmark. Servers the bench started are torn down on every
/// path: normally, on error, and on Ctrl-C / SIGTERM (the run future is
/// dropped, which SIGKILLs every child and removes the scratch directories).
pub async fn run(args: BenchArgs) -> std::result::Result<(), BenchError> {
    validate(&args)?;
    tokio::select! {
        r = run_inner(&args) => r,
        sig = shutdown_signal() => Err(BenchError::Interrupted(sig)),
    }
}

async fn run_inner(args: &BenchArgs) -> std::result::Result<(), BenchError> {
    let run_id = procs::random_hex(4).map_err(BenchError::Start)?;
    let started_unix_ms = unix_ms();
    let room = args
        .room
        .clone()
        .unwrap_or_else(|| format!("bench-{run_id}"));
    let targets: Vec<TargetSel> = match (args.target, args.scenario) {
        (TargetSel::All, Scenario::Steady) => {
            vec![
                TargetSel::Etcd,
                TargetSel::Redis,
                TargetSel::RedisBenchmark,
                TargetSel::Nats,
                TargetSel::Roomkeeper,
            ]
        }
        (TargetSel::All, Scenario::LeaderKill) => vec![TargetSel::Etcd, TargetSel::Roomkeeper],
        (one, _) => vec![one],
    };
    let mut results: Vec<TargetResult> = Vec::new();
    let mut all_results: Vec<TargetResult> = Vec::new();
    let mut roomkeeper_failure = None;
    for (n, &clients) in args.clients.iter().enumerate() {
        let ctx = Ctx {
            room: if args.clients.len() > 1 {
                format!("{room}-c{clients}")
            } else {
                room.clone()
            },
            run_id: run_id.clone(),
            catalog: args.catalog,
            clients,
            warmup: Duration::from_secs(args.warmup_secs),
            duration: Duration::from_secs(args.duration_secs),
            scenario: args.scenario,
            kill_at_secs: args.kill_at_secs,
            keep_dir: args.keep_dir,
            etcd_bin: args.etcd_bin.clone(),
            redis_bin: args.redis_bin.clone(),
            redis_benchmark_bin: args.redis_benchmark_bin.clone(),
            nats_bin: args.nats_bin.clone(),
            etcd_spread: args.etcd_spread,
            rk_api: args.roomkeeper_api.clone(),
            rk_admin: args.roomkeeper_admin.clone(),
            client_token: args.client_token.clone(),
            admin_token: args.admin_token.clone(),
            node_log: args.node_log.clone(),
            http_tls: args.http_tls,
            rk_client: args.roomkeeper_client,
            framed_connections: args.framed_connections,
            node_bin: args.node_bin.clone(),
        };
        if args.clients.len() > 1 {
            eprintln!(
                "\n======== client count {} of {}: {clients} clients",
                n + 1,
                args.clients.len()
            );
        }
        let (medians, every) = run_targets(args, &ctx, &targets, &mut roomkeeper_failure).await;
        results.extend(medians);
        all_results.extend(every);
    }
    let checks = report::evaluate_targets(&results);
    println!();
    print!("{}", report::format_table(&results));
    println!("\nclients:");
    print!("{}", report::format_clients(&results));
    let cpu = report::format_cpu(&results);
    if !cpu.is_empty() {
        println!("\nCPU µs per answered order in the window (kernel accounting; servers in start order):");
        print!("{cpu}");
    }
    let kill_table = report::format_kill_table(&results);
    if !kill_table.is_empty() {
        println!("\nleader killed (SIGKILL) under load:");
        print!("{kill_table}");
    }
    for r in &results {
        if r.status == Status::Ok && !r.error_samples.is_empty() {
            println!(
                "\n{} error samples: {}",
                r.target,
                r.error_samples.join(" | ")
            );
        }
        if let Some(a) = &r.audit {
            println!(
                "{} audit: store sold {} units; bench saw {} acknowledged, {} unknown outcome: {}",
                r.target,
                a.sold,
                a.acknowledged,
                a.unknown,
                if a.ok { "consistent" } else { "INCONSISTENT" }
            );
        }
    }
    if checks.is_empty() {
        println!(
            "\n(no issue target applies: targets compare roomkeeper with its peers in the same run, \
             at hot/64, wide/256 and leader-kill/64 clients)"
        );
    } else {
        println!("\ntargets (issues 2 and 14):");
        print!("{}", report::format_targets(&checks));
    }

    if let Some(path) = &args.json {
        let doc = JsonReport {
            tool: "roomkeeper bench",
            version: env!("CARGO_PKG_VERSION"),
            run_id: &run_id,
            started_unix_ms,
            host: HostInfo {
                cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
                kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                    .ok()
                    .map(|s| s.trim().to_string()),
            },
            config: JsonConfig {
                rounds: args.rounds,
                scenario: args.scenario,
                catalog: args.catalog,
                skus: args.catalog.skus(),
                clients: &args.clients,
                warmup_secs: args.warmup_secs,
                duration_secs: args.duration_secs,
                target: args.target,
                room: &room,
                etcd_spread: args.etcd_spread,
                external_roomkeeper: !args.roomkeeper_api.is_empty(),
            },
            results: &results,
            all_rounds: if args.rounds > 1 { &all_results } else { &[] },
            targets: &checks,
        };
        let written = serde_json::to_string_pretty(&doc)
            .map_err(std::io::Error::from)
            .and_then(|text| std::fs::write(path, text + "\n"));
        written.map_err(|source| BenchError::WriteResults {
            path: path.clone(),
            source,
        })?;
        eprintln!("results written to {}", path.display());
    }
    if let Some(path) = &args.plot {
        let title = format!(
            "roomkeeper bench {}: {} catalog ({} SKUs), {} s measured per point",
            run_id,
            args.catalog.name(),
            args.catalog.skus(),
            args.duration_secs
        );
        match plot::svg(&results, &title) {
            Some(svg) => {
                std::fs::write(path, svg).map_err(|source| BenchError::WriteResults {
                    path: path.clone(),
                    source,
                })?;
                eprintln!("plot written to {}", path.display());
            }
            None => eprintln!("no plot: no target was measured"),
        }
    }

    if let Some(e) = roomkeeper_failure {
        return Err(BenchError::Roomkeeper(e));
    }
    for r in all_results
        .iter()
        .filter(|r| r.target == roomkeeper::TARGET)
    {
        if let Some(k) = &r.leader_kill {
            if k.lost.unwrap_or(0) > 0 || k.mismatched.unwrap_or(0) > 0 {
                return Err(BenchError::OrdersLost {
                    lost: k.lost.unwrap_or(0),
                    mismatched: k.mismatched.unwrap_or(0),
                });
            }
        }
        if let Some(a) = &r.audit {
            if !a.ok {
                return Err(BenchError::AuditFailed {
                    sold: a.sold,
                    acknowledged: a.acknowledged,
                    unknown: a.unknown,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn parse(args: &[&str]) -> BenchArgs {
        Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))
            .unwrap()
            .bench
    }

    #[test]
    fn defaults_match_the_docs() {
        let a = parse(&[]);
        assert_eq!(a.duration_secs, 10);
        assert_eq!(a.warmup_secs, 2);
        assert_eq!(a.clients, vec![64]);
        assert_eq!(a.catalog, Catalog::Hot);
        assert_eq!(a.target, TargetSel::All);
        assert_eq!(a.scenario, Scenario::Steady);
        assert!(validate(&a).is_ok());
    }

    #[test]
    fn flags_parse() {
        let a = parse(&[
            "--catalog",
            "wide",
            "--clients",
            "256",
            "--target",
            "etcd",
            "--scenario",
            "leader-kill",
            "--roomkeeper-api",
            "127.0.0.1:1,127.0.0.1:2",
        ]);
        assert_eq!(a.catalog, Catalog::Wide);
        assert_eq!(a.clients, vec![256]);
        assert_eq!(a.target, TargetSel::Etcd);
        assert_eq!(a.scenario, Scenario::LeaderKill);
        assert_eq!(a.roomkeeper_api, vec!["127.0.0.1:1", "127.0.0.1:2"]);
    }

    #[test]
    fn nonsense_is_refused() {
        assert!(validate(&parse(&["--clients", "0"])).is_err());
        assert!(validate(&parse(&["--clients", "8,0,64"])).is_err());
        assert!(validate(&parse(&["--clients", "8,64", "--scenario", "leader-kill"])).is_err());
        let sweep = parse(&["--clients", "8,16,64", "--plot", "/tmp/x.svg"]);
        assert_eq!(sweep.clients, vec![8, 16, 64]);
        assert!(validate(&sweep).is_ok());
        assert!(validate(&parse(&["--scenario", "leader-kill", "--target", "redis"])).is_err());
        assert!(validate(&parse(&[
            "--scenario",
            "leader-kill",
            "--kill-at-secs",
            "1"
        ]))
        .is_err());
        assert!(validate(&parse(&["--roomkeeper-admin", "127.0.0.1:1"])).is_err());
        assert!(matches!(
            validate(&parse(&["--rounds", "0"])),
            Err(BenchError::InvalidArgs(why)) if why.contains("--rounds")
        ));
    }

    #[test]
    fn errors_keep_their_cause() {
        use std::error::Error as _;
        let e = BenchError::Roomkeeper(anyhow::anyhow!("node 2 exited"));
        assert_eq!(e.to_string(), "roomkeeper failed during the bench");
        assert_eq!(
            e.source().map(|s| s.to_string()).as_deref(),
            Some("node 2 exited")
        );
        let lost = BenchError::OrdersLost {
            lost: 2,
            mismatched: 0,
        };
        assert!(lost.to_string().contains("lost 2 and altered 0"));
    }

    #[test]
    fn kill_report_measures_gap_and_recovery() {
        let mut stats = LoadStats {
            warmup_ms: 2,
            end_ms: 20,
            ok_total: 9,
            ..LoadStats::default()
        };
        stats.slots = vec![1; 25];
        for s in &mut stats.slots[8..13] {
            *s = 0;
        }
        let event = |ms| KillEvent {
            name: "node 1".into(),
            at: Duration::from_millis(ms),
            unix_ms: 1,
        };
        let k = kill_report(&stats, event(7), None);
        assert_eq!(k.longest_gap_ms, 5);
        assert_eq!(k.gap_start_ms, 8);
        assert_eq!(k.first_ok_after_kill_ms, Some(6));
        let k = kill_report(&stats, event(2), None);
        assert_eq!(k.first_ok_after_kill_ms, Some(1));
        assert_eq!(k.lost, None);
    }
}
