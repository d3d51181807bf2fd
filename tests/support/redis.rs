//! A real `redis-server` for a test: started on a free loopback port in a
//! temporary directory, with every write synced (`appendfsync always`),
//! and killed when dropped. A machine without `redis-server` fails the
//! test with a message saying how to install it: never a silent pass.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct RedisServer {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl RedisServer {
    pub fn start() -> Self {
        let found = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !matches!(found, Ok(status) if status.success()) {
            panic!(
                "redis-server is not on the PATH: the Redis deferral store's tests need a real \
                 one. Install it (Debian/Ubuntu: `apt-get install redis-server`; .ci/run does)"
            );
        }
        let dir = std::env::temp_dir().join(format!(
            "brownout-redis-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("redis temp dir");
        for _ in 0..5 {
            let port = free_port();
            if let Some(child) = spawn_on(port, &dir) {
                return RedisServer { child, port, dir };
            }
        }
        panic!("redis-server did not start listening on loopback (tried 5 ports)");
    }

    /// Kills the server (as a crash would), keeping its port and files.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same port, after [`stop`](Self::stop).
    pub fn restart(&mut self) {
        self.stop();
        // The port was ours a moment ago; another process may take it, so
        // retry a few times before giving up loudly.
        for _ in 0..5 {
            if let Some(child) = spawn_on(self.port, &self.dir) {
                self.child = child;
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("redis-server did not start again on port {}", self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

/// A `redis-server` listening on `port`, or `None` if it exited first
/// (the port was taken).
fn spawn_on(port: u16, dir: &std::path::Path) -> Option<Child> {
    let mut child = Command::new("redis-server")
        .args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .arg("--dir")
        .arg(dir)
        .args(["--appendonly", "yes", "--appendfsync", "always"])
        .args(["--save", ""])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server");
    // Waiting for a process to listen: real time, bounded.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(child);
        }
        if let Ok(Some(_)) = child.try_wait() {
            return None; // the port was taken meanwhile
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
