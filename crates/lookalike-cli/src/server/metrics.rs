//! `GET /metrics` in the Prometheus (OpenMetrics) text format, with `prometheus-client`.

use axum::http::Method;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

type HistogramFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: HistogramFamily,
    refused: Family<ReasonLabels, Counter>,
    decode_failures: Family<ReasonLabels, Counter>,
    images_in_flight: Gauge,
    searched_whole_when_busy: Counter,
    body_bytes: Gauge,
    products: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("lookalike");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route, method and status",
            requests.clone(),
        );
        let latency: HistogramFamily =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 14)));
        registry.register(
            "http_request_duration_seconds",
            "Time from request to response, by route",
            latency.clone(),
        );
        let refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "overload_refusals",
            "Requests refused with 503 before any work, by what was full",
            refused.clone(),
        );
        let decode_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "image_decode_failures",
            "Uploads that were not a usable image, by reason",
            decode_failures.clone(),
        );
        let images_in_flight = Gauge::default();
        registry.register(
            "images_in_flight",
            "Images admitted and not yet embedded (decoding, queued or in a forward pass)",
            images_in_flight.clone(),
        );
        let searched_whole_when_busy = Counter::default();
        registry.register(
            "searched_whole_when_busy",
            "Photos searched whole, without looking for the product in them, because the server was busy",
            searched_whole_when_busy.clone(),
        );
        let body_bytes = Gauge::default();
        registry.register(
            "request_body_bytes",
            "Bytes of request bodies held in memory",
            body_bytes.clone(),
        );
        let products = Gauge::default();
        registry.register("products", "Products in the catalogue", products.clone());
        Self {
            registry,
            requests,
            latency,
            refused,
            decode_failures,
            images_in_flight,
            searched_whole_when_busy,
            body_bytes,
            products,
        }
    }
}

/// The label of `method`: its name when HTTP defines it, else `other`. A client may send any
/// token as a method, and one series per invented name would grow memory and `/metrics` without
/// bound.
pub fn method_label(method: &Method) -> &'static str {
    const KNOWN: [Method; 9] = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::OPTIONS,
        Method::PATCH,
        Method::CONNECT,
        Method::TRACE,
    ];
    KNOWN
        .iter()
        .find(|known| *known == method)
        .map_or("other", |known| known.as_str())
}

impl Metrics {
    /// Counts an answer; `route` is a matched route template (or `unmatched`), never a raw path.
    pub fn observe(&self, route: &str, method: &'static str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_string(),
                method,
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels {
                route: route.to_string(),
            })
            .observe(seconds);
    }

    pub fn searched_whole_when_busy(&self) {
        self.searched_whole_when_busy.inc();
    }

    pub fn refused(&self, reason: &str) {
        self.refused
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn decode_failed(&self, reason: &str) {
        self.decode_failures
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// The text exposition, with the gauges read now.
    pub fn render(&self, images_in_flight: usize, body_bytes: usize, products: Option<usize>) -> String {
        self.images_in_flight.set(images_in_flight as i64);
        self.body_bytes.set(body_bytes as i64);
        if let Some(products) = products {
            self.products.set(products as i64);
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_routes_statuses_and_gauges() {
        let metrics = Metrics::default();
        metrics.observe("/v1/search", "POST", 200, 0.012);
        metrics.observe("/v1/search", "POST", 503, 0.0001);
        metrics.refused("images");
        metrics.decode_failed("too_large");
        let text = metrics.render(3, 4096, Some(60));
        for expected in [
            "lookalike_http_requests_total{route=\"/v1/search\",method=\"POST\",status=\"503\"} 1",
            "lookalike_http_request_duration_seconds_bucket{le=",
            "lookalike_overload_refusals_total{reason=\"images\"} 1",
            "lookalike_image_decode_failures_total{reason=\"too_large\"} 1",
            "lookalike_images_in_flight 3",
            "lookalike_request_body_bytes 4096",
            "lookalike_products 60",
        ] {
            assert!(text.contains(expected), "{expected} missing in\n{text}");
        }
    }
}
