//! The gateway as one config builds it ([`Gateway`]) and its admission decision: the edge policy
//! of CONTRACT section 4, a plain synchronous function over the request header, so that it
//! can be read, tested and benchmarked without a socket. The Pingora phases (`proxy`) only
//! write what it decided; another proxy's forward-auth ask (`forward_auth`) is decided by the
//! same admission.

use std::sync::Arc;

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};

use super::ctx::RequestCtx;
use crate::accounts::endpoints::{Endpoint, Identity};
use crate::authn::{self, Authenticator};
use crate::config::ForwardAuth;
use crate::edge::cors::{CorsPolicy, Verdict};
use crate::edge::headers::{self, Credential, X_REQUEST_ID};
use crate::edge::routes::{Access, RouteTable};
use crate::edge::upstream::Upstream;
use crate::edge::{forward_auth, framing};
use crate::path;
use crate::problem::{Code, Problem};

pub const JWKS_PATH: &str = "/.well-known/jwks.json";

/// Everything the edge needs per request, built once from a config (and again by a reload:
/// a request keeps the one it started with, `proxy::Exchange`).
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
    /// Metric handles per route, resolved at start (see [`crate::edge::route_metrics::TableMetrics`]).
    pub metrics: crate::edge::route_metrics::TableMetrics,
    /// `server.server_timing`: a `Server-Timing` header on every response (`timing`).
    pub server_timing: bool,
    /// `[forward_auth]` when enabled: the endpoints of `forward_auth`.
    pub forward_auth: Option<ForwardAuth>,
    /// `[assertion]`: signs the identity assertion of routes with `assertion` on.
    pub asserter: Option<Arc<authn::assertion::Asserter>>,
}

/// Whom the admission decides for: the proxy itself, or another proxy asking (`forward_auth`),
/// for which the gateway's own endpoints are no route and nothing is forward-auth again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
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

    fn admission(
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
            .then(|| forward_auth::raw_ask(req))
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
            && (asked_as_sent.is_some() || forward_auth::is_endpoint(path))
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
            let _ = req.insert_header(X_REQUEST_ID.as_str(), id.clone());
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
}

impl Gateway {
    /// The answer to a forward-auth request `asking` (already stripped of identity headers,
    /// canonical): the original request it names goes through the proxy's own admission
    /// (`forward_auth` for the rest). Counted by asker and result.
    fn forward_auth(
        &self,
        fa: &ForwardAuth,
        asking: &RequestHeader,
        as_sent: Option<&[u8]>,
        ctx: &mut RequestCtx,
        now: u64,
    ) -> Result<Decision, Problem> {
        let asker = forward_auth::Asker::of(asking.uri.path());
        let answer = forward_auth::original_request(fa, asker, asking, as_sent, ctx.peer).and_then(
            |mut original| {
                match self.admission(&mut original, ctx, now, Mode::ForwardAuth)? {
                    Decision::Proxy => {
                        let mut head = forward_auth::allowed(ctx.identity.as_ref());
                        if let Some((name, value)) = self.assertion(&original, ctx) {
                            let _ = head.insert_header(name, value);
                        }
                        Ok(Decision::Respond(Box::new(head), Bytes::new()))
                    }
                    // Nothing else answers here in forward-auth mode; never an allow.
                    Decision::Respond(..) | Decision::Identity(..) => {
                        Err(Problem::new(Code::NotFound))
                    }
                }
            },
        );
        if ctx.unknown_kid.is_none() {
            // (otherwise decided again after the refetch, and counted then)
            forward_auth::count(asker, answer.as_ref().map(drop).map_err(|p| p.code));
        }
        answer
    }
}
