//! Raw error text → stable code + redacted, bounded message. Everything
//! stored in `failure_summary` or shown to people passes through here. Pure:
//! no I/O, no allocation beyond the returned text.

use std::sync::LazyLock;

use regex::{Captures, Regex};

use crate::run::Failure;

/// Longest stored failure message, in bytes (after redaction).
pub const MAX_MESSAGE_BYTES: usize = 1000;

/// What replaces a secret.
pub const REDACTED: &str = "[REDACTED]";

/// Patterns applied in order; each replaces what it matches. Composed from
/// Sentry Relay's PII rules and gitleaks; the keyword rules require the
/// keyword to end the key, so `tokens_processed=12` survives.
static RULES: LazyLock<Vec<(Regex, &'static str)>> = LazyLock::new(|| {
    [
        // PEM private keys, whole block.
        (r"(?s)-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)", REDACTED),
        // Credentials in URLs: scheme://user:pass@host.
        (r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/@:]*(?::[^\s/@]*)?@", "${1}[REDACTED]@"),
        // Authorization schemes.
        (r"(?i)\b(bearer|token)\s+[A-Za-z0-9._~+/=-]{8,}", "${1} [REDACTED]"),
        (r"(?i)\b(basic)\s+[A-Za-z0-9+/]{8,}={0,2}", "${1} [REDACTED]"),
        // JSON Web Tokens.
        (r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*", REDACTED),
        // key=value / "key": "value" pairs whose key names a secret.
        (concat!(
            r#"(?i)([a-z0-9_.-]*(?:passw(?:or)?d|pwd|secret(?:[_-]?key)?|token|api[_-]?key|access[_-]?key|private[_-]?key|client[_-]?secret|authorization|credentials?|cookie|session(?:[_-]?id)?|signature)["']?\s*[:=]\s*["']?)"#,
            r#"[^"'\s,;&})]+"#), "${1}[REDACTED]"),
        // Well-known key formats: AWS, GitHub, Slack, Stripe.
        (r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b|\bgh[pousr]_[A-Za-z0-9]{36,}\b|\bxox[abprs]-[A-Za-z0-9-]{10,}|\bsk_(?:live|test)_[A-Za-z0-9]{16,}", REDACTED),
        // Long hex strings (digests, keys).
        (r"\b[0-9a-fA-F]{32,}\b", REDACTED),
    ]
    .into_iter()
    .map(|(pattern, replacement)| (Regex::new(pattern).expect("sanitize pattern compiles"), replacement))
    .collect()
});

/// Long base64-ish runs; redacted only when they mix letters and digits, so
/// long identifiers made of words survive. `/` is left out so file paths
/// (which often hold digits) are not mistaken for secrets.
static BLOB: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[A-Za-z0-9+_-]{40,}={0,2}").expect("blob pattern compiles"));

static CODE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$").expect("code pattern compiles")
});

/// Whether `code` is a stable failure code such as `job.timeout`.
pub fn is_valid_code(code: &str) -> bool {
    CODE.is_match(code)
}

/// Remove secrets from `text` and bound it to [`MAX_MESSAGE_BYTES`].
/// Control characters other than newline and tab are dropped.
pub fn redact(text: &str) -> String {
    let mut out: String = text
        .chars()
        .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
        .collect();
    for (rule, replacement) in RULES.iter() {
        if rule.is_match(&out) {
            out = rule.replace_all(&out, *replacement).into_owned();
        }
    }
    out = BLOB
        .replace_all(&out, |caps: &Captures| {
            let m = &caps[0];
            let mixed =
                m.bytes().any(|b| b.is_ascii_digit()) && m.bytes().any(|b| b.is_ascii_alphabetic());
            if mixed {
                REDACTED.to_string()
            } else {
                m.to_string()
            }
        })
        .into_owned();
    truncate(out.trim(), MAX_MESSAGE_BYTES)
}

/// Cut `text` to at most `max` bytes on a character boundary, marking the cut.
fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max - '…'.len_utf8();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// A stored failure: `code` if it is a stable dotted code (else
/// `job.failed`), the redacted message, count 1.
pub fn failure(code: &str, raw_message: &str) -> Failure {
    let code = if code.len() <= 100 && CODE.is_match(code) {
        code
    } else {
        "job.failed"
    };
    let message = redact(raw_message);
    Failure {
        code: code.to_string(),
        message: if message.is_empty() {
            code.to_string()
        } else {
            message
        },
        count: 1,
    }
}

/// Sanitize a failure someone else built (a job's own report).
pub fn sanitize_failure(f: Failure) -> Failure {
    Failure {
        count: f.count.max(1),
        ..failure(&f.code, &f.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRETS: &[(&str, &str)] = &[
        (
            "connect redis://:hunter2pw@cache:6379/0 failed",
            "hunter2pw",
        ),
        (
            "postgres://app:s3cr3t-pw@db.internal/app refused",
            "s3cr3t-pw",
        ),
        (
            "Authorization: Bearer abcdefghijklmnop.qrstuv",
            "abcdefghijklmnop",
        ),
        (
            "auth header Basic dXNlcjpwYXNzd29yZA==",
            "dXNlcjpwYXNzd29yZA",
        ),
        (
            "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            "dozjgNryP4J3",
        ),
        (r#"{"api_key":"AbC123xyz789"}"#, "AbC123xyz789"),
        ("password=Tr0ub4dor&x=1", "Tr0ub4dor"),
        ("x-api-key: k3y-v4lue-here", "k3y-v4lue-here"),
        (r#"refresh_token="rt-998877""#, "rt-998877"),
        ("client_secret = zzTopSecret", "zzTopSecret"),
        ("aws AKIAIOSFODNN7EXAMPLE here", "AKIAIOSFODNN7EXAMPLE"),
        (
            "gh ghp_abcdefghijklmnopqrstuvwxyz0123456789AB",
            "ghp_abcdefghijklmnop",
        ),
        (
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----",
            "MIIEowIBAAKCAQEA",
        ),
        (
            "digest 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "9f86d081884c7d65",
        ),
        (
            "blob QWxhZGRpbjpvcGVuIHNlc2FtZQ0K1234567890abcdefXYZ==",
            "QWxhZGRpbjpvcGVu",
        ),
    ];

    #[test]
    fn secrets_are_redacted() {
        for (text, secret) in SECRETS {
            let out = redact(text);
            assert!(!out.contains(secret), "{secret:?} survived in {out:?}");
            assert!(out.contains(REDACTED), "nothing redacted in {out:?}");
        }
    }

    #[test]
    fn ordinary_text_survives() {
        for text in [
            "run 550e8400-e29b-41d4-a716-446655440000 failed at 2026-11-22T13:49:28Z",
            "entry 1795350439883-0 on queue inventory_sync_with_a_long_descriptive_name_here",
            "queue.dispatch_failed: tokens_processed=12 items=3",
            "inventory.sync could not reach the provider (HTTP 503)",
            "/tmp/opsrun-worker-test-t5x756049814/registry-2026-11-22/broken.toml: unknown key",
        ] {
            assert_eq!(redact(text), text);
        }
    }

    #[test]
    fn messages_are_bounded_and_codes_stable() {
        let long = "é".repeat(5000);
        let f = failure("job.exit_nonzero", &long);
        assert!(f.message.len() <= MAX_MESSAGE_BYTES);
        assert!(f.message.ends_with('…'));
        assert_eq!(failure("Not A Code", "x").code, "job.failed");
        assert_eq!(failure("job.timeout", "").message, "job.timeout");
        assert_eq!(redact("a\u{0}b\u{1b}[31mc"), "ab[31mc");
    }
}
