//! Per-object retry delays for failed reconciles: the first failure of an
//! object retries after [`Backoff::FIRST`], each further failure in a row
//! doubles the delay up to [`Backoff::MAX`], and a successful reconcile starts
//! the object over. One broken cluster backs off alone; the others keep their
//! pace.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Consecutive failures per object, keyed by `namespace/name`.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    /// The delay after the first failure.
    pub const FIRST: Duration = Duration::from_secs(1);
    /// The longest delay between two tries.
    pub const MAX: Duration = Duration::from_secs(300);

    /// The delay before retrying after the `failures`-th failure in a row
    /// (counting from 1): 1 s, 2 s, 4 s, … capped at 5 minutes.
    pub fn delay(failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        Self::FIRST
            .checked_mul(1u32 << doublings)
            .map_or(Self::MAX, |d| d.min(Self::MAX))
    }

    /// Records one more failure of `key` and returns how long to wait.
    pub fn failed(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        Self::delay(*n)
    }

    /// Forgets the failures of `key` after it reconciled successfully.
    pub fn succeeded(&self, key: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.remove(key);
    }

    /// How many failures in a row `key` has now.
    pub fn failures(&self, key: &str) -> u32 {
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.get(key).copied().unwrap_or(0)
    }
}

/// The key of a namespaced object.
pub fn key(namespace: Option<&str>, name: &str) -> String {
    format!("{}/{name}", namespace.unwrap_or(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn delays_start_at_one_second_and_double_up_to_five_minutes() {
        let b = Backoff::default();
        let seen: Vec<Duration> = (0..12).map(|_| b.failed("ns/a")).collect();
        assert_eq!(
            seen,
            vec![
                secs(1),
                secs(2),
                secs(4),
                secs(8),
                secs(16),
                secs(32),
                secs(64),
                secs(128),
                secs(256),
                secs(300),
                secs(300),
                secs(300)
            ]
        );
    }

    #[test]
    fn the_delay_never_overflows_after_very_many_failures() {
        assert_eq!(Backoff::delay(0), secs(1));
        assert_eq!(Backoff::delay(40), Backoff::MAX);
        assert_eq!(Backoff::delay(u32::MAX), Backoff::MAX);
    }

    #[test]
    fn a_success_starts_the_object_over() {
        let b = Backoff::default();
        b.failed("ns/a");
        b.failed("ns/a");
        assert_eq!(b.failed("ns/a"), secs(4));
        b.succeeded("ns/a");
        assert_eq!(b.failures("ns/a"), 0);
        assert_eq!(
            b.failed("ns/a"),
            secs(1),
            "a reset object retries after 1 s again"
        );
    }

    #[test]
    fn objects_back_off_independently() {
        let b = Backoff::default();
        for _ in 0..5 {
            b.failed("ns/broken");
        }
        assert_eq!(b.failed("ns/healthy"), secs(1));
        assert_eq!(
            b.failed("other/broken"),
            secs(1),
            "the namespace is part of the key"
        );
        assert_eq!(b.failed("ns/broken"), secs(32));
    }

    #[test]
    fn keys_name_namespace_and_object() {
        assert_eq!(key(Some("shop"), "live"), "shop/live");
        assert_eq!(key(None, "live"), "/live");
    }
}
