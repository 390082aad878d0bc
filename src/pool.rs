//! The arena service for servers: [`ArenaPool`], its background trimmer, and [`PoolStats`].
//!
//! A server's worker threads each check out a [`Region`] for a request, build the request's
//! structures in it, and give it back; giving it back resets the region in O(1) (its pages stay
//! committed, so the next request does not fault them in again). Regions are created on demand up
//! to [`PoolConfig::max_regions`]; past that a checkout waits (with a timeout) or fails, as
//! [`PoolConfig::on_exhausted`] says. A background thread gives committed memory of regions that
//! stayed idle longer than [`PoolConfig::idle_trim_delay`] back to the OS, down to
//! [`PoolConfig::retained_bytes_per_region`].
//!
//! ```
//! use core::alloc::Layout;
//! use napalloc::pool::ArenaPool;
//!
//! let pool = ArenaPool::builder().max_regions(4).build()?;
//! {
//!     let region = pool.checkout()?; // lock-free: a pop from the idle queue
//!     let soh = region.alloc(Layout::from_size_align(16, 8)?)?;
//!     let attrs = region.alloc_child(soh, Layout::from_size_align(160, 8)?)?;
//!     assert!(region.owns(attrs));
//! } // dropped: reset in O(1) and pushed back to the idle queue
//! let stats = pool.stats();
//! assert_eq!((stats.checkouts, stats.live_regions), (1, 1));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # The ownership protocol
//! A region lives in a heap-allocated *slot* (`Box<Slot>`: the region plus the figures last
//! reported for it). At any moment a slot is owned by exactly one of:
//!
//! 1. the idle queue (a `crossbeam_queue::ArrayQueue<Box<Slot>>` with room for every region),
//! 2. one [`PooledRegion`] guard (a checkout popped it), or
//! 3. one trimmer (the background thread or a caller of [`ArenaPool::trim_idle`]) that popped it
//!    to trim it and will push it back.
//!
//! Moving between owners is a move of the `Box` through the queue's `pop` (acquire) and `push`
//! (release), so everything the previous owner wrote is visible to the next. No region is ever
//! shared: a checkout cannot race a trim, and two threads cannot hold one region, because the
//! queue hands each `Box` to exactly one `pop`. The trimmer only ever trims what it popped, that
//! is, regions that are idle in the pool; nothing on the request path decommits.
//!
//! A trimmer holds a popped slot for as long as it takes to look at it (tens of nanoseconds) or
//! to trim it (one `madvise`/`VirtualFree` call, about 0.1 µs per page given back). A checkout
//! that finds the queue empty first backs off briefly (a slot may be in a trimmer's hands for a
//! moment), then creates a region if the pool is below its maximum, then waits or fails.
//!
//! # Waiting
//! Waiting is the cold path: a short spin with `crossbeam_utils::Backoff`, then parking on a
//! condition variable until a slot is pushed back or the timeout passes. A returning worker takes
//! the lock only when the `waiters` count says someone parks (it is read after a `SeqCst` fence
//! that follows the push, and the waiter raises it before its last look at the queue, so a push
//! and a park cannot miss each other).
//!
//! # The trimmer
//! One thread per pool, fed by a `crossbeam_channel` of [`TrimMsg`]s. A worker that returns a
//! region whose committed memory exceeds the retained size sends `Returned { region_id, at }`
//! (once: the slot remembers that it was announced, until a trim brings it under the retained
//! size); a region at or under the retained size sends nothing, so a steady-state request costs
//! no channel traffic. The thread sleeps (`select!` on the channel and an `after` timer) until
//! the earliest `at + idle_trim_delay`, then makes one *pass*: it pops each idle slot once, trims
//! those idle for at least the delay down to the retained size, and pushes every slot back. A
//! slot that is checked out during a pass is looked at again one delay later (and announced again
//! when it is returned, if it is still above the retained size). `TrimNow` makes a pass at once
//! that ignores the delay; `Shutdown` (sent when the pool is dropped) ends the thread, which the
//! pool joins.
//!
//! ## The delay: 1 second by default
//! mimalloc purges freed pages after about 10 ms. Our unit of trimming is different: the excess
//! of a whole region over its retained size, typically megabytes, left by a burst of large
//! requests. Giving a page back costs ≈0.1 µs and faulting it in again ≈1.3 µs, so a server whose
//! bursts come back every `d` seconds pays `≈1.4 µs × pages / d` per region for trimming between
//! them: with `d` = 10 ms that is ≈3.6 % of a core per MiB of excess; with 1 s it is ≈0.04 %, which
//! no server notices. Memory pressure does not wait for the delay: a budget calls
//! [`ArenaPool::trim_idle`] synchronously, and [`ArenaPool::trim_now`] is there for
//! `HeapMinimize`. So the timer only has to give memory back *eventually*, and a second is soon
//! enough for an operator and cheap enough for the server.
//!
//! # Statistics
//! Per pool ([`ArenaPool::stats`]) and over all pools of the process ([`PoolStats::global`]).
//! Counters that change on every request (checkouts, returns) live in per-slot atomics written
//! only by the slot's current owner, so the request path touches no shared counter line; every
//! other figure changes only on rare events (a region created, a figure that changed at return,
//! a trim, a failure) and lives in shared atomics. Byte figures are "as reported at return":
//! `live_bytes` is what the returned regions still held when they were handed back (released by
//! the reset), `committed` is their committed memory at return or after a trim.

use crate::host::{Budget, CriticalLevel, Source};
use crate::region::{Region, RegionBuilder, Scrub};
use crate::Error;
use core::alloc::Layout;
use core::fmt;
use core::mem::ManuallyDrop;
use core::ops::{Deref, DerefMut};
use core::ptr::NonNull;
use core::sync::atomic::{fence, AtomicU64, AtomicUsize, Ordering};
use core::time::Duration;
use crossbeam_channel::{after, never, select, Receiver, Sender};
use crossbeam_queue::ArrayQueue;
use crossbeam_utils::{Backoff, CachePadded};
use std::collections::HashSet;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Instant;

/// What a checkout does when every region is checked out and the pool is at its maximum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnExhausted {
    /// Wait for a region to come back, at most this long, then fail.
    Wait(Duration),
    /// Fail at once.
    Fail,
}

