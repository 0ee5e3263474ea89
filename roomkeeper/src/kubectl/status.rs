//! `kubectl roomkeeper status`: one screen from the cluster's status and its
//! open FailoverApprovals. Everything shown is what the operator last read
//! from the nodes (`status.members`, `status.regions`, the orders-at-risk
//! numbers of operator/src/risk.rs); the plugin never reaches the pods.

use kube::api::ListParams;
use kube::ResourceExt;
use roomkeeper_operator::approval::FailoverApproval;
use roomkeeper_operator::crd::LiveRoomCluster;
use roomkeeper_operator::switchover::{CommandStatus, Failover, Switchover, AWAITING_APPROVAL};
use serde::Serialize;

use super::{print_structured, Format, Kube, KubeContext, PluginError};

/// A follower further behind than this many entries is shown as lagging.
const LAGGING_ENTRIES: i64 = 1_000;
/// Decisions shown (status.decisions holds the newest 20).
const DECISIONS_SHOWN: usize = 5;

/// What the screen says, as `-o json|yaml` prints it.
#[derive(Debug, Serialize, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StatusView {
    pub cluster: String,
    pub namespace: String,
    pub phase: String,
    /// Safe: a leader accepts orders, every voter is ready, no committed
    /// order is held by fewer than a majority of regions, nothing waits for a person.
    pub safe: bool,
    /// Why not safe, in words (empty when safe).
    pub concerns: Vec<String>,
    pub automation: String,
    pub leader: Option<String>,
    pub leader_id: Option<i64>,
    pub term: Option<i64>,
    pub commit_index: Option<i64>,
    pub tier: String,
    pub tier_reason: String,
    pub regions: Vec<RegionRow>,
    pub nodes: Vec<NodeRow>,
    pub orders_at_risk: OrdersAtRisk,
    pub pending_approvals: Vec<ApprovalRow>,
    /// Switchovers and Failovers a live window holds for a second person.
    pub commands_awaiting_approval: Vec<HeldCommand>,
    /// Rooms on air now or within 30 minutes, as the nodes report them.
    pub live_windows: Vec<String>,
    /// The newest decisions, in words, oldest first.
    pub decisions: Vec<String>,
}

/// A manual command in phase `AwaitingApproval`.
#[derive(Debug, Serialize, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HeldCommand {
    pub kind: String,
    pub name: String,
    pub requested_by: String,
    pub message: String,
}

#[derive(Debug, Serialize, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RegionRow {
    pub name: String,
    pub voters: i32,
    pub ready_voters: i32,
    pub learners: i32,
    /// Share of new buyers routed here (100 full, 0 drained); absent without a router.
    pub traffic_weight: Option<i32>,
    pub health: String,
}

#[derive(Debug, Serialize, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeRow {
    pub node_id: i64,
    pub pod: String,
    pub region: String,
    pub role: String,
    pub leads: bool,
    pub lag: Option<i64>,
    pub matched_index: Option<i64>,
    /// The leader heard from it within 2 s (status.members[].replicating).
    pub replicating: Option<bool>,
    pub health: String,
}

/// Orders at risk, in Raft log entries (each entry carries a batch of orders).
#[derive(Debug, Serialize, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OrdersAtRisk {
    /// In the leader's log, not yet acknowledged by a quorum: their buyers
    /// have no answer yet; a leader lost now may lose them.
    pub in_flight_entries: Option<i64>,
    /// Committed (acknowledged to buyers) but held in fewer than a majority
    /// of the regions: losing those regions together loses them.
    pub below_region_majority_entries: Option<i64>,
    pub meaning: String,
}

#[derive(Debug, Serialize, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalRow {
    pub name: String,
    pub tier: String,
    pub action: String,
    pub target: String,
    pub deadline: String,
    pub on_timeout: String,
    pub reason: String,
}

const RISK_MEANING: &str = "log entries (batches of orders): in flight = in the leader's log, not yet on a quorum (buyers not answered yet); below region majority = acknowledged but held in fewer than a majority of regions";

