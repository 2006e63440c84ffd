//! Trace context across the services. A client call carries the caller's span context in its
//! gRPC metadata (W3C `traceparent`, through the global OpenTelemetry propagator that `rlhf`
//! installs when it exports traces), and every request a server takes runs in a span (`grpc`,
//! field `rpc`) whose parent is that context: one iteration is one trace from the coordinator
//! through the rollout workers, the scorers and the learner. Without an exporter the
//! propagator is a no-op and the spans are ordinary `tracing` spans.

use opentelemetry::propagation::{Extractor, Injector};
use tonic::codegen::http;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::service::Interceptor;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// A client channel whose requests carry the current span's trace context.
pub type Traced =
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, TraceContext>;

/// Client interceptor adding the current span's trace context to each request.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceContext;

impl Interceptor for TraceContext {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let cx = tracing::Span::current().context();
        opentelemetry::global::get_text_map_propagator(|p| {
            p.inject_context(&cx, &mut MetadataInjector(req.metadata_mut()))
        });
        Ok(req)
    }
}

/// `channel` with [`TraceContext`] on every request (`XClient::new(traced(channel))`).
pub fn traced(channel: tonic::transport::Channel) -> Traced {
    tonic::service::interceptor::InterceptedService::new(channel, TraceContext)
}

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(k, v);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The span a server runs a request in (`Server::builder().trace_fn(server_span)`): named
/// `grpc`, its `rpc` field the method's path, its parent the caller's trace context.
pub fn server_span(req: &http::Request<()>) -> tracing::Span {
    let span = tracing::info_span!("grpc", rpc = %req.uri().path());
    let parent = opentelemetry::global::get_text_map_propagator(|p| {
        p.extract(&HeaderExtractor(req.headers()))
    });
    // Fails only when no OpenTelemetry layer is installed: nothing to link then.
    let _ = span.set_parent(parent);
    span
}
