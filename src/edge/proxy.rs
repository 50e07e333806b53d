//! The `ProxyHttp` implementation. Each phase is a few lines that delegate: the admission
//! decision (`admit`) is a plain synchronous function over the request header, so it can be
//! read, tested and benchmarked without a socket; the phases only write what it decided.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::{HttpPeer, Session};
use pingora::proxy::{FailToProxy, ProxyHttp};
use pingora::{Error, ErrorType, Result};

pub use super::ctx::RequestCtx;

use crate::accounts::endpoints::{self, Endpoint, Identity};
use crate::authn::{self, Authenticator};
use crate::edge::cors::{CorsPolicy, Verdict};
use crate::edge::deadline::HeadDeadline;
use crate::edge::framing;
use crate::edge::headers::{self, Credential, X_REQUEST_ID};
use crate::edge::routes::{Access, RouteTable};
use crate::edge::upstream::Upstream;
use crate::path;
use crate::problem::{Code, Problem};

pub const JWKS_PATH: &str = "/.well-known/jwks.json";

/// Everything the edge needs per request, built once from the config.
#[derive(Debug)]
pub struct Gateway {
    pub routes: RouteTable,
    pub upstreams: Vec<Upstream>,
    pub auth: Arc<Authenticator>,
    pub cookie_name: String,
    /// CORS for configured frontends and the CSRF (Origin) check.
    pub cors: CorsPolicy,
    /// The identity endpoints, when the gateway serves them.
    pub identity: Option<Arc<Identity>>,
    /// Requests in flight, for graceful shutdown.
    pub in_flight: Arc<crate::edge::drain::InFlight>,
    /// Metric handles per route, resolved at start (see [`crate::edge::route_metrics::TableMetrics`]).
    pub metrics: crate::edge::route_metrics::TableMetrics,
    /// `server.server_timing`: a `Server-Timing` header on every response (`timing`).
    pub server_timing: bool,
    /// `[forward_auth]` when enabled: the endpoints of `forward_auth`.
    pub forward_auth: Option<crate::config::ForwardAuth>,
    /// `[assertion]`: signs the identity assertion of routes with `assertion` on.
    pub asserter: Option<Arc<authn::assertion::Asserter>>,
}

/// Whom the admission decides for: the proxy itself, or another proxy asking (`forward_auth`),
/// for which the gateway's own endpoints are no route and nothing is forward-auth again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Proxy,
    ForwardAuth,
}

/// What the gateway does with a request after looking at its header.
#[derive(Debug)]
pub enum Decision {
    /// Send it to the matched route's upstream.
    Proxy,
    /// Answer it here.
    Respond(Box<ResponseHeader>, Bytes),
    /// An identity endpoint, with the credential presented (if any): the body is read, then
    /// the endpoint answers.
    Identity(Endpoint, Option<Bytes>),
}

impl Decision {
    fn problem(ctx: &mut RequestCtx, p: &Problem) -> Self {
        ctx.rejection = Some(p.code);
        let (head, body) = p.response();
        Self::Respond(Box::new(head), body)
    }
}

impl Gateway {
    /// The edge policy of CONTRACT section 4, in pipeline order; each step is one module's.
    /// Mutates the request header (target canonicalised, identity headers stripped) and fills
    /// `ctx`.
    pub fn admit(&self, req: &mut RequestHeader, ctx: &mut RequestCtx, now: u64) -> Decision {
        match self.admission(req, ctx, now, Mode::Proxy) {
            Ok(decision) => decision,
            Err(p) => Decision::problem(ctx, &p),
        }
    }

