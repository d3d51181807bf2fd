//! The declared capacity budget in one process (`store = "local"`), in
//! tokio's paused time: at most `capacity` admissions in any period, the
//! urgent reserve kept for urgent requests, calendar periods releasing
//! reserves at their end, retry hints that are right, and every request
//! counted once.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use brownout::budget::Budget;
use brownout::clock::Clock;
use brownout::policy::{BudgetPolicy, BudgetWindow};
use brownout::priority::Priority;
use brownout::{Policy, PriorityPolicy, Reason, Rejected};
use tower::{Service, ServiceExt};

#[path = "support/budget.rs"]
mod budget_support;

const URGENT: Priority = Priority::new(0);
const NORMAL: Priority = Priority::new(1);
const BULK: Priority = Priority::new(2);

fn policy(capacity: u64, per: Duration, urgent: f64) -> BudgetPolicy {
    BudgetPolicy {
        capacity,
        per,
        shares: [("urgent".to_owned(), urgent)].into(),
        ..BudgetPolicy::default()
    }
}

/// Admission times, to check every window of `per` after the fact.
fn most_in_any_window(times: &[Duration], per: Duration) -> usize {
    let mut window = VecDeque::new();
    let mut most = 0;
    for &t in times {
        window.push_back(t);
        while let Some(&first) = window.front() {
            if t - first >= per {
                window.pop_front();
            } else {
                break;
            }
        }
        most = most.max(window.len());
    }
    most
}

#[tokio::test(start_paused = true)]
async fn a_sliding_window_never_admits_more_than_capacity_and_keeps_the_urgent_reserve() {
    let per = Duration::from_secs(60);
    let budget = Budget::new(&policy(100, per, 0.3), &PriorityPolicy::default()).unwrap();
    assert_eq!(budget.pool_sizes(), &[70, 30]);
    let start = tokio::time::Instant::now();
    let (mut all, mut urgent) = (Vec::new(), Vec::new());
    let (mut offered, mut admitted, mut rejected) = (0u64, 0u64, 0u64);
    // Ten minutes; every 50 ms a normal and a bulk request, every 400 ms
    // an urgent one (150 urgent per period: more than its reserve).
    for tick in 0..12_000u64 {
        let mut classes = vec![NORMAL, BULK];
        if tick % 8 == 0 {
            classes.insert(0, URGENT);
        }
        for class in classes {
            offered += 1;
            match budget.try_admit(class).await {
                Ok(()) => {
                    admitted += 1;
                    let at = start.elapsed();
                    all.push(at);
                    if class == URGENT {
                        urgent.push(at);
                    }
                }
                Err(rejected_as) => {
                    assert_eq!(rejected_as.reason(), Reason::Budget);
                    let after = rejected_as.retry_after().expect("a retry hint");
                    assert!(after <= per + per / 60, "hint {after:?}");
                    rejected += 1;
                }
            }
        }
        tokio::time::advance(Duration::from_millis(50)).await;
    }
    assert_eq!(offered, admitted + rejected, "every request counted once");
    let most = most_in_any_window(&all, per);
    assert!(most <= 100, "{most} admissions in one period");
    // Not starved either: close to capacity over ten periods.
    assert!(admitted >= 100 * 10 - 100, "admitted {admitted}");
    // Urgent demand exceeds its reserve in every period: at least 30 of
    // every full period's admissions are urgent.
    for minute in 1..10u64 {
        let (from, to) = (per * minute as u32, per * (minute as u32 + 1));
        let n = urgent.iter().filter(|&&t| t >= from && t < to).count();
        assert!(n >= 30, "period {minute}: {n} urgent admissions");
    }
}

