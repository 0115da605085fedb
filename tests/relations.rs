//! Relations between records, black-box over HTTP on both backends: link and unlink, pages
//! of outgoing and incoming edges, delete rules, `where` across one hop, and `_transact`.

use reqwest::Method;
use serde_json::{Value, json};

use crate::both_backends;
use crate::helpers::{Backend, TestApp, error_code, json_of, not_found, spawn_app};

const TENANT: &str = "tenant-a";

async fn send(app: &TestApp, method: Method, path: &str, body: Option<Value>) -> reqwest::Response {
    let request = app.request(method, path, TENANT);
    let request = match body {
        Some(body) => request.json(&body),
        None => request,
    };
    request.send().await.unwrap()
}

fn position(response: &reqwest::Response) -> String {
    response.headers()["x-event-position"]
        .to_str()
        .unwrap()
        .to_string()
}

/// GET `path` once the read models have passed `at`.
async fn read(app: &TestApp, path: &str, at: &str) -> Value {
    let response = app
        .request(Method::GET, path, TENANT)
        .header("x-min-position", at)
        .header("x-consistency", "strict")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{path}");
    response.json().await.unwrap()
}

fn ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["id"].as_str().unwrap().to_string())
        .collect()
}

/// `people` (with an indexed `country`), and `teams` with an `owner` reference field, a
/// `members` relation (unlinked when a person goes) and a `sponsors` relation that keeps its
/// people from being deleted; `teams` also relate to themselves (`parent`).
async fn define_types(app: &TestApp) {
    let people = json!({"name": "people", "fields": {
        "name": {"type": "string", "required": true},
        "country": {"type": "string", "indexed": true}
    }});
    let teams = json!({"name": "teams", "fields": {
        "name": {"type": "string", "required": true},
        "owner": {"type": "reference", "references": "people", "onDelete": "nullify"}
    }, "relations": {
        "members": {"to": "people"},
        "sponsors": {"to": "people", "onDelete": "restrict"},
        "parent": {"to": "teams"}
    }});
    for body in [people, teams] {
        let response = send(app, Method::POST, "/v1/entity-types", Some(body)).await;
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    }
}

async fn person(app: &TestApp, id: &str, country: &str) {
    let body = json!({"id": id, "name": id, "country": country});
    let response = send(app, Method::POST, "/v1/people", Some(body)).await;
    assert_eq!(response.status(), 201);
}

async fn team(app: &TestApp, id: &str, owner: &str) -> String {
    let body = json!({"id": id, "name": id, "owner": owner});
    let response = send(app, Method::POST, "/v1/teams", Some(body)).await;
    assert_eq!(response.status(), 201);
    position(&response)
}

async fn link(app: &TestApp, path: &str) -> reqwest::Response {
    send(app, Method::PUT, path, None).await
}

