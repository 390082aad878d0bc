//! `Region`: tracked blocks over a page arena and the side table.
//!
//! Every block has a record (start, requested size, parent, children) in the side table
//! (`table.rs`); nothing is stored inline with user data. A block can be hung under
//! another with [`Region::alloc_child`] (an *embedded pointer*), and [`Region::free`] releases a
//! block with everything hanging off it. [`Region::reset`] frees everything in O(1) (plus the
//! side table's overflow entries, if it has any: see [`Region::reset`]).
//!
//! Fast paths (small, inlined) and slow paths (cold, out of line) are kept apart:
//! * `alloc` of up to 1 KiB with alignment <= 16 (it starts a new tail), and `alloc_child` of
//!   such a block under the tail root: a bump and one store to the tail log;
//! * `free` of the tail root (the whole newest subtree): a rewind;
//! * everything else materializes the tail and goes through the table.

use crate::arena::{PageArena, Span, DEFAULT_COMMIT_CHUNK, DEFAULT_RESERVE};
use crate::host::{self, CriticalLevel, Source};
use crate::table::{self, Table, GRANULE, NONE, PARENT};
use crate::Error;
use core::alloc::Layout;
use core::cell::{Cell, UnsafeCell};
use core::marker::PhantomData;
use core::ptr::NonNull;
use std::collections::HashMap;

/// Largest request served by the inlined fast path.
const FAST_MAX: usize = 1024;

/// Whether freed memory is zeroed, so that one request's data cannot reach the next.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scrub {
    /// Zero every block when it is freed (by `free`, a cascading free, or a rewind).
    pub on_free: bool,
    /// Zero everything handed out when the region is reset.
    pub on_reset: bool,
}

/// Counters of a region. All byte counts are exact.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Live tracked blocks.
    pub live_blocks: usize,
    /// Sum of the requested sizes of the live tracked blocks.
    pub live_bytes: usize,
    /// Committed memory: arena, side table and untracked arena.
    pub committed: usize,
    /// Reserved address space: arena, side table and untracked arena.
    pub reserved: usize,
    /// Bytes of the arena in use (live blocks, free slots, padding) at most ever, as noted on
    /// the region's slow paths, at resets and at `stats` calls: a peak reached by a pending
    /// tail and undone on the fast paths in between (at most one 4 KiB tail window) is missed.
    pub high_water: usize,
    /// Committed bytes of the side table alone.
    pub table_committed: usize,
    /// Dead slots waiting for reuse.
    pub free_slots: usize,
    /// Pointers handed to `free`/`realloc` that were not live block starts.
    pub bad_pointers: u64,
}

/// Builder for [`Region`].
#[derive(Clone, Debug)]
pub struct RegionBuilder {
    reserve: usize,
    chunk: usize,
    limit: usize,
    source: Source,
    level: CriticalLevel,
    scrub: Scrub,
}

impl Default for RegionBuilder {
    fn default() -> Self {
        RegionBuilder {
            reserve: DEFAULT_RESERVE,
            chunk: DEFAULT_COMMIT_CHUNK,
            limit: usize::MAX,
            // The installed host's pages (or the OS's), charged to the process-wide budget: the
            // budget is over all regions and heaps, and a host owns every page napalloc uses.
            source: host::default_source(),
            level: CriticalLevel::Task,
            scrub: Scrub::default(),
        }
    }
}

impl RegionBuilder {
    /// Address space for tracked blocks (at most 64 GiB: offsets are 32-bit granules).
    pub fn reserve(mut self, bytes: usize) -> Self {
        self.reserve = bytes;
        self
    }
    /// Commit at least this much at a time.
    pub fn commit_chunk(mut self, bytes: usize) -> Self {
        self.chunk = bytes;
        self
    }
    /// Never commit more than this many bytes for blocks.
    pub fn limit(mut self, bytes: usize) -> Self {
        self.limit = bytes;
        self
    }
    /// Take pages from this source (default: [`host::default_source`], the installed host or the
    /// OS, charged to [`host::global_budget`]).
    pub fn source(mut self, source: Source) -> Self {
        self.source = source;
        self
    }
    /// Critical level of the region's commits.
    pub fn critical_level(mut self, level: CriticalLevel) -> Self {
        self.level = level;
        self
    }
    /// Zero freed memory.
    pub fn scrub(mut self, scrub: Scrub) -> Self {
        self.scrub = scrub;
        self
    }
    /// Reserve and build.
    pub fn build(self) -> Result<Region, Error> {
        let reserve = self.reserve.min(GRANULE << 32);
        let arena = Span::new(&self.source, reserve, self.chunk, self.level)?;
        arena.set_limit(self.limit);
        let table = Table::new(&self.source, arena.reserved(), self.level)?;
        let untracked = PageArena::builder()
            .reserve((reserve / 4).max(1 << 20))
            .source(self.source.clone())
            .critical_level(self.level)
            .build()?;
        let log_buf = LogBuf::new();
        let log_k = Cell::new(log_buf.start());
        Ok(Region {
            top: Cell::new(arena.base().as_ptr()),
            limit: Cell::new(arena.base().as_ptr()),
            end: Cell::new(arena.base().as_ptr()),
            fast_end: Cell::new(arena.base().as_ptr()),
            root: Cell::new(core::ptr::null_mut()),
            log_k,
            last: Cell::new(core::ptr::null_mut()),
            root_prev: Cell::new(NONE),
            high_water: Cell::new(arena.base().as_ptr()),
            table: UnsafeCell::new(table),
            base: arena.base(),
            reserved: arena.reserved(),
            log_buf,
            arena,
            untracked,
            bad_pointers: Cell::new(0),
            big_align: UnsafeCell::new(HashMap::new()),
            slow_free: Cell::new(self.scrub.on_free),
            reset_gate: if self.scrub.on_reset { u32::MAX } else { 0 },
            scrub: self.scrub,
            _not_sync: PhantomData,
        })
    }
}

/// Granules of the tail window: every tail block starts within `LOG_CAP` granules of the tail
/// root, so a tail holds at most `LOG_CAP` blocks (each spans at least one granule).
const LOG_CAP: usize = 256;
/// Bytes of the tail window, and of the log's storage (one entry slot per granule).
const LOG_WINDOW: usize = LOG_CAP * GRANULE;
/// Bytes of the log's storage: an entry slot per granule of the window, and one more past it (at
/// byte `LOG_WINDOW`) that belongs to no tail block: a [`ChildCursor`] writes an entry before it
/// knows whether the block fits, at the top, which may be the window's end (or into that slot
/// when it has no tail to bump into).
const LOG_BYTES: usize = LOG_WINDOW + GRANULE;
/// Log entry flag: the block's parent is the block logged just before it (else the tail root).
const NESTED: u32 = 1 << 31;
// A tail is materialized with plain deltas (`Table::link_in_tail`): it must fit a `prev` delta.
const _: () = assert!(LOG_CAP <= table::PREV_REACH as usize);
/// Largest size a log entry holds (larger blocks are recorded at once).
const LOG_SIZE_MAX: usize = (1 << 30) - 1;

/// The storage of the tail log, held through a raw pointer: `LOG_BYTES` bytes, laid out like the
/// tail window itself (the entry of the tail block at byte `k` of the window is the `u32` at byte
/// `k` of the log; the bytes between entries are unused). Indexing by offset rather than by
/// count spares the fast path a log cursor: the entry's address is the block's address plus one
/// per-tail constant (`Region::log_k`). The region keeps a raw pointer into it (`log_k`) across
/// moves of the region. A `Box` field would not allow that, with or
/// without an `UnsafeCell` inside: moving a `Box` asserts unique access to its contents, which
/// invalidates every pointer derived from it earlier (Miri reports the next write through `log`
/// after the region moved as undefined behavior); and a pointer taken through `&Box<[u32; N]>`
/// only grants read access.
struct LogBuf(NonNull<u32>);

impl LogBuf {
    fn new() -> LogBuf {
        LogBuf(NonNull::from(Box::leak(Box::new([0u32; LOG_BYTES / 4]))).cast())
    }

    /// The first byte; writable, valid for `LOG_BYTES` bytes (4-aligned) until the `LogBuf` is
    /// dropped.
    #[inline(always)]
    fn start(&self) -> *mut u8 {
        self.0.as_ptr().cast()
    }
}

impl Drop for LogBuf {
    fn drop(&mut self) {
        // SAFETY: the pointer came from `Box::leak` of a `[u32; LOG_BYTES / 4]` in `new` and is
        // freed once, here; the region that held pointers into it is being dropped.
        drop(unsafe { Box::from_raw(self.0.as_ptr().cast::<[u32; LOG_BYTES / 4]>()) });
    }
}

/// Tracked allocations with embedded-pointer trees. `Send`, not `Sync`.
///
/// ```
/// use core::alloc::Layout;
/// use napalloc::Region;
/// let mut r = Region::new().unwrap();
/// let conn = r.alloc(Layout::from_size_align(16, 8).unwrap()).unwrap();
/// let slots = r.alloc_child(conn, Layout::array::<usize>(8).unwrap()).unwrap();
/// assert!(r.owns(slots));
/// assert_eq!(r.stats().live_blocks, 2);
/// // SAFETY: nothing uses `conn` or `slots` afterwards.
/// unsafe { r.free(conn).unwrap() }; // frees the slots too
/// assert!(!r.owns(slots));
/// assert_eq!(r.stats().live_blocks, 0);
/// r.reset();
/// ```
///
/// # The pending tail
/// The newest blocks are not recorded in the side table at once. While the newest blocks form
/// one subtree laid out contiguously at the top of the arena (a root, then its children and
/// their children, in allocation order: exactly what a request builds), each is only logged as
/// one `u32` (its size, and whether its parent is the block logged just before it rather than
/// the tail root), stored in the log at the block's own offset within the tail window. A walk
/// from the root, block by block, finds every entry: each block's size gives the next one's
/// offset. A child of the tail root is an inlined bump and one store; a child of the newest block
/// takes a short out-of-line path. Freeing the tail root rewinds the arena: O(1) for the whole
/// subtree. Anything else that needs the tree first *materializes* the tail into the side table
/// (O(tail), once per block).
pub struct Region {
    /// The bump cursor. Invariant: `base <= top <= end`, 16-aligned.
    top: Cell<*mut u8>,
    /// How far a child of the tail root may bump inline: `<= min(end, root + LOG_WINDOW)`, so a
    /// block bumped under it starts inside the tail window and its log entry inside the log: the
    /// log needs no check of its own. Meaningless while the tail is empty (`root` is null then,
    /// so nothing compares against it).
    limit: Cell<*mut u8>,
    /// End of the committed arena.
    end: Cell<*mut u8>,
    /// `end` while the table has room for a full log (so a tail may start inline), else the
    /// base (which sends every root allocation to the slow path until room is made).
    fast_end: Cell<*mut u8>,
    /// The tail root, or null when the tail is empty. Invariant: the tail blocks lie
    /// contiguously in `[root, top)`, each starting below `root + LOG_WINDOW`, and the log holds
    /// an entry at the offset of each (so the extents of the entries, summed from the root, end
    /// exactly at `top`).
    root: Cell<*mut u8>,
    /// The log's storage minus the root's address (wrapping), with the log's provenance: the
    /// entry of the tail block at `p` is the `u32` at `log_k + p` (see [`Region::entry`]).
    /// Set when a tail starts; meaningless while the tail is empty.
    log_k: Cell<*mut u8>,
    /// A hint for [`Region::last`]. Invariant, while the tail is not empty: null, or the start of
    /// a block of the pending tail (any one; the walk to the newest block starts there). It is
    /// nulled when a tail starts and when the block it names is popped; otherwise blocks are only
    /// added to a tail, so the hint stays valid. (Stale while the tail is empty: never read then.)
    last: Cell<*mut u8>,
    /// Parent record of the tail root, read only if log entry 0 carries `NESTED` (set by the
    /// slow path for a tail root that is a child of a recorded block).
    root_prev: Cell<u32>,
    /// Largest `top` seen at a slow-path event (after a block bumped there, before the arena
    /// grows), a reset or a stats call (a pointer, so that noting it is one compare with
    /// `top`). A pending tail that grows and is rewound in between on the fast paths is not
    /// seen: the figure may miss up to one tail window (4 KiB) of the peak.
    high_water: Cell<*mut u8>,
    /// Only touched through `table()`, never across a call that could re-enter the region.
    table: UnsafeCell<Table>,
    base: NonNull<u8>,
    /// `arena.reserved()`, cached for pointer checks.
    reserved: usize,
    /// The log's storage (`LOG_BYTES` bytes).
    log_buf: LogBuf,
    arena: Span,
    untracked: PageArena,
    bad_pointers: Cell<u64>,
    /// Alignment of blocks allocated with an alignment above `GRANULE` (so realloc keeps it).
    big_align: UnsafeCell<HashMap<u32, usize>>,
    /// True while a freed block needs more than a free-list push: scrubbing is on, or some
    /// block has an entry in `big_align`. Recomputed whenever either changes.
    slow_free: Cell<bool>,
    /// The record count below which `reset` takes its inline path: 0, or `u32::MAX` (more than
    /// any count, `MAX_RECS < u32::MAX`) when resets scrub, so that one compare decides.
    reset_gate: u32,
    scrub: Scrub,
    _not_sync: PhantomData<Cell<()>>,
}

// SAFETY: a Region owns its reservations, table and log outright; moving it to another thread
// moves all of it. It is not Sync: all state is in Cells / UnsafeCells without synchronization.
unsafe impl Send for Region {}

impl core::fmt::Debug for Region {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Region").field("base", &self.base).field("stats", &self.stats()).finish()
    }
}

/// Bytes a tail block of `size` (at most `FAST_MAX`) bytes spans: [`tail_extent`] without the
/// size classes of larger blocks.
#[inline(always)]
fn small_extent(size: u32) -> usize {
    debug_assert!(size as usize <= FAST_MAX);
    let e = (size.max(1) as usize + (GRANULE - 1)) & !(GRANULE - 1);
    debug_assert_eq!(e, tail_extent(size as usize));
    e
}

/// Bytes a tail block of `size` bytes spans.
#[inline(always)]
fn tail_extent(size: usize) -> usize {
    table::extent_granules(size) * GRANULE
}

impl Region {
    /// A region with the default reservation from the default source: the host installed with
    /// [`host::set_default_host`] (or `NapallocSetHostMemoryManager`), else the OS, charged to
    /// the process-wide [`host::global_budget`].
    pub fn new() -> Result<Region, Error> {
        RegionBuilder::default().build()
    }

    /// A builder for reservation size, limit, page source, critical level and scrubbing.
    pub fn builder() -> RegionBuilder {
        RegionBuilder::default()
    }

