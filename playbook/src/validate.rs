//! Playbook validation. Every error names the field it is about, in the
//! camelCase path of the YAML/CRD face: `tiers[2].trigger.forMs: must not be
//! negative`.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::decision::TargetKind;
use crate::playbook::{ActionKind, Condition, LagSpec, Playbook, SignalThresholdSpec, Tier};

/// One problem with a playbook, at a field path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FieldError {
    /// The field path, e.g. `tiers[2].trigger.forMs` (empty for the document).
    pub path: String,
    pub message: String,
}

impl FieldError {
    fn new(path: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// A playbook that failed to parse or validate, with every problem found.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid playbook: {}", .errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct InvalidPlaybook {
    pub errors: Vec<FieldError>,
}

impl From<Vec<FieldError>> for InvalidPlaybook {
    fn from(errors: Vec<FieldError>) -> Self {
        InvalidPlaybook { errors }
    }
}

impl From<FieldError> for InvalidPlaybook {
    fn from(e: FieldError) -> Self {
        InvalidPlaybook { errors: vec![e] }
    }
}

/// Maps a serde_yaml error (unknown action, wrong type, unknown field, …) to a
/// field error. serde_yaml 0.9 prefixes its message with the path.
pub(crate) fn yaml_error(e: &serde_yaml::Error) -> FieldError {
    let text = e.to_string();
    // Drop the " at line L column C" suffix; keep the position in words.
    let (body, position) = match (text.rfind(" at line "), e.location()) {
        (Some(i), Some(loc)) => (
            text[..i].to_string(),
            format!(" (line {}, column {})", loc.line(), loc.column()),
        ),
        _ => (text.clone(), String::new()),
    };
    if let Some((path, message)) = body.split_once(": ") {
        let looks_like_path = !path.is_empty()
            && path
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '[' | ']' | '_' | '-'));
        if looks_like_path {
            return FieldError::new(path, format!("{message}{position}"));
        }
    }
    FieldError::new("", format!("{body}{position}"))
}

