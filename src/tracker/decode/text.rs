//! Cutting and cleaning the text an execution row stores: results, errors and tracebacks
//! within their documented sizes, never a NUL.

use serde_json::{Value, json};

use super::{ERROR_MAX_BYTES, RESULT_MAX_BYTES, TRACEBACK_MAX_BYTES};

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
    use crate::tracker::decode::{ERROR_MAX_BYTES, RESULT_MAX_BYTES, TRACEBACK_MAX_BYTES};

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
}
