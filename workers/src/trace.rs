//! Trace context across the gateway's hand-offs. A command's request span takes its parent
//! from the client's `traceparent`; the W3C `traceparent` of that span is stored in the
//! metadata of the events it writes; the projectors and the relay open their spans for those
//! events under it, so one trace follows a command from the HTTP request through the commit,
//! each projector and the NATS publish, across processes. Spans are exported over OTLP when
//! the process has an OpenTelemetry layer (`OTEL_EXPORTER_OTLP_ENDPOINT`); without one, this
//! module costs a flag check.

use opentelemetry::trace::{SpanContext, TraceContextExt, TraceFlags, TraceState};
use opentelemetry::{SpanId, TraceId};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Marks spans as exported: commits, the projectors and the relay then open spans for the
/// traced commands they handle. Called by the process that installs the OpenTelemetry layer.
pub fn enable() {
    eventlog::spans::export();
}

/// Whether spans are exported.
pub fn enabled() -> bool {
    eventlog::spans::exported()
}

/// The span context a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`) names.
pub fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let mut parts = value.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2
        || version == "ff"
        || trace.len() != 32
        || span.len() != 16
        || flags.len() != 2
    {
        return None;
    }
    let trace = TraceId::from_hex(trace)
        .ok()
        .filter(|t| *t != TraceId::INVALID)?;
    let span = SpanId::from_hex(span)
        .ok()
        .filter(|s| *s != SpanId::INVALID)?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(SpanContext::new(
        trace,
        span,
        TraceFlags::new(flags),
        true,
        TraceState::default(),
    ))
}

/// Makes the span named by `traceparent` the parent of `span` (before `span` is entered).
/// An unreadable `traceparent` leaves `span` a root.
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    if let Some(remote) = parse_traceparent(traceparent) {
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }
}

/// The `traceparent` of `span`, when spans are exported (otherwise a span has no trace id,
/// and looking costs every request for nothing).
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    if !enabled() {
        return None;
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            span_context.trace_id(),
            span_context.span_id(),
            span_context.trace_flags().to_u8()
        )
    })
}

/// Spans, one per distinct `traceparent` among `events`' metadata, each a child of the span it
/// names: what a projector or the relay does with a batch, in each command's trace. Empty when
/// spans are not exported.
pub fn spans_for<E: std::borrow::Borrow<eventlog::RecordedEvent>>(
    events: &[E],
    make: impl Fn() -> tracing::Span,
) -> Vec<tracing::Span> {
    if !enabled() {
        return Vec::new();
    }
    let mut seen: Vec<&str> = Vec::new();
    for event in events {
        if let Some(parent) = event.borrow().metadata["traceparent"].as_str()
            && !seen.contains(&parent)
        {
            seen.push(parent);
        }
    }
    seen.into_iter()
        .map(|parent| {
            let span = make();
            set_parent(&span, parent);
            span
        })
        .collect()
}

/// [`spans_for`] a projector's batch: `project <name>` in each traced command's trace.
pub fn project_spans(
    events: &[std::sync::Arc<eventlog::RecordedEvent>],
    projector: &str,
) -> Vec<tracing::Span> {
    spans_for(
        events,
        || tracing::info_span!("project", otel.name = %format!("project {projector}"), projector),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_are_read_strictly() {
        let good = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let context = parse_traceparent(good).unwrap();
        assert_eq!(
            context.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert!(context.is_sampled());
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319x-b7ad6b7169203331-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }
}
