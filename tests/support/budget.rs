//! What the budget tests share: a stack behind a `BudgetLayer` whose inner
//! service turns away the requests it is told to, as brownout's admission
//! would, so that the unit they took must go back.

use brownout::budget::{Budget, BudgetLayer};
use brownout::priority::{Classes, Priority, priority_fn};
use brownout::{Reason, Rejected};
use tower::{BoxError, Layer, Service};

/// A request's class is its rank: `0` urgent, `1` normal, `2` bulk.
pub fn by_rank() -> impl Fn(&u8, &Classes) -> Priority + Clone {
    |rank: &u8, _: &Classes| Priority::new(*rank)
}

/// `budget` in front of a service that serves every request but those of
/// rank 2, which it turns away with `Shed` before doing anything.
pub fn sheds_rank_two(
    budget: &Budget,
) -> impl Service<u8, Response = &'static str, Error = BoxError> + Clone {
    BudgetLayer::new(budget.clone())
        .priority(priority_fn(by_rank()))
        .layer(tower::service_fn(|rank: u8| async move {
            if rank == 2 {
                Err::<&str, BoxError>(Rejected::new(Reason::Shed).into())
            } else {
                Ok("served")
            }
        }))
}
