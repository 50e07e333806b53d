//! `GET /me` → 200 `{"id","email","created_at","updated_at"}` for the token's user.

use super::{Identity, Reply, Request, UserBody, authenticated_user, json};
use crate::problem::{Code, Problem};

pub async fn handle(id: &Identity, req: Request<'_>) -> Result<Reply, Problem> {
    let (_, user_id) = authenticated_user(id, &req)?;
    let user = id
        .store
        .user_by_id(user_id)
        .await?
        // A valid token for a user who no longer exists.
        .ok_or_else(|| Problem::new(Code::InvalidToken).token_presented(true))?;
    Ok(Reply {
        status: 200,
        body: Some(json(&UserBody::of(&user, true))?),
        set_cookie: None,
    })
}
