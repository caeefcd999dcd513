//! Kubernetes Events on ScheduledJobs (failures, LOST, MISSED, SKIPPED, DISPATCH_FAILED, manual
//! triggers), published off the dispatch path through kube-runtime's recorder.
//!
//! Aggregation, so a job failing every 30 s cannot flood etcd: the recorder folds repeats of one
//! (job, reason) into a single Event whose `series.count` grows; in front of it, at most one
//! publish per (job, reason) per [`EventsConfig::per_job_interval`] (the rest are counted, and
//! the next publish says how many were folded in), and a global rate for all Events together.

use std::{
    collections::HashMap,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Client, Resource,
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use super::FeedStats;
use crate::{api::ScheduledJob, leader::Role};

/// The object an Event is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JobRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl JobRef {
    fn object_ref(&self) -> ObjectReference {
        ObjectReference {
            api_version: Some(ScheduledJob::api_version(&()).into_owned()),
            kind: Some(ScheduledJob::kind(&()).into_owned()),
            namespace: Some(self.namespace.clone()),
            name: Some(self.name.clone()),
            uid: Some(self.uid.clone()),
            ..Default::default()
        }
    }
}

/// Why an Event is sent. The reason strings are what `kubectl describe` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    Failed,
    Lost,
    Revoked,
    Missed,
    Skipped,
    DispatchFailed,
    Triggered,
    /// The job's health policy is breached (the `Healthy` condition went False).
    Unhealthy,
    /// The job is healthy again.
    Recovered,
    /// Its health policy paused the job (`onBreach: Pause`).
    Paused,
    /// A paused job was resumed.
    Resumed,
    /// A backfill was accepted (`kubebeat.io/backfill`).
    BackfillStarted,
    /// A backfill request was refused (its message says why).
    BackfillRefused,
    /// A manual run's arguments were refused (its TaskFunction's parameters); nothing ran.
    TriggerRefused,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Failed => "Failed",
            Reason::Lost => "Lost",
            Reason::Revoked => "Revoked",
            Reason::Missed => "Missed",
            Reason::Skipped => "Skipped",
            Reason::DispatchFailed => "DispatchFailed",
            Reason::Triggered => "Triggered",
            Reason::Unhealthy => "Unhealthy",
            Reason::Recovered => "Recovered",
            Reason::Paused => "Paused",
            Reason::Resumed => "Resumed",
            Reason::BackfillStarted => "BackfillStarted",
            Reason::BackfillRefused => "BackfillRefused",
            Reason::TriggerRefused => "TriggerRefused",
        }
    }

    fn event_type(self) -> EventType {
        match self {
            Reason::Triggered
            | Reason::Skipped
            | Reason::Recovered
            | Reason::Resumed
            | Reason::BackfillStarted => EventType::Normal,
            _ => EventType::Warning,
        }
    }
}

/// One thing worth an Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobEvent {
    pub job: JobRef,
    pub reason: Reason,
    pub message: String,
}

#[derive(Debug, Clone, Copy)]
pub struct EventsConfig {
    /// Events per second at most, all jobs together (0 disables Events).
    pub qps: u32,
    /// At most one publish per (job, reason) per this interval.
    pub per_job_interval: Duration,
}

/// Per-(job, reason) folding: the pure part of the aggregation.
#[derive(Debug, Default)]
pub struct Folding {
    last: HashMap<(JobRef, Reason), (Instant, u64)>,
}

impl Folding {
    /// `Some(folded)` to publish now (with how many earlier ones were folded into it), `None`
    /// to fold this one into the next publish.
    pub fn offer(&mut self, key: (JobRef, Reason), now: Instant, every: Duration) -> Option<u64> {
        match self.last.get_mut(&key) {
            Some((at, folded)) if now.duration_since(*at) < every => {
                *folded += 1;
                None
            }
            Some((at, folded)) => {
                let n = *folded;
                *at = now;
                *folded = 0;
                Some(n)
            }
            None => {
                self.last.insert(key, (now, 0));
                Some(0)
            }
        }
    }

