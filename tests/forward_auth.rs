//! CONTRACT section 11, forward-auth: a real nginx (`auth_request` + `auth_request_set`, the
//! config shipped in `deploy/forward-auth/nginx.conf`) in front of Portcullis and the recording
//! upstream; and the exact requests Traefik's `forwardAuth` and Envoy's `ext_authz` (HTTP
//! service, `path_prefix`) send, against the gateway itself. The decision is the proxy's own
//! admission: route table, canonical path, spoof stripping, token, claim rules, owner rule,
//! revocation.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::config::TestConfig;
use common::*;
use serde_json::{Value, json};

const ORIGIN: &str = "https://app.example.test";

/// Forward-auth on (trusting `trusted`), the identity endpoints, CORS for [`ORIGIN`], and a
/// route of each kind on the recording upstream.
fn config(trusted: &str) -> String {
    TestConfig::new()
        .cookie("secure = false")
        .fast_bcrypt()
        .no_rate_limits()
        .section(&format!(
            "[forward_auth]\nenabled = true\ntrusted_proxies = [{trusted}]\n"
        ))
        .section(&format!("[cors]\nallowed_origins = [\"{ORIGIN}\"]\n"))
        .app(&[])
        .owner_route()
        .route("/public/{*rest}", "app", "public", &[])
        .route("/req/{*rest}", "app", "required", &[])
        .route("/feed/{*rest}", "app", "optional", &[])
        .route(
            "/admin/{*rest}",
            "app",
            "required",
            &[r#"require = { roles = "admin" }"#],
        )
        .build()
}

fn gateway() -> Gateway {
    Gateway::start(&config("\"127.0.0.1/32\""), &[])
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// An allow: 200, no body, and exactly the identity headers given (none for `None`).
#[track_caller]
fn assert_allowed(r: &Response, identity: Option<(&str, &str)>) {
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.body.is_empty(), "an allow has no body: {}", r.text());
    assert_eq!(r.header("x-user-id"), identity.map(|(id, _)| id));
    assert_eq!(r.header("x-user-email"), identity.map(|(_, e)| e));
}

fn metrics(gw: &Gateway) -> String {
    get(gw.admin, "/metrics", &[]).text()
}

// ---------------------------------------------------------------------------------------------
// a real nginx
// ---------------------------------------------------------------------------------------------

struct Nginx {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The shipped `deploy/forward-auth/nginx.conf`, its addresses filled in, run in the
/// foreground without a master process.
fn nginx(gateway: SocketAddr, upstream: SocketAddr) -> Nginx {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let shipped =
        std::fs::read_to_string(manifest_dir().join("deploy/forward-auth/nginx.conf")).unwrap();
    let d = dir.path().display();
    let conf = shipped
        .replace("listen 80;", &format!("listen 127.0.0.1:{port};"))
        .replace("127.0.0.1:8080", &gateway.to_string())
        .replace("127.0.0.1:3000", &upstream.to_string());
    assert!(conf.contains(&gateway.to_string()) && conf.contains(&upstream.to_string()));
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log;\nevents {{}}\n\
         http {{\naccess_log off;\nclient_body_temp_path {d}; proxy_temp_path {d};\n\
         fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n{conf}\n}}\n"
    );
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let child = Command::new("nginx")
        .args([
            "-c",
            path.to_str().unwrap(),
            "-e",
            &format!("{d}/error.log"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx (Debian's nginx-light; .ci/run installs it)");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "nginx did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Nginx {
        child,
        addr,
        _dir: dir,
    }
}

#[test]
fn behind_a_real_nginx_the_upstream_gets_the_verified_identity_and_refusals_never_reach_it() {
    let version = Command::new("nginx").arg("-v").output().expect("nginx");
    eprintln!("{}", String::from_utf8_lossy(&version.stderr).trim());
    let gw = gateway();
    let up = gw.up();
    let ngx = nginx(gw.addr, up.addr);
    let me = new_sub();
    let token = token_for(&me);
    let email = email_of(&claims(&me));

    // Allowed with identity: nginx copies X-User-Id / X-User-Email from the answer, over any
    // the client sent.
    let r = get(
        ngx.addr,
        &format!("/api/{me}/tasks/1?page=2"),
        &[
            ("Authorization", &bearer(&token)),
            ("X-User-Id", "spoofed"),
            ("X-User-Email", "spoofed@example.test"),
        ],
    );
    let seen = r.seen();
    assert_eq!(seen.path, format!("/api/{me}/tasks/1?page=2"));
    assert_identity(&seen, Some((&me, Some(&email))));
    let proxied = up.proxied_count();
    assert_eq!(proxied, 1, "the auth subrequest never reaches the upstream");

    // A public route: allowed without identity, and a spoofed identity does not survive.
    let r = get(ngx.addr, "/public/x", &[("X-User-Id", "spoofed")]);
    assert_identity(&r.seen(), None);

    // An optional route: anonymous without a token, identified with one.
    assert_identity(&get(ngx.addr, "/feed/x", &[]).seen(), None);
    let r = get(ngx.addr, "/feed/x", &[("Authorization", &bearer(&token))]);
    assert_identity(&r.seen(), Some((&me, Some(&email))));
    let proxied = up.proxied_count();

    // Refused: nginx answers 401 / 403 itself; anything else from the auth server is its 500.
    let other = new_sub();
    let expired = hs256(&claims_with(&me, |c| {
        c.insert("exp".into(), json!(now() - 3600));
    }));
    for (path, auth, status) in [
        ("/req/x".to_owned(), None, 401),
        ("/req/x".to_owned(), Some(expired.as_str()), 401),
        ("/req/x".to_owned(), Some("garbage"), 401),
        (format!("/api/{other}/tasks/1"), Some(token.as_str()), 403),
        // A dot segment would climb into another user's tasks, and nginx sends the app the
        // URI as it came: Portcullis decides only a canonical one (its 400, nginx's 500).
        (
            format!("/api/{me}/tasks/%2e%2e/%2e%2e/{other}/tasks/1"),
            Some(token.as_str()),
            500,
        ),
        (
            format!("/api/{other}/tasks/../../{me}/tasks/1"),
            Some(token.as_str()),
            500,
        ),
        ("/admin/users".to_owned(), Some(token.as_str()), 403),
        // No route, an encoded slash: 404 and 400 from Portcullis, which nginx makes its 500.
        ("/nowhere".to_owned(), Some(token.as_str()), 500),
        (format!("/api/{me}%2Ftasks/1"), Some(token.as_str()), 500),
    ] {
        let b = auth.map(bearer);
        let headers: Vec<(&str, &str)> = b
            .as_deref()
            .map(|b| vec![("Authorization", b)])
            .unwrap_or_default();
        let r = get(ngx.addr, &path, &headers);
        assert_eq!(r.status, status, "{path} {auth:?}: {}", r.text());
    }
    assert_eq!(
        up.proxied_count(),
        proxied,
        "a refusal reached the upstream"
    );

    let m = metrics(&gw);
    for (result, at_least) in [
        ("allow", 4),
        ("missing_token", 1),
        ("forbidden", 1),
        ("bad_request", 3),
    ] {
        let prefix = format!(
            "portcullis_forward_auth_decisions_total{{proxy=\"nginx\",result=\"{result}\"}} "
        );
        let n: u64 = m
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix}in\n{m}"))
            .trim()
            .parse()
            .unwrap();
        assert!(n >= at_least, "{result}: {n}");
    }
}

// ---------------------------------------------------------------------------------------------
// the requests Traefik and Envoy send
// ---------------------------------------------------------------------------------------------

/// Traefik `forwardAuth`: the original request in `X-Forwarded-*`, the client's headers kept.
fn traefik(gw: &Gateway, method: &str, uri: &str, extra: &[(&str, &str)]) -> Response {
    let mut h = vec![
        ("X-Forwarded-Method", method),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "app.example.test"),
        ("X-Forwarded-Uri", uri),
        ("X-Forwarded-For", "203.0.113.9"),
    ];
    h.extend_from_slice(extra);
    gw.get("/_portcullis/auth/traefik", &h)
}

/// Envoy `ext_authz` (HTTP service, `path_prefix: /_portcullis/auth/envoy`): the original
/// method, the prefix before the original path, the allowed headers.
fn envoy(gw: &Gateway, method: &str, path: &str, extra: &[(&str, &str)]) -> Response {
    let mut h = vec![("X-Envoy-Expected-Rq-Timeout-Ms", "200")];
    h.extend_from_slice(extra);
    gw.raw(&request_bytes(
        method,
        &format!("/_portcullis/auth/envoy{path}"),
        &h,
        None,
    ))
}

#[test]
fn traefik_and_envoy_requests_get_the_proxys_own_decision() {
    let gw = gateway();
    let me = new_sub();
    let token = token_for(&me);
    let email = email_of(&claims(&me));
    let auth = bearer(&token);
    let owner_path = format!("/api/{me}/tasks/1?x=1");

    for r in [
        traefik(&gw, "POST", &owner_path, &[("Authorization", &auth)]),
        traefik(
            &gw,
            "GET",
            &owner_path,
            &[("Cookie", &format!("{COOKIE}={token}; theme=dark"))],
        ),
        envoy(&gw, "DELETE", &owner_path, &[("Authorization", &auth)]),
        envoy(
            &gw,
            "GET",
            &owner_path,
            &[("Cookie", &format!("{COOKIE}={token}"))],
        ),
    ] {
        assert_allowed(&r, Some((&me, &email)));
        assert!(r.request_id().is_some());
    }
    assert_allowed(&traefik(&gw, "GET", "/public/x", &[]), None);
    assert_allowed(&envoy(&gw, "GET", "/public/x", &[]), None);
    assert_allowed(&envoy(&gw, "GET", "/feed/x", &[]), None);

    // Refusals: the problem the proxy answers, challenge included.
    let r = traefik(&gw, "GET", "/req/x", &[]);
    assert_401(&r, "missing_token", false);
    let r = envoy(&gw, "GET", "/req/x", &[("Authorization", "Bearer garbage")]);
    assert_401(&r, "invalid_token", true);
    let other = new_sub();
    let r = traefik(
        &gw,
        "GET",
        &format!("/api/{other}/tasks/1"),
        &[("Authorization", &auth)],
    );
    assert_problem(&r, 403, "forbidden");
    let r = envoy(&gw, "GET", "/admin/x", &[("Authorization", &auth)]);
    assert_problem(&r, 403, "insufficient_scope");
    assert_eq!(
        r.headers_all("www-authenticate"),
        [r#"Bearer realm="portcullis", error="insufficient_scope""#]
    );
    let admin = hs256(&claims_with(&me, |c| {
        c.insert("roles".into(), json!(["admin"]));
    }));
    assert_allowed(
        &envoy(
            &gw,
            "GET",
            "/admin/x",
            &[("Authorization", &bearer(&admin))],
        ),
        Some((&me, &email)),
    );
    // A spoofed identity header is stripped before the decision, and never answered back.
    let r = traefik(&gw, "GET", "/public/x", &[("X-User-Id", "spoofed")]);
    assert_allowed(&r, None);
    gw.up().assert_not_called();

    let m = metrics(&gw);
    assert!(
        m.contains("portcullis_forward_auth_decisions_total{proxy=\"envoy\",result=\"insufficient_scope\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("portcullis_forward_auth_decisions_total{proxy=\"traefik\",result=\"allow\"} 4"),
        "{m}"
    );
}

#[test]
fn a_missing_or_malformed_original_request_is_400_never_an_allow() {
    let gw = gateway();
    let auth = bearer(&token_for(&new_sub()));
    let nginx = |h: &[(&str, &str)]| {
        let mut all = vec![("Authorization", auth.as_str())];
        all.extend_from_slice(h);
        gw.get("/_portcullis/auth/nginx", &all)
    };
    for (h, why) in [
        (&[][..], "nothing"),
        (&[("X-Original-URI", "/public/x")], "no method"),
        (&[("X-Original-Method", "GET")], "no URI"),
        (
            &[("X-Original-Method", "GET"), ("X-Original-URI", "")],
            "an empty URI",
        ),
        (
            &[("X-Original-Method", "GET"), ("X-Original-URI", "public/x")],
            "not origin-form",
        ),
        (
            &[
                ("X-Original-Method", "GET"),
                ("X-Original-URI", "http://evil.test/public/x"),
            ],
            "absolute-form",
        ),
        (
            &[
                ("X-Original-Method", "GET"),
                ("X-Original-URI", "/public/x"),
                ("X-Original-URI", "/req/x"),
            ],
            "two URIs",
        ),
        (
            &[
                ("X-Original-Method", "G/T"),
                ("X-Original-URI", "/public/x"),
            ],
            "a method that is no token",
        ),
        // What the proxy would refuse, refused the same way.
        (
            &[
                ("X-Original-Method", "GET"),
                ("X-Original-URI", "/public/a%2Fb"),
            ],
            "an encoded slash",
        ),
    ] {
        assert_problem(&nginx(h), 400, "bad_request");
        let _ = why;
    }
    assert_problem(
        &traefik(&gw, "GET", "", &[("Authorization", &auth)]),
        400,
        "bad_request",
    );
    let r = gw.get(
        "/_portcullis/auth/traefik",
        &[("X-Forwarded-Uri", "/public/x")],
    );
    assert_problem(&r, 400, "bad_request");
    // The nginx endpoint answers GET (what auth_request sends) and HEAD only; unknown
    // endpoints are 404.
    let r = gw.raw(&request_bytes(
        "POST",
        "/_portcullis/auth/nginx",
        &[
            ("X-Original-Method", "GET"),
            ("X-Original-URI", "/public/x"),
        ],
        None,
    ));
    assert_problem(&r, 404, "not_found");
    assert_problem(&gw.get("/_portcullis/auth/haproxy", &[]), 404, "not_found");
    gw.up().assert_not_called();
}

#[test]
fn the_gateways_own_endpoints_are_no_route_and_a_preflight_is_decided_like_any_request() {
    let gw = gateway();
    let token = token_for(&new_sub());
    for uri in [
        "/api/v1/auth/me",
        "/api/v1/auth/signin",
        "/.well-known/jwks.json",
        "/_portcullis/auth/nginx",
    ] {
        let r = gw.get(
            "/_portcullis/auth/nginx",
            &[
                ("X-Original-Method", "GET"),
                ("X-Original-URI", uri),
                ("Authorization", &bearer(&token)),
            ],
        );
        assert_problem(&r, 404, "not_found");
    }
    // The proxy in front answers CORS itself: an OPTIONS with preflight headers gets the
    // route's policy, never a free pass (its headers are the client's to forge).
    let preflight = |uri: &str| {
        gw.get(
            "/_portcullis/auth/nginx",
            &[
                ("X-Original-Method", "OPTIONS"),
                ("X-Original-URI", uri),
                ("Origin", ORIGIN),
                ("Access-Control-Request-Method", "DELETE"),
            ],
        )
    };
    assert_401(&preflight("/req/x"), "missing_token", false);
    assert_allowed(&preflight("/public/x"), None);
    // A cross-site cookie request with an unsafe method is refused as the proxy refuses it.
    let r = gw.get(
        "/_portcullis/auth/nginx",
        &[
            ("X-Original-Method", "POST"),
            ("X-Original-URI", "/req/x"),
            ("Origin", "https://evil.example.test"),
            ("Cookie", &format!("{COOKIE}={token}")),
        ],
    );
    assert_problem(&r, 403, "forbidden");
}

#[test]
fn a_token_signed_out_is_refused_by_forward_auth_as_by_the_proxy() {
    let gw = gateway();
    let body = json!({"email": format!("fa-{}@example.test", uuid::Uuid::new_v4().simple()),
        "password": "correct horse battery"})
    .to_string();
    let r = gw.raw(&request_bytes(
        "POST",
        "/api/v1/auth/register",
        &[("Content-Type", "application/json")],
        Some(body.as_bytes()),
    ));
    assert_eq!(r.status, 201, "{}", r.text());
    let v: Value = r.json();
    let (token, id) = (
        v["token"].as_str().unwrap().to_owned(),
        v["user"]["id"].as_str().unwrap().to_owned(),
    );
    let ask = || traefik(&gw, "GET", "/req/x", &[("Authorization", &bearer(&token))]);
    assert_eq!(ask().header("x-user-id"), Some(id.as_str()));
    let r = gw.raw(&request_bytes(
        "POST",
        "/api/v1/auth/signout",
        &[("Authorization", &bearer(&token))],
        None,
    ));
    assert_eq!(r.status, 204, "{}", r.text());
    assert_401(&ask(), "token_revoked", true);
}

#[test]
fn only_trusted_proxies_may_ask_and_without_forward_auth_the_endpoints_do_not_exist() {
    // 127.0.0.1 is not in the trusted network: 403 before anything else is read.
    let gw = Gateway::start(&config("\"10.0.0.0/8\""), &[]);
    let me = new_sub();
    let r = traefik(
        &gw,
        "GET",
        &format!("/api/{me}/tasks/1"),
        &[("Authorization", &bearer(&token_for(&me)))],
    );
    assert_problem(&r, 403, "forbidden");
    assert!(r.header("x-user-id").is_none());
    assert_problem(&gw.get("/_portcullis/auth/nginx", &[]), 403, "forbidden");

    // Off (the default): no such endpoint; the route table answers (here: no route).
    let off = Gateway::start(
        &TestConfig::new()
            .app(&[])
            .route("/public/{*rest}", "app", "public", &[])
            .build(),
        &[],
    );
    let r = off.get(
        "/_portcullis/auth/nginx",
        &[
            ("X-Original-Method", "GET"),
            ("X-Original-URI", "/public/x"),
        ],
    );
    assert_problem(&r, 404, "not_found");
}

#[test]
fn the_shipped_traefik_and_envoy_configs_ask_the_endpoints_these_tests_pin() {
    let read = |f: &str| -> Value {
        let text =
            std::fs::read_to_string(manifest_dir().join("deploy/forward-auth").join(f)).unwrap();
        serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{f}: {e}"))
    };
    let t = read("traefik.yml");
    let fa = &t["http"]["middlewares"]["portcullis"]["forwardAuth"];
    assert_eq!(
        fa["address"],
        "http://127.0.0.1:8080/_portcullis/auth/traefik"
    );
    // Every client header of these names is replaced or removed, answered or not.
    assert_eq!(
        fa["authResponseHeadersRegex"],
        "^(X-User-|X-Portcullis-Assertion$)"
    );
    let e = read("envoy.yaml");
    let hcm =
        &e["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    assert_eq!(
        hcm["normalize_path"], true,
        "Portcullis decides canonical paths only"
    );
    let filters = hcm["http_filters"].as_array().unwrap();
    let names: Vec<&str> = filters
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names[..2],
        [
            "envoy.filters.http.header_mutation",
            "envoy.filters.http.ext_authz"
        ],
        "the client's identity headers go before the ask"
    );
    let removed = filters[0].to_string();
    for h in ["x-user-id", "x-user-email", "x-portcullis-assertion"] {
        assert!(removed.contains(h), "{h}: {removed}");
    }
    let service = &filters[1]["typed_config"]["http_service"];
    assert_eq!(service["path_prefix"], "/_portcullis/auth/envoy");
    let allowed = service["authorization_request"]["allowed_headers"]["patterns"].to_string();
    for h in ["authorization", "cookie", "origin"] {
        assert!(allowed.contains(h), "{h} must reach Portcullis: {allowed}");
    }
    let up = service["authorization_response"]["allowed_upstream_headers"]["patterns"].to_string();
    for h in ["x-user-id", "x-user-email", "x-portcullis-assertion"] {
        assert!(up.contains(h), "{h}: {up}");
    }
}

#[test]
fn an_original_target_the_gateway_would_rewrite_is_400_and_an_ask_cannot_resolve_out_of_its_endpoint()
 {
    let gw = gateway();
    let me = new_sub();
    let auth = bearer(&token_for(&me));
    for uri in [
        format!("/api/{me}/tasks/../x"),
        "/public/./x".to_owned(),
        "/public/%61".to_owned(),
    ] {
        let r = gw.get(
            "/_portcullis/auth/nginx",
            &[
                ("X-Original-Method", "GET"),
                ("X-Original-URI", &uri),
                ("Authorization", &auth),
            ],
        );
        assert_problem(&r, 400, "bad_request");
    }
    // Envoy appends the original path to its prefix as it came. Resolved, this one would be
    // `/public/x`, proxied, and the upstream's 200 would read as an allow.
    for target in [
        "/_portcullis/auth/envoy/api/v/tasks/../../../../../../public/x".to_owned(),
        format!("/_portcullis/auth/envoy/api/{me}/tasks/../x"),
    ] {
        let r = gw.raw(&request_bytes(
            "GET",
            &target,
            &[("Authorization", &auth)],
            None,
        ));
        assert_problem(&r, 400, "bad_request");
    }
    gw.up().assert_not_called();
}

#[test]
fn traefiks_x_forwarded_host_is_the_host_a_cookie_requests_origin_is_checked_against() {
    let gw = gateway();
    let me = new_sub();
    let cookie = format!("{COOKIE}={}", token_for(&me));
    let ask = |host: Option<&str>| {
        let mut h = vec![
            ("X-Forwarded-Method", "POST"),
            ("X-Forwarded-Uri", "/req/x"),
            ("Origin", "https://shop.example.test"),
            ("Cookie", cookie.as_str()),
        ];
        if let Some(host) = host {
            h.push(("X-Forwarded-Host", host));
        }
        gw.get("/_portcullis/auth/traefik", &h)
    };
    // Same site: the origin names the host the client addressed.
    assert_allowed(
        &ask(Some("shop.example.test")),
        Some((&me, &email_of(&claims(&me)))),
    );
    // Cross-site, or without the original host: a cookie POST is refused as the proxy refuses it.
    assert_problem(&ask(Some("other.example.test")), 403, "forbidden");
    assert_problem(&ask(None), 403, "forbidden");
}