fn node_health(leads: bool, lag: Option<i64>, replicating: Option<bool>) -> String {
    if leads {
        return "ok".into();
    }
    match (replicating, lag) {
        (None, _) => "not replicating".into(),
        (Some(false), _) => "silent (leader has not heard from it for 2 s)".into(),
        (_, Some(l)) if l > LAGGING_ENTRIES => format!("lagging {l}"),
        _ => "ok".into(),
    }
}

/// The screen's content, from the cluster and the namespace's approvals.
pub fn view(
    lrc: &LiveRoomCluster,
    approvals: &[FailoverApproval],
    held: &[HeldCommand],
) -> StatusView {
    let name = lrc.name_any();
    let st = lrc.status.clone().unwrap_or_default();
    let leader_id = st.leader_id;
    let regions: Vec<RegionRow> = st
        .regions
        .iter()
        .map(|r| RegionRow {
            name: r.name.clone(),
            voters: r.voters,
            ready_voters: r.ready_voters,
            learners: r.learners,
            traffic_weight: r.traffic_weight,
            health: if r.voters == 0 {
                "no voters".into()
            } else if r.ready_voters >= r.voters {
                if r.traffic_weight == Some(0) {
                    "ok, drained".into()
                } else {
                    "ok".into()
                }
            } else if r.ready_voters == 0 {
                "down".into()
            } else {
                format!("degraded {}/{}", r.ready_voters, r.voters)
            },
        })
        .collect();
    let mut nodes: Vec<NodeRow> = st
        .members
        .iter()
        .map(|m| {
            let leads = Some(m.node_id) == leader_id;
            NodeRow {
                node_id: m.node_id,
                pod: m.pod.clone(),
                region: m.region.clone(),
                role: m.role.clone(),
                leads,
                lag: m.lag,
                matched_index: m.matched_index,
                replicating: m.replicating,
                health: node_health(leads, m.lag, m.replicating),
            }
        })
        .collect();
    nodes.sort_by(|a, b| (&a.region, &a.pod).cmp(&(&b.region, &b.pod)));
    let pending: Vec<ApprovalRow> = approvals
        .iter()
        .filter(|a| a.spec.cluster == name)
        .filter(|a| {
            a.status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .is_none_or(|p| p == "Pending")
        })
        .map(|a| ApprovalRow {
            name: a.name_any(),
            tier: a.spec.tier.clone(),
            action: a.spec.action.clone(),
            target: a.spec.target.clone(),
            deadline: a.spec.deadline.clone(),
            on_timeout: a.spec.on_timeout.clone(),
            reason: a.spec.request_reason.clone(),
        })
        .collect();
    let tier = st.active_tier.clone().unwrap_or_else(|| "unknown".into());
    let tier_reason = tier_reason(&tier, &st.decisions);
    let risk = OrdersAtRisk {
        in_flight_entries: st.uncommitted_entries,
        below_region_majority_entries: st.entries_below_region_majority,
        meaning: RISK_MEANING.into(),
    };
    let mut concerns = Vec::new();
    if st.leader.is_none() {
        concerns.push("no Raft leader: orders are refused".to_string());
    }
    for r in &regions {
        if r.health != "ok" && r.health != "no voters" {
            concerns.push(format!("region {}: {}", r.name, r.health));
        }
    }
    for n in &nodes {
        if n.health != "ok" {
            concerns.push(format!("node {} ({}): {}", n.node_id, n.pod, n.health));
        }
    }
    if let Some(b) = risk.below_region_majority_entries.filter(|b| *b > 0) {
        concerns.push(format!(
            "{b} acknowledged entries are held in fewer than a majority of regions"
        ));
    }
    if !pending.is_empty() {
        concerns.push(format!("{} approval(s) wait for a person", pending.len()));
    }
    if lrc.spec.paused {
        concerns.push("automation is paused (spec.paused): nothing heals by itself".into());
    }
    for c in st.conditions.iter() {
        if c.type_ == "PlaybookReady" && c.status == "False" {
            concerns.push(format!("playbook: {}", c.message));
        }
    }
    let decisions: Vec<String> = st.decisions[st.decisions.len().saturating_sub(DECISIONS_SHOWN)..]
        .iter()
        .map(|d| {
            let how = match (&d.disposition[..], &d.guard) {
                ("suppressed", Some(g)) => format!("blocked by {g}"),
                ("execute", _) => "carried out".into(),
                ("dryRun", _) => "dry run".into(),
                ("awaitingApproval", _) => "waits for approval".into(),
                (other, _) => other.to_string(),
            };
            format!(
                "#{} {} {}: {} {} — {}: {}{}",
                d.id,
                d.at,
                d.tier,
                d.action,
                d.target,
                how,
                d.reason,
                d.outcome
                    .as_deref()
                    .map(|o| format!(" → {o}"))
                    .unwrap_or_default()
            )
        })
        .collect();
    StatusView {
        namespace: lrc.namespace().unwrap_or_default(),
        cluster: name,
        phase: st.phase.clone().unwrap_or_else(|| "Unknown".into()),
        safe: concerns.is_empty(),
        concerns,
        automation: match (lrc.spec.paused, lrc.spec.dry_run) {
            (true, _) => "paused (decisions recorded, nothing carried out)".into(),
            (false, true) => "dry run (decisions recorded, nothing carried out)".into(),
            (false, false) => "on".into(),
        },
        leader: st.leader.clone(),
        leader_id,
        term: st.term,
        commit_index: st.commit_index,
        tier,
        tier_reason,
        regions,
        nodes,
        orders_at_risk: risk,
        pending_approvals: pending,
        commands_awaiting_approval: held.to_vec(),
        live_windows: st
            .live_windows
            .iter()
            .map(|w| {
                format!(
                    "room {} (home {}): {} → {}, expected peak {} orders/s",
                    w.room, w.home_region, w.start, w.end, w.expected_peak_orders_per_s
                )
            })
            .collect(),
        decisions,
    }
}

