//! [`Deferral`]: every deferring route of a policy with its open store.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::policy::{DeferPolicy, DeferStoreKind, Policy};
use crate::priority::{Classes, HeaderPriority};
use crate::reject::Reason;

use super::embedded::EmbeddedStore;
use super::store::{DeferStore, StoreConfig, StoreError};

/// One deferring route: its `defer` section and its store.
#[derive(Clone)]
pub struct RouteDeferral {
    pub(crate) route: Arc<str>,
    pub(crate) policy: DeferPolicy,
    pub(crate) store: Arc<dyn DeferStore>,
    /// `when`, resolved.
    pub(crate) reasons: Vec<Reason>,
}

impl std::fmt::Debug for RouteDeferral {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteDeferral")
            .field("route", &self.route)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl RouteDeferral {
    /// The route key.
    pub fn route(&self) -> &str {
        &self.route
    }

    /// Its `defer` section.
    pub fn policy(&self) -> &DeferPolicy {
        &self.policy
    }

    /// Its store.
    pub fn store(&self) -> &Arc<dyn DeferStore> {
        &self.store
    }

    /// Whether a rejection for `reason` of a `method` request defers it.
    pub(crate) fn defers(&self, reason: Reason, method: &str) -> bool {
        self.reasons.contains(&reason) && self.policy.methods.iter().any(|m| m == method)
    }
}

/// The deferring routes of a policy, each with its store open: the source
/// of the [fallback](Self::fallback) that defers, the
/// [status layer](Self::status_layer), and the [replayer](Self::replay).
///
/// Cloning is cheap; every clone shares the stores.
#[derive(Debug, Clone)]
pub struct Deferral {
    pub(crate) routes: Arc<BTreeMap<String, RouteDeferral>>,
    pub(crate) classes: Classes,
    pub(crate) priority: HeaderPriority,
}

impl Deferral {
    /// Opens the store of every route of `policy` that has a `defer`
    /// section. An embedded store that cannot be opened (unreadable,
    /// corrupt, not a store) is an error naming its path; so is a Redis
    /// server that does not answer.
    pub async fn open(policy: &Policy) -> Result<Self, StoreError> {
        let classes = Classes::from_policy(&policy.priority);
        let mut deferral = Self::empty(policy);
        let mut paths: BTreeMap<std::path::PathBuf, &str> = BTreeMap::new();
        for (route, overrides) in &policy.routes {
            let Some(defer) = &overrides.defer else {
                continue;
            };
            if defer.store == DeferStoreKind::Embedded {
                let path = std::path::PathBuf::from(&defer.path);
                if let Some(first) = paths.insert(path.clone(), route) {
                    return Err(StoreError::Open {
                        path,
                        why: format!(
                            "routes.{first:?}.defer.path and routes.{route:?}.defer.path are the \
                             same directory: an embedded store serves one route; give each its own"
                        ),
                    });
                }
            }
            let config = StoreConfig::from_policy(defer, classes.len());
            let store: Arc<dyn DeferStore> = match defer.store {
                DeferStoreKind::Embedded => Arc::new(EmbeddedStore::open(&defer.path, config)?),
                DeferStoreKind::Redis => open_redis(defer, route, config).await?,
            };
            deferral = deferral.with_store(route, defer.clone(), store);
        }
        Ok(deferral)
    }

