//! The JSON Schema subset of `TaskFunction.spec.parameters`: `type`, `properties`, `required`,
//! `enum`, `minimum`/`maximum`, `minLength`/`maxLength`, `items`, `additionalProperties` (and
//! `description`, ignored). Anything else is refused with its path.
//!
//! Written by hand rather than with the `jsonschema` crate: that crate compiles the whole
//! specification (two regex engines for `pattern`, big-number fractions, format checkers,
//! `$ref` resolution) for keywords this subset refuses anyway, and we still need our own walk
//! to refuse the other keywords with their path and to bound the schema's size and depth.
//! The subset is ~200 lines; its messages name the argument's path the way users write it
//! (`kwargs.limit: 5000 is greater than the maximum 1000`). Validation is one pass over the
//! instance (itself at most 64 KiB) per schema node: bounded work, no backtracking.

use serde_json::{Map, Number, Value};

/// Largest schema accepted (compact JSON).
pub const MAX_SCHEMA_BYTES: usize = 32 * 1024;
/// Deepest nesting of schemas (`properties`, `items`, `additionalProperties`) accepted.
pub const MAX_SCHEMA_DEPTH: usize = 16;
/// Longest value quoted in a message.
const MAX_QUOTED_CHARS: usize = 64;

const KEYWORDS: &str = "type, properties, required, enum, minimum, maximum, minLength, maxLength, items, additionalProperties, description";

/// One compiled schema node.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Schema {
    types: Vec<Type>,
    /// By name: looked up once per instance key (a list would make that quadratic).
    properties: std::collections::BTreeMap<String, Schema>,
    required: Vec<String>,
    enumeration: Option<Vec<Value>>,
    minimum: Option<Number>,
    maximum: Option<Number>,
    min_length: Option<u64>,
    max_length: Option<u64>,
    items: Option<Box<Schema>>,
    additional: Additional,
}

#[derive(Debug, Clone, PartialEq, Default)]
enum Additional {
    #[default]
    Any,
    Forbidden,
    Schema(Box<Schema>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Null,
    Boolean,
    Object,
    Array,
    Number,
    String,
    Integer,
}

impl Type {
    fn parse(name: &str) -> Option<Type> {
        Some(match name {
            "null" => Type::Null,
            "boolean" => Type::Boolean,
            "object" => Type::Object,
            "array" => Type::Array,
            "number" => Type::Number,
            "string" => Type::String,
            "integer" => Type::Integer,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Type::Null => "null",
            Type::Boolean => "boolean",
            Type::Object => "object",
            Type::Array => "array",
            Type::Number => "number",
            Type::String => "string",
            Type::Integer => "integer",
        }
    }

    fn admits(self, v: &Value) -> bool {
        match (self, v) {
            (Type::Null, Value::Null)
            | (Type::Boolean, Value::Bool(_))
            | (Type::Object, Value::Object(_))
            | (Type::Array, Value::Array(_))
            | (Type::Number, Value::Number(_))
            | (Type::String, Value::String(_)) => true,
            (Type::Integer, Value::Number(n)) => {
                n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
            }
            _ => false,
        }
    }
}

impl Schema {
    /// Compile `value`, found at `path` (e.g. `parameters.kwargs`), checking that it uses only
    /// the subset, is at most [`MAX_SCHEMA_BYTES`] and [`MAX_SCHEMA_DEPTH`] deep. The error
    /// names the offending schema path.
    pub fn compile(path: &str, value: &Value) -> Result<Schema, String> {
        let size = serde_json::to_vec(value)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size > MAX_SCHEMA_BYTES {
            return Err(format!(
                "{path}: the schema is {size} bytes of JSON; the limit is {MAX_SCHEMA_BYTES}"
            ));
        }
        compile_node(path, value, 1)
    }

    /// The schema's declared types (empty: any).
    pub fn types(&self) -> &[Type] {
        &self.types
    }

