//! The room's queues on their own: order, displacement, grants, waits.

use super::*;

fn noop() -> Waker {
    Waker::noop().clone()
}

const GRANT: Grant = Grant {
    ticket: Ticket::UNTRACKED,
    at: 0,
};

#[test]
fn most_important_class_first_then_arrival_order() {
    let mut q = Queues::new(10);
    let bulk = q.push(Priority::new(2), 1, 1_000).unwrap();
    let normal_a = q.push(Priority::new(1), 2, 1_000).unwrap();
    let normal_b = q.push(Priority::new(1), 3, 1_000).unwrap();
    let urgent = q.push(Priority::new(0), 4, 1_000).unwrap();
    let mut order = Vec::new();
    for key in [bulk, normal_a, normal_b, urgent] {
        assert!(matches!(q.poll(key, &noop()), Standing::Waiting));
    }
    while let Some((priority, since)) = q.next_out(false) {
        order.push((priority.rank(), since));
        q.grant_next(false, GRANT);
    }
    assert_eq!(order, vec![(0, 4), (1, 2), (1, 3), (2, 1)]);
    assert!(matches!(q.poll(normal_a, &noop()), Standing::Granted(_)));
}

#[test]
fn newest_first_within_a_class_when_asked() {
    let mut q = Queues::new(10);
    q.push(Priority::new(1), 1, 1_000).unwrap();
    q.push(Priority::new(1), 2, 1_000).unwrap();
    assert_eq!(q.next_out(true).map(|(_, since)| since), Some(2));
    assert_eq!(q.next_out(false).map(|(_, since)| since), Some(1));
}

#[test]
fn a_full_room_turns_away_the_newest_of_the_lowest_class_for_a_more_important_one() {
    let mut q = Queues::new(2);
    let bulk_old = q.push(Priority::new(2), 1, 1_000).unwrap();
    let bulk_new = q.push(Priority::new(2), 2, 1_000).unwrap();
    // Another bulk request: no one below it.
    assert_eq!(
        q.push(Priority::new(2), 3, 1_000).unwrap_err().reason(),
        Reason::QueueFull
    );
    // An urgent one displaces the newest bulk waiter.
    let urgent = q.push(Priority::new(0), 4, 1_000).unwrap();
    assert!(
        matches!(q.poll(bulk_new, &noop()), Standing::Rejected(r) if r.reason() == Reason::QueueFull)
    );
    assert!(matches!(q.poll(bulk_old, &noop()), Standing::Waiting));
    assert!(matches!(q.poll(urgent, &noop()), Standing::Waiting));
    assert_eq!(q.len(), 2);
}

#[test]
fn leaving_frees_the_place_and_stale_keys_are_harmless() {
    let mut q = Queues::new(1000);
    let keys: Vec<_> = (0..1000)
        .map(|i| q.push(Priority::new(1), i, 1_000).unwrap())
        .collect();
    assert_eq!(q.len(), 1000);
    for key in &keys {
        assert_eq!(q.leave(*key), None);
    }
    assert_eq!(q.len(), 0);
    assert_eq!(q.next_out(false), None);
    // Places are reused; the old keys no longer match their slots.
    let fresh = q.push(Priority::new(0), 5, 1_000).unwrap();
    assert_eq!(q.leave(keys[999]), None);
    assert!(matches!(q.poll(fresh, &noop()), Standing::Waiting));
    assert_eq!(q.slots_allocated(), 1000);
}

#[test]
fn a_granted_waiter_that_leaves_hands_its_grant_back() {
    let mut q = Queues::new(4);
    let key = q.push(Priority::new(1), 1, 1_000).unwrap();
    q.grant_next(false, GRANT);
    assert_eq!(q.leave(key), Some(GRANT));
    assert_eq!(q.len(), 0);
}

#[test]
fn shrinking_turns_away_the_least_important_newest_first() {
    let mut q = Queues::new(10);
    let urgent = q.push(Priority::new(0), 1, 1_000).unwrap();
    let bulk_a = q.push(Priority::new(2), 2, 1_000).unwrap();
    let bulk_b = q.push(Priority::new(2), 3, 1_000).unwrap();
    let normal = q.push(Priority::new(1), 4, 1_000).unwrap();
    assert_eq!(q.shrink_to(2), vec![Priority::new(2), Priority::new(2)]);
    assert!(matches!(q.poll(bulk_b, &noop()), Standing::Rejected(_)));
    assert!(matches!(q.poll(bulk_a, &noop()), Standing::Rejected(_)));
    assert!(matches!(q.poll(normal, &noop()), Standing::Waiting));
    assert!(matches!(q.poll(urgent, &noop()), Standing::Waiting));
}
