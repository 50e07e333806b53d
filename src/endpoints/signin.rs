//! `POST /signin {"email","password"}` → 200 with the user, a token and the auth cookie.
//! An unknown email and a wrong password get the same answer after the same work: the
//! password is checked against a dummy hash when there is no user.

use super::{
    Identity, Reply, Request, body, now, pool_problem, rate_limited, session_reply, store_problem,
};
use crate::problem::{Code, Problem};

pub async fn handle(id: &Identity, req: Request<'_>) -> Result<Reply, Problem> {
    id.per_ip.hit(&req.client_ip).map_err(rate_limited)?;
    body::require_json(req.content_type)?;
    let input = body::email_password(&req.body)?;
    let email_key = input.email.to_ascii_lowercase();
    id.failed_per_email
        .check(&email_key)
        .map_err(rate_limited)?;

    let found = id
        .store
        .credentials_by_email(&input.email)
        .await
        .map_err(|e| store_problem(&e))?;
    let hash = found.as_ref().map(|c| c.password_hash.as_str());
    let ok = id
        .passwords
        .verify(&input.password, hash)
        .await
        .map_err(pool_problem)?;
    let Some(creds) = found.filter(|_| ok) else {
        // Counted after the work, so a guesser pays bcrypt for every try.
        let _ = id.failed_per_email.hit(&email_key);
        return Err(Problem::new(Code::InvalidCredentials));
    };

    // A sign-out-everywhere in this very second must not revoke the new token.
    let snapshot = id.auth.revocations.snapshot();
    let iat = snapshot
        .valid_after(creds.user.id)
        .and_then(|t| u64::try_from(t).ok())
        .map_or(now(), |t| t.max(now()));
    let minted = id
        .issuer
        .mint(creds.user.id, &creds.user.email, iat)
        .map_err(|e| {
            tracing::error!(cause = %e, "minting a token failed");
            Problem::new(Code::Internal)
        })?;
    session_reply(id, 200, &creds.user, &minted)
}
