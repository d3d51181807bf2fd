//! The embedded store's operations on its redb tables, one transaction
//! each (the store itself, opening and the [`DeferStore`](super::super::store::DeferStore)
//! glue are in the parent module).

use std::time::SystemTime;

use redb::{
    Durability, ReadTransaction, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};

use super::super::codec::{decode_outcome, decode_request, encode_outcome, encode_request};
use super::super::store::{
    Appended, Claimed, Deferred, Outcome, Status, StoreError, Ticket, to_ms,
};
use super::{Inner, io, pending_key};

/// ticket → sequence number (8 bytes) + the request.
const ENTRIES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("entries");
/// (class rank, sequence number) → ticket: the waiting requests, in order.
const QUEUE: TableDefinition<'_, (u8, u64), &str> = TableDefinition::new("queue");
/// ticket → (claimed at, class rank, sequence number): replays under way.
const CLAIMED: TableDefinition<'_, &str, (u64, u8, u64)> = TableDefinition::new("claimed");
/// ticket → claims so far.
const ATTEMPTS: TableDefinition<'_, &str, u32> = TableDefinition::new("attempts");
/// ticket → outcome.
const OUTCOMES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("outcomes");
/// idempotency key → request fingerprint (8 bytes) + ticket.
const KEYS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("keys");
/// "seq" and "pending:<rank>" counters.
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
/// Settled requests by (settled at, ticket): their idempotency key ("" for
/// none), to forget both after `keep_finished`.
const FINISHED: TableDefinition<'_, (u64, &str), &str> = TableDefinition::new("finished");

/// One unsynced commit in this many is synced (see [`Inner::write_unsynced`]).
pub(super) const SYNC_EVERY: u64 = 32;

impl Inner {
    pub(super) fn write(&self) -> Result<WriteTransaction, StoreError> {
        let mut txn = self.db.begin_write().map_err(io)?;
        txn.set_durability(Durability::Immediate);
        Ok(txn)
    }

    /// A transaction whose commit is not synced: for claims and releases
    /// only. A crash rolls such commits back to the last synced one, which
    /// leaves the request waiting: what opening the store does with every
    /// claim anyway. The next synced commit (an append or an outcome)
    /// makes them durable too.
    ///
    /// One in [`SYNC_EVERY`] is synced all the same: redb frees the pages
    /// that commits replaced only at a synced commit, so claims and
    /// releases alone (a replayer probing a dead back end for days) would
    /// grow the file without end.
    pub(super) fn write_unsynced(&self) -> Result<WriteTransaction, StoreError> {
        let mut txn = self.db.begin_write().map_err(io)?;
        let commits = self
            .unsynced_commits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        txn.set_durability(if commits % SYNC_EVERY == SYNC_EVERY - 1 {
            Durability::Immediate
        } else {
            Durability::None
        });
        Ok(txn)
    }

    pub(super) fn read(&self) -> Result<ReadTransaction, StoreError> {
        self.db.begin_read().map_err(io)
    }

    /// Creates the tables, checks every record reads back, and puts
    /// unsettled claims back in the queue.
    pub(super) fn recover(&self) -> Result<(), StoreError> {
        let txn = self.write()?;
        {
            let entries = txn.open_table(ENTRIES).map_err(io)?;
            let mut queue = txn.open_table(QUEUE).map_err(io)?;
            let mut claimed = txn.open_table(CLAIMED).map_err(io)?;
            txn.open_table(ATTEMPTS).map_err(io)?;
            let outcomes = txn.open_table(OUTCOMES).map_err(io)?;
            txn.open_table(KEYS).map_err(io)?;
            txn.open_table(META).map_err(io)?;
            for row in entries.iter().map_err(io)? {
                let (key, value) = row.map_err(io)?;
                split_entry(key.value(), value.value())?;
            }
            for row in outcomes.iter().map_err(io)? {
                let (key, value) = row.map_err(io)?;
                decode_outcome(key.value(), value.value())?;
            }
            let stale: Vec<(String, u8, u64)> = claimed
                .iter()
                .map_err(io)?
                .map(|row| {
                    let (key, value) = row.map_err(io)?;
                    let (_, rank, seq) = value.value();
                    Ok((key.value().to_owned(), rank, seq))
                })
                .collect::<Result<_, StoreError>>()?;
            for (ticket, rank, seq) in stale {
                claimed.remove(ticket.as_str()).map_err(io)?;
                queue.insert((rank, seq), ticket.as_str()).map_err(io)?;
            }
        }
        txn.commit().map_err(io)
    }

