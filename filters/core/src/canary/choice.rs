//! The weighted choice between a route's destinations.
//!
//! Envoy's `weighted_clusters` lays the weights end to end — `[0, w1)`, `[w1, w1+w2)`,
//! ... — and picks the range a per-request random value falls into. We do the same,
//! with the value drawn either from the host's randomness or, for sticky requests,
//! from a stable hash of the user's key: the same key always lands on the same
//! point, so its destination stays put while the weights stay. Moving weight from
//! the first destination to the last (90/10 → 80/20) only moves the keys between
//! the old and the new boundary: users already on the canary stay on it.

use crate::host::RandomSource;

/// FNV-1a over the key, then the SplitMix64 finalizer so nearby keys ("user-1",
/// "user-2") spread over the whole range. Fixed arithmetic: the same on every
/// worker, every VM, every restart and every platform.
pub fn sticky_hash(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut z = h;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Maps a uniform 64-bit value onto `[0, total)` without modulo bias worth speaking
/// of (multiply-shift).
pub fn scale(value: u64, total: u64) -> u64 {
    ((u128::from(value) * u128::from(total)) >> 64) as u64
}

/// Where a request's point comes from.
pub enum Draw<'a> {
    /// The sticky key (header value or cookie value).
    Sticky(&'a [u8]),
    /// No key: a fresh random value.
    Random(&'a mut dyn RandomSource),
}

/// Picks the index of the destination whose weight range holds the drawn point.
/// `weights` are in configuration order; zero weights are never picked. Returns
/// None only when every weight is zero (configuration validation prevents that).
pub fn pick(weights: &[u32], draw: Draw<'_>) -> Option<usize> {
    let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
    if total == 0 {
        return None;
    }
    let value = match draw {
        Draw::Sticky(key) => sticky_hash(key),
        Draw::Random(rng) => rng.next_u64(),
    };
    let point = scale(value, total);
    let mut end = 0u64;
    for (i, w) in weights.iter().enumerate() {
        end += u64::from(*w);
        if point < end {
            return Some(i);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::SplitMix64;

    #[test]
    fn zero_weights_never_picked() {
        let mut rng = SplitMix64::new(7);
        for _ in 0..10_000 {
            let i = pick(&[0, 5, 0, 5, 0], Draw::Random(&mut rng)).unwrap();
            assert!(i == 1 || i == 3, "picked weight-0 destination {i}");
        }
        for k in 0..10_000 {
            let key = format!("user-{k}");
            let i = pick(&[0, 1, 0], Draw::Sticky(key.as_bytes())).unwrap();
            assert_eq!(i, 1);
        }
        assert_eq!(pick(&[0, 0], Draw::Random(&mut rng)), None);
        assert_eq!(pick(&[], Draw::Random(&mut rng)), None);
    }

    #[test]
    fn sticky_is_stable_per_key() {
        for k in 0..2_000 {
            let key = format!("user-{k}");
            let first = pick(&[90, 10], Draw::Sticky(key.as_bytes()));
            for _ in 0..5 {
                assert_eq!(pick(&[90, 10], Draw::Sticky(key.as_bytes())), first);
            }
        }
        // Pinned values: the hash must never change between releases, or every
        // sticky user would be reshuffled by an upgrade.
        assert_eq!(sticky_hash(b"alice"), 0xc5d1_556d_6677_4a5c);
        assert_eq!(sticky_hash(b""), 0xf52a_15e9_a9b5_e89b);
        assert_ne!(sticky_hash(b"alice"), sticky_hash(b"bob"));
    }

    /// Pearson chi-square of observed counts against expected proportions.
    fn chi_square(counts: &[u64], weights: &[u32]) -> f64 {
        let n: u64 = counts.iter().sum();
        let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
        counts
            .iter()
            .zip(weights)
            .filter(|(_, w)| **w > 0)
            .map(|(c, w)| {
                let e = n as f64 * f64::from(*w) / total as f64;
                (*c as f64 - e).powi(2) / e
            })
            .sum()
    }

    #[test]
    fn sticky_split_follows_weights_over_many_keys() {
        // Critical chi-square values at 99.9 %: df=1 10.828, df=2 13.816.
        let weights = [90, 10];
        let mut counts = [0u64; 2];
        for k in 0..20_000 {
            let key = format!("user-{k}");
            counts[pick(&weights, Draw::Sticky(key.as_bytes())).unwrap()] += 1;
        }
        assert!(chi_square(&counts, &weights) < 10.828, "{counts:?}");

        let weights = [50, 30, 20];
        let mut counts = [0u64; 3];
        for k in 0..30_000 {
            let key = format!("session-{k:08x}");
            counts[pick(&weights, Draw::Sticky(key.as_bytes())).unwrap()] += 1;
        }
        assert!(chi_square(&counts, &weights) < 13.816, "{counts:?}");
    }

    #[test]
    fn random_split_follows_weights() {
        let weights = [1, 3];
        let mut rng = SplitMix64::new(42);
        let mut counts = [0u64; 2];
        for _ in 0..40_000 {
            counts[pick(&weights, Draw::Random(&mut rng)).unwrap()] += 1;
        }
        assert!(chi_square(&counts, &[1, 3]) < 10.828, "{counts:?}");
    }

    #[test]
    fn ramping_up_only_moves_keys_onto_the_canary() {
        // 90/10 → 80/20: no key on v2 goes back to v1.
        for k in 0..5_000 {
            let key = format!("user-{k}");
            let before = pick(&[90, 10], Draw::Sticky(key.as_bytes())).unwrap();
            let after = pick(&[80, 20], Draw::Sticky(key.as_bytes())).unwrap();
            assert!(!(before == 1 && after == 0), "{key} left the canary");
        }
    }

    #[test]
    fn scale_stays_in_range() {
        assert_eq!(scale(0, 100), 0);
        assert_eq!(scale(u64::MAX, 100), 99);
        assert_eq!(scale(u64::MAX, 1), 0);
    }
}
