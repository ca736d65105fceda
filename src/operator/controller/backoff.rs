//! How long to wait before a failed reconcile or watch is retried.

use std::time::Duration;

use kube::runtime::watcher::ExponentialBackoff;

use crate::retry;

/// A failed reconcile is retried 0.5 s after the first failure, doubling up
/// to 5 minutes (each with jitter).
pub(super) fn reconcile_delay(failures: u32) -> Duration {
    retry::delay(
        failures,
        Duration::from_millis(500),
        Duration::from_secs(300),
    )
}

/// Watches are restarted 250 ms after the first error, doubling up to 4 s
/// (each with jitter), and from the start again once events flow. With
/// client-go's cap of 30 s, an API server back from a restart would go
/// unwatched for half a minute.
pub(super) fn watch_backoff() -> ExponentialBackoff {
    retry::backoff(Duration::from_millis(250), Duration::from_secs(4)).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn within(wait: Duration, base: Duration) -> bool {
        wait >= base && wait <= base * 2
    }

    #[test]
    fn reconciles_retry_from_half_a_second_doubling_to_five_minutes() {
        assert!(within(reconcile_delay(1), Duration::from_millis(500)));
        assert!(within(reconcile_delay(2), Duration::from_secs(1)));
        assert!(within(reconcile_delay(4), Duration::from_secs(4)));
        assert!(within(reconcile_delay(30), Duration::from_secs(300)));
    }

    #[test]
    fn watches_retry_within_seconds_and_start_over_after_success() {
        use kube::runtime::utils::Backoff;
        let mut watch = watch_backoff();
        let delays: Vec<Duration> = (&mut watch).take(7).collect();
        assert!(within(delays[0], Duration::from_millis(250)), "{delays:?}");
        assert!(within(delays[6], Duration::from_secs(4)), "{delays:?}");
        watch.reset();
        let first = watch.next().unwrap();
        assert!(within(first, Duration::from_millis(250)), "{first:?}");
    }
}
