//! The one drill runner. `roomkeeper drill run` (local processes) and a
//! `ChaosDrill` run by the operator (pods) are the same code: this crate's
//! [`run`], generic over what the drill runs against ([`DrillTarget`]), what
//! injects its faults ([`FaultInjector`]) and where its outputs go
//! ([`ReportSink`]). It owns the loop (observe, inject due faults, heal ending
//! ones, step multi-step faults, the binding's control-loop tick, abort
//! conditions, progress), the event log, heal bookkeeping, and the end of a
//! drill (heal, settle, final read, history check, probes, verdict, report).
//!
//! It knows neither processes nor Kubernetes: the local binding lives in the
//! `roomkeeper` binary (`roomkeeper/src/drill/`), the Kubernetes binding in
//! `operator/src/drill.rs`.
#![forbid(unsafe_code)]

mod run;

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use roomkeeper_chaos::drill::{DrillSpec, FaultKind, FaultSpec};
use roomkeeper_chaos::history::History;
use roomkeeper_chaos::report::{
    ControlState, DecisionMark, DrillReport, GameDayRecord, NodeInvariant,
};
use roomkeeper_control::http::JsonClient;
use roomkeeper_control::load::{EndpointStats, TrafficMap};
use roomkeeper_control::recorded_load::Storm;
use roomkeeper_control::ClusterObservation;
use roomkeeper_playbook::{Decision, Disposition, Target};

pub use run::{run, RunConfig};

/// How the load reaches the cluster's client API.
#[derive(Clone)]
pub struct ClientSide {
    pub http: JsonClient,
    pub token: String,
    /// The storefront's traffic map: endpoints and weight per region.
    pub traffic: Arc<TrafficMap>,
    /// The sale's home region.
    pub home_region: String,
    /// Where the load records what buyers feel of each endpoint; the
    /// binding turns it into the control loop's client-side signals.
    pub endpoints: Arc<EndpointStats>,
}

/// What the binding's own control loop did during one tick.
#[derive(Debug, Default)]
pub struct Tick {
    /// Decisions recorded since the previous tick.
    pub decisions: Vec<DecisionMark>,
    /// Things worth a line in the report's events.
    pub events: Vec<String>,
    /// A human asked to end every fault now (game day).
    pub heal_all_faults: bool,
}

/// What a drill runs against: a local loopback cluster or a LiveRoomCluster.
pub trait DrillTarget: Send {
    /// Starts (local) or finds (Kubernetes) the cluster; afterwards its client
    /// API answers and [`DrillTarget::client`] is valid.
    fn prepare(&mut self) -> impl Future<Output = Result<(), String>> + Send;
    /// How the load reaches the client API.
    fn client(&self) -> ClientSide;
    /// The client API address the sale is created through (the leader's).
    fn sale_address(&mut self) -> impl Future<Output = Result<String, String>> + Send;
    /// One observation of every node.
    fn observe(&mut self, at_unix_ms: u64) -> impl Future<Output = ClusterObservation> + Send;
    /// Called every tick after faults moved: the binding's control loop (the
    /// local binding ticks its own; the operator's runs anyway and is read).
    fn tick(
        &mut self,
        obs: &ClusterObservation,
        start_unix_ms: u64,
        now_ms: u64,
    ) -> impl Future<Output = Tick> + Send;
    /// Every reachable node's own invariant audit, except `skip`; the second
    /// list holds audits that could not be made.
    fn audit(
        &mut self,
        skip: &BTreeSet<u64>,
        timeout: Duration,
    ) -> impl Future<Output = (Vec<NodeInvariant>, Vec<String>)> + Send;
    /// After the injector healed its faults: bring everything back (every
    /// node running, controller up) and wait until the cluster settled.
    /// Returns errors.
    fn heal_everything(&mut self) -> impl Future<Output = Vec<String>> + Send;
    /// Client API addresses for the final read, the leader's first.
    fn final_read_addresses(&mut self) -> impl Future<Output = Vec<String>> + Send;
    /// What the control loop holds now (weights, sales, tiers, leader), on
    /// the drill clock `now_ms`; `None` when the binding cannot see it (the
    /// `fullRecovery` probe then fails as not measured).
    fn control_state(
        &mut self,
        _obs: &ClusterObservation,
        _now_ms: u64,
    ) -> impl Future<Output = Option<ControlState>> + Send {
        std::future::ready(None)
    }
    /// A fault was injected at `at_ms` (game days time the human from here).
    fn fault_started(&mut self, _at_ms: u64) {}
    /// The drill healed its last fault in force at `at_ms` (game days credit
    /// no command with what happens after).
    fn faults_healed(&mut self, _at_ms: u64) {}
    /// Extra words for the progress line (e.g. "SALES PAUSED").
    fn progress_note(&self) -> String {
        String::new()
    }
    /// The human side of a game day, if this was one.
    fn game_day(&mut self) -> Option<GameDayRecord> {
        None
    }
}

