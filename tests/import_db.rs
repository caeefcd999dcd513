//! `kube-beat import --from django-celery-beat|apscheduler`, proven by the sources' own
//! libraries: definitions are created with django-celery-beat's ORM (after its migrations) and
//! APScheduler's SQLAlchemyJobStore in a per-test Postgres database, imported, and the next fire
//! times each library computes itself (tests/migration/import_db_oracle.py, driven by a fixed
//! clock) are compared with `kube-beat next` on the imported schedule, across the 2026
//! spring-forward and fall-back of Europe/Berlin and America/New_York. Every difference is
//! asserted exactly, with the rule that explains it.

mod common;

use std::{collections::BTreeSet, process::Command};

use serde_json::Value;

/// Windows starting a day before each transition: US spring (03-08), EU spring (03-29),
/// EU fall (10-25), US fall (11-01).
const WINDOWS: [&str; 4] = [
    "2026-03-07T00:00:00Z",
    "2026-03-28T00:00:00Z",
    "2026-10-24T00:00:00Z",
    "2026-10-31T00:00:00Z",
];

fn oracle(args: &[&str]) -> String {
    let venv = common::migration_venv();
    let dir = common::env().repo.join("tests/migration");
    let out = Command::new(venv.join("bin/python"))
        .current_dir(&dir)
        .arg(dir.join("import_db_oracle.py"))
        .args(args)
        .output()
        .expect("running the oracle");
    assert!(
        out.status.success(),
        "oracle {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn lines(s: &str) -> Vec<String> {
    s.lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// `kube-beat import`: (objects, report).
fn import(from: &str, url: &str) -> (Vec<Value>, Value) {
    let dir = tempfile::tempdir().unwrap();
    let (yaml, report) = (dir.path().join("out.yaml"), dir.path().join("report.json"));
    let out = Command::new(env!("CARGO_BIN_EXE_kube-beat"))
        .args(["import", "--from", from, url, "--skip-invalid", "-o"])
        .arg(&yaml)
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&yaml).unwrap();
    let objects = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    let report = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    (objects, report)
}

fn job<'a>(objects: &'a [Value], name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == "ScheduledJob" && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no job {name} in {objects:#?}"))
}

fn next(schedule: &str, tz: &str, from: &str, n: usize) -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_kube-beat"))
        .args([
            "next",
            schedule,
            "--tz",
            tz,
            "--from",
            from,
            "-n",
            &n.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    lines(&String::from_utf8(out.stdout).unwrap())
}

/// kube-beat's fire times for an imported job: `n` after `from` (cron), or the first `n` of the
/// interval grid anchored at `startTime`.
fn kube_beat_times(job: &Value, from: &str, n: usize) -> Vec<String> {
    let spec = &job["spec"];
    let tz = spec["timeZone"].as_str().unwrap_or("UTC");
    if let Some(cron) = spec["schedule"]["cron"].as_str() {
        return next(cron, tz, from, n);
    }
    let i = &spec["schedule"]["interval"];
    let secs = i["hours"].as_i64().unwrap_or(0) * 3600
        + i["minutes"].as_i64().unwrap_or(0) * 60
        + i["seconds"].as_i64().unwrap_or(0);
    let start = spec["startTime"].as_str().expect("an anchored interval");
    next(&format!("@every {secs}s"), tz, start, n)
}

/// A fire time only one side has: (`"source"` or `"kube-beat"`, the instant).
type Mismatch = (&'static str, String);

/// Times in one list and not the other, up to the earlier of both lists' last times (a missing
/// or extra slot shifts every later index, so the lists are compared as sets).
fn compare(source: Vec<String>, ours: Vec<String>, out: &mut BTreeSet<Mismatch>) {
    assert!(!source.is_empty() && !ours.is_empty());
    let horizon = source.last().unwrap().min(ours.last().unwrap()).clone();
    let (a, b): (BTreeSet<_>, BTreeSet<_>) = (
        source.into_iter().filter(|t| *t <= horizon).collect(),
        ours.into_iter().filter(|t| *t <= horizon).collect(),
    );
    out.extend(a.difference(&b).map(|t| ("source", t.clone())));
    out.extend(b.difference(&a).map(|t| ("kube-beat", t.clone())));
}

fn mismatches_of(
    objects: &[Value],
    name: &str,
    source: impl Fn(&str, usize) -> Vec<String>,
) -> BTreeSet<Mismatch> {
    let j = job(objects, name);
    let mut out = BTreeSet::new();
    if j["spec"]["schedule"].get("interval").is_some() {
        // The whole grid from the first run to past the last transition.
        let n = 3000;
        // (The source's first run is at 2026-03-01T00:00:00Z itself: ask from just before.)
        compare(
            source("2026-02-28T23:59:59Z", n),
            kube_beat_times(j, "", n),
            &mut out,
        );
        return out;
    }
    for w in WINDOWS {
        compare(source(w, 50), kube_beat_times(j, w, 50), &mut out);
    }
    out
}

#[tokio::test]
#[ignore = "needs Postgres and the migration venv (make test)"]
async fn django_celery_beat_fire_times_match_its_own_library() {
    let db = common::TestDb::create().await;
    oracle(&["django-setup", &db.url]);
    let (objects, report) = import("django-celery-beat", &db.url);
    let oracle_times = |name: &str| {
        let url = db.url.clone();
        let name = name.to_string();
        move |from: &str, n: usize| {
            lines(&oracle(&["django-next", &url, &name, from, &n.to_string()]))
        }
    };
    // Options carried over.
    let q = &job(&objects, "berlin-quarter-hours")["spec"];
    assert_eq!(q["schedule"]["cron"], "0,15,30,45 1-3 * * 0,1,6");
    assert_eq!(
        (q["queue"].clone(), q["priority"].clone()),
        ("reports".into(), 3.into())
    );
    let ny = &job(&objects, "new-york-0130")["spec"];
    assert_eq!(ny["kwargs"], serde_json::json!({"full": true}));
    assert_eq!(ny["headers"], serde_json::json!({"x-team": "a"}));
    assert_eq!(
        (ny["exchange"].clone(), ny["routingKey"].clone()),
        ("ex".into(), "rk".into())
    );
    assert_eq!(
        job(&objects, "new-york-weekdays")["spec"]["expiresSeconds"],
        60
    );
    assert_eq!(
        job(&objects, "once")["spec"]["schedule"]["at"],
        "2026-12-31T23:00:00Z"
    );
    // Solar is refused, with its reason.
    let refused = report["notConverted"].as_array().unwrap();
    assert_eq!(refused.len(), 1, "{report:#}");
    assert_eq!(refused[0]["name"], "sunrise");
    assert!(refused[0]["reason"].as_str().unwrap().contains("solar"));

    let mut all = Vec::new();
    for name in [
        "berlin-0230",
        "berlin-quarter-hours",
        "new-york-0130",
        "new-york-weekdays",
        "every-90-minutes",
    ] {
        for m in mismatches_of(&objects, name, oracle_times(name)) {
            all.push((name.to_string(), m));
        }
    }
    for m in &all {
        eprintln!("difference: {m:?}");
    }
    assert_eq!(all, expected_django());
    db.drop_db().await;
}

#[tokio::test]
#[ignore = "needs Postgres and the migration venv (make test)"]
async fn apscheduler_fire_times_match_its_own_library() {
    let db = common::TestDb::create().await;
    oracle(&["aps-setup", &db.url]);
    let (objects, report) = import("apscheduler", &db.url);
    let refused = report["notConverted"].as_array().unwrap();
    assert_eq!(refused.len(), 1, "{report:#}");
    assert_eq!(refused[0]["name"], "last-day");
    let b = &job(&objects, "berlin-0230")["spec"];
    assert_eq!(b["args"], serde_json::json!(["report"]));
    assert_eq!(b["startingDeadlineSeconds"], 60);
    assert_eq!(b["concurrencyPolicy"], "Forbid");
    assert_eq!(
        objects
            .iter()
            .filter(|o| o["kind"] == "TaskFunction")
            .map(|o| o["spec"]["task"].clone())
            .collect::<Vec<_>>(),
        vec![Value::from("logging.info")]
    );
    assert_eq!(
        job(&objects, "once")["spec"]["schedule"]["at"],
        "2026-12-31T23:00:00Z"
    );
    let oracle_times = |name: &str| {
        let url = db.url.clone();
        let name = name.to_string();
        move |from: &str, n: usize| lines(&oracle(&["aps-next", &url, &name, from, &n.to_string()]))
    };
    let mut all = Vec::new();
    for name in [
        "berlin-0230",
        "berlin-weekdays-quarter",
        "new-york-0130",
        "every-7-hours",
    ] {
        for m in mismatches_of(&objects, name, oracle_times(name)) {
            all.push((name.to_string(), m));
        }
    }
    for m in &all {
        eprintln!("difference: {m:?}");
    }
    assert_eq!(all, expected_apscheduler());
    db.drop_db().await;
}

fn mismatch(job: &str, side: &'static str, t: &str) -> (String, Mismatch) {
    (job.to_string(), (side, t.to_string()))
}

/// kube-beat's DST rule (the ScheduledJob `timeZone` doc): a fixed-hour slot in a
/// spring-forward gap runs once at the first instant after the gap. Both sources run the
/// 02:30 Berlin slot of 2026-03-29 at 03:30 CEST (01:30Z: the wall time moved on by the gap);
/// kube-beat at 03:00 CEST (01:00Z). Every other time matches, intervals and slots around the
/// New York transitions included.
fn spring_gap() -> Vec<(String, Mismatch)> {
    vec![
        mismatch("berlin-0230", "kube-beat", "2026-03-29T01:00:00Z"),
        mismatch("berlin-0230", "source", "2026-03-29T01:30:00Z"),
    ]
}

fn expected_django() -> Vec<(String, Mismatch)> {
    spring_gap()
}

/// As Celery, plus: APScheduler runs a slot in a fall-back overlap twice (both occurrences of
/// 02:30 in Berlin, of 01:30 in New York); kube-beat once, at its first occurrence.
fn expected_apscheduler() -> Vec<(String, Mismatch)> {
    let mut v = spring_gap();
    v.insert(2, mismatch("berlin-0230", "source", "2026-10-25T01:30:00Z"));
    v.push(mismatch("new-york-0130", "source", "2026-11-01T06:30:00Z"));
    v
}
