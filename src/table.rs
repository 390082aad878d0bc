//! The side table: one record per block, the embedded-pointer tree, and address lookup.
//!
//! No metadata lives next to user data: an overrun of a user block can only damage other user
//! bytes, never the books. The table is three arrays in their own reservations, committed on
//! demand like the arena:
//!
//! * `recs[i]`: a [`Rec`] per block slot, **in address order** (the arena bumps upward, a freed
//!   slot is reused only at the same address, and rewinds truncate). 20 bytes.
//! * `windows[w]`: for every 1 KiB window `w` of the arena (64 granules), a bitmap of the
//!   granules where a recorded block starts, and the index of the first record in the window.
//!   Records are in address order, so the record of a block starting at granule `g` is
//!   `first + popcount(bits below g)`: O(1), a handful of instructions, no search. 16 bytes per
//!   KiB of arena.
//! * per size class, a free list of dead slots threaded through `Rec::next`.
//!
//! ## The tree
//! `prev` is "previous sibling, or `PARENT | parent` for a first child, or `NONE` for a root, or
//! `DEAD`"; `child` is the first child; `next` the next sibling. So unlinking any block is O(1)
//! and freeing a subtree is O(size of the subtree) with no allocation (the walk uses the dead
//! records' `next` as its stack). Cycles are impossible by construction: a block is linked only
//! under a block that was live when it was allocated, and realloc replaces a node in place.
//!
//! ## The pending tail
//! The table holds only *materialized* blocks. The newest blocks of a region may instead be
//! *pending* in the region's tail log (see `region.rs`): one `u32` per block, no record yet.
//! The region materializes them (with [`Table::push`]) before any operation that needs them.

use crate::arena::Span;
use crate::host::{CriticalLevel, Source};
use crate::Error;

/// No record.
pub(crate) const NONE: u32 = u32::MAX;
/// `prev` of a dead (free) slot.
pub(crate) const DEAD: u32 = u32::MAX - 1;
/// Tag in `prev`: the value is the parent, and this record is its first child.
pub(crate) const PARENT: u32 = 1 << 31;
/// Records are indexed by u32 below `PARENT`.
pub(crate) const MAX_RECS: usize = (PARENT - 1) as usize;

/// Allocation unit and minimum alignment of tracked blocks (MEMORY_ALLOCATION_ALIGNMENT).
pub const GRANULE: usize = 16;
/// log2 of the lookup window in granules (64 granules = 1 KiB).
const WINDOW_SHIFT: u32 = 6;
/// Entries of the lookup hint cache (a power of two).
pub(crate) const HINTS: usize = 512;

/// Sizes of up to `EXACT_CLASSES` granules have a class each; larger ones are grouped four per
/// doubling and rounded up to the class size when bump-allocated, so that a dead slot of a class
/// always fits any request of that class.
const EXACT_CLASSES: usize = 64;
pub(crate) const NUM_CLASSES: usize = EXACT_CLASSES + 4 * 32;

/// One block slot. Invariants (for `i < count`):
/// * `off` is the block's start in granules from the arena base; `off` strictly increases with `i`;
/// * `size` is the requested size in bytes; the slot spans `extent(size)` bytes;
/// * live: `prev` is `NONE`, `PARENT | p` (`p` live, `recs[p].child == i`) or a sibling `s`
///   (`recs[s].next == i`); `child`/`next` are `NONE` or live records whose `prev` points back;
/// * dead: `prev == DEAD`, `next` links the free list of `class_of(size)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Rec {
    pub off: u32,
    pub size: u32,
    pub prev: u32,
    pub child: u32,
    pub next: u32,
}

// `Region::try_free_leaf` reads `prev` and `child` as one 8-byte word.
const _: () = assert!(core::mem::offset_of!(Rec, prev) == 8 && core::mem::offset_of!(Rec, child) == 12);

/// Granules a block of `size` bytes occupies (zero-size blocks take one: they must be unique).
#[inline(always)]
pub(crate) fn granules(size: usize) -> usize {
    size.div_ceil(GRANULE).max(1)
}

/// The size class of a block of `g` granules.
#[inline]
pub(crate) fn class_of_granules(g: usize) -> usize {
    if g <= EXACT_CLASSES {
        g - 1
    } else {
        // four classes per doubling above 64 granules
        let lg = usize::BITS - 1 - (g - 1).leading_zeros(); // floor(log2(g - 1)), >= 6
        let quarter = ((g - 1) >> (lg - 2)) & 3;
        (EXACT_CLASSES + ((lg as usize - 6) << 2) + quarter).min(NUM_CLASSES - 1)
    }
}