/// Injects and heals faults for one binding.
pub trait FaultInjector<T>: Send {
    /// Refuses, up front and naming the field, what this binding cannot run
    /// (`spec.faults[0].kind: pauseNode is not …`).
    fn check(&self, spec: &DrillSpec) -> Result<(), String>;
    /// Starts fault `index` without waiting for it to play out. Returns what
    /// was done, in words.
    fn inject(
        &mut self,
        target: &mut T,
        index: usize,
        fault: &FaultSpec,
        obs: &ClusterObservation,
    ) -> impl Future<Output = Result<String, String>> + Send;
    /// Ends fault `index`. Returns what was done, in words.
    fn heal(
        &mut self,
        target: &mut T,
        index: usize,
    ) -> impl Future<Output = Result<String, String>> + Send;
    /// Advances multi-step faults (flap, rolling restart) by one tick.
    /// Returns events, each with its fault's index.
    fn step(&mut self, target: &mut T) -> impl Future<Output = Vec<(usize, String)>> + Send;
    /// Active faults that ended by themselves (a rolling restart went round,
    /// a killed node is back): the runner heals (records) them now. Faults
    /// with a `durationSecs` are healed by the runner when it runs out.
    fn finished(&self) -> Vec<usize>;
    /// Active faults that must play out before the drill stops (a rolling
    /// restart still going round): the drill runs on, bounded, for them.
    fn busy(&self) -> Vec<usize> {
        Vec::new()
    }
    /// Nodes that cannot answer an audit now (stopped with SIGSTOP).
    fn paused(&self) -> BTreeSet<u64> {
        BTreeSet::new()
    }
}

/// Where a finished drill's outputs go (files; a ConfigMap).
pub trait ReportSink: Send {
    fn write(
        &mut self,
        report: &DrillReport,
        history: &History,
    ) -> impl Future<Output = Result<(), String>> + Send;
}

/// The spec is valid and asks only for fault kinds in `supported`; otherwise
/// why not, each problem naming its field. `runner` names the binding in the
/// message ("the Kubernetes drill runner").
pub fn check_kinds(spec: &DrillSpec, supported: &[FaultKind], runner: &str) -> Result<(), String> {
    if let Err(errors) = roomkeeper_chaos::drill::validate(spec) {
        return Err(errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; "));
    }
    let names: Vec<String> = supported.iter().map(ToString::to_string).collect();
    let bad: Vec<String> = spec
        .faults
        .iter()
        .enumerate()
        .filter(|(_, f)| !supported.contains(&f.kind))
        .map(|(i, f)| {
            format!(
                "spec.faults[{i}].kind: {} is not run by {runner} ({} are)",
                f.kind,
                names.join(", ")
            )
        })
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(bad.join("; "))
    }
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

/// A playbook decision as the report shows it, on the drill's clock.
pub fn mark(d: &Decision, start_unix_ms: u64) -> DecisionMark {
    DecisionMark {
        at_ms: d.at_ms.saturating_sub(start_unix_ms),
        tier: d.tier.clone(),
        level: d.level,
        action: format!("{:?}", d.action),
        target: target(&d.target),
        disposition: disposition(&d.disposition),
        reason: d.reason.clone(),
    }
}

/// Starts a `retryStorm` (client behaviour, the same for every binding):
/// short client timeouts, ambiguous orders retried with the same key.
/// Returns what was done, in words.
pub fn storm_on(storm: &Storm, f: &FaultSpec) -> String {
    let t = f.client_timeout_ms.unwrap_or(100);
    let d = f.duplicates.unwrap_or(1);
    storm.timeout_ms.store(t, Ordering::Relaxed);
    storm.duplicates.store(d, Ordering::Relaxed);
    storm.active.store(true, Ordering::Relaxed);
    format!("clients time out after {t} ms and retry each ambiguous order with the same idempotency key, {d} copies at once")
}

/// Ends a `retryStorm`.
pub fn storm_off(storm: &Storm) -> String {
    storm.active.store(false, Ordering::Relaxed);
    "clients back to their normal timeout".to_string()
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_kind_a_binding_cannot_run_is_refused_with_its_field() {
        let spec: DrillSpec = serde_yaml::from_str(
            "target: {cluster: c}\ndurationSecs: 20\nfaults:\n  - {kind: killLeader, afterSecs: 2}\n  - {kind: pauseNode, afterSecs: 4, durationSecs: 3}\nload: {clients: 2, thinkTimeMs: 10, catalog: {skus: 2, stock: 100}}\nhypothesis: {probes: [{kind: invariants}]}\n",
        )
        .unwrap();
        let why = check_kinds(&spec, &[FaultKind::KillLeader], "this runner").unwrap_err();
        assert_eq!(
            why,
            "spec.faults[1].kind: pauseNode is not run by this runner (killLeader are)"
        );
        assert_eq!(
            check_kinds(&spec, &FaultKind::ALL, "the local runner"),
            Ok(())
        );
    }
}
