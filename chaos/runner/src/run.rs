//! The run loop and the end of a drill.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use roomkeeper_chaos::drill::{AbortSpec, DrillSpec, ProbeKind};
use roomkeeper_chaos::history::{History, OpKind};
use roomkeeper_chaos::recorder::Recorder;
use roomkeeper_chaos::report::{
    evaluate, order_counts, timeline, verdict, ControlState, DecisionMark, DrillReport, EventMark,
    FaultRecord, Phases,
};
use roomkeeper_control::recorded_load::{final_read_at, Load, LoadConfig, Storm};
use roomkeeper_control::setup::{catalog_listings, create_sale_at, ListingSpec};

use crate::{unix_ms, DrillTarget, FaultInjector, ReportSink};

/// Each linearizability probe listing is used for this long.
const PROBE_WINDOW: Duration = Duration::from_secs(4);
/// How long a drill runs past its duration for a fault still playing out.
const BUSY_GRACE_MS: u64 = 90_000;
/// The loop's period.
const TICK: Duration = Duration::from_millis(500);
/// After the load, the control loop counts as back to normal once it has
/// stayed so this long.
const SETTLED_FOR_MS: u64 = 3_000;

/// One run of a drill.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The drill's name (`metadata.name`).
    pub name: String,
    pub spec: DrillSpec,
    /// Seed of every random choice (victims, buyers, skus), recorded in the report.
    pub seed: u64,
    /// The sale's room.
    pub room: String,
    /// Prefix of buyers and idempotency keys (a cluster that outlives drills
    /// needs buyers of its own per run); empty for a fresh cluster.
    pub buyer_prefix: String,
    /// Ctrl-C aborts the drill (a terminal); off in the operator.
    pub interruptible: bool,
    /// Print events and progress on stderr (a terminal); else they go to tracing.
    pub echo: bool,
    /// The retry storm's flags, shared with the injector that flips them.
    pub storm: Arc<Storm>,
}

struct Log {
    echo: bool,
    events: Vec<EventMark>,
}

impl Log {
    fn event(&mut self, at_ms: u64, text: impl Into<String>) {
        let text = text.into();
        if self.echo {
            eprintln!("[{:>6.1}s] {text}", at_ms as f64 / 1000.0);
        }
        tracing::info!(at_ms, %text, "drill event");
        self.events.push(EventMark { at_ms, text });
    }

    fn progress(&self, line: String) {
        if self.echo {
            eprintln!("{line}");
        }
        tracing::debug!(%line, "drill progress");
    }
}

/// The abort condition that holds now, if any (invariants are audited apart).
pub(crate) fn abort_now(
    abort: &AbortSpec,
    now_ms: u64,
    last_ack_ms: Option<u64>,
    unknown: u64,
) -> Option<String> {
    if let Some(secs) = abort.no_orders_for_secs {
        if now_ms.saturating_sub(last_ack_ms.unwrap_or(0)) > secs * 1000 {
            return Some(format!("no order acknowledged for {secs} s"));
        }
    }
    if let Some(max) = abort.max_unknown_ops {
        if unknown > max {
            return Some(format!(
                "{unknown} operations with an unknown outcome (limit {max})"
            ));
        }
    }
    None
}

/// What the binding's control loop did and held during the run.
#[derive(Default)]
struct Seen {
    decisions: Vec<DecisionMark>,
    control: Vec<ControlState>,
}

/// One tick of the binding's control loop (and, on a game day, the human):
/// its decisions and events are logged, what it holds afterwards is sampled.
/// Returns whether a human asked to end every fault.
async fn control_tick<T: DrillTarget>(
    target: &mut T,
    obs: &roomkeeper_control::ClusterObservation,
    start_unix: u64,
    rec: &Recorder,
    log: &mut Log,
    seen: &mut Seen,
) -> bool {
    let t = target.tick(obs, start_unix, rec.now_ms()).await;
    for d in t.decisions {
        if d.disposition == "execute" {
            log.event(
                d.at_ms,
                format!(
                    "playbook {} {} {}: {}",
                    d.tier, d.action, d.target, d.reason
                ),
            );
        }
        seen.decisions.push(d);
    }
    for e in t.events {
        log.event(rec.now_ms(), e);
    }
    if let Some(s) = target.control_state(obs, rec.now_ms()).await {
        seen.control.push(s);
    }
    t.heal_all_faults
}

/// What the loop keeps about faults.
struct Faults<'a> {
    spec: &'a DrillSpec,
    records: BTreeMap<usize, FaultRecord>,
    /// Active faults and when they heal on their schedule (drill clock).
    active: BTreeMap<usize, Option<u64>>,
    run_errors: Vec<String>,
}

