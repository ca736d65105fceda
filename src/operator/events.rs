//! Events (events.k8s.io/v1) about IngestSources, which `kubectl describe`
//! shows.
//!
//! Like kube's `Recorder`, an event repeated within a few minutes becomes a
//! count on the first one (an event series) instead of a new object. Unlike
//! it, the note is part of what makes two events the same: kube's `Recorder`
//! would fold "scaled from 0 to 3 workers" and, a minute later, "scaled from
//! 3 to 1" into one event that still says "from 0 to 3", twice.

use std::collections::HashMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use tokio::sync::Mutex;

/// Repeats within this long count on the first event.
const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    Normal,
    Warning,
}

/// Which events count as the same.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    regarding: (Option<String>, Option<String>, Option<String>),
    type_: EventType,
    reason: String,
    action: String,
    note: String,
}

/// Records events as one controller instance.
pub struct Recorder {
    client: Client,
    controller: String,
    instance: String,
    recent: Mutex<HashMap<Key, Event>>,
}

impl Recorder {
    pub fn new(client: Client, controller: &str, instance: &str) -> Self {
        Self {
            client,
            controller: controller.into(),
            instance: instance.into(),
            recent: Mutex::default(),
        }
    }

    /// Records an event about `regarding`, or counts a repeat of a recent
    /// one.
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: &str,
    ) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let key = Key {
            regarding: (
                regarding.namespace.clone(),
                regarding.name.clone(),
                regarding.uid.clone(),
            ),
            type_,
            reason: reason.into(),
            action: action.into(),
            note: note.into(),
        };
        let namespace = regarding.namespace.clone().unwrap_or("default".into());
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        // Decided under the lock, written without it, so that concurrent
        // reconciles do not queue behind each other's event writes.
        let repeat = {
            let mut recent = self.recent.lock().await;
            recent.retain(|_, event| last_seen(event).is_some_and(|last| recent_enough(last, now)));
            let repeat = recent.get_mut(&key).map(|first| {
                let series = EventSeries {
                    count: first.series.as_ref().map_or(2, |s| s.count + 1),
                    last_observed_time: MicroTime(now),
                };
                first.series = Some(series.clone());
                (first.metadata.name.clone().unwrap_or_default(), series)
            });
            if repeat.is_none() {
                recent.insert(
                    key.clone(),
                    self.event(regarding, &namespace, type_, reason, action, note, now),
                );
            }
            repeat
        };
        let written = match repeat {
            Some((name, series)) => api
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({ "series": series })),
                )
                .await
                .map(drop),
            None => {
                let event = self.event(regarding, &namespace, type_, reason, action, note, now);
                api.create(&PostParams::default(), &event).await.map(drop)
            }
        };
        if written.is_err() {
            // Start afresh next time rather than count on an event that may
            // not exist.
            self.recent.lock().await.remove(&key);
        }
        written
    }

    #[allow(clippy::too_many_arguments)]
    fn event(
        &self,
        regarding: &ObjectReference,
        namespace: &str,
        type_: EventType,
        reason: &str,
        action: &str,
        note: &str,
        now: Timestamp,
    ) -> Event {
        Event {
            metadata: ObjectMeta {
                name: Some(format!(
                    "{}.{:x}",
                    regarding.name.as_deref().unwrap_or(&self.controller),
                    now.as_nanosecond()
                )),
                namespace: Some(namespace.into()),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(now)),
            type_: Some(
                match type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            reason: Some(reason.into()),
            action: Some(action.into()),
            note: Some(note.into()),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Event::default()
        }
    }
}

fn last_seen(event: &Event) -> Option<Timestamp> {
    match &event.series {
        Some(series) => Some(series.last_observed_time.0),
        None => event.event_time.as_ref().map(|time| time.0),
    }
}

fn recent_enough(last: Timestamp, now: Timestamp) -> bool {
    last.checked_add(SERIES_WINDOW)
        .is_ok_and(|until| until > now)
}