async fn relations_link_page_and_unlink(backend: Backend) {
    let app = spawn_app(backend).await;
    define_types(&app).await;
    for (id, country) in [("ann", "DE"), ("bob", "FR"), ("cyd", "DE"), ("dan", "US")] {
        person(&app, id, country).await;
    }
    team(&app, "core", "ann").await;

    let linked = link(&app, "/v1/teams/core/relations/members/bob").await;
    assert_eq!(linked.status(), 201);
    let body = json_of(linked).await;
    assert_eq!(
        body,
        json!({"entity": "teams", "id": "core", "relation": "members",
               "targetEntity": "people", "targetId": "bob"})
    );
    // Linking again changes nothing and says so.
    let again = link(&app, "/v1/teams/core/relations/members/bob").await;
    assert_eq!(again.status(), 200);
    for member in ["ann", "cyd", "dan"] {
        assert_eq!(
            link(&app, &format!("/v1/teams/core/relations/members/{member}"))
                .await
                .status(),
            201
        );
    }
    let last = link(&app, "/v1/teams/core/relations/sponsors/dan").await;
    assert_eq!(last.status(), 201);
    let at = position(&last);

    // Outgoing, a page at a time in id order, each with the record it reaches.
    let first = read(&app, "/v1/teams/core/relations/members?limit=3", &at).await;
    assert_eq!(ids(&first), ["ann", "bob", "cyd"]);
    assert_eq!(first["items"][1]["entity"], "people");
    assert_eq!(first["items"][1]["record"]["data"]["country"], "FR");
    assert!(first["items"][1]["linkedAt"].is_string());
    let cursor = first["nextCursor"].as_str().unwrap();
    let second = read(
        &app,
        &format!("/v1/teams/core/relations/members?limit=3&cursor={cursor}"),
        &at,
    )
    .await;
    assert_eq!(ids(&second), ["dan"]);
    assert!(second["nextCursor"].is_null());

    // Incoming: who points at dan, by relation.
    let incoming = read(&app, "/v1/people/dan/incoming/teams/members", &at).await;
    assert_eq!(ids(&incoming), ["core"]);
    assert_eq!(incoming["items"][0]["record"]["data"]["name"], "core");
    let sponsors = read(&app, "/v1/people/dan/incoming/teams/sponsors", &at).await;
    assert_eq!(ids(&sponsors), ["core"]);
    let none = read(&app, "/v1/people/bob/incoming/teams/sponsors", &at).await;
    assert_eq!(ids(&none), Vec::<String>::new());

    // Unlink; unlinking what is not linked is a 404 naming the edge.
    let unlinked = send(
        &app,
        Method::DELETE,
        "/v1/teams/core/relations/members/bob",
        None,
    )
    .await;
    assert_eq!(unlinked.status(), 200);
    let at = position(&unlinked);
    let gone = send(
        &app,
        Method::DELETE,
        "/v1/teams/core/relations/members/bob",
        None,
    )
    .await;
    assert_eq!(not_found(gone).await, "edge");
    let page = read(&app, "/v1/teams/core/relations/members", &at).await;
    assert_eq!(ids(&page), ["ann", "cyd", "dan"]);
    let page = read(&app, "/v1/people/bob/incoming/teams/members", &at).await;
    assert_eq!(ids(&page), Vec::<String>::new());

    // What does not exist is named.
    let missing = link(&app, "/v1/teams/core/relations/members/nobody").await;
    assert_eq!(not_found(missing).await, "entity");
    let missing = link(&app, "/v1/teams/ghost/relations/members/ann").await;
    assert_eq!(not_found(missing).await, "entity");
    let missing = link(&app, "/v1/teams/core/relations/friends/ann").await;
    assert_eq!(not_found(missing).await, "relation");
    let missing = send(&app, Method::GET, "/v1/teams/core/relations/friends", None).await;
    assert_eq!(not_found(missing).await, "relation");
    // `members` points at people, not teams: a team has no incoming members.
    let wrong = send(
        &app,
        Method::GET,
        "/v1/teams/core/incoming/teams/members",
        None,
    )
    .await;
    assert_eq!(not_found(wrong).await, "relation");
    let bad = send(
        &app,
        Method::GET,
        "/v1/teams/core/relations/members?limit=0",
        None,
    )
    .await;
    assert_eq!(error_code(bad).await, (400, "INVALID_PARAMETER".into()));
    let bad = send(
        &app,
        Method::GET,
        "/v1/teams/core/relations/members?cursor=%25%25",
        None,
    )
    .await;
    assert_eq!(error_code(bad).await, (400, "INVALID_PARAMETER".into()));

    // Another tenant sees none of it.
    let other = app
        .request(Method::GET, "/v1/teams/core/relations/members", "tenant-b")
        .send()
        .await
        .unwrap();
    assert_eq!(not_found(other).await, "entityType");
}
both_backends!(
    relations_link_page_and_unlink,
    relations_link_page_and_unlink
);

