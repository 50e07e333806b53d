//! A tiny echo upstream, as a Pingora [`ServeHttp`] app: it answers every request with the
//! method, target, headers and body it received, as JSON. The demo puts it behind the gateway;
//! the tests use it to see what crossed the edge. Pingora's HTTP/1.1 server does the HTTP
//! (keep-alive, `Content-Length` or chunked bodies); this file only says what to answer.
//!
//! One exception: `GET /`, `GET /app/` and `GET /app/index.html` (query ignored) answer [`APP_PAGE`], a
//! plain-JS client of the identity endpoints: the demo's page, which the browser test (`tests/browser.rs`,
//! `e2e/run.mjs`) drives. Every other request, `/app/...` included, is echoed.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::ServerApp as _;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde::Serialize;

const MAX_BODY: usize = 1024 * 1024;

/// The echo app.
#[derive(Debug, Default, Clone, Copy)]
pub struct Echo;

#[derive(Serialize)]
struct Received<'a> {
    method: &'a str,
    path: &'a str,
    headers: Vec<(&'a str, String)>,
    body: String,
}

/// Whether a request gets [`APP_PAGE`] instead of the echo.
fn is_app_page(method: &str, target: &str) -> bool {
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    matches!(method, "GET" | "HEAD") && matches!(path, "/" | "/app/" | "/app/index.html")
}

#[async_trait]
impl ServeHttp for Echo {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let mut body = Vec::new();
        while let Ok(Some(chunk)) = session.read_request_body().await {
            if body.len() + chunk.len() > MAX_BODY {
                session.set_keepalive(None);
                return Response::builder()
                    .status(413)
                    .header("content-length", "0")
                    .body(Vec::new())
                    .unwrap_or_default();
            }
            body.extend_from_slice(&chunk);
        }
        let req = session.req_header();
        let method = req.method.as_str();
        let target = String::from_utf8_lossy(req.raw_path());
        if is_app_page(method, &target) {
            let page = if method == "HEAD" {
                Vec::new()
            } else {
                APP_PAGE.as_bytes().to_vec()
            };
            return Response::builder()
                .status(200)
                .header("content-type", "text/html; charset=utf-8")
                .header("content-length", APP_PAGE.len())
                .header("cache-control", "no-store")
                .header(
                    "content-security-policy",
                    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                     connect-src 'self'",
                )
                .body(page)
                .unwrap_or_default();
        }
        let received = Received {
            method,
            path: &target,
            headers: req
                .headers
                .iter()
                .map(|(name, value)| {
                    (
                        name.as_str(),
                        String::from_utf8_lossy(value.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: String::from_utf8_lossy(&body).into_owned(),
        };
        let json = serde_json::to_vec(&received).unwrap_or_default();
        Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .header("content-length", json.len())
            .body(json)
            .unwrap_or_default()
    }
}

/// Starts an echo upstream on 127.0.0.1 (port chosen by the OS) on a thread of its own, outside
/// any Pingora server (the demo needs its address before the gateway's config exists).
pub fn spawn() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind echo upstream");
    let addr = listener.local_addr().expect("echo address");
    listener
        .set_nonblocking(true)
        .expect("nonblocking echo listener");
    std::thread::Builder::new()
        .name("echo-upstream".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("echo runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("echo listener");
                serve(listener).await;
            });
        })
        .expect("spawn echo thread");
    addr
}

/// Serves connections with the [`Echo`] app until the listener fails: what a Pingora listening
/// service does, for one app and without a server around it.
pub async fn serve(listener: tokio::net::TcpListener) {
    let app = Arc::new(pingora::apps::http_app::HttpServer::new_app(Echo));
    let (_never, shutdown) = tokio::sync::watch::channel(false);
    while let Ok((tcp, _)) = listener.accept().await {
        let _ = tcp.set_nodelay(true);
        let app = Arc::clone(&app);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut stream: pingora::protocols::Stream =
                Box::new(pingora::protocols::l4::stream::Stream::from(tcp));
            // One request per turn; the stream comes back while the connection is kept alive.
            while let Some(reused) = app.process_new(stream, &shutdown).await {
                stream = reused;
            }
        });
    }
}

