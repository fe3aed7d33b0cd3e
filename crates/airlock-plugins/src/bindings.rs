//! Host bindings generated from `wit/airlock-plugin.wit`.
//!
//! The handshake record a call passes borrows its strings (`ownership: Borrowing`): the
//! canonical ABI copies every string into the guest's memory anyway, so building owned
//! copies on the host first would only add allocations.

wasmtime::component::bindgen!({
    world: "handshake-plugin",
    path: "../../wit",
    ownership: Borrowing { duplicate_if_necessary: true },
});
