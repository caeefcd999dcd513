//! The management API against the real apiserver's TokenReview and SubjectAccessReview, with
//! static-token users: an admin, a reader of one namespace (sees only it, cannot trigger) and an
//! editor of that namespace (can trigger there, not elsewhere); no token → 401; bad paging → 400.
//! Also the migration plan's monitoring commands (status, jobs, executions) against a live
//! operator; failed authentications from one address answered 429 (without the apiserver), the
//! TaskFunction list cut down to what a namespace reader may see, and tokens that must carry the
//! configured audience (`--api-audiences`).

mod common;

use std::{process::Command, time::Duration};

use common::{Worker, api_call as call, eventually, fixture, ok};
use serde_json::{Value, json};

const ADMIN: &str = "kbt-api-admin-token";
const READER: &str = "kbt-api-reader-token";
const EDITOR: &str = "kbt-api-editor-token";

/// (HTTP status, `Retry-After` header) of a GET, the body dropped.
fn status_and_retry_after(addr: &str, path: &str, token: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %header{retry-after}",
        ])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .arg(format!("http://{addr}{path}"))
        .output()
        .expect("curl");
    let text = ok(&out);
    let (code, retry) = text.split_once(' ').unwrap_or((text.as_str(), ""));
    (
        code.trim().parse().expect("status code"),
        retry.trim().to_string(),
    )
}

/// (HTTP status, `ETag` header, body length) of a GET sent with `If-None-Match: if_none_match`
/// when given.
fn conditional_get(
    addr: &str,
    path: &str,
    token: &str,
    if_none_match: Option<&str>,
) -> (u16, String, usize) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-w", "\n%{http_code} %header{etag}"])
        .args(["-H", &format!("Authorization: Bearer {token}")]);
    if let Some(tag) = if_none_match {
        cmd.args(["-H", &format!("If-None-Match: {tag}")]);
    }
    let out = cmd
        .arg(format!("http://{addr}{path}"))
        .output()
        .expect("curl");
    let text = ok(&out);
    let (body, last) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
    let (code, etag) = last.split_once(' ').unwrap_or((last, ""));
    (
        code.trim().parse().expect("status code"),
        etag.trim().to_string(),
        body.len(),
    )
}

/// The TaskFunctions of a `/api/v1/task-functions` answer by short name (the fixture prefixes
/// `<test id>-`): (allowedNamespaces, jobCount).
fn task_functions_by_name(
    body: &Value,
    id: &str,
) -> std::collections::BTreeMap<String, (Value, Value)> {
    body["task_functions"]
        .as_array()
        .expect("task_functions")
        .iter()
        .map(|t| {
            let name = t["name"].as_str().unwrap_or("");
            (
                name.strip_prefix(&format!("{id}-"))
                    .unwrap_or(name)
                    .to_string(),
                (t["allowedNamespaces"].clone(), t["jobCount"].clone()),
            )
        })
        .collect()
}

/// One of the migration plan's monitoring commands, run as written by bash (real `curl` and
/// `jq`), with `$T` the bearer token and the operator's address written in for `$KB` (the plan
/// quotes some URLs, so it is text, not a variable): jq's output.
fn plan_command(addr: &str, token: &str, command: &str) -> String {
    let command = command.replace("$KB", addr);
    let out = Command::new("bash")
        .args(["-o", "pipefail", "-c", &command])
        .env("T", token)
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "{command} ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The JSON values jq printed (one after another, as jq prints a stream).
fn jq_stream(text: &str) -> Vec<Value> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("jq printed something that is not JSON ({e}): {text}"))
}

