//! `POST /signout` → 204: the presented token is revoked (here at once, on every replica
//! within a second) and the cookie cleared. `?scope=all` revokes every token of the user
//! issued up to now.

use super::{Identity, Reply, Request, authenticated_user, now};
use crate::accounts::store::Revocation;
use crate::problem::{Code, Problem};

pub async fn handle(id: &Identity, req: Request<'_>) -> Result<Reply, Problem> {
    let all = match req.query {
        None | Some("") => false,
        Some("scope=all") => true,
        Some(_) => {
            return Err(
                Problem::new(Code::BadRequest).detail("The only query accepted is scope=all")
            );
        }
    };
    let (who, user) = authenticated_user(id, &req)?;
    let leeway = i64::try_from(id.auth.keys.leeway_secs).unwrap_or(0);
    let now = i64::try_from(now()).unwrap_or(i64::MAX);
    let revocation = if all {
        let ttl = i64::try_from(id.issuer.ttl_secs()).unwrap_or(0);
        // Every token issued up to and including this second.
        Revocation::AllOfUser {
            user_id: user,
            issued_before: now + 1,
            expires_at: now + 1 + ttl + leeway,
        }
    } else {
        let Some(jti) = who.jti else {
            return Err(Problem::new(Code::InvalidToken).token_presented(true));
        };
        Revocation::Token {
            jti: jti.to_string(),
            expires_at: i64::try_from(who.exp)
                .unwrap_or(i64::MAX)
                .saturating_add(leeway),
        }
    };
    id.store.revoke(user, &revocation).await?;
    id.auth.revocations.apply(std::slice::from_ref(&revocation));
    Ok(Reply {
        status: 204,
        body: None,
        set_cookie: Some(id.clear_cookie()),
    })
}
