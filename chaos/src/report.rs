//! Drill reports: the verdict of a run, its probes, the checker's findings,
//! a timeline, and renderings as text and as a self-contained HTML page with
//! an inline SVG chart (orders/s, latency, faults as shaded bands, playbook
//! decisions as markers). Pure: the binding gathers the inputs.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::checker::Report;
use crate::drill::{phase_str, DrillPhase, DrillSpec, ProbeKind, ProbeSpec, TierExpectation};
use crate::history::{History, OpKind, OpResult};

/// Rejection codes that say "the store is not available right now", as opposed
/// to a business answer (sold out, limit exceeded…).
pub const AVAILABILITY_CODES: [&str; 7] = [
    "overloaded",
    "no_leader",
    "no_quorum",
    "not_leader",
    "outcome_unknown",
    "unavailable",
    "too_stale",
];

/// The drill's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Verdict {
    Pass,
    Fail,
    Aborted,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Aborted => "ABORTED",
        }
    }
}

/// The result of one probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeResult {
    pub name: String,
    pub kind: String,
    pub passed: bool,
    /// What was measured, in words.
    pub measured: String,
}

/// Order-level counts (an order = one idempotency key, however many attempts).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCounts {
    /// Client operations recorded (attempts and reads).
    pub ops: usize,
    /// Distinct orders (idempotency keys) tried.
    pub orders: usize,
    /// Orders acknowledged.
    pub acked: usize,
    /// Orders not acknowledged whose last answer was a refusal: sold out,
    /// limit, or not available now after every retry.
    pub refused: usize,
    /// Orders with no definite answer in the end (timed out, outcome unknown).
    pub failed: usize,
    /// Attempts with an unknown outcome (timeouts, resets, 5xx).
    pub unknown_ops: usize,
    /// Attempts that repeated an idempotency key.
    pub retries: usize,
    /// Stock reads answered.
    pub reads: usize,
}

/// One injected fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultRecord {
    pub index: usize,
    pub kind: String,
    /// What exactly was done (nodes, region, parameters).
    pub detail: String,
    pub start_ms: u64,
    /// When it was healed; `None` if it never was (a run error).
    pub end_ms: Option<u64>,
}

/// One playbook decision, for the timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionMark {
    pub at_ms: u64,
    pub tier: String,
    pub level: Option<u8>,
    pub action: String,
    pub target: String,
    pub disposition: String,
    pub reason: String,
}

/// Something that happened during the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMark {
    pub at_ms: u64,
    pub text: String,
}

/// A node's own invariant check after healing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInvariant {
    pub node: u64,
    pub ok: bool,
    pub detail: String,
}

/// One timeline bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    pub start_ms: u64,
    /// Orders acknowledged in the bucket.
    pub acked: u32,
    /// Attempts refused in the bucket (any code).
    pub rejected: u32,
    /// Attempts with an unknown outcome invoked in the bucket.
    pub unknown: u32,
    /// Order latency percentiles (first send → acknowledgement) of the bucket's acknowledgements.
    pub p50_ms: Option<u64>,
    pub p99_ms: Option<u64>,
}

/// One step a game-day operator was timed on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GameDayStep {
    pub step: String,
    /// Milliseconds after the first fault; `None` if the step was not done.
    pub after_fault_ms: Option<u64>,
    /// What the operator entered.
    pub answer: Option<String>,
    /// Points this step earned toward the score.
    #[serde(default)]
    pub points: u32,
    /// Why: the rule applied and what was measured (for a command: whether
    /// it changed the fault's state).
    #[serde(default)]
    pub explanation: String,
}

/// The human side of a game day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GameDayRecord {
    pub operator_present: bool,
    pub note: String,
    pub steps: Vec<GameDayStep>,
    /// 0–100: detection, runbook and recovery against their targets, and
    /// 0 unless an operator command fixed the fault. The sum of the steps' points.
    pub score: u32,
    pub scoring: String,
}

/// The whole report (`report.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillReport {
    pub name: String,
    pub description: Option<String>,
    pub started_unix_ms: u64,
    pub duration_ms: u64,
    pub seed: u64,
    pub verdict: Verdict,
    pub abort_reason: Option<String>,
    /// Errors of the run itself (an injector failed, the final read failed).
    pub run_errors: Vec<String>,
    pub probes: Vec<ProbeResult>,
    pub check: Report,
    pub orders: OrderCounts,
    pub faults: Vec<FaultRecord>,
    pub decisions: Vec<DecisionMark>,
    pub events: Vec<EventMark>,
    pub invariants: Vec<NodeInvariant>,
    pub timeline: Vec<Bucket>,
    pub bucket_ms: u64,
    pub game_day: Option<GameDayRecord>,
    /// What the control loop held at the end of the run (`None`: the binding
    /// reports no control-loop state).
    pub final_control: Option<ControlState>,
    /// The drill as run.
    pub spec: DrillSpec,
}

