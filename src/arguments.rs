//! Run arguments (pure): the TaskFunction's `parameters` (JSON Schemas of the args array and
//! the kwargs object), the arguments a manual run overrides, and the trigger value that carries
//! the request id and who asked (`<request id> by=<user>`). Shared by the reconciler, the
//! admission webhook, the HTTP API and `kube-beat trigger`, so each judges alike.

pub mod schema;

use serde_json::{Map, Value};

pub use schema::Schema;

/// Annotation with a manual run's positional arguments (a JSON array), read with the trigger.
pub const TRIGGER_ARGS_ANNOTATION: &str = "kubebeat.io/trigger-args";
/// Annotation with a manual run's keyword arguments (a JSON object), merged over the job's.
pub const TRIGGER_KWARGS_ANNOTATION: &str = "kubebeat.io/trigger-kwargs";
/// Largest overrides (both annotations together) and largest arguments a run is sent with.
pub const MAX_ARGUMENTS_BYTES: usize = 64 * 1024;
/// Longest request id (the trigger value is at most 253 characters, `by=` included).
pub const MAX_REQUEST_ID_CHARS: usize = 128;
/// Longest trigger value (it becomes the run's slot key, in a unique index).
pub const MAX_TRIGGER_CHARS: usize = 253;
/// What separates the request id from the caller in a trigger value.
const BY: &str = " by=";

/// The compiled `spec.parameters` of a TaskFunction.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Parameters {
    pub args: Option<Schema>,
    pub kwargs: Option<Schema>,
}

impl Parameters {
    /// Compile `parameters` (`{args?, kwargs?}`, as written in the TaskFunction); the error
    /// names the schema path (`parameters.kwargs.properties.limit: ...`).
    pub fn compile(parameters: Option<&Value>) -> Result<Parameters, String> {
        let Some(p) = parameters.filter(|p| !p.is_null()) else {
            return Ok(Parameters::default());
        };
        let Value::Object(map) = p else {
            return Err("parameters: must be an object with args and/or kwargs".into());
        };
        let mut out = Parameters::default();
        for (key, v) in map {
            let (slot, must_admit, type_name) = match key.as_str() {
                "args" => (&mut out.args, schema::Type::Array, "array"),
                "kwargs" => (&mut out.kwargs, schema::Type::Object, "object"),
                other => {
                    return Err(format!(
                        "parameters: {other:?} is not a parameter set (args, kwargs)"
                    ));
                }
            };
            let path = format!("parameters.{key}");
            let s = Schema::compile(&path, v)?;
            // `args` is always an array and `kwargs` an object: a schema of another type would
            // refuse every job.
            if !s.types().is_empty() && !s.types().contains(&must_admit) {
                return Err(format!("{path}.type: must allow \"{type_name}\""));
            }
            *slot = Some(s);
        }
        Ok(out)
    }

    /// Whether any schema is set (the dashboard then asks for arguments before a run).
    pub fn is_set(&self) -> bool {
        self.args.is_some() || self.kwargs.is_some()
    }

    /// Check a run's effective arguments: the first violation, with its path (`args[0]: ...`,
    /// `kwargs.limit: ...`).
    pub fn check(&self, args: &[Value], kwargs: &Map<String, Value>) -> Result<(), String> {
        if let Some(s) = &self.args {
            s.check("args", &Value::Array(args.to_vec()))?;
        }
        if let Some(s) = &self.kwargs {
            s.check("kwargs", &Value::Object(kwargs.clone()))?;
        }
        Ok(())
    }
}

/// A trigger value split into the run key's request id and who asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TriggerValue<'a> {
    /// The run's key: the value without its `by=` part.
    pub request_id: &'a str,
    pub requested_by: Option<&'a str>,
}

/// Split `<request id> by=<user>`; a value without ` by=` is all request id.
pub fn parse_trigger(value: &str) -> TriggerValue<'_> {
    match value.split_once(BY) {
        Some((id, by)) => TriggerValue {
            request_id: id,
            requested_by: Some(by).filter(|b| !b.is_empty()),
        },
        None => TriggerValue {
            request_id: value,
            requested_by: None,
        },
    }
}

/// `<request id> by=<user>`, the user cut so the whole stays within [`MAX_TRIGGER_CHARS`]
/// (a service account's name can be long; the request id is checked first).
pub fn trigger_value(request_id: &str, requested_by: Option<&str>) -> String {
    let Some(by) = requested_by.filter(|b| !b.is_empty()) else {
        return request_id.to_string();
    };
    let room = MAX_TRIGGER_CHARS.saturating_sub(request_id.chars().count() + BY.len());
    let by: String = by.chars().filter(|c| !c.is_control()).take(room).collect();
    format!("{request_id}{BY}{by}")
}