#[tokio::test]
#[ignore = "needs the local control plane and services (make test)"]
async fn api_with_kubernetes_authentication_and_authorization() {
    let env = common::env();
    let f = fixture("kbt-api", format!("{}/0", env.redis_url)).await;
    let backend = format!("{}/1", env.redis_url);
    let _worker = Worker::start(&f.broker, Some(&backend), &f.queue, &f.db.url);
    // The reader may read ScheduledJobs in the test namespace; the editor may also patch them.

    f.grant_api_users();
    f.task_function("echo", "kb.echo").await;
    f.job(
        "hourly",
        "echo",
        json!({"schedule": {"interval": {"hours": 1}}}),
    )
    .await;
    f.job(
        "often",
        "echo",
        json!({"schedule": {"interval": {"seconds": 2}}}),
    )
    .await;
    let op = f.operator(&["--result-backend", &backend, "--result-poll-ms", "300"]);
    let addr = eventually("the HTTP server", Duration::from_secs(30), || async {
        op.http_addr()
    })
    .await;
    let identity = eventually("a leader", Duration::from_secs(30), || async {
        op.log_text()
            .lines()
            .find(|l| l.contains("acquired leader"))
            .and_then(|l| l.split("identity=").nth(1))
            .map(|s| s.split_whitespace().next().unwrap_or("").to_string())
    })
    .await;
    eventually("runs", Duration::from_secs(60), || async {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM job_executions WHERE state = 'SUCCESS'")
                .fetch_one(&f.pool)
                .await
                .ok()?;
        (n >= 2).then_some(())
    })
    .await;
    // A job in another namespace (a row as the reconciler writes it), for namespace scoping.
    let other = format!("{}-other", f.ns);
    sqlx::query(
        "INSERT INTO scheduled_jobs (uid, namespace, name, generation, task_function, task_name,
             job_type_id, schedule_config, schedule_summary, anchor_time, args, kwargs, queue, enabled)
         SELECT 'other-uid', $1, 'elsewhere', 1, task_function, task_name, job_type_id,
                schedule_config, schedule_summary, anchor_time, args, kwargs, queue, false
         FROM scheduled_jobs WHERE name = 'hourly'",
    )
    .bind(&other)
    .execute(&f.pool)
    .await
    .expect("a row in another namespace");

    // No token, a bad token.
    let (code, body) = call(&addr, "GET", "/api/v1/jobs", None);
    assert_eq!(code, 401, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("bearer token"))
    );
    assert_eq!(call(&addr, "GET", "/api/v1/jobs", Some("nope")).0, 401);

    // The migration plan's commands, as the admin.
    let (code, status) = call(&addr, "GET", "/api/v1/scheduler/status", Some(ADMIN));
    assert_eq!(code, 200, "{status}");
    assert_eq!(status["leaderInstance"], identity.as_str());
    let (code, jobs) = call(&addr, "GET", "/api/v1/jobs", Some(ADMIN));
    assert_eq!(code, 200);
    let names: Vec<String> = jobs["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|j| {
            format!(
                "{}/{}",
                j["namespace"].as_str().unwrap_or(""),
                j["name"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert!(
        names.contains(&format!("{}/often", f.ns)) && names.contains(&format!("{other}/elsewhere")),
        "{names:?}"
    );
    let often = jobs["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .find(|j| j["name"] == "often")
        .expect("often")
        .clone();
    assert!(
        often["lastRunTime"].is_string() && often["nextRunTime"].is_string(),
        "{often}"
    );
    let job_id = often["id"].as_i64().expect("id");
    let (code, execs) = call(
        &addr,
        "GET",
        &format!("/api/v1/executions?job_id={job_id}&per_page=5"),
        Some(ADMIN),
    );
    assert_eq!(code, 200);
    let first = &execs["executions"][0];
    assert_eq!(first["job_id"], job_id);
    assert!(
        first["status"].is_string() && first.get("started_at").is_some(),
        "{first}"
    );
    assert_eq!(execs["per_page"], 5);
    assert_eq!(
        call(&addr, "GET", "/api/v1/job-types", Some(ADMIN)).1["job_types"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );
    let (_, tfs) = call(&addr, "GET", "/api/v1/task-functions", Some(ADMIN));
    assert!(
        tfs["task_functions"].as_array().is_some_and(|t| t
            .iter()
            .any(|t| t["task"] == "kb.echo" && t["jobCount"] == 3)),
        "{tfs}"
    );
    let (code, detail) = call(
        &addr,
        "GET",
        &format!("/api/v1/jobs/{}/often", f.ns),
        Some(ADMIN),
    );
    assert_eq!(code, 200);
    assert!(
        detail["executions"]
            .as_array()
            .is_some_and(|e| !e.is_empty())
    );
    assert_eq!(
        call(
            &addr,
            "GET",
            &format!("/api/v1/jobs/{}/nope", f.ns),
            Some(ADMIN)
        )
        .0,
        404
    );

    // The migration plan's commands verbatim (with a bearer token), under /api/v1/scheduler/.
    eventually("five executions", Duration::from_secs(60), || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM job_executions")
            .fetch_one(&f.pool)
            .await
            .ok()?;
        (n >= 5).then_some(())
    })
    .await;
    let leader = plan_command(
        &addr,
        ADMIN,
        r#"curl -s -H "Authorization: Bearer $T" http://$KB/api/v1/scheduler/status | jq '.leaderInstance'"#,
    );
    assert_eq!(jq_stream(&leader), vec![json!(identity)]);
    let last_runs = jq_stream(&plan_command(
        &addr,
        ADMIN,
        r#"curl -s -H "Authorization: Bearer $T" http://$KB/api/v1/scheduler/jobs | jq '.jobs[].lastRunTime'"#,
    ));
    // hourly, often (ns) and elsewhere (other), in (namespace, name) order.
    assert_eq!(last_runs.len(), 3, "{last_runs:?}");
    assert!(
        last_runs[0].is_null() || last_runs[0].is_string(),
        "{last_runs:?}"
    );
    let often_last = last_runs[1].as_str().expect("often has a lastRunTime");
    let often_last = chrono::DateTime::parse_from_rfc3339(often_last).expect("an RFC 3339 time");
    let db_last: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        "SELECT max(e.scheduled_for) FROM job_executions e JOIN scheduled_jobs j ON j.id = e.job_id
         WHERE j.name = 'often'",
    )
    .fetch_one(&f.pool)
    .await
    .expect("often's runs");
    assert!(often_last <= db_last, "{often_last} after {db_last}");
    assert_eq!(
        last_runs[2],
        Value::Null,
        "elsewhere never ran: {last_runs:?}"
    );
    let next_runs = jq_stream(&plan_command(
        &addr,
        ADMIN,
        r#"curl -s -H "Authorization: Bearer $T" http://$KB/api/v1/scheduler/jobs | jq '.jobs[].nextRunTime'"#,
    ));
    assert!(next_runs[1].is_string(), "{next_runs:?}");
    let rows = jq_stream(&plan_command(
        &addr,
        ADMIN,
        r#"curl -s -H "Authorization: Bearer $T" 'http://$KB/api/v1/scheduler/executions?per_page=5' | jq '.executions[] | {job_id, status, started_at}'"#,
    ));
    assert_eq!(rows.len(), 5, "{rows:?}");
    let ours: Vec<Value> = jobs["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .filter(|j| j["namespace"] == f.ns.as_str())
        .map(|j| j["id"].clone())
        .collect();
    let mut started = 0;
    for row in &rows {
        let keys: Vec<&str> = row
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, ["job_id", "status", "started_at"], "{row}");
        assert!(
            ours.contains(&row["job_id"]),
            "not a job of the test: {row}"
        );
        assert!(row["status"].is_string(), "{row}");
        // A start the worker reported is the one stored for that run.
        if let Some(at) = row["started_at"].as_str() {
            let at = chrono::DateTime::parse_from_rfc3339(at).expect("an RFC 3339 time");
            let stored: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM job_executions WHERE job_id = $1 AND started_at = $2",
            )
            .bind(row["job_id"].as_i64())
            .bind(at)
            .fetch_one(&f.pool)
            .await
            .expect("count");
            assert_eq!(stored, 1, "{row}");
            started += 1;
        }
    }
    assert!(started > 0, "no run with a start among {rows:?}");
    let one_job = jq_stream(&plan_command(
        &addr,
        ADMIN,
        &format!(
            r#"curl -s -H "Authorization: Bearer $T" 'http://$KB/api/v1/scheduler/executions?page=2&per_page=2&job_id={job_id}' | jq '.executions[] | {{job_id, status, started_at}}'"#
        ),
    ));
    assert_eq!(one_job.len(), 2, "{one_job:?}");
    // job-types and task-functions: the same answer under both paths.
    for (plan, alias) in [
        ("/api/v1/scheduler/job-types", "/api/v1/job-types"),
        ("/api/v1/scheduler/task-functions", "/api/v1/task-functions"),
    ] {
        let printed = jq_stream(&plan_command(
            &addr,
            ADMIN,
            &format!(r#"curl -s -H "Authorization: Bearer $T" http://$KB{plan} | jq ."#),
        ));
        let (code, body) = call(&addr, "GET", alias, Some(ADMIN));
        assert_eq!(code, 200);
        assert_eq!(printed, vec![body], "{plan} and {alias} differ");
    }
    // The same authentication and scoping as the old paths.
    for path in [
        "/api/v1/scheduler/jobs",
        "/api/v1/scheduler/executions",
        "/api/v1/scheduler/job-types",
        "/api/v1/scheduler/task-functions",
    ] {
        assert_eq!(call(&addr, "GET", path, None).0, 401, "{path}");
    }
    let (code, jobs) = call(&addr, "GET", "/api/v1/scheduler/jobs", Some(READER));
    assert_eq!(code, 200, "{jobs}");
    assert_eq!(jobs["total"], 2);
    assert_eq!(
        call(
            &addr,
            "GET",
            "/api/v1/scheduler/executions?per_page=501",
            Some(ADMIN)
        )
        .0,
        400
    );

    // Bad paging.
    for q in [
        "per_page=0",
        "per_page=501",
        "page=abc",
        "page=0",
        "job_id=x",
        "status=BOGUS",
    ] {
        let (code, body) = call(
            &addr,
            "GET",
            &format!("/api/v1/executions?{q}"),
            Some(ADMIN),
        );
        assert_eq!(code, 400, "{q}: {body}");
        assert!(body["error"].is_string());
    }

    // The reader sees its namespace only and cannot trigger.
    let (code, jobs) = call(&addr, "GET", "/api/v1/jobs", Some(READER));
    assert_eq!(code, 200, "{jobs}");
    assert_eq!(jobs["canPatch"], json!([]), "{jobs}");
    let (_, edited) = call(&addr, "GET", "/api/v1/jobs", Some(EDITOR));
    assert_eq!(edited["canPatch"], json!([f.ns]), "{edited}");
    assert!(
        jobs["jobs"]
            .as_array()
            .expect("jobs")
            .iter()
            .all(|j| j["namespace"] == f.ns.as_str())
    );
    assert_eq!(jobs["total"], 2);
    let (code, execs) = call(&addr, "GET", "/api/v1/executions", Some(READER));
    assert_eq!(code, 200);
    assert!(
        execs["executions"]
            .as_array()
            .expect("executions")
            .iter()
            .all(|e| e["namespace"] == f.ns.as_str())
    );
    assert_eq!(
        call(
            &addr,
            "GET",
            &format!("/api/v1/jobs?namespace={other}"),
            Some(READER)
        )
        .0,
        403
    );
    assert_eq!(
        call(
            &addr,
            "GET",
            &format!("/api/v1/jobs/{other}/elsewhere"),
            Some(READER)
        )
        .0,
        403
    );
    assert_eq!(
        call(
            &addr,
            "POST",
            &format!("/api/v1/jobs/{}/hourly/trigger", f.ns),
            Some(READER)
        )
        .0,
        403
    );

    // The editor triggers in its namespace (a recorded manual run), not elsewhere.
    let (code, body) = call(
        &addr,
        "POST",
        &format!("/api/v1/jobs/{}/hourly/trigger", f.ns),
        Some(EDITOR),
    );
    assert_eq!(code, 202, "{body}");
    eventually("the triggered run", Duration::from_secs(30), || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM job_executions e JOIN scheduled_jobs j ON j.id = e.job_id
             WHERE j.name = 'hourly' AND e.trigger = 'manual' AND e.state = 'SUCCESS'",
        )
        .fetch_one(&f.pool)
        .await
        .ok()?;
        (n == 1).then_some(())
    })
    .await;
    assert_eq!(
        call(
            &addr,
            "POST",
            &format!("/api/v1/jobs/{other}/elsewhere/trigger"),
            Some(EDITOR)
        )
        .0,
        403
    );
    // Conditional GETs (the dashboard's live pages): an unchanged answer is a bodiless 304, a
    // changed one a 200 with a new ETag.
    let job = format!("/api/v1/jobs/{}/often", f.ns);
    let (code, etag, len) = conditional_get(&addr, &job, ADMIN, None);
    assert_eq!(code, 200);
    assert!(etag.starts_with('"') && len > 0, "{etag}");
    let (code, again, len) = conditional_get(&addr, &job, ADMIN, Some(&etag));
    assert_eq!((code, len), (304, 0), "unchanged");
    assert_eq!(again, etag);
    assert_eq!(
        conditional_get(&addr, &job, ADMIN, Some("\"other\"")).0,
        200
    );
    // `often` runs every few seconds: its page changes.
    eventually("a changed job page", Duration::from_secs(30), || async {
        let (code, newer, _) = conditional_get(&addr, &job, ADMIN, Some(&etag));
        (code == 200 && newer != etag).then_some(())
    })
    .await;
    // A reader's 403 stays a 403 whatever it names.
    assert_eq!(
        conditional_get(
            &addr,
            &format!("/api/v1/jobs/{other}/elsewhere"),
            READER,
            Some("*")
        )
        .0,
        403
    );
    suspend_and_unsuspend(&f, &addr).await;
    revoke_refusals(&f, &addr).await;
    drop(op);
    f.finish().await;
}

