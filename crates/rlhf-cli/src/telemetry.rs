//! Logs and traces. Logs go to stderr, filtered by `RUST_LOG` (default `info`): human-readable
//! lines, or with `RLHF_LOG_FORMAT=json` one JSON object per event, for log collectors (colours
//! only on a terminal). Traces: when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, every span (the coordinator's iterations and
//! phases, each service's gRPC requests, linked across processes through the W3C trace context
//! in the gRPC metadata, `rlhf_proto::trace`) is exported over OTLP/gRPC to that collector,
//! as service `OTEL_SERVICE_NAME` (default `rlhf-<command>`). The other standard
//! `OTEL_EXPORTER_OTLP_*` variables (headers, timeout) apply.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Keeps the trace exporter running; dropping it sends the spans still buffered.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    /// The exporter's gRPC client lives on this runtime (the batch processor runs on a thread
    /// of its own).
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take()
            && let Err(e) = p.shutdown()
        {
            eprintln!("warning: sending the last traces: {e}");
        }
        if let Some(r) = self.runtime.take() {
            r.shutdown_background();
        }
    }
}

/// Whether the environment asks for traces.
fn exporting() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var(v).is_ok_and(|s| !s.trim().is_empty()))
}

/// Sets up logging and, when asked for, trace export for the command `command`.
pub fn init(command: &str) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let format = std::env::var("RLHF_LOG_FORMAT").unwrap_or_default();
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let fmt = match format.as_str() {
        "json" => fmt.json().flatten_event(true).boxed(),
        _ => fmt.boxed(),
    };
    let (otel, telemetry, failed) = if exporting() {
        match exporter(command) {
            Ok((provider, runtime)) => {
                let tracer = provider.tracer("rlhf");
                opentelemetry::global::set_text_map_propagator(
                    opentelemetry_sdk::propagation::TraceContextPropagator::new(),
                );
                let layer = tracing_opentelemetry::layer().with_tracer(tracer);
                (
                    Some(layer),
                    Telemetry {
                        provider: Some(provider),
                        runtime: Some(runtime),
                    },
                    None,
                )
            }
            Err(e) => (None, Telemetry::none(), Some(e)),
        }
    } else {
        (None, Telemetry::none(), None)
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init();
    if !matches!(format.as_str(), "" | "text" | "json") {
        tracing::warn!("RLHF_LOG_FORMAT `{format}` is not `text` or `json`: using text");
    }
    if let Some(e) = failed {
        tracing::warn!("traces are not exported: {e}");
    }
    telemetry
}

impl Telemetry {
    fn none() -> Self {
        Telemetry {
            provider: None,
            runtime: None,
        }
    }
}

fn exporter(command: &str) -> Result<(SdkTracerProvider, tokio::runtime::Runtime), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("otlp")
        .enable_all()
        .build()
        .map_err(|e| format!("starting the exporter's runtime: {e}"))?;
    let service = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| format!("rlhf-{command}"));
    let provider = runtime.block_on(async {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(|e| format!("OTLP exporter: {e}"))?;
        Ok::<_, String>(
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(
                    opentelemetry_sdk::Resource::builder()
                        .with_service_name(service)
                        .build(),
                )
                .build(),
        )
    })?;
    Ok((provider, runtime))
}