#[tokio::test(start_paused = true)]
async fn a_lower_class_never_takes_the_reserve_and_urgent_takes_any_unreserved_unit() {
    let budget = Budget::new(
        &policy(10, Duration::from_secs(3600), 0.3),
        &PriorityPolicy::default(),
    )
    .unwrap();
    for _ in 0..7 {
        budget.try_admit(BULK).await.unwrap();
    }
    let err = budget.try_admit(NORMAL).await.unwrap_err();
    assert_eq!(err.reason(), Reason::Budget);
    for _ in 0..3 {
        budget.try_admit(URGENT).await.unwrap();
    }
    assert!(budget.try_admit(URGENT).await.is_err());

    // Urgent first: its reserve, then unreserved units.
    let budget = Budget::new(
        &policy(10, Duration::from_secs(3600), 0.3),
        &PriorityPolicy::default(),
    )
    .unwrap();
    for _ in 0..10 {
        budget.try_admit(URGENT).await.unwrap();
    }
    assert!(budget.try_admit(URGENT).await.is_err());
    assert!(budget.try_admit(NORMAL).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn the_retry_hint_is_when_the_next_unit_frees() {
    let per = Duration::from_secs(60);
    let budget = Budget::new(&policy(2, per, 0.5), &PriorityPolicy::default()).unwrap();
    budget.try_admit(NORMAL).await.unwrap();
    tokio::time::advance(Duration::from_secs(20)).await;
    let err = budget.try_admit(NORMAL).await.unwrap_err();
    let after = err.retry_after().unwrap();
    // 40 s left of the period, plus at most one slot (1 s).
    assert!(
        after > Duration::from_secs(39) && after <= Duration::from_secs(42),
        "{after:?}"
    );
    tokio::time::advance(after - Duration::from_millis(1)).await;
    assert!(
        budget.try_admit(NORMAL).await.is_err(),
        "not before the hint"
    );
    tokio::time::advance(Duration::from_millis(1)).await;
    budget.try_admit(NORMAL).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_calendar_day_starts_full_and_releases_the_reserve_at_its_end() {
    // 2026-12-07 00:00 in Delhi (+05:30) is 2026-12-06 18:30 UTC.
    let midnight = UNIX_EPOCH + Duration::from_secs(1_796_581_800);
    let clock = Clock::tokio_at(midnight + Duration::from_secs(3600)); // 01:00 Delhi
    let day = Duration::from_secs(24 * 3600);
    let policy = BudgetPolicy {
        window: BudgetWindow::Calendar,
        tz: "+05:30".to_owned(),
        release: Some(Duration::from_secs(2 * 3600)),
        ..policy(10, day, 0.3)
    };
    let budget = Budget::with_clock(&policy, &PriorityPolicy::default(), clock.clone()).unwrap();
    for _ in 0..7 {
        budget.try_admit(NORMAL).await.unwrap();
    }
    let err = budget.try_admit(NORMAL).await.unwrap_err();
    // The reserve is released at 22:00, 21 hours from now.
    assert_eq!(err.retry_after(), Some(Duration::from_secs(21 * 3600)));
    tokio::time::advance(Duration::from_secs(21 * 3600) - Duration::from_secs(1)).await;
    assert!(budget.try_admit(NORMAL).await.is_err());
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(
        clock.system_time(),
        midnight + Duration::from_secs(22 * 3600)
    );
    budget.try_admit(URGENT).await.unwrap();
    budget.try_admit(NORMAL).await.unwrap();
    budget.try_admit(BULK).await.unwrap();
    let err = budget.try_admit(URGENT).await.unwrap_err();
    assert_eq!(
        err.retry_after(),
        Some(Duration::from_secs(2 * 3600)),
        "at midnight"
    );
    tokio::time::advance(Duration::from_secs(2 * 3600)).await;
    for _ in 0..7 {
        budget.try_admit(NORMAL).await.unwrap();
    }
    assert!(
        budget.try_admit(NORMAL).await.is_err(),
        "a new day: reserve kept again"
    );
    let _ = SystemTime::now();
}

#[tokio::test(start_paused = true)]
async fn a_calendar_day_in_a_named_zone_follows_its_clock_change() {
    // 2026-03-08 00:00 in New York (EST, -05:00) is 05:00 UTC; the clocks
    // go forward at 02:00, so the next midnight (EDT, -04:00) comes 23
    // hours later, at 04:00 UTC on the 9th. A fixed offset would put it
    // at 05:00.
    let midnight = UNIX_EPOCH + Duration::from_secs(1_772_946_000);
    let next_midnight = UNIX_EPOCH + Duration::from_secs(1_773_028_800);
    let clock = Clock::tokio_at(midnight + Duration::from_secs(3600)); // 01:00 EST
    let policy = BudgetPolicy {
        window: BudgetWindow::Calendar,
        tz: "America/New_York".to_owned(),
        release: Some(Duration::from_secs(3600)),
        shares: Default::default(),
        ..policy(3, Duration::from_secs(24 * 3600), 0.3)
    };
    policy.validate().unwrap();
    let budget = Budget::with_clock(&policy, &PriorityPolicy::default(), clock.clone()).unwrap();
    for _ in 0..3 {
        budget.try_admit(NORMAL).await.unwrap();
    }
    let err = budget.try_admit(NORMAL).await.unwrap_err();
    // 22 hours to the next local midnight, not 23.
    assert_eq!(err.retry_after(), Some(Duration::from_secs(22 * 3600)));
    tokio::time::advance(Duration::from_secs(22 * 3600) - Duration::from_secs(1)).await;
    assert!(budget.try_admit(NORMAL).await.is_err());
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(clock.system_time(), next_midnight);
    for _ in 0..3 {
        budget.try_admit(NORMAL).await.unwrap();
    }
    assert!(budget.try_admit(NORMAL).await.is_err(), "a new day of 3");
}

#[test]
fn a_zone_name_is_read_from_the_time_zone_database() {
    // (A misspelt one is an error naming budget.tz: src/policy/budget.rs.)
    let toml =
        "[budget]\ncapacity = 600\nper = \"1d\"\nwindow = \"calendar\"\ntz = \"Asia/Kolkata\"\n";
    let loaded = Policy::from_toml(toml).unwrap();
    assert_eq!(loaded.budget.unwrap().tz, "Asia/Kolkata");
}

#[tokio::test(start_paused = true)]
async fn the_layer_rejects_from_the_future_and_gives_back_what_the_inner_stack_rejects() {
    let budget = Budget::new(
        &policy(2, Duration::from_secs(3600), 0.5),
        &PriorityPolicy::default(),
    )
    .unwrap();
    // Rank 2 is rejected further in: its unit goes back.
    let mut svc = budget_support::sheds_rank_two(&budget);
    for _ in 0..5 {
        let err = svc.ready().await.unwrap().call(2).await.unwrap_err();
        assert_eq!(
            err.downcast_ref::<Rejected>().unwrap().reason(),
            Reason::Shed
        );
    }
    assert_eq!(svc.ready().await.unwrap().call(1).await.unwrap(), "served");
    // poll_ready is ready even with the budget spent; the future rejects.
    let fut = svc.ready().await.unwrap().call(1);
    let err = fut.await.unwrap_err();
    let rejected = err.downcast_ref::<Rejected>().unwrap();
    assert_eq!(rejected.reason(), Reason::Budget);
    assert!(rejected.retry_after().is_some());
    assert_eq!(svc.ready().await.unwrap().call(0).await.unwrap(), "served");
}

#[test]
fn the_policy_names_unknown_classes_and_fields() {
    let err = Policy::from_toml(
        r#"
        [budget]
        capacity = 600
        per = "1d"
        shares = { tatkal = 0.3 }
        "#,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"budget.shares.tatkal: "tatkal" is not one of priority.classes ["urgent", "normal", "bulk"]"#
    );
    let err = Policy::from_toml("[budget]\ncapacty = 600\n").unwrap_err();
    assert!(err.to_string().contains("capacty"), "{err}");
    let policy = Policy::from_toml(
        r#"
        [budget]
        capacity = 600
        per = "1d"
        window = "calendar"
        tz = "+05:30"
        shares = { urgent = 0.3 }
        store = "redis"
        url = "redis://127.0.0.1:6379"
        shared_timeout = "5ms"
        "#,
    )
    .unwrap();
    let budget = policy.budget.as_ref().unwrap();
    assert_eq!(budget.capacity, 600);
    assert_eq!(budget.per, Duration::from_secs(86_400));
    assert_eq!(Policy::default().budget, None);
    let written = toml::to_string(&policy).unwrap();
    assert_eq!(Policy::from_toml(&written).unwrap(), policy);
}

#[cfg(feature = "http")]
#[test]
fn over_budget_answers_429_with_retry_after() {
    use brownout::fallback::ProblemJson;
    let rejected = Rejected::new(Reason::Budget).with_retry_after(Duration::from_millis(1500));
    let response: http::Response<String> = ProblemJson::response(&rejected);
    assert_eq!(response.status(), http::StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "2");
    assert!(response.body().contains("\"reason\":\"budget\""));
}
