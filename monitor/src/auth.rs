//! Who is calling: a bearer token (API) or the same token in a cookie set by
//! the login form (HTML). Each request looks the token up by its hash; a
//! missing, unknown or revoked token is 401.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum_extra::extract::CookieJar;
use axum_extra::extract::cookie::{Cookie, SameSite};
use opsrun::access::Token;

use crate::AppState;
use crate::error::ApiError;

/// Name of the session cookie holding the token.
pub const COOKIE: &str = "opsrun_token";

/// How long a login lasts.
const SESSION: std::time::Duration = std::time::Duration::from_secs(8 * 3600);

/// The authenticated caller: its token's tenant, role and user.
#[derive(Debug, Clone)]
pub struct Caller(pub Token);

impl Caller {
    /// The only tenant the caller sees.
    pub fn tenant_id(&self) -> i64 {
        self.0.tenant_id
    }

    /// The user the token acts for, or 403 for a service token.
    pub fn user_id(&self) -> Result<i64, ApiError> {
        self.0.user_id.ok_or_else(|| {
            ApiError::forbidden("this token acts for no user, so it has no notifications")
        })
    }
}

/// The token text from `Authorization: Bearer …`, else from the cookie.
fn presented_token(parts: &Parts) -> Option<String> {
    let header = parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let Some((scheme, token)) = header.and_then(|h| h.split_once(' '))
        && scheme.eq_ignore_ascii_case("bearer")
    {
        return Some(token.trim().to_string());
    }
    CookieJar::from_headers(&parts.headers)
        .get(COOKIE)
        .map(|c| c.value().to_string())
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let secret = presented_token(parts).ok_or_else(ApiError::unauthorized)?;
        // Tokens have a fixed shape; anything else is not worth a query.
        if !secret.starts_with(opsrun::access::TOKEN_PREFIX) || secret.len() > 128 {
            return Err(ApiError::unauthorized());
        }
        match state.ledger.token_by_secret(&secret).await? {
            Some(token) => Ok(Caller(token)),
            None => Err(ApiError::unauthorized()),
        }
    }
}

/// The cookie a successful login sets: HttpOnly, Secure, SameSite=Strict.
pub fn session_cookie(secret: String) -> Cookie<'static> {
    Cookie::build((COOKIE, secret))
        .path("/")
        .http_only(true)
        .secure(true)
        .same_site(SameSite::Strict)
        .max_age(SESSION.try_into().expect("session length fits"))
        .build()
}

/// The cookie that ends a session.
pub fn cleared_cookie() -> Cookie<'static> {
    Cookie::build((COOKIE, "")).path("/").build()
}
