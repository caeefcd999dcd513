//! Pure decoding of Celery result-backend records into what an execution row stores, and the
//! state transition an unfinished execution takes. No I/O here.
//!
//! A record is written by a worker, i.e. by whatever a task returns: nothing in it may be able to
//! take the leader down. So every record is size-capped before it is decoded (the backend reads
//! at most [`RECORD_MAX_BYTES`]), a pickle is decoded only after [`super::pickle::check`] has
//! bounded its depth and expansion, JSON only within serde_json's recursion limit (128, never
//! raised here: the `unbounded_depth` feature is off), and a decoded record is cut to the stored
//! sizes at once, so a batch never holds more than those.

use chrono::{DateTime, Datelike, NaiveDateTime, TimeDelta, Utc};
use serde_json::{Value, json};

use super::pickle;

/// A result (JSON) longer than this is stored as a truncated preview.
pub const RESULT_MAX_BYTES: usize = 16 * 1024;
/// Tracebacks keep their last this-many bytes (the end names the failing line).
pub const TRACEBACK_MAX_BYTES: usize = 32 * 1024;
/// Error messages are cut to this length.
pub const ERROR_MAX_BYTES: usize = 2 * 1024;
/// A record (Redis: the whole JSON meta; database: the `result` column) is decoded only up to
/// this size. Decoding costs memory in proportion to the input (a JSON value takes 10-30x its
/// text), and what is stored is cut to [`RESULT_MAX_BYTES`] anyway; a larger record keeps its
/// state (SUCCESS, FAILURE, ...) with the note "result too large (N bytes), not decoded".
pub const RECORD_MAX_BYTES: usize = 1024 * 1024;
/// A pickle is decoded only within these limits (else it is kept as hex): nesting depth (the
/// conversion recurses once per level), values and bytes allocated (memo references are
/// expanded by copying; 100,000 values are far beyond the stored 16 KiB preview already).
pub const PICKLE_BUDGET: pickle::Budget = pickle::Budget {
    depth: 64,
    values: 100_000,
    bytes: 8 * 1024 * 1024,
};
/// Bytes of an undecodable record kept, as hex, in the stored result.
pub const HEX_PREVIEW_BYTES: usize = 4 * 1024;

/// One task's record in the result backend, reduced to what an execution row stores: the
/// result, error and traceback are already cut to their stored sizes.
#[derive(Debug, Clone, PartialEq)]
pub struct Meta {
    pub status: String,
    /// At most [`RESULT_MAX_BYTES`] of JSON (see [`truncate_result`]).
    pub result: Option<Value>,
    /// The message of a failed, retried or revoked task, from the exception in its result.
    pub error: Option<String>,
    /// The last [`TRACEBACK_MAX_BYTES`] of the traceback.
    pub traceback: Option<String>,
    pub date_done: Option<DateTime<Utc>>,
}

impl Meta {
    /// A record whose result was decoded (in full, within the caps).
    pub fn new(
        status: String,
        result: Option<Value>,
        traceback: Option<&str>,
        date_done: Option<DateTime<Utc>>,
    ) -> Meta {
        let result = result.filter(|r| !r.is_null());
        let error = if has_error(&status) {
            result.as_ref().map(error_message)
        } else {
            None
        };
        Meta {
            result: result.as_ref().map(truncate_result),
            error,
            traceback: traceback.map(truncate_traceback),
            date_done: date_done.filter(plausible_date),
            status,
        }
    }

    /// A record over [`RECORD_MAX_BYTES`]: its state, and a note in place of its result.
    pub fn too_large(
        status: String,
        bytes: usize,
        traceback: Option<&str>,
        date_done: Option<DateTime<Utc>>,
    ) -> Meta {
        let note = format!("result too large ({bytes} bytes), not decoded");
        Meta {
            result: Some(json!({"truncated": true, "bytes": bytes, "note": note})),
            error: has_error(&status).then_some(note),
            traceback: traceback.map(truncate_traceback),
            date_done: date_done.filter(plausible_date),
            status,
        }
    }
}

/// States whose result is an exception the tracker reports as the error.
fn has_error(status: &str) -> bool {
    matches!(
        State::parse(status),
        Some(State::Failure | State::Retry | State::Revoked)
    )
}

