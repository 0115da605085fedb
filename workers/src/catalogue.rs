//! The event catalogue for subscribers: an AsyncAPI 3 document of every NATS subject the
//! relay publishes on, the headers of its messages, and each event type's envelope and
//! payload as JSON Schema with its version, built from the domain's own types
//! ([`domain::catalogue`]) and the relay's subjects and headers. `GET /asyncapi.json` serves
//! it; `docs/events.md` is [`markdown`] of it.

use domain::catalogue::Catalogue;
use serde_json::{Map, Value, json};

use crate::relay::restricted_prefix;

/// The headers of every message (see [`crate::relay::headers`]): name, required, meaning.
pub const HEADERS: &[(&str, bool, &str)] = &[
    (
        "Nats-Msg-Id",
        true,
        "The event id: JetStream drops a second publish of the same event within the duplicate window.",
    ),
    ("Gateway-Event-Id", true, "The event id (a UUID)."),
    (
        "Gateway-Cursor",
        true,
        "The event's position in the log (opaque; resume a change feed or live stream after it).",
    ),
    ("Gateway-Tenant", true, "The tenant the event belongs to."),
    (
        "Gateway-Aggregate-Type",
        true,
        "The aggregate type, e.g. `Entity`.",
    ),
    (
        "Gateway-Aggregate-Id",
        true,
        "The aggregate id, e.g. `users/user-001`.",
    ),
    (
        "Gateway-Sequence",
        true,
        "The event's sequence in its aggregate's stream, from 1, without gaps.",
    ),
    (
        "Gateway-Event-Type",
        true,
        "The event type, e.g. `EntityCreated`.",
    ),
    (
        "Gateway-Event-Version",
        true,
        "The version of the event type's payload shape.",
    ),
    (
        "Gateway-Request-Id",
        false,
        "The HTTP request (or job) that caused the event.",
    ),
    (
        "traceparent",
        false,
        "The W3C trace context of the request, when it came with one.",
    ),
];

/// The subject's tokens after the prefix, each escaped (see [`crate::relay::escape_token`]).
const PARAMETERS: &[(&str, &str)] = &[
    ("tenant", "The tenant id."),
    (
        "aggregateType",
        "The aggregate type, e.g. `Entity`, `Session`.",
    ),
    ("eventType", "The event type, e.g. `EntityCreated`."),
    (
        "aggregateId",
        "The aggregate id; bytes other than ASCII letters, digits, `-` and `_` are escaped as `%XX` (`users/user-001` is `users%2Fuser-001`).",
    ),
];

