//! `POST /register {"email","password"}` → 201 with the user, a token and the auth cookie.

use super::{
    Identity, Reply, Request, credentials_request, now, pool_problem, session_reply, store_problem,
};
use crate::problem::{Code, Problem};

pub async fn handle(id: &Identity, req: Request<'_>) -> Result<Reply, Problem> {
    let (input, _) = credentials_request(id, &req)?;
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
