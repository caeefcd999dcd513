//! `kube-beat import FILE` (`--from plan`): the migration plan's own job list (its shape:
//! `name, description, task_function_name, job_type_name, schedule_config, task_args,
//! is_enabled`) into ScheduledJob and TaskFunction YAML. Pure: text in, documents or errors out.
//!
//! Input (JSON or YAML): either a list of jobs, or `{jobs: [...], task_functions: {...}}`. The
//! `task_functions` map (also `--task-functions FILE`) names, per `task_function_name`, the Celery
//! `task` and `queue` (and optionally `priority`, `expiresSeconds`, `defaultKwargs`).
//!
//! `schedule_config` by `job_type_name`:
//! - `interval`: `{days?, hours?, minutes?, seconds?}` (days become hours);
//! - `cron`: `{cron: "<expr>"}` or `{expression: ...}`, or Celery/APScheduler fields
//!   `{minute, hour, day_of_month|day, month_of_year|month, day_of_week}` (missing fields are `*`),
//!   with an optional `timezone`;
//! - `date`: `{run_date: RFC 3339}` (or `at`).
//!
//! `task_args`: a list (args), an object (kwargs), or `{args: [...], kwargs: {...}}`.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use super::{Builder, ImportError, Imported, Options, SourceKind};

fn file_error(reason: impl Into<String>) -> Imported {
    Imported {
        errors: vec![ImportError::source(reason)],
        ..Imported::default()
    }
}

/// Convert `input` (JSON or YAML) with an optional separate task-function map. Every entry is
/// validated as the operator would; all errors are reported, each with its index.
pub fn convert(
    input: &str,
    task_functions: Option<&str>,
    opts: &Options,
    now: DateTime<Utc>,
) -> Imported {
    let doc: Value = match serde_yaml::from_str(input) {
        Ok(v) => v,
        Err(e) => return file_error(format!("not JSON or YAML: {e}")),
    };
    let (jobs, mut map) = match doc {
        Value::Array(jobs) => (jobs, Map::new()),
        Value::Object(mut o) => match o.remove("jobs") {
            Some(Value::Array(jobs)) => {
                let map = match o.remove("task_functions") {
                    Some(Value::Object(m)) => m,
                    None => Map::new(),
                    Some(_) => return file_error("`task_functions` must be a map"),
                };
                (jobs, map)
            }
            _ => return file_error("expected a list of jobs or an object with a `jobs` list"),
        },
        _ => return file_error("expected a list of jobs or an object with a `jobs` list"),
    };
    if let Some(text) = task_functions {
        match serde_yaml::from_str::<Value>(text) {
            Ok(Value::Object(m)) => map.extend(m),
            Ok(_) => {
                return file_error("the task-function map must be a map of name → {task, queue}");
            }
            Err(e) => return file_error(format!("task-function map is not JSON or YAML: {e}")),
        }
    }

    let mut b = Builder::new(SourceKind::Plan, opts, now);
    for (index, job) in jobs.iter().enumerate() {
        let label = job.get("name").and_then(Value::as_str).map(str::to_string);
        match convert_job(job, &map) {
            Ok(PlanJob {
                name,
                function,
                function_spec: tf,
                spec,
            }) => {
                let tf_name = b.task_function_name(&function);
                b.add_with_function(Some(index), &name, &tf_name, tf, spec, Vec::new());
            }
            Err(reason) => b.reject(ImportError {
                index: Some(index),
                name: label,
                reason,
            }),
        }
    }
    b.finish()
}

/// One entry of the plan, converted but not yet validated.
struct PlanJob {
    name: String,
    /// The plan's task function name (the builder derives the object name).
    function: String,
    function_spec: Map<String, Value>,
    /// The ScheduledJob spec without `taskFunction`.
    spec: Map<String, Value>,
}

/// One job → a [`PlanJob`]; the builder names the function and validates both.
fn convert_job(job: &Value, map: &Map<String, Value>) -> Result<PlanJob, String> {
    let obj = job.as_object().ok_or("an entry must be an object")?;
    let text = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_string);
    let name = text("name")
        .filter(|n| !n.trim().is_empty())
        .ok_or("`name` is required")?;
    let function = text("task_function_name")
        .filter(|n| !n.trim().is_empty())
        .ok_or("`task_function_name` is required")?;
    let mapped = map.get(&function).ok_or_else(|| {
        format!("no Celery task mapped for task function `{function}` (add it to task_functions)")
    })?;
    let mut tf = match mapped {
        Value::Object(m) => m.clone(),
        _ => return Err(format!("task_functions.{function} must be {{task, queue}}")),
    };
    tf.entry("queue").or_insert(json!("celery"));

    let job_type = text("job_type_name").ok_or("`job_type_name` is required")?;
    let config = obj.get("schedule_config").cloned().unwrap_or(Value::Null);
    let (schedule, time_zone) = schedule(&job_type, &config)?;
    let mut spec = json!({"schedule": schedule});
    if let Some(tz) = time_zone {
        spec["timeZone"] = json!(tz);
    }
    if let Some(d) = text("description").filter(|d| !d.is_empty()) {
        spec["description"] = json!(d);
    }
    match obj.get("task_args") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) => spec["args"] = json!(a),
        Some(Value::Object(o)) if o.contains_key("args") || o.contains_key("kwargs") => {
            if let Some(a) = o.get("args") {
                spec["args"] = a.clone();
            }
            if let Some(k) = o.get("kwargs") {
                spec["kwargs"] = k.clone();
            }
        }
        Some(Value::Object(o)) => spec["kwargs"] = json!(o),
        Some(other) => {
            return Err(format!(
                "`task_args` must be a list or an object, not {other}"
            ));
        }
    }
    match obj.get("is_enabled") {
        None | Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => spec["suspend"] = json!(true),
        Some(other) => return Err(format!("`is_enabled` must be true or false, not {other}")),
    }
    let Value::Object(spec) = spec else {
        return Err("internal: the spec is an object".into()); // built as one above
    };
    Ok(PlanJob {
        name,
        function,
        function_spec: tf,
        spec,
    })
}

