//! Objects that may not deserialize (stored against an older schema): reported on the object
//! itself, never breaking the watch for the others.

use kube::{Resource, core::DeserializeGuard};

use super::validate;

pub type Guarded<K> = DeserializeGuard<K>;

/// The metadata of a guarded object, and the object itself when it deserialized.
pub fn split<K: Resource>(obj: &Guarded<K>) -> (&kube::api::ObjectMeta, Option<&K>) {
    match &obj.0 {
        Ok(o) => (o.meta(), Some(o)),
        Err(invalid) => (&invalid.metadata, None),
    }
}

/// The condition for an object that does not even deserialize.
pub fn schema_mismatch(kind: &str, error: &str) -> validate::Invalid {
    validate::Invalid {
        reason: validate::Reason::InvalidSpec,
        message: format!("the object does not match the {kind} schema: {error}"),
    }
}
