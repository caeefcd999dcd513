//! Calendars end to end (issue #27), with a real apiserver, Postgres, Redis and a Celery worker:
//! - a holiday (`date:` today in Kiritimati, UTC+14) skips every slot of the job naming that
//!   calendar, recorded SKIPPED with `Calendar: <name>: <reason>` and an Event, nothing sent to
//!   the worker; the same date in a Pago Pago (UTC-11) calendar is not today there, so the job
//!   naming it runs, except the slots inside that calendar's freeze `window` of a few seconds;
//! - removing the holiday from the calendar makes the next slots run, the jobs untouched;
//! - a job naming a calendar that does not exist is `Ready=False CalendarNotFound` and does not
//!   run, until the calendar is created.

mod common;

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use common::{Fixture, eventually, fixture};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use kube_beat::api::{ScheduleCalendar, ScheduledJob};
use serde_json::{Value, json};

#[derive(Debug, sqlx::FromRow)]
struct Run {
    state: String,
    error: Option<String>,
    scheduled_for: DateTime<Utc>,
    task_id: String,
}

/// The job's slots due by now (claims ahead are not counted yet).
async fn runs(f: &Fixture, job: &str) -> Vec<Run> {
    sqlx::query_as(
        "SELECT e.state, e.error, e.scheduled_for, e.task_id
         FROM job_executions e JOIN scheduled_jobs j ON j.id = e.job_id
         WHERE j.namespace = $1 AND j.name = $2 AND e.scheduled_for <= now()
         ORDER BY e.scheduled_for",
    )
    .bind(&f.ns)
    .bind(job)
    .fetch_all(&f.pool)
    .await
    .unwrap_or_default()
}

async fn ready(f: &Fixture, job: &str) -> Option<(String, String, String)> {
    let status = f.status(job).await;
    let c = status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?
        .clone();
    let text = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    Some((text("status"), text("reason"), text("message")))
}

