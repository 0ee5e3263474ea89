//! `ChaosDrillSchedule`: regular practice runs. Every `intervalSecs` the
//! operator creates a ChaosDrill from the template (owned by the schedule),
//! never while an earlier run is still Pending or Running, and keeps only the
//! last `historyLimit` finished runs.

// kube's `printcolumn(name = …, type_ = …)` repeats key names by design.
#![allow(clippy::duplicated_attributes)]

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, CustomResource, Resource, ResourceExt};
use roomkeeper_chaos::drill::DrillSpec;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::drill::{ChaosDrill, ChaosDrillSpec};

pub const SCHEDULE_LABEL: &str = "roomkeeper.dev/schedule";

/// Regular practice runs of one drill.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "roomkeeper.dev",
    version = "v1alpha1",
    kind = "ChaosDrillSchedule",
    namespaced,
    shortname = "drillsched",
    category = "roomkeeper",
    status = "ChaosDrillScheduleStatus",
    doc = "Runs a ChaosDrill every intervalSecs, never two at once, keeping the last historyLimit runs.",
    printcolumn(name = "Interval", type_ = "integer", json_path = ".spec.intervalSecs"),
    printcolumn(name = "Suspended", type_ = "boolean", json_path = ".spec.suspend"),
    printcolumn(name = "Last", type_ = "string", json_path = ".status.lastRun"),
    printcolumn(name = "Verdict", type_ = "string", json_path = ".status.lastVerdict"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ChaosDrillScheduleSpec {
    /// Seconds between the starts of two runs (at least 30).
    #[schemars(range(min = 30))]
    pub interval_secs: i64,
    /// Finished runs to keep (older ones are deleted).
    #[serde(default = "default_history_limit")]
    #[schemars(range(min = 1, max = 50))]
    pub history_limit: i32,
    /// Create no new runs while set.
    #[serde(default)]
    pub suspend: bool,
    /// The drill each run executes.
    pub drill: DrillSpec,
}

fn default_history_limit() -> i32 {
    3
}

/// What the schedule last did.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ChaosDrillScheduleStatus {
    /// Name of the latest run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<String>,
    /// Unix seconds the latest run was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_unix: Option<i64>,
    /// Verdict of the latest finished run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_verdict: Option<String>,
    /// Why no run was created at the last check, if none was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One existing run, as the planner sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    pub name: String,
    pub created_unix: i64,
    /// Completed or Invalid.
    pub finished: bool,
}

/// The planner's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Create a run now.
    pub create: bool,
    /// Finished runs to delete (oldest beyond the history limit).
    pub prune: Vec<String>,
    /// When to look again, in seconds.
    pub recheck_secs: i64,
    pub why: String,
}

/// Pure: given the runs that exist, decide what to do at `now_unix`.
pub fn plan(
    spec: &ChaosDrillScheduleSpec,
    runs: &[Run],
    last_run_unix: Option<i64>,
    now_unix: i64,
) -> Plan {
    let interval = spec.interval_secs.max(30);
    let mut finished: Vec<&Run> = runs.iter().filter(|r| r.finished).collect();
    finished.sort_by_key(|r| std::cmp::Reverse(r.created_unix));
    let keep = usize::try_from(spec.history_limit.max(1)).unwrap_or(1);
    let prune: Vec<String> = finished.iter().skip(keep).map(|r| r.name.clone()).collect();
    let last = runs
        .iter()
        .map(|r| r.created_unix)
        .chain(last_run_unix)
        .max();
    let due_at = last.map_or(now_unix, |l| l + interval);
    let (create, why) = if spec.suspend {
        (false, "suspended".to_string())
    } else if let Some(active) = runs.iter().find(|r| !r.finished) {
        (
            false,
            format!("{} is still running: runs never overlap", active.name),
        )
    } else if now_unix >= due_at {
        (true, "due".to_string())
    } else {
        (false, format!("next run in {} s", due_at - now_unix))
    };
    let recheck_secs = if create {
        interval
    } else {
        (due_at - now_unix).clamp(5, interval)
    };
    Plan {
        create,
        prune,
        recheck_secs,
        why,
    }
}

fn now_unix() -> i64 {
    k8s_openapi::jiff::Timestamp::now().as_second()
}

