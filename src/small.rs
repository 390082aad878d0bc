//! The small-block allocator of a thread's task heap: blocks of up to [`SMALL_MAX`] bytes with
//! no recorded children, in a page-reserving arena of their own, with all metadata out of line.
//!
//! # Why
//! The canonical request done the COM way allocates and frees every block on its own. Through
//! the region each such call finds, checks and relinks a record of the side table; here
//! an allocation pops a free list and a free pushes one, each a handful of instructions, and
//! neither touches the block's memory.
//!
//! # Layout
//! ```text
//!  data:  | g0 (unused) | g1 | g2 | g3 | ... granules of 16 bytes ...      | bump ... limit ... reserved
//!  map:   |      0      | e1 | e2 | e3 | ... one u32 per granule ...       |
//! ```
//! * `data` is one reservation of [`RESERVE`] bytes, committed on demand in chunks from the
//!   heap's page source (`host::default_source()`: the installed host, charged to the budget).
//! * `map` is a second reservation, one `u32` per 16-byte granule of `data` (a quarter of the
//!   data span, committed in step with it: 4 bytes of map per 16 bytes of small-block memory in
//!   use). `u32` rather than `u16` because an entry of a freed block holds the granule index of
//!   the next free block of its class: 16 bits would limit the arena to 1 MiB (less the tag
//!   bit), which a thread holding a few thousand live strings outgrows.
//!
//! # Invariants
//! * Granule 0 is never a block, so granule index 0 means "none" in `heads` and in links.
//! * `bump <= limit <= reserved granules`, and `bump == 0` exactly when `limit == 0` (nothing
//!   committed, or disabled); granules `[0, limit)` of `data` and their map entries are
//!   committed; nothing at or past `limit` is touched.
//! * A map entry `e` of a granule `g < bump` is one of
//!   - `0`: not a block start (the interior of a block, or granule 0), or a free block at the
//!     end of its list (both are refused alike: neither is a live block);
//!   - [`LIVE`]` | size`, possibly with [`PROXY`]: the start of a live block of `size` bytes
//!     (`GetSize` is exact), occupying `granules(size)` granules. With `PROXY`, the block has a
//!     proxy in the heap's region that carries its recorded children (`proxies`);
//!   - `next` (no tag, `next < 2^30`): the start of a free block on the list of its class;
//!     `next` is the granule of the next free block of that class (0 at the end).
//!
//!   A pop therefore moves a map entry to the list head unchanged, and a push the head to the
//!   map entry; one subtraction of `LIVE` turns an entry into a size that is `<= SMALL_MAX`
//!   exactly for a plain live block.
//!
//!   Entries of granules `>= bump` are 0.
//! * `heads[c]` is the first free block of class `c` (blocks of `granules(size)` = `max(c, 1)`
//!   granules, where `c = ceil(size / 16)`; class 0 holds zero-size blocks, one granule each, so
//!   each is unique and non-NULL), or 0. Lists are LIFO.
//! * No count of live blocks is kept: the map is the one record of what is live, and
//!   [`Small::live`] counts by reading it (O(`bump`), for statistics). A counter updated by
//!   every allocation and free would chain all of a thread's operations through one memory
//!   read-modify-write: measured, 5–6 ns of an 85–90 ns request done the COM way (seven per
//!   cent). Whether any block is live ([`Small::trim_if_empty`]) starts at `hint`, a granule
//!   that held a live block when last looked at, and is amortized over the frees.
//!   `hint` is only where to start: any value is correct.
//! * `proxies` holds `(granule, proxy)` exactly for the live blocks whose entry has `PROXY`.
//!
//! Nothing is ever stored in a block's own memory, so an overrun of a user block can corrupt
//! another user block but never the free lists or the sizes; and a pointer is classified with
//! one range compare (which also rejects unaligned pointers) and one load of its map entry: a
//! foreign, interior or freed pointer is refused untouched.
//!
//! # Children
//! A block that gets a recorded child (`heap::alloc_child`) cannot move into the region, since
//! its address is out. Its first child makes a zero-size *proxy* block in the region, under which
//! the region records the children as it does for any parent; the entry gets `PROXY`. Freeing
//! the small block frees the proxy (alone or with its tree, as the free was); a realloc to a
//! size past `SMALL_MAX` reallocates the proxy itself to the new size (so the records stay with
//! it) and copies the data there. This keeps the fast paths free of any child test beyond the
//! one range compare they already do: a `PROXY` entry is simply "not a plain live block".
//!
//! # Concurrency
//! A `Small` is part of its heap's protected state (module doc of `heap`): it is touched only
//! by the owner inside the heap's fast-path protocol, or by the holder of the heap's lock, the
//! same rule as the region's. Its methods therefore take `&self` with `Cell`s for the fast
//! paths and `&mut self` for what only a lock holder does.