    /// Check `value`, found at `path` (`args`, `kwargs`): the first violation, as
    /// `<path>: <what is wrong>`.
    pub fn check(&self, path: &str, value: &Value) -> Result<(), String> {
        check_node(self, path, value).map_err(|(at, why)| format!("{at}: {why}"))
    }
}

fn compile_node(path: &str, value: &Value, depth: usize) -> Result<Schema, String> {
    if depth > MAX_SCHEMA_DEPTH {
        return Err(format!(
            "{path}: schemas are nested deeper than {MAX_SCHEMA_DEPTH} levels"
        ));
    }
    let Value::Object(map) = value else {
        return Err(format!("{path}: a schema must be an object"));
    };
    let mut s = Schema::default();
    for (key, v) in map {
        let at = format!("{path}.{key}");
        match key.as_str() {
            "description" => {
                if !v.is_string() {
                    return Err(format!("{at}: must be a string"));
                }
            }
            "type" => s.types = compile_types(&at, v)?,
            "properties" => {
                let Value::Object(props) = v else {
                    return Err(format!("{at}: must be an object"));
                };
                for (name, sub) in props {
                    let sub = compile_node(&format!("{at}.{name}"), sub, depth + 1)?;
                    s.properties.insert(name.clone(), sub);
                }
            }
            "required" => {
                let names = v
                    .as_array()
                    .ok_or_else(|| format!("{at}: must be an array"))?;
                for n in names {
                    let n = n
                        .as_str()
                        .ok_or_else(|| format!("{at}: must be an array of strings"))?;
                    s.required.push(n.to_string());
                }
            }
            "enum" => match v {
                Value::Array(values) if !values.is_empty() => {
                    s.enumeration = Some(values.clone());
                }
                _ => return Err(format!("{at}: must be a non-empty array")),
            },
            "minimum" | "maximum" => {
                let n = v
                    .as_number()
                    .ok_or_else(|| format!("{at}: must be a number"))?;
                if key == "minimum" {
                    s.minimum = Some(n.clone());
                } else {
                    s.maximum = Some(n.clone());
                }
            }
            "minLength" | "maxLength" => {
                let n = v
                    .as_u64()
                    .ok_or_else(|| format!("{at}: must be a non-negative integer"))?;
                if key == "minLength" {
                    s.min_length = Some(n);
                } else {
                    s.max_length = Some(n);
                }
            }
            "items" => s.items = Some(Box::new(compile_node(&at, v, depth + 1)?)),
            "additionalProperties" => {
                s.additional = match v {
                    Value::Bool(true) => Additional::Any,
                    Value::Bool(false) => Additional::Forbidden,
                    sub => Additional::Schema(Box::new(compile_node(&at, sub, depth + 1)?)),
                }
            }
            other => {
                return Err(format!(
                    "{path}: keyword {other:?} is not supported (supported: {KEYWORDS})"
                ));
            }
        }
    }
    if let (Some(lo), Some(hi)) = (&s.minimum, &s.maximum)
        && cmp(lo, hi) == Some(std::cmp::Ordering::Greater)
    {
        return Err(format!("{path}: minimum {lo} is greater than maximum {hi}"));
    }
    if let (Some(lo), Some(hi)) = (s.min_length, s.max_length)
        && lo > hi
    {
        return Err(format!(
            "{path}: minLength {lo} is greater than maxLength {hi}"
        ));
    }
    Ok(s)
}

fn compile_types(at: &str, v: &Value) -> Result<Vec<Type>, String> {
    let parse = |name: &Value| {
        name.as_str().and_then(Type::parse).ok_or_else(|| {
            format!(
                "{at}: {} is not a type (null, boolean, object, array, number, string, integer)",
                quote(name)
            )
        })
    };
    match v {
        Value::String(_) => Ok(vec![parse(v)?]),
        Value::Array(names) if !names.is_empty() => names.iter().map(parse).collect(),
        _ => Err(format!(
            "{at}: must be a type name or a non-empty array of them"
        )),
    }
}

/// Numbers compared exactly when both are integers, else as floats.
fn cmp(a: &Number, b: &Number) -> Option<std::cmp::Ordering> {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        return Some(x.cmp(&y));
    }
    if let (Some(x), Some(y)) = (a.as_u64(), b.as_u64()) {
        return Some(x.cmp(&y));
    }
    a.as_f64()?.partial_cmp(&b.as_f64()?)
}

/// A value as shown in a message: its JSON, cut to [`MAX_QUOTED_CHARS`] characters.
fn quote(v: &Value) -> String {
    let text = v.to_string();
    match text.char_indices().nth(MAX_QUOTED_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// `path.key`, or `path["key"]` when the key is not a plain identifier.
fn member(path: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !key.starts_with(|c: char| c.is_ascii_digit());
    if plain {
        format!("{path}.{key}")
    } else {
        format!("{path}[{}]", Value::String(key.to_string()))
    }
}

type Violation = (String, String);

fn check_node(s: &Schema, path: &str, v: &Value) -> Result<(), Violation> {
    let fail = |why: String| Err((path.to_string(), why));
    if !s.types.is_empty() && !s.types.iter().any(|t| t.admits(v)) {
        let names: Vec<&str> = s.types.iter().map(|t| t.name()).collect();
        return fail(format!(
            "{} is not of type {}",
            quote(v),
            names.join(" or ")
        ));
    }
    if let Some(values) = &s.enumeration
        && !values.contains(v)
    {
        let shown: Vec<String> = values.iter().map(quote).collect();
        return fail(format!("{} is not one of [{}]", quote(v), shown.join(", ")));
    }
    match v {
        Value::Number(n) => {
            if let Some(lo) = &s.minimum
                && cmp(n, lo) == Some(std::cmp::Ordering::Less)
            {
                return fail(format!("{n} is less than the minimum {lo}"));
            }
            if let Some(hi) = &s.maximum
                && cmp(n, hi) == Some(std::cmp::Ordering::Greater)
            {
                return fail(format!("{n} is greater than the maximum {hi}"));
            }
        }
        Value::String(text) => {
            let len = text.chars().count() as u64;
            if let Some(lo) = s.min_length
                && len < lo
            {
                return fail(format!("{} is shorter than {lo} characters", quote(v)));
            }
            if let Some(hi) = s.max_length
                && len > hi
            {
                return fail(format!("{} is longer than {hi} characters", quote(v)));
            }
        }
        Value::Array(items) => {
            if let Some(item) = &s.items {
                for (i, x) in items.iter().enumerate() {
                    check_node(item, &format!("{path}[{i}]"), x)?;
                }
            }
        }
        Value::Object(map) => check_object(s, path, map)?,
        _ => {}
    }
    Ok(())
}

fn check_object(s: &Schema, path: &str, map: &Map<String, Value>) -> Result<(), Violation> {
    for name in &s.required {
        if !map.contains_key(name) {
            return Err((
                path.to_string(),
                format!("{} is required", Value::String(name.clone())),
            ));
        }
    }
    for (key, x) in map {
        let at = member(path, key);
        match s.properties.get(key) {
            Some(sub) => check_node(sub, &at, x)?,
            None => match &s.additional {
                Additional::Any => {}
                Additional::Forbidden => {
                    return Err((
                        path.to_string(),
                        format!("{} is not an allowed property", Value::String(key.clone())),
                    ));
                }
                Additional::Schema(sub) => check_node(sub, &at, x)?,
            },
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "schema_tests.rs"]
mod tests;
