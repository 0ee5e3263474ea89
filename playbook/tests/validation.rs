//! Invalid playbooks are rejected with messages that name the field.

use roomkeeper_playbook::{
    default_playbook, validate, validate_for_regions, ActionKind, Approval, Condition,
    FailureBudget, OnTimeout, Playbook, RestartBudget, SignalThresholdSpec,
};

const VALID: &str = r#"
tiers:
  - name: heal
    level: 1
    trigger:
      condition: {type: nodeUnhealthy}
      forMs: 5000
      clearForMs: 30000
    actions: [restartNode, recordEvent]
  - name: evacuate
    level: 3
    trigger:
      condition: {type: regionLost}
      forMs: 30000
      clearForMs: 300000
    actions: [setTrafficWeightZero, replaceVotersElsewhere, pageHuman]
    approval:
      timeoutMs: 300000
      onTimeout: approve
guards:
  cooldownMs: 60000
  maxActionsPerWindow: 5
dryRun: true
"#;

fn errors_of(yaml: &str) -> Vec<String> {
    match Playbook::from_yaml(yaml) {
        Ok(_) => panic!("expected the playbook to be rejected:\n{yaml}"),
        Err(e) => e.errors.iter().map(ToString::to_string).collect(),
    }
}

fn assert_error(errors: &[String], path_and_words: &str) {
    assert!(
        errors.iter().any(|e| e.starts_with(path_and_words)),
        "expected an error starting with {path_and_words:?}, got {errors:#?}"
    );
}

#[test]
fn a_valid_yaml_playbook_parses_with_defaults_for_missing_guards() {
    let p = Playbook::from_yaml(VALID).expect("valid");
    assert!(p.dry_run);
    assert!(!p.paused);
    assert_eq!(p.guards.max_actions_per_window, 5);
    assert!(
        p.guards.never_below_quorum,
        "unset guards keep safe defaults"
    );
    assert!(p.guards.one_region_at_a_time);
    assert_eq!(
        p.tiers[1].approval,
        Some(Approval {
            timeout_ms: 300_000,
            on_timeout: OnTimeout::Approve
        })
    );
}

#[test]
fn the_default_playbook_round_trips_through_yaml_and_json() {
    let p = default_playbook();
    let yaml = p.to_yaml();
    assert_eq!(Playbook::from_yaml(&yaml).expect("default parses"), p);
    let json = serde_json::to_string(&p).unwrap();
    assert!(
        json.contains("\"forMs\""),
        "camelCase on the CRD face: {json}"
    );
    assert_eq!(serde_json::from_str::<Playbook>(&json).unwrap(), p);
}

#[test]
fn an_unknown_action_names_its_field() {
    let yaml = VALID.replace(
        "[restartNode, recordEvent]",
        "[restartNode, rebootEverything]",
    );
    let errors = errors_of(&yaml);
    assert_error(
        &errors,
        "tiers[0].actions[1]: unknown variant `rebootEverything`",
    );
}

#[test]
fn an_unknown_field_names_its_parent() {
    let yaml = VALID.replace("forMs: 5000", "forMS: 5000");
    let errors = errors_of(&yaml);
    assert_error(&errors, "tiers[0].trigger: unknown field `forMS`");
}

#[test]
fn a_negative_hold_down_names_its_field() {
    let yaml = VALID.replace("forMs: 30000", "forMs: -5");
    let errors = errors_of(&yaml);
    assert_error(&errors, "tiers[1].trigger.forMs: must not be negative");
}

#[test]
fn a_negative_stand_down_time_and_cooldown_name_their_fields() {
    let yaml = VALID
        .replace("clearForMs: 30000", "clearForMs: -1")
        .replace("cooldownMs: 60000", "cooldownMs: -10");
    let errors = errors_of(&yaml);
    assert_error(&errors, "tiers[0].trigger.clearForMs: must not be negative");
    assert_error(&errors, "guards.cooldownMs: must not be negative");
}

#[test]
fn zero_durations_that_mean_nothing_are_rejected() {
    let yaml = VALID
        .replace("forMs: 30000", "forMs: 0")
        .replace("timeoutMs: 300000", "timeoutMs: 0")
        .replace("cooldownMs: 60000", "cooldownMs: 60000\n  windowMs: 0");
    let errors = errors_of(&yaml);
    assert_error(&errors, "tiers[1].trigger.forMs: must be greater than zero for a tier that changes voter membership");
    assert_error(
        &errors,
        "tiers[1].approval.timeoutMs: must be greater than zero",
    );
    assert_error(&errors, "guards.windowMs: must be greater than zero");
}

