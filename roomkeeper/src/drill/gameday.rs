//! Game days: automation is paused and a human operator is timed. The
//! operator answers on stdin: Enter when the fault is detected, the runbook
//! followed, then mitigation commands until `done`. Without an operator
//! (stdin closed or empty, as in CI) the human steps are skipped, recorded as
//! "no operator present", and automation is handed back to the playbook.
//!
//! Scored honestly: the runner shows the game day the cluster's state at
//! every tick ([`FaultState`]: nodes that do not answer, whether there is a
//! leader), and each command is judged by what it changed. A `restart <n>`
//! counts when node n was down and answers again afterwards; a `transfer` or
//! `resume` when the state improves before the next command; `heal` ends the
//! faults by fiat and never counts, and nothing that happens after the drill
//! healed its faults on schedule is credited to a command. Without a command
//! that fixed the fault
//! the score is 0, whatever was typed; with one, detection, runbook and the
//! time to recovery earn the points, each step saying why.
//!
//! The same state machine scores game days on Kubernetes
//! (`kubectl roomkeeper gameday`, [`crate::kubectl`]).

use std::collections::BTreeSet;
use std::io::{BufRead, IsTerminal};
use std::path::Path;

use roomkeeper_chaos::report::{GameDayRecord, GameDayStep};
use tokio::sync::mpsc;

/// A mitigation the operator asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Kill (if running) and start a node.
    Restart(u64),
    /// Move Raft leadership to a node.
    Transfer(u64),
    /// Hand control back to the playbook.
    ResumeAutomation,
    /// End every fault now.
    Heal,
}

/// What the fault has done to the cluster at one instant: the nodes that do
/// not answer, and whether a leader serves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultState {
    pub down: BTreeSet<u64>,
    pub has_leader: bool,
}

impl FaultState {
    /// From the runner's observation of the cluster.
    pub fn of(obs: &roomkeeper_control::observation::ClusterObservation) -> Self {
        FaultState {
            down: obs
                .nodes
                .iter()
                .filter(|n| !n.healthz_ok)
                .map(|n| n.node_id)
                .collect(),
            has_leader: obs.leader.is_some(),
        }
    }

    /// How many things are wrong (0: recovered).
    pub fn problems(&self) -> usize {
        self.down.len() + usize::from(!self.has_leader)
    }

    fn words(&self) -> String {
        let mut parts = Vec::new();
        if !self.down.is_empty() {
            let ids: Vec<String> = self.down.iter().map(u64::to_string).collect();
            parts.push(format!("node(s) {} down", ids.join(", ")));
        }
        if !self.has_leader {
            parts.push("no leader".to_string());
        }
        if parts.is_empty() {
            "healthy".to_string()
        } else {
            parts.join(", ")
        }
    }
}

/// A command the operator gave, and what it was seen to change.
#[derive(Debug, Clone)]
struct Issued {
    line: String,
    command: Command,
    at_ms: u64,
    /// The state when it was given (`None`: nothing observed yet).
    before: Option<FaultState>,
    /// When and how the state got better because of it.
    fixed: Option<(u64, String)>,
    /// A later command was given: a generic improvement is no longer its.
    superseded: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    WaitingForFault,
    Detect,
    Runbook,
    Mitigate,
    Done,
}

/// Parses one mitigation line.
pub fn parse_command(line: &str) -> Result<Option<Command>, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let node = |w: Option<&&str>| -> Result<u64, String> {
        w.and_then(|x| x.parse().ok())
            .ok_or_else(|| "give a node id, for example `restart 3`".to_string())
    };
    match words.first().copied() {
        Some("restart") => Ok(Some(Command::Restart(node(words.get(1))?))),
        Some("transfer") => Ok(Some(Command::Transfer(node(words.get(1))?))),
        Some("resume") => Ok(Some(Command::ResumeAutomation)),
        Some("heal") => Ok(Some(Command::Heal)),
        Some("done") => Ok(None),
        _ => Err(format!(
            "unknown command {line:?}: restart <node> | transfer <node> | resume | heal | done"
        )),
    }
}

