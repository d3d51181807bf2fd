//! The stores' record format: a version byte, then fields in order, each
//! number little-endian and each string or byte run prefixed by its
//! length (u32). Small, stable, and read back with a clear error when a
//! record is cut or from another version.

use bytes::Bytes;

use super::store::{Deferred, Outcome, StoreError, from_ms, to_ms};

const VERSION: u8 = 1;

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, v: &[u8]) {
        self.0.extend_from_slice(&(v.len() as u32).to_le_bytes());
        self.0.extend_from_slice(v);
    }
    fn opt(&mut self, v: Option<&str>) {
        match v {
            Some(v) => {
                self.u8(1);
                self.bytes(v.as_bytes());
            }
            None => self.u8(0),
        }
    }
}

struct Reader<'a> {
    data: &'a [u8],
    key: &'a str,
}

impl<'a> Reader<'a> {
    fn corrupt(&self, why: &str) -> StoreError {
        StoreError::Corrupt {
            key: self.key.to_owned(),
            why: why.to_owned(),
        }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.data.len() < n {
            return Err(self.corrupt("record cut short"));
        }
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, StoreError> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Result<u64, StoreError> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    fn bytes(&mut self) -> Result<&'a [u8], StoreError> {
        let len = self.take(4)?;
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        self.take(len)
    }
    fn string(&mut self) -> Result<String, StoreError> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| self.corrupt("text is not UTF-8"))
    }
    fn opt(&mut self) -> Result<Option<String>, StoreError> {
        match self.u8()? {
            0 => Ok(None),
            1 => self.string().map(Some),
            _ => Err(self.corrupt("bad option tag")),
        }
    }
    fn version(&mut self) -> Result<(), StoreError> {
        match self.u8()? {
            VERSION => Ok(()),
            v => Err(self.corrupt(&format!("record version {v}, this build reads {VERSION}"))),
        }
    }
}

/// A deferred request as stored.
pub(crate) fn encode_request(r: &Deferred) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(64 + r.uri.len() + r.body.len()));
    w.u8(VERSION);
    w.u8(r.priority);
    w.bytes(r.method.as_bytes());
    w.bytes(r.uri.as_bytes());
    w.u64(r.headers.len() as u64);
    for (name, value) in &r.headers {
        w.bytes(name.as_bytes());
        w.bytes(value);
    }
    w.bytes(&r.body);
    w.u64(to_ms(r.arrived));
    w.opt(r.idempotency_key.as_deref());
    w.0
}

pub(crate) fn decode_request(key: &str, data: &[u8]) -> Result<Deferred, StoreError> {
    let mut r = Reader { data, key };
    r.version()?;
    let priority = r.u8()?;
    let method = r.string()?;
    let uri = r.string()?;
    let count = r.u64()?;
    if count > 10_000 {
        return Err(r.corrupt("implausible header count"));
    }
    let mut headers = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let name = r.string()?;
        let value = Bytes::copy_from_slice(r.bytes()?);
        headers.push((name, value));
    }
    let body = Bytes::copy_from_slice(r.bytes()?);
    let arrived = from_ms(r.u64()?);
    let idempotency_key = r.opt()?;
    Ok(Deferred {
        priority,
        method,
        uri,
        headers,
        body,
        arrived,
        idempotency_key,
    })
}

pub(crate) fn encode_outcome(o: &Outcome) -> Vec<u8> {
    let mut w = Writer(Vec::new());
    w.u8(VERSION);
    match o {
        Outcome::Served {
            status,
            content_type,
            body,
        } => {
            w.u8(0);
            w.u64(u64::from(*status));
            w.opt(content_type.as_deref());
            w.bytes(body);
        }
        Outcome::Failed(why) => {
            w.u8(1);
            w.bytes(why.as_bytes());
        }
        Outcome::Expired => w.u8(2),
    }
    w.0
}

pub(crate) fn decode_outcome(key: &str, data: &[u8]) -> Result<Outcome, StoreError> {
    let mut r = Reader { data, key };
    r.version()?;
    match r.u8()? {
        0 => {
            let status = r.u64()?;
            let status = u16::try_from(status).map_err(|_| r.corrupt("bad status"))?;
            let content_type = r.opt()?;
            let body = Bytes::copy_from_slice(r.bytes()?);
            Ok(Outcome::Served {
                status,
                content_type,
                body,
            })
        }
        1 => Ok(Outcome::Failed(r.string()?)),
        2 => Ok(Outcome::Expired),
        _ => Err(r.corrupt("unknown outcome")),
    }
}