    #[allow(clippy::mut_from_ref)]
    #[inline(always)]
    fn table(&self) -> &mut Table {
        // SAFETY: Region is !Sync and no method holds this reference across a call that could
        // re-enter the region (user code is never called while it is held), so it is unique.
        unsafe { &mut *self.table.get() }
    }

    /// The log entry of the tail block starting at `p`. Valid to read or write only for `p` in
    /// `[root, root + LOG_WINDOW)` and 16-aligned (the entry then lies inside the log).
    #[inline(always)]
    fn entry(&self, p: *const u8) -> *mut u32 {
        self.log_k.get().wrapping_add(p as usize).cast()
    }

    /// The log entry of tail block `p`.
    ///
    /// # Safety
    /// `p` is the start of a block of the pending tail.
    #[inline(always)]
    unsafe fn entry_of(&self, p: *const u8) -> u32 {
        // SAFETY: a tail block starts inside the window (`root` invariant), so its entry is a
        // 4-aligned `u32` inside the log, written when the block was logged.
        unsafe { self.entry(p).read() }
    }

    /// The tail block after tail block `p` (or `top` if `p` is the newest), and `p`'s entry.
    ///
    /// # Safety
    /// As [`entry_of`](Self::entry_of).
    #[inline(always)]
    unsafe fn tail_next(&self, p: *mut u8) -> (*mut u8, u32) {
        // SAFETY: forwarded.
        let e = unsafe { self.entry_of(p) };
        (p.wrapping_add(tail_extent((e & !NESTED) as usize)), e)
    }

    /// Blocks in the pending tail (a walk of at most `LOG_CAP` entries).
    fn log_len(&self) -> usize {
        let mut n = 0;
        let mut p = self.root.get();
        if !p.is_null() {
            while (p as usize) < self.top.get() as usize {
                // SAFETY: `p` walks the tail's block starts from the root (`root` invariant).
                p = unsafe { self.tail_next(p) }.0;
                n += 1;
            }
        }
        n
    }

    /// True if the pending tail is exactly one block.
    #[inline(always)]
    fn tail_is_single(&self) -> bool {
        let root = self.root.get();
        // SAFETY: a non-null root is the first tail block.
        !root.is_null() && unsafe { self.tail_next(root) }.0 == self.top.get()
    }

    #[inline(always)]
    fn ptr_at(&self, off: usize) -> *mut u8 {
        self.base.as_ptr().wrapping_add(off)
    }

    #[inline(always)]
    fn off_of(&self, p: *const u8) -> usize {
        (p as usize).wrapping_sub(self.base.as_ptr() as usize)
    }

    #[inline(always)]
    fn top_off(&self) -> usize {
        self.off_of(self.top.get())
    }

    /// The newest tail block (null if the tail is empty), found by walking the log from the
    /// `last` hint (amortized O(1) while a tail only grows: each block is walked over once).
    /// The hint left behind is the block before the newest when the walk passed it, so that
    /// popping the newest block keeps a valid hint.
    fn last(&self) -> *mut u8 {
        let root = self.root.get();
        if root.is_null() {
            return core::ptr::null_mut();
        }
        let top = self.top.get();
        let hint = self.last.get();
        let mut p = if hint.is_null() { root } else { hint };
        let mut before = p;
        loop {
            // SAFETY: `p` is a tail block start: the hint or the root (invariants), then the next
            // block's start while that is below the top.
            let next = unsafe { self.tail_next(p) }.0;
            if next as usize >= top as usize {
                break;
            }
            before = p;
            p = next;
        }
        self.last.set(before);
        p
    }

    /// Start a tail whose root spans `[start, start + ext)` and has `size` bytes, with
    /// `root_prev` its parent link (`NONE` for a root). The log must be empty, the table must
    /// have room for a full log, and `limit` must not pass `end`.
    #[inline(always)]
    fn start_tail(&self, start: *mut u8, ext: usize, size: usize, root_prev: u32, limit: *mut u8) {
        let log = self.log_buf.start();
        let flag = if root_prev == NONE { 0 } else { NESTED };
        // SAFETY: entry 0 is the log's first 4 bytes.
        unsafe { log.cast::<u32>().write(size as u32 | flag) };
        self.log_k.set(log.wrapping_sub(start as usize));
        self.last.set(core::ptr::null_mut());
        if flag != 0 {
            self.root_prev.set(root_prev);
        }
        self.root.set(start);
        self.top.set(start.wrapping_add(ext));
        self.limit.set(limit);
    }

    /// Allocate a tracked root block. Alignment is at least 16.
    #[inline]
    pub fn alloc(&self, layout: Layout) -> Result<NonNull<u8>, Error> {
        let size = layout.size();
        if layout.align() <= GRANULE && size.wrapping_sub(1) < FAST_MAX {
            // 1. A dead slot of the same class first: memory stays bounded when blocks are
            //    freed one by one, and a reused root does not touch the tail.
            let t = self.table();
            let class = (size - 1) / GRANULE;
            if t.heads[class] != NONE {
                return Ok(self.reuse(class, size, NONE));
            }
            // 2. A new tail. A new root ends the pending tail (it is not in the tail's subtree).
            if !self.root.get().is_null() {
                self.materialize();
            }
            let top = self.top.get();
            // Room for the whole tail (`LOG_CAP` granules) is asked for up front, so the tail's
            // children need only compare with `limit`.
            let limit = top.wrapping_add(LOG_WINDOW);
            if limit as usize <= self.fast_end.get() as usize {
                self.start_tail(top, (size + (GRANULE - 1)) & !(GRANULE - 1), size, NONE, limit);
                // SAFETY: top lies inside the reservation, derived from its base: non-null.
                return Ok(unsafe { NonNull::new_unchecked(top) });
            }
        }
        self.alloc_slow(None, layout)
    }

    /// The part of [`alloc`](Self::alloc) (size 1 to 1024, alignment 16) that needs nothing but
    /// memory already at hand: a dead slot of the size class, or a new tail when no tail is
    /// pending and the committed arena has room. `None` (and nothing changed) otherwise.
    ///
    /// It never calls out (no page commit, no host callback, no logging), so a caller that must
    /// not be re-entered (the task heap's lock-free path) can use it where `alloc` could not be.
    #[inline(always)]
    pub fn try_alloc(&self, size: usize) -> Option<NonNull<u8>> {
        if size.wrapping_sub(1) >= FAST_MAX {
            return None;
        }
        let class = (size - 1) / GRANULE;
        if self.table().heads[class] != NONE {
            return Some(self.reuse(class, size, NONE));
        }
        self.try_alloc_tail(size)
    }

    /// The part of [`try_alloc`](Self::try_alloc) that reuses a dead slot of the size class:
    /// `None` (and nothing changed) when there is none, or for a size past the fast path.
    #[inline(always)]
    pub fn try_reuse(&self, size: usize) -> Option<NonNull<u8>> {
        if size.wrapping_sub(1) >= FAST_MAX {
            return None;
        }
        let class = (size - 1) / GRANULE;
        (self.table().heads[class] != NONE).then(|| self.reuse(class, size, NONE))
    }

    /// The new-tail half of [`try_alloc`](Self::try_alloc) (size 1 to 1024).
    #[inline(always)]
    fn try_alloc_tail(&self, size: usize) -> Option<NonNull<u8>> {
        // A new root ends the pending tail: record it (without calling out).
        self.materialize_no_callout();
        let top = self.top.get();
        let limit = top.wrapping_add(LOG_WINDOW);
        if limit as usize > self.fast_end.get() as usize {
            return None;
        }
        self.start_tail(top, (size + (GRANULE - 1)) & !(GRANULE - 1), size, NONE, limit);
        // SAFETY: top lies inside the reservation, derived from its base: non-null.
        Some(unsafe { NonNull::new_unchecked(top) })
    }

    /// A root block of `size` bytes and a block of `child` bytes recorded as its embedded
    /// pointer, as a new pending tail of two blocks (what `AllocConnections` builds), from memory
    /// at hand. `None` (and nothing changed but, perhaps, a pending tail recorded) when either
    /// size is 0 or past the fast path, when a dead slot of the root's size class waits for reuse
    /// (the general path takes it, so that memory stays bounded), or when the committed arena has
    /// no room for a tail window.
    ///
    /// Like [`try_alloc`](Self::try_alloc) it never calls out.
    #[inline(always)]
    pub fn try_alloc_pair(&self, size: usize, child: usize) -> Option<(NonNull<u8>, NonNull<u8>)> {
        if size.wrapping_sub(1) >= FAST_MAX || child.wrapping_sub(1) >= FAST_MAX {
            return None;
        }
        if self.table().heads[(size - 1) / GRANULE] != NONE {
            return None;
        }
        self.materialize_no_callout();
        let top = self.top.get();
        let limit = top.wrapping_add(LOG_WINDOW);
        if limit as usize > self.fast_end.get() as usize {
            return None;
        }
        let ext = (size + (GRANULE - 1)) & !(GRANULE - 1);
        self.start_tail(top, ext, size, NONE, limit);
        let q = top.wrapping_add(ext);
        // SAFETY: `q` is 16-aligned and below `top + 2 * FAST_MAX < limit <= root + LOG_WINDOW`:
        // its entry lies inside the log.
        unsafe { self.entry(q).write(child as u32) };
        self.top.set(q.wrapping_add((child + (GRANULE - 1)) & !(GRANULE - 1)));
        // SAFETY: both lie inside the reservation, derived from its base: non-null.
        Some(unsafe { (NonNull::new_unchecked(top), NonNull::new_unchecked(q)) })
    }

    /// Make the dead slot at the head of `class`'s free list a live block of `size` bytes under
    /// `parent` (`NONE`: a root). The free list must not be empty.
    #[inline]
    fn reuse(&self, class: usize, size: usize, parent: u32) -> NonNull<u8> {
        let t = self.table();
        let i = t.heads[class];
        debug_assert!(i != NONE, "reuse from an empty free list");
        debug_assert!(t.is_dead(i), "free list of class {class} holds a live record {i}");
        // SAFETY: free-list entries are dead records below count.
        let off = unsafe { t.get(i) }.off as usize * GRANULE;
        let next = t.revive(i, size);
        t.heads[class] = next;
        t.hints[off / GRANULE % table::HINTS] = i;
        if parent != NONE {
            t.link_under(i, parent);
        }
        t.live_blocks += 1;
        t.live_bytes += size;
        // SAFETY: the slot lies inside the reservation, derived from its base: non-null.
        unsafe { NonNull::new_unchecked(self.ptr_at(off)) }
    }

    /// Allocate a tracked block as an embedded pointer of `parent`: freeing `parent` frees it.
    ///
    /// Fails with [`Error::NotABlock`] / [`Error::ForeignPointer`] if `parent` is not a live block.
    #[inline]
    pub fn alloc_child(&self, parent: NonNull<u8>, layout: Layout) -> Result<NonNull<u8>, Error> {
        let size = layout.size();
        if parent.as_ptr() == self.root.get() && layout.align() <= GRANULE && size.wrapping_sub(1) < FAST_MAX {
            // The parent is the tail root (non-null): the child joins the tail.
            let top = self.top.get();
            let new = top.wrapping_add((size + (GRANULE - 1)) & !(GRANULE - 1));
            if new as usize <= self.limit.get() as usize {
                // SAFETY: `top < new <= limit <= root + LOG_WINDOW` and `top` is 16-aligned: the
                // entry lies inside the log.
                unsafe { self.entry(top).write(size as u32) };
                self.top.set(new);
                // SAFETY: top lies inside the reservation, derived from its base: non-null.
                return Ok(unsafe { NonNull::new_unchecked(top) });
            }
        }
        self.alloc_slow(Some(parent), layout)
    }