/// The AsyncAPI 3 document of the events published under `prefix` (`NATS_SUBJECT_PREFIX`)
/// on JetStream stream `stream`.
pub fn asyncapi(prefix: &str, stream: &str) -> Value {
    let catalogue = Catalogue::build();
    let mut messages = Map::new();
    let mut public = Map::new();
    let mut restricted = Map::new();
    for event in &catalogue.events {
        let visibility = domain::visibility::of(event.aggregate_type, &event.event_type);
        let mut payload = event.payload.clone();
        strip_fields(&mut payload, visibility.internal_fields);
        let name = event.event_type.clone();
        assert!(
            !messages.contains_key(&name),
            "event type {name} is defined twice"
        );
        messages.insert(
            name.clone(),
            json!({
                "name": name,
                "title": name,
                "summary": event.description.clone().unwrap_or_else(|| format!("{} event", event.aggregate_type)),
                "contentType": "application/json",
                "headers": {"$ref": "#/components/schemas/EventHeaders"},
                "payload": {"allOf": [
                    {"$ref": "#/components/schemas/EventEnvelope"},
                    {
                        "type": "object",
                        "properties": {
                            "aggregateType": {"const": event.aggregate_type},
                            "eventType": {"const": name},
                            "eventVersion": {"const": event.version},
                            "payload": payload,
                        }
                    }
                ]},
                "x-aggregate-type": event.aggregate_type,
                "x-event-version": event.version,
                "x-readable-by": visibility.role.as_str(),
                "x-internal-fields": visibility.internal_fields,
            }),
        );
        let reference = json!({"$ref": format!("#/components/messages/{name}")});
        if visibility.is_public() {
            public.insert(name, reference);
        } else {
            restricted.insert(name, reference);
        }
    }
    let parameters: Map<String, Value> = PARAMETERS
        .iter()
        .map(|(name, description)| (name.to_string(), json!({"description": description})))
        .collect();
    let channel = |address_prefix: &str, description: &str, messages: &Map<String, Value>| {
        json!({
            "address": format!("{address_prefix}.{{tenant}}.{{aggregateType}}.{{eventType}}.{{aggregateId}}"),
            "description": description,
            "parameters": parameters,
            "messages": messages,
        })
    };
    let operation = |channel: &str, messages: &Map<String, Value>, summary: &str| {
        json!({
            "action": "receive",
            "summary": summary,
            "channel": {"$ref": format!("#/channels/{channel}")},
            "messages": messages
                .keys()
                .map(|name| json!({"$ref": format!("#/channels/{channel}/messages/{name}")}))
                .collect::<Vec<_>>(),
        })
    };

    let mut schemas: Map<String, Value> = catalogue.schemas.into_iter().collect();
    schemas.insert("EventEnvelope".into(), envelope_schema());
    schemas.insert("EventHeaders".into(), headers_schema());
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "Gateway events",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Every event of the gateway's log, published once on NATS JetStream \
                by the relay, in log order per subject. Within an event version, fields may be \
                added and never removed, renamed or retyped; a change of shape raises the \
                event's version, and the log upcasts older events when they are read.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "nats": {
                "host": "localhost:4222",
                "protocol": "nats",
                "description": format!("The NATS server of NATS_URL; JetStream stream `{stream}`."),
            }
        },
        "channels": {
            "events": channel(prefix, "Events every reader of the tenant may see.", &public),
            "restrictedEvents": channel(
                &restricted_prefix(prefix),
                "Events only some roles may see (keys, tenants, budgets): outside the public \
                 subjects, so a subscriber receives them only on purpose.",
                &restricted,
            ),
        },
        "operations": {
            "receiveEvents": operation("events", &public, "Receive the public events."),
            "receiveRestrictedEvents": operation(
                "restrictedEvents",
                &restricted,
                "Receive the restricted events.",
            ),
        },
        "components": {
            "messages": messages,
            "schemas": schemas,
        }
    })
}

/// Removes `fields` from an object schema (and the inline parts of an `allOf`).
fn strip_fields(schema: &mut Value, fields: &[&str]) {
    if fields.is_empty() {
        return;
    }
    if let Some(properties) = schema["properties"].as_object_mut() {
        for field in fields {
            properties.remove(*field);
        }
    }
    if let Some(required) = schema["required"].as_array_mut() {
        required.retain(|name| !fields.iter().any(|f| name == f));
    }
    if let Some(parts) = schema["allOf"].as_array_mut() {
        for part in parts {
            strip_fields(part, fields);
        }
    }
}

/// The JSON every message carries (see `RecordedEvent::envelope`).
fn envelope_schema() -> Value {
    json!({
        "type": "object",
        "description": "An event as it travels to subscribers: its position, identity, payload and metadata.",
        "properties": {
            "eventId": {"type": "string", "format": "uuid"},
            "cursor": {"type": "string", "description": "The event's position in the log (opaque)."},
            "tenantId": {"type": "string"},
            "aggregateType": {"type": "string"},
            "aggregateId": {"type": "string"},
            "sequence": {"type": "integer", "minimum": 1},
            "eventType": {"type": "string"},
            "eventVersion": {"type": "string"},
            "recordedAt": {"type": "string", "format": "date-time"},
            "payload": {"description": "The event's fields, by event type."},
            "metadata": {"$ref": "#/components/schemas/EventMetadata"},
        },
        "required": ["eventId", "cursor", "tenantId", "aggregateType", "aggregateId", "sequence",
                     "eventType", "eventVersion", "recordedAt", "payload", "metadata"],
    })
}

fn headers_schema() -> Value {
    let properties: Map<String, Value> = HEADERS
        .iter()
        .map(|(name, _, description)| {
            (
                name.to_string(),
                json!({"type": "string", "description": description}),
            )
        })
        .collect();
    let required: Vec<&str> = HEADERS
        .iter()
        .filter(|(_, required, _)| *required)
        .map(|(name, _, _)| *name)
        .collect();
    json!({"type": "object", "properties": properties, "required": required})
}