    /// The stores of `policy`'s deferring routes, opened now, without
    /// waiting (what [`BrownoutLayer::from_policy`](crate::BrownoutLayer::from_policy)
    /// uses): embedded stores are opened here; Redis stores connect at
    /// their first use. A store that cannot be opened is an error naming
    /// its path when `strict`; otherwise it is logged and its route does
    /// not defer.
    pub(crate) fn open_now(policy: &Policy, strict: bool) -> Result<Self, StoreError> {
        let classes = Classes::from_policy(&policy.priority);
        let mut deferral = Self::empty(policy);
        let mut paths: BTreeMap<std::path::PathBuf, &str> = BTreeMap::new();
        for (route, overrides) in &policy.routes {
            let Some(defer) = &overrides.defer else {
                continue;
            };
            let config = StoreConfig::from_policy(defer, classes.len());
            let opened: Result<Arc<dyn DeferStore>, StoreError> = match defer.store {
                DeferStoreKind::Embedded => {
                    let path = std::path::PathBuf::from(&defer.path);
                    match paths.insert(path.clone(), route) {
                        Some(first) => Err(StoreError::Open {
                            path,
                            why: format!(
                                "routes.{first:?}.defer.path and routes.{route:?}.defer.path are \
                                 the same directory: an embedded store serves one route; give \
                                 each its own"
                            ),
                        }),
                        None => EmbeddedStore::open(&defer.path, config)
                            .map(|store| Arc::new(store) as Arc<dyn DeferStore>),
                    }
                }
                DeferStoreKind::Redis => lazy_redis(defer, route, config),
            };
            match opened {
                Ok(store) => deferral = deferral.with_store(route, defer.clone(), store),
                Err(err) if strict => return Err(err),
                Err(err) => {
                    tracing::error!(route = %route, %err, "brownout: deferral store cannot be opened; this route does not defer");
                }
            }
        }
        Ok(deferral)
    }

    /// No deferring route yet, for [`with_store`](Self::with_store): the
    /// classes and priority header of `policy`.
    pub fn empty(policy: &Policy) -> Self {
        Self {
            routes: Arc::new(BTreeMap::new()),
            classes: Classes::from_policy(&policy.priority),
            priority: HeaderPriority::from_policy(&policy.priority),
        }
    }

    /// Adds (or replaces) `route`, deferring to `store` as `policy` says:
    /// for stores opened by hand (tests, a store of your own).
    pub fn with_store(
        mut self,
        route: &str,
        policy: DeferPolicy,
        store: Arc<dyn DeferStore>,
    ) -> Self {
        let reasons = Reason::ALL
            .into_iter()
            .filter(|r| policy.when.iter().any(|w| w == r.as_str()))
            .collect();
        Arc::make_mut(&mut self.routes).insert(
            route.to_owned(),
            RouteDeferral {
                route: Arc::from(route),
                policy,
                store,
                reasons,
            },
        );
        self
    }

    /// The deferring route `route`, if it is one.
    pub fn route(&self, route: &str) -> Option<&RouteDeferral> {
        self.routes.get(route)
    }

    /// Every deferring route, by key.
    pub fn routes(&self) -> impl Iterator<Item = &RouteDeferral> {
        self.routes.values()
    }

    /// The priority classes.
    pub fn classes(&self) -> &Classes {
        &self.classes
    }
}

#[cfg(feature = "defer-redis")]
async fn open_redis(
    defer: &DeferPolicy,
    route: &str,
    config: StoreConfig,
) -> Result<Arc<dyn DeferStore>, StoreError> {
    let store = super::redis::RedisStore::open(&defer.url, route, config).await?;
    Ok(Arc::new(store))
}

#[cfg(not(feature = "defer-redis"))]
async fn open_redis(
    defer: &DeferPolicy,
    route: &str,
    _: StoreConfig,
) -> Result<Arc<dyn DeferStore>, StoreError> {
    Err(StoreError::Open {
        path: defer.url.clone().into(),
        why: format!(
            "routes.{route:?}.defer.store is \"redis\", but brownout was built without the \
             `defer-redis` feature"
        ),
    })
}

#[cfg(feature = "defer-redis")]
fn lazy_redis(
    defer: &DeferPolicy,
    route: &str,
    config: StoreConfig,
) -> Result<Arc<dyn DeferStore>, StoreError> {
    Ok(Arc::new(super::redis::LazyRedisStore::new(
        &defer.url, route, config,
    )?))
}

#[cfg(not(feature = "defer-redis"))]
fn lazy_redis(
    defer: &DeferPolicy,
    route: &str,
    _: StoreConfig,
) -> Result<Arc<dyn DeferStore>, StoreError> {
    Err(StoreError::Open {
        path: defer.url.clone().into(),
        why: format!(
            "routes.{route:?}.defer.store is \"redis\", but brownout was built without the \
             `defer-redis` feature"
        ),
    })
}