    /// A bump cursor for tracked children of `parent` that keeps the tail's bump state in locals
    /// (registers) until it is dropped: the fastest way to hang many blocks under one block. Every
    /// block it hands out is a tracked child of `parent`, exactly as from
    /// [`alloc_child`](Self::alloc_child): `size_of`, `owns`, `free`, `realloc`, `reset` and the
    /// stats treat it the same. The region is borrowed meanwhile, so nothing else allocates.
    ///
    /// While `parent` is the root of the pending tail (the block allocated last with
    /// [`alloc`](Self::alloc), as a request's header is), a child is a bump and one store to the
    /// tail log; anything else (another parent, a block past the tail window or the committed
    /// arena, alignment above 16, more than 1 KiB) takes `alloc_child`'s path.
    ///
    /// Fails with [`Error::NotABlock`] / [`Error::ForeignPointer`] if `parent` is not a live block.
    /// A cursor that is leaked (`mem::forget`) never writes its state back: the blocks it handed
    /// out are then not allocated (as if freed), and the region hands their memory out again.
    ///
    /// ```
    /// use core::alloc::Layout;
    /// let mut r = napalloc::Region::new().unwrap();
    /// let h = r.alloc(Layout::new::<[u64; 2]>()).unwrap();
    /// {
    ///     let mut c = r.child_cursor(h).unwrap();
    ///     for _ in 0..16 {
    ///         c.alloc(Layout::new::<[u64; 4]>()).unwrap();
    ///     }
    /// } // the bump state is written back here
    /// assert_eq!(r.stats().live_blocks, 17);
    /// // SAFETY: nothing uses the blocks afterwards.
    /// unsafe { r.free(h).unwrap() }; // frees the 16 children too
    /// assert_eq!(r.stats().live_blocks, 0);
    /// ```
    #[inline]
    pub fn child_cursor(&mut self, parent: NonNull<u8>) -> Result<ChildCursor<'_>, Error> {
        // The top may lie past `limit` (a slow-path child that ends past the window): then
        // nothing fits inline anyway, and the top's entry may lie outside the log.
        let (top, limit, log_k) =
            if parent.as_ptr() == self.root.get() && self.top.get() as usize <= self.limit.get() as usize {
                (self.top.get(), self.limit.get(), self.log_k.get())
            } else {
                self.child_cursor_other(parent)?
            };
        // One construction for both paths: the cursor's region is `self`, not a copy of it
        // read back from a slow path's result.
        Ok(ChildCursor { top, limit, log_k, parent, region: self })
    }

    /// Allocate a tracked root block (as [`alloc`](Self::alloc)) and return a
    /// [`child_cursor`](Self::child_cursor) for its children: a request's header and everything
    /// hanging off it. [`ChildCursor::parent`] is the new block.
    ///
    /// Unlike `alloc`, the block does not take a dead slot of its size class: it starts a new
    /// pending tail whenever the committed arena has room, so that its children are bumped
    /// inline (dead slots are left to `alloc` and `alloc_child`). A cursor that is leaked
    /// (`mem::forget`) leaves the new block unallocated too, with its children.
    ///
    /// ```
    /// use core::alloc::Layout;
    /// let mut r = napalloc::Region::new().unwrap();
    /// {
    ///     let mut c = r.alloc_with_cursor(Layout::new::<[u64; 2]>()).unwrap();
    ///     let slots = c.alloc(Layout::new::<[usize; 8]>()).unwrap();
    ///     assert_ne!(slots, c.parent());
    /// }
    /// assert_eq!(r.stats().live_blocks, 2);
    /// r.reset();
    /// ```
    #[inline]
    pub fn alloc_with_cursor(&mut self, layout: Layout) -> Result<ChildCursor<'_>, Error> {
        let size = layout.size();
        let (parent, (top, limit, log_k)) = 'inline: {
            if layout.align() <= GRANULE && size.wrapping_sub(1) < FAST_MAX && self.root.get().is_null() {
                let top = self.top.get();
                let limit = top.wrapping_add(LOG_WINDOW);
                if limit as usize <= self.fast_end.get() as usize {
                    // As `alloc`'s new tail (with no tail pending), without the dead-slot check,
                    // and without announcing it: the region's `root` and `top` stay as they are
                    // (no tail, the old top) until the cursor writes them back (its drop, or its
                    // slow path before anything else). A leaked cursor thus leaves the region as
                    // it was, the new root unallocated; a cursor dropped just before a `reset`
                    // costs no store of them at all.
                    let ext = (size + (GRANULE - 1)) & !(GRANULE - 1);
                    let log = self.log_buf.start();
                    // SAFETY: entry 0 is the log's first 4 bytes.
                    unsafe { log.cast::<u32>().write(size as u32) };
                    let log_k = log.wrapping_sub(top as usize);
                    self.log_k.set(log_k);
                    self.last.set(core::ptr::null_mut());
                    self.limit.set(limit);
                    // SAFETY: top lies inside the reservation, derived from its base: non-null.
                    let p = unsafe { NonNull::new_unchecked(top) };
                    break 'inline (p, (top.wrapping_add(ext), limit, log_k));
                }
            }
            self.alloc_with_cursor_slow(layout)?
        };
        Ok(ChildCursor { top, limit, log_k, parent, region: self })
    }

    /// [`alloc_with_cursor`](Self::alloc_with_cursor) past the inline case: a pending tail to
    /// record first, a size or alignment for `alloc`'s slow path, or no room.
    #[cold]
    #[inline(never)]
    fn alloc_with_cursor_slow(&self, layout: Layout) -> Result<(NonNull<u8>, CursorState), Error> {
        let size = layout.size();
        if layout.align() <= GRANULE && size.wrapping_sub(1) < FAST_MAX {
            self.materialize();
            let top = self.top.get();
            let limit = top.wrapping_add(LOG_WINDOW);
            if limit as usize <= self.fast_end.get() as usize {
                self.start_tail(top, (size + (GRANULE - 1)) & !(GRANULE - 1), size, NONE, limit);
                // SAFETY: top lies inside the reservation, derived from its base: non-null.
                let p = unsafe { NonNull::new_unchecked(top) };
                return Ok((p, self.cursor_state(p)));
            }
        }
        let p = self.alloc_slow(None, layout)?;
        Ok((p, self.cursor_state(p)))
    }

    /// [`child_cursor`](Self::child_cursor) for a parent that is not the tail root (or a tail
    /// whose top is past `limit`): checks the parent, and returns the state of a cursor whose
    /// every allocation takes `alloc_child`'s path until its parent is the tail root with room
    /// again.
    #[cold]
    #[inline(never)]
    fn child_cursor_other(&self, parent: NonNull<u8>) -> Result<CursorState, Error> {
        self.peek_size(parent.as_ptr())?;
        Ok(self.cursor_state(parent))
    }

    /// The state a [`ChildCursor`] of `parent` continues with (see its invariant): the tail's
    /// when `parent` is the tail root and the top is not past `limit`, else the top, a null
    /// limit and the log's spare slot.
    fn cursor_state(&self, parent: NonNull<u8>) -> CursorState {
        let top = self.top.get();
        if parent.as_ptr() == self.root.get() && top as usize <= self.limit.get() as usize {
            (top, self.limit.get(), self.log_k.get())
        } else {
            let spare = self.log_buf.start().wrapping_add(LOG_WINDOW);
            (top, core::ptr::null_mut(), spare.wrapping_sub(top as usize))
        }
    }

    /// The part of [`alloc_child`](Self::alloc_child) (size 1 to 1024, alignment 16) that needs
    /// nothing but memory already at hand: a child of the tail root bumped under `limit`, or a
    /// dead slot of the size class linked under a recorded `parent`. `None` (and nothing changed
    /// but, perhaps, a pending tail recorded) otherwise, also when `parent` is not a live block
    /// (`alloc_child` then reports it).
    ///
    /// Like [`try_alloc`](Self::try_alloc) it never calls out (no page commit, no host callback,
    /// no logging), for the task heap's lock-free path.
    #[inline]
    pub fn try_alloc_child(&self, parent: NonNull<u8>, size: usize) -> Option<NonNull<u8>> {
        if size.wrapping_sub(1) >= FAST_MAX {
            return None;
        }
        if parent.as_ptr() == self.root.get() {
            // As in `alloc_child`: the child joins the tail.
            let top = self.top.get();
            let new = top.wrapping_add((size + (GRANULE - 1)) & !(GRANULE - 1));
            if new as usize > self.limit.get() as usize {
                return None;
            }
            // SAFETY: `top < new <= limit <= root + LOG_WINDOW` and `top` is 16-aligned: the
            // entry lies inside the log.
            unsafe { self.entry(top).write(size as u32) };
            self.top.set(new);
            // SAFETY: top lies inside the reservation, derived from its base: non-null.
            return Some(unsafe { NonNull::new_unchecked(top) });
        }
        let class = (size - 1) / GRANULE;
        if self.table().heads[class] == NONE {
            return None;
        }
        let off = self.check_range(parent.as_ptr()).ok()?;
        // As in `lookup`, with the no-callout materialization.
        if parent.as_ptr() >= self.root.get() || self.tail_nested() {
            self.materialize_no_callout();
        }
        let p = self.find_hinted(off / GRANULE)?;
        Some(self.reuse(class, size, p))
    }

    /// The live record starting at granule `g`: the hint cache first (a block looked up soon
    /// after it was handed out, as the NapUtil functions do), then the window index. Only
    /// materialized blocks have records.
    #[inline(always)]
    fn find_hinted(&self, g: usize) -> Option<u32> {
        let t = self.table();
        let h = t.hints[g % table::HINTS];
        // Trusted only for a record below count that starts at `g` (see `Table::hints`).
        // SAFETY: h < count <= cap.
        if h < t.count && unsafe { t.get(h).off } as usize == g {
            return (!t.is_dead(h)).then_some(h);
        }
        t.find(g)
    }

    /// Record every tail block in the side table. Infallible: a tail is only started when the
    /// table has room for a full log and the window index covers the committed arena.
    #[inline]
    fn materialize(&self) {
        if !self.root.get().is_null() {
            self.materialize_tail();
        }
    }

    #[cold]
    #[inline(never)]
    fn materialize_tail(&self) {
        self.record_tail();
        self.refresh_fast_end();
    }

    /// Record the tail without any call out of the region (see `record_tail`). If the table
    /// then lacks room for another full log, `fast_end` drops to the base, so that no tail
    /// starts inline until the slow path makes room. For the task heap's lock-free path.
    fn materialize_no_callout(&self) {
        if self.root.get().is_null() {
            return;
        }
        self.record_tail();
        let t = self.table();
        if t.count as usize + LOG_CAP >= t.cap as usize {
            self.fast_end.set(self.base.as_ptr());
        }
    }

    /// Record the tail's blocks in the table and empty the log. Never calls out of the region
    /// (no commit, no page source): the records fit in the capacity reserved before the tail
    /// started (`fast_end` / `reserve(LOG_CAP + 1)`).
    fn record_tail(&self) {
        let t = self.table();
        let top = self.top.get();
        let mut p = self.root.get();
        let mut off = self.off_of(p);
        let mut root_idx = NONE;
        let mut prev_idx = NONE;
        let mut k = 0;
        while (p as usize) < top as usize {
            // SAFETY: `p` walks the tail's block starts from the root (`root` invariant).
            let (next, e) = unsafe { self.tail_next(p) };
            p = next;
            let size = (e & !NESTED) as usize;
            let parent = if k == 0 {
                if e & NESTED != 0 {
                    self.root_prev.get() & !PARENT
                } else {
                    NONE
                }
            } else if e & NESTED != 0 {
                prev_idx
            } else {
                root_idx
            };
            let i = if k == 0 {
                t.push_reserved((off / GRANULE) as u32, size as u32, parent)
            } else {
                // The parent and its children so far are blocks of this tail, recorded just now.
                let i = t.push_reserved((off / GRANULE) as u32, size as u32, NONE);
                t.link_in_tail(i, parent);
                i
            };
            if k == 0 {
                root_idx = i;
            }
            prev_idx = i;
            off += tail_extent(size);
            k += 1;
        }
        debug_assert_eq!(off, self.top_off(), "the tail ends at the top");
        self.root.set(core::ptr::null_mut());
    }

    /// Re-derive `fast_end`: inline tails may start only while the table can take a full log.
    fn refresh_fast_end(&self) {
        let ok = self.table().reserve(LOG_CAP + 1).is_ok();
        self.fast_end.set(if ok { self.end.get() } else { self.base.as_ptr() });
    }

    /// Append a block of `size` bytes to the tail at the top (parent: the root, or with `NESTED`
    /// the newest block). The caller checked that the tail is not empty and that the top lies
    /// inside the tail window (`top < root + LOG_WINDOW`).
    fn log_child(&self, size: usize, flag: u32) -> Result<NonNull<u8>, Error> {
        let top = self.top.get();
        let need = self.top_off().checked_add(tail_extent(size)).ok_or(Error::TooLarge)?;
        if need > self.off_of(self.end.get()) {
            self.grow_arena(need)?;
        }
        // SAFETY: `top` is 16-aligned and inside the tail window (caller): the entry lies inside
        // the log.
        unsafe { self.entry(top).write(size as u32 | flag) };
        self.top.set(self.ptr_at(need));
        self.last.set(top);
        // SAFETY: inside the reservation, derived from its base: non-null.
        Ok(unsafe { NonNull::new_unchecked(top) })
    }

    /// The general allocation path: reuse a dead slot, or bump (and start a new tail if the block
    /// can be logged), or record the block at once.
    #[cold]
    #[inline(never)]
    fn alloc_slow(&self, parent: Option<NonNull<u8>>, layout: Layout) -> Result<NonNull<u8>, Error> {
        let size = layout.size();
        if size > u32::MAX as usize {
            return Err(Error::TooLarge);
        }
        let align = layout.align().max(GRANULE);
        let g = table::granules(size);
        let class = table::class_of_granules(g);
        // A child of the tail root or of the newest tail block joins the tail if the log has room.
        if let Some(pp) = parent {
            let root = self.root.get();
            let in_window = self.top_off() < self.off_of(root).wrapping_add(LOG_WINDOW);
            if !root.is_null() && align == GRANULE && size <= LOG_SIZE_MAX && in_window {
                if pp.as_ptr() == root {
                    return self.log_child(size, 0);
                }
                if pp.as_ptr() == self.last() {
                    return self.log_child(size, NESTED);
                }
            }
        }
        // A parent that is no live block is refused before anything changes (materializing the
        // tail would commit table pages for a call that fails).
        if let Some(pp) = parent {
            self.peek_size(pp.as_ptr())?;
        }
        self.materialize();
        let p = match parent {
            None => NONE,
            Some(pp) => self.lookup(pp)?,
        };
        let t = self.table();
        // 1. a dead slot of the same class (alignment 16 only: slots are 16-aligned)
        if align == GRANULE && t.heads[class] != NONE {
            return Ok(self.reuse(class, size, p));
        }
        // 2. bump
        let base = self.base.as_ptr() as usize;
        let top = self.top_off();
        let start = (base + top).checked_add(align - 1).ok_or(Error::TooLarge)? & !(align - 1);
        let start = start - base;
        let ext = table::class_granules(class) * GRANULE;
        let need = start.checked_add(ext).ok_or(Error::TooLarge)?;
        if need > self.off_of(self.end.get()) {
            self.grow_arena(need)?;
        }
        let t = self.table();
        t.reserve(LOG_CAP + 1)?;
        // The table has room for a full log now: tails may start inline again.
        self.fast_end.set(self.end.get());
        let ptr = self.ptr_at(start);
        if align == GRANULE && size <= LOG_SIZE_MAX {
            // 2a. the block starts a new tail (start == top: no padding)
            let cap = ptr.wrapping_add(LOG_WINDOW);
            let end = self.end.get();
            let limit = if (cap as usize) < end as usize { cap } else { end };
            self.start_tail(ptr, ext, size, if p == NONE { NONE } else { PARENT | p }, limit);
        } else {
            // 2b. recorded at once
            let i = t.push((start / GRANULE) as u32, size as u32, p)?;
            if align > GRANULE {
                // SAFETY: no other reference to the map is alive (see `table()`).
                unsafe { (*self.big_align.get()).insert(i, align) };
                self.slow_free.set(true);
            }
            self.top.set(self.ptr_at(need));
        }
        // The block can be freed, and the top rewound, on a fast path before any other
        // slow-path event: note it now (a large block, or a new tail's first).
        self.note_high_water();
        // SAFETY: inside the reservation: non-null.
        Ok(unsafe { NonNull::new_unchecked(ptr) })
    }

    #[cold]
    fn grow_arena(&self, need: usize) -> Result<(), Error> {
        if need > self.arena.reserved() {
            return Err(if need - self.top_off() > self.arena.reserved() {
                Error::TooLarge
            } else {
                Error::ReservationExhausted
            });
        }
        self.note_high_water();
        self.arena.ensure(need)?;
        // Keep the window index ahead of the arena, so materializing never fails.
        self.table().ensure_windows(self.arena.committed())?;
        let end = self.ptr_at(self.arena.committed());
        self.end.set(end);
        self.refresh_fast_end();
        if !self.root.get().is_null() {
            let cap = self.root.get().wrapping_add(LOG_WINDOW);
            self.limit.set(if (cap as usize) < end as usize { cap } else { end });
        }
        Ok(())
    }

    #[inline]
    fn note_high_water(&self) {
        let top = self.top.get();
        if top as usize > self.high_water.get() as usize {
            self.high_water.set(top);
        }
    }

    /// The live block starting at `p`, materializing the tail first.
    fn lookup(&self, p: NonNull<u8>) -> Result<u32, Error> {
        let off = self.check_range(p.as_ptr())?;
        // Blocks below the tail are all in the table already, but the records of their children
        // are complete only if the tail does not hang under one of them.
        if p.as_ptr() >= self.root.get() || self.tail_nested() {
            self.materialize();
        }
        self.table().find(off / GRANULE).ok_or(Error::NotABlock)
    }

    /// True if the pending tail's root is a child of a recorded block: that block's record does
    /// not show this child until the tail is materialized.
    #[inline]
    fn tail_nested(&self) -> bool {
        // SAFETY: entry 0 is written whenever the tail is not empty (root non-null).
        !self.root.get().is_null() && unsafe { self.entry_of(self.root.get()) } & NESTED != 0
    }

    #[inline]
    fn check_range(&self, p: *const u8) -> Result<usize, Error> {
        let off = self.off_of(p);
        if off >= self.reserved {
            return Err(Error::ForeignPointer);
        }
        if off % GRANULE != 0 || off >= self.top_off() {
            return Err(Error::NotABlock);
        }
        Ok(off)
    }

    /// The size of the live block starting at `p`, without changing anything.
    fn peek_size(&self, p: *const u8) -> Result<usize, Error> {
        let off = self.check_range(p)?;
        let root = self.root.get();
        if !root.is_null() && off >= self.off_of(root) {
            // walk the tail (at most LOG_CAP blocks)
            let mut q = root;
            while (q as usize) <= p as usize {
                // SAFETY: `q` walks the tail's block starts from the root, below `p < top`.
                let (next, e) = unsafe { self.tail_next(q) };
                if core::ptr::eq(q, p) {
                    return Ok((e & !NESTED) as usize);
                }
                q = next;
            }
            return Err(Error::NotABlock);
        }
        let i = self.find_hinted(off / GRANULE).ok_or(Error::NotABlock)?;
        Ok(self.table().size(i))
    }

    fn report_bad(&self, what: &str, p: NonNull<u8>, e: Error) -> Error {
        self.bad_pointers.set(self.bad_pointers.get() + 1);
        log::warn!("napalloc: {what}({p:p}) refused: {e}");
        e
    }

    /// Free `ptr` and, recursively, every block allocated as its child.
    ///
    /// A foreign, interior or already freed pointer returns an error and changes nothing (it is
    /// counted in [`Stats::bad_pointers`]).
    ///
    /// # Safety
    /// No reference into the freed blocks is used afterwards.
    #[inline]
    pub unsafe fn free(&self, ptr: NonNull<u8>) -> Result<(), Error> {
        if ptr.as_ptr() == self.root.get() {
            self.rewind();
            return Ok(());
        }
        self.free_slow(ptr, true)
    }

    /// Free the whole tail (the root's subtree): move the top and the log back.
    #[inline]
    fn rewind(&self) {
        if self.scrub.on_free {
            self.scrub_tail();
        }
        self.rewind_unscrubbed();
    }

    /// [`rewind`](Self::rewind) without the scrub.
    #[inline(always)]
    fn rewind_unscrubbed(&self) {
        // The tail root started at the top: there is no padding before it.
        self.top.set(self.root.get());
        self.root.set(core::ptr::null_mut());
    }

    #[cold]
    fn scrub_tail(&self) {
        let root = self.root.get();
        // SAFETY: [root, top) is committed arena memory owned by the tail.
        unsafe { root.write_bytes(0, self.top.get() as usize - root as usize) };
    }

    #[cold]
    #[inline(never)]
    fn free_slow(&self, ptr: NonNull<u8>, cascade: bool) -> Result<(), Error> {
        // The newest tail block has no children (they would be newer): pop it.
        let in_tail = ptr.as_ptr() as usize >= self.root.get() as usize && ptr.as_ptr() < self.top.get();
        if in_tail && !self.root.get().is_null() && ptr.as_ptr() == self.last() {
            let last = ptr.as_ptr();
            if last == self.root.get() {
                self.rewind();
                return Ok(());
            }
            if self.scrub.on_free {
                // SAFETY: [last, top) is the block's committed slot.
                unsafe { last.write_bytes(0, self.top.get() as usize - last as usize) };
            }
            self.pop_newest(last);
            return Ok(());
        }
        let i = self.lookup(ptr).map_err(|e| self.report_bad("free", ptr, e))?;
        let t = self.table();
        let leaf = t.child(i) == NONE;
        if leaf && !self.slow_free.get() {
            // A leaf (every CoTaskMem block): no subtree walk.
            t.free_leaf(i);
            return Ok(());
        }
        if !cascade {
            t.detach_children(i);
        }
        self.free_record(i);
        Ok(())
    }

    /// Free `ptr` alone: its children are not freed but become roots (what `CoTaskMemFree` does
    /// to a block whose embedded pointers the caller still owns).
    ///
    /// # Safety
    /// No reference into the freed block is used afterwards.
    #[inline]
    pub unsafe fn free_one(&self, ptr: NonNull<u8>) -> Result<(), Error> {
        // SAFETY: forwarded caller guarantee.
        if unsafe { self.try_free_leaf(ptr.as_ptr()) } {
            return Ok(());
        }
        self.free_slow(ptr, false)
    }

    /// The inline part of [`free_one`](Self::free_one): free `p` if it is a live block without
    /// children that needs no scrubbing or alignment bookkeeping (every `CoTaskMem` block in
    /// steady state) or the only block of the pending tail. `false` (and nothing changed) for
    /// anything else, including any pointer that is not a live block start of this region.
    /// For such a block, freeing it alone and freeing its tree ([`free`](Self::free)) are the same.
    ///
    /// It never calls out (no page commit, no host callback, no logging).
    ///
    /// # Safety
    /// If `p` is a live block, no reference into it is used afterwards.
    #[inline(always)]
    pub unsafe fn try_free_leaf(&self, p: *const u8) -> bool {
        // SAFETY: forwarded caller guarantee; `PLAIN = false` checks `slow_free` itself.
        unsafe { self.free_leaf_inline::<false>(p) }
    }

    /// [`try_free_leaf`](Self::try_free_leaf) for a region that never scrubs freed memory and
    /// never holds a block aligned above 16 bytes (the task heap's regions: every block they
    /// hand out is 16-aligned, and realloc keeps alignment), so that freeing never needs more
    /// than a free-list push: the check for that is skipped (and only asserted in debug builds).
    ///
    /// # Safety
    /// As `try_free_leaf`, and the region was built without scrubbing and has only been asked
    /// for alignments of at most 16.
    #[inline(always)]
    pub unsafe fn try_free_leaf_plain(&self, p: *const u8) -> bool {
        debug_assert!(!self.slow_free.get(), "try_free_leaf_plain on a region that scrubs or over-aligns");
        // SAFETY: forwarded caller guarantee.
        unsafe { self.free_leaf_inline::<true>(p) }
    }

    /// # Safety
    /// As `try_free_leaf`; with `PLAIN`, as `try_free_leaf_plain`.
    #[inline(always)]
    unsafe fn free_leaf_inline<const PLAIN: bool>(&self, p: *const u8) -> bool {
        // A childless recorded block (every CoTaskMem block in steady state): a hint-cache or
        // window lookup and a free-list push, inline. Tail blocks have no record: both miss them.
        let off = self.off_of(p);
        // A recorded block whose child is the pending tail's root does not know that child yet
        // (its record says childless): with such a tail, take the path that materializes.
        if (PLAIN || !self.slow_free.get()) && !self.tail_nested() {
            let t = self.table();
            let g = off / GRANULE;
            let h = t.hints[g % table::HINTS];
            // The hint is trusted only for a record below count that starts exactly at `p` (the
            // compare of whole offsets also refuses a pointer that is not 16-aligned).
            // SAFETY: h < count <= cap.
            let i = if h < t.count && unsafe { t.get(h).off } as usize * GRANULE == off {
                Some(h)
            } else if off % GRANULE == 0 {
                t.slot(g)
            } else {
                None
            };
            if let Some(i) = i {
                // SAFETY: `i` is a record below count <= cap; the records live in their own
                // reservation, so this pointer does not alias the table's fields.
                let rp = unsafe { t.recs.add(i as usize) };
                // `prev` and `child`, adjacent in the `repr(C)` record, read at once: a root
                // without children has both `NONE` (0 encoded; `DEAD` is not).
                // SAFETY: bytes `LEAF_WORD..LEAF_WORD + 4` of a record: its `prev` and `child`.
                let prev_child = unsafe { rp.cast::<u8>().add(table::LEAF_WORD).cast::<u32>().read_unaligned() };
                // SAFETY: as above.
                let r = unsafe { &mut *rp };
                if prev_child == 0 {
                    t.free_root_leaf(i, r);
                    return true;
                }
                if r.childless() && !r.is_dead() {
                    t.free_leaf(i);
                    return true;
                }
                return false;
            }
        }
        // The only block of the pending tail: a rewind.
        if core::ptr::eq(p, self.root.get()) && self.tail_is_single() {
            if PLAIN {
                // No scrubbing (caller), so no call: the task heap's export stays a leaf.
                debug_assert!(!self.scrub.on_free, "try_free_leaf_plain on a region that scrubs");
                self.rewind_unscrubbed();
            } else {
                self.rewind();
            }
            return true;
        }
        false
    }

    /// Free `p` if it is the newest block of a pending tail of two or more blocks (it has no
    /// children: they would be newer): a pop of the top, as `free_slow` does. `false` (and
    /// nothing changed) for anything else, and in a region that scrubs freed memory. A
    /// `Connections` freed right after it was built frees its slot array this way, then its
    /// structure by a rewind ([`try_free_leaf`](Self::try_free_leaf)). Kept out of
    /// `try_free_leaf`, whose callers inline it into every free.
    ///
    /// It never calls out (no page commit, no host callback, no logging).
    ///
    /// # Safety
    /// If `p` is a live block, no reference into it is used afterwards.
    #[inline]
    pub unsafe fn try_pop_tail(&self, p: *const u8) -> bool {
        let root = self.root.get();
        if self.scrub.on_free || root.is_null() || core::ptr::eq(p, root) || !core::ptr::eq(p, self.last()) {
            return false;
        }
        self.pop_newest(p as *mut u8);
        true
    }

    /// The pending tail seen as one structure and at most one block after it (what
    /// `AllocConnections` builds: a structure and its slot array): if `p` is the tail root, the
    /// root is not itself an embedded pointer of a recorded block, and the tail holds at most one
    /// more block, `Some((size_of(p), q, size_of(q)))` with `q` that block (null and 0 if there is
    /// none). `None` for anything else (the caller then asks [`size_of`](Self::size_of)).
    ///
    /// Every block of a tail is a descendant of its root, so such a `q` is `p`'s only embedded
    /// block and `[p, top)` is `p`'s whole tree. It reads nothing but the region and the log.
    #[inline(always)]
    pub fn tail_pair(&self, p: *const u8) -> Option<(usize, *mut u8, usize)> {
        let root = self.root.get();
        if root.is_null() || !core::ptr::eq(p, root) {
            return None;
        }
        // Sizes past the fast path (whose extents need more than a round-up) are left to the
        // general query; so is a root that is an embedded pointer itself (`NESTED` set: its entry
        // is then above `FAST_MAX` as well).
        // SAFETY: `root` is the first tail block.
        let e0 = unsafe { self.entry_of(root) };
        if e0 > FAST_MAX as u32 {
            return None;
        }
        let q = root.wrapping_add(small_extent(e0));
        let top = self.top.get();
        if q == top {
            return Some((e0 as usize, core::ptr::null_mut(), 0));
        }
        // SAFETY: `q` is below the top, so it is the second tail block.
        let e1 = unsafe { self.entry_of(q) } & !NESTED;
        (e1 <= FAST_MAX as u32 && q.wrapping_add(small_extent(e1)) == top).then_some((e0 as usize, q, e1 as usize))
    }

    /// The end of the pending tail (the bump pointer): what [`try_free_tail_to`](Self::try_free_tail_to)
    /// compares with.
    #[inline(always)]
    pub fn tail_end(&self) -> *const u8 {
        self.top.get()
    }

    /// Free `p` with its whole tree if that is the pending tail described by
    /// [`tail_pair`](Self::tail_pair) with its second block `q` (or with no second block, for a
    /// null `q`): a rewind. `false` (and nothing changed) for anything else, and in a region that
    /// scrubs freed memory. It never calls out.
    ///
    /// # Safety
    /// If `p` is a live block, nothing uses it or `q` afterwards.
    #[inline(always)]
    pub unsafe fn try_free_tail_pair(&self, p: *const u8, q: *const u8) -> bool {
        match self.tail_pair(p) {
            Some((_, second, _)) if core::ptr::eq(second, q) && !self.scrub.on_free => {
                self.rewind_unscrubbed();
                true
            }
            _ => false,
        }
    }

    /// Free `p` with its whole tree if `p` is still the root of the pending tail and the tail
    /// still ends at `end`: one rewind. `false` (and nothing changed) for anything else, and in
    /// a region that scrubs freed memory. It never calls out.
    ///
    /// This is the cheap second check of a pair that [`tail_pair`](Self::tail_pair) found (with
    /// `end` the [`tail_end`](Self::tail_end) of then), for a caller that called out meanwhile.
    /// A tail only grows at its end and shrinks by popping its newest block, every block of it
    /// is a descendant of its root, and nothing grows below a pending block; so with the same
    /// root and the same end, `[p, end)` still holds `p`'s whole tree and nothing else (a block
    /// popped and replaced meanwhile can only have been replaced by another block of that
    /// tree). A root that is itself an embedded pointer of a recorded block is not linked into
    /// that block's record until the tail is materialized, so nothing else refers to it.
    ///
    /// # Safety
    /// If `p` is a live block, nothing uses it or its tree afterwards.
    #[inline(always)]
    pub unsafe fn try_free_tail_to(&self, p: *const u8, end: *const u8) -> bool {
        let root = self.root.get();
        if root.is_null() || !core::ptr::eq(p, root) || !core::ptr::eq(end, self.top.get()) || self.scrub.on_free {
            return false;
        }
        self.rewind_unscrubbed();
        true
    }

    /// Drop `last`, the newest block of a tail of two or more blocks, from the tail: the top
    /// goes back to its start.
    #[inline(always)]
    fn pop_newest(&self, last: *mut u8) {
        debug_assert!(last != self.root.get(), "the tail root is rewound, not popped");
        self.top.set(last);
        // The hint stays valid unless it was the popped block (then the next `last` walks from
        // the root).
        if self.last.get() == last {
            self.last.set(core::ptr::null_mut());
        }
    }

    /// Free materialized record `i` and its subtree.
    fn free_record(&self, i: u32) {
        let t = self.table();
        let base = self.base.as_ptr();
        let scrub = self.scrub.on_free;
        // SAFETY: no other reference to the map is alive (see `table()`).
        let big = unsafe { &mut *self.big_align.get() };
        let has_big = !big.is_empty();
        t.free_subtree(i, |idx, off, size| {
            if scrub {
                let len = table::extent_granules(size) * GRANULE;
                // SAFETY: the slot [off, off + extent) is committed arena memory of this block.
                unsafe { base.add(off as usize * GRANULE).write_bytes(0, len) };
            }
            if has_big {
                big.remove(&idx);
            }
        });
        self.slow_free.set(self.scrub.on_free || !big.is_empty());
    }

    /// Resize the block at `ptr`, keeping its contents up to the smaller size, its alignment, its
    /// parent and its children. May move it.
    ///
    /// # Safety
    /// If the block moves, no reference to the old location is used afterwards.
    pub unsafe fn realloc(&self, ptr: NonNull<u8>, new_size: usize) -> Result<NonNull<u8>, Error> {
        if new_size > u32::MAX as usize {
            // still validate the pointer so a bad one is reported as such
            self.lookup(ptr).map_err(|e| self.report_bad("realloc", ptr, e))?;
            return Err(Error::TooLarge);
        }
        // In place: the newest tail block can grow or shrink at the top.
        if ptr.as_ptr() == self.last() && new_size <= LOG_SIZE_MAX {
            let off = self.off_of(ptr.as_ptr());
            let need = off + tail_extent(new_size);
            if need <= self.off_of(self.end.get()) || self.grow_arena(need).is_ok() {
                let e = self.entry(ptr.as_ptr());
                // SAFETY: `ptr` is the newest tail block (non-null `last`): its entry is in the log.
                unsafe { e.write((e.read() & NESTED) | new_size as u32) };
                self.top.set(self.ptr_at(need));
                return Ok(ptr);
            }
        }
        self.realloc_move(ptr, new_size)
    }

    #[cold]
    fn realloc_move(&self, ptr: NonNull<u8>, new_size: usize) -> Result<NonNull<u8>, Error> {
        let i = self.lookup(ptr).map_err(|e| self.report_bad("realloc", ptr, e))?;
        let t = self.table();
        let old_size = t.size(i);
        if table::extent_granules(new_size) == table::extent_granules(old_size) {
            t.set_size(i, new_size);
            t.live_bytes = t.live_bytes - old_size + new_size;
            return Ok(ptr);
        }
        // SAFETY: no other reference to the map is alive.
        let align = unsafe { (*self.big_align.get()).get(&i).copied() }.unwrap_or(GRANULE);
        let layout = Layout::from_size_align(new_size, align).map_err(|_| Error::TooLarge)?;
        let new = self.alloc_slow(None, layout)?;
        // SAFETY: both blocks are live and distinct; copy the smaller size.
        unsafe { core::ptr::copy_nonoverlapping(ptr.as_ptr(), new.as_ptr(), old_size.min(new_size)) };
        self.materialize();
        let t = self.table();
        let j = t.find(self.off_of(new.as_ptr()) / GRANULE).expect("the block just allocated is live");
        // Put j where i is in the tree, give it i's children, then free i alone.
        t.replace(i, j);
        self.free_record(i);
        Ok(new)
    }

    /// The requested size of the live block starting at `ptr` (`None` for anything else).
    #[inline]
    pub fn size_of(&self, ptr: NonNull<u8>) -> Option<usize> {
        // The first and the newest block of the pending tail without a walk of the log (a
        // structure and its array, queried by the NapUtil function that frees them).
        let p = ptr.as_ptr();
        if p == self.root.get() {
            // SAFETY: the root is not null (`ptr` is not): it is the first tail block.
            return Some((unsafe { self.entry_of(p) } & !NESTED) as usize);
        }
        if !self.root.get().is_null() && p == self.last() {
            // SAFETY: `last` is the newest tail block.
            return Some((unsafe { self.entry_of(p) } & !NESTED) as usize);
        }
        self.peek_size(p).ok()
    }

    /// True only for the start of a live block of this region.
    #[inline]
    pub fn owns(&self, ptr: NonNull<u8>) -> bool {
        self.size_of(ptr).is_some()
    }

    /// Run `f` with the commits of the arena and of the side table made at `level` (the commits
    /// of one critical allocation: its block and its record), then restore the region's own level.
    pub fn with_critical_level<R>(&self, level: CriticalLevel, f: impl FnOnce(&Self) -> R) -> R {
        let old = self.arena.set_level(level);
        let old_table = self.table().set_level(level);
        let r = f(self);
        self.table().set_level(old_table);
        self.arena.set_level(old);
        r
    }

    /// The tracked reservation: its start and length. Every block lies inside it, and it does
    /// not move while the region lives.
    pub fn arena_range(&self) -> (*const u8, usize) {
        (self.base.as_ptr(), self.arena.reserved())
    }

    /// Live tracked blocks (as [`stats`](Self::stats) counts them, without the rest).
    pub fn live_blocks(&self) -> usize {
        self.table().live_blocks + self.log_len()
    }

    /// True if `ptr` lies anywhere inside this region's tracked reservation.
    #[inline]
    pub fn contains(&self, ptr: *const u8) -> bool {
        self.off_of(ptr) < self.reserved
    }

    /// Free everything in O(1): the side table is not walked. Pages stay committed.
    ///
    /// One exception: the side table's overflow map (links between blocks recorded more than
    /// 16 K records apart, and sizes of blocks of 64 KiB or more) is cleared, in O(its entries),
    /// when it holds any. A region whose trees stay within a request's blocks and that holds no
    /// block that large (the common case) has none, and its reset stays O(1).
    #[inline]
    pub fn reset(&mut self) {
        // The top and the root are forgotten first, whatever path follows (the old top goes to
        // the slow path as an argument): a store to the top just before, such as a child
        // cursor's write-back, is then dead, and the compiler drops it.
        let top = self.top.get();
        self.top.set(self.base.as_ptr());
        self.root.set(core::ptr::null_mut());
        // Nothing recorded since the last reset (a request that stayed one pending tail): only
        // the high water is noted and the untracked arena forgotten. With no record there is no
        // free-list entry and no `big_align` entry either. The table is as it was, so `fast_end`
        // stays right as it is (if it sends roots to the slow path, that path restores it once it
        // has made room). A region that scrubs on reset never takes this path (`reset_gate`).
        if self.table.get_mut().count == self.reset_gate {
            debug_assert!(self.big_align.get_mut().is_empty(), "big_align entry without a record");
            if top as usize > self.high_water.get() as usize {
                self.high_water.set(top);
            }
            self.untracked.forget();
            return;
        }
        self.reset_slow(top);
    }

    #[cold]
    #[inline(never)]
    fn reset_slow(&mut self, top: *mut u8) {
        if top as usize > self.high_water.get() as usize {
            self.high_water.set(top);
        }
        let top = self.off_of(top);
        if self.scrub.on_reset && top > 0 {
            // SAFETY: [0, top) is committed arena memory and no block is live after the reset.
            unsafe { self.base.as_ptr().write_bytes(0, top) };
        }
        self.table.get_mut().reset();
        if self.fast_end.get() != self.end.get() {
            self.refresh_fast_end();
        }
        let big = self.big_align.get_mut();
        if !big.is_empty() {
            big.clear();
            self.slow_free.set(self.scrub.on_free);
        }
        self.untracked.forget();
    }

    /// Give committed memory beyond `retain` bytes (and beyond what is in use) back to the OS.
    /// Returns the bytes decommitted.
    pub fn trim(&mut self, retain: usize) -> Result<usize, Error> {
        let keep = retain.max(self.top_off());
        // SAFETY: nothing lives at or past top <= keep.
        let a = unsafe { self.arena.trim(keep) };
        // Every end below follows the arena's committed end whatever fails (a page source may
        // refuse any decommit): a stale end would let the fast path bump into decommitted pages.
        // It also stays within the window index: a `grow_arena` whose index commit failed left
        // arena pages that no block may use yet.
        let end = self.arena.committed().min(self.table().windows_cover());
        self.end.set(self.ptr_at(end));
        if !self.root.get().is_null() {
            let cap = self.root.get().wrapping_add(LOG_WINDOW);
            let end = self.end.get();
            self.limit.set(if (cap as usize) < end as usize { cap } else { end });
        }
        // Keep room for a full log beyond the records (a pending tail is materialized into it;
        // `refresh_fast_end` asks for it, so nothing is committed again right away) and the index
        // of the committed arena (blocks placed there are indexed without committing).
        let t = self.table();
        let b = t.trim(LOG_CAP + 1, self.arena.committed());
        // Like `refresh_fast_end`, but a trim commits nothing: without room (a region that never
        // allocated) roots take the slow path, which makes room.
        let room = t.cap as usize > t.count as usize + LOG_CAP;
        self.fast_end.set(if room { self.end.get() } else { self.base.as_ptr() });
        let c = self.untracked.trim(0);
        Ok(a? + b? + c?)
    }

    /// Let the OS take back every whole page of the arena that no live block's slot overlaps
    /// (dead slots waiting for reuse, padding, what lies past the top), while the live blocks
    /// around them stay. The pages stay committed and dead slots stay on their free lists: no
    /// metadata lives in the arena, so dropping those bytes loses nothing, and a reused slot
    /// reads as zero (Windows: as zero or as its old bytes). Resident memory drops, committed
    /// memory does not; for a host's pages nothing is done. The pending tail is materialized
    /// first; then O(records). Returns the bytes purged.
    pub fn purge_free(&mut self) -> usize {
        self.materialize();
        let (arena, t) = (&self.arena, self.table.get_mut());
        // `gap`: the granule where the current stretch of unused arena starts.
        let (mut purged, mut gap) = (0, 0);
        for i in 0..t.count {
            if t.is_dead(i) {
                continue;
            }
            // SAFETY: `i < count`.
            let g = unsafe { t.get(i) }.off as usize;
            if g > gap {
                // SAFETY: granules `[gap, g)` hold no live block (records are in address order):
                // nothing refers into them and nothing reads their bytes.
                purged += unsafe { arena.purge(gap * GRANULE, g * GRANULE) };
            }
            gap = gap.max(g + table::extent_granules(t.size(i)));
        }
        // SAFETY: as above, up to the committed end (nothing lives past the last record now
        // that the tail is materialized).
        purged + unsafe { arena.purge(gap * GRANULE, arena.committed()) }
    }

    /// Bump-allocate without a record: the fastest path, for memory that is only ever released
    /// by [`reset`](Self::reset). Such blocks cannot be freed one by one, and `owns` is false
    /// for them.
    #[inline(always)]
    pub fn alloc_untracked(&self, layout: Layout) -> Result<NonNull<u8>, Error> {
        self.untracked.alloc_layout(layout)
    }

    /// A register-resident bump cursor over the untracked arena (see [`PageArena::cursor`]).
    #[inline]
    pub fn untracked_cursor(&mut self) -> crate::arena::Cursor<'_> {
        self.untracked.cursor()
    }

    /// Counters; exact at any moment.
    pub fn stats(&self) -> Stats {
        self.note_high_water();
        let t = self.table();
        let (mut blocks, mut bytes) = (t.live_blocks, t.live_bytes);
        let mut p = self.root.get();
        if !p.is_null() {
            while (p as usize) < self.top.get() as usize {
                // SAFETY: `p` walks the tail's block starts from the root (`root` invariant).
                let (next, e) = unsafe { self.tail_next(p) };
                bytes += (e & !NESTED) as usize;
                blocks += 1;
                p = next;
            }
        }
        let u = self.untracked.stats();
        Stats {
            live_blocks: blocks,
            live_bytes: bytes,
            committed: self.arena.committed() + t.committed() + u.committed,
            reserved: self.arena.reserved() + t.reserved() + u.reserved,
            high_water: self.off_of(self.high_water.get()),
            table_committed: t.committed(),
            free_slots: t.count as usize - t.live_blocks,
            bad_pointers: self.bad_pointers.get(),
        }
    }
}

