//! The side table: one record per block, the embedded-pointer tree, and address lookup.
//!
//! No metadata lives next to user data: an overrun of a user block can only damage other user
//! bytes, never the books. The table is two arrays in their own reservations, committed on
//! demand like the arena, and one overflow map:
//!
//! * `recs[i]`: a 12-byte [`Rec`] per block slot, **in address order** (the arena bumps upward,
//!   a freed slot is reused only at the same address, and rewinds truncate). The tree links are
//!   16-bit deltas between record indices, and the size is 16 bits: both cover what a request
//!   builds (its blocks are recorded next to each other, and are small).
//! * `windows[w]`: for every 1 KiB window `w` of the arena (64 granules), a bitmap of the
//!   granules where a recorded block starts, and the index of the first record in the window.
//!   Records are in address order, so the record of a block starting at granule `g` is
//!   `first + popcount(bits below g)`: O(1), a handful of instructions, no search. 12 bytes per
//!   KiB of arena, committed for exactly the committed arena (rounded up to pages).
//! * `far`: the values that do not fit their field: a link to a record more than 16 K (`prev`)
//!   or 32 K (`child`, `next`) records away, and a size of 65 535 bytes or more. Keyed by
//!   record and field; an entry exists exactly while its field holds the escape value.
//! * per size class, a free list of dead slots threaded through the records.
//!
//! ## The tree
//! `prev` is "previous sibling, or `PARENT | parent` for a first child, or `NONE` for a root, or
//! `DEAD`"; `child` is the first child; `next` the next sibling. So unlinking any block is O(1)
//! and freeing a subtree is O(size of the subtree) with no allocation (the walk goes down first
//! children and back along `prev`, and writes nothing but the deaths). Cycles are impossible by
//! construction: a block is linked only under a block that was live when it was allocated, and
//! realloc replaces a node in place.
//! The fields hold these values encoded (see [`Rec`]); the table's accessors ([`Table::prev`],
//! [`Table::set_prev`], ...) take and return them decoded, as absolute record indices.
//!
//! ## The pending tail
//! The table holds only *materialized* blocks. The newest blocks of a region may instead be
//! *pending* in the region's tail log (see `region.rs`): one `u32` per block, no record yet.
//! The region materializes them (with [`Table::push`]) before any operation that needs them.

use crate::arena::Span;
use crate::host::{CriticalLevel, Source};
use crate::Error;
use core::hash::{BuildHasherDefault, Hasher};
use std::collections::HashMap;

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

/// `Rec::prev` of a dead slot (as a delta: -16 384 with no tag, never a link).
const PREV_DEAD: i16 = i16::MIN;
/// `Rec::prev` whose value is in `Table::far` (-16 384 with the tag, never a link).
const PREV_FAR: i16 = i16::MIN + 1;
/// `Rec::child` / `Rec::next` whose value is in `Table::far` (-32 768, never a link).
const LINK_FAR: i16 = i16::MIN;
/// Farthest record a `prev` delta reaches (15 bits, signed; the low bit is the tag).
///
/// Under Miri both reaches are cut (the encoding is otherwise the same), so that the tests meet
/// far links after a thousand records rather than after tens of thousands, which Miri would take
/// many minutes to interpret. A `prev` delta must still span a whole tail (`LOG_CAP` records:
/// `link_in_tail` stores plain deltas).
#[cfg(not(miri))]
pub(crate) const PREV_REACH: u32 = (1 << 14) - 1;
#[cfg(miri)]
pub(crate) const PREV_REACH: u32 = 511;
/// Farthest record a `child` / `next` delta reaches.
#[cfg(not(miri))]
pub(crate) const LINK_REACH: u32 = i16::MAX as u32;
#[cfg(miri)]
pub(crate) const LINK_REACH: u32 = 1023;
const _: () = assert!(PREV_REACH < LINK_REACH && LINK_REACH <= i16::MAX as u32 && 2 * PREV_REACH < i16::MAX as u32);
/// `Rec::size` of a block of at least this many bytes: the size is in `Table::far`.
const SIZE_BIG: u16 = u16::MAX;

/// The field of a record an entry of `Table::far` stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Prev = 0,
    Child = 1,
    Next = 2,
    Size = 3,
}

/// The key of `field` of record `i` in `Table::far`.
#[inline(always)]
fn far_key(i: u32, field: Field) -> u64 {
    (u64::from(i) << 2) | field as u64
}

/// The hasher of `Table::far`. Its keys are record indices and field numbers that only the table
/// makes (nothing outside chooses them), so one multiply by an odd constant does: it maps
/// distinct low bits to distinct low bits (the bucket) and mixes them into the high ones (the
/// tag), at a fraction of the cost of the default SipHash.
#[derive(Clone, Copy, Debug, Default)]
struct FarHasher(u64);

impl Hasher for FarHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    #[inline]
    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(26) ^ x).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// The delta from record `i` to record `v` if a `child` / `next` field holds it (never 0 or
/// `LINK_FAR`: a record never links to itself).
#[inline(always)]
fn link_delta(i: u32, v: u32) -> Option<i16> {
    let d = v.wrapping_sub(i) as i32;
    (d.unsigned_abs() <= LINK_REACH).then_some(d as i16)
}

/// `prev` of record `i` for the value `v` (a sibling, or `PARENT | p`), if a delta holds it.
#[inline(always)]
fn prev_delta(i: u32, v: u32) -> Option<i16> {
    let d = (v & !PARENT).wrapping_sub(i) as i32;
    (d.unsigned_abs() <= PREV_REACH).then_some(((d << 1) | (v >> 31) as i32) as i16)
}

/// One block slot: 12 bytes. Every field is stored compactly; a value that does not fit is an
/// escape in the field and an entry in `Table::far` (decoded by the table's accessors).
///
/// Invariants (for `i < count`):
/// * `off` is the block's start in granules from the arena base; `off` strictly increases with `i`;
/// * `size` is the requested size in bytes if below `SIZE_BIG`, else `SIZE_BIG` with the size in
///   `far` (live records only: a dead record's `size` means nothing, its class is its free
///   list's, and it has no entry); the slot spans `extent(size)` bytes;
/// * links are deltas between record indices: `child` and `next` hold `target - i` (0: `NONE`;
///   `LINK_FAR`: the absolute index is in `far`); `prev` holds `(target - i) << 1 | tag`, the tag
///   set for `PARENT | target` (0: `NONE`; `PREV_FAR`: the value, tag included, is in `far`;
///   `PREV_DEAD`: `DEAD`). A field holds an escape only where the delta does not fit (the fast
///   paths of `link_under` and `unlink` rely on it: a link within a `prev` delta's reach is a
///   delta at both ends);
/// * live: `prev` is `NONE`, `PARENT | p` (`p` live, `p.child == i`) or a sibling `s`
///   (`s.next == i`); `child`/`next` are `NONE` or live records whose `prev` points back; a
///   root's `next` is `NONE`;
/// * dead: `prev == PREV_DEAD`, and the 4 bytes of `child` and `next` hold the absolute index of
///   the next slot on the free list of its class (low half in `child`). A dead record has no
///   entry in `far`, and neither has any record at or past `count`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Rec {
    pub off: u32,
    size: u16,
    prev: i16,
    child: i16,
    next: i16,
}