/// Per-order facts derived from a history.
#[derive(Debug, Clone)]
struct OrderFacts {
    first_invoke: u64,
    acked_at: Option<u64>,
    refused: bool,
    attempts: usize,
    /// Invocation time and whether the latest attempt was a definite refusal
    /// (any code but an unknown outcome).
    last: (u64, bool),
}

impl OrderFacts {
    /// Not acknowledged, and the store's last word was a refusal (sold out,
    /// limit, or "not available now" after every retry).
    fn refused_in_the_end(&self) -> bool {
        self.acked_at.is_none() && (self.refused || self.last.1)
    }

    /// Not acknowledged because the store gave a business answer (sold out,
    /// over the buyer's limit…): the buyer was served an answer, the store was
    /// available. Not a loss of availability.
    fn answered_by_business_rule(&self) -> bool {
        self.acked_at.is_none() && self.refused
    }
}

fn order_facts(h: &History) -> BTreeMap<(String, String), OrderFacts> {
    let mut m: BTreeMap<(String, String), OrderFacts> = BTreeMap::new();
    for op in &h.ops {
        let OpKind::PlaceOrder { buyer, key, .. } = &op.kind else {
            continue;
        };
        let f = m.entry((buyer.clone(), key.clone())).or_insert(OrderFacts {
            first_invoke: op.invoke_ms,
            acked_at: None,
            refused: false,
            attempts: 0,
            last: (op.invoke_ms, false),
        });
        f.first_invoke = f.first_invoke.min(op.invoke_ms);
        f.attempts += 1;
        if op.invoke_ms >= f.last.0 {
            let code = match &op.result {
                OpResult::Rejected { code } => Some(code.as_str()),
                _ => None,
            };
            f.last = (op.invoke_ms, code.is_some_and(|c| c != "outcome_unknown"));
        }
        match &op.result {
            OpResult::Placed { .. } => {
                if let Some(c) = op.complete_ms {
                    f.acked_at = Some(f.acked_at.map_or(c, |a| a.min(c)));
                }
            }
            OpResult::Rejected { code } if !AVAILABILITY_CODES.contains(&code.as_str()) => {
                f.refused = true;
            }
            _ => {}
        }
    }
    m
}

/// Order-level counts of a history.
pub fn order_counts(h: &History) -> OrderCounts {
    let facts = order_facts(h);
    let acked = facts.values().filter(|f| f.acked_at.is_some()).count();
    let refused = facts.values().filter(|f| f.refused_in_the_end()).count();
    OrderCounts {
        ops: h.ops.len(),
        orders: facts.len(),
        acked,
        refused,
        failed: facts.len() - acked - refused,
        unknown_ops: h
            .ops
            .iter()
            .filter(|o| matches!(o.result, OpResult::Unknown))
            .count(),
        retries: facts.values().map(|f| f.attempts.saturating_sub(1)).sum(),
        reads: h
            .ops
            .iter()
            .filter(|o| matches!(o.result, OpResult::Stock { .. }))
            .count(),
    }
}

fn percentile(sorted: &[u64], p: u32) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * f64::from(p) / 100.0).round() as usize;
    Some(sorted[i.min(sorted.len() - 1)])
}

/// Buckets of `bucket_ms` over `[0, end_ms)`.
pub fn timeline(h: &History, bucket_ms: u64, end_ms: u64) -> Vec<Bucket> {
    let bucket_ms = bucket_ms.max(1);
    let n = (end_ms.div_ceil(bucket_ms)).max(1) as usize;
    let mut buckets: Vec<Bucket> = (0..n)
        .map(|i| Bucket {
            start_ms: i as u64 * bucket_ms,
            acked: 0,
            rejected: 0,
            unknown: 0,
            p50_ms: None,
            p99_ms: None,
        })
        .collect();
    let idx = |t: u64| ((t / bucket_ms) as usize).min(n - 1);
    let mut lat: Vec<Vec<u64>> = vec![Vec::new(); n];
    for f in order_facts(h).values() {
        if let Some(a) = f.acked_at {
            buckets[idx(a)].acked += 1;
            lat[idx(a)].push(a - f.first_invoke);
        }
    }
    for op in &h.ops {
        if !matches!(op.kind, OpKind::PlaceOrder { .. }) {
            continue;
        }
        match op.result {
            OpResult::Rejected { .. } => buckets[idx(op.invoke_ms)].rejected += 1,
            OpResult::Unknown => buckets[idx(op.invoke_ms)].unknown += 1,
            _ => {}
        }
    }
    for (b, mut l) in buckets.iter_mut().zip(lat) {
        l.sort_unstable();
        b.p50_ms = percentile(&l, 50);
        b.p99_ms = percentile(&l, 99);
    }
    buckets
}

/// Where the phases of a run lie, in recorder milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Phases {
    /// First fault injected (None: no fault ran).
    pub fault_start_ms: Option<u64>,
    /// Last fault healed.
    pub fault_end_ms: Option<u64>,
    /// End of the load.
    pub end_ms: u64,
}