use crate::arena::Span;
use crate::host::{CriticalLevel, Source};
use crate::Error;
use core::cell::Cell;
use core::ptr::{self, NonNull};

/// Largest request served by the small-block allocator.
pub(crate) const SMALL_MAX: usize = 1024;
/// Bytes per granule (the task heap's alignment).
const GRANULE: usize = 16;
const SHIFT: u32 = GRANULE.trailing_zeros();
/// Size classes: class `c` holds blocks of `max(c, 1)` granules.
const CLASSES: usize = SMALL_MAX / GRANULE + 1;
/// Map entry tag: a live block; the low bits are its size.
const LIVE: u32 = 1 << 31;
/// Map entry tag: a live block with a proxy in the region (recorded children).
const PROXY: u32 = 1 << 30;
/// Bytes reserved for the data of one small arena (address space only until committed).
#[cfg(not(miri))]
pub(crate) const RESERVE: usize = 64 << 20;
/// Under Miri the page backend really allocates its reservations.
#[cfg(miri)]
pub(crate) const RESERVE: usize = 256 << 10;
// Granule indices stay far below the map entry's tag bits (`reserved < PROXY`).
const _: () = assert!(RESERVE < 1 << 31);
/// Data committed at least at a time (the map commits a quarter of it).
const CHUNK: usize = 64 << 10;

/// Granules a block of `size <= SMALL_MAX` bytes occupies.
#[inline(always)]
const fn granules(class: usize) -> usize {
    if class == 0 {
        1
    } else {
        class
    }
}

/// The small-block allocator of one heap (see the module doc for its invariants).
///
#[derive(Debug)]
#[repr(C)]
pub(crate) struct Small {
    /// The data reservation; `None` when disabled (scope and shared heaps, a failed reserve).
    data: Option<Span>,
    /// The map reservation, one `u32` per data granule; `None` when disabled.
    map_span: Option<Span>,
    /// Start of `data` (dangling when disabled). Immutable.
    base: *mut u8,
    /// Start of the map (dangling when disabled). Immutable.
    map: *mut u32,
    /// Granules of `data` reserved. Immutable.
    reserved: usize,
    /// Requests below this many bytes are served here: `SMALL_MAX + 1`, or 0 when disabled.
    /// Immutable.
    lim: usize,
    /// Granules of `data` (and of the map) committed.
    limit: Cell<usize>,
    /// The next granule never handed out.
    bump: Cell<usize>,
    /// Where the search for a live block starts (module doc).
    hint: Cell<usize>,
    heads: [Cell<u32>; CLASSES],
    /// `(granule, proxy)` of every live block with `PROXY` (few: touched only in slow paths).
    proxies: Vec<(u32, NonNull<u8>)>,
}

// SAFETY: the raw pointers address the two reservations this value owns; moving it to another
// thread moves that ownership along (the heap protocol keeps it to one thread at a time).
unsafe impl Send for Small {}

/// What a pointer is to a small arena (slow paths).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Outside the data reservation: ask the region.
    Outside,
    /// Inside it but not the start of a live block: refused.
    Bad,
    /// A live block of `size` bytes; `proxy` if it has recorded children.
    Live { size: usize, proxy: bool },
}

impl Small {
    /// An arena that serves nothing (every request goes to the region).
    pub(crate) const fn disabled() -> Small {
        Small {
            data: None,
            map_span: None,
            base: ptr::null_mut(),
            map: ptr::null_mut(),
            reserved: 0,
            lim: 0,
            limit: Cell::new(0),
            bump: Cell::new(0),
            hint: Cell::new(0),
            heads: [const { Cell::new(0) }; CLASSES],
            proxies: Vec::new(),
        }
    }