/// A worker's clock or a hostile record may say anything; Postgres timestamps and RFC 3339 text
/// only hold some of chrono's range. Outside 1970-9999 the done time is ignored (now is used).
fn plausible_date(d: &DateTime<Utc>) -> bool {
    (1970..=9999).contains(&d.year())
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("result meta is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("result meta has no status")]
    NoStatus,
    #[error("result meta too large ({0} bytes) and no status in its first bytes")]
    TooLarge(usize),
}

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
    Ok(Meta::new(status, result, traceback, date_done))
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

/// Execution states of SPEC §4 the tracker moves between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Dispatched,
    Started,
    Retry,
    Success,
    Failure,
    Revoked,
    Lost,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Dispatched => "DISPATCHED",
            State::Started => "STARTED",
            State::Retry => "RETRY",
            State::Success => "SUCCESS",
            State::Failure => "FAILURE",
            State::Revoked => "REVOKED",
            State::Lost => "LOST",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        Some(match s {
            "DISPATCHED" => State::Dispatched,
            "STARTED" => State::Started,
            "RETRY" => State::Retry,
            "SUCCESS" => State::Success,
            "FAILURE" => State::Failure,
            "REVOKED" => State::Revoked,
            "LOST" => State::Lost,
            _ => return None,
        })
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            State::Success | State::Failure | State::Revoked | State::Lost
        )
    }
}

/// What the tracker knows of one unfinished execution.
#[derive(Debug, Clone)]
pub struct Tracked {
    pub state: State,
    /// When the message was published (or claimed, if never marked dispatched).
    pub since: DateTime<Utc>,
    pub timeout_seconds: i64,
}

/// The change to write for one execution.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub state: State,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub result: Option<Value>,
    pub error: Option<String>,
    pub traceback: Option<String>,
}

impl Transition {
    fn to(state: State) -> Transition {
        Transition {
            state,
            started_at: None,
            finished_at: None,
            result: None,
            error: None,
            traceback: None,
        }
    }
}

/// The next state of an unfinished execution given its backend record (`None`: no record yet,
/// which Celery uses for PENDING). `tracking` is false with result backend `none`: then only
/// the dispatcher's states exist and nothing becomes LOST.
pub fn transition(
    t: &Tracked,
    meta: Option<&Meta>,
    now: DateTime<Utc>,
    tracking: bool,
) -> Option<Transition> {
    if !tracking {
        return None;
    }
    let observed = meta.map(|m| (m, State::parse(&m.status)));
    match observed {
        Some((m, Some(state))) if state.is_final() && state != State::Lost => {
            let finished = m.date_done.unwrap_or(now);
            let mut tr = Transition::to(state);
            tr.started_at = Some(finished.min(now));
            tr.finished_at = Some(finished);
            match state {
                State::Success => tr.result = m.result.clone(),
                _ => {
                    tr.error = m.error.clone();
                    tr.result = m.result.clone();
                    tr.traceback = m.traceback.clone();
                }
            }
            return Some(tr);
        }
        _ => {}
    }
    if deadline(t).is_some_and(|d| now >= d) {
        let mut tr = Transition::to(State::Lost);
        tr.finished_at = Some(now);
        tr.error = Some(format!(
            "no final result within executionTimeoutSeconds ({}s); last known state {}",
            t.timeout_seconds,
            observed
                .and_then(|(_, s)| s)
                .filter(|s| !s.is_final())
                .unwrap_or(t.state)
                .as_str()
        ));
        return Some(tr);
    }
    let (m, state) = observed?;
    // PENDING or a custom state (e.g. PROGRESS from update_state) counts as running.
    let state = match state {
        Some(s @ (State::Started | State::Retry)) => s,
        _ if m.status == "PENDING" => return None,
        _ => State::Started,
    };
    if state == t.state {
        return None;
    }
    let mut tr = Transition::to(state);
    tr.started_at = Some(now);
    if state == State::Retry {
        tr.error = m.error.clone();
        tr.traceback = m.traceback.clone();
    }
    Some(tr)
}

/// When an execution without a final state becomes LOST; `None`: never. A timeout too large for
/// a date (chrono ends in the year 262143) never elapses, which is what such a timeout means;
/// a negative one that underflows has elapsed already. Never a panic: this runs on every pass
/// for every unfinished execution, so a panic here would stop tracking for every tenant.
pub fn deadline(t: &Tracked) -> Option<DateTime<Utc>> {
    match TimeDelta::try_seconds(t.timeout_seconds).and_then(|d| t.since.checked_add_signed(d)) {
        Some(d) => Some(d),
        None if t.timeout_seconds < 0 => Some(t.since),
        None => None,
    }
}

