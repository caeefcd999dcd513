//! `kube-beat import --from celery-beat` and `--from redbeat`, proven by the sources' own
//! libraries: the next 50 fire times Celery (and RedBeat) compute for each entry, with a fixed
//! clock, against `kube-beat next` on the imported job, across the spring-forward and fall-back
//! transitions of Europe/Berlin and America/New_York (2026).
//!
//! The one difference found is deliberate (kube-beat's DST rule, README): a crontab slot in a
//! spring-forward gap runs in Celery one gap-length after the slot (02:30 → 03:30), in kube-beat
//! once at the first instant after the gap (03:00). The tests assert exactly that: every
//! differing fire time lies in the hour after a spring-forward transition, and the 02:30 jobs do
//! differ there.

mod common;

use std::{
    collections::BTreeSet,
    path::Path,
    process::{Command, Stdio},
};

use chrono::{DateTime, Duration, Offset, TimeZone, Utc};
use serde_json::Value;

const N: usize = 50;

fn python() -> String {
    common::migration_venv()
        .join("bin/python")
        .to_string_lossy()
        .into_owned()
}

fn oracle() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/import_celery/oracle.py")
        .to_string_lossy()
        .into_owned()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.stdin(Stdio::null()).output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// `kube-beat import ARGS`: the ScheduledJobs (by source name) and the report.
fn import(dir: &Path, args: &[&str]) -> (Vec<(String, Value)>, Value) {
    let report = dir.join("report.json");
    let yaml = run(Command::new(env!("CARGO_BIN_EXE_kube-beat"))
        .current_dir(dir)
        .arg("import")
        .args(args)
        .arg("--python")
        .arg(python())
        .arg("--report")
        .arg(&report));
    let mut jobs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&yaml) {
        let v: Value = serde::Deserialize::deserialize(doc).expect("yaml");
        if v["kind"] == "ScheduledJob" {
            let meta = &v["metadata"];
            let name = meta["annotations"]["kubebeat.io/imported-name"]
                .as_str()
                .or(meta["name"].as_str())
                .expect("name")
                .to_string();
            jobs.push((name, v["spec"].clone()));
        }
    }
    let report = serde_json::from_str(&std::fs::read_to_string(report).expect("report"))
        .expect("report json");
    (jobs, report)
}

fn instant(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .with_timezone(&Utc)
}

/// `kube-beat next` on an imported job's schedule, from `from`.
fn kube_beat_next(spec: &Value, from: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let s = &spec["schedule"];
    let (expr, from) = if let Some(cron) = s["cron"].as_str() {
        (cron.to_string(), from)
    } else {
        let iv = &s["interval"];
        let part = |k: &str| iv[k].as_i64().unwrap_or(0);
        let expr = format!("{}h{}m{}s", part("hours"), part("minutes"), part("seconds"));
        // An interval counts from startTime when the source gave one (RedBeat's last run).
        let from = spec["startTime"].as_str().map(instant).unwrap_or(from);
        (expr, from)
    };
    let tz = spec["timeZone"].as_str().unwrap_or("UTC");
    run(Command::new(env!("CARGO_BIN_EXE_kube-beat")).args([
        "next",
        &expr,
        "--tz",
        tz,
        "--from",
        &from.to_rfc3339(),
        "-n",
        &N.to_string(),
    ]))
    .lines()
    .map(instant)
    .collect()
}

/// Whether `t` lies in the hour after a spring-forward transition of `zone` (where Celery runs a
/// slot of the gap).
fn after_spring_forward(zone: chrono_tz::Tz, t: DateTime<Utc>) -> bool {
    let offset = |t: DateTime<Utc>| {
        zone.offset_from_utc_datetime(&t.naive_utc())
            .fix()
            .local_minus_utc()
    };
    (0..=60).any(|m| {
        let at = t - Duration::minutes(m);
        offset(at) > offset(at - Duration::seconds(1))
    })
}

/// Whether `t` lies in the second occurrence of the hour a fall-back repeats.
fn in_repeated_hour(zone: chrono_tz::Tz, t: DateTime<Utc>) -> bool {
    let offset = |t: DateTime<Utc>| {
        zone.offset_from_utc_datetime(&t.naive_utc())
            .fix()
            .local_minus_utc()
    };
    (0..60).any(|m| {
        let at = t - Duration::minutes(m);
        offset(at) < offset(at - Duration::seconds(1))
    })
}

