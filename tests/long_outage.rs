//! Memory through a long outage: the booking service's
//! policy (`examples/policies/booking.toml`) with a 5-day `[[maintenance]]`
//! window, then a 3-day outage of the back end, with steady arrivals all
//! along (20 a second in the busy hours before and after, 1 in the window,
//! 2 in the outage), through `BrownoutLayer::from_policy` over the
//! simulated back end, in paused virtual time (`Clock::tokio_at` maps the
//! wall-clock window onto it).
//!
//! Memory is measured as live heap bytes, by a global allocator that counts
//! every allocation and deallocation of this test binary (one test, so no
//! other test allocates meanwhile), at the end of each phase once every
//! request has ended. The stack's memory is bounded by its policy — the
//! waiting room's places (at most its capacity, 500, and far fewer at these
//! rates), the breaker's window of 10 one-second buckets, one gate per
//! route — and must not grow with the days or the requests: live bytes
//! after the window, after the outage and after an hour of recovery must
//! equal those after the first hour, within [`SLACK`] bytes. A leak of one
//! byte per request would show as over a megabyte here, one per breaker
//! probe or window bucket as tens of kilobytes.
//!
//! The figures are printed (`cargo test --test long_outage -- --nocapture`).

#![cfg(feature = "toml")]

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use brownout::clock::Clock;
use brownout::deadline::deadline_fn;
use brownout::policy::MaintenanceWindow;
use brownout::priority::{Classes, Priority, priority_fn};
use brownout::sim::{Condition, ServiceTime, SimBackend, SimHandle};
use brownout::stack::DEFAULT_ROUTE;
use brownout::{BrownoutLayer, Policy, Reason, Rejected};
use tokio::time::Instant;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};

// ------------------------------------------------------- counting allocator

/// `System`, keeping the number of bytes allocated and not yet freed, and
/// its highest value.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