#[tokio::test]
#[ignore = "needs the local control plane and services (make test)"]
async fn api_refuses_failing_sources_and_shows_readers_only_their_task_functions() {
    let env = common::env();
    let f = fixture("kbt-apil", format!("{}/0", env.redis_url)).await;
    f.grant_api_users();
    let other = format!("{}-other", f.ns);
    // Usable from the reader's namespace only, from another one only, from both, from any.
    f.task_function_with("mine", "kb.echo", json!({"allowedNamespaces": [f.ns]}))
        .await;
    f.task_function_with("theirs", "kb.echo", json!({"allowedNamespaces": [other]}))
        .await;
    f.task_function_with(
        "shared",
        "kb.echo",
        json!({"allowedNamespaces": [f.ns, other]}),
    )
    .await;
    f.task_function("open", "kb.echo").await;
    f.job(
        "hourly",
        "shared",
        json!({"schedule": {"interval": {"hours": 1}}}),
    )
    .await;
    let op = f.operator(&[]);
    let addr = eventually("the HTTP server", Duration::from_secs(30), || async {
        op.http_addr()
    })
    .await;
    eventually(
        "the job and the task functions stored",
        Duration::from_secs(60),
        || async {
            let (jobs, tfs): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM scheduled_jobs), (SELECT count(*) FROM task_functions)",
        )
        .fetch_one(&f.pool)
        .await
        .ok()?;
            (jobs == 1 && tfs == 4).then_some(())
        },
    )
    .await;
    // A job of the other namespace using `shared` (a row as the reconciler writes it).
    sqlx::query(
        "INSERT INTO scheduled_jobs (uid, namespace, name, generation, task_function, task_name,
             job_type_id, schedule_config, schedule_summary, anchor_time, args, kwargs, queue, enabled)
         SELECT 'other-uid', $1, 'elsewhere', 1, task_function, task_name, job_type_id,
                schedule_config, schedule_summary, anchor_time, args, kwargs, queue, false
         FROM scheduled_jobs WHERE name = 'hourly'",
    )
    .bind(&other)
    .execute(&f.pool)
    .await
    .expect("a row in another namespace");

    // The admin (cluster-wide list) sees every TaskFunction as stored.
    let (code, body) = call(&addr, "GET", "/api/v1/task-functions", Some(ADMIN));
    assert_eq!(code, 200, "{body}");
    let all = task_functions_by_name(&body, &f.id);
    assert_eq!(
        all.keys().map(String::as_str).collect::<Vec<_>>(),
        ["mine", "open", "shared", "theirs"],
        "{body}"
    );
    assert_eq!(all["theirs"], (json!([other]), json!(0)));
    assert_eq!(all["shared"], (json!([f.ns, other]), json!(2)));

    // The reader of one namespace: not `theirs`, and nothing about the other namespace.
    let (code, body) = call(&addr, "GET", "/api/v1/task-functions", Some(READER));
    assert_eq!(code, 200, "{body}");
    let seen = task_functions_by_name(&body, &f.id);
    assert_eq!(
        seen.keys().map(String::as_str).collect::<Vec<_>>(),
        ["mine", "open", "shared"],
        "{body}"
    );
    assert_eq!(seen["shared"], (json!([f.ns]), json!(1)));
    assert_eq!(seen["mine"], (json!([f.ns]), json!(0)));
    assert_eq!(seen["open"], (json!([]), json!(0)));
    assert!(!body.to_string().contains(&other), "{body}");

    // Failed authentications from one address: 401 up to the limit, then 429 with Retry-After
    // and no TokenReview, for any token not already known valid.
    assert_eq!(call(&addr, "GET", "/api/v1/jobs", Some(ADMIN)).0, 200);
    for i in 0..10 {
        let (code, body) = call(&addr, "GET", "/api/v1/jobs", Some(&format!("garbage-{i}")));
        assert_eq!(code, 401, "garbage token {i}: {body}");
    }
    for token in ["garbage-10", "garbage-0", EDITOR] {
        let (code, retry) = status_and_retry_after(&addr, "/api/v1/jobs", token);
        assert_eq!(code, 429, "{token}");
        let secs: u64 = retry.parse().expect("a Retry-After in seconds");
        assert!((1..=60).contains(&secs), "Retry-After {secs}");
    }
    let (code, body) = call(&addr, "GET", "/api/v1/jobs", Some("garbage-11"));
    assert_eq!(code, 429);
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("too many failed authentications")),
        "{body}"
    );
    // The admin's token, reviewed moments ago, is still served from the cache.
    let (code, body) = call(&addr, "GET", "/api/v1/jobs", Some(ADMIN));
    assert_eq!(code, 200, "{body}");
    drop(op);
    f.finish().await;
}

