//! Any text as a schedule (cron, `@every`, Go interval) in a few zones: accepted or refused,
//! never a panic; an accepted one steps strictly forward, and `kube-beat next` (the CLI path)
//! gives the same instants.
#![no_main]

use chrono::{DateTime, Utc};
use kube_beat::schedule::JobSchedule;
use libfuzzer_sys::fuzz_target;

const ZONES: [&str; 4] = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe"];
const T0: &str = "2026-03-29T00:30:00Z";

fuzz_target!(|data: &[u8]| {
    let Some((&zone, text)) = data.split_first() else {
        return;
    };
    let Ok(expr) = std::str::from_utf8(text) else {
        return;
    };
    let tz = ZONES[usize::from(zone) % ZONES.len()];
    let t0: DateTime<Utc> = DateTime::parse_from_rfc3339(T0)
        .expect("instant")
        .with_timezone(&Utc);
    let Ok(schedule) = JobSchedule::from_expression(expr, tz, t0) else {
        return;
    };
    let mut stepped = Vec::new();
    let mut at = t0;
    while stepped.len() < 3 {
        let Some(next) = schedule.next_after(at) else {
            break;
        };
        assert!(next > at, "{expr:?} in {tz}: {next} is not after {at}");
        stepped.push(kube_beat::schedule::rfc3339(next));
        at = next;
    }
    let printed = kube_beat::cli::next_instants(expr, tz, Some(T0), 3);
    if stepped.is_empty() {
        // Never fires (31 February): `kube-beat next` says so instead of printing nothing.
        assert!(printed.is_err(), "{expr:?} in {tz}: {printed:?}");
    } else {
        assert_eq!(printed.ok(), Some(stepped), "{expr:?} in {tz}");
    }
});