/// Runs the schedule controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    Controller::new(
        Api::<ChaosDrillSchedule>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(
        Api::<ChaosDrill>::all(client.clone()),
        watcher::Config::default(),
    )
    .graceful_shutdown_on(shutdown)
    .run(
        reconcile,
        |_, _: &kube::Error, _| Action::requeue(Duration::from_secs(15)),
        Arc::new(client),
    )
    .for_each(|_| async {})
    .await;
}

async fn reconcile(
    sched: Arc<ChaosDrillSchedule>,
    client: Arc<Client>,
) -> Result<Action, kube::Error> {
    let ns = sched.namespace().unwrap_or_default();
    let name = sched.name_any();
    let drills: Api<ChaosDrill> = Api::namespaced((*client).clone(), &ns);
    let children = drills
        .list(&ListParams::default().labels(&format!("{SCHEDULE_LABEL}={name}")))
        .await?
        .items;
    let runs: Vec<Run> = children
        .iter()
        .map(|d| Run {
            name: d.name_any(),
            created_unix: d
                .metadata
                .creation_timestamp
                .as_ref()
                .map_or(0, |t| t.0.as_second()),
            finished: matches!(
                d.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Completed") | Some("Invalid")
            ),
        })
        .collect();
    let status = sched.status.clone().unwrap_or_default();
    let now = now_unix();
    let p = plan(&sched.spec, &runs, status.last_run_unix, now);
    for old in &p.prune {
        drills.delete(old, &DeleteParams::default()).await?;
    }
    let mut new_status = status.clone();
    let latest_finished = children
        .iter()
        .filter(|d| d.status.as_ref().and_then(|s| s.verdict.clone()).is_some())
        .max_by_key(|d| d.metadata.creation_timestamp.as_ref().map(|t| t.0));
    new_status.last_verdict = latest_finished.and_then(|d| d.status.as_ref()?.verdict.clone());
    new_status.message = (!p.create).then(|| p.why.clone());
    if p.create {
        let run_name = format!("{name}-{now}");
        let mut drill = ChaosDrill::new(&run_name, ChaosDrillSpec(sched.spec.drill.clone()));
        drill.metadata.namespace = Some(ns.clone());
        drill.metadata.labels = Some([(SCHEDULE_LABEL.to_string(), name.clone())].into());
        drill.metadata.owner_references = sched.controller_owner_ref(&()).map(|o| vec![o]);
        drills.create(&PostParams::default(), &drill).await?;
        new_status.last_run = Some(run_name);
        new_status.last_run_unix = Some(now);
    }
    if new_status != status {
        let api: Api<ChaosDrillSchedule> = Api::namespaced((*client).clone(), &ns);
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": new_status })),
        )
        .await?;
    }
    Ok(Action::requeue(Duration::from_secs(
        u64::try_from(p.recheck_secs).unwrap_or(30),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(interval: i64, limit: i32) -> ChaosDrillScheduleSpec {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../chaos/drills/follower-kill.yaml"),
        )
        .unwrap();
        let d: ChaosDrill = serde_yaml::from_str(&text).unwrap();
        ChaosDrillScheduleSpec {
            interval_secs: interval,
            history_limit: limit,
            suspend: false,
            drill: d.spec.0,
        }
    }

    fn run(name: &str, at: i64, finished: bool) -> Run {
        Run {
            name: name.into(),
            created_unix: at,
            finished,
        }
    }

    #[test]
    fn the_first_run_starts_at_once_then_every_interval() {
        let s = spec(600, 3);
        assert!(plan(&s, &[], None, 1_000).create);
        let p = plan(&s, &[run("a", 1_000, true)], Some(1_000), 1_300);
        assert!(!p.create && p.why.contains("300"), "{p:?}");
        assert!(plan(&s, &[run("a", 1_000, true)], Some(1_000), 1_600).create);
    }

    #[test]
    fn runs_never_overlap() {
        let s = spec(60, 3);
        let p = plan(&s, &[run("a", 0, false)], Some(0), 10_000);
        assert!(!p.create && p.why.contains("never overlap"), "{p:?}");
    }

    #[test]
    fn only_the_last_finished_runs_are_kept() {
        let s = spec(60, 2);
        let runs = [
            run("a", 1, true),
            run("b", 2, true),
            run("c", 3, true),
            run("d", 4, false),
        ];
        assert_eq!(plan(&s, &runs, Some(4), 5).prune, vec!["a".to_string()]);
    }

    #[test]
    fn a_suspended_schedule_creates_nothing() {
        let mut s = spec(60, 2);
        s.suspend = true;
        assert!(!plan(&s, &[], None, 100).create);
    }
}