#[tokio::test]
#[ignore = "needs the local control plane and services (make test)"]
async fn api_tokens_must_be_for_the_configured_audience() {
    use k8s_openapi::api::{
        authentication::v1::{TokenRequest, TokenRequestSpec},
        core::v1::ServiceAccount,
    };
    use kube::api::{Api, PostParams};

    let env = common::env();
    let f = fixture("kbt-apiaud", format!("{}/0", env.redis_url)).await;
    f.grant_api_users();
    // A ServiceAccount that may read ScheduledJobs in the test namespace.
    ok(&common::kubectl_stdin(
        &["apply", "-n", &f.ns, "-f", "-"],
        r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: dashboard}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: dashboard-reads}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: sj-read}
subjects: [{kind: ServiceAccount, name: dashboard}]
"#,
    ));
    let token_for = |audiences: &[&str]| {
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: Some(audiences.iter().map(|a| a.to_string()).collect())
                    .filter(|a: &Vec<String>| !a.is_empty()),
                expiration_seconds: Some(600),
                ..Default::default()
            }),
            ..Default::default()
        };
        let sas = Api::<ServiceAccount>::namespaced(f.client.clone(), &f.ns);
        async move {
            sas.create_token_request("dashboard", &PostParams::default(), &request)
                .await
                .expect("a TokenRequest")
                .status
                .and_then(|s| s.token)
                .expect("a token")
        }
    };
    let for_kube_beat = token_for(&["kube-beat"]).await;
    // No audience asked for: the apiserver's own (its issuer, in the test control plane).
    let for_apiserver = token_for(&[]).await;
    let op = f.operator(&["--api-audiences", "kube-beat"]);
    let addr = eventually("the HTTP server", Duration::from_secs(30), || async {
        op.http_addr()
    })
    .await;
    let path = format!("/api/v1/jobs?namespace={}", f.ns);
    let (code, body) = call(&addr, "GET", &path, Some(&for_kube_beat));
    assert_eq!(code, 200, "{body}");
    // A token for the apiserver: the apiserver itself says no to the review (service-account
    // tokens are audience-aware), so this is "not accepted"; kube-beat's own check of the
    // returned audiences (unit-tested) covers authenticators that answer otherwise.
    let (code, body) = call(&addr, "GET", &path, Some(&for_apiserver));
    assert_eq!(code, 401, "{body}");
    assert_eq!(body["error"], "the token was not accepted", "{body}");
    // Static tokens are valid for the apiserver's audiences only: refused here.
    let (code, body) = call(&addr, "GET", &path, Some(ADMIN));
    assert_eq!(code, 401, "{body}");
    drop(op);
    f.finish().await;
}