/// Compare one job's fire times; returns how many differ. Every difference must be one of the two
/// deliberate ones: a spring-forward gap slot (Celery one gap-length later, kube-beat at the
/// gap's end), or, for crontabs with hour `*`, the repeated hour of a fall-back (kube-beat runs
/// its slots, Celery does not).
fn compare(
    name: &str,
    spec: &Value,
    zone: chrono_tz::Tz,
    source: &[DateTime<Utc>],
    ours: &[DateTime<Utc>],
) -> usize {
    let hour_is_star = spec["schedule"]["cron"]
        .as_str()
        .is_some_and(|c| c.split(' ').nth(1) == Some("*"));
    assert_eq!(source.len(), N, "{name}");
    assert_eq!(ours.len(), N, "{name}");
    let end = source[N - 1].min(ours[N - 1]);
    let a: BTreeSet<_> = source.iter().filter(|t| **t <= end).collect();
    let b: BTreeSet<_> = ours.iter().filter(|t| **t <= end).collect();
    let diff: Vec<_> = a.symmetric_difference(&b).collect();
    for t in &diff {
        let overlap_extra = hour_is_star && in_repeated_hour(zone, ***t) && !a.contains(**t);
        assert!(
            after_spring_forward(zone, ***t) || overlap_extra,
            "{name} ({zone}): {t} differs and is not in a spring-forward gap's hour\nsource: {source:?}\nkube-beat: {ours:?}"
        );
    }
    // Above the tail, nearly every instant is shared: the comparison is not vacuous.
    assert!(
        a.intersection(&b).count() >= N - 5,
        "{name}: {a:?} vs {b:?}"
    );
    diff.len()
}

const MODULE: &str = r#"
from datetime import timedelta
from celery import Celery
from celery.schedules import crontab
from kombu import Queue
app = Celery("proj")
app.conf.timezone = "ZONE"
app.conf.beat_schedule = {
    "daily 02:30": {"task": "tasks.report", "schedule": crontab(minute=30, hour=2), "args": (1,)},
    "hourly": {"task": "tasks.report", "schedule": crontab(minute=0), "options": {"queue": Queue("reports"), "priority": 3}},
    "quarter-hours-1-3": {"task": "tasks.report", "schedule": crontab(minute="*/15", hour="1-3")},
    "weekdays": {"task": "tasks.report", "schedule": crontab(minute=0, hour="9", day_of_week="mon-fri")},
    "month-days": {"task": "tasks.report", "schedule": crontab(minute=5, hour="1-2", day_of_month="1,8,15,22,29", month_of_year="*/1")},
    "late-evening-wrap": {"task": "tasks.report", "schedule": crontab(minute="0,30", hour="22-1")},
    "every-90-minutes": {"task": "tasks.report", "schedule": timedelta(minutes=90), "kwargs": {"a": 1},
        "options": {"exchange": "ex", "routing_key": "rk", "headers": {"x": "1"}, "expires": 60}},
    "every-45-seconds": {"task": "tasks.other", "schedule": 45.0},
    "relative-hour": {"task": "tasks.other", "schedule": timedelta(hours=1), "relative": True},
    "relative-day": {"task": "tasks.other", "schedule": timedelta(days=1), "relative": True},
}
"#;

/// (zone, a start before its spring-forward, a start before its fall-back), 2026.
const WINDOWS: &[(&str, &str, &str)] = &[
    (
        "Europe/Berlin",
        "2026-03-27T12:00:00Z",
        "2026-10-23T12:00:00Z",
    ),
    (
        "America/New_York",
        "2026-03-06T12:00:00Z",
        "2026-10-30T12:00:00Z",
    ),
];

