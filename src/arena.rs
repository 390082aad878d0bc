//! `PageArena`: one reservation, committed on demand, bump-allocated, reset in O(1).
//!
//! ```text
//!  base                    pos                 committed              reserved
//!   |######## in use ########|..... committed, free .....|.... reserved only ....|
//! ```
//! Invariants (checked by `debug_assert!`s in `check`):
//! * `pos <= committed <= reserved`; `committed` is a multiple of the page size;
//! * every byte in `[0, committed)` is committed memory; nothing past `committed` is touched;
//! * `committed <= limit` whenever the commit succeeded (the limit is checked at every commit,
//!   not per chunk);
//! * `high_water >= pos` is the largest `pos` ever reached (noted at a reset, a slow path or a
//!   stats call; a `forget` leaves it behind, for an owner that never reads it).
//!
//! The fast path ([`PageArena::alloc_layout`]) is a handful of instructions and one branch; the
//! slow path (commit more, or fail) is a separate `#[cold]` function. `reset` only moves `pos`
//! back to 0: committed pages stay committed and do not fault again (a first touch costs about
//! as much as 400 bump allocations on the machines we measured). [`PageArena::trim`] is the only
//! way committed memory goes back to the OS, and it is never called on an allocation path.

use crate::host::{self, CriticalLevel, Pages, Source};
use crate::Error;
use core::alloc::Layout;
use core::cell::Cell;
use core::ptr::NonNull;

/// How much an arena commits at least when it runs out of committed memory.
pub const DEFAULT_COMMIT_CHUNK: usize = 64 * 1024;

/// Default reservation of an arena: address space only, no memory.
#[cfg(not(miri))]
pub const DEFAULT_RESERVE: usize = 4 << 30;
/// Default reservation of an arena under Miri (the heap backend really allocates it).
#[cfg(miri)]
pub const DEFAULT_RESERVE: usize = 1 << 20;

/// A committed-on-demand prefix of one reservation. The building block of [`PageArena`] and of
/// the side table's arrays.
#[derive(Debug)]
pub(crate) struct Span {
    pages: Pages,
    /// Bytes committed from the start of the reservation; a multiple of the page size.
    committed: Cell<usize>,
    /// Commit no more than this many bytes (the arena's allocation limit).
    limit: Cell<usize>,
    /// Commit at least this much at a time.
    chunk: usize,
    /// Critical level of the next commits (the region may change it for one allocation).
    level: Cell<CriticalLevel>,
}

/// How far a [`Span`] commits past what is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Growth {
    /// At least a chunk, or as much as is committed (up to 16 MiB): few commits.
    Double,
    /// At least a chunk, or an eighth of what is committed: at most 12.5% (or a chunk) unused.
    Eighth,
    /// Just what is needed, rounded up to a page.
    Exact,
}

impl Span {
    pub(crate) fn new(source: &Source, reserve: usize, chunk: usize, level: CriticalLevel) -> Result<Span, Error> {
        let pages = Pages::reserve(source, reserve, level)?;
        let page = crate::os::page_size();
        let chunk = crate::os::round_up(chunk.max(page), page).ok_or(Error::TooLarge)?;
        Ok(Span { limit: Cell::new(pages.len()), pages, committed: Cell::new(0), chunk, level: Cell::new(level) })
    }

    #[inline]
    pub(crate) fn base(&self) -> NonNull<u8> {
        self.pages.base()
    }
    #[inline]
    pub(crate) fn reserved(&self) -> usize {
        self.pages.len()
    }
    #[inline]
    pub(crate) fn committed(&self) -> usize {
        self.committed.get()
    }

    /// Make sure `[0, need)` is committed, committing at least a chunk more than now.
    #[cold]
    #[inline(never)]
    pub(crate) fn ensure(&self, need: usize) -> Result<(), Error> {
        self.ensure_with(need, Growth::Double)
    }

