//! Tokens that look random: what is left of a secret no other rule named
//! (a private key's body without its armor lines, a bare cloud secret key,
//! a session id). Randomness is judged by how often consecutive letters and
//! digits change class (lower, upper, digit): about 0.6 for base64, 0.47
//! for hex, 0.4 for random lowercase-and-digits, and well under 0.3 for
//! words, paths, dates, stream ids and identifiers such as
//! `registry-2026-11-22` or `t5x756049814`.

use std::sync::LazyLock;

use regex::{Captures, Regex};

use super::REDACTED;

/// Shortest token judged, in letters and digits.
const MIN_ALPHANUMERIC: usize = 16;

/// Runs of base64, base64url and hex characters.
static TOKEN: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[A-Za-z0-9+/=_\-]{16,}").expect("token pattern compiles"));

/// A base64 run of any length, for whole lines.
static TOKEN_START: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9+/=_\-]+").expect("run pattern compiles"));

/// The dashed UUID form: an identifier, not a secret.
static UUID: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
        .expect("uuid pattern compiles")
});

/// Replace every random-looking token in `text`.
pub(super) fn redact(text: &str) -> String {
    let mut in_body = false;
    let lines: Vec<String> = text
        .split('\n')
        .map(|line| {
            let (redacted, body) = redact_line(line, in_body);
            in_body = body;
            redacted
        })
        .collect();
    lines.join("\n")
}

/// One line, redacted; and whether it was (the rest of) a key body, which
/// the next line may continue.
fn redact_line(line: &str, after_body: bool) -> (String, bool) {
    // A line that is one long base64 run is a key body or a dump, even
    // without a digit: nothing else prints lines of that shape. So is any
    // base64 line right after one (the body's short last line).
    let trimmed = line.trim();
    let one_run = !trimmed.is_empty()
        && trimmed != REDACTED
        && TOKEN_START
            .find(trimmed)
            .is_some_and(|m| m.len() == trimmed.len());
    if one_run
        && (after_body
            || (trimmed.len() >= 20 && change_rate(trimmed).is_some_and(|rate| rate >= 0.3)))
    {
        return (line.replace(trimmed, REDACTED), true);
    }
    let redacted = TOKEN
        .replace_all(line, |c: &Captures| {
            if looks_random(&c[0]) {
                REDACTED.to_string()
            } else {
                c[0].to_string()
            }
        })
        .into_owned();
    (redacted, false)
}

/// How often consecutive letters and digits of `token` change class, when
/// it has enough of them to judge and mixes two classes.
fn change_rate(token: &str) -> Option<f64> {
    let classes: Vec<Class> = token
        .chars()
        .filter_map(|c| match c {
            'a'..='z' => Some(Class::Lower),
            'A'..='Z' => Some(Class::Upper),
            '0'..='9' => Some(Class::Digit),
            _ => None,
        })
        .collect();
    if classes.len() < MIN_ALPHANUMERIC {
        return None;
    }
    let changes = classes.windows(2).filter(|w| w[0] != w[1]).count();
    Some(changes as f64 / (classes.len() - 1) as f64)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Lower,
    Upper,
    Digit,
}

/// Whether `token` reads as random rather than as words or numbers.
pub(super) fn looks_random(token: &str) -> bool {
    let token = token.trim_matches(|c| c == '=' || c == '-' || c == '/');
    if UUID.is_match(token) {
        return false;
    }
    let Some(rate) = change_rate(token) else {
        return false;
    };
    let digits = token.bytes().filter(u8::is_ascii_digit).count();
    let letters = token.bytes().filter(u8::is_ascii_alphabetic).count();
    // Letters alone are not judged: camelCase names change case as often
    // as random letters do, and a random token of 16 or more base64
    // characters holds a digit in all but a few cases in a hundred.
    digits > 0 && letters > 0 && rate >= 0.34
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_tokens_are_told_from_words_and_ids() {
        for random in [
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "MIIEowIBAAKCAQEAwJGyLmW3nKxQ7Zt1t9dYpQ2mV8rHjK3sFbN0cXeR5uTgY6LiPo",
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "k3j4h5g6f7d8s9a0q1w2",
        ] {
            assert!(looks_random(random), "{random}");
        }
        for word in [
            "550e8400-e29b-41d4-a716-446655440000",
            "inventory_sync_with_a_long_descriptive_name_here",
            "/tmp/opsrun-worker-test-t5x756049814/registry-2026-11-22/broken",
            "1795350439883-0",
            "20261122T134928Z",
            "ThisIsAVeryLongClassNameForTesting",
            "i-0abcd1234efgh5678",
            "queue.dispatch_failed",
        ] {
            assert!(!looks_random(word), "{word}");
        }
    }
}
