//! Field checks for [`super::scheduled_job`] and [`super::task_function`]: each returns what is
//! wrong with one field, as the message the condition shows.

use serde_json::{Map, Value};

use crate::{
    api::{MessageOptions, scheduled_job::MAX_JOB_CALENDARS},
    celery::SendOptions,
};

use super::{
    MAX_ARGUMENTS_BYTES, MAX_DESCRIPTION_CHARS, MAX_DURATION_SECONDS, MAX_HEADERS,
    MAX_HEADERS_BYTES, MAX_LIST_ITEMS, MAX_NAME_LEN, MAX_TRIGGER_CHARS, RESERVED_EXCHANGES,
    RESERVED_HEADER_PREFIX, RESERVED_HEADERS, RESERVED_QUEUE_PREFIXES,
};

pub(super) fn check_name(field: &str, v: &str) -> Result<(), String> {
    if v.trim().is_empty() {
        return Err(format!("{field} must not be empty"));
    }
    if v.len() > MAX_NAME_LEN {
        return Err(format!("{field} is longer than {MAX_NAME_LEN} bytes"));
    }
    if v.chars().any(|c| c.is_control()) {
        return Err(format!(
            "{field} must not contain control characters (newlines, NUL, ...)"
        ));
    }
    Ok(())
}

/// A queue name: a valid name, not one of the reserved prefixes.
pub(super) fn check_queue(field: &str, v: &str) -> Result<(), String> {
    check_name(field, v)?;
    let lower = v.to_ascii_lowercase();
    if let Some(p) = RESERVED_QUEUE_PREFIXES
        .iter()
        .find(|p| lower.starts_with(*p))
    {
        return Err(format!(
            "{field}: {v:?} is reserved (names starting with {p:?} belong to kube-beat, the broker or Celery)"
        ));
    }
    Ok(())
}

/// A duration in seconds: at least `min`, at most `max` (default [`MAX_DURATION_SECONDS`]).
pub(super) fn check_duration(
    field: &str,
    v: Option<i64>,
    min: i64,
    max: Option<i64>,
) -> Result<Option<i64>, String> {
    let max = max.unwrap_or(MAX_DURATION_SECONDS);
    match v {
        Some(x) if x < min => Err(format!("{field} must be at least {min}, got {x}")),
        Some(x) if x > max => Err(format!("{field} must be at most {max}, got {x}")),
        _ => Ok(v),
    }
}

pub(super) fn check_description(d: Option<&str>) -> Result<(), String> {
    match d {
        Some(d) if d.chars().count() > MAX_DESCRIPTION_CHARS => Err(format!(
            "description is {} characters; the limit is {MAX_DESCRIPTION_CHARS}",
            d.chars().count()
        )),
        _ => Ok(()),
    }
}

/// The trigger value becomes a slot key (a unique index entry) and an Event message.
pub fn check_trigger(t: &str) -> Result<(), String> {
    let n = t.chars().count();
    let a = crate::api::TRIGGER_ANNOTATION;
    if n > MAX_TRIGGER_CHARS {
        return Err(format!(
            "the {a} annotation is {n} characters; the limit is {MAX_TRIGGER_CHARS}"
        ));
    }
    if t.chars().any(|c| c.is_control()) {
        return Err(format!(
            "the {a} annotation must not contain control characters"
        ));
    }
    Ok(())
}

pub(super) fn check_list_len(field: &str, n: usize) -> Result<(), String> {
    if n > MAX_LIST_ITEMS {
        return Err(format!(
            "{field} has {n} entries; the limit is {MAX_LIST_ITEMS}"
        ));
    }
    Ok(())
}

pub(super) fn check_priority(p: Option<i32>) -> Result<Option<i16>, String> {
    match p {
        None => Ok(None),
        Some(p @ 0..=9) => Ok(Some(p as i16)),
        Some(p) => Err(format!("priority must be between 0 and 9, got {p}")),
    }
}

pub(super) fn check_non_negative(field: &str, v: Option<i64>) -> Result<Option<i64>, String> {
    match v {
        Some(x) if x < 0 => Err(format!("{field} must not be negative, got {x}")),
        _ => Ok(v),
    }
}

