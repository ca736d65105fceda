//! Leader election with a `coordination.k8s.io/v1` Lease, the way client-go's
//! `leaderelection` does it: of several `sluice operator` processes only the
//! one holding the lease reconciles, and when it dies a standby takes over
//! within a lease duration.
//!
//! The lease records who holds it and when they last renewed it. A candidate
//! takes it when it is missing, released (no holder) or not renewed for its
//! duration. Every write carries the resourceVersion it read, so when
//! candidates race only one write lands and the others read again.
//!
//! A standby judges expiry by the `renewTime` the leader wrote, while the
//! leader gives up one renew interval before that time by its own monotonic
//! clock. So the leader has stopped before a standby may take over, as long
//! as the standby's clock is not ahead of the leader's by more than a renew
//! interval.

use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use sluice_core::sync::lock;

/// Which Lease to compete for, as whom, and how long a lease lasts.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    /// Every process competing for the same role uses the same name.
    pub name: String,
    /// Written as the lease's holder. It must differ between processes (the
    /// pod name does): a process that finds its own identity in the lease
    /// takes the lease as already its own.
    pub identity: String,
    /// How long a lease lasts without renewal before a standby may take it.
    /// The Lease records whole seconds, so this is rounded up; at least 1s.
    pub lease_duration: std::time::Duration,
    /// How often the leader renews and a standby looks again. At most a third
    /// of `lease_duration`, so that the leader gets two tries at renewing
    /// before it gives up, one interval before its lease would expire.
    pub renew_interval: std::time::Duration,
}

impl LeaseConfig {
    fn check(&self) -> Result<(), Error> {
        if self.lease_duration < Duration::from_secs(1) {
            return Err(Error::Config(
                "lease_duration must be at least 1s (a Lease counts whole seconds)",
            ));
        }
        if self.renew_interval.is_zero() {
            return Err(Error::Config("renew_interval must not be zero"));
        }
        if self
            .renew_interval
            .checked_mul(3)
            .is_none_or(|three| three > self.lease_duration)
        {
            return Err(Error::Config(
                "renew_interval must be at most a third of lease_duration",
            ));
        }
        Ok(())
    }
}

/// Why leader election could not go on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid leader election settings: {0}")]
    Config(&'static str),

    #[error("cannot {action} lease {lease}: {source}")]
    Api {
        action: &'static str,
        lease: String,
        source: kube::Error,
    },

    #[error("cannot {action} lease {lease}: the API server did not answer in time")]
    Timeout { action: &'static str, lease: String },
}

impl Error {
    /// Whether retrying cannot help until someone changes the configuration,
    /// the RBAC rules or the namespace.
    fn is_permanent(&self) -> bool {
        match self {
            Error::Config(_) => true,
            Error::Api {
                source: kube::Error::Api(status),
                ..
            } => matches!(status.code, 400 | 401 | 403 | 404 | 422),
            Error::Api { .. } | Error::Timeout { .. } => false,
        }
    }
}

/// Why [`LeaderElector::hold`] returned: this process no longer leads and must
/// stop reconciling.
#[derive(Debug, thiserror::Error)]
pub enum Lost {
    #[error("lease {lease} is held by {holder}")]
    TakenOver { lease: String, holder: String },

    #[error("lease {lease} was released or deleted by someone else")]
    Released { lease: String },

    #[error("could not renew lease {lease} for {since:?}: {last_error}")]
    NotRenewed {
        lease: String,
        since: Duration,
        #[source]
        last_error: Error,
    },
}

/// Competes for one Lease on behalf of this process.
///
/// The methods take `&self`; put the elector in an `Arc` to hold the lease
/// from a spawned task.
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
    /// `namespace/name`, for messages.
    lease: String,
    /// When the lease was last written as ours: the moment just before the
    /// write, so the renew deadline errs early.
    renewed: Mutex<Option<Instant>>,
}

