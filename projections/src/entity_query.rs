//! Filters, sort orders and keyset cursors over the `entities` read model, compiled to SQL.
//!
//! A `where` document is parsed against the entity type's schema into a [`Filter`]; the
//! compiler turns it into a parameterised `WHERE` clause for PostgreSQL or SQLite. Values are
//! always bound; only field paths reach the SQL text, and a path is a list of segments of
//! ASCII letters, digits and `_` (checked by the parser), quoted as a JSON path literal.
//!
//! Each field is read as one of three kinds (text, number, boolean), from the field's declared
//! type or, for undeclared fields and paths inside `json` fields, from the kind of the value it
//! is compared with. The expression that reads a field yields NULL when the stored value is of
//! another kind, so comparisons never mix kinds, and the same expression is what the index
//! of an `indexed` field is built on ([`index_statement`]): a filter or sort on an indexed
//! field is an index scan. In sort orders NULL (no value of the kind) comes first.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use std::collections::BTreeMap;

use domain::entity_type::{FieldKind, Schema, normalize_timestamp};
use domain::names::EntityTypeName;
use eventlog::Backend;
use serde_json::{Map, Number, Value};

/// At most this many values in `in` and `nin`.
pub const MAX_IN_VALUES: usize = 100;
/// At most this many keys in `orderBy`.
pub const MAX_SORT_KEYS: usize = 3;
/// At most this deep a path.
pub const MAX_PATH_SEGMENTS: usize = 8;
/// At most this many conditions in one `where`.
pub const MAX_CONDITIONS: usize = 64;

/// A malformed `where`, `orderBy` or `cursor`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct QueryError(pub String);

fn err<T>(message: impl Into<String>) -> Result<T, QueryError> {
    Err(QueryError(message.into()))
}

/// How a field's value is read and compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Number,
    Bool,
}

impl Kind {
    /// The kind a declared field is read as; `None` for `json` fields.
    pub fn of(kind: FieldKind) -> Option<Self> {
        match kind {
            FieldKind::String | FieldKind::Timestamp | FieldKind::Reference => Some(Self::Text),
            FieldKind::Integer | FieldKind::Number => Some(Self::Number),
            FieldKind::Boolean => Some(Self::Bool),
            FieldKind::Json => None,
        }
    }

    fn letter(self) -> char {
        match self {
            Self::Text => 't',
            Self::Number => 'n',
            Self::Bool => 'b',
        }
    }
}

/// A value bound to a statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Text(String),
    Number(Number),
    Bool(bool),
}

impl Scalar {
    fn kind(&self) -> Kind {
        match self {
            Self::Text(_) => Kind::Text,
            Self::Number(_) => Kind::Number,
            Self::Bool(_) => Kind::Bool,
        }
    }

    fn to_json(&self) -> Value {
        match self {
            Self::Text(s) => Value::String(s.clone()),
            Self::Number(n) => Value::Number(n.clone()),
            Self::Bool(b) => Value::Bool(*b),
        }
    }
}

/// What a condition reads: the record id, or a path into the document.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldRef {
    /// `["id"]` with `is_id` for the record id.
    pub path: Vec<String>,
    pub is_id: bool,
    /// The declared kind, when the path is a declared top-level field.
    pub declared: Option<FieldKind>,
}

impl FieldRef {
    fn display(&self) -> String {
        self.path.join(".")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
    Gt,
    Gte,
    Lt,
    Lte,
}

/// A parsed `where`.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Box<Filter>),
    Compare {
        field: FieldRef,
        kind: Kind,
        cmp: Cmp,
        value: Scalar,
    },
    In {
        field: FieldRef,
        kind: Kind,
        values: Vec<Scalar>,
        negated: bool,
    },
    Contains {
        field: FieldRef,
        value: String,
    },
    StartsWith {
        field: FieldRef,
        value: String,
    },
    IsNull {
        field: FieldRef,
        is_null: bool,
    },
    /// The record is linked, through `via`, to a record of `target` that matches `filter`
    /// (one hop: `filter` itself does not hop).
    Related {
        via: Via,
        target: EntityTypeName,
        filter: Box<Filter>,
    },
}

/// How a condition reaches related records.
#[derive(Debug, Clone, PartialEq)]
pub enum Via {
    /// The record's reference field of this name.
    Field(String),
    /// The record's relation of this name (some edge reaches a matching record).
    Relation(String),
}