/// Scheduled runs of `job` so far.
async fn scheduled_runs(pool: &sqlx::PgPool, job: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM job_executions e JOIN scheduled_jobs j ON j.id = e.job_id
         WHERE j.name = $1 AND e.trigger = 'schedule'",
    )
    .bind(job)
    .fetch_one(pool)
    .await
    .expect("runs")
}

/// Wait until Postgres holds `job` as (un)suspended.
async fn stored_suspended(pool: &sqlx::PgPool, job: &str, to: bool) {
    eventually("the stored suspend", Duration::from_secs(30), || async {
        let (suspended, next): (bool, Option<chrono::DateTime<chrono::Utc>>) = sqlx::query_as(
            "SELECT suspended, next_run_at FROM scheduled_jobs WHERE name = $1 AND deleted_at IS NULL",
        )
        .bind(job)
        .fetch_one(pool)
        .await
        .ok()?;
        (suspended == to && next.is_some() != to).then_some(())
    })
    .await;
}

/// The job's object, as kubectl reads it.
fn object(ns: &str, job: &str) -> Value {
    let out = common::kubectl(&["get", "scheduledjob", job, "-n", ns, "-o", "json"]);
    serde_json::from_str(&ok(&out)).expect("object JSON")
}

/// `POST /api/v1/executions/{id}/revoke` refuses what it cannot do, each with its status: no
/// token 401, a bad id or `terminate` 400, a reader 403, a run of a job the caller may not read
/// 404 (as an id that does not exist), an ended run 409, and records nothing; the admin's revoke
/// of a sent run is recorded with its requester. (A revoke that stops a running task:
/// tests/dashboard.rs, through the page.)
async fn revoke_refusals(f: &common::Fixture, addr: &str) {
    let revoke = |id: &str| format!("/api/v1/executions/{id}/revoke");
    let ended: i64 = sqlx::query_scalar(
        "SELECT e.id FROM job_executions e JOIN scheduled_jobs j ON j.id = e.job_id
         WHERE j.namespace = $1 AND e.state = 'SUCCESS' ORDER BY e.id LIMIT 1",
    )
    .bind(&f.ns)
    .fetch_one(&f.pool)
    .await
    .expect("an ended run");
    let ended = ended.to_string();
    assert_eq!(call(addr, "POST", &revoke(&ended), None).0, 401);
    assert_eq!(call(addr, "POST", &revoke("x1"), Some(EDITOR)).0, 400);
    let (code, body) = call(
        addr,
        "POST",
        &format!("{}?terminate=yes", revoke(&ended)),
        Some(EDITOR),
    );
    assert_eq!(code, 400, "{body}");
    assert_eq!(call(addr, "POST", &revoke(&ended), Some(READER)).0, 403);
    assert_eq!(
        call(addr, "POST", &revoke("999999999"), Some(EDITOR)).0,
        404
    );
    // A sent, unfinished run of the job in the other namespace (written here: that job's
    // schedule never comes due in the test). The reader and the editor may not read that job,
    // so for them it is not there; the admin's revoke is sent and recorded, and the run keeps
    // its state until the worker's answer comes through the tracker.
    let elsewhere: i64 = sqlx::query_scalar(
        "INSERT INTO job_executions (job_id, slot_key, task_id, scheduled_for, trigger, state,
                                     dispatched_at, leader_epoch)
         SELECT id, 'kbt-revoke', gen_random_uuid()::text, now(), 'manual', 'DISPATCHED', now(), 0
         FROM scheduled_jobs WHERE name = 'elsewhere' AND namespace <> $1 RETURNING id",
    )
    .bind(&f.ns)
    .fetch_one(&f.pool)
    .await
    .expect("a run of the other namespace's job");
    let elsewhere = elsewhere.to_string();
    for who in [READER, EDITOR] {
        let (code, body) = call(addr, "POST", &revoke(&elsewhere), Some(who));
        assert_eq!(code, 404, "{body}");
    }
    let (code, body) = call(addr, "POST", &revoke(&elsewhere), Some(ADMIN));
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["revokedBy"], "kbt-api-admin", "{body}");
    assert_eq!(body["state"], "DISPATCHED", "{body}");
    assert_eq!(body["terminate"], false, "{body}");
    let (by, at): (Option<String>, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT revoked_by, revoke_requested_at FROM job_executions WHERE id = $1")
            .bind(elsewhere.parse::<i64>().expect("id"))
            .fetch_one(&f.pool)
            .await
            .expect("the recorded request");
    assert_eq!(by.as_deref(), Some("kbt-api-admin"));
    assert!(at.is_some());
    let (code, body) = call(
        addr,
        "POST",
        &format!("{}?terminate=true", revoke(&ended)),
        Some(EDITOR),
    );
    assert_eq!(code, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("SUCCESS")),
        "{body}"
    );
    let recorded: Option<String> =
        sqlx::query_scalar("SELECT revoked_by FROM job_executions WHERE id = $1")
            .bind(ended.parse::<i64>().expect("id"))
            .fetch_one(&f.pool)
            .await
            .expect("revoked_by");
    assert_eq!(recorded, None, "a refused revoke recorded a requester");
}