impl LeaderElector {
    pub fn new(client: kube::Client, config: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            lease: format!("{}/{}", config.namespace, config.name),
            config,
            renewed: Mutex::new(None),
        }
    }

    /// Waits until this process holds the lease, creating the Lease if it is
    /// missing. Looks again every renew interval, or sooner when the current
    /// holder's lease runs out. Transient API errors are retried; returns an
    /// error only for bad settings or what retrying cannot fix (forbidden,
    /// namespace missing, invalid).
    pub async fn acquire(&self) -> Result<(), Error> {
        self.config.check()?;
        let mut standing_by_for = None;
        loop {
            let attempt = tokio::time::timeout(self.config.lease_duration, self.attempt(true))
                .await
                .unwrap_or_else(|_| Err(self.timeout("acquire")));
            let pause = match attempt {
                Ok(Attempt::Held { transitions, .. }) => {
                    info!(
                        lease = %self.lease,
                        identity = %self.config.identity,
                        transitions,
                        "acquired the lease: leading"
                    );
                    return Ok(());
                }
                Ok(Attempt::Conflict) => Duration::ZERO,
                Ok(Attempt::NotHeld { holder, expires_in }) => {
                    if holder.is_some() && holder != standing_by_for {
                        info!(
                            lease = %self.lease,
                            identity = %self.config.identity,
                            holder = holder.as_deref().unwrap_or_default(),
                            ?expires_in,
                            "another process holds the lease: standing by"
                        );
                        standing_by_for = holder;
                    }
                    expires_in.min(self.config.renew_interval)
                }
                Err(err) if err.is_permanent() => return Err(err),
                Err(err) => {
                    warn!(
                        lease = %self.lease,
                        identity = %self.config.identity,
                        error = %err,
                        "cannot acquire the lease yet; retrying"
                    );
                    self.config.renew_interval
                }
            };
            tokio::time::sleep(pause).await;
        }
    }

    /// Renews the lease every renew interval for as long as this process
    /// holds it, and returns when it no longer does: another process holds
    /// the lease, it was released or deleted, or renewing failed until one
    /// renew interval before the lease would expire. Call it after
    /// [`acquire`](Self::acquire); it may be cancelled at any point.
    pub async fn hold(&self) -> Lost {
        let interval = self.config.renew_interval;
        let give_up_after = self.config.lease_duration.saturating_sub(interval);
        let now = Instant::now();
        let (mut renewed, mut next_try) = match self.renewed_at() {
            Some(at) => (at, at + interval),
            None => (now, now),
        };
        let mut last_error = None;
        loop {
            let deadline = renewed + give_up_after;
            tokio::time::sleep_until(next_try.min(deadline)).await;
            if Instant::now() >= deadline {
                return self.lost(Lost::NotRenewed {
                    lease: self.lease.clone(),
                    since: renewed.elapsed(),
                    last_error: last_error.unwrap_or_else(|| self.timeout("renew")),
                });
            }
            next_try = Instant::now() + interval;
            match tokio::time::timeout_at(deadline, self.attempt(false)).await {
                Ok(Ok(Attempt::Held { at, .. })) => {
                    debug!(lease = %self.lease, identity = %self.config.identity, "renewed the lease");
                    renewed = at;
                    last_error = None;
                }
                Ok(Ok(Attempt::Conflict)) => next_try = Instant::now(),
                Ok(Ok(Attempt::NotHeld { holder, .. })) => {
                    let lease = self.lease.clone();
                    return self.lost(match holder {
                        Some(holder) => Lost::TakenOver { lease, holder },
                        None => Lost::Released { lease },
                    });
                }
                Ok(Err(err)) => {
                    warn!(
                        lease = %self.lease,
                        identity = %self.config.identity,
                        error = %err,
                        "cannot renew the lease; retrying"
                    );
                    last_error = Some(err);
                }
                Err(_) => last_error = Some(self.timeout("renew")),
            }
        }
    }

    /// Clears the lease's holder if this process still holds it, so a
    /// standby takes over at once rather than after the lease expires. Stop
    /// [`hold`](Self::hold) and reconciling first. Failures are logged: the
    /// lease then expires on its own.
    pub async fn release(&self) {
        let released =
            tokio::time::timeout(self.config.lease_duration, async {
                loop {
                    let Some(lease) = self.read().await? else {
                        return Ok(false);
                    };
                    let Some(spec) = lease.spec.as_ref().filter(|spec| {
                        spec.holder_identity.as_ref() == Some(&self.config.identity)
                    }) else {
                        return Ok(false);
                    };
                    let spec = LeaseSpec {
                        holder_identity: None,
                        ..spec.clone()
                    };
                    match self.write(Some(lease), spec).await? {
                        Written::Done => return Ok(true),
                        Written::Conflict => continue,
                    }
                }
            })
            .await
            .unwrap_or_else(|_| Err(self.timeout("release")));
        self.set_renewed(None);
        match released {
            Ok(true) => info!(
                lease = %self.lease,
                identity = %self.config.identity,
                "released the lease"
            ),
            Ok(false) => debug!(
                lease = %self.lease,
                identity = %self.config.identity,
                "not holding the lease: nothing to release"
            ),
            Err(err) => warn!(
                lease = %self.lease,
                identity = %self.config.identity,
                error = %err,
                "cannot release the lease; it expires on its own"
            ),
        }
    }

    /// One read, decide and write. With `take` false, only renews a lease
    /// this process holds.
    async fn attempt(&self, take: bool) -> Result<Attempt, Error> {
        let current = self.read().await?;
        let now = Timestamp::now();
        let at = Instant::now();
        let spec = current.as_ref().and_then(|lease| lease.spec.as_ref());
        let decision = decide(spec, &self.config.identity, self.config.lease_duration, now);
        let spec = match decision {
            Decision::Renew(spec) => spec,
            Decision::Acquire(spec) if take => spec,
            Decision::Acquire(_) => {
                return Ok(Attempt::NotHeld {
                    holder: spec
                        .and_then(|spec| spec.holder_identity.clone())
                        .filter(|holder| !holder.is_empty()),
                    expires_in: Duration::ZERO,
                });
            }
            Decision::Wait { holder, expires_in } => {
                return Ok(Attempt::NotHeld {
                    holder: Some(holder),
                    expires_in,
                });
            }
        };
        let transitions = spec.lease_transitions;
        match self.write(current, spec).await? {
            Written::Done => {
                self.set_renewed(Some(at));
                Ok(Attempt::Held { at, transitions })
            }
            Written::Conflict => Ok(Attempt::Conflict),
        }
    }

    async fn read(&self) -> Result<Option<Lease>, Error> {
        self.api
            .get_opt(&self.config.name)
            .await
            .map_err(|source| self.api_error("read", source))
    }

    /// Replaces `current` (at the resourceVersion it was read) with `spec`, or
    /// creates the Lease when there was none.
    async fn write(&self, current: Option<Lease>, spec: LeaseSpec) -> Result<Written, Error> {
        let params = PostParams::default();
        let (action, result) = match current {
            Some(lease) => {
                let lease = Lease {
                    spec: Some(spec),
                    ..lease
                };
                let result = self.api.replace(&self.config.name, &params, &lease).await;
                ("update", result)
            }
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.config.name.clone()),
                        namespace: Some(self.config.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(spec),
                };
                ("create", self.api.create(&params, &lease).await)
            }
        };
        match result {
            Ok(_) => Ok(Written::Done),
            // Someone else wrote, created or deleted the Lease since we read it.
            Err(kube::Error::Api(status))
                if status.is_conflict()
                    || status.is_already_exists()
                    || (action == "update" && status.is_not_found()) =>
            {
                Ok(Written::Conflict)
            }
            Err(source) => Err(self.api_error(action, source)),
        }
    }

    fn lost(&self, lost: Lost) -> Lost {
        self.set_renewed(None);
        warn!(
            lease = %self.lease,
            identity = %self.config.identity,
            reason = %lost,
            "lost the lease: no longer leading"
        );
        lost
    }

    fn renewed_at(&self) -> Option<Instant> {
        *lock(&self.renewed)
    }

    fn set_renewed(&self, at: Option<Instant>) {
        *lock(&self.renewed) = at;
    }

    fn api_error(&self, action: &'static str, source: kube::Error) -> Error {
        Error::Api {
            action,
            lease: self.lease.clone(),
            source,
        }
    }

    fn timeout(&self, action: &'static str) -> Error {
        Error::Timeout {
            action,
            lease: self.lease.clone(),
        }
    }
}

