//! The `ProxyHttp` implementation. Each phase is a few lines that delegate: the admission
//! decision is [`Gateway::admit`] (`gateway`); the phases only write what it decided.

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::{HttpPeer, Session};
use pingora::proxy::{FailToProxy, ProxyHttp};
use pingora::{Error, ErrorType, Result};

pub use super::ctx::RequestCtx;
use super::gateway::{Decision, Gateway};

use crate::accounts::endpoints::{self, Endpoint};
use crate::authn;
use crate::edge::deadline::HeadDeadline;
use crate::edge::headers::{self, X_REQUEST_ID};
use crate::problem::{Code, Problem};

/// The Pingora proxy: the gateway of the config in force (swapped whole by a reload,
/// `crate::reload`) and what outlives every config.
#[derive(Debug)]
pub struct Edge {
    pub live: std::sync::Arc<arc_swap::ArcSwap<Gateway>>,
    /// Requests in flight, for graceful shutdown.
    pub in_flight: std::sync::Arc<crate::edge::drain::InFlight>,
}

/// One request's state: the gateway it started with, and what its phases carry.
#[derive(Debug)]
pub struct Exchange {
    pub gateway: std::sync::Arc<Gateway>,
    pub ctx: RequestCtx,
}

impl Gateway {
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
        let _ = resp.insert_header(X_REQUEST_ID.as_str(), id.clone());
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
impl ProxyHttp for Edge {
    type CTX = Exchange;

    /// No downstream modules. Pingora installs a response-compression module by default, at
    /// level 0 (disabled), whose context it still builds and consults on every request; the
    /// gateway compresses nothing (docs/PERFORMANCE.md, optimisation 9).
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    /// The gateway of the config loaded when the request starts: the request sees it whole to
    /// its end, whatever a reload publishes meanwhile.
    fn new_ctx(&self) -> Exchange {
        let mut ctx = RequestCtx::new();
        ctx.in_flight = Some(self.in_flight.enter());
        Exchange {
            gateway: self.live.load_full(),
            ctx,
        }
    }

    async fn request_filter(&self, session: &mut Session, x: &mut Exchange) -> Result<bool> {
        let Exchange { gateway: gw, ctx } = x;
        if gw.forward_auth.is_some() {
            ctx.peer = session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(std::net::SocketAddr::ip);
        }
        let admitting = gw.server_timing.then(std::time::Instant::now);
        let mut decision = gw.admit(session.req_header_mut(), ctx, crate::clock::unix_secs());
        if let Some(token) = ctx.unknown_kid.take() {
            // A key the issuer may have just published: wait for its refetch, then decide
            // again, once (the second decision never waits).
            gw.auth.await_key(&token).await;
            ctx.kid_waited = true;
            ctx.rejection = None;
            decision = gw.admit(session.req_header_mut(), ctx, crate::clock::unix_secs());
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
                gw.respond(session, ctx, head, body).await?;
                Ok(true)
            }
            Decision::Identity(endpoint, token) => {
                let answer = gw.serve_identity(session, endpoint, token.as_deref()).await;
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
                gw.respond(session, ctx, Box::new(head), body).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        x: &mut Exchange,
    ) -> Result<Box<HttpPeer>> {
        let Exchange { gateway: gw, ctx } = x;
        let route = ctx
            .route
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route chosen"))?;
        let upstream = &gw.upstreams[gw.routes.routes()[route].upstream];
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
        x: &mut Exchange,
    ) -> Result<()> {
        let Exchange { gateway: gw, ctx } = x;
        gw.prepare_upstream(upstream_request, ctx);
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
        _x: &mut Exchange,
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
        x: &mut Exchange,
    ) -> Result<()> {
        let Exchange { gateway: gw, ctx } = x;
        if let Some(took) = ctx.timing.upstream_answered(std::time::Instant::now()) {
            gw.metrics
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
        x: &mut Exchange,
    ) -> Result<()> {
        let Exchange { gateway: gw, ctx } = x;
        gw.decorate(response, session.req_header(), ctx);
        // An upgraded connection or a streamed response of a verified identity ends with its
        // token (`lifetime`); ordinary responses never arm anything. HTTP/1 (plain or TLS)
        // follows the connection's bytes in its stream wrapper; an HTTP/2 stream, which has
        // none, is ended by its session (the only other kind of downstream here).
        if let Some(who) = &ctx.identity
            && crate::edge::lifetime::is_long_lived(response, &session.req_header().method)
        {
            let lifetime = crate::edge::lifetime::Lifetime::new(
                who,
                gw.auth.keys.leeway_secs,
                &gw.auth.revocations,
            );
            if let Some(d) = HeadDeadline::of(session.as_downstream().stream()) {
                d.live_until(lifetime);
            } else {
                session
                    .as_downstream_mut()
                    .end_response_when(Box::pin(lifetime.ended()));
            }
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        x: &mut Exchange,
    ) -> FailToProxy {
        let Exchange { gateway: gw, ctx } = x;
        // A stream the gateway ended with its token has had its response: nothing to answer.
        let ended = crate::edge::lifetime::ended_by_token(e);
        let Some(problem) = Problem::of_proxy_error(e).filter(|_| !ended) else {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        ctx.rejection = Some(problem.code);
        let (head, body) = problem.response();
        let status = head.status.as_u16();
        if let Err(write) = gw.respond(session, ctx, Box::new(head), body).await {
            tracing::debug!(error = %write, "could not send the error response");
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    /// Pingora's error lines name the request with this. Its default includes the query
    /// string, where a client may have put a token: method, path and host only.
    fn request_summary(&self, session: &Session, _x: &Exchange) -> String {
        let req = session.req_header();
        let host = req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        format!("{} {}, Host: {host}", req.method, req.uri.path())
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Exchange, e: &Error) -> bool {
        // A long-lived connection ended by its token: the gateway's own doing, not a failure.
        crate::edge::lifetime::ended_by_token(e)
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, x: &mut Exchange) {
        let Exchange { gateway: gw, ctx } = x;
        // A kept-alive connection must send its next head in time too.
        if let Some(d) = HeadDeadline::of(session.as_downstream().stream()) {
            d.end_of_life();
            d.arm();
        }
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let route = ctx.route.map(|i| gw.routes.routes()[i].pattern.as_str());
        let m = gw.metrics.route(ctx.route);
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