/// The demo's page (`/` of `portcullis demo`) and the browser test's, served at `/`, `/app/`
/// and `/app/index.html`: plain JS, no external
/// resources. It registers a random user, signs in (the gateway sets the HttpOnly cookie; the
/// page keeps no token), calls the owner route `/api/<id>/tasks/1` with the cookie alone, signs
/// out and calls it again, writing every result into an element with an id for the driver.
/// Kept here rather than in a file so that building the crate needs nothing outside `src/`.
pub const APP_PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Portcullis demo</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; max-width: 60em; }
  dt { font-weight: bold; margin-top: .5em; }
  dd { font-family: ui-monospace, monospace; margin-left: 1em; word-break: break-all; }
  button { margin: 0 .5em .5em 0; }
  #log { white-space: pre-wrap; }
  #outcome[data-state="failed"] { color: #b00; }
  #outcome[data-state="done"] { color: #070; }
</style>
</head>
<body>
<h1>Portcullis demo: sign in with the gateway's cookie</h1>
<p>
  A plain page served by the upstream behind the gateway. It never stores a token: the
  gateway sets an <code>HttpOnly</code> cookie, and every call below is a same-origin
  <code>fetch</code> without an <code>Authorization</code> header.
</p>
<p>
  <button id="btn-register" type="button">1. Register</button>
  <button id="btn-signin" type="button">2. Sign in</button>
  <button id="btn-cookie" type="button">3. Read document.cookie</button>
  <button id="btn-protected" type="button">4. Call the owner route</button>
  <button id="btn-signout" type="button">5. Sign out</button>
  <button id="btn-protected-again" type="button">6. Call it again</button>
  <button id="btn-all" type="button">Run all</button>
</p>
<dl>
  <dt>outcome</dt><dd id="outcome" data-state="idle">idle</dd>
  <dt>email</dt><dd id="email"></dd>
  <dt>register status</dt><dd id="register-status"></dd>
  <dt>user id</dt><dd id="user-id"></dd>
  <dt>sign-in status</dt><dd id="signin-status"></dd>
  <dt>sign-in body holds a token (not kept)</dt><dd id="signin-has-token"></dd>
  <dt>document.cookie</dt><dd id="document-cookie"></dd>
  <dt>owner route status</dt><dd id="protected-status"></dd>
  <dt>x-user-id the upstream received</dt><dd id="upstream-user-id"></dd>
  <dt>authorization header the upstream received</dt><dd id="upstream-authorization"></dd>
  <dt>cookie header the upstream received</dt><dd id="upstream-cookie"></dd>
  <dt>sign-out status</dt><dd id="signout-status"></dd>
  <dt>owner route after sign-out: status</dt><dd id="after-signout-status"></dd>
  <dt>owner route after sign-out: problem code</dt><dd id="after-signout-code"></dd>
  <dt>owner route after sign-out: WWW-Authenticate</dt><dd id="after-signout-challenge"></dd>
  <dt>log</dt><dd id="log"></dd>