/// The granules a slot of class `c` spans (the largest `g` with `class_of_granules(g) == c`).
#[inline]
pub(crate) fn class_granules(c: usize) -> usize {
    if c < EXACT_CLASSES {
        c + 1
    } else {
        let k = c - EXACT_CLASSES;
        let lg = (k >> 2) + 6;
        let quarter = k & 3;
        ((4 + quarter + 1) << (lg - 2)) + 1 - 1
    }
}

/// The size class of a block of `size` bytes.
#[inline(always)]
pub(crate) fn class_of_size(size: usize) -> usize {
    if size <= EXACT_CLASSES * GRANULE {
        size.saturating_sub(1) / GRANULE
    } else {
        class_of_granules(granules(size))
    }
}

/// Granules a slot holding `size` bytes spans.
#[inline(always)]
pub(crate) fn extent_granules(size: usize) -> usize {
    let g = granules(size);
    if g <= EXACT_CLASSES {
        g
    } else {
        class_granules(class_of_granules(g))
    }
}

/// The lookup index of one 1 KiB window of the arena. Invariant (for windows below
/// `init_windows`): bit `k` of `bits` is set iff a record starts at granule `64 w + k`, and
/// `first` is the index of the first record at or after granule `64 w`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Window {
    pub bits: u64,
    pub first: u32,
    _pad: u32,
}

/// The record arrays and free lists of one region.
#[derive(Debug)]
pub(crate) struct Table {
    pub recs: *mut Rec,
    /// Records in use: `[0, count)`. Written only by the owning region.
    pub count: u32,
    /// Records committed in `recs_span`.
    pub cap: u32,
    /// Live blocks of the table. (Kept apart from `live_bytes`: adjacent, the compiler merges
    /// the two updates into slower vector code.)
    pub live_blocks: usize,
    pub windows: *mut Window,
    /// Windows that are valid (see [`Window`]).
    pub init_windows: usize,
    /// Head of each class's free list (`NONE` if empty). Every record is live or on exactly
    /// one free list, so the number of dead slots is `count - live_blocks`.
    pub heads: [u32; NUM_CLASSES],
    /// A direct-mapped cache in front of the windows: `hints[g % HINTS]` is the record of the
    /// last block recorded or reused at a granule `g` with that remainder. Only a hint, never
    /// cleared: [`slot_hinted`](Self::slot_hinted) trusts an entry only if it is below `count`
    /// and its record starts at the granule looked up (offsets below `count` are unique, so such
    /// a record *is* the one the windows would find). Blocks freed soon after they were handed
    /// out (every `CoTaskMem` block) are found without the bitmap and popcount.
    pub hints: [u32; HINTS],
    /// Requested bytes of the live blocks.
    pub live_bytes: usize,
    recs_span: Span,
    first_span: Span,
}

impl Table {
    pub(crate) fn new(source: &Source, arena_reserve: usize, level: CriticalLevel) -> Result<Table, Error> {
        let max_recs = (arena_reserve / GRANULE).min(MAX_RECS);
        let recs_span = Span::new(source, max_recs * core::mem::size_of::<Rec>(), 16 * 1024, level)?;
        let windows = arena_reserve.div_ceil(GRANULE << WINDOW_SHIFT) + 1;
        let first_span = Span::new(source, windows * core::mem::size_of::<Window>(), 4096, level)?;
        Ok(Table {
            recs: recs_span.base().as_ptr().cast(),
            count: 0,
            cap: 0,
            windows: first_span.base().as_ptr().cast(),
            init_windows: 0,
            heads: [NONE; NUM_CLASSES],
            hints: [NONE; HINTS],
            live_blocks: 0,
            live_bytes: 0,
            recs_span,
            first_span,
        })
    }

    /// Commit at `level` from now on (both spans); returns the previous level.
    pub(crate) fn set_level(&self, level: CriticalLevel) -> CriticalLevel {
        self.first_span.set_level(level);
        self.recs_span.set_level(level)
    }