impl Phases {
    fn range(&self, p: DrillPhase) -> (u64, u64) {
        let start = self.fault_start_ms.unwrap_or(self.end_ms);
        let end = self.fault_end_ms.unwrap_or(self.end_ms).max(start);
        match p {
            DrillPhase::Steady => (0, start),
            DrillPhase::Fault => (start, end),
            DrillPhase::Recovery => (end, u64::MAX),
            DrillPhase::Whole => (0, u64::MAX),
        }
    }
}

/// Evaluates the hypothesis' probes. The checker's verdict and the nodes'
/// invariants are always part of the `invariants` probe; when the spec has no
/// such probe they still decide the verdict (see [`verdict`]).
pub fn evaluate(
    probes: &[ProbeSpec],
    h: &History,
    check: &Report,
    phases: &Phases,
    decisions: &[DecisionMark],
    invariants: &[NodeInvariant],
    control: &[ControlState],
) -> Vec<ProbeResult> {
    let facts = order_facts(h);
    probes
        .iter()
        .map(|p| {
            let (passed, measured) = match p.kind {
                ProbeKind::OrdersAccepted => {
                    let (a, b) = phases.range(p.phase.unwrap_or(DrillPhase::Whole));
                    // Every order the store could have taken counts:
                    // accepted, refused as unavailable (after every retry)
                    // and unknown (no definite answer) alike. An order given
                    // a business answer (sold out, over the limit) was
                    // served and is reported, not counted against.
                    let in_phase: Vec<&OrderFacts> = facts
                        .values()
                        .filter(|f| f.first_invoke >= a && f.first_invoke < b)
                        .collect();
                    let answered = in_phase
                        .iter()
                        .filter(|f| f.answered_by_business_rule())
                        .count();
                    let counted = in_phase.len() - answered;
                    let acked = in_phase.iter().filter(|f| f.acked_at.is_some()).count();
                    let unavailable = in_phase
                        .iter()
                        .filter(|f| f.refused_in_the_end() && !f.answered_by_business_rule())
                        .count();
                    let unknown = counted - acked - unavailable;
                    let min = p.min_percent.unwrap_or(0);
                    if counted == 0 {
                        (min == 0, "no orders in this phase".to_string())
                    } else {
                        let pct = acked as f64 * 100.0 / counted as f64;
                        let business = if answered > 0 {
                            format!("; {answered} more answered sold out or over the limit")
                        } else {
                            String::new()
                        };
                        (
                            pct + 1e-9 >= f64::from(min),
                            format!(
                                "{pct:.1}% accepted ({acked} of {counted} orders; {unavailable} refused as unavailable, {unknown} unknown{business})"
                            ),
                        )
                    }
                }
                ProbeKind::Latency => {
                    let (a, b) = phases.range(p.phase.unwrap_or(DrillPhase::Whole));
                    let mut l: Vec<u64> = facts
                        .values()
                        .filter(|f| f.first_invoke >= a && f.first_invoke < b)
                        .filter_map(|f| f.acked_at.map(|x| x - f.first_invoke))
                        .collect();
                    l.sort_unstable();
                    let pc = p.percentile.unwrap_or(99);
                    match percentile(&l, pc) {
                        None => (false, "no acknowledged orders in this phase".into()),
                        Some(v) => (
                            v <= p.max_ms.unwrap_or(0),
                            format!("p{pc} {v} ms over {} orders", l.len()),
                        ),
                    }
                }
                ProbeKind::Invariants => {
                    let broken: Vec<&NodeInvariant> = invariants.iter().filter(|i| !i.ok).collect();
                    let mut parts = Vec::new();
                    if check.valid {
                        parts.push(format!(
                            "history valid ({} acknowledged, {} lost)",
                            check.acknowledged,
                            check.lost.len()
                        ));
                    } else {
                        parts.push(format!("{} violation(s)", check.violations.len()));
                        for v in check.violations.iter().take(3) {
                            parts.push(v.to_string());
                        }
                    }
                    if invariants.is_empty() {
                        parts.push("no node answered the invariant check".into());
                    } else if broken.is_empty() {
                        parts.push(format!(
                            "{} node(s) report invariants intact",
                            invariants.len()
                        ));
                    } else {
                        for b in &broken {
                            parts.push(format!("node {} broke an invariant: {}", b.node, b.detail));
                        }
                    }
                    (
                        check.valid && broken.is_empty() && !invariants.is_empty(),
                        parts.join("; "),
                    )
                }
                ProbeKind::Rto => (
                    check.rto_ms <= p.max_ms.unwrap_or(0),
                    format!(
                        "longest gap between acknowledged orders {} ms",
                        check.rto_ms
                    ),
                ),
                ProbeKind::Rpo => (
                    check.rpo as u64 <= p.max.unwrap_or(0),
                    format!("{} acknowledged order(s) lost", check.rpo),
                ),
                ProbeKind::PlaybookTier => {
                    let tier = p.tier.clone().unwrap_or_default();
                    let matches = |d: &&DecisionMark| {
                        d.tier.eq_ignore_ascii_case(&tier)
                            || d.level
                                .is_some_and(|l| tier.eq_ignore_ascii_case(&format!("T{l}")))
                    };
                    let start = phases.fault_start_ms.unwrap_or(0);
                    let first = decisions.iter().filter(matches).find(|d| d.at_ms >= start);
                    match p.expect.unwrap_or(TierExpectation::Reached) {
                        TierExpectation::Reached => {
                            let within = p.within_secs.unwrap_or(0) * 1000;
                            match first {
                                Some(d) => (
                                    d.at_ms - start <= within,
                                    format!(
                                        "{} {} {} ({}) {:.1} s after the first fault",
                                        d.tier,
                                        d.action,
                                        d.target,
                                        d.disposition,
                                        (d.at_ms - start) as f64 / 1000.0
                                    ),
                                ),
                                None => (false, format!("tier {tier} never decided")),
                            }
                        }
                        TierExpectation::NotReached => {
                            let any = decisions.iter().find(matches);
                            match any {
                                Some(d) => (
                                    false,
                                    format!(
                                        "{} {} {} at {:.1} s",
                                        d.tier,
                                        d.action,
                                        d.target,
                                        d.at_ms as f64 / 1000.0
                                    ),
                                ),
                                None => (true, format!("tier {tier} never decided")),
                            }
                        }
                    }
                }
                ProbeKind::Recovery => recovery(h, phases, p.within_secs.unwrap_or(0)),
                ProbeKind::Throughput => throughput(
                    h,
                    phases,
                    p.phase.unwrap_or(DrillPhase::Fault),
                    p.min_percent_of_steady.unwrap_or(0),
                ),
                ProbeKind::FullRecovery => {
                    full_recovery(control, phases, p.within_secs.unwrap_or(0))
                }
            };
            ProbeResult {
                name: p.display_name(),
                kind: p.kind.as_str().to_string(),
                passed,
                measured,
            }
        })
        .collect()
}

