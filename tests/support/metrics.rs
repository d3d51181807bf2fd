//! What metrics-util's `DebuggingRecorder` has seen, summed over snapshots
//! (a snapshot takes counters' values and leaves 0).

use std::collections::{BTreeMap, HashMap};

use metrics_util::debugging::{DebugValue, Snapshotter};

/// A metric's labels, sorted by name.
pub type Labels = BTreeMap<String, String>;

/// A metric: its name and labels.
pub type Id = (String, Labels);

/// The requests counter.
pub const REQUESTS: &str = "brownout_requests_total";

/// Gauges are set to this after every snapshot by [`Gauges::Last`].
const UNSET: f64 = -1.0;

/// How [`Seen`] reads gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gauges {
    /// Their last value. A snapshot swaps a gauge to 0, which could read as
    /// a value, so every gauge seen is set to a sentinel after each
    /// snapshot: a gauge still holding it at the next snapshot was not set
    /// in between, and keeps its last value.
    Last,
    /// Summed over snapshots: right for a gauge only moved up and down
    /// (the sum of what each snapshot took is its value).
    Summed,
}

/// What the recorder has seen so far: counters summed over snapshots,
/// histograms' values in order, gauges as [`Gauges`] says.
pub struct Seen {
    snapshotter: Snapshotter,
    mode: Gauges,
    /// Counters, summed.
    pub counters: HashMap<Id, u64>,
    /// Gauges.
    pub gauges: HashMap<Id, f64>,
    /// Histograms' values.
    pub histograms: HashMap<Id, Vec<f64>>,
}

/// `(name, labels)`.
pub fn id(name: &str, labels: &[(&str, &str)]) -> Id {
    let labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    (name.to_owned(), labels)
}

/// Expected request counts, by (outcome, reason).
pub fn counts(entries: &[(&str, &str, u64)]) -> BTreeMap<(String, String), u64> {
    entries
        .iter()
        .map(|(outcome, reason, n)| ((outcome.to_string(), reason.to_string()), *n))
        .collect()
}

impl Seen {
    /// Reads through `snapshotter`, gauges as `mode` says.
    pub fn new(snapshotter: Snapshotter, mode: Gauges) -> Self {
        Self {
            snapshotter,
            mode,
            counters: HashMap::new(),
            gauges: HashMap::new(),
            histograms: HashMap::new(),
        }
    }

    /// Takes a snapshot.
    pub fn refresh(&mut self) {
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let key = key.key();
            let labels: Labels = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            let id = (key.name().to_owned(), labels);
            match value {
                DebugValue::Counter(n) => *self.counters.entry(id).or_default() += n,
                DebugValue::Gauge(v) => match self.mode {
                    Gauges::Last if v.into_inner() == UNSET => {}
                    Gauges::Last => {
                        self.gauges.insert(id, v.into_inner());
                    }
                    Gauges::Summed => *self.gauges.entry(id).or_default() += v.into_inner(),
                },
                DebugValue::Histogram(vs) => self
                    .histograms
                    .entry(id)
                    .or_default()
                    .extend(vs.into_iter().map(|v| v.into_inner())),
            }
        }
        if self.mode == Gauges::Last {
            for (name, labels) in self.gauges.keys() {
                let labels: Vec<_> = labels
                    .iter()
                    .map(|(k, v)| metrics::Label::new(k.clone(), v.clone()))
                    .collect();
                metrics::gauge!(name.clone(), labels).set(UNSET);
            }
        }
    }

    /// A counter, fresh (0 if never seen).
    pub fn counter(&mut self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.refresh();
        self.counters.get(&id(name, labels)).copied().unwrap_or(0)
    }

    /// A gauge, fresh, if registered.
    pub fn gauge(&mut self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.refresh();
        self.gauges.get(&id(name, labels)).copied()
    }

    /// A histogram's values, fresh (none if never seen).
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        self.refresh();
        self.histograms
            .get(&id(name, labels))
            .cloned()
            .unwrap_or_default()
    }

    /// The requests counters whose labels pass `keep`, fresh, summed by
    /// (outcome, reason), the non-zero ones.
    pub fn requests_where(
        &mut self,
        keep: impl Fn(&Labels) -> bool,
    ) -> BTreeMap<(String, String), u64> {
        self.refresh();
        let mut by = BTreeMap::new();
        for ((name, labels), n) in &self.counters {
            if name == REQUESTS && *n > 0 && keep(labels) {
                let key = (labels["outcome"].clone(), labels["reason"].clone());
                *by.entry(key).or_default() += *n;
            }
        }
        by
    }

    /// Every requests counter of `route`, fresh, by (outcome, reason), the
    /// non-zero ones.
    pub fn requests(&mut self, route: &str) -> BTreeMap<(String, String), u64> {
        self.requests_where(|labels| labels.get("route").is_some_and(|r| r == route))
    }
}