/// Configuration of an [`ArenaPool`]. [`PoolConfig::default`] gives sensible server values;
/// [`ArenaPool::builder`] sets fields one by one.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Regions the pool creates at most (on demand). Default: 4 per available core, at least 4.
    pub max_regions: usize,
    /// Address space each region reserves for tracked blocks (no memory is committed until
    /// used). Default: 1 GiB.
    pub region_reserve: usize,
    /// Committed bytes an idle region keeps after a trim: its steady-state working set, so that
    /// the next request faults nothing in. Default: 1 MiB.
    pub retained_bytes_per_region: usize,
    /// How long a region stays idle before the trimmer gives its excess back. Default: 1 s (see
    /// the module docs for why).
    pub idle_trim_delay: Duration,
    /// Wait (with a timeout) or fail when the pool is exhausted. Default: wait up to 1 s.
    pub on_exhausted: OnExhausted,
    /// Zero freed memory (so one request's data cannot reach the next). Default: off.
    pub scrub: Scrub,
    /// Critical level of the regions' commits, and the level their failures are counted under.
    /// Default: `Task`.
    pub critical_level: CriticalLevel,
    /// Where the regions take their pages, and the budget they are charged to. Default:
    /// [`host::default_source`](crate::host::default_source) at the time the configuration is
    /// made: the host installed with `NapallocSetHostMemoryManager` (else the OS), charged to the
    /// process-wide budget, whose default trimmer trims this pool's idle regions (see
    /// [`trim_idle_pools`]).
    pub source: Source,
    /// Committed bytes one region's tracked blocks may use at most. Default: no limit.
    pub region_limit: usize,
}

/// One second: see the module docs.
pub const DEFAULT_IDLE_TRIM_DELAY: Duration = Duration::from_secs(1);
/// 1 MiB.
pub const DEFAULT_RETAINED_BYTES_PER_REGION: usize = 1 << 20;
/// 1 GiB of address space.
pub const DEFAULT_REGION_RESERVE: usize = 1 << 30;

impl Default for PoolConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        PoolConfig {
            max_regions: (4 * cores).max(4),
            region_reserve: if cfg!(miri) { 1 << 20 } else { DEFAULT_REGION_RESERVE },
            retained_bytes_per_region: DEFAULT_RETAINED_BYTES_PER_REGION,
            idle_trim_delay: DEFAULT_IDLE_TRIM_DELAY,
            on_exhausted: OnExhausted::Wait(Duration::from_secs(1)),
            scrub: Scrub::default(),
            critical_level: CriticalLevel::Task,
            source: crate::host::default_source(),
            region_limit: usize::MAX,
        }
    }
}

/// Builder for [`ArenaPool`] (see [`PoolConfig`] for every field's meaning and default).
#[derive(Clone, Debug, Default)]
pub struct PoolBuilder {
    config: PoolConfig,
}

impl PoolBuilder {
    /// Regions created at most.
    pub fn max_regions(mut self, n: usize) -> Self {
        self.config.max_regions = n;
        self
    }
    /// Address space per region.
    pub fn region_reserve(mut self, bytes: usize) -> Self {
        self.config.region_reserve = bytes;
        self
    }
    /// Committed bytes an idle region keeps after a trim.
    pub fn retained_bytes_per_region(mut self, bytes: usize) -> Self {
        self.config.retained_bytes_per_region = bytes;
        self
    }
    /// Idle time before a region is trimmed.
    pub fn idle_trim_delay(mut self, delay: Duration) -> Self {
        self.config.idle_trim_delay = delay;
        self
    }
    /// Wait or fail when exhausted.
    pub fn on_exhausted(mut self, what: OnExhausted) -> Self {
        self.config.on_exhausted = what;
        self
    }
    /// Zero freed memory.
    pub fn scrub(mut self, scrub: Scrub) -> Self {
        self.config.scrub = scrub;
        self
    }
    /// Critical level of the regions.
    pub fn critical_level(mut self, level: CriticalLevel) -> Self {
        self.config.critical_level = level;
        self
    }
    /// Page source of the regions.
    pub fn source(mut self, source: Source) -> Self {
        self.config.source = source;
        self
    }
    /// Limit on one region's committed block memory.
    pub fn region_limit(mut self, bytes: usize) -> Self {
        self.config.region_limit = bytes;
        self
    }
    /// The configuration so far.
    pub fn config(&self) -> &PoolConfig {
        &self.config
    }
    /// Start the pool (and its trimmer thread). No region is created yet.
    pub fn build(self) -> Result<ArenaPool, Error> {
        ArenaPool::new(self.config)
    }
}

/// A message to a pool's trimmer thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrimMsg {
    /// A region above its retained size went back to the idle queue at `at`.
    Returned { region_id: u32, at: Instant },
    /// Trim every idle region down to the retained size now, whatever its idle time.
    TrimNow,
    /// Stop the thread (sent when the pool is dropped).
    Shutdown,
}

/// A region and the figures last reported for it. Owned by exactly one of the idle queue, a
/// guard or a trimmer (see the module docs).
struct Slot {
    region: Region,
    /// Index into `Shared::meta`; unique among the pool's live regions.
    id: u32,
    /// When the region was last returned (meaningful while `announced`).
    idle_since: Instant,
    /// Committed bytes as last reported to the pool's `committed` gauge.
    committed: usize,
    /// Live bytes as last reported to the pool's `live_bytes` gauge.
    live_bytes: usize,
    /// The region's `bad_pointers` counter as last added to the pool's.
    bad_pointers: u64,
    /// A `Returned` message was sent and no trim has brought the region under the retained size
    /// since.
    announced: bool,
}

/// Per-slot request counters. Each is written only by the current owner of slot `id` (so a
/// plain load and store, no read-modify-write, is enough; ownership passes with release/acquire
/// through the idle queue) and read by anyone computing statistics.
#[derive(Default)]
struct SlotMeta {
    /// Checkouts of this slot's region since the pool started. Written at checkout.
    checkouts: AtomicU64,
    /// Returns of this slot's region. Written at return; `checkouts - returns` is 1 while the
    /// region is checked out, else 0.
    returns: AtomicU64,
}