/// What one [`LeaderElector::attempt`] found.
enum Attempt {
    /// The lease is ours, written at `at`.
    Held {
        at: Instant,
        transitions: Option<i32>,
    },
    /// Not ours: `holder` holds it (or nobody does) for `expires_in` more.
    NotHeld {
        holder: Option<String>,
        expires_in: Duration,
    },
    /// The Lease changed between our read and our write.
    Conflict,
}

enum Written {
    Done,
    Conflict,
}

/// What a candidate should do about a lease.
#[derive(Debug, PartialEq)]
enum Decision {
    /// The lease is missing, released or expired: write this spec to take it.
    Acquire(LeaseSpec),
    /// We hold the lease: write this spec to extend it.
    Renew(LeaseSpec),
    /// `holder` holds the lease for `expires_in` more unless it renews.
    Wait {
        holder: String,
        expires_in: Duration,
    },
}

/// Decides from the Lease's `current` spec (None when there is no Lease or
/// it has no spec) what the candidate `identity`, whose leases last
/// `lease_duration`, should do at `now`.
fn decide(
    current: Option<&LeaseSpec>,
    identity: &str,
    lease_duration: Duration,
    now: Timestamp,
) -> Decision {
    let seconds = lease_seconds(lease_duration);
    let Some(current) = current else {
        return Decision::Acquire(LeaseSpec {
            holder_identity: Some(identity.to_owned()),
            lease_duration_seconds: Some(seconds),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(0),
            ..LeaseSpec::default()
        });
    };
    let holder = current.holder_identity.as_deref().unwrap_or_default();
    if holder == identity {
        return Decision::Renew(LeaseSpec {
            lease_duration_seconds: Some(seconds),
            renew_time: Some(MicroTime(now)),
            acquire_time: current.acquire_time.clone().or(Some(MicroTime(now))),
            ..current.clone()
        });
    }
    if !holder.is_empty()
        && let Some(expires_in) = remaining(current, seconds, now)
    {
        return Decision::Wait {
            holder: holder.to_owned(),
            expires_in,
        };
    }
    Decision::Acquire(LeaseSpec {
        holder_identity: Some(identity.to_owned()),
        lease_duration_seconds: Some(seconds),
        acquire_time: Some(MicroTime(now)),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(current.lease_transitions.unwrap_or(0).saturating_add(1)),
        ..current.clone()
    })
}