/// `docs/events.md`: the document for people.
pub fn markdown(document: &Value) -> String {
    let mut out = String::new();
    let info = &document["info"];
    out.push_str("# Events\n\n");
    out.push_str(
        "<!-- Generated from /asyncapi.json by `GATEWAY_WRITE_DOCS=1 cargo test -p \
         gateway-tests -- event_catalogue`; do not edit. -->\n\n",
    );
    out.push_str(info["description"].as_str().unwrap_or_default());
    out.push_str(
        "\n\nThe machine-readable catalogue is `GET /asyncapi.json` (AsyncAPI 3.0), generated \
         from the code; this page is generated from it.\n\n## Subjects\n\n",
    );
    for channel in document["channels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|c| c.1)
    {
        out.push_str(&format!(
            "- `{}`: {}\n",
            channel["address"].as_str().unwrap_or_default(),
            channel["description"].as_str().unwrap_or_default()
        ));
    }
    out.push('\n');
    for (name, parameter) in PARAMETERS {
        out.push_str(&format!("- `{{{name}}}`: {parameter}\n"));
    }
    out.push_str("\n## Headers\n\n| Header | Always | Meaning |\n| --- | --- | --- |\n");
    for (name, required, description) in HEADERS {
        let always = if *required { "yes" } else { "no" };
        out.push_str(&format!("| `{name}` | {always} | {description} |\n"));
    }
    out.push_str("\n## The envelope\n\nEvery message's body:\n\n");
    let schemas = &document["components"]["schemas"];
    fields_table(&mut out, &schemas["EventEnvelope"]);
    out.push_str("\n`metadata`:\n\n");
    fields_table(&mut out, &schemas["EventMetadata"]);

    out.push_str("\n## Event types\n\n");
    let mut by_aggregate: std::collections::BTreeMap<&str, Vec<(&String, &Value)>> =
        Default::default();
    for (name, message) in document["components"]["messages"]
        .as_object()
        .into_iter()
        .flatten()
    {
        let aggregate = message["x-aggregate-type"].as_str().unwrap_or_default();
        by_aggregate
            .entry(aggregate)
            .or_default()
            .push((name, message));
    }
    for (aggregate, messages) in &by_aggregate {
        out.push_str(&format!("### {aggregate}\n\n"));
        for (name, message) in messages {
            event_section(&mut out, name, message);
        }
    }

    out.push_str("## Shared types\n\n");
    for (name, schema) in schemas.as_object().into_iter().flatten() {
        if matches!(
            name.as_str(),
            "EventEnvelope" | "EventHeaders" | "EventMetadata"
        ) {
            continue;
        }
        out.push_str(&format!("### {name}\n\n"));
        if let Some(description) = schema["description"].as_str() {
            out.push_str(&description.replace('\n', " "));
            out.push_str("\n\n");
        }
        if schema.get("properties").is_some() {
            fields_table(&mut out, schema);
        } else {
            out.push_str(&format!("{}\n", type_of(schema)));
        }
        out.push('\n');
    }
    out
}

/// One event type's section of [`markdown`].
fn event_section(out: &mut String, name: &str, message: &Value) {
    let payload = &message["payload"]["allOf"][1]["properties"]["payload"];
    out.push_str(&format!(
        "#### {name}\n\nVersion {}, readable by `{}`. {}\n\n",
        message["x-event-version"].as_str().unwrap_or_default(),
        message["x-readable-by"].as_str().unwrap_or_default(),
        message["summary"]
            .as_str()
            .unwrap_or_default()
            .replace('\n', " "),
    ));
    if let Some(internal) = message["x-internal-fields"].as_array()
        && !internal.is_empty()
    {
        let names: Vec<String> = internal
            .iter()
            .filter_map(Value::as_str)
            .map(|f| format!("`{f}`"))
            .collect();
        out.push_str(&format!(
            "Never published: {} (kept inside the gateway).\n\n",
            names.join(", ")
        ));
    }
    fields_table(out, payload);
    out.push('\n');
}

/// A table of an object schema's fields (following `allOf`).
fn fields_table(out: &mut String, schema: &Value) {
    let mut rows = Vec::new();
    collect_fields(schema, &mut rows);
    if rows.is_empty() {
        out.push_str("No fields.\n");
        return;
    }
    out.push_str("| Field | Type | Required | Meaning |\n| --- | --- | --- | --- |\n");
    for (name, field, required) in rows {
        let required = if required { "yes" } else { "no" };
        let description = field["description"]
            .as_str()
            .or_else(|| field["oneOf"][0]["description"].as_str())
            .unwrap_or_default()
            .replace('\n', " ")
            .replace('|', "\\|");
        out.push_str(&format!(
            "| `{name}` | {} | {required} | {description} |\n",
            type_of(&field)
        ));
    }
}

fn collect_fields(schema: &Value, rows: &mut Vec<(String, Value, bool)>) {
    if let Some(parts) = schema["allOf"].as_array() {
        for part in parts {
            collect_fields(part, rows);
        }
    }
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.rsplit('/').next().unwrap_or(reference);
        rows.push((
            format!("(the fields of {name})"),
            json!({"$ref": reference}),
            true,
        ));
    }
    let required: Vec<&str> = schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    for (name, field) in schema["properties"].as_object().into_iter().flatten() {
        rows.push((
            name.clone(),
            field.clone(),
            required.contains(&name.as_str()),
        ));
    }
}

