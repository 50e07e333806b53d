//! The [`Authenticator`]: verification, the choice of key set by `iss`, and revocation, joined
//! into the one check both the edge and the identity endpoints use.

use std::sync::Arc;

use super::KeySet;
use super::issuers::{Checked, Issuers};
use super::revocation::Revocations;
use super::rules::{self, ClaimRules};
use super::verify::{self, TokenError, Verified};

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
    /// The verified identity, or why the token is refused; a valid token that fails `rules`
    /// (a route's claim rules, [`ClaimRules::NONE`] for none) is [`Refusal::InsufficientScope`].
    pub fn authenticate(
        &self,
        token: &[u8],
        now: u64,
        rules: &ClaimRules,
    ) -> Result<Verified, Refusal> {
        let started = std::time::Instant::now();
        let result = self.check(token, now, rules);
        let took = started.elapsed().as_secs_f64();
        match &result {
            Ok(_) => crate::ops::metrics::TOKEN_VALID_SECONDS.observe(took),
            Err(code) => crate::ops::metrics::TOKEN_VERIFY_SECONDS
                .with_label_values(&[code.as_str()])
                .observe(took),
        }
        result
    }

    fn check(&self, token: &[u8], now: u64, rules: &ClaimRules) -> Result<Verified, Refusal> {
        let refused = |e| match e {
            TokenError::Expired => Refusal::Expired,
            TokenError::Invalid(reason) => {
                tracing::debug!(reason, "token refused");
                Refusal::Invalid
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
            let who = match external.verify(&token, now) {
                Checked::Done(result) => result.map_err(refused)?,
                Checked::UnknownKid => return Err(Refusal::UnknownKid),
            };
            return admit(who, &token, rules);
        }
        let who = token.check(&self.keys, None, now).map_err(refused)?;
        if self
            .revocations
            .snapshot()
            .is_revoked(who.jti, who.user_uuid, who.iat)
        {
            return Err(Refusal::Revoked);
        }
        admit(who, &token, rules)
    }
}

impl Authenticator {
    /// After [`Refusal::UnknownKid`]: waits for the token's issuer to refetch its keys (at most
    /// its `timeout_ms`, shared with every request waiting on it). True when the kid is now
    /// known and the token is worth authenticating again.
    pub async fn await_key(&self, token: &[u8]) -> bool {
        let mut scratch = verify::Scratch::new();
        let Ok(token) = verify::parse(token, &mut scratch) else {
            return false;
        };
        let (Some(kid), Some(issuer)) = (
            token.kid(),
            token.iss().and_then(|i| self.issuers.by_iss(i)),
        ) else {
            return false;
        };
        issuer.await_kid(kid).await
    }
}

/// The verified identity, once the token's claims meet the route's rules.
fn admit(
    who: Verified,
    token: &verify::Unverified<'_, '_>,
    rules: &ClaimRules,
) -> Result<Verified, Refusal> {
    if rules.is_empty() || rules::admits(rules, token.claims_json()) {
        Ok(who)
    } else {
        Err(Refusal::InsufficientScope)
    }
}

/// Why a presented token is refused (`problem` makes it a 401 with the RFC 6750 challenge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Malformed, badly signed, wrong algorithm, issuer or audience, not yet valid.
    Invalid,
    /// `exp` passed by more than the leeway.
    Expired,
    /// Signed out (this token, or every token of its user).
    Revoked,
    /// Valid, but its claims fail the route's rules (403, not 401).
    InsufficientScope,
    /// An external issuer's token naming a `kid` its cached set lacks: `invalid_token`, unless
    /// the caller can [`Authenticator::await_key`] and authenticate again.
    UnknownKid,
}

impl Refusal {
    /// The contract's problem code for it (also the metric label).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Invalid | Self::UnknownKid => "invalid_token",
            Self::Expired => "token_expired",
            Self::Revoked => "token_revoked",
            Self::InsufficientScope => "insufficient_scope",
        }
    }
}
