//! The edge: the Pingora phases (`proxy`) and everything only they use, in the order a request
//! meets them: the request-head deadline (`deadline`), the framing guard (`framing`), the
//! header policy (`headers`: strip, request id, inject), one canonical path (`path`), CORS
//! (`cors`), the route table (`routes`), the load-balanced upstreams (`upstream`), and the
//! in-flight count graceful shutdown waits for (`drain`).

pub mod cors;
pub mod ctx;
pub mod deadline;
pub mod drain;
pub mod framing;
pub mod headers;
pub mod path;
pub mod proxy;
pub mod routes;
pub mod upstream;