#[test]
fn a_guard_that_can_never_be_met_is_rejected() {
    let yaml = VALID.replace("maxActionsPerWindow: 5", "maxActionsPerWindow: 0");
    assert_error(
        &errors_of(&yaml),
        "guards.maxActionsPerWindow: must be at least 1",
    );

    let mut p = default_playbook();
    p.guards.min_regions_visible_to_act = 4;
    assert!(
        validate(&p).is_ok(),
        "without a topology the count cannot be judged"
    );
    let errors: Vec<String> = validate_for_regions(&p, 3)
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_error(
        &errors,
        "guards.minRegionsVisibleToAct: is 4 but the topology has 3 regions",
    );

    p.guards.min_regions_visible_to_act = 0;
    let errors: Vec<String> = validate(&p)
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_error(&errors, "guards.minRegionsVisibleToAct: must be at least 1");
}

#[test]
fn a_tier_that_skips_quorum_safety_is_rejected() {
    let yaml = VALID.replace(
        "maxActionsPerWindow: 5",
        "maxActionsPerWindow: 5\n  neverBelowQuorum: false",
    );
    assert_error(
        &errors_of(&yaml),
        "guards.neverBelowQuorum: must be true: tiers[1] (evacuate) changes voter membership",
    );
    let yaml = VALID.replace(
        "maxActionsPerWindow: 5",
        "maxActionsPerWindow: 5\n  oneRegionAtATime: false",
    );
    assert_error(
        &errors_of(&yaml),
        "guards.oneRegionAtATime: must be true: tiers[1] (evacuate) evacuates regions",
    );
}

#[test]
fn an_evacuation_tier_without_membership_actions_still_needs_one_region_at_a_time() {
    let mut p = default_playbook();
    p.tiers[3].actions = vec![ActionKind::SetTrafficWeightZero];
    p.guards.one_region_at_a_time = false;
    let errors: Vec<String> = validate(&p)
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_error(
        &errors,
        "guards.oneRegionAtATime: must be true: tiers[3] (evacuate)",
    );
}

#[test]
fn duplicate_tier_names_and_levels_are_rejected() {
    let yaml = VALID.replace("name: evacuate\n    level: 3", "name: heal\n    level: 1");
    let errors = errors_of(&yaml);
    assert_error(
        &errors,
        "tiers[1].name: duplicate tier name \"heal\" (already used by tiers[0])",
    );
    assert_error(
        &errors,
        "tiers[1].level: duplicate level 1 (already used by tiers[0])",
    );
}

#[test]
fn a_level_outside_zero_to_four_is_rejected() {
    let yaml = VALID.replace("level: 3", "level: 7");
    assert_error(
        &errors_of(&yaml),
        "tiers[1].level: must be between 0 (watch) and 4 (protect)",
    );
    let yaml = VALID.replace("level: 3", "level: -1");
    assert_error(
        &errors_of(&yaml),
        "tiers[1].level: invalid type: integer `-1`, expected u8",
    );
}

#[test]
fn an_action_that_cannot_apply_to_the_condition_target_is_rejected() {
    let yaml = VALID.replace("[restartNode, recordEvent]", "[replaceVotersElsewhere]");
    assert_error(
        &errors_of(&yaml),
        "tiers[0].actions[0]: replaceVotersElsewhere cannot apply to a node",
    );
}

#[test]
fn minority_recovery_can_never_be_a_playbook_action() {
    let yaml = VALID.replace(
        "[restartNode, recordEvent]",
        "[restartNode, forceRecoverFromMinority]",
    );
    assert_error(
        &errors_of(&yaml),
        "tiers[0].actions[1]: forceRecoverFromMinority is never decided by a playbook",
    );
}

#[test]
fn stand_down_thresholds_above_escalation_thresholds_are_rejected() {
    let mut p = default_playbook();
    p.tiers[2].trigger.condition = Condition::RegionDegraded(SignalThresholdSpec {
        p99_ms_above: Some(400.0),
        error_rate_above: None,
        p99_ms_clear_below: Some(500.0),
        error_rate_clear_below: Some(0.01),
    });
    let errors: Vec<String> = validate(&p)
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_error(
        &errors,
        "tiers[2].trigger.condition.regionDegraded.p99MsClearBelow: must not be above p99MsAbove",
    );
    assert_error(
        &errors,
        "tiers[2].trigger.condition.regionDegraded.errorRateClearBelow: has no effect without errorRateAbove",
    );
}

#[test]
fn an_empty_action_list_and_empty_tier_list_are_rejected() {
    let yaml = VALID.replace("[restartNode, recordEvent]", "[]");
    assert_error(
        &errors_of(&yaml),
        "tiers[0].actions: must list at least one action",
    );
    assert_error(
        &errors_of("tiers: []\n"),
        "tiers: must list at least one tier",
    );
}

#[test]
fn a_missing_required_field_is_reported() {
    let yaml = VALID.replace("      clearForMs: 300000\n", "");
    assert_error(
        &errors_of(&yaml),
        "tiers[1].trigger: missing field `clearForMs`",
    );
}

#[test]
fn an_unknown_condition_names_its_field() {
    let yaml = VALID.replace(
        "condition: {type: regionLost}",
        "condition: {type: regionOnFire}",
    );
    assert_error(
        &errors_of(&yaml),
        "tiers[1].trigger.condition.type: unknown variant `regionOnFire`",
    );
}