/// A request id: 1 to 128 characters, letters, digits and `.`, `_`, `:`, `+`, `-` (it is part
/// of the annotation value and of the run's slot key).
pub fn check_request_id(id: &str) -> Result<(), String> {
    let n = id.chars().count();
    if n == 0 || n > MAX_REQUEST_ID_CHARS {
        return Err(format!(
            "requestId must be 1 to {MAX_REQUEST_ID_CHARS} characters, not {n}"
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || ".-_:+".contains(*c)))
    {
        return Err(format!(
            "requestId may contain letters, digits and . _ : + - only, not {c:?}"
        ));
    }
    Ok(())
}

/// What a manual run changes: `args` replace the job's, `kwargs` are merged over the job's.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Overrides {
    pub args: Option<Vec<Value>>,
    pub kwargs: Option<Map<String, Value>>,
}

impl Overrides {
    pub fn is_empty(&self) -> bool {
        self.args.is_none() && self.kwargs.is_none()
    }

    /// From the override annotations' values (JSON); the error says which is wrong.
    pub fn from_annotations(args: Option<&str>, kwargs: Option<&str>) -> Result<Overrides, String> {
        let size = args.map_or(0, str::len) + kwargs.map_or(0, str::len);
        if size > MAX_ARGUMENTS_BYTES {
            return Err(format!(
                "{TRIGGER_ARGS_ANNOTATION} and {TRIGGER_KWARGS_ANNOTATION} are {size} bytes; the limit is {MAX_ARGUMENTS_BYTES}"
            ));
        }
        let parse = |name: &str, text: Option<&str>| -> Result<Option<Value>, String> {
            text.map(|t| serde_json::from_str::<Value>(t).map_err(|e| format!("{name}: {e}")))
                .transpose()
                .map(|v| v.filter(|v| !v.is_null()))
        };
        Overrides::from_values(
            parse(TRIGGER_ARGS_ANNOTATION, args)?,
            parse(TRIGGER_KWARGS_ANNOTATION, kwargs)?,
        )
    }

    /// From JSON values (an API body's `args` and `kwargs`); `null` is "not given".
    pub fn from_values(args: Option<Value>, kwargs: Option<Value>) -> Result<Overrides, String> {
        let args = match args {
            None | Some(Value::Null) => None,
            Some(Value::Array(a)) => Some(a),
            Some(_) => return Err("args must be a JSON array".into()),
        };
        let kwargs = match kwargs {
            None | Some(Value::Null) => None,
            Some(Value::Object(o)) => Some(o),
            Some(_) => return Err("kwargs must be a JSON object".into()),
        };
        Ok(Overrides { args, kwargs })
    }

    /// The annotations' values: JSON, or `null` (removed) when not given.
    pub fn annotation_values(&self) -> (Value, Value) {
        let text = |v: Option<Value>| v.map_or(Value::Null, |v| Value::String(v.to_string()));
        (
            text(self.args.clone().map(Value::Array)),
            text(self.kwargs.clone().map(Value::Object)),
        )
    }

    /// The run's arguments: the job's effective ones with these applied, checked for size and
    /// NUL characters (Postgres cannot store them).
    pub fn apply(
        &self,
        job_args: &[Value],
        job_kwargs: &Map<String, Value>,
    ) -> Result<(Vec<Value>, Map<String, Value>), String> {
        let args = self.args.clone().unwrap_or_else(|| job_args.to_vec());
        let mut kwargs = job_kwargs.clone();
        if let Some(o) = &self.kwargs {
            kwargs.extend(o.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        let args_json = serde_json::to_string(&args).map_err(|e| e.to_string())?;
        let kwargs_json = serde_json::to_string(&kwargs).map_err(|e| e.to_string())?;
        // serde_json writes a NUL as `\u0000`; a text that spells it literally is refused too.
        if args_json.contains("\\u0000") || kwargs_json.contains("\\u0000") {
            return Err("args and kwargs must not contain NUL characters (\\u0000)".into());
        }
        let size = args_json.len() + kwargs_json.len();
        if size > MAX_ARGUMENTS_BYTES {
            return Err(format!(
                "args and kwargs together are {size} bytes of JSON; the limit is {MAX_ARGUMENTS_BYTES}"
            ));
        }
        Ok((args, kwargs))
    }
}

/// A job's stored arguments (`scheduled_jobs.args`, `.kwargs`) as an array and an object
/// (anything else, which validation never stores, reads as empty).
pub fn stored(args: &Value, kwargs: &Value) -> (Vec<Value>, Map<String, Value>) {
    (
        args.as_array().cloned().unwrap_or_default(),
        kwargs.as_object().cloned().unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests;
