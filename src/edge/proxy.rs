//! The `ProxyHttp` implementation. Each phase is a few lines that delegate: the admission
//! decision (`admit`) is a plain synchronous function over the request header, so it can be
//! read, tested and benchmarked without a socket; the phases only write what it decided.

use std::borrow::Cow;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::{HttpPeer, Session};
use pingora::proxy::{FailToProxy, ProxyHttp};
use pingora::{Error, ErrorSource, ErrorType, Result};

pub use super::ctx::RequestCtx;

use crate::accounts::endpoints::{self, Endpoint, Identity, MAX_BODY_BYTES};
use crate::authn::{self, Authenticator};
use crate::edge::cors::{CorsPolicy, Verdict};
use crate::edge::deadline::HeadDeadline;
use crate::edge::framing::{self, FramingError};
use crate::edge::headers::{self, Credential, X_REQUEST_ID};
use crate::edge::path;
use crate::edge::routes::{Access, RouteTable};
use crate::edge::upstream::Upstream;
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
    /// Metric handles per route, resolved at start (see [`crate::ops::metrics::TableMetrics`]).
    pub metrics: crate::ops::metrics::TableMetrics,
}

/// What the gateway does with a request after looking at its header.
#[derive(Debug)]
pub enum Decision {
    /// Send it to the matched route's upstream.
    Proxy,
    /// Answer it here.
    Respond(Box<ResponseHeader>, Bytes),
    /// An identity endpoint: the body is read, then the endpoint answers.
    Identity(Endpoint),
}

impl Decision {
    fn problem(ctx: &mut RequestCtx, p: &Problem) -> Self {
        ctx.rejection = Some(p.code);
        let (head, body) = p.response();
        Self::Respond(Box::new(head), body)
    }

    fn bad_head(ctx: &mut RequestCtx, e: FramingError) -> Self {
        tracing::debug!(reason = ?e, "request head refused");
        let detail = match e {
            FramingError::TargetTooLong
            | FramingError::HeaderTooLong
            | FramingError::HeadTooLarge => "The request head is too large",
            FramingError::RepeatedLength | FramingError::UnclearTransferEncoding => {
                "The request framing is ambiguous"
            }
        };
        Self::problem(ctx, &Problem::new(Code::BadRequest).detail(detail))
    }
}

