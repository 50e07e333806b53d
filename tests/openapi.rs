//! Keeps `docs/openapi.yaml` true: the document is OpenAPI 3.1 with the identity paths, its
//! references resolve and its schemas compile; then real gateways (SQLite store, bcrypt cost 10)
//! are driven to every reachable answer, and each answer's status must be documented for its
//! operation, its body must validate against the documented schema for that status (JSON
//! Schema 2020-12, formats checked) and every header documented as required must be present
//! and match its schema.

mod common;

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt::Write as _;

use common::config::TestConfig;
use common::{Gateway, Response, claims_with, hs256, request_bytes};
use serde_json::{Map, Value, json};

const SPEC: &str = include_str!("../docs/openapi.yaml");
const PASSWORD: &str = "correct horse battery";
const PREFIX: &str = "/api/v1/auth";

/// The error codes of CONTRACT section 5, in its order, then those its additions join to it.
const CONTRACT_CODES: [&str; 18] = [
    "missing_token",
    "invalid_token",
    "token_expired",
    "token_revoked",
    "forbidden",
    "not_found",
    "invalid_credentials",
    "email_taken",
    "validation_failed",
    "bad_request",
    "payload_too_large",
    "unsupported_media_type",
    "rate_limited",
    "service_unavailable",
    "bad_gateway",
    "gateway_timeout",
    "internal",
    "insufficient_scope",
];

// ---------------------------------------------------------------------------------------------
// the document
// ---------------------------------------------------------------------------------------------

struct Spec {
    doc: Value,
    /// (operation id, status) pairs a real response was checked against.
    covered: RefCell<BTreeSet<(String, u16)>>,
}

impl Spec {
    fn load() -> Spec {
        let doc: Value = serde_yaml_ng::from_str(SPEC)
            .unwrap_or_else(|e| panic!("docs/openapi.yaml is not valid YAML: {e}"));
        Spec {
            doc,
            covered: RefCell::new(BTreeSet::new()),
        }
    }