/// Counters of rare events, shared by all threads (one set per pool, one process-wide set).
#[derive(Default)]
struct Counters {
    /// Regions that exist. Raised (compare-exchange, acquire, never above `max_regions`) by the
    /// thread that creates a region; lowered (release, after its id went back to `free_ids`) if
    /// creation fails and when the pool is dropped.
    live_regions: AtomicU64,
    /// Largest `live_regions` seen (`fetch_max` by the creating thread).
    peak_regions: AtomicU64,
    /// Sum over regions of the live bytes they held when last returned. Adjusted by the returning
    /// thread by the change since the slot's previous report.
    live_bytes: AtomicU64,
    /// Largest `live_bytes` seen (`fetch_max` after each raise).
    peak_live_bytes: AtomicU64,
    /// Sum over regions of their committed bytes, as last reported (at creation, at return, after
    /// a trim). Adjusted by whoever owns the slot then.
    committed: AtomicU64,
    /// Largest `committed` seen.
    peak_committed: AtomicU64,
    /// Sum over pools of `retained_bytes_per_region × live_regions`: where an idle trim brings
    /// `committed` back to. Adjusted with `live_regions`.
    retained: AtomicU64,
    /// Trims that gave memory back. Incremented by the trimming thread.
    trims: AtomicU64,
    /// Bytes given back by trims. Added by the trimming thread.
    trimmed_bytes: AtomicU64,
    /// Failed checkouts and failed allocations through a guard, indexed by `CriticalLevel as
    /// usize`. Incremented by the failing thread.
    failures: [AtomicU64; 3],
    /// Bad pointers the regions refused, added at return from the region's own counter.
    bad_pointers: AtomicU64,
    /// Checkouts that found every region out and the pool at its maximum. Incremented by that
    /// checkout, whether it then waits or fails.
    exhausted: AtomicU64,
    /// Checkouts of pools that were dropped (only in the process-wide set). Added at drop.
    retired_checkouts: AtomicU64,
    /// Returns of pools that were dropped (only in the process-wide set). Added at drop.
    retired_returns: AtomicU64,
}

impl Counters {
    const fn new() -> Counters {
        Counters {
            live_regions: AtomicU64::new(0),
            peak_regions: AtomicU64::new(0),
            live_bytes: AtomicU64::new(0),
            peak_live_bytes: AtomicU64::new(0),
            committed: AtomicU64::new(0),
            peak_committed: AtomicU64::new(0),
            retained: AtomicU64::new(0),
            trims: AtomicU64::new(0),
            trimmed_bytes: AtomicU64::new(0),
            failures: [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)],
            bad_pointers: AtomicU64::new(0),
            exhausted: AtomicU64::new(0),
            retired_checkouts: AtomicU64::new(0),
            retired_returns: AtomicU64::new(0),
        }
    }
}

/// Add a signed change to a gauge and raise its peak.
fn adjust(gauge: &AtomicU64, peak: Option<&AtomicU64>, before: usize, after: usize) {
    if after > before {
        let now = gauge.fetch_add((after - before) as u64, Ordering::Relaxed) + (after - before) as u64;
        if let Some(p) = peak {
            p.fetch_max(now, Ordering::Relaxed);
        }
    } else if before > after {
        gauge.fetch_sub((before - after) as u64, Ordering::Relaxed);
    }
}

/// The process-wide counters.
static GLOBAL: Counters = Counters::new();
/// Every live pool, for the process-wide checkout count and [`trim_idle_pools`]. Locked only to
/// register a pool (pruning dropped ones) and to copy out the live pools; never held while a pool
/// is trimmed, a region is touched or a hook is called.
static POOLS: Mutex<Vec<Weak<Shared>>> = Mutex::new(Vec::new());

/// The state shared by a pool, its guards and its trimmer thread.
struct Shared {
    config: PoolConfig,
    /// Idle regions. Capacity `max_regions`, so a push never finds it full.
    idle: ArrayQueue<Box<Slot>>,
    /// Unused slot ids. A creating thread pops one after raising `live_regions`; a failed
    /// creation pushes it back.
    free_ids: ArrayQueue<u32>,
    /// Indexed by slot id.
    meta: Box<[CachePadded<SlotMeta>]>,
    counters: CachePadded<Counters>,
    /// Slots popped by a trimmer and not yet pushed back. Raised and lowered by the trimmer;
    /// read by a checkout that finds the queue empty (it then backs off before creating).
    in_trim: AtomicUsize,
    /// Threads parked in a checkout. Raised and lowered by the waiting thread (under `lock`);
    /// read by every returning thread after its push (a `SeqCst` fence between).
    waiters: AtomicUsize,
    lock: Mutex<()>,
    cv: Condvar,
    tx: Sender<TrimMsg>,
}

impl Shared {
    #[inline]
    fn fail(&self, e: Error) -> Error {
        let l = self.config.critical_level as usize;
        self.counters.failures[l].fetch_add(1, Ordering::Relaxed);
        GLOBAL.failures[l].fetch_add(1, Ordering::Relaxed);
        e
    }

    fn set_committed(&self, slot: &mut Slot, now: usize) {
        adjust(&self.counters.committed, Some(&self.counters.peak_committed), slot.committed, now);
        adjust(&GLOBAL.committed, Some(&GLOBAL.peak_committed), slot.committed, now);
        slot.committed = now;
    }

    fn set_live_bytes(&self, slot: &mut Slot, now: usize) {
        adjust(&self.counters.live_bytes, Some(&self.counters.peak_live_bytes), slot.live_bytes, now);
        adjust(&GLOBAL.live_bytes, Some(&GLOBAL.peak_live_bytes), slot.live_bytes, now);
        slot.live_bytes = now;
    }

    /// Push an idle slot and wake a parked checkout, if any.
    fn push_idle(&self, slot: Box<Slot>) {
        if let Err(slot) = self.idle.push(slot) {
            // Impossible: the queue has room for every region. Keep the books right anyway.
            debug_assert!(false, "idle queue full");
            self.destroy(*slot);
            return;
        }
        fence(Ordering::SeqCst);
        if self.waiters.load(Ordering::Relaxed) > 0 {
            let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.cv.notify_one();
        }
    }

    /// Drop a region and take it out of the books.
    fn destroy(&self, mut slot: Slot) {
        self.set_committed(&mut slot, 0);
        self.set_live_bytes(&mut slot, 0);
        let retained = self.config.retained_bytes_per_region as u64;
        self.counters.retained.fetch_sub(retained, Ordering::Relaxed);
        GLOBAL.retained.fetch_sub(retained, Ordering::Relaxed);
        // The id goes back before the count drops (release), so that a creator that sees the
        // lower count (acquire) finds a free id.
        let _ = self.free_ids.push(slot.id);
        self.counters.live_regions.fetch_sub(1, Ordering::Release);
        GLOBAL.live_regions.fetch_sub(1, Ordering::Relaxed);
    }