    /// Reserve an arena and its map from `source` (nothing committed yet).
    pub(crate) fn new(source: &Source) -> Result<Small, Error> {
        let data = Span::new(source, RESERVE, CHUNK, CriticalLevel::Task)?;
        let reserved = data.reserved() / GRANULE;
        let map_span = Span::new(source, reserved * 4, CHUNK / 4, CriticalLevel::Task)?;
        debug_assert!(reserved < PROXY as usize, "granule indices leave the tag bits free");
        let base = data.base().as_ptr();
        let map = map_span.base().as_ptr().cast::<u32>();
        Ok(Small {
            data: Some(data),
            map_span: Some(map_span),
            base,
            map,
            reserved,
            lim: SMALL_MAX + 1,
            ..Small::disabled()
        })
    }

    /// `(start, length)` of the data reservation (`length` 0 when disabled).
    pub(crate) fn range(&self) -> (usize, usize) {
        (self.base as usize, self.reserved * GRANULE)
    }

    /// Whether requests of `size` bytes are served here.
    #[inline(always)]
    pub(crate) fn serves(&self, size: usize) -> bool {
        size < self.lim
    }

    /// Whether `p` lies in the data reservation.
    #[inline(always)]
    pub(crate) fn contains(&self, p: *const u8) -> bool {
        (p as usize).wrapping_sub(self.base as usize) < self.reserved * GRANULE
    }

    /// The granule of `p` if `p` is 16-aligned and below `bump`: one compare, because the
    /// rotation moves the low bits of a misaligned offset to the top.
    #[inline(always)]
    fn granule(&self, p: *const u8) -> Option<usize> {
        let g = (p as usize).wrapping_sub(self.base as usize).rotate_right(SHIFT);
        (g < self.bump.get()).then_some(g)
    }

    #[inline(always)]
    fn entry(&self, g: usize) -> u32 {
        // SAFETY: `g < bump <= limit` (callers): a committed entry of the map.
        unsafe { self.map.add(g).read() }
    }

    #[inline(always)]
    fn set_entry(&self, g: usize, e: u32) {
        // SAFETY: `g < bump <= limit` (callers): a committed entry of the map.
        unsafe { self.map.add(g).write(e) }
    }

    #[inline(always)]
    fn block(&self, g: usize) -> NonNull<u8> {
        // SAFETY: `1 <= g < limit`: inside the data reservation, not its base, so not null.
        unsafe { NonNull::new_unchecked(self.base.add(g << SHIFT)) }
    }

    /// A block of `size <= SMALL_MAX` bytes: the head of its class's free list, else fresh
    /// granules below `limit`. Calls nothing.
    #[inline(always)]
    pub(crate) fn try_alloc(&self, size: usize) -> Option<NonNull<u8>> {
        debug_assert!(size <= SMALL_MAX);
        let c = (size + GRANULE - 1) >> SHIFT;
        let head = &self.heads[c];
        let g = head.get() as usize;
        if g != 0 {
            // A listed block: `g < bump` (heads invariant).
            head.set(self.entry(g));
            self.set_entry(g, LIVE | size as u32);
        } else {
            return self.try_bump(size, c);
        }
        Some(self.block(g))
    }

    #[inline(always)]
    fn try_bump(&self, size: usize, c: usize) -> Option<NonNull<u8>> {
        let g = self.bump.get();
        let end = g + granules(c);
        if end > self.limit.get() {
            return None;
        }
        self.bump.set(end);
        // Entries of the block's other granules are 0 already (never handed out before).
        self.set_entry(g, LIVE | size as u32);
        Some(self.block(g))
    }

    /// Free `p` if it is the start of a live block without a proxy; `false` (nothing done) for
    /// anything else. Never touches the memory at `p`. Calls nothing.
    #[inline(always)]
    pub(crate) fn try_free(&self, p: *const u8) -> bool {
        self.free_at(p as usize, self.base as usize, self.bump.get())
    }