pub(super) fn as_array(field: &str, v: Option<&Value>) -> Result<Vec<Value>, String> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => Ok(a.clone()),
        Some(other) => Err(format!(
            "{field} must be an array, got {}",
            json_type(other)
        )),
    }
}

pub(super) fn as_object(field: &str, v: Option<&Value>) -> Result<Map<String, Value>, String> {
    match v {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(o)) => Ok(o.clone()),
        Some(other) => Err(format!(
            "{field} must be an object, got {}",
            json_type(other)
        )),
    }
}

pub(super) fn check_size(args: &[Value], kwargs: &Map<String, Value>) -> Result<(), String> {
    // Postgres `jsonb` (and `text`) cannot hold U+0000: refuse it here with a reason instead of
    // failing every write of the row.
    let has_nul = |v: &Value| contains_nul(v);
    if args.iter().any(has_nul) || kwargs.iter().any(|(k, v)| k.contains('\0') || has_nul(v)) {
        return Err(
            "args and kwargs must not contain NUL characters (\\u0000): Postgres cannot store them"
                .to_string(),
        );
    }
    let size = serde_json::to_vec(args)
        .map(|v| v.len())
        .unwrap_or(usize::MAX)
        + serde_json::to_vec(kwargs)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
    if size > MAX_ARGUMENTS_BYTES {
        return Err(format!(
            "args and kwargs together are {size} bytes of JSON; the limit is {MAX_ARGUMENTS_BYTES}"
        ));
    }
    Ok(())
}

pub(super) fn contains_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(contains_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        _ => false,
    }
}

pub(super) fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(super) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// An exchange or routing key: at most [`MAX_NAME_LEN`] bytes (an AMQP short string holds 255),
/// no control characters. Empty is allowed (the default exchange).
fn check_routing_name(field: &str, v: &str) -> Result<(), String> {
    if v.len() > MAX_NAME_LEN {
        return Err(format!("{field} is longer than {MAX_NAME_LEN} bytes"));
    }
    if v.chars().any(|c| c.is_control()) {
        return Err(format!(
            "{field} must not contain control characters (newlines, NUL, ...)"
        ));
    }
    Ok(())
}

/// One object's message options, on their own (the merged ones are checked again).
pub(super) fn check_message_options(o: &MessageOptions) -> Result<(), String> {
    if let Some(x) = &o.exchange {
        check_routing_name("exchange", x)?;
        let lower = x.to_ascii_lowercase();
        if RESERVED_EXCHANGES.contains(&x.as_str()) || lower.starts_with(RESERVED_HEADER_PREFIX) {
            return Err(format!(
                "exchange: {x:?} is reserved (Celery's remote control and events, or kube-beat's own)"
            ));
        }
    }
    if let Some(r) = &o.routing_key {
        check_routing_name("routingKey", r)?;
    }
    let time_limit = check_duration("timeLimit", o.time_limit, 1, None)?;
    let soft = check_duration("softTimeLimit", o.soft_time_limit, 1, None)?;
    check_time_limits(time_limit, soft)?;
    if let Some(h) = &o.headers {
        check_headers(h.iter())?;
    }
    Ok(())
}

fn check_time_limits(hard: Option<i64>, soft: Option<i64>) -> Result<(), String> {
    match (hard, soft) {
        (Some(h), Some(s)) if s > h => Err(format!(
            "softTimeLimit ({s}) must not be greater than timeLimit ({h})"
        )),
        _ => Ok(()),
    }
}

