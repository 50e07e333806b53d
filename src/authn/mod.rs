//! Who is this request: the key set (`keys`), verification on the hot path (`verify`),
//! external issuers' JWKS documents (`jwk`) and their refresh (`issuers`), the revocation
//! snapshot and its sync (`revocation`), and the [`Authenticator`] that ties them together: the
//! one check both the edge and the identity endpoints use, with a route's claim rules (`rules`).
//! Minting at sign-in (`issue`), and the identity assertions upstreams verify (`assertion`).
//! Everything the request path calls here is pure or reads a snapshot.

pub mod assertion;
mod authenticator;
pub mod issue;
pub mod issuers;
pub mod jwk;
pub mod keys;
mod recent;
pub mod revocation;
pub mod rules;
pub mod verify;

pub use authenticator::{Authenticator, Refusal};
pub use keys::{Alg, KeySet, VerifyKey};
pub use rules::ClaimRules;
pub use verify::{MAX_TOKEN_BYTES, TokenError, Verified, verify};
