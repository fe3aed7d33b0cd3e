//! Host bindings generated from the plugin interface, one module per version airlock
//! loads.
//!
//! Parameters borrow (`ownership: Borrowing`): the canonical ABI copies every string into
//! the guest's memory anyway, so building owned copies on the host first would only add
//! allocations.

/// `airlock:plugin@0.1.0` (`wit/v0.1.0/`): the request is passed as a record.
pub(crate) mod v0_1 {
    wasmtime::component::bindgen!({
        world: "handshake-plugin",
        path: "../../wit/v0.1.0",
        ownership: Borrowing { duplicate_if_necessary: true },
    });
}

/// `airlock:plugin@0.2.0` (`wit/v0.2.0/`): the request is a resource the plugin reads from.
pub(crate) mod v0_2 {
    wasmtime::component::bindgen!({
        world: "handshake-plugin",
        path: "../../wit/v0.2.0",
        ownership: Borrowing { duplicate_if_necessary: true },
        // A `request` method called outside the call that received the handle traps.
        imports: { "airlock:plugin/types": trappable },
    });
}

/// `airlock:plugin@0.3.0` (`wit/`): 0.2 with a limit key among the mutations.
pub(crate) mod v0_3 {
    wasmtime::component::bindgen!({
        world: "handshake-plugin",
        path: "../../wit",
        ownership: Borrowing { duplicate_if_necessary: true },
        imports: { "airlock:plugin/types": trappable },
    });
}
