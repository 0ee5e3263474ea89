//! `ChaosDrillSchedule`: regular practice runs. Every `intervalSecs` the
//! operator creates a ChaosDrill from the template (owned by the schedule),
//! never while an earlier run is still Pending or Running, and keeps only the
//! last `historyLimit` finished runs. A run that would overlap a room's live
//! window (read from the nodes' `/admin/status`) is skipped with an Event, and
//! the next one is due an interval later, as if it had run.

// kube's `printcolumn(name = …, type_ = …)` repeats key names by design.
#![allow(clippy::duplicated_attributes)]

use std::sync::Arc;
use std::time::Duration;

use crate::api_tls::NodeRoutes;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, CustomResource, Resource, ResourceExt};
use roomkeeper_api::LiveWindowOfRoom;
use roomkeeper_chaos::drill::DrillSpec;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::controller::secret_value;
use crate::drill::{pod_ip, pods_of, ChaosDrill, ChaosDrillSpec};
use crate::nodes::NodeAdmin;
use crate::resources::Names;

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
    /// Unix seconds of the latest run skipped for a live window (the next run
    /// is due an interval after it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_skipped_unix: Option<i64>,
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
    /// The run was due but would overlap a live window: skipped, in words.
    pub skipped: Option<String>,
}

/// Pure: given the runs that exist, the latest run or skip, and the rooms'
/// live windows (on air now or soon), decide what to do at `now_unix`.
pub fn plan(
    spec: &ChaosDrillScheduleSpec,
    runs: &[Run],
    last_run_unix: Option<i64>,
    windows: &[LiveWindowOfRoom],
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
    } else if let (true, Some(w)) = (now_unix >= due_at, overlapping(spec, windows, now_unix)) {
        let why = format!(
            "skipped the run due now: for its {} s it would overlap the live window of room {} in {} ({} to {}, expected peak {} orders/s); next run in {interval} s",
            spec.drill.duration_secs,
            w.room,
            w.home_region,
            roomkeeper_playbook::words::utc(w.window.start_ms),
            roomkeeper_playbook::words::utc(w.window.end_ms),
            w.window.expected_peak_orders_per_s,
        );
        return Plan {
            create: false,
            prune,
            recheck_secs: interval,
            why: why.clone(),
            skipped: Some(why),
        };
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
        skipped: None,
    }
}

/// The earliest-starting live window a run starting at `now_unix` would overlap.
fn overlapping<'a>(
    spec: &ChaosDrillScheduleSpec,
    windows: &'a [LiveWindowOfRoom],
    now_unix: i64,
) -> Option<&'a LiveWindowOfRoom> {
    let from = u64::try_from(now_unix).unwrap_or(0).saturating_mul(1000);
    let to = from.saturating_add(spec.drill.duration_secs.max(1).saturating_mul(1000));
    windows
        .iter()
        .filter(|w| w.window.overlaps(from, to))
        .min_by_key(|w| (w.window.start_ms, &w.room))
}

/// The live windows the cluster's nodes report (on air now or within 30
/// minutes), the union over every pod that answers.
/// The live windows the cluster's nodes report (on air or soon), or why they
/// cannot be known: a due run is held rather than started into a window
/// nobody could read.
async fn live_windows(
    client: &Client,
    nodes: &NodeRoutes,
    ns: &str,
    cluster: &str,
) -> Result<Vec<LiveWindowOfRoom>, String> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let token = match secrets.get(&Names { cluster }.tokens()).await {
        Ok(s) => secret_value(&s, "admin-token"),
        Err(e) => return Err(format!("cannot read the tokens Secret: {e}")),
    };
    let admin = NodeAdmin::new(nodes.http.clone(), token);
    let pods = match pods_of(client, ns, cluster).await {
        Ok(pods) => pods,
        Err(e) => return Err(format!("cannot list the pods: {e}")),
    };
    if let Err(e) = nodes.learn(client, ns, cluster, &pods).await {
        return Err(format!("cannot reach the pods: {e}"));
    }
    let ips: Vec<String> = pods.iter().filter_map(pod_ip).collect();
    if ips.is_empty() {
        // No node runs: no room can be on air here, and the drill itself
        // waits for the cluster to be Running.
        return Ok(Vec::new());
    }
    let statuses = futures::future::join_all(ips.iter().map(|ip| admin.status(ip))).await;
    let mut answered = 0usize;
    let mut last_error = String::new();
    let mut out: Vec<LiveWindowOfRoom> = Vec::new();
    for s in statuses {
        match s {
            Ok(s) => {
                answered += 1;
                for w in s.live_windows {
                    if !out.contains(&w) {
                        out.push(w);
                    }
                }
            }
            Err(e) => last_error = e.to_string(),
        }
    }
    if answered == 0 {
        return Err(format!(
            "none of the {} nodes answered ({last_error})",
            ips.len()
        ));
    }
    Ok(out)
}

/// How soon a run held for unknown live windows is looked at again.
const HELD_RECHECK_SECS: i64 = 30;

fn now_unix() -> i64 {
    k8s_openapi::jiff::Timestamp::now().as_second()
}

