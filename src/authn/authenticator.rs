//! The [`Authenticator`]: verification, the choice of key set by `iss`, and revocation, joined
//! into the one check both the edge and the identity endpoints use.

use std::sync::Arc;

use super::KeySet;
use super::issuers::{Checked, Issuers};
use super::recent::{Entry, Recent};
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
    /// Our tokens verified with `keys`, and only with them: this table lives and dies with
    /// this key set.
    recent: Recent,
}

impl Authenticator {
    pub fn new(keys: Arc<KeySet>, revocations: Arc<Revocations>, issuers: Arc<Issuers>) -> Self {
        Self {
            keys,
            revocations,
            issuers,
            recent: Recent::default(),
        }
    }

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
        if let Some(decided) = self.recent.with(token, |e| self.recheck(e, now, rules)) {
            return decided;
        }
        let raw = token;
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
            return admit(who, token.claims_json(), rules);
        }
        let who = token.check(&self.keys, None, now).map_err(refused)?;
        self.unrevoked(&who)?;
        self.recent.put(raw, &who, token.nbf(), token.claims_json());
        admit(who, token.claims_json(), rules)
    }

    /// A token verified before: what may have changed since (the clock, the revocations)
    /// and the route's rules, the same checks in the same order as a first verification.
    fn recheck(&self, seen: &Entry, now: u64, rules: &ClaimRules) -> Result<Verified, Refusal> {
        verify::in_time(seen.who.exp, seen.nbf, now, self.keys.leeway_secs).map_err(refused)?;
        self.unrevoked(&seen.who)?;
        admit(seen.who.clone(), &seen.claims, rules)
    }

    fn unrevoked(&self, who: &Verified) -> Result<(), Refusal> {
        if self
            .revocations
            .snapshot()
            .is_revoked(who.jti, who.user_uuid, who.iat)
        {
            return Err(Refusal::Revoked);
        }
        Ok(())
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

fn refused(e: TokenError) -> Refusal {
    match e {
        TokenError::Expired => Refusal::Expired,
        TokenError::Invalid(reason) => {
            tracing::debug!(reason, "token refused");
            Refusal::Invalid
        }
    }
}

/// The verified identity, once the token's claims (`claims`, verified JSON) meet the route's
/// rules.
fn admit(who: Verified, claims: &[u8], rules: &ClaimRules) -> Result<Verified, Refusal> {
    if rules.is_empty() || rules::admits(rules, claims) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::VerifyKey;
    use crate::authn::revocation::Revocation;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const JTI: &str = "6b1d1a44-3e4b-4d3f-8a2b-1c2d3e4f5a6b";

    fn now() -> u64 {
        crate::clock::unix_secs()
    }

    fn auth() -> Authenticator {
        let keys = KeySet::new(
            vec![VerifyKey::hmac(None, SECRET)],
            "portcullis".into(),
            "portcullis".into(),
            30,
        );
        Authenticator::new(Arc::new(keys), Arc::default(), Arc::default())
    }

    fn token(exp: u64) -> Vec<u8> {
        let claims = serde_json::json!({"sub": "5f0c3c9e-4d7a-4a43-9c1e-0b8f1f2d3e4a",
            "iat": now() - 10, "exp": exp, "iss": "portcullis", "aud": "portcullis", "jti": JTI});
        let signed = format!(
            "{}.{}",
            B64.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
            B64.encode(claims.to_string())
        );
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, SECRET);
        let tag = aws_lc_rs::hmac::sign(&key, signed.as_bytes());
        format!("{signed}.{}", B64.encode(tag.as_ref())).into_bytes()
    }

    #[test]
    fn a_token_verified_before_is_revoked_the_moment_its_revocation_arrives() {
        let a = auth();
        let t = token(now() + 3600);
        for _ in 0..2 {
            assert!(a.authenticate(&t, now(), &ClaimRules::NONE).is_ok());
        }
        a.revocations.apply(&[Revocation::Token {
            jti: JTI.into(),
            expires_at: i64::try_from(now()).unwrap() + 3600,
        }]);
        assert_eq!(
            a.authenticate(&t, now(), &ClaimRules::NONE).unwrap_err(),
            Refusal::Revoked
        );
    }

    #[test]
    fn a_token_verified_before_still_expires_and_tampering_still_fails() {
        let a = auth();
        let exp = now() + 60;
        let t = token(exp);
        assert!(a.authenticate(&t, now(), &ClaimRules::NONE).is_ok());
        assert!(a.authenticate(&t, exp + 30, &ClaimRules::NONE).is_ok());
        assert_eq!(
            a.authenticate(&t, exp + 31, &ClaimRules::NONE).unwrap_err(),
            Refusal::Expired
        );
        let mut forged = t.clone();
        let mid = forged.len() / 2;
        forged[mid] ^= 1;
        assert_eq!(
            a.authenticate(&forged, now(), &ClaimRules::NONE)
                .unwrap_err(),
            Refusal::Invalid
        );
    }

    #[test]
    fn a_token_verified_before_is_still_held_to_each_routes_claim_rules() {
        let a = auth();
        let t = token(now() + 3600);
        assert!(a.authenticate(&t, now(), &ClaimRules::NONE).is_ok());
        let admins_only = ClaimRules {
            require: vec![("role".into(), "admin".into())],
            scopes: Vec::new(),
        };
        assert_eq!(
            a.authenticate(&t, now(), &admins_only).unwrap_err(),
            Refusal::InsufficientScope
        );
        let its_own_audience = ClaimRules {
            require: vec![("aud".into(), "portcullis".into())],
            scopes: Vec::new(),
        };
        assert!(a.authenticate(&t, now(), &its_own_audience).is_ok());
    }

    #[test]
    fn a_new_key_set_starts_without_the_tokens_the_old_one_verified() {
        let a = auth();
        let t = token(now() + 3600);
        assert!(a.authenticate(&t, now(), &ClaimRules::NONE).is_ok());
        let rotated = Authenticator::new(
            Arc::new(KeySet::new(
                vec![VerifyKey::hmac(None, b"another-secret-another-secret-00")],
                "portcullis".into(),
                "portcullis".into(),
                30,
            )),
            Arc::clone(&a.revocations),
            Arc::default(),
        );
        assert_eq!(
            rotated
                .authenticate(&t, now(), &ClaimRules::NONE)
                .unwrap_err(),
            Refusal::Invalid
        );
    }
}