/// The game-day state machine; the runner polls it every tick.
pub struct GameDay {
    rx: mpsc::UnboundedReceiver<Option<String>>,
    step: Step,
    present: bool,
    eof: bool,
    fault_at_ms: Option<u64>,
    steps: Vec<GameDayStep>,
    actions: Vec<String>,
    runbooks_dir: Option<std::path::PathBuf>,
    buffer: std::collections::VecDeque<Option<String>>,
    /// The cluster's state at the last tick.
    state: Option<FaultState>,
    /// When the fault's state was first fully repaired after a fix.
    recovered_at_ms: Option<u64>,
    issued: Vec<Issued>,
    /// When the drill healed its faults by itself (their `durationSecs` ran
    /// out): from then on nothing is credited to a command.
    faults_ended_at_ms: Option<u64>,
}

impl GameDay {
    /// Starts reading stdin on a thread. `None` lines mean end of input.
    pub fn start(runbooks_dir: Option<&Path>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            let stdin = std::io::stdin();
            for line in stdin.lock().lines() {
                match line {
                    Ok(l) => {
                        if tx.send(Some(l)).is_err() {
                            return;
                        }
                    }
                    Err(_) => break,
                }
            }
            let _ = tx.send(None);
        });
        if std::io::stdin().is_terminal() {
            eprintln!(
                "GAME DAY: automation is paused. You will be prompted when something breaks."
            );
        }
        Self::with_input(rx, runbooks_dir)
    }

    /// A game day fed from `rx` (lines; `None` = end of input).
    pub fn with_input(
        rx: mpsc::UnboundedReceiver<Option<String>>,
        runbooks_dir: Option<&Path>,
    ) -> Self {
        Self {
            rx,
            step: Step::WaitingForFault,
            present: true,
            eof: false,
            fault_at_ms: None,
            steps: Vec::new(),
            actions: Vec::new(),
            runbooks_dir: runbooks_dir.map(Path::to_path_buf),
            buffer: Default::default(),
            state: None,
            recovered_at_ms: None,
            issued: Vec::new(),
            faults_ended_at_ms: None,
        }
    }

    /// Called when the first fault is injected.
    pub fn fault_started(&mut self, at_ms: u64) {
        if self.step == Step::WaitingForFault {
            self.fault_at_ms = Some(at_ms);
            self.step = Step::Detect;
            eprintln!("\nGAME DAY: watch the progress lines. Press Enter as soon as you have detected a problem.");
        }
    }

    fn record(&mut self, step: &str, now_ms: u64, answer: Option<String>) {
        let after = self.fault_at_ms.map(|f| now_ms.saturating_sub(f));
        self.steps.push(GameDayStep {
            step: step.to_string(),
            after_fault_ms: after,
            answer,
            points: 0,
            explanation: String::new(),
        });
    }

    /// The drill healed its faults itself (their `durationSecs` ran out). A
    /// command not yet seen to fix anything is not credited for what happens
    /// next, and a recovery from here on counts only after an earlier fix.
    pub fn faults_ended(&mut self, at_ms: u64) {
        self.faults_ended_at_ms.get_or_insert(at_ms);
    }

    /// The cluster's state at a tick: judges the commands given so far.
    pub fn observe(&mut self, now_ms: u64, state: FaultState) {
        let judging = self.faults_ended_at_ms.is_none();
        for c in self
            .issued
            .iter_mut()
            .filter(|c| judging && c.fixed.is_none())
        {
            let Some(before) = &c.before else {
                continue;
            };
            let fixed = match c.command {
                // Its node was down and answers again.
                Command::Restart(n) => (before.down.contains(&n) && !state.down.contains(&n))
                    .then(|| format!("node {n} was down and answers again")),
                // Generic: things got better before the next command.
                Command::Transfer(_) | Command::ResumeAutomation => (!c.superseded
                    && state.problems() < before.problems())
                .then(|| format!("{} became {}", before.words(), state.words())),
                Command::Heal => None,
            };
            if let Some(why) = fixed {
                c.fixed = Some((now_ms, why));
            }
        }
        let any_fix = self.issued.iter().any(|c| c.fixed.is_some());
        if any_fix && self.recovered_at_ms.is_none() && state.problems() == 0 {
            self.recovered_at_ms = Some(now_ms);
        }
        self.state = Some(state);
    }

    fn issue(&mut self, line: &str, command: Command, now_ms: u64) {
        for c in &mut self.issued {
            c.superseded = true;
        }
        self.issued.push(Issued {
            line: line.trim().to_string(),
            command,
            at_ms: now_ms,
            before: self.state.clone(),
            fixed: None,
            superseded: false,
        });
    }

    /// Handles the operator's input; returns mitigations to carry out and
    /// whether the operator was just found absent.
    pub fn poll(&mut self, now_ms: u64) -> (Vec<Command>, bool) {
        while let Ok(l) = self.rx.try_recv() {
            self.buffer.push_back(l);
        }
        let mut out = Vec::new();
        if self.eof {
            return (out, false);
        }
        // A stdin that ends before any answer: nobody is there.
        if self.steps.is_empty() && matches!(self.buffer.front(), Some(None)) {
            self.eof = true;
            self.present = false;
            self.step = Step::Done;
            return (out, true);
        }
        // Input before the fault waits for the first prompt (scripted operators).
        if self.step == Step::WaitingForFault {
            return (out, false);
        }
        while self.step != Step::Done {
            let Some(line) = self.buffer.pop_front() else {
                break;
            };
            let Some(line) = line else {
                self.eof = true;
                self.step = Step::Done;
                break;
            };
            match self.step {
                Step::Detect => {
                    self.record("detected", now_ms, None);
                    self.step = Step::Runbook;
                    eprintln!("GAME DAY: which runbook are you following? (for example runbooks/tier-t1-heal.md)");
                }
                Step::Runbook => {
                    let exists = self
                        .runbooks_dir
                        .as_ref()
                        .map(|d| {
                            let name = line.trim().trim_start_matches("runbooks/");
                            !name.is_empty() && d.join(name).is_file()
                        })
                        .unwrap_or(false);
                    let answer = format!(
                        "{}{}",
                        line.trim(),
                        if exists { "" } else { " (no such runbook)" }
                    );
                    self.record("runbook chosen", now_ms, Some(answer));
                    self.step = Step::Mitigate;
                    eprintln!("GAME DAY: mitigate. Commands: restart <node> | transfer <node> | resume (hand back to automation) | heal (end the fault) | done");
                }
                Step::Mitigate => match parse_command(&line) {
                    Ok(Some(c)) => {
                        self.actions.push(line.trim().to_string());
                        self.issue(&line, c.clone(), now_ms);
                        out.push(c);
                    }
                    Ok(None) => {
                        let actions = if self.actions.is_empty() {
                            "no action".to_string()
                        } else {
                            self.actions.join("; ")
                        };
                        self.record("mitigated", now_ms, Some(actions));
                        self.step = Step::Done;
                        eprintln!("GAME DAY: mitigation recorded. The drill runs to its end.");
                    }
                    Err(e) => eprintln!("GAME DAY: {e}"),
                },
                Step::WaitingForFault | Step::Done => {}
            }
        }
        (out, false)
    }

    /// The record for the report. Scoring, per step: detection ≤ 30 s 40
    /// points (≤ 120 s 20, later 5); a runbook that exists 20; recovery
    /// (every node answers and a leader serves, after a fix) ≤ 120 s 40
    /// points (≤ 300 s 20, later 5). Commands earn nothing themselves but one
    /// must have fixed the fault, or every step's points are void: a `done`
    /// with no working action scores 0.
    pub fn finish(self, automation_resumed: bool) -> GameDayRecord {
        let scoring = "only if an operator command fixed the fault (a restart whose node answers again, a transfer or resume after which the cluster got better; heal never counts): detection ≤30 s: 40 (≤120 s: 20, later: 5); an existing runbook: 20; recovery ≤120 s after the fault: 40 (≤300 s: 20, later: 5)".to_string();
        if !self.present {
            return GameDayRecord {
                operator_present: false,
                note: format!(
                    "no operator present (stdin closed): human steps skipped{}",
                    if automation_resumed {
                        "; automation handed back to the playbook"
                    } else {
                        ""
                    }
                ),
                steps: Vec::new(),
                score: 0,
                scoring,
            };
        }
        let after = |ms: u64| self.fault_at_ms.map(|f| ms.saturating_sub(f));
        let tiered = |t: Option<u64>, good: u64, ok: u64| match t {
            Some(ms) if ms <= good * 1000 => (40, format!("≤{good} s: 40")),
            Some(ms) if ms <= ok * 1000 => (20, format!("≤{ok} s: 20")),
            Some(_) => (5, format!("after {ok} s: 5")),
            None => (0, "not done: 0".to_string()),
        };
        let secs = |ms: u64| format!("{:.1} s", ms as f64 / 1000.0);
        let mut steps = Vec::new();
        for name in ["detected", "runbook chosen"] {
            let mut st = self
                .steps
                .iter()
                .find(|s| s.step == name)
                .cloned()
                .unwrap_or(GameDayStep {
                    step: name.to_string(),
                    after_fault_ms: None,
                    answer: None,
                    points: 0,
                    explanation: String::new(),
                });
            (st.points, st.explanation) = if name == "detected" {
                let (p, rule) = tiered(st.after_fault_ms, 30, 120);
                let when = st
                    .after_fault_ms
                    .map_or_else(|| "never".to_string(), |t| format!("in {}", secs(t)));
                (p, format!("detected {when}: {rule}"))
            } else {
                match st.answer.as_deref() {
                    Some(a) if !a.ends_with("(no such runbook)") => {
                        (20, "the runbook exists: 20".to_string())
                    }
                    Some(_) => (0, "no such runbook: 0".to_string()),
                    None => (0, "no runbook named: 0".to_string()),
                }
            };
            steps.push(st);
        }
        for c in &self.issued {
            let explanation = match (&c.command, &c.fixed, &c.before) {
                (Command::Heal, _, _) => {
                    "heal ends the drill's faults by fiat: not a mitigation".to_string()
                }
                (_, _, None) => "given before the cluster was observed: not judged".to_string(),
                (_, Some((at, why)), _) => format!(
                    "changed the fault's state: {why} ({} later)",
                    secs(at.saturating_sub(c.at_ms))
                ),
                (_, None, Some(_)) if self.faults_ended_at_ms.is_some() => format!(
                    "the drill healed its faults {} after the fault began, before this command was seen to fix anything",
                    self.faults_ended_at_ms
                        .and_then(after)
                        .map_or_else(|| "-".to_string(), secs)
                ),
                (Command::Restart(n), None, Some(b)) if !b.down.contains(n) => {
                    format!("node {n} was not down: the restart only disrupted it")
                }
                (_, None, Some(b)) => format!("changed nothing: {} stayed so", b.words()),
            };
            steps.push(GameDayStep {
                step: "command".to_string(),
                after_fault_ms: after(c.at_ms),
                answer: Some(c.line.clone()),
                points: 0,
                explanation,
            });
        }
        let mitigated = self.steps.iter().find(|s| s.step == "mitigated").cloned();
        steps.push(mitigated.unwrap_or(GameDayStep {
            step: "mitigated".to_string(),
            after_fault_ms: None,
            answer: None,
            points: 0,
            explanation: "`done` never given".to_string(),
        }));
        let fixed = self.issued.iter().any(|c| c.fixed.is_some());
        let recovery = self.recovered_at_ms.and_then(after);
        let (points, rule) = tiered(recovery, 120, 300);
        steps.push(GameDayStep {
            step: "recovered".to_string(),
            after_fault_ms: recovery,
            answer: self.state.as_ref().map(FaultState::words),
            points,
            explanation: match recovery {
                Some(t) => format!(
                    "every node answers and a leader serves {} after the fault: {rule}",
                    secs(t)
                ),
                None if fixed => {
                    "a command helped, but the cluster never fully recovered: 0".to_string()
                }
                None => "not recovered by an operator action: 0".to_string(),
            },
        });
        if !fixed {
            for st in &mut steps {
                if st.points > 0 {
                    st.explanation
                        .push_str(" — void: no operator command fixed the fault");
                    st.points = 0;
                }
            }
        }
        let score = steps.iter().map(|s| s.points).sum();
        GameDayRecord {
            operator_present: true,
            note: if fixed {
                "operator present; the fault was fixed by an operator command".to_string()
            } else {
                "operator present; no operator command fixed the fault: score 0".to_string()
            },
            steps,
            score,
            scoring,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fed(lines: &[Option<&str>], runbooks: Option<&Path>) -> GameDay {
        let (tx, rx) = mpsc::unbounded_channel();
        for l in lines {
            tx.send(l.map(str::to_string)).expect("send");
        }
        GameDay::with_input(rx, runbooks)
    }

    fn down(ids: &[u64]) -> FaultState {
        FaultState {
            down: ids.iter().copied().collect(),
            has_leader: true,
        }
    }

    fn step<'a>(r: &'a GameDayRecord, name: &str) -> &'a GameDayStep {
        r.steps
            .iter()
            .find(|s| s.step == name)
            .unwrap_or_else(|| panic!("no step {name} in {r:?}"))
    }

    fn runbooks() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("rk-gd-runbooks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("tier-t1-heal.md"), "# heal").expect("runbook");
        dir
    }

    #[test]
    fn a_restart_that_brings_the_node_back_scores_and_says_why() {
        let dir = runbooks();
        let mut g = fed(
            &[
                Some(""),
                Some("runbooks/tier-t1-heal.md"),
                Some("restart 3"),
                Some("reboot everything"),
                Some("done"),
                None,
            ],
            Some(&dir),
        );
        // Input typed before the fault waits for the first prompt.
        g.observe(400, down(&[]));
        assert_eq!(g.poll(500), (vec![], false));
        g.fault_started(1_000);
        g.observe(21_000, down(&[3]));
        let (cmds, absent) = g.poll(21_000);
        assert_eq!(cmds, vec![Command::Restart(3)]);
        assert!(!absent);
        g.observe(22_000, down(&[3]));
        g.observe(24_000, down(&[]));
        let r = g.finish(false);
        assert!(r.operator_present);
        assert_eq!(r.score, 100, "{r:?}");
        let detected = step(&r, "detected");
        assert_eq!(detected.after_fault_ms, Some(20_000));
        assert_eq!(detected.points, 40);
        assert!(detected.explanation.contains("20.0 s"), "{detected:?}");
        let cmd = step(&r, "command");
        assert_eq!(cmd.answer.as_deref(), Some("restart 3"));
        assert!(
            cmd.explanation
                .contains("node 3 was down and answers again (3.0 s later)"),
            "{cmd:?}"
        );
        let recovered = step(&r, "recovered");
        assert_eq!(
            (recovered.after_fault_ms, recovered.points),
            (Some(23_000), 40)
        );
        assert_eq!(step(&r, "mitigated").answer.as_deref(), Some("restart 3"));
        assert_eq!(r.score, r.steps.iter().map(|s| s.points).sum::<u32>());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn done_alone_scores_zero_even_when_detected_fast() {
        let dir = runbooks();
        let mut g = fed(
            &[Some(""), Some("runbooks/tier-t1-heal.md"), Some("done")],
            Some(&dir),
        );
        g.fault_started(0);
        g.observe(2_000, down(&[3]));
        let _ = g.poll(2_000);
        // The node even comes back by itself: nobody fixed it.
        g.observe(30_000, down(&[]));
        let r = g.finish(false);
        assert_eq!(r.score, 0, "{r:?}");
        assert!(
            r.note.contains("no operator command fixed the fault"),
            "{}",
            r.note
        );
        let detected = step(&r, "detected");
        assert_eq!(detected.points, 0);
        assert!(detected.explanation.contains("void"), "{detected:?}");
        assert_eq!(step(&r, "mitigated").answer.as_deref(), Some("no action"));
        assert_eq!(step(&r, "recovered").points, 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn useless_commands_earn_nothing() {
        let dir = runbooks();
        let mut g = fed(
            &[
                Some(""),
                Some("runbooks/tier-t1-heal.md"),
                Some("transfer 1"),
                Some("restart 2"),
                Some("heal"),
                Some("done"),
            ],
            Some(&dir),
        );
        g.fault_started(0);
        g.observe(5_000, down(&[3]));
        let (cmds, _) = g.poll(5_000);
        assert_eq!(cmds.len(), 3);
        // heal ends the fault: the state recovers, but by fiat.
        g.observe(8_000, down(&[]));
        let r = g.finish(false);
        assert_eq!(r.score, 0, "{r:?}");
        let cmds: Vec<&GameDayStep> = r.steps.iter().filter(|s| s.step == "command").collect();
        assert_eq!(cmds.len(), 3);
        assert!(
            cmds[0].explanation.starts_with("changed nothing"),
            "{cmds:?}"
        );
        assert!(
            cmds[1].explanation.contains("node 2 was not down"),
            "{cmds:?}"
        );
        assert!(cmds[2].explanation.contains("by fiat"), "{cmds:?}");
        assert!(cmds.iter().all(|c| c.points == 0));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn resuming_automation_that_then_recovers_counts() {
        let mut g = fed(
            &[Some(""), Some("notes.md"), Some("resume"), Some("done")],
            None,
        );
        g.fault_started(0);
        g.observe(100_000, down(&[3]));
        let _ = g.poll(100_000);
        g.observe(104_000, down(&[]));
        let r = g.finish(true);
        // Detection at 100 s: 20; no runbook: 0; recovery at 104 s: 40.
        assert_eq!(r.score, 60, "{r:?}");
        assert_eq!(step(&r, "runbook chosen").points, 0);
        assert!(step(&r, "command")
            .explanation
            .contains("node(s) 3 down became healthy"));
    }

    #[test]
    fn what_the_drill_heals_by_itself_is_not_credited() {
        let mut g = fed(
            &[Some(""), Some("notes.md"), Some("restart 3"), Some("done")],
            None,
        );
        g.fault_started(0);
        g.observe(5_000, down(&[3]));
        let _ = g.poll(5_000);
        // The fault's durationSecs runs out before the restart took effect.
        g.faults_ended(9_000);
        g.observe(10_000, down(&[]));
        let r = g.finish(false);
        assert_eq!(r.score, 0, "{r:?}");
        assert!(
            step(&r, "command")
                .explanation
                .starts_with("the drill healed its faults 9.0 s after"),
            "{r:?}"
        );
        assert_eq!(step(&r, "recovered").points, 0);
    }

    #[test]
    fn a_closed_stdin_means_no_operator() {
        let mut g = fed(&[None], None);
        let (cmds, absent) = g.poll(10);
        assert!(cmds.is_empty() && absent);
        g.fault_started(1_000);
        assert_eq!(g.poll(2_000), (vec![], false));
        let r = g.finish(true);
        assert!(!r.operator_present);
        assert_eq!(r.score, 0);
        assert!(r.note.contains("no operator present"), "{}", r.note);
        assert!(r.note.contains("automation handed back"), "{}", r.note);
    }

    #[test]
    fn commands_parse_and_bad_ones_explain_themselves() {
        assert_eq!(parse_command("restart 3"), Ok(Some(Command::Restart(3))));
        assert_eq!(
            parse_command(" transfer 2 "),
            Ok(Some(Command::Transfer(2)))
        );
        assert_eq!(parse_command("resume"), Ok(Some(Command::ResumeAutomation)));
        assert_eq!(parse_command("done"), Ok(None));
        assert!(parse_command("restart x").is_err());
        assert!(parse_command("reboot")
            .unwrap_err()
            .contains("restart <node>"));
    }
}