    /// Make sure `[0, need)` is committed, growing by at least a chunk or an eighth of what is
    /// committed: for metadata that must not cost much more than it holds (the side table's
    /// records), at the price of more (still logarithmically many) commits.
    #[cold]
    #[inline(never)]
    pub(crate) fn ensure_gradual(&self, need: usize) -> Result<(), Error> {
        self.ensure_with(need, Growth::Eighth)
    }

    /// Make sure `[0, need)` is committed, committing no more than that (rounded up to a page):
    /// for a span that grows in step with another one whose commits already grow geometrically.
    #[cold]
    #[inline(never)]
    pub(crate) fn ensure_exact(&self, need: usize) -> Result<(), Error> {
        self.ensure_with(need, Growth::Exact)
    }

    fn ensure_with(&self, need: usize, growth: Growth) -> Result<(), Error> {
        let have = self.committed.get();
        if need <= have {
            return Ok(());
        }
        if need > self.reserved() {
            return Err(if need > self.limit.get() { Error::TooLarge } else { Error::ReservationExhausted });
        }
        if need > self.limit.get() {
            return Err(Error::LimitExceeded);
        }
        let page = crate::os::page_size();
        // Grow by at least one chunk (or by a share of what is already committed, so the number
        // of commit calls is logarithmic in the final size), but never past the limit or the
        // reservation. `Exact`: by just what is needed (rounded up to a page, below).
        let want = match growth {
            Growth::Double => need.max(have + self.chunk.max(have.min(16 << 20))),
            Growth::Eighth => need.max(have + self.chunk.max(have.min(16 << 20) / 8)),
            Growth::Exact => need,
        };
        let cap = self.limit.get().min(self.reserved());
        let new = crate::os::round_up(want, page).map_or(cap, |w| w.min(cap));
        let new = new.max(crate::os::round_up(need, page).ok_or(Error::TooLarge)?);
        debug_assert!(new <= self.reserved() && new % page == 0 && new >= need);
        // Under a budget without room for a whole chunk, ask for just what is needed: the chunk
        // is a speed-up, never a reason to fail (the charge itself stays authoritative).
        let exact = crate::os::round_up(need, page).ok_or(Error::TooLarge)?;
        let new = match self.pages.budget() {
            Some(b) if b.committed().saturating_add(new - have) > b.soft_limit() => exact.min(new),
            _ => new,
        };
        // SAFETY: [have, new) is page-aligned (both are multiples of the page size) and inside
        // the reservation (new <= reserved).
        unsafe { self.pages.commit(have, new - have, self.level.get())? };
        self.committed.set(new);
        Ok(())
    }

    /// Decommit everything past `keep` (rounded up to a page). Returns the bytes given back.
    ///
    /// # Safety
    /// Nothing refers to memory at or past `keep`.
    pub(crate) unsafe fn trim(&self, keep: usize) -> Result<usize, Error> {
        let page = crate::os::page_size();
        let keep = crate::os::round_up(keep, page).ok_or(Error::TooLarge)?;
        let have = self.committed.get();
        if keep >= have {
            return Ok(0);
        }
        // SAFETY: [keep, have) is page-aligned, inside the reservation, unreferenced (caller).
        unsafe { self.pages.decommit(keep, have - keep)? };
        self.committed.set(keep);
        Ok(have - keep)
    }

    /// Let the OS take back the whole pages inside `[start, end)` (offsets; the range is rounded
    /// inwards to pages and clipped to what is committed), whose contents are no longer needed.
    /// Returns the bytes purged (0 for a host's pages, which cannot be purged).
    ///
    /// # Safety
    /// Nothing refers to memory in `[start, end)`, and nothing relies on its contents.
    pub(crate) unsafe fn purge(&self, start: usize, end: usize) -> usize {
        let page = crate::os::page_size();
        let Some(a) = crate::os::round_up(start, page) else { return 0 };
        let b = end.min(self.committed.get()) & !(page - 1);
        if a >= b {
            return 0;
        }
        // SAFETY: [a, b) is page-aligned, committed, unreferenced (caller).
        match unsafe { self.pages.purge(a, b - a) } {
            Ok(true) => b - a,
            _ => 0,
        }
    }