    /// [`try_free`](Self::try_free) of the address `a`, with the arena's `base` and `bump`
    /// passed in (so that [`free_run`](Self::free_run) reads them once for a whole run).
    #[inline(always)]
    fn free_at(&self, a: usize, base: usize, bump: usize) -> bool {
        // As `granule`: one compare rejects foreign, misaligned and unused addresses.
        let g = a.wrapping_sub(base).rotate_right(SHIFT);
        if g >= bump {
            return false;
        }
        // 0 (not a block start), free and `PROXY` entries all land above SMALL_MAX. (In `u32`:
        // one `add` on x86-64.)
        let size = self.entry(g).wrapping_sub(LIVE);
        if size > SMALL_MAX as u32 {
            return false;
        }
        let head = &self.heads[(size as usize + GRANULE - 1) >> SHIFT];
        self.set_entry(g, head.get());
        head.set(g as u32);
        true
    }

    /// Free the leading items of `items` that are live blocks without a proxy (as
    /// [`try_free`](Self::try_free) each); returns how many it freed: all of them, or up to the
    /// first that is anything else, which it leaves untouched with the rest. `tag` holds low
    /// bits that items may carry on top of their address (cleared before use: the caller's
    /// items are aligned to the granule, so this never turns a misaligned pointer into an
    /// aligned one). Never touches the blocks' memory.
    ///
    /// [`try_free`](Self::try_free) in a loop, with the arena's fields in registers: the loop of
    /// a heap's drain of remote frees, which frees hundreds of blocks at a time.
    #[inline]
    pub(crate) fn free_run(&self, items: &[*mut u8], tag: usize) -> usize {
        let (base, bump) = (self.base as usize, self.bump.get());
        items.iter().take_while(|&&item| self.free_at(item as usize & !tag, base, bump)).count()
    }

    /// What `p` is to this arena.
    #[inline]
    pub(crate) fn kind(&self, p: *const u8) -> Kind {
        if !self.contains(p) {
            return Kind::Outside;
        }
        let Some(g) = self.granule(p) else { return Kind::Bad };
        let e = self.entry(g);
        if e & LIVE == 0 {
            return Kind::Bad;
        }
        Kind::Live { size: (e & !(LIVE | PROXY)) as usize, proxy: e & PROXY != 0 }
    }

    /// The size of a live block at `p`, `None` for anything else.
    #[inline]
    pub(crate) fn size_of(&self, p: *const u8) -> Option<usize> {
        match self.kind(p) {
            Kind::Live { size, .. } => Some(size),
            _ => None,
        }
    }

    /// Commit enough for a block of `size` bytes past `bump`, at `level`.
    #[cold]
    #[inline(never)]
    fn grow(&mut self, size: usize, level: CriticalLevel) -> Result<(), Error> {
        let (Some(data), Some(map)) = (&self.data, &self.map_span) else {
            return Err(Error::ReservationExhausted);
        };
        let end = self.bump.get().max(1) + granules(size.div_ceil(GRANULE));
        if end > self.reserved {
            return Err(Error::ReservationExhausted);
        }
        let (d, m) = (data.set_level(level), map.set_level(level));
        let r = data.ensure(end * GRANULE).and_then(|()| map.ensure(end * 4));
        data.set_level(d);
        map.set_level(m);
        r?;
        self.limit.set((data.committed() / GRANULE).min(map.committed() / 4).min(self.reserved));
        // Granule 0 is never a block: the first commit starts the bump past it.
        self.bump.set(self.bump.get().max(1));
        Ok(())
    }

    /// A block of `size <= SMALL_MAX` bytes, committing pages (through the source: may call
    /// out) if needed.
    pub(crate) fn alloc(&mut self, size: usize, level: CriticalLevel) -> Result<NonNull<u8>, Error> {
        if let Some(p) = self.try_alloc(size) {
            return Ok(p);
        }
        self.grow(size, level)?;
        self.try_alloc(size).ok_or(Error::OutOfMemory)
    }

    /// Change the size of the live block `p` in place if `size` takes as many granules.
    pub(crate) fn resize_in_place(&mut self, p: *const u8, size: usize) -> bool {
        let (Kind::Live { size: old, .. }, Some(g)) = (self.kind(p), self.granule(p)) else {
            return false;
        };
        let same = |s: usize| granules(s.div_ceil(GRANULE));
        if size > SMALL_MAX || same(size) != same(old) {
            return false;
        }
        self.set_entry(g, (self.entry(g) & (LIVE | PROXY)) | size as u32);
        true
    }