/// A schema's type, in words, with links to shared types.
fn type_of(schema: &Value) -> String {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.rsplit('/').next().unwrap_or(reference);
        return format!("[{name}](#{})", name.to_lowercase());
    }
    if let Some(options) = schema["oneOf"].as_array() {
        let words: Vec<String> = options.iter().map(type_of).collect();
        return words.join(" or ");
    }
    if let Some(values) = schema["enum"].as_array() {
        let words: Vec<String> = values.iter().map(|v| format!("`{v}`")).collect();
        return format!("one of {}", words.join(", "));
    }
    if let Some(value) = schema.get("const") {
        return format!("`{value}`");
    }
    let kinds: Vec<&str> = match &schema["type"] {
        Value::String(kind) => vec![kind.as_str()],
        Value::Array(kinds) => kinds.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    if kinds.is_empty() {
        return "any JSON".to_string();
    }
    let words: Vec<String> = kinds
        .iter()
        .map(|kind| match *kind {
            "array" => format!("array of {}", type_of(&schema["items"])),
            "object" if schema["additionalProperties"].is_object() => {
                format!("object of {}", type_of(&schema["additionalProperties"]))
            }
            "string" if schema["format"].is_string() => {
                format!("string ({})", schema["format"].as_str().unwrap_or_default())
            }
            other => other.to_string(),
        })
        .collect();
    words.join(" or ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_header_the_relay_sets_is_declared() {
        let event = eventlog::RecordedEvent {
            cursor: eventlog::Cursor::new(1, 2),
            event_id: uuid::Uuid::now_v7(),
            tenant_id: "acme".into(),
            aggregate_type: "Entity".into(),
            aggregate_id: "users/u-1".into(),
            sequence: 1,
            event_type: "EntityCreated".into(),
            event_version: "1.0".into(),
            payload: json!({}).into(),
            metadata: json!({"requestId": "req_1", "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}).into(),
            recorded_at: chrono::Utc::now(),
        };
        let headers = crate::relay::headers(&event);
        let declared: Vec<&str> = HEADERS.iter().map(|(name, _, _)| *name).collect();
        for (name, _) in headers.iter() {
            assert!(
                declared
                    .iter()
                    .any(|d| d.eq_ignore_ascii_case(name.as_ref())),
                "{name:?} is not declared"
            );
        }
        assert_eq!(headers.iter().count(), declared.len());
    }

    #[test]
    fn the_document_is_asyncapi_3_with_every_subject_and_no_internal_field() {
        let document = asyncapi("gateway", "GATEWAY");
        assert_eq!(document["asyncapi"], "3.0.0");
        assert_eq!(
            document["channels"]["events"]["address"],
            "gateway.{tenant}.{aggregateType}.{eventType}.{aggregateId}"
        );
        assert_eq!(
            document["channels"]["restrictedEvents"]["address"],
            "gateway_restricted.{tenant}.{aggregateType}.{eventType}.{aggregateId}"
        );
        let issued = &document["components"]["messages"]["ApiKeyIssued"];
        let payload = &issued["payload"]["allOf"][1]["properties"]["payload"];
        assert!(payload["properties"]["secretHash"].is_null(), "{payload}");
        assert!(payload["properties"]["roles"].is_object());
        assert!(document["channels"]["restrictedEvents"]["messages"]["ApiKeyIssued"].is_object());
        assert!(document["channels"]["events"]["messages"]["EntityCreated"].is_object());
        // Every reference resolves.
        let text = document.to_string();
        for reference in text.split("\"$ref\":\"#/").skip(1) {
            let path = &reference[..reference.find('"').unwrap()];
            let mut node = &document;
            for part in path.split('/') {
                node = &node[part];
            }
            assert!(!node.is_null(), "#/{path} does not resolve");
        }
    }
}