    /// Make sure `n` more records fit without committing (so pushing them cannot fail).
    #[inline]
    pub(crate) fn reserve(&mut self, n: usize) -> Result<(), Error> {
        while (self.cap as usize) < self.count as usize + n {
            if self.count as usize + n > MAX_RECS {
                return Err(Error::ReservationExhausted);
            }
            self.grow_to(self.count as usize + n)?;
        }
        Ok(())
    }

    /// Commit room for at least one more record.
    #[cold]
    #[inline(never)]
    pub(crate) fn grow(&mut self) -> Result<(), Error> {
        if self.count as usize >= MAX_RECS {
            return Err(Error::ReservationExhausted);
        }
        self.grow_to(self.count as usize + 1)
    }

    fn grow_to(&mut self, recs: usize) -> Result<(), Error> {
        let need = recs.checked_mul(core::mem::size_of::<Rec>()).ok_or(Error::TooLarge)?;
        self.recs_span.ensure(need)?;
        self.cap = (self.recs_span.committed() / core::mem::size_of::<Rec>()).min(MAX_RECS) as u32;
        Ok(())
    }

    /// Record `i`.
    ///
    /// # Safety
    /// `i < self.cap`.
    #[inline(always)]
    pub(crate) unsafe fn rec(&mut self, i: u32) -> &mut Rec {
        debug_assert!(i < self.cap, "record {i} beyond committed {}", self.cap);
        // SAFETY: `i < cap`, so the record is committed and inside `recs`; `&mut self` makes
        // the reference unique.
        unsafe { &mut *self.recs.add(i as usize) }
    }

    /// A copy of record `i`.
    ///
    /// # Safety
    /// `i < self.cap`.
    #[inline(always)]
    pub(crate) unsafe fn get(&self, i: u32) -> Rec {
        debug_assert!(i < self.cap, "record {i} beyond committed {}", self.cap);
        // SAFETY: `i < cap`: committed and inside `recs`.
        unsafe { *self.recs.add(i as usize) }
    }

    /// Commit the window index for an arena of `arena_committed` bytes. Called whenever the
    /// arena commits more, so that [`push`](Self::push) never needs more of it.
    pub(crate) fn ensure_windows(&mut self, arena_committed: usize) -> Result<(), Error> {
        let windows = (arena_committed >> (WINDOW_SHIFT as usize + 4)) + 1;
        self.first_span.ensure(windows * core::mem::size_of::<Window>())
    }

    /// Bytes of arena, from its start, whose blocks the committed window index covers.
    pub(crate) fn windows_cover(&self) -> usize {
        (self.first_span.committed() / core::mem::size_of::<Window>()) << (WINDOW_SHIFT as usize + 4)
    }

    /// Append a live record for a block at granule `off` of `size` bytes under `parent`
    /// (`NONE` for a root), index it and link it. The block must start above every recorded
    /// block, and the window index must cover it (`ensure_windows`). Returns its index.
    #[inline]
    pub(crate) fn push(&mut self, off: u32, size: u32, parent: u32) -> Result<u32, Error> {
        if self.count >= self.cap {
            self.grow()?;
        }
        Ok(self.push_reserved(off, size, parent))
    }

    /// [`push`](Self::push) into capacity that is already committed (`count < cap`): never
    /// commits, never fails.
    #[inline]
    pub(crate) fn push_reserved(&mut self, off: u32, size: u32, parent: u32) -> u32 {
        assert!(self.count < self.cap, "push_reserved beyond the committed records");
        let i = self.count;
        let w = (off as usize) >> WINDOW_SHIFT;
        debug_assert!(
            w < self.first_span.committed() / core::mem::size_of::<Window>(),
            "window index not committed for window {w}"
        );
        // SAFETY: i - 1 < count <= cap.
        debug_assert!(i == 0 || unsafe { self.get(i - 1).off } < off, "records out of address order");
        while self.init_windows <= w {
            // SAFETY: init_windows <= w and the index covers the committed arena
            // (`ensure_windows`), which contains every block.
            unsafe { *self.windows.add(self.init_windows) = Window { bits: 0, first: i, _pad: 0 } };
            self.init_windows += 1;
        }
        // SAFETY: w < init_windows.
        unsafe { (*self.windows.add(w)).bits |= 1 << (off & 63) };
        // SAFETY: i < cap.
        unsafe { *self.rec(i) = Rec { off, size, prev: NONE, child: NONE, next: NONE } };
        self.hints[off as usize % HINTS] = i;
        self.count = i + 1;
        if parent != NONE {
            self.link_under(i, parent);
        }
        self.live_blocks += 1;
        self.live_bytes += size as usize;
        i
    }

