//! Dispatch planning with extreme specs: interval, cron (in zones with odd offsets) and one-shot
//! schedules, any slot, deadline, jitter, expiry and clock, planned without a panic. A panic
//! here is a crash loop of every leader that reads the same row.
#![no_main]

use chrono::{DateTime, Utc};
use kube_beat::{
    api::{ConcurrencyPolicy, IntervalSchedule, Schedule},
    dispatch::{
        expiry,
        plan::{DueJob, plan},
    },
    schedule::JobSchedule,
};
use libfuzzer_sys::fuzz_target;

/// An instant anywhere in chrono's range from any i64 (milliseconds, wrapped into range).
fn instant(ms: i64) -> DateTime<Utc> {
    let (lo, hi) = (
        DateTime::<Utc>::MIN_UTC.timestamp_millis(),
        DateTime::<Utc>::MAX_UTC.timestamp_millis(),
    );
    let span = (hi as i128) - (lo as i128) + 1;
    let ms = (lo as i128) + (ms as i128).rem_euclid(span);
    DateTime::from_timestamp_millis(ms as i64).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Schedules of every kind the parser accepts, so that every input exercises planning.
const CRONS: &[&str] = &[
    "* * * * *",
    "0 3 * * *",
    "30 2 29 2 *",
    "*/7 1-5 * * MON-FRI",
    "@every 1s",
    "@yearly",
];
const ZONES: &[&str] = &[
    "UTC",
    "Europe/Berlin",
    "Pacific/Kiritimati",
    "America/St_Johns",
];

fuzz_target!(|data: &[u8]| {
    if data.len() < 50 {
        return;
    }
    let word = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&data[i * 8..i * 8 + 8]);
        i64::from_le_bytes(b)
    };
    let (slot, now, deadline, jitter, expires, extra) =
        (word(0), word(1), word(2), word(3), word(4), word(5));
    let pick = usize::from(data[49]);
    let spec = match data[48] % 3 {
        0 => Schedule {
            interval: Some(IntervalSchedule {
                hours: 0,
                minutes: 0,
                seconds: extra.rem_euclid(3_153_600_000) + 1,
            }),
            ..Default::default()
        },
        1 => Schedule {
            cron: Some(CRONS[pick % CRONS.len()].to_string()),
            ..Default::default()
        },
        _ => Schedule {
            at: Some(instant(extra).to_rfc3339()),
            ..Default::default()
        },
    };
    let anchor = instant(now.rotate_left(17));
    let zone = Some(ZONES[pick % ZONES.len()]);
    let Ok(schedule) = JobSchedule::from_spec(&spec, zone, None, anchor) else {
        return;
    };
    let job = DueJob {
        uid: "u".into(),
        schedule,
        slot: instant(slot),
        starting_deadline_seconds: Some(deadline),
        jitter_seconds: jitter,
        policy: match deadline & 3 {
            0 => ConcurrencyPolicy::Forbid,
            1 => ConcurrencyPolicy::Replace,
            _ => ConcurrencyPolicy::Allow,
        },
        active: jitter & 1 == 0,
    };
    let p = plan(&job, instant(now));
    let _ = expiry(p.due_at, expires);
});
