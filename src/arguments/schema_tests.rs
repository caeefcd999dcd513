use serde_json::json;

use super::*;

fn compiled(schema: Value) -> Schema {
    Schema::compile("parameters.kwargs", &schema).expect("schema compiles")
}

fn err(schema: Value, value: Value) -> String {
    compiled(schema)
        .check("kwargs", &value)
        .expect_err("value is refused")
}

#[test]
fn every_keyword_is_checked_with_the_arguments_path() {
    let s = json!({
        "type": "object",
        "description": "ignored",
        "properties": {
            "limit": {"type": "integer", "minimum": 1, "maximum": 1000},
            "mode": {"enum": ["full", "delta"]},
            "name": {"type": "string", "minLength": 2, "maxLength": 5},
            "ids": {"type": "array", "items": {"type": "integer"}},
            "ratio": {"type": ["number", "null"]}
        },
        "required": ["limit"],
        "additionalProperties": false
    });
    let ok = json!({"limit": 10, "mode": "full", "name": "abc", "ids": [1, 2], "ratio": null});
    assert_eq!(compiled(s.clone()).check("kwargs", &ok), Ok(()));
    let cases = [
        (
            json!({"limit": 5000}),
            "kwargs.limit: 5000 is greater than the maximum 1000",
        ),
        (
            json!({"limit": 0}),
            "kwargs.limit: 0 is less than the minimum 1",
        ),
        (
            json!({"limit": 1.5}),
            "kwargs.limit: 1.5 is not of type integer",
        ),
        (
            json!({"limit": "7"}),
            "kwargs.limit: \"7\" is not of type integer",
        ),
        (json!({}), "kwargs: \"limit\" is required"),
        (
            json!({"limit": 1, "mode": "x"}),
            "kwargs.mode: \"x\" is not one of [\"full\", \"delta\"]",
        ),
        (
            json!({"limit": 1, "name": "a"}),
            "kwargs.name: \"a\" is shorter than 2 characters",
        ),
        (
            json!({"limit": 1, "name": "abcdef"}),
            "kwargs.name: \"abcdef\" is longer than 5 characters",
        ),
        (
            json!({"limit": 1, "ids": [1, "x"]}),
            "kwargs.ids[1]: \"x\" is not of type integer",
        ),
        (
            json!({"limit": 1, "ratio": "x"}),
            "kwargs.ratio: \"x\" is not of type number or null",
        ),
        (
            json!({"limit": 1, "extra": 1}),
            "kwargs: \"extra\" is not an allowed property",
        ),
        (json!([]), "kwargs: [] is not of type object"),
    ];
    for (value, want) in cases {
        assert_eq!(err(s.clone(), value), want);
    }
}

#[test]
fn integers_accept_whole_floats_and_numbers_compare_exactly() {
    let s = compiled(json!({"type": "integer", "maximum": 9007199254740993_u64}));
    assert_eq!(s.check("a", &json!(3.0)), Ok(()));
    assert_eq!(s.check("a", &json!(9007199254740993_u64)), Ok(()));
    assert!(s.check("a", &json!(9007199254740994_u64)).is_err());
    let f = compiled(json!({"minimum": 0.5}));
    assert_eq!(f.check("a", &json!(1)), Ok(()));
    assert_eq!(
        f.check("a", &json!(0)),
        Err("a: 0 is less than the minimum 0.5".into())
    );
}

#[test]
fn additional_properties_as_a_schema_and_odd_keys_are_quoted() {
    let s = compiled(json!({"additionalProperties": {"type": "string"}}));
    assert_eq!(s.check("kwargs", &json!({"a": "x"})), Ok(()));
    assert_eq!(
        s.check("kwargs", &json!({"a b": 1})),
        Err("kwargs[\"a b\"]: 1 is not of type string".into())
    );
    assert_eq!(
        s.check("kwargs", &json!({"1st": 1})),
        Err("kwargs[\"1st\"]: 1 is not of type string".into())
    );
}

#[test]
fn lengths_count_characters_and_long_values_are_cut_in_messages() {
    let s = compiled(json!({"maxLength": 2}));
    assert_eq!(s.check("a", &json!("éé")), Ok(()));
    let long = "x".repeat(500);
    let e = s.check("a", &json!(long)).expect_err("too long");
    assert!(e.len() < 120, "{e}");
    assert!(e.contains('…'), "{e}");
}

#[test]
fn unsupported_keywords_are_refused_with_the_schema_path() {
    let e = Schema::compile(
        "parameters.kwargs",
        &json!({"properties": {"name": {"type": "string", "pattern": "^a"}}}),
    )
    .expect_err("pattern refused");
    assert!(
        e.starts_with("parameters.kwargs.properties.name: keyword \"pattern\" is not supported"),
        "{e}"
    );
    for (schema, want) in [
        (json!(true), "parameters.kwargs: a schema must be an object"),
        (
            json!({"type": "date"}),
            "parameters.kwargs.type: \"date\" is not a type",
        ),
        (
            json!({"type": []}),
            "parameters.kwargs.type: must be a type name",
        ),
        (
            json!({"required": "a"}),
            "parameters.kwargs.required: must be an array",
        ),
        (
            json!({"required": [1]}),
            "parameters.kwargs.required: must be an array of strings",
        ),
        (
            json!({"enum": []}),
            "parameters.kwargs.enum: must be a non-empty array",
        ),
        (
            json!({"minimum": "1"}),
            "parameters.kwargs.minimum: must be a number",
        ),
        (
            json!({"maxLength": -1}),
            "parameters.kwargs.maxLength: must be a non-negative integer",
        ),
        (
            json!({"minimum": 5, "maximum": 1}),
            "parameters.kwargs: minimum 5 is greater than maximum 1",
        ),
        (
            json!({"minLength": 5, "maxLength": 1}),
            "parameters.kwargs: minLength 5 is greater than maxLength 1",
        ),
        (
            json!({"properties": []}),
            "parameters.kwargs.properties: must be an object",
        ),
        (
            json!({"$ref": "#/x"}),
            "parameters.kwargs: keyword \"$ref\" is not supported",
        ),
        (
            json!({"items": {"format": "email"}}),
            "parameters.kwargs.items: keyword \"format\" is not supported",
        ),
        (
            json!({"description": 1}),
            "parameters.kwargs.description: must be a string",
        ),
    ] {
        let e = Schema::compile("parameters.kwargs", &schema).expect_err("refused");
        assert!(e.starts_with(want), "{e} should start with {want}");
    }
}

#[test]
fn depth_and_size_are_bounded() {
    let mut deep = json!({"type": "integer"});
    for _ in 0..MAX_SCHEMA_DEPTH {
        deep = json!({"items": deep});
    }
    let e = Schema::compile("p", &deep).expect_err("too deep");
    assert!(e.contains("nested deeper than 16 levels"), "{e}");
    let mut ok = json!({"type": "integer"});
    for _ in 0..MAX_SCHEMA_DEPTH - 1 {
        ok = json!({"items": ok});
    }
    assert!(Schema::compile("p", &ok).is_ok());
    let big = json!({"enum": vec!["x".repeat(100); 400]});
    let e = Schema::compile("p", &big).expect_err("too big");
    assert!(e.contains("the limit is 32768"), "{e}");
}
