//! The control loop, written once: observation → health snapshot → playbook
//! engine → actuator, with every decision and outcome written to a journal
//! and the engine's memory saved after each tick (and before any decision
//! is carried out), so a restarted controller carries on where it stopped. Generic over the binding's seams
//! ([`Actuate`], [`MemoryStore`], [`Journal`]); the local processes and the
//! operator run this same code.

use std::collections::{BTreeMap, VecDeque};

use roomkeeper_api::NodeId;
use roomkeeper_playbook::{
    validate_for_regions, ActionKind, ActionOutcome, Decision, DecisionId, Disposition, Engine,
    EngineMemory, Guard, GuardBudgets, HealthSnapshot, MemoryError, OperatorCommand, Phase,
    Playbook, Target,
};

use crate::actuate::{carry_out, carry_out_into, gate_drift, ActError, Actuate, Constraints};
use crate::load::EndpointSignal;
use crate::memory_store::{Journal, MemoryStore, StoreError};
use crate::metrics::ControlMetrics;
use crate::observation::ClusterObservation;
use crate::snapshot::{self, SnapshotRules};

/// Errors of the control loop.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("the playbook is invalid: {0}")]
    InvalidPlaybook(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Recent decisions kept in words for status views.
const RECENT: usize = 50;

/// The engine's state between ticks, for one cluster.
pub struct ControlLoop {
    playbook: Playbook,
    rules: SnapshotRules,
    memory: EngineMemory,
    /// Snapshots of the playbook's look-back window, oldest first; a `Vec`
    /// so the engine borrows it as a slice.
    history: Vec<HealthSnapshot>,
    /// What the store holds, to skip writes that change nothing.
    saved: Option<String>,
    /// What is left of every guard's budget after the last tick, computed
    /// once per tick for the metrics and for status views.
    budgets: Option<GuardBudgets>,
    /// Recent decisions in words, newest last, for status views.
    pub recent: VecDeque<String>,
    pub metrics: Option<ControlMetrics>,
}

fn validated(playbook: &Playbook, regions_total: u32) -> Result<(), ControlError> {
    validate_for_regions(playbook, regions_total).map_err(|errs| {
        ControlError::InvalidPlaybook(
            errs.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        )
    })
}

fn phase_words(p: &Phase) -> String {
    match p {
        Phase::Escalate => "escalate".into(),
        Phase::StandDown => "stand down".into(),
        Phase::Escalation => "escalated to a human".into(),
        Phase::Operator { requested_by, .. } => format!("command of {requested_by}"),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl ControlLoop {
    /// Starts the loop on the memory an earlier controller left in `store`.
    /// Actions that were executing when that controller stopped have an
    /// unknown fate: they are closed as failed, so the engine decides again
    /// rather than repeating them blindly.
    pub async fn open<S: MemoryStore>(
        store: &mut S,
        playbook: Playbook,
        regions_total: u32,
    ) -> Result<Self, ControlError> {
        validated(&playbook, regions_total)?;
        let mut memory = store.load().await?.unwrap_or_default();
        let open: Vec<u64> = memory.open_actions().iter().map(|d| d.id).collect();
        for id in open {
            let _ = memory.record_outcome(
                id,
                ActionOutcome::Failed {
                    at_ms: now_ms(),
                    error: "the controller restarted before the outcome was known".into(),
                },
            );
        }
        Ok(Self {
            rules: SnapshotRules::from_playbook(&playbook, regions_total),
            playbook,
            memory,
            history: Vec::new(),
            saved: None,
            budgets: None,
            recent: VecDeque::new(),
            metrics: ControlMetrics::new()
                .map_err(|e| tracing::warn!(error = %e, "control metrics unavailable"))
                .ok(),
        })
    }

    pub fn playbook(&self) -> &Playbook {
        &self.playbook
    }

    /// Takes a changed playbook (an edited `FailoverPlaybook`); the memory
    /// and history carry over.
    pub fn set_playbook(
        &mut self,
        playbook: Playbook,
        regions_total: u32,
    ) -> Result<(), ControlError> {
        validated(&playbook, regions_total)?;
        self.rules = SnapshotRules::from_playbook(&playbook, regions_total);
        self.playbook = playbook;
        Ok(())
    }

    /// Nodes the engine quarantined (restart budget spent): bindings keep
    /// them out of leadership and buyer traffic.
    pub fn quarantined(&self) -> Vec<NodeId> {
        self.memory.quarantined_nodes().keys().copied().collect()
    }

    /// The global pause of automation (a game day hands control to humans and back).
    pub fn set_paused(&mut self, paused: bool) {
        self.playbook.paused = paused;
    }

    pub fn memory(&self) -> &EngineMemory {
        &self.memory
    }

    /// What was left of every guard's budget at the last tick (`None`
    /// before the first).
    pub fn budgets(&self) -> Option<&GuardBudgets> {
        self.budgets.as_ref()
    }

    /// The snapshot this loop would feed the engine for `obs`.
    pub fn snapshot(
        &self,
        obs: &ClusterObservation,
        signals: &BTreeMap<NodeId, EndpointSignal>,
    ) -> HealthSnapshot {
        snapshot::build(obs, signals, self.rules)
    }

    /// One tick: build the snapshot, decide, carry out `execute` decisions
    /// through `actuator`, write everything to `journal`, save the memory.
    pub async fn tick<A, S, J>(
        &mut self,
        obs: &ClusterObservation,
        signals: &BTreeMap<NodeId, EndpointSignal>,
        actuator: &mut A,
        store: &mut S,
        journal: &mut J,
    ) -> Result<Vec<Decision>, ControlError>
    where
        A: Actuate,
        S: MemoryStore,
        J: Journal,
    {
        let snap = self.snapshot(obs, signals);
        if let Some(m) = &self.metrics {
            m.observe(&snap);
        }
        let now = obs.at_ms;
        self.history.push(snap);
        let keep = self.playbook.history_needed_ms() + 10_000;
        let expired = self
            .history
            .iter()
            .take_while(|s| now.saturating_sub(s.at_ms) > keep)
            .count();
        self.history.drain(..expired);
        let before = self.memory.clone();
        let decisions = Engine::decide(&self.playbook, &self.history, now, &mut self.memory);
        // The decisions are durable before any is carried out: a controller
        // that stops in the middle of an action (an evacuation takes
        // seconds) leaves the tier active and the action open, which the
        // next one closes as failed and retries where the binding resumes,
        // instead of forgetting that the tier acted at all.
        if decisions.iter().any(|d| d.disposition.is_execute()) {
            if let Err(e) = self.save(store).await {
                // Nothing was carried out: forget this tick's decisions, so
                // the next tick decides again instead of finding steps marked
                // executed that never ran (only a restart would close them).
                self.memory = before;
                return Err(e);
            }
        }
        for d in &decisions {
            journal.decided(d).await?;
            self.remember(d);
            if let Some(m) = &self.metrics {
                m.decided(d);
            }
            if !d.disposition.is_execute() {
                continue;
            }
            let limits = Constraints {
                drained: self.memory.drained_regions().keys().cloned().collect(),
                quarantined: self.quarantined(),
                ack_ms: self.rules.replicating_ack_ms,
            };
            let result = carry_out(d, obs, actuator, &limits).await;
            let outcome = match result {
                Ok(detail) => ActionOutcome::Succeeded {
                    at_ms: now_ms(),
                    detail,
                },
                Err(error) => ActionOutcome::Failed {
                    at_ms: now_ms(),
                    error: error.to_string(),
                },
            };
            if matches!(d.action, ActionKind::RecordEvent | ActionKind::PageHuman) {
                let _ = self.memory.record_outcome(d.id, outcome);
                continue;
            }
            journal.outcome(d, &outcome).await?;
            if let (Some(m), ActionOutcome::Failed { .. }) = (&self.metrics, &outcome) {
                m.failed(d);
            }
            let line = match &outcome {
                ActionOutcome::Succeeded { detail, .. } => format!("  ↳ done: {detail}"),
                ActionOutcome::Failed { error, .. } => format!("  ↳ FAILED: {error}"),
            };
            self.push_recent(line);
            let _ = self.memory.record_outcome(d.id, outcome);
        }
        let gate_decided = decisions.iter().any(|d| {
            d.disposition.is_execute()
                && matches!(d.action, ActionKind::PauseSales | ActionKind::ResumeSales)
        });
        if !gate_decided {
            self.keep_sales_gate(obs, actuator).await;
        }
        let budgets = Engine::budgets(&self.playbook, &self.memory, now);
        if let Some(m) = &self.metrics {
            m.tiers(&self.memory);
            if let Some(snap) = self.history.last() {
                m.playbook_state(&budgets, &self.memory, snap, signals);
            }
        }
        self.budgets = Some(budgets);
        self.save(store).await?;
        Ok(decisions)
    }

    /// Sets the nodes' sales gate again where it drifted from the memory's
    /// effect (a restarted node forgets its edge gate; a replicated pause
    /// may commit late). Not a new decision: the effect is already decided,
    /// so nothing is journaled; a paused or dry-run playbook changes nothing.
    async fn keep_sales_gate<A: Actuate>(&mut self, obs: &ClusterObservation, actuator: &mut A) {
        if self.playbook.paused || self.playbook.dry_run {
            return;
        }
        let want = self.memory.sales_paused().is_some();
        let drifted = gate_drift(obs, want);
        if drifted.is_empty() {
            return;
        }
        match actuator.set_sales_paused(want).await {
            Ok(detail) => {
                tracing::info!(nodes = ?drifted, paused = want, %detail, "sales gate set again");
            }
            Err(e) => {
                tracing::warn!(nodes = ?drifted, paused = want, error = %e, "sales gate drifted and could not be set");
            }
        }
    }

    async fn save<S: MemoryStore>(&mut self, store: &mut S) -> Result<(), ControlError> {
        let text = serde_json::to_string(&self.memory)
            .map_err(|e| StoreError::Backend(format!("engine memory: {e}")))?;
        if self.saved.as_deref() != Some(text.as_str()) {
            store.save(&text).await?;
            self.saved = Some(text);
        }
        Ok(())
    }

    /// A person's answer to an approval request, through the engine
    /// memory's one approval path ([`EngineMemory::approve`] /
    /// [`EngineMemory::reject`]); the next [`Self::tick`] re-checks the
    /// guards and carries the approved action out, or records the rejection.
    /// Saved at once, so an answer is not lost to a restart before that tick.
    pub async fn answer<S: MemoryStore>(
        &mut self,
        id: DecisionId,
        approved: bool,
        by: &str,
        note: &str,
        at_ms: u64,
        store: &mut S,
    ) -> Result<Result<(), MemoryError>, ControlError> {
        let answered = if approved {
            self.memory.approve(id, by, at_ms)
        } else {
            self.memory.reject(id, by, note, at_ms)
        };
        if answered.is_ok() {
            let what = if approved { "approved" } else { "rejected" };
            self.push_recent(format!("approval request #{id} {what} by {by}"));
            self.save(store).await?;
        }
        Ok(answered)
    }

    /// Whether the engine would refuse `command` now (the guards of
    /// [`Engine::operator_command`], recorded nowhere), on the history of the
    /// ticks so far.
    pub fn refusal(&self, command: &OperatorCommand, now_ms: u64) -> Option<(Guard, String)> {
        Engine::command_refusal(&self.playbook, &self.history, now_ms, &self.memory, command)
    }

    /// A person's command (a switchover, a failover step): the engine checks
    /// and records it ([`Engine::operator_command`]), the journal gets the
    /// decision, an accepted one is carried out through `actuator` — with
    /// leadership moved into `leader_into` when given (a switchover to a
    /// named node or region) — and the outcome is journaled and remembered.
    /// Call it after a [`Self::tick`] on the same observation, so the guards
    /// see it. Returns the decision and, when it was carried out, what
    /// happened.
    #[allow(clippy::too_many_arguments)]
    pub async fn command<A, S, J>(
        &mut self,
        command: OperatorCommand,
        obs: &ClusterObservation,
        leader_into: Option<&Target>,
        actuator: &mut A,
        store: &mut S,
        journal: &mut J,
    ) -> Result<(Decision, Option<Result<String, ActError>>), ControlError>
    where
        A: Actuate,
        S: MemoryStore,
        J: Journal,
    {
        if self.history.last().is_none_or(|s| s.at_ms < obs.at_ms) {
            let snap = self.snapshot(obs, &BTreeMap::new());
            self.history.push(snap);
        }
        let d = Engine::operator_command(
            &self.playbook,
            &self.history,
            obs.at_ms,
            &mut self.memory,
            command,
        );
        journal.decided(&d).await?;
        self.remember(&d);
        if let Some(m) = &self.metrics {
            m.decided(&d);
        }
        let mut result = None;
        if d.disposition.is_execute() {
            let limits = Constraints {
                drained: self.memory.drained_regions().keys().cloned().collect(),
                quarantined: self.quarantined(),
                ack_ms: self.rules.replicating_ack_ms,
            };
            let done = match leader_into {
                Some(into) => carry_out_into(&d, obs, actuator, &limits, into).await,
                None => carry_out(&d, obs, actuator, &limits).await,
            };
            let outcome = match &done {
                Ok(detail) => ActionOutcome::Succeeded {
                    at_ms: now_ms(),
                    detail: detail.clone(),
                },
                Err(error) => ActionOutcome::Failed {
                    at_ms: now_ms(),
                    error: error.to_string(),
                },
            };
            if !d.action.is_notification() {
                journal.outcome(&d, &outcome).await?;
                if let (Some(m), ActionOutcome::Failed { .. }) = (&self.metrics, &outcome) {
                    m.failed(&d);
                }
            }
            let _ = self.memory.record_outcome(d.id, outcome);
            result = Some(done);
        }
        self.save(store).await?;
        Ok((d, result))
    }

    /// Why did (or didn't) the engine act on `target`, in words.
    pub fn explain(&self, target: &Target) -> String {
        let now = self.history.last().map_or(0, |s| s.at_ms);
        Engine::explain(&self.playbook, &self.history, now, &self.memory, target)
    }

    fn remember(&mut self, d: &Decision) {
        let disposition = match &d.disposition {
            Disposition::Execute => "EXECUTE".to_string(),
            Disposition::DryRun => "dry-run".to_string(),
            Disposition::AwaitingApproval { .. } => "awaiting approval".to_string(),
            Disposition::Suppressed { guard, .. } => format!("suppressed by {}", guard.name()),
        };
        let line = format!(
            "{} {} ({}) → {}: {}",
            d.tier,
            roomkeeper_playbook::action_phrase(d.action, &d.target),
            phase_words(&d.phase),
            disposition,
            d.reason
        );
        self.push_recent(line);
    }

    fn push_recent(&mut self, line: String) {
        self.recent.push_back(line);
        while self.recent.len() > RECENT {
            self.recent.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actuate::ActError;
    use crate::memory_store::FileStore;
    use crate::observation::NodeObservation;
    use roomkeeper_api::NodeStatus;
    use roomkeeper_playbook::default_playbook;

    /// Records what the loop asked for; restarts succeed.
    #[derive(Default)]
    struct Recorder {
        restarts: Vec<NodeId>,
        gates: Vec<bool>,
    }

    impl Actuate for Recorder {
        fn binding(&self) -> &'static str {
            "test"
        }
        async fn restart_node(&mut self, id: NodeId) -> Result<String, ActError> {
            self.restarts.push(id);
            Ok(format!("node {id} restarted"))
        }
        async fn transfer_leadership(&mut self, _: NodeId, to: NodeId) -> Result<String, ActError> {
            Ok(format!("to {to}"))
        }
        async fn set_traffic_weight(&mut self, r: &str, w: u32) -> Result<String, ActError> {
            Ok(format!("{r} at {w}"))
        }
        async fn replace_voter(&mut self, old: NodeId, _: &str) -> Result<NodeId, ActError> {
            Ok(old + 100)
        }
        async fn set_sales_paused(&mut self, p: bool) -> Result<String, ActError> {
            self.gates.push(p);
            Ok(format!("paused {p}"))
        }
    }

    fn observation(at_ms: u64, dead: u64) -> ClusterObservation {
        let regions = ["eu-west", "eu-west", "us-east", "us-east", "ap-south"];
        let nodes = (1..=5u64)
            .map(|id| {
                let alive = id != dead;
                NodeObservation {
                    node_id: id,
                    region: regions[(id - 1) as usize].into(),
                    zone: "a".into(),
                    process_alive: Some(alive),
                    healthz_ok: alive,
                    status: alive.then(|| NodeStatus {
                        node_id: id,
                        role: if id == 1 { "leader" } else { "follower" }.into(),
                        term: 1,
                        leader_id: Some(1),
                        voters: vec![1, 2, 3, 4, 5],
                        ..NodeStatus::default()
                    }),
                }
            })
            .collect();
        ClusterObservation::new(at_ms, nodes)
    }

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("roomkeeper-ctl-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[tokio::test]
    async fn engine_memory_survives_a_controller_restart_and_unknown_outcomes_are_closed() {
        let dir = temp_dir("restart");
        let mut store = FileStore::open(&dir).expect("store");
        let mut ctl = ControlLoop::open(&mut store, default_playbook(), 3)
            .await
            .expect("open");
        // Decide without acting, as a controller that died mid-action would.
        let history: Vec<HealthSnapshot> = (0..=20)
            .map(|i| ctl.snapshot(&observation(1_000_000 + i * 500, 3), &BTreeMap::new()))
            .collect();
        let now = 1_000_000 + 20 * 500;
        let decisions = Engine::decide(&ctl.playbook, &history, now, &mut ctl.memory);
        let restart = decisions
            .iter()
            .find(|d| d.action == ActionKind::RestartNode && d.disposition.is_execute())
            .expect("T1 decides to restart the dead node");
        assert_eq!(restart.target, Target::Node(3));
        ctl.save(&mut store).await.expect("save");
        let records_before = ctl.memory().records().len();
        drop(ctl);

        let ctl = ControlLoop::open(&mut store, default_playbook(), 3)
            .await
            .expect("reopen");
        assert_eq!(ctl.memory().records().len(), records_before);
        assert!(
            ctl.memory().open_actions().is_empty(),
            "open actions are closed on restart"
        );
        let why = ctl.memory().explain_last(&Target::Node(3));
        assert!(why.contains('3'), "the explanation names the node: {why}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_tick_acts_through_the_actuator_and_journals_in_one_casing() {
        let dir = temp_dir("tick");
        let mut store = FileStore::open(&dir).expect("store");
        let mut journal = store.clone();
        let mut ctl = ControlLoop::open(&mut store, default_playbook(), 3)
            .await
            .expect("open");
        let mut act = Recorder::default();
        assert!(ctl.budgets().is_none(), "no budgets before the first tick");
        for i in 0..=40 {
            let obs = observation(1_000_000 + i * 500, 3);
            ctl.tick(&obs, &BTreeMap::new(), &mut act, &mut store, &mut journal)
                .await
                .expect("tick");
        }
        assert_eq!(act.restarts.first(), Some(&3), "T1 restarted the dead node");
        // The budgets the last tick computed are kept as they were then.
        let budgets = ctl.budgets().expect("budgets after a tick");
        assert_eq!(
            budgets,
            &Engine::budgets(&ctl.playbook, &ctl.memory, 1_000_000 + 40 * 500)
        );
        assert!(
            budgets.rate_limit_used > 0,
            "the restart counts: {budgets:?}"
        );
        let log = std::fs::read_to_string(dir.join("decisions.jsonl")).expect("log");
        assert!(log.contains("\"kind\":\"outcome\""), "{log}");
        assert!(
            !log.contains("at_ms"),
            "one casing in the decision log: {log}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A store whose saves fail while `failing` (a ConfigMap write refused).
    struct FlakyStore {
        inner: FileStore,
        failing: bool,
    }

    impl MemoryStore for FlakyStore {
        async fn load(&mut self) -> Result<Option<EngineMemory>, StoreError> {
            self.inner.load().await
        }
        async fn save(&mut self, json: &str) -> Result<(), StoreError> {
            if self.failing {
                return Err(StoreError::Backend(
                    "the API server refused the write".into(),
                ));
            }
            self.inner.save(json).await
        }
    }

    #[tokio::test]
    async fn a_decision_whose_save_failed_is_not_left_executed_and_runs_once_saves_work() {
        let dir = temp_dir("flaky");
        let mut journal = FileStore::open(&dir).expect("journal");
        let mut store = FlakyStore {
            inner: FileStore::open(&dir).expect("store"),
            failing: true,
        };
        let mut ctl = ControlLoop::open(&mut store, default_playbook(), 3)
            .await
            .expect("open");
        let mut act = Recorder::default();
        let mut refused = 0;
        for i in 0..=40 {
            let obs = observation(1_000_000 + i * 500, 3);
            if ctl
                .tick(&obs, &BTreeMap::new(), &mut act, &mut store, &mut journal)
                .await
                .is_err()
            {
                refused += 1;
            }
        }
        assert!(refused > 0, "T1 wanted to act, so a save was tried");
        assert!(act.restarts.is_empty(), "nothing is carried out unsaved");
        assert!(
            ctl.memory().open_actions().is_empty(),
            "no step is left executed without having run"
        );
        store.failing = false;
        for i in 41..=60 {
            let obs = observation(1_000_000 + i * 500, 3);
            ctl.tick(&obs, &BTreeMap::new(), &mut act, &mut store, &mut journal)
                .await
                .expect("tick");
        }
        assert_eq!(
            act.restarts.first(),
            Some(&3),
            "once saves work, the restart the engine wanted goes ahead"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Looks at the saved memory whenever it is asked to act.
    struct Peek {
        dir: std::path::PathBuf,
        open_when_acting: Vec<usize>,
    }

    impl Actuate for Peek {
        fn binding(&self) -> &'static str {
            "test"
        }
        async fn restart_node(&mut self, id: NodeId) -> Result<String, ActError> {
            let mut saved =
                FileStore::open(&self.dir).map_err(|e| ActError::Failed(e.to_string()))?;
            let memory = saved
                .load()
                .await
                .map_err(|e| ActError::Failed(e.to_string()))?
                .unwrap_or_default();
            self.open_when_acting.push(memory.open_actions().len());
            Ok(format!("node {id} restarted"))
        }
        async fn transfer_leadership(&mut self, _: NodeId, to: NodeId) -> Result<String, ActError> {
            Ok(format!("to {to}"))
        }
        async fn set_traffic_weight(&mut self, r: &str, w: u32) -> Result<String, ActError> {
            Ok(format!("{r} at {w}"))
        }
        async fn replace_voter(&mut self, old: NodeId, _: &str) -> Result<NodeId, ActError> {
            Ok(old + 100)
        }
        async fn set_sales_paused(&mut self, p: bool) -> Result<String, ActError> {
            Ok(format!("paused {p}"))
        }
    }

    #[tokio::test]
    async fn a_decision_is_saved_open_before_it_is_carried_out() {
        let dir = temp_dir("open-first");
        let mut store = FileStore::open(&dir).expect("store");
        let mut journal = store.clone();
        let mut ctl = ControlLoop::open(&mut store, default_playbook(), 3)
            .await
            .expect("open");
        let mut act = Peek {
            dir: dir.clone(),
            open_when_acting: Vec::new(),
        };
        for i in 0..=40 {
            let obs = observation(1_000_000 + i * 500, 3);
            ctl.tick(&obs, &BTreeMap::new(), &mut act, &mut store, &mut journal)
                .await
                .expect("tick");
        }
        // A controller that stopped inside the restart would find it open
        // (and close it as failed) rather than no trace of the tier acting.
        assert!(
            act.open_when_acting.first().is_some_and(|n| *n >= 1),
            "the restart was saved open before it ran: {:?}",
            act.open_when_acting
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Nodes 1..=3 down (no process, no answer), 4 and 5 up without a
    /// leader, reporting their edge sales gate as `edge`.
    fn quorum_lost(at_ms: u64, edge: bool) -> ClusterObservation {
        let regions = ["eu-west", "us-east", "ap-south", "eu-west", "us-east"];
        let nodes = (1..=5u64)
            .map(|id| {
                let alive = id > 3;
                NodeObservation {
                    node_id: id,
                    region: regions[(id - 1) as usize].into(),
                    zone: "a".into(),
                    process_alive: Some(alive),
                    healthz_ok: alive,
                    status: alive.then(|| NodeStatus {
                        node_id: id,
                        role: "candidate".into(),
                        term: 3,
                        leader_id: None,
                        voters: vec![1, 2, 3, 4, 5],
                        edge_sales_paused: edge,
                        ..NodeStatus::default()
                    }),
                }
            })
            .collect();
        ClusterObservation::new(at_ms, nodes)
    }

    #[tokio::test]
    async fn the_sales_gate_is_set_again_on_nodes_that_forgot_it_while_t4_holds() {
        let dir = temp_dir("gate");
        let mut store = FileStore::open(&dir).expect("store");
        let mut journal = store.clone();
        let mut ctl = ControlLoop::open(&mut store, default_playbook(), 3)
            .await
            .expect("open");
        let mut act = Recorder::default();
        let mut t = 1_000_000;
        for _ in 0..=30 {
            ctl.tick(
                &quorum_lost(t, false),
                &BTreeMap::new(),
                &mut act,
                &mut store,
                &mut journal,
            )
            .await
            .expect("tick");
            t += 500;
        }
        assert!(ctl.memory().sales_paused().is_some(), "T4 paused sales");
        let decided = act.gates.len();
        assert!(
            decided >= 2,
            "T4 paused, then the drifted gates were set again: {:?}",
            act.gates
        );
        assert!(act.gates.iter().all(|p| *p), "only pauses: {:?}", act.gates);
        // Nodes that report their gate closed are left alone.
        for _ in 0..5 {
            ctl.tick(
                &quorum_lost(t, true),
                &BTreeMap::new(),
                &mut act,
                &mut store,
                &mut journal,
            )
            .await
            .expect("tick");
            t += 500;
        }
        assert_eq!(act.gates.len(), decided, "no call while every gate holds");
        // A paused playbook changes nothing, drift or not.
        ctl.set_paused(true);
        ctl.tick(
            &quorum_lost(t, false),
            &BTreeMap::new(),
            &mut act,
            &mut store,
            &mut journal,
        )
        .await
        .expect("tick");
        assert_eq!(
            act.gates.len(),
            decided,
            "paused automation leaves the gates alone"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_persons_answer_and_command_go_through_the_engine_and_the_actuator() {
        use roomkeeper_playbook::{Approval, OnTimeout};
        let dir = temp_dir("people");
        let mut store = FileStore::open(&dir).expect("store");
        let mut journal = store.clone();
        let mut p = default_playbook();
        let heal = p.tiers.iter_mut().find(|t| t.level == 1).expect("T1");
        heal.approval = Some(Approval {
            timeout_ms: 600_000,
            on_timeout: OnTimeout::Reject,
        });
        let mut ctl = ControlLoop::open(&mut store, p, 3).await.expect("open");
        let mut act = Recorder::default();
        let mut waiting = None;
        let mut now = 1_000_000;
        for i in 0..=40 {
            now = 1_000_000 + i * 500;
            let ds = ctl
                .tick(
                    &observation(now, 3),
                    &BTreeMap::new(),
                    &mut act,
                    &mut store,
                    &mut journal,
                )
                .await
                .expect("tick");
            if let Some(d) = ds
                .iter()
                .find(|d| matches!(d.disposition, Disposition::AwaitingApproval { .. }))
            {
                waiting = Some(d.id);
            }
        }
        let id = waiting.expect("T1 asks before restarting node 3");
        assert!(act.restarts.is_empty(), "nothing happens until approved");
        ctl.answer(id, true, "alice", "", now, &mut store)
            .await
            .expect("saved")
            .expect("accepted");
        let again = ctl
            .answer(id, false, "bob", "", now, &mut store)
            .await
            .expect("saved");
        assert!(again.is_err(), "an approval is answered once: {again:?}");
        now += 500;
        ctl.tick(
            &observation(now, 3),
            &BTreeMap::new(),
            &mut act,
            &mut store,
            &mut journal,
        )
        .await
        .expect("tick");
        assert_eq!(act.restarts, vec![3], "approved, then carried out");

        // Evacuating eu-west while node 3 (us-east) is down would leave two
        // live voters of five outside it: the engine refuses, nothing acts.
        let obs = observation(now, 3);
        let cmd = OperatorCommand {
            action: ActionKind::ReplaceVotersElsewhere,
            target: Target::Region("eu-west".into()),
            requested_by: "bob".into(),
            approved_by: None,
            reason: "drill".into(),
        };
        assert_eq!(
            ctl.refusal(&cmd, now).map(|(g, _)| g),
            Some(Guard::NeverBelowQuorum)
        );
        let (d, result) = ctl
            .command(cmd, &obs, None, &mut act, &mut store, &mut journal)
            .await
            .expect("command");
        assert!(
            matches!(
                d.disposition,
                Disposition::Suppressed {
                    guard: Guard::NeverBelowQuorum,
                    ..
                }
            ),
            "{d}"
        );
        assert!(result.is_none(), "a refused command is not carried out");
        assert_eq!(
            ctl.memory().record(d.id).map(|r| r.decision.id),
            Some(d.id),
            "recorded"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn an_invalid_playbook_is_refused_before_the_loop_starts() {
        let dir = temp_dir("bad");
        let mut store = FileStore::open(&dir).expect("store");
        let mut p = default_playbook();
        p.guards.min_regions_visible_to_act = 9;
        let err = ControlLoop::open(&mut store, p, 3)
            .await
            .err()
            .expect("refused");
        assert!(err.to_string().contains("minRegionsVisibleToAct"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