    /// Make live record `i` the first child of live record `p` (`i.prev` becomes `PARENT | p`).
    #[inline]
    pub(crate) fn link_under(&mut self, i: u32, p: u32) {
        // SAFETY: i and p are records below count <= cap (callers' invariant).
        unsafe {
            let old = self.rec(p).child;
            self.rec(p).child = i;
            let me = self.rec(i);
            me.prev = PARENT | p;
            me.next = old;
            if old != NONE {
                self.rec(old).prev = i;
            }
        }
    }

    /// Unlink live, materialized record `i` from its parent's (or its siblings') list.
    #[inline]
    pub(crate) fn unlink(&mut self, i: u32) {
        // SAFETY: i is a live materialized record; its neighbours are live records (invariant).
        unsafe {
            let prev = self.rec(i).prev;
            if prev == NONE {
                return;
            }
            let next = self.rec(i).next;
            if prev & PARENT != 0 {
                self.rec(prev & !PARENT).child = next;
            } else {
                self.rec(prev).next = next;
            }
            if next != NONE {
                self.rec(next).prev = prev;
            }
            let me = self.rec(i);
            me.prev = NONE;
            me.next = NONE;
        }
    }

    /// The record whose block starts at granule `g`, if it is live. O(1).
    #[inline]
    pub(crate) fn find(&self, g: usize) -> Option<u32> {
        let i = self.slot(g)?;
        // SAFETY: a set bit has a record (window invariant), so i < count <= cap.
        (unsafe { self.get(i).prev } != DEAD).then_some(i)
    }

    /// The record (live or dead) whose block starts at granule `g`, if any. O(1).
    #[inline(always)]
    pub(crate) fn slot(&self, g: usize) -> Option<u32> {
        let w = g >> WINDOW_SHIFT;
        if w >= self.init_windows {
            return None;
        }
        // SAFETY: w < init_windows.
        let win = unsafe { &*self.windows.add(w) };
        // Shift bit `g % 64` to the top: the sign says whether a record starts at `g`, and the
        // bits left are those at or below `g`.
        let up = win.bits << (63 - (g & 63));
        if (up as i64) >= 0 {
            return None;
        }
        Some(win.first + up.count_ones() - 1)
    }

    /// Free live record `i` (`r`), a root without children: no unlinking, straight onto its
    /// free list.
    #[inline(always)]
    pub(crate) fn free_root_leaf(&mut self, i: u32, r: &mut Rec) {
        debug_assert!(r.prev == NONE && r.child == NONE && r.next == NONE, "record {i} is not a root leaf");
        let size = r.size as usize;
        let class = size.wrapping_sub(1) / GRANULE;
        let class = if class < EXACT_CLASSES { class } else { class_of_size(size) };
        // SAFETY: class_of_size is below NUM_CLASSES.
        let head = unsafe { self.heads.get_unchecked_mut(class) };
        r.prev = DEAD;
        r.next = *head;
        *head = i;
        self.live_blocks -= 1;
        self.live_bytes -= size;
    }

    /// Make every child of live record `i` a root (O(children)).
    pub(crate) fn detach_children(&mut self, i: u32) {
        // SAFETY: i is live; its children are live records.
        let mut c = unsafe { self.rec(i).child };
        // SAFETY: as above.
        unsafe { self.rec(i).child = NONE };
        while c != NONE {
            // SAFETY: c is a live child.
            let r = unsafe { self.rec(c) };
            let next = r.next;
            r.prev = NONE;
            r.next = NONE;
            c = next;
        }
    }

    /// Free live record `i`, which has no children: unlink it and put it on its free list.
    #[inline]
    pub(crate) fn free_leaf(&mut self, i: u32) {
        self.unlink(i);
        // SAFETY: i is a live record below count.
        let size = unsafe { self.rec(i).size } as usize;
        let class = class_of_size(size);
        let head = self.heads[class];
        // SAFETY: as above.
        let me = unsafe { self.rec(i) };
        debug_assert_eq!(me.child, NONE, "free_leaf of a record with children");
        me.prev = DEAD;
        me.next = head;
        self.heads[class] = i;
        self.live_blocks -= 1;
        self.live_bytes -= size;
    }