    /// Create a region if the pool is below its maximum: `None` if it is at the maximum.
    fn try_create(&self) -> Option<Result<Box<Slot>, Error>> {
        let max = self.config.max_regions as u64;
        let mut n = self.counters.live_regions.load(Ordering::Relaxed);
        loop {
            if n >= max {
                return None;
            }
            match self.counters.live_regions.compare_exchange_weak(n, n + 1, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => break,
                Err(now) => n = now,
            }
        }
        self.counters.peak_regions.fetch_max(n + 1, Ordering::Relaxed);
        let g = GLOBAL.live_regions.fetch_add(1, Ordering::Relaxed) + 1;
        GLOBAL.peak_regions.fetch_max(g, Ordering::Relaxed);
        let retained = self.config.retained_bytes_per_region as u64;
        self.counters.retained.fetch_add(retained, Ordering::Relaxed);
        GLOBAL.retained.fetch_add(retained, Ordering::Relaxed);
        let id = self.free_ids.pop().expect("at most max_regions ids are in use");
        let c = &self.config;
        let built = RegionBuilder::default()
            .reserve(c.region_reserve)
            .limit(c.region_limit)
            .source(c.source.clone())
            .critical_level(c.critical_level)
            .scrub(c.scrub)
            .build();
        let mut slot = Box::new(Slot {
            region: match built {
                Ok(r) => r,
                Err(e) => {
                    self.counters.retained.fetch_sub(retained, Ordering::Relaxed);
                    GLOBAL.retained.fetch_sub(retained, Ordering::Relaxed);
                    // As in `destroy`: the id first, then the count.
                    let _ = self.free_ids.push(id);
                    self.counters.live_regions.fetch_sub(1, Ordering::Release);
                    GLOBAL.live_regions.fetch_sub(1, Ordering::Relaxed);
                    log::warn!("napalloc: pool could not create a region: {e}");
                    return Some(Err(self.fail(e)));
                }
            },
            id,
            idle_since: Instant::now(),
            committed: 0,
            live_bytes: 0,
            bad_pointers: 0,
            announced: false,
        });
        let committed = slot.region.stats().committed;
        self.set_committed(&mut slot, committed);
        Some(Ok(slot))
    }

    #[cold]
    #[inline(never)]
    fn checkout_slow(&self) -> Result<Box<Slot>, Error> {
        // A trimmer may hold a slot for a moment: look again before growing the pool.
        if self.in_trim.load(Ordering::Relaxed) > 0 {
            let b = Backoff::new();
            while !b.is_completed() {
                if let Some(s) = self.idle.pop() {
                    return Ok(s);
                }
                b.snooze();
            }
        }
        if let Some(r) = self.try_create() {
            return r;
        }
        if let Some(s) = self.idle.pop() {
            return Ok(s);
        }
        self.counters.exhausted.fetch_add(1, Ordering::Relaxed);
        GLOBAL.exhausted.fetch_add(1, Ordering::Relaxed);
        match self.config.on_exhausted {
            OnExhausted::Fail => Err(self.fail(Error::LimitExceeded)),
            OnExhausted::Wait(timeout) => self.wait(timeout),
        }
    }

    /// Wait for an idle slot (or room to create one) until `timeout` passes.
    fn wait(&self, timeout: Duration) -> Result<Box<Slot>, Error> {
        let deadline = Instant::now().checked_add(timeout);
        let b = Backoff::new();
        while !b.is_completed() {
            if let Some(s) = self.idle.pop() {
                return Ok(s);
            }
            b.snooze();
        }
        let mut g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.waiters.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let got = loop {
            if let Some(s) = self.idle.pop() {
                break Ok(s);
            }
            if self.counters.live_regions.load(Ordering::Relaxed) < self.config.max_regions as u64 {
                // A creation failed meanwhile and freed a place. Create without the lock: building
                // a region commits memory, which may call a budget's trimmer, which pushes idle
                // regions back and takes this lock to wake waiters.
                drop(g);
                let r = self.try_create();
                g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
                match r {
                    Some(r) => break r,
                    None => continue,
                }
            }
            let now = Instant::now();
            let left = match deadline {
                Some(d) if now >= d => break Err(self.fail(Error::LimitExceeded)),
                Some(d) => d - now,
                None => Duration::from_secs(3600),
            };
            g = self.cv.wait_timeout(g, left).unwrap_or_else(|e| e.into_inner()).0;
        };
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        drop(g);
        got
    }

