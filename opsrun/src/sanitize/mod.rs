//! Raw error text → stable code + redacted, bounded message. Everything
//! stored in `failure_summary` or shown to people passes through here. Pure:
//! no I/O.
//!
//! Redaction works by kind of secret, not by example, in this order (each
//! pass sees what the earlier ones left):
//! 1. control characters are dropped; percent-encoded text is redacted as
//!    it is, then decoded (twice, for doubly encoded text) so an encoded
//!    secret also meets the rules below as any other;
//! 2. `patterns`: armored blocks (private keys, PGP), URL userinfo however
//!    it is spelled, driver DSNs, webhook URLs, known key formats, JWTs,
//!    authorization schemes in prose;
//! 3. `keyed`: the whole value of any key that names a secret, in every
//!    syntax (JSON, query strings, headers, CLI flags, env assignments, DSN
//!    key/value), quoted, nested or not;
//! 4. `entropy`: any remaining token that looks random (private-key
//!    bodies without their armor, bare cloud keys).
//!
//! Only then is the text cut to its bound, so a cut never keeps part of a
//! secret the rules would have seen whole.

mod entropy;
mod keyed;
mod patterns;

use std::sync::LazyLock;

use regex::Regex;

pub use keyed::is_secret_name;

use crate::run::Failure;

/// Longest stored failure message, in bytes (after redaction).
pub const MAX_MESSAGE_BYTES: usize = 1000;

/// What replaces a secret.
pub const REDACTED: &str = "[REDACTED]";

static CODE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$").expect("code pattern compiles")
});

/// Whether `code` is a stable failure code such as `job.timeout`.
pub fn is_valid_code(code: &str) -> bool {
    CODE.is_match(code)
}

/// Remove secrets from `text` and bound it to [`MAX_MESSAGE_BYTES`] (its
/// beginning is kept). Control characters other than newline and tab are
/// dropped.
pub fn redact(text: &str) -> String {
    truncate(scrub(text).trim(), MAX_MESSAGE_BYTES)
}

/// Remove secrets from all of `text`, then keep its last `max` bytes (for
/// the tail of a job's stderr, where the cause usually is).
pub fn redact_tail(text: &str, max: usize) -> String {
    let clean = scrub(text);
    let clean = clean.trim();
    if clean.len() <= max {
        return clean.to_string();
    }
    let mut start = clean.len() - (max - '…'.len_utf8());
    while !clean.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &clean[start..])
}

/// Every redaction pass over the whole text, unbounded.
fn scrub(text: &str) -> String {
    static ESCAPE: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"%[0-9A-Fa-f]{2}").expect("escape pattern compiles"));
    let mut text = visible(text);
    // Encoded text is redacted as it is (an encoded value is one token
    // there, delimiters and all), then decoded, twice for doubly encoded
    // text, and redacted again: what only decoding reveals is caught too.
    for _ in 0..2 {
        if !ESCAPE.is_match(&text) {
            break;
        }
        let redacted = keyed::redact(&patterns::redact(&text));
        text = visible(&percent_encoding::percent_decode_str(&redacted).decode_utf8_lossy());
    }
    entropy::redact(&keyed::redact(&patterns::redact(&text)))
}

/// `text` without control characters other than newline and tab.
fn visible(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
        .collect()
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
        count: f.count.clamp(1, crate::run::MAX_COUNT),
        ..failure(&f.code, &f.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_tail_is_cut_after_redaction() {
        let key = "MIIEowIBAAKCAQEAwJGyLmW3nKxQ7Zt1t9dYpQ2mV8rHjK3sFbN0cXeR5uTgY6LiPo";
        let stderr = format!("starting\n{}\nfatal: bad key\n", [key; 40].join("\n"));
        let tail = redact_tail(&stderr, 200);
        assert!(tail.len() <= 200, "{tail}");
        assert!(tail.starts_with('…') && tail.ends_with("fatal: bad key"));
        assert!(!tail.contains("MIIEow") && !tail.contains("LiPo"), "{tail}");
    }

    #[test]
    fn redaction_is_stable_when_applied_twice() {
        for text in [
            "postgres://app:pw@db/app",
            "password=[REDACTED] and token: [REDACTED]",
            "Authorization: Bearer abc.def",
        ] {
            let once = redact(text);
            assert_eq!(redact(&once), once);
        }
    }
}
