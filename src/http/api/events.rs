//! `GET /api/v1/executions/{id}/events`: the Events of a run's job around the run (the run
//! page's last part): what kube-beat (or anyone) said about the job from a little before the run
//! was claimed until a little after it ended.
//!
//! Events live in the apiserver, not in Postgres, so this is the one dashboard read that asks the
//! apiserver. It is bounded: the caller must be allowed to `list` Events in the job's namespace
//! (as `kubectl get events` requires; a SubjectAccessReview, cached), one list of at most
//! [`MAX_LISTED`] Events per job is kept for [`CACHE_TTL`] and shared by every caller, and the
//! dashboard asks for it when the page opens, not on every live refresh.

use std::{sync::Arc, time::Duration};

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use chrono::{DateTime, Utc};
use k8s_openapi::api::events::v1::Event;
use kube::{Api, Client, Resource, api::ListParams};
use moka::future::Cache;
use serde::Serialize;
use serde_json::{Value, json};

use super::{ApiError, ApiState, run::readable_execution};
use crate::{
    api::ScheduledJob,
    http::auth::{Credentials, Resource as Checked},
    reconcile::scheduled_job::to_chrono,
};

/// Events listed per job at most (the recorder folds repeats into one Event with a count, so a
/// job's Events are few; this bounds a job someone else floods).
const MAX_LISTED: u32 = 500;
/// How long one job's list is reused, by every caller.
const CACHE_TTL: Duration = Duration::from_secs(10);
/// Jobs whose lists are kept at most.
const CACHE_CAP: u64 = 1_000;
/// How far before the claim and after the end of the run Events are shown.
const MARGIN: chrono::TimeDelta = chrono::TimeDelta::minutes(10);
/// Events shown per run at most (the newest).
const MAX_SHOWN: usize = 100;

/// One Event as the run page shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunEvent {
    #[serde(rename = "type")]
    pub kind: String,
    pub reason: String,
    pub note: String,
    /// Times it happened (a folded series counts each).
    pub count: i32,
    pub first: DateTime<Utc>,
    pub last: DateTime<Utc>,
    pub reporting_controller: String,
}

/// The lists of Events per job (namespace, name), shared by every caller.
pub struct JobEvents {
    cache: Cache<(String, String), Arc<Vec<RunEvent>>>,
}

impl Default for JobEvents {
    fn default() -> JobEvents {
        JobEvents {
            cache: Cache::builder()
                .time_to_live(CACHE_TTL)
                .max_capacity(CACHE_CAP)
                .build(),
        }
    }
}

impl JobEvents {
    /// The job's Events, from the cache or one list call.
    async fn of(
        &self,
        client: &Client,
        namespace: &str,
        name: &str,
    ) -> Result<Arc<Vec<RunEvent>>, Arc<kube::Error>> {
        let key = (namespace.to_string(), name.to_string());
        self.cache
            .try_get_with(key, async {
                let fields = format!(
                    "regarding.kind={},regarding.name={name}",
                    ScheduledJob::kind(&())
                );
                let params = ListParams::default().fields(&fields).limit(MAX_LISTED);
                let list = Api::<Event>::namespaced(client.clone(), namespace)
                    .list(&params)
                    .await?;
                Ok(Arc::new(list.items.iter().filter_map(run_event).collect()))
            })
            .await
    }
}

/// The run page's view of an Event about a ScheduledJob (another group's kind of the same name
/// is not ours); `None` for one with no time at all.
fn run_event(e: &Event) -> Option<RunEvent> {
    let group = ScheduledJob::group(&());
    let ours = e
        .regarding
        .as_ref()
        .and_then(|r| r.api_version.as_deref())
        .is_some_and(|v| v.split('/').next() == Some(group.as_ref()));
    if !ours {
        return None;
    }
    let first = e
        .event_time
        .as_ref()
        .map(|t| t.0)
        .or_else(|| e.deprecated_first_timestamp.as_ref().map(|t| t.0))
        .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .map(to_chrono)?;
    let last = e
        .series
        .as_ref()
        .map(|s| s.last_observed_time.0)
        .or_else(|| e.deprecated_last_timestamp.as_ref().map(|t| t.0))
        .map(to_chrono)
        .unwrap_or(first)
        .max(first);
    let count = e
        .series
        .as_ref()
        .map(|s| s.count)
        .or(e.deprecated_count)
        .unwrap_or(1)
        .max(1);
    Some(RunEvent {
        kind: e.type_.clone().unwrap_or_default(),
        reason: e.reason.clone().unwrap_or_default(),
        note: e.note.clone().unwrap_or_default(),
        count,
        first,
        last,
        reporting_controller: e.reporting_controller.clone().unwrap_or_default(),
    })
}

