//! The embedded store: a redb database in a directory of its own.
//!
//! Why redb: pure Rust (no C toolchain, no system library), ACID
//! transactions with copy-on-write B-trees, one file, and every commit
//! synced to disk before it returns (`Durability::Immediate`, redb's
//! default and the one used here): a request is on disk before its `202`
//! leaves, and an outcome before the status endpoint shows it. Claims and
//! releases are committed without a sync: a crash can only undo them,
//! which puts the request back to wait, as opening the store does with
//! every claim left by a dead process. A crash between two commits loses nothing committed; redb
//! repairs its free-space bookkeeping on the next open. One process opens
//! a store at a time (redb locks the file); replicas that share a backlog
//! use the Redis store.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use redb::{
    Database, Durability, ReadTransaction, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};

use super::codec::{decode_outcome, decode_request, encode_outcome, encode_request};
use super::store::{
    Appended, Claimed, DeferStore, Deferred, Outcome, Status, StoreConfig, StoreError, StoreFuture,
    Ticket, to_ms,
};

/// The file the store keeps in its directory.
pub const FILE_NAME: &str = "deferred.redb";

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

/// The embedded store (feature `defer`): a redb database, every commit
/// synced to disk before it returns.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

struct Inner {
    db: Database,
    config: StoreConfig,
    path: PathBuf,
}

fn io(err: impl std::fmt::Display) -> StoreError {
    StoreError::Io(err.to_string())
}

fn pending_key(rank: u8) -> String {
    format!("pending:{rank}")
}

impl EmbeddedStore {
    /// Opens (or creates) the store in directory `dir`.
    ///
    /// A directory that cannot be created or read, a file where the
    /// directory should be, a directory holding other files but no store,
    /// and a store file that is not a redb database or is corrupt are all
    /// [`StoreError::Open`] naming the path: never an empty queue in its
    /// place. Requests a previous process had claimed but not settled (it
    /// died mid-replay) are put back in their place, to be replayed again.
    pub fn open(dir: impl AsRef<Path>, config: StoreConfig) -> Result<Self, StoreError> {
        let dir = dir.as_ref();
        let fail = |path: &Path, why: String| StoreError::Open {
            path: path.to_owned(),
            why,
        };
        if dir.exists() && !dir.is_dir() {
            return Err(fail(dir, "is not a directory".to_owned()));
        }
        std::fs::create_dir_all(dir).map_err(|e| fail(dir, format!("cannot create it: {e}")))?;
        let file = dir.join(FILE_NAME);
        let others = std::fs::read_dir(dir)
            .map_err(|e| fail(dir, format!("cannot read it: {e}")))?
            .filter_map(Result::ok)
            .filter(|e| e.file_name() != FILE_NAME)
            .count();
        if !file.exists() && others > 0 {
            return Err(fail(
                dir,
                format!(
                    "holds {others} other file(s) but no {FILE_NAME}: not a deferral store \
                     (give an empty or new directory)"
                ),
            ));
        }
        let db = Database::create(&file).map_err(|e| fail(&file, e.to_string()))?;
        let store = Inner {
            db,
            config,
            path: file.clone(),
        };
        store
            .recover()
            .map_err(|e| fail(&file, format!("cannot read it back: {e}")))?;
        Ok(Self {
            inner: Arc::new(store),
        })
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn run<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> StoreFuture<'_, T> {
        let inner = self.inner.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || op(&inner))
                .await
                .map_err(io)?
        })
    }
}

impl Inner {
    fn write(&self) -> Result<WriteTransaction, StoreError> {
        let mut txn = self.db.begin_write().map_err(io)?;
        txn.set_durability(Durability::Immediate);
        Ok(txn)
    }

    /// A transaction whose commit is not synced: for claims and releases
    /// only. A crash rolls such commits back to the last synced one, which
    /// leaves the request waiting: what opening the store does with every
    /// claim anyway. The next synced commit (an append or an outcome)
    /// makes them durable too.
    fn write_unsynced(&self) -> Result<WriteTransaction, StoreError> {
        let mut txn = self.db.begin_write().map_err(io)?;
        txn.set_durability(Durability::None);
        Ok(txn)
    }

    fn read(&self) -> Result<ReadTransaction, StoreError> {
        self.db.begin_read().map_err(io)
    }