/// A [`ChildCursor`]'s `top`, `limit` and `log_k`.
type CursorState = (*mut u8, *mut u8, *mut u8);

/// A bump cursor for tracked children of one block (see [`Region::child_cursor`]). While its
/// parent is the tail root, the tail's bump state lives in the cursor, not in the region, so the
/// compiler can keep it in registers across user writes; it is written back when the cursor is
/// dropped.
#[derive(Debug)]
pub struct ChildCursor<'a> {
    /// The tail's top while `limit` is not null (the region's `top` is stale until the drop);
    /// otherwise a copy of the region's `top`.
    top: *mut u8,
    /// Not null: `parent` is the tail root and `limit` is the region's `limit`, with
    /// `top <= limit <= min(end, root + LOG_WINDOW)` (`alloc_child`'s inline bound). The region's
    /// `root` may then still be null (a tail started by `alloc_with_cursor` is announced only
    /// when the cursor writes back: its drop, or its slow path first thing), but the region's
    /// `limit`, `log_k` and `last` are those of the tail already, and nothing but the cursor can
    /// touch the region meanwhile (it holds it borrowed).
    /// Null: every allocation takes `alloc_child`'s path (a non-null `new <= null` never holds).
    limit: *mut u8,
    /// With the log's provenance, such that `log_k + top` is a 4-aligned `u32` inside the log's
    /// storage: the region's `log_k` while `limit` is not null (the entry of tail block `p` is
    /// at `log_k + p`, and `top - root <= LOG_WINDOW`), else pointing `top` at the spare slot
    /// past the window (which belongs to no block).
    log_k: *mut u8,
    /// A live block of the region (it cannot be freed while the region is borrowed).
    parent: NonNull<u8>,
    region: &'a mut Region,
}

