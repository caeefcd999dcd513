//! Reading one result-backend record: a Redis meta (JSON, possibly read only in part) or a
//! `celery_taskmeta` row (JSON or pickle), each size-capped before it is decoded.

use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::{Value, json};

use super::{
    DecodeError, HEX_PREVIEW_BYTES, Meta, PICKLE_BUDGET, RECORD_MAX_BYTES, pickle, plausible_date,
};

/// What one read of a Redis meta key gave.
#[derive(Debug)]
pub enum RedisRead {
    /// No record yet (PENDING).
    Absent,
    /// The record, or why it cannot be read.
    Record(Result<Meta, DecodeError>),
    /// Only the first bytes of a record within the cap were read: read `len` bytes.
    Partial { len: usize },
}

/// Interpret a read of `celery-task-meta-<id>`: `len` is its STRLEN and `bytes` what GETRANGE
/// returned in the same transaction (a prefix when the value is longer than was asked for).
pub fn redis_read(len: usize, bytes: &[u8]) -> RedisRead {
    if len == 0 {
        RedisRead::Absent
    } else if bytes.len() >= len {
        RedisRead::Record(redis_meta(bytes.get(..len).unwrap_or(bytes)))
    } else if len > RECORD_MAX_BYTES {
        // Celery writes `status` first: the first bytes still give the state.
        RedisRead::Record(
            status_of_prefix(bytes)
                .map(|status| Meta::too_large(status, len, None, None))
                .ok_or(DecodeError::TooLarge(len)),
        )
    } else {
        RedisRead::Partial { len }
    }
}

/// The Redis backend's value of `celery-task-meta-<id>`, whole: the meta as JSON.
pub fn redis_meta(bytes: &[u8]) -> Result<Meta, DecodeError> {
    if bytes.len() > RECORD_MAX_BYTES {
        let status = status_of_prefix(bytes).ok_or(DecodeError::TooLarge(bytes.len()))?;
        return Ok(Meta::too_large(status, bytes.len(), None, None));
    }
    let mut v: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => {
            // Not JSON as a whole (nested deeper than serde_json allows, cut, ...): if it still
            // names its state, keep the state and the record as hex.
            let status = status_of_prefix(bytes).ok_or(DecodeError::Json(e))?;
            let note = "result meta not decodable as JSON";
            return Ok(Meta::new(
                status,
                Some(raw_hex(bytes, Some(note))),
                None,
                None,
            ));
        }
    };
    let status = v
        .get("status")
        .and_then(Value::as_str)
        .ok_or(DecodeError::NoStatus)?
        .to_string();
    let date_done = v
        .get("date_done")
        .and_then(Value::as_str)
        .and_then(parse_date_done);
    // Taken, not cloned: the record may be up to RECORD_MAX_BYTES.
    let result = v.get_mut("result").map(Value::take);
    let traceback = v.get("traceback").and_then(Value::as_str);
    let mut meta = Meta::new(status, result, traceback, date_done);
    // `result_extended`: the worker that ran it, in any state.
    if let Some(worker) = v.get("worker").and_then(super::worker_name) {
        meta.worker = Some(worker);
    }
    Ok(meta)
}

/// The `status` of a meta that cannot be decoded whole (too large, too deep, cut short): its
/// top-level keys are read in order, other values skipped (serde_json skips without recursion),
/// until `status` or the first thing that does not parse. A hand scan for `"status"` could be
/// fooled by a result that contains the text; this reads only top-level keys.
fn status_of_prefix(bytes: &[u8]) -> Option<String> {
    use serde::de::{Deserializer as _, IgnoredAny, MapAccess, Visitor};

    struct Status<'a>(&'a mut Option<String>);

    impl<'de> Visitor<'de> for Status<'_> {
        type Value = ();

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a Celery result meta object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(key) = map.next_key::<String>()? {
                if key == "status" {
                    *self.0 = Some(map.next_value::<String>()?);
                    return Ok(());
                }
                map.next_value::<IgnoredAny>()?;
            }
            Ok(())
        }
    }

    let mut found = None;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    // The rest of the record is not read, so this always ends in an error; `found` is the point.
    let _ = de.deserialize_map(Status(&mut found));
    found
}

/// Celery writes `date_done` as ISO 8601, with or without an offset (naive means UTC).
pub fn parse_date_done(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|d| d.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
                .ok()
                .map(|n| n.and_utc())
        })
        .filter(plausible_date)
}

