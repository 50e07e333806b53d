//! The identity service the gateway serves itself: the endpoints (`endpoints`, one file each),
//! the request as read off the Pingora session (`request`), request bodies (`body`), the
//! bcrypt pool (`password`), rate limits and the client address behind trusted proxies
//! (`ratelimit`: per replica; `limits`: as the endpoints ask them, shared by every replica
//! with `scope = "cluster"`), the user store with its migrations and upkeep (`store`: SQLite or Postgres),
//! and the sync that keeps the edge's revocation snapshot in step with the store's log
//! (`sync`).

pub mod body;
pub mod endpoints;
pub mod limits;
pub mod password;
pub mod ratelimit;
pub mod request;
pub mod store;
pub mod sync;
