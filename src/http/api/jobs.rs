//! `GET /api/v1/jobs` (the jobs list with its filters, order and pages, and where the caller
//! may patch) and `GET /api/v1/activity` (the front page's chart of the last hour).

use std::{collections::HashMap, sync::Arc};

use axum::{
    Json,
    extract::{Query, State},
};
use serde_json::{Value, json};

use super::{
    ApiError, ApiState, EXECUTION_STATES, MAX_REVIEWS_PER_REQUEST, bad_request, paging, readable,
    visible_namespaces,
};
use crate::{http::auth::Credentials, store::views};

/// The front page's chart: runs per minute by outcome and the dispatch lag over the last hour
/// (`minutes`, 1 to 180), from Postgres (it works without Prometheus), in the namespaces the
/// caller may read.
pub(super) async fn activity(
    State(s): State<Arc<ApiState>>,
    creds: Credentials,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let caller = s.auth.authenticate(&creds).await?;
    let minutes = match q.get("minutes") {
        None => 60,
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|m| (1..=180).contains(m))
            .ok_or_else(|| {
                bad_request(format!(
                    "minutes must be an integer from 1 to 180, not {v:?}"
                ))
            })?,
    };
    let namespaces = readable(&s, &caller, q.get("namespace").map(String::as_str)).await?;
    let rows = views::activity(&s.pool, namespaces.as_deref(), minutes).await?;
    let runs: i64 = rows
        .iter()
        .map(|m| m.succeeded + m.failed + m.unfinished + m.other)
        .sum();
    Ok(Json(json!({
        "minutes": minutes,
        "activity": rows,
        "runs": runs,
        "maxRuns": views::ACTIVITY_MAX_RUNS,
    })))
}

pub(super) async fn jobs(
    State(s): State<Arc<ApiState>>,
    creds: Credentials,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let caller = s.auth.authenticate(&creds).await?;
    let (page, per_page) = paging(&q)?;
    let namespaces = readable(&s, &caller, q.get("namespace").map(String::as_str)).await?;
    let filter = job_filter(&q, namespaces.as_deref())?;
    let rows = views::jobs(&s.pool, &filter, per_page, (page - 1) * per_page).await?;
    let total = views::count_jobs(&s.pool, &filter).await?;
    // Where the table may offer Disable / Enable: the page's namespaces the caller may patch
    // jobs in (within the review budget; one not reviewed yet shows no button this time).
    let mut on_page: Vec<String> = rows.iter().map(|j| j.namespace.clone()).collect();
    on_page.sort();
    on_page.dedup();
    let can_patch: Vec<String> = if s.auth.allowed(&caller, "patch", "", "").await? {
        on_page
    } else {
        visible_namespaces(
            on_page,
            MAX_REVIEWS_PER_REQUEST,
            |ns| s.auth.cached(&caller, "patch", ns, ""),
            |ns| {
                let (s, caller) = (&s, &caller);
                async move { s.auth.allowed(caller, "patch", &ns, "").await }
            },
        )
        .await?
        .0
    };
    Ok(Json(
        json!({"jobs": rows, "page": page, "per_page": per_page, "total": total,
               "canPatch": can_patch}),
    ))
}

/// The jobs list's filters and order from the query (SPEC §8 keeps `namespace`, `page` and
/// `per_page`; the dashboard's table adds the rest): `q` (text in the name), `task_function`,
/// `last_status` (a state, or `NONE`), `health` (`True`, `False`, `Unknown`), `suspended`
/// (`true`, `false`) and `sort` (a field, `-` first for descending). Each is checked: a bad
/// value is a 400 naming what is allowed, never part of the SQL.
fn job_filter<'a>(
    q: &'a HashMap<String, String>,
    namespaces: Option<&'a [String]>,
) -> Result<views::JobFilter<'a>, ApiError> {
    /// A Kubernetes name is at most 253 characters: longer text can match nothing.
    const MAX_TEXT: usize = 253;
    let text = |key: &str| -> Result<Option<&'a str>, ApiError> {
        match q.get(key).map(String::as_str).filter(|v| !v.is_empty()) {
            Some(v) if v.chars().count() > MAX_TEXT => Err(bad_request(format!(
                "{key} is at most {MAX_TEXT} characters"
            ))),
            v => Ok(v),
        }
    };
    let one_of = |key: &str, allowed: &[&str]| -> Result<Option<&'a str>, ApiError> {
        match q.get(key).map(String::as_str).filter(|v| !v.is_empty()) {
            Some(v) if !allowed.contains(&v) => Err(bad_request(format!(
                "{key} must be one of {}, not {v:?}",
                allowed.join(", ")
            ))),
            v => Ok(v),
        }
    };
    let mut states = EXECUTION_STATES.to_vec();
    states.push("NONE");
    let suspended = one_of("suspended", &["true", "false"])?.map(|v| v == "true");
    let sort = match q.get("sort").map(String::as_str).filter(|v| !v.is_empty()) {
        None => views::JobSort::default(),
        Some(v) => views::JobSort::parse(v).ok_or_else(|| {
            bad_request(format!(
                "sort must be one of {} (a leading - for descending), not {v:?}",
                views::JobSort::KEYS
            ))
        })?,
    };
    Ok(views::JobFilter {
        namespaces,
        text: text("q")?,
        task_function: text("task_function")?,
        health: one_of("health", &["True", "False", "Unknown"])?,
        suspended,
        last_status: one_of("last_status", &states)?,
        sort,
    })
}