impl Faults<'_> {
    async fn heal<T: DrillTarget, I: FaultInjector<T>>(
        &mut self,
        injector: &mut I,
        target: &mut T,
        log: &mut Log,
        rec: &Recorder,
        i: usize,
    ) {
        if self.active.remove(&i).is_none() {
            return;
        }
        let kind = self.spec.faults[i].kind;
        match injector.heal(target, i).await {
            Ok(what) => log.event(rec.now_ms(), format!("HEAL {i} {kind}: {what}")),
            Err(e) => {
                let msg = format!("fault {i} could not be healed: {e}");
                log.event(rec.now_ms(), msg.clone());
                self.run_errors.push(msg);
            }
        }
        if let Some(f) = self.records.get_mut(&i) {
            f.end_ms = Some(rec.now_ms());
        }
    }

    async fn heal_all<T: DrillTarget, I: FaultInjector<T>>(
        &mut self,
        injector: &mut I,
        target: &mut T,
        log: &mut Log,
        rec: &Recorder,
    ) {
        let idx: Vec<usize> = self.active.keys().copied().collect();
        for i in idx {
            self.heal(injector, target, log, rec, i).await;
        }
    }
}

/// Runs a drill against `target` with `injector`, writes its outputs through
/// `sink` and returns the report. A fault the injector cannot run is refused
/// before anything starts (`Err` naming the field).
pub async fn run<T, I, S>(
    cfg: &RunConfig,
    target: &mut T,
    injector: &mut I,
    sink: &mut S,
) -> Result<DrillReport, String>
where
    T: DrillTarget,
    I: FaultInjector<T>,
    S: ReportSink,
{
    let spec = &cfg.spec;
    injector.check(spec)?;
    target.prepare().await?;
    let client = target.client();

    // The sale, with linearizability probe listings if asked for.
    let (skus, hot, mut listings) = catalog_listings(&spec.load.catalog);
    let probe_on = spec.load.linearizability_probe.unwrap_or(true);
    let probe_skus: Vec<String> = if probe_on {
        (0..spec.duration_secs / PROBE_WINDOW.as_secs() + 2)
            .map(|i| format!("probe-{i:03}"))
            .collect()
    } else {
        Vec::new()
    };
    listings.extend(probe_skus.iter().map(|s| ListingSpec {
        sku: s.clone(),
        stock: 15,
        per_buyer_limit: 5,
    }));
    let at = target.sale_address().await?;
    create_sale_at(
        &client.http,
        &at,
        &client.token,
        &cfg.room,
        "Drill flash sale",
        &client.home_region,
        &listings,
    )
    .await
    .map_err(|e| format!("creating the sale: {e}"))?;

    let rec = Arc::new(Recorder::new());
    let start_unix = unix_ms();
    let stop = Arc::new(AtomicBool::new(false));
    let load = Load {
        cfg: Arc::new(LoadConfig {
            room: cfg.room.clone(),
            skus,
            hot_skus: hot,
            probe_skus,
            probe_window: PROBE_WINDOW,
            clients: spec.load.clients,
            think: Duration::from_millis(spec.load.think_time_ms),
            client_timeout: Duration::from_millis(spec.load.client_timeout_ms.unwrap_or(3_000)),
            retry_deadline: Duration::from_millis(spec.load.retry_deadline_ms.unwrap_or(10_000)),
            client_token: client.token.clone(),
            seed: cfg.seed,
            run_id: cfg.buyer_prefix.clone(),
        }),
        rec: rec.clone(),
        traffic: client.traffic.clone(),
        stop: stop.clone(),
        storm: cfg.storm.clone(),
        http: client.http.clone(),
        endpoints: client.endpoints.clone(),
    };
    let tasks = load.start(probe_on);
    let mut log = Log {
        echo: cfg.echo,
        events: Vec::new(),
    };
    log.event(
        0,
        format!(
            "load started: {} buyers, {} ms think time, seed {}{}",
            spec.load.clients,
            spec.load.think_time_ms,
            cfg.seed,
            if probe_on {
                ", linearizability probe on"
            } else {
                ""
            }
        ),
    );

    let mut pending: BTreeSet<usize> = (0..spec.faults.len()).collect();
    let mut faults = Faults {
        spec,
        records: BTreeMap::new(),
        active: BTreeMap::new(),
        run_errors: Vec::new(),
    };
    let mut seen = Seen::default();
    let mut abort_reason: Option<String> = None;
    let abort = spec.abort.clone().unwrap_or_default();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_progress = Instant::now();
    let mut last_invariants = Instant::now();
    let mut last_acked = 0u64;
    let end_ms = spec.duration_secs * 1000;
    let mut extended = false;
    let interrupt = async {
        if cfg.interruptible {
            let _ = tokio::signal::ctrl_c().await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::pin!(interrupt);

    loop {
        tokio::select! {
            _ = &mut interrupt => {
                abort_reason = Some("interrupted (Ctrl-C)".into());
                break;
            }
            _ = tick.tick() => {}
        }
        let now = rec.now_ms();
        if now >= end_ms {
            let busy = injector.busy();
            if busy.is_empty() || now >= end_ms + BUSY_GRACE_MS {
                break;
            }
            if !extended {
                extended = true;
                log.event(
                    now,
                    format!("the drill runs on until fault(s) {busy:?} played out"),
                );
            }
        }
        let obs = target.observe(unix_ms()).await;

        // Faults due now.
        let due: Vec<usize> = pending
            .iter()
            .copied()
            .filter(|i| spec.faults[*i].after_secs * 1000 <= now)
            .collect();
        for i in due {
            pending.remove(&i);
            let f = &spec.faults[i];
            match injector.inject(target, i, f, &obs).await {
                Ok(detail) => {
                    let at = rec.now_ms();
                    log.event(at, format!("FAULT {i} {}: {detail}", f.kind));
                    faults.records.insert(
                        i,
                        FaultRecord {
                            index: i,
                            kind: f.kind.to_string(),
                            detail,
                            start_ms: at,
                            end_ms: None,
                        },
                    );
                    faults
                        .active
                        .insert(i, f.duration_secs.map(|d| at + d * 1000));
                    target.fault_started(at);
                }
                Err(e) => {
                    let msg = format!("fault {i} {} could not be injected: {e}", f.kind);
                    log.event(rec.now_ms(), msg.clone());
                    faults.run_errors.push(msg);
                }
            }
        }
        // Faults that end now: on their schedule, or by themselves.
        let finished = injector.finished();
        let due = |heal_at: &Option<u64>| heal_at.is_some_and(|t| rec.now_ms() >= t);
        let ending: Vec<usize> = faults
            .active
            .iter()
            .filter(|(i, heal_at)| finished.contains(i) || due(heal_at))
            .map(|(i, _)| *i)
            .collect();
        // Healed because their time ran out, not because something (a
        // person, the playbook) brought their node back.
        let on_schedule = faults
            .active
            .iter()
            .any(|(i, heal_at)| !finished.contains(i) && due(heal_at));
        for i in ending {
            faults.heal(injector, target, &mut log, &rec, i).await;
        }
        if on_schedule && faults.active.is_empty() {
            target.faults_healed(rec.now_ms());
        }
        for (i, e) in injector.step(target).await {
            log.event(
                rec.now_ms(),
                format!("fault {i} {}: {e}", spec.faults[i].kind),
            );
        }

        // The binding's control loop (and, on a game day, the human).
        let heal_all = control_tick(target, &obs, start_unix, &rec, &mut log, &mut seen).await;
        if heal_all {
            faults.heal_all(injector, target, &mut log, &rec).await;
            log.event(rec.now_ms(), "operator ended every fault");
        }

        // Abort conditions.
        if let Some(r) = abort_now(&abort, now, rec.last_ack_ms(), rec.unknown()) {
            abort_reason = Some(r);
        }
        if abort.on_invariant_violation.unwrap_or(true)
            && last_invariants.elapsed() >= Duration::from_secs(5)
        {
            last_invariants = Instant::now();
            let (invs, _) = target
                .audit(&injector.paused(), Duration::from_secs(1))
                .await;
            if let Some(bad) = invs.iter().find(|i| !i.ok) {
                abort_reason = Some(format!(
                    "node {} broke an invariant: {}",
                    bad.node, bad.detail
                ));
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
            let active: Vec<String> = faults
                .active
                .keys()
                .map(|i| spec.faults[*i].kind.to_string())
                .collect();
            let note = target.progress_note();
            log.progress(format!(
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
                if note.is_empty() {
                    String::new()
                } else {
                    format!(" · {note}")
                }
            ));
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
    faults.heal_all(injector, target, &mut log, &rec).await;
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
            faults
                .run_errors
                .push("a load task did not stop in time".into());
        }
    }
    let mut run_errors = std::mem::take(&mut faults.run_errors);
    run_errors.extend(target.heal_everything().await);
    log.event(
        rec.now_ms(),
        "healed: every fault removed, the cluster settled; reading the final state",
    );
    // The control loop runs on until it is back to normal (or the
    // fullRecovery deadline passed): what it holds at the end decides
    // whether a region was left stranded.
    let last_heal = faults.records.values().filter_map(|f| f.end_ms).max();
    let deadline = spec
        .hypothesis
        .probes
        .iter()
        .filter(|p| p.kind == ProbeKind::FullRecovery)
        .filter_map(|p| p.within_secs)
        .max()
        .zip(last_heal)
        .map(|(w, h)| h + w * 1000);
    let mut normal_since: Option<u64> = None;
    loop {
        let obs = target.observe(unix_ms()).await;
        control_tick(target, &obs, start_unix, &rec, &mut log, &mut seen).await;
        let now = rec.now_ms();
        match seen.control.last() {
            Some(s) if s.not_normal().is_empty() => {
                normal_since.get_or_insert(now);
            }
            _ => normal_since = None,
        }
        let Some(deadline) = deadline else { break };
        if abort_reason.is_some()
            || now >= deadline
            || normal_since.is_some_and(|t| now >= t + SETTLED_FOR_MS)
            || seen.control.is_empty()
        {
            break;
        }
        tokio::time::sleep(TICK).await;
    }
    let Seen { decisions, control } = seen;
    let final_control = control.last().cloned();
    if let Some(c) = &final_control {
        let left = c.not_normal();
        log.event(
            rec.now_ms(),
            if left.is_empty() {
                "control loop back to normal: every region at weight 100, sales open, no tier active, leader home".to_string()
            } else {
                format!("control loop at the end: {}", left.join("; "))
            },
        );
    }

    let ops = rec.ops();
    let mut buyers: Vec<(String, String)> = ops
        .iter()
        .filter_map(|o| match &o.kind {
            OpKind::PlaceOrder { buyer, key, .. } => Some((buyer.clone(), key.clone())),
            OpKind::ReadStock { .. } => None,
        })
        .collect();
    buyers.sort();
    buyers.dedup();
    let mut history = History {
        ops,
        ..History::default()
    };
    let addrs = target.final_read_addresses().await;
    match final_read_at(&client.http, &addrs, &client.token, &cfg.room, &buyers).await {
        Ok(f) => {
            history.listings = f.listings;
            history.final_stock_left = f.stock_left;
            history.final_orders = f.orders;
        }
        Err(e) => run_errors.push(format!("final read failed: {e}")),
    }
    let (invariants, audit_errors) = target.audit(&BTreeSet::new(), Duration::from_secs(5)).await;
    run_errors.extend(audit_errors);
    let h2 = history.clone();
    let check = tokio::task::spawn_blocking(move || roomkeeper_chaos::check(&h2))
        .await
        .map_err(|e| format!("the history checker panicked: {e}"))?;

    let records = faults.records;
    let phases = Phases {
        fault_start_ms: records.values().map(|f| f.start_ms).min(),
        fault_end_ms: records.values().filter_map(|f| f.end_ms).max(),
        end_ms: load_end_ms,
    };
    let probes = evaluate(
        &spec.hypothesis.probes,
        &history,
        &check,
        &phases,
        &decisions,
        &invariants,
        &control,
    );
    let v = verdict(
        abort_reason.is_some(),
        &run_errors,
        &check,
        &invariants,
        &probes,
        final_control.as_ref(),
    );
    let bucket_ms = spec
        .record
        .as_ref()
        .and_then(|r| r.timeline_bucket_ms)
        .unwrap_or(1000);
    let report = DrillReport {
        name: cfg.name.clone(),
        description: spec.description.clone(),
        started_unix_ms: start_unix,
        duration_ms: load_end_ms,
        seed: cfg.seed,
        verdict: v,
        abort_reason,
        run_errors,
        probes,
        orders: order_counts(&history),
        check,
        faults: records.into_values().collect(),
        decisions,
        events: log.events,
        invariants,
        timeline: timeline(&history, bucket_ms, load_end_ms),
        bucket_ms,
        game_day: target.game_day(),
        final_control,
        spec: spec.clone(),
    };
    sink.write(&report, &history).await?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abort_conditions_name_what_tripped_them() {
        let abort = AbortSpec {
            no_orders_for_secs: Some(5),
            max_unknown_ops: Some(10),
            on_invariant_violation: Some(true),
        };
        assert_eq!(abort_now(&abort, 4_000, None, 0), None);
        assert_eq!(
            abort_now(&abort, 12_000, Some(6_000), 0).as_deref(),
            Some("no order acknowledged for 5 s")
        );
        assert_eq!(
            abort_now(&abort, 7_000, Some(6_000), 11).as_deref(),
            Some("11 operations with an unknown outcome (limit 10)")
        );
        assert_eq!(abort_now(&AbortSpec::default(), 99_000, None, 99), None);
    }
}