    pub(super) fn admission(
        &self,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
        now: u64,
        mode: Mode,
    ) -> Result<Decision, Problem> {
        // 0. A head an upstream could frame differently, or too large to be honest, goes no
        //    further (`framing`).
        framing::check(req)?;
        // A forward-auth ask is known by its target as sent: dot segments must not take it
        // out of the endpoints (Envoy appends the original path to the prefix unresolved).
        let asked_as_sent = (mode == Mode::Proxy && self.forward_auth.is_some())
            .then(|| crate::edge::forward_auth::raw_ask(req))
            .flatten();
        // Another proxy forwards the original target as it was sent, whatever the gateway
        // would make of it: only a target already canonical can be decided for it.
        let original_as_sent = (mode == Mode::ForwardAuth).then(|| req.raw_path().to_vec());
        // 1. One spelling of the path for the route table and the upstream alike (`path`).
        path::canonicalise_target(req)?;
        if original_as_sent.is_some_and(|sent| sent != req.raw_path()) {
            return Err(Problem::new(Code::BadRequest).detail(
                "The original URI is not canonical (dot segments, encoded unreserved characters): \
                 the proxy in front would send the upstream a different path than the one decided",
            ));
        }
        // 2. The client never sets identity, on any route; the credential is read once
        //    (`headers`).
        ctx.request_id = Some(headers::strip_and_identify(req));
        if let Some(a) = &self.asserter {
            // Only the gateway says what the assertion header holds, in any spelling.
            headers::strip_named(req, a.header());
        }
        let req = &*req;
        let credential = headers::credential(req, &self.cookie_name);
        let path = req.uri.path();
        // 3. The gateway's own endpoints come before the route table: no route can shadow
        //    them. Asked by another proxy (`forward_auth`), they are no route.
        if mode == Mode::Proxy
            && let Some(fa) = &self.forward_auth
            && (asked_as_sent.is_some() || crate::edge::forward_auth::is_endpoint(path))
        {
            return self.forward_auth(fa, req, asked_as_sent.as_deref(), ctx, now);
        }
        if path == JWKS_PATH {
            return match mode {
                Mode::Proxy => self.jwks(),
                Mode::ForwardAuth => Err(Problem::new(Code::NotFound)),
            };
        }
        let endpoint = self
            .identity
            .as_ref()
            .and_then(|i| i.route(&req.method, path));
        if mode == Mode::ForwardAuth && endpoint.is_some() {
            return Err(Problem::new(Code::NotFound));
        }
        // 4. Cross-origin: preflights answered here, cross-site unsafe cookie requests refused.
        let cookie_auth = matches!(credential, Credential::Token(_, headers::Source::Cookie));
        let (origin, verdict) = self.cors.admit(req, cookie_auth, endpoint.is_some());
        ctx.cors_origin = origin;
        match verdict {
            Verdict::Pass => {}
            // Asked by another proxy, a preflight is a request like any other: the proxy in
            // front answers CORS itself, or the route's policy applies.
            Verdict::Preflight if mode == Mode::ForwardAuth => {}
            Verdict::Preflight => {
                let mut head = crate::problem::head(204, None, 0, "no-store");
                self.cors.preflight_headers(req, &mut head);
                return Ok(Decision::Respond(Box::new(head), Bytes::new()));
            }
            Verdict::Refuse(why) => return Err(Problem::new(Code::Forbidden).detail(why)),
        }
        if let Some(endpoint) = endpoint {
            // A wrong method or an unknown endpoint is 404 whatever the credential, as before.
            let endpoint = endpoint?;
            let token = credential.token()?.map(Bytes::copy_from_slice);
            return Ok(Decision::Identity(endpoint, token));
        }

        // 5. Route, or 404 without ever reaching an upstream (`routes`).
        let matched = self
            .routes
            .find(path)
            .ok_or_else(|| Problem::new(Code::NotFound))?;
        let route = matched.route;
        ctx.route = Some(matched.index);
        ctx.forward_token = route.forward_token || self.upstreams[route.upstream].forward_token;
        if route.access == Access::Public {
            return Ok(Decision::Proxy);
        }

        // 6. The credential's verification (`authn`), 7. the route's policy.
        let Some(token) = credential.token()? else {
            return match route.access {
                Access::Optional => Ok(Decision::Proxy),
                _ => Err(Problem::new(Code::MissingToken)),
            };
        };
        let who = match self.auth.authenticate(token, now, &route.rules) {
            Ok(who) => who,
            Err(authn::Refusal::UnknownKid) if !ctx.kid_waited => {
                ctx.unknown_kid = Some(Bytes::copy_from_slice(token));
                return Err(authn::Refusal::UnknownKid.into());
            }
            Err(refused) => return Err(refused.into()),
        };
        if let Some(owner) = matched.owner_value
            && owner != who.sub()
        {
            return Err(Problem::new(Code::Forbidden));
        }
        ctx.identity = Some(who);
        Ok(Decision::Proxy)
    }

    fn jwks(&self) -> Result<Decision, Problem> {
        let doc = self
            .auth
            .keys
            .jwks()
            .ok_or_else(|| Problem::new(Code::NotFound))?;
        let head = crate::problem::head(
            200,
            Some("application/jwk-set+json"),
            doc.len(),
            "public, max-age=300",
        );
        Ok(Decision::Respond(Box::new(head), doc.clone()))
    }