fn recovery(h: &History, phases: &Phases, within_secs: u64) -> (bool, String) {
    let (Some(start), Some(end)) = (phases.fault_start_ms, phases.fault_end_ms) else {
        return (false, "no fault was healed".into());
    };
    let b = timeline(h, 1000, phases.end_ms.max(1));
    let steady: Vec<u32> = b
        .iter()
        .filter(|x| x.start_ms + 1000 <= start && x.start_ms >= 1000)
        .map(|x| x.acked)
        .collect();
    if steady.is_empty() {
        return (false, "no steady phase to compare with".into());
    }
    let rate = f64::from(steady.iter().sum::<u32>()) / steady.len() as f64;
    let back = b
        .iter()
        .find(|x| x.start_ms >= end && f64::from(x.acked) >= rate / 2.0);
    match back {
        Some(x) => {
            let after = x.start_ms + 1000 - end;
            (
                after <= within_secs * 1000,
                format!(
                    "{} orders/s {:.1} s after the last heal (steady {rate:.0}/s)",
                    x.acked,
                    after as f64 / 1000.0
                ),
            )
        }
        None => (
            false,
            format!("never back to half the steady {rate:.0} orders/s"),
        ),
    }
}

/// Accepted orders per second over `[a, b)` (by acknowledgement time).
fn accepted_rate(facts: &BTreeMap<(String, String), OrderFacts>, a: u64, b: u64) -> f64 {
    let n = facts
        .values()
        .filter_map(|f| f.acked_at)
        .filter(|t| *t >= a && *t < b)
        .count();
    n as f64 * 1000.0 / b.saturating_sub(a).max(1) as f64
}

/// Accepted orders/s in `phase` against the steady phase's rate. The steady
/// rate leaves out the first second (connections warming up).
fn throughput(h: &History, phases: &Phases, phase: DrillPhase, min_pct: u32) -> (bool, String) {
    let (Some(start), Some(end)) = (phases.fault_start_ms, phases.fault_end_ms) else {
        return (false, "no fault was injected and healed".into());
    };
    const WARM_UP_MS: u64 = 1_000;
    if start < WARM_UP_MS + 1_000 {
        return (
            false,
            "no steady phase to compare with (the first fault came within 2 s)".into(),
        );
    }
    let (a, b) = match phase {
        DrillPhase::Recovery => (end, phases.end_ms),
        _ => (start, end.max(start)),
    };
    if b <= a {
        return (false, format!("the {} phase is empty", phase_str(phase)));
    }
    let facts = order_facts(h);
    let steady = accepted_rate(&facts, WARM_UP_MS, start);
    if steady <= 0.0 {
        return (false, "no order was accepted before the fault".into());
    }
    let rate = accepted_rate(&facts, a, b);
    let pct = rate * 100.0 / steady;
    (
        pct + 1e-9 >= f64::from(min_pct),
        format!(
            "{rate:.0} accepted orders/s during the {} phase ({:.1} s) = {pct:.0}% of the steady {steady:.0}/s",
            phase_str(phase),
            (b - a) as f64 / 1000.0
        ),
    )
}

