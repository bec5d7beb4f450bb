//! SQL literals, for the calls a transaction pooler gets as one simple query.
//!
//! Behind a transaction pooler a statement with parameters costs four round
//! trips (see [`super::pooler`]); a simple query, one message with no
//! parameters, costs one, and the pooler keeps one server connection for all
//! of it. The worker's two hot calls (`opsrun_claim_queued` and
//! `opsrun_complete_runs`, migration 000024) are sent that way there, their
//! arguments written into the text by these functions. Every value goes
//! through them, so nothing a job writes (a failure's message, a count) can
//! end a literal early.
//!
//! Text is written as an escape string, `E'…'`, which reads a backslash as an
//! escape whatever `standard_conforming_strings` says: doubling every
//! backslash and every quote is then exact. A NUL cannot be sent in a query
//! (nor stored in `text`), so a value holding one is refused.

use std::fmt::{Display, Write};

/// A value a literal cannot carry.
#[derive(Debug)]
pub(super) struct Unwritable;

impl Display for Unwritable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a text value holds a NUL character, which Postgres cannot store")
    }
}

impl std::error::Error for Unwritable {}

impl From<Unwritable> for sqlx::Error {
    fn from(why: Unwritable) -> Self {
        sqlx::Error::Encode(Box::new(why))
    }
}

/// `value` as a text literal.
pub(super) fn text(value: &str) -> Result<String, Unwritable> {
    if value.contains('\0') {
        return Err(Unwritable);
    }
    let mut literal = String::with_capacity(value.len() + 3);
    literal.push_str("E'");
    for c in value.chars() {
        match c {
            '\\' => literal.push_str("\\\\"),
            '\'' => literal.push_str("''"),
            c => literal.push(c),
        }
    }
    literal.push('\'');
    Ok(literal)
}

/// Numbers as an array literal of `sql_type` (`bigint`, `int`, `smallint`).
pub(super) fn numbers<T: Display>(values: impl IntoIterator<Item = T>, sql_type: &str) -> String {
    let mut literal = String::from("'{");
    for (i, value) in values.into_iter().enumerate() {
        if i > 0 {
            literal.push(',');
        }
        let _ = write!(literal, "{value}");
    }
    let _ = write!(literal, "}}'::{sql_type}[]");
    literal
}

/// Texts as an array literal of `sql_type` (`text`, `jsonb`): one constant
/// whatever the number of elements (so `pg_stat_statements` counts every
/// call as one statement), each element double-quoted inside it with a
/// backslash before `"` and `\`, the whole then written by [`text`].
pub(super) fn texts<'a>(
    values: impl IntoIterator<Item = &'a str>,
    sql_type: &str,
) -> Result<String, Unwritable> {
    let mut array = String::from("{");
    for (i, value) in values.into_iter().enumerate() {
        if i > 0 {
            array.push(',');
        }
        array.push('"');
        for c in value.chars() {
            if c == '"' || c == '\\' {
                array.push('\\');
            }
            array.push(c);
        }
        array.push('"');
    }
    array.push('}');
    Ok(format!("{}::{sql_type}[]", text(&array)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_and_backslashes_are_doubled_inside_an_escape_string() {
        assert_eq!(text("plain").unwrap(), "E'plain'");
        assert_eq!(text("it's").unwrap(), "E'it''s'");
        assert_eq!(text(r"C:\tmp\'x").unwrap(), r"E'C:\\tmp\\''x'");
        assert_eq!(
            text("').x; DROP TABLE t; --").unwrap(),
            "E''').x; DROP TABLE t; --'"
        );
        assert_eq!(text("ünïcødé ✓").unwrap(), "E'ünïcødé ✓'");
    }

    #[test]
    fn a_nul_is_refused() {
        assert!(text("a\0b").is_err());
        assert!(texts(["ok", "a\0b"], "text").is_err());
    }

    #[test]
    fn arrays_are_typed_even_when_empty() {
        assert_eq!(numbers([1i64, -2, 3], "bigint"), "'{1,-2,3}'::bigint[]");
        assert_eq!(numbers(Vec::<i16>::new(), "smallint"), "'{}'::smallint[]");
        // Inside the array `c"\` becomes `"c\"\\"`; the escape string then
        // doubles each backslash.
        assert_eq!(
            texts(["a", "b'", r#"c"\"#, ""], "text").unwrap(),
            r#"E'{"a","b''","c\\"\\\\",""}'::text[]"#
        );
        assert_eq!(texts([], "jsonb").unwrap(), "E'{}'::jsonb[]");
    }
}