async fn deleting_a_record_applies_each_relations_rule(backend: Backend) {
    let app = spawn_app(backend).await;
    define_types(&app).await;
    for (id, country) in [("ann", "DE"), ("bob", "FR"), ("cyd", "DE")] {
        person(&app, id, country).await;
    }
    team(&app, "core", "ann").await;
    team(&app, "web", "bob").await;
    for path in [
        "/v1/teams/core/relations/members/ann",
        "/v1/teams/core/relations/members/bob",
        "/v1/teams/web/relations/members/bob",
        "/v1/teams/web/relations/sponsors/cyd",
        "/v1/teams/web/relations/parent/core",
        "/v1/teams/core/relations/parent/core",
    ] {
        assert_eq!(link(&app, path).await.status(), 201, "{path}");
    }

    // A `restrict` relation keeps its target.
    let refused = send(&app, Method::DELETE, "/v1/people/cyd", None).await;
    assert_eq!(refused.status(), 409);
    let body = json_of(refused).await;
    assert_eq!(body["error"]["code"], "REFERENCE_RESTRICTED");
    assert_eq!(
        body["error"]["details"]["referencedBy"],
        json!([{"entityType": "teams", "id": "web", "field": "sponsors", "relation": true}])
    );

    // An `unlink` relation lets its target go and loses the edges, in the same commit.
    let deleted = send(&app, Method::DELETE, "/v1/people/bob", None).await;
    assert_eq!(deleted.status(), 200);
    let at = position(&deleted);
    assert_eq!(
        ids(&read(&app, "/v1/teams/core/relations/members", &at).await),
        ["ann"]
    );
    assert_eq!(
        ids(&read(&app, "/v1/teams/web/relations/members", &at).await),
        Vec::<String>::new()
    );

    // Deleting the record an edge starts from removes its edges: web's sponsor is free.
    let deleted = send(&app, Method::DELETE, "/v1/teams/web", None).await;
    assert_eq!(deleted.status(), 200);
    let at = position(&deleted);
    assert_eq!(
        ids(&read(&app, "/v1/people/cyd/incoming/teams/sponsors", &at).await),
        Vec::<String>::new()
    );
    assert_eq!(
        ids(&read(&app, "/v1/teams/core/incoming/teams/parent", &at).await),
        ["core"]
    );
    let deleted = send(&app, Method::DELETE, "/v1/people/cyd", None).await;
    assert_eq!(deleted.status(), 200);
    // A record linked to itself goes too.
    let deleted = send(&app, Method::DELETE, "/v1/teams/core", None).await;
    assert_eq!(deleted.status(), 200);
    let at = position(&deleted);
    assert_eq!(
        ids(&read(&app, "/v1/people/ann/incoming/teams/members", &at).await),
        Vec::<String>::new()
    );

    // A deleted record takes no edges, in either direction.
    let refused = link(&app, "/v1/teams/core/relations/members/ann").await;
    assert_eq!(not_found(refused).await, "entity");
    team(&app, "ops", "ann").await;
    let refused = link(&app, "/v1/teams/ops/relations/members/bob").await;
    assert_eq!(not_found(refused).await, "entity");
}
both_backends!(
    deleting_a_record_applies_each_relations_rule,
    deleting_a_record_applies_each_relations_rule
);

async fn where_follows_one_reference_or_relation(backend: Backend) {
    let app = spawn_app(backend).await;
    define_types(&app).await;
    for (id, country) in [("ann", "DE"), ("bob", "FR"), ("cyd", "DE"), ("dan", "US")] {
        person(&app, id, country).await;
    }
    team(&app, "core", "ann").await;
    team(&app, "web", "bob").await;
    team(&app, "ops", "dan").await;
    for path in [
        "/v1/teams/web/relations/members/cyd",
        "/v1/teams/web/relations/members/bob",
        "/v1/teams/ops/relations/members/bob",
    ] {
        assert_eq!(link(&app, path).await.status(), 201);
    }
    let last = link(&app, "/v1/teams/core/relations/members/dan").await;
    let at = position(&last);

    let query = |filter: Value| {
        let encoded: String = url_encode(&filter.to_string());
        format!("/v1/teams?where={encoded}")
    };
    // Teams whose owner is in DE (a reference field), nested or dotted.
    let owned = read(&app, &query(json!({"owner": {"country": "DE"}})), &at).await;
    assert_eq!(ids(&owned), ["core"]);
    let owned = read(
        &app,
        &query(json!({"owner.country": {"in": ["DE", "US"]}})),
        &at,
    )
    .await;
    assert_eq!(ids(&owned), ["core", "ops"]);
    // Teams with a member in DE (a relation: some edge reaches a match).
    let with = read(&app, &query(json!({"members": {"country": "DE"}})), &at).await;
    assert_eq!(ids(&with), ["web"]);
    // Combined with the team's own fields and negated.
    let with = read(
        &app,
        &query(json!({"not": {"members": {"country": "FR"}}, "name": {"ne": "x"}})),
        &at,
    )
    .await;
    assert_eq!(ids(&with), ["core"]);
    // A member's id.
    let with = read(&app, &query(json!({"members": {"id": "bob"}})), &at).await;
    assert_eq!(ids(&with), ["ops", "web"]);

    // Two hops, an unknown field of the related type and a bare relation are refused.
    for bad in [
        json!({"members": {"owner": {"country": "DE"}}}),
        json!({"owner": {"shoeSize": 3}}),
        json!({"members": "bob"}),
    ] {
        let response = send(&app, Method::GET, &query(bad.clone()), None).await;
        assert_eq!(
            error_code(response).await,
            (400, "INVALID_PARAMETER".into()),
            "{bad}"
        );
    }
}
both_backends!(
    where_follows_one_reference_or_relation,
    where_follows_one_reference_or_relation
);

