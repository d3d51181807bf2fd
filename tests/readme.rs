//! The policy file the README shows is a policy brownout loads, and it
//! says what the defaults are.

#[test]
fn the_readme_policy_file_loads_and_is_the_default_policy() {
    let readme = include_str!("../README.md");
    let start = readme
        .find("```toml\n")
        .expect("a TOML block in the README")
        + "```toml\n".len();
    let end = start
        + readme[start..]
            .find("```")
            .expect("the end of the TOML block");
    let policy =
        brownout::Policy::from_toml(&readme[start..end]).expect("the README's policy loads");
    assert_eq!(
        policy,
        brownout::Policy::default(),
        "the README shows the defaults"
    );
}

#[test]
fn the_operations_policy_in_the_crate_docs_loads() {
    let docs: String = include_str!("../src/lib.rs")
        .lines()
        .filter_map(|line| line.strip_prefix("//!"))
        .map(|line| line.strip_prefix(' ').unwrap_or(line))
        .collect::<Vec<_>>()
        .join("\n");
    let section = &docs[docs.find("# Operations").expect("an operations section")..];
    let start = section.find("```toml\n").expect("a TOML block") + "```toml\n".len();
    let end = start + section[start..].find("```").expect("the end of the block");
    let policy =
        brownout::Policy::from_toml(&section[start..end]).expect("the operations policy loads");
    assert_eq!(policy.maintenance.len(), 1);
    assert_eq!(policy.route("/payments").waiting_room.capacity, 0);
}

#[path = "../examples/quickstart.rs"]
#[allow(dead_code)]
mod quickstart;

/// The README's quick start is `examples/quickstart.rs`, verbatim (the
/// README's copy is also compiled, as a doc test).
#[test]
fn the_readme_quick_start_is_the_quickstart_example() {
    let readme = include_str!("../README.md");
    let example = include_str!("../examples/quickstart.rs");
    let start = readme
        .find("```rust,no_run\n// The README's quick start")
        .expect("the quick start in the README")
        + "```rust,no_run\n".len();
    let end = start + readme[start..].find("```").expect("its end");
    assert_eq!(&readme[start..end], example);
}

/// The quick start serves, and answers `503` with a problem document when
/// its breaker is forced open.
#[tokio::test(start_paused = true)]
async fn the_quick_start_serves_and_sheds() {
    use axum::body::Body;
    use http::{Request, StatusCode};
    use tower::ServiceExt;

    let get = || Request::get("/slots").body(Body::empty()).unwrap();
    let app = quickstart::app(&brownout::Policy::default());
    let response = app.oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let open = brownout::Policy::from_toml("[breaker]\nmode = \"forced_open\"").unwrap();
    let response = quickstart::app(&open).oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
}
