//! Published versions as a [`Source`] of the snapshot: the lists that
//! `[publishing] lists` declares, and the rules when `[publishing] rules`
//! is on, each fed from the version in force on its shelf.
//!
//! An activation records the new version in force on the shelf (durably,
//! first), takes a new publishing sequence, and marks the layer changed;
//! the publisher's next poll (woken at once through [`Nudge`]) rebuilds
//! that layer alone. A list version built while it was checked is offered
//! as [`Source::prebuilt`], so the swap costs no second parse; after a
//! restart, or when a build is retried, the version's file is read again.

use std::io::BufReader;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use kuzet_rules::{ByList, ListId, NumberList};

use super::shelf::Shelf;
use crate::lists::LoadError;
use crate::publish::{Feed, Layers, RulesText, Source};

/// The largest rule file kept.
pub const MAX_RULES: u64 = crate::files::MAX_RULE_FILE;

/// Wakes the reload loop when a version goes into force (instead of
/// waiting for its next poll).
pub type Nudge = Arc<tokio::sync::Notify>;

/// One published shelf: a list's, or the rules'.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    /// A published list's.
    List(ListId),
    /// The rules'.
    Rules,
}

impl Which {
    /// Its name, as the shared store and the metrics name it: its folder
    /// under `published/` (`lists/blocklist`, `rules`).
    pub fn name(self) -> String {
        match self {
            Which::List(l) => format!("lists/{}", l.name()),
            Which::Rules => "rules".into(),
        }
    }

    /// The snapshot layers it feeds.
    pub fn layers(self) -> Layers {
        match self {
            Which::List(l) => Layers::list(l),
            Which::Rules => Layers::RULES,
        }
    }
}

/// A version built as it was checked, waiting for the publisher.
struct Offer {
    version: u64,
    list: Arc<NumberList>,
    digest: [u8; 16],
}

/// The published layers (see the module docs).
pub struct PublishedSource {
    /// One shelf per published list.
    pub(crate) lists: ByList<Option<Mutex<Shelf>>>,
    /// The rules' shelf, when the rules are published.
    pub(crate) rules: Option<Mutex<Shelf>>,
    offers: ByList<Mutex<Option<Offer>>>,
    changed: AtomicU32,
    /// The last sequence handed to an activation.
    allocated: AtomicU64,
    /// The highest sequence whose change is reported (see
    /// [`Source::sequence`]).
    seq: AtomicU64,
    layers: Layers,
}

impl PublishedSource {
    /// Opens the shelves under `dir` (the data directory's `published/`)
    /// for `lists` and, with `rules`, the rules. Everything is dirty at
    /// first: the publisher's first build reads the versions in force.
    pub fn open(
        dir: &std::path::Path,
        lists: &[ListId],
        rules: bool,
    ) -> Result<PublishedSource, String> {
        let mut layers = Layers::NONE;
        let mut shelves = ByList::from_fn(|_| None);
        let mut seq = 0;
        for l in lists {
            let s = Shelf::open(&dir.join("lists").join(l.name()), "list")?;
            seq = seq.max(s.index.activated_seq);
            shelves[*l] = Some(Mutex::new(s));
            layers = layers.with(Layers::list(*l));
        }
        let rules = if rules {
            let s = Shelf::open(&dir.join("rules"), "toml")?;
            seq = seq.max(s.index.activated_seq);
            layers = layers.with(Layers::RULES);
            Some(Mutex::new(s))
        } else {
            None
        };
        Ok(PublishedSource {
            lists: shelves,
            rules,
            offers: ByList::from_fn(|_| Mutex::new(None)),
            changed: AtomicU32::new(0),
            allocated: AtomicU64::new(seq),
            seq: AtomicU64::new(seq),
            layers,
        })
    }

    /// Whether list `l` is published.
    pub fn publishes(&self, l: ListId) -> bool {
        self.lists[l].is_some()
    }

    /// Whether the rules are published.
    pub fn publishes_rules(&self) -> bool {
        self.rules.is_some()
    }

