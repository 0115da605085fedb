//! Logging and traces: JSON lines in production, readable lines in a terminal; and, with
//! `OTEL_EXPORTER_OTLP_ENDPOINT`, every span exported over OTLP/HTTP (see `workers::trace`
//! for how one trace follows a command through the commit, the projectors and the relay).

use std::io::IsTerminal;

use anyhow::{Context, bail};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use app::settings::{LogFormat, Settings};

/// Where the log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    /// The server's log stream.
    Stdout,
    /// Commands whose own output is on stdout (JSON a script reads) log beside it.
    Stderr,
}

/// Keeps the span exporter running; dropping it sends the spans still buffered.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("exporting the last spans failed: {error}");
        }
    }
}

/// Installs the global subscriber: the log lines, and the OTLP exporter when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set. Call once, from `main`, and keep what it returns
/// until the end.
pub fn init(settings: &Settings, target: LogTarget) -> anyhow::Result<Telemetry> {
    let filter =
        EnvFilter::try_new(&settings.log_filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match settings.log_format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => match target {
            LogTarget::Stdout => !std::io::stdout().is_terminal(),
            LogTarget::Stderr => !std::io::stderr().is_terminal(),
        },
    };
    let writer = match target {
        LogTarget::Stdout => tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stdout),
        LogTarget::Stderr => tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr),
    };
    let lines = tracing_subscriber::fmt::layer().with_writer(writer);
    let lines = if json {
        lines
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed()
    } else {
        lines.boxed()
    };
    let provider = tracer_provider(settings)?;
    let spans = provider.as_ref().map(spans_layer);
    tracing_subscriber::registry()
        .with(filter)
        .with(lines)
        .with(spans)
        .init();
    Ok(Telemetry { provider })
}

/// The OTLP span exporter of `settings`, or `None` without an endpoint.
pub fn tracer_provider(settings: &Settings) -> anyhow::Result<Option<SdkTracerProvider>> {
    let Some(endpoint) = settings
        .otel_exporter_otlp_endpoint
        .as_deref()
        .map(str::trim)
        .filter(|e| !e.is_empty())
    else {
        return Ok(None);
    };
    let protocol = match settings.otel_exporter_otlp_protocol.trim() {
        "" | "http/protobuf" => Protocol::HttpBinary,
        "http/json" => Protocol::HttpJson,
        other => bail!(
            "OTEL_EXPORTER_OTLP_PROTOCOL={other:?} is not supported: use http/protobuf or http/json"
        ),
    };
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .with_endpoint(url.clone())
        .build()
        .with_context(|| format!("the OTLP exporter for {url}"))?;
    let service = match settings.otel_service_name.trim() {
        "" => "gateway".to_string(),
        name => name.to_string(),
    };
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
                .build(),
        )
        .build();
    Ok(Some(provider))
}

/// The layer that turns `tracing` spans into exported OpenTelemetry spans, and marks spans as
/// exported for the workers' per-event spans.
pub fn spans_layer<S>(provider: &SdkTracerProvider) -> impl Layer<S> + use<S>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    workers::trace::enable();
    tracing_opentelemetry::layer().with_tracer(provider.tracer("gateway"))
}
