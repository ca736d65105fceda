//! Retrying what failed, the one way: capped exponential backoff with
//! jitter ([`backon`]). The jitter keeps clients that failed together (every
//! worker after a coordinator restart, every reconcile after an API server
//! restart) from retrying in lockstep.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Waits `first` after the first failure, doubling up to `max`, each wait
/// stretched by a random 0 to 100 %; never gives up.
pub fn backoff(first: Duration, max: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(first)
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
}

/// The wait after the `failures`th failure in a row (1 for the first) of
/// [`backoff`]`(first, max)`, for callers that count failures themselves.
pub fn delay(failures: u32, first: Duration, max: Duration) -> Duration {
    // Past 32 doublings every wait is `max`.
    let skip = failures.saturating_sub(1).min(32) as usize;
    backoff(first, max)
        .build()
        .nth(skip)
        .expect("an unlimited backoff")
}

/// The waits of a [`backoff`] one at a time, for loops that wait between
/// polls: the same wait until [`Waits::advance`], and from the start again
/// after [`Waits::reset`].
pub struct Waits {
    builder: ExponentialBuilder,
    waits: ExponentialBackoff,
    current: Duration,
}

impl Waits {
    pub fn new(first: Duration, max: Duration) -> Self {
        let builder = backoff(first, max);
        let mut waits = Waits {
            builder,
            waits: builder.build(),
            current: first,
        };
        waits.reset();
        waits
    }

    /// The wait now.
    pub fn current(&self) -> Duration {
        self.current
    }

    /// Moves on to the next, longer wait.
    pub fn advance(&mut self) {
        self.current = self.waits.next().expect("an unlimited backoff");
    }

    /// Starts again from the first wait.
    pub fn reset(&mut self) {
        self.waits = self.builder.build();
        self.advance();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_with_up_to_100_percent_jitter() {
        let (first, max) = (Duration::from_millis(500), Duration::from_secs(300));
        for (failures, base) in [
            (1, first),
            (2, Duration::from_secs(1)),
            (3, Duration::from_secs(2)),
            (10, Duration::from_secs(256)),
            (11, max),
            (1_000, max),
            (u32::MAX, max),
        ] {
            let waits: Vec<Duration> = (0..50).map(|_| delay(failures, first, max)).collect();
            assert!(
                waits.iter().all(|wait| *wait >= base && *wait <= base * 2),
                "{failures}: {waits:?}"
            );
            // Two clients that failed together wait differently.
            assert!(
                waits.iter().any(|wait| *wait != waits[0]),
                "{failures}: {waits:?}"
            );
        }
    }

    #[test]
    fn waits_stay_until_advanced_and_start_over_after_a_reset() {
        let (first, max) = (Duration::from_millis(50), Duration::from_secs(2));
        let mut waits = Waits::new(first, max);
        let within = |wait: Duration, base: Duration| wait >= base && wait <= base * 2;
        assert!(within(waits.current(), first));
        assert_eq!(waits.current(), waits.current());
        for _ in 0..10 {
            waits.advance();
        }
        assert!(within(waits.current(), max), "{:?}", waits.current());
        waits.reset();
        assert!(within(waits.current(), first), "{:?}", waits.current());
    }
}