impl Gateway {
    /// The edge policy of CONTRACT section 4, in order. Mutates the request header (identity
    /// headers stripped, path canonicalised) and fills `ctx`.
    pub fn admit(&self, req: &mut RequestHeader, ctx: &mut RequestCtx, now: u64) -> Decision {
        // 1. The client never sets identity, on any route.
        headers::strip_identity_headers(req);
        ctx.request_id = Some(headers::request_id(req));
        // 0. A head an upstream could frame differently, or too large to be honest, goes no
        //    further (see `framing`).
        if let Err(e) = framing::check(req) {
            return Decision::bad_head(ctx, e);
        }

        // 2. One spelling of the path for the route table and the upstream alike. Pingora keeps
        //    the raw target for the wire, so anything but origin-form is rewritten (absolute
        //    form) or refused (`*`, `public/x`).
        let raw = req.raw_path();
        let origin_form = raw.first() == Some(&b'/');
        let absolute_form = raw
            .get(..7)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"http://"))
            || raw
                .get(..8)
                .is_some_and(|p| p.eq_ignore_ascii_case(b"https://"));
        if !origin_form && !absolute_form {
            let p = Problem::new(Code::BadRequest).detail("The request target must be a path");
            return Decision::problem(ctx, &p);
        }
        let canonical = match path::normalise(req.uri.path()) {
            Ok(Cow::Borrowed(_)) if origin_form => None,
            Ok(p) => Some(p.into_owned()),
            Err(e) => {
                tracing::debug!(reason = ?e, "path refused");
                let p = Problem::new(Code::BadRequest).detail("The request path is not acceptable");
                return Decision::problem(ctx, &p);
            }
        };
        if let Some(canonical) = canonical {
            let target = match req.uri.query() {
                Some(q) => format!("{canonical}?{q}"),
                None => canonical,
            };
            match target.parse() {
                Ok(uri) => req.set_uri(uri),
                Err(_) => return Decision::problem(ctx, &Problem::new(Code::BadRequest)),
            }
        }
        let path = req.uri.path();

        if path == JWKS_PATH {
            return self.jwks(ctx);
        }
        // Cross-origin: preflights answered here, cross-site unsafe cookie requests refused.
        ctx.cors_origin = self.cors.allowed_origin(req);
        let credential = headers::credential(req, &self.cookie_name);
        let cookie_auth = matches!(credential, Credential::Token(_, headers::Source::Cookie));
        let endpoint = self
            .identity
            .as_ref()
            .and_then(|i| i.route(&req.method, path));
        match self.cors.check(req, cookie_auth, endpoint.is_some()) {
            Verdict::Pass => {}
            Verdict::Preflight => {
                let mut head = crate::problem::head(204, None, 0, "no-store");
                self.cors.preflight_headers(req, &mut head);
                return Decision::Respond(Box::new(head), Bytes::new());
            }
            Verdict::Refuse(why) => {
                return Decision::problem(ctx, &Problem::new(Code::Forbidden).detail(why));
            }
        }
        // The identity endpoints come before the route table: no route can shadow them.
        if let Some(endpoint) = endpoint {
            return match endpoint {
                Ok(endpoint) => Decision::Identity(endpoint),
                Err(p) => Decision::problem(ctx, &p),
            };
        }

        // 3. Route, or 404 without ever reaching an upstream.
        let Some(matched) = self.routes.find(path) else {
            return Decision::problem(ctx, &Problem::new(Code::NotFound));
        };
        let route = matched.route;
        ctx.route = Some(matched.index);
        ctx.forward_token = route.forward_token || self.upstreams[route.upstream].forward_token;
        if route.access == Access::Public {
            return Decision::Proxy;
        }

        // 4. The credential, 5. its verification, 6. the route's policy.
        let token = match credential {
            Credential::Token(t, _) => t,
            Credential::None if route.access == Access::Optional => return Decision::Proxy,
            Credential::None => return Decision::problem(ctx, &Problem::new(Code::MissingToken)),
            Credential::Ambiguous => {
                let p =
                    Problem::new(Code::BadRequest).detail("More than one credential was presented");
                return Decision::problem(ctx, &p);
            }
        };
        let who = match self.auth.authenticate(token, now) {
            Ok(who) => who,
            Err(code) => {
                return Decision::problem(ctx, &Problem::new(code).token_presented(true));
            }
        };
        if let Some(owner) = matched.owner_value
            && owner != who.sub()
        {
            return Decision::problem(ctx, &Problem::new(Code::Forbidden));
        }
        ctx.identity = Some(who);
        Decision::Proxy
    }

    fn jwks(&self, ctx: &mut RequestCtx) -> Decision {
        let Some(doc) = self.auth.keys.jwks() else {
            return Decision::problem(ctx, &Problem::new(Code::NotFound));
        };
        let head = crate::problem::head(
            200,
            Some("application/jwk-set+json"),
            doc.len(),
            "public, max-age=300",
        );
        Decision::Respond(Box::new(head), doc.clone())
    }

    /// What reaches the upstream: identity injected, credential removed, request id set.
    pub fn prepare_upstream(&self, req: &mut RequestHeader, ctx: &RequestCtx) {
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
}

impl Gateway {
    /// Reads the (bounded) body and runs an identity endpoint.
    async fn serve_identity(
        &self,
        session: &mut Session,
        endpoint: Endpoint,
    ) -> std::result::Result<endpoints::Reply, Problem> {
        let identity = self
            .identity
            .as_ref()
            .ok_or_else(|| Problem::new(Code::NotFound))?;
        let body = read_body(session, MAX_BODY_BYTES).await?;
        let req = session.req_header();
        let token = match headers::credential(req, &self.cookie_name) {
            Credential::Token(t, _) => Some(t),
            Credential::None => None,
            Credential::Ambiguous => {
                return Err(
                    Problem::new(Code::BadRequest).detail("More than one credential was presented")
                );
            }
        };
        let peer = session.client_addr().and_then(|a| a.as_inet()).map_or(
            std::net::IpAddr::from([0, 0, 0, 0]),
            std::net::SocketAddr::ip,
        );
        let forwarded = req
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok());
        let request = endpoints::Request {
            endpoint,
            content_type: req
                .headers
                .get(http::header::CONTENT_TYPE)
                .map(http::HeaderValue::as_bytes),
            body,
            query: req.uri.query(),
            token,
            client_ip: identity.trusted_proxies.client_key(peer, forwarded),
        };
        identity.handle(request).await
    }
}

