//! The operator's part of an IngestSource's status, computed as a pure
//! function of the IngestSource, what its Deployments report and what is
//! wrong, and the Events worth telling a person about.
//!
//! The operator owns `observedGeneration`, `phase`, `conditions` and
//! `workers`; the coordinator owns the rest, under its own field manager.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;

use crate::crd::{IngestSource, IngestSourceStatus, Phase, WorkersStatus};

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";

/// How far a Deployment has come.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Rollout {
    /// Pods wanted.
    pub desired: i32,
    /// Pods ready.
    pub ready: i32,
    /// The Deployment controller has seen the latest spec and every pod runs
    /// the latest template.
    pub complete: bool,
}

impl Rollout {
    pub fn of(deployment: &Deployment) -> Self {
        let desired = deployment
            .spec
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(1);
        let status = deployment.status.clone().unwrap_or_default();
        let seen =
            status.observed_generation.unwrap_or(0) >= deployment.metadata.generation.unwrap_or(0);
        Self {
            desired,
            ready: status.ready_replicas.unwrap_or(0),
            complete: seen
                && status.updated_replicas.unwrap_or(0) >= desired
                && status.replicas.unwrap_or(0) == desired,
        }
    }

    fn settled(self) -> bool {
        self.complete && self.ready >= self.desired
    }
}

/// Something that keeps an IngestSource from running as asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// The schema let the spec through, but sluice cannot use it.
    InvalidSpec(String),
    /// A credentials Secret the spec names does not exist.
    CredentialsSecretNotFound { secret: String, field: &'static str },
}

impl Problem {
    fn reason(&self) -> &'static str {
        match self {
            Problem::InvalidSpec(_) => "InvalidSpec",
            Problem::CredentialsSecretNotFound { .. } => "CredentialsSecretNotFound",
        }
    }

    fn message(&self) -> String {
        match self {
            Problem::InvalidSpec(why) => format!("{why}; fix the IngestSource to continue"),
            Problem::CredentialsSecretNotFound { secret, field } => format!(
                "Secret {secret:?} named in {field}.credentialsSecretRef does not exist; \
                 create it with the keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            ),
        }
    }
}

/// What the operator observed of one IngestSource.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// None while the Deployment does not exist.
    pub coordinator: Option<Rollout>,
    pub workers: Option<Rollout>,
    pub problem: Option<Problem>,
}

/// The operator's status fields for `source`. Conditions keep their
/// `lastTransitionTime` while their status does not change.
pub fn compute(source: &IngestSource, observed: &Observed, now: &Time) -> IngestSourceStatus {
    let spec = &source.spec;
    let generation = source.metadata.generation;
    let old_conditions = source
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let condition = |type_: &str, status: bool, reason: &str, message: String| {
        let status = if status { "True" } else { "False" };
        let last_transition_time = old_conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| now.clone());
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            observed_generation: generation,
            last_transition_time,
        }
    };

    let desired_workers = if spec.suspend {
        0
    } else {
        spec.workers.replicas
    };
    let coordinator = observed.coordinator.unwrap_or_default();
    let workers = observed.workers.unwrap_or_default();
    let names = super::children::Names::of(source);
    let settled = observed.coordinator.is_some_and(Rollout::settled)
        && observed.workers.is_some_and(Rollout::settled);

    let (ready, ready_reason, ready_message) = if let Some(problem) = &observed.problem {
        (false, problem.reason(), problem.message())
    } else if spec.suspend {
        (
            false,
            "Suspended",
            "spec.suspend is true: the coordinator and the workers are scaled to zero".to_owned(),
        )
    } else if coordinator.ready < 1 {
        (
            false,
            "CoordinatorNotReady",
            format!("Deployment {} has no ready pod yet", names.coordinator),
        )
    } else if workers.ready < desired_workers {
        (
            false,
            "WorkersNotReady",
            format!(
                "{} of {desired_workers} workers are ready (Deployment {})",
                workers.ready, names.worker
            ),
        )
    } else {
        (
            true,
            "Ready",
            format!("the coordinator and {desired_workers} workers are ready"),
        )
    };

    let (progressing, progressing_reason, progressing_message) = if settled {
        (
            false,
            "RolloutComplete",
            "the coordinator and the workers run the latest spec".to_owned(),
        )
    } else {
        let waiting: Vec<String> = [
            (&names.coordinator, observed.coordinator),
            (&names.worker, observed.workers),
        ]
        .into_iter()
        .filter(|(_, rollout)| !rollout.is_some_and(Rollout::settled))
        .map(|(name, rollout)| match rollout {
            None => format!("{name} (not created yet)"),
            Some(r) => format!("{name} ({} of {} ready)", r.ready, r.desired),
        })
        .collect();
        (
            true,
            "RollingOut",
            format!("waiting for {}", waiting.join(" and ")),
        )
    };

    let (degraded, degraded_reason, degraded_message) = match &observed.problem {
        Some(problem) => (true, problem.reason(), problem.message()),
        None => (false, "AsExpected", "nothing needs attention".to_owned()),
    };

    let phase = match &observed.problem {
        Some(Problem::InvalidSpec(_)) => Phase::Failed,
        Some(_) => Phase::Degraded,
        None if spec.suspend => Phase::Suspended,
        None if ready => Phase::Running,
        None => Phase::Pending,
    };

    IngestSourceStatus {
        observed_generation: generation,
        phase: Some(phase),
        conditions: vec![
            condition(READY, ready, ready_reason, ready_message),
            condition(
                PROGRESSING,
                progressing,
                progressing_reason,
                progressing_message,
            ),
            condition(DEGRADED, degraded, degraded_reason, degraded_message),
        ],
        workers: Some(WorkersStatus {
            desired: desired_workers,
            ready: workers.ready,
            summary: format!("{}/{desired_workers}", workers.ready),
        }),
        ..IngestSourceStatus::default()
    }
}

