//! What airlock tells operators about the traffic it carries: the access log (one line
//! per request and per tunnel close), traces (`trace`, with `[telemetry]`) and the request id that ties a request's lines,
//! its plugins' view and its answer together.
//!
//! Not here: deciding anything. Phases fill in a [`access_log::RequestLog`] as they run;
//! this area only writes it out.

pub mod access_log;
mod request_id;
pub mod trace;

pub use request_id::RequestId;