impl ChildCursor<'_> {
    /// Allocate a tracked block of `layout` as a child of the cursor's parent (as
    /// [`Region::alloc_child`] does; alignment is at least 16).
    #[inline(always)]
    pub fn alloc(&mut self, layout: Layout) -> Result<NonNull<u8>, Error> {
        let size = layout.size();
        let top = self.top;
        // Said so that the compiler rounds a constant size at compile time.
        // SAFETY: the cursor's top is the region's top or a tail block's end, both 16-aligned
        // (`Region::top` invariant; every extent is a multiple of 16).
        unsafe { core::hint::assert_unchecked(top as usize % GRANULE == 0) };
        // The entry goes in first, before the block is known to fit: the slot at `top` belongs
        // to no block (tail blocks lie below the top), so a block that does not fit leaves only
        // a stray entry past the tail, which is never read; one that fits has its entry.
        // SAFETY: `log_k + top` is a 4-aligned `u32` inside the log's storage (invariant).
        unsafe { self.log_k.wrapping_add(top as usize).cast::<u32>().write(size as u32) };
        // `top` is 16-aligned, so rounding `top + size` up to 16 adds the block's extent. `Layout`
        // bounds the size by `isize::MAX`, so the rounding cannot wrap; the sum is only used once
        // the size is known to be at most `FAST_MAX`.
        let new = top.wrapping_add(size + (GRANULE - 1));
        let new = new.wrapping_sub(new as usize & (GRANULE - 1));
        if layout.align() <= GRANULE && size.wrapping_sub(1) < FAST_MAX && new as usize <= self.limit as usize {
            // `limit` is not null (`new` is not), so the parent is the tail root and the block,
            // logged at its offset, is its child: `top < new <= limit` keeps the invariant.
            self.top = new;
            // SAFETY: top lies inside the reservation, derived from its base: non-null.
            return Ok(unsafe { NonNull::new_unchecked(top) });
        }
        // The cursor's fields go by value, so its address never escapes and the fast path can
        // keep them in registers.
        let (r, top, limit, log_k) = child_cursor_slow(self.region, self.parent, self.top, self.limit, layout);
        self.top = top;
        self.limit = limit;
        self.log_k = log_k;
        r
    }

    /// The block whose children this cursor allocates.
    #[inline(always)]
    pub fn parent(&self) -> NonNull<u8> {
        self.parent
    }
}

