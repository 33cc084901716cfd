//! How long a retry waits: Marty's backoff strategies as one pure function of the retry number,
//! the route's recent failure ratio and a random draw.
//!
//! `k` is the retry number: 1 for the first retry (attempt 2), 2 for the second, and so on
//! (0 is taken as 1: nothing is retried before the first retry). With `b` the base delay:
//!
//! | strategy             | delay for retry `k`                                              |
//! |----------------------|------------------------------------------------------------------|
//! | `fixed`              | `b`                                                              |
//! | `linear`             | `b × k`                                                          |
//! | `exponential`        | `b × multiplier^(k−1)`                                           |
//! | `exponential_jitter` | `e × (1 − jitter × draw)`, `e` = `exponential` (capped)          |
//! | `fibonacci`          | `b × F(k)`, F(1) = F(2) = 1, F(3) = 2, F(4) = 3, …               |
//! | `polynomial`         | `b × k^polynomial_degree`                                        |
//! | `adaptive`           | `b × multiplier^(k−1) × 2^(2f − 1)`, `f` the failure ratio       |
//!
//! Every result is capped by `max_delay`, and saturates rather than overflows. `adaptive` scales
//! the uncapped exponential by ×0.5 when nothing fails (`f` = 0), ×1 at `f` = 0.5 and ×2 when
//! everything fails (`f` = 1), then caps: it climbs faster on a failing route and slower on a
//! healthy one, and reaches `max_delay` either way. `exponential_jitter` with `draw` in `[0, 1)`
//! is uniform in `(e·(1 − jitter), e]`; [`Backoff::min_delay`] is that lower bound.
//!
//! The sequence for base 100 ms, multiplier 2, degree 2, jitter 0.5 and max 60 s, in
//! milliseconds (`exponential_jitter` gives the range `(min, max]` over draws in `[0, 1)`):
//!
//! | k  | fixed | linear | exponential | exponential_jitter | fibonacci | polynomial | adaptive f=0 | f=0.5  | f=1    |
//! |----|-------|--------|-------------|--------------------|-----------|------------|--------------|--------|--------|
//! | 1  | 100   | 100    | 100         | (50, 100]          | 100       | 100        | 50           | 100    | 200    |
//! | 2  | 100   | 200    | 200         | (100, 200]         | 100       | 400        | 100          | 200    | 400    |
//! | 3  | 100   | 300    | 400         | (200, 400]         | 200       | 900        | 200          | 400    | 800    |
//! | 4  | 100   | 400    | 800         | (400, 800]         | 300       | 1600       | 400          | 800    | 1600   |
//! | 5  | 100   | 500    | 1600        | (800, 1600]        | 500       | 2500       | 800          | 1600   | 3200   |
//! | 6  | 100   | 600    | 3200        | (1600, 3200]       | 800       | 3600       | 1600         | 3200   | 6400   |
//! | 7  | 100   | 700    | 6400        | (3200, 6400]       | 1300      | 4900       | 3200         | 6400   | 12800  |
//! | 8  | 100   | 800    | 12800       | (6400, 12800]      | 2100      | 6400       | 6400         | 12800  | 25600  |
//! | 9  | 100   | 900    | 25600       | (12800, 25600]     | 3400      | 8100       | 12800        | 25600  | 51200  |
//! | 10 | 100   | 1000   | 51200       | (25600, 51200]     | 5500      | 10000      | 25600        | 51200  | 60000  |
//!
//! (k = 11 caps `exponential` at 60000 and `exponential_jitter` at (30000, 60000].)
//!
//! Out-of-range inputs are made safe, never rejected: a `multiplier` below 1 or NaN is taken as
//! 1 (a delay never shrinks from one retry to the next), `jitter` and `draw` are clamped to
//! `[0, 1]` (NaN: 0), and a failure ratio is clamped to `[0, 1]` with NaN taken as 1 (an
//! unknown ratio gets the longest delay, the side that sheds load). Configuration validates
//! its values; these rules only keep the arithmetic total.
//!
//! As in [`crate::fault`], the random draw is an argument, so every rule is tested exactly.

/// A backoff strategy, by its Marty name (`BackoffStrategy.EXPONENTIAL_JITTER` in Python is
/// `"exponential_jitter"` in configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Strategy {
    Fixed,
    Linear,
    Exponential,
    ExponentialJitter,
    Fibonacci,
    Polynomial,
    Adaptive,
}

impl Strategy {
    /// Every strategy, in Marty's order.
    pub const ALL: [Strategy; 7] = [
        Self::Fixed,
        Self::Linear,
        Self::Exponential,
        Self::ExponentialJitter,
        Self::Fibonacci,
        Self::Polynomial,
        Self::Adaptive,
    ];

    /// The strategy named `name` (snake_case, as in configuration).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Fixed => "fixed",
            Self::Linear => "linear",
            Self::Exponential => "exponential",
            Self::ExponentialJitter => "exponential_jitter",
            Self::Fibonacci => "fibonacci",
            Self::Polynomial => "polynomial",
            Self::Adaptive => "adaptive",
        }
    }
}

/// Growth factor of `exponential`, `exponential_jitter` and `adaptive` unless configured.
pub const DEFAULT_MULTIPLIER: f64 = 2.0;
/// Exponent of `polynomial` unless configured.
pub const DEFAULT_POLYNOMIAL_DEGREE: u32 = 2;
/// Share of the delay `exponential_jitter` may take off unless configured ("equal jitter":
/// between half and all of the exponential delay).
pub const DEFAULT_JITTER: f64 = 0.5;

