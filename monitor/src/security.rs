//! What keeps the monitor safe on an open network, beyond tokens and
//! tenant scoping: security headers on every answer, a same-origin check on
//! every state-changing request a browser could be tricked into sending
//! (login CSRF included), a limit on login attempts, and the rule for
//! where a login may send the browser next.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::AppState;

/// What pages may load: their own stylesheet and script (the live list),
/// which may fetch only from the monitor; no framing, forms post only to
/// the monitor.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; img-src 'self'; \
     script-src 'self'; connect-src 'self'; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Headers set on every answer that does not set its own.
pub fn headers(https: bool) -> Vec<(header::HeaderName, HeaderValue)> {
    let mut headers = vec![
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        ),
        (
            header::HeaderName::from_static("cross-origin-opener-policy"),
            HeaderValue::from_static("same-origin"),
        ),
        // Pages and API answers hold a tenant's data: never cached.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
    ];
    if https {
        headers.push((
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        ));
    }
    headers
}

/// Refuse a state-changing request a browser sent from another site.
///
/// A request with a bearer token carries its credential itself and is let
/// through; any other (a form post with the session cookie, or a login) must
/// come from the monitor's own origin: its `Origin` header (else
/// `Sec-Fetch-Site`, else `Referer`) must name the host the request was sent
/// to or the configured public URL. A request with none of them does not
/// come from a browser and is let through.
pub async fn same_origin_only(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let safe = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer "));
    if safe || bearer || same_origin(request.headers(), &state.public_url) {
        return next.run(request).await;
    }
    tracing::warn!(method = %request.method(), path = %request.uri().path(), "cross-site request refused");
    (
        StatusCode::FORBIDDEN,
        "cross-site request refused: this form must be sent from the monitor's own pages",
    )
        .into_response()
}

/// Whether the browser says the request comes from this site.
fn same_origin(headers: &HeaderMap, public_url: &str) -> bool {
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let host = text(header::HOST);
    let ours = |url: &str| {
        let authority = authority(url);
        authority.is_some() && (authority == host || authority == self::authority(public_url))
    };
    if let Some(origin) = text(header::ORIGIN) {
        return ours(origin);
    }
    if let Some(site) = text(header::HeaderName::from_static("sec-fetch-site")) {
        return matches!(site, "same-origin" | "none");
    }
    match text(header::REFERER) {
        Some(referer) => ours(referer),
        None => true,
    }
}

/// `host[:port]` of an absolute `http(s)` URL; `None` for anything else
/// (`null`, a relative URL).
fn authority(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    Some(&rest[..end]).filter(|a| !a.is_empty())
}

/// Login attempts allowed per client address.
pub struct LoginLimiter {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
}

impl LoginLimiter {
    /// At most `per_minute` attempts a minute from one address (a burst of
    /// that many, then one every 60/`per_minute` seconds).
    pub fn per_minute(per_minute: NonZeroU32) -> Arc<LoginLimiter> {
        Arc::new(LoginLimiter {
            limiter: RateLimiter::keyed(Quota::per_minute(per_minute)),
        })
    }

    /// Count one attempt from `client`; `Err` holds the seconds to wait.
    pub fn attempt(&self, client: IpAddr) -> Result<(), u64> {
        // Addresses that stopped trying are forgotten, so the map stays small.
        if self.limiter.len() > 10_000 {
            self.limiter.retain_recent();
        }
        self.limiter.check_key(&client).map_err(|not_until| {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
            wait.as_secs().max(1)
        })
    }
}

/// The address a request came from, as the server loop recorded it; the
/// unspecified address when there is none (a request made in process).
pub fn client_address(extensions: &axum::http::Extensions) -> IpAddr {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip())
}

/// Where a login may send the browser next: a path on this site, without
/// control characters, whitespace or backslashes (which browsers read as
/// slashes: `/\t/evil.example` is `//evil.example`), that parses as a path.
pub fn local_path(next: Option<&str>) -> Option<&str> {
    next.filter(|n| {
        n.len() <= 2048
            && n.starts_with('/')
            && !n.starts_with("//")
            && n.bytes().all(|b| b.is_ascii_graphic() && b != b'\\')
            && n.parse::<axum::http::uri::PathAndQuery>().is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_local_paths_are_followed() {
        for good in ["/", "/tenants/1/operations?status=failed", "/a%20b"] {
            assert_eq!(local_path(Some(good)), Some(good));
        }
        for bad in [
            "//evil.example/x",
            "/\t/evil.example/x",
            "/\n/evil.example",
            "/\\evil.example",
            "/ /evil.example",
            "https://evil.example",
            "evil.example",
            "/é",
            "",
        ] {
            assert_eq!(local_path(Some(bad)), None, "{bad:?}");
        }
    }

    #[test]
    fn the_origin_must_be_the_monitor() {
        let headers = |pairs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(
                    header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            h
        };
        let public = "https://ops.example.com";
        let host = ("host", "127.0.0.1:8080");
        assert!(same_origin(
            &headers(&[host, ("origin", "http://127.0.0.1:8080")]),
            public
        ));
        assert!(same_origin(
            &headers(&[host, ("origin", "https://ops.example.com")]),
            public
        ));
        assert!(!same_origin(
            &headers(&[host, ("origin", "https://evil.example")]),
            public
        ));
        assert!(!same_origin(&headers(&[host, ("origin", "null")]), public));
        assert!(!same_origin(
            &headers(&[host, ("sec-fetch-site", "cross-site")]),
            public
        ));
        assert!(same_origin(
            &headers(&[host, ("sec-fetch-site", "same-origin")]),
            public
        ));
        assert!(!same_origin(
            &headers(&[host, ("referer", "https://evil.example/form")]),
            public
        ));
        assert!(same_origin(&headers(&[host]), public));
    }
}
