//! "Orders at risk" in a LiveRoomCluster's status, from what the leader's
//! `/admin/status` reports (its log, its commit index, each follower's
//! matched index). Two numbers, both in Raft log entries (an entry carries a
//! batch of orders, D2/D36, so orders ≥ entries):
//!
//! - **in flight** (`uncommittedEntries`): the leader holds them in its log,
//!   a quorum has not acknowledged them yet; their buyers have no answer
//!   yet. A leader lost now may lose them (the buyers see an unknown outcome,
//!   never a false acknowledgement).
//! - **on a minority of regions** (`entriesBelowRegionMajority`): committed
//!   (so acknowledged to buyers) but held by nodes in fewer than a majority of
//!   the regions that have voters. Losing those regions together loses them.
//!   Zero while every region keeps up.

/// A follower the leader heard from within this long counts as replicating
/// in `status.members[].replicating` (the playbook's default
/// `health.replicatingAckMs`).
pub const REPLICATING_ACK_MS: u64 = 2_000;

/// The highest log index that nodes in a majority of the regions hold:
/// `held` is (region, index) per voter (the leader with its last log index,
/// followers with their matched index as the leader reports it).
pub fn region_majority_index<'a, I>(held: I) -> Option<u64>
where
    I: IntoIterator<Item = (&'a str, u64)>,
{
    let mut best: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
    for (region, index) in held {
        let e = best.entry(region).or_insert(0);
        *e = (*e).max(index);
    }
    let mut per_region: Vec<u64> = best.into_values().collect();
    if per_region.is_empty() {
        return None;
    }
    per_region.sort_unstable_by(|a, b| b.cmp(a));
    // The (n/2 + 1)-th largest: held by at least a majority of the regions.
    per_region.get(per_region.len() / 2).copied()
}

/// Committed entries held in fewer than a majority of the regions.
pub fn entries_below_region_majority(commit_index: u64, majority_index: u64) -> u64 {
    commit_index.saturating_sub(majority_index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_majority_of_regions_decides_and_the_best_node_of_a_region_counts() {
        // Three regions: a holds 100 (leader), b 90 (best of two), c 40.
        let held = [("a", 100), ("b", 90), ("b", 10), ("c", 40)];
        assert_eq!(region_majority_index(held), Some(90));
        assert_eq!(entries_below_region_majority(100, 90), 10);
        // One region far behind does not matter; two do.
        assert_eq!(
            region_majority_index([("a", 100), ("b", 5), ("c", 7)]),
            Some(7)
        );
        assert_eq!(
            region_majority_index([("a", 100), ("b", 100), ("c", 0)]),
            Some(100)
        );
        assert_eq!(region_majority_index(std::iter::empty()), None);
        // Four regions: three of them must hold it.
        assert_eq!(
            region_majority_index([("a", 9), ("b", 8), ("c", 7), ("d", 6)]),
            Some(7)
        );
        assert_eq!(entries_below_region_majority(5, 9), 0);
    }
}