    /// Commit at `level` from now on; returns the previous level.
    pub(crate) fn set_level(&self, level: CriticalLevel) -> CriticalLevel {
        self.level.replace(level)
    }

    pub(crate) fn set_limit(&self, limit: usize) {
        self.limit.set(limit);
    }
}

/// The bump step shared by [`PageArena`] and [`Cursor`]: `Some((start, new_pos))` if `layout`
/// fits between `pos` and `end`. The base is at least page-aligned, so aligning the offset
/// aligns the address for every alignment up to a page; larger ones take the slow path.
#[inline(always)]
fn bump(pos: usize, end: usize, layout: Layout) -> Option<(usize, usize)> {
    let align = layout.align();
    if align > 4096 {
        return None;
    }
    let start = (pos + align - 1) & !(align - 1);
    // `Layout` guarantees size <= isize::MAX and offsets are below the reservation size, so on
    // 64-bit targets the sum cannot wrap; elsewhere it is checked.
    #[cfg(target_pointer_width = "64")]
    let new = start + layout.size();
    #[cfg(not(target_pointer_width = "64"))]
    let new = start.checked_add(layout.size())?;
    (new <= end).then_some((start, new))
}

/// What an arena holds, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArenaStats {
    /// Address space reserved.
    pub reserved: usize,
    /// Memory committed (a multiple of the page size).
    pub committed: usize,
    /// Bytes handed out since the last reset, alignment padding included.
    pub used: usize,
    /// The largest `used` ever reached.
    pub high_water: usize,
}

/// Builder for [`PageArena`]: reservation size, commit chunk, limit, page source.
#[derive(Clone, Debug)]
pub struct ArenaBuilder {
    reserve: usize,
    chunk: usize,
    limit: usize,
    source: Source,
    level: CriticalLevel,
}

impl Default for ArenaBuilder {
    fn default() -> Self {
        ArenaBuilder {
            reserve: DEFAULT_RESERVE,
            chunk: DEFAULT_COMMIT_CHUNK,
            limit: usize::MAX,
            // As for regions: the installed host or the OS, under the process-wide budget.
            source: host::default_source(),
            level: CriticalLevel::Task,
        }
    }
}

impl ArenaBuilder {
    /// Address space to reserve (rounded up to the allocation granularity).
    pub fn reserve(mut self, bytes: usize) -> Self {
        self.reserve = bytes;
        self
    }
    /// Commit at least this much at a time (rounded up to a page).
    pub fn commit_chunk(mut self, bytes: usize) -> Self {
        self.chunk = bytes;
        self
    }
    /// Never commit more than this many bytes.
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
    /// The critical level of this arena's commits.
    pub fn critical_level(mut self, level: CriticalLevel) -> Self {
        self.level = level;
        self
    }
    /// Reserve the address space and build the arena.
    pub fn build(self) -> Result<PageArena, Error> {
        let span = Span::new(&self.source, self.reserve, self.chunk, self.level)?;
        span.set_limit(self.limit);
        Ok(PageArena { pos: Cell::new(0), end: Cell::new(0), high_water: Cell::new(0), base: span.base(), span })
    }
}

/// A bump arena over one page reservation. `Send`, not `Sync`.
///
/// ```
/// use core::alloc::Layout;
/// let mut arena = napalloc::PageArena::new().unwrap();
/// let p = arena.alloc_layout(Layout::new::<u64>()).unwrap();
/// // SAFETY: `p` is a fresh block of 8 bytes, aligned for u64.
/// unsafe { p.cast::<u64>().write(7) };
/// assert_eq!(arena.stats().used, 8);
/// arena.reset(); // O(1): pages stay committed and do not fault again
/// assert_eq!(arena.stats().used, 0);
/// ```
#[derive(Debug)]
pub struct PageArena {
    /// Offset of the next free byte. Invariant: `pos <= end`.
    pos: Cell<usize>,
    /// Offset of the end of committed memory (`== span.committed()`), cached next to `pos` for the
    /// fast path.
    end: Cell<usize>,
    /// Largest `pos` reached (at most it: positions reached before a `forget` are not noted).
    high_water: Cell<usize>,
    /// `span.base()`, cached for the fast path.
    base: NonNull<u8>,
    span: Span,
}