#[test]
fn conditions_are_tagged_by_type_as_in_kubernetes_apis() {
    let yaml = r#"
tiers:
  - name: watch
    level: 0
    trigger:
      condition:
        type: anyOf
        conditions:
          - {type: signalDegraded, p99MsAbove: 250, errorRateAbove: 0.02}
          - {type: replicaLagging, entriesAbove: 1000}
      forMs: 30000
      clearForMs: 60000
    actions: [recordEvent]
  - name: move
    level: 2
    trigger:
      condition:
        type: regionDegraded
        p99MsAbove: 400
      forMs: 20000
      clearForMs: 120000
    actions: [transferLeadershipAway, setTrafficWeightZero]
    standDownActions: [restoreTrafficWeight]
"#;
    let p = Playbook::from_yaml(yaml).expect("type-tagged conditions parse");
    assert_eq!(p.tiers[0].trigger.condition.name(), "anyOf");
    assert_eq!(
        p.tiers[1].trigger.condition,
        Condition::RegionDegraded(SignalThresholdSpec {
            p99_ms_above: Some(400.0),
            ..SignalThresholdSpec::default()
        })
    );
}

#[test]
fn a_misspelled_threshold_names_the_condition() {
    let yaml = VALID.replace(
        "condition: {type: regionLost}",
        "condition: {type: regionDegraded, p99msAbove: 400}",
    );
    // serde buffers a type-tagged map, so the path stops at the trigger; the
    // message still names the misspelled field and the ones it could be.
    assert_error(
        &errors_of(&yaml),
        "tiers[1].trigger: unknown field `p99msAbove`, expected one of `p99MsAbove`",
    );
}

#[test]
fn restart_and_failure_budgets_default_when_absent_and_parse_when_given() {
    let p = Playbook::from_yaml(VALID).expect("valid");
    assert_eq!(p.guards.restart_budget, RestartBudget::default());
    assert_eq!(p.guards.failure_budget, FailureBudget::default());
    assert_eq!(
        (
            p.guards.restart_budget.max_restarts,
            p.guards.restart_budget.window_ms,
            p.guards.restart_budget.backoff_base_ms
        ),
        (3, 600_000, 10_000)
    );
    assert_eq!(
        (
            p.guards.failure_budget.max_failures,
            p.guards.failure_budget.window_ms,
            p.guards.failure_budget.retry_after_ms
        ),
        (3, 600_000, 10_000)
    );

    let yaml = VALID.replace(
        "cooldownMs: 60000",
        "cooldownMs: 60000\n  restartBudget: {maxRestarts: 5}\n  failureBudget: {windowMs: 120000, retryAfterMs: 5000}",
    );
    let p = Playbook::from_yaml(&yaml).expect("valid");
    assert_eq!(p.guards.restart_budget.max_restarts, 5);
    assert_eq!(
        p.guards.restart_budget.window_ms, 600_000,
        "unset fields default"
    );
    assert_eq!(p.guards.failure_budget.window_ms, 120_000);
    assert_eq!(p.guards.failure_budget.retry_after_ms, 5_000);
    assert_eq!(p.guards.failure_budget.max_failures, 3);
}

#[test]
fn budgets_that_mean_nothing_are_rejected_with_their_paths() {
    let yaml = VALID.replace(
        "cooldownMs: 60000",
        "cooldownMs: 60000\n  restartBudget: {maxRestarts: 0, windowMs: 0, backoffBaseMs: -1}\n  failureBudget: {maxFailures: 0, windowMs: -5, retryAfterMs: -1}",
    );
    let errors = errors_of(&yaml);
    assert_error(
        &errors,
        "guards.restartBudget.maxRestarts: must be at least 1",
    );
    assert_error(
        &errors,
        "guards.restartBudget.windowMs: must be greater than zero",
    );
    assert_error(
        &errors,
        "guards.restartBudget.backoffBaseMs: must not be negative",
    );
    assert_error(
        &errors,
        "guards.failureBudget.maxFailures: must be at least 1",
    );
    assert_error(
        &errors,
        "guards.failureBudget.windowMs: must be greater than zero",
    );
    assert_error(
        &errors,
        "guards.failureBudget.retryAfterMs: must not be negative",
    );

    let yaml = VALID.replace(
        "cooldownMs: 60000",
        "cooldownMs: 60000\n  restartBudget: {maxRestart: 2}",
    );
    assert_error(
        &errors_of(&yaml),
        "guards.restartBudget: unknown field `maxRestart`",
    );
}

#[test]
fn the_default_playbook_states_its_convergence_bound_and_when_sales_reopen() {
    let p = default_playbook();
    // max(longest clearForMs 5 min, failure window 10 min + retry 10 s,
    // restart window 10 min)
    assert_eq!(p.convergence_bound_ms(), 610_000);
    assert_eq!(p.sales_reopen_after_ms(), Some(30_000));
}
