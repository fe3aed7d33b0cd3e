//! OpenTelemetry traces: ids and the W3C headers that carry them ([`context`]), spans
//! written as OTLP as they finish ([`span`], [`otlp`]), and their export over OTLP/HTTP
//! ([`export`], `client`). A [`Tracer`] is what one `[telemetry]` table becomes.
//!
//! Not here: which spans a request has and what they say. The proxy's phases build them
//! (`airlock_proxy::observe::trace`); this module only samples and ships them.

mod client;
pub mod context;
pub mod export;
pub mod otlp;
pub mod span;

use std::time::Duration;

use airlock_config::{Sampler, Telemetry, TrustTraceparent};

pub use context::{Parent, SpanId, TraceId};
pub use export::{Stats, stats};
pub use otlp::{Head, SpanWriter, Spans};
pub use span::{Clock, Kind, Value, unix_now};

/// One `[telemetry]` table at run time: the sampler, the trust and propagation settings
/// and the exporter.
#[derive(Debug)]
pub struct Tracer {
    config: Telemetry,
    exporter: export::Exporter,
    /// New traces whose id's lower half is below this are sampled; `None`: all are.
    threshold: Option<u64>,
}

impl Tracer {
    /// Start exporting to the table's collector (contacted with the first batch).
    pub fn new(config: &Telemetry) -> Result<Self, String> {
        let headers = config
            .headers
            .iter()
            .map(|(name, value)| {
                Ok((
                    http::HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| format!("telemetry header name {name:?} is not valid"))?,
                    http::HeaderValue::from_str(&value.get_ref().0)
                        .map_err(|_| format!("telemetry header `{name}` has an invalid value"))?,
                ))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let extra: Vec<(String, String)> = config
            .resource
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let exporter = export::Exporter::start(export::Settings {
            endpoint: config.otlp_endpoint.get_ref().clone(),
            headers,
            encoder: otlp::Encoder::new(&config.service_name, &extra),
            max_queue: *config.max_queue.get_ref() as usize,
            timeout: config.export_timeout.get_ref().get(),
        })?;
        let ratio = *config.sample_ratio.get_ref();
        Ok(Self {
            config: config.clone(),
            exporter,
            threshold: (ratio < 1.0).then_some((ratio * u64::MAX as f64) as u64),
        })
    }

    /// Whether this tracer was built from `config` (a reload then keeps it).
    pub fn has_config(&self, config: &Telemetry) -> bool {
        &self.config == config
    }

    /// Whether a trace is recorded: a continued trace's flag (`parent`) under
    /// `parent_based`, the ratio otherwise. Every service sampling at the same ratio
    /// keeps the same trace ids.
    pub fn sampled(&self, trace_id: TraceId, parent: Option<bool>) -> bool {
        match (self.config.sampler, parent) {
            (Sampler::ParentBased, Some(flag)) => flag,
            _ => self.threshold.is_none_or(|t| trace_id.low_u64() < t),
        }
    }

    pub fn trust(&self) -> TrustTraceparent {
        self.config.trust_traceparent
    }

    pub fn propagate(&self) -> bool {
        self.config.propagate
    }

    /// Queue finished spans for export (dropped and counted when the queue is full).
    pub fn export(&self, spans: Spans) {
        self.exporter.send(spans);
    }

    /// Export what is queued, waiting at most the configured `export_timeout`. Whether
    /// it finished in time.
    pub fn flush(&self) -> bool {
        self.exporter
            .flush(self.config.export_timeout.get_ref().get())
    }

    pub fn export_timeout(&self) -> Duration {
        self.config.export_timeout.get_ref().get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracer(extra: &str) -> Tracer {
        let text = format!("otlp_endpoint = \"http://127.0.0.1:9\"\n{extra}");
        let config: Telemetry = toml::from_str(&text).unwrap();
        Tracer::new(&config).unwrap()
    }

    fn sampled_share(tracer: &Tracer, parent: Option<bool>) -> f64 {
        let n = 20_000;
        let kept = (0..n)
            .filter(|_| tracer.sampled(TraceId::random(), parent))
            .count();
        kept as f64 / n as f64
    }

    #[test]
    fn new_traces_are_sampled_at_the_ratio() {
        assert_eq!(sampled_share(&tracer(""), None), 1.0);
        assert_eq!(sampled_share(&tracer("sample_ratio = 0.0"), None), 0.0);
        let share = sampled_share(&tracer("sample_ratio = 0.25"), None);
        assert!((0.22..0.28).contains(&share), "{share}");
    }

    #[test]
    fn parent_based_follows_the_flag_and_ratio_does_not() {
        let parent_based = tracer("sample_ratio = 0.0");
        assert_eq!(sampled_share(&parent_based, Some(true)), 1.0);
        let parent_based = tracer("sample_ratio = 1.0");
        assert_eq!(sampled_share(&parent_based, Some(false)), 0.0);
        let ratio = tracer("sample_ratio = 0.0\nsampler = \"ratio\"");
        assert_eq!(sampled_share(&ratio, Some(true)), 0.0);
    }

    #[test]
    fn the_same_trace_id_gets_the_same_decision() {
        let tracer = tracer("sample_ratio = 0.5");
        for _ in 0..1000 {
            let id = TraceId::random();
            assert_eq!(tracer.sampled(id, None), tracer.sampled(id, None));
        }
    }
}
