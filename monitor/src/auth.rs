//! Who is calling: a bearer token (API), or a login session whose secret
//! the login form set in a cookie (HTML). The cookie never holds the token:
//! a session is stored server-side by its hash, expires, and ends at logout
//! or when its token is revoked. A missing, unknown, expired or revoked
//! credential is 401.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum_extra::extract::CookieJar;
use axum_extra::extract::cookie::{Cookie, SameSite};
use opsrun::access::Token;

use crate::AppState;
use crate::error::ApiError;

/// Name of the cookie holding the session secret.
pub const COOKIE: &str = "opsrun_session";

/// The authenticated caller: its token's tenant, role and user.
#[derive(Debug, Clone)]
pub struct Caller(pub Token);

impl Caller {
    /// The only tenant the caller sees (a tenant token has one: platform
    /// tokens are refused by the extractor).
    pub fn tenant_id(&self) -> i64 {
        self.0.tenant_id.unwrap_or_default()
    }

    /// The user the token acts for, or 403 for a service token.
    pub fn user_id(&self) -> Result<i64, ApiError> {
        self.0.user_id.ok_or_else(|| {
            ApiError::forbidden("this token acts for no user, so it has no notifications")
        })
    }
}

impl Caller {
    /// Who acts, for the audit trail: the token's user, or the token itself
    /// when it acts for no user.
    pub fn actor(&self) -> opsrun::Initiator {
        let t = &self.0;
        match (t.user_id, &t.user_name) {
            (Some(id), Some(name)) => opsrun::Initiator::user(id, name.clone()),
            _ => opsrun::Initiator {
                user_id: t.user_id,
                name: match &t.label {
                    Some(label) => format!("token {label}"),
                    None => format!("token #{}", t.id),
                },
            },
        }
    }

    /// 403 unless the caller may act on runs (an operator).
    pub fn operator(&self, what: &str) -> Result<(), ApiError> {
        if self.0.role.may_start_runs() {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "a readonly token cannot {what}"
            )))
        }
    }
}

/// Credentials have a fixed shape; anything else is not worth a query.
fn well_formed(secret: &str) -> bool {
    secret.starts_with(opsrun::access::TOKEN_PREFIX) && secret.len() <= 128
}

/// The session secret in the request's cookie, if any.
pub fn session_secret(parts_headers: &axum::http::HeaderMap) -> Option<String> {
    CookieJar::from_headers(parts_headers)
        .get(COOKIE)
        .map(|c| c.value().to_string())
        .filter(|s| well_formed(s))
}

/// A platform token's caller: queue health and aggregate counts across
/// tenants, never a run's contents.
#[derive(Debug, Clone)]
pub struct Platform(pub Token);

/// The live token of a request, whatever its role.
async fn authenticated(parts: &mut Parts, state: &AppState) -> Result<Token, ApiError> {
    let header = parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let token = match header.and_then(|h| h.split_once(' ')) {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
            let token = token.trim();
            if !well_formed(token) {
                return Err(ApiError::unauthorized());
            }
            state.ledger.token_by_secret(token).await?
        }
        _ => match session_secret(&parts.headers) {
            Some(secret) => state.ledger.token_by_session(&secret).await?,
            None => None,
        },
    };
    token.ok_or_else(ApiError::unauthorized)
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    /// 401 without a live token; 403 for a platform token, which sees no
    /// tenant's runs.
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = authenticated(parts, state).await?;
        match token.tenant_id {
            Some(_) => Ok(Caller(token)),
            None => Err(ApiError::forbidden(
                "a platform token sees queue health across tenants, never a tenant's runs",
            )),
        }
    }
}

impl FromRequestParts<AppState> for Platform {
    type Rejection = ApiError;

    /// 401 without a live token; 403 for a tenant's token.
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = authenticated(parts, state).await?;
        match token.role {
            opsrun::access::Role::Platform => Ok(Platform(token)),
            _ => Err(ApiError::forbidden(
                "queue health across tenants is for platform tokens; this token sees one tenant",
            )),
        }
    }
}

/// The cookie a successful login sets: HttpOnly, Secure, SameSite=Strict,
/// lasting as long as the session.
pub fn session_cookie(secret: String, ttl: std::time::Duration) -> Cookie<'static> {
    Cookie::build((COOKIE, secret))
        .path("/")
        .http_only(true)
        .secure(true)
        .same_site(SameSite::Strict)
        .max_age(ttl.try_into().expect("a session length fits a cookie"))
        .build()
}

/// The cookie that ends a session in the browser.
pub fn cleared_cookie() -> Cookie<'static> {
    Cookie::build((COOKIE, "")).path("/").build()
}
