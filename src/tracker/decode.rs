//! Pure decoding of Celery result-backend records into what an execution row stores, and the
//! state transition an unfinished execution takes. No I/O here.

use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::{Value, json};

/// A result (JSON) longer than this is stored as a truncated preview.
pub const RESULT_MAX_BYTES: usize = 16 * 1024;
/// Tracebacks keep their last this-many bytes (the end names the failing line).
pub const TRACEBACK_MAX_BYTES: usize = 32 * 1024;
/// Error messages are cut to this length.
pub const ERROR_MAX_BYTES: usize = 2 * 1024;

/// One task's record in the result backend.
#[derive(Debug, Clone, PartialEq)]
pub struct Meta {
    pub status: String,
    pub result: Option<Value>,
    pub traceback: Option<String>,
    pub date_done: Option<DateTime<Utc>>,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("result meta is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("result meta has no status")]
    NoStatus,
}

/// The Redis backend's value of `celery-task-meta-<id>`: the whole meta as JSON.
pub fn redis_meta(bytes: &[u8]) -> Result<Meta, DecodeError> {
    let v: Value = serde_json::from_slice(bytes)?;
    let status = v
        .get("status")
        .and_then(Value::as_str)
        .ok_or(DecodeError::NoStatus)?
        .to_string();
    Ok(Meta {
        status,
        result: v.get("result").cloned().filter(|r| !r.is_null()),
        traceback: v
            .get("traceback")
            .and_then(Value::as_str)
            .map(str::to_string),
        date_done: v
            .get("date_done")
            .and_then(Value::as_str)
            .and_then(parse_date_done),
    })
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
}

/// The database backend's `result` column: JSON (Celery ≥ 5.7), or a pickle (older Celery,
/// first byte 0x80). Pickles are decoded only as plain data (serde-pickle never runs code or
/// resolves globals); anything else is kept as hex so nothing is lost.
pub fn db_result(bytes: &[u8]) -> Value {
    if bytes.first() == Some(&0x80) {
        return serde_pickle::from_slice::<Value>(bytes, serde_pickle::DeOptions::new())
            .unwrap_or_else(|_| raw_hex(bytes));
    }
    serde_json::from_slice(bytes).unwrap_or_else(|_| raw_hex(bytes))
}

fn raw_hex(bytes: &[u8]) -> Value {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    json!({"encoding": "hex", "data": hex})
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
                State::Success => tr.result = m.result.as_ref().map(truncate_result),
                _ => {
                    tr.error = m.result.as_ref().map(error_message);
                    tr.result = m.result.as_ref().map(truncate_result);
                    tr.traceback = m.traceback.as_deref().map(truncate_traceback);
                }
            }
            return Some(tr);
        }
        _ => {}
    }
    let deadline = t.since + chrono::Duration::seconds(t.timeout_seconds);
    if now >= deadline {
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
        tr.error = m.result.as_ref().map(error_message);
        tr.traceback = m.traceback.as_deref().map(truncate_traceback);
    }
    Some(tr)
}

/// `ValueError: domain bad.example.com unreachable` from Celery's exception dict.
pub fn error_message(result: &Value) -> String {
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
        let m = Meta {
            status: "PROGRESS".into(),
            result: None,
            traceback: None,
            date_done: None,
        };
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
    }
}
