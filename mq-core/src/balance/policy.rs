//! Which endpoint to use next.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::rng::Rng;

/// Picks one endpoint.
///
/// `candidates` are the indices of the endpoints that may be used now
/// (healthy, not yet tried for this send), in priority order;
/// `in_flight[i]` is the number of operations under way on endpoint `i`.
/// Returns one of `candidates`, or `None` when it is empty.
pub trait BalancePolicy: Send + Sync + fmt::Debug {
    /// Picks one of `candidates`.
    fn pick(&self, candidates: &[usize], in_flight: &[usize]) -> Option<usize>;
}

/// Each endpoint in turn.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    /// Starts with the first endpoint.
    pub fn new() -> Self {
        Self::default()
    }
}

impl BalancePolicy for RoundRobin {
    fn pick(&self, candidates: &[usize], _in_flight: &[usize]) -> Option<usize> {
        if candidates.is_empty() {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        candidates.get(n % candidates.len()).copied()
    }
}

/// A random endpoint (seedable for tests).
#[derive(Debug)]
pub struct Random {
    rng: Rng,
}

impl Random {
    /// Seeded from the OS.
    pub fn new() -> Self {
        Random {
            rng: Rng::from_entropy(),
        }
    }

    /// The same choices for the same seed.
    pub fn seeded(seed: u64) -> Self {
        Random {
            rng: Rng::seeded(seed),
        }
    }
}

impl Default for Random {
    fn default() -> Self {
        Self::new()
    }
}

impl BalancePolicy for Random {
    fn pick(&self, candidates: &[usize], _in_flight: &[usize]) -> Option<usize> {
        candidates.get(self.rng.below(candidates.len())).copied()
    }
}

/// The endpoint with the fewest operations under way (least connections);
/// ties go to the earlier one.
#[derive(Debug, Default, Clone, Copy)]
pub struct LeastInFlight;

impl BalancePolicy for LeastInFlight {
    fn pick(&self, candidates: &[usize], in_flight: &[usize]) -> Option<usize> {
        candidates
            .iter()
            .copied()
            .min_by_key(|i| in_flight.get(*i).copied().unwrap_or(0))
    }
}

/// Two random endpoints, the one with fewer operations under way: nearly as
/// good as least-in-flight, without every sender piling onto the same one.
#[derive(Debug)]
pub struct PowerOfTwoChoices {
    rng: Rng,
}

impl PowerOfTwoChoices {
    /// Seeded from the OS.
    pub fn new() -> Self {
        PowerOfTwoChoices {
            rng: Rng::from_entropy(),
        }
    }

    /// The same choices for the same seed.
    pub fn seeded(seed: u64) -> Self {
        PowerOfTwoChoices {
            rng: Rng::seeded(seed),
        }
    }
}

impl Default for PowerOfTwoChoices {
    fn default() -> Self {
        Self::new()
    }
}

impl BalancePolicy for PowerOfTwoChoices {
    fn pick(&self, candidates: &[usize], in_flight: &[usize]) -> Option<usize> {
        match candidates.len() {
            0 => None,
            1 => Some(candidates[0]),
            n => {
                let a = self.rng.below(n);
                let mut b = self.rng.below(n - 1);
                if b >= a {
                    b += 1;
                }
                let load = |i: usize| in_flight.get(candidates[i]).copied().unwrap_or(0);
                Some(if load(b) < load(a) {
                    candidates[b]
                } else {
                    candidates[a]
                })
            }
        }
    }
}

/// Failover: the first candidate in priority order (the primary while it is
/// healthy, then the backups in order; back to the primary once it recovers).
#[derive(Debug, Default, Clone, Copy)]
pub struct PrimaryBackup;

impl BalancePolicy for PrimaryBackup {
    fn pick(&self, candidates: &[usize], _in_flight: &[usize]) -> Option<usize> {
        candidates.first().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn _obj_safe(_: Box<dyn BalancePolicy>) {}

    fn picks(p: &dyn BalancePolicy, candidates: &[usize], in_flight: &[usize], n: usize) -> Vec<usize> {
        (0..n).map(|_| p.pick(candidates, in_flight).unwrap()).collect()
    }

    #[test]
    fn round_robin_cycles_over_candidates() {
        assert_eq!(
            picks(&RoundRobin::new(), &[0, 1, 2], &[0; 3], 6),
            [0, 1, 2, 0, 1, 2]
        );
        assert_eq!(
            picks(&RoundRobin::new(), &[0, 2], &[0; 3], 4),
            [0, 2, 0, 2],
            "skips the unhealthy one"
        );
        assert_eq!(RoundRobin::new().pick(&[], &[]), None);
    }

    #[test]
    fn random_is_seeded_and_covers_all() {
        let a = picks(&Random::seeded(9), &[0, 1, 2, 3], &[0; 4], 100);
        assert_eq!(a, picks(&Random::seeded(9), &[0, 1, 2, 3], &[0; 4], 100));
        for i in 0..4 {
            assert!(a.contains(&i), "{i} never picked: {a:?}");
        }
        assert!(
            picks(&Random::seeded(1), &[1, 3], &[0; 4], 50)
                .iter()
                .all(|i| *i == 1 || *i == 3)
        );
    }

    #[test]
    fn least_in_flight_prefers_idle_and_breaks_ties_by_order() {
        assert_eq!(LeastInFlight.pick(&[0, 1, 2], &[5, 1, 3]), Some(1));
        assert_eq!(LeastInFlight.pick(&[0, 1, 2], &[2, 2, 2]), Some(0));
        assert_eq!(
            LeastInFlight.pick(&[0, 2], &[5, 0, 3]),
            Some(2),
            "only candidates count"
        );
    }

    #[test]
    fn power_of_two_never_picks_the_busiest_of_many() {
        let in_flight = [100, 0, 0, 0];
        let p = PowerOfTwoChoices::seeded(3);
        let got = picks(&p, &[0, 1, 2, 3], &in_flight, 500);
        // 0 wins only if both choices were 0, which the distinct draw rules out.
        assert!(!got.contains(&0), "the busiest endpoint was picked");
        assert_eq!(
            got,
            picks(&PowerOfTwoChoices::seeded(3), &[0, 1, 2, 3], &in_flight, 500)
        );
        assert_eq!(PowerOfTwoChoices::seeded(1).pick(&[7], &[0; 8]), Some(7));
    }

    #[test]
    fn primary_backup_takes_the_first_healthy() {
        assert_eq!(PrimaryBackup.pick(&[0, 1, 2], &[9, 0, 0]), Some(0));
        assert_eq!(
            PrimaryBackup.pick(&[1, 2], &[9, 0, 0]),
            Some(1),
            "backup while the primary is down"
        );
        assert_eq!(PrimaryBackup.pick(&[], &[]), None);
    }
}
