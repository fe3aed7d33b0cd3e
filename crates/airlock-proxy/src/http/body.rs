//! The body type for both directions: a request body streamed from the client, a
//! response body streamed from an upstream, or a small local answer.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// Something held until a body is finished or dropped: the count of a request against
/// its server (and, with limits, its slot). Boxed so that this module need not know
/// what it holds.
pub type Held = Box<dyn Send + Sync>;

pub enum ProxyBody {
    /// A body hyper is receiving: the client's request body, or an upstream's response
    /// body, with what is held until it is finished or dropped.
    Streamed {
        body: Incoming,
        _held: Option<Held>,
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

    /// A client's request body, forwarded as it arrives.
    pub fn client(body: Incoming) -> Self {
        Self::Streamed { body, _held: None }
    }

    /// This body, also holding `more` until it is finished or dropped. A local body is
    /// written at once, so what it would hold is let go now.
    pub fn hold(self, more: impl Send + Sync + 'static) -> Self {
        match self {
            Self::Streamed { body, _held } => Self::Streamed {
                body,
                _held: Some(Box::new((_held, more))),
            },
            local @ Self::Local(_) => local,
        }
    }

    /// An upstream's response body, holding `held` until it is finished or dropped.
    pub fn upstream(body: Incoming, held: impl Send + Sync + 'static) -> Self {
        Self::Streamed {
            body,
            _held: Some(Box::new(held)),
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
            Self::Streamed { body, .. } => Pin::new(body).poll_frame(cx),
            Self::Local(full) => Pin::new(full)
                .poll_frame(cx)
                .map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Streamed { body, .. } => body.is_end_stream(),
            Self::Local(full) => full.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Streamed { body, .. } => body.size_hint(),
            Self::Local(full) => full.size_hint(),
        }
    }
}