/// Checks a playbook for mistakes that can be seen without knowing the topology.
pub fn validate(playbook: &Playbook) -> Result<(), Vec<FieldError>> {
    let mut errors = Vec::new();
    check(playbook, &mut errors);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// [`validate`], plus the checks that need the number of regions (a guard that
/// can never be met in this topology).
pub fn validate_for_regions(
    playbook: &Playbook,
    regions_total: u32,
) -> Result<(), Vec<FieldError>> {
    let mut errors = Vec::new();
    check(playbook, &mut errors);
    let min = playbook.guards.min_regions_visible_to_act;
    if regions_total > 0 && min > regions_total {
        errors.push(FieldError::new(
            "guards.minRegionsVisibleToAct",
            format!(
                "is {min} but the topology has {regions_total} regions: this guard can never be met, so the engine could never act"
            ),
        ));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn check(p: &Playbook, errors: &mut Vec<FieldError>) {
    if p.tiers.is_empty() {
        errors.push(FieldError::new("tiers", "must list at least one tier"));
    }
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    let mut levels: BTreeMap<u8, usize> = BTreeMap::new();
    for (i, tier) in p.tiers.iter().enumerate() {
        let at = format!("tiers[{i}]");
        if tier.name.trim().is_empty() {
            errors.push(FieldError::new(format!("{at}.name"), "must not be empty"));
        } else if let Some(first) = names.insert(&tier.name, i) {
            names.insert(&tier.name, first);
            errors.push(FieldError::new(
                format!("{at}.name"),
                format!(
                    "duplicate tier name \"{}\" (already used by tiers[{first}])",
                    tier.name
                ),
            ));
        }
        if tier.level > 4 {
            errors.push(FieldError::new(
                format!("{at}.level"),
                format!(
                    "must be between 0 (watch) and 4 (protect), got {}",
                    tier.level
                ),
            ));
        } else if let Some(first) = levels.insert(tier.level, i) {
            levels.insert(tier.level, first);
            errors.push(FieldError::new(
                format!("{at}.level"),
                format!(
                    "duplicate level {} (already used by tiers[{first}])",
                    tier.level
                ),
            ));
        }
        check_tier(p, tier, &at, errors);
    }
    check_guards(p, errors);
}

fn check_tier(p: &Playbook, tier: &Tier, at: &str, errors: &mut Vec<FieldError>) {
    let trigger = &tier.trigger;
    let membership = tier
        .actions
        .iter()
        .chain(&tier.stand_down_actions)
        .find(|a| a.changes_membership());
    if trigger.for_ms < 0 {
        errors.push(FieldError::new(
            format!("{at}.trigger.forMs"),
            "must not be negative",
        ));
    } else if trigger.for_ms == 0 {
        if let Some(a) = membership {
            errors.push(FieldError::new(
                format!("{at}.trigger.forMs"),
                format!(
                    "must be greater than zero for a tier that changes voter membership ({}): a zero hold-down would act on a single snapshot",
                    a.name()
                ),
            ));
        }
    }
    if trigger.clear_for_ms < 0 {
        errors.push(FieldError::new(
            format!("{at}.trigger.clearForMs"),
            "must not be negative",
        ));
    }
    check_condition(
        &trigger.condition,
        &format!("{at}.trigger.condition"),
        errors,
    );
    let kind = trigger.condition.target_kind();
    if tier.actions.is_empty() {
        errors.push(FieldError::new(
            format!("{at}.actions"),
            "must list at least one action (use recordEvent to only watch)",
        ));
    }
    check_actions(&tier.actions, &format!("{at}.actions"), tier, kind, errors);
    check_actions(
        &tier.stand_down_actions,
        &format!("{at}.standDownActions"),
        tier,
        kind,
        errors,
    );
    if let Some(approval) = &tier.approval {
        if approval.timeout_ms <= 0 {
            errors.push(FieldError::new(
                format!("{at}.approval.timeoutMs"),
                "must be greater than zero",
            ));
        }
    }
    // Quorum safety: a tier that changes membership or evacuates needs both guards.
    if let Some(a) = membership {
        if !p.guards.never_below_quorum {
            errors.push(FieldError::new(
                "guards.neverBelowQuorum",
                format!(
                    "must be true: {at} ({}) changes voter membership with {}, which could otherwise leave the shard below quorum",
                    tier.name,
                    a.name()
                ),
            ));
        }
    }
    let evacuates = tier.level == 3 || membership.is_some();
    if evacuates && !p.guards.one_region_at_a_time {
        errors.push(FieldError::new(
            "guards.oneRegionAtATime",
            format!(
                "must be true: {at} ({}) evacuates regions, and two evacuations at once can lose quorum",
                tier.name
            ),
        ));
    }
}

fn check_actions(
    actions: &[ActionKind],
    at: &str,
    tier: &Tier,
    kind: TargetKind,
    errors: &mut Vec<FieldError>,
) {
    for (j, a) in actions.iter().enumerate() {
        let path = format!("{at}[{j}]");
        if *a == ActionKind::ForceRecoverFromMinority {
            errors.push(FieldError::new(
                path,
                "forceRecoverFromMinority is never decided by a playbook; it is accepted only from an explicit, approved operator command",
            ));
            continue;
        }
        if !a.applies_to(kind) {
            errors.push(FieldError::new(
                path.clone(),
                format!(
                    "{} cannot apply to a {kind}, and condition {} is evaluated per {kind}",
                    a.name(),
                    tier.trigger.condition.name()
                ),
            ));
        }
        if let Some(first) = actions[..j].iter().position(|b| b == a) {
            errors.push(FieldError::new(
                path,
                format!("{} is already listed at {at}[{first}]", a.name()),
            ));
        }
    }
}

fn check_condition(c: &Condition, at: &str, errors: &mut Vec<FieldError>) {
    match c {
        Condition::SignalDegraded(s) => check_signals(s, &format!("{at}.signalDegraded"), errors),
        Condition::RegionDegraded(s) => check_signals(s, &format!("{at}.regionDegraded"), errors),
        Condition::ReplicaLagging(l) => check_lag(l, &format!("{at}.replicaLagging"), errors),
        Condition::NodeUnhealthy | Condition::RegionLost | Condition::QuorumLost => {}
        Condition::AnyOf { conditions: cs } => {
            let at = format!("{at}.conditions");
            if cs.is_empty() {
                errors.push(FieldError::new(
                    at.clone(),
                    "must list at least one condition",
                ));
            }
            for (k, member) in cs.iter().enumerate() {
                let path = format!("{at}[{k}]");
                let first = cs[0].target_kind();
                if member.target_kind() != first {
                    errors.push(FieldError::new(
                        path.clone(),
                        format!(
                            "{} is evaluated per {} but {at}[0] is evaluated per {first}; all members must target the same kind",
                            member.name(),
                            member.target_kind()
                        ),
                    ));
                }
                check_condition(member, &path, errors);
            }
        }
    }
}

fn check_signals(s: &SignalThresholdSpec, at: &str, errors: &mut Vec<FieldError>) {
    if s.p99_ms_above.is_none() && s.error_rate_above.is_none() {
        errors.push(FieldError::new(
            at,
            "set at least one of p99MsAbove, errorRateAbove",
        ));
    }
    let positive = |v: Option<f64>, field: &str, errors: &mut Vec<FieldError>| {
        if let Some(v) = v {
            if !v.is_finite() || v <= 0.0 {
                errors.push(FieldError::new(
                    format!("{at}.{field}"),
                    format!("must be a positive number of milliseconds, got {v}"),
                ));
            }
        }
    };
    positive(s.p99_ms_above, "p99MsAbove", errors);
    positive(s.p99_ms_clear_below, "p99MsClearBelow", errors);
    let rate = |v: Option<f64>, field: &str, errors: &mut Vec<FieldError>| {
        if let Some(v) = v {
            if !v.is_finite() || !(0.0..1.0).contains(&v) {
                errors.push(FieldError::new(
                    format!("{at}.{field}"),
                    format!("must be a share between 0 and 1 (exclusive), got {v}"),
                ));
            }
        }
    };
    rate(s.error_rate_above, "errorRateAbove", errors);
    rate(s.error_rate_clear_below, "errorRateClearBelow", errors);
    let pairs = [
        (
            s.p99_ms_above,
            s.p99_ms_clear_below,
            "p99MsAbove",
            "p99MsClearBelow",
        ),
        (
            s.error_rate_above,
            s.error_rate_clear_below,
            "errorRateAbove",
            "errorRateClearBelow",
        ),
    ];
    for (above, clear, above_name, clear_name) in pairs {
        match (above, clear) {
            (None, Some(_)) => errors.push(FieldError::new(
                format!("{at}.{clear_name}"),
                format!("has no effect without {above_name}"),
            )),
            (Some(a), Some(c)) if c > a => errors.push(FieldError::new(
                format!("{at}.{clear_name}"),
                format!(
                    "must not be above {above_name} ({a}): standing down above the escalation threshold would flap"
                ),
            )),
            _ => {}
        }
    }
}

fn check_lag(l: &LagSpec, at: &str, errors: &mut Vec<FieldError>) {
    if let Some(c) = l.entries_clear_below {
        if c > l.entries_above {
            errors.push(FieldError::new(
                format!("{at}.entriesClearBelow"),
                format!(
                    "must not be above entriesAbove ({}): standing down above the escalation threshold would flap",
                    l.entries_above
                ),
            ));
        }
    }
}

fn check_guards(p: &Playbook, errors: &mut Vec<FieldError>) {
    let g = &p.guards;
    if g.cooldown_ms < 0 {
        errors.push(FieldError::new("guards.cooldownMs", "must not be negative"));
    }
    if g.window_ms <= 0 {
        errors.push(FieldError::new(
            "guards.windowMs",
            "must be greater than zero",
        ));
    }
    if g.max_actions_per_window == 0 {
        errors.push(FieldError::new(
            "guards.maxActionsPerWindow",
            "must be at least 1: with 0 this guard can never be met and no action could ever run (set paused: true to stop all actions)",
        ));
    }
    if g.min_regions_visible_to_act == 0 {
        errors.push(FieldError::new(
            "guards.minRegionsVisibleToAct",
            "must be at least 1: the controller must see a majority of regions before acting",
        ));
    }
    if let Some(age) = g.max_snapshot_age_ms {
        if age <= 0 {
            errors.push(FieldError::new(
                "guards.maxSnapshotAgeMs",
                "must be greater than zero (or null to disable the check)",
            ));
        }
    }
    let rb = &g.restart_budget;
    if rb.max_restarts == 0 {
        errors.push(FieldError::new(
            "guards.restartBudget.maxRestarts",
            "must be at least 1: with 0 every unhealthy node would be quarantined without a single restart",
        ));
    }
    if rb.window_ms <= 0 {
        errors.push(FieldError::new(
            "guards.restartBudget.windowMs",
            "must be greater than zero",
        ));
    }
    if rb.backoff_base_ms < 0 {
        errors.push(FieldError::new(
            "guards.restartBudget.backoffBaseMs",
            "must not be negative (0 disables the back-off)",
        ));
    }
    let fb = &g.failure_budget;
    if fb.max_failures == 0 {
        errors.push(FieldError::new(
            "guards.failureBudget.maxFailures",
            "must be at least 1: with 0 no failed action could ever be retried",
        ));
    }
    if fb.window_ms <= 0 {
        errors.push(FieldError::new(
            "guards.failureBudget.windowMs",
            "must be greater than zero",
        ));
    }
    if fb.retry_after_ms < 0 {
        errors.push(FieldError::new(
            "guards.failureBudget.retryAfterMs",
            "must not be negative",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::playbook::default_playbook;

    #[test]
    fn the_default_playbook_is_valid() {
        assert_eq!(validate(&default_playbook()), Ok(()));
        assert_eq!(validate_for_regions(&default_playbook(), 3), Ok(()));
    }
}
