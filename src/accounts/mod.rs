//! The identity service the gateway serves itself: the endpoints (`endpoints`, one file each),
//! request bodies (`body`), the bcrypt pool (`password`), rate limits (`ratelimit`) and the
//! user store with its migrations (`store`: SQLite or Postgres).

pub mod body;
pub mod endpoints;
pub mod password;
pub mod ratelimit;
pub mod store;
