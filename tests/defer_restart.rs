//! Nothing lost, nothing done twice, across SIGKILL: a server with the
//! embedded store runs as a child process (this test binary, re-run with
//! `--ignored --exact child_server`), is killed mid-deferral and
//! mid-replay, restarted, and the tickets clients were given are compared
//! with the outcomes.
//!
//! The back end is idempotent the way the IETF draft expects one to be:
//! it keeps a journal (a file, synced per write) of the `Idempotency-Key`s
//! it has acted on, and answers a key seen before with the first answer.
//! It also logs every delivery, so the test can count the replays a crash
//! caused (at least once) against the effects (exactly once).
//!
//! Processes and sockets run in real time: waits are bounded polls.
#![cfg(all(feature = "defer", feature = "toml"))]

#[path = "support/tempdir.rs"]
mod tempdir;

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tempdir::TempDir;

/// The child's store and journals directory.
const CHILD_DIR: &str = "BROWNOUT_DEFER_CHILD_DIR";
/// "1" when the back end is up (the breaker follows the policy).
const CHILD_UP: &str = "BROWNOUT_DEFER_CHILD_UP";

/// Requests sent, each with its own key.
const REQUESTS: usize = 100;
/// Kill-and-restart cycles (each: one kill mid-deferral, one mid-replay).
const CYCLES: usize = 20;

// ------------------------------------------------------------ the child

#[test]
#[ignore = "the server of the kill-and-restart test, run by it as a child process"]
fn child_server() {
    let dir = PathBuf::from(std::env::var(CHILD_DIR).expect("run by the kill-and-restart test"));
    let up = std::env::var(CHILD_UP).is_ok_and(|v| v == "1");
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(serve(dir, up));
}

/// The idempotent back end: `effects` is the journal of keys acted on.
#[derive(Clone)]
struct Backend {
    effects: Arc<Mutex<(std::fs::File, HashMap<String, String>)>>,
    deliveries: Arc<Mutex<std::fs::File>>,
}

impl Backend {
    fn open(dir: &Path) -> Self {
        let path = dir.join("effects");
        let known = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.split_once(' '))
            .map(|(k, b)| (k.to_owned(), b.to_owned()))
            .collect();
        let append = |p: PathBuf| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .unwrap()
        };
        Backend {
            effects: Arc::new(Mutex::new((append(path), known))),
            deliveries: Arc::new(Mutex::new(append(dir.join("deliveries")))),
        }
    }

    fn handle(&self, key: &str, body: &str) -> (u16, String) {
        writeln!(self.deliveries.lock().unwrap(), "{key}").unwrap();
        let mut effects = self.effects.lock().unwrap();
        if let Some(first) = effects.1.get(key) {
            return (200, format!("created {first}"));
        }
        writeln!(effects.0, "{key} {body}").unwrap();
        effects.0.sync_data().unwrap();
        effects.1.insert(key.to_owned(), body.to_owned());
        (201, format!("created {body}"))
    }
}

async fn serve(dir: PathBuf, up: bool) {
    use axum::body::Body;
    use brownout::defer::Deferral;
    use brownout::fallback::{ProblemJson, RejectAsError};
    use brownout::{BrownoutLayer, Policy};
    use http::{Request, Response};
    use http_body_util::BodyExt;
    use tower::{Layer, ServiceBuilder};

    let policy = Policy::from_toml(&format!(
        r#"
        [breaker]
        mode = "{mode}"

        [routes."/applications".limit]
        algorithm = "fixed"
        initial = 2
        min = 1
        max = 2

        [routes."/applications".defer]
        path = {path:?}
        claim_after = "1s"
        "#,
        mode = if up { "enforce" } else { "forced_open" },
        path = dir.join("store").display().to_string(),
    ))
    .unwrap();
    let deferral = Deferral::open(&policy).await.expect("the store opens");
    let backend = Backend::open(&dir);
    let backend = tower::service_fn(move |req: Request<Body>| {
        let backend = backend.clone();
        async move {
            let key = req
                .headers()
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let body = String::from_utf8_lossy(&body).into_owned();
            // Acted on (and journaled) first, answered later: a kill in
            // between leaves a replay the back end did but the store never
            // heard the end of.
            let (status, answer) = backend.handle(&key, &body);
            tokio::time::sleep(Duration::from_millis(60)).await;
            let mut response = Response::new(Body::from(answer));
            *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
            Ok::<_, Infallible>(response)
        }
    });
    let layer = BrownoutLayer::from_policy(&policy).http();
    let app = ServiceBuilder::new()
        .layer(deferral.status_layer())
        .layer(layer.clone().fallback(deferral.fallback(ProblemJson)))
        .service(backend.clone());
    let route = deferral.route("/applications").unwrap();
    let load = brownout::defer::Load::of(&layer, "/applications");
    let _replayer = deferral.replay(route, layer.fallback(RejectAsError).layer(backend), load);
    let router = axum::Router::new().fallback_service(app);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("listening on {}", listener.local_addr().unwrap().port());
    std::io::stdout().flush().unwrap();
    axum::serve(listener, router).await.unwrap();
}

// ----------------------------------------------------------- the parent

struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(dir: &Path, up: bool) -> Server {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "child_server",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR, dir)
            .env(CHILD_UP, if up { "1" } else { "0" })
            .env("RUST_LOG", "off")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the child server");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let port = loop {
            let line = lines
                .next()
                .expect("the child says where it listens")
                .unwrap();
            // libtest may print `test child_server ... ` before it.
            if let Some((_, port)) = line.split_once("listening on ") {
                break port.trim().parse().unwrap();
            }
        };
        // Keep reading (and dropping) its output so it never blocks.
        std::thread::spawn(move || for _ in lines {});
        Server { child, port }
    }

    fn kill(self) {
        // Drop sends SIGKILL and reaps the child.
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 exchange; `None` when the connection failed (the server
/// was killed): the client got no answer.
fn exchange(port: u16, request: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    stream.write_all(request.as_bytes()).ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let status = text.get(9..12)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

fn post(port: u16, key: &str, body: &str) -> Option<(u16, serde_json::Value)> {
    let request = format!(
        "POST /applications HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\
         content-type: text/plain\r\nidempotency-key: {key}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let (status, body) = exchange(port, &request)?;
    Some((status, serde_json::from_str(&body).ok()?))
}

fn status(port: u16, ticket: &str) -> Option<serde_json::Value> {
    let request =
        format!("GET /deferred/{ticket} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    let (code, body) = exchange(port, &request)?;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).ok()
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn no_accepted_request_is_lost_or_replayed_twice_across_sigkill() {
    let dir = TempDir::new("defer-restart");
    let body = |i: usize| format!("application-{i}");
    let key = |i: usize| format!("key-{i}");
    // Tickets the clients were given, by request.
    let accepted: Arc<Mutex<BTreeMap<usize, String>>> = Arc::default();
    let mut kills_mid_deferral = 0;
    let mut kills_mid_replay = 0;
    let batch = REQUESTS / CYCLES;
    for cycle in 0..CYCLES {
        // Down: clients send this cycle's batch and resend any request of
        // earlier cycles that got no answer; killed in the middle.
        let server = Server::start(dir.path(), false);
        let port = server.port;
        let todo: Vec<usize> = (0..(cycle + 1) * batch)
            .filter(|i| !accepted.lock().unwrap().contains_key(i))
            .collect();
        let sender = {
            let accepted = accepted.clone();
            std::thread::spawn(move || {
                for i in todo {
                    match post(port, &key(i), &body(i)) {
                        Some((202, json)) => {
                            let ticket = json["ticket"].as_str().unwrap().to_owned();
                            let mut accepted = accepted.lock().unwrap();
                            if let Some(before) = accepted.insert(i, ticket.clone()) {
                                assert_eq!(before, ticket, "the same key, the same ticket");
                            }
                        }
                        Some((code, json)) => panic!("request {i}: {code} {json}"),
                        None => {} // killed: no answer, resent next time
                    }
                }
            })
        };
        let target = cycle * batch + batch / 2;
        wait_for("some deferrals", Duration::from_secs(30), || {
            accepted.lock().unwrap().len() >= target.min(REQUESTS)
        });
        server.kill();
        kills_mid_deferral += 1;
        sender.join().unwrap();

        // Up: the replayer drains; killed mid-replay after a few deliveries.
        let before = lines(&dir.path().join("deliveries")).len();
        let server = Server::start(dir.path(), true);
        wait_for("some replays", Duration::from_secs(30), || {
            lines(&dir.path().join("deliveries")).len() >= before + 2
        });
        server.kill();
        kills_mid_replay += 1;
    }

    // Down once more to send what never got an answer, then up until done.
    let server = Server::start(dir.path(), false);
    for i in 0..REQUESTS {
        let mut accepted = accepted.lock().unwrap();
        if let std::collections::btree_map::Entry::Vacant(entry) = accepted.entry(i) {
            let (code, json) = post(server.port, &key(i), &body(i)).expect("an answer");
            assert_eq!(code, 202, "{json}");
            entry.insert(json["ticket"].as_str().unwrap().to_owned());
        }
    }
    server.kill();
    let server = Server::start(dir.path(), true);
    let accepted = accepted.lock().unwrap().clone();
    assert_eq!(accepted.len(), REQUESTS);
    let mut outcomes = BTreeMap::new();
    wait_for("every ticket served", Duration::from_secs(60), || {
        for (i, ticket) in &accepted {
            if outcomes.contains_key(i) {
                continue;
            }
            let json = status(server.port, ticket).expect("an answer");
            match json["status"].as_str().unwrap() {
                "pending" => {}
                "served" => {
                    outcomes.insert(*i, json["answer"]["body"].as_str().unwrap().to_owned());
                }
                other => panic!("ticket {ticket}: {other}: {json}"),
            }
        }
        outcomes.len() == accepted.len()
    });
    // Reported once: a served ticket's answer never changes.
    for (i, ticket) in &accepted {
        let json = status(server.port, ticket).unwrap();
        assert_eq!(json["answer"]["body"].as_str().unwrap(), outcomes[i]);
        assert_eq!(
            outcomes[i],
            format!("created {}", body(*i)),
            "0 lost, its own answer"
        );
    }
    server.kill();

    // The back end acted on each request exactly once; deliveries beyond
    // that are the replays a kill interrupted, recognised by their key.
    let effects = lines(&dir.path().join("effects"));
    let mut keys: Vec<&str> = effects
        .iter()
        .map(|l| l.split_once(' ').unwrap().0)
        .collect();
    keys.sort();
    let mut expected: Vec<String> = (0..REQUESTS).map(key).collect();
    expected.sort();
    assert_eq!(keys, expected, "each request acted on exactly once");
    let deliveries = lines(&dir.path().join("deliveries")).len();
    assert!(
        deliveries > REQUESTS,
        "no kill landed between a back end's work and its answer: the crash path was not tested"
    );
    println!(
        "{CYCLES} cycles: {kills_mid_deferral} kills mid-deferral, {kills_mid_replay} mid-replay; \
         {REQUESTS} accepted, 0 lost; {deliveries} deliveries for {REQUESTS} effects \
         ({} replays repeated after a kill, each recognised by its key)",
        deliveries - REQUESTS
    );
}
