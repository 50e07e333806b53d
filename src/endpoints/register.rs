//! `POST /register {"email","password"}` → 201 with the user, a token and the auth cookie.

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

    let hash = id
        .passwords
        .hash(&input.password)
        .await
        .map_err(pool_problem)?;
    let user = id
        .store
        .create_user(&input.email, &hash)
        .await
        .map_err(|e| store_problem(&e))?;
    let minted = id.issuer.mint(user.id, &user.email, now()).map_err(|e| {
        tracing::error!(cause = %e, "minting a token failed");
        Problem::new(Code::Internal)
    })?;
    session_reply(id, 201, &user, &minted)
}
