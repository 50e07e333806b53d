//! `POST /signin {"email","password"}` → 200 with the user, a token and the auth cookie.
//! An unknown email and a wrong password get the same answer after the same work: the
//! password is checked against a dummy hash when there is no user.

use super::{Identity, Reply, Request, credentials_request, now, session_reply};
use crate::problem::{Code, Problem};

pub async fn handle(id: &Identity, req: Request<'_>) -> Result<Reply, Problem> {
    let (input, email_key) = credentials_request(id, &req).await?;

    let found = id.store.credentials_by_email(&input.email).await?;
    let hash = found.as_ref().map(|c| c.password_hash.as_str());
    let ok = id.passwords.verify(&input.password, hash).await?;
    let Some(creds) = found.filter(|_| ok) else {
        // Counted after the work, so a guesser pays bcrypt for every try.
        let _ = id.failed_per_email.hit(&email_key).await;
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
        .mint(creds.user.id, &creds.user.email, &creds.user.roles, iat)?;
    session_reply(id, 200, &creds.user, &minted)
}
