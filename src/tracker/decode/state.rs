//! The state an unfinished execution moves to given its backend record, and what is stored
//! for that move.

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::Value;

use super::{Meta, pg_safe};

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
    /// The worker's node name, when the record names it.
    pub worker: Option<String>,
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
            worker: None,
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
            tr.worker = m.worker.clone();
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
    tr.worker = m.worker.clone();
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
    pub worker: Option<String>,
}

/// The last step of the decode path: what `apply` writes for a transition.
pub fn stored(tr: &Transition) -> Stored {
    Stored {
        result: tr.result.as_ref().map(|v| pg_safe(&v.to_string())),
        error: tr.error.as_deref().map(pg_safe),
        traceback: tr.traceback.as_deref().map(pg_safe),
        worker: tr.worker.as_deref().map(pg_safe),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracker::decode::{test_support::*, *};

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
    fn the_worker_is_named_where_celery_stores_it() {
        // task_track_started: the STARTED record's result names the worker.
        let m = redis_meta(STARTED.as_bytes()).unwrap();
        let tr = transition(&tracked(State::Dispatched), Some(&m), t0(), true).unwrap();
        assert_eq!(tr.state, State::Started);
        assert_eq!(tr.worker.as_deref(), Some("w1@vm"));
        assert_eq!(stored(&tr).worker.as_deref(), Some("w1@vm"));
        // A final record without result_extended names none (the row keeps the one it has).
        let m = redis_meta(SUCCESS.as_bytes()).unwrap();
        assert_eq!(m.worker, None);
        // result_extended: every record carries `worker`.
        let extended = SUCCESS.replace(r#""task_id""#, r#""worker": "celery@w2", "task_id""#);
        let m = redis_meta(extended.as_bytes()).unwrap();
        let tr = transition(&tracked(State::Started), Some(&m), t0(), true).unwrap();
        assert_eq!(tr.worker.as_deref(), Some("celery@w2"));
        // A hostile record: not a string, empty, or longer than a node name can be.
        for bad in [r#"7"#, r#""""#, &format!(r#""{}""#, "w".repeat(256))] {
            let record = STARTED.replace(r#""w1@vm""#, bad);
            assert_eq!(redis_meta(record.as_bytes()).unwrap().worker, None, "{bad}");
        }
        // A SUCCESS result that happens to hold `hostname` is the task's, not the worker's.
        let m = redis_meta(
            SUCCESS
                .replace(r#""mode": "full""#, r#""hostname": "db1""#)
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(m.worker, None);
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