    /// Take a returned region's figures, reset it and make it idle.
    #[inline]
    fn give_back(&self, mut slot: Box<Slot>) {
        let s = slot.region.stats();
        slot.region.reset();
        let m = &self.meta[slot.id as usize];
        m.returns.store(m.returns.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        if s.committed != slot.committed {
            self.set_committed(&mut slot, s.committed);
        }
        if s.live_bytes != slot.live_bytes {
            self.set_live_bytes(&mut slot, s.live_bytes);
        }
        if s.bad_pointers != slot.bad_pointers {
            let d = s.bad_pointers - slot.bad_pointers;
            self.counters.bad_pointers.fetch_add(d, Ordering::Relaxed);
            GLOBAL.bad_pointers.fetch_add(d, Ordering::Relaxed);
            slot.bad_pointers = s.bad_pointers;
        }
        if s.committed <= self.config.retained_bytes_per_region {
            self.push_idle(slot);
            return;
        }
        let at = Instant::now();
        slot.idle_since = at;
        let (id, first) = (slot.id, !slot.announced);
        slot.announced = true;
        // Push before telling the trimmer, so that its pass can find the slot.
        self.push_idle(slot);
        if first {
            let _ = self.tx.send(TrimMsg::Returned { region_id: id, at });
        }
    }

    /// Trim an idle slot down to `retain` committed bytes (as far as its side table's minimum
    /// allows). Returns the bytes given back.
    fn trim_slot(&self, slot: &mut Slot, retain: usize) -> usize {
        let before = slot.region.stats().committed;
        if before <= retain {
            return 0;
        }
        if let Err(e) = slot.region.trim(retain) {
            log::warn!("napalloc: trimming an idle region failed: {e}");
        }
        let s = slot.region.stats();
        if s.committed > retain {
            // `Region::trim` keeps `retain` bytes of arena on top of the side table's minimum:
            // keep less arena so that the whole region fits (page-rounded down).
            let page = crate::os::page_size();
            let keep = retain.saturating_sub(s.table_committed) & !(page - 1);
            if let Err(e) = slot.region.trim(keep) {
                log::warn!("napalloc: trimming an idle region failed: {e}");
            }
        }
        let after = slot.region.stats().committed;
        self.set_committed(slot, after);
        let freed = before.saturating_sub(after);
        if freed > 0 {
            self.counters.trims.fetch_add(1, Ordering::Relaxed);
            GLOBAL.trims.fetch_add(1, Ordering::Relaxed);
            self.counters.trimmed_bytes.fetch_add(freed as u64, Ordering::Relaxed);
            GLOBAL.trimmed_bytes.fetch_add(freed as u64, Ordering::Relaxed);
        }
        // Trimmed as far as it goes: a later return above the retained size announces it again.
        slot.announced = false;
        freed
    }

    /// Pop each idle slot at most once, call `f` on it, push it back. Stops early when `f`
    /// returns false.
    fn for_each_idle(&self, mut f: impl FnMut(&mut Slot) -> bool) {
        let n = self.idle.len();
        for _ in 0..n {
            self.in_trim.fetch_add(1, Ordering::Relaxed);
            let Some(mut slot) = self.idle.pop() else {
                self.in_trim.fetch_sub(1, Ordering::Relaxed);
                break;
            };
            let go_on = f(&mut slot);
            self.push_idle(slot);
            self.in_trim.fetch_sub(1, Ordering::Relaxed);
            if !go_on {
                break;
            }
        }
    }

    fn trim_idle(&self, want: usize) -> usize {
        let retain = self.config.retained_bytes_per_region;
        let mut freed = 0;
        self.for_each_idle(|slot| {
            freed += self.trim_slot(slot, retain);
            freed < want
        });
        if freed < want {
            // Memory is short: idle regions give up their working set too.
            self.for_each_idle(|slot| {
                freed += self.trim_slot(slot, 0);
                freed < want
            });
        }
        freed
    }

    fn charges(&self, budget: &Budget) -> bool {
        self.config.source.budget().is_some_and(|b| core::ptr::eq(&**b, budget))
    }

    fn request_counts(&self) -> (u64, u64) {
        self.meta
            .iter()
            .fold((0, 0), |(c, r), m| (c + m.checkouts.load(Ordering::Relaxed), r + m.returns.load(Ordering::Relaxed)))
    }
}

/// Trim the idle regions of every live pool charged to `budget` (see [`ArenaPool::trim_idle`]),
/// pool after pool, until at least `want` bytes were given back or every such pool was trimmed.
/// Returns the bytes given back. Never touches a checked-out region and never blocks: the list of
/// pools is copied out under a lock held only for that copy.
///
/// This is the default trimmer of the process-wide budget
/// ([`host::global_budget`](crate::host::global_budget)), which every pool is charged to unless
/// its [`PoolConfig::source`] says otherwise: an `AppDomain`- or `Process`-critical commit past
/// the soft limit (`NapallocSetBudget`) first gives idle pool memory back, then retries; so does a
/// host's `eMemoryAvailableLow` notification. [`Budget::set_trimmer`] replaces it;
/// `budget.set_trimmer(Box::new(|want| trim_idle_pools(global_budget(), want)))` puts it back.
pub fn trim_idle_pools(budget: &Budget, want: usize) -> usize {
    let pools: Vec<Arc<Shared>> = POOLS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter_map(Weak::upgrade)
        .filter(|p| p.charges(budget))
        .collect();
    let mut freed = 0;
    for p in &pools {
        if freed >= want {
            break;
        }
        freed += p.trim_idle(want - freed);
    }
    freed
}

/// The trimmer thread's state between messages.
struct Trimmer {
    shared: Arc<Shared>,
    /// Ids announced and not yet seen trimmed or under the retained size.
    watch: HashSet<u32>,
}

impl Trimmer {
    fn run(mut self, rx: Receiver<TrimMsg>) {
        let delay = self.shared.config.idle_trim_delay;
        let mut next: Option<Instant> = None;
        loop {
            let timer = match next {
                Some(t) => after(t.saturating_duration_since(Instant::now())),
                None => never(),
            };
            select! {
                recv(rx) -> msg => match msg {
                    Ok(TrimMsg::Returned { region_id, at }) => {
                        self.watch.insert(region_id);
                        // A delay too long to add means: never trim on a timer.
                        if let Some(due) = at.checked_add(delay) {
                            next = Some(next.map_or(due, |n| n.min(due)));
                        }
                    }
                    Ok(TrimMsg::TrimNow) => next = self.pass(true, delay),
                    Ok(TrimMsg::Shutdown) | Err(_) => break,
                },
                recv(timer) -> _ => next = self.pass(false, delay),
            }
        }
    }

    /// One pass over the idle regions; returns when to look again.
    fn pass(&mut self, force: bool, delay: Duration) -> Option<Instant> {
        let sh = &*self.shared;
        let retain = sh.config.retained_bytes_per_region;
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        let watch = &mut self.watch;
        sh.for_each_idle(|slot| {
            if slot.committed > retain {
                let due = slot.idle_since.checked_add(delay);
                if force || due.is_some_and(|d| d <= now) {
                    sh.trim_slot(slot, retain);
                } else if let Some(d) = due {
                    next = Some(next.map_or(d, |n| n.min(d)));
                }
            }
            if !slot.announced || slot.committed <= retain {
                slot.announced = false;
                watch.remove(&slot.id);
            }
            true
        });
        if next.is_none() && !self.watch.is_empty() {
            // Announced regions that were checked out during the pass: look again later.
            next = now.checked_add(delay);
        }
        next
    }
}

/// A pool of regions for request-per-region servers. `Send + Sync`: share it by reference (or in
/// an `Arc`) among worker threads. See the module docs for the protocol.
pub struct ArenaPool {
    shared: Arc<Shared>,
    trimmer: Option<JoinHandle<()>>,
}

impl fmt::Debug for ArenaPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArenaPool").field("config", &self.shared.config).field("stats", &self.stats()).finish()
    }
}