    pub(super) fn counter(
        txn: &WriteTransaction,
        key: &str,
        delta: i64,
    ) -> Result<u64, StoreError> {
        let mut meta = txn.open_table(META).map_err(io)?;
        let now = meta.get(key).map_err(io)?.map(|v| v.value()).unwrap_or(0);
        let next = now.saturating_add_signed(delta);
        meta.insert(key, next).map_err(io)?;
        Ok(next)
    }

    pub(super) fn pending_total(&self, txn: &WriteTransaction) -> Result<u64, StoreError> {
        let meta = txn.open_table(META).map_err(io)?;
        let mut total = 0;
        for rank in 0..self.config.classes {
            total += meta
                .get(pending_key(rank).as_str())
                .map_err(io)?
                .map(|v| v.value())
                .unwrap_or(0);
        }
        Ok(total)
    }

    pub(super) fn append(&self, request: Deferred) -> Result<Appended, StoreError> {
        let txn = self.write()?;
        let fingerprint = request.fingerprint();
        if let Some(key) = &request.idempotency_key {
            let keys = txn.open_table(KEYS).map_err(io)?;
            if let Some(found) = keys.get(key.as_str()).map_err(io)? {
                let found = found.value();
                let (fp, ticket) = split_key_record(key, found)?;
                return Ok(if fp == fingerprint {
                    Appended::Repeat(ticket)
                } else {
                    Appended::Conflict(ticket)
                });
            }
        }
        if self.pending_total(&txn)? >= self.config.max_pending {
            return Ok(Appended::Full);
        }
        let rank = request.priority.min(self.config.classes - 1);
        let seq = Self::counter(&txn, "seq", 1)?;
        let ticket = Ticket::random();
        let mut record = seq.to_le_bytes().to_vec();
        record.extend_from_slice(&encode_request(&Deferred {
            priority: rank,
            ..request.clone()
        }));
        {
            let mut entries = txn.open_table(ENTRIES).map_err(io)?;
            entries
                .insert(ticket.as_str(), record.as_slice())
                .map_err(io)?;
            let mut queue = txn.open_table(QUEUE).map_err(io)?;
            queue.insert((rank, seq), ticket.as_str()).map_err(io)?;
            if let Some(key) = &request.idempotency_key {
                let mut keys = txn.open_table(KEYS).map_err(io)?;
                let mut value = fingerprint.to_le_bytes().to_vec();
                value.extend_from_slice(ticket.as_str().as_bytes());
                keys.insert(key.as_str(), value.as_slice()).map_err(io)?;
            }
        }
        Self::counter(&txn, &pending_key(rank), 1)?;
        txn.commit().map_err(io)?;
        Ok(Appended::New(ticket))
    }

    pub(super) fn entry(
        txn: &WriteTransaction,
        ticket: &str,
    ) -> Result<Option<(u64, Deferred)>, StoreError> {
        let entries = txn.open_table(ENTRIES).map_err(io)?;
        let found = entries.get(ticket).map_err(io)?;
        found.map(|v| split_entry(ticket, v.value())).transpose()
    }

    /// Settles `ticket` (whose class is `rank`) with `outcome`, wherever it
    /// sits; `false` when it was settled already.
    pub(super) fn settle(
        &self,
        txn: &WriteTransaction,
        ticket: &str,
        request: &Deferred,
        seq: u64,
        outcome: &Outcome,
    ) -> Result<bool, StoreError> {
        let rank = request.priority;
        let mut outcomes = txn.open_table(OUTCOMES).map_err(io)?;
        if outcomes.get(ticket).map_err(io)?.is_some() {
            return Ok(false);
        }
        outcomes
            .insert(ticket, encode_outcome(outcome).as_slice())
            .map_err(io)?;
        txn.open_table(FINISHED)
            .map_err(io)?
            .insert(
                (self.config.now_ms(), ticket),
                request.idempotency_key.as_deref().unwrap_or(""),
            )
            .map_err(io)?;
        txn.open_table(ENTRIES)
            .map_err(io)?
            .remove(ticket)
            .map_err(io)?;
        txn.open_table(QUEUE)
            .map_err(io)?
            .remove((rank, seq))
            .map_err(io)?;
        txn.open_table(CLAIMED)
            .map_err(io)?
            .remove(ticket)
            .map_err(io)?;
        txn.open_table(ATTEMPTS)
            .map_err(io)?
            .remove(ticket)
            .map_err(io)?;
        Self::counter(txn, &pending_key(rank), -1)?;
        Ok(true)
    }