    /// Follows a local `$ref` (`#/components/...`), repeatedly; other values as they are.
    fn resolve<'a>(&'a self, mut v: &'a Value) -> &'a Value {
        for _ in 0..16 {
            let Some(r) = v.get("$ref").and_then(Value::as_str) else {
                return v;
            };
            let pointer = r
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("only local references are used, found {r}"));
            v = self
                .doc
                .pointer(pointer)
                .unwrap_or_else(|| panic!("dangling reference {r}"));
        }
        panic!("reference loop at {v}");
    }

    fn operation(&self, path: &str, method: &str) -> &Value {
        self.doc["paths"]
            .get(path)
            .and_then(|p| p.get(method))
            .unwrap_or_else(|| panic!("{method} {path} is not documented"))
    }

    fn operation_id(&self, path: &str, method: &str) -> String {
        self.operation(path, method)["operationId"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} {path} has no operationId"))
            .to_owned()
    }

    /// The documented response of an operation for a status (references resolved).
    fn response(&self, path: &str, method: &str, status: u16) -> &Value {
        let op = self.operation(path, method);
        let r = op["responses"].get(status.to_string()).unwrap_or_else(|| {
            let documented: Vec<&String> = op["responses"]
                .as_object()
                .map(|m| m.keys().collect())
                .unwrap_or_default();
            panic!("{method} {path} answered {status}, which is not documented (documented: {documented:?})")
        });
        self.resolve(r)
    }

    /// A schema as a standalone JSON Schema 2020-12 document: `#/components/schemas/X`
    /// references become `#/$defs/X`, with every component schema under `$defs`.
    fn standalone(&self, schema: &Value) -> Value {
        let defs = rewrite_refs(&self.doc["components"]["schemas"]);
        let mut root = match rewrite_refs(schema) {
            Value::Object(m) => m,
            other => panic!("a schema must be an object, found {other}"),
        };
        root.insert(
            "$schema".into(),
            "https://json-schema.org/draft/2020-12/schema".into(),
        );
        root.insert("$defs".into(), defs);
        Value::Object(root)
    }

    fn validator(&self, schema: &Value) -> jsonschema::Validator {
        let standalone = self.standalone(schema);
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(&standalone)
            .unwrap_or_else(|e| panic!("schema does not compile ({e}): {schema}"))
    }

    /// Validates `instance` against `schema`; panics listing every violation.
    fn validate(&self, schema: &Value, instance: &Value, what: &str) {
        let validator = self.validator(schema);
        let errors: Vec<String> = validator
            .iter_errors(instance)
            .map(|e| format!("  at {}: {e}", e.instance_path))
            .collect();
        assert!(
            errors.is_empty(),
            "{what} does not match its documented schema:\n{}\ninstance: {instance}\nschema: {schema}",
            errors.join("\n")
        );
    }

    /// Checks a real response against the document; returns its JSON body (`Null` if none).
    #[track_caller]
    fn check(&self, path: &str, method: &str, r: &Response) -> Value {
        let documented = self.response(path, method, r.status);
        let what = format!("{method} {path} → {}", r.status);
        let body = self.check_against(documented, r, &what);
        self.covered
            .borrow_mut()
            .insert((self.operation_id(path, method), r.status));
        body
    }

    /// Checks a real response against one response object (references resolved).
    #[track_caller]
    fn check_against(&self, documented: &Value, r: &Response, what: &str) -> Value {
        // Headers documented as required are there and match their schemas.
        if let Some(headers) = documented.get("headers").and_then(Value::as_object) {
            for (name, h) in headers {
                let h = self.resolve(h);
                let values = r.headers_all(name);
                if h["required"] == true {
                    assert_eq!(
                        values.len(),
                        1,
                        "{what}: header {name} is documented as required (once); got {values:?}"
                    );
                }
                if let (Some(schema), Some(value)) = (h.get("schema"), values.first()) {
                    let schema = self.resolve(schema);
                    let instance = if schema["type"] == "integer" {
                        value
                            .parse::<i64>()
                            .map_or_else(|_| Value::String((*value).to_owned()), Value::from)
                    } else {
                        Value::String((*value).to_owned())
                    };
                    self.validate(schema, &instance, &format!("{what}: header {name}"));
                }
            }
        }
        // The body: the documented media type and schema, or nothing.
        let content = documented.get("content").and_then(Value::as_object);
        let Some(content) = content.filter(|c| !c.is_empty()) else {
            assert!(
                r.body.is_empty(),
                "{what}: no body is documented, got {:?}",
                r.text()
            );
            return Value::Null;
        };
        let ct = r.header("content-type").unwrap_or_default();
        let essence = ct
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        let media = content.get(&essence).unwrap_or_else(|| {
            panic!(
                "{what}: content-type {ct:?} is not documented (documented: {:?})",
                content.keys().collect::<Vec<_>>()
            )
        });
        let body: Value = serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("{what}: body is not JSON ({e}): {:?}", r.text()));
        let schema = media
            .get("schema")
            .unwrap_or_else(|| panic!("{what}: {essence} has no schema"));
        self.validate(schema, &body, &format!("{what}: body"));
        body
    }

    fn assert_covered(&self, expected: &[(&str, u16)]) {
        let covered = self.covered.borrow();
        let missing: Vec<_> = expected
            .iter()
            .filter(|(op, status)| !covered.contains(&((*op).to_owned(), *status)))
            .collect();
        assert!(
            missing.is_empty(),
            "answers never produced and checked: {missing:?}"
        );
    }
}

/// `#/components/schemas/X` → `#/$defs/X`, everywhere in `v`.
fn rewrite_refs(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, val) in m {
                let new = match (k.as_str(), val) {
                    ("$ref", Value::String(r)) => {
                        let name = r.strip_prefix("#/components/schemas/").unwrap_or_else(|| {
                            panic!("a schema may only reference #/components/schemas/, found {r}")
                        });
                        Value::String(format!("#/$defs/{name}"))
                    }
                    _ => rewrite_refs(val),
                };
                out.insert(k.clone(), new);
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(rewrite_refs).collect()),
        other => other.clone(),
    }
}