async fn transact_links_records_it_creates(backend: Backend) {
    let app = spawn_app(backend).await;
    define_types(&app).await;
    let body = json!({"operations": [
        {"op": "create", "entity": "people", "data": {"id": "eve", "name": "Eve"}},
        {"op": "create", "entity": "teams", "data": {"id": "lab", "name": "Lab"}},
        {"op": "link", "entity": "teams", "id": "lab", "relation": "members", "target": "eve"},
        {"op": "link", "entity": "teams", "id": "lab", "relation": "members", "target": "eve"}
    ]});
    let response = send(&app, Method::POST, "/v1/_transact", Some(body)).await;
    assert_eq!(response.status(), 200);
    let at = position(&response);
    let body = json_of(response).await;
    assert_eq!(body["results"][2]["op"], "link");
    assert_eq!(body["results"][2]["status"], 201);
    assert_eq!(body["results"][3]["status"], 200);
    assert_eq!(body["results"][2]["edge"]["targetId"], "eve");
    assert_eq!(
        ids(&read(&app, "/v1/teams/lab/relations/members", &at).await),
        ["eve"]
    );

    // A link to a record that does not exist fails the whole transaction.
    let body = json!({"operations": [
        {"op": "create", "entity": "people", "data": {"id": "fay", "name": "Fay"}},
        {"op": "link", "entity": "teams", "id": "lab", "relation": "members", "target": "ghost"}
    ]});
    let response = send(&app, Method::POST, "/v1/_transact", Some(body)).await;
    let body = json_of(response).await;
    assert_eq!(body["error"]["code"], "RESOURCE_NOT_FOUND");
    assert_eq!(body["error"]["details"]["operation"], 1);
    let fay = send(&app, Method::GET, "/v1/people/fay", None).await;
    assert_eq!(fay.status(), 404);

    // Malformed link operations.
    for (operation, field) in [
        (
            json!({"op": "link", "entity": "teams", "id": "lab", "target": "eve"}),
            "relation",
        ),
        (
            json!({"op": "link", "entity": "teams", "id": "lab", "relation": "members"}),
            "target",
        ),
        (
            json!({"op": "create", "entity": "teams", "data": {"name": "x"}, "relation": "members"}),
            "relation",
        ),
    ] {
        let response = send(
            &app,
            Method::POST,
            "/v1/_transact",
            Some(json!({"operations": [operation]})),
        )
        .await;
        let body = json_of(response).await;
        assert_eq!(body["error"]["code"], "VALIDATION_ERROR", "{body}");
        assert_eq!(body["error"]["details"]["fields"][0]["field"], field);
    }

    // A relation cannot be removed or pointed elsewhere, nor named like a field.
    for (schema, code) in [
        (
            json!({"fields": {"name": {"type": "string", "required": true},
            "owner": {"type": "reference", "references": "people", "onDelete": "nullify"}},
            "relations": {"members": {"to": "teams"}, "sponsors": {"to": "people", "onDelete": "restrict"}, "parent": {"to": "teams"}}}),
            "INCOMPATIBLE_SCHEMA_CHANGE",
        ),
        (
            json!({"fields": {"name": {"type": "string", "required": true},
            "owner": {"type": "reference", "references": "people", "onDelete": "nullify"}},
            "relations": {"members": {"to": "people"}}}),
            "INCOMPATIBLE_SCHEMA_CHANGE",
        ),
        (
            json!({"fields": {"name": {"type": "string", "required": true},
            "owner": {"type": "reference", "references": "people", "onDelete": "nullify"}},
            "relations": {"members": {"to": "people"}, "sponsors": {"to": "people"}, "parent": {"to": "teams"}, "owner": {"to": "people"}}}),
            "VALIDATION_ERROR",
        ),
        (
            json!({"fields": {"name": {"type": "string", "required": true},
            "owner": {"type": "reference", "references": "people", "onDelete": "nullify"}},
            "relations": {"members": {"to": "people"}, "sponsors": {"to": "people"}, "parent": {"to": "teams"}, "pets": {"to": "animals"}}}),
            "VALIDATION_ERROR",
        ),
    ] {
        let response = send(&app, Method::PATCH, "/v1/entity-types/teams", Some(schema)).await;
        let status = response.status().as_u16();
        let body = json_of(response).await;
        assert_eq!(body["error"]["code"], code, "{status} {body}");
    }
}
both_backends!(
    transact_links_records_it_creates,
    transact_links_records_it_creates
);

