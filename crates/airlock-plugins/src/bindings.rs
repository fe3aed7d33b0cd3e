//! Host bindings generated from `wit/airlock-plugin.wit`.

wasmtime::component::bindgen!({
    world: "handshake-plugin",
    path: "../../wit",
});