/// Why the tier in force is in force: the newest decision of that tier, in
/// the engine's words.
fn tier_reason(tier: &str, decisions: &[roomkeeper_operator::history::DecisionEntry]) -> String {
    if tier.starts_with("T0") {
        return "no tier above watch has a trigger that held for its hold-down time".into();
    }
    decisions
        .iter()
        .rev()
        .find(|d| d.tier == tier)
        .map(|d| d.reason.clone())
        .unwrap_or_else(|| "no decision of this tier is in status.decisions".into())
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

/// The screen as text.
pub fn render(v: &StatusView, wide: bool) -> String {
    let mut o = String::new();
    let mut line = |s: String| {
        o.push_str(&s);
        o.push('\n');
    };
    line(format!(
        "Cluster {}/{}   phase {}   {}",
        v.namespace,
        v.cluster,
        v.phase,
        if v.safe { "SAFE" } else { "AT RISK" }
    ));
    for c in &v.concerns {
        line(format!("  ! {c}"));
    }
    line(format!(
        "Leader:   {} (node {}), term {}, commit index {}",
        opt(v.leader.as_ref()),
        opt(v.leader_id),
        opt(v.term),
        opt(v.commit_index)
    ));
    line(format!("Tier:     {} — {}", v.tier, v.tier_reason));
    line(format!("Automation: {}", v.automation));
    line(String::new());
    let mut rows = vec![vec![
        "REGION".to_string(),
        "VOTERS".into(),
        "READY".into(),
        "LEARNERS".into(),
        "TRAFFIC".into(),
        "HEALTH".into(),
    ]];
    for r in &v.regions {
        rows.push(vec![
            r.name.clone(),
            r.voters.to_string(),
            r.ready_voters.to_string(),
            r.learners.to_string(),
            r.traffic_weight
                .map_or_else(|| "no router".into(), |w| format!("{w}%")),
            r.health.clone(),
        ]);
    }
    line(table(&rows));
    let mut head = vec![
        "NODE".to_string(),
        "POD".into(),
        "REGION".into(),
        "ROLE".into(),
        "LAG".into(),
        "HEALTH".into(),
    ];
    if wide {
        head.extend(["MATCHED".to_string(), "REPLICATING".into()]);
    }
    let mut rows = vec![head];
    for n in &v.nodes {
        let mut r = vec![
            n.node_id.to_string(),
            n.pod.clone(),
            n.region.clone(),
            if n.leads {
                format!("{} (leader)", n.role)
            } else {
                n.role.clone()
            },
            opt(n.lag),
            n.health.clone(),
        ];
        if wide {
            r.extend([opt(n.matched_index), opt(n.replicating)]);
        }
        rows.push(r);
    }
    line(table(&rows));
    line(format!(
        "Orders at risk: {} entries in flight, {} acknowledged entries below a majority of regions",
        opt(v.orders_at_risk.in_flight_entries),
        opt(v.orders_at_risk.below_region_majority_entries)
    ));
    line(format!("  ({})", v.orders_at_risk.meaning));
    if v.pending_approvals.is_empty() {
        line("Approvals pending: none".into());
    } else {
        line("Approvals pending (kubectl roomkeeper approve|deny NAME):".into());
        for a in &v.pending_approvals {
            line(format!(
                "  {}  {} {} {}  deadline {} (then {})",
                a.name, a.tier, a.action, a.target, a.deadline, a.on_timeout
            ));
            if wide {
                line(format!("    why: {}", a.reason));
            }
        }
    }
    if !v.commands_awaiting_approval.is_empty() {
        line("Commands awaiting a second person (kubectl roomkeeper approve NAME):".into());
        for c in &v.commands_awaiting_approval {
            line(format!(
                "  {} {} requested by {}",
                c.kind, c.name, c.requested_by
            ));
            if wide {
                line(format!("    why: {}", c.message));
            }
        }
    }
    if v.live_windows.is_empty() {
        line("Live windows: none declared".into());
    } else {
        line("Live windows (disruptive moves wait or need approval):".into());
        for w in &v.live_windows {
            line(format!("  {w}"));
        }
    }
    if v.decisions.is_empty() {
        line("Last decisions: none".into());
    } else {
        line("Last decisions (oldest first):".into());
        for d in &v.decisions {
            line(format!("  {d}"));
        }
    }
    o
}

/// Left-aligned columns, two spaces apart, without trailing blanks.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|r| {
            let mut s = String::new();
            for (i, cell) in r.iter().enumerate() {
                s.push_str(cell);
                if i + 1 < r.len() {
                    let pad = widths[i] - cell.chars().count() + 2;
                    s.push_str(&" ".repeat(pad));
                }
            }
            s.trim_end().to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The cluster's Switchovers and Failovers a live window holds.
async fn held_commands(kube: &Kube, cluster: &str) -> Result<Vec<HeldCommand>, PluginError> {
    let held = |kind: &str,
                name: String,
                for_cluster: &str,
                requested_by: &str,
                status: Option<&CommandStatus>| {
        (for_cluster == cluster
            && status.and_then(|s| s.phase.as_deref()) == Some(AWAITING_APPROVAL))
        .then(|| HeldCommand {
            kind: kind.to_string(),
            name,
            requested_by: requested_by.to_string(),
            message: status.and_then(|s| s.message.clone()).unwrap_or_default(),
        })
    };
    let mut out: Vec<HeldCommand> = kube
        .api::<Switchover>()
        .list(&ListParams::default())
        .await
        .ctx("listing Switchovers")?
        .items
        .into_iter()
        .filter_map(|o| {
            held(
                "Switchover",
                o.name_any(),
                &o.spec.cluster,
                &o.spec.requested_by,
                o.status.as_ref(),
            )
        })
        .collect();
    out.extend(
        kube.api::<Failover>()
            .list(&ListParams::default())
            .await
            .ctx("listing Failovers")?
            .items
            .into_iter()
            .filter_map(|o| {
                held(
                    "Failover",
                    o.name_any(),
                    &o.spec.cluster,
                    &o.spec.requested_by,
                    o.status.as_ref(),
                )
            }),
    );
    Ok(out)
}

pub async fn run(kube: &Kube, cluster: Option<String>, f: Format) -> Result<(), PluginError> {
    let lrc = kube.cluster(cluster).await?;
    let approvals = kube
        .api::<FailoverApproval>()
        .list(&ListParams::default())
        .await
        .ctx("listing FailoverApprovals")?
        .items;
    let held = held_commands(kube, &lrc.name_any()).await?;
    let v = view(&lrc, &approvals, &held);
    match f {
        Format::Text => print!("{}", render(&v, false)),
        Format::Wide => print!("{}", render(&v, true)),
        Format::Json | Format::Yaml => print_structured(&v, f)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use roomkeeper_operator::crd::{LiveRoomClusterStatus, MemberStatus, RegionStatus};

    fn cluster() -> LiveRoomCluster {
        let mut lrc: LiveRoomCluster = serde_json::from_value(serde_json::json!({
            "apiVersion": "roomkeeper.dev/v1alpha1", "kind": "LiveRoomCluster",
            "metadata": {"name": "shop", "namespace": "live"},
            "spec": {"image": "x", "regions": [{"name": "a", "voters": 1}, {"name": "b", "voters": 1}, {"name": "c", "voters": 1}]}
        }))
        .unwrap();
        let member = |id: i64, region: &str, lag, ack| MemberStatus {
            node_id: id,
            pod: format!("shop-{region}-0"),
            region: region.into(),
            role: "voter".into(),
            lag: Some(lag),
            matched_index: Some(100 - lag),
            replicating: Some(ack),
        };
        lrc.status = Some(LiveRoomClusterStatus {
            phase: Some("Running".into()),
            leader: Some("shop-a-0".into()),
            leader_id: Some(1),
            term: Some(3),
            commit_index: Some(100),
            uncommitted_entries: Some(2),
            entries_below_region_majority: Some(0),
            active_tier: Some("T0 watch".into()),
            members: vec![
                member(1, "a", 0, true),
                member(2, "b", 0, true),
                member(3, "c", 0, false),
            ],
            regions: ["a", "b", "c"]
                .iter()
                .map(|r| RegionStatus {
                    name: r.to_string(),
                    voters: 1,
                    ready_voters: i32::from(*r != "c"),
                    traffic_weight: Some(if *r == "c" { 0 } else { 100 }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        });
        lrc
    }

    #[test]
    fn a_silent_node_and_a_down_region_make_it_unsafe_and_say_why() {
        let v = view(&cluster(), &[], &[]);
        assert!(!v.safe);
        assert!(
            v.concerns.iter().any(|c| c == "region c: down"),
            "{:?}",
            v.concerns
        );
        assert!(v
            .concerns
            .iter()
            .any(|c| c.contains("node 3") && c.contains("silent")));
        let text = render(&v, true);
        assert!(text.contains("AT RISK"), "{text}");
        assert!(
            text.contains("Orders at risk: 2 entries in flight, 0 acknowledged"),
            "{text}"
        );
        assert!(text.contains("voter (leader)"), "{text}");
        assert!(text.contains("REPLICATING"), "{text}");
        assert!(!render(&v, false).contains("REPLICATING"));
    }

    #[test]
    fn a_healthy_cluster_is_safe() {
        let mut lrc = cluster();
        let st = lrc.status.as_mut().unwrap();
        st.members[2].replicating = Some(true);
        st.regions[2].ready_voters = 1;
        st.regions[2].traffic_weight = Some(100);
        let v = view(&lrc, &[], &[]);
        assert!(v.safe, "{:?}", v.concerns);
        assert!(render(&v, false).starts_with("Cluster live/shop   phase Running   SAFE\n"));
    }

    #[test]
    fn live_windows_and_commands_held_for_approval_are_shown() {
        let mut lrc = cluster();
        lrc.status.as_mut().unwrap().live_windows =
            vec![roomkeeper_operator::crd::LiveWindowStatus {
                room: "r1".into(),
                home_region: "a".into(),
                start: "2026-12-06T20:00:00Z".into(),
                end: "2026-12-06T21:00:00Z".into(),
                expected_peak_orders_per_s: 900,
            }];
        let held = HeldCommand {
            kind: "Switchover".into(),
            name: "shop-switchover-1".into(),
            requested_by: "alice".into(),
            message: "deferred: room r1 is live".into(),
        };
        let text = render(&view(&lrc, &[], &[held]), true);
        assert!(
            text.contains("room r1 (home a): 2026-12-06T20:00:00Z → 2026-12-06T21:00:00Z, expected peak 900 orders/s"),
            "{text}"
        );
        assert!(!text.contains("none declared"), "{text}");
        assert!(
            text.contains("Switchover shop-switchover-1 requested by alice")
                && text.contains("why: deferred: room r1 is live"),
            "{text}"
        );
    }
}
