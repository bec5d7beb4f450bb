//! Secrets named by their key: the whole value of any key whose name says it
//! holds a secret (`password`, `DB_PASS`, `AccountKey`, `x-api-key`,
//! `sig`, …), whatever the syntax around it: `key=value` (env, query
//! strings, DSN key/value), `key: value` (headers, YAML, prose), JSON and
//! escaped JSON, `key => value`, and `--key value` on a command line. A
//! value runs to its closing quote, to its matching bracket for a nested
//! object, to the end of the line for headers whose value has several
//! words (`Authorization`, `Cookie`), and otherwise to the first delimiter.

use std::sync::LazyLock;

use regex::Regex;

use super::REDACTED;

/// Name endings that always mean a secret, matched on the name with its
/// separators removed (`PGPASSWORD`, `client_secret`, `X-Api-Key`).
const STRONG_ENDINGS: &[&str] = &[
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "apikey",
    "credential",
    "credentials",
    "authorization",
    "cookie",
    "privatekey",
    "secretkey",
    "accesskey",
    "accountkey",
    "signingkey",
    "encryptionkey",
    "masterkey",
    "signature",
    "sessionid",
    "connectionstring",
];

/// Short words that mean a secret only as the name's last segment
/// (`DB_PASS` is one, `bypass` is not).
const WEAK_LAST_SEGMENTS: &[&str] = &[
    "pass", "pwd", "pw", "auth", "sig", "session", "otp", "cred", "creds", "jwt", "dsn", "psk",
];

/// Segments that make a following `key` a secret (`AccountKey`,
/// `SharedAccessKey`, `api_key`), where `sort_key` or `primary_key` is not.
const KEY_QUALIFIERS: &[&str] = &[
    "access",
    "account",
    "admin",
    "api",
    "app",
    "auth",
    "client",
    "consumer",
    "encryption",
    "hmac",
    "license",
    "master",
    "private",
    "secret",
    "service",
    "session",
    "shared",
    "signing",
    "ssh",
    "storage",
    "subscription",
    "webhook",
];

/// Headers whose value is several words (`Authorization: ApiKey x`,
/// `Cookie: a=1; b=2`): their value runs to the end of the line.
const WHOLE_LINE_NAMES: &[&str] = &["authorization", "proxyauthorization", "cookie", "setcookie"];

/// Ordinary words that follow "token:" or "Bearer" in prose, which are not
/// credentials ("creating token: failed", "missing Bearer token").
const PROSE_WORDS: &[&str] = &[
    "a",
    "absent",
    "an",
    "and",
    "are",
    "auth",
    "authentication",
    "authorization",
    "bad",
    "be",
    "been",
    "by",
    "cannot",
    "changed",
    "could",
    "created",
    "creation",
    "denied",
    "did",
    "does",
    "empty",
    "error",
    "errors",
    "expected",
    "expired",
    "failed",
    "failure",
    "false",
    "for",
    "found",
    "from",
    "given",
    "had",
    "has",
    "have",
    "header",
    "ignored",
    "in",
    "incorrect",
    "invalid",
    "is",
    "malformed",
    "mismatch",
    "missing",
    "must",
    "nil",
    "no",
    "none",
    "not",
    "null",
    "of",
    "ok",
    "on",
    "or",
    "out",
    "present",
    "provided",
    "received",
    "redacted",
    "refresh",
    "refreshed",
    "rejected",
    "required",
    "reset",
    "returned",
    "revoked",
    "scheme",
    "set",
    "should",
    "skipped",
    "supplied",
    "the",
    "timed",
    "timeout",
    "to",
    "token",
    "tokens",
    "too",
    "true",
    "unavailable",
    "undefined",
    "unknown",
    "unset",
    "used",
    "was",
    "were",
    "will",
    "with",
    "would",
    "wrong",
];

/// A name followed by `=`, `=>` or `:`, maybe inside quotes or escaped quotes.
static ASSIGNMENT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"([A-Za-z_$@][A-Za-z0-9_.\-]{0,63})(\\?["'])?[ \t]*(=>|=|:)[ \t]*"#)
        .expect("assignment pattern compiles")
});

/// A command-line flag followed by its value as the next word.
static FLAG: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?:^|\s)--?([A-Za-z][A-Za-z0-9_\-]{0,63})[ \t]+").expect("flag pattern compiles")
});

/// Whether a variable, field, header or flag name says it holds a secret.
pub fn is_secret_name(name: &str) -> bool {
    let segments = segments(name);
    let Some(last) = segments.last() else {
        return false;
    };
    let joined = segments.concat();
    STRONG_ENDINGS.iter().any(|w| joined.ends_with(w))
        || WEAK_LAST_SEGMENTS.contains(&last.as_str())
        || (last == "key"
            && (segments.len() == 1
                || KEY_QUALIFIERS.contains(&segments[segments.len() - 2].as_str())))
}

/// Whether `word` is an ordinary word that cannot be a credential.
pub(super) fn is_prose_word(word: &str) -> bool {
    word.bytes().all(|b| b.is_ascii_lowercase()) && PROSE_WORDS.contains(&word)
}