/// Reads a request body of at most `limit` bytes: 413 beyond it, 400 when the client breaks off.
async fn read_body(session: &mut Session, limit: usize) -> std::result::Result<Bytes, Problem> {
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(Problem::new(Code::PayloadTooLarge));
    }
    let mut body = bytes::BytesMut::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    return Err(Problem::new(Code::PayloadTooLarge));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body.freeze()),
            Err(_) => {
                return Err(
                    Problem::new(Code::BadRequest).detail("The request body could not be read")
                );
            }
        }
    }
}

/// Writes a gateway-made response, with the request id.
async fn respond(
    session: &mut Session,
    ctx: &RequestCtx,
    mut head: Box<ResponseHeader>,
    body: Bytes,
) -> Result<()> {
    if let Some(id) = &ctx.request_id {
        let _ = head.insert_header(X_REQUEST_ID.clone(), id.clone());
    }
    if let Some(origin) = &ctx.cors_origin {
        crate::edge::cors::decorate(&mut head, origin.clone());
    }
    // A request body we never read would be taken for the next request: close instead.
    if !session.is_body_empty() {
        session.set_keepalive(None);
    }
    session.write_response_header(head, false).await?;
    session.write_response_body(Some(body), true).await
}

/// The problem code for a proxying failure; `None` when the client is already gone.
fn failure_code(e: &Error) -> Option<Code> {
    use ErrorType::{
        ConnectTimedout, ConnectionClosed, HTTPStatus, ReadError, ReadTimedout, WriteError,
        WriteTimedout,
    };
    match (e.esource(), e.etype()) {
        (_, HTTPStatus(504))
        | (ErrorSource::Upstream, ConnectTimedout | ReadTimedout | WriteTimedout) => {
            Some(Code::GatewayTimeout)
        }
        (_, HTTPStatus(502)) | (ErrorSource::Upstream, _) => Some(Code::BadGateway),
        (ErrorSource::Downstream, WriteError | ReadError | ConnectionClosed | ReadTimedout) => None,
        (ErrorSource::Downstream, _) => Some(Code::BadRequest),
        _ => Some(Code::Internal),
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        let mut ctx = RequestCtx::new();
        ctx.in_flight = Some(self.in_flight.enter());
        ctx
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let decision = self.admit(session.req_header_mut(), ctx, crate::clock::unix_secs());
        // The head is in, and its deadline no longer applies: a proxied body keeps Pingora's
        // timeouts. An identity body, read here, must arrive within the same deadline.
        let deadline = HeadDeadline::of(session.as_downstream().stream());
        if let Some(d) = deadline
            && !matches!(decision, Decision::Identity(_))
        {
            d.disarm();
        }
        match decision {
            Decision::Proxy => Ok(false),
            Decision::Respond(head, body) => {
                respond(session, ctx, head, body).await?;
                Ok(true)
            }
            Decision::Identity(endpoint) => {
                let answer = self.serve_identity(session, endpoint).await;
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
                respond(session, ctx, Box::new(head), body).await?;
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
        ctx.upstream_started = Some(std::time::Instant::now());
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
        if let Some(started) = ctx.upstream_started.take() {
            self.metrics
                .route(ctx.route)
                .upstream_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(id) = &ctx.request_id {
            let _ = response.insert_header(X_REQUEST_ID.clone(), id.clone());
        }
        if let Some(origin) = &ctx.cors_origin {
            crate::edge::cors::decorate(response, origin.clone());
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let Some(code) = failure_code(e) else {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        ctx.rejection = Some(code);
        let (head, body) = Problem::new(code).response();
        let status = head.status.as_u16();
        if let Err(write) = respond(session, ctx, Box::new(head), body).await {
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
        }
        // Never the token, the cookie or the query string: only what identifies the request.
        tracing::info!(
            target: "access",
            request_id = ctx.request_id.as_ref().and_then(|v| v.to_str().ok()),
            method = %session.req_header().method,
            route,
            status,
            latency_us = u64::try_from(ctx.started.elapsed().as_micros()).unwrap_or(u64::MAX),
            user_id = ctx.identity.as_ref().map(authn::Verified::sub),
            code = ctx.rejection.map(Code::as_str),
            error = e.map(|e| e.etype().as_str()),
        );
    }
}