fn grew(bytes: usize) {
    let bytes = isize::try_from(bytes).unwrap_or(isize::MAX);
    let live = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

fn shrank(bytes: usize) {
    let bytes = isize::try_from(bytes).unwrap_or(isize::MAX);
    LIVE.fetch_sub(bytes, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged; the counting is a side effect that does not allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is; the caller upholds `alloc`'s contract.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as above.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as above.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                shrank(layout.size() - new_size);
            }
        }
        new
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live_bytes() -> isize {
    LIVE.load(Ordering::Relaxed)
}

// ------------------------------------------------------------- the scenario

/// How far live bytes may move between checkpoints: a few allocator-sized
/// odds and ends (a timer wheel level, a hash map's growth), far below what
/// a leak per request or per breaker window would add over days.
const SLACK: isize = 16 * 1024;

/// The booking service's back-end call timeout (examples/shared/backend.rs).
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// Each request's own deadline, as the soak's clients send it.
const DEADLINE: Duration = Duration::from_secs(2);

const MESSAGE: &str = "Planned upgrade of the central booking server. Urgent files: use e-mail.";

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

/// Wall-clock time at virtual time zero: 2026-12-01 09:00 IST.
fn wall_start() -> SystemTime {
    SystemTime::from(
        "2026-12-01T09:00:00+05:30"
            .parse::<jiff::Timestamp>()
            .expect("a valid timestamp"),
    )
}

/// A request: its class (0 urgent, 1 normal, 2 bulk) and when its client
/// gives up.
#[derive(Debug, Clone, Copy)]
struct Call {
    class: u8,
    deadline: Instant,
}

/// How requests ended, counted by the clients.
#[derive(Debug, Default)]
struct Tally {
    sent: AtomicU64,
    served: AtomicU64,
    backend_error: AtomicU64,
    open: AtomicU64,
    shed: AtomicU64,
    queue_full: AtomicU64,
    queue_timeout: AtomicU64,
    maintenance: AtomicU64,
    deadline: AtomicU64,
    done: AtomicU64,
    /// Rejections without a retry hint (there should be none).
    no_hint: AtomicU64,
}

impl Tally {
    fn record(&self, answer: &Result<(), BoxError>) {
        let counter = match answer {
            Ok(()) => &self.served,
            Err(err) => match err.downcast_ref::<Rejected>().map(Rejected::reason) {
                Some(Reason::Open) => &self.open,
                Some(Reason::Shed) => &self.shed,
                Some(Reason::QueueFull) => &self.queue_full,
                Some(Reason::QueueTimeout) => &self.queue_timeout,
                Some(Reason::Maintenance) => &self.maintenance,
                Some(Reason::Deadline) => &self.deadline,
                _ => &self.backend_error,
            },
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.done.fetch_add(1, Ordering::Relaxed);
        if let Err(err) = answer {
            if err
                .downcast_ref::<Rejected>()
                .is_some_and(|rejected| rejected.retry_after().is_none())
            {
                self.no_hint.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn snapshot(&self) -> [u64; 10] {
        [
            &self.sent,
            &self.served,
            &self.backend_error,
            &self.open,
            &self.shed,
            &self.queue_full,
            &self.queue_timeout,
            &self.maintenance,
            &self.deadline,
            &self.done,
        ]
        .map(|n| n.load(Ordering::Relaxed))
    }
}

const COLUMNS: [&str; 10] = [
    "sent",
    "served",
    "backend_err",
    "open",
    "shed",
    "queue_full",
    "queue_tmo",
    "maintenance",
    "deadline",
    "answered",
];

/// One stretch of the scenario.
struct Phase {
    name: &'static str,
    length: Duration,
    /// Requests a second, evenly spaced.
    rate: u32,
    condition: Condition,
}

/// What the test saw at the end of a phase, once every request had ended.
struct Checkpoint {
    name: &'static str,
    at: Duration,
    live: isize,
    counts: [u64; 10],
    waiting: usize,
    inflight: Option<u32>,
    limit: Option<u32>,
    backend_peak: usize,
}

/// Sends `phase.rate` requests a second for `phase.length` from `start`,
/// one task each, then waits until every one has ended.
async fn run_phase<S>(svc: &S, sim: &SimHandle, tally: &Arc<Tally>, start: Instant, phase: &Phase)
where
    S: Service<Call, Response = (), Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    sim.set_condition(phase.condition)
        .expect("a valid condition");
    let every = Duration::from_secs(1) / phase.rate;
    let count = phase.length.as_secs() * u64::from(phase.rate);
    let mut next = start;
    for i in 0..count {
        tokio::time::sleep_until(next).await;
        next += every;
        // 1 urgent, 6 normal, 3 bulk in every 10.
        let class = match i % 10 {
            0 => 0,
            1..=6 => 1,
            _ => 2,
        };
        let call = Call {
            class,
            deadline: Instant::now() + DEADLINE,
        };
        tally.sent.fetch_add(1, Ordering::Relaxed);
        let svc = svc.clone();
        let tally = tally.clone();
        tokio::spawn(async move {
            let answer = svc.oneshot(call).await;
            tally.record(&answer);
        });
    }
    // Every request ends by its deadline; give them that and a margin.
    tokio::time::sleep_until(start + phase.length + DEADLINE + Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn five_days_of_maintenance_and_three_of_outage_leave_memory_where_the_first_hour_left_it() {
    // The allocator counts: a megabyte shows, and goes.
    let before = live_bytes();
    let megabyte = std::hint::black_box(vec![1u8; 1 << 20]);
    assert!(
        live_bytes() - before >= 1 << 20,
        "the counting allocator is in use"
    );
    drop(megabyte);
    assert!(
        live_bytes() - before < 1 << 20,
        "the counting allocator sees frees"
    );
    PEAK.store(live_bytes(), Ordering::Relaxed);

    let mut policy = Policy::from_path(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/policies/booking.toml"
    ))
    .expect("the booking policy loads");
    // The composed stack draws jitter from a fresh seed: none, so that two
    // runs are alike.
    policy.breaker.open_backoff.jitter = 0.0;

    // Phases, each followed by a quiet tail in which every request ends.
    let tail = DEADLINE + Duration::from_secs(5);
    let phases = [
        Phase {
            name: "first hour (up)",
            length: HOUR,
            rate: 20,
            condition: Condition::Up,
        },
        Phase {
            name: "maintenance, 5 days",
            length: 5 * DAY,
            rate: 1,
            condition: Condition::Up,
        },
        Phase {
            name: "outage: down, 2 days",
            length: 2 * DAY,
            rate: 2,
            condition: Condition::DownFast,
        },
        Phase {
            name: "outage: hanging, 1 day",
            length: DAY,
            rate: 2,
            condition: Condition::DownHang,
        },
        Phase {
            name: "recovery hour (up)",
            length: HOUR,
            rate: 20,
            condition: Condition::Up,
        },
    ];
    // The window covers the second phase exactly.
    let window_from = wall_start() + phases[0].length + tail;
    let window_until = window_from + phases[1].length + tail;
    policy
        .maintenance
        .push(MaintenanceWindow::new(window_from, window_until).with_message(MESSAGE));
    policy
        .validate()
        .expect("the policy with its window is valid");

    // The booking service's back end: about 100 calls at once, 200 ms each.
    let backend = SimBackend::builder()
        .capacity(100)
        .service_time(ServiceTime::LogNormal {
            mean: Duration::from_millis(200),
            cv: 0.5,
        })
        .seed(2026)
        .build()
        .expect("a valid back end");
    let sim = backend.handle();
    let layer = BrownoutLayer::from_policy(&policy)
        .clock(Clock::tokio_at(wall_start()))
        .priority(priority_fn(|call: &Call, classes: &Classes| {
            classes.clamp(Priority::new(call.class))
        }))
        .deadline(deadline_fn(|call: &Call| {
            Some(call.deadline.saturating_duration_since(Instant::now()))
        }));
    let view = layer.clone();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .map_response(|_| ())
        .timeout(CALL_TIMEOUT)
        .service(backend);
    let tally = Arc::new(Tally::default());

    let origin = Instant::now();
    let mut start = origin;
    let mut checkpoints = Vec::new();
    for phase in &phases {
        sim.reset_peaks();
        run_phase(&svc, &sim, &tally, start, phase).await;
        start += phase.length + tail;
        assert_eq!(
            Instant::now(),
            start,
            "{}: the phase ends on time",
            phase.name
        );
        checkpoints.push(Checkpoint {
            name: phase.name,
            at: start - origin,
            live: live_bytes(),
            counts: tally.snapshot(),
            waiting: view.waiting(DEFAULT_ROUTE),
            inflight: view.inflight(DEFAULT_ROUTE),
            limit: view.limit(DEFAULT_ROUTE),
            backend_peak: sim.stats().peak_concurrent,
        });
    }
    let peak = PEAK.load(Ordering::Relaxed);

    // The report, written only now: printing allocates (the test harness
    // captures the output).
    let mut report = String::new();
    let _ = writeln!(
        report,
        "{:<24} {:>8} {:>11} {:>8} {:>7} {:>6} | {}",
        "checkpoint",
        "day",
        "live bytes",
        "vs hour 1",
        "waiting",
        "limit",
        COLUMNS.join(" ")
    );
    let mut previous = [0; 10];
    for point in &checkpoints {
        let counts: Vec<String> = point
            .counts
            .iter()
            .zip(previous)
            .map(|(now, before)| (now - before).to_string())
            .collect();
        previous = point.counts;
        let _ = writeln!(
            report,
            "{:<24} {:>8.3} {:>11} {:>+8} {:>7} {:>6} | {}",
            point.name,
            point.at.as_secs_f64() / DAY.as_secs_f64(),
            point.live,
            point.live - checkpoints[0].live,
            point.waiting,
            point.limit.map_or("-".to_owned(), |l| l.to_string()),
            counts.join(" ")
        );
    }
    let _ = writeln!(report, "peak live bytes: {peak}");
    println!("{report}");

    // Every request ended, and the scenario did what it says.
    let [hour, window, down, hang, recovery] = &checkpoints[..] else {
        unreachable!("five phases");
    };
    for point in &checkpoints {
        let [sent, .., answered] = point.counts;
        assert_eq!(
            answered, sent,
            "{}: every request answered\n{report}",
            point.name
        );
        assert_eq!(
            point.waiting, 0,
            "{}: nobody left waiting\n{report}",
            point.name
        );
        assert_eq!(
            point.inflight,
            Some(0),
            "{}: nothing in flight\n{report}",
            point.name
        );
        assert!(
            point.backend_peak <= 100,
            "{}: the back end never held more than its capacity\n{report}",
            point.name
        );
    }
    let delta = |a: &Checkpoint, b: &Checkpoint, column: usize| b.counts[column] - a.counts[column];
    let (sent, served, backend_err, maintenance, deadline, answered) = (0, 1, 2, 7, 8, 9);
    assert!(
        hour.counts[served] * 100 >= 99 * hour.counts[sent],
        "the first hour is served\n{report}"
    );
    assert_eq!(
        delta(hour, window, maintenance),
        delta(hour, window, answered),
        "every request of the window gets the maintenance answer\n{report}"
    );
    // The refusing back end is reached only through the breaker's probes:
    // at most `half_open_probes` every open period (the policy's
    // `open_for` at least, jitter off); brownout answers the rest at once.
    let breaker = &policy.breaker;
    let secs = (down.at - window.at).as_secs();
    let probes = delta(window, down, backend_err);
    let periods = secs * 1000 / breaker.open_for.as_millis() as u64;
    assert!(
        probes > 0 && probes <= u64::from(breaker.half_open_probes) * (periods + 1),
        "{}: {probes} calls reached the back end in {secs} s\n{report}",
        down.name
    );
    assert_eq!(
        delta(window, down, served),
        0,
        "{}: nothing served\n{report}",
        down.name
    );
    // The hanging back end: every call is abandoned at its caller's 2 s
    // deadline, before `slow_call_duration` (2.5 s). A caller's deadline is
    // no evidence against the back end (a censored latency, never a
    // failure), so the breaker stays closed; each request is answered at
    // its deadline, as without brownout, and none is served.
    let (queue_timeout, open) = (6, 3);
    assert_eq!(
        delta(down, hang, deadline) + delta(down, hang, queue_timeout) + delta(down, hang, open),
        delta(down, hang, sent),
        "hanging: every request answered by its deadline\n{report}"
    );
    assert_eq!(
        delta(down, hang, served),
        0,
        "hanging: nothing served\n{report}"
    );
    assert!(
        delta(hang, recovery, served) * 100 >= 99 * delta(hang, recovery, sent),
        "the recovery hour is served\n{report}"
    );
    assert_eq!(
        tally.no_hint.load(Ordering::Relaxed),
        0,
        "every rejection carries a retry hint\n{report}"
    );

    // Memory: back where the first hour left it, days and a million
    // requests later.
    for point in &checkpoints[1..] {
        let grown = point.live - hour.live;
        assert!(
            grown.abs() <= SLACK,
            "{}: live bytes {} differ from {} after the first hour by {grown} (more than {SLACK})\n{report}",
            point.name,
            point.live,
            hour.live
        );
    }
}