</dl>
<script>
"use strict";
(function () {
  const AUTH = "/api/v1/auth";
  // Only what the page may keep: the user id and the credentials it typed. Never the token.
  const state = { email: "", password: "", userId: "" };

  const $ = (id) => document.getElementById(id);
  const show = (id, value) => { $(id).textContent = String(value); };
  const log = (line) => { $("log").textContent += line + "\n"; };

  function randomHex(bytes) {
    const a = new Uint8Array(bytes);
    crypto.getRandomValues(a);
    return Array.from(a, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  async function postJson(path, body) {
    return fetch(AUTH + path, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
  }

  async function readJson(resp) {
    const text = await resp.text();
    try { return JSON.parse(text); } catch (_) { return { unparsed: text }; }
  }

  function header(echo, name) {
    const found = (echo.headers || []).filter((h) => h[0].toLowerCase() === name);
    return found.length ? found.map((h) => h[1]).join(", ") : "(none)";
  }

  const steps = {
    async register() {
      state.email = "e2e-" + randomHex(8) + "@example.com";
      state.password = "pw-" + randomHex(12);
      show("email", state.email);
      const resp = await postJson("/register", { email: state.email, password: state.password });
      show("register-status", resp.status);
      const body = await readJson(resp);
      // The body carries a token too: read the user id, drop the rest.
      state.userId = body.user && body.user.id ? body.user.id : "";
      show("user-id", state.userId || "(none)");
      log("register: " + resp.status);
    },
    async signin() {
      const resp = await postJson("/signin", { email: state.email, password: state.password });
      show("signin-status", resp.status);
      const body = await readJson(resp);
      show("signin-has-token", typeof body.token === "string" && body.token.length > 0);
      log("signin: " + resp.status);
    },
    async cookie() {
      show("document-cookie", document.cookie === "" ? "(empty)" : document.cookie);
      log("document.cookie read");
    },
    async protected() {
      // No Authorization header: the HttpOnly cookie alone authenticates.
      const resp = await fetch("/api/" + encodeURIComponent(state.userId) + "/tasks/1", {
        credentials: "same-origin",
      });
      show("protected-status", resp.status);
      const echo = await readJson(resp);
      show("upstream-user-id", header(echo, "x-user-id"));
      show("upstream-authorization", header(echo, "authorization"));
      show("upstream-cookie", header(echo, "cookie"));
      log("owner route: " + resp.status);
    },
    async signout() {
      const resp = await fetch(AUTH + "/signout", { method: "POST", credentials: "same-origin" });
      show("signout-status", resp.status);
      log("signout: " + resp.status);
    },
    async protectedAgain() {
      const resp = await fetch("/api/" + encodeURIComponent(state.userId) + "/tasks/1", {
        credentials: "same-origin",
      });
      show("after-signout-status", resp.status);
      show("after-signout-challenge", resp.headers.get("www-authenticate") || "(none)");
      const problem = await readJson(resp);
      show("after-signout-code", problem.code || "(none)");
      log("owner route after sign-out: " + resp.status);
    },
  };

  async function run(name, fn) {
    const outcome = $("outcome");
    outcome.dataset.state = "running";
    outcome.textContent = name + ": running";
    try {
      await fn();
      outcome.dataset.state = "done";
      outcome.textContent = name + ": done";
    } catch (e) {
      outcome.dataset.state = "failed";
      outcome.textContent = name + ": failed: " + (e && e.message ? e.message : e);
    }
  }

  const buttons = {
    "btn-register": ["register", steps.register],
    "btn-signin": ["signin", steps.signin],
    "btn-cookie": ["cookie", steps.cookie],
    "btn-protected": ["protected", steps.protected],
    "btn-signout": ["signout", steps.signout],
    "btn-protected-again": ["protected-again", steps.protectedAgain],
  };
  for (const [id, [name, fn]] of Object.entries(buttons)) {
    $(id).addEventListener("click", () => run(name, fn));
  }
  $("btn-all").addEventListener("click", () => run("all", async () => {
    for (const [, fn] of Object.values(buttons)) { await fn(); }
  }));
})();
</script>
</body>
</html>
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_or_head_of_the_app_page_gets_the_page() {
        for (method, target) in [
            ("GET", "/"),
            ("GET", "/app/"),
            ("GET", "/app/index.html"),
            ("GET", "/app/?from=test"),
            ("HEAD", "/app/"),
        ] {
            assert!(is_app_page(method, target), "{method} {target}");
        }
        for (method, target) in [
            ("POST", "/app/"),
            ("GET", "/app"),
            ("GET", "/app/other"),
            ("GET", "/api/app/"),
            ("GET", "/index.html"),
            ("POST", "/"),
        ] {
            assert!(!is_app_page(method, target), "{method} {target}");
        }
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere_and_stores_nothing() {
        for forbidden in [
            "http://",
            "https://",
            "<script src",
            "<link",
            "localStorage",
            "sessionStorage",
            "indexedDB",
            "setRequestHeader",
            "Authorization\":",
        ] {
            assert!(
                !APP_PAGE.contains(forbidden),
                "the page contains {forbidden}"
            );
        }
        // Every call sends the cookie (same origin only), none sets a header of its own but
        // the JSON content type.
        let fetches = APP_PAGE.matches("fetch(").count();
        assert!(fetches >= 4);
        assert_eq!(
            APP_PAGE.matches("credentials: \"same-origin\"").count(),
            fetches
        );
        assert_eq!(APP_PAGE.matches("headers: {").count(), 1);
    }
}
