//! Game days: automation is paused and a human operator is timed. The
//! operator answers on stdin: Enter when the fault is detected, the runbook
//! followed, then mitigation commands until `done`. Without an operator
//! (stdin closed or empty, as in CI) the human steps are skipped, recorded as
//! "no operator present", and automation is handed back to the playbook.

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

    /// The record for the report. Scoring: detection ≤ 30 s 40 points (≤ 120 s
    /// 20, later 5); a runbook that exists 20; mitigation ≤ 120 s 40 points
    /// (≤ 300 s 20, later 5).
    pub fn finish(self, automation_resumed: bool) -> GameDayRecord {
        let scoring = "detection ≤30 s: 40 (≤120 s: 20, later: 5); an existing runbook: 20; mitigation ≤120 s: 40 (≤300 s: 20, later: 5)".to_string();
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
        let at = |name: &str| {
            self.steps
                .iter()
                .find(|s| s.step == name)
                .and_then(|s| s.after_fault_ms)
        };
        let tiered = |t: Option<u64>, good: u64, ok: u64| match t {
            Some(ms) if ms <= good * 1000 => 40,
            Some(ms) if ms <= ok * 1000 => 20,
            Some(_) => 5,
            None => 0,
        };
        let runbook_ok = self.steps.iter().any(|s| {
            s.step == "runbook chosen"
                && s.answer
                    .as_deref()
                    .is_some_and(|a| !a.ends_with("(no such runbook)"))
        });
        let score = tiered(at("detected"), 30, 120)
            + if runbook_ok { 20 } else { 0 }
            + tiered(at("mitigated"), 120, 300);
        let mut steps = self.steps;
        for name in ["detected", "runbook chosen", "mitigated"] {
            if !steps.iter().any(|s| s.step == name) {
                steps.push(GameDayStep {
                    step: name.to_string(),
                    after_fault_ms: None,
                    answer: None,
                });
            }
        }
        GameDayRecord {
            operator_present: true,
            note: "operator present".to_string(),
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

    #[test]
    fn a_scripted_operator_is_timed_and_scored() {
        let dir = std::env::temp_dir().join(format!("rk-gd-runbooks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("tier-t1-heal.md"), "# heal").expect("runbook");
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
        assert_eq!(g.poll(500), (vec![], false));
        g.fault_started(1_000);
        let (cmds, absent) = g.poll(21_000);
        assert_eq!(cmds, vec![Command::Restart(3)]);
        assert!(!absent);
        let r = g.finish(false);
        assert!(r.operator_present);
        assert_eq!(r.score, 100, "{r:?}");
        let detected = r
            .steps
            .iter()
            .find(|s| s.step == "detected")
            .expect("detected");
        assert_eq!(detected.after_fault_ms, Some(20_000));
        let mitigated = r
            .steps
            .iter()
            .find(|s| s.step == "mitigated")
            .expect("mitigated");
        assert_eq!(mitigated.answer.as_deref(), Some("restart 3"));
        let _ = std::fs::remove_dir_all(&dir);
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
    fn a_slow_operator_with_an_unknown_runbook_scores_less() {
        let mut g = fed(
            &[Some(""), Some("my-notes.md"), Some("done")],
            Some(Path::new("/nonexistent")),
        );
        g.fault_started(0);
        let _ = g.poll(200_000);
        let r = g.finish(false);
        // Detection after 200 s: 5; no such runbook: 0; mitigation at 200 s: 20.
        assert_eq!(r.score, 25, "{r:?}");
        assert!(r
            .steps
            .iter()
            .any(|s| s.answer.as_deref() == Some("my-notes.md (no such runbook)")));
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
