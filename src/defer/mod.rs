//! Durable deferral (feature `defer`): requests rejected during a long
//! outage are written to a durable store, answered `202 Accepted` with a
//! ticket, and replayed, most important class first, when the back end is
//! back.
//!
//! ```text
//! request ─► BrownoutLayer (admission) ─► rejected: open / maintenance / shed
//!         ─► DeferFallback: route opts in, method replay-safe, body ≤ max_body?
//!               yes ─► store.append (durable) ─► 202 + ticket + Location
//!               no, or store full ─► the ordinary fallback (503 + Retry-After)
//! Replayer ─► store.claim ─► the same brownout-protected service as live traffic
//!               rejected ─► release, back off      answered ─► store.complete
//! GET <status_path>/{ticket} ─► StatusService ─► pending / served / failed / expired
//! ```
//!
//! A route opts in with a `[routes."…".defer]` section
//! ([`DeferPolicy`](crate::policy::DeferPolicy)).
//!
//! # Composing it
//!
//! [`BrownoutLayer::from_policy`](crate::BrownoutLayer::from_policy) opens
//! the store of every deferring route (an embedded store now, a Redis one
//! at its first use; [`try_from_policy`](crate::BrownoutLayer::try_from_policy)
//! says which cannot be opened, naming the path), and its HTTP preset
//! ([`http`](crate::BrownoutLayer::http)) defers what those routes reject.
//! Two calls remain: the status endpoint in front of the app
//! ([`Deferral::status_layer`] of [`BrownoutLayer::deferral`](crate::BrownoutLayer::deferral)),
//! and the replayers, which send the stored requests through the app
//! itself once the back end is back ([`BrownoutLayer::replay`](crate::BrownoutLayer::replay)):
//!
//! ```
//! use std::convert::Infallible;
//! use brownout::{BrownoutLayer, Policy};
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use bytes::Bytes;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! # let dir = std::env::temp_dir().join(format!("brownout-doc-{}", std::process::id()));
//! let policy = Policy::from_toml(&format!(r#"
//!     [breaker]
//!     mode = "forced_open"          # the back end is down
//!
//!     [routes."/applications".defer]
//!     path = {:?}
//! "#, dir.display().to_string()))?;
//!
//! let layer = BrownoutLayer::try_from_policy(&policy)?.http();
//! let deferral = layer.deferral().expect("a deferring route");
//! let app = ServiceBuilder::new()
//!     .layer(deferral.status_layer())
//!     .layer(layer.clone())
//!     .service_fn(|_: Request<Full<Bytes>>| async {
//!         Ok::<_, Infallible>(Response::new(Full::<Bytes>::from("created")))
//!     });
//! // Sends what was deferred through `app` once the back end is back.
//! let replayers = layer.replay::<Full<Bytes>, _, _>(app.clone());
//!
//! let request = Request::post("/applications").body(Full::from("{}"))?;
//! let response = app.oneshot(request).await?;
//! assert_eq!(response.status(), StatusCode::ACCEPTED);
//! assert!(response.headers()["location"].to_str()?.starts_with("/deferred/"));
//! for replayer in replayers {
//!     replayer.stop().await;
//! }
//! # drop(layer);
//! # let _ = std::fs::remove_dir_all(&dir);
//! # Ok(())
//! # }
//! ```
//!
//! The parts can also be put together by hand: [`Deferral::open`] opens
//! the stores, [`Deferral::fallback`] wraps any fallback, and
//! [`Deferral::replay`] takes the service to replay through (the same
//! stack with [`RejectAsError`](crate::fallback::RejectAsError)).
//!
//! # Stores
//!
//! | store | feature | durability |
//! |---|---|---|
//! | [`EmbeddedStore`] (redb) | `defer` | each append is a transaction synced to disk (`fsync`) before it returns, so before the `202` leaves |
//! | [`RedisStore`](self#stores) (Redis Streams, consumer group `brownout`) | `defer-redis` | as the server's `appendonly`/`appendfsync` say: `appendfsync always` for the embedded store's promise |
//!
//! # gRPC
//!
//! gRPC requests are not deferred: a unary gRPC call has no standard "accepted,
//! come back later" answer (a status code means the call is over), and a
//! client library would read any `OK` as the call's real response. Put a
//! deferrable HTTP endpoint in front of such work instead.
//!
//! # Metrics
//!
//! [`DEFERRED_TOTAL`], [`DEFERRED_PENDING`], [`REPLAYED_TOTAL`],
//! [`DEFERRED_EXPIRED_TOTAL`] and [`DEFERRED_AGE_SECONDS`]; [`describe`]
//! gives each its help text.

mod codec;
mod deferral;
mod embedded;
mod http;
#[cfg(feature = "defer-redis")]
mod redis;
mod replay;
mod store;

pub use self::deferral::{Deferral, RouteDeferral};
pub use self::embedded::{EmbeddedStore, FILE_NAME};
pub use self::http::{
    DeferFallback, DeferStatus, DeferStatusLayer, MAX_IDEMPOTENCY_KEY, StatusFuture,
    idempotency_key,
};
#[cfg(feature = "defer-redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "defer-redis")))]
pub use self::redis::RedisStore;
pub use self::replay::{Load, MAX_BACKOFF, MIN_BACKOFF, ReplayHandle, UPKEEP};
pub use self::store::{
    Appended, Claimed, DeferStore, Deferred, Outcome, Status, StoreConfig, StoreError, StoreFuture,
    Ticket,
};

/// The request extension the replayer puts on every replayed request: no
/// fallback defers it again (a replay the stack rejects is put back in its
/// store and tried later).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Replayed;

/// The request header that makes deferral and replay exactly-once from
/// the client's view (the IETF httpapi draft's `Idempotency-Key`).
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Counter: requests deferred, by `route` and `reason` (the rejection that
/// deferred them).
pub const DEFERRED_TOTAL: &str = "brownout_deferred_total";
/// Gauge: requests pending (waiting or being replayed), by `route` and
/// `priority` (class name).
pub const DEFERRED_PENDING: &str = "brownout_deferred_pending";
/// Counter: replays settled, by `route` and `outcome` (`served`, `failed`).
pub const REPLAYED_TOTAL: &str = "brownout_replayed_total";
/// Counter: deferred requests expired at `max_age`, by `route`.
pub const DEFERRED_EXPIRED_TOTAL: &str = "brownout_deferred_expired_total";
/// Gauge: age in seconds of the oldest waiting deferred request, by `route`
/// (0 when none waits).
pub const DEFERRED_AGE_SECONDS: &str = "brownout_deferred_age_seconds";

/// Registers the help text of the deferral metrics with the installed
/// recorder.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge};
    describe_counter!(
        DEFERRED_TOTAL,
        "Requests deferred to the durable store instead of rejected, by route and reason."
    );
    describe_gauge!(
        DEFERRED_PENDING,
        "Deferred requests waiting for (or in) their replay, by route and priority class."
    );
    describe_counter!(
        REPLAYED_TOTAL,
        "Deferred requests replayed and settled, by route and outcome (served, failed)."
    );
    describe_counter!(
        DEFERRED_EXPIRED_TOTAL,
        "Deferred requests expired at max_age without a replay, by route."
    );
    describe_gauge!(
        DEFERRED_AGE_SECONDS,
        Unit::Seconds,
        "Age of the oldest waiting deferred request, by route."
    );
}