    pub(super) fn expired(&self, now: u64, arrived: SystemTime) -> bool {
        to_ms(arrived).saturating_add(self.config.max_age.as_millis() as u64) <= now
    }

    /// Whether a claim could find something: a read, so that a replayer
    /// polling an empty store syncs nothing.
    pub(super) fn claimable(&self, now: u64, lease: u64) -> Result<bool, StoreError> {
        let txn = self.read()?;
        if !txn.open_table(QUEUE).map_err(io)?.is_empty().map_err(io)? {
            return Ok(true);
        }
        let claimed = txn.open_table(CLAIMED).map_err(io)?;
        for row in claimed.iter().map_err(io)? {
            let (_, value) = row.map_err(io)?;
            if value.value().0.saturating_add(lease) <= now {
                return Ok(true);
            }
        }
        Ok(false)
    }

    pub(super) fn claim(&self) -> Result<Option<Claimed>, StoreError> {
        let now = self.config.now_ms();
        let lease = self.config.claim_after.as_millis() as u64;
        if !self.claimable(now, lease)? {
            return Ok(None);
        }
        let mut txn = self.write_unsynced()?;
        // A claim left unsettled past its lease first, in order.
        let stale = {
            let claimed = txn.open_table(CLAIMED).map_err(io)?;
            let mut best: Option<(u8, u64, String)> = None;
            for row in claimed.iter().map_err(io)? {
                let (key, value) = row.map_err(io)?;
                let (at, rank, seq) = value.value();
                if at.saturating_add(lease) <= now
                    && best.as_ref().is_none_or(|(r, s, _)| (rank, seq) < (*r, *s))
                {
                    best = Some((rank, seq, key.value().to_owned()));
                }
            }
            best
        };
        let next = match stale {
            Some(found) => Some(found),
            None => loop {
                let first = {
                    let queue = txn.open_table(QUEUE).map_err(io)?;
                    let first = queue.first().map_err(io)?;
                    first.map(|(k, v)| (k.value(), v.value().to_owned()))
                };
                let Some(((rank, seq), ticket)) = first else {
                    break None;
                };
                let Some((_, request)) = Self::entry(&txn, &ticket)? else {
                    return Err(StoreError::Corrupt {
                        key: ticket,
                        why: "queued but has no entry".to_owned(),
                    });
                };
                if self.expired(now, request.arrived) {
                    debug_assert_eq!(request.priority, rank);
                    self.settle(&txn, &ticket, &request, seq, &Outcome::Expired)?;
                    // An outcome is synced before anyone can read it.
                    txn.set_durability(Durability::Immediate);
                    continue;
                }
                txn.open_table(QUEUE)
                    .map_err(io)?
                    .remove((rank, seq))
                    .map_err(io)?;
                break Some((rank, seq, ticket));
            },
        };
        let Some((rank, seq, ticket)) = next else {
            // Nothing claimed; commit what was expired on the way.
            txn.commit().map_err(io)?;
            return Ok(None);
        };
        txn.open_table(CLAIMED)
            .map_err(io)?
            .insert(ticket.as_str(), (now, rank, seq))
            .map_err(io)?;
        let attempts = {
            let mut table = txn.open_table(ATTEMPTS).map_err(io)?;
            let attempts = table
                .get(ticket.as_str())
                .map_err(io)?
                .map(|v| v.value())
                .unwrap_or(0)
                + 1;
            table.insert(ticket.as_str(), attempts).map_err(io)?;
            attempts
        };
        let Some((_, request)) = Self::entry(&txn, &ticket)? else {
            return Err(StoreError::Corrupt {
                key: ticket,
                why: "claimed but has no entry".to_owned(),
            });
        };
        txn.commit().map_err(io)?;
        Ok(Some(Claimed {
            ticket: Ticket::parse(&ticket).ok_or_else(|| StoreError::Corrupt {
                key: ticket.clone(),
                why: "not a ticket".to_owned(),
            })?,
            request,
            attempts,
        }))
    }

    pub(super) fn release(&self, ticket: &Ticket) -> Result<(), StoreError> {
        let txn = self.write_unsynced()?;
        {
            let mut claimed = txn.open_table(CLAIMED).map_err(io)?;
            let found = claimed.remove(ticket.as_str()).map_err(io)?;
            if let Some(found) = found {
                let (_, rank, seq) = found.value();
                drop(found);
                txn.open_table(QUEUE)
                    .map_err(io)?
                    .insert((rank, seq), ticket.as_str())
                    .map_err(io)?;
                // A claim given back does not count as an attempt.
                let mut attempts = txn.open_table(ATTEMPTS).map_err(io)?;
                let now = attempts
                    .get(ticket.as_str())
                    .map_err(io)?
                    .map(|v| v.value())
                    .unwrap_or(0);
                attempts
                    .insert(ticket.as_str(), now.saturating_sub(1))
                    .map_err(io)?;
            }
        }
        txn.commit().map_err(io)
    }

