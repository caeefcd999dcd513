use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use serde_json::{Value, json};

use super::*;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .expect("a test instant")
}

fn limits() -> Limits {
    Limits {
        shown: 10,
        top: 5,
        busy_threshold: 1000,
    }
}

fn input(now: &str, window: &str, jobs: Vec<JobInput>) -> Input {
    Input {
        now: t(now),
        now_given: true,
        window: parse_window(window).expect("window"),
        window_text: window.to_string(),
        limits: limits(),
        counts: Counts {
            scheduled_jobs: jobs.len(),
            ..Counts::default()
        },
        errors: Vec::new(),
        notes: Vec::new(),
        jobs,
        calendars: Calendars::new(),
        cluster_calendars: Calendars::new(),
        against_cluster: false,
    }
}

fn job(name: &str, spec: Value) -> JobInput {
    JobInput {
        source: format!("jobs.yaml[#{name}]"),
        namespace: "team".into(),
        name: name.into(),
        value: json!({
            "apiVersion": "kubebeat.io/v1alpha1", "kind": "ScheduledJob",
            "metadata": {"name": name}, "spec": spec,
        }),
        error: None,
        notes: Vec::new(),
        cluster: InCluster::NotAsked,
    }
}

#[test]
fn windows() {
    assert_eq!(parse_window("7d"), Ok(Duration::days(7)));
    assert_eq!(parse_window("1d12h"), Ok(Duration::hours(36)));
    assert_eq!(parse_window("2w"), Ok(Duration::days(14)));
    assert_eq!(parse_window("90m"), Ok(Duration::minutes(90)));
    assert_eq!(parse_window("400d"), Ok(Duration::days(400)));
    for bad in ["", "0d", "401d", "7", "d", "7x", "-1d", "9999999d", "1.5d"] {
        assert!(parse_window(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn berlin_transitions_to_the_second() {
    let berlin: Tz = "Europe/Berlin".parse().expect("zone");
    let found = dst::changes(berlin, t("2026-01-01T00:00:00Z"), t("2027-01-01T00:00:00Z"));
    assert_eq!(
        found,
        vec![
            dst::Change {
                at: t("2026-03-29T01:00:00Z"),
                before: 3600,
                after: 7200
            },
            dst::Change {
                at: t("2026-10-25T01:00:00Z"),
                before: 7200,
                after: 3600
            },
        ]
    );
    assert!(
        dst::changes(
            Tz::UTC,
            t("2026-01-01T00:00:00Z"),
            t("2027-01-01T00:00:00Z")
        )
        .is_empty()
    );
    assert_eq!(dst::offset_text(-34_200), "-09:30");
}

fn effects(spec: Value, now: &str) -> Vec<(String, &'static str, Vec<String>, Vec<String>)> {
    let plan = build(&input(now, "7d", vec![job("j", spec)]));
    plan.jobs[0]
        .dst_transitions
        .iter()
        .flat_map(|tr| {
            tr.effects
                .iter()
                .map(|e| {
                    (
                        tr.kind.to_string(),
                        e.effect,
                        e.local_times.clone(),
                        e.runs_at.clone(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn dst_effects_follow_the_schedule_rules() {
    let spring = "2026-03-27T00:00:00Z";
    let fall = "2026-10-23T00:00:00Z";
    let cron = |c: &str| json!({"taskFunction": "f", "schedule": {"cron": c}, "timeZone": "Europe/Berlin"});
    assert_eq!(
        effects(cron("30 2 * * *"), spring),
        vec![(
            "gap".into(),
            "moved",
            vec!["02:30".into()],
            vec!["2026-03-29T01:00:00Z".into()]
        )]
    );
    let skipped = effects(cron("15 * * * *"), spring);
    assert_eq!(skipped[0].1, "skipped");
    assert_eq!(skipped[0].2, vec!["02:15".to_string()]);
    assert_eq!(
        effects(cron("30 2 * * *"), fall),
        vec![(
            "overlap".into(),
            "once",
            vec!["02:30".into()],
            vec!["2026-10-25T00:30:00Z".into()]
        )]
    );
    assert_eq!(
        effects(cron("30 * * * *"), fall)[0].3,
        vec![
            "2026-10-25T00:30:00Z".to_string(),
            "2026-10-25T01:30:00Z".to_string()
        ]
    );
    assert_eq!(effects(cron("0 9 * * *"), spring)[0].1, "none");
    let interval = json!({"taskFunction": "f", "schedule": {"interval": {"hours": 1}}, "timeZone": "Europe/Berlin"});
    assert_eq!(effects(interval, spring)[0].1, "realTime");
    // UTC has no transitions to show.
    assert!(
        effects(
            json!({"taskFunction": "f", "schedule": {"cron": "30 2 * * *"}}),
            spring
        )
        .is_empty()
    );
}

#[test]
fn runs_in_the_window_in_local_time() {
    let plan = build(&input(
        "2026-03-27T00:00:00Z",
        "3d",
        vec![job(
            "j",
            json!({"taskFunction": "f", "schedule": {"cron": "30 2 * * *"}, "timeZone": "Europe/Berlin"}),
        )],
    ));
    let runs = &plan.jobs[0].runs;
    assert_eq!(runs.count, 3);
    let got: Vec<(&str, &str)> = runs
        .shown
        .iter()
        .map(|s| (s.utc.as_str(), s.local.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("2026-03-27T01:30:00Z", "2026-03-27 02:30:00 CET (+01:00)"),
            ("2026-03-28T01:30:00Z", "2026-03-28 02:30:00 CET (+01:00)"),
            ("2026-03-29T01:00:00Z", "2026-03-29 03:00:00 CEST (+02:00)"),
        ]
    );
}

#[test]
fn an_interval_without_start_time_is_anchored_at_now_or_its_creation() {
    let spec = json!({"taskFunction": "f", "schedule": {"interval": {"minutes": 40}}});
    let plan = build(&input(
        "2026-01-01T00:00:10Z",
        "2h",
        vec![job("j", spec.clone())],
    ));
    let j = &plan.jobs[0];
    assert_eq!(
        j.anchor.as_ref().map(|a| (a.time.as_str(), a.from)),
        Some(("2026-01-01T00:00:10Z", "now"))
    );
    assert_eq!(j.runs.shown[0].utc, "2026-01-01T00:40:10Z");
    assert_eq!(j.runs.count, 3);

    let mut created = job("j", spec);
    created.cluster = InCluster::Present(json!({
        "metadata": {"name": "j", "creationTimestamp": "2025-12-31T23:50:00Z"},
        "spec": {"taskFunction": "f", "schedule": {"interval": {"minutes": 40}}},
    }));
    let plan = build(&input("2026-01-01T00:00:10Z", "2h", vec![created]));
    let j = &plan.jobs[0];
    assert_eq!(j.anchor.as_ref().map(|a| a.from), Some("creationTimestamp"));
    assert_eq!(j.runs.shown[0].utc, "2026-01-01T00:30:00Z");
    assert_eq!(j.changes.as_ref().map(|c| c.state), Some("unchanged"));
}

struct Holiday(DateTime<Utc>, DateTime<Utc>);

impl Exclude for Holiday {
    fn verdict(&self, t: DateTime<Utc>) -> Option<String> {
        (t >= self.0 && t < self.1).then(|| "Calendar: holidays: Christmas".to_string())
    }
}

#[test]
fn calendar_exclusions_are_not_runs() {
    let mut i = input(
        "2026-12-24T00:00:00Z",
        "3d",
        vec![job(
            "j",
            json!({"taskFunction": "f", "schedule": {"cron": "0 9 * * *"}, "calendars": ["holidays", "gone"]}),
        )],
    );
    let holiday: Arc<dyn Exclude> = Arc::new(Holiday(
        t("2026-12-25T00:00:00Z"),
        t("2026-12-26T00:00:00Z"),
    ));
    i.calendars.insert("holidays".into(), Ok(holiday));
    let plan = build(&i);
    let j = &plan.jobs[0];
    assert_eq!(j.runs.count, 2);
    assert_eq!(j.exclusions.count, 1);
    let x = &j.exclusions.shown[0];
    assert_eq!(
        (x.slot.utc.as_str(), x.calendar.as_str(), x.reason.as_str()),
        ("2026-12-25T09:00:00Z", "holidays", "Christmas")
    );
    assert!(
        j.notes.iter().any(|n| n.contains("\"gone\"")),
        "{:?}",
        j.notes
    );
    assert_eq!(plan.busiest.top.len(), 2);
}

#[test]
fn busiest_seconds_share_one_enumeration_and_warn() {
    let jobs: Vec<JobInput> = (0..1500)
        .map(|i| {
            job(
                &format!("j{i:04}"),
                json!({"taskFunction": "f", "schedule": {"cron": "0 * * * *"}}),
            )
        })
        .chain([job(
            "quiet",
            json!({"taskFunction": "f", "schedule": {"cron": "30 * * * *"}, "jitterSeconds": 30}),
        )])
        .collect();
    let plan = build(&input("2026-01-01T00:00:00Z", "3h", jobs));
    let b = &plan.busiest;
    assert_eq!(b.seconds_over_threshold, 3);
    assert_eq!(b.top.len(), 5);
    assert_eq!(
        (b.top[0].at.as_str(), b.top[0].runs),
        ("2026-01-01T01:00:00Z", 1500)
    );
    assert_eq!(b.top[0].jobs.len(), 10);
    assert_eq!(b.top[0].jobs[0], "team/j0000");
    assert_eq!((b.top[3].runs, b.top[3].jittered), (1, 1));
    assert_eq!(plan.warnings.len(), 1, "{:?}", plan.warnings);
    assert!(!b.capped);
}

#[test]
fn invalid_and_suspended_jobs_have_no_runs() {
    let mut bad = job(
        "bad",
        json!({"taskFunction": "f", "schedule": {"cron": "61 * * * *"}}),
    );
    bad.error = Some("invalid cron expression".into());
    let suspended = job(
        "off",
        json!({"taskFunction": "f", "schedule": {"cron": "@hourly"}, "suspend": true}),
    );
    let plan = build(&input("2026-01-01T00:00:00Z", "1d", vec![bad, suspended]));
    assert_eq!(plan.invalid, 1);
    assert!(plan.jobs.iter().all(|j| j.runs.count == 0));
    assert!(plan.busiest.top.is_empty());
    assert!(render::text(&plan).contains("INVALID: invalid cron expression"));
}

#[test]
fn changes_against_the_cluster() {
    let mut changed = job(
        "j",
        json!({"taskFunction": "f", "schedule": {"cron": "30 * * * *"}}),
    );
    changed.cluster = InCluster::Present(json!({
        "metadata": {"name": "j", "creationTimestamp": "2025-01-01T00:00:00Z"},
        "spec": {"taskFunction": "f", "schedule": {"cron": "0 */2 * * *"}, "suspend": false, "concurrencyPolicy": "Allow"},
    }));
    let mut new = job(
        "n",
        json!({"taskFunction": "f", "schedule": {"cron": "@daily"}}),
    );
    new.cluster = InCluster::Absent;
    let plan = build(&input("2026-01-01T00:00:00Z", "4h", vec![changed, new]));
    let c = plan.jobs[0].changes.clone().expect("changes");
    assert_eq!(c.state, "changed");
    assert_eq!(
        c.fields,
        vec![FieldChange {
            path: "spec.schedule.cron".into(),
            before: "\"0 */2 * * *\"".into(),
            after: "\"30 * * * *\"".into()
        }]
    );
    assert_eq!(c.runs_added.count, 4);
    let removed: Vec<&str> = c
        .runs_removed
        .shown
        .iter()
        .map(|s| s.utc.as_str())
        .collect();
    assert_eq!(
        removed,
        vec!["2026-01-01T02:00:00Z", "2026-01-01T04:00:00Z"]
    );
    assert_eq!(plan.jobs[1].changes.as_ref().map(|c| c.state), Some("new"));
}

#[test]
fn enumeration_is_capped_and_says_so() {
    let spec = json!({"taskFunction": "f", "schedule": {"cron": "@every 1s"}});
    let plan = build(&input("2026-01-01T00:00:00Z", "7d", vec![job("j", spec)]));
    let j = &plan.jobs[0];
    assert_eq!(j.runs.count, MAX_SLOTS_PER_SCHEDULE);
    assert!(j.runs.capped && plan.busiest.capped);
    assert!(render::text(&plan).contains("or more (enumeration capped)"));
}

#[test]
fn garbage_is_planned_not_a_panic() {
    let jobs = vec![
        job("a", json!(null)),
        job("b", json!({"schedule": 7})),
        job(
            "c",
            json!({"taskFunction": "f", "schedules": [{"cron": "x"}, 3], "timeZone": 9}),
        ),
        job(
            "d",
            json!({"taskFunction": "f", "schedule": {"at": "9999-12-31T23:59:59Z"}, "endTime": "zz"}),
        ),
        job(
            "e",
            json!({"taskFunction": "f", "schedule": {"interval": {"seconds": 1}}, "startTime": "-262143-01-01T00:00:00Z"}),
        ),
    ];
    let plan = build(&input("2026-01-01T00:00:00Z", "400d", jobs));
    assert_eq!(plan.jobs.len(), 5);
    let text = render::text(&plan);
    assert!(text.contains("5 jobs"), "{text}");
    assert!(render::json(&plan).is_ok());
}