async fn create_calendar(f: &Fixture, name: &str, spec: Value) {
    let cal: ScheduleCalendar = serde_json::from_value(json!({
        "apiVersion": "kubebeat.io/v1alpha1", "kind": "ScheduleCalendar",
        "metadata": {"name": name, "labels": {"kubebeat.io/test": f.id}},
        "spec": spec,
    }))
    .expect("calendar");
    Api::<ScheduleCalendar>::all(f.client.clone())
        .create(&PostParams::default(), &cal)
        .await
        .expect("create calendar");
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[tokio::test]
#[ignore = "needs the real stack: make test"]
async fn holidays_and_freezes_skip_the_right_slots_in_two_time_zones() {
    let env = common::env();
    let f = fixture("kbt-calendars", format!("{}/0", env.redis_url)).await;
    f.task_function("echo", "kb.echo").await;
    // Today in Kiritimati (UTC+14). In Pago Pago (UTC-11) that date is still a day or two
    // ahead at every instant, so the same `date` excludes nothing there now. The test must not
    // cross Kiritimati's midnight: if it would (2 minutes a day), wait for it to pass.
    let kiri_date = |t: DateTime<Utc>| {
        t.with_timezone(&chrono_tz::Pacific::Kiritimati)
            .date_naive()
    };
    while kiri_date(Utc::now()) != kiri_date(Utc::now() + chrono::Duration::seconds(120)) {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let now = Utc::now();
    let kiri_day = kiri_date(now).to_string();
    let (kiri, pago, later) = (
        format!("{}-kiri", f.id),
        format!("{}-pago", f.id),
        format!("{}-later", f.id),
    );
    create_calendar(
        &f,
        &kiri,
        json!({"timeZone": "Pacific/Kiritimati",
               "exclude": [{"date": kiri_day, "reason": "national holiday"}]}),
    )
    .await;
    // The freeze: a few seconds, starting once the operator has had time to start.
    // Whole seconds: the calendar says them in RFC 3339 without fractions.
    let whole = |t: DateTime<Utc>| DateTime::from_timestamp(t.timestamp(), 0).unwrap_or(t);
    let (freeze_from, freeze_to) = (
        whole(now + chrono::Duration::seconds(14)),
        whole(now + chrono::Duration::seconds(20)),
    );
    create_calendar(
        &f,
        &pago,
        json!({"timeZone": "Pacific/Pago_Pago",
               "exclude": [{"date": kiri_day, "reason": "national holiday"},
                           {"window": {"from": rfc3339(freeze_from), "to": rfc3339(freeze_to)},
                            "reason": "change freeze"}]}),
    )
    .await;
    f.job(
        "kiri-job",
        "echo",
        json!({"schedule": {"cron": "@every 2s"}, "timeZone": "Pacific/Kiritimati",
               "calendars": [kiri]}),
    )
    .await;
    f.job(
        "pago-job",
        "echo",
        json!({"schedule": {"cron": "@every 2s"}, "timeZone": "Pacific/Pago_Pago",
               "calendars": [pago]}),
    )
    .await;
    f.job(
        "waiting-job",
        "echo",
        json!({"schedule": {"cron": "@every 2s"}, "calendars": [later]}),
    )
    .await;
    let op = f.operator(&[
        "--status-interval-seconds",
        "0.5",
        "--event-interval-seconds",
        "1",
    ]);
    let _worker = f.worker();

    // The job naming a missing calendar is not Ready and does not run.
    let (_, _, message) = eventually(
        "waiting-job: Ready=False CalendarNotFound",
        Duration::from_secs(30),
        || async {
            ready(&f, "waiting-job")
                .await
                .filter(|(s, r, _)| s == "False" && r == "CalendarNotFound")
        },
    )
    .await;
    assert!(message.contains(&later), "{message}");

    // pago-job: runs before, during (skipped) and after the freeze.
    let pago_runs = eventually(
        "pago-job past the freeze",
        Duration::from_secs(40),
        || async {
            let r = runs(&f, "pago-job").await;
            r.iter()
                .any(|r| r.scheduled_for >= freeze_to + chrono::Duration::seconds(2))
                .then_some(r)
        },
    )
    .await;
    let in_freeze = |t: DateTime<Utc>| freeze_from <= t && t < freeze_to;
    let frozen: Vec<&Run> = pago_runs
        .iter()
        .filter(|r| in_freeze(r.scheduled_for))
        .collect();
    assert!(frozen.len() >= 2, "slots in the freeze: {pago_runs:?}");
    for r in &pago_runs {
        if in_freeze(r.scheduled_for) {
            assert_eq!(
                (r.state.as_str(), r.error.clone()),
                ("SKIPPED", Some(format!("Calendar: {pago}: change freeze"))),
                "{r:?}"
            );
        } else {
            assert_ne!(r.state, "SKIPPED", "ran outside the freeze: {r:?}");
        }
    }
    assert!(
        pago_runs
            .iter()
            .any(|r| r.scheduled_for < freeze_from && r.state != "SKIPPED"),
        "a run before the freeze: {pago_runs:?}"
    );

    // kiri-job: every slot so far is a holiday.
    let kiri_runs = runs(&f, "kiri-job").await;
    assert!(kiri_runs.len() >= 5, "{kiri_runs:?}");
    for r in &kiri_runs {
        assert_eq!(
            (r.state.as_str(), r.error.clone()),
            (
                "SKIPPED",
                Some(format!("Calendar: {kiri}: national holiday"))
            ),
            "{r:?}"
        );
    }
    eventually(
        "a Skipped Event naming the calendar",
        Duration::from_secs(20),
        || async {
            f.events().into_iter().find(|(name, reason, _, note)| {
                name == "kiri-job"
                    && reason == "Skipped"
                    && note.ends_with(&format!("skipped: Calendar: {kiri}: national holiday"))
            })
        },
    )
    .await;
    // Skipped slots are not failures, and the counters say so.
    let status = f.status("kiri-job").await;
    assert_eq!(status["missed"].as_i64().unwrap_or(0), 0, "{status}");
    assert_eq!(
        status["consecutiveFailures"].as_i64().unwrap_or(0),
        0,
        "{status}"
    );

    // Remove the holiday: kiri-job's next slots run, with no change to the jobs.
    let jobs = Api::<ScheduledJob>::namespaced(f.client.clone(), &f.ns);
    let generation = jobs
        .get("kiri-job")
        .await
        .expect("kiri-job")
        .metadata
        .generation;
    let edited_at = Utc::now();
    Api::<ScheduleCalendar>::all(f.client.clone())
        .patch(
            &kiri,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"exclude": null}})),
        )
        .await
        .expect("edit calendar");
    let ran = eventually(
        "kiri-job runs after the edit",
        Duration::from_secs(20),
        || async {
            runs(&f, "kiri-job")
                .await
                .into_iter()
                .find(|r| r.state != "SKIPPED" && r.state != "PENDING")
        },
    )
    .await;
    assert!(ran.scheduled_for > edited_at, "{ran:?}");
    assert_eq!(
        jobs.get("kiri-job")
            .await
            .expect("kiri-job")
            .metadata
            .generation,
        generation,
        "the job was not touched"
    );

    // The missing calendar appears: waiting-job becomes Ready and runs.
    create_calendar(&f, &later, json!({})).await;
    eventually(
        "waiting-job: Ready=True",
        Duration::from_secs(30),
        || async {
            ready(&f, "waiting-job")
                .await
                .filter(|(s, _, _)| s == "True")
        },
    )
    .await;
    let waited = eventually("waiting-job runs", Duration::from_secs(20), || async {
        runs(&f, "waiting-job")
            .await
            .into_iter()
            .find(|r| r.state != "PENDING")
    })
    .await;
    assert_ne!(waited.state, "SKIPPED", "{waited:?}");

    // From the worker's side: no skipped slot reached it; the runs did, once each.
    let all: Vec<Run> = [
        runs(&f, "kiri-job").await,
        runs(&f, "pago-job").await,
        runs(&f, "waiting-job").await,
    ]
    .into_iter()
    .flatten()
    .collect();
    let record = common::wait_invocations(&f.pool, &f.queue, Duration::from_secs(20), |rows| {
        rows.iter().any(|i| i.task_id == ran.task_id)
            && rows.iter().any(|i| i.task_id == waited.task_id)
    })
    .await;
    for r in &all {
        let times = record.iter().filter(|i| i.task_id == r.task_id).count();
        if r.state == "SKIPPED" {
            assert_eq!(times, 0, "a skipped slot reached the worker: {r:?}");
        }
        assert!(times <= 1, "ran twice: {r:?}");
    }
    assert!(
        record.iter().any(|i| i.task_id == ran.task_id),
        "the run after the edit reached the worker"
    );
    common::assert_no_duplicates(&record);

    // The calendars show Ready and their job counts.
    let cal = eventually("calendar jobCount", Duration::from_secs(90), || async {
        let c = Api::<ScheduleCalendar>::all(f.client.clone())
            .get(&pago)
            .await
            .ok()?;
        let s = c.status?;
        (s.job_count == 1).then_some(s)
    })
    .await;
    assert!(
        cal.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True"),
        "{cal:?}"
    );
    for name in [&kiri, &pago, &later] {
        common::kubectl(&["delete", "schedulecalendar", name, "--wait=false"]);
    }
    drop(op);
    f.finish().await;
}