/// Runs the schedule controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    nodes: NodeRoutes,
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
        Arc::new(ScheduleContext { client, nodes }),
    )
    .for_each(|_| async {})
    .await;
}

/// What a schedule's reconcile works with.
struct ScheduleContext {
    client: Client,
    /// The operator's client to the nodes (shared with the cluster controller).
    nodes: NodeRoutes,
}

async fn reconcile(
    sched: Arc<ChaosDrillSchedule>,
    sctx: Arc<ScheduleContext>,
) -> Result<Action, kube::Error> {
    let client = &sctx.client;
    let ns = sched.namespace().unwrap_or_default();
    let name = sched.name_any();
    let drills: Api<ChaosDrill> = Api::namespaced(client.clone(), &ns);
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
    let last = status.last_run_unix.max(status.last_skipped_unix);
    let mut p = plan(&sched.spec, &runs, last, &[], now);
    if p.create {
        // Due: ask the nodes for live windows only now, not on every check.
        let target = &sched.spec.drill.target.cluster;
        match live_windows(client, &sctx.nodes, &ns, target).await {
            Ok(windows) => p = plan(&sched.spec, &runs, last, &windows, now),
            Err(why) => {
                tracing::warn!(schedule = %name, namespace = %ns, "run held: {why}");
                p.create = false;
                p.why = format!(
                    "a run is due but held: the live windows of {target} cannot be read ({why}), and a drill must not start into one; checking again in {HELD_RECHECK_SECS} s"
                );
                p.recheck_secs = HELD_RECHECK_SECS;
            }
        }
    }
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
    if let Some(why) = &p.skipped {
        tracing::info!(schedule = %name, namespace = %ns, "{why}");
        new_status.last_skipped_unix = Some(now);
        let ev = KubeEvent {
            type_: EventType::Normal,
            reason: "SkippedForLiveWindow".into(),
            note: Some(why.chars().take(1000).collect()),
            action: "SkipRun".into(),
            secondary: None,
        };
        let reporter = Reporter {
            controller: "roomkeeper-operator".into(),
            instance: None,
        };
        if let Err(e) = Recorder::new(client.clone(), reporter)
            .publish(&ev, &sched.object_ref(&()))
            .await
        {
            tracing::warn!(error = %e, "could not publish event");
        }
    }
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
        let api: Api<ChaosDrillSchedule> = Api::namespaced(client.clone(), &ns);
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
        assert!(plan(&s, &[], None, &[], 1_000).create);
        let p = plan(&s, &[run("a", 1_000, true)], Some(1_000), &[], 1_300);
        assert!(!p.create && p.why.contains("300"), "{p:?}");
        assert!(plan(&s, &[run("a", 1_000, true)], Some(1_000), &[], 1_600).create);
    }

    #[test]
    fn runs_never_overlap() {
        let s = spec(60, 3);
        let p = plan(&s, &[run("a", 0, false)], Some(0), &[], 10_000);
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
        assert_eq!(
            plan(&s, &runs, Some(4), &[], 5).prune,
            vec!["a".to_string()]
        );
    }

    fn live(room: &str, start_unix: i64, end_unix: i64) -> LiveWindowOfRoom {
        LiveWindowOfRoom {
            room: room.into(),
            home_region: "ap-south".into(),
            window: roomkeeper_api::LiveWindow {
                start_ms: start_unix as u64 * 1000,
                end_ms: end_unix as u64 * 1000,
                expected_peak_orders_per_s: 900,
            },
        }
    }

    #[test]
    fn a_run_that_would_overlap_a_live_window_is_skipped_and_the_next_is_an_interval_later() {
        let s = spec(600, 3);
        let dur = s.drill.duration_secs as i64;
        let runs = [run("a", 1_000, true)];
        // Due at 1_600; a window starts before the run would end.
        let windows = [live("r1", 1_600 + dur - 1, 5_000)];
        let p = plan(&s, &runs, Some(1_000), &windows, 1_600);
        assert!(!p.create, "{p:?}");
        let why = p.skipped.expect("skipped");
        assert!(why.contains("room r1 in ap-south"), "{why}");
        assert!(why.contains("expected peak 900 orders/s"), "{why}");
        assert_eq!(p.recheck_secs, 600);
        // A window that ends before the run starts, or starts after it ends, is no reason.
        for w in [live("r0", 100, 1_600), live("r2", 1_600 + dur, 5_000)] {
            assert!(plan(&s, &runs, Some(1_000), &[w], 1_600).create);
        }
        // The skip counts as the latest slot: nothing until an interval later.
        let p = plan(&s, &runs, Some(1_600), &[], 1_700);
        assert!(!p.create && p.why.contains("next run in 500 s"), "{p:?}");
        assert!(plan(&s, &runs, Some(1_600), &[], 2_200).create);
        // Not due: windows are not even a reason to say anything.
        let p = plan(&s, &runs, Some(1_000), &windows, 1_300);
        assert!(p.skipped.is_none());
    }

    #[test]
    fn a_suspended_schedule_creates_nothing() {
        let mut s = spec(60, 2);
        s.suspend = true;
        assert!(!plan(&s, &[], None, &[], 100).create);
    }
}