/// What the binding's control loop held at one moment of the drill: what
/// `fullRecovery` and the stranded-region check read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlState {
    /// Drill clock.
    pub at_ms: u64,
    /// Traffic weight per region (100 normal, 0 drained).
    pub weights: BTreeMap<String, u32>,
    pub sales_paused: bool,
    /// Open tier activations, in words (`T2 move on region ap-south: active`).
    pub tiers: Vec<String>,
    /// Regions at weight 0 that no active tier holds there: nobody will
    /// bring them back.
    pub stranded: Vec<String>,
    /// The elected leader, if any.
    pub leader: Option<u64>,
    /// Why the leader is not home (none elected, quarantined, in a region at
    /// weight 0); `None` when it is.
    pub leader_away: Option<String>,
}

impl ControlState {
    /// What is not back to normal, in words (empty when everything is).
    pub fn not_normal(&self) -> Vec<String> {
        let mut left: Vec<String> = self
            .weights
            .iter()
            .filter(|(_, w)| **w != 100)
            .map(|(r, w)| format!("region {r} at weight {w}"))
            .collect();
        if self.sales_paused {
            left.push("sales paused".into());
        }
        left.extend(self.tiers.iter().cloned());
        left.extend(self.leader_away.iter().cloned());
        left
    }
}

/// From when after the last heal the control loop was back to normal and
/// stayed so, against the deadline.
fn full_recovery(control: &[ControlState], phases: &Phases, within_secs: u64) -> (bool, String) {
    let Some(end) = phases.fault_end_ms else {
        return (false, "no fault was healed".into());
    };
    if control.is_empty() {
        return (
            false,
            "not measured: this binding reports no control-loop state".into(),
        );
    }
    let after: Vec<&ControlState> = control.iter().filter(|s| s.at_ms >= end).collect();
    let Some(last) = after.last() else {
        return (
            false,
            "not measured: no control-loop state after the last heal".into(),
        );
    };
    let mut since = None;
    for s in &after {
        if s.not_normal().is_empty() {
            since.get_or_insert(s.at_ms);
        } else {
            since = None;
        }
    }
    let secs = |t: u64| t.saturating_sub(end) as f64 / 1000.0;
    match since {
        Some(t) => (
            t <= end + within_secs * 1000,
            format!(
                "back to normal {:.1} s after the last heal and still at {:.1} s (leader {})",
                secs(t),
                secs(last.at_ms),
                last.leader.map_or_else(|| "none".into(), |l| l.to_string())
            ),
        ),
        None => (
            false,
            format!(
                "not back to normal {:.1} s after the last heal: {}",
                secs(last.at_ms),
                last.not_normal().join("; ")
            ),
        ),
    }
}

/// PASS iff not aborted, no run error, the checker found nothing, every node's
/// invariants hold, every probe passed and no region was left stranded (at
/// weight 0 with no active tier to bring it back) at the end.
pub fn verdict(
    aborted: bool,
    run_errors: &[String],
    check: &Report,
    invariants: &[NodeInvariant],
    probes: &[ProbeResult],
    final_control: Option<&ControlState>,
) -> Verdict {
    if aborted {
        Verdict::Aborted
    } else if run_errors.is_empty()
        && check.valid
        && invariants.iter().all(|i| i.ok)
        && probes.iter().all(|p| p.passed)
        && final_control.is_none_or(|c| c.stranded.is_empty())
    {
        Verdict::Pass
    } else {
        Verdict::Fail
    }
}