#[test]
#[ignore = "needs the migration venv (make test)"]
fn celery_beat_fire_times_match_celery() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut gap_differences = 0;
    for (zone_name, spring, fall) in WINDOWS {
        let zone: chrono_tz::Tz = zone_name.parse().expect("zone");
        let module = format!("kbt_beat_{}", zone_name.replace('/', "_").to_lowercase());
        std::fs::write(
            dir.path().join(format!("{module}.py")),
            MODULE.replace("ZONE", zone_name),
        )
        .expect("module");
        let (jobs, report) = import(dir.path(), &["--from", "celery-beat", &module]);
        assert_eq!(jobs.len(), 10, "{report}");
        assert_eq!(report["notConverted"], serde_json::json!([]));
        let by_name = |n: &str| &jobs.iter().find(|(name, _)| name == n).expect(n).1;
        assert_eq!(by_name("hourly")["queue"], "reports");
        assert_eq!(by_name("hourly")["priority"], 3);
        assert_eq!(by_name("every-90-minutes")["exchange"], "ex");
        assert_eq!(by_name("every-90-minutes")["routingKey"], "rk");
        assert_eq!(by_name("every-90-minutes")["headers"]["x"], "1");
        assert_eq!(by_name("every-90-minutes")["expiresSeconds"], 60);
        assert_eq!(by_name("month-days")["schedule"]["cron"], "5 1-2 */7 * *");
        assert_eq!(
            by_name("late-evening-wrap")["schedule"]["cron"],
            "0,30 0-1,22-23 * * *"
        );
        for start in [spring, fall] {
            let source: Value = serde_json::from_str(&run(Command::new(python())
                .current_dir(dir.path())
                .args([&oracle(), "celery", &module, start, &N.to_string()])))
            .expect("oracle json");
            for (name, spec) in &jobs {
                let theirs: Vec<_> = source[name]
                    .as_array()
                    .unwrap_or_else(|| panic!("{name} in {source}"))
                    .iter()
                    .map(|v| instant(v.as_str().expect("str")))
                    .collect();
                let ours = kube_beat_next(spec, instant(start));
                let d = compare(name, spec, zone, &theirs, &ours);
                if name == "daily 02:30" {
                    // The deliberate difference: the spring-forward day's 02:30 (none in autumn).
                    assert_eq!(
                        d,
                        if start == spring { 2 } else { 0 },
                        "{name} from {start}"
                    );
                    if start == spring {
                        let ours_gap = ours
                            .iter()
                            .find(|t| after_spring_forward(zone, **t))
                            .expect("gap run");
                        assert!(
                            theirs.contains(&(*ours_gap + Duration::minutes(30))),
                            "{ours_gap}"
                        );
                    }
                }
                if name == "hourly" {
                    // The other deliberate one: the fall-back's repeated hour runs once more.
                    assert_eq!(d, if start == fall { 1 } else { 0 }, "{name} from {start}");
                }
                if name == "relative-hour" || name == "relative-day" {
                    // Celery's relative intervals follow real time: identical, DST included.
                    assert_eq!(d, 0, "{name} from {start}");
                }
                gap_differences += d;
            }
        }
    }
    assert!(gap_differences > 0);
}

#[test]
#[ignore = "needs the migration venv and Redis (make test)"]
fn redbeat_fire_times_match_redbeat() {
    let redis = std::env::var("KB_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    for (zone_name, _, _) in WINDOWS {
        let zone: chrono_tz::Tz = zone_name.parse().expect("zone");
        let prefix = format!("{}:", common::unique("kbt-redbeat"));
        run(Command::new(python()).args([&oracle(), "redbeat-write", &redis, &prefix, zone_name]));
        let dir = tempfile::tempdir().expect("tmp");
        let result = std::panic::catch_unwind(|| {
            let (jobs, report) = import(
                dir.path(),
                &["--from", "redbeat", &redis, "--redbeat-key-prefix", &prefix],
            );
            assert_eq!(jobs.len(), 5, "{report}");
            let source: Value = serde_json::from_str(&run(Command::new(python()).args([
                &oracle(),
                "redbeat",
                &redis,
                &prefix,
                zone_name,
                &N.to_string(),
            ])))
            .expect("oracle json");
            for (name, spec) in &jobs {
                if spec["schedule"]["cron"].is_string() {
                    assert_eq!(
                        spec["timeZone"].as_str().unwrap_or("UTC"),
                        *zone_name,
                        "{name}"
                    );
                }
                assert_eq!(spec["args"], serde_json::json!([name]));
                let theirs: Vec<_> = source[name]
                    .as_array()
                    .unwrap_or_else(|| panic!("{name} in {source}"))
                    .iter()
                    .map(|v| instant(v.as_str().expect("str")))
                    .collect();
                // Crontabs from the last run (RedBeat's anchor); intervals from startTime.
                let ours = kube_beat_next(spec, theirs[0] - Duration::seconds(1));
                compare(name, spec, zone, &theirs, &ours);
            }
            let every = &jobs
                .iter()
                .find(|(n, _)| n == "every-90-minutes")
                .expect("interval")
                .1;
            assert_eq!(every["startTime"], "2026-03-28T13:10:00Z");
            assert_eq!(every["queue"], "reports");
            assert_eq!(every["priority"], 5);
            let hourly = &jobs.iter().find(|(n, _)| n == "hourly").expect("hourly").1;
            assert_eq!(hourly["exchange"], "ex");
            assert_eq!(hourly["routingKey"], "rk");
        });
        let client = redis::Client::open(redis.as_str()).expect("redis url");
        let mut conn = client.get_connection().expect("redis");
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query(&mut conn)
            .expect("keys");
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL").arg(&keys).query(&mut conn).expect("del");
        }
        if let Err(e) = result {
            std::panic::resume_unwind(e);
        }
    }
}
