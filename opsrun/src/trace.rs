//! Trace context: the W3C `traceparent` a run is started under, stored on
//! the run so that each attempt's span joins the caller's trace, retries and
//! reclaims included, and handed to exec jobs as `TRACEPARENT`.
//!
//! Spans go through `tracing`; a binary that configures an OpenTelemetry
//! exporter (see `opsrun_cli::traces`) turns them into OpenTelemetry spans,
//! and [`TraceContext::attach`] makes a run's span a child of the stored
//! context. One span per attempt, as peers' instrumentations have (one
//! "process" span per job): attributes say how long the claim took and
//! what the completion wrote, warnings are its events, a Rust handler's
//! own spans are its children, and an exec job continues it. Without an
//! exporter nothing here costs more than a string.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::error::{Error, Result};

/// A parsed W3C `traceparent` (https://www.w3.org/TR/trace-context/).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: [u8; 16],
    parent_id: [u8; 8],
    flags: u8,
}

impl TraceContext {
    /// Parse a `traceparent` header value. Version `00` must be exactly
    /// `00-<32 hex>-<16 hex>-<2 hex>`, lowercase, with non-zero ids; a later
    /// version may carry more after a `-`, which is dropped (the stored form
    /// is version 00). The error names the problem.
    pub fn parse(text: &str) -> Result<TraceContext> {
        let bad = |reason: &str| {
            Error::invalid(
                "traceparent",
                format!(
                    "{reason} (expected 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>, lowercase)"
                ),
            )
        };
        let text = text.trim();
        let version = text.get(..2).ok_or_else(|| bad("too short"))?;
        let version = hex_byte(version).ok_or_else(|| bad("the version is not two hex digits"))?;
        if version == 0xff {
            return Err(bad("version ff is invalid"));
        }
        let fixed = match (version, text.len()) {
            (0, 55) => text,
            (0, _) => return Err(bad("version 00 is exactly 55 characters")),
            (_, 55) => text,
            (_, n) if n > 55 && text.as_bytes()[55] == b'-' => &text[..55],
            _ => return Err(bad("malformed")),
        };
        let parts: Vec<&str> = fixed.split('-').collect();
        let [_, trace_id, parent_id, flags] = parts[..] else {
            return Err(bad("expected four fields separated by '-'"));
        };
        let trace_id: [u8; 16] = hex_bytes(trace_id)
            .ok_or_else(|| bad("the trace id is not 32 lowercase hex digits"))?;
        let parent_id: [u8; 8] = hex_bytes(parent_id)
            .ok_or_else(|| bad("the parent id is not 16 lowercase hex digits"))?;
        let flags = hex_byte(flags).ok_or_else(|| bad("the flags are not two hex digits"))?;
        if trace_id == [0; 16] {
            return Err(bad("the trace id is all zeros"));
        }
        if parent_id == [0; 8] {
            return Err(bad("the parent id is all zeros"));
        }
        Ok(TraceContext {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// The trace id, 32 lowercase hex digits.
    pub fn trace_id(&self) -> String {
        hex(&self.trace_id)
    }

    /// Make `span` (just created, not yet entered) a child of this remote
    /// context. Does nothing unless spans are exported ([`recording`]).
    pub fn attach(&self, span: &tracing::Span) {
        if !recording() {
            return;
        }
        let remote = SpanContext::new(
            TraceId::from_bytes(self.trace_id),
            SpanId::from_bytes(self.parent_id),
            TraceFlags::new(self.flags),
            true,
            TraceState::default(),
        );
        // Err only when no OpenTelemetry layer records the span: nothing to join.
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.parent_id),
            self.flags
        )
    }
}

/// Whether spans are exported (a binary installed an OpenTelemetry
/// pipeline and called [`start_recording`]).
static RECORDING: AtomicBool = AtomicBool::new(false);

/// Say that an OpenTelemetry pipeline is installed (the global tracer
/// provider and a `tracing-opentelemetry` layer): the worker then joins
/// attempts to their stored context and records their attributes.
pub fn start_recording() {
    RECORDING.store(true, Ordering::Relaxed);
}

/// See [`start_recording`].
pub fn recording() -> bool {
    RECORDING.load(Ordering::Relaxed)
}

/// Set attribute `key` on `span`'s OpenTelemetry span (an outcome, a batch
/// size). Nothing unless [`recording`].
pub fn annotate(span: &tracing::Span, key: &'static str, value: impl Into<opentelemetry::Value>) {
    if recording() {
        span.set_attribute(key, value);
    }
}

/// Mark `span`'s OpenTelemetry span failed, with a short description.
/// Nothing unless [`recording`].
pub fn fail(span: &tracing::Span, description: impl Into<String>) {
    if recording() {
        span.set_status(opentelemetry::trace::Status::error(description.into()));
    }
}

impl TraceContext {
    /// `span`'s own context, for a child process to continue
    /// (`TRACEPARENT`); `None` unless [`recording`].
    pub fn of(span: &tracing::Span) -> Option<TraceContext> {
        if !recording() {
            return None;
        }
        let context = span.context();
        let span_context = context.span().span_context().clone();
        span_context.is_valid().then(|| TraceContext {
            trace_id: span_context.trace_id().to_bytes(),
            parent_id: span_context.span_id().to_bytes(),
            flags: span_context.trace_flags().to_u8(),
        })
    }
}

impl serde::Serialize for TraceContext {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for TraceContext {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        TraceContext::parse(&text).map_err(serde::de::Error::custom)
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(2 * bytes.len());
    for b in bytes {
        text.push(DIGITS[usize::from(b >> 4)] as char);
        text.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    text
}

fn hex_byte(text: &str) -> Option<u8> {
    hex_bytes::<1>(text).map(|[b]| b)
}

/// `N` bytes from exactly `2N` lowercase hex digits.
fn hex_bytes<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digits = text.as_bytes();
    if digits.len() != 2 * N {
        return None;
    }
    let value = |d: u8| match d {
        b'0'..=b'9' => Some(d - b'0'),
        b'a'..=b'f' => Some(d - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in digits.chunks(2).enumerate() {
        out[i] = value(pair[0])? << 4 | value(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_prints_the_w3c_example() {
        let context = TraceContext::parse(GOOD).unwrap();
        assert_eq!(context.to_string(), GOOD);
        assert_eq!(context.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn a_later_version_keeps_its_first_four_fields() {
        let later = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next";
        assert_eq!(TraceContext::parse(later).unwrap().to_string(), GOOD);
    }

    #[test]
    fn rejects_what_the_spec_rejects() {
        for (bad, says) in [
            ("", "too short"),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                "trace id",
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "all zeros",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                "parent id is all zeros",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
                "55 characters",
            ),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "ff",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736x00f067aa0ba902b7-01",
                "four fields",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
                "flags",
            ),
        ] {
            let error = TraceContext::parse(bad).unwrap_err().to_string();
            assert!(
                error.contains("traceparent") && error.contains(says),
                "{bad}: {error}"
            );
        }
    }
}
