//! The admission core every layer is built on: one [`gate::Gate`] per
//! route that decides, lock-free, whether a call may reach the back end,
//! and the [`permit::Permit`] an admitted call carries until its outcome is
//! known. The engines behind the gate's stages live here too: the breaker's
//! state word and window, the limiter and its algorithms, the waiting
//! room's queues, the maintenance windows, the map of per-key gates, and
//! the atomics shim that lets loom check all of it.
//!
//! Nothing here imports a layer module (`breaker`, `limit`, `waiting_room`,
//! `fallback`, `stack`): the public layers are tower-sized shells around
//! this core.

pub(crate) mod breaker;
pub(crate) mod future;
pub(crate) mod gate;
pub(crate) mod gate_map;
pub(crate) mod limit;
#[cfg(brownout_loom)]
#[doc(hidden)]
pub mod loom_model;
mod maintenance;
pub(crate) mod permit;
mod room;
mod sync;
