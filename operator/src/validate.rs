//! The operator's own check of a LiveRoomCluster spec: the same rules as the
//! CRD's CEL validations (an API server with an older CRD may not enforce
//! them), worded the same way. A failing spec gets a condition and an event,
//! never a crash loop.

use std::collections::BTreeSet;

use crate::crd::LiveRoomClusterSpec;

/// Every problem with the spec, each naming its field.
pub fn validate_spec(spec: &LiveRoomClusterSpec) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    if spec.regions.is_empty() {
        problems.push("spec.regions: at least one region is required".to_string());
    }
    let total: i32 = spec.regions.iter().map(|r| r.voters).sum();
    if total < 3 {
        problems.push(format!(
            "spec.regions: the cluster needs at least 3 voters in total, has {total}"
        ));
    } else if total % 2 == 0 {
        problems.push(format!(
            "spec.regions: the total number of voters must be odd, is {total}"
        ));
    }
    let mut seen = BTreeSet::new();
    for (i, r) in spec.regions.iter().enumerate() {
        let dns = !r.name.is_empty()
            && r.name.len() <= 30
            && r.name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !r.name.starts_with('-')
            && !r.name.ends_with('-');
        if !dns {
            problems.push(format!(
                "spec.regions[{i}].name: {:?} is not a DNS label of at most 30 characters",
                r.name
            ));
        }
        if !seen.insert(r.name.as_str()) {
            problems.push(format!(
                "spec.regions[{i}].name: region {:?} is listed twice",
                r.name
            ));
        }
        if r.voters < 0 || r.learners < 0 {
            problems.push(format!(
                "spec.regions[{i}]: voters and learners must not be negative"
            ));
        }
        if spec.survive_region_loss && total > 0 && 2 * r.voters >= total {
            problems.push(format!(
                "spec.regions[{i}].voters: region {:?} holds {} of {total} voters; with surviveRegionLoss no region may hold half or more",
                r.name, r.voters
            ));
        }
    }
    if spec.survive_region_loss && spec.regions.iter().filter(|r| r.voters > 0).count() < 3 {
        problems.push("spec.surviveRegionLoss: needs voters in at least 3 regions".to_string());
    }
    let os = &spec.order_store;
    if os.election_timeout_min_ms >= os.election_timeout_max_ms {
        problems.push(
            "spec.orderStore.electionTimeoutMinMs must be below electionTimeoutMaxMs".to_string(),
        );
    }
    if os.heartbeat_ms.saturating_mul(3) > os.election_timeout_min_ms {
        problems.push(
            "spec.orderStore.heartbeatMs must be at most a third of electionTimeoutMinMs"
                .to_string(),
        );
    }
    if spec.image.is_empty() {
        problems.push("spec.image must not be empty".to_string());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{DeletionPolicy, OrderStoreSpec, RegionSpec, SloSpec, StorageSpec};

    fn spec(voters: &[i32], survive: bool) -> LiveRoomClusterSpec {
        LiveRoomClusterSpec {
            regions: voters
                .iter()
                .enumerate()
                .map(|(i, v)| RegionSpec {
                    name: format!("r{i}"),
                    kubeconfig_secret_ref: None,
                    voters: *v,
                    learners: 0,
                    storage: StorageSpec::default(),
                    resources: None,
                    zones: vec![],
                })
                .collect(),
            image: "img".into(),
            order_store: OrderStoreSpec::default(),
            playbook_ref: None,
            slo: SloSpec::default(),
            survive_region_loss: survive,
            paused: false,
            dry_run: false,
            deletion_policy: DeletionPolicy::Retain,
            network: Default::default(),
        }
    }

    #[test]
    fn the_same_rules_as_the_crd() {
        assert!(validate_spec(&spec(&[2, 2, 1], true)).is_ok());
        assert!(validate_spec(&spec(&[2, 2], false)).unwrap_err()[0].contains("odd"));
        assert!(validate_spec(&spec(&[1, 1], false)).unwrap_err()[0].contains("at least 3"));
        assert!(validate_spec(&spec(&[3, 1, 1], true)).unwrap_err()[0].contains("half or more"));
        let mut s = spec(&[3], false);
        s.regions[0].name = "Bad_Name".into();
        assert!(validate_spec(&s).unwrap_err()[0].contains("DNS label"));
        let mut s = spec(&[3], false);
        s.order_store.heartbeat_ms = 200;
        assert!(validate_spec(&s).unwrap_err()[0].contains("third"));
    }
}
