//! The edge: the Pingora phases (`proxy`, with the per-request state in `ctx`), the gateway
//! one config builds and its admission decision (`gateway`), and everything only they use, in
//! the order a request meets them: the request-head deadline (`deadline`, whose stream wrapper
//! also puts a problem in place of Pingora's bare 400: `pingora_errors`), the framing guard
//! (`framing`), one canonical path (`crate::path`, on the ground floor because config checks
//! route patterns with it too), the header policy (`headers`: strip, request id, credential,
//! inject), CORS (`cors`), the route table (`routes`) and its metric handles
//! (`route_metrics`), the load-balanced upstreams (`upstream`, their names resolved by
//! `resolve`), the in-flight count graceful shutdown waits for (`drain`), the opt-in
//! `Server-Timing` of each response (`timing`), and the same admission answered to another
//! proxy (`forward_auth`).

pub mod cors;
pub mod ctx;
pub mod deadline;
pub mod drain;
pub mod forward_auth;
pub mod framing;
pub mod gateway;
pub mod headers;
pub mod lifetime;
pub mod pingora_errors;
pub mod proxy;
pub mod resolve;
pub mod route_metrics;
pub mod routes;
pub mod timing;
pub mod upstream;

/// A request head for the unit tests of the edge's modules: `method`, `target`, and the
/// headers in order.
#[cfg(test)]
pub(crate) fn test_request(
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> pingora::http::RequestHeader {
    let mut r = pingora::http::RequestHeader::build(method, target.as_bytes(), None).unwrap();
    for (n, v) in headers {
        r.append_header(n.to_string(), *v).unwrap();
    }
    r
}