/// A `celery_taskmeta` row as the backend reads it: the `result` column's length, and its bytes
/// when they were read (only within [`RECORD_MAX_BYTES`]; a result not read is too large).
pub fn db_meta(
    status: String,
    result_bytes: Option<usize>,
    result: Option<&[u8]>,
    traceback: Option<&str>,
    date_done: Option<DateTime<Utc>>,
) -> Meta {
    match (result_bytes, result) {
        (Some(n), _) if n > RECORD_MAX_BYTES => Meta::too_large(status, n, traceback, date_done),
        (_, Some(bytes)) => Meta::new(status, Some(db_result(bytes)), traceback, date_done),
        (Some(n), None) => Meta::too_large(status, n, traceback, date_done),
        (None, None) => Meta::new(status, None, traceback, date_done),
    }
}

/// The database backend's `result` column: JSON (Celery ≥ 5.7), or a pickle (older Celery,
/// first byte 0x80). Pickles are decoded only as plain data (serde-pickle never runs code or
/// resolves globals), and only within [`PICKLE_BUDGET`]; anything else is kept as hex.
pub fn db_result(bytes: &[u8]) -> Value {
    if bytes.len() > RECORD_MAX_BYTES {
        return raw_hex(bytes, Some("result too large, not decoded"));
    }
    if bytes.first() == Some(&0x80) {
        if let Err(refused) = pickle::check(bytes, PICKLE_BUDGET) {
            return raw_hex(bytes, Some(&format!("pickle not decoded: {refused}")));
        }
        return serde_pickle::from_slice::<Value>(bytes, serde_pickle::DeOptions::new())
            .unwrap_or_else(|_| raw_hex(bytes, None));
    }
    serde_json::from_slice(bytes).unwrap_or_else(|_| raw_hex(bytes, None))
}

