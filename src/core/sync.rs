//! The atomics and mutexes of the admission core (the breaker's state word,
//! the limiter's in-flight word, the waiting room), from `std`, or from
//! [loom](https://docs.rs/loom) when the crate is built with
//! `RUSTFLAGS="--cfg brownout_loom"` so that `tests/loom.rs` can explore
//! their interleavings. A normal build uses `std`'s types unchanged: this
//! module only renames them.

#[cfg(not(brownout_loom))]
pub(crate) use std::sync::Mutex;
#[cfg(not(brownout_loom))]
pub(crate) use std::sync::atomic::{
    AtomicBool, AtomicI64, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, fence,
};

#[cfg(brownout_loom)]
pub(crate) use loom::sync::Mutex;
#[cfg(brownout_loom)]
pub(crate) use loom::sync::atomic::{
    AtomicBool, AtomicI64, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, fence,
};
