//! The Redis Streams store (feature `defer-redis`).