fn schedule(job_type: &str, config: &Value) -> Result<(Value, Option<String>), String> {
    let cfg = config
        .as_object()
        .ok_or("`schedule_config` must be an object")?;
    let tz = cfg
        .get("timezone")
        .or_else(|| cfg.get("time_zone"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let num = |k: &str| -> Result<i64, String> {
        match cfg.get(k) {
            None | Some(Value::Null) => Ok(0),
            Some(v) => v
                .as_i64()
                .filter(|n| *n >= 0)
                .ok_or_else(|| format!("schedule_config.{k} must be a non-negative integer")),
        }
    };
    match job_type {
        "interval" => {
            let (d, h, m, s) = (
                num("days")?,
                num("hours")?,
                num("minutes")?,
                num("seconds")?,
            );
            if d + h + m + s == 0 {
                return Err("an interval needs days, hours, minutes or seconds".into());
            }
            let mut iv = Map::new();
            if d * 24 + h > 0 {
                iv.insert("hours".into(), json!(d * 24 + h));
            }
            if m > 0 {
                iv.insert("minutes".into(), json!(m));
            }
            if s > 0 {
                iv.insert("seconds".into(), json!(s));
            }
            Ok((json!({"interval": iv}), None))
        }
        "cron" => {
            let field = |keys: &[&str]| -> String {
                keys.iter()
                    .find_map(|k| cfg.get(*k))
                    .map(|v| match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .unwrap_or_else(|| "*".into())
            };
            let expr = match cfg.get("cron").or_else(|| cfg.get("expression")) {
                Some(Value::String(e)) => e.clone(),
                Some(_) => return Err("schedule_config.cron must be a string".into()),
                None => format!(
                    "{} {} {} {} {}",
                    field(&["minute"]),
                    field(&["hour"]),
                    field(&["day_of_month", "day"]),
                    field(&["month_of_year", "month"]),
                    field(&["day_of_week"])
                ),
            };
            Ok((json!({"cron": expr}), tz))
        }
        "date" => {
            let at = cfg
                .get("run_date")
                .or_else(|| cfg.get("at"))
                .and_then(Value::as_str)
                .ok_or("a date job needs schedule_config.run_date (RFC 3339)")?;
            Ok((json!({"at": at}), None))
        }
        other => Err(format!(
            "unknown job_type_name `{other}` (expected interval, cron or date)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::k8s_name;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-27T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    /// The migration plan's four default jobs.
    const DEFAULTS: &str = r#"{
      "task_functions": {
        "sync_domain_users": {"task": "tasks.ad_sync_tasks.sync_domain_users_task", "queue": "ad_queue"},
        "cleanup_expired_sessions": {"task": "services.auth_service.auth_service.cleanup_all_expired_sessions"},
        "cleanup_stale_sessions": {"task": "services.desktop_session_service.DesktopSessionService.cleanup_stale_sessions"},
        "cleanup_stale_deployment_jobs": {"task": "tasks.deployment_tasks.cleanup_stale_deployment_jobs"}
      },
      "jobs": [
        {"name": "Domain User Sync", "description": "Hourly AD sync", "task_function_name": "sync_domain_users",
         "job_type_name": "interval", "schedule_config": {"hours": 1}, "task_args": {"domain_id": "corp.example.com", "mode": "full"}, "is_enabled": true},
        {"name": "Token Cleanup", "description": "Daily", "task_function_name": "cleanup_expired_sessions",
         "job_type_name": "cron", "schedule_config": {"minute": "0", "hour": "3"}, "task_args": {"retention_days": 7}, "is_enabled": true},
        {"name": "Desktop Session Cleanup", "description": "", "task_function_name": "cleanup_stale_sessions",
         "job_type_name": "interval", "schedule_config": {"minutes": 1}, "task_args": {"timeout_minutes": 2}, "is_enabled": true},
        {"name": "Deployment Job Cleanup", "description": "", "task_function_name": "cleanup_stale_deployment_jobs",
         "job_type_name": "interval", "schedule_config": {"seconds": 30}, "task_args": [], "is_enabled": false}
      ]}"#;

    #[test]
    fn the_four_default_jobs() {
        let r = convert(DEFAULTS, None, &Options::default(), now());
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(r.objects.len(), 8);
        let job = |name: &str| {
            r.objects
                .iter()
                .find(|o| o["kind"] == "ScheduledJob" && o["metadata"]["name"] == name)
                .unwrap_or_else(|| panic!("{name}"))
                .clone()
        };
        let sync = job("domain-user-sync");
        assert_eq!(sync["spec"]["schedule"], json!({"interval": {"hours": 1}}));
        assert_eq!(sync["spec"]["taskFunction"], "sync-domain-users");
        assert_eq!(sync["spec"]["kwargs"]["domain_id"], "corp.example.com");
        assert_eq!(
            sync["metadata"]["annotations"]["kubebeat.io/imported-name"],
            "Domain User Sync"
        );
        assert_eq!(
            job("token-cleanup")["spec"]["schedule"]["cron"],
            "0 3 * * *"
        );
        assert_eq!(job("deployment-job-cleanup")["spec"]["suspend"], true);
        let tf = r
            .objects
            .iter()
            .find(|o| o["metadata"]["name"] == "sync-domain-users")
            .unwrap();
        assert_eq!(tf["kind"], "TaskFunction");
        assert_eq!(tf["spec"]["queue"], "ad_queue");
        let yaml = r.yaml().unwrap();
        assert_eq!(yaml.matches("kind: ScheduledJob").count(), 4);
    }

    #[test]
    fn bad_entries_are_reported_with_index_and_reason() {
        let input = r#"
task_functions:
  f: {task: kb.echo}
jobs:
  - {name: ok, task_function_name: f, job_type_name: interval, schedule_config: {minutes: 5}}
  - {name: bad-cron, task_function_name: f, job_type_name: cron, schedule_config: {cron: "61 * * * *"}}
  - {name: no-map, task_function_name: g, job_type_name: interval, schedule_config: {minutes: 5}}
  - {name: zero, task_function_name: f, job_type_name: interval, schedule_config: {}}
  - {name: weird, task_function_name: f, job_type_name: solar, schedule_config: {}}
  - {task_function_name: f, job_type_name: interval, schedule_config: {minutes: 1}}
  - {name: past, task_function_name: f, job_type_name: date, schedule_config: {run_date: "2020-01-01T00:00:00Z"}}
  - {name: tz, task_function_name: f, job_type_name: cron, schedule_config: {cron: "0 3 * * *", timezone: "Mars/Olympus"}}
"#;
        let r = convert(input, None, &Options::default(), now());
        let idx: Vec<Option<usize>> = r.errors.iter().map(|e| e.index).collect();
        assert_eq!(
            idx,
            vec![
                Some(1),
                Some(2),
                Some(3),
                Some(4),
                Some(5),
                Some(6),
                Some(7)
            ]
        );
        let text: Vec<String> = r.errors.iter().map(ToString::to_string).collect();
        assert!(
            text[0].contains("InvalidSchedule") && text[0].contains("61"),
            "{}",
            text[0]
        );
        assert!(text[1].contains("no Celery task mapped for task function `g`"));
        assert!(text[4].contains("`name` is required"));
        assert!(text[5].contains("in the past"));
        assert!(text[6].contains("Mars/Olympus"));
        // The valid one is still converted (written only with --skip-invalid).
        assert_eq!(r.objects.len(), 2);
    }

    #[test]
    fn names_are_valid_and_unique() {
        assert_eq!(k8s_name("Domain User Sync!"), "domain-user-sync");
        assert_eq!(k8s_name("__x__"), "x");
        assert_eq!(k8s_name("Ümlaut Jöb"), "mlaut-j-b");
        assert_eq!(k8s_name(&"a".repeat(100)).len(), 63);
        assert_eq!(k8s_name("***"), "job");
        let input = r#"[{"name": "A", "task_function_name": "f", "job_type_name": "interval", "schedule_config": {"seconds": 5}},
                        {"name": "a", "task_function_name": "f", "job_type_name": "interval", "schedule_config": {"seconds": 5}}]"#;
        let r = convert(
            input,
            Some("f: {task: kb.echo, queue: q}"),
            &Options::default(),
            now(),
        );
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        let names: Vec<&str> = r
            .objects
            .iter()
            .filter(|o| o["kind"] == "ScheduledJob")
            .filter_map(|o| o["metadata"]["name"].as_str())
            .collect();
        assert_eq!(names, vec!["a", "a-2"]);
    }

    #[test]
    fn broken_files() {
        assert!(
            convert("{", None, &Options::default(), now()).errors[0]
                .reason
                .contains("not JSON or YAML")
        );
        assert!(
            convert("42", None, &Options::default(), now()).errors[0]
                .reason
                .contains("expected a list")
        );
    }
}