/// Every `$ref` string anywhere in `v`.
fn all_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, val) in m {
                match (k.as_str(), val) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => all_refs(val, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| all_refs(x, out)),
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// the document on its own
// ---------------------------------------------------------------------------------------------

#[test]
#[allow(clippy::too_many_lines)]
fn document_is_openapi_3_1_with_the_identity_paths_and_consistent() {
    let spec = Spec::load();
    let doc = &spec.doc;
    let version = doc["openapi"].as_str().expect("an openapi version string");
    assert!(version.starts_with("3.1."), "OpenAPI 3.1, got {version}");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());

    let ops = [
        ("/api/v1/auth/register", "post", "register"),
        ("/api/v1/auth/signin", "post", "signin"),
        ("/api/v1/auth/signout", "post", "signout"),
        ("/api/v1/auth/me", "get", "me"),
        ("/.well-known/jwks.json", "get", "jwks"),
        ("/_portcullis/auth/nginx", "get", "forwardAuthNginx"),
        ("/_portcullis/auth/traefik", "get", "forwardAuthTraefik"),
        ("/_portcullis/auth/envoy/{path}", "get", "forwardAuthEnvoy"),
    ];
    for (path, method, id) in ops {
        assert_eq!(spec.operation_id(path, method), id, "{method} {path}");
    }

    // Every reference resolves; every component schema compiles on its own.
    let mut refs = Vec::new();
    all_refs(doc, &mut refs);
    assert!(!refs.is_empty());
    for r in &refs {
        let pointer = r.strip_prefix('#').expect("local references only");
        assert!(doc.pointer(pointer).is_some(), "dangling reference {r}");
    }
    for (name, schema) in doc["components"]["schemas"].as_object().unwrap() {
        let _ = spec.validator(schema);
        assert!(
            schema.get("description").is_some()
                || schema.get("type").is_some()
                || schema.get("allOf").is_some()
                || schema.get("oneOf").is_some(),
            "schema {name} says nothing"
        );
    }

    // The error codes are exactly the contract's.
    let codes: Vec<&str> = doc["components"]["schemas"]["ProblemCode"]["enum"]
        .as_array()
        .expect("ProblemCode enum")
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(codes, CONTRACT_CODES);

    // Security: bearer JWT and the auth cookie; sign-out and me take either, the rest neither.
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearerAuth"]["type"], "http");
    assert_eq!(schemes["bearerAuth"]["scheme"], "bearer");
    assert_eq!(schemes["bearerAuth"]["bearerFormat"], "JWT");
    assert_eq!(schemes["cookieAuth"]["type"], "apiKey");
    assert_eq!(schemes["cookieAuth"]["in"], "cookie");
    assert_eq!(schemes["cookieAuth"]["name"], "portcullis_token");
    let either = json!([{"bearerAuth": []}, {"cookieAuth": []}]);
    assert_eq!(
        spec.operation(&format!("{PREFIX}/signout"), "post")["security"],
        either
    );
    assert_eq!(
        spec.operation(&format!("{PREFIX}/me"), "get")["security"],
        either
    );
    for (path, method) in [
        ("/api/v1/auth/register", "post"),
        ("/api/v1/auth/signin", "post"),
        ("/.well-known/jwks.json", "get"),
    ] {
        assert_eq!(
            spec.operation(path, method)["security"],
            json!([]),
            "{path}"
        );
    }

    // Every status each endpoint can answer is documented, with the headers it calls for.
    let statuses: [(&str, &str, &[u16]); 5] = [
        (
            "/api/v1/auth/register",
            "post",
            &[201, 400, 409, 413, 415, 422, 429, 500, 503],
        ),
        (
            "/api/v1/auth/signin",
            "post",
            &[200, 400, 401, 413, 415, 422, 429, 500, 503],
        ),
        (
            "/api/v1/auth/signout",
            "post",
            &[204, 400, 401, 403, 413, 500, 503],
        ),
        (
            "/api/v1/auth/me",
            "get",
            &[200, 400, 401, 403, 413, 500, 503],
        ),
        ("/.well-known/jwks.json", "get", &[200, 404]),
    ];
    let required_header = |r: &Value, name: &str| {
        r.get("headers")
            .and_then(|h| h.get(name))
            .is_some_and(|h| spec.resolve(h)["required"] == true)
    };
    for (path, method, expected) in statuses {
        let documented: BTreeSet<u16> = spec.operation(path, method)["responses"]
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.parse().unwrap())
            .collect();
        let expected: BTreeSet<u16> = expected.iter().copied().collect();
        assert_eq!(documented, expected, "statuses of {method} {path}");
        for status in documented {
            let r = spec.response(path, method, status);
            let what = format!("{method} {path} {status}");
            assert!(r["description"].is_string(), "{what}: description");
            assert!(required_header(r, "X-Request-Id"), "{what}: X-Request-Id");
            match status {
                401 => assert!(required_header(r, "WWW-Authenticate"), "{what}"),
                429 | 503 => assert!(required_header(r, "Retry-After"), "{what}"),
                200 | 201 if path.contains("/sign") || path.ends_with("/register") => {
                    assert!(required_header(r, "Set-Cookie"), "{what}");
                }
                204 => assert!(required_header(r, "Set-Cookie"), "{what}"),
                _ => {}
            }
            if status >= 400 {
                assert!(
                    r["content"]["application/problem+json"]["schema"].is_object(),
                    "{what}: problem+json"
                );
            }
        }
    }
}

