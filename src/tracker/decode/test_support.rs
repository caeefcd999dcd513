//! Fixtures the decode tests share.

use chrono::{DateTime, Utc};

use super::{State, Tracked};

pub(super) fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-26T22:21:10Z")
        .unwrap()
        .with_timezone(&Utc)
}

pub(super) fn tracked(state: State) -> Tracked {
    Tracked {
        state,
        since: t0(),
        timeout_seconds: 60,
    }
}

pub(super) fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// `[[[...]]]` as EMPTY_LIST then `n` times TUPLE1 (2 bytes a level).
pub(super) fn nested_tuples(n: usize) -> Vec<u8> {
    let mut p = vec![0x80, 0x04, b']'];
    p.extend(std::iter::repeat_n(0x85u8, n));
    p.push(b'.');
    p
}

pub(super) fn record(status: &str, result: &str) -> String {
    format!(
        r#"{{"status": "{status}", "result": {result}, "traceback": null, "children": [], "date_done": "2026-11-26T22:21:12.437328+00:00", "task_id": "x"}}"#
    )
}
