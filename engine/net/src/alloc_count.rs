//! A counting global allocator, for tests that prove a code path
//! allocates nothing: [`CountingAlloc`] hands every request to
//! [`std::alloc::System`] unchanged and counts it, per thread, so a test
//! measures only the threads that run the path under test (the harness,
//! a client thread or a recorder elsewhere in the same binary do not
//! count against it).
//!
//! It lives here because installing a global allocator takes an `unsafe
//! impl`, and this is the one crate allowed `unsafe`: a test root stays
//! `#![forbid(unsafe_code)]` and only declares
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOC: kuzet_net::alloc_count::CountingAlloc = kuzet_net::alloc_count::CountingAlloc;
//! ```
//!
//! Two ways to read the counts:
//! - [`this_thread`]: what the calling thread has allocated so far; take
//!   it before and after a call and subtract ([`Allocations::since`]).
//! - [`watched`]: what every thread that called [`watch_this_thread`] has
//!   allocated so far, for a thread the test cannot run code on between
//!   calls (a worker blocked in `recvmmsg`).
//!
//! What counts is every allocation, zeroed allocation and reallocation
//! (a `Vec` that grows is an allocation); frees do not. Nothing is counted
//! unless the binary installed [`CountingAlloc`]: [`installed`] says
//! whether it did, so a test can refuse to pass on counts that were never
//! kept. Kuzet itself never installs it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The counting allocator: [`System`], counted per thread.
pub struct CountingAlloc;

/// Allocations counted: how many, and how many bytes they asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Allocations {
    /// Allocations, zeroed allocations and reallocations.
    pub count: u64,
    /// Bytes asked for (a reallocation counts its new size).
    pub bytes: u64,
}

impl Allocations {
    /// What was counted between `earlier` and `self`.
    #[must_use]
    pub fn since(self, earlier: Allocations) -> Allocations {
        Allocations {
            count: self.count.wrapping_sub(earlier.count),
            bytes: self.bytes.wrapping_sub(earlier.bytes),
        }
    }

    /// Adds another count to this one.
    pub fn add(&mut self, other: Allocations) {
        self.count = self.count.wrapping_add(other.count);
        self.bytes = self.bytes.wrapping_add(other.bytes);
    }
}

thread_local! {
    // Const-initialized, with no destructor: reading or writing them never
    // allocates and never registers anything, so the allocator can use them.
    static COUNT: Cell<u64> = const { Cell::new(0) };
    static BYTES: Cell<u64> = const { Cell::new(0) };
    static WATCHED: Cell<bool> = const { Cell::new(false) };
}

static WATCHED_COUNT: AtomicU64 = AtomicU64::new(0);
static WATCHED_BYTES: AtomicU64 = AtomicU64::new(0);
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Counts one allocation of `bytes` on the calling thread. A thread being
/// torn down (its locals gone) is not counted.
#[inline]
fn count(bytes: usize) {
    let bytes = bytes as u64;
    let _ = COUNT.try_with(|c| c.set(c.get().wrapping_add(1)));
    let _ = BYTES.try_with(|b| b.set(b.get().wrapping_add(bytes)));
    if WATCHED.try_with(Cell::get).unwrap_or(false) {
        WATCHED_COUNT.fetch_add(1, Ordering::Relaxed);
        WATCHED_BYTES.fetch_add(bytes, Ordering::Relaxed);
    }
    if !INSTALLED.load(Ordering::Relaxed) {
        INSTALLED.store(true, Ordering::Relaxed);
    }
}

// SAFETY: every method hands its arguments to `System` unchanged and
// returns what `System` returned, so each keeps `System`'s guarantees
// (GlobalAlloc's contract); the counting beside it touches only
// thread-local cells and atomics, never the memory handed out, and
// allocates nothing itself.
unsafe impl GlobalAlloc for CountingAlloc {
    // SAFETY: the caller keeps `alloc`'s contract (a non-zero size);
    // `System` is called with the same layout.
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc(layout) }
    }

    // SAFETY: as `alloc`.
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    // SAFETY: the caller passes a pointer this allocator (so `System`)
    // handed out, with the layout it was made with.
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    // SAFETY: the caller passes a pointer `System` handed out, its layout,
    // and a valid new size.
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// What the calling thread has allocated since it started.
pub fn this_thread() -> Allocations {
    Allocations {
        count: COUNT.try_with(Cell::get).unwrap_or(0),
        bytes: BYTES.try_with(Cell::get).unwrap_or(0),
    }
}

/// From now on, the calling thread's allocations also add to [`watched`].
pub fn watch_this_thread() {
    let _ = WATCHED.try_with(|w| w.set(true));
}

/// What every watched thread has allocated since it called
/// [`watch_this_thread`].
pub fn watched() -> Allocations {
    Allocations {
        count: WATCHED_COUNT.load(Ordering::Relaxed),
        bytes: WATCHED_BYTES.load(Ordering::Relaxed),
    }
}

/// Whether [`CountingAlloc`] is this binary's global allocator (it has
/// counted at least one allocation). Without it every count stays 0.
pub fn installed() -> bool {
    INSTALLED.load(Ordering::Relaxed)
}