impl ArenaPool {
    /// A builder with the defaults of [`PoolConfig`].
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// Start a pool with `config` and its trimmer thread. No region is created yet.
    pub fn new(config: PoolConfig) -> Result<ArenaPool, Error> {
        if config.max_regions == 0 || config.max_regions > u32::MAX as usize {
            return Err(Error::InvalidLayout);
        }
        let free_ids = ArrayQueue::new(config.max_regions);
        for i in 0..config.max_regions as u32 {
            let _ = free_ids.push(i);
        }
        let (tx, rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared {
            idle: ArrayQueue::new(config.max_regions),
            free_ids,
            meta: (0..config.max_regions).map(|_| CachePadded::new(SlotMeta::default())).collect(),
            config,
            counters: CachePadded::new(Counters::new()),
            in_trim: AtomicUsize::new(0),
            waiters: AtomicUsize::new(0),
            lock: Mutex::new(()),
            cv: Condvar::new(),
            tx,
        });
        let t = Trimmer { shared: Arc::clone(&shared), watch: HashSet::new() };
        let trimmer = std::thread::Builder::new()
            .name("napalloc-trim".into())
            .spawn(move || t.run(rx))
            .map_err(|e| Error::Os(e.raw_os_error().unwrap_or(0)))?;
        let mut pools = POOLS.lock().unwrap_or_else(|e| e.into_inner());
        pools.retain(|w| w.strong_count() > 0);
        pools.push(Arc::downgrade(&shared));
        Ok(ArenaPool { shared, trimmer: Some(trimmer) })
    }

    /// The configuration.
    pub fn config(&self) -> &PoolConfig {
        &self.shared.config
    }

    /// Check out a region for one request: a pop from the idle queue, or a new region (below the
    /// maximum), or, when exhausted, a wait or a failure as configured ([`Error::LimitExceeded`]
    /// for an exhausted pool or a wait that timed out). The region is empty; dropping the guard
    /// resets it in O(1) and returns it.
    #[inline]
    pub fn checkout(&self) -> Result<PooledRegion<'_>, Error> {
        let slot = match self.shared.idle.pop() {
            Some(s) => s,
            None => self.shared.checkout_slow()?,
        };
        let m = &self.shared.meta[slot.id as usize];
        m.checkouts.store(m.checkouts.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        Ok(PooledRegion { slot: ManuallyDrop::new(slot), pool: &self.shared })
    }

    /// Create regions (up to the maximum) until `n` exist, so the first requests do not pay for
    /// reserving address space. Returns how many exist.
    pub fn prewarm(&self, n: usize) -> Result<usize, Error> {
        while (self.shared.counters.live_regions.load(Ordering::Relaxed) as usize) < n {
            match self.shared.try_create() {
                Some(Ok(slot)) => self.shared.push_idle(slot),
                Some(Err(e)) => return Err(e),
                None => break,
            }
        }
        Ok(self.shared.counters.live_regions.load(Ordering::Relaxed) as usize)
    }

    /// Ask the trimmer thread to trim every idle region down to the retained size now, whatever
    /// its idle time. Returns at once; the trim happens on the trimmer thread. (For a trim done
    /// before returning, call [`trim_idle`](Self::trim_idle).)
    pub fn trim_now(&self) {
        let _ = self.shared.tx.send(TrimMsg::TrimNow);
    }

    /// Trim idle regions on the calling thread until at least `want` bytes were given back or
    /// every idle region was trimmed: first each down to the retained size, then, if that was not
    /// enough, down to nothing (memory is short). Never touches a checked-out region and never
    /// blocks (the budget's trimmer hook). Returns the bytes given back.
    pub fn trim_idle(&self, want: usize) -> usize {
        self.shared.trim_idle(want)
    }

    /// [`trim_idle`](Self::trim_idle) as a `'static` closure that does not keep the pool alive
    /// (it returns 0 once the pool is dropped): the form a budget's trimmer hook takes.
    pub fn idle_trimmer(&self) -> Box<dyn Fn(usize) -> usize + Send + Sync> {
        let w = Arc::downgrade(&self.shared);
        Box::new(move |want| w.upgrade().map_or(0, |s| s.trim_idle(want)))
    }

    /// Register [`idle_trimmer`](Self::idle_trimmer) as `budget`'s trimmer (replacing any
    /// earlier one): an `AppDomain`- or `Process`-critical commit past the budget's soft limit
    /// then first trims this pool's idle regions. The pool's regions should be charged to the
    /// same budget (`PoolConfig::source` = `Source::os().with_budget(budget)`), so that what the
    /// trim gives back is credited to it.
    ///
    /// Not needed for the process-wide budget: its default trimmer already trims every pool
    /// charged to it ([`trim_idle_pools`]); registering one pool there would replace that.
    pub fn register_trimmer(&self, budget: &Budget) {
        budget.set_trimmer(self.idle_trimmer());
    }

    /// Whether this pool's regions are charged to `budget`.
    pub fn charges(&self, budget: &Budget) -> bool {
        self.shared.charges(budget)
    }

    /// This pool's statistics.
    pub fn stats(&self) -> PoolStats {
        let (checkouts, returns) = self.shared.request_counts();
        let mut s = PoolStats::from_counters(&self.shared.counters, checkouts, returns);
        s.idle_regions = self.shared.idle.len() as u64;
        s
    }
}

impl Drop for ArenaPool {
    fn drop(&mut self) {
        let _ = self.shared.tx.send(TrimMsg::Shutdown);
        if let Some(t) = self.trimmer.take() {
            if t.join().is_err() {
                log::error!("napalloc: the pool's trimmer thread panicked");
            }
        }
        // The regions go when the last reference to the shared state does (see `Shared::drop`).
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Nothing else refers to the pool any more (guards borrow it, the trimmer thread was
        // joined, an `idle_trimmer` closure holds only a `Weak`): every slot is idle.
        let (c, r) = self.request_counts();
        GLOBAL.retired_checkouts.fetch_add(c, Ordering::Relaxed);
        GLOBAL.retired_returns.fetch_add(r, Ordering::Relaxed);
        while let Some(slot) = self.idle.pop() {
            self.destroy(*slot);
        }
    }
}

/// A region checked out of an [`ArenaPool`]: derefs to [`Region`]; dropping it resets the region
/// in O(1) and returns it to the pool. `Send` (a request may move between threads), not `Sync`.
pub struct PooledRegion<'a> {
    slot: ManuallyDrop<Box<Slot>>,
    pool: &'a Shared,
}

