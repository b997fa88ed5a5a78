//! A small seedable random number generator, so policies that use chance
//! (jitter, random balancing) are deterministic in tests.

use std::sync::Mutex;
use std::sync::PoisonError;

/// xorshift64*: fast and good enough to spread load and jitter; not for secrets.
///
/// Shared with backends (as [`backend::Rng`](crate::backend::Rng)) for
/// choices that must replay for a seed, such as mq-memory's injected faults.
#[derive(Debug)]
pub struct Rng(Mutex<u64>);

impl Rng {
    /// A generator with a fixed seed: the same sequence every time.
    pub fn seeded(seed: u64) -> Self {
        // splitmix64 of the seed, so small seeds still start well mixed.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng(Mutex::new((z ^ (z >> 31)) | 1))
    }

    /// A generator seeded from the OS.
    pub fn from_entropy() -> Self {
        Self::seeded(uuid::Uuid::new_v4().as_u64_pair().0)
    }

    /// The next 64 random bits.
    pub fn next_u64(&self) -> u64 {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut x = *state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        *state = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A float in [0, 1).
    pub fn next_f64(&self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// An integer in [0, n); 0 when n is 0.
    pub fn below(&self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        (self.next_u64() % n as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence() {
        let (a, b) = (Rng::seeded(7), Rng::seeded(7));
        let xs: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..5).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs, (0..5).map(|_| Rng::seeded(8).next_u64()).collect::<Vec<_>>());
    }

    #[test]
    fn ranges_hold() {
        let r = Rng::seeded(1);
        for _ in 0..1000 {
            let f = r.next_f64();
            assert!((0.0..1.0).contains(&f));
            assert!(r.below(3) < 3);
        }
        assert_eq!(r.below(0), 0);
    }
}
