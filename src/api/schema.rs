//! Schema fragments schemars cannot derive the way a structural Kubernetes schema needs them.

use schemars::{Schema, SchemaGenerator, json_schema};

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

/// A JSON array of arbitrary values (Celery positional arguments). Bounded here in count;
/// validation bounds args and kwargs together to 64 KiB of JSON.
pub fn any_array(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "maxItems": 10000,
        "items": { "x-kubernetes-preserve-unknown-fields": true }
    })
}

/// A JSON object of arbitrary values (Celery keyword arguments).
pub fn any_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "maxProperties": 1000,
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// Extra Celery message headers: an object of arbitrary values, at most 32 (validation also
/// bounds names and the total size).
pub fn message_headers(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "maxProperties": 32,
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// `TaskFunction.spec.parameters`: `{args, kwargs}`, each a JSON Schema of the supported subset
/// (checked by validation, which names the path of what it refuses).
pub fn parameters(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "properties": {
            "args": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            "kwargs": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
        }
    })
}