    /// Free live, materialized record `root` and all its descendants; returns how many blocks
    /// were freed. `on_free(index, rec)` is called for each (before it is marked dead).
    pub(crate) fn free_subtree(&mut self, root: u32, mut on_free: impl FnMut(u32, &Rec)) -> usize {
        self.unlink(root);
        // Depth-first walk; the stack is threaded through the `next` of records already popped
        // (they are dead, so their `next` is free until they are pushed on a free list).
        let mut stack = root;
        // SAFETY: root is live; we reuse its `next` as the stack link.
        unsafe { self.rec(root).next = NONE };
        let mut freed = 0;
        while stack != NONE {
            let i = stack;
            // SAFETY: every record on the stack is a live record of the subtree.
            let r = unsafe { *self.rec(i) };
            stack = r.next;
            // push the children
            let mut c = r.child;
            while c != NONE {
                // SAFETY: children of a live record are live records.
                let cn = unsafe { self.rec(c).next };
                // SAFETY: as above.
                unsafe { self.rec(c).next = stack };
                stack = c;
                c = cn;
            }
            on_free(i, &r);
            self.live_blocks -= 1;
            self.live_bytes -= r.size as usize;
            let class = class_of_size(r.size as usize);
            let head = self.heads[class];
            // SAFETY: i is below count.
            let me = unsafe { self.rec(i) };
            me.prev = DEAD;
            me.child = NONE;
            me.next = head;
            self.heads[class] = i;
            freed += 1;
        }
        freed
    }

    /// Forget every record in O(number of classes).
    pub(crate) fn reset(&mut self) {
        if self.count as usize != self.live_blocks {
            // some slot is dead; when none is, every head is NONE: skip the 768-byte store
            self.heads = [NONE; NUM_CLASSES];
        }
        self.count = 0;
        self.init_windows = 0;
        self.live_blocks = 0;
        self.live_bytes = 0;
    }

    /// Committed bytes of the table's arrays.
    pub(crate) fn committed(&self) -> usize {
        self.recs_span.committed() + self.first_span.committed()
    }
    pub(crate) fn reserved(&self) -> usize {
        self.recs_span.reserved() + self.first_span.reserved()
    }

    /// Give back table memory beyond what `count` records and `keep_recs` more need. The room for
    /// `keep_recs` more stays committed, so that a pending tail of up to that many blocks can be
    /// recorded without a commit (which may fail). The window index keeps covering an arena of
    /// `arena_committed` bytes (the invariant of `ensure_windows`).
    pub(crate) fn trim(&mut self, keep_recs: usize, arena_committed: usize) -> Result<usize, Error> {
        let keep = (self.count as usize).saturating_add(keep_recs).min(MAX_RECS) * core::mem::size_of::<Rec>();
        // SAFETY: no record at or past `count` is referenced.
        let a = unsafe { self.recs_span.trim(keep)? };
        self.cap = (self.recs_span.committed() / core::mem::size_of::<Rec>()).min(MAX_RECS) as u32;
        let windows = ((arena_committed >> (WINDOW_SHIFT as usize + 4)) + 1).max(self.init_windows);
        // SAFETY: no window past init_windows is referenced, and `push` writes only windows of
        // the committed arena, which stay committed.
        let b = unsafe { self.first_span.trim(windows * core::mem::size_of::<Window>())? };
        Ok(a + b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_cover_every_size_and_fit() {
        // Miri interprets every step; the classes repeat every doubling, so a few thousand
        // granules still cover every exact class and dozens of grouped ones.
        let top = if cfg!(miri) { 4_000 } else { 200_000 };
        let mut last = 0;
        for g in 1..top {
            let c = class_of_granules(g);
            assert!(c >= last, "classes are monotonic");
            assert!(c < NUM_CLASSES);
            assert!(class_granules(c) >= g, "class {c} of {g} granules spans only {}", class_granules(c));
            if c > 0 {
                assert!(class_granules(c - 1) < g, "g={g} would fit class {}", c - 1);
            }
            last = c;
        }
        assert_eq!(extent_granules(0), 1);
        assert_eq!(extent_granules(16), 1);
        assert_eq!(extent_granules(17), 2);
        assert_eq!(extent_granules(1024), 64);
        for size in 0..top / 2 {
            assert_eq!(class_of_size(size), class_of_granules(granules(size)), "{size}");
        }
        // at most 25% waste above the exact classes
        for g in 65..top / 2 {
            assert!(class_granules(class_of_granules(g)) * 4 <= g * 5, "{g}");
        }
    }
}
