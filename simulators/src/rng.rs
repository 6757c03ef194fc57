//! The simulator's only source of randomness: a seeded ChaCha stream.
//!
//! ChaCha8 gives the same numbers on every platform and `rand` version that keeps its
//! algorithm, which is what makes `--seed` reproducible byte for byte. Helpers add the few
//! distributions the device models need (normal, Poisson-like counts) without another crate.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A deterministic random source for the device models.
#[derive(Debug, Clone)]
pub struct SimRng {
    inner: ChaCha8Rng,
}

impl SimRng {
    /// A stream fully determined by `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            inner: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        self.inner.random::<f64>()
    }

    /// Uniform in `[low, high)`.
    pub fn uniform(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.unit()
    }

    /// Uniform integer in `[0, n)`; `n` must be positive.
    pub fn below(&mut self, n: u64) -> u64 {
        self.inner.random_range(0..n.max(1))
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Standard normal variate (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.unit().max(f64::MIN_POSITIVE);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// A non-negative vehicle count with mean `mean` (normal approximation to Poisson,
    /// exact inversion for small means).
    pub fn count(&mut self, mean: f64) -> u64 {
        if mean <= 0.0 {
            return 0;
        }
        if mean < 20.0 {
            let limit = (-mean).exp();
            let mut product = self.unit();
            let mut k = 0u64;
            while product > limit && k < 1000 {
                product *= self.unit();
                k += 1;
            }
            return k;
        }
        let v = mean + mean.sqrt() * self.normal();
        v.round().max(0.0) as u64
    }

    /// `n` lowercase letters or digits, as in Frigate's event id suffix.
    pub fn alnum(&mut self, n: usize) -> String {
        const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        (0..n)
            .map(|_| char::from(CHARS[self.below(CHARS.len() as u64) as usize]))
            .collect()
    }
}

/// Rounds to `decimals` decimal places (the precision a real device reports).
pub fn round_to(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    let r = (value * scale).round() / scale;
    if r == 0.0 {
        0.0
    } else {
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream() {
        let mut a = SimRng::new(42);
        let mut b = SimRng::new(42);
        for _ in 0..1000 {
            assert_eq!(a.unit().to_bits(), b.unit().to_bits());
        }
        let mut c = SimRng::new(43);
        assert_ne!(SimRng::new(42).unit().to_bits(), c.unit().to_bits());
    }

    #[test]
    fn count_mean_is_close() {
        let mut rng = SimRng::new(7);
        for mean in [0.5, 3.0, 15.0, 40.0] {
            let n = 20_000;
            let total: u64 = (0..n).map(|_| rng.count(mean)).sum();
            let got = total as f64 / n as f64;
            assert!((got - mean).abs() < mean * 0.05 + 0.05, "{mean}: {got}");
        }
    }

    #[test]
    fn rounding() {
        assert_eq!(round_to(12.345_6, 1), 12.3);
        assert_eq!(round_to(12.356, 2), 12.36);
        assert_eq!(round_to(-0.01, 1), 0.0);
        assert_eq!(round_to(-0.01, 1).to_bits(), 0.0f64.to_bits());
    }
}