const _: () = assert!(core::mem::size_of::<Rec>() == 12);
// `Region::try_free_leaf` reads `prev` and `child` as one 4-byte word (`LEAF_WORD`): 0 for a
// root without children.
const _: () = assert!(core::mem::offset_of!(Rec, prev) == 6 && core::mem::offset_of!(Rec, child) == 8);
/// Byte offset in a [`Rec`] of the 4-byte word `prev`, `child`: 0 iff the record is a live root
/// without children.
pub(crate) const LEAF_WORD: usize = 6;

impl Rec {
    /// The free-list link of a dead record.
    #[inline(always)]
    fn free_link(&self) -> u32 {
        u32::from(self.child as u16) | (u32::from(self.next as u16) << 16)
    }

    /// Mark the record dead, with `link` the next slot of its free list. Its `far` entries must
    /// be gone.
    #[inline(always)]
    fn set_dead(&mut self, link: u32) {
        self.prev = PREV_DEAD;
        self.child = link as u16 as i16;
        self.next = (link >> 16) as u16 as i16;
    }

    /// True for a dead slot.
    #[inline(always)]
    pub(crate) fn is_dead(&self) -> bool {
        self.prev == PREV_DEAD
    }

    /// True if `child` holds 0: for a live record, no children (meaningless for a dead one).
    #[inline(always)]
    pub(crate) fn childless(&self) -> bool {
        self.child == 0
    }

    /// The size in bytes, if it is below `SIZE_BIG` (else it is in `far`).
    #[inline(always)]
    pub(crate) fn small_size(&self) -> Option<usize> {
        (self.size != SIZE_BIG).then_some(self.size as usize)
    }
}

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

/// The lookup index of one 1 KiB window of the arena: 12 bytes (`packed(4)`: the bitmap is read
/// with one unaligned load, which costs nothing on the targets we build for, and the 4 bytes of
/// padding a `u64`-aligned struct would carry are 25% of the index). Invariant (for windows
/// below `init_windows`): bit `k` of `bits` is set iff a record starts at granule `64 w + k`,
/// and `first` is the index of the first record at or after granule `64 w`.
#[repr(C, packed(4))]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Window {
    pub bits: u64,
    pub first: u32,
}