impl DrillReport {
    /// A summary for the terminal.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "drill {} — {} ({:.0} s, seed {})",
            self.name,
            self.verdict.as_str(),
            self.duration_ms as f64 / 1000.0,
            self.seed
        );
        if let Some(d) = &self.description {
            let _ = writeln!(s, "  {}", d.trim());
        }
        if let Some(a) = &self.abort_reason {
            let _ = writeln!(s, "  ABORTED: {a}");
        }
        for e in &self.run_errors {
            let _ = writeln!(s, "  run error: {e}");
        }
        for f in &self.faults {
            let _ = writeln!(
                s,
                "  fault {} {} at {:.1} s → {}: {}",
                f.index,
                f.kind,
                f.start_ms as f64 / 1000.0,
                f.end_ms
                    .map(|e| format!("{:.1} s", e as f64 / 1000.0))
                    .unwrap_or_else(|| "never healed".into()),
                f.detail
            );
        }
        let o = &self.orders;
        let _ = writeln!(
            s,
            "  orders: {} tried: {} accepted, {} refused, {} unknown; {} ops, {} with an unknown outcome, {} retries, {} stock reads",
            o.orders, o.acked, o.refused, o.failed, o.ops, o.unknown_ops, o.retries, o.reads
        );
        let c = &self.check;
        let _ = writeln!(
            s,
            "  checker: {} — {} acknowledged, lost {}, RTO {} ms, RPO {}{}",
            if c.valid { "valid" } else { "INVALID" },
            c.acknowledged,
            c.lost.len(),
            c.rto_ms,
            c.rpo,
            if c.linearizability_skipped.is_empty() {
                String::new()
            } else {
                format!(
                    ", linearizability not judged for {:?}",
                    c.linearizability_skipped
                )
            }
        );
        for v in c.violations.iter().take(10) {
            let _ = writeln!(s, "    violation: {v}");
        }
        if let Some(c) = &self.final_control {
            let left = c.not_normal();
            let _ = writeln!(
                s,
                "  control loop at the end: {}",
                if left.is_empty() {
                    "every region at weight 100, sales open, no tier active, leader home"
                        .to_string()
                } else {
                    left.join("; ")
                }
            );
            for r in &c.stranded {
                let _ = writeln!(
                    s,
                    "  STRANDED: region {r} is at weight 0 and no tier is active to restore it"
                );
            }
        }
        for p in &self.probes {
            let _ = writeln!(
                s,
                "  [{}] {} — {}",
                if p.passed { "PASS" } else { "FAIL" },
                p.name,
                p.measured
            );
        }
        if let Some(g) = &self.game_day {
            let _ = writeln!(s, "  game day: {} — score {}/100", g.note, g.score);
            for st in &g.steps {
                let _ = writeln!(
                    s,
                    "    {}: {}{} — {} pt{}",
                    st.step,
                    st.after_fault_ms
                        .map(|t| format!("{:.1} s after the fault", t as f64 / 1000.0))
                        .unwrap_or_else(|| "not done".into()),
                    st.answer
                        .as_ref()
                        .map(|a| format!(" ({a})"))
                        .unwrap_or_default(),
                    st.points,
                    if st.explanation.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", st.explanation)
                    }
                );
            }
        }
        let _ = writeln!(s, "{}", self.verdict.as_str());
        s
    }

    /// A self-contained HTML page with an inline SVG timeline.
    pub fn html(&self) -> String {
        let mut s = String::new();
        let color = match self.verdict {
            Verdict::Pass => "#1a7f37",
            Verdict::Fail => "#cf222e",
            Verdict::Aborted => "#9a6700",
        };
        let _ = write!(
            s,
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>drill {name} — {v}</title>\
<style>body{{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1000px;color:#1f2328}}\
h1{{margin-bottom:.2em}}.verdict{{display:inline-block;padding:.2em .7em;border-radius:6px;color:#fff;background:{color};font-weight:600}}\
table{{border-collapse:collapse;margin:1em 0;width:100%}}td,th{{border-bottom:1px solid #d0d7de;padding:.3em .5em;text-align:left;vertical-align:top}}\
.pass{{color:#1a7f37;font-weight:600}}.fail{{color:#cf222e;font-weight:600}}.muted{{color:#656d76}}svg text{{font:11px system-ui,sans-serif}}</style></head><body>",
            name = esc(&self.name),
            v = self.verdict.as_str()
        );
        let _ = write!(
            s,
            "<h1>Drill <code>{}</code> <span class=\"verdict\">{}</span></h1>",
            esc(&self.name),
            self.verdict.as_str()
        );
        if let Some(d) = &self.description {
            let _ = write!(s, "<p>{}</p>", esc(d));
        }
        let _ = write!(
            s,
            "<p class=\"muted\">{:.0} s of load, seed {}, {} faults, started at unix ms {}</p>",
            self.duration_ms as f64 / 1000.0,
            self.seed,
            self.faults.len(),
            self.started_unix_ms
        );
        if let Some(a) = &self.abort_reason {
            let _ = write!(s, "<p class=\"fail\">Aborted: {}</p>", esc(a));
        }
        for e in &self.run_errors {
            let _ = write!(s, "<p class=\"fail\">Run error: {}</p>", esc(e));
        }
        if let Some(c) = &self.final_control {
            for r in &c.stranded {
                let _ = write!(
                    s,
                    "<p class=\"fail\">Stranded: region {} is at weight 0 and no tier is active to restore it.</p>",
                    esc(r)
                );
            }
        }
        s.push_str(&self.svg());
        s.push_str("<h2>Hypothesis</h2><table><tr><th></th><th>probe</th><th>measured</th></tr>");
        for p in &self.probes {
            let _ = write!(
                s,
                "<tr><td class=\"{}\">{}</td><td>{}</td><td>{}</td></tr>",
                if p.passed { "pass" } else { "fail" },
                if p.passed { "PASS" } else { "FAIL" },
                esc(&p.name),
                esc(&p.measured)
            );
        }
        s.push_str("</table>");
        let c = &self.check;
        let o = &self.orders;
        let _ = write!(
            s,
            "<h2>History check</h2><table>\
<tr><td>verdict</td><td class=\"{}\">{}</td></tr>\
<tr><td>orders tried / accepted / refused / unknown</td><td>{} / {} / {} / {}</td></tr>\
<tr><td>operations / unknown outcomes / retries / stock reads</td><td>{} / {} / {} / {}</td></tr>\
<tr><td>acknowledged orders lost (RPO)</td><td>{}</td></tr>\
<tr><td>RTO (longest gap between acknowledged orders)</td><td>{} ms</td></tr>\
<tr><td>linearizability not judged for</td><td>{}</td></tr></table>",
            if c.valid { "pass" } else { "fail" },
            if c.valid { "valid" } else { "INVALID" },
            o.orders,
            o.acked,
            o.refused,
            o.failed,
            o.ops,
            o.unknown_ops,
            o.retries,
            o.reads,
            c.rpo,
            c.rto_ms,
            if c.linearizability_skipped.is_empty() {
                "—".to_string()
            } else {
                esc(&c.linearizability_skipped.join(", "))
            }
        );
        if !c.violations.is_empty() {
            s.push_str("<h3>Violations</h3><ul>");
            for v in &c.violations {
                let _ = write!(s, "<li class=\"fail\">{}</li>", esc(&v.to_string()));
            }
            s.push_str("</ul>");
        }
        s.push_str("<h2>Faults</h2><table><tr><th>#</th><th>kind</th><th>from</th><th>to</th><th>detail</th></tr>");
        for f in &self.faults {
            let _ = write!(
                s,
                "<tr><td>{}</td><td>{}</td><td>{:.1} s</td><td>{}</td><td>{}</td></tr>",
                f.index,
                esc(&f.kind),
                f.start_ms as f64 / 1000.0,
                f.end_ms
                    .map(|e| format!("{:.1} s", e as f64 / 1000.0))
                    .unwrap_or_else(|| "never healed".into()),
                esc(&f.detail)
            );
        }
        s.push_str("</table><h2>Playbook decisions</h2>");
        if self.decisions.is_empty() {
            s.push_str("<p class=\"muted\">none</p>");
        } else {
            s.push_str("<table><tr><th>at</th><th>tier</th><th>action</th><th>target</th><th>disposition</th><th>reason</th></tr>");
            for d in &self.decisions {
                let _ = write!(
                    s,
                    "<tr><td>{:.1} s</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    d.at_ms as f64 / 1000.0,
                    esc(&d.tier),
                    esc(&d.action),
                    esc(&d.target),
                    esc(&d.disposition),
                    esc(&d.reason)
                );
            }
            s.push_str("</table>");
        }
        if let Some(g) = &self.game_day {
            let _ = write!(
                s,
                "<h2>Game day</h2><p>{} — score <b>{}/100</b> <span class=\"muted\">({})</span></p><table><tr><th>step</th><th>after the fault</th><th>answer</th><th>points</th><th>why</th></tr>",
                esc(&g.note),
                g.score,
                esc(&g.scoring)
            );
            for st in &g.steps {
                let _ = write!(
                    s,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(&st.step),
                    st.after_fault_ms
                        .map(|t| format!("{:.1} s", t as f64 / 1000.0))
                        .unwrap_or_else(|| "not done".into()),
                    esc(st.answer.as_deref().unwrap_or("—")),
                    st.points,
                    esc(&st.explanation)
                );
            }
            s.push_str("</table>");
        }
        s.push_str("<h2>Node invariants after healing</h2><ul>");
        for i in &self.invariants {
            let _ = write!(
                s,
                "<li class=\"{}\">node {}: {}</li>",
                if i.ok { "pass" } else { "fail" },
                i.node,
                esc(&i.detail)
            );
        }
        s.push_str("</ul><h2>Events</h2><ul>");
        for e in &self.events {
            let _ = write!(
                s,
                "<li><span class=\"muted\">{:.1} s</span> {}</li>",
                e.at_ms as f64 / 1000.0,
                esc(&e.text)
            );
        }
        s.push_str("</ul></body></html>\n");
        s
    }

    /// The timeline chart: orders/s (bars), p99 latency (line), faults
    /// (shaded bands), playbook decisions (markers on top).
    pub fn svg(&self) -> String {
        const W: f64 = 960.0;
        const H: f64 = 320.0;
        const L: f64 = 50.0;
        const R: f64 = 50.0;
        const T: f64 = 40.0;
        const B: f64 = 40.0;
        let pw = W - L - R;
        let ph = H - T - B;
        let end = self
            .duration_ms
            .max(
                self.timeline
                    .last()
                    .map_or(1, |b| b.start_ms + self.bucket_ms),
            )
            .max(1) as f64;
        let x = |ms: u64| L + pw * (ms as f64 / end).min(1.0);
        let per_s = |n: u32| f64::from(n) * 1000.0 / self.bucket_ms.max(1) as f64;
        let max_rate = self
            .timeline
            .iter()
            .map(|b| per_s(b.acked))
            .fold(1.0f64, f64::max);
        let max_lat = self
            .timeline
            .iter()
            .filter_map(|b| b.p99_ms)
            .max()
            .unwrap_or(1)
            .max(1) as f64;
        let mut s = String::new();
        let _ = write!(
            s,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"drill timeline\">\
<rect x=\"0\" y=\"0\" width=\"{W}\" height=\"{H}\" fill=\"#fff\"/>"
        );
        // Fault bands.
        let palette = ["#cf222e", "#bf8700", "#8250df", "#0969da", "#1a7f37"];
        for (i, f) in self.faults.iter().enumerate() {
            let x0 = x(f.start_ms);
            let x1 = x(f.end_ms.unwrap_or(self.duration_ms)).max(x0 + 2.0);
            let c = palette[i % palette.len()];
            let _ = write!(
                s,
                "<g><title>fault {}: {} — {}</title><rect x=\"{x0:.1}\" y=\"{T}\" width=\"{:.1}\" height=\"{ph}\" fill=\"{c}\" fill-opacity=\"0.12\" stroke=\"{c}\" stroke-opacity=\"0.5\"/>\
<text x=\"{:.1}\" y=\"{:.1}\" fill=\"{c}\">{}</text></g>",
                f.index,
                esc(&f.kind),
                esc(&f.detail),
                x1 - x0,
                x0 + 3.0,
                T + 12.0 + 12.0 * (i % 3) as f64,
                esc(&f.kind)
            );
        }
        // Axes and grid.
        for k in 0..=4 {
            let y = T + ph * f64::from(k) / 4.0;
            let _ = write!(
                s,
                "<line x1=\"{L}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#d0d7de\" stroke-width=\"0.5\"/>\
<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#0969da\">{:.0}</text>\
<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#bc4c00\">{:.0}</text>",
                L + pw,
                L - 4.0,
                y + 4.0,
                max_rate * f64::from(4 - k) / 4.0,
                L + pw + 4.0,
                y + 4.0,
                max_lat * f64::from(4 - k) / 4.0
            );
        }
        let secs = (end / 1000.0).ceil() as u64;
        let step = [1, 2, 5, 10, 15, 30, 60, 120, 300]
            .into_iter()
            .find(|st| secs / st <= 12)
            .unwrap_or(600);
        let mut t = 0;
        while t <= secs {
            let xx = x(t * 1000);
            let _ = write!(
                s,
                "<text x=\"{xx:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#656d76\">{t}s</text>",
                T + ph + 14.0
            );
            t += step;
        }
        let _ = write!(
            s,
            "<text x=\"{L}\" y=\"{:.1}\" fill=\"#0969da\">orders/s</text><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#bc4c00\">p99 ms</text>",
            T - 6.0,
            L + pw,
            T - 6.0
        );
        // Orders/s bars.
        let bw = (pw * self.bucket_ms as f64 / end).max(1.0);
        for b in &self.timeline {
            let r = per_s(b.acked);
            let h = ph * r / max_rate;
            let _ = write!(
                s,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"#0969da\" fill-opacity=\"0.55\"><title>{:.1} s: {r:.0} orders/s, {} refused, {} unknown</title></rect>",
                x(b.start_ms),
                T + ph - h,
                (bw - 0.5).max(0.5),
                b.start_ms as f64 / 1000.0,
                b.rejected,
                b.unknown
            );
            if b.unknown > 0 {
                let _ = write!(
                    s,
                    "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"3\" fill=\"#cf222e\"/>",
                    x(b.start_ms),
                    T + ph + 1.0,
                    (bw - 0.5).max(0.5)
                );
            }
        }
        // p99 latency line.
        let pts: Vec<String> = self
            .timeline
            .iter()
            .filter_map(|b| {
                let l = b.p99_ms? as f64;
                Some(format!(
                    "{:.1},{:.1}",
                    x(b.start_ms) + bw / 2.0,
                    T + ph - ph * l / max_lat
                ))
            })
            .collect();
        if !pts.is_empty() {
            let _ = write!(
                s,
                "<polyline points=\"{}\" fill=\"none\" stroke=\"#bc4c00\" stroke-width=\"1.5\"/>",
                pts.join(" ")
            );
        }
        // Decision markers.
        for d in &self.decisions {
            let xx = x(d.at_ms);
            let executed = d.disposition == "execute";
            let _ = write!(
                s,
                "<g><title>{:.1} s {} {} {} ({}): {}</title><line x1=\"{xx:.1}\" x2=\"{xx:.1}\" y1=\"{T}\" y2=\"{:.1}\" stroke=\"#1f2328\" stroke-dasharray=\"2,3\" stroke-width=\"0.7\"/>\
<path d=\"M{:.1},{:.1} l5,-9 l-10,0 z\" fill=\"{}\"/></g>",
                d.at_ms as f64 / 1000.0,
                esc(&d.tier),
                esc(&d.action),
                esc(&d.target),
                esc(&d.disposition),
                esc(&d.reason),
                T + ph,
                xx,
                T - 1.0,
                if executed { "#1f2328" } else { "#8c959f" }
            );
        }
        s.push_str("</svg>");
        s
    }
}

/// Escapes text for HTML.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}
