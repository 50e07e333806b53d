//! The [`Authenticator`]: verification, the choice of key set by `iss`, and revocation, joined
//! into the one check both the edge and the identity endpoints use.

use std::sync::Arc;

use super::KeySet;
use super::issuers::Issuers;
use super::revocation::Revocations;
use super::verify::{self, TokenError, Verified};
use crate::problem::Code;

/// Verifies a token and checks it against the revocation snapshot. No I/O, no lock.
#[derive(Debug)]
pub struct Authenticator {
    pub keys: Arc<KeySet>,
    pub revocations: Arc<Revocations>,
    /// `[[issuer]]`s: a token whose `iss` names one is checked with that issuer's JWKS
    /// snapshot, never with ours (and ours never with theirs).
    pub issuers: Arc<Issuers>,
}

impl Authenticator {
    /// The verified identity, or the problem code to refuse with.
    pub fn authenticate(&self, token: &[u8], now: u64) -> Result<Verified, Code> {
        let started = std::time::Instant::now();
        let result = self.check(token, now);
        let took = started.elapsed().as_secs_f64();
        match &result {
            Ok(_) => crate::ops::metrics::TOKEN_VALID_SECONDS.observe(took),
            Err(code) => crate::ops::metrics::TOKEN_VERIFY_SECONDS
                .with_label_values(&[code.as_str()])
                .observe(took),
        }
        result
    }

    fn check(&self, token: &[u8], now: u64) -> Result<Verified, Code> {
        let refused = |e| match e {
            TokenError::Expired => Code::TokenExpired,
            TokenError::Invalid(reason) => {
                tracing::debug!(reason, "token refused");
                Code::InvalidToken
            }
        };
        let mut scratch = verify::Scratch::new();
        let token = verify::parse(token, &mut scratch).map_err(refused)?;
        let iss = token.iss();
        if iss != Some(self.keys.issuer.as_str())
            && let Some(external) = iss.and_then(|iss| self.issuers.by_iss(iss))
        {
            // Not our user: our revocations (jtis we minted, our users' sign-outs) do not
            // apply; the issuer's own token lifetime does.
            return external.verify(&token, now).map_err(refused);
        }
        let who = token.check(&self.keys, None, now).map_err(refused)?;
        if self
            .revocations
            .snapshot()
            .is_revoked(who.jti, who.user_uuid, who.iat)
        {
            return Err(Code::TokenRevoked);
        }
        Ok(who)
    }
}