/// Whether the operator's fields of `current` already say what `new` says.
pub fn unchanged(current: Option<&IngestSourceStatus>, new: &IngestSourceStatus) -> bool {
    current.is_some_and(|current| {
        current.observed_generation == new.observed_generation
            && current.phase == new.phase
            && current.conditions == new.conditions
            && current.workers == new.workers
    })
}

/// An Event to record on the IngestSource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub warning: bool,
    pub reason: String,
    pub note: String,
}

/// The Events a status change is worth: a problem appearing or clearing,
/// suspending and resuming.
pub fn notices(source: &IngestSource, new: &IngestSourceStatus) -> Vec<Notice> {
    let old = source.status.as_ref();
    let old_phase = old.and_then(|s| s.phase);
    let degraded = |status: Option<&IngestSourceStatus>| {
        status
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == DEGRADED))
            .filter(|c| c.status == "True")
            .map(|c| (c.reason.clone(), c.message.clone()))
    };
    let mut notices = Vec::new();
    match (degraded(old), degraded(Some(new))) {
        (old, Some((reason, message))) if old.as_ref().map(|o| &o.0) != Some(&reason) => {
            notices.push(Notice {
                warning: true,
                reason,
                note: message,
            });
        }
        (Some(_), None) => notices.push(Notice {
            warning: false,
            reason: "Recovered".into(),
            note: "the problem is resolved".into(),
        }),
        _ => {}
    }
    match (old_phase, new.phase) {
        // Also from no phase: the first status may already be Suspended when
        // the operator sees the edit before its own first status write.
        (old, Some(Phase::Suspended)) if old != Some(Phase::Suspended) => notices.push(Notice {
            warning: false,
            reason: "Suspended".into(),
            note: format!(
                "{} is suspended: coordinator and workers scaled to zero",
                source.name_any()
            ),
        }),
        (Some(Phase::Suspended), Some(new)) if new != Phase::Suspended => notices.push(Notice {
            warning: false,
            reason: "Resumed".into(),
            note: "resuming from the last checkpoint".into(),
        }),
        _ => {}
    }
    notices
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> IngestSource {
        let mut source: IngestSource =
            serde_yaml::from_str(include_str!("../../examples/orders.yaml")).unwrap();
        source.metadata.generation = Some(3);
        source
    }

    fn at(seconds: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(seconds).unwrap())
    }

    fn settled(desired: i32) -> Option<Rollout> {
        Some(Rollout {
            desired,
            ready: desired,
            complete: true,
        })
    }

    fn find<'a>(status: &'a IngestSourceStatus, type_: &str) -> &'a Condition {
        status.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn all_ready_is_running_and_ready() {
        let observed = Observed {
            coordinator: settled(1),
            workers: settled(2),
            problem: None,
        };
        let status = compute(&source(), &observed, &at(100));
        assert_eq!(status.phase, Some(Phase::Running));
        assert_eq!(status.observed_generation, Some(3));
        assert_eq!(find(&status, READY).status, "True");
        assert_eq!(find(&status, PROGRESSING).status, "False");
        assert_eq!(find(&status, DEGRADED).status, "False");
        assert_eq!(status.workers.unwrap().summary, "2/2");
    }

    #[test]
    fn waiting_for_workers_is_pending_and_progressing_with_counts() {
        let observed = Observed {
            coordinator: settled(1),
            workers: Some(Rollout {
                desired: 2,
                ready: 1,
                complete: true,
            }),
            problem: None,
        };
        let status = compute(&source(), &observed, &at(100));
        assert_eq!(status.phase, Some(Phase::Pending));
        let ready = find(&status, READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "WorkersNotReady")
        );
        assert_eq!(
            ready.message,
            "1 of 2 workers are ready (Deployment orders-worker)"
        );
        let progressing = find(&status, PROGRESSING);
        assert_eq!(progressing.status, "True");
        assert_eq!(
            progressing.message,
            "waiting for orders-worker (1 of 2 ready)"
        );
        assert_eq!(status.workers.unwrap().summary, "1/2");
    }

    #[test]
    fn a_missing_secret_is_degraded_and_names_it() {
        let observed = Observed {
            coordinator: settled(1),
            workers: settled(2),
            problem: Some(Problem::CredentialsSecretNotFound {
                secret: "acme-s3".into(),
                field: "spec.source.s3",
            }),
        };
        let status = compute(&source(), &observed, &at(100));
        assert_eq!(status.phase, Some(Phase::Degraded));
        let degraded = find(&status, DEGRADED);
        assert_eq!(degraded.status, "True");
        assert_eq!(degraded.reason, "CredentialsSecretNotFound");
        assert!(
            degraded.message.contains("\"acme-s3\""),
            "{}",
            degraded.message
        );
        assert!(
            degraded
                .message
                .contains("spec.source.s3.credentialsSecretRef")
        );
        assert_eq!(find(&status, READY).reason, "CredentialsSecretNotFound");
    }

    #[test]
    fn an_unusable_spec_fails_and_says_what_to_fix() {
        let observed = Observed {
            problem: Some(Problem::InvalidSpec(
                "spec.tasks.maxBytes: \"100m\" is not a whole number of bytes".into(),
            )),
            ..Observed::default()
        };
        let status = compute(&source(), &observed, &at(100));
        assert_eq!(status.phase, Some(Phase::Failed));
        assert!(
            find(&status, DEGRADED)
                .message
                .starts_with("spec.tasks.maxBytes")
        );
    }

    #[test]
    fn suspended_sources_want_no_workers() {
        let mut source = source();
        source.spec.suspend = true;
        let observed = Observed {
            coordinator: settled(0),
            workers: settled(0),
            problem: None,
        };
        let status = compute(&source, &observed, &at(100));
        assert_eq!(status.phase, Some(Phase::Suspended));
        assert_eq!(find(&status, READY).reason, "Suspended");
        assert_eq!(status.workers.as_ref().unwrap().summary, "0/0");
        // Suspended before the operator wrote any status: still told.
        assert_eq!(notices(&source, &status)[0].reason, "Suspended");
    }

    #[test]
    fn transition_times_move_only_when_a_condition_flips() {
        let mut source = source();
        let ready = Observed {
            coordinator: settled(1),
            workers: settled(2),
            problem: None,
        };
        let first = compute(&source, &ready, &at(100));
        source.status = Some(first.clone());
        // Same state later: nothing moves, nothing to write.
        let again = compute(&source, &ready, &at(200));
        assert_eq!(find(&again, READY).last_transition_time, at(100));
        assert!(unchanged(source.status.as_ref(), &again));
        // Ready flips: only Ready's time moves.
        let scaled = Observed {
            workers: Some(Rollout {
                desired: 2,
                ready: 1,
                complete: true,
            }),
            ..ready
        };
        let flipped = compute(&source, &scaled, &at(300));
        assert_eq!(find(&flipped, READY).last_transition_time, at(300));
        assert_eq!(find(&flipped, DEGRADED).last_transition_time, at(100));
        assert!(!unchanged(source.status.as_ref(), &flipped));
    }

    #[test]
    fn problems_and_suspension_are_told_once() {
        let mut source = source();
        let degraded = Observed {
            problem: Some(Problem::CredentialsSecretNotFound {
                secret: "acme-s3".into(),
                field: "spec.source.s3",
            }),
            ..Observed::default()
        };
        let status = compute(&source, &degraded, &at(100));
        let told = notices(&source, &status);
        assert_eq!(told.len(), 1);
        assert!(told[0].warning);
        assert_eq!(told[0].reason, "CredentialsSecretNotFound");
        source.status = Some(status.clone());
        assert!(notices(&source, &compute(&source, &degraded, &at(200))).is_empty());

        let recovered = compute(&source, &Observed::default(), &at(300));
        assert_eq!(notices(&source, &recovered)[0].reason, "Recovered");

        source.status = Some(recovered);
        source.spec.suspend = true;
        let suspended = compute(&source, &Observed::default(), &at(400));
        assert_eq!(notices(&source, &suspended)[0].reason, "Suspended");
        source.status = Some(suspended);
        source.spec.suspend = false;
        let resumed = compute(&source, &Observed::default(), &at(500));
        assert_eq!(notices(&source, &resumed)[0].reason, "Resumed");
    }

    #[test]
    fn rollouts_read_deployment_status() {
        let deployment: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "orders-worker", "generation": 4},
            "spec": {"replicas": 3, "selector": {}, "template": {}},
            "status": {"observedGeneration": 4, "replicas": 3, "updatedReplicas": 3, "readyReplicas": 2}
        }))
        .unwrap();
        assert_eq!(
            Rollout::of(&deployment),
            Rollout {
                desired: 3,
                ready: 2,
                complete: true
            }
        );
        let stale: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "orders-worker", "generation": 5},
            "spec": {"replicas": 3, "selector": {}, "template": {}},
            "status": {"observedGeneration": 4, "replicas": 3, "updatedReplicas": 3, "readyReplicas": 3}
        }))
        .unwrap();
        assert!(!Rollout::of(&stale).complete);
    }
}
