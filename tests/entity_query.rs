//! The filter compiler of `/v1/{entity}` lists, as a library: what it accepts, what it
//! refuses, and that values never reach the SQL text. (Its SQL runs in `entity_types`.)

use domain::entity_type::Schema;
use eventlog::Backend;
use projections::entity_query::*;
use serde_json::{Value, json};

fn schema() -> Schema {
    serde_json::from_value(json!({"fields": {
        "email": {"type": "string"},
        "age": {"type": "integer"},
        "active": {"type": "boolean"},
        "meta": {"type": "json"},
        "at": {"type": "timestamp"}
    }}))
    .unwrap()
}

fn compiled(backend: Backend, where_: Value) -> Sql {
    let filter = parse_where(&where_, &schema()).unwrap();
    let mut sql = Sql::default();
    compile(backend, &filter, &mut sql);
    sql
}

#[test]
fn values_are_bound_never_spliced() {
    let sql = compiled(
        Backend::Postgres,
        json!({"email": "x'; DROP TABLE entities; --", "age": {"gte": 18, "lt": 65}}),
    );
    assert!(!sql.text.contains("DROP"), "{}", sql.text);
    assert_eq!(sql.binds.len(), 3);
    let sql = compiled(
        Backend::Sqlite,
        json!({"meta.plan.name": {"in": ["a", "b"]}}),
    );
    assert!(sql.text.contains("'$.meta.plan.name'"), "{}", sql.text);
    assert_eq!(sql.binds.len(), 2);
}

#[test]
fn shorthand_equality_nested_objects_and_logic_parse() {
    let s = schema();
    assert!(matches!(
        parse_where(&json!({"email": "a"}), &s).unwrap(),
        Filter::Compare { cmp: Cmp::Eq, .. }
    ));
    assert!(matches!(
        parse_where(&json!({"meta": {"plan": {"eq": "pro"}}}), &s).unwrap(),
        Filter::Compare { ref field, .. } if field.path == ["meta", "plan"]
    ));
    assert!(matches!(
        parse_where(&json!({"or": [{"age": 1}, {"not": {"active": true}}]}), &s).unwrap(),
        Filter::Or(_)
    ));
}

#[test]
fn malformed_filters_say_what_is_wrong() {
    let s = schema();
    for bad in [
        json!({"nope": 1}),
        json!({"age": "old"}),
        json!({"age": {"gt": 1, "plan": 2}}),
        json!({"email": {"in": []}}),
        json!({"age": {"contains": "1"}}),
        json!({"active": {"gt": true}}),
        json!({"email.x": "a"}),
        json!({"at": {"gt": "yesterday"}}),
        json!({"bad-name": 1}),
        json!([1]),
    ] {
        assert!(parse_where(&bad, &s).is_err(), "{bad} was accepted");
    }
}

#[test]
fn cursors_belong_to_their_order() {
    let s = schema();
    let keys = parse_order(Some("age:desc"), &s).unwrap();
    let cursor = encode_cursor(&keys, "u1", &json!({"age": 30}));
    let after = decode_cursor(&cursor, &keys).unwrap();
    assert_eq!(
        after,
        After(vec![
            Some(Scalar::Number(30.into())),
            Some(Scalar::Text("u1".into()))
        ])
    );
    let other = parse_order(Some("age:asc"), &s).unwrap();
    assert!(decode_cursor(&cursor, &other).is_err());
    assert!(decode_cursor("%%%", &keys).is_err());
}

#[test]
fn prefix_upper_bounds_cover_exactly_the_prefix() {
    assert_eq!(prefix_upper_bound("ab").as_deref(), Some("ac"));
    assert_eq!(prefix_upper_bound("a\u{10FFFF}").as_deref(), Some("b"));
    assert_eq!(prefix_upper_bound("\u{10FFFF}"), None);
    assert_eq!(prefix_upper_bound("\u{D7FF}").as_deref(), Some("\u{E000}"));
}