const OPERATORS: &[&str] = &[
    "eq",
    "ne",
    "gt",
    "gte",
    "lt",
    "lte",
    "in",
    "nin",
    "contains",
    "startsWith",
    "isNull",
];

fn field_ref(raw_path: &str, schema: &Schema) -> Result<FieldRef, QueryError> {
    let path: Vec<String> = raw_path.split('.').map(str::to_string).collect();
    if path.len() > MAX_PATH_SEGMENTS {
        return err(format!(
            "'{raw_path}': a path has at most {MAX_PATH_SEGMENTS} segments"
        ));
    }
    for segment in &path {
        if segment.is_empty()
            || segment.len() > 63
            || !segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return err(format!(
                "'{raw_path}': path segments are ASCII letters, digits and '_', separated by '.'"
            ));
        }
    }
    if path.len() == 1 && path[0] == "id" {
        return Ok(FieldRef {
            path,
            is_id: true,
            declared: Some(FieldKind::String),
        });
    }
    let top = schema.fields.get(&path[0]);
    match top {
        None if !schema.schemaless => {
            err(format!("'{}' is not a field of this entity type", path[0]))
        }
        Some(spec) if path.len() > 1 && spec.kind != FieldKind::Json => err(format!(
            "'{raw_path}': only json fields have paths inside them"
        )),
        _ => Ok(FieldRef {
            declared: if path.len() == 1 {
                top.map(|s| s.kind)
            } else {
                None
            },
            path,
            is_id: false,
        }),
    }
}

/// A filter value as the field's kind (timestamps in their canonical form).
fn scalar(field: &FieldRef, value: &Value) -> Result<Scalar, QueryError> {
    let name = field.display();
    let scalar = match value {
        Value::String(s) => Scalar::Text(s.clone()),
        Value::Number(n) => Scalar::Number(n.clone()),
        Value::Bool(b) => Scalar::Bool(*b),
        _ => {
            return err(format!(
                "'{name}': compare with a string, a number or a boolean"
            ));
        }
    };
    let Some(declared) = field.declared else {
        return Ok(scalar);
    };
    let Some(kind) = Kind::of(declared) else {
        return Ok(scalar);
    };
    if scalar.kind() != kind {
        let expected = match kind {
            Kind::Text => "a string",
            Kind::Number => "a number",
            Kind::Bool => "a boolean",
        };
        return err(format!("'{name}' is compared with {expected}"));
    }
    if declared == FieldKind::Timestamp
        && let Scalar::Text(s) = &scalar
    {
        return match normalize_timestamp(s) {
            Some(canonical) => Ok(Scalar::Text(canonical)),
            None => err(format!("'{name}' is compared with an RFC 3339 date-time")),
        };
    }
    Ok(scalar)
}

fn kind_for(field: &FieldRef, value: &Scalar) -> Kind {
    field
        .declared
        .and_then(Kind::of)
        .unwrap_or_else(|| value.kind())
}

struct Parser<'a> {
    schema: &'a Schema,
    /// The schemas of the types the record's references and relations point at; `None`
    /// inside a hop (one hop at most).
    related: Option<&'a BTreeMap<EntityTypeName, Schema>>,
    conditions: usize,
}