/// The text columns an execution row stores for a transition, as they are bound to Postgres.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub result: Option<String>,
    pub error: Option<String>,
    pub traceback: Option<String>,
}

/// The last step of the decode path: what `apply` writes for a transition.
pub fn stored(tr: &Transition) -> Stored {
    Stored {
        result: tr.result.as_ref().map(|v| pg_safe(&v.to_string())),
        error: tr.error.as_deref().map(pg_safe),
        traceback: tr.traceback.as_deref().map(pg_safe),
    }
}

/// Postgres text and jsonb cannot hold NUL; a task's output may. Replace it, keep the rest.
pub fn pg_safe(s: &str) -> String {
    s.replace('\0', "\u{fffd}").replace("\\u0000", "\\ufffd")
}

/// `ValueError: domain bad.example.com unreachable` from Celery's exception dict.
pub fn error_message(result: &Value) -> String {
    if result.get("encoding").and_then(Value::as_str) == Some("hex") && result.get("data").is_some()
    {
        // What could not be decoded (e.g. an old Celery's pickled exception instance).
        let why = result
            .get("reason")
            .and_then(Value::as_str)
            .unwrap_or("neither JSON nor a plain-data pickle");
        return cut_front(&format!("result not decoded ({why})"), ERROR_MAX_BYTES);
    }
    let text = match (result.get("exc_type"), result.get("exc_message")) {
        (Some(Value::String(t)), Some(msg)) => {
            let msg = match msg {
                Value::Array(parts) => parts
                    .iter()
                    .map(|p| {
                        p.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| p.to_string())
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if msg.is_empty() {
                t.clone()
            } else {
                format!("{t}: {msg}")
            }
        }
        _ => match result {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        },
    };
    cut_front(&text, ERROR_MAX_BYTES)
}

/// Results over [`RESULT_MAX_BYTES`] of JSON become `{"truncated": true, "bytes": N, "preview"}`.
pub fn truncate_result(v: &Value) -> Value {
    let text = v.to_string();
    if text.len() <= RESULT_MAX_BYTES {
        return v.clone();
    }
    // The preview is itself a JSON string: quotes, backslashes and control characters grow when
    // escaped (up to 6x), so cut until the stored value fits the documented bound.
    let mut keep = RESULT_MAX_BYTES - 64;
    loop {
        let preview = cut_front(&text, keep);
        let stored = json!({"truncated": true, "bytes": text.len(), "preview": preview});
        let size = stored.to_string().len();
        if size <= RESULT_MAX_BYTES || keep == 0 {
            return stored;
        }
        keep = keep.saturating_sub((size - RESULT_MAX_BYTES).max(keep / 8));
    }
}

/// Keep the end of a long traceback, where the exception is.
pub fn truncate_traceback(tb: &str) -> String {
    if tb.len() <= TRACEBACK_MAX_BYTES {
        return tb.to_string();
    }
    let mut start = tb.len() - TRACEBACK_MAX_BYTES;
    while !tb.is_char_boundary(start) {
        start += 1;
    }
    format!("...(traceback truncated)\n{}", &tb[start..])
}

/// The first `max` bytes of `s`, cut at a character boundary.
pub fn cut_front(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-26T22:21:10Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn tracked(state: State) -> Tracked {
        Tracked {
            state,
            since: t0(),
            timeout_seconds: 60,
        }
    }

    // Literal values captured from real Celery 5.7 (celery-wire.md §4.1).
    const SUCCESS: &str = r#"{"status": "SUCCESS", "result": {"domain_id": "corp.example.com", "synced": 42, "mode": "full", "retries": 0}, "traceback": null, "children": [], "date_done": "2026-11-26T22:21:12.437328+00:00", "task_id": "cccccccc-0000-4000-8000-000000000001"}"#;
    const FAILURE: &str = r#"{"status": "FAILURE", "result": {"exc_type": "ValueError", "exc_message": ["domain bad.example.com unreachable"], "exc_module": "builtins"}, "traceback": "Traceback (most recent call last):\nValueError: domain bad.example.com unreachable\n", "children": [], "date_done": "2026-11-26T22:21:12.951682+00:00", "task_id": "cccccccc-0000-4000-8000-000000000002"}"#;
    const STARTED: &str = r#"{"status": "STARTED", "result": {"pid": 29468, "hostname": "w1@vm"}, "traceback": null, "children": [], "date_done": null, "task_id": "cccccccc-0000-4000-8000-000000000001"}"#;
    const RETRY: &str = r#"{"status": "RETRY", "result": {"exc_type": "ConnectionError", "exc_message": ["LDAP timeout"], "exc_module": "builtins"}, "traceback": "Traceback ...\ncelery.exceptions.Retry: Retry in 1s: ConnectionError('LDAP timeout')\n", "children": [[["cccccccc-0000-4000-8000-000000000003", null], null]], "date_done": null, "task_id": "cccccccc-0000-4000-8000-000000000003"}"#;
    const NOT_REGISTERED: &str = r#"{"status": "FAILURE", "result": {"exc_type": "NotRegistered", "exc_message": ["tasks.does_not_exist"], "exc_module": "celery.exceptions"}, "traceback": null, "children": [], "date_done": "2026-11-26T22:21:13.465732+00:00", "task_id": "cccccccc-0000-4000-8000-000000000005"}"#;
    const EXPIRED: &str = r#"{"status": "REVOKED", "result": {"exc_type": "TaskRevokedError", "exc_message": ["expired"], "exc_module": "celery.exceptions"}, "traceback": null, "children": [], "date_done": "2026-11-26T22:30:39.511150+00:00", "task_id": "eeeeeeee-0000-4000-8000-000000000006"}"#;

    #[test]
    fn success_is_final_with_result_and_done_time() {
        let m = redis_meta(SUCCESS.as_bytes()).unwrap();
        let tr = transition(&tracked(State::Started), Some(&m), t0(), true).unwrap();
        assert_eq!(tr.state, State::Success);
        assert_eq!(tr.result.unwrap()["synced"], 42);
        assert_eq!(
            tr.finished_at.unwrap(),
            parse_date_done("2026-11-26T22:21:12.437328+00:00").unwrap()
        );
        assert_eq!(tr.error, None);
    }

    #[test]
    fn failure_keeps_exception_and_traceback() {
        let m = redis_meta(FAILURE.as_bytes()).unwrap();
        let tr = transition(&tracked(State::Dispatched), Some(&m), t0(), true).unwrap();
        assert_eq!(tr.state, State::Failure);
        assert_eq!(
            tr.error.as_deref(),
            Some("ValueError: domain bad.example.com unreachable")
        );
        assert!(tr.traceback.unwrap().ends_with("unreachable\n"));
    }

    #[test]
    fn not_registered_and_expired() {
        let m = redis_meta(NOT_REGISTERED.as_bytes()).unwrap();
        let tr = transition(&tracked(State::Dispatched), Some(&m), t0(), true).unwrap();
        assert_eq!(tr.state, State::Failure);
        assert_eq!(
            tr.error.as_deref(),
            Some("NotRegistered: tasks.does_not_exist")
        );
        let m = redis_meta(EXPIRED.as_bytes()).unwrap();
        let tr = transition(&tracked(State::Dispatched), Some(&m), t0(), true).unwrap();
        assert_eq!(tr.state, State::Revoked);
        assert_eq!(tr.error.as_deref(), Some("TaskRevokedError: expired"));
    }

    #[test]
    fn started_and_retry_move_once() {
        let started = redis_meta(STARTED.as_bytes()).unwrap();
        let tr = transition(&tracked(State::Dispatched), Some(&started), t0(), true).unwrap();
        assert_eq!(tr.state, State::Started);
        assert_eq!(tr.started_at, Some(t0()));
        assert_eq!(
            transition(&tracked(State::Started), Some(&started), t0(), true),
            None
        );
        let retry = redis_meta(RETRY.as_bytes()).unwrap();
        let tr = transition(&tracked(State::Started), Some(&retry), t0(), true).unwrap();
        assert_eq!(tr.state, State::Retry);
        assert_eq!(tr.error.as_deref(), Some("ConnectionError: LDAP timeout"));
    }

    #[test]
    fn missing_record_is_pending_until_the_timeout_then_lost() {
        let t = tracked(State::Dispatched);
        assert_eq!(transition(&t, None, t0(), true), None);
        let late = t0() + chrono::Duration::seconds(60);
        let tr = transition(&t, None, late, true).unwrap();
        assert_eq!(tr.state, State::Lost);
        assert!(tr.error.unwrap().contains("executionTimeoutSeconds (60s)"));
        // A running task past its timeout is lost too; a final record still wins.
        let started = redis_meta(STARTED.as_bytes()).unwrap();
        let tr = transition(&tracked(State::Started), Some(&started), late, true).unwrap();
        assert_eq!(tr.state, State::Lost);
        let done = redis_meta(SUCCESS.as_bytes()).unwrap();
        let tr = transition(&tracked(State::Started), Some(&done), late, true).unwrap();
        assert_eq!(tr.state, State::Success);
    }

    #[test]
    fn no_backend_means_no_transitions() {
        let late = t0() + chrono::Duration::days(1);
        assert_eq!(
            transition(&tracked(State::Dispatched), None, late, false),
            None
        );
    }

    #[test]
    fn custom_states_count_as_running() {
        let m = Meta::new("PROGRESS".into(), None, None, None);
        let tr = transition(&tracked(State::Dispatched), Some(&m), t0(), true).unwrap();
        assert_eq!(tr.state, State::Started);
    }

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
    fn truncation_is_documented_and_char_safe() {
        let big = json!({"s": "é".repeat(RESULT_MAX_BYTES)});
        let t = truncate_result(&big);
        assert_eq!(t["truncated"], true);
        assert!(t.to_string().len() <= RESULT_MAX_BYTES);
        // Characters that grow when escaped still fit.
        let quotes = json!({"s": "\"\u{1}".repeat(RESULT_MAX_BYTES)});
        assert!(truncate_result(&quotes).to_string().len() <= RESULT_MAX_BYTES);
        let small = json!({"ok": 1});
        assert_eq!(truncate_result(&small), small);
        let tb = format!("{}\nValueError: end\n", "x".repeat(TRACEBACK_MAX_BYTES * 2));
        let cut = truncate_traceback(&tb);
        assert!(cut.starts_with("...(traceback truncated)"));
        assert!(cut.ends_with("ValueError: end\n"));
        assert!(error_message(&json!("é".repeat(ERROR_MAX_BYTES))).len() <= ERROR_MAX_BYTES);
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

    fn hex_bytes(hex: &str) -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn real_pickles_of_every_protocol_decode_within_the_budget() {
        let fixture = include_str!("../../tests/fixtures/pickles.txt");
        let mut lines = fixture.lines().filter(|l| !l.starts_with('#'));
        let want: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
        let mut n = 0;
        for line in lines {
            let (proto, hex) = line.split_once(' ').unwrap();
            let bytes = hex_bytes(hex);
            assert_eq!(
                pickle::check(&bytes, PICKLE_BUDGET),
                Ok(()),
                "protocol {proto}"
            );
            // Protocols 0 and 1 have no PROTO header (Celery uses 2 and later): not taken for
            // a pickle, but the scanner models them too.
            if bytes[0] == 0x80 {
                assert_eq!(db_result(&bytes), want, "protocol {proto}");
            }
            n += 1;
        }
        assert_eq!(n, 6);
    }

    #[test]
    fn shared_values_within_the_budget_decode() {
        // A 1,000-value list referenced 50 times: 50,000 values, under the budget.
        let mut p = vec![0x80, 0x04, b'(', b']', 0x94, b'('];
        for i in 0..1000u16 {
            p.push(b'M');
            p.extend_from_slice(&i.to_le_bytes());
        }
        p.push(b'e');
        p.extend(std::iter::repeat_n([b'h', 0], 49).flatten());
        p.extend_from_slice(b"l.");
        let v = db_result(&p);
        let lists = v.as_array().unwrap();
        assert_eq!(lists.len(), 50);
        assert!(lists.iter().all(|l| l.as_array().unwrap().len() == 1000));
        assert_eq!(lists[49][999], 999);
    }

    /// A valid pickle (as serde-pickle reads it) built by `choices`: each picks one of the
    /// opcodes valid on the current stack — nesting, memo references, copies, marks.
    fn valid_pickle(choices: &[u32], style: u8) -> Vec<u8> {
        #[derive(Clone, Copy, PartialEq)]
        enum K {
            List,
            Dict,
            Other,
            Mark,
        }
        // An outer MARK, closed at the end with every other open one: the result holds all
        // that is left on the stack.
        let mut p = vec![0x80, 0x04, b'('];
        let mut stack: Vec<K> = vec![K::Mark];
        let mut memo: Vec<K> = Vec::new();
        for &c in choices {
            let top = stack.last().copied();
            let value = |k: Option<K>| k.is_some_and(|k| k != K::Mark);
            let below = |n: usize| stack.len().checked_sub(n + 1).map(|i| stack[i]);
            let mark = stack.iter().rposition(|&k| k == K::Mark);
            let mut valid: Vec<(&[u8], u8)> = vec![
                (b"N", 0),
                (b"K\x07", 0),
                (b"\x8c\x01x", 0),
                (b"]", 1),
                (b"}", 2),
                (b")", 0),
                (b"(", 3),
            ];
            if value(top) {
                valid.extend([(&b"\x94"[..], 4), (b"2", 5), (b"\x85", 6), (b"0", 7)]);
                if below(1) == Some(K::List) {
                    valid.push((b"a", 8));
                }
                if value(below(1)) {
                    valid.push((b"\x86", 9));
                    if below(2) == Some(K::Dict) {
                        valid.push((b"s", 10));
                    }
                }
            }
            if let Some(m) = mark {
                valid.extend([(&b"l"[..], 11), (b"t", 12)]);
                if m > 0 && stack[m - 1] == K::List {
                    valid.push((b"e", 13));
                }
            }
            if !memo.is_empty() {
                valid.push((b"h", 14));
            }
            // Mostly an opcode of the case's style, to reach the limits: nesting (63 times in
            // 64), copying, sharing through the memo, or all of these (3 times in 4).
            let growing: Vec<(&[u8], u8)> = valid
                .iter()
                .copied()
                .filter(|&(_, w)| match style % 4 {
                    0 => w == 6,
                    1 => matches!(w, 5 | 8),
                    2 => matches!(w, 1 | 4 | 8 | 14),
                    _ => matches!(w, 1 | 4 | 5 | 6 | 8 | 13 | 14),
                })
                .collect();
            let bias = if style.is_multiple_of(4) {
                c >> 26
            } else {
                c >> 30
            };
            let pool = if bias != 0 && !growing.is_empty() {
                &growing
            } else {
                &valid
            };
            let (op, what) = pool[c as usize % pool.len()];
            p.extend_from_slice(op);
            match what {
                0 => stack.push(K::Other),
                1 => stack.push(K::List),
                2 => stack.push(K::Dict),
                3 => stack.push(K::Mark),
                4 => memo.push(top.unwrap_or(K::Other)),
                5 => stack.push(top.unwrap_or(K::Other)),
                6 => {
                    stack.pop();
                    stack.push(K::Other);
                }
                7 | 8 => {
                    stack.pop();
                }
                9 => {
                    stack.truncate(stack.len() - 2);
                    stack.push(K::Other);
                }
                10 => {
                    stack.truncate(stack.len() - 2);
                }
                11 | 12 => {
                    stack.truncate(mark.unwrap_or(0));
                    stack.push(if what == 11 { K::List } else { K::Other });
                }
                13 => stack.truncate(mark.unwrap_or(0)),
                _ => {
                    let id = (c as usize / 16) % memo.len().min(256);
                    p.push(id as u8);
                    stack.push(memo[id]);
                }
            }
        }
        let open = stack.iter().filter(|&&k| k == K::Mark).count();
        p.extend(std::iter::repeat_n(b'l', open));
        if open == 0 && stack.is_empty() {
            p.push(b'N');
        }
        p.push(b'.');
        p
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
        /// Random valid pickles of nesting, memo references and copies: decoded within the
        /// budget or refused for it, never a crash (a miscounted depth or size would overflow
        /// the stack or exhaust memory here), and never taken for malformed.
        #[test]
        fn random_valid_pickles_are_decoded_or_refused_by_the_budget(
            choices in proptest::collection::vec(proptest::prelude::any::<u32>(), 0..4000),
            style in 0u8..4,
        ) {
            let p = valid_pickle(&choices, style);
            let v = db_result(&p);
            if v.get("encoding").is_some() {
                let reason = v["reason"].as_str().unwrap_or_default();
                proptest::prop_assert!(!reason.contains("not a pickle"), "{reason}");
            }
            proptest::prop_assert!(truncate_result(&v).to_string().len() <= RESULT_MAX_BYTES);
        }
    }

    /// `[[[...]]]` as EMPTY_LIST then `n` times TUPLE1 (2 bytes a level).
    fn nested_tuples(n: usize) -> Vec<u8> {
        let mut p = vec![0x80, 0x04, b']'];
        p.extend(std::iter::repeat_n(0x85u8, n));
        p.push(b'.');
        p
    }

    fn assert_refused(v: &Value, why: &str) {
        assert_eq!(v["encoding"], "hex", "{v}");
        let reason = v["reason"].as_str().unwrap_or_default();
        assert!(reason.contains(why), "{reason}");
        assert!(v["data"].as_str().unwrap().len() <= 2 * HEX_PREVIEW_BYTES);
        assert!(v.to_string().len() <= RESULT_MAX_BYTES);
    }

    #[test]
    fn deeply_nested_pickles_are_hex_not_a_stack_overflow() {
        // 100,000 levels overflowed the stack and aborted the process before the depth limit
        // (serde-pickle converts and drops recursively).
        assert_refused(&db_result(&nested_tuples(100_000)), "nested deeper than 64");
        // The same with lists: EMPTY_LIST x n, APPEND x n.
        let mut p = vec![0x80, 0x04];
        p.extend(std::iter::repeat_n(b']', 100_000));
        p.extend(std::iter::repeat_n(b'a', 99_999));
        p.push(b'.');
        assert_refused(&db_result(&p), "nested deeper than 64");
        // MARK ... LIST nesting; each open MARK also costs serde-pickle 128 slots.
        let mut p = vec![0x80, 0x02];
        p.extend(std::iter::repeat_n(b'(', 100_000));
        p.extend(std::iter::repeat_n(b'l', 100_000));
        p.push(b'.');
        assert_refused(&db_result(&p), "nested deeper than 64");
        // Depth through memo references: each level a 1-tuple of a GET of the previous one.
        let mut p = vec![0x80, 0x04, b']', 0x94];
        for i in 0..1000u32 {
            p.push(b'j');
            p.extend_from_slice(&i.to_le_bytes());
            p.extend_from_slice(&[0x85, 0x94, b'0']);
        }
        p.push(b'j');
        p.extend_from_slice(&1000u32.to_le_bytes());
        p.push(b'.');
        assert_refused(&db_result(&p), "nested deeper than 64");
        // At the limit it decodes.
        let v = db_result(&nested_tuples(63));
        assert!(v.is_array(), "{v}");
    }

    #[test]
    fn memo_bombs_are_refused_before_they_expand() {
        let started = std::time::Instant::now();
        // A 1,000-value list memoized once and referenced 200,000 times (0.4 MB of BINGET):
        // 2 * 10^8 values when expanded.
        let mut p = vec![0x80, 0x04, b']', 0x94, b'('];
        for i in 0..1000u16 {
            p.push(b'M');
            p.extend_from_slice(&i.to_le_bytes());
        }
        p.push(b'e');
        p.push(b'(');
        p.extend(std::iter::repeat_n([b'h', 0], 200_000).flatten());
        p.extend_from_slice(b"l.");
        assert!(p.len() < 500_000);
        assert_refused(&db_result(&p), "expands to more than 100000 values");
        // Ten levels of ten references each to the level below: 10^10 values in ~150 bytes.
        let mut p = vec![0x80, 0x04, b']', 0x94];
        for level in 0..10u8 {
            p.push(b'(');
            p.extend(std::iter::repeat_n([b'h', level], 10).flatten());
            p.extend_from_slice(&[b'l', 0x94]);
        }
        p.push(b'.');
        assert!(p.len() < 300);
        assert_refused(&db_result(&p), "expands to more than 100000 values");
        // A list grown after it was referenced: the references see the grown list.
        let mut p = vec![0x80, 0x04, b']', 0x94, b'('];
        p.extend(std::iter::repeat_n([b'h', 0], 1000).flatten());
        p.push(b'l');
        p.extend_from_slice(&[b'h', 0, b'(']);
        p.extend(std::iter::repeat_n(b'N', 1000));
        p.extend_from_slice(b"e0.");
        assert_refused(&db_result(&p), "expands to more than 100000 values");
        // DUP doubles a list each time without any memo: 2^40 values in 80 bytes.
        let mut p = vec![0x80, 0x04, b']', b'N', b'a'];
        p.extend(std::iter::repeat_n([b'2', b'a'], 40).flatten());
        p.push(b'.');
        assert_refused(&db_result(&p), "more than");
        // A memoized string of 100 KB referenced 200 times: 20 MB of copies.
        let mut p = vec![0x80, 0x04, b'X'];
        p.extend_from_slice(&100_000u32.to_le_bytes());
        p.extend(std::iter::repeat_n(b'x', 100_000));
        p.extend_from_slice(&[0x94, b'0', b'(']);
        p.extend(std::iter::repeat_n([b'h', 0], 200).flatten());
        p.extend_from_slice(b"l.");
        assert_refused(&db_result(&p), "bytes");
        // 100,000 decimal digits would take quadratic time to parse into a big integer.
        let mut p = vec![0x80, 0x02, b'L'];
        p.extend(std::iter::repeat_n(b'9', 100_000));
        p.extend_from_slice(b"L\n.");
        assert_refused(&db_result(&p), "more than 4300 digits");
        // A self-referencing list: refused, not followed forever.
        let p = [0x80, 0x04, b']', 0x94, b'h', 0, b'a', b'.'];
        assert_eq!(db_result(&p)["encoding"], "hex");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn malformed_pickles_are_hex() {
        for p in [
            &b"\x80"[..],
            b"\x80\x04.",
            b"\x80\x04N",
            b"\x80\x04(.",
            b"\x80\x04N1.",
            b"\x80\x04h\x05.",
            b"\x80\x04\x8e\xff\xff\xff\xff\xff\xff\xff\xff.",
            b"\x80\x04T\xff\xff\xff\xff.",
            b"\x80\x04N.trailing",
        ] {
            let v = db_result(p);
            assert_eq!(v["encoding"], "hex", "{p:?}");
        }
        // Long undecodable results keep a preview, not all of it.
        let v = db_result(&vec![0x01; 100_000]);
        assert_eq!(v["bytes"], 100_000);
        assert_eq!(v["truncated"], true);
        assert_eq!(v["data"].as_str().unwrap().len(), 2 * HEX_PREVIEW_BYTES);
    }

    fn record(status: &str, result: &str) -> String {
        format!(
            r#"{{"status": "{status}", "result": {result}, "traceback": null, "children": [], "date_done": "2026-11-26T22:21:12.437328+00:00", "task_id": "x"}}"#
        )
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

    #[test]
    fn extreme_timeouts_never_panic() {
        let at = |since: DateTime<Utc>, timeout_seconds: i64| Tracked {
            state: State::Dispatched,
            since,
            timeout_seconds,
        };
        let far = DateTime::<Utc>::MAX_UTC;
        for timeout in [i64::MAX, i64::MAX / 1000, i64::MAX / 1000 + 1, 1 << 43] {
            // Beyond any date: never LOST.
            let t = at(t0(), timeout);
            assert_eq!(deadline(&t), None, "{timeout}");
            assert_eq!(transition(&t, None, far, true), None);
        }
        // A representable deadline at the very end of time.
        let t = at(far - chrono::Duration::seconds(10), 5);
        assert_eq!(deadline(&t), Some(far - chrono::Duration::seconds(5)));
        assert_eq!(deadline(&at(far, 1)), None);
        // Negative timeouts (never valid) have elapsed.
        for timeout in [i64::MIN, -1, i64::MIN / 1000 - 1] {
            let t = at(DateTime::<Utc>::MIN_UTC, timeout);
            assert!(deadline(&t).is_some(), "{timeout}");
            assert_eq!(transition(&t, None, t0(), true).unwrap().state, State::Lost);
        }
        assert_eq!(
            deadline(&tracked(State::Started)),
            Some(t0() + chrono::Duration::seconds(60))
        );
    }

    #[test]
    fn nul_never_reaches_postgres() {
        assert_eq!(pg_safe("a\0b"), "a\u{fffd}b");
        let json = json!({"s": "x\u{0}y"}).to_string();
        assert!(!pg_safe(&json).contains("\\u0000"));
        let mut tr = Transition::to(State::Failure);
        tr.result = Some(json!({"s": "x\u{0}y"}));
        tr.error = Some("a\0".into());
        let row = stored(&tr);
        assert!(!row.result.unwrap().contains("\\u0000"));
        assert_eq!(row.error.as_deref(), Some("a\u{fffd}"));
    }
}
