//! The HTTP vocabulary every other area shares, with no sockets and no pools: the body
//! type for both directions (`body`), hop-by-hop header rules and head encoding
//! (`headers`), the forwarding headers (`forwarded`), and the WebSocket handshake key
//! (`websocket_key`).
//!
//! Not here: sending anything anywhere. Plain HTTP forwarding is `crate::forward`,
//! upgrades are `crate::upgrade`.

pub mod body;
pub mod forwarded;
pub mod headers;
pub mod websocket_key;
