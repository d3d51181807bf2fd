// The README's quick start: `cargo run --example quickstart [policy.toml]`,
// then `curl localhost:3000/slots`. (The README shows this file verbatim.)
use axum::Router;
use axum::routing::{get, post};
use brownout::{BrownoutLayer, Policy};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The policy file ops edit, or the defaults.
    let policy = match std::env::args_os().nth(1) {
        Some(path) => Policy::from_path(path)?,
        None => Policy::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app(&policy)).await?;
    Ok(())
}

/// Two routes behind brownout: per route a breaker, a learned limit and a
/// waiting room; rejections answered `503` with `Retry-After`.
pub fn app(policy: &Policy) -> Router {
    Router::new()
        .route("/slots", get(slots))
        .route("/bookings", post(book))
        .route_layer(BrownoutLayer::from_policy(policy).http())
}

async fn slots() -> &'static str {
    "09:00 09:15 09:30\n"
}

async fn book(name: String) -> String {
    format!("booked 09:00 for {name}\n")
}