/// A route's backoff: the strategy and its parameters. Durations in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    pub strategy: Strategy,
    pub base_delay: u64,
    /// Cap of every delay.
    pub max_delay: u64,
    /// Growth factor per retry of the exponential strategies (≥ 1).
    pub multiplier: f64,
    /// Exponent of `polynomial`.
    pub polynomial_degree: u32,
    /// Share of the delay `exponential_jitter` may take off, in `[0, 1]`.
    pub jitter: f64,
    /// Marty's `enable_adaptive_delays`: any strategy's delay is scaled by the route's failure
    /// ratio as `adaptive` scales its own (×0.5 when nothing fails, ×2 when everything does),
    /// then capped.
    pub adaptive: bool,
}

impl Backoff {
    /// `strategy` with the default multiplier, degree and jitter.
    pub fn new(strategy: Strategy, base_delay: u64, max_delay: u64) -> Self {
        Self {
            strategy,
            base_delay,
            max_delay,
            multiplier: DEFAULT_MULTIPLIER,
            polynomial_degree: DEFAULT_POLYNOMIAL_DEGREE,
            jitter: DEFAULT_JITTER,
            adaptive: false,
        }
    }

    /// Nanoseconds to wait before retry `retry` (1 = the first retry, i.e. attempt 2), given
    /// the route's recent failure ratio (used by `adaptive`) and a random draw in `[0, 1)`
    /// (used by `exponential_jitter`). At most `max_delay`; total for any inputs.
    pub fn delay(&self, retry: u32, failure_ratio: f64, draw: f64) -> u64 {
        let delay = self.strategy_delay(retry, failure_ratio, draw);
        if self.adaptive && self.strategy != Strategy::Adaptive {
            let f = unit(failure_ratio, 1.0);
            return scale(delay, (2.0 * f - 1.0).exp2(), self.max_delay);
        }
        delay
    }

    fn strategy_delay(&self, retry: u32, failure_ratio: f64, draw: f64) -> u64 {
        let k = retry.max(1);
        let base = self.base_delay;
        let cap = self.max_delay;
        match self.strategy {
            Strategy::Fixed => base.min(cap),
            Strategy::Linear => base.saturating_mul(u64::from(k)).min(cap),
            Strategy::Exponential => scale(base, self.growth(k), cap),
            Strategy::ExponentialJitter => {
                let e = scale(base, self.growth(k), cap);
                jittered(e, unit(self.jitter, 0.0), unit(draw, 0.0))
            }
            Strategy::Fibonacci => fibonacci_scaled(base, k, cap),
            Strategy::Polynomial => {
                let factor = u64::from(k)
                    .checked_pow(self.polynomial_degree)
                    .unwrap_or(u64::MAX);
                base.saturating_mul(factor).min(cap)
            }
            Strategy::Adaptive => {
                let f = unit(failure_ratio, 1.0);
                scale(base, self.growth(k) * (2.0 * f - 1.0).exp2(), cap)
            }
        }
    }

    /// The least [`Backoff::delay`] can give for `retry` over every draw: the jittered lower
    /// bound for `exponential_jitter` (its delay at draw 1), the delay itself otherwise. Tests
    /// check measured gaps against it.
    pub fn min_delay(&self, retry: u32, failure_ratio: f64) -> u64 {
        self.delay(retry, failure_ratio, 1.0)
    }

    /// `multiplier^(k−1)`, with the multiplier made at least 1 and the exponent saturated.
    fn growth(&self, k: u32) -> f64 {
        let m = if self.multiplier >= 1.0 {
            self.multiplier
        } else {
            1.0
        };
        let exponent = i32::try_from(k.saturating_sub(1)).unwrap_or(i32::MAX);
        if exponent == 0 {
            1.0
        } else {
            m.powi(exponent)
        }
    }
}

/// `value` clamped to `[0, 1]`, `nan` when it is NaN.
fn unit(value: f64, nan: f64) -> f64 {
    if value.is_nan() {
        nan
    } else {
        value.clamp(0.0, 1.0)
    }
}

/// `base × factor` rounded to nanoseconds, capped, with no overflow (`factor` may be infinite).
fn scale(base: u64, factor: f64, cap: u64) -> u64 {
    let value = base as f64 * factor;
    // NaN only from 0 × ∞: no base, no delay.
    if value.is_nan() || value <= 0.0 {
        return 0;
    }
    if value >= cap as f64 {
        return cap;
    }
    (value.round() as u64).min(cap)
}

/// `e × (1 − jitter × draw)`, never above `e`.
fn jittered(e: u64, jitter: f64, draw: f64) -> u64 {
    let value = e as f64 * (1.0 - jitter * draw);
    (value.round() as u64).min(e)
}

/// `base × F(k)` capped: stops as soon as the cap is reached, so it takes at most ~93 steps.
fn fibonacci_scaled(base: u64, k: u32, cap: u64) -> u64 {
    if base == 0 {
        return 0;
    }
    let (mut current, mut next) = (1u64, 1u64);
    for _ in 1..k {
        if base.saturating_mul(current) >= cap {
            return cap;
        }
        (current, next) = (next, current.saturating_add(next));
    }
    base.saturating_mul(current).min(cap)
}