    /// The next publishing sequence, for an activation about to be
    /// recorded.
    pub fn next_seq(&self) -> u64 {
        self.allocated.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The highest publishing sequence handed out or seen here.
    pub fn allocated(&self) -> u64 {
        self.allocated.load(Ordering::Acquire)
    }

    /// Notes a publishing sequence handed out elsewhere (the cluster's):
    /// this node's next one comes after it.
    pub fn saw_seq(&self, seq: u64) {
        self.allocated.fetch_max(seq, Ordering::AcqRel);
    }

    /// Every published shelf: the lists', then the rules'.
    pub fn shelves(&self) -> Vec<Which> {
        let mut v: Vec<Which> = ListId::ALL
            .into_iter()
            .filter(|l| self.publishes(*l))
            .map(Which::List)
            .collect();
        if self.rules.is_some() {
            v.push(Which::Rules);
        }
        v
    }

    /// The shelf `w`, when it is published.
    pub fn shelf(&self, w: Which) -> Option<&Mutex<Shelf>> {
        match w {
            Which::List(l) => self.lists[l].as_ref(),
            Which::Rules => self.rules.as_ref(),
        }
    }

    /// Marks `layers` changed (after the shelf recorded the version in
    /// force with sequence `seq`), offering a list already built; then
    /// raises the sequence the publisher reads, so a snapshot named with
    /// it holds the change.
    pub fn changed_now(
        &self,
        seq: u64,
        layers: Layers,
        offer: Option<(ListId, u64, Arc<NumberList>, [u8; 16])>,
    ) {
        if let Some((l, version, list, digest)) = offer {
            *lock(&self.offers[l]) = Some(Offer {
                version,
                list,
                digest,
            });
        }
        self.changed.fetch_or(layers.bits(), Ordering::AcqRel);
        self.seq.fetch_max(seq, Ordering::AcqRel);
    }
}

/// Locks a mutex, taking it back from a panicked holder (its data is
/// plain and whole between statements).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Source for PublishedSource {
    fn name(&self) -> &str {
        "published"
    }

    fn layers(&self) -> Layers {
        self.layers
    }

    fn changed(&self) -> Layers {
        Layers::from_bits(self.changed.swap(0, Ordering::AcqRel))
    }

    fn sequence(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    fn prebuilt(&self, l: ListId) -> Option<(Arc<NumberList>, [u8; 16])> {
        let active = lock(self.lists[l].as_ref()?).index.active;
        let offer = lock(&self.offers[l]).take()?;
        (Some(offer.version) == active).then_some((offer.list, offer.digest))
    }

    fn feed(&self, l: ListId, into: &mut Feed<'_, '_>) -> Result<(), LoadError> {
        let Some(shelf) = &self.lists[l] else {
            return Ok(());
        };
        let (file, name, lines) = {
            let s = lock(shelf);
            let Some(m) = s.index.active_meta() else {
                // Nothing published yet: the list is empty.
                return Ok(());
            };
            let f = s.open_content(&m.digest).map_err(LoadError::Crashed)?;
            (f, format!("{} {}", l.name(), m.name()), m.lines)
        };
        into.reserve(lines as usize);
        into.lines(BufReader::with_capacity(1 << 20, file), &name)?;
        into.note(name, into.entries());
        Ok(())
    }

    fn rules(&self) -> Result<Option<RulesText>, LoadError> {
        let Some(shelf) = &self.rules else {
            return Ok(None);
        };
        let s = lock(shelf);
        let Some(m) = s.index.active_meta() else {
            return Ok(None);
        };
        let bytes = s.read(&m.digest, MAX_RULES).map_err(LoadError::Crashed)?;
        let text = String::from_utf8(bytes)
            .map_err(|_| LoadError::Crashed(format!("rules {}: not UTF-8", m.name())))?;
        Ok(Some(RulesText {
            name: format!("published rules {} ({})", m.name(), m.name),
            text,
        }))
    }
}