/// Header names free and bounded, the whole set bounded.
fn check_headers<'a>(headers: impl Iterator<Item = (&'a String, &'a Value)>) -> Result<(), String> {
    let mut n = 0usize;
    let mut size = 2usize; // `{}`
    for (k, v) in headers {
        n += 1;
        if k.is_empty() {
            return Err("headers: a header name must not be empty".to_string());
        }
        if k.len() > MAX_NAME_LEN {
            return Err(format!(
                "headers: the name {:?}... is longer than {MAX_NAME_LEN} bytes",
                k.chars().take(32).collect::<String>()
            ));
        }
        if k.chars().any(|c| c.is_control()) {
            return Err(format!(
                "headers: the name {k:?} must not contain control characters"
            ));
        }
        if RESERVED_HEADERS.contains(&k.as_str()) {
            return Err(format!(
                "headers: {k:?} is reserved: Celery's message uses it (set timeLimit, softTimeLimit or ignoreResult for those options)"
            ));
        }
        if k.to_ascii_lowercase().starts_with(RESERVED_HEADER_PREFIX) {
            return Err(format!(
                "headers: {k:?} is reserved: names starting with {RESERVED_HEADER_PREFIX:?} are kube-beat's own"
            ));
        }
        if k.contains('\0') || contains_nul(v) {
            return Err(
                "headers must not contain NUL characters (\\u0000): Postgres cannot store them"
                    .to_string(),
            );
        }
        size += k.len() + 4 + serde_json::to_vec(v).map_or(usize::MAX / 2, |b| b.len());
    }
    if n > MAX_HEADERS {
        return Err(format!(
            "headers has {n} entries; the limit is {MAX_HEADERS}"
        ));
    }
    if size > MAX_HEADERS_BYTES {
        return Err(format!(
            "headers are {size} bytes of JSON; the limit is {MAX_HEADERS_BYTES}"
        ));
    }
    Ok(())
}

/// The options a job's messages carry: each of the job's fields over the TaskFunction's, the
/// headers merged (TaskFunction's first, the job's replacing one of the same name in place,
/// as Python's `dict.update` does). Checked again as a whole: two valid halves can make an
/// invalid pair (a soft limit above the other's hard limit, too many headers).
pub(super) fn resolve_message_options(
    tf: &MessageOptions,
    job: &MessageOptions,
    queue: &str,
) -> Result<SendOptions, String> {
    let mut headers = tf.headers.clone().unwrap_or_default();
    for (k, v) in job.headers.iter().flatten() {
        headers.insert(k.clone(), v.clone());
    }
    check_headers(headers.iter())?;
    let time_limit = job.time_limit.or(tf.time_limit);
    let soft_time_limit = job.soft_time_limit.or(tf.soft_time_limit);
    check_time_limits(time_limit, soft_time_limit).map_err(|e| {
        format!("{e} (after taking the TaskFunction's values for those the job does not set)")
    })?;
    let exchange = job.exchange.clone().or_else(|| tf.exchange.clone());
    let routing_key = job.routing_key.clone().or_else(|| tf.routing_key.clone());
    // On the default exchange the routing key is the queue: another one would reach a queue
    // that the TaskFunction's allowedQueues does not allow.
    if exchange.as_deref().unwrap_or("").is_empty()
        && let Some(r) = &routing_key
        && r != queue
    {
        return Err(format!(
            "routingKey {r:?} with the default exchange would publish to queue {r:?}, not to the job's queue {queue:?}: set queue instead, or an exchange"
        ));
    }
    Ok(SendOptions {
        exchange,
        routing_key,
        headers: headers.into_iter().collect(),
        time_limit,
        soft_time_limit,
        ignore_result: job.ignore_result.or(tf.ignore_result).unwrap_or(false),
    })
}

/// `spec.calendars` of a ScheduledJob: at most [`crate::api::scheduled_job::MAX_JOB_CALENDARS`] DNS-1123 names (the names
/// of cluster-scoped objects).
pub(super) fn check_names(names: &[String]) -> Result<(), String> {
    if names.len() > MAX_JOB_CALENDARS {
        return Err(format!(
            "calendars: at most {MAX_JOB_CALENDARS} names ({} given)",
            names.len()
        ));
    }
    for name in names {
        if !is_dns_subdomain(name) {
            let shown: String = name.chars().take(64).collect();
            return Err(format!(
                "calendars: {shown:?} is not a valid ScheduleCalendar name (lowercase letters, digits, '-' and '.', at most 253)"
            ));
        }
    }
    Ok(())
}

fn is_dns_subdomain(s: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !s.is_empty()
        && s.len() <= 253
        && s.bytes().all(|b| alnum(b) || b == b'-' || b == b'.')
        && s.bytes().next().is_some_and(alnum)
        && s.bytes().last().is_some_and(alnum)
}
