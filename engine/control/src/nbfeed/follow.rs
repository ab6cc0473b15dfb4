//! The feed on a node that does not lead it. With a store every node
//! shares, one node (the holder of the `nbank-feed` lease) pulls the
//! feed and keeps each batch in the store; every other node must still
//! enforce it, so each keeps its own layer in step with the store: once a
//! second it reads the store's `batches` cursor and, when that moved,
//! brings the layer to it ([`catch_up`]) and wakes the publisher. A
//! follower is at most about a second (and a reload) behind the leader.
//!
//! The leader uses the same [`catch_up`] when its lead begins (its layer
//! may be a second behind the store) and when the store says a batch it
//! fetched does not follow what it holds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kuzet_dataplane::metrics::Gauge;
use tokio::sync::watch;

use super::pull::{Puller, Quiet};

/// How often a follower reads the store's cursor.
pub const FOLLOW_EVERY: Duration = Duration::from_secs(1);

/// Keeps `p`'s layer in step with the store until `shutdown`.
pub async fn run(p: Arc<Puller>, mut shutdown: watch::Receiver<bool>) {
    p.metrics.set(Gauge::NbankOn, 1);
    let mut quiet = Quiet::default();
    loop {
        if let Err(e) = catch_up(&p).await {
            if let Some(held) = quiet.pass() {
                tracing::warn!(error = %e, held_back = held, "reading the National Bank feed from the shared store failed; the layer in force stays");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_EVERY) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Brings `p`'s layer to the batch the store holds, if it differs, and
/// wakes the publisher; returns the batch the layer then reflects when it
/// changed.
///
/// This is the one place a node reads the feed back from the store, and
/// today it reloads the layer whole ([`kuzet_store::Centre::feed_load`]
/// into [`super::layer::FeedLayer::reload`]): seconds for ten million
/// entries, and twice the layer's memory while it swaps. A store that
/// keeps the changes each batch made can hand over the changes after the
/// layer's cursor here instead, applied in order with
/// [`super::layer::FeedLayer::apply`]; nothing else would change.
pub async fn catch_up(p: &Puller) -> Result<Option<u64>, String> {
    let st = p.store.clone();
    let stored = tokio::task::spawn_blocking(move || st.cursor("batches"))
        .await
        .map_err(|e| format!("reading the feed's cursor crashed: {e}"))?
        .map_err(|e| e.to_string())?;
    let had = p.layer.cursor();
    if stored == had {
        return Ok(None);
    }
    let (st, layer) = (p.store.clone(), p.layer.clone());
    let t = Instant::now();
    let swapped = tokio::task::spawn_blocking(move || {
        let now_s = layer.now();
        layer.reload(|each| st.feed_load(now_s, each))
    })
    .await
    .map_err(|e| format!("reloading the feed's layer crashed: {e}"))?
    .map_err(|e| e.to_string())?;
    let Some((entries, skipped)) = swapped else {
        return Ok(None);
    };
    let now = p.layer.cursor();
    p.metrics.set(Gauge::NbankSeq, now as i64);
    p.nudge.notify_one();
    tracing::info!(
        from = had,
        to = now,
        entries,
        elapsed_ms = t.elapsed().as_millis() as u64,
        "National Bank feed layer brought to the shared store's batch"
    );
    if skipped > 0 {
        tracing::warn!(
            skipped,
            "National Bank feed entries the numbering plan does not read were left out"
        );
    }
    Ok(Some(now))
}
