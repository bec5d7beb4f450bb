//! Secrets recognised by their shape: armored blocks, credentials inside
//! URLs and driver DSNs, webhook URLs, the key formats of well-known
//! services, JWTs, and the token after an authorization scheme. Composed
//! from Sentry Relay's PII rules and gitleaks' rule set.

use std::sync::LazyLock;

use regex::{Captures, Regex};

use super::REDACTED;
use super::keyed::is_prose_word;

/// Shapes whose whole match is a secret.
static WHOLE: LazyLock<Vec<Regex>> = LazyLock::new(|| {
    [
        // Armored blocks: private keys of every kind, PGP key blocks; to the
        // END line, or to the end of the text when it was cut off.
        r"(?s)-----BEGIN [A-Z0-9 ]{1,60}-----.*?(?:-----END [A-Z0-9 ]{1,60}-----|\z)",
        // JSON Web Tokens (and JWS/JWE compact forms).
        r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*",
        // Cloud providers: AWS access key ids, Google API keys and OAuth tokens.
        r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b",
        r"\bAIza[0-9A-Za-z_-]{30,}",
        r"\bya29\.[0-9A-Za-z_-]{20,}",
        // Code hosts and registries: GitHub, GitLab, npm, PyPI.
        r"\bgh[pousr]_[A-Za-z0-9]{20,}",
        r"\bgithub_pat_[A-Za-z0-9_]{20,}",
        r"\bglpat-[A-Za-z0-9_-]{16,}",
        r"\bnpm_[A-Za-z0-9]{30,}",
        r"\bpypi-[A-Za-z0-9_-]{30,}",
        // Chat and payments: Slack tokens, Stripe secret, restricted and
        // webhook keys, SendGrid.
        r"\bxox[abposr]-[A-Za-z0-9-]{8,}",
        r"\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{8,}",
        r"\bwhsec_[A-Za-z0-9]{16,}",
        r"\bSG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}",
        // API keys of the `sk-…` family (OpenAI, Anthropic and many others),
        // however short.
        r"\bsk-[A-Za-z0-9_-]{6,}",
        // Vault, DigitalOcean, Shopify, age.
        r"\bhv[sbr]\.[A-Za-z0-9_-]{20,}",
        r"\bdo[por]_v1_[a-f0-9]{32,}",
        r"\bshp(?:at|ss|ca|pa)_[a-fA-F0-9]{32}",
        r"\bAGE-SECRET-KEY-1[0-9A-Z]{50,}",
        // opsrun's own API tokens.
        r"\bopsrun_[0-9a-f]{16,}",
    ]
    .into_iter()
    .map(|pattern| Regex::new(pattern).expect("secret pattern compiles"))
    .collect()
});

/// Webhook URLs: the path is the secret; the host stays readable.
static WEBHOOK: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"(?i)(https?://(?:hooks\.slack\.com/(?:services|workflows|triggers)/",
        r"|[a-z0-9.-]+/(?:[^\s/]+/)*?(?:webhooks?|webhookb2)/))",
        r#"[^\s"'<>]+"#
    ))
    .expect("webhook pattern compiles")
});

/// `scheme://userinfo@host`: with a password (`user:…@`), the password may
/// hold `@`, `/` or spaces, so the userinfo runs to the last `@` of the
/// line that a host follows; without one, the userinfo is a token itself.
static URL_USERINFO: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"(?i)\b([a-z][a-z0-9+.\-]{0,30}://)",
        r"(([^\s/?#@:]*):([^\n]{0,256})|[^\s/?#@]{1,256})",
        r"@([a-z0-9\[])",
    ))
    .expect("userinfo pattern compiles")
});

/// Driver DSNs without a scheme: `user:password@tcp(host:3306)/db`,
/// `user:password@host:5432/db`.
static BARE_USERINFO: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r#"(^|[\s"'(=,;])([A-Za-z0-9._%+-]{1,64}):([^\s@]{1,256})@"#,
        r"((?:tcp|udp|unix)\(|\[|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*(?::\d{1,5})?(?:[/\s)]|$))",
    ))
    .expect("dsn pattern compiles")
});

/// A token after an authorization scheme, in headers and in prose.
static SCHEME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"(?i)\b(bearer|basic|digest|token|apikey|api-key|ssws|negotiate|ntlm|hmac|aws4-hmac-sha256)",
        r"(\s+)([A-Za-z0-9._~+/=:,\-]+)"
    ))
    .expect("scheme pattern compiles")
});

/// Apply every shape rule to `text`.
pub(super) fn redact(text: &str) -> String {
    let mut out = text.to_string();
    for rule in WHOLE.iter() {
        if rule.is_match(&out) {
            out = rule.replace_all(&out, REDACTED).into_owned();
        }
    }
    out = WEBHOOK
        .replace_all(&out, format!("${{1}}{REDACTED}"))
        .into_owned();
    out = URL_USERINFO
        .replace_all(&out, |c: &Captures| {
            // `https://api.example.com:8443/v1 … ops@example.com`: a host
            // and its port, not a user and a password.
            let port = match (c.get(3), c.get(4)) {
                (Some(user), Some(rest)) => {
                    let digits = rest.as_str().bytes().take_while(u8::is_ascii_digit).count();
                    (user.as_str().contains('.') || user.as_str() == "localhost")
                        && (1..=5).contains(&digits)
                        && rest.as_str()[digits..].starts_with(['/', '?', '#', ' ', '\t'])
                }
                _ => false,
            };
            if port {
                c[0].to_string()
            } else {
                format!("{}{REDACTED}@{}", &c[1], &c[5])
            }
        })
        .into_owned();
    out = BARE_USERINFO
        .replace_all(&out, |c: &Captures| {
            // What the URL rule left: `scheme://[REDACTED]@host`.
            if c[3].starts_with("//") || c[3].starts_with(REDACTED) {
                c[0].to_string()
            } else {
                format!("{}{}:{REDACTED}@{}", &c[1], &c[2], &c[4])
            }
        })
        .into_owned();
    SCHEME
        .replace_all(&out, |c: &Captures| {
            let value = &c[3];
            let scheme = c[1].to_ascii_lowercase();
            // Most scheme names are also ordinary words ("basic checks",
            // "token expired"): after those, only a value that looks like a
            // credential is one.
            let unambiguous = matches!(
                scheme.as_str(),
                "bearer" | "apikey" | "api-key" | "ssws" | "aws4-hmac-sha256"
            );
            let keep = value.starts_with(REDACTED)
                || is_prose_word(value)
                || (!unambiguous && !looks_like_credential(value));
            if keep {
                c[0].to_string()
            } else {
                format!("{}{}{REDACTED}", &c[1], &c[2])
            }
        })
        .into_owned()
}

/// Holds a digit, both cases, a symbol, or is long: not a plain word.
fn looks_like_credential(value: &str) -> bool {
    let has = |f: fn(&char) -> bool| value.chars().any(|c| f(&c));
    has(char::is_ascii_digit)
        || (has(char::is_ascii_uppercase) && has(char::is_ascii_lowercase))
        || has(|c| !c.is_ascii_alphanumeric())
        || value.len() >= 20
}