impl Parser<'_> {
    /// `name`'s hop, when it is a reference field or a relation of the schema.
    fn hop(&self, name: &str) -> Option<(Via, EntityTypeName)> {
        if let Some(spec) = self.schema.relations.get(name) {
            return Some((Via::Relation(name.to_string()), spec.to.clone()));
        }
        let spec = self.schema.fields.get(name)?;
        Some((Via::Field(name.to_string()), spec.references.clone()?))
    }

    /// Parses `value` (with `inner` a condition or an object of conditions) against the
    /// schema of the records `via` reaches.
    fn related(
        &mut self,
        (via, target): (Via, EntityTypeName),
        inner: impl FnOnce(&mut Parser<'_>) -> Result<Filter, QueryError>,
    ) -> Result<Filter, QueryError> {
        let name = match &via {
            Via::Field(name) | Via::Relation(name) => name.clone(),
        };
        let Some(related) = self.related else {
            return err(format!(
                "'{name}': a condition follows at most one reference or relation"
            ));
        };
        let Some(schema) = related.get(&target) else {
            return err(format!("'{name}': no entity type '{target}'"));
        };
        let mut parser = Parser {
            schema,
            related: None,
            conditions: self.conditions,
        };
        let filter = inner(&mut parser)?;
        self.conditions = parser.conditions;
        Ok(Filter::Related {
            via,
            target,
            filter: Box::new(filter),
        })
    }

    fn count(&mut self) -> Result<(), QueryError> {
        self.conditions += 1;
        if self.conditions > MAX_CONDITIONS {
            return err(format!("at most {MAX_CONDITIONS} conditions"));
        }
        Ok(())
    }

    fn node(&mut self, value: &Value, prefix: &str) -> Result<Filter, QueryError> {
        let Value::Object(map) = value else {
            return err("a condition is a JSON object");
        };
        let mut parts = Vec::new();
        for (key, value) in map {
            if prefix.is_empty() {
                match key.as_str() {
                    "and" | "or" => {
                        let Value::Array(items) = value else {
                            return err(format!("'{key}' takes an array of conditions"));
                        };
                        let children = items
                            .iter()
                            .map(|item| self.node(item, ""))
                            .collect::<Result<Vec<_>, _>>()?;
                        parts.push(if key == "and" {
                            Filter::And(children)
                        } else {
                            Filter::Or(children)
                        });
                        continue;
                    }
                    "not" => {
                        parts.push(Filter::Not(Box::new(self.node(value, "")?)));
                        continue;
                    }
                    _ => {}
                }
                // `{"owner": {"country": "DE"}}`: conditions on the related record.
                if let (Some(hop), Value::Object(inner)) = (self.hop(key), value)
                    && !inner.is_empty()
                    && !inner.keys().any(|k| OPERATORS.contains(&k.as_str()))
                {
                    parts.push(self.related(hop, |parser| parser.node(value, ""))?);
                    continue;
                }
                if self.schema.relations.contains_key(key) {
                    return err(format!(
                        "'{key}' is a relation: give conditions on its records, e.g. {{\"{key}\": {{\"id\": \"…\"}}}}"
                    ));
                }
            }
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            parts.push(self.field(&path, value)?);
        }
        Ok(if parts.len() == 1 {
            parts.pop().expect("one part")
        } else {
            Filter::And(parts)
        })
    }

    /// `"path": value` (equality), `"path": {"op": value, …}`, or `"path": {"nested": …}`.
    fn field(&mut self, path: &str, value: &Value) -> Result<Filter, QueryError> {
        // `"owner.country": "DE"`: a condition on the related record.
        if let Some((head, rest)) = path.split_once('.')
            && let Some(hop) = self.hop(head)
        {
            let rest = rest.to_string();
            return self.related(hop, |parser| parser.field(&rest, value));
        }
        if let Value::Object(ops) = value {
            let operators = ops
                .keys()
                .filter(|k| OPERATORS.contains(&k.as_str()))
                .count();
            if operators == 0 && !ops.is_empty() {
                return self.node(value, path);
            }
            if operators != ops.len() || ops.is_empty() {
                return err(format!(
                    "'{path}': use operators ({}) or nested field names, not both",
                    OPERATORS.join(", ")
                ));
            }
            let field = field_ref(path, self.schema)?;
            let mut parts = Vec::new();
            for (op, operand) in ops {
                parts.push(self.operator(&field, op, operand)?);
            }
            return Ok(if parts.len() == 1 {
                parts.pop().expect("one part")
            } else {
                Filter::And(parts)
            });
        }
        let field = field_ref(path, self.schema)?;
        self.operator(&field, "eq", value)
    }

    fn operator(
        &mut self,
        field: &FieldRef,
        op: &str,
        operand: &Value,
    ) -> Result<Filter, QueryError> {
        self.count()?;
        let name = field.display();
        let cmp = match op {
            "eq" => Some(Cmp::Eq),
            "ne" => Some(Cmp::Ne),
            "gt" => Some(Cmp::Gt),
            "gte" => Some(Cmp::Gte),
            "lt" => Some(Cmp::Lt),
            "lte" => Some(Cmp::Lte),
            _ => None,
        };
        if let Some(cmp) = cmp {
            if operand.is_null() && matches!(cmp, Cmp::Eq | Cmp::Ne) {
                return Ok(Filter::IsNull {
                    field: field.clone(),
                    is_null: cmp == Cmp::Eq,
                });
            }
            let value = scalar(field, operand)?;
            if matches!(value, Scalar::Bool(_)) && !matches!(cmp, Cmp::Eq | Cmp::Ne) {
                return err(format!(
                    "'{name}': booleans are compared with eq and ne only"
                ));
            }
            return Ok(Filter::Compare {
                field: field.clone(),
                kind: kind_for(field, &value),
                cmp,
                value,
            });
        }
        match op {
            "in" | "nin" => {
                let Value::Array(items) = operand else {
                    return err(format!("'{name}': {op} takes an array"));
                };
                if items.is_empty() || items.len() > MAX_IN_VALUES {
                    return err(format!("'{name}': {op} takes 1 to {MAX_IN_VALUES} values"));
                }
                let values = items
                    .iter()
                    .map(|v| scalar(field, v))
                    .collect::<Result<Vec<_>, _>>()?;
                let kind = kind_for(field, &values[0]);
                if values.iter().any(|v| v.kind() != kind) {
                    return err(format!("'{name}': the values of {op} have one type"));
                }
                Ok(Filter::In {
                    field: field.clone(),
                    kind,
                    values,
                    negated: op == "nin",
                })
            }
            "contains" | "startsWith" => {
                let Value::String(value) = operand else {
                    return err(format!("'{name}': {op} takes a string"));
                };
                if field
                    .declared
                    .and_then(Kind::of)
                    .is_some_and(|k| k != Kind::Text)
                {
                    return err(format!("'{name}': {op} applies to string fields"));
                }
                Ok(if op == "contains" {
                    Filter::Contains {
                        field: field.clone(),
                        value: value.clone(),
                    }
                } else {
                    Filter::StartsWith {
                        field: field.clone(),
                        value: value.clone(),
                    }
                })
            }
            "isNull" => match operand {
                Value::Bool(is_null) => Ok(Filter::IsNull {
                    field: field.clone(),
                    is_null: *is_null,
                }),
                _ => err(format!("'{name}': isNull takes true or false")),
            },
            _ => unreachable!("only known operators reach here"),
        }
    }
}

