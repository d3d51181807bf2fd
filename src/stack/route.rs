//! Which route a request belongs to: each route has its own breaker, limit
//! and waiting room.

/// Names the route of a request, borrowed from it (no allocation).
pub trait RouteOf<Req> {
    /// The route of `req`; `None` puts it on the default route.
    fn route_of<'a>(&self, req: &'a Req) -> Option<&'a str>;
}

/// Every request on one route, `default`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleRoute;

impl<Req> RouteOf<Req> for SingleRoute {
    #[inline]
    fn route_of<'a>(&self, _: &'a Req) -> Option<&'a str> {
        None
    }
}

/// A route from a closure; see [`route_fn`].
#[derive(Debug, Clone, Copy)]
pub struct RouteFn<F>(F);

/// Names routes with `f(&request)`.
pub fn route_fn<F>(f: F) -> RouteFn<F> {
    RouteFn(f)
}

impl<Req, F> RouteOf<Req> for RouteFn<F>
where
    F: for<'a> Fn(&'a Req) -> Option<&'a str>,
{
    #[inline]
    fn route_of<'a>(&self, req: &'a Req) -> Option<&'a str> {
        (self.0)(req)
    }
}

#[cfg(feature = "http")]
pub use self::http_route::HttpRoute;

#[cfg(feature = "http")]
mod http_route {
    use super::RouteOf;

    /// The route of an HTTP request: axum's `MatchedPath` (the route
    /// template, such as `/bookings/{id}`) when the `axum` feature is on and
    /// the router set it, else the URI path, which for gRPC is the method
    /// (`/booking.Booking/Book`).
    ///
    /// URI paths with ids in them make a route per id: keep them bounded
    /// with axum's `MatchedPath` by adding the stack with
    /// `Router::route_layer` (which also leaves axum's own 404s, and the
    /// scanners that cause them, outside brownout), or rely on
    /// `max_routes`, past which every new path shares one overflow route.
    #[derive(Debug, Clone, Copy, Default)]
    pub struct HttpRoute;

    impl<B> RouteOf<http::Request<B>> for HttpRoute {
        #[inline]
        fn route_of<'a>(&self, req: &'a http::Request<B>) -> Option<&'a str> {
            #[cfg(feature = "axum")]
            if let Some(matched) = req.extensions().get::<axum::extract::MatchedPath>() {
                return Some(matched.as_str());
            }
            Some(req.uri().path())
        }
    }
}