impl PooledRegion<'_> {
    /// The region's id in its pool (stable for the region's life; ids of live regions are unique
    /// and below `max_regions`).
    pub fn id(&self) -> u32 {
        self.slot.id
    }

    /// [`Region::alloc`], counting an out-of-memory failure in the pool's statistics.
    #[inline]
    pub fn alloc(&self, layout: Layout) -> Result<NonNull<u8>, Error> {
        let r = self.slot.region.alloc(layout);
        if let Err(e) = r {
            return Err(self.note(e));
        }
        r
    }

    /// [`Region::alloc_child`], counting an out-of-memory failure in the pool's statistics.
    #[inline]
    pub fn alloc_child(&self, parent: NonNull<u8>, layout: Layout) -> Result<NonNull<u8>, Error> {
        let r = self.slot.region.alloc_child(parent, layout);
        if let Err(e) = r {
            return Err(self.note(e));
        }
        r
    }

    #[cold]
    fn note(&self, e: Error) -> Error {
        if e.is_out_of_memory() {
            self.pool.fail(e)
        } else {
            e
        }
    }
}

impl Deref for PooledRegion<'_> {
    type Target = Region;
    #[inline(always)]
    fn deref(&self) -> &Region {
        &self.slot.region
    }
}

impl DerefMut for PooledRegion<'_> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut Region {
        &mut self.slot.region
    }
}

impl Drop for PooledRegion<'_> {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: `slot` is taken exactly once, here, and not used afterwards.
        let slot = unsafe { ManuallyDrop::take(&mut self.slot) };
        self.pool.give_back(slot);
    }
}

impl fmt::Debug for PooledRegion<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledRegion").field("id", &self.slot.id).field("region", &self.slot.region).finish()
    }
}

/// Statistics of one pool ([`ArenaPool::stats`]) or of every pool in the process
/// ([`PoolStats::global`]). Counters only grow; gauges are values at the moment of reading (each
/// read exactly, the set not as one snapshot). Byte figures are as reported at return or trim.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Counter: regions checked out (one per request).
    pub checkouts: u64,
    /// Counter: regions given back.
    pub returns: u64,
    /// Gauge: regions that exist.
    pub live_regions: u64,
    /// Gauge: regions idle in the pool (0 for the global figures).
    pub idle_regions: u64,
    /// Gauge: the most regions that existed at once.
    pub peak_regions: u64,
    /// Gauge: bytes the regions still held when they were last given back (the reset releases
    /// them; 0 when every request frees its root).
    pub live_bytes: u64,
    /// Gauge: the largest `live_bytes` seen.
    pub peak_live_bytes: u64,
    /// Gauge: committed bytes of all regions, as last reported.
    pub committed_bytes: u64,
    /// Gauge: the largest `committed_bytes` seen.
    pub peak_committed_bytes: u64,
    /// Gauge: `retained_bytes_per_region × live_regions`, what an idle trim brings
    /// `committed_bytes` back to.
    pub retained_bytes: u64,
    /// Counter: trims that gave memory back.
    pub trims: u64,
    /// Counter: bytes given back by trims.
    pub trimmed_bytes: u64,
    /// Counter: failed checkouts and failed allocations through a guard, by critical level
    /// (index `CriticalLevel as usize`: task, app domain, process).
    pub failures: [u64; 3],
    /// Counter: pointers the regions refused (foreign, interior, already freed).
    pub bad_pointers: u64,
    /// Counter: checkouts that found the pool exhausted (and then waited or failed).
    pub exhausted: u64,
}

impl PoolStats {
    fn from_counters(c: &Counters, checkouts: u64, returns: u64) -> PoolStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PoolStats {
            checkouts,
            returns,
            live_regions: l(&c.live_regions),
            idle_regions: 0,
            peak_regions: l(&c.peak_regions),
            live_bytes: l(&c.live_bytes),
            peak_live_bytes: l(&c.peak_live_bytes),
            committed_bytes: l(&c.committed),
            peak_committed_bytes: l(&c.peak_committed),
            retained_bytes: l(&c.retained),
            trims: l(&c.trims),
            trimmed_bytes: l(&c.trimmed_bytes),
            failures: [l(&c.failures[0]), l(&c.failures[1]), l(&c.failures[2])],
            bad_pointers: l(&c.bad_pointers),
            exhausted: l(&c.exhausted),
        }
    }

    /// The figures of every pool of the process, dropped ones included (their gauges went to 0).
    pub fn global() -> PoolStats {
        // Hold the live pools while reading the retired counts, so that a pool dropped meanwhile
        // is counted exactly once (its `Shared::drop` runs when the last `Arc` goes, after this).
        let live: Vec<Arc<Shared>> =
            POOLS.lock().unwrap_or_else(|e| e.into_inner()).iter().filter_map(Weak::upgrade).collect();
        let (mut checkouts, mut returns) = (0, 0);
        for p in &live {
            let (c, r) = p.request_counts();
            checkouts += c;
            returns += r;
        }
        checkouts += GLOBAL.retired_checkouts.load(Ordering::Relaxed);
        returns += GLOBAL.retired_returns.load(Ordering::Relaxed);
        let s = PoolStats::from_counters(&GLOBAL, checkouts, returns);
        drop(live);
        s
    }

    /// Regions checked out now.
    pub fn checked_out(&self) -> u64 {
        self.checkouts.saturating_sub(self.returns)
    }

    /// All failures, whatever the level.
    pub fn total_failures(&self) -> u64 {
        self.failures.iter().sum()
    }

    /// The statistics in the Prometheus text exposition format (version 0.0.4): a `# HELP` and a
    /// `# TYPE` line per metric, counters named `…_total`, then the samples. `prefix` starts every
    /// name (for instance `napalloc_pool`); characters not allowed in a metric name become `_`.
    pub fn to_prometheus(&self, prefix: &str) -> String {
        use fmt::Write;
        let mut p: String =
            prefix
                .chars()
                .enumerate()
                .map(|(i, c)| {
                    if c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit()) {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
        if p.is_empty() {
            p.push_str("napalloc_pool");
        }
        let mut out = String::with_capacity(2048);
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {p}_{name} {help}");
            let _ = writeln!(out, "# TYPE {p}_{name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(out, "{p}_{name}{labels} {v}");
            }
        };
        metric("checkouts_total", "counter", "Regions checked out (one per request).", &[("", self.checkouts)]);
        metric("returns_total", "counter", "Regions given back to the pool.", &[("", self.returns)]);
        metric("regions", "gauge", "Regions that exist.", &[("", self.live_regions)]);
        metric("regions_checked_out", "gauge", "Regions checked out now.", &[("", self.checked_out())]);
        metric("regions_peak", "gauge", "The most regions that existed at once.", &[("", self.peak_regions)]);
        metric(
            "live_bytes",
            "gauge",
            "Bytes the regions still held when they were last given back.",
            &[("", self.live_bytes)],
        );
        metric("live_bytes_peak", "gauge", "The largest live_bytes seen.", &[("", self.peak_live_bytes)]);
        metric(
            "committed_bytes",
            "gauge",
            "Committed bytes of all regions, as last reported.",
            &[("", self.committed_bytes)],
        );
        metric(
            "committed_bytes_peak",
            "gauge",
            "The largest committed_bytes seen.",
            &[("", self.peak_committed_bytes)],
        );
        metric(
            "retained_bytes",
            "gauge",
            "Committed bytes an idle trim brings the regions back to.",
            &[("", self.retained_bytes)],
        );
        metric("trims_total", "counter", "Trims that gave memory back to the OS.", &[("", self.trims)]);
        metric("trimmed_bytes_total", "counter", "Bytes given back to the OS by trims.", &[("", self.trimmed_bytes)]);
        metric(
            "failures_total",
            "counter",
            "Failed checkouts and allocations, by critical level.",
            &[
                ("{level=\"task\"}", self.failures[0]),
                ("{level=\"appdomain\"}", self.failures[1]),
                ("{level=\"process\"}", self.failures[2]),
            ],
        );
        metric(
            "bad_pointers_total",
            "counter",
            "Pointers refused as foreign, interior or already freed.",
            &[("", self.bad_pointers)],
        );
        metric(
            "exhausted_total",
            "counter",
            "Checkouts that found every region in use at the maximum.",
            &[("", self.exhausted)],
        );
        out
    }
}