    /// What reaches the upstream: identity injected (with its signed assertion where the route
    /// has one), credential removed, request id set.
    pub fn prepare_upstream(&self, req: &mut RequestHeader, ctx: &RequestCtx) {
        if let Some((name, value)) = self.assertion(req, ctx) {
            let _ = req.insert_header(name, value);
        }
        if !ctx.forward_token {
            headers::remove_credentials(req, &self.cookie_name);
        }
        if let Some(who) = &ctx.identity {
            headers::inject_identity(req, who);
        }
        if let Some(id) = &ctx.request_id {
            let _ = req.insert_header(X_REQUEST_ID.clone(), id.clone());
        }
    }

    /// The assertion header for a request with identity on a route with `assertion` on, read
    /// before the credential is removed (the cache is keyed by the token).
    pub(super) fn assertion(
        &self,
        req: &RequestHeader,
        ctx: &RequestCtx,
    ) -> Option<(http::HeaderName, http::HeaderValue)> {
        let a = self.asserter.as_ref()?;
        let who = ctx.identity.as_ref()?;
        let route = &self.routes.routes()[ctx.route?];
        if !route.assertion {
            return None;
        }
        let Credential::Token(token, _) = headers::credential(req, &self.cookie_name) else {
            return None;
        };
        let target = req
            .uri
            .path_and_query()
            .map_or_else(|| req.uri.path(), http::uri::PathAndQuery::as_str);
        let bound = authn::assertion::Bound {
            method: req.method.as_str(),
            target,
        };
        let upstream = &self.upstreams[route.upstream];
        let value = a.for_request(
            token,
            route.upstream,
            &upstream.name,
            who,
            crate::clock::unix_secs(),
            bound,
        )?;
        Some((a.header().clone(), value))
    }

    /// Runs an identity endpoint: the accounts wing reads the request and answers.
    async fn serve_identity(
        &self,
        session: &mut Session,
        endpoint: Endpoint,
        token: Option<&[u8]>,
    ) -> std::result::Result<endpoints::Reply, Problem> {
        let identity = self
            .identity
            .as_ref()
            .ok_or_else(|| Problem::new(Code::NotFound))?;
        crate::accounts::request::serve(identity, session, endpoint, token).await
    }
}

impl Gateway {
    /// Marks every response the client gets (made here or by the upstream) with the request
    /// id, for an allowed frontend the CORS headers and, when on, `Server-Timing`. A request
    /// refused before its request id was read gets it here.
    fn decorate(&self, resp: &mut ResponseHeader, req: &RequestHeader, ctx: &mut RequestCtx) {
        let id = ctx
            .request_id
            .get_or_insert_with(|| headers::request_id(req));
        let _ = resp.insert_header(X_REQUEST_ID.clone(), id.clone());
        if let Some(origin) = &ctx.cors_origin {
            crate::edge::cors::decorate(resp, origin.clone());
        }
        if self.server_timing {
            ctx.timing.write(resp, ctx.started);
        }
    }