/// The slow path of [`ChildCursor::alloc`]: write the top back, allocate through
/// `alloc_child`, and return the state to continue with (inline again if the parent is still, or
/// now, the tail root with room). `#[inline]` rather than `#[inline(never)]`: it is then compiled
/// into the caller's crate and called directly, not through a function pointer the caller's loop
/// would keep in a register (being cold, it is still called, not inlined into the fast path).
#[cold]
#[inline]
fn child_cursor_slow(
    region: &Region,
    parent: NonNull<u8>,
    top: *mut u8,
    limit: *mut u8,
    layout: Layout,
) -> (Result<NonNull<u8>, Error>, *mut u8, *mut u8, *mut u8) {
    // The write-back of the drop first (see `ChildCursor::limit`).
    if !limit.is_null() {
        region.root.set(parent.as_ptr());
    }
    region.top.set(top);
    let r = region.alloc_child(parent, layout);
    let (top, limit, log_k) = region.cursor_state(parent);
    (r, top, limit, log_k)
}

impl Drop for ChildCursor<'_> {
    #[inline]
    fn drop(&mut self) {
        // With a non-null limit the parent is the tail root: it may not be announced yet (a
        // cursor from `alloc_with_cursor`'s inline path), and storing it again is harmless.
        // Stored unconditionally (the root as it is otherwise), so that a `reset` right after
        // makes both stores dead and the compiler drops them.
        let root = if self.limit.is_null() { self.region.root.get() } else { self.parent.as_ptr() };
        self.region.root.set(root);
        self.region.top.set(self.top);
    }
}

// SAFETY: blocks stay valid until freed (deallocate), reset (needs &mut Region, which ends every
// `&Region` borrow) or the region is dropped (likewise); `allocate` returns fresh, non-overlapping
// blocks aligned as asked; grow/shrink keep contents via `realloc`, which keeps alignment.
unsafe impl allocator_api2::alloc::Allocator for &Region {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, allocator_api2::alloc::AllocError> {
        let p = Region::alloc(self, layout).map_err(|_| allocator_api2::alloc::AllocError)?;
        Ok(NonNull::slice_from_raw_parts(p, layout.size()))
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, _layout: Layout) {
        // SAFETY: the caller no longer uses the block (Allocator contract).
        let r = unsafe { Region::free(self, ptr) };
        debug_assert!(r.is_ok(), "deallocate of a block this region did not hand out");
    }

