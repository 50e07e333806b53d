//! Per-request state carried from phase to phase.

use std::time::Instant;

use http::HeaderValue;

use crate::authn::Verified;
use crate::edge::drain::InFlightGuard;
use crate::edge::timing::Timing;
use crate::problem::Code;

#[derive(Debug)]
pub struct RequestCtx {
    pub started: Instant,
    pub request_id: Option<HeaderValue>,
    /// Index of the matched route in the route table.
    pub route: Option<usize>,
    /// Who the token says the caller is, once verified.
    pub identity: Option<Verified>,
    /// Keep the credential on the way upstream (route or upstream `forward_token`).
    pub forward_token: bool,
    /// The problem code the gateway answered with, for the access log.
    pub rejection: Option<Code>,
    /// The request's `Origin` when it is an allowed frontend: responses are made readable to it.
    pub cors_origin: Option<HeaderValue>,
    /// Time spent in admission and upstream (the upstream histogram, `Server-Timing`).
    pub timing: Timing,
    /// Counts this request as in flight until it ends (graceful shutdown waits for it).
    pub in_flight: Option<InFlightGuard>,
    /// The peer's address, read only when forward-auth is on (its trusted proxies).
    pub peer: Option<std::net::IpAddr>,
    /// The token, when it was refused for a `kid` its issuer's cached set lacks: the request
    /// waits for a refetch and is admitted again (`authn::issuers::refetch`).
    pub unknown_kid: Option<bytes::Bytes>,
    /// The request has waited once: its second admission decides without waiting.
    pub kid_waited: bool,
}

impl RequestCtx {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            request_id: None,
            route: None,
            identity: None,
            forward_token: false,
            rejection: None,
            in_flight: None,
            cors_origin: None,
            timing: Timing::default(),
            peer: None,
            unknown_kid: None,
            kid_waited: false,
        }
    }
}

impl Default for RequestCtx {
    fn default() -> Self {
        Self::new()
    }
}
