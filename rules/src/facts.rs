//! Small facts about a call that scoring reads: the kind of trunk it came
//! in on, and which side of it (caller or callee) a number is.

/// The kind of interconnect a call arrived on; from the engine's trunk map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TrunkKind {
    /// International gateway.
    International,
    /// Another domestic operator.
    Domestic,
    /// The operator's own mobile network.
    Mobile,
    /// Any other named kind (enterprise PBX, test...).
    Other,
}

impl TrunkKind {
    /// Every kind, in the order configs list them.
    pub const ALL: [TrunkKind; 4] = [
        TrunkKind::International,
        TrunkKind::Domestic,
        TrunkKind::Mobile,
        TrunkKind::Other,
    ];

    /// The name configs, rule scopes and scenarios use.
    pub fn as_str(self) -> &'static str {
        match self {
            TrunkKind::International => "international",
            TrunkKind::Domestic => "domestic",
            TrunkKind::Mobile => "mobile",
            TrunkKind::Other => "other",
        }
    }

    /// The kind with this name (`international`, `domestic`, `mobile`,
    /// `other`): the one parser every config, rule file and scenario uses.
    pub fn from_name(name: &str) -> Option<TrunkKind> {
        TrunkKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// Which side of the call a list entry matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The A-number (calling party).
    Caller,
    /// The B-number (called party).
    Callee,
}

impl Side {
    /// `caller` or `callee`.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Caller => "caller",
            Side::Callee => "callee",
        }
    }
}

/// Which numbers a list is checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sides {
    /// Check the A-number.
    pub caller: bool,
    /// Check the B-number.
    pub callee: bool,
}

impl Sides {
    /// Both numbers.
    pub const BOTH: Sides = Sides {
        caller: true,
        callee: true,
    };

    /// `caller`, `callee` or `both`: the one parser configs and rule files
    /// use.
    pub fn from_name(name: &str) -> Option<Sides> {
        Some(match name {
            "caller" => Sides {
                caller: true,
                callee: false,
            },
            "callee" => Sides {
                caller: false,
                callee: true,
            },
            "both" => Sides::BOTH,
            _ => return None,
        })
    }
}

/// Which number of a call a rule looked at: a side for list rules, a
/// claimed identity for the caller-ID rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Who {
    /// The A-number scoring uses.
    Caller,
    /// The B-number.
    Callee,
    /// The number in From.
    From,
    /// The number in P-Asserted-Identity.
    Pai,
    /// The digits of a display name.
    Display,
}

impl Who {
    /// How explanations name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Who::Caller => "caller",
            Who::Callee => "callee",
            Who::From => "From",
            Who::Pai => "PAI",
            Who::Display => "display name",
        }
    }
}

impl From<Side> for Who {
    fn from(s: Side) -> Who {
        match s {
            Side::Caller => Who::Caller,
            Side::Callee => Who::Callee,
        }
    }
}