// SAFETY: the arena owns its reservation; moving it to another thread moves that ownership.
// It is not `Sync` (the `Cell`s are unsynchronized).
unsafe impl Send for PageArena {}

impl PageArena {
    /// An arena with the default reservation ([`DEFAULT_RESERVE`]) from the default source: the
    /// installed host, else the OS, charged to the process-wide [`host::global_budget`].
    pub fn new() -> Result<PageArena, Error> {
        ArenaBuilder::default().build()
    }

    /// A builder to choose the reservation, the commit chunk, a limit and the page source.
    pub fn builder() -> ArenaBuilder {
        ArenaBuilder::default()
    }

    /// Bump-allocate `layout`. The memory is uninitialized (it reads as zero the first time a
    /// page is used, and keeps old contents after [`reset`](Self::reset)).
    #[inline(always)]
    pub fn alloc_layout(&self, layout: Layout) -> Result<NonNull<u8>, Error> {
        match bump(self.pos.get(), self.end.get(), layout) {
            Some((start, new)) => {
                self.pos.set(new);
                // SAFETY: start < new <= end <= reserved, so the pointer is inside the
                // reservation, derived from its base (keeps provenance), and non-null.
                Ok(unsafe { NonNull::new_unchecked(self.base.as_ptr().add(start)) })
            }
            None => self.alloc_slow(layout),
        }
    }

    #[cold]
    #[inline(never)]
    fn alloc_slow(&self, layout: Layout) -> Result<NonNull<u8>, Error> {
        let base = self.span.base().as_ptr() as usize;
        let align = layout.align();
        let addr = (base + self.pos.get()).checked_add(align - 1).ok_or(Error::TooLarge)? & !(align - 1);
        let start = addr - base;
        let new_pos = start.checked_add(layout.size()).ok_or(Error::TooLarge)?;
        if new_pos > self.span.reserved() {
            return Err(if layout.size() > self.span.reserved() {
                Error::TooLarge
            } else {
                Error::ReservationExhausted
            });
        }
        self.span.ensure(new_pos)?;
        self.end.set(self.span.committed());
        self.pos.set(new_pos);
        self.high_water.set(self.high_water.get().max(start));
        // SAFETY: start < new_pos <= committed <= reserved: inside the reservation, from its base.
        Ok(unsafe { NonNull::new_unchecked(self.span.base().as_ptr().add(start)) })
    }

    /// Allocate and move `value` into the arena. The value is never dropped by the arena.
    // Each call returns a distinct, fresh allocation, so handing out `&mut` from `&self` is
    // sound (as in bumpalo's `Bump::alloc`).
    #[allow(clippy::mut_from_ref)]
    #[inline]
    pub fn alloc<T>(&self, value: T) -> Result<&mut T, Error> {
        let p = self.alloc_layout(Layout::new::<T>())?.cast::<T>();
        // SAFETY: `p` is fresh, aligned for T and exclusively ours until the arena is reset,
        // which needs `&mut self` and so ends this borrow.
        unsafe {
            p.as_ptr().write(value);
            Ok(&mut *p.as_ptr())
        }
    }

    /// Forget every allocation in O(1). Committed pages stay committed (no new page faults);
    /// use [`trim`](Self::trim) to give memory back.
    #[inline]
    pub fn reset(&mut self) {
        self.note_high_water();
        self.pos.set(0);
    }

    /// [`reset`](Self::reset) without noting the high water: one store. For an owner that never
    /// reads this arena's high water (a `Region`'s untracked arena: the region reports only its
    /// committed and reserved bytes). The high water is then no longer exact (see its field).
    #[inline(always)]
    pub(crate) fn forget(&mut self) {
        self.pos.set(0);
    }

