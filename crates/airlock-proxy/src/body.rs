//! The response body type: streamed from an upstream, or a small local answer.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::upstream::ActiveGuard;

pub enum ProxyBody {
    /// An upstream's body; the guard counts the request against its server until the
    /// body is finished or dropped.
    Upstream {
        body: Incoming,
        _guard: Option<ActiveGuard>,
    },
    Local(Full<Bytes>),
}

impl ProxyBody {
    pub fn local(text: impl Into<Bytes>) -> Self {
        Self::Local(Full::new(text.into()))
    }

    pub fn empty() -> Self {
        Self::Local(Full::new(Bytes::new()))
    }

    pub fn upstream(body: Incoming, guard: Option<ActiveGuard>) -> Self {
        Self::Upstream {
            body,
            _guard: guard,
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Upstream { body, .. } => Pin::new(body).poll_frame(cx),
            Self::Local(full) => Pin::new(full)
                .poll_frame(cx)
                .map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Upstream { body, .. } => body.is_end_stream(),
            Self::Local(full) => full.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Upstream { body, .. } => body.size_hint(),
            Self::Local(full) => full.size_hint(),
        }
    }
}
