//! The journal's two Parquet schemas, `calls` and `outcomes`: the columns
//! analysts query (README "The call journal" shows them from DuckDB) and
//! the replay reads. Numbers are E.164 text for people and their packed
//! key (`*_key`) for an exact replay; times are UTC timestamps in µs.
//! A column is only ever added at the end, nullable, so older files stay
//! readable.

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// The schema version written in each file's metadata (`kuzet.journal`).
pub const VERSION: &str = "1";

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn list_of_text() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
}

/// One row per scored call.
pub fn calls() -> SchemaRef {
    let text = |n: &str, null| Field::new(n, DataType::Utf8, null);
    let key = |n: &str| Field::new(n, DataType::UInt64, true);
    Arc::new(Schema::new(vec![
        Field::new("seq", DataType::UInt64, false),
        Field::new("ts", ts(), false),
        Field::new("secs", DataType::UInt32, false),
        Field::new("hour", DataType::UInt8, false),
        Field::new("weekday", DataType::UInt8, false),
        text("node", false),
        text("trunk", true),
        text("trunk_kind", true),
        text("source", false),
        text("caller", true),
        key("caller_key"),
        text("from_number", true),
        key("from_key"),
        text("pai", true),
        key("pai_key"),
        text("display_number", true),
        key("display_key"),
        Field::new("a_present", DataType::Boolean, false),
        text("callee", true),
        key("callee_key"),
        text("caller_trust", false),
        Field::new("digest", DataType::UInt64, false),
        text("decision", false),
        text("shadow_decision", false),
        Field::new("score", DataType::UInt32, false),
        Field::new("allowlisted", DataType::Boolean, false),
        Field::new("fired", list_of_text(), false),
        Field::new("fired_shadow", list_of_text(), false),
        text("version", false),
    ]))
}

/// One row per outcome applied.
pub fn outcomes() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("seq", DataType::UInt64, false),
        Field::new("ts", ts(), false),
        Field::new("secs", DataType::UInt32, false),
        Field::new("node", DataType::Utf8, false),
        Field::new("caller", DataType::Utf8, false),
        Field::new("caller_key", DataType::UInt64, false),
        Field::new("callee", DataType::Utf8, true),
        Field::new("callee_key", DataType::UInt64, true),
        Field::new("outcome", DataType::Utf8, false),
        Field::new("ms", DataType::UInt32, false),
        Field::new("via", DataType::Utf8, false),
        Field::new("known", DataType::Boolean, false),
    ]))
}

/// The two kinds of file, by folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `calls/`.
    Calls,
    /// `outcomes/`.
    Outcomes,
}

impl Kind {
    /// The folder's name.
    pub fn dir(self) -> &'static str {
        match self {
            Kind::Calls => "calls",
            Kind::Outcomes => "outcomes",
        }
    }

    /// Its schema.
    pub fn schema(self) -> SchemaRef {
        match self {
            Kind::Calls => calls(),
            Kind::Outcomes => outcomes(),
        }
    }
}