/// A name's lowercase segments, split at separators and at camelCase
/// boundaries (`SharedAccessKey` → shared, access, key).
fn segments(name: &str) -> Vec<String> {
    let mut segments = Vec::new();
    let mut current = String::new();
    let mut after_lower = false;
    for c in name.chars() {
        if !c.is_ascii_alphanumeric() {
            segments.extend((!current.is_empty()).then(|| std::mem::take(&mut current)));
            after_lower = false;
            continue;
        }
        if c.is_ascii_uppercase() && after_lower {
            segments.push(std::mem::take(&mut current));
        }
        current.push(c.to_ascii_lowercase());
        after_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
    }
    segments.extend((!current.is_empty()).then_some(current));
    segments
}

/// Redact the value of every secret-named key in `text`.
pub(super) fn redact(text: &str) -> String {
    let mut spans: Vec<(usize, usize)> = Vec::new();
    let mut pos = 0;
    while let Some(c) = ASSIGNMENT.captures_at(text, pos) {
        let whole = c.get(0).expect("match");
        pos = whole.end().max(whole.start() + 1);
        let name = &c[1];
        if !is_secret_name(name) {
            continue;
        }
        let colon = &c[3] == ":";
        let quoted_name = c.get(2).is_some();
        let whole_line = WHOLE_LINE_NAMES.contains(&segments(name).concat().as_str());
        if let Some((start, end)) = value_span(text, whole.end(), whole_line) {
            // `token: failed` in prose names no secret.
            let prose = colon && !quoted_name && is_prose_word(&text[start..end]);
            if !prose {
                spans.push((start, end));
                pos = end;
            }
        }
    }
    for c in FLAG.captures_iter(text) {
        if is_secret_name(&c[1]) {
            let end = c.get(0).expect("match").end();
            spans.extend(value_span(text, end, false));
        }
    }
    replace_spans(text, spans)
}

/// Where the value starting at `start` ends; `None` when there is none or it
/// is already redacted. The span excludes the quotes around a quoted value.
fn value_span(text: &str, start: usize, whole_line: bool) -> Option<(usize, usize)> {
    let rest = &text[start..];
    let rest_start = if rest.starts_with("=>") { 2 } else { 0 };
    let (start, rest) = (start + rest_start, &rest[rest_start..]);
    if rest.starts_with(REDACTED) {
        return None;
    }
    let line_end = rest.find('\n').unwrap_or(rest.len());
    let span = if let Some(inner) = rest.strip_prefix("\\\"") {
        let end = inner.find("\\\"").unwrap_or(line_end.saturating_sub(2));
        (2, 2 + end)
    } else if rest.starts_with(['"', '\'']) {
        let quote = rest.as_bytes()[0];
        (
            1,
            1 + closing_quote(&rest.as_bytes()[1..], quote).unwrap_or(line_end - 1),
        )
    } else if rest.starts_with(['{', '[']) {
        (0, matching_bracket(rest.as_bytes()).unwrap_or(rest.len()))
    } else if whole_line {
        (0, rest[..line_end].trim_end().len())
    } else {
        let end = rest
            .find(|c: char| {
                c.is_whitespace()
                    || matches!(
                        c,
                        '&' | ';' | ',' | '"' | '\'' | ')' | '}' | ']' | '<' | '>' | '|' | '`'
                    )
            })
            .unwrap_or(rest.len());
        (0, end)
    };
    (span.1 > span.0).then_some((start + span.0, start + span.1))
}

/// Index of the unescaped `quote` that closes a string.
fn closing_quote(bytes: &[u8], quote: u8) -> Option<usize> {
    let mut escaped = false;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' => escaped = true,
            b'\n' => return None,
            _ if b == quote => return Some(i),
            _ => {}
        }
    }
    None
}

/// Index just past the bracket closing the one `bytes` starts with,
/// skipping brackets inside strings.
fn matching_bracket(bytes: &[u8]) -> Option<usize> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
    }
    None
}

/// `text` with each span replaced by [`REDACTED`]; overlapping spans merge.
fn replace_spans(text: &str, mut spans: Vec<(usize, usize)>) -> String {
    if spans.is_empty() {
        return text.to_string();
    }
    spans.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (start, end) in spans {
        if start < at {
            // Overlaps the span just written: extend it.
            at = at.max(end);
            continue;
        }
        out.push_str(&text[at..start]);
        out.push_str(REDACTED);
        at = end;
    }
    out.push_str(&text[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names_are_recognised_by_their_words() {
        for name in [
            "password",
            "PGPASSWORD",
            "DB_PASS",
            "mysql_pwd",
            "client_secret",
            "AccountKey",
            "SharedAccessKey",
            "x-api-key",
            "apiKey",
            "sig",
            "X-Amz-Signature",
            "X-Amz-Credential",
            "refresh_token",
            "passphrase",
            "Set-Cookie",
            "key",
            "spring.datasource.password",
        ] {
            assert!(is_secret_name(name), "{name}");
        }
        for name in [
            "tokens_processed",
            "max_tokens",
            "bypass",
            "compass",
            "sort_key",
            "primary_key",
            "idempotency_key",
            "password_hint",
            "author",
            "keyboard",
            "token_count",
        ] {
            assert!(!is_secret_name(name), "{name}");
        }
    }
}
