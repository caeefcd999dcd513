//! The body of `POST .../trigger`: `{"args": [...], "kwargs": {...}, "requestId": "..."}`, all
//! optional, parsed and checked before anything is written.

use axum::http::StatusCode;
use serde_json::Value;

use crate::{
    arguments::{self, Overrides, Parameters},
    store::arguments::JobArguments,
};

/// Largest body accepted: the overrides' 64 KiB and some room for the rest.
const MAX_BODY_BYTES: usize = arguments::MAX_ARGUMENTS_BYTES + 4096;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BodyError {
    #[error("{0}")]
    Malformed(String),
    #[error("the body is {0} bytes; the limit is {MAX_BODY_BYTES}")]
    TooLarge(usize),
    #[error("{0}")]
    InvalidArguments(String),
    #[error("the scheduledjob is not Ready, so its arguments cannot be judged: {0}")]
    NotReady(String),
}

impl BodyError {
    pub fn status(&self) -> StatusCode {
        match self {
            BodyError::Malformed(_) => StatusCode::BAD_REQUEST,
            BodyError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::InvalidArguments(_) => StatusCode::UNPROCESSABLE_ENTITY,
            BodyError::NotReady(_) => StatusCode::CONFLICT,
        }
    }
}

/// A trigger request as parsed.
#[derive(Debug, Default, PartialEq)]
pub struct TriggerRequest {
    pub overrides: Overrides,
    pub request_id: Option<String>,
}

impl TriggerRequest {
    /// An empty body (or `{}`) asks for a run with the job's own arguments.
    pub fn parse(body: &[u8]) -> Result<TriggerRequest, BodyError> {
        if body.len() > MAX_BODY_BYTES {
            return Err(BodyError::TooLarge(body.len()));
        }
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(TriggerRequest::default());
        }
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| BodyError::Malformed(format!("the body is not JSON: {e}")))?;
        let Value::Object(mut map) = value else {
            return Err(BodyError::Malformed(
                "the body must be a JSON object {\"args\", \"kwargs\", \"requestId\"}".into(),
            ));
        };
        let request_id = match map.remove("requestId") {
            None | Some(Value::Null) => None,
            Some(Value::String(id)) => {
                arguments::check_request_id(&id).map_err(BodyError::Malformed)?;
                Some(id)
            }
            Some(_) => return Err(BodyError::Malformed("requestId must be a string".into())),
        };
        let (args, kwargs) = (map.remove("args"), map.remove("kwargs"));
        if let Some(other) = map.keys().next() {
            return Err(BodyError::Malformed(format!(
                "unknown field {other:?} (expected args, kwargs, requestId)"
            )));
        }
        let overrides = Overrides::from_values(args, kwargs).map_err(BodyError::Malformed)?;
        Ok(TriggerRequest {
            overrides,
            request_id,
        })
    }
}

/// The overrides applied to the job's stored arguments, checked against its TaskFunction's
/// parameters (the reconciler checks them again when it claims the run).
pub fn check(overrides: &Overrides, job: &JobArguments) -> Result<(), BodyError> {
    if !job.valid {
        return Err(BodyError::NotReady("see its Ready condition".to_string()));
    }
    let parameters = Parameters::compile(job.parameters.as_ref()).map_err(BodyError::NotReady)?;
    let (args, kwargs) = arguments::stored(&job.args, &job.kwargs);
    let (args, kwargs) = overrides
        .apply(&args, &kwargs)
        .map_err(BodyError::InvalidArguments)?;
    parameters
        .check(&args, &kwargs)
        .map_err(BodyError::InvalidArguments)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn job(parameters: Value) -> JobArguments {
        JobArguments {
            task_function: "export".into(),
            valid: true,
            args: json!([]),
            kwargs: json!({"limit": 10}),
            parameters: Some(parameters).filter(|p| !p.is_null()),
        }
    }

    #[test]
    fn bodies_parse_or_say_what_is_wrong() {
        assert_eq!(TriggerRequest::parse(b""), Ok(TriggerRequest::default()));
        assert_eq!(
            TriggerRequest::parse(b" {} "),
            Ok(TriggerRequest::default())
        );
        let r = TriggerRequest::parse(br#"{"kwargs": {"limit": 5}, "requestId": "r-1"}"#)
            .expect("parsed");
        assert_eq!(r.request_id.as_deref(), Some("r-1"));
        assert_eq!(r.overrides.kwargs, json!({"limit": 5}).as_object().cloned());
        for (body, status) in [
            (&b"[1]"[..], StatusCode::BAD_REQUEST),
            (b"{", StatusCode::BAD_REQUEST),
            (br#"{"argz": []}"#, StatusCode::BAD_REQUEST),
            (br#"{"args": {}}"#, StatusCode::BAD_REQUEST),
            (br#"{"requestId": "a b"}"#, StatusCode::BAD_REQUEST),
            (br#"{"requestId": 1}"#, StatusCode::BAD_REQUEST),
        ] {
            let e = TriggerRequest::parse(body).expect_err("refused");
            assert_eq!(e.status(), status, "{e}");
        }
        let big = vec![b' '; MAX_BODY_BYTES + 1];
        assert_eq!(
            TriggerRequest::parse(&big).map_err(|e| e.status()),
            Err(StatusCode::PAYLOAD_TOO_LARGE)
        );
    }

    #[test]
    fn overrides_are_judged_merged_over_the_jobs_arguments() {
        let p =
            json!({"kwargs": {"properties": {"limit": {"maximum": 1000}}, "required": ["limit"]}});
        let ok = Overrides::from_values(None, Some(json!({"mode": "x"}))).expect("ok");
        assert_eq!(
            check(&ok, &job(p.clone())),
            Ok(()),
            "limit comes from the job"
        );
        let bad = Overrides::from_values(None, Some(json!({"limit": 5000}))).expect("ok");
        let e = check(&bad, &job(p.clone())).expect_err("refused");
        assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            e.to_string(),
            "kwargs.limit: 5000 is greater than the maximum 1000"
        );
        assert_eq!(
            check(&bad, &job(Value::Null)),
            Ok(()),
            "no parameters: anything"
        );
        let mut invalid = job(p);
        invalid.valid = false;
        assert_eq!(
            check(&bad, &invalid).map_err(|e| e.status()),
            Err(StatusCode::CONFLICT)
        );
    }
}