#[test]
fn problem_schema_is_strict() {
    let spec = Spec::load();
    let problem = json!({"$ref": "#/components/schemas/Problem"});
    let ok = json!({"type": "about:blank", "title": "Unauthorized", "status": 401,
                    "detail": "Authentication required", "code": "missing_token"});
    assert!(spec.validator(&problem).is_valid(&ok));
    let validation = json!({"type": "about:blank", "title": "Unprocessable Content",
        "status": 422, "detail": "x", "code": "validation_failed",
        "errors": {"email": "must be an email address"}});
    assert!(spec.validator(&problem).is_valid(&validation));
    let bad = [
        json!({"type": "about:blank", "title": "x", "status": 401, "detail": "x", "code": "nope"}),
        json!({"type": "about:blank", "title": "x", "status": 401, "detail": "x"}),
        json!({"type": "about:blank", "title": "x", "status": 401, "detail": "x",
               "code": "missing_token", "extra": 1}),
        json!({"type": "about:blank", "title": "x", "status": 401, "detail": "x",
               "code": "missing_token", "errors": {"email": "x"}}),
        json!({"type": "about:blank", "title": "x", "status": 422, "detail": "x",
               "code": "validation_failed"}),
        json!({"type": "about:blank", "title": "x", "status": 422, "detail": "x",
               "code": "validation_failed", "errors": {"password_hash": "x"}}),
    ];
    for b in bad {
        assert!(!spec.validator(&problem).is_valid(&b), "accepted {b}");
    }
    // A per-status schema pins status, title and code.
    let unauthorized = json!({"$ref": "#/components/schemas/UnauthorizedProblem"});
    assert!(spec.validator(&unauthorized).is_valid(&ok));
    let mut wrong = ok.clone();
    wrong["code"] = json!("forbidden");
    assert!(!spec.validator(&unauthorized).is_valid(&wrong));
    // Formats are checked.
    let user = json!({"$ref": "#/components/schemas/User"});
    let good_user = json!({"id": uuid::Uuid::new_v4(), "email": "a@example.com",
        "created_at": "2026-01-02T03:04:05Z", "updated_at": "2026-01-02T03:04:05Z"});
    assert!(spec.validator(&user).is_valid(&good_user));
    for (field, value) in [
        ("id", "not-a-uuid"),
        ("email", "not an email"),
        ("created_at", "yesterday"),
    ] {
        let mut u = good_user.clone();
        u[field] = json!(value);
        assert!(
            !spec.validator(&user).is_valid(&u),
            "accepted {field}={value}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// real answers
// ---------------------------------------------------------------------------------------------

/// `tokens`: the `[tokens]` section, and any section after it.
fn config(store_url: &str, tokens: &str) -> String {
    TestConfig::new()
        .server("grace_period_secs = 0")
        .store(store_url)
        .tokens(tokens)
        .default_cookie()
        .fast_bcrypt()
        .app(&[])
        .owner_route()
        .build()
}

const HS256_TOKENS: &str = r#"
[tokens]
secret_env = "PORTCULLIS_TEST_SECRET"
"#;

fn post(g: &Gateway, path: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Response {
    g.raw(&request_bytes("POST", path, headers, body))
}

fn post_json(g: &Gateway, endpoint: &str, body: &Value) -> Response {
    post(
        g,
        &format!("{PREFIX}{endpoint}"),
        &[("Content-Type", "application/json")],
        Some(body.to_string().as_bytes()),
    )
}

fn email() -> String {
    format!("oa-{}@example.com", uuid::Uuid::new_v4().simple())
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[test]
#[allow(clippy::too_many_lines)]
fn real_identity_answers_match_the_document() {
    let spec = Spec::load();
    let g = Gateway::start(
        &config(
            "sqlite://{DIR}/openapi.db",
            &format!(
                "{HS256_TOKENS}\n[rate_limit]\nper_ip_per_minute = 1000\n\
                 failed_signins_per_email_per_minute = 2\n"
            ),
        ),
        &[],
    );
    let register = format!("{PREFIX}/register");
    let signin = format!("{PREFIX}/signin");
    let signout = format!("{PREFIX}/signout");
    let me = format!("{PREFIX}/me");

    // register: 201, 409, 422, 400, 415, 413
    let mail = email();
    let creds = json!({"email": mail, "password": PASSWORD});
    let r = post_json(&g, "/register", &creds);
    assert_eq!(r.status, 201, "{}", r.text());
    let session = spec.check(&register, "post", &r);
    let token = session["token"].as_str().unwrap().to_owned();
    let user_id = session["user"]["id"].as_str().unwrap().to_owned();

    let r = post_json(
        &g,
        "/register",
        &json!({"email": mail.to_uppercase(), "password": PASSWORD}),
    );
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(spec.check(&register, "post", &r)["code"], "email_taken");

    for (body, field) in [
        (json!({"email": email(), "password": "short"}), "password"),
        (
            json!({"email": "not-an-email", "password": PASSWORD}),
            "email",
        ),
        (json!({"email": email()}), "password"),
        (
            json!({"email": email(), "password": "x".repeat(73)}),
            "password",
        ),
        (
            json!({"email": email(), "password": PASSWORD, "admin": true}),
            "body",
        ),
    ] {
        let r = post_json(&g, "/register", &body);
        assert_eq!(r.status, 422, "{body}: {}", r.text());
        let v = spec.check(&register, "post", &r);
        assert!(v["errors"][field].is_string(), "{body}: {v}");
    }

    let r = post(
        &g,
        &register,
        &[("Content-Type", "application/json")],
        Some(b"{not json"),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(spec.check(&register, "post", &r)["code"], "bad_request");

    let r = post(
        &g,
        &register,
        &[("Content-Type", "text/plain")],
        Some(creds.to_string().as_bytes()),
    );
    assert_eq!(r.status, 415, "{}", r.text());
    spec.check(&register, "post", &r);

    let big = format!(
        r#"{{"email":"{}","password":"{}"}}"#,
        email(),
        "p".repeat(17 * 1024)
    );
    let r = post(
        &g,
        &register,
        &[("Content-Type", "application/json")],
        Some(big.as_bytes()),
    );
    assert_eq!(r.status, 413, "{}", r.text());
    spec.check(&register, "post", &r);

    // signin: 200, 401 invalid_credentials (wrong password, unknown email), 422, 415, 413,
    // 400, then 429 once the email's failed attempts are used up.
    let r = post_json(&g, "/signin", &creds);
    assert_eq!(r.status, 200, "{}", r.text());
    let second = spec.check(&signin, "post", &r)["token"]
        .as_str()
        .unwrap()
        .to_owned();

    let r = post_json(
        &g,
        "/signin",
        &json!({"email": email(), "password": PASSWORD}),
    );
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(
        spec.check(&signin, "post", &r)["code"],
        "invalid_credentials"
    );
    for _ in 0..2 {
        let r = post_json(
            &g,
            "/signin",
            &json!({"email": mail, "password": "wrong password"}),
        );
        assert_eq!(r.status, 401, "{}", r.text());
        assert_eq!(
            spec.check(&signin, "post", &r)["code"],
            "invalid_credentials"
        );
    }
    let r = post_json(
        &g,
        "/signin",
        &json!({"email": mail, "password": "wrong password"}),
    );
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(spec.check(&signin, "post", &r)["code"], "rate_limited");

    let r = post_json(&g, "/signin", &json!({"email": 1, "password": PASSWORD}));
    assert_eq!(r.status, 422, "{}", r.text());
    spec.check(&signin, "post", &r);
    let r = post(
        &g,
        &signin,
        &[("Content-Type", "application/json")],
        Some(b"[1,"),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    spec.check(&signin, "post", &r);
    let r = post(&g, &signin, &[], Some(creds.to_string().as_bytes()));
    assert_eq!(r.status, 415, "{}", r.text());
    spec.check(&signin, "post", &r);
    let r = post(
        &g,
        &signin,
        &[("Content-Type", "application/json")],
        Some(big.as_bytes()),
    );
    assert_eq!(r.status, 413, "{}", r.text());
    spec.check(&signin, "post", &r);

    // me: 200 by Bearer and by cookie, 401 missing / invalid / expired, 400 with both.
    let r = g.get(&me, &[("Authorization", &bearer(&token))]);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = spec.check(&me, "get", &r);
    assert_eq!(v["id"], user_id.as_str());
    let r = g.get(&me, &[("Cookie", &format!("portcullis_token={second}"))]);
    assert_eq!(r.status, 200, "{}", r.text());
    spec.check(&me, "get", &r);

    let r = g.get(&me, &[]);
    assert_eq!(r.status, 401);
    assert_eq!(spec.check(&me, "get", &r)["code"], "missing_token");
    let r = g.get(&me, &[("Authorization", "Bearer not.a.token")]);
    assert_eq!(r.status, 401);
    assert_eq!(spec.check(&me, "get", &r)["code"], "invalid_token");
    let expired = hs256(&claims_with(&user_id, |c| {
        c.insert("iat".into(), json!(common::now() - 7200));
        c.insert("exp".into(), json!(common::now() - 3600));
    }));
    let r = g.get(&me, &[("Authorization", &bearer(&expired))]);
    assert_eq!(r.status, 401);
    assert_eq!(spec.check(&me, "get", &r)["code"], "token_expired");
    // A Bearer header wins over the cookie; two cookies (or two headers) are refused.
    let r = g.get(
        &me,
        &[
            ("Authorization", &bearer(&token)),
            ("Cookie", "portcullis_token=not-a-token"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = g.get(
        &me,
        &[(
            "Cookie",
            &format!("portcullis_token={second}; portcullis_token={token}"),
        )],
    );
    assert_eq!(r.status, 400, "{}", r.text());
    spec.check(&me, "get", &r);
    let r = g.raw(&request_bytes(
        "GET",
        &me,
        &[("Authorization", &bearer(&token))],
        Some(big.as_bytes()),
    ));
    assert_eq!(r.status, 413, "{}", r.text());
    spec.check(&me, "get", &r);

    // signout: 400 (query), 401 missing, 204 (cookie cleared), then the token is revoked.
    let r = post(
        &g,
        &format!("{signout}?scope=everything"),
        &[("Authorization", &bearer(&token))],
        None,
    );
    assert_eq!(r.status, 400, "{}", r.text());
    spec.check(&signout, "post", &r);
    let r = post(&g, &signout, &[], None);
    assert_eq!(r.status, 401);
    assert_eq!(spec.check(&signout, "post", &r)["code"], "missing_token");
    let r = post(&g, &signout, &[("Authorization", &bearer(&token))], None);
    assert_eq!(r.status, 204, "{}", r.text());
    spec.check(&signout, "post", &r);
    let r = g.get(&me, &[("Authorization", &bearer(&token))]);
    assert_eq!(r.status, 401);
    assert_eq!(spec.check(&me, "get", &r)["code"], "token_revoked");
    let r = post(&g, &signout, &[("Authorization", &bearer(&token))], None);
    assert_eq!(r.status, 401);
    assert_eq!(spec.check(&signout, "post", &r)["code"], "token_revoked");
    let r = post(
        &g,
        &signout,
        &[("Authorization", &bearer(&token))],
        Some(big.as_bytes()),
    );
    assert_eq!(r.status, 413, "{}", r.text());
    spec.check(&signout, "post", &r);
    // scope=all with the cookie alone.
    let r = post(
        &g,
        &format!("{signout}?scope=all"),
        &[("Cookie", &format!("portcullis_token={second}"))],
        None,
    );
    assert_eq!(r.status, 204, "{}", r.text());
    spec.check(&signout, "post", &r);
    let r = g.get(&me, &[("Cookie", &format!("portcullis_token={second}"))]);
    assert_eq!(r.status, 401);
    assert_eq!(spec.check(&me, "get", &r)["code"], "token_revoked");

    // jwks with HS256: nothing to publish, 404.
    let r = g.get("/.well-known/jwks.json", &[]);
    assert_eq!(r.status, 404, "{}", r.text());
    spec.check("/.well-known/jwks.json", "get", &r);

    // A method an endpoint does not take, and an unknown endpoint: the documented NotFound.
    let not_found = spec.resolve(&spec.doc["components"]["responses"]["NotFound"]);
    for r in [
        g.get(&register, &[]),
        g.raw(&request_bytes("DELETE", &me, &[], None)),
        g.get(&format!("{PREFIX}/nope"), &[]),
    ] {
        assert_eq!(r.status, 404, "{}", r.text());
        spec.check_against(not_found, &r, "a method or path the identity API lacks");
    }

    spec.assert_covered(&[
        ("register", 201),
        ("register", 400),
        ("register", 409),
        ("register", 413),
        ("register", 415),
        ("register", 422),
        ("signin", 200),
        ("signin", 400),
        ("signin", 401),
        ("signin", 413),
        ("signin", 415),
        ("signin", 422),
        ("signin", 429),
        ("signout", 204),
        ("signout", 400),
        ("signout", 401),
        ("signout", 413),
        ("me", 200),
        ("me", 400),
        ("me", 401),
        ("me", 413),
        ("jwks", 404),
    ]);
}

#[test]
fn register_rate_limit_per_ip_is_429_with_retry_after() {
    let spec = Spec::load();
    let g = Gateway::start(
        &config(
            "sqlite://{DIR}/openapi.db",
            &format!("{HS256_TOKENS}\n[rate_limit]\nper_ip_per_minute = 1\n"),
        ),
        &[],
    );
    let register = format!("{PREFIX}/register");
    let r = post_json(
        &g,
        "/register",
        &json!({"email": email(), "password": PASSWORD}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    spec.check(&register, "post", &r);
    let r = post_json(
        &g,
        "/register",
        &json!({"email": email(), "password": PASSWORD}),
    );
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(spec.check(&register, "post", &r)["code"], "rate_limited");
    spec.assert_covered(&[("register", 201), ("register", 429)]);
}

#[test]
fn jwks_of_each_key_type_matches_the_document() {
    let spec = Spec::load();
    for (alg, key, previous) in [
        ("EdDSA", "ed25519.pem", Some("ed25519-old.pub.pem")),
        ("ES256", "p256.pem", None),
        ("RS256", "rsa.pem", None),
    ] {
        let mut tokens = format!(
            "[tokens]\nalgorithm = \"{alg}\"\nprivate_key_file = \"{}\"\nkid = \"{alg}-now\"\n",
            common::key_path(key)
        );
        if let Some(old) = previous {
            let _ = write!(
                tokens,
                "\n[[tokens.previous_keys]]\nkid = \"{alg}-old\"\npublic_key_file = \"{}\"\n",
                common::key_path(old)
            );
        }
        let g = Gateway::start(&config("sqlite://{DIR}/openapi.db", &tokens), &[]);
        let r = g.get("/.well-known/jwks.json", &[]);
        assert_eq!(r.status, 200, "{alg}: {}", r.text());
        let set = spec.check("/.well-known/jwks.json", "get", &r);
        let keys = set["keys"].as_array().unwrap();
        assert_eq!(
            keys.len(),
            1 + usize::from(previous.is_some()),
            "{alg}: {set}"
        );
        assert_eq!(keys[0]["kid"], format!("{alg}-now"));
        assert_eq!(keys[0]["alg"], alg);

        // The tokens it issues are the documented session shape too.
        let r = post_json(
            &g,
            "/register",
            &json!({"email": email(), "password": PASSWORD}),
        );
        assert_eq!(r.status, 201, "{alg}: {}", r.text());
        spec.check(&format!("{PREFIX}/register"), "post", &r);
    }
    spec.assert_covered(&[("jwks", 200), ("register", 201)]);
}

#[test]
fn store_down_is_503_with_retry_after() {
    let spec = Spec::load();
    let dead = common::dead_addr();
    let url = format!("postgres://portcullis@{dead}/portcullis?sslmode=disable");
    let g = Gateway::start(&config(&url, HS256_TOKENS), &[]);
    let token = hs256(&common::claims(&common::new_sub()));
    let answers = [
        (
            "/register",
            "post",
            post_json(
                &g,
                "/register",
                &json!({"email": email(), "password": PASSWORD}),
            ),
        ),
        (
            "/signin",
            "post",
            post_json(
                &g,
                "/signin",
                &json!({"email": email(), "password": PASSWORD}),
            ),
        ),
        (
            "/signout",
            "post",
            post(
                &g,
                &format!("{PREFIX}/signout"),
                &[("Authorization", &bearer(&token))],
                None,
            ),
        ),
        (
            "/me",
            "get",
            g.get(
                &format!("{PREFIX}/me"),
                &[("Authorization", &bearer(&token))],
            ),
        ),
    ];
    for (endpoint, method, r) in answers {
        assert_eq!(r.status, 503, "{endpoint}: {}", r.text());
        let v = spec.check(&format!("{PREFIX}{endpoint}"), method, &r);
        assert_eq!(v["code"], "service_unavailable");
    }
    spec.assert_covered(&[
        ("register", 503),
        ("signin", 503),
        ("signout", 503),
        ("me", 503),
    ]);
}

#[test]
fn forward_auth_answers_are_the_documented_ones() {
    let spec = Spec::load();
    let conf = TestConfig::new()
        .server("grace_period_secs = 0")
        .default_cookie()
        .section("[forward_auth]\nenabled = true\n")
        .app(&[])
        .owner_route()
        .route("/public/{*rest}", "app", "public", &[])
        .route(
            "/admin/{*rest}",
            "app",
            "required",
            &[r#"require = { roles = "admin" }"#],
        )
        .build();
    let g = Gateway::start(&conf, &[]);
    let me = common::new_sub();
    let token = hs256(&common::claims(&me));
    let auth = bearer(&token);
    let nginx = |uri: &str, extra: &[(&str, &str)]| {
        let mut h = vec![("X-Original-Method", "GET"), ("X-Original-URI", uri)];
        h.extend_from_slice(extra);
        g.get("/_portcullis/auth/nginx", &h)
    };
    let owner = format!("/api/{me}/tasks/1");
    let other = format!("/api/{}/tasks/1", common::new_sub());
    for (r, status) in [
        (nginx(&owner, &[("Authorization", &auth)]), 200),
        (nginx("/public/x", &[]), 200),
        (nginx("/x", &[("Authorization", &auth)]), 404),
        (nginx(&owner, &[]), 401),
        (nginx(&other, &[("Authorization", &auth)]), 403),
        (nginx("/admin/x", &[("Authorization", &auth)]), 403),
        (g.get("/_portcullis/auth/nginx", &[]), 400),
    ] {
        assert_eq!(r.status, status, "{}", r.text());
        spec.check("/_portcullis/auth/nginx", "get", &r);
    }
    let r = g.get(
        "/_portcullis/auth/traefik",
        &[
            ("X-Forwarded-Method", "GET"),
            ("X-Forwarded-Uri", &owner),
            ("Authorization", &auth),
        ],
    );
    assert_eq!(r.header("x-user-id"), Some(me.as_str()));
    spec.check("/_portcullis/auth/traefik", "get", &r);
    let r = g.get(
        &format!("/_portcullis/auth/envoy{owner}"),
        &[("Authorization", &auth)],
    );
    assert_eq!(r.header("x-user-id"), Some(me.as_str()));
    spec.check("/_portcullis/auth/envoy/{path}", "get", &r);
    spec.assert_covered(&[
        ("forwardAuthNginx", 200),
        ("forwardAuthNginx", 400),
        ("forwardAuthNginx", 401),
        ("forwardAuthNginx", 403),
        ("forwardAuthNginx", 404),
        ("forwardAuthTraefik", 200),
        ("forwardAuthEnvoy", 200),
    ]);
}