    /// A bump cursor that keeps the arena's position in locals (registers) until it is dropped:
    /// the fastest way to make many allocations in a row. The arena is borrowed meanwhile.
    ///
    /// ```
    /// use core::alloc::Layout;
    /// let mut arena = napalloc::PageArena::new().unwrap();
    /// {
    ///     let mut c = arena.cursor();
    ///     for _ in 0..100 {
    ///         c.alloc_layout(Layout::new::<[u64; 4]>()).unwrap();
    ///     }
    /// } // the position is written back here
    /// assert_eq!(arena.stats().used, 3200);
    /// ```
    #[inline]
    pub fn cursor(&mut self) -> Cursor<'_> {
        Cursor { pos: self.pos.get(), end: self.end.get(), base: self.base, arena: self }
    }

    /// Give committed memory beyond `max(used, retain)` back to the OS. Returns the bytes
    /// decommitted.
    pub fn trim(&mut self, retain: usize) -> Result<usize, Error> {
        let keep = retain.max(self.pos.get());
        // SAFETY: nothing is allocated at or past `pos <= keep`.
        let freed = unsafe { self.span.trim(keep)? };
        self.end.set(self.span.committed());
        Ok(freed)
    }

    /// Change the limit on committed bytes. Memory already committed above it stays until
    /// [`trim`](Self::trim).
    pub fn set_limit(&mut self, limit: usize) {
        self.span.set_limit(limit);
    }

    /// Whether `ptr` lies in this arena's handed-out part (`[base, base + used)`).
    pub fn contains(&self, ptr: *const u8) -> bool {
        let base = self.span.base().as_ptr() as usize;
        (ptr as usize).wrapping_sub(base) < self.pos.get()
    }

    /// Reserved, committed, used, high water.
    pub fn stats(&self) -> ArenaStats {
        self.note_high_water();
        ArenaStats {
            reserved: self.span.reserved(),
            committed: self.span.committed(),
            used: self.pos.get(),
            high_water: self.high_water.get(),
        }
    }

    #[inline]
    fn note_high_water(&self) {
        if self.pos.get() > self.high_water.get() {
            self.high_water.set(self.pos.get());
        }
    }

    #[cfg(test)]
    fn check(&self) {
        let (pos, end, committed) = (self.pos.get(), self.end.get(), self.span.committed());
        assert!(pos <= end, "pos {pos} beyond committed end {end}");
        assert_eq!(end, committed, "cached end out of sync");
        assert!(committed <= self.span.reserved());
        assert_eq!(committed % crate::os::page_size(), 0);
    }
}

/// A bump cursor over a [`PageArena`] (see [`PageArena::cursor`]). Its position lives in the
/// cursor, not in the arena, so the compiler can keep it in a register across user writes.
#[derive(Debug)]
pub struct Cursor<'a> {
    /// Invariant: `pos <= end`; `end` is the arena's committed end when the cursor last synced.
    pos: usize,
    end: usize,
    base: NonNull<u8>,
    arena: &'a mut PageArena,
}

impl Cursor<'_> {
    /// Bump-allocate `layout` (see [`PageArena::alloc_layout`]).
    #[inline(always)]
    pub fn alloc_layout(&mut self, layout: Layout) -> Result<NonNull<u8>, Error> {
        match bump(self.pos, self.end, layout) {
            Some((start, new)) => {
                self.pos = new;
                // SAFETY: start < new <= end <= reserved: inside the reservation, derived from
                // its base, non-null.
                Ok(unsafe { NonNull::new_unchecked(self.base.as_ptr().add(start)) })
            }
            None => {
                // The cursor's fields go by value, so its address never escapes and the fast
                // path can keep them in registers.
                let (r, pos, end) = cursor_slow(self.arena, self.pos, layout);
                self.pos = pos;
                self.end = end;
                r
            }
        }
    }
}