    /// Free the live block `p` (`kind(p)` is `Live`), returning its proxy if it had one (the
    /// caller frees that in the region).
    pub(crate) fn free_block(&mut self, p: *const u8) -> Option<NonNull<u8>> {
        let proxy = self.take_proxy(p);
        let freed = self.try_free(p);
        debug_assert!(freed, "free_block of a block that is not live");
        proxy
    }

    /// The proxy of the live block `p`, if it has one.
    pub(crate) fn proxy(&self, p: *const u8) -> Option<NonNull<u8>> {
        let g = self.granule(p)? as u32;
        self.proxies.iter().find(|&&(h, _)| h == g).map(|&(_, q)| q)
    }

    /// Give the live block `p` (no proxy yet) the proxy `q`.
    pub(crate) fn set_proxy(&mut self, p: *const u8, q: NonNull<u8>) {
        let Some(g) = self.granule(p) else { return };
        debug_assert!(matches!(self.kind(p), Kind::Live { proxy: false, .. }));
        self.set_entry(g, self.entry(g) | PROXY);
        self.proxies.push((g as u32, q));
    }

    /// Take the proxy of `p` away (the entry loses `PROXY`).
    pub(crate) fn take_proxy(&mut self, p: *const u8) -> Option<NonNull<u8>> {
        let g = self.granule(p)?;
        let i = self.proxies.iter().position(|&(h, _)| h as usize == g)?;
        self.set_entry(g, self.entry(g) & !PROXY);
        Some(self.proxies.swap_remove(i).1)
    }

    /// True if any live block has a proxy.
    #[inline]
    pub(crate) fn has_proxies(&self) -> bool {
        !self.proxies.is_empty()
    }

    /// True if `p` is the proxy of one of this arena's blocks: a region block only the heap
    /// knows of, which no caller may free, reallocate, query or hang children under (its address
    /// may be that of a block the caller freed before).
    pub(crate) fn is_proxy(&self, p: *const u8) -> bool {
        self.proxies.iter().any(|&(_, q)| core::ptr::eq(q.as_ptr(), p))
    }

    /// Live blocks, their bytes, and the region blocks that are proxies (not user blocks).
    ///
    /// Counted by reading the map's entries below `bump` (module doc): O(`bump`), about a
    /// millisecond for a full 64 MiB arena, microseconds for a thread's usual few hundred KiB.
    pub(crate) fn live(&self) -> (usize, usize, usize) {
        let (mut blocks, mut bytes) = (0usize, 0usize);
        for (_, size) in self.live_blocks() {
            blocks += 1;
            bytes += size;
        }
        (blocks, bytes, self.proxies.len())
    }

    /// `(granule, size)` of every live block (with or without a proxy), in address order: a
    /// walk of the map below `bump`.
    fn live_blocks(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        // Free-list links and interior granules have no `LIVE` bit.
        (1..self.bump.get()).filter_map(|g| {
            let e = self.entry(g);
            (e & LIVE != 0).then_some((g, (e & !(LIVE | PROXY)) as usize))
        })
    }

    /// Whether any block is live: the granule of `hint` first, then the map onwards from it,
    /// then before it (so that a run of frees in address order, or any order, costs O(`bump`)
    /// in all while blocks die, not per call). Leaves `hint` at the live block found.
    fn any_live(&self) -> bool {
        let bump = self.bump.get();
        let h = self.hint.get();
        for g in (h..bump).chain(1..h.min(bump)) {
            if g != 0 && self.entry(g) & LIVE != 0 {
                self.hint.set(g);
                return true;
            }
        }
        false
    }

    /// Committed and reserved bytes of both reservations.
    pub(crate) fn memory(&self) -> (usize, usize) {
        let c = |s: &Option<Span>| s.as_ref().map_or(0, Span::committed);
        let r = |s: &Option<Span>| s.as_ref().map_or(0, Span::reserved);
        (c(&self.data) + c(&self.map_span), r(&self.data) + r(&self.map_span))
    }

