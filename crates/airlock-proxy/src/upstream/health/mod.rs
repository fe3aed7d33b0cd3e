//! Whether a server may get new connections: passive health (failures seen by real
//! traffic, `passive.rs`), active health (probes, `active.rs` for the state and
//! `probe.rs` for the probe and its schedule), and an operator's drain (in `server.rs`).
//! None of them touches open tunnels: a server that goes down keeps the tunnels it has.

mod active;
mod passive;
pub mod probe;

pub use active::{ActiveHealth, Change};
pub use passive::PassiveHealth;
