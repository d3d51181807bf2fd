//! The [`CircuitBreaker`](super::CircuitBreaker)'s response future: the one
//! future all admission layers share.

pub use crate::future::ResponseFuture;