/// Parses a `where` document against `schema`, without conditions on related records.
pub fn parse_where(value: &Value, schema: &Schema) -> Result<Filter, QueryError> {
    parse_where_related(value, schema, &BTreeMap::new())
}

/// Parses a `where` document against `schema`; conditions may follow one reference field or
/// relation to the records it reaches, whose types' schemas are in `related`.
pub fn parse_where_related(
    value: &Value,
    schema: &Schema,
    related: &BTreeMap<EntityTypeName, Schema>,
) -> Result<Filter, QueryError> {
    if !value.is_object() {
        return err("where is a JSON object");
    }
    Parser {
        schema,
        related: Some(related),
        conditions: 0,
    }
    .node(value, "")
}

/// One key of a sort order.
#[derive(Debug, Clone, PartialEq)]
pub struct SortKey {
    pub field: FieldRef,
    pub kind: Kind,
    pub descending: bool,
}

/// Parses `orderBy` (`field:asc,other:desc`). Sorting needs a declared field (or `id`), whose
/// kind is known. The record id is always the last key, so that every order is total.
pub fn parse_order(raw: Option<&str>, schema: &Schema) -> Result<Vec<SortKey>, QueryError> {
    let mut keys = Vec::new();
    for part in raw
        .unwrap_or("")
        .split(',')
        .filter(|p| !p.trim().is_empty())
    {
        let (name, direction) = match part.trim().split_once(':') {
            Some((name, direction)) => (name, direction),
            None => (part.trim(), "asc"),
        };
        let descending = match direction {
            "asc" => false,
            "desc" => true,
            other => return err(format!("'{other}': the direction is asc or desc")),
        };
        let field = field_ref(name, schema)?;
        let Some(kind) = field.declared.and_then(Kind::of) else {
            return err(format!(
                "'{name}': sort on declared fields of type string, integer, number, boolean, timestamp or reference"
            ));
        };
        if keys.iter().any(|k: &SortKey| k.field == field) {
            return err(format!("'{name}' is listed twice"));
        }
        keys.push(SortKey {
            field,
            kind,
            descending,
        });
    }
    if keys.iter().filter(|k| !k.field.is_id).count() > MAX_SORT_KEYS {
        return err(format!("at most {MAX_SORT_KEYS} sort keys"));
    }
    if !keys.iter().any(|k| k.field.is_id) {
        let descending = keys.last().is_some_and(|k| k.descending);
        keys.push(SortKey {
            field: FieldRef {
                path: vec!["id".into()],
                is_id: true,
                declared: Some(FieldKind::String),
            },
            kind: Kind::Text,
            descending,
        });
    } else if !keys.last().is_some_and(|k| k.field.is_id) {
        return err("'id' is the last sort key when it is given");
    }
    Ok(keys)
}

