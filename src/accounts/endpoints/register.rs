//! `POST /register {"email","password"}` → 201 with the user, a token and the auth cookie.

use super::{Identity, Reply, Request, credentials_request, now, session_reply};
use crate::problem::Problem;

pub async fn handle(id: &Identity, req: Request<'_>) -> Result<Reply, Problem> {
    let (input, _) = credentials_request(id, &req).await?;
    let hash = id.passwords.hash(&input.password).await?;
    let user = id.store.create_user(&input.email, &hash).await?;
    let minted = id.issuer.mint(user.id, &user.email, &user.roles, now())?;
    session_reply(id, 201, &user, &minted)
}
