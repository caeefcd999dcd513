use serde_json::json;

use super::*;

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

#[test]
fn parameters_compile_check_and_refuse_with_paths() {
    let p = Parameters::compile(Some(&json!({
        "args": {"type": "array", "items": {"type": "string"}},
        "kwargs": {"properties": {"limit": {"maximum": 1000}}}
    })))
    .expect("compiles");
    assert!(p.is_set());
    assert_eq!(p.check(&[json!("a")], &obj(json!({"limit": 3}))), Ok(()));
    assert_eq!(
        p.check(&[json!(1)], &Map::new()),
        Err("args[0]: 1 is not of type string".into())
    );
    assert_eq!(
        p.check(&[], &obj(json!({"limit": 5000}))),
        Err("kwargs.limit: 5000 is greater than the maximum 1000".into())
    );
    assert!(!Parameters::compile(None).expect("none").is_set());
    for (bad, want) in [
        (
            json!({"env": {}}),
            "parameters: \"env\" is not a parameter set",
        ),
        (json!([]), "parameters: must be an object"),
        (
            json!({"kwargs": {"type": "array"}}),
            "parameters.kwargs.type: must allow \"object\"",
        ),
        (
            json!({"args": {"type": "object"}}),
            "parameters.args.type: must allow \"array\"",
        ),
        (
            json!({"kwargs": {"not": {}}}),
            "parameters.kwargs: keyword \"not\" is not supported",
        ),
    ] {
        let e = Parameters::compile(Some(&bad)).expect_err("refused");
        assert!(e.starts_with(want), "{e}");
    }
}

#[test]
fn trigger_values_carry_the_request_id_and_the_caller() {
    assert_eq!(
        parse_trigger("r1 by=alice"),
        TriggerValue {
            request_id: "r1",
            requested_by: Some("alice")
        }
    );
    assert_eq!(
        parse_trigger("2026-12-03T10:00:00.000001Z"),
        TriggerValue {
            request_id: "2026-12-03T10:00:00.000001Z",
            requested_by: None
        }
    );
    assert_eq!(parse_trigger("r1 by=").requested_by, None);
    assert_eq!(trigger_value("r1", Some("alice")), "r1 by=alice");
    assert_eq!(trigger_value("r1", None), "r1");
    let long = trigger_value(&"r".repeat(128), Some(&"u".repeat(400)));
    assert_eq!(long.chars().count(), MAX_TRIGGER_CHARS);
    assert_eq!(parse_trigger(&long).request_id, "r".repeat(128));
}

#[test]
fn request_ids_are_bounded_and_plain() {
    assert_eq!(check_request_id("deploy-42.a_b:c+d"), Ok(()));
    assert!(check_request_id("").is_err());
    assert!(check_request_id(&"a".repeat(129)).is_err());
    assert!(check_request_id("a b").is_err());
    assert!(check_request_id("a\nb").is_err());
}

#[test]
fn overrides_replace_args_merge_kwargs_and_are_bounded() {
    let o = Overrides::from_annotations(Some("[1, 2]"), Some(r#"{"limit": 5}"#)).expect("parsed");
    let (args, kwargs) = o
        .apply(&[json!(9)], &obj(json!({"limit": 1, "mode": "full"})))
        .expect("applied");
    assert_eq!(args, vec![json!(1), json!(2)]);
    assert_eq!(Value::Object(kwargs), json!({"limit": 5, "mode": "full"}));
    let only_kwargs = Overrides::from_annotations(None, Some(r#"{"a": 1}"#)).expect("parsed");
    let (args, _) = only_kwargs
        .apply(&[json!(9)], &Map::new())
        .expect("applied");
    assert_eq!(args, vec![json!(9)], "args not given: the job's stay");
    assert!(
        Overrides::from_annotations(None, None)
            .expect("none")
            .is_empty()
    );
    assert!(
        Overrides::from_annotations(Some("null"), None)
            .expect("null")
            .is_empty()
    );
    for (a, k, want) in [
        (Some("{}"), None, "args must be a JSON array"),
        (None, Some("[]"), "kwargs must be a JSON object"),
        (Some("[1,"), None, "kubebeat.io/trigger-args: "),
    ] {
        let e = Overrides::from_annotations(a, k).expect_err("refused");
        assert!(e.starts_with(want), "{e}");
    }
    let huge = format!("[\"{}\"]", "x".repeat(MAX_ARGUMENTS_BYTES));
    assert!(Overrides::from_annotations(Some(&huge), None).is_err());
    let big = Overrides::from_values(
        Some(json!(["x".repeat(40_000)])),
        Some(json!({"y": "y".repeat(30_000)})),
    )
    .expect("parsed");
    let e = big.apply(&[], &Map::new()).expect_err("too big together");
    assert!(e.contains("the limit is 65536"), "{e}");
    let nul = Overrides::from_values(Some(json!(["a\u{0}b"])), None).expect("parsed");
    assert!(nul.apply(&[], &Map::new()).is_err());
    let (a, k) = Overrides::from_values(Some(json!([1])), None)
        .expect("ok")
        .annotation_values();
    assert_eq!((a, k), (json!("[1]"), Value::Null));
}
