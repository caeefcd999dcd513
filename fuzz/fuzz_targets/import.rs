//! Any text as a `kube-beat import` file: converted or refused with a reason, never a panic.
#![no_main]

use chrono::{DateTime, Utc};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let t0: DateTime<Utc> = DateTime::parse_from_rfc3339("2026-03-29T00:30:00Z")
        .expect("instant")
        .with_timezone(&Utc);
    let _ = kube_beat::import::convert(text, None, t0);
});
