//! Tokens: the key set (`keys`), verification on the hot path (`verify`).
//! Minting at sign-in arrives with the identity endpoints.

pub mod keys;
pub mod verify;

pub use keys::{Alg, KeySet, VerifyKey};
pub use verify::{MAX_TOKEN_BYTES, TokenError, Verified, verify};
