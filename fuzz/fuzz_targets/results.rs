//! Any bytes as a Celery result record, through the tracker's whole decode path as it runs it:
//! the backend's read (a Redis meta whole or cut at the size cap, a database row with a JSON or
//! pickled result), the record, the transition of an unfinished execution with any timeout, and
//! the columns that would be stored. Nothing panics or overflows the stack (a pickle is decoded
//! as plain data only, within its budget), and what is stored fits the documented sizes.
#![no_main]

use chrono::{DateTime, Utc};
use kube_beat::tracker::decode::{self, RedisRead, State, Tracked};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first 9 bytes choose the execution (its timeout, any i64) and the kind of read.
    let Some((head, record)) = data.split_first_chunk::<9>() else {
        return;
    };
    let (timeout, mode) = head.split_at(8);
    let timeout = i64::from_le_bytes(timeout.try_into().unwrap_or_default());
    let mode = mode[0];
    let now = DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap_or_default();
    let tracked = Tracked {
        state: [State::Dispatched, State::Started, State::Retry][usize::from(mode % 3)],
        since: DateTime::<Utc>::from_timestamp(1_799_990_000, 0).unwrap_or_default(),
        timeout_seconds: timeout,
    };
    let status = [
        "SUCCESS", "FAILURE", "RETRY", "REVOKED", "STARTED", "PROGRESS",
    ][usize::from(mode / 3 % 6)]
    .to_string();
    let meta = match mode / 18 % 5 {
        // Redis: the whole value as read.
        0 => redis(decode::redis_read(record.len(), record)),
        // Redis: the first bytes of a value over the cap.
        1 => redis(decode::redis_read(
            decode::RECORD_MAX_BYTES + 1 + record.len(),
            record,
        )),
        // Database: the bytes as the result column (JSON, or a pickle if they start with 0x80).
        2 => Some(decode::db_meta(
            status,
            Some(record.len()),
            Some(record),
            std::str::from_utf8(record).ok(),
            None,
        )),
        // Database: a pickle whatever the bytes.
        3 => {
            let mut pickled = vec![0x80, 0x04];
            pickled.extend_from_slice(record);
            Some(decode::db_meta(
                status,
                Some(pickled.len()),
                Some(&pickled),
                None,
                None,
            ))
        }
        // Database: a result over the cap, not read.
        _ => Some(decode::db_meta(
            status,
            Some(decode::RECORD_MAX_BYTES + record.len() + 1),
            None,
            None,
            None,
        )),
    };
    if let Some(m) = &meta {
        assert!(
            m.result
                .as_ref()
                .is_none_or(|r| r.to_string().len() <= decode::RESULT_MAX_BYTES)
        );
    }
    if let Some(tr) = decode::transition(&tracked, meta.as_ref(), now, true) {
        let row = decode::stored(&tr);
        // NUL becomes U+FFFD (3 bytes) in text; JSON escapes it to the same length.
        assert!(
            row.result
                .as_ref()
                .is_none_or(|r| r.len() <= decode::RESULT_MAX_BYTES)
        );
        assert!(
            row.error
                .as_ref()
                .is_none_or(|e| e.len() <= 3 * decode::ERROR_MAX_BYTES)
        );
        assert!(
            row.traceback
                .as_ref()
                .is_none_or(|t| t.len() <= 3 * (decode::TRACEBACK_MAX_BYTES + 40))
        );
        assert!(tr.finished_at.is_none_or(|f| f.timestamp() >= 0));
    }

    // The parts on their own, as before.
    let value = decode::db_result(data);
    let kept = decode::truncate_result(&value);
    assert!(kept.to_string().len() <= decode::RESULT_MAX_BYTES.max(value.to_string().len()));
    if let Ok(text) = std::str::from_utf8(data) {
        assert!(decode::truncate_traceback(text).len() <= decode::TRACEBACK_MAX_BYTES + 40);
    }
});

fn redis(read: RedisRead) -> Option<decode::Meta> {
    match read {
        RedisRead::Record(Ok(m)) => Some(m),
        _ => None,
    }
}