    /// Forget keys idle for long (bounded memory).
    pub fn forget_older_than(&mut self, now: Instant, age: Duration) {
        self.last
            .retain(|_, (at, folded)| *folded > 0 || now.duration_since(*at) < age);
    }
}

/// Publish Events from `rx` while this replica leads.
pub async fn run(
    client: Client,
    identity: String,
    cfg: EventsConfig,
    rx: &mut mpsc::Receiver<JobEvent>,
    stats: Arc<FeedStats>,
    role: watch::Receiver<Role>,
    mut stop: watch::Receiver<bool>,
) {
    let recorder = Recorder::new(
        client,
        Reporter {
            controller: "kube-beat".into(),
            instance: Some(identity),
        },
    );
    let mut folding = Folding::default();
    let mut pace = (cfg.qps > 0).then(|| {
        let mut t = tokio::time::interval(Duration::from_secs(1) / cfg.qps);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let mut sent_since_gc = 0u32;
    loop {
        let ev = tokio::select! {
            ev = rx.recv() => match ev { Some(ev) => ev, None => return },
            _ = stop.wait_for(|s| *s) => return,
        };
        // Followers never write; a new leader does not replay an old leader's Events.
        let Some(pace) = pace.as_mut().filter(|_| role.borrow().epoch().is_some()) else {
            continue;
        };
        let key = (ev.job.clone(), ev.reason);
        let Some(folded) = folding.offer(key, Instant::now(), cfg.per_job_interval) else {
            stats.events_folded.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        pace.tick().await;
        let note = if folded > 0 {
            format!(
                "{} ({folded} more folded in since the last Event)",
                ev.message
            )
        } else {
            ev.message.clone()
        };
        let event = Event {
            type_: ev.reason.event_type(),
            reason: ev.reason.as_str().into(),
            // The API limits notes to 1 kB.
            note: Some(crate::tracker::decode::cut_front(&note, 1000)),
            action: "Execute".into(),
            secondary: None,
        };
        match recorder.publish(&event, &ev.job.object_ref()).await {
            Ok(()) => {
                stats.events_published.fetch_add(1, Ordering::Relaxed);
                debug!(job = %format!("{}/{}", ev.job.namespace, ev.job.name), reason = ev.reason.as_str(), "event published");
            }
            Err(e) => {
                stats.events_dropped.fetch_add(1, Ordering::Relaxed);
                warn!(job = %format!("{}/{}", ev.job.namespace, ev.job.name), error = %e, "publishing an Event failed")
            }
        }
        sent_since_gc += 1;
        if sent_since_gc >= 1000 {
            sent_since_gc = 0;
            folding.forget_older_than(Instant::now(), cfg.per_job_interval * 10);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_fold_into_the_next_publish() {
        let job = JobRef {
            namespace: "ns".into(),
            name: "a".into(),
            uid: "u".into(),
        };
        let mut f = Folding::default();
        let t = Instant::now();
        let every = Duration::from_secs(60);
        let k = || (job.clone(), Reason::Failed);
        assert_eq!(f.offer(k(), t, every), Some(0));
        assert_eq!(f.offer(k(), t + Duration::from_secs(30), every), None);
        assert_eq!(f.offer(k(), t + Duration::from_secs(59), every), None);
        // Another reason is its own series.
        assert_eq!(
            f.offer(
                (job.clone(), Reason::Lost),
                t + Duration::from_secs(1),
                every
            ),
            Some(0)
        );
        assert_eq!(f.offer(k(), t + Duration::from_secs(61), every), Some(2));
        assert_eq!(f.offer(k(), t + Duration::from_secs(62), every), None);
        f.forget_older_than(t + Duration::from_secs(1000), every);
        // The folded one is kept until it is reported.
        assert_eq!(f.last.len(), 1);
    }
}
