//! The local budget's admitted path allocates nothing: `BudgetLayer` over a
//! back end, counted by a global allocator (own test binary).

mod support;

use std::convert::Infallible;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use brownout::PriorityPolicy;
use brownout::budget::{Budget, BudgetLayer};
use brownout::policy::BudgetPolicy;
use support::alloc::{Counting, allocations_in};
use tower::{Layer, Service};

#[global_allocator]
static GLOBAL: Counting = Counting;

fn call_now<S: Service<u64>>(svc: &mut S, req: u64) -> Result<S::Response, S::Error> {
    let mut cx = Context::from_waker(Waker::noop());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        _ => panic!("poll_ready is not ready"),
    }
    let mut response = pin!(svc.call(black_box(req)));
    match response.as_mut().poll(&mut cx) {
        Poll::Ready(result) => result,
        Poll::Pending => panic!("the response future is pending"),
    }
}

#[test]
fn admitted_calls_through_a_local_budget_do_not_allocate() {
    let policy = BudgetPolicy {
        capacity: 1_000_000,
        per: Duration::from_secs(3600),
        shares: [("urgent".to_owned(), 0.3)].into(),
        ..BudgetPolicy::default()
    };
    // Built outside the counted section (it starts the coarse clock).
    let budget = Budget::new(&policy, &PriorityPolicy::default()).unwrap();
    let mut svc = BudgetLayer::new(budget).layer(tower::service_fn(|x: u64| async move {
        Ok::<_, Infallible>(x)
    }));
    for i in 0..1_000 {
        call_now(&mut svc, i).unwrap();
    }
    let allocations = allocations_in(|| {
        for i in 0..1_000 {
            black_box(call_now(&mut svc, i).unwrap());
        }
    });
    assert_eq!(
        allocations, 0,
        "{allocations} allocations in 1000 admitted calls"
    );
}
