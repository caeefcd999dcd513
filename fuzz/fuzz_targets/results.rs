//! Any bytes as a Celery result: the Redis meta decoder, the database backend's JSON, and the
//! pickle fallback (decoded as plain data, never executed) never panic, and what is kept fits
//! the documented sizes.
#![no_main]

use kube_beat::tracker::decode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode::redis_meta(data);
    let value = decode::db_result(data);
    let kept = decode::truncate_result(&value);
    assert!(kept.to_string().len() <= decode::RESULT_MAX_BYTES.max(value.to_string().len()));
    let mut pickled = vec![0x80, 0x04];
    pickled.extend_from_slice(data);
    let _ = decode::db_result(&pickled);
    if let Ok(text) = std::str::from_utf8(data) {
        assert!(decode::truncate_traceback(text).len() <= decode::TRACEBACK_MAX_BYTES + 40);
    }
});