    /// Writes a gateway-made response.
    async fn respond(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        mut head: Box<ResponseHeader>,
        body: Bytes,
    ) -> Result<()> {
        self.decorate(&mut head, session.req_header(), ctx);
        // A request body we never read would be taken for the next request: close instead.
        if !session.is_body_empty() {
            session.set_keepalive(None);
        }
        session.write_response_header(head, false).await?;
        session.write_response_body(Some(body), true).await
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    /// No downstream modules. Pingora installs a response-compression module by default, at
    /// level 0 (disabled), whose context it still builds and consults on every request; the
    /// gateway compresses nothing (docs/PERFORMANCE.md, optimisation 9).
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn new_ctx(&self) -> RequestCtx {
        let mut ctx = RequestCtx::new();
        ctx.in_flight = Some(self.in_flight.enter());
        ctx
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        if self.forward_auth.is_some() {
            ctx.peer = session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(std::net::SocketAddr::ip);
        }
        let admitting = self.server_timing.then(std::time::Instant::now);
        let mut decision = self.admit(session.req_header_mut(), ctx, crate::clock::unix_secs());
        if let Some(token) = ctx.unknown_kid.take() {
            // A key the issuer may have just published: wait for its refetch, then decide
            // again, once (the second decision never waits).
            self.auth.await_key(&token).await;
            ctx.kid_waited = true;
            ctx.rejection = None;
            decision = self.admit(session.req_header_mut(), ctx, crate::clock::unix_secs());
        }
        if let Some(t) = admitting {
            ctx.timing.auth = t.elapsed();
        }
        // The head is in, and its deadline no longer applies: a proxied body keeps Pingora's
        // timeouts. An identity body, read here, must arrive within the same deadline.
        let deadline = HeadDeadline::of(session.as_downstream().stream());
        if let Some(d) = deadline
            && !matches!(decision, Decision::Identity(..))
        {
            d.disarm();
        }
        match decision {
            Decision::Proxy => Ok(false),
            Decision::Respond(head, body) => {
                self.respond(session, ctx, head, body).await?;
                Ok(true)
            }
            Decision::Identity(endpoint, token) => {
                let answer = self
                    .serve_identity(session, endpoint, token.as_deref())
                    .await;
                if let Some(d) = HeadDeadline::of(session.as_downstream().stream()) {
                    d.disarm();
                }
                let status = answer.as_ref().map_or_else(Problem::status, |r| r.status);
                crate::ops::metrics::IDENTITY_REQUESTS
                    .with_label_values(&[endpoint.as_str(), status.to_string().as_str()])
                    .inc();
                let (head, body) = match answer {
                    Ok(reply) => endpoints::response(&reply),
                    Err(p) => {
                        ctx.rejection = Some(p.code);
                        p.response()
                    }
                };
                self.respond(session, ctx, Box::new(head), body).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let route = ctx
            .route
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route chosen"))?;
        let upstream = &self.upstreams[self.routes.routes()[route].upstream];
        ctx.timing.upstream_chosen(std::time::Instant::now());
        upstream.peer().ok_or_else(|| {
            Error::explain(
                ErrorType::HTTPStatus(502),
                format!("upstream `{}` has no healthy address", upstream.name),
            )
        })
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        self.prepare_upstream(upstream_request, ctx);
        Ok(())
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora::protocols::Digest>,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        if reused {
            crate::ops::metrics::UPSTREAM_REUSED.inc();
        } else {
            crate::ops::metrics::UPSTREAM_NEW.inc();
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        _response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(took) = ctx.timing.upstream_answered(std::time::Instant::now()) {
            self.metrics
                .route(ctx.route)
                .upstream_seconds
                .observe(took.as_secs_f64());
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        self.decorate(response, session.req_header(), ctx);
        // An upgraded connection or a streamed response of a verified identity ends with its
        // token (`lifetime`); ordinary responses never arm anything.
        if let Some(who) = &ctx.identity
            && crate::edge::lifetime::is_long_lived(response, &session.req_header().method)
            && let Some(d) = HeadDeadline::of(session.as_downstream().stream())
        {
            d.live_until(crate::edge::lifetime::Lifetime::new(
                who,
                self.auth.keys.leeway_secs,
                &self.auth.revocations,
            ));
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let Some(problem) = Problem::of_proxy_error(e) else {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        ctx.rejection = Some(problem.code);
        let (head, body) = problem.response();
        let status = head.status.as_u16();
        if let Err(write) = self.respond(session, ctx, Box::new(head), body).await {
            tracing::debug!(error = %write, "could not send the error response");
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    /// Pingora's error lines name the request with this. Its default includes the query
    /// string, where a client may have put a token: method, path and host only.
    fn request_summary(&self, session: &Session, _ctx: &RequestCtx) -> String {
        let req = session.req_header();
        let host = req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        format!("{} {}, Host: {host}", req.method, req.uri.path())
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        // A kept-alive connection must send its next head in time too.
        if let Some(d) = HeadDeadline::of(session.as_downstream().stream()) {
            d.end_of_life();
            d.arm();
        }
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let route = ctx.route.map(|i| self.routes.routes()[i].pattern.as_str());
        let m = self.metrics.route(ctx.route);
        m.requests(status).inc();
        m.request_seconds
            .observe(ctx.started.elapsed().as_secs_f64());
        if let Some(code) = ctx.rejection {
            crate::ops::metrics::REJECTIONS
                .with_label_values(&[code.as_str()])
                .inc();
            if code == Code::InsufficientScope {
                m.claim_rule_refusals().inc();
            }
        }
        crate::ops::logging::Access {
            request_id: ctx.request_id.as_ref().and_then(|v| v.to_str().ok()),
            method: session.req_header().method.as_str(),
            route,
            status,
            latency_us: u64::try_from(ctx.started.elapsed().as_micros()).unwrap_or(u64::MAX),
            user_id: ctx.identity.as_ref().map(authn::Verified::sub),
            code: ctx.rejection.map(Code::as_str),
            error: e.map(|e| e.etype().as_str()),
        }
        .log();
    }
}
