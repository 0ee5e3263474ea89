//! The failover playbook engine of roomkeeper's control plane.
//!
//! Pure: (playbook, history of health snapshots, now, memory) → decisions. No
//! I/O, no clock, no async, no Kubernetes types; the local binding
//! (`roomkeeper demo`) and the Kubernetes binding (the operator) both observe
//! the cluster, call [`Engine::decide`], carry out the `execute` decisions, and
//! report outcomes with [`EngineMemory::record_outcome`].
//!
//! - [`health`]: snapshots and the views derived from them (the two-view rule for
//!   node liveness, region health, shard quorum).
//! - [`playbook`]: the `FailoverPlaybook` spec types and [`default_playbook`].
//! - [`validate()`]: field-path error messages for invalid playbooks.
//! - [`Engine`]: decisions with reasons, evidence and guard dispositions.
//! - [`EngineMemory`]: serializable memory of decisions, approvals and outcomes,
//!   quarantined nodes, with explanations in words.
//! - [`budgets`]: what is left of each guard's budget ([`Engine::budgets`]),
//!   for metrics and status.
#![forbid(unsafe_code)]

pub mod budgets;
mod conditions;
pub mod decision;
pub mod engine;
pub mod health;
pub mod memory;
pub mod playbook;
pub mod validate;
pub mod words;

pub use budgets::{CooldownState, FailureBudgetState, GuardBudgets, RestartBudgetState};
pub use decision::{
    ActionOutcome, ApprovalVerdict, Decision, DecisionId, Disposition, Evidence, Guard, Phase,
    Target, TargetKind,
};
pub use engine::{action_phrase, Engine, OperatorCommand, CONVERGE};
pub use health::{
    assess, Assessment, ControllerView, HealthSnapshot, Liveness, NodeHealth, NodeId, QuorumState,
    RegionHealth, Role, RoomLiveWindow, ShardHealth, SignalThresholds,
};
pub use memory::{
    Activation, ActivationPhase, DecisionRecord, EffectOwner, EngineMemory, MemoryError,
    Quarantine, Step, StepState,
};
pub use playbook::{
    default_playbook, ActionKind, Approval, Condition, FailureBudget, Guards, HealthRules, LagSpec,
    LiveWindowPolicy, OnTimeout, Playbook, RestartBudget, SignalThresholdSpec, Tier, Trigger,
};
pub use validate::{validate, validate_for_regions, FieldError, InvalidPlaybook};
