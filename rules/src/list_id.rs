//! Which list: one [`ListId`] value per list kind, declared once.
//!
//! Every list kuzet knows is one line of the [`lists!`] table below: its
//! variant, the name config keys, rule files, metrics and records use, and
//! what it holds. Everything that walks the lists (the snapshot's layers,
//! the config's `[lists]` keys, the gauges, the publisher's sources) does
//! so through [`ListId::ALL`] and [`ByList`], so adding a list is that one
//! line (plus the rule that reads it, if any).

use std::ops::{Index, IndexMut};

macro_rules! lists {
    ($($(#[$doc:meta])* $variant:ident => $name:literal, $about:literal;)+) => {
        /// One list kind (see the module docs).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum ListId {
            $($(#[$doc])* $variant,)+
        }

        impl ListId {
            /// Every list, in declaration order (the order of layers in a
            /// snapshot and in its version digest).
            pub const ALL: [ListId; ListId::COUNT] = [$(ListId::$variant,)+];

            /// How many lists there are.
            pub const COUNT: usize = [$($name,)+].len();

            /// Every list's name, in [`ListId::ALL`] order.
            pub const NAMES: [&'static str; ListId::COUNT] = [$($name,)+];

            /// The list's name: its `[lists]` key, its name in rule files,
            /// metrics and records.
            pub const fn name(self) -> &'static str {
                match self {
                    $(ListId::$variant => $name,)+
                }
            }

            /// One line on what the list holds, for `--help` and errors.
            pub const fn about(self) -> &'static str {
                match self {
                    $(ListId::$variant => $about,)+
                }
            }
        }
    };
}

lists! {
    /// Numbers whose calls are blocked.
    Block => "blocklist", "numbers whose calls are blocked";
    /// Numbers exempt from the list and behaviour rules.
    Allow => "allowlist", "numbers exempt from the list and behaviour rules";
    /// Numbers whose calls are let through but flagged.
    Flag => "flaglist", "numbers whose calls are let through but flagged";
    /// Protected (do-not-originate) numbers, read by `protected_caller`.
    Protected => "protected", "protected (do-not-originate) numbers: a call claiming one is spoofed";
    /// Premium-rate and IRSF destinations, callee side.
    Premium => "premium", "premium-rate and IRSF destinations";
    /// The operator's own subscribers roaming abroad now.
    Roamers => "roamers", "the operator's own subscribers roaming abroad now (their domestic caller ID on an international trunk is genuine)";
    /// The National Bank Anti-Fraud Centre's fraud numbers: its signed
    /// feed (`[nbank]`), and any file an operator still exports it to.
    NbFeed => "nb_feed", "the National Bank Anti-Fraud Centre's fraud numbers (its signed feed, [nbank]); scored like the blocklist";
}

impl ListId {
    /// The list with this name, if there is one.
    pub fn from_name(name: &str) -> Option<ListId> {
        ListId::ALL.into_iter().find(|l| l.name() == name)
    }

    /// Every list's name, comma separated, for error messages.
    pub fn names() -> String {
        ListId::ALL.map(ListId::name).join(", ")
    }

    /// Alias of [`ListId::name`].
    pub const fn as_str(self) -> &'static str {
        self.name()
    }

    /// The list's position in [`ListId::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl<'de> serde::Deserialize<'de> for ListId {
    /// A list's name; any other is refused naming the lists there are.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        ListId::from_name(&name)
            .ok_or_else(|| serde::de::Error::unknown_variant(&name, &ListId::NAMES))
    }
}

impl std::fmt::Display for ListId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One `T` per list, indexed by [`ListId`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ByList<T>(pub [T; ListId::COUNT]);

impl<T> ByList<T> {
    /// A value per list, made by `f`.
    pub fn from_fn(mut f: impl FnMut(ListId) -> T) -> Self {
        ByList(ListId::ALL.map(&mut f))
    }

    /// Each list with its value, in [`ListId::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (ListId, &T)> {
        ListId::ALL.into_iter().zip(self.0.iter())
    }

    /// Each list with its value, mutably.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (ListId, &mut T)> {
        ListId::ALL.into_iter().zip(self.0.iter_mut())
    }

    /// A value per list computed from this one's.
    pub fn map<'s, U>(&'s self, mut f: impl FnMut(ListId, &'s T) -> U) -> ByList<U> {
        ByList::from_fn(|l| f(l, &self[l]))
    }
}

impl<T> Index<ListId> for ByList<T> {
    type Output = T;
    #[inline]
    fn index(&self, l: ListId) -> &T {
        // `l as usize` < COUNT by construction: the array has one slot
        // per variant.
        &self.0[l as usize]
    }
}

impl<T> IndexMut<ListId> for ByList<T> {
    #[inline]
    fn index_mut(&mut self, l: ListId) -> &mut T {
        &mut self.0[l as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_index_in_order() {
        for (i, l) in ListId::ALL.into_iter().enumerate() {
            assert_eq!(ListId::from_name(l.name()), Some(l));
            assert_eq!(l.index(), i);
            assert!(!l.about().is_empty());
        }
        assert_eq!(ListId::from_name("blocklists"), None);
        let mut by = ByList::from_fn(|l| l.name().len());
        by[ListId::Roamers] = 0;
        assert_eq!(by[ListId::Block], "blocklist".len());
        assert_eq!(by.iter().filter(|(_, n)| **n == 0).count(), 1);
        assert!(ListId::names().starts_with("blocklist, allowlist"));
    }
}
