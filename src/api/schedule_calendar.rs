//! The `ScheduleCalendar` custom resource: days and windows in which ScheduledJobs that reference
//! it do not run (holidays, change freezes), or, with `include`, the only days they run.

// clippy reads the repeated `printcolumn(type_ = ...)` keys of the derive as duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::schema;

/// Most entries in `exclude`, and in `include`.
pub const MAX_CALENDAR_ENTRIES: usize = 1000;
/// Longest `reason`, in characters.
pub const MAX_REASON_LEN: usize = 256;

/// Exclusion and inclusion days and windows for the ScheduledJobs that name it in
/// `spec.calendars`. Cluster-scoped: owned by the platform team. A slot is skipped (recorded
/// SKIPPED with reason `Calendar: <name>: <reason>`) when it matches an `exclude` entry, or when
/// `include` is not empty and it matches no `include` entry.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "kubebeat.io",
    version = "v1alpha1",
    kind = "ScheduleCalendar",
    plural = "schedulecalendars",
    shortname = "cal",
    status = "ScheduleCalendarStatus",
    derive = "PartialEq",
    doc = "Days and windows in which the ScheduledJobs that reference it do not run (exclude), or the only ones they run in (include).",
    printcolumn(
        name = "TimeZone",
        type_ = "string",
        json_path = ".spec.timeZone",
        description = "The zone dates and weekdays are read in (default UTC)"
    ),
    printcolumn(
        name = "Jobs",
        type_ = "integer",
        json_path = ".status.jobCount",
        description = "ScheduledJobs referencing it"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleCalendarSpec {
    /// IANA time zone in which `date`, `dates` and `weekdays` are read, e.g. `Europe/Berlin`:
    /// a slot matches when its local date in this zone does. Default `UTC`. At most 64
    /// characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: Option<String>,

    /// Slots matching any of these entries are skipped. At most 1000 entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub exclude: Vec<CalendarEntry>,

    /// When not empty, a slot runs only if it matches one of these entries (and no `exclude`
    /// entry): business-day calendars. At most 1000 entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub include: Vec<CalendarEntry>,

    /// Free text for humans, at most 1024 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
}

/// One day, range of days, set of weekdays or window of time: exactly one of `date`, `dates`,
/// `weekdays` or `window`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("oneOf" = [
    {"required": ["date"]},
    {"required": ["dates"]},
    {"required": ["weekdays"]},
    {"required": ["window"]}
]))]
pub struct CalendarEntry {
    /// One local day, `YYYY-MM-DD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 10, max = 10),
        regex(pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
    )]
    pub date: Option<String>,

    /// A range of local days, both ends included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dates: Option<DateRange>,

    /// Days of the week: English names, case-insensitive, full (`Monday`) or short (`Mon`).
    /// At most 7.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 7), inner(length(min = 3, max = 9)))]
    pub weekdays: Option<Vec<String>>,

    /// A window of time (e.g. a change freeze): from `from` (included) to `to` (excluded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<TimeWindow>,

    /// Why, shown in the skipped run: `Calendar: <name>: <reason>`. At most 256 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub reason: Option<String>,
}

/// Local days `from` to `to`, both included, `YYYY-MM-DD`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct DateRange {
    /// First day, `YYYY-MM-DD`.
    #[schemars(
        length(min = 10, max = 10),
        regex(pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
    )]
    pub from: String,
    /// Last day (included), `YYYY-MM-DD`; at most 100 years after `from`.
    #[schemars(
        length(min = 10, max = 10),
        regex(pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
    )]
    pub to: String,
}

/// Instants `from` (included) to `to` (excluded), RFC 3339.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct TimeWindow {
    /// Start (included), RFC 3339, e.g. `2026-12-20T00:00:00+01:00`.
    #[schemars(extend("format" = "date-time"), length(max = 64))]
    pub from: String,
    /// End (excluded), RFC 3339; after `from`, at most 100 years later.
    #[schemars(extend("format" = "date-time"), length(max = 64))]
    pub to: String,
}

/// What kube-beat observed. Written only by the leader.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleCalendarStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`: the spec is valid and stored (reason `Stored`), or not (reason `InvalidSpec`,
    /// with what is wrong in the message).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<schema::Condition>,

    /// Number of ScheduledJobs referencing this calendar.
    #[serde(default)]
    pub job_count: i64,
}