/// How long the holder's lease runs on after `now`, or None when it has run
/// out. A lease that does not say how long it lasts is taken to last
/// `default_seconds`; one that does not say when it was renewed has run out.
fn remaining(spec: &LeaseSpec, default_seconds: i32, now: Timestamp) -> Option<Duration> {
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref())?.0;
    let seconds = spec.lease_duration_seconds.unwrap_or(default_seconds);
    let left =
        SignedDuration::from_secs(seconds.into()).checked_sub(renewed.duration_until(now))?;
    left.is_positive().then(|| left.unsigned_abs())
}

/// `duration` in the whole seconds a Lease records, rounded up so the Lease
/// never promises standbys less than the leader relies on.
fn lease_seconds(duration: Duration) -> i32 {
    let seconds = duration
        .as_secs()
        .saturating_add(u64::from(duration.subsec_nanos() > 0));
    i32::try_from(seconds).unwrap_or(i32::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "sluice-a";
    const OTHER: &str = "sluice-b";
    const LEASE: Duration = Duration::from_secs(15);

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + second).expect("a valid timestamp")
    }

    fn held_by(holder: &str, acquired: i64, renewed: i64, seconds: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.to_owned()),
            lease_duration_seconds: Some(seconds),
            acquire_time: Some(MicroTime(at(acquired))),
            renew_time: Some(MicroTime(at(renewed))),
            lease_transitions: Some(3),
            ..LeaseSpec::default()
        }
    }

    fn acquired(holder: &str, now: i64, seconds: i32, transitions: i32) -> Decision {
        Decision::Acquire(LeaseSpec {
            holder_identity: Some(holder.to_owned()),
            lease_duration_seconds: Some(seconds),
            acquire_time: Some(MicroTime(at(now))),
            renew_time: Some(MicroTime(at(now))),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        })
    }

    #[test]
    fn a_missing_lease_is_acquired_with_no_transitions() {
        assert_eq!(decide(None, ME, LEASE, at(0)), acquired(ME, 0, 15, 0));
    }

    #[test]
    fn a_lease_without_holder_is_acquired() {
        let spec = LeaseSpec::default();
        assert_eq!(
            decide(Some(&spec), ME, LEASE, at(0)),
            acquired(ME, 0, 15, 1)
        );
    }

    #[test]
    fn a_released_lease_is_acquired_at_once_and_counts_a_transition() {
        let spec = LeaseSpec {
            holder_identity: None,
            ..held_by(OTHER, 0, 10, 15)
        };
        assert_eq!(
            decide(Some(&spec), ME, LEASE, at(11)),
            acquired(ME, 11, 15, 4)
        );
        let spec = LeaseSpec {
            holder_identity: Some(String::new()),
            ..held_by(OTHER, 0, 10, 15)
        };
        assert_eq!(
            decide(Some(&spec), ME, LEASE, at(11)),
            acquired(ME, 11, 15, 4)
        );
    }

    #[test]
    fn a_lease_someone_else_renewed_recently_is_waited_for_until_it_expires() {
        let spec = held_by(OTHER, 0, 10, 15);
        assert_eq!(
            decide(Some(&spec), ME, LEASE, at(12)),
            Decision::Wait {
                holder: OTHER.to_owned(),
                expires_in: Duration::from_secs(13),
            }
        );
    }

    #[test]
    fn the_wait_is_exact_to_the_microsecond() {
        let spec = LeaseSpec {
            renew_time: Some(MicroTime(
                at(10)
                    .checked_add(SignedDuration::from_micros(250))
                    .expect("in range"),
            )),
            ..held_by(OTHER, 0, 10, 15)
        };
        assert_eq!(
            decide(Some(&spec), ME, LEASE, at(25)),
            Decision::Wait {
                holder: OTHER.to_owned(),
                expires_in: Duration::from_micros(250),
            }
        );
    }

    #[test]
    fn a_lease_expires_exactly_one_duration_after_its_renewal() {
        let spec = held_by(OTHER, 0, 10, 15);
        assert_eq!(
            decide(Some(&spec), ME, LEASE, at(25)),
            acquired(ME, 25, 15, 4)
        );
    }

    #[test]
    fn an_expired_lease_is_taken_over_and_counts_a_transition() {
        let spec = held_by(OTHER, 0, 10, 15);
        assert_eq!(
            decide(Some(&spec), ME, LEASE, at(100)),
            acquired(ME, 100, 15, 4)
        );
    }

    #[test]
    fn expiry_follows_the_holders_duration_not_ours() {
        let spec = held_by(OTHER, 0, 10, 60);
        assert_eq!(
            decide(Some(&spec), ME, LEASE, at(30)),
            Decision::Wait {
                holder: OTHER.to_owned(),
                expires_in: Duration::from_secs(40),
            }
        );
        let spec = held_by(OTHER, 0, 10, 2);
        assert_eq!(
            decide(Some(&spec), ME, LEASE, at(12)),
            acquired(ME, 12, 15, 4)
        );
    }

    #[test]
    fn a_holder_that_states_no_duration_is_given_ours() {
        let spec = LeaseSpec {
            lease_duration_seconds: None,
            ..held_by(OTHER, 0, 10, 60)
        };
        assert_eq!(
            decide(Some(&spec), ME, LEASE, at(20)),
            Decision::Wait {
                holder: OTHER.to_owned(),
                expires_in: Duration::from_secs(5),
            }
        );
    }

    #[test]
    fn a_holder_with_a_non_positive_duration_has_expired() {
        for seconds in [0, -5] {
            let spec = held_by(OTHER, 0, 10, seconds);
            assert_eq!(
                decide(Some(&spec), ME, LEASE, at(10)),
                acquired(ME, 10, 15, 4)
            );
        }
    }

    #[test]
    fn without_a_renew_time_expiry_counts_from_the_acquire_time() {
        let spec = LeaseSpec {
            renew_time: None,
            ..held_by(OTHER, 5, 10, 15)
        };
        assert_eq!(
            decide(Some(&spec), ME, LEASE, at(12)),
            Decision::Wait {
                holder: OTHER.to_owned(),
                expires_in: Duration::from_secs(8),
            }
        );
    }

    #[test]
    fn a_holder_that_never_renewed_or_acquired_has_expired() {
        let spec = LeaseSpec {
            renew_time: None,
            acquire_time: None,
            ..held_by(OTHER, 0, 0, 15)
        };
        assert_eq!(
            decide(Some(&spec), ME, LEASE, at(0)),
            acquired(ME, 0, 15, 4)
        );
    }

    #[test]
    fn a_renewal_stamped_ahead_of_our_clock_is_waited_for_longer() {
        let spec = held_by(OTHER, 0, 10, 15);
        assert_eq!(
            decide(Some(&spec), ME, LEASE, at(5)),
            Decision::Wait {
                holder: OTHER.to_owned(),
                expires_in: Duration::from_secs(20),
            }
        );
    }

    #[test]
    fn our_lease_is_renewed_keeping_acquire_time_and_transitions() {
        let spec = held_by(ME, 0, 10, 15);
        assert_eq!(
            decide(Some(&spec), ME, LEASE, at(12)),
            Decision::Renew(LeaseSpec {
                renew_time: Some(MicroTime(at(12))),
                ..held_by(ME, 0, 10, 15)
            })
        );
    }

    #[test]
    fn our_lease_is_renewed_even_when_it_has_expired() {
        let spec = held_by(ME, 0, 10, 15);
        assert_eq!(
            decide(Some(&spec), ME, LEASE, at(100)),
            Decision::Renew(LeaseSpec {
                renew_time: Some(MicroTime(at(100))),
                ..held_by(ME, 0, 10, 15)
            })
        );
    }

    #[test]
    fn renewing_states_our_current_duration() {
        let spec = held_by(ME, 0, 10, 60);
        let Decision::Renew(renewed) = decide(Some(&spec), ME, LEASE, at(12)) else {
            panic!("we hold the lease");
        };
        assert_eq!(renewed.lease_duration_seconds, Some(15));
    }

    #[test]
    fn renewing_a_lease_without_acquire_time_fills_it_in() {
        let spec = LeaseSpec {
            acquire_time: None,
            ..held_by(ME, 0, 10, 15)
        };
        let Decision::Renew(renewed) = decide(Some(&spec), ME, LEASE, at(12)) else {
            panic!("we hold the lease");
        };
        assert_eq!(renewed.acquire_time, Some(MicroTime(at(12))));
    }

    #[test]
    fn identity_must_match_exactly() {
        let spec = held_by("sluice-a-2", 0, 10, 15);
        assert!(matches!(
            decide(Some(&spec), ME, LEASE, at(12)),
            Decision::Wait { .. }
        ));
    }

    #[test]
    fn fields_we_do_not_manage_are_kept() {
        let spec = LeaseSpec {
            strategy: Some("OldestEmulationVersion".to_owned()),
            preferred_holder: Some(OTHER.to_owned()),
            ..held_by(OTHER, 0, 10, 15)
        };
        for decision in [
            decide(Some(&spec), ME, LEASE, at(100)),
            decide(Some(&spec), OTHER, LEASE, at(12)),
        ] {
            let (Decision::Acquire(written) | Decision::Renew(written)) = decision else {
                panic!("the lease is ours to write");
            };
            assert_eq!(written.strategy.as_deref(), Some("OldestEmulationVersion"));
            assert_eq!(written.preferred_holder.as_deref(), Some(OTHER));
        }
    }

    #[test]
    fn transitions_count_from_zero_when_missing_and_never_overflow() {
        let spec = LeaseSpec {
            lease_transitions: None,
            ..held_by(OTHER, 0, 10, 15)
        };
        assert_eq!(
            decide(Some(&spec), ME, LEASE, at(100)),
            acquired(ME, 100, 15, 1)
        );
        let spec = LeaseSpec {
            lease_transitions: Some(i32::MAX),
            ..held_by(OTHER, 0, 10, 15)
        };
        assert_eq!(
            decide(Some(&spec), ME, LEASE, at(100)),
            acquired(ME, 100, 15, i32::MAX)
        );
    }

    #[test]
    fn lease_seconds_round_up_to_at_least_one() {
        assert_eq!(lease_seconds(Duration::from_secs(15)), 15);
        assert_eq!(lease_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(lease_seconds(Duration::from_millis(200)), 1);
        assert_eq!(lease_seconds(Duration::ZERO), 1);
        assert_eq!(lease_seconds(Duration::MAX), i32::MAX);
    }

    fn config(lease_duration: Duration, renew_interval: Duration) -> LeaseConfig {
        LeaseConfig {
            namespace: "sluice".into(),
            name: "sluice-operator".into(),
            identity: ME.into(),
            lease_duration,
            renew_interval,
        }
    }

    #[test]
    fn settings_allow_two_renewals_before_giving_up() {
        let secs = Duration::from_secs;
        assert!(config(secs(15), secs(5)).check().is_ok());
        assert!(config(secs(2), Duration::from_millis(500)).check().is_ok());
        assert!(
            config(secs(15), Duration::from_millis(5001))
                .check()
                .is_err()
        );
        assert!(config(secs(15), Duration::ZERO).check().is_err());
        assert!(
            config(Duration::from_millis(900), Duration::from_millis(100))
                .check()
                .is_err()
        );
        assert!(config(secs(15), Duration::MAX).check().is_err());
    }

    #[test]
    fn only_errors_retrying_cannot_fix_are_permanent() {
        let api = |code: u16, reason: &str| Error::Api {
            action: "read",
            lease: "sluice/sluice-operator".into(),
            source: kube::Error::Api(
                kube::core::Status::failure("test", reason)
                    .with_code(code)
                    .boxed(),
            ),
        };
        assert!(api(403, "Forbidden").is_permanent());
        assert!(api(404, "NotFound").is_permanent());
        assert!(api(422, "Invalid").is_permanent());
        assert!(Error::Config("bad").is_permanent());
        assert!(!api(500, "InternalError").is_permanent());
        assert!(!api(429, "TooManyRequests").is_permanent());
        assert!(!api(503, "ServiceUnavailable").is_permanent());
        let timeout = Error::Timeout {
            action: "renew",
            lease: "sluice/sluice-operator".into(),
        };
        assert!(!timeout.is_permanent());
    }
}