    /// Creates the tables, checks every record reads back, and puts
    /// unsettled claims back in the queue.
    fn recover(&self) -> Result<(), StoreError> {
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

    fn counter(txn: &WriteTransaction, key: &str, delta: i64) -> Result<u64, StoreError> {
        let mut meta = txn.open_table(META).map_err(io)?;
        let now = meta.get(key).map_err(io)?.map(|v| v.value()).unwrap_or(0);
        let next = now.saturating_add_signed(delta);
        meta.insert(key, next).map_err(io)?;
        Ok(next)
    }

    fn pending_total(&self, txn: &WriteTransaction) -> Result<u64, StoreError> {
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

    fn append(&self, request: Deferred) -> Result<Appended, StoreError> {
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

    fn entry(txn: &WriteTransaction, ticket: &str) -> Result<Option<(u64, Deferred)>, StoreError> {
        let entries = txn.open_table(ENTRIES).map_err(io)?;
        let found = entries.get(ticket).map_err(io)?;
        found.map(|v| split_entry(ticket, v.value())).transpose()
    }

    /// Settles `ticket` (whose class is `rank`) with `outcome`, wherever it
    /// sits; `false` when it was settled already.
    fn settle(
        txn: &WriteTransaction,
        ticket: &str,
        rank: u8,
        seq: u64,
        outcome: &Outcome,
    ) -> Result<bool, StoreError> {
        let mut outcomes = txn.open_table(OUTCOMES).map_err(io)?;
        if outcomes.get(ticket).map_err(io)?.is_some() {
            return Ok(false);
        }
        outcomes
            .insert(ticket, encode_outcome(outcome).as_slice())
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

    fn expired(&self, now: u64, arrived: SystemTime) -> bool {
        to_ms(arrived).saturating_add(self.config.max_age.as_millis() as u64) <= now
    }

    /// Whether a claim could find something: a read, so that a replayer
    /// polling an empty store syncs nothing.
    fn claimable(&self, now: u64, lease: u64) -> Result<bool, StoreError> {
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

    fn claim(&self) -> Result<Option<Claimed>, StoreError> {
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
                    Self::settle(&txn, &ticket, rank, seq, &Outcome::Expired)?;
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

    fn release(&self, ticket: &Ticket) -> Result<(), StoreError> {
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

    fn complete(&self, ticket: &Ticket, outcome: &Outcome) -> Result<bool, StoreError> {
        let txn = self.write()?;
        let Some((seq, request)) = Self::entry(&txn, ticket.as_str())? else {
            return Ok(false);
        };
        let done = Self::settle(&txn, ticket.as_str(), request.priority, seq, outcome)?;
        txn.commit().map_err(io)?;
        Ok(done)
    }

    /// Whether the oldest waiting request of some class is past `max_age`:
    /// a read, so that an upkeep with nothing to expire syncs nothing.
    fn any_expired(&self, now: u64) -> Result<bool, StoreError> {
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

    fn expire(&self) -> Result<u64, StoreError> {
        let now = self.config.now_ms();
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
                    if Self::settle(&txn, ticket, rank, *seq, &Outcome::Expired)? {
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

    fn status(&self, ticket: &Ticket) -> Result<Option<Status>, StoreError> {
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

    fn ticket_for_key(&self, key: &str) -> Result<Option<Ticket>, StoreError> {
        let txn = self.read()?;
        let keys = txn.open_table(KEYS).map_err(io)?;
        let found = keys.get(key).map_err(io)?;
        found
            .map(|v| split_key_record(key, v.value()).map(|(_, t)| t))
            .transpose()
    }

    fn pending(&self) -> Result<Vec<u64>, StoreError> {
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

    fn oldest(&self) -> Result<Option<SystemTime>, StoreError> {
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

impl DeferStore for EmbeddedStore {
    fn now(&self) -> SystemTime {
        self.inner.config.clock.system_time()
    }

    fn append(&self, request: Deferred) -> StoreFuture<'_, Appended> {
        self.run(move |s| s.append(request))
    }

    fn claim(&self) -> StoreFuture<'_, Option<Claimed>> {
        self.run(|s| s.claim())
    }

    fn release(&self, ticket: Ticket) -> StoreFuture<'_, ()> {
        self.run(move |s| s.release(&ticket))
    }

    fn complete(&self, ticket: Ticket, outcome: Outcome) -> StoreFuture<'_, bool> {
        self.run(move |s| s.complete(&ticket, &outcome))
    }

    fn expire(&self) -> StoreFuture<'_, u64> {
        self.run(|s| s.expire())
    }

    fn status(&self, ticket: Ticket) -> StoreFuture<'_, Option<Status>> {
        self.run(move |s| s.status(&ticket))
    }

    fn ticket_for_key(&self, key: String) -> StoreFuture<'_, Option<Ticket>> {
        self.run(move |s| s.ticket_for_key(&key))
    }

    fn pending(&self) -> StoreFuture<'_, Vec<u64>> {
        self.run(|s| s.pending())
    }

    fn oldest(&self) -> StoreFuture<'_, Option<SystemTime>> {
        self.run(|s| s.oldest())
    }
}