fn order_signature(keys: &[SortKey]) -> String {
    keys.iter()
        .map(|k| {
            format!(
                "{}:{}",
                k.field.display(),
                if k.descending { "d" } else { "a" }
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The position after the last record of a page: its sort key values.
#[derive(Debug, Clone, PartialEq)]
pub struct After(pub Vec<Option<Scalar>>);

/// The value of a sort key in a record, as the SQL expression reads it.
fn key_value(key: &SortKey, id: &str, data: &Value) -> Option<Scalar> {
    if key.field.is_id {
        return Some(Scalar::Text(id.to_string()));
    }
    let mut value = data;
    for segment in &key.field.path {
        value = value.get(segment)?;
    }
    match (key.kind, value) {
        (Kind::Text, Value::String(s)) => Some(Scalar::Text(s.clone())),
        (Kind::Number, Value::Number(n)) => Some(Scalar::Number(n.clone())),
        (Kind::Bool, Value::Bool(b)) => Some(Scalar::Bool(*b)),
        _ => None,
    }
}

/// The opaque cursor after the record `(id, data)` in the order `keys`.
pub fn encode_cursor(keys: &[SortKey], id: &str, data: &Value) -> String {
    let values: Vec<Value> = keys
        .iter()
        .map(|k| key_value(k, id, data).map_or(Value::Null, |s| s.to_json()))
        .collect();
    let body = serde_json::json!({ "o": order_signature(keys), "k": values });
    URL_SAFE_NO_PAD.encode(body.to_string())
}

/// Reads a cursor made by [`encode_cursor`] for the same order.
pub fn decode_cursor(raw: &str, keys: &[SortKey]) -> Result<After, QueryError> {
    let invalid = || QueryError("not a cursor returned by the gateway for this orderBy".into());
    let bytes = URL_SAFE_NO_PAD.decode(raw).map_err(|_| invalid())?;
    let body: Map<String, Value> = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    if body.get("o").and_then(Value::as_str) != Some(order_signature(keys).as_str()) {
        return Err(invalid());
    }
    let Some(Value::Array(values)) = body.get("k") else {
        return Err(invalid());
    };
    if values.len() != keys.len() {
        return Err(invalid());
    }
    let mut after = Vec::with_capacity(keys.len());
    for (key, value) in keys.iter().zip(values) {
        let scalar = match (key.kind, value) {
            (_, Value::Null) if !key.field.is_id => None,
            (Kind::Text, Value::String(s)) => Some(Scalar::Text(s.clone())),
            (Kind::Number, Value::Number(n)) => Some(Scalar::Number(n.clone())),
            (Kind::Bool, Value::Bool(b)) => Some(Scalar::Bool(*b)),
            _ => return Err(invalid()),
        };
        after.push(scalar);
    }
    Ok(After(after))
}

/// The first placeholder a filter binds: `$1` and `$2` are the tenant and the entity type.
const FIRST_PARAMETER: usize = 3;

/// SQL text with its bound values; placeholders are `$1`, `$2`, … on both backends.
#[derive(Debug, Default)]
pub struct Sql {
    pub text: String,
    pub binds: Vec<Scalar>,
}

impl Sql {
    fn bind(&mut self, backend: Backend, value: Scalar) -> String {
        let placeholder = format!("${}", self.binds.len() + FIRST_PARAMETER);
        let typed = dialect(backend).placeholder(placeholder, &value);
        self.binds.push(value);
        typed
    }
}

/// The expression that reads `path` as `kind`: NULL when the value is absent or of another
/// kind. Index definitions use exactly this text.
pub fn expression(backend: Backend, path: &[String], kind: Kind) -> String {
    dialect(backend).expression(path, kind)
}

/// What differs between the backends' SQL for reading a record's JSON document: one
/// implementation per backend, so each backend's SQL is in one place.
trait Dialect: Sync {
    /// A bound value's placeholder, typed where the backend needs it.
    fn placeholder(&self, placeholder: String, value: &Scalar) -> String;
    /// The expression that reads `path` as `kind` (see [`expression`]).
    fn expression(&self, path: &[String], kind: Kind) -> String;
    /// The JSON type name of the value at `path` (NULL when absent).
    fn json_type(&self, path: &[String]) -> String;
    /// Whether text `e` contains text `p`.
    fn contains(&self, e: &str, p: &str) -> String;
    /// Whether the first `length` characters of `e` are `p`.
    fn starts(&self, e: &str, length: usize, p: &str) -> String;
    /// A value as the backend compares it with what [`Dialect::expression`] reads.
    fn comparable(&self, value: &Scalar) -> Scalar;
    /// The sort direction; NULL sorts before every value.
    fn direction(&self, descending: bool, nullable: bool) -> &'static str;
    /// A sort key of an index on `e`, ordered as [`Dialect::direction`] orders it.
    fn index_key(&self, e: String) -> String;
}

fn dialect(backend: Backend) -> &'static dyn Dialect {
    match backend {
        Backend::Postgres => &Postgres,
        Backend::Sqlite => &Sqlite,
    }
}

struct Postgres;

impl Postgres {
    /// The text array literal of `path` (`'{a,b,0}'`); segments are validated by the parser.
    fn path(path: &[String]) -> String {
        format!("'{{{}}}'", path.join(","))
    }

    /// The JSON value at `path`, and its text.
    fn json_and_text(path: &[String]) -> (String, String) {
        if path.len() == 1 {
            (
                format!("data->'{}'", path[0]),
                format!("data->>'{}'", path[0]),
            )
        } else {
            let p = Self::path(path);
            (format!("data#>{p}"), format!("data#>>{p}"))
        }
    }
}

impl Dialect for Postgres {
    fn placeholder(&self, placeholder: String, value: &Scalar) -> String {
        match value {
            Scalar::Number(_) => format!("{placeholder}::numeric"),
            Scalar::Text(_) => format!("{placeholder}::text"),
            _ => placeholder,
        }
    }

    fn expression(&self, path: &[String], kind: Kind) -> String {
        let (json, text) = Self::json_and_text(path);
        match kind {
            Kind::Text => format!(
                "((CASE WHEN jsonb_typeof({json}) = 'string' THEN {text} END) COLLATE \"C\")"
            ),
            Kind::Number => {
                format!("(CASE WHEN jsonb_typeof({json}) = 'number' THEN ({text})::numeric END)")
            }
            Kind::Bool => {
                format!("(CASE WHEN jsonb_typeof({json}) = 'boolean' THEN ({text})::boolean END)")
            }
        }
    }

    fn json_type(&self, path: &[String]) -> String {
        format!("jsonb_typeof({})", Self::json_and_text(path).0)
    }

    fn contains(&self, e: &str, p: &str) -> String {
        format!("strpos({e}, {p}) > 0")
    }

    fn starts(&self, e: &str, length: usize, p: &str) -> String {
        format!("left({e}, {length}) = {p}")
    }

    fn comparable(&self, value: &Scalar) -> Scalar {
        value.clone()
    }

    fn direction(&self, descending: bool, nullable: bool) -> &'static str {
        match (descending, nullable) {
            (false, true) => "ASC NULLS FIRST",
            (true, true) => "DESC NULLS LAST",
            (false, false) => "ASC",
            (true, false) => "DESC",
        }
    }

    fn index_key(&self, e: String) -> String {
        format!("{e} NULLS FIRST")
    }
}

struct Sqlite;

impl Sqlite {
    /// The JSON path literal of `path` (`'$.a.b[0]'`); segments are validated by the parser.
    fn path(path: &[String]) -> String {
        let mut out = String::from("'$");
        for segment in path {
            if segment.bytes().all(|b| b.is_ascii_digit()) {
                out.push_str(&format!("[{segment}]"));
            } else {
                out.push('.');
                out.push_str(segment);
            }
        }
        out.push('\'');
        out
    }
}

impl Dialect for Sqlite {
    fn placeholder(&self, placeholder: String, _: &Scalar) -> String {
        placeholder
    }

    fn expression(&self, path: &[String], kind: Kind) -> String {
        let p = Self::path(path);
        match kind {
            Kind::Text => format!(
                "(CASE WHEN json_type(data, {p}) = 'text' THEN json_extract(data, {p}) END)"
            ),
            Kind::Number => format!(
                "(CASE WHEN json_type(data, {p}) IN ('integer', 'real') THEN json_extract(data, {p}) END)"
            ),
            Kind::Bool => {
                format!("(CASE json_type(data, {p}) WHEN 'true' THEN 1 WHEN 'false' THEN 0 END)")
            }
        }
    }

    fn json_type(&self, path: &[String]) -> String {
        format!("json_type(data, {})", Self::path(path))
    }

    fn contains(&self, e: &str, p: &str) -> String {
        format!("instr({e}, {p}) > 0")
    }

    fn starts(&self, e: &str, length: usize, p: &str) -> String {
        format!("substr({e}, 1, {length}) = {p}")
    }

    /// SQLite reads booleans as 1 and 0.
    fn comparable(&self, value: &Scalar) -> Scalar {
        match value {
            Scalar::Bool(b) => Scalar::Number(Number::from(i64::from(*b))),
            other => other.clone(),
        }
    }

    fn direction(&self, descending: bool, _: bool) -> &'static str {
        if descending { "DESC" } else { "ASC" }
    }

    fn index_key(&self, e: String) -> String {
        e
    }
}

fn field_expression(backend: Backend, field: &FieldRef, kind: Kind) -> String {
    if field.is_id {
        "id".to_string()
    } else {
        expression(backend, &field.path, kind)
    }
}

/// The smallest string greater than every string that starts with `prefix`, if there is one.
pub fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let mut next = last as u32 + 1;
        if (0xD800..=0xDFFF).contains(&next) {
            next = 0xE000;
        }
        if let Some(c) = char::from_u32(next) {
            chars.push(c);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// Appends `filter` as SQL to `sql`.
pub fn compile(backend: Backend, filter: &Filter, sql: &mut Sql) {
    match filter {
        Filter::And(parts) | Filter::Or(parts) => {
            if parts.is_empty() {
                sql.text.push_str(if matches!(filter, Filter::And(_)) {
                    "TRUE"
                } else {
                    "FALSE"
                });
                return;
            }
            let joiner = if matches!(filter, Filter::And(_)) {
                " AND "
            } else {
                " OR "
            };
            sql.text.push('(');
            for (i, part) in parts.iter().enumerate() {
                if i > 0 {
                    sql.text.push_str(joiner);
                }
                compile(backend, part, sql);
            }
            sql.text.push(')');
        }
        Filter::Not(inner) => {
            // NOT of a condition on a missing field is true: COALESCE turns SQL's unknown
            // into false before negating.
            sql.text.push_str("(NOT COALESCE(");
            compile(backend, inner, sql);
            sql.text.push_str(", FALSE))");
        }
        Filter::Compare {
            field,
            kind,
            cmp,
            value,
        } => {
            let e = field_expression(backend, field, *kind);
            let p = sql.bind(backend, bool_for(backend, value));
            let text = match cmp {
                Cmp::Eq => format!("{e} = {p}"),
                Cmp::Ne => format!("({e} IS NULL OR {e} <> {p})"),
                Cmp::Gt => format!("{e} > {p}"),
                Cmp::Gte => format!("{e} >= {p}"),
                Cmp::Lt => format!("{e} < {p}"),
                Cmp::Lte => format!("{e} <= {p}"),
            };
            sql.text.push_str(&text);
        }
        Filter::In {
            field,
            kind,
            values,
            negated,
        } => {
            let e = field_expression(backend, field, *kind);
            let placeholders: Vec<String> = values
                .iter()
                .map(|v| sql.bind(backend, bool_for(backend, v)))
                .collect();
            let list = placeholders.join(", ");
            sql.text.push_str(&if *negated {
                format!("({e} IS NULL OR {e} NOT IN ({list}))")
            } else {
                format!("{e} IN ({list})")
            });
        }
        Filter::Contains { field, value } => {
            let e = field_expression(backend, field, Kind::Text);
            let p = sql.bind(backend, Scalar::Text(value.clone()));
            sql.text.push_str(&dialect(backend).contains(&e, &p));
        }
        Filter::StartsWith { field, value } => {
            let e = field_expression(backend, field, Kind::Text);
            // A range on the expression, so that an index on it serves the filter.
            let low = sql.bind(backend, Scalar::Text(value.clone()));
            match prefix_upper_bound(value) {
                Some(upper) => {
                    let high = sql.bind(backend, Scalar::Text(upper));
                    sql.text
                        .push_str(&format!("({e} >= {low} AND {e} < {high})"));
                }
                None => {
                    let exact = sql.bind(backend, Scalar::Text(value.clone()));
                    let length = value.chars().count();
                    let starts = dialect(backend).starts(&e, length, &exact);
                    sql.text.push_str(&format!("({e} >= {low} AND {starts})"));
                }
            }
        }
        Filter::Related {
            via,
            target,
            filter,
        } => {
            // Unqualified `id` and `data` inside the subquery are the related record's.
            let target = sql.bind(backend, Scalar::Text(target.to_string()));
            let matching = format!(
                "SELECT id FROM entities WHERE tenant_id = $1 AND entity_type = {target} \
                 AND deleted_at IS NULL AND "
            );
            match via {
                Via::Field(field) => {
                    let e = expression(backend, std::slice::from_ref(field), Kind::Text);
                    sql.text.push_str(&format!("{e} IN ("));
                }
                Via::Relation(relation) => {
                    let relation = sql.bind(backend, Scalar::Text(relation.clone()));
                    sql.text.push_str(&format!(
                        "id IN (SELECT source_id FROM relations WHERE tenant_id = $1 \
                         AND source_type = $2 AND relation = {relation} \
                         AND target_type = {target} AND target_id IN ("
                    ));
                }
            }
            sql.text.push_str(&matching);
            compile(backend, filter, sql);
            sql.text.push_str(match via {
                Via::Field(_) => ")",
                Via::Relation(_) => "))",
            });
        }
        Filter::IsNull { field, is_null } => {
            let text = if field.is_id {
                "FALSE".to_string()
            } else {
                let raw = dialect(backend).json_type(&field.path);
                let op = if *is_null { "=" } else { "<>" };
                format!("COALESCE({raw}, 'null') {op} 'null'")
            };
            sql.text.push_str(&text);
        }
    }
}

/// A value as `backend` compares it with a field it reads.
fn bool_for(backend: Backend, value: &Scalar) -> Scalar {
    dialect(backend).comparable(value)
}

/// Appends the keyset condition "after `after` in the order `keys`" to `sql`. NULL sorts
/// before every value.
pub fn compile_after(backend: Backend, keys: &[SortKey], after: &After, sql: &mut Sql) {
    let mut alternatives = Vec::new();
    let mut equal_so_far: Vec<String> = Vec::new();
    for (key, value) in keys.iter().zip(&after.0) {
        let e = field_expression(backend, &key.field, key.kind);
        let (beyond, equal) = match value {
            None if key.descending => (None, format!("{e} IS NULL")),
            None => (Some(format!("{e} IS NOT NULL")), format!("{e} IS NULL")),
            Some(v) => {
                let p = sql.bind(backend, bool_for(backend, v));
                let beyond = if key.descending {
                    format!("({e} < {p} OR {e} IS NULL)")
                } else {
                    format!("{e} > {p}")
                };
                (Some(beyond), format!("{e} = {p}"))
            }
        };
        if let Some(beyond) = beyond {
            let mut conj = equal_so_far.clone();
            conj.push(beyond);
            alternatives.push(format!("({})", conj.join(" AND ")));
        }
        equal_so_far.push(equal);
    }
    if alternatives.is_empty() {
        sql.text.push_str("FALSE");
    } else {
        sql.text
            .push_str(&format!("({})", alternatives.join(" OR ")));
    }
}

/// `ORDER BY` text for `keys`.
pub fn order_by(backend: Backend, keys: &[SortKey]) -> String {
    keys.iter()
        .map(|k| {
            let e = field_expression(backend, &k.field, k.kind);
            // The id is never NULL: its plain direction matches the index's trailing column.
            let direction = dialect(backend).direction(k.descending, !k.field.is_id);
            format!("{e} {direction}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The name and `CREATE INDEX` statement of the index of a field read as `kind`. One index
/// serves every tenant and type with a field of that name and kind.
pub fn index_statement(backend: Backend, field: &str, kind: Kind) -> (String, String) {
    let mut name = format!("entities_{field}_{}_idx", kind.letter());
    if name.len() > 63 {
        let hash = field.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        name = format!("entities_f{hash:016x}_{}_idx", kind.letter());
    }
    let e = expression(backend, &[field.to_string()], kind);
    let e = dialect(backend).index_key(e);
    let sql = format!(
        "CREATE INDEX IF NOT EXISTS \"{name}\" ON entities (tenant_id, entity_type, {e}, id)"
    );
    (name, sql)
}