    pub(super) fn complete(&self, ticket: &Ticket, outcome: &Outcome) -> Result<bool, StoreError> {
        let txn = self.write()?;
        let Some((seq, request)) = Self::entry(&txn, ticket.as_str())? else {
            return Ok(false);
        };
        let done = self.settle(&txn, ticket.as_str(), &request, seq, outcome)?;
        txn.commit().map_err(io)?;
        Ok(done)
    }

    /// Whether the oldest waiting request of some class is past `max_age`:
    /// a read, so that an upkeep with nothing to expire syncs nothing.
    pub(super) fn any_expired(&self, now: u64) -> Result<bool, StoreError> {
        let txn = self.read()?;
        let queue = txn.open_table(QUEUE).map_err(io)?;
        let entries = txn.open_table(ENTRIES).map_err(io)?;
        for rank in 0..self.config.classes {
            let mut rows = queue.range((rank, 0)..=(rank, u64::MAX)).map_err(io)?;
            if let Some(row) = rows.next() {
                let (_, ticket) = row.map_err(io)?;
                if let Some(v) = entries.get(ticket.value()).map_err(io)? {
                    let (_, request) = split_entry(ticket.value(), v.value())?;
                    if self.expired(now, request.arrived) {
                        return Ok(true);
                    }
                }
            }
        }
        Ok(false)
    }

    /// Forgets the requests settled more than `keep_finished` before
    /// `now`: their outcome, and their idempotency key if it still names
    /// them. How many.
    pub(super) fn forget_finished(&self, now: u64) -> Result<u64, StoreError> {
        let keep = self.config.keep_finished.as_millis() as u64;
        let cutoff = now.saturating_sub(keep);
        let due = {
            let txn = self.read()?;
            match txn.open_table(FINISHED) {
                Ok(table) => table
                    .first()
                    .map_err(io)?
                    .is_some_and(|(k, _)| k.value().0 < cutoff),
                Err(redb::TableError::TableDoesNotExist(_)) => false,
                Err(err) => return Err(io(err)),
            }
        };
        if !due {
            return Ok(0);
        }
        let txn = self.write_unsynced()?;
        let mut forgotten = 0;
        loop {
            let batch: Vec<(u64, String, String)> = {
                let finished = txn.open_table(FINISHED).map_err(io)?;
                let rows = finished.range(..(cutoff, "")).map_err(io)?;
                rows.take(256)
                    .map(|row| {
                        let (k, v) = row.map_err(io)?;
                        let (at, ticket) = k.value();
                        Ok((at, ticket.to_owned(), v.value().to_owned()))
                    })
                    .collect::<Result<_, StoreError>>()?
            };
            if batch.is_empty() {
                break;
            }
            let mut finished = txn.open_table(FINISHED).map_err(io)?;
            let mut outcomes = txn.open_table(OUTCOMES).map_err(io)?;
            let mut keys = txn.open_table(KEYS).map_err(io)?;
            for (at, ticket, key) in &batch {
                finished.remove((*at, ticket.as_str())).map_err(io)?;
                outcomes.remove(ticket.as_str()).map_err(io)?;
                if !key.is_empty() {
                    let names_it = match keys.get(key.as_str()).map_err(io)? {
                        Some(found) => split_key_record(key, found.value())?.1.as_str() == ticket,
                        None => false,
                    };
                    if names_it {
                        keys.remove(key.as_str()).map_err(io)?;
                    }
                }
                forgotten += 1;
            }
        }
        txn.commit().map_err(io)?;
        Ok(forgotten)
    }

    pub(super) fn expire(&self) -> Result<u64, StoreError> {
        let now = self.config.now_ms();
        self.forget_finished(now)?;
        if !self.any_expired(now)? {
            return Ok(0);
        }
        let txn = self.write()?;
        let mut expired = 0;
        for rank in 0..self.config.classes {
            loop {
                let batch: Vec<(u64, String)> = {
                    let queue = txn.open_table(QUEUE).map_err(io)?;
                    let rows = queue.range((rank, 0)..=(rank, u64::MAX)).map_err(io)?;
                    rows.take(256)
                        .map(|row| {
                            let (k, v) = row.map_err(io)?;
                            Ok((k.value().1, v.value().to_owned()))
                        })
                        .collect::<Result<_, StoreError>>()?
                };
                let mut stopped = batch.len() < 256;
                for (seq, ticket) in &batch {
                    let Some((_, request)) = Self::entry(&txn, ticket)? else {
                        continue;
                    };
                    if !self.expired(now, request.arrived) {
                        stopped = true;
                        break;
                    }
                    if self.settle(&txn, ticket, &request, *seq, &Outcome::Expired)? {
                        expired += 1;
                    }
                }
                if stopped {
                    break;
                }
            }
        }
        txn.commit().map_err(io)?;
        Ok(expired)
    }

