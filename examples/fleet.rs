//! A fleet drill: 4 replicas in one process, each with its own brownout
//! stack, in front of one simulated back end at 27% of its capacity, then
//! down, then back. With Redis (feature `fleet`, `--redis URL`) the
//! replicas share a capacity budget and their breaker verdicts; with
//! `--no-redis` (the default without the feature) the budget is one
//! in-process budget shared by the four (a local stand-in) and each
//! replica's breaker learns alone.
//!
//! ```text
//! cargo run --example fleet -- --no-redis
//! cargo run --example fleet --features fleet -- --redis redis://127.0.0.1:6379/
//! ```
//!
//! It runs in real time (about 12 s): Redis does not run on tokio's paused
//! clock. It reports, per replica and for the fleet: goodput, rejections by
//! reason, budget admissions by class against the declared shares, the
//! time for all replicas to answer `open` after the back end dies, and the
//! calls that reached the dead back end (probes) per open period.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use brownout::budget::{Budget, BudgetLayer};
use brownout::policy::{BudgetPolicy, BudgetStore};
use brownout::priority::{Classes, Priority, priority_fn};
use brownout::sim::{Condition, ServiceTime, SimBackend};
use brownout::{BreakerPolicy, BrownoutLayer, Policy, Rejected};
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};

const REPLICAS: usize = 4;
const OPEN_FOR: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Tally {
    served: AtomicU64,
    failed: AtomicU64,
    by_reason: [AtomicU64; 8],
    admitted_by_class: [AtomicU64; 3],
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    let redis = args
        .iter()
        .position(|a| a == "--redis")
        .and_then(|i| args.get(i + 1).cloned())
        .filter(|_| !args.iter().any(|a| a == "--no-redis"));
    if redis.is_some() && !cfg!(feature = "fleet") {
        return Err("--redis needs `--features fleet`".into());
    }

    let backend = SimBackend::builder()
        .capacity(100)
        .service_time(ServiceTime::Constant(Duration::from_millis(20)))
        .seed(7)
        .build()?;
    let sim = backend.handle();
    sim.set_capacity_fraction(0.27)?;

    let policy = Policy {
        breaker: BreakerPolicy {
            open_for: OPEN_FOR,
            minimum_calls: 10,
            window: brownout::WindowPolicy::Count { size: 20 },
            half_open_probes: 3,
            ..BreakerPolicy::default()
        },
        // Nobody waits: a replica's breaker verdict shows as `open` at once.
        waiting_room: brownout::WaitingRoomPolicy {
            capacity: 0,
            ..Default::default()
        },
        budget: Some(BudgetPolicy {
            capacity: 1600,
            per: Duration::from_secs(4),
            shares: [("urgent".to_owned(), 0.3)].into(),
            store: if redis.is_some() {
                BudgetStore::Redis
            } else {
                BudgetStore::Local
            },
            url: redis.clone().unwrap_or_default(),
            key_prefix: format!("brownout:fleet-drill:{}", std::process::id()),
            shared_timeout: Duration::from_millis(50),
            replicas: REPLICAS as u32,
            ..BudgetPolicy::default()
        }),
        ..Policy::default()
    };
    policy.validate()?;
    // Local stand-in: one budget for the four. Redis: one per replica.
    let local_budget = Budget::from_policy(&policy)?.expect("a budget");
    // The budget is counted by the `BudgetLayer` above each replica's
    // stack (so that the local stand-in can be shared by the four); the
    // stack's own policy leaves it out, or each request would take two units.
    let stack_policy = Policy {
        budget: None,
        ..policy.clone()
    };

    let tallies: Vec<Arc<Tally>> = (0..REPLICAS).map(|_| Arc::default()).collect();
    let mut tasks = Vec::new();
    let start = Instant::now();
    let first_open = Arc::new(AtomicU64::new(u64::MAX));
    let all_open = Arc::new(AtomicU64::new(0));
    let open_now: Arc<[AtomicU64; REPLICAS]> = Arc::new(Default::default());
    let by_class = priority_fn(|rank: &u8, _: &Classes| Priority::new(*rank));
    for replica in 0..REPLICAS {
        let budget = match &redis {
            Some(_) => Budget::from_policy(&policy)?.expect("a budget"),
            None => local_budget.clone(),
        };
        let stack = ServiceBuilder::new()
            .layer(BudgetLayer::new(budget).priority(by_class.clone()))
            .layer(BrownoutLayer::from_policy(&stack_policy).priority(by_class.clone()))
            .service(backend.clone());
        let svc = fleet_layer(&redis, &policy, stack)?;
        let tally = tallies[replica].clone();
        let (first_open, all_open, open_now) =
            (first_open.clone(), all_open.clone(), open_now.clone());
        tasks.push(tokio::spawn(async move {
            let mut svc = svc;
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            let mut n: u64 = 0;
            while start.elapsed() < Duration::from_secs(12) {
                tick.tick().await;
                n += 1;
                let class = (n % 3) as u8; // urgent, normal, bulk in turn
                let ready = match svc.ready().await {
                    Ok(ready) => ready,
                    Err(_) => continue,
                };
                let call = ready.call(class);
                let tally = tally.clone();
                let (first_open, all_open, open_now) =
                    (first_open.clone(), all_open.clone(), open_now.clone());
                tokio::spawn(async move {
                    let answer = call.await;
                    let at = start.elapsed().as_millis() as u64;
                    match answer {
                        Ok(_) => {
                            tally.served.fetch_add(1, Ordering::Relaxed);
                            tally.admitted_by_class[usize::from(class)]
                                .fetch_add(1, Ordering::Relaxed);
                            open_now[replica].store(0, Ordering::Relaxed);
                        }
                        Err(err) => match err.downcast_ref::<Rejected>() {
                            Some(rejected) => {
                                let reason = rejected.reason();
                                let i = brownout::Reason::ALL
                                    .iter()
                                    .position(|r| *r == reason)
                                    .unwrap_or(7);
                                tally.by_reason[i].fetch_add(1, Ordering::Relaxed);
                                if reason == brownout::Reason::Open {
                                    first_open.fetch_min(at, Ordering::Relaxed);
                                    if open_now[replica].load(Ordering::Relaxed) == 0 {
                                        open_now[replica].store(at, Ordering::Relaxed);
                                    }
                                    if open_now.iter().all(|o| o.load(Ordering::Relaxed) > 0) {
                                        let _ = all_open.compare_exchange(
                                            0,
                                            at,
                                            Ordering::Relaxed,
                                            Ordering::Relaxed,
                                        );
                                    }
                                }
                            }
                            None => {
                                tally.failed.fetch_add(1, Ordering::Relaxed);
                                tally.admitted_by_class[usize::from(class)]
                                    .fetch_add(1, Ordering::Relaxed);
                            }
                        },
                    }
                });
            }
        }));
    }

    // 0-4 s: at 27% capacity. 4-9 s: down. 9-12 s: back, at 27%.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let before_down = sim.stats().started;
    sim.set_condition(Condition::DownFast)?;
    let down_at = start.elapsed();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let during_down = sim.stats().started - before_down;
    sim.set_condition(Condition::Up)?;
    for task in tasks {
        task.await?;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    println!(
        "fleet drill: {REPLICAS} replicas, {}, back end at 27% of capacity, down 4-9 s",
        if redis.is_some() {
            "budget and breaker verdicts shared through Redis"
        } else {
            "--no-redis: one in-process budget, breakers alone"
        }
    );
    println!(
        "{:>8} {:>7} {:>7} {:>6} {:>6} {:>7} {:>7} {:>11}",
        "replica", "served", "failed", "open", "shed", "budget", "other", "admitted u/n/b"
    );
    let mut totals = [0u64; 3];
    for (i, tally) in tallies.iter().enumerate() {
        let reason = |r: usize| tally.by_reason[r].load(Ordering::Relaxed);
        let classes: Vec<u64> = tally
            .admitted_by_class
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        for (t, c) in totals.iter_mut().zip(&classes) {
            *t += c;
        }
        let other: u64 = (0..8)
            .filter(|&r| ![0, 1, 6].contains(&r))
            .map(reason)
            .sum();
        println!(
            "{:>8} {:>7} {:>7} {:>6} {:>6} {:>7} {:>7} {:>4}/{}/{}",
            i,
            tally.served.load(Ordering::Relaxed),
            tally.failed.load(Ordering::Relaxed),
            reason(0),
            reason(1),
            reason(6),
            other,
            classes[0],
            classes[1],
            classes[2],
        );
    }
    let served: u64 = tallies
        .iter()
        .map(|t| t.served.load(Ordering::Relaxed))
        .sum();
    let admitted: u64 = totals.iter().sum();
    println!(
        "fleet: goodput {:.0}/s over 12 s; budget admissions by class urgent {} normal {} bulk {} ({} in all; declared 1600 per 4 s, 30% = 480 kept for urgent)",
        served as f64 / 12.0,
        totals[0],
        totals[1],
        totals[2],
        admitted,
    );
    let first = first_open.load(Ordering::Relaxed);
    let all = all_open.load(Ordering::Relaxed);
    if first != u64::MAX && all > 0 {
        println!(
            "back end died at {:.2} s; first replica open at {:.2} s, all {REPLICAS} open at {:.2} s",
            down_at.as_secs_f64(),
            first as f64 / 1000.0,
            all as f64 / 1000.0
        );
    }
    let periods = (5.0 / OPEN_FOR.as_secs_f64()).max(1.0);
    println!(
        "calls that reached the dead back end: {during_down} in 5 s ({:.1} per open period of {:?}; half_open_probes = 3)",
        during_down as f64 / periods,
        OPEN_FOR
    );
    let mut reasons = BTreeMap::new();
    for tally in &tallies {
        for (i, r) in brownout::Reason::ALL.iter().enumerate() {
            *reasons.entry(r.as_str()).or_insert(0) += tally.by_reason[i].load(Ordering::Relaxed);
        }
    }
    println!("rejections by reason: {reasons:?}");
    Ok(())
}

#[cfg(feature = "fleet")]
fn fleet_layer<S>(
    redis: &Option<String>,
    policy: &Policy,
    stack: S,
) -> Result<tower::util::BoxService<u8, S::Response, BoxError>, BoxError>
where
    S: Service<u8, Error = BoxError> + Send + 'static,
    S::Future: Send + 'static,
    S::Response: 'static,
{
    use brownout::fleet::{FleetBreakerLayer, Share};
    use tower::Layer;
    Ok(match redis {
        Some(url) => {
            let layer = FleetBreakerLayer::new(
                url,
                &format!("drill-{}", std::process::id()),
                &policy.breaker,
                Share::Follow,
                Duration::from_millis(50),
            )?;
            tower::util::BoxService::new(layer.layer(stack))
        }
        None => tower::util::BoxService::new(stack),
    })
}

#[cfg(not(feature = "fleet"))]
fn fleet_layer<S>(
    _: &Option<String>,
    _: &Policy,
    stack: S,
) -> Result<tower::util::BoxService<u8, S::Response, BoxError>, BoxError>
where
    S: Service<u8, Error = BoxError> + Send + 'static,
    S::Future: Send + 'static,
    S::Response: 'static,
{
    Ok(tower::util::BoxService::new(stack))
}