/// Percent-encodes a query parameter value.
fn url_encode(raw: &str) -> String {
    raw.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn the_relation_seed_has_seed_003s_shape(backend: Backend) {
    let db = crate::helpers::TestDb::new(backend).await;
    let settings = db.settings();
    let mut stages = std::collections::BTreeSet::new();
    let shape = app::seed::RelationShape {
        users: 400,
        projects: 300,
        resources: 300,
        batch: 120,
        concurrency: 3,
    };
    let report = app::seed::relations(&settings, "ddms", shape, |stage, _, _| {
        stages.insert(stage.to_string());
    })
    .await
    .expect("the seed runs");
    assert_eq!(
        (report.users, report.projects, report.resources),
        (400, 300, 300)
    );
    // Two members per project and two users per resource: 1.2 edges per record.
    assert_eq!(report.edges, 1_200);
    // A record each, a reference each for projects and resources, two events per edge.
    assert_eq!(report.events, 1_000 + 600 + 2 * 1_200);
    for stage in ["users", "projects", "resources", "members", "relations"] {
        assert!(stages.contains(stage), "{stage} in {stages:?}");
    }
    let again = app::seed::relations(&settings, "ddms", shape, |_, _, _| {}).await;
    assert!(
        again.is_err(),
        "a second seed of the same tenant is refused"
    );

    let app = crate::helpers::spawn_app_on(db.share(), |_| {}).await;
    let key = report.reader_key.clone();
    let get = |path: String| {
        let request = app.with_key(Method::GET, &path, &key);
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200, "{path}");
            response.json::<Value>().await.unwrap()
        }
    };
    let members = get("/v1/projects/project-0000007/relations/members".into()).await;
    assert_eq!(members["items"].as_array().unwrap().len(), 2);
    assert!(members["items"][0]["record"]["data"]["email"].is_string());
    let user = members["items"][0]["id"].as_str().unwrap().to_string();
    let incoming = get(format!("/v1/users/{user}/incoming/projects/members")).await;
    assert!(ids(&incoming).contains(&"project-0000007".to_string()));

    // One hop, both ways, agree with the records' own data.
    let filter = url_encode(r#"{"owner":{"country":"DE"}}"#);
    let page = get(format!("/v1/projects?where={filter}&limit=500&count=exact")).await;
    let total = page["total"].as_i64().unwrap();
    assert!(total > 0 && total < 300, "{total}");
    for item in page["items"].as_array().unwrap() {
        let owner = item["data"]["owner"].as_str().unwrap();
        let owner = get(format!("/v1/users/{owner}")).await;
        assert_eq!(owner["data"]["country"], "DE");
    }
    let filter = url_encode(r#"{"members":{"country":"DE"}}"#);
    let page = get(format!("/v1/projects?where={filter}&limit=500&count=exact")).await;
    assert!(page["total"].as_i64().unwrap() > 0);
    let project = page["items"][0]["id"].as_str().unwrap();
    let members = get(format!("/v1/projects/{project}/relations/members")).await;
    assert!(
        members["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["record"]["data"]["country"] == "DE")
    );
}
both_backends!(
    the_relation_seed_has_seed_003s_shape,
    the_relation_seed_has_seed_003s_shape
);