    unsafe fn grow(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, allocator_api2::alloc::AllocError> {
        if new.align() > old.align().max(GRANULE) {
            let p = Region::alloc(self, new).map_err(|_| allocator_api2::alloc::AllocError)?;
            // SAFETY: both live; old.size() <= new.size().
            unsafe {
                core::ptr::copy_nonoverlapping(ptr.as_ptr(), p.as_ptr(), old.size());
                let _ = Region::free(self, ptr);
            }
            return Ok(NonNull::slice_from_raw_parts(p, new.size()));
        }
        // SAFETY: ptr is a live block of this region (Allocator contract).
        let p = unsafe { Region::realloc(self, ptr, new.size()) }.map_err(|_| allocator_api2::alloc::AllocError)?;
        Ok(NonNull::slice_from_raw_parts(p, new.size()))
    }

    unsafe fn shrink(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, allocator_api2::alloc::AllocError> {
        // SAFETY: forwarded Allocator contract; shrinking never needs more alignment than the
        // block has (realloc keeps it).
        unsafe { self.grow(ptr, old, new) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region() -> Region {
        Region::builder().reserve(if cfg!(miri) { 1 << 20 } else { 64 << 20 }).build().unwrap()
    }
    fn l(size: usize) -> Layout {
        Layout::from_size_align(size, 8).unwrap()
    }

    #[test]
    fn canonical_request_rewinds_and_books_balance() {
        let r = region();
        for round in 0..3 {
            let h = r.alloc(l(16)).unwrap();
            let arr = r.alloc_child(h, l(64)).unwrap();
            let mut blocks = vec![];
            for i in 0..16 {
                let b = r.alloc_child(h, l(16 + i * 15)).unwrap();
                // SAFETY: fresh block of at least 16 bytes.
                unsafe { b.as_ptr().write(i as u8) };
                blocks.push(b);
            }
            let s = r.stats();
            assert_eq!(s.live_blocks, 18, "round {round}");
            assert_eq!(s.live_bytes, 16 + 64 + (0..16).map(|i| 16 + i * 15).sum::<usize>());
            assert!(r.owns(arr) && r.owns(blocks[7]));
            assert_eq!(r.size_of(blocks[3]), Some(16 + 45));
            // SAFETY: nothing is used after the free.
            unsafe { r.free(h).unwrap() };
            assert_eq!(r.stats().live_blocks, 0);
            assert_eq!(r.stats().live_bytes, 0);
            assert!(!r.owns(blocks[7]));
        }
        assert_eq!(r.stats().free_slots, 0, "materialized blocks were rewound, not free-listed");
    }

    #[test]
    fn child_cursor_children_are_tracked_children() {
        let mut r = region();
        // A request through a cursor: the root, then children past the tail window (the
        // cursor's slow path) and of every kind the fast path refuses.
        let (h, kids) = {
            let mut c = r.alloc_with_cursor(l(16)).unwrap();
            let mut kids = vec![];
            for i in 0..300 {
                let size = [1, 16, 17, 0, 200, 1024, 1025, 3000][i % 8];
                let layout = if i % 50 == 49 { Layout::from_size_align(24, 64).unwrap() } else { l(size) };
                let p = c.alloc(layout).unwrap();
                assert_eq!(p.as_ptr() as usize % layout.align().max(16), 0);
                kids.push((p, layout.size()));
            }
            (c.parent(), kids)
        };
        let s = r.stats();
        assert_eq!(s.live_blocks, 301);
        assert_eq!(s.live_bytes, 16 + kids.iter().map(|k| k.1).sum::<usize>());
        assert_eq!(r.size_of(h), Some(16));
        for &(k, size) in &kids {
            assert_eq!(r.size_of(k), Some(size));
        }
        // Freed alone, reallocated, then the rest with their parent.
        // SAFETY: each block is live and not used after its free or move.
        unsafe {
            r.free(kids[3].0).unwrap();
            assert!(!r.owns(kids[3].0));
            let moved = r.realloc(kids[5].0, 5000).unwrap();
            assert_eq!(r.size_of(moved), Some(5000));
            r.free(h).unwrap();
            assert!(!r.owns(moved));
        }
        assert!(kids.iter().all(|k| !r.owns(k.0)));
        assert_eq!(r.stats().live_blocks, 0);

        // A cursor of the tail root, then of a recorded block (every child by the slow path),
        // then of a bad parent; reset frees everything.
        let a = r.alloc(l(40)).unwrap();
        let b = {
            let mut c = r.child_cursor(a).unwrap();
            c.alloc(l(8)).unwrap();
            c.alloc(l(100)).unwrap()
        };
        let _other = r.alloc(l(16)).unwrap(); // records a's tail
        {
            let mut c = r.child_cursor(a).unwrap();
            assert_eq!(c.parent(), a);
            c.alloc(l(30)).unwrap();
            c.alloc(l(30)).unwrap();
        }
        assert_eq!(r.stats().live_blocks, 6);
        // SAFETY: a is live; it takes its four children with it.
        unsafe { r.free(a).unwrap() };
        assert!(!r.owns(b));
        assert_eq!(r.stats().live_blocks, 1);
        let interior = NonNull::new(_other.as_ptr().wrapping_add(16)).unwrap();
        assert_eq!(r.child_cursor(interior).err(), Some(Error::NotABlock));
        let mut x = 0u64;
        assert_eq!(r.child_cursor(NonNull::from(&mut x).cast()).err(), Some(Error::ForeignPointer));
        {
            let mut c = r.alloc_with_cursor(l(16)).unwrap();
            for _ in 0..10 {
                c.alloc(l(48)).unwrap();
            }
        }
        assert_eq!(r.stats().live_blocks, 12);
        r.reset();
        assert_eq!(r.stats().live_blocks, 0);
        // A leaked cursor's blocks are not allocated, nor is the root `alloc_with_cursor` made
        // for it (the tail is announced at the write-back): the books stay exact and the memory
        // is handed out again.
        let h = {
            let mut c = r.alloc_with_cursor(l(16)).unwrap();
            c.alloc(l(16)).unwrap();
            let h = c.parent();
            core::mem::forget(c);
            h
        };
        assert!(!r.owns(h));
        assert_eq!(r.stats().live_blocks, 0);
        let again = r.alloc(l(16)).unwrap();
        assert_eq!(again, h);
        assert_eq!(r.stats().live_blocks, 1);
        // A cursor of the tail root (announced) that is leaked leaves the root allocated.
        let k = {
            let mut c = r.child_cursor(again).unwrap();
            let k = c.alloc(l(16)).unwrap();
            core::mem::forget(c);
            k
        };
        assert!(r.owns(again));
        assert!(!r.owns(k));
        assert_eq!(r.stats().live_blocks, 1);
        // A cursor whose slow path ran before the leak has announced its root.
        r.reset();
        let big = {
            let mut c = r.alloc_with_cursor(l(16)).unwrap();
            c.alloc(l(4000)).unwrap();
            let p = c.parent();
            core::mem::forget(c);
            p
        };
        assert!(r.owns(big));
        assert_eq!(r.size_of(big), Some(16));
        assert_eq!(r.stats().live_blocks, 2);
    }

    #[test]
    fn the_tail_window_bounds_the_log_and_the_last_block_hint_follows_pops() {
        // Children of the tail root fill its 4 KiB window; a child that would start past it
        // ends the tail (it is materialized) and is recorded. Every block keeps its size.
        let r = region();
        let root = r.alloc(l(16)).unwrap();
        let kids: Vec<_> = (0..300).map(|i| r.alloc_child(root, l(1 + i % 16)).unwrap()).collect();
        assert_eq!(r.stats().live_blocks, 301);
        for (i, &k) in kids.iter().enumerate() {
            assert_eq!(r.size_of(k), Some(1 + i % 16), "child {i}");
        }
        assert_eq!(r.size_of(NonNull::new(kids[0].as_ptr().wrapping_add(8)).unwrap()), None);
        // SAFETY: root is live; its children go with it.
        unsafe { r.free(root).unwrap() };
        assert_eq!(r.stats().live_blocks, 0);
        assert!(kids.iter().all(|&k| !r.owns(k)));

        // Nested children: `c` hangs under the newest block `b`, `e` under the newest `d` (found
        // by walking from the hint past blocks the inline path added).
        let a = r.alloc(l(16)).unwrap();
        let b = r.alloc_child(a, l(40)).unwrap();
        let c = r.alloc_child(b, l(24)).unwrap();
        let d = r.alloc_child(a, l(16)).unwrap();
        let d2 = r.alloc_child(a, l(48)).unwrap();
        let e = r.alloc_child(d2, l(8)).unwrap();
        assert_eq!(r.stats().live_blocks, 6);
        // Popping the newest block, then hanging a child under the block that is newest now.
        // SAFETY: e is live and has no children.
        unsafe { r.free(e).unwrap() };
        let f = r.alloc_child(d2, l(100)).unwrap();
        // SAFETY: f is the newest block: a pop; then d2 is the newest and a pop too.
        unsafe {
            r.free(f).unwrap();
            r.free(d2).unwrap();
        }
        let g = r.alloc_child(d, l(8)).unwrap(); // d is the newest block again
        assert!(!r.owns(e) && !r.owns(f) && !r.owns(d2));
        assert_eq!(r.stats().live_blocks, 5);
        // SAFETY: b is live; it takes c with it, and d takes g.
        unsafe {
            r.free(b).unwrap();
            assert!(!r.owns(c) && r.owns(d) && r.owns(g));
            r.free(d).unwrap();
        }
        assert!(!r.owns(g) && r.owns(a));
        assert_eq!(r.stats().live_blocks, 1);
        assert_eq!(r.stats().live_bytes, 16);
    }

    #[test]
    fn bad_pointers_are_refused_and_change_nothing() {
        let r = region();
        let a = r.alloc(l(100)).unwrap();
        let b = r.alloc_child(a, l(10)).unwrap();
        let before = r.stats();
        let interior = NonNull::new(a.as_ptr().wrapping_add(16)).unwrap();
        let mut x = 0u64;
        let foreign = NonNull::from(&mut x).cast::<u8>();
        // SAFETY: these calls are refused without touching memory.
        unsafe {
            assert_eq!(r.free(interior), Err(Error::NotABlock));
            assert_eq!(r.free(foreign), Err(Error::ForeignPointer));
            assert_eq!(r.realloc(interior, 5), Err(Error::NotABlock));
            assert_eq!(r.realloc(a, usize::MAX), Err(Error::TooLarge));
        }
        assert_eq!(r.alloc_child(interior, l(8)), Err(Error::NotABlock));
        assert_eq!(r.alloc(Layout::from_size_align(isize::MAX as usize - 64, 16).unwrap()), Err(Error::TooLarge));
        let after = r.stats();
        assert_eq!((after.live_blocks, after.live_bytes), (before.live_blocks, before.live_bytes));
        assert_eq!(after.bad_pointers, 3);
        // SAFETY: a is live; afterwards both a and b are gone, so the second free is a double free.
        unsafe {
            r.free(a).unwrap();
            assert_eq!(r.free(a), Err(Error::NotABlock));
            assert_eq!(r.free(b), Err(Error::NotABlock));
        }
        assert_eq!(r.stats().live_blocks, 0);
    }

    #[test]
    fn individual_child_free_and_reuse_keep_tree_intact() {
        let r = region();
        let root = r.alloc(l(32)).unwrap();
        let kids: Vec<_> = (0..10).map(|i| r.alloc_child(root, l(24 + i)).unwrap()).collect();
        let grandkid = r.alloc_child(kids[4], l(40)).unwrap();
        let other = r.alloc(l(8)).unwrap(); // ends the tail: everything is materialized
                                            // SAFETY: each pointer is freed once.
        unsafe {
            r.free(kids[4]).unwrap(); // takes grandkid with it
            assert!(!r.owns(grandkid));
            r.free(kids[0]).unwrap();
            r.free(kids[9]).unwrap();
        }
        assert_eq!(r.stats().live_blocks, 1 + 7 + 1);
        assert_eq!(r.stats().free_slots, 4);
        // reuse: same class comes back from the free list
        let again = r.alloc_child(root, l(24)).unwrap();
        assert_eq!(again, kids[0]);
        // SAFETY: root is live.
        unsafe { r.free(root).unwrap() };
        assert_eq!(r.stats().live_blocks, 1);
        assert!(r.owns(other));
    }

    #[test]
    fn realloc_keeps_contents_parent_and_children() {
        let r = region();
        let root = r.alloc(l(16)).unwrap();
        let a = r.alloc_child(root, l(20)).unwrap();
        let c = r.alloc_child(a, l(30)).unwrap();
        let _end = r.alloc(l(1)).unwrap();
        // SAFETY: a has 20 bytes.
        unsafe { a.as_ptr().write_bytes(0x5A, 20) };
        // SAFETY: a is live; the old pointer is not used after a move.
        let a2 = unsafe { r.realloc(a, 500).unwrap() };
        assert_ne!(a2, a, "grew past its class: moved");
        assert_eq!(r.size_of(a2), Some(500));
        // SAFETY: the first 20 bytes were copied.
        unsafe { assert!((0..20).all(|i| *a2.as_ptr().add(i) == 0x5A)) };
        assert!(r.owns(c));
        // SAFETY: root is live; freeing it must free a2 and c (a2 kept a's place and children).
        unsafe { r.free(root).unwrap() };
        assert!(!r.owns(a2) && !r.owns(c));
        assert_eq!(r.stats().live_blocks, 1);
    }

    #[test]
    fn freed_roots_are_reused_without_disturbing_the_tail() {
        let r = region();
        let a = r.alloc(l(40)).unwrap();
        let _b = r.alloc(l(40)).unwrap(); // a is recorded, b is the tail root
                                          // SAFETY: a is live.
        unsafe { r.free(a).unwrap() };
        assert_eq!(r.stats().free_slots, 1);
        let t = r.alloc(l(100)).unwrap(); // a new tail
        let kid = r.alloc_child(t, l(10)).unwrap();
        let again = r.alloc(l(33)).unwrap(); // same class as a: reused, the tail stays pending
        assert_eq!(again, a);
        assert_eq!(r.stats().free_slots, 0);
        // SAFETY: t is the tail root: its subtree is rewound.
        unsafe { r.free(t).unwrap() };
        assert!(!r.owns(kid) && r.owns(again));
        assert_eq!(r.stats().live_blocks, 2);
        assert_eq!(r.size_of(again), Some(33));
    }

    #[test]
    fn a_tail_under_a_recorded_block_is_freed_with_it_or_detached_from_it() {
        let r = region();
        // `v2` is a child of `arr`, which is neither the tail root nor the newest tail block:
        // `v2` starts a new tail that hangs under the recorded `arr`.
        let s = r.alloc(l(16)).unwrap();
        let arr = r.alloc_child(s, l(80)).unwrap();
        let v1 = r.alloc_child(arr, l(7)).unwrap();
        let v2 = r.alloc_child(arr, l(14)).unwrap();
        assert_eq!(r.stats().live_blocks, 4);
        // SAFETY: s is live; afterwards its whole tree is gone.
        unsafe { r.free(s).unwrap() };
        assert!(!r.owns(arr) && !r.owns(v1) && !r.owns(v2));
        assert_eq!(r.stats().live_blocks, 0);

        // free_one of the parent of a nested tail: the tail's root becomes a root of its own.
        let s = r.alloc(l(16)).unwrap();
        let arr = r.alloc_child(s, l(80)).unwrap();
        let _v1 = r.alloc_child(arr, l(7)).unwrap();
        let v2 = r.alloc_child(arr, l(14)).unwrap();
        // SAFETY: arr is live and not used afterwards.
        unsafe { r.free_one(arr).unwrap() };
        assert!(r.owns(v2));
        // A new block of arr's size class may take arr's record: it must not inherit v2.
        let x = r.alloc(l(80)).unwrap();
        // SAFETY: x is live and has no children.
        unsafe { r.free(x).unwrap() };
        assert!(r.owns(v2));
        // SAFETY: s is live; v2 no longer hangs under its tree.
        unsafe { r.free(s).unwrap() };
        assert!(r.owns(v2));
        assert_eq!(r.stats().live_blocks, 2, "v1 (detached from arr) and v2");
    }

    #[test]
    fn trim_keeps_the_window_index_for_the_committed_arena() {
        // alloc; trim; alloc materializes into a window of pages that stayed committed
        let mut r = region();
        r.alloc(l(16)).unwrap();
        r.trim(0).unwrap();
        let b = r.alloc(l(16)).unwrap();
        let c = r.alloc(l(16)).unwrap();
        assert!(r.owns(b) && r.owns(c));
        assert_eq!(r.stats().live_blocks, 3);
    }

    #[test]
    fn free_one_detaches_children() {
        let r = region();
        let s = r.alloc(l(16)).unwrap();
        let string = r.alloc_child(s, l(40)).unwrap();
        // SAFETY: s is live; the string must survive it.
        unsafe { r.free_one(s).unwrap() };
        assert!(!r.owns(s));
        assert!(r.owns(string));
        assert_eq!(r.stats().live_blocks, 1);
        // SAFETY: the string is now a root of its own.
        unsafe { r.free(string).unwrap() };
        assert_eq!(r.stats().live_blocks, 0);
        // the newest pending block pops
        let a = r.alloc(l(16)).unwrap();
        let b = r.alloc_child(a, l(16)).unwrap();
        // SAFETY: b is live and has no children.
        unsafe { r.free_one(b).unwrap() };
        assert!(r.owns(a) && !r.owns(b));
        assert_eq!(r.stats().live_blocks, 1);
    }

    #[test]
    fn realloc_in_place_at_the_top() {
        let r = region();
        let a = r.alloc(l(10)).unwrap();
        // SAFETY: a is live and the newest block.
        let b = unsafe { r.realloc(a, 3000).unwrap() };
        assert_eq!(a, b);
        assert_eq!(r.size_of(b), Some(3000));
        // SAFETY: as above.
        let c = unsafe { r.realloc(b, 0).unwrap() };
        assert_eq!(r.size_of(c), Some(0));
    }

    #[test]
    fn alignment_and_zero_size() {
        let r = region();
        let mut seen = std::collections::HashSet::new();
        for shift in 0..13 {
            let align = 1usize << shift;
            let p = r.alloc(Layout::from_size_align(0, align).unwrap()).unwrap();
            assert_eq!(p.as_ptr() as usize % align.max(16), 0);
            assert!(seen.insert(p), "zero-size blocks are unique");
            assert_eq!(r.size_of(p), Some(0));
        }
        let big = r.alloc(Layout::from_size_align(100, 4096).unwrap()).unwrap();
        // SAFETY: big is live; realloc keeps its 4096 alignment when it moves.
        let moved = unsafe { r.realloc(big, 70_000).unwrap() };
        assert_eq!(moved.as_ptr() as usize % 4096, 0);
    }

    #[test]
    fn a_region_moved_with_a_pending_tail_keeps_working() {
        // The tail log is written through raw pointers kept in the region; moving the region
        // (and its log's owner) must not invalidate them (Miri checks this one).
        let r = region();
        let a = r.alloc(l(16)).unwrap();
        let b = r.alloc_child(a, l(16)).unwrap();
        let boxed = Box::new(r);
        let c = boxed.alloc_child(a, l(32)).unwrap();
        let mut v = vec![*boxed];
        let d = v[0].alloc_child(c, l(8)).unwrap();
        let r = v.pop().unwrap();
        assert!(r.owns(a) && r.owns(b) && r.owns(c) && r.owns(d));
        assert_eq!(r.stats().live_blocks, 4);
        // SAFETY: a is live; it takes the whole tail with it.
        unsafe { r.free(a).unwrap() };
        assert_eq!(r.stats().live_blocks, 0);
    }

    #[test]
    fn a_pending_tail_under_a_recorded_parent_follows_the_parent() {
        // A child of a recorded block starts a new tail whose root has a recorded parent: the
        // parent's free, free_one and realloc must see that pending child.
        let big = Layout::from_size_align(0, 4096).unwrap(); // recorded at once (big alignment)
        let r = region();
        let p = r.alloc(big).unwrap();
        let c = r.alloc_child(p, l(0)).unwrap();
        let g = r.alloc_child(c, l(24)).unwrap();
        // SAFETY: p is live; it takes c and g with it.
        unsafe { r.free(p).unwrap() };
        assert!(!r.owns(c) && !r.owns(g), "the pending subtree was freed with its parent");
        assert_eq!(r.stats().live_blocks, 0);

        let p = r.alloc(big).unwrap();
        let c = r.alloc_child(p, l(40)).unwrap();
        // SAFETY: p is live; its child becomes a root.
        unsafe { r.free_one(p).unwrap() };
        assert!(r.owns(c));
        let q = r.alloc(big).unwrap(); // may reuse p's record
                                       // materializes any pending tail
        let _other = r.alloc(l(16)).unwrap();
        // SAFETY: q is live; c is not its child.
        unsafe { r.free(q).unwrap() };
        assert!(r.owns(c), "the orphaned child was not hung under a reused record");
        // SAFETY: c is a live root.
        unsafe { r.free(c).unwrap() };
        assert_eq!(r.stats().live_blocks, 1);

        // The same through free_one's inline path (a parent of 16-byte alignment below the
        // tail, childless as far as the table knows), then its slot is reused. A fresh region, so
        // that no dead slot is reused instead of starting the tails.
        let r2 = region();
        let p = r2.alloc(l(512)).unwrap();
        let _ends_tail = r2.alloc(l(0)).unwrap();
        let c = r2.alloc_child(p, l(0)).unwrap(); // a new tail, under the recorded p
                                                  // SAFETY: p is live; its pending child becomes a root.
        unsafe { r2.free_one(p).unwrap() };
        let q = r2.alloc(l(512)).unwrap(); // reuses p's slot
        assert_eq!(q, p);
        // SAFETY: q is live and has no children: c survives it.
        unsafe { r2.free(q).unwrap() };
        assert!(r2.owns(c), "the pending child was hung under the reused slot and freed with it");
        assert_eq!(r2.stats().live_blocks, 2);

        let p = r.alloc(big).unwrap();
        let c = r.alloc_child(p, l(8)).unwrap();
        // SAFETY: p is live; it grows past its class and moves, keeping its child.
        let p2 = unsafe { r.realloc(p, 5000).unwrap() };
        assert_ne!(p2, p);
        let _other = r.alloc(l(16)).unwrap();
        // SAFETY: p2 is live.
        unsafe { r.free(p2).unwrap() };
        assert!(!r.owns(c), "the child moved with its parent");
        assert_eq!(r.stats().live_blocks, 2);
    }

    #[test]
    fn trim_keeps_the_books_of_pending_and_later_blocks() {
        // A trim commits nothing, not even on a region that never allocated.
        let mut r = region();
        let before = r.stats().committed;
        assert_eq!(r.trim(0).unwrap(), 0);
        assert_eq!(r.stats().committed, before);
        assert!(r.alloc(l(16)).is_ok());
        // A pending tail, then a trim: the blocks are recorded afterwards, in windows of the
        // address index that the trim must not give back.
        let mut r = region();
        let a = r.alloc(l(16)).unwrap();
        let a2 = r.alloc_child(a, l(40)).unwrap();
        let before = r.stats().committed;
        let freed = r.trim(0).unwrap();
        assert_eq!(r.stats().committed, before - freed, "trim gives back what it says, and no more comes back");
        let b = r.alloc(l(16)).unwrap(); // materializes the tail
        assert!(r.owns(a) && r.owns(a2) && r.owns(b));
        // Blocks placed later in the committed part of the arena (no commit, so no index growth).
        r.reset();
        let first = r.alloc(l(16)).unwrap();
        r.trim(256 << 10).unwrap();
        let blocks: Vec<_> = (0..2000).map(|_| r.alloc(l(100)).unwrap()).collect();
        assert!(r.owns(first) && blocks.iter().all(|&p| r.owns(p)));
        assert_eq!(r.stats().live_blocks, 2001);
        // With many records, a trim must keep the room a tail needs rather than commit it again.
        let before = r.stats().committed;
        let freed = r.trim(0).unwrap();
        assert_eq!(r.stats().committed, before - freed);
        assert!(r.alloc(l(16)).is_ok());
    }

    #[test]
    fn reset_notes_the_high_water_and_forgets_the_untracked_arena() {
        let mut r = region();
        for recorded in [false, true] {
            let u = r.alloc_untracked(l(100)).unwrap();
            let h = r.alloc(l(16)).unwrap();
            r.alloc_child(h, l(200)).unwrap();
            if recorded {
                // a new root records the pending tail: the reset takes its slow path
                r.alloc(l(32)).unwrap();
                assert_eq!(r.table().count, 2);
            }
            r.reset();
            let s = r.stats();
            assert_eq!((s.live_blocks, s.live_bytes, s.free_slots), (0, 0, 0), "recorded: {recorded}");
            let used = if recorded { 16 + 208 + 32 } else { 16 + 208 };
            assert_eq!(s.high_water, used, "recorded: {recorded}");
            assert!(!r.owns(h));
            // the untracked arena starts over, and so does the tracked one
            assert_eq!(r.alloc_untracked(l(100)).unwrap(), u);
            assert_eq!(r.alloc(l(16)).unwrap(), h);
            r.reset();
        }
        // A child cursor dropped just before the reset: its write-back is forgotten with the rest.
        {
            let mut c = r.alloc_with_cursor(l(16)).unwrap();
            for _ in 0..20 {
                c.alloc(l(48)).unwrap();
            }
        }
        r.reset();
        assert_eq!(r.stats().live_blocks, 0);
        // (more than the 256 bytes reached above)
        assert_eq!(r.stats().high_water, 16 + 20 * 48);
    }

    #[test]
    fn high_water_counts_a_large_block_freed_before_any_other_slow_path() {
        // A large block (a new tail of its own), freed (the top rewound) before anything else
        // notes the top: the peak still counts it.
        let r = Region::new().unwrap();
        let size = if cfg!(miri) { 64 << 10 } else { 8 << 20 };
        for _ in 0..3 {
            let p = r.alloc(Layout::from_size_align(size, 16).unwrap()).unwrap();
            // SAFETY: freed once.
            unsafe { r.free(p).unwrap() };
        }
        let s = r.stats();
        assert_eq!(s.live_blocks, 0);
        assert!(s.high_water >= size, "high water {} for a block of {size} bytes", s.high_water);
    }

    #[test]
    fn purge_free_drops_the_pages_between_live_blocks_and_keeps_the_live_bytes() {
        let mut r = Region::new().unwrap();
        let n = 5000;
        let blocks: Vec<NonNull<u8>> = (0..64)
            .map(|i| {
                let p = r.alloc(Layout::from_size_align(n, 16).unwrap()).unwrap();
                // SAFETY: a fresh block of n bytes.
                unsafe { p.as_ptr().write_bytes(i as u8, n) };
                p
            })
            .collect();
        for (i, &p) in blocks.iter().enumerate() {
            if i % 8 != 0 {
                // SAFETY: freed once.
                unsafe { r.free(p).unwrap() };
            }
        }
        let before = r.stats();
        let purged = r.purge_free();
        // 7 freed blocks of 5000 bytes between two live ones: at least 7 whole pages each.
        assert!(purged >= 8 * 7 * 4096, "purged {purged} bytes");
        assert_eq!(r.stats().committed, before.committed, "a purge decommits nothing");
        for (i, &p) in blocks.iter().enumerate().filter(|(i, _)| i % 8 == 0) {
            // SAFETY: a live block of n bytes.
            let ok = (0..n).all(|k| unsafe { *p.as_ptr().add(k) } == i as u8);
            assert!(ok, "live block {i} changed by the purge");
        }
        // Dead slots are handed out again and hold what is written into them.
        for _ in 0..56 {
            let p = r.alloc(Layout::from_size_align(n, 16).unwrap()).unwrap();
            // SAFETY: a live block of n bytes.
            unsafe {
                p.as_ptr().write_bytes(0xEE, n);
                assert_eq!(*p.as_ptr().add(n - 1), 0xEE);
            }
        }
    }

    #[test]
    fn reset_is_bulk_and_keeps_pages() {
        let mut r = region();
        for _ in 0..1000 {
            let h = r.alloc(l(48)).unwrap();
            r.alloc_child(h, l(200)).unwrap();
        }
        let committed = r.stats().committed;
        r.reset();
        let s = r.stats();
        assert_eq!((s.live_blocks, s.live_bytes, s.free_slots), (0, 0, 0));
        assert_eq!(s.committed, committed);
        let h = r.alloc(l(48)).unwrap();
        assert!(r.owns(h));
    }

    #[test]
    fn scrub_zeroes_freed_memory() {
        let r = Region::builder().reserve(1 << 20).scrub(Scrub { on_free: true, on_reset: true }).build().unwrap();
        let h = r.alloc(l(64)).unwrap();
        let c = r.alloc_child(h, l(64)).unwrap();
        // SAFETY: both are 64-byte live blocks.
        unsafe {
            h.as_ptr().write_bytes(0xFF, 64);
            c.as_ptr().write_bytes(0xFF, 64);
            r.free(h).unwrap();
            // the memory is still committed arena memory; read it raw
            assert!((0..64).all(|i| *c.as_ptr().add(i) == 0));
        }
    }

    #[test]
    fn overrun_cannot_corrupt_the_books() {
        let r = region();
        let mut v = vec![];
        for i in 0..50 {
            let p = r.alloc(l(20)).unwrap();
            // SAFETY: deliberately write past the 20-byte block, but within its 32-byte slot and
            // the next block: user data only, the table lives elsewhere.
            unsafe { p.as_ptr().write_bytes(0xEE, 48) };
            v.push((i, p));
        }
        for (_, p) in &v {
            // SAFETY: each block freed once.
            unsafe { r.free(*p).unwrap() };
        }
        assert_eq!(r.stats().live_blocks, 0);
        assert_eq!(r.stats().live_bytes, 0);
    }

    #[test]
    fn allocator_api2_vec_lives_in_a_region() {
        let r = region();
        let mut v = allocator_api2::vec::Vec::new_in(&r);
        for i in 0..10_000u32 {
            v.push(i);
        }
        assert_eq!(v.iter().map(|&x| x as u64).sum::<u64>(), 49_995_000);
        assert_eq!(r.stats().live_blocks, 1);
        drop(v);
        assert_eq!(r.stats().live_blocks, 0);
    }

    /// Far links and big sizes: a region whose tree spans more records than the side table's
    /// 16-bit deltas reach.
    mod far {
        use super::*;

        /// More records than a `child`/`next` delta reaches.
        const FAR: usize = table::LINK_REACH as usize + 233;

        fn big_region() -> Region {
            // (Miri's page backend allocates the whole reservation.)
            Region::builder().reserve(if cfg!(miri) { 4 << 20 } else { 1 << 30 }).build().unwrap()
        }

        /// `n` live roots: `n` records between the blocks allocated before and after.
        fn spacers(r: &Region, n: usize) -> Vec<NonNull<u8>> {
            (0..n).map(|_| r.alloc(l(16)).unwrap()).collect()
        }

        fn fill(p: NonNull<u8>, len: usize, tag: u8) {
            // SAFETY: `p` is a live block of at least `len` bytes.
            unsafe { p.as_ptr().write_bytes(tag, len) };
        }

        fn holds(p: NonNull<u8>, len: usize, tag: u8) -> bool {
            // SAFETY: `p` is a live block of at least `len` bytes.
            (0..len).all(|k| unsafe { *p.as_ptr().add(k) } == tag)
        }

        /// Check the table after recording the pending tail.
        fn check(r: &Region) {
            r.materialize();
            r.table().check();
        }

        #[test]
        fn realloc_moves_a_node_with_far_links_and_frees_follow_the_tree() {
            let r = big_region();
            let p = r.alloc(l(16)).unwrap();
            let _s1 = spacers(&r, FAR);
            let a = r.alloc_child(p, l(40)).unwrap();
            let a_kid = r.alloc_child(a, l(24)).unwrap();
            let _s2 = spacers(&r, FAR);
            let b = r.alloc_child(p, l(40)).unwrap(); // b.next = a: far, as p.child and b.prev
            fill(b, 40, 0xB1);
            let _s3 = spacers(&r, FAR);
            let b_kid = r.alloc_child(b, l(8)).unwrap(); // far below b
            check(&r);
            assert!(r.table().far_len() >= 5, "far links: {}", r.table().far_len());
            let live = r.stats().live_blocks;
            // SAFETY: b is live; only b2 is used afterwards.
            let b2 = unsafe { r.realloc(b, 5000) }.unwrap();
            assert_ne!(b2, b, "a new size class moves the block");
            check(&r);
            assert!(holds(b2, 40, 0xB1), "realloc kept the contents");
            assert_eq!((r.size_of(b2), r.owns(b), r.stats().live_blocks), (Some(5000), false, live));
            // The tree moved with it: freeing `a` frees only its own child; freeing `p` frees b2
            // and b's child.
            // SAFETY: a is live; a_kid goes with it.
            unsafe { r.free(a).unwrap() };
            check(&r);
            assert_eq!((r.owns(a_kid), r.owns(b_kid), r.stats().live_blocks), (false, true, live - 2));
            // SAFETY: p is live; b2 and b_kid go with it.
            unsafe { r.free(p).unwrap() };
            check(&r);
            assert_eq!((r.owns(b2), r.owns(b_kid), r.stats().live_blocks), (false, false, 3 * FAR));
            assert_eq!(r.table().far_len(), 0, "no far link is left");
        }

        #[test]
        fn a_slot_reused_far_away_and_reset_with_far_links() {
            let mut r = big_region();
            for round in 0..2 {
                let old = r.alloc(l(48)).unwrap();
                let _keep = r.alloc(l(16)).unwrap();
                // SAFETY: old is live and not used again.
                unsafe { r.free(old).unwrap() };
                let _s = spacers(&r, FAR);
                let p = r.alloc(l(16)).unwrap();
                let q = r.alloc(l(16)).unwrap(); // records p
                let c = r.alloc_child(p, l(40)).unwrap();
                assert_eq!(c, old, "round {round}: the dead slot far below is reused");
                check(&r);
                assert_eq!(r.table().far_len(), 2, "p.child and c.prev");
                // SAFETY: p is live; c goes with it.
                unsafe { r.free(p).unwrap() };
                assert!(!r.owns(c));
                let d = r.alloc_child(q, l(40)).unwrap();
                assert_eq!(d, old, "and again");
                check(&r);
                assert!(r.table().far_len() > 0);
                r.reset();
                assert_eq!((r.table().far_len(), r.stats().live_blocks), (0, 0));
            }
        }

        #[test]
        fn big_sizes_through_size_of_realloc_and_free() {
            let r = big_region();
            let top = if cfg!(miri) { 70_000 } else { 300_000 };
            let sizes = [65_534, 65_535, 65_536, 70_000, top];
            let mut blocks = vec![];
            for (k, &size) in sizes.iter().enumerate() {
                let p = r.alloc(l(size)).unwrap();
                fill(p, size.min(4096), k as u8);
                blocks.push((p, size));
            }
            let _end = r.alloc(l(16)).unwrap(); // records every big block
            check(&r);
            assert_eq!(r.table().far_len(), 4, "four sizes past 65 534");
            for &(p, size) in &blocks {
                assert_eq!(r.size_of(p), Some(size));
            }
            let total: usize = sizes.iter().sum::<usize>() + 16;
            assert_eq!(r.stats().live_bytes, total);
            // in place (same extent): the size entry is replaced
            let (p, _) = blocks[3];
            // SAFETY: p is live.
            assert_eq!(unsafe { r.realloc(p, 70_001) }, Ok(p));
            assert_eq!(r.size_of(p), Some(70_001));
            // big to small and small to big: moves
            let (q, _) = blocks[1];
            // SAFETY: q is live; only q2 is used afterwards.
            let q2 = unsafe { r.realloc(q, 100) }.unwrap();
            assert!(holds(q2, 100, 1));
            let (s, _) = blocks[0];
            // SAFETY: s is live; only s2 is used afterwards.
            let s2 = unsafe { r.realloc(s, 131_072) }.unwrap();
            assert!(holds(s2, 4096, 0));
            let _end2 = r.alloc(l(16)).unwrap();
            check(&r);
            assert_eq!((r.size_of(q2), r.size_of(s2)), (Some(100), Some(131_072)));
            assert_eq!(r.stats().live_bytes, total + 1 - 65_535 + 100 - 65_534 + 131_072 + 16);
            for p in [q2, s2, blocks[2].0, blocks[3].0, blocks[4].0] {
                // SAFETY: each live, freed once.
                unsafe { r.free(p).unwrap() };
            }
            check(&r);
            assert_eq!(r.table().far_len(), 0);
            assert_eq!(r.stats().live_bytes, 32);
            // a freed big slot is reused with an exact size again
            let again = r.alloc(l(65_600)).unwrap();
            let _end3 = r.alloc(l(16)).unwrap();
            check(&r);
            assert_eq!(r.size_of(again), Some(65_600));
        }

        /// `try_free_leaf` of recorded root leaves whose size has no exact class (0, above 1 KiB,
        /// big): the inline free's slow branch, with the exact sizes and no entry left behind.
        #[test]
        fn root_leaves_past_the_exact_classes_are_freed_inline() {
            let r = big_region();
            let sizes = [0, 2000, 65_535, 70_000];
            let blocks: Vec<NonNull<u8>> = sizes.iter().map(|&s| r.alloc(l(s)).unwrap()).collect();
            let end = r.alloc(l(16)).unwrap(); // records them all
            check(&r);
            assert_eq!(r.table().far_len(), 2, "two big sizes");
            for (&p, &size) in blocks.iter().zip(&sizes) {
                assert_eq!(r.size_of(p), Some(size));
                // SAFETY: p is live and freed once.
                assert!(unsafe { r.try_free_leaf(p.as_ptr()) }, "a recorded root leaf of {size} bytes");
                assert!(!r.owns(p));
            }
            check(&r);
            assert_eq!((r.table().far_len(), r.stats().live_blocks, r.stats().live_bytes), (0, 1, 16));
            assert_eq!(r.stats().free_slots, 4);
            // a freed big slot comes back with its exact size
            let again = r.alloc(l(65_600)).unwrap();
            assert_eq!(again, blocks[3], "the 70 000-byte slot (the same class) is reused");
            assert_eq!(r.size_of(again), Some(65_600));
            assert!(r.owns(end));
        }

        /// Children come and go under a parent far below them, some of them big: the overflow
        /// map holds only what the live blocks need, however long it runs.
        #[test]
        #[cfg_attr(miri, ignore = "long: too long for Miri")]
        fn far_entries_do_not_accumulate() {
            let r = big_region();
            let p = r.alloc(l(16)).unwrap();
            let _s = spacers(&r, FAR);
            let mut x = 0x243F_6A88_85A3_08D3u64;
            let mut kids: Vec<NonNull<u8>> = vec![];
            let mut peak = 0;
            for cycle in 0..20_000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let size = if x % 16 == 0 { 65_535 + (x >> 40) as usize % 4096 } else { 16 + (x >> 40) as usize % 200 };
                kids.push(r.alloc_child(p, l(size)).unwrap());
                if kids.len() > 40 {
                    let k = kids.swap_remove((x >> 20) as usize % kids.len());
                    // SAFETY: k is live and dropped from the list.
                    unsafe {
                        if x & 0x100 == 0 {
                            r.free(k).unwrap();
                        } else {
                            r.free_one(k).unwrap();
                        }
                    }
                }
                if cycle % 1000 == 0 {
                    check(&r);
                }
                // p.child and its first child's prev, a size per big child: 2 + 41
                let n = r.table().far_len();
                assert!(n <= 2 + kids.len(), "cycle {cycle}: {n} entries for {} children", kids.len());
                peak = peak.max(n);
            }
            assert!(peak >= 3, "far links and big sizes were made: at most {peak} at once");
            for k in kids {
                // SAFETY: each live, freed once.
                unsafe { r.free(k).unwrap() };
            }
            check(&r);
            assert_eq!(r.table().far_len(), 0);
            assert_eq!(r.stats().live_blocks, FAR + 1);
        }
    }
}