    /// If no block is live: forget every free block and give every committed page back.
    /// Returns whether the arena was empty.
    pub(crate) fn trim_if_empty(&mut self) -> bool {
        if self.any_live() {
            return false;
        }
        let (Some(data), Some(map)) = (&self.data, &self.map_span) else {
            return true;
        };
        debug_assert!(self.proxies.is_empty());
        // Zero the used map first: entries past `bump` must read 0 even if a decommit fails
        // (and the pages stay committed).
        // SAFETY: entries `[0, bump)` are committed (`bump <= limit`) and only we touch them.
        unsafe { self.map.write_bytes(0, self.bump.get()) };
        for h in &self.heads {
            h.set(0);
        }
        // A failed decommit leaves those pages committed: `limit` below says what is.
        // SAFETY: no live block, and no free block is listed any more: nothing refers to the
        // pages past 0.
        let _ = unsafe { (data.trim(0), map.trim(0)) };
        let limit = (data.committed() / GRANULE).min(map.committed() / 4).min(self.reserved);
        self.limit.set(limit);
        self.bump.set(if limit == 0 { 0 } else { 1 });
        self.hint.set(0);
        true
    }

    /// Let the OS take back every whole page of data that no live block overlaps (free blocks,
    /// and what lies past the last live block), while the blocks around them stay live. The
    /// pages stay committed and listed blocks stay listed: nothing is stored in a free block,
    /// so dropping its bytes loses nothing, and it is handed out again as it is. O(`bump`).
    /// Returns the bytes purged (0 for a host's pages).
    pub(crate) fn purge_free(&mut self) -> usize {
        let Some(data) = &self.data else { return 0 };
        let (mut purged, mut gap) = (0, 1);
        for (g, size) in self.live_blocks() {
            if g > gap {
                // SAFETY: granules `[gap, g)` hold no live block: free blocks or the interiors
                // of none, nothing refers into them and nothing reads their bytes.
                purged += unsafe { data.purge(gap * GRANULE, g * GRANULE) };
            }
            gap = g + granules((size + GRANULE - 1) >> SHIFT);
        }
        // SAFETY: as above, up to everything committed (past `bump` nothing was handed out).
        purged + unsafe { data.purge(gap * GRANULE, self.limit.get() * GRANULE) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arena() -> Small {
        Small::new(&Source::os()).unwrap()
    }

    #[test]
    fn purge_free_drops_the_pages_between_live_blocks_and_keeps_the_live_bytes() {
        let mut s = arena();
        let n = 1000;
        let blocks: Vec<NonNull<u8>> = (0..128)
            .map(|i| {
                let p = s.alloc(n, CriticalLevel::Task).unwrap();
                // SAFETY: a fresh block of n bytes.
                unsafe { p.as_ptr().write_bytes(i as u8, n) };
                p
            })
            .collect();
        for (i, &p) in blocks.iter().enumerate() {
            if i % 16 != 0 {
                assert!(s.try_free(p.as_ptr()));
            }
        }
        let committed = s.memory().0;
        let purged = s.purge_free();
        // 15 freed blocks (about 15 KiB) between two live ones: at least 2 whole pages each.
        assert!(purged >= 8 * 2 * 4096, "purged {purged} bytes");
        assert_eq!(s.memory().0, committed, "a purge decommits nothing");
        for (i, &p) in blocks.iter().enumerate().filter(|(i, _)| i % 16 == 0) {
            // SAFETY: a live block of n bytes.
            let ok = (0..n).all(|k| unsafe { *p.as_ptr().add(k) } == i as u8);
            assert!(ok, "live block {i} changed by the purge");
            assert_eq!(s.size_of(p.as_ptr()), Some(n));
        }
        // The free lists survive: the freed blocks come back, and hold what is written.
        for _ in 0..120 {
            let p = s.alloc(n, CriticalLevel::Task).unwrap();
            assert!(blocks.contains(&p), "a listed block is reused before fresh memory");
            // SAFETY: a live block of n bytes.
            unsafe { p.as_ptr().write_bytes(0xEE, n) };
        }
    }

    #[test]
    fn classes_sizes_and_bad_pointers() {
        let mut s = arena();
        assert!(s.try_alloc(8).is_none(), "nothing committed yet");
        let a = s.alloc(0, CriticalLevel::Task).unwrap();
        let b = s.alloc(0, CriticalLevel::Task).unwrap();
        assert_ne!(a, b, "zero-size blocks are unique");
        let c = s.alloc(100, CriticalLevel::Task).unwrap();
        assert_eq!(c.as_ptr() as usize % 16, 0);
        assert_eq!((s.size_of(a.as_ptr()), s.size_of(c.as_ptr())), (Some(0), Some(100)));
        assert_eq!(s.kind(c.as_ptr().wrapping_add(16)), Kind::Bad, "interior granule");
        assert_eq!(s.kind(c.as_ptr().wrapping_add(1)), Kind::Bad, "unaligned");
        assert_eq!(s.kind(ptr::null()), Kind::Outside);
        assert!(!s.try_free(c.as_ptr().wrapping_add(16)));
        assert!(s.try_free(c.as_ptr()));
        assert!(!s.try_free(c.as_ptr()), "double free");
        assert_eq!(s.kind(c.as_ptr()), Kind::Bad);
        // LIFO reuse within the class (97..=112 bytes: 7 granules).
        let d = s.alloc(112, CriticalLevel::Task).unwrap();
        assert_eq!(d, c);
        assert_eq!(s.size_of(d.as_ptr()), Some(112));
        assert!(s.resize_in_place(d.as_ptr(), 97));
        assert!(!s.resize_in_place(d.as_ptr(), 96), "another class");
        assert_eq!(s.live(), (3, 97, 0));
        for p in [a, b, d] {
            assert!(s.try_free(p.as_ptr()));
        }
        assert!(s.memory().0 > 0);
        assert!(s.trim_if_empty());
        assert_eq!(s.memory().0, 0, "an empty arena gives its pages back");
        assert_eq!(s.kind(d.as_ptr()), Kind::Bad, "forgotten after the trim");
        let e = s.alloc(16, CriticalLevel::Task).unwrap();
        assert_eq!(s.size_of(e.as_ptr()), Some(16));
    }

    #[test]
    fn proxies_follow_their_block() {
        let mut s = arena();
        let p = s.alloc(40, CriticalLevel::Task).unwrap();
        let q = NonNull::<u8>::dangling();
        s.set_proxy(p.as_ptr(), q);
        assert_eq!(s.kind(p.as_ptr()), Kind::Live { size: 40, proxy: true });
        assert!(!s.try_free(p.as_ptr()), "the fast free leaves proxied blocks to the slow path");
        assert_eq!(s.proxy(p.as_ptr()), Some(q));
        assert_eq!(s.free_block(p.as_ptr()), Some(q));
        assert_eq!(s.live(), (0, 0, 0));
        assert_eq!(s.kind(p.as_ptr()), Kind::Bad);
    }

    #[test]
    fn live_counts_are_exact() {
        let mut s = arena();
        // Zero-size blocks count as blocks without bytes; the largest ones count their bytes.
        let zs: Vec<_> = (0..3).map(|_| s.alloc(0, CriticalLevel::Task).unwrap()).collect();
        assert_eq!(s.live(), (3, 0, 0));
        let big: Vec<_> = (0..40).map(|_| s.alloc(SMALL_MAX, CriticalLevel::Task).unwrap()).collect();
        assert_eq!(s.live(), (43, 40 * SMALL_MAX, 0));
        assert!(s.resize_in_place(big[0].as_ptr(), SMALL_MAX - 15));
        assert_eq!(s.live(), (43, 40 * SMALL_MAX - 15, 0));
        // A proxied block is counted once, and freeing it takes exactly its share away.
        s.set_proxy(big[1].as_ptr(), NonNull::dangling());
        assert_eq!(s.live(), (43, 40 * SMALL_MAX - 15, 1));
        assert!(s.free_block(big[1].as_ptr()).is_some());
        assert_eq!(s.live(), (42, 39 * SMALL_MAX - 15, 0));
        for p in zs.iter().chain(&big).filter(|&&p| p != big[1]) {
            assert!(s.try_free(p.as_ptr()));
        }
        assert_eq!(s.live(), (0, 0, 0));
        assert!(s.trim_if_empty(), "empty exactly when nothing is live");
    }

    #[test]
    fn free_run_frees_up_to_the_first_item_it_cannot_free() {
        let mut s = arena();
        let b: Vec<_> = [16, 100, 0, 48, 1024].iter().map(|&n| s.alloc(n, CriticalLevel::Task).unwrap()).collect();
        let proxied = s.alloc(32, CriticalLevel::Task).unwrap();
        s.set_proxy(proxied.as_ptr(), NonNull::dangling());
        let mut local = [0u8; 16];
        // Tag bit 1 on the second item is ignored; the fourth item (interior) stops the run.
        let items = [
            b[0].as_ptr(),
            b[1].as_ptr().wrapping_add(1),
            b[2].as_ptr(),
            b[3].as_ptr().wrapping_add(16),
            b[4].as_ptr(),
        ];
        assert_eq!(s.free_run(&items, 1), 3);
        assert_eq!(s.live(), (3, 48 + 1024 + 32, 1), "exactly the three, counted");
        for p in &b[..3] {
            assert_eq!(s.kind(p.as_ptr()), Kind::Bad, "freed");
        }
        assert_eq!(s.size_of(b[3].as_ptr()), Some(48), "the block of the interior pointer is untouched");
        // Each kind of item it cannot free stops it, untouched.
        for stop in
            [b[0].as_ptr(), proxied.as_ptr(), local.as_mut_ptr(), b[4].as_ptr().wrapping_add(8), ptr::null_mut()]
        {
            assert_eq!(s.free_run(&[stop, b[4].as_ptr()], 1), 0);
        }
        assert_eq!(s.live(), (3, 48 + 1024 + 32, 1));
        assert_eq!(s.free_run(&[b[4].as_ptr(), b[3].as_ptr()], 1), 2);
        assert_eq!(s.live(), (1, 32, 1));
        // The freed blocks are reused, LIFO within their class.
        assert_eq!(s.alloc(48, CriticalLevel::Task).unwrap(), b[3]);
    }

    #[test]
    fn the_arena_is_empty_exactly_when_its_last_block_is_freed_whatever_the_order() {
        // Frees in address order, in reverse and interleaved: `trim_if_empty` must refuse while
        // any block lives (the search starts at the last live block it found) and `live` must
        // count exactly, at every step.
        for order in 0..3 {
            let mut s = arena();
            let blocks: Vec<(NonNull<u8>, usize)> = (0..60)
                .map(|i| {
                    let n = (i * 37) % (SMALL_MAX + 1);
                    (s.alloc(n, CriticalLevel::Task).unwrap(), n)
                })
                .collect();
            let mut idx: Vec<usize> = (0..blocks.len()).collect();
            match order {
                0 => {}
                1 => idx.reverse(),
                _ => idx.sort_by_key(|&i| (i % 7, i)),
            }
            let (mut left, mut bytes) = (blocks.len(), blocks.iter().map(|b| b.1).sum::<usize>());
            for &i in &idx {
                assert!(!s.trim_if_empty(), "order {order}: {left} blocks live");
                assert_eq!(s.live(), (left, bytes, 0));
                assert!(s.try_free(blocks[i].0.as_ptr()));
                left -= 1;
                bytes -= blocks[i].1;
            }
            assert_eq!(s.live(), (0, 0, 0));
            assert!(s.trim_if_empty(), "order {order}: all freed");
            // After the trim, a new block is seen again (the search starts over).
            let p = s.alloc(16, CriticalLevel::Task).unwrap();
            assert!(!s.trim_if_empty());
            assert!(s.try_free(p.as_ptr()));
            assert!(s.trim_if_empty());
        }
    }

    #[test]
    fn a_disabled_arena_serves_nothing() {
        let mut s = Small::disabled();
        assert!(s.try_alloc(0).is_none());
        assert!(s.alloc(0, CriticalLevel::Task).is_err());
        assert!(!s.try_free(ptr::null()));
        assert_eq!(s.kind(ptr::without_provenance(16)), Kind::Outside);
        assert!(s.trim_if_empty());
    }
}