const _: () = assert!(core::mem::size_of::<Window>() == 12);

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
    /// cleared: a lookup (`Region::find_hinted`) trusts an entry only if it is below `count`
    /// and its record starts at the granule looked up (offsets below `count` are unique, so such
    /// a record *is* the one the windows would find). Blocks freed soon after they were handed
    /// out (every `CoTaskMem` block) are found without the bitmap and popcount.
    pub hints: [u32; HINTS],
    /// Requested bytes of the live blocks.
    pub live_bytes: usize,
    /// The values that do not fit their record field (see [`Rec`]), keyed by [`far_key`]: an
    /// entry exists exactly while the field holds its escape (`PREV_FAR`, `LINK_FAR`,
    /// `SIZE_BIG`) in a live record below `count`. Only links between records more than 16 K
    /// apart and blocks of 64 KiB or more have entries: a request's blocks are recorded next to
    /// each other, so the map stays empty in the common case and its size follows the far links
    /// and big blocks that are live (every write of a field drops the entry of the value it
    /// replaces; a record that dies drops its entries). A std `HashMap` (as the region's
    /// `big_align`, with a cheap hasher: [`FarHasher`]): its memory comes from the process
    /// allocator, never from napalloc, so an insert cannot re-enter a region; it is touched only
    /// on those rare links and sizes. (Its memory is not in `Stats::table_committed`, which
    /// counts the arrays.)
    far: HashMap<u64, u32, BuildHasherDefault<FarHasher>>,
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
            far: HashMap::default(),
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
        // Records grow by an eighth at a time, not by doubling: committed and unused records
        // would otherwise make the table cost up to twice its 12 bytes per block.
        self.recs_span.ensure_gradual(need)?;
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

    /// Record `i`, shared (the accessors read single fields through it).
    ///
    /// # Safety
    /// `i < self.cap`.
    #[inline(always)]
    unsafe fn at(&self, i: u32) -> &Rec {
        debug_assert!(i < self.cap, "record {i} beyond committed {}", self.cap);
        // SAFETY: `i < cap`: committed and inside `recs`; records are written only through
        // `&mut self`.
        unsafe { &*self.recs.add(i as usize) }
    }

    // ---- The fields, decoded. Every accessor takes a record below `count` (so below `cap`):
    // ---- the callers' invariant, as for `rec`.

    /// `prev` of live or dead record `i`: `NONE`, `DEAD`, `PARENT | p` or a sibling.
    #[inline(always)]
    pub(crate) fn prev(&self, i: u32) -> u32 {
        // SAFETY: i < count <= cap (see above).
        let raw = unsafe { self.at(i) }.prev;
        match raw {
            0 => NONE,
            PREV_DEAD => DEAD,
            PREV_FAR => self.far_get(i, Field::Prev),
            _ => i.wrapping_add((raw >> 1) as i32 as u32) | ((raw as u32 & 1) << 31),
        }
    }

    /// `prev` of live record `i` that is not a root: a sibling or `PARENT | p`.
    #[inline(always)]
    fn prev_linked(&self, i: u32) -> u32 {
        // SAFETY: i < count <= cap (see above).
        let raw = unsafe { self.at(i) }.prev;
        debug_assert!(raw != 0 && raw != PREV_DEAD, "prev_linked of {i}");
        if raw == PREV_FAR {
            return self.far_get(i, Field::Prev);
        }
        i.wrapping_add((raw >> 1) as i32 as u32) | ((raw as u32 & 1) << 31)
    }

    /// `child` of live record `i` (`NONE` if it has none).
    #[inline(always)]
    pub(crate) fn child(&self, i: u32) -> u32 {
        // SAFETY: i < count <= cap (see above).
        let raw = unsafe { self.at(i) }.child;
        self.link(i, raw, Field::Child)
    }

    /// `next` of live record `i` (`NONE` if it is the last sibling).
    #[inline(always)]
    pub(crate) fn next(&self, i: u32) -> u32 {
        // SAFETY: i < count <= cap (see above).
        let raw = unsafe { self.at(i) }.next;
        self.link(i, raw, Field::Next)
    }

    #[inline(always)]
    fn link(&self, i: u32, raw: i16, field: Field) -> u32 {
        match raw {
            0 => NONE,
            LINK_FAR => self.far_get(i, field),
            _ => i.wrapping_add(raw as i32 as u32),
        }
    }

    /// The requested size of live record `i`.
    #[inline(always)]
    pub(crate) fn size(&self, i: u32) -> usize {
        // SAFETY: i < count <= cap (see above).
        match unsafe { self.at(i) }.small_size() {
            Some(s) => s,
            None => self.far_get(i, Field::Size) as usize,
        }
    }

    /// True if record `i` is a dead slot.
    #[inline(always)]
    pub(crate) fn is_dead(&self, i: u32) -> bool {
        // SAFETY: i < count <= cap (see above).
        unsafe { self.at(i) }.is_dead()
    }

    /// Set `prev` of live record `i` to `v` (`NONE`, `PARENT | p` or a sibling; not `DEAD`).
    #[inline(always)]
    pub(crate) fn set_prev(&mut self, i: u32, v: u32) {
        debug_assert!(v != DEAD && v & !PARENT != i, "prev of {i}: {v:#x}");
        // SAFETY: i < count <= cap (see above).
        let old = unsafe { self.at(i) }.prev;
        debug_assert!(old != PREV_DEAD, "set_prev of dead record {i}");
        if old == PREV_FAR {
            self.far_drop(i, Field::Prev);
        }
        let raw = if v == NONE {
            0
        } else {
            match prev_delta(i, v) {
                Some(d) => d,
                None => self.far_put(i, Field::Prev, v),
            }
        };
        // SAFETY: as above.
        unsafe { self.rec(i).prev = raw };
    }

    /// Set `child` of live record `i` to `v` (`NONE` or a record).
    #[inline(always)]
    pub(crate) fn set_child(&mut self, i: u32, v: u32) {
        // SAFETY: i < count <= cap (see above).
        let old = unsafe { self.at(i) }.child;
        let raw = self.set_link(i, old, v, Field::Child);
        // SAFETY: as above.
        unsafe { self.rec(i).child = raw };
    }

    /// Set `next` of live record `i` to `v` (`NONE` or a record).
    #[inline(always)]
    pub(crate) fn set_next(&mut self, i: u32, v: u32) {
        // SAFETY: i < count <= cap (see above).
        let old = unsafe { self.at(i) }.next;
        let raw = self.set_link(i, old, v, Field::Next);
        // SAFETY: as above.
        unsafe { self.rec(i).next = raw };
    }

    /// The raw `child`/`next` for `v`, replacing the raw `old`: drops the entry of an old escape
    /// and adds one for a new escape.
    #[inline(always)]
    fn set_link(&mut self, i: u32, old: i16, v: u32, field: Field) -> i16 {
        debug_assert!(v != i && v != DEAD && v & PARENT == 0 || v == NONE, "{field:?} of {i}: {v:#x}");
        if old == LINK_FAR {
            self.far_drop(i, field);
        }
        if v == NONE {
            return 0;
        }
        match link_delta(i, v) {
            Some(d) => d,
            None => self.far_put(i, field, v),
        }
    }

    /// Set the size of live record `i` (whose size field holds no escape: a dead or fresh record,
    /// or one whose old size was small).
    #[inline(always)]
    fn init_size(&mut self, i: u32, size: usize) {
        let raw = if size < SIZE_BIG as usize { size as u16 } else { self.far_put_size(i, size) };
        // SAFETY: i < count <= cap (see above).
        unsafe { self.rec(i).size = raw };
    }

    /// Set the size of live record `i`.
    #[inline]
    pub(crate) fn set_size(&mut self, i: u32, size: usize) {
        // SAFETY: i < count <= cap (see above).
        if unsafe { self.at(i) }.small_size().is_none() {
            self.far_drop(i, Field::Size);
        }
        self.init_size(i, size);
    }

    #[cold]
    #[inline(never)]
    fn far_get(&self, i: u32, field: Field) -> u32 {
        let v = self.far.get(&far_key(i, field)).copied();
        debug_assert!(v.is_some(), "escape without an entry: {field:?} of record {i}");
        // An escape always has its entry (`far` invariant); `NONE` keeps a broken table from
        // panicking on a public path.
        v.unwrap_or(NONE)
    }

    /// Store `v` as `field` of `i` in `far`; returns the escape for the field.
    #[cold]
    #[inline(never)]
    fn far_put(&mut self, i: u32, field: Field, v: u32) -> i16 {
        self.far.insert(far_key(i, field), v);
        if field == Field::Prev {
            PREV_FAR
        } else {
            LINK_FAR
        }
    }

    #[cold]
    #[inline(never)]
    fn far_put_size(&mut self, i: u32, size: usize) -> u16 {
        // Sizes are below 2^32 (the region refuses larger ones).
        self.far.insert(far_key(i, Field::Size), size as u32);
        SIZE_BIG
    }

    #[cold]
    #[inline(never)]
    fn far_drop(&mut self, i: u32, field: Field) {
        self.far.remove(&far_key(i, field));
    }

    /// Entries in the overflow map (far links and big sizes of live records).
    #[cfg(test)]
    pub(crate) fn far_len(&self) -> usize {
        self.far.len()
    }

    /// Check every invariant of the records, the free lists and `far` (tests only; O(count)).
    #[cfg(test)]
    pub(crate) fn check(&self) {
        let (mut live, mut bytes, mut escapes) = (0usize, 0usize, 0usize);
        for i in 0..self.count {
            // SAFETY: i < count <= cap.
            let r = unsafe { self.get(i) };
            if i > 0 {
                // SAFETY: as above.
                assert!(unsafe { self.get(i - 1) }.off < r.off, "records out of address order at {i}");
            }
            if r.is_dead() {
                for f in [Field::Prev, Field::Child, Field::Next, Field::Size] {
                    assert!(!self.far.contains_key(&far_key(i, f)), "dead record {i} has a {f:?} entry");
                }
                continue;
            }
            live += 1;
            bytes += self.size(i);
            let (p, c, n) = (self.prev(i), self.child(i), self.next(i));
            // An escape only where the value does not fit, and never without its entry.
            if r.prev == PREV_FAR {
                escapes += 1;
                assert!(self.far.contains_key(&far_key(i, Field::Prev)));
                assert_eq!(prev_delta(i, p), None, "prev {p:#x} of {i} escaped but fits");
            }
            for (raw, v, f) in [(r.child, c, Field::Child), (r.next, n, Field::Next)] {
                if raw == LINK_FAR {
                    escapes += 1;
                    assert!(self.far.contains_key(&far_key(i, f)));
                    assert_eq!(link_delta(i, v), None, "{f:?} {v} of {i} escaped but fits");
                }
            }
            if r.size == SIZE_BIG {
                escapes += 1;
                assert!(self.size(i) >= SIZE_BIG as usize, "size {} of {i} escaped but fits", self.size(i));
            }
            if p == NONE {
                assert_eq!(n, NONE, "root {i} has a sibling");
            } else if p & PARENT != 0 {
                assert!(p & !PARENT < self.count && !self.is_dead(p & !PARENT), "parent of {i}");
                assert_eq!(self.child(p & !PARENT), i, "{i} is not the first child of its parent");
            } else {
                assert!(p < self.count && !self.is_dead(p), "previous sibling of {i}");
                assert_eq!(self.next(p), i, "{i} is not the next of its previous sibling");
            }
            if c != NONE {
                assert!(c < self.count, "child of {i}");
                assert_eq!(self.prev(c), PARENT | i, "first child of {i} does not point back");
            }
            if n != NONE {
                assert!(n < self.count, "next of {i}");
                assert_eq!(self.prev(n), i, "next sibling of {i} does not point back");
            }
        }
        assert_eq!(escapes, self.far.len(), "entries of far without an escape");
        assert_eq!((live, bytes), (self.live_blocks, self.live_bytes), "the books");
        let mut dead = 0usize;
        for (class, &head) in self.heads.iter().enumerate() {
            let mut d = head;
            while d != NONE {
                assert!(d < self.count && self.is_dead(d), "free list {class} holds {d}");
                dead += 1;
                assert!(dead <= self.count as usize, "a cycle in free list {class}");
                // SAFETY: d < count <= cap.
                d = unsafe { self.get(d) }.free_link();
            }
        }
        assert_eq!(dead, self.count as usize - self.live_blocks, "dead slots off the free lists");
    }

    /// Make dead record `i` (taken off its free list) live: a root without children of `size`
    /// bytes. Returns the next slot of its free list.
    #[inline(always)]
    pub(crate) fn revive(&mut self, i: u32, size: usize) -> u32 {
        // SAFETY: i < count <= cap (see above).
        let r = unsafe { self.rec(i) };
        debug_assert!(r.is_dead(), "revive of live record {i}");
        let next = r.free_link();
        // A dead record has no `far` entries: plain stores.
        r.prev = 0;
        r.child = 0;
        r.next = 0;
        self.init_size(i, size);
        next
    }

    /// Commit the window index for an arena of `arena_committed` bytes. Called whenever the
    /// arena commits more, so that [`push`](Self::push) never needs more of it. It commits what
    /// that arena needs (rounded up to pages), not a doubling step ahead: the arena's own commits
    /// grow geometrically, so these calls are few, and an index committed ahead of the arena
    /// would be paid per block at no gain.
    pub(crate) fn ensure_windows(&mut self, arena_committed: usize) -> Result<(), Error> {
        let windows = (arena_committed >> (WINDOW_SHIFT as usize + 4)) + 1;
        self.first_span.ensure_exact(windows * core::mem::size_of::<Window>())
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
    #[inline(always)]
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
            unsafe { self.windows.add(self.init_windows).write(Window { bits: 0, first: i }) };
            self.init_windows += 1;
        }
        // SAFETY: w < init_windows.
        unsafe { (*self.windows.add(w)).bits |= 1 << (off & 63) };
        // A record at `count` has no `far` entries (`Rec` invariant): plain stores.
        // SAFETY: i < cap.
        unsafe { *self.rec(i) = Rec { off, size: 0, prev: 0, child: 0, next: 0 } };
        self.count = i + 1;
        self.init_size(i, size as usize);
        self.hints[off as usize % HINTS] = i;
        if parent != NONE {
            self.link_under(i, parent);
        }
        self.live_blocks += 1;
        self.live_bytes += size as usize;
        i
    }

    /// Make live root `i`, without children or siblings (fresh, or just revived), the first
    /// child of live record `p` (`i.prev` becomes `PARENT | p`).
    #[inline]
    pub(crate) fn link_under(&mut self, i: u32, p: u32) {
        debug_assert!(self.prev(i) == NONE && self.next(i) == NONE, "link_under of linked record {i}");
        // The common case in place: every delta within a `prev` delta's reach and no escape to
        // replace; `i.prev` and `i.next` hold 0 (no entries). Else the general accessors.
        // SAFETY: p < count <= cap (callers' invariant, as for the accessors).
        let pc = unsafe { self.at(p) }.child;
        let d = i.wrapping_sub(p) as i32; // p -> i
        let near = d.unsigned_abs() <= PREV_REACH;
        if pc == 0 && near {
            // SAFETY: p, i < count <= cap.
            unsafe {
                self.rec(p).child = d as i16;
                self.rec(i).prev = ((-d << 1) | 1) as i16;
            }
            return;
        }
        if pc != 0 && pc != LINK_FAR && near {
            let old = p.wrapping_add(pc as i32 as u32);
            // the delta i -> old
            let e = old.wrapping_sub(i) as i32;
            // SAFETY: old is p's first child, a live record below count.
            if e.unsigned_abs() <= PREV_REACH && unsafe { self.at(old) }.prev != PREV_FAR {
                // SAFETY: p, i, old < count <= cap.
                unsafe {
                    self.rec(p).child = d as i16;
                    let me = self.rec(i);
                    me.prev = ((-d << 1) | 1) as i16;
                    me.next = e as i16;
                    self.rec(old).prev = (-e << 1) as i16;
                }
                return;
            }
        }
        self.link_under_far(i, p);
    }

    /// [`link_under`](Self::link_under) of fresh root `i` under `p` where `p` and every child
    /// of `p` were pushed at most `LOG_CAP` (256) records before `i` (a tail block under a
    /// block of the same tail, materialized together): every delta is then well within reach,
    /// and no field involved holds an escape.
    #[inline(always)]
    pub(crate) fn link_in_tail(&mut self, i: u32, p: u32) {
        // SAFETY: p < count <= cap (callers' invariant, as for the accessors).
        let pc = unsafe { self.at(p) }.child;
        let d = i.wrapping_sub(p) as i32; // p -> i
        debug_assert!(d > 0 && d <= 256 && pc != LINK_FAR, "link_in_tail({i}, {p}): not within one tail");
        // SAFETY: p, i < count <= cap.
        unsafe {
            self.rec(p).child = d as i16;
            self.rec(i).prev = ((-d << 1) | 1) as i16;
        }
        if pc != 0 {
            let old = p.wrapping_add(pc as i32 as u32);
            // the delta i -> old, in (-256, 0)
            let e = old.wrapping_sub(i) as i32;
            // SAFETY: old is p's first child, a live record below count.
            unsafe {
                debug_assert!(self.at(old).prev != PREV_FAR);
                self.rec(i).next = e as i16;
                self.rec(old).prev = (-e << 1) as i16;
            }
        }
    }

    #[cold]
    #[inline(never)]
    fn link_under_far(&mut self, i: u32, p: u32) {
        let old = self.child(p);
        self.set_child(p, i);
        self.set_prev(i, PARENT | p);
        self.set_next(i, old);
        if old != NONE {
            self.set_prev(old, i);
        }
    }

    /// Unlink live, materialized record `i` from its parent's (or its siblings') list.
    #[inline]
    pub(crate) fn unlink(&mut self, i: u32) {
        // SAFETY: i < count <= cap (callers' invariant, as for the accessors).
        let r = unsafe { self.at(i) };
        let (prev, next) = (r.prev, r.next);
        if prev == 0 {
            return;
        }
        // The common case in place: `i`'s links are deltas, the new one fits a `prev` delta and
        // replaces no escape. The holder `t` of the link to `i` (parent or previous sibling) is
        // within a `prev` delta's reach, so its link to `i` is a delta too (an escape only where
        // a delta does not fit).
        if prev != PREV_FAR && next != LINK_FAR {
            let t = i.wrapping_add((prev >> 1) as i32 as u32);
            let tag = prev & 1;
            if next == 0 {
                // SAFETY: t and i are live records below count.
                unsafe {
                    if tag != 0 {
                        self.rec(t).child = 0;
                    } else {
                        self.rec(t).next = 0;
                    }
                    self.rec(i).prev = 0;
                }
                return;
            }
            let n = i.wrapping_add(next as i32 as u32);
            // the delta t -> n
            let dn = n.wrapping_sub(t) as i32;
            // SAFETY: n is i's next sibling, a live record below count.
            if dn.unsigned_abs() <= PREV_REACH && unsafe { self.at(n) }.prev != PREV_FAR {
                // SAFETY: t, n and i are live records below count.
                unsafe {
                    if tag != 0 {
                        self.rec(t).child = dn as i16;
                    } else {
                        self.rec(t).next = dn as i16;
                    }
                    self.rec(n).prev = ((-dn << 1) | tag as i32) as i16;
                    let me = self.rec(i);
                    me.prev = 0;
                    me.next = 0;
                }
                return;
            }
        }
        self.unlink_far(i);
    }

    #[cold]
    #[inline(never)]
    fn unlink_far(&mut self, i: u32) {
        let prev = self.prev(i);
        if prev == NONE {
            return;
        }
        let next = self.next(i);
        self.set_link_to(prev, next);
        if next != NONE {
            self.set_prev(next, prev);
        }
        self.set_prev(i, NONE);
        self.set_next(i, NONE);
    }

    /// Make the link a live record is reached by, given its `prev` (its parent's `child` for
    /// `PARENT | p`, else its previous sibling's `next`), point at `v` (`NONE` or a record).
    fn set_link_to(&mut self, prev: u32, v: u32) {
        if prev & PARENT != 0 {
            self.set_child(prev & !PARENT, v);
        } else {
            self.set_next(prev, v);
        }
    }

    /// Put live record `j`, a root without children, where live record `i` is in the tree: `j`
    /// takes `i`'s parent or siblings and `i`'s children, and `i` is left a root without
    /// children (a realloc that moves a block). Every link is re-encoded relative to its new
    /// holder, far or near.
    pub(crate) fn replace(&mut self, i: u32, j: u32) {
        debug_assert!(self.prev(j) == NONE && self.next(j) == NONE && self.child(j) == NONE, "{j} is linked");
        let (prev, next, child) = (self.prev(i), self.next(i), self.child(i));
        self.set_prev(i, NONE);
        self.set_next(i, NONE);
        self.set_child(i, NONE);
        self.set_prev(j, prev);
        self.set_next(j, next);
        self.set_child(j, child);
        if prev != NONE {
            self.set_link_to(prev, j);
        }
        if next != NONE {
            self.set_prev(next, j);
        }
        if child != NONE {
            self.set_prev(child, PARENT | j);
        }
    }

    /// The record whose block starts at granule `g`, if it is live. O(1).
    #[inline]
    pub(crate) fn find(&self, g: usize) -> Option<u32> {
        let i = self.slot(g)?;
        // A set bit has a record (window invariant), so i < count.
        (!self.is_dead(i)).then_some(i)
    }

    /// The record (live or dead) whose block starts at granule `g`, if any. O(1).
    #[inline(always)]
    pub(crate) fn slot(&self, g: usize) -> Option<u32> {
        let w = g >> WINDOW_SHIFT;
        if w >= self.init_windows {
            return None;
        }
        // SAFETY: w < init_windows.
        let win = unsafe { self.windows.add(w).read() };
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
        debug_assert!(r.prev == 0 && r.child == 0 && r.next == 0, "record {i} is not a root leaf");
        let size = r.size as usize;
        let class = size.wrapping_sub(1) / GRANULE;
        if class >= EXACT_CLASSES {
            // size 0, a grouped class, or a big size (`SIZE_BIG` is past the exact classes)
            self.free_root_leaf_slow(i, r);
            return;
        }
        // SAFETY: class < EXACT_CLASSES < NUM_CLASSES.
        let head = unsafe { self.heads.get_unchecked_mut(class) };
        r.set_dead(*head);
        *head = i;
        self.live_blocks -= 1;
        self.live_bytes -= size;
    }

    /// [`free_root_leaf`](Self::free_root_leaf) past the exact classes. The record is touched
    /// only through `r`: the caller's reference to it is alive (a read through another path
    /// would invalidate it).
    #[cold]
    #[inline(never)]
    fn free_root_leaf_slow(&mut self, i: u32, r: &mut Rec) {
        let size = match r.small_size() {
            Some(s) => s,
            None => self.take_big_size(i),
        };
        let class = class_of_size(size);
        let head = self.heads[class];
        r.set_dead(head);
        self.heads[class] = i;
        self.live_blocks -= 1;
        self.live_bytes -= size;
    }

    /// Put live record `i`, unlinked (no parent, no sibling, no child), on its free list.
    #[inline]
    fn kill(&mut self, i: u32) {
        // SAFETY: i < count <= cap.
        debug_assert!(
            unsafe { (self.at(i).prev, self.at(i).child, self.at(i).next) } == (0, 0, 0),
            "kill of linked {i}"
        );
        // SAFETY: as above.
        let size = match unsafe { self.at(i) }.small_size() {
            Some(s) => s,
            None => self.take_big_size(i),
        };
        self.bury(i, size);
    }

    /// The size of record `i`, which is in `far`, taken out of it.
    #[cold]
    #[inline(never)]
    fn take_big_size(&mut self, i: u32) -> usize {
        self.far.remove(&far_key(i, Field::Size)).unwrap_or(0) as usize
    }

    /// Mark record `i` of `size` bytes dead and push it on its free list. Its `far` entries
    /// must be gone.
    #[inline(always)]
    fn bury(&mut self, i: u32, size: usize) {
        let class = class_of_size(size);
        let head = self.heads[class];
        // SAFETY: i < count <= cap.
        unsafe { self.rec(i) }.set_dead(head);
        self.heads[class] = i;
        self.live_blocks -= 1;
        self.live_bytes -= size;
    }

    /// Make every child of live record `i` a root (O(children)).
    pub(crate) fn detach_children(&mut self, i: u32) {
        let mut c = self.child(i);
        self.set_child(i, NONE);
        while c != NONE {
            let next = self.next(c);
            self.set_prev(c, NONE);
            self.set_next(c, NONE);
            c = next;
        }
    }

    /// Free live record `i`, which has no children: unlink it and put it on its free list.
    #[inline]
    pub(crate) fn free_leaf(&mut self, i: u32) {
        debug_assert_eq!(self.child(i), NONE, "free_leaf of a record with children");
        self.unlink(i);
        self.kill(i);
    }

    /// Free live, materialized record `root` and all its descendants; returns how many blocks
    /// were freed. `on_free(index, off, size)` is called for each (before it is marked dead).
    pub(crate) fn free_subtree(&mut self, root: u32, mut on_free: impl FnMut(u32, u32, usize)) -> usize {
        self.unlink(root);
        // A post-order walk that needs neither a stack nor a write but the deaths: down the first
        // children to a leaf; then on to the next sibling's subtree, or, from a last child, back
        // along `prev` freeing it and its elder siblings (whose subtrees are done) up to the
        // parent, whose subtree is then done too. A record is freed only after its links were
        // last read.
        // `far` only shrinks meanwhile: if it is empty now, no record of the tree has an escape.
        let any_far = !self.far.is_empty();
        let mut freed = 1;
        let mut cur = root;
        'down: loop {
            loop {
                let c = self.child(cur);
                if c == NONE {
                    break;
                }
                cur = c;
            }
            loop {
                if cur == root {
                    self.free_walked(root, any_far, &mut on_free);
                    return freed;
                }
                let n = self.next(cur);
                if n != NONE {
                    cur = n;
                    continue 'down;
                }
                loop {
                    // not a root: a sibling or `PARENT | parent`, never `NONE` or `DEAD`
                    let p = self.prev_linked(cur);
                    self.free_walked(cur, any_far, &mut on_free);
                    freed += 1;
                    if p & PARENT != 0 {
                        cur = p & !PARENT;
                        break;
                    }
                    cur = p;
                }
            }
        }
    }

    /// Free record `i` of a subtree being freed: its entries go, it goes on its free list.
    #[inline(always)]
    fn free_walked(&mut self, i: u32, any_far: bool, on_free: &mut impl FnMut(u32, u32, usize)) {
        // SAFETY: i is a live record of the subtree, below count <= cap.
        let (off, size) = unsafe { (self.at(i).off, self.at(i).small_size()) };
        let size = match size {
            Some(s) => s,
            None => self.far_get(i, Field::Size) as usize,
        };
        on_free(i, off, size);
        if any_far {
            // SAFETY: as above.
            let r = unsafe { *self.at(i) };
            self.drop_entries(i, &r);
        }
        self.bury(i, size);
    }

    /// Drop the `far` entries of record `r` (index `i`).
    #[inline]
    fn drop_entries(&mut self, i: u32, r: &Rec) {
        if r.prev == PREV_FAR {
            self.far_drop(i, Field::Prev);
        }
        if r.child == LINK_FAR {
            self.far_drop(i, Field::Child);
        }
        if r.next == LINK_FAR {
            self.far_drop(i, Field::Next);
        }
        if r.size == SIZE_BIG {
            self.far_drop(i, Field::Size);
        }
    }

    /// Forget every record in O(number of classes), plus O(entries of `far`): the map is
    /// cleared only if it holds any, which only far links (> 16 K records apart) and live blocks
    /// of 64 KiB or more create.
    pub(crate) fn reset(&mut self) {
        if self.count as usize != self.live_blocks {
            // some slot is dead; when none is, every head is NONE: skip the 768-byte store
            self.heads = [NONE; NUM_CLASSES];
        }
        if !self.far.is_empty() {
            self.far.clear();
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

#[cfg(test)]
mod far_tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A table for up to `recs` records, each placed one granule after the one before (the
    /// table itself never looks at extents), with the window index committed for all of them.
    fn table(recs: usize) -> Table {
        let arena = ((recs + 64) * GRANULE).next_power_of_two();
        let mut t = Table::new(&Source::os(), arena, CriticalLevel::Task).unwrap();
        t.ensure_windows(arena).unwrap();
        t.reserve(recs).unwrap();
        t
    }

    fn push(t: &mut Table, size: u32, parent: u32) -> u32 {
        let off = t.count;
        t.push(off, size, parent).unwrap()
    }

    /// `n` roots: they put `n` records between the records pushed before and after.
    fn spacers(t: &mut Table, n: usize) {
        for _ in 0..n {
            push(t, 16, NONE);
        }
    }

    /// What `Region::reuse` does: the head of `size`'s free list, live again under `parent`.
    fn reuse(t: &mut Table, size: usize, parent: u32) -> u32 {
        let class = class_of_size(size);
        let i = t.heads[class];
        assert_ne!(i, NONE, "a dead slot of class {class}");
        t.heads[class] = t.revive(i, size);
        if parent != NONE {
            t.link_under(i, parent);
        }
        t.live_blocks += 1;
        t.live_bytes += size;
        i
    }

    /// Enough records between two to put them out of a `child`/`next` delta's reach.
    const FAR: usize = LINK_REACH as usize + 1;

    #[test]
    fn the_deltas_reach_exactly_as_far_as_documented() {
        let base = 1u32 << 20;
        assert_eq!(link_delta(base, base + LINK_REACH), Some(LINK_REACH as i16));
        assert_eq!(link_delta(base, base - LINK_REACH), Some(-(LINK_REACH as i16)));
        assert_eq!(link_delta(base, base + LINK_REACH + 1), None);
        assert_eq!(link_delta(base, base - LINK_REACH - 1), None, "-32768 is the escape");
        for v in [base + PREV_REACH, base - PREV_REACH, PARENT | (base + PREV_REACH), PARENT | (base - PREV_REACH)] {
            let d = prev_delta(base, v).unwrap_or_else(|| panic!("{v:#x} fits"));
            assert!(d != PREV_DEAD && d != PREV_FAR && d != 0);
        }
        for v in [base + PREV_REACH + 1, base - PREV_REACH - 1, PARENT | (base - PREV_REACH - 1)] {
            assert_eq!(prev_delta(base, v), None, "{v:#x} is out of reach");
        }
    }

    #[test]
    fn far_links_are_exact_through_link_unlink_and_free() {
        let mut t = table(FAR + 64);
        let a = push(&mut t, 16, NONE);
        spacers(&mut t, FAR);
        let b = push(&mut t, 16, a);
        t.check();
        assert_eq!((t.child(a), t.prev(b), t.next(b)), (b, PARENT | a, NONE));
        assert_eq!(t.far_len(), 2, "a.child and b.prev are far");
        let c = push(&mut t, 24, a);
        t.check();
        assert_eq!((t.child(a), t.prev(c), t.next(c), t.prev(b)), (c, PARENT | a, b, c));
        assert_eq!(t.far_len(), 2, "b.prev is near again: its entry is gone");
        // unlinking the first child hands the far link on to the second
        t.free_leaf(c);
        t.check();
        assert_eq!((t.child(a), t.prev(b)), (b, PARENT | a));
        assert_eq!(t.far_len(), 2);
        // grandchildren, one of them big, freed by the walk with the escapes above
        let d = push(&mut t, 16, b);
        let e = push(&mut t, 100_000, b);
        t.check();
        assert_eq!((t.child(b), t.next(e), t.prev(d)), (e, d, e));
        assert_eq!(t.far_len(), 3, "a.child, b.prev, e's size");
        let mut seen = vec![];
        assert_eq!(t.free_subtree(a, |i, _, size| seen.push((i, size))), 4);
        seen.sort_unstable();
        assert_eq!(seen, [(a, 16), (b, 16), (d, 16), (e, 100_000)]);
        t.check();
        assert_eq!(t.far_len(), 0, "the dead records dropped their entries");
        assert_eq!(t.live_blocks, t.count as usize - 5, "c and a's tree are dead");
        // far grandchildren: the walk goes down and back along far links
        let p = push(&mut t, 16, NONE);
        let q = push(&mut t, 16, p);
        let _near = push(&mut t, 16, q);
        let far_kid = reuse(&mut t, 16, q); // a slot of a's tree, far below
        t.check();
        assert!(far_kid < a + 8, "a dead slot of the first records");
        assert_eq!((t.child(q), t.prev(far_kid)), (far_kid, PARENT | q));
        assert!(t.far_len() >= 3, "q.child, far_kid.prev and far_kid.next: {}", t.far_len());
        assert_eq!(t.free_subtree(p, |_, _, _| {}), 4);
        t.check();
        assert_eq!(t.far_len(), 0);
    }

    #[test]
    fn a_free_joins_two_near_links_into_a_far_one() {
        let mut t = table(2 * PREV_REACH as usize + 64);
        let p = push(&mut t, 16, NONE);
        let c1 = push(&mut t, 16, p);
        spacers(&mut t, PREV_REACH as usize - 10);
        let c2 = push(&mut t, 16, p);
        spacers(&mut t, PREV_REACH as usize - 10);
        let c3 = push(&mut t, 16, p);
        t.check();
        // c3 -> c2 -> c1, every sibling link within a prev delta's reach
        assert_eq!((t.next(c3), t.next(c2), t.prev(c1), t.prev(c2)), (c2, c1, c2, c3));
        assert_eq!(t.far_len(), 1, "only c3.prev = PARENT | p is far");
        t.free_leaf(c2);
        t.check();
        assert_eq!((t.next(c3), t.prev(c1)), (c1, c3));
        assert_eq!(t.far_len(), 2, "c1.prev = c3 spans twice the reach");
        // and splitting them again makes it near
        t.free_leaf(c3);
        t.check();
        assert_eq!((t.child(p), t.prev(c1)), (c1, PARENT | p));
        assert_eq!(t.far_len(), 0);
    }

    #[test]
    fn a_dead_slot_far_away_is_reused_under_a_far_parent() {
        let mut t = table(FAR + 64);
        let old = push(&mut t, 32, NONE);
        let _keep = push(&mut t, 32, NONE);
        t.free_leaf(old);
        spacers(&mut t, FAR);
        let p = push(&mut t, 16, NONE);
        let sib = push(&mut t, 16, p);
        let again = reuse(&mut t, 30, p);
        assert_eq!(again, old, "the dead slot comes back");
        t.check();
        assert_eq!((t.child(p), t.prev(again), t.next(again), t.prev(sib)), (again, PARENT | p, sib, again));
        assert_eq!(t.far_len(), 4, "every link of the reused slot is far");
        assert_eq!(t.size(again), 30);
        t.detach_children(p);
        t.check();
        assert_eq!((t.child(p), t.prev(again), t.next(again), t.prev(sib)), (NONE, NONE, NONE, NONE));
        assert_eq!(t.far_len(), 0);
    }

    #[test]
    fn big_sizes_are_exact_and_their_entries_follow_the_record() {
        let mut t = table(64);
        let sizes = [0, 1, 65_534, 65_535, 65_536, 1 << 20, u32::MAX];
        let recs: Vec<u32> = sizes.iter().map(|&s| push(&mut t, s, NONE)).collect();
        t.check();
        for (&i, &s) in recs.iter().zip(&sizes) {
            assert_eq!(t.size(i), s as usize);
        }
        assert_eq!(t.far_len(), 4, "sizes of 65 535 bytes and more");
        t.set_size(recs[6], 10);
        t.set_size(recs[1], 70_000);
        t.live_bytes = t.live_bytes - u32::MAX as usize + 10 - 1 + 70_000;
        t.check();
        assert_eq!((t.size(recs[6]), t.size(recs[1])), (10, 70_000));
        assert_eq!(t.far_len(), 4);
        t.free_leaf(recs[4]);
        t.check();
        assert_eq!(t.far_len(), 3);
        // a dead big slot reused with a small size, and the other way round
        let i = reuse(&mut t, 65_536, NONE);
        assert_eq!((i, t.size(i)), (recs[4], 65_536));
        t.check();
        assert_eq!(t.far_len(), 4);
        t.reset();
        assert_eq!((t.far_len(), t.count, t.live_blocks, t.live_bytes), (0, 0, 0, 0));
        let j = push(&mut t, 65_535, NONE);
        t.check();
        assert_eq!((t.size(j), t.far_len()), (65_535, 1));
    }

    #[test]
    fn reset_forgets_far_links() {
        let mut t = table(FAR + 64);
        let a = push(&mut t, 16, NONE);
        spacers(&mut t, FAR);
        push(&mut t, 16, a);
        assert_eq!(t.far_len(), 2);
        t.reset();
        assert_eq!(t.far_len(), 0);
        // the records at the old indices are new
        let a = push(&mut t, 16, NONE);
        let b = push(&mut t, 16, a);
        t.check();
        assert_eq!((t.child(a), t.prev(b), t.far_len()), (b, PARENT | a, 0));
    }

    /// Random programs over a table with long runs of spacers between the blocks they link,
    /// against a model of the tree (each live record's parent); the table's invariants and the
    /// model are checked after every step, and `far` must not outgrow the far links and big
    /// sizes that are live.
    #[test]
    fn random_trees_over_far_records_match_the_model() {
        // (Miri: one short program over the shorter reaches, the O(count) check every 8 steps.)
        let (rounds, steps, every) = if cfg!(miri) { (1, 24, 8) } else { (3, 200, 1) };
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut rnd = move |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        };
        let mut peak = 0;
        for _round in 0..rounds {
            let mut t = table(4 * FAR);
            // live record -> parent
            let mut model: BTreeMap<u32, Option<u32>> = BTreeMap::new();
            for step in 0..steps {
                let live: Vec<u32> = model.keys().copied().collect();
                let any = |r: &mut dyn FnMut(usize) -> usize| live[r(live.len())];
                let size = if rnd(8) == 0 { 65_535 + rnd(100_000) } else { rnd(300) };
                match rnd(10) {
                    0 if (t.count as usize) < 3 * FAR => {
                        let n = PREV_REACH as usize + rnd(FAR);
                        let first = t.count;
                        spacers(&mut t, n);
                        for i in first..t.count {
                            t.free_leaf(i); // dead, so the model stays small
                        }
                    }
                    1 | 2 if !live.is_empty() => {
                        let p = any(&mut rnd);
                        let class = class_of_size(size);
                        let i = if t.heads[class] != NONE && rnd(2) == 0 {
                            reuse(&mut t, size, p)
                        } else {
                            push(&mut t, size as u32, p)
                        };
                        model.insert(i, Some(p));
                    }
                    3 if !live.is_empty() => {
                        let i = any(&mut rnd);
                        let gone = t.free_subtree(i, |_, _, _| {});
                        let mut doomed = vec![i];
                        let mut k = 0;
                        while k < doomed.len() {
                            let d = doomed[k];
                            doomed.extend(model.iter().filter(|(_, p)| **p == Some(d)).map(|(c, _)| *c));
                            k += 1;
                        }
                        assert_eq!(gone, doomed.len(), "step {step}: subtree size");
                        for d in doomed {
                            model.remove(&d);
                        }
                    }
                    4 if !live.is_empty() => {
                        let i = any(&mut rnd);
                        if t.child(i) == NONE {
                            t.free_leaf(i);
                            model.remove(&i);
                        } else {
                            t.detach_children(i);
                            for p in model.values_mut() {
                                if *p == Some(i) {
                                    *p = None;
                                }
                            }
                        }
                    }
                    5 if !live.is_empty() => {
                        let i = any(&mut rnd);
                        let old = t.size(i);
                        t.set_size(i, size);
                        t.live_bytes = t.live_bytes - old + size;
                    }
                    _ => {
                        let class = class_of_size(size);
                        let i = if t.heads[class] != NONE && rnd(2) == 0 {
                            reuse(&mut t, size, NONE)
                        } else {
                            push(&mut t, size as u32, NONE)
                        };
                        model.insert(i, None);
                    }
                }
                if step % every == every - 1 {
                    t.check();
                }
                assert_eq!(t.live_blocks, model.len(), "step {step}");
                for (&i, &p) in &model {
                    // the parent: walk `prev` back to the first child
                    let mut q = t.prev(i);
                    let mut hops = 0;
                    while q != NONE && q & PARENT == 0 {
                        q = t.prev(q);
                        hops += 1;
                        assert!(hops <= model.len(), "a cycle of siblings");
                    }
                    let got = (q != NONE).then_some(q & !PARENT);
                    assert_eq!(got, p, "step {step}: parent of {i}");
                }
                // every entry belongs to a live escape (check), so at most four per live record
                assert!(t.far_len() <= 4 * model.len(), "far grew to {} for {} live", t.far_len(), model.len());
                peak = peak.max(t.far_len());
            }
        }
        assert!(
            peak >= if cfg!(miri) { 2 } else { 8 },
            "the programs made far links and big sizes (at most {peak} at once)"
        );
    }
}