#[cold]
#[inline(never)]
fn cursor_slow(arena: &PageArena, pos: usize, layout: Layout) -> (Result<NonNull<u8>, Error>, usize, usize) {
    arena.pos.set(pos);
    let r = arena.alloc_slow(layout);
    (r, arena.pos.get(), arena.end.get())
}

impl Drop for Cursor<'_> {
    #[inline]
    fn drop(&mut self) {
        self.arena.pos.set(self.pos);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> PageArena {
        PageArena::builder().reserve(1 << 20).commit_chunk(16 * 1024).build().unwrap()
    }

    #[test]
    fn bump_commits_on_demand_and_resets() {
        let mut a = small();
        assert_eq!(a.stats().committed, 0, "nothing committed before the first allocation");
        let p = a.alloc_layout(Layout::from_size_align(100, 8).unwrap()).unwrap();
        // SAFETY: 100 fresh bytes.
        unsafe { p.as_ptr().write_bytes(1, 100) };
        let s = a.stats();
        assert_eq!(s.used, 100);
        assert!(s.committed >= 16 * 1024 && s.committed < 64 * 1024, "{s:?}");
        for _ in 0..1000 {
            a.alloc_layout(Layout::from_size_align(200, 16).unwrap()).unwrap();
        }
        a.check();
        let before = a.stats();
        assert!(before.committed >= before.used && before.used > 200_000);
        a.reset();
        let after = a.stats();
        assert_eq!(after.used, 0);
        assert_eq!(after.committed, before.committed, "reset keeps pages committed");
        assert_eq!(after.high_water, before.used);
        a.check();
    }

    #[test]
    fn every_alignment_up_to_4096_and_beyond() {
        let a = small();
        let mut shift = 0;
        while (1usize << shift) <= 65536 {
            let align = 1usize << shift;
            // odd sizes in between, so that the next allocation really needs aligning
            a.alloc_layout(Layout::from_size_align(3, 1).unwrap()).unwrap();
            let p = a.alloc_layout(Layout::from_size_align(align + 1, align).unwrap()).unwrap();
            assert_eq!(p.as_ptr() as usize % align, 0, "align {align}");
            shift += 1;
        }
        a.check();
    }

    #[test]
    fn sizes_near_usize_max_fail_cleanly() {
        let a = small();
        for size in [usize::MAX, usize::MAX - 1, usize::MAX / 2, isize::MAX as usize, (1 << 20) + 1] {
            for align in [1, 16, 4096] {
                if let Ok(l) = Layout::from_size_align(size, align) {
                    let e = a.alloc_layout(l).unwrap_err();
                    assert!(matches!(e, Error::TooLarge | Error::ReservationExhausted), "{size} {align}: {e:?}");
                }
            }
        }
        assert_eq!(a.stats().used, 0, "a failed request changes nothing");
        assert_eq!(a.stats().committed, 0);
    }

    #[test]
    fn exhausting_the_reservation() {
        let a = small();
        let mut n = 0usize;
        let err = loop {
            match a.alloc_layout(Layout::from_size_align(4000, 8).unwrap()) {
                Ok(_) => n += 1,
                Err(e) => break e,
            }
        };
        assert_eq!(err, Error::ReservationExhausted);
        assert_eq!(n, (1 << 20) / 4000);
        // a smaller request that still fits succeeds
        a.alloc_layout(Layout::from_size_align((1 << 20) - a.stats().used, 1).unwrap()).unwrap();
        a.check();
    }

    #[test]
    fn limit_is_checked_at_every_commit() {
        let mut a = PageArena::builder().reserve(1 << 20).commit_chunk(4096).limit(40 * 1024).build().unwrap();
        let mut got = 0;
        while a.alloc_layout(Layout::from_size_align(1024, 8).unwrap()).is_ok() {
            got += 1024;
        }
        assert_eq!(got, 40 * 1024, "exactly the limit is usable");
        assert_eq!(a.alloc_layout(Layout::new::<u8>()).unwrap_err(), Error::LimitExceeded);
        assert!(a.stats().committed <= 40 * 1024);
        a.set_limit(usize::MAX);
        a.alloc_layout(Layout::new::<u8>()).unwrap();
    }

    #[test]
    fn a_refused_chunk_falls_back_to_what_is_needed() {
        let budget = crate::host::Budget::new(40 * 1024, 40 * 1024).unwrap();
        let a = PageArena::builder()
            .reserve(1 << 20)
            .commit_chunk(64 * 1024)
            .source(Source::Os.with_budget(budget.clone()))
            .build()
            .unwrap();
        // a 64 KiB chunk would pass the budget; 36 KiB fits
        a.alloc_layout(Layout::from_size_align(36 * 1024, 8).unwrap()).unwrap();
        assert!(a.stats().committed <= 40 * 1024);
        assert_eq!(budget.committed(), a.stats().committed);
    }

    #[test]
    fn trim_gives_pages_back_and_they_read_zero() {
        let mut a = small();
        let l = Layout::from_size_align(4096, 4096).unwrap();
        let mut ptrs = vec![];
        for _ in 0..100 {
            let p = a.alloc_layout(l).unwrap();
            // SAFETY: a fresh 4096-byte block.
            unsafe { p.as_ptr().write_bytes(0xEE, 4096) };
            ptrs.push(p);
        }
        let before = a.stats().committed;
        a.reset();
        let freed = a.trim(8192).unwrap();
        let after = a.stats().committed;
        assert_eq!(after, 8192);
        assert_eq!(freed, before - 8192);
        // the pages past the retained part come back as zero
        for _ in 0..100 {
            a.alloc_layout(l).unwrap();
        }
        // SAFETY: ptrs[50] is inside the arena and was just handed out again.
        unsafe { assert_eq!(*ptrs[50].as_ptr(), 0) };
        // SAFETY: the retained first page keeps its old contents.
        unsafe { assert_eq!(*ptrs[0].as_ptr(), 0xEE) };
        // trim never drops what is in use
        let committed = a.stats().committed;
        assert_eq!(a.trim(0).unwrap(), committed - 100 * 4096);
        assert_eq!(a.stats().committed, 100 * 4096);
        a.check();
    }

    #[test]
    fn default_arena_reserves_address_space_only() {
        // The default reservation (4 GiB outside Miri) must succeed everywhere, Windows included,
        // and cost no memory until something is allocated.
        let a = PageArena::new().unwrap();
        let s = a.stats();
        assert!(s.reserved >= DEFAULT_RESERVE, "{s:?}");
        assert_eq!((s.committed, s.used), (0, 0), "{s:?}");
        let p = a.alloc_layout(Layout::from_size_align(64, 16).unwrap()).unwrap();
        assert_eq!(p.as_ptr() as usize % 16, 0);
        let s = a.stats();
        assert!(s.committed >= crate::os::page_size() && s.committed <= DEFAULT_COMMIT_CHUNK, "{s:?}");
    }

    #[test]
    fn cursor_writes_back_and_grows() {
        let mut a = small();
        a.alloc_layout(Layout::new::<u8>()).unwrap();
        let mut seen = vec![];
        {
            let mut c = a.cursor();
            for _ in 0..5000 {
                let p = c.alloc_layout(Layout::new::<[u64; 2]>()).unwrap();
                assert_eq!(p.as_ptr() as usize % 8, 0);
                seen.push(p.as_ptr() as usize);
            }
        }
        seen.dedup();
        assert_eq!(seen.len(), 5000, "distinct blocks");
        assert_eq!(a.stats().used, 8 + 5000 * 16);
        a.check();
        // the arena continues after the cursor's position
        let p = a.alloc_layout(Layout::new::<u8>()).unwrap();
        assert_eq!(p.as_ptr() as usize, seen[4999] + 16);
    }

    #[test]
    fn typed_alloc_and_contains() {
        let a = small();
        let x = a.alloc(41u64).unwrap();
        *x += 1;
        assert_eq!(*x, 42);
        assert!(a.contains(x as *const u64 as *const u8));
        assert!(!a.contains(&0u8 as *const u8));
    }
}