/// `{"encoding": "hex", "data": "..."}`: the first [`HEX_PREVIEW_BYTES`] of what could not be
/// decoded; with `"bytes"` and `"truncated"` when cut, and `"reason"` when refused on purpose.
fn raw_hex(bytes: &[u8], reason: Option<&str>) -> Value {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let kept = bytes.get(..HEX_PREVIEW_BYTES).unwrap_or(bytes);
    let mut hex = String::with_capacity(kept.len() * 2);
    for b in kept {
        hex.push(char::from(DIGITS[usize::from(b >> 4)]));
        hex.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    let mut v = json!({"encoding": "hex", "data": hex});
    if kept.len() < bytes.len() {
        v["bytes"] = json!(bytes.len());
        v["truncated"] = json!(true);
    }
    if let Some(reason) = reason {
        v["reason"] = json!(reason);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracker::decode::{test_support::*, *};

    #[test]
    fn db_results_json_and_pickle() {
        assert_eq!(
            db_result(br#"{"deleted": 7, "retention_days": 30}"#),
            json!({"deleted": 7, "retention_days": 30})
        );
        // celery-wire.md §4.2: pickle protocol 5 of {"deleted": 7, "retention_days": 30}.
        let hex = "80059524000000000000007d94288c0764656c65746564944b078c0e726574656e74696f6e5f64617973944b1e752e";
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        assert_eq!(
            db_result(&bytes),
            json!({"deleted": 7, "retention_days": 30})
        );
        // A pickle that needs code (a global) is never run: it is kept as hex.
        let global = b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x94\x8c\x06system\x94\x93\x94.";
        let v = db_result(global);
        assert_eq!(v["encoding"], "hex");
        assert!(v["data"].as_str().unwrap().starts_with("8004"));
        // Neither JSON nor pickle.
        assert_eq!(db_result(b"\x01\x02")["data"], "0102");
    }

    #[test]
    fn date_done_forms() {
        assert!(parse_date_done("2026-11-26T22:21:12.437328+00:00").is_some());
        assert!(parse_date_done("2026-11-26T22:21:12.437328").is_some());
        assert!(parse_date_done("2026-11-26T22:21:12").is_some());
        assert!(parse_date_done("yesterday").is_none());
        // Outside what Postgres and RFC 3339 text hold well: ignored (now is used).
        assert!(parse_date_done("0001-01-01T00:00:00").is_none());
        assert!(parse_date_done("+200000-01-01T00:00:00").is_none());
    }

    #[test]
    fn deeply_nested_json_keeps_its_state() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let m = redis_meta(record("SUCCESS", &deep).as_bytes()).unwrap();
        assert_eq!(m.status, "SUCCESS");
        let result = m.result.clone().unwrap();
        assert_eq!(result["encoding"], "hex");
        let tr = transition(&tracked(State::Started), Some(&m), t0(), true).unwrap();
        assert_eq!(tr.state, State::Success);
        // Within serde_json's limit of 128 it decodes, and stores and serializes safely.
        let ok = format!("{}{}", "[".repeat(120), "]".repeat(120));
        let m = redis_meta(record("SUCCESS", &ok).as_bytes()).unwrap();
        assert!(m.result.unwrap().is_array());
        // A deep database JSON result is hex too.
        assert_eq!(db_result(deep.as_bytes())["encoding"], "hex");
        // A failure says why its result is missing instead of showing hex.
        let m = redis_meta(record("FAILURE", &deep).as_bytes()).unwrap();
        assert_eq!(
            m.error.as_deref(),
            Some("result not decoded (result meta not decodable as JSON)")
        );
        let m = db_meta(
            "FAILURE".into(),
            Some(10),
            Some(&nested_tuples(100_000)),
            None,
            None,
        );
        assert!(
            m.error
                .unwrap()
                .starts_with("result not decoded (pickle not decoded: nested deeper than 64")
        );
    }

    #[test]
    fn an_oversized_redis_record_keeps_its_state() {
        let len = 50 * 1024 * 1024;
        let whole = record("FAILURE", &format!("\"{}\"", "x".repeat(100_000)));
        let prefix = &whole.as_bytes()[..16 * 1024];
        let RedisRead::Record(Ok(m)) = redis_read(len, prefix) else {
            panic!("not a record");
        };
        assert_eq!(m.status, "FAILURE");
        let tr = transition(&tracked(State::Started), Some(&m), t0(), true).unwrap();
        assert_eq!(tr.state, State::Failure);
        assert_eq!(
            tr.error.as_deref(),
            Some("result too large (52428800 bytes), not decoded")
        );
        assert_eq!(tr.result.as_ref().unwrap()["bytes"], len);
        let m = match redis_read(len, record("SUCCESS", "1").as_bytes().get(..40).unwrap()) {
            RedisRead::Record(Ok(m)) => m,
            other => panic!("{other:?}"),
        };
        let tr = transition(&tracked(State::Started), Some(&m), t0(), true).unwrap();
        assert_eq!(tr.state, State::Success);
        assert_eq!(tr.error, None);
        assert_eq!(tr.result.unwrap()["truncated"], true);
        // Whole records over the cap are not decoded either.
        let big = record("SUCCESS", &format!("\"{}\"", "x".repeat(RECORD_MAX_BYTES)));
        let m = redis_meta(big.as_bytes()).unwrap();
        assert!(
            m.result.unwrap()["note"]
                .as_str()
                .unwrap()
                .contains("too large")
        );
        // Within the cap but not read whole: read again; nothing there: pending.
        assert!(matches!(
            redis_read(100_000, prefix),
            RedisRead::Partial { len: 100_000 }
        ));
        assert!(matches!(redis_read(0, b""), RedisRead::Absent));
        // No status in the first bytes: an error, logged by the backend.
        assert!(matches!(
            redis_read(len, &b"x".repeat(100)),
            RedisRead::Record(Err(DecodeError::TooLarge(_)))
        ));
    }

    #[test]
    fn the_state_is_read_from_top_level_keys_only() {
        let m = |s: &str| status_of_prefix(s.as_bytes());
        assert_eq!(
            m(r#"{"status": "SUCCESS", "result": [1, 2"#).as_deref(),
            Some("SUCCESS")
        );
        // Celery writes status first, but any order works while the prefix reaches it.
        assert_eq!(
            m(r#"{"result": "\"status\": \"SUCCESS\"", "status": "FAILURE", "x": [["#).as_deref(),
            Some("FAILURE")
        );
        // A status inside the result is not the record's.
        assert_eq!(
            m(r#"{"result": {"status": "SUCCESS"}, "traceback": "..."#),
            None
        );
        assert_eq!(m(r#"{"result": [[[[[[{"status": "SUCCESS"}"#), None);
        assert_eq!(m("garbage"), None);
    }

    #[test]
    fn database_records_over_the_cap() {
        let m = db_meta(
            "SUCCESS".into(),
            Some(2 * RECORD_MAX_BYTES),
            None,
            None,
            None,
        );
        assert_eq!(m.status, "SUCCESS");
        assert_eq!(m.error, None);
        assert_eq!(m.result.unwrap()["bytes"], 2 * RECORD_MAX_BYTES);
        let m = db_meta(
            "FAILURE".into(),
            Some(2 * RECORD_MAX_BYTES),
            None,
            Some("Traceback ...\nValueError: x\n"),
            None,
        );
        let tr = transition(&tracked(State::Started), Some(&m), t0(), true).unwrap();
        assert_eq!(tr.state, State::Failure);
        assert!(tr.error.unwrap().contains("too large"));
        assert!(tr.traceback.unwrap().ends_with("ValueError: x\n"));
        let m = db_meta("SUCCESS".into(), Some(2), Some(b"42"), None, None);
        assert_eq!(m.result, Some(json!(42)));
    }
}