/// Disable and enable (issue #29): `spec.suspend` by server-side apply under
/// `kube-beat-dashboard` (API) and `kube-beat-cli`, `patch` needed; no scheduled run while
/// suspended, the next slot after unsuspending and not the missed ones; the two kube-beat
/// managers change each other's value without asking; a job whose `spec.suspend` another field
/// manager owns, or that a GitOps tool manages, is answered 409 naming them until confirmed.
async fn suspend_and_unsuspend(f: &common::Fixture, addr: &str) {
    let path = |verb: &str| format!("/api/v1/jobs/{}/often/{verb}", f.ns);
    let confirmed = |verb: &str| format!("{}?confirm=true", path(verb));
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_kube-beat"))
            .args(args)
            .args(["-n", &f.ns])
            .output()
            .expect("kube-beat");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let owner = |obj: &Value, manager: &str| {
        obj["metadata"]["managedFields"]
            .as_array()
            .expect("managedFields")
            .iter()
            .find(|m| m["manager"] == manager && m["fieldsV1"]["f:spec"]["f:suspend"].is_object())
            .cloned()
    };
    assert_eq!(call(addr, "POST", &path("suspend"), Some(READER)).0, 403);
    // The job was created with `suspend: false` by a client without a field manager name: the
    // apiserver records it as `unknown`, owning the field. Refused until confirmed.
    let (code, body) = call(addr, "POST", &path("suspend"), Some(EDITOR));
    assert_eq!(code, 409, "{body}");
    assert_eq!(
        body["managedBy"],
        json!(["field manager unknown"]),
        "{body}"
    );
    assert_eq!(
        object(&f.ns, "often")["spec"]["suspend"],
        false,
        "changed unconfirmed"
    );
    assert_eq!(
        call(
            addr,
            "POST",
            &format!("{}?confirm=maybe", path("suspend")),
            Some(EDITOR)
        )
        .0,
        400
    );
    let (code, body) = call(addr, "POST", &confirmed("suspend"), Some(EDITOR));
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["suspend"], true);
    assert_eq!(body["changed"], true);
    assert_eq!(body["overrode"], json!(["field manager unknown"]));
    assert_eq!(body["fieldManager"], "kube-beat-dashboard");
    let obj = object(&f.ns, "often");
    assert_eq!(obj["spec"]["suspend"], true, "{obj}");
    let entry = owner(&obj, "kube-beat-dashboard").unwrap_or_else(|| panic!("no entry: {obj}"));
    assert_eq!(entry["operation"], "Apply");
    assert!(
        owner(&obj, "unknown").is_none(),
        "the field was taken over: {obj}"
    );
    stored_suspended(&f.pool, "often", true).await;
    // Suspended: its 2 s slots are not dispatched.
    let before = scheduled_runs(&f.pool, "often").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        scheduled_runs(&f.pool, "often").await,
        before,
        "ran while suspended"
    );
    // Asked again: nothing to change, nothing written.
    let (code, body) = call(addr, "POST", &path("suspend"), Some(EDITOR));
    assert_eq!(
        (code, body["changed"].clone()),
        (200, json!(false)),
        "{body}"
    );

    // The CLI changes what the dashboard set, and the other way round, without asking.
    let asked = chrono::Utc::now();
    let (done, text) = cli(&["unsuspend", "often"]);
    assert!(
        done && text.contains("scheduledjob often unsuspended"),
        "{text}"
    );
    let obj = object(&f.ns, "often");
    assert_eq!(obj["spec"]["suspend"], false);
    assert!(owner(&obj, "kube-beat-cli").is_some(), "{obj}");
    stored_suspended(&f.pool, "often", false).await;
    // Its next run is the next slot, not one of those missed while suspended.
    let next: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        "SELECT next_run_at FROM scheduled_jobs WHERE name = 'often' AND deleted_at IS NULL",
    )
    .fetch_one(&f.pool)
    .await
    .expect("next run");
    assert!(
        next > asked - chrono::Duration::seconds(1),
        "replayed: {next} before {asked}"
    );
    eventually("runs again", Duration::from_secs(30), || async {
        (scheduled_runs(&f.pool, "often").await > before).then_some(())
    })
    .await;
    let (done, text) = cli(&["unsuspend", "often"]);
    assert!(done && text.contains("already unsuspended"), "{text}");
    let (code, body) = call(addr, "POST", &path("suspend"), Some(EDITOR));
    assert_eq!(
        (code, body["changed"].clone()),
        (200, json!(true)),
        "{body}"
    );
    let (code, body) = call(addr, "POST", &path("unsuspend"), Some(EDITOR));
    assert_eq!(
        (code, body["changed"].clone()),
        (200, json!(true)),
        "{body}"
    );
    assert_eq!(object(&f.ns, "often")["spec"]["suspend"], false);

    // Managed by Argo CD (its tracking annotation): refused until confirmed, by both.
    ok(&common::kubectl(&[
        "annotate",
        "scheduledjob",
        "often",
        "-n",
        &f.ns,
        "argocd.argoproj.io/tracking-id=app:kubebeat.io/ScheduledJob:team/often",
    ]));
    let (code, body) = call(addr, "POST", &path("suspend"), Some(EDITOR));
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["managedBy"], json!(["Argo CD"]), "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("confirm")),
        "{body}"
    );
    let (done, text) = cli(&["suspend", "often"]);
    assert!(
        !done && text.contains("Argo CD") && text.contains("--confirm"),
        "{text}"
    );
    assert_eq!(
        object(&f.ns, "often")["spec"]["suspend"],
        false,
        "changed unconfirmed"
    );
    let (done, text) = cli(&["suspend", "often", "--confirm"]);
    assert!(
        done && text.contains("scheduledjob often suspended"),
        "{text}"
    );
    stored_suspended(&f.pool, "often", true).await;
    let (code, body) = call(addr, "POST", &confirmed("unsuspend"), Some(EDITOR));
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["overrode"], json!(["Argo CD"]));
    assert_eq!(object(&f.ns, "often")["spec"]["suspend"], false);
    stored_suspended(&f.pool, "often", false).await;
    // Not a job: 404.
    let (code, _) = call(
        addr,
        "POST",
        &format!("/api/v1/jobs/{}/nope/suspend", f.ns),
        Some(EDITOR),
    );
    assert_eq!(code, 404);
}