    pub(super) fn status(&self, ticket: &Ticket) -> Result<Option<Status>, StoreError> {
        let txn = self.read()?;
        let outcomes = txn.open_table(OUTCOMES).map_err(io)?;
        if let Some(found) = outcomes.get(ticket.as_str()).map_err(io)? {
            return decode_outcome(ticket.as_str(), found.value())
                .map(Status::Done)
                .map(Some);
        }
        let entries = txn.open_table(ENTRIES).map_err(io)?;
        let found = entries.get(ticket.as_str()).map_err(io)?;
        found
            .map(|v| {
                split_entry(ticket.as_str(), v.value())
                    .map(|(_, r)| Status::Pending { arrived: r.arrived })
            })
            .transpose()
    }

    pub(super) fn ticket_for_key(&self, key: &str) -> Result<Option<Ticket>, StoreError> {
        let txn = self.read()?;
        let keys = txn.open_table(KEYS).map_err(io)?;
        let found = keys.get(key).map_err(io)?;
        found
            .map(|v| split_key_record(key, v.value()).map(|(_, t)| t))
            .transpose()
    }

    pub(super) fn pending(&self) -> Result<Vec<u64>, StoreError> {
        let txn = self.read()?;
        let meta = txn.open_table(META).map_err(io)?;
        (0..self.config.classes)
            .map(|rank| {
                Ok(meta
                    .get(pending_key(rank).as_str())
                    .map_err(io)?
                    .map(|v| v.value())
                    .unwrap_or(0))
            })
            .collect()
    }

    pub(super) fn oldest(&self) -> Result<Option<SystemTime>, StoreError> {
        let txn = self.read()?;
        let queue = txn.open_table(QUEUE).map_err(io)?;
        let entries = txn.open_table(ENTRIES).map_err(io)?;
        let claimed = txn.open_table(CLAIMED).map_err(io)?;
        let mut oldest: Option<SystemTime> = None;
        // Being replayed is pending too (a few at a time).
        for row in claimed.iter().map_err(io)? {
            let (ticket, _) = row.map_err(io)?;
            if let Some(v) = entries.get(ticket.value()).map_err(io)? {
                let (_, request) = split_entry(ticket.value(), v.value())?;
                oldest = Some(oldest.map_or(request.arrived, |o| o.min(request.arrived)));
            }
        }
        for rank in 0..self.config.classes {
            let mut rows = queue.range((rank, 0)..=(rank, u64::MAX)).map_err(io)?;
            if let Some(row) = rows.next() {
                let (_, ticket) = row.map_err(io)?;
                if let Some(v) = entries.get(ticket.value()).map_err(io)? {
                    let (_, request) = split_entry(ticket.value(), v.value())?;
                    oldest = Some(oldest.map_or(request.arrived, |o| o.min(request.arrived)));
                }
            }
        }
        Ok(oldest)
    }
}

fn split_entry(ticket: &str, value: &[u8]) -> Result<(u64, Deferred), StoreError> {
    if value.len() < 8 {
        return Err(StoreError::Corrupt {
            key: ticket.to_owned(),
            why: "entry cut short".to_owned(),
        });
    }
    let (seq, rest) = value.split_at(8);
    let seq = u64::from_le_bytes(seq.try_into().expect("8 bytes"));
    Ok((seq, decode_request(ticket, rest)?))
}

fn split_key_record(key: &str, value: &[u8]) -> Result<(u64, Ticket), StoreError> {
    let corrupt = || StoreError::Corrupt {
        key: key.to_owned(),
        why: "bad idempotency record".to_owned(),
    };
    if value.len() < 8 {
        return Err(corrupt());
    }
    let (fp, ticket) = value.split_at(8);
    let fp = u64::from_le_bytes(fp.try_into().expect("8 bytes"));
    let ticket = std::str::from_utf8(ticket)
        .ok()
        .and_then(Ticket::parse)
        .ok_or_else(corrupt)?;
    Ok((fp, ticket))
}
