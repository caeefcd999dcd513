//! Pure decoding of Celery result-backend records into what an execution row stores, and the
//! state transition an unfinished execution takes. No I/O here.
//!
//! A record is written by a worker, i.e. by whatever a task returns: nothing in it may be able to
//! take the leader down. So every record is size-capped before it is decoded (the backend reads
//! at most [`RECORD_MAX_BYTES`]), a pickle is decoded only after [`super::pickle::check`] has
//! bounded its depth and expansion, JSON only within serde_json's recursion limit (128, never
//! raised here: the `unbounded_depth` feature is off), and a decoded record is cut to the stored
//! sizes at once, so a batch never holds more than those.
//!
//! Split by what each part does: [`record`] reads the records (Redis JSON meta, database rows,
//! pickles), [`state`] maps a record to the transition an execution takes, [`text`] cuts and
//! cleans what is stored.

mod record;
mod state;
mod text;

#[cfg(test)]
mod pickle_tests;
#[cfg(test)]
mod test_support;

use chrono::{DateTime, Datelike, Utc};
use serde_json::{Value, json};

use super::pickle;

pub use record::{RedisRead, db_meta, db_result, parse_date_done, redis_meta, redis_read};
pub use state::{State, Stored, Tracked, Transition, deadline, stored, transition};
pub use text::{cut_front, error_message, pg_safe, truncate_result, truncate_traceback};

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
    /// The worker's node name (`celery@host`), where Celery stores it: in a STARTED record's
    /// result (`task_track_started`) and, with `result_extended`, in every record.
    pub worker: Option<String>,
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
        let worker = if status == "STARTED" {
            result
                .as_ref()
                .and_then(|r| r.get("hostname"))
                .and_then(worker_name)
        } else {
            None
        };
        Meta {
            worker,
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
            worker: None,
            result: Some(json!({"truncated": true, "bytes": bytes, "note": note})),
            error: has_error(&status).then_some(note),
            traceback: traceback.map(truncate_traceback),
            date_done: date_done.filter(plausible_date),
            status,
        }
    }
}

/// A worker's node name as a record gives it: a string of 1 to 255 bytes (Celery's are
/// `name@host`), anything else ignored.
pub fn worker_name(v: &Value) -> Option<String> {
    v.as_str()
        .filter(|s| !s.is_empty() && s.len() <= 255)
        .map(str::to_string)
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