/// `n` bytes with a binary unit, for humans.
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl fmt::Display for PoolStats {
    /// A two-column table, one figure (or group of figures) per line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = human_bytes;
        let rows: [(&str, String); 10] = [
            ("checkouts (requests)", format!("{}", self.checkouts)),
            ("regions out / idle", format!("{} / {}", self.checked_out(), self.idle_regions)),
            ("regions live / peak", format!("{} / {}", self.live_regions, self.peak_regions)),
            ("live bytes / peak", format!("{} / {}", h(self.live_bytes), h(self.peak_live_bytes))),
            ("committed / peak", format!("{} / {}", h(self.committed_bytes), h(self.peak_committed_bytes))),
            ("retained after idle trim", h(self.retained_bytes)),
            ("trims / bytes trimmed", format!("{} / {}", self.trims, h(self.trimmed_bytes))),
            (
                "failures task / appdomain / process",
                format!("{} / {} / {}", self.failures[0], self.failures[1], self.failures[2]),
            ),
            ("bad pointers", format!("{}", self.bad_pointers)),
            ("exhausted events", format!("{}", self.exhausted)),
        ];
        writeln!(f, "{:<36} {:>24}", "pool statistic", "value")?;
        writeln!(f, "{:-<36} {:->24}", "", "")?;
        for (k, v) in rows {
            writeln!(f, "{k:<36} {v:>24}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }

    #[test]
    fn zero_regions_is_refused() {
        assert_eq!(ArenaPool::builder().max_regions(0).build().unwrap_err(), Error::InvalidLayout);
    }

    /// The only test of this binary that checks regions out, so the process-wide figures change
    /// by exactly what it does (the other pool tests are integration tests, in other processes).
    #[test]
    fn threads_share_a_pool_and_global_figures_outlive_it() {
        let g0 = PoolStats::global();
        let pool = ArenaPool::builder()
            .max_regions(2)
            .region_reserve(1 << 20)
            .retained_bytes_per_region(0)
            .idle_trim_delay(Duration::ZERO)
            .on_exhausted(OnExhausted::Wait(Duration::from_secs(600)))
            .build()
            .unwrap();
        let rounds = if cfg!(miri) { 5 } else { 200 };
        std::thread::scope(|s| {
            for t in 0..3u8 {
                let pool = &pool;
                s.spawn(move || {
                    for _ in 0..rounds {
                        let r = pool.checkout().unwrap();
                        let root = r.alloc(Layout::from_size_align(24, 8).unwrap()).unwrap();
                        let c = r.alloc_child(root, Layout::from_size_align(40, 8).unwrap()).unwrap();
                        // SAFETY: c is a fresh 40-byte block of a region only this thread holds.
                        unsafe { c.as_ptr().write_bytes(t, 40) };
                        // SAFETY: as above; the block still holds this thread's bytes.
                        assert!((0..40).all(|i| unsafe { *c.as_ptr().add(i) } == t));
                    }
                });
            }
        });
        let s = pool.stats();
        assert_eq!((s.checkouts, s.returns), (3 * rounds, 3 * rounds));
        assert_eq!(s.live_bytes, 64 * s.live_regions, "every last return left a root and a child live");
        assert!(s.live_regions >= 1 && s.live_regions <= 2);
        let g1 = PoolStats::global();
        assert_eq!(g1.checkouts - g0.checkouts, 3 * rounds);
        assert_eq!(g1.live_regions - g0.live_regions, s.live_regions);
        drop(pool);
        let g2 = PoolStats::global();
        assert_eq!(g2.checkouts, g1.checkouts, "a dropped pool's checkouts stay counted");
        assert_eq!((g2.live_regions, g2.committed_bytes, g2.live_bytes), (g0.live_regions, g0.committed_bytes, 0));
        assert!(g2.peak_regions >= s.live_regions);
    }

    #[test]
    fn prefix_is_sanitized() {
        let text = PoolStats::default().to_prometheus("9my-pool");
        assert!(text.lines().filter(|l| !l.starts_with('#')).all(|l| l.starts_with("_my_pool_")), "{text}");
    }
}