/// The Events that overlap `[from, to]`, oldest first, the newest [`MAX_SHOWN`] of them; and
/// whether some were left out.
pub fn around(
    events: &[RunEvent],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> (Vec<RunEvent>, bool) {
    let mut shown: Vec<RunEvent> = events
        .iter()
        .filter(|e| e.last >= from && e.first <= to)
        .cloned()
        .collect();
    shown.sort_by_key(|e| (e.first, e.last));
    let cut = shown.len().saturating_sub(MAX_SHOWN);
    (shown.split_off(cut), cut > 0)
}

pub(super) async fn events(
    State(s): State<Arc<ApiState>>,
    creds: Credentials,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (caller, run) = readable_execution(&s, &creds, &id).await?;
    let (namespace, name) = (run.view.namespace.as_str(), run.view.job_name.as_str());
    if !s
        .auth
        .allowed_on(&caller, Checked::Events, "list", namespace, "")
        .await?
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "{} may not list events in namespace {namespace}",
                caller.name()
            ),
        ));
    }
    let all = s.events.of(&s.client, namespace, name).await.map_err(|e| {
        tracing::warn!(error = %e, %namespace, "listing a job's Events failed");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the apiserver did not answer the list of Events; try again".into(),
        )
    })?;
    let from = run.claimed_at.min(run.view.scheduled_for) - MARGIN;
    let to = run.view.finished_at.unwrap_or_else(Utc::now) + MARGIN;
    let (shown, truncated) = around(&all, from, to);
    Ok(Json(json!({
        "events": shown, "from": from, "to": to, "truncated": truncated,
        "listed": all.len(), "listLimit": MAX_LISTED,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use k8s_openapi::{
        api::{core::v1::ObjectReference, events::v1::EventSeries},
        apimachinery::pkg::apis::meta::v1::{MicroTime, Time},
    };

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0)
            .single()
            .expect("a time")
    }

    fn k8s_at(secs: i64) -> k8s_openapi::jiff::Timestamp {
        k8s_openapi::jiff::Timestamp::from_second(1_800_000_000 + secs).expect("a time")
    }

    fn event(api_version: &str, reason: &str, first: i64, last: Option<i64>) -> Event {
        Event {
            regarding: Some(ObjectReference {
                api_version: Some(api_version.into()),
                kind: Some("ScheduledJob".into()),
                name: Some("nightly".into()),
                ..Default::default()
            }),
            reason: Some(reason.into()),
            note: Some(format!("{reason} note")),
            type_: Some("Warning".into()),
            event_time: Some(MicroTime(k8s_at(first))),
            series: last.map(|l| EventSeries {
                count: 4,
                last_observed_time: MicroTime(k8s_at(l)),
            }),
            reporting_controller: Some("kubebeat.io/operator".into()),
            ..Default::default()
        }
    }

    #[test]
    fn only_our_kind_and_times_from_series_or_legacy_fields() {
        let ours = run_event(&event("kubebeat.io/v1alpha1", "Failed", 10, Some(50))).expect("ours");
        assert_eq!((ours.first, ours.last, ours.count), (at(10), at(50), 4));
        assert_eq!(ours.reason, "Failed");
        assert_eq!(ours.kind, "Warning");
        assert!(run_event(&event("batch.example.com/v1", "Failed", 10, None)).is_none());
        // A core/v1-style Event: no eventTime, the deprecated timestamps and count.
        let mut legacy = event("kubebeat.io/v1alpha1", "Triggered", 0, None);
        legacy.event_time = None;
        legacy.deprecated_first_timestamp = Some(Time(k8s_at(5)));
        legacy.deprecated_last_timestamp = Some(Time(k8s_at(7)));
        legacy.deprecated_count = Some(2);
        let legacy = run_event(&legacy).expect("legacy");
        assert_eq!((legacy.first, legacy.last, legacy.count), (at(5), at(7), 2));
        let mut timeless = event("kubebeat.io/v1alpha1", "Failed", 0, None);
        timeless.event_time = None;
        assert!(run_event(&timeless).is_none());
    }

    #[test]
    fn around_keeps_what_overlaps_the_window_oldest_first() {
        let e = |reason: &str, first, last| {
            run_event(&event("kubebeat.io/v1alpha1", reason, first, Some(last))).expect("event")
        };
        let all = vec![
            e("late", 200, 210),
            e("before", 0, 50),
            e("spans", 0, 150),
            e("inside", 120, 130),
        ];
        let (shown, truncated) = around(&all, at(100), at(200));
        let reasons: Vec<_> = shown.iter().map(|e| e.reason.as_str()).collect();
        assert_eq!(reasons, ["spans", "inside", "late"]);
        assert!(!truncated);
        let many: Vec<_> = (0..MAX_SHOWN as i64 + 5)
            .map(|i| e(&format!("r{i}"), i, i))
            .collect();
        let (shown, truncated) = around(&many, at(0), at(10_000));
        assert!(truncated);
        assert_eq!(shown.len(), MAX_SHOWN);
        assert_eq!(shown[0].reason, "r5", "the newest are kept");
    }
}
