//! The 14 NapUtil memory functions (SPEC §4) as Rust functions over the task heap.
//!
//! The C exports with the NapUtil names are in [`super::ffi`]; they only add a guard against
//! unwinding. Every function here is `unsafe` because it reads or writes through pointers a C
//! caller hands it; what it checks and what the caller must guarantee is written on each.
//!
//! # Allocation
//! Every structure and every array it points to is a SEPARATE task-heap block, and each array is
//! allocated with [`heap::alloc_child`] under its structure: the side table records it as an
//! embedded pointer, so [`heap::free_tree`] of the structure frees it too, while
//! `CoTaskMemFree` of the structure alone ([`heap::free`]) leaves it alive (the SDK samples copy
//! a `CountedString` out, free only the structure and later free `string` on its own).
//! Everything handed out is zero-filled. On any failure `*out` is NULL (when `out` is not NULL)
//! and nothing is left allocated.
//!
//! # Freeing
//! A `Free*` function receives either what an `Alloc*` function (or another callee) built, or a
//! structure assembled by hand from separate `CoTaskMemAlloc` blocks, with no embedded-pointer
//! records at all. So it never relies on the records to find embedded pointers: it
//! 1. validates the top-level pointer: it must be the start of a live task-heap block at least as
//!    large as the structure ([`heap::size_of`]). Anything else (foreign, interior, already freed,
//!    too small) is **not read through at all**, nothing is freed, and it is reported
//!    ([`heap::report_bad_pointer`]: a log warning and the bad-pointer counter);
//! 2. reads the structure's fields, walking embedded arrays only as far as their own block's
//!    recorded size allows (a count beyond that is clamped and reported; an embedded array that
//!    is not a live block is not read);
//! 3. frees each embedded pointer with [`heap::free`] (NULL: nothing; a bad pointer: reported and
//!    ignored; a pointer equal to the structure itself: skipped, the structure is freed last);
//! 4. frees the structure with [`heap::free_tree`], which also frees anything still recorded
//!    under it.
//!
//! Steps 1 and 2 for a structure and the array it points to are one call
//! (`TaskMem::size_of_pair`: the array's field is read only once the structure is validated),
//! and so are steps 3 and 4 for that array (`TaskMem::free_then_tree`); on the task heap each
//! is one pass of its lock-free path, with one lookup per pointer.
//!
//! # `FreeConnections` RELEASES THE INTERFACES IT HOLDS
//! **[`free_connections`] calls `Release` exactly once on every non-NULL `connections[i]`,
//! `i < count`, before it frees the slot array and the structure.** In COM the receiver of an
//! `[out]` interface pointer owns that reference, and MIDL's free routines release embedded
//! interfaces; so a `Connections` handed out must hold one reference per non-NULL slot
//! (`AddRef` before storing), and whoever frees it must not `Release` the slots itself. The heap
//! lock is not held during the `Release` calls, so an object may free task-heap memory (even
//! itself) from its `Release`. It must not free the `Connections` being freed.

use super::types::{
    ComObject, Connections, CountedString, FixupInfo, INapEnforcementClientConnection, IsolationInfo, IsolationInfoEx,
    NapComponentRegistrationInfo, NetworkSoH, PrivateData, SoH, SoHAttribute, SoHAttributeType, SoHAttributeValue,
    SystemHealthAgentState, MAX_CONNECTION_COUNT_PER_ENFORCER, MAX_DWORD_COUNT_PER_SOH_ATTRIBUTE, MAX_STRING_LENGTH,
    WCHAR,
};
use crate::heap;
use crate::hr::{E_INVALIDARG, E_OUTOFMEMORY, HRESULT, S_OK};
use core::mem::size_of;
use core::ptr::{self, NonNull};

// ---------------------------------------------------------------------------------------------
// The allocator seam
// ---------------------------------------------------------------------------------------------

/// The task-heap operations the NapUtil functions use. Production code uses [`TaskHeap`], the
/// process-wide task heap; the tests substitute a private region that can be told to fail an
/// allocation, so that every failure path is exercised and its books checked exactly.
pub(crate) trait TaskMem {
    /// A block of `size` bytes (16-aligned), `None` if memory is short.
    fn alloc(&self, size: usize) -> Option<NonNull<u8>>;
    /// A block recorded as an embedded pointer of `parent`.
    fn alloc_child(&self, parent: NonNull<u8>, size: usize) -> Option<NonNull<u8>>;
    /// `CoTaskMemFree`: one block; NULL nothing; a bad pointer reported and ignored.
    ///
    /// # Safety
    /// If `p` is a live block, nothing uses it afterwards.
    unsafe fn free(&self, p: *mut u8) -> bool;
    /// One block and everything recorded under it.
    ///
    /// # Safety
    /// If `p` is a live block, nothing uses it or its recorded children afterwards.
    unsafe fn free_tree(&self, p: *mut u8) -> bool;
    /// The requested size of a live block start, `None` for anything else.
    fn size_of(&self, p: *const u8) -> Option<usize>;
    /// Log and count a refused pointer.
    fn report_bad_pointer(&self, what: &str, p: *const u8);

    /// A block of `size` bytes and a block of `child` bytes recorded under it: `None` if the
    /// first cannot be had, `Some((p, None))` if only the child failed.
    fn alloc_with_child(&self, size: usize, child: usize) -> Option<(NonNull<u8>, Option<NonNull<u8>>)> {
        let p = self.alloc(size)?;
        Some((p, self.alloc_child(p, child)))
    }
    /// `(size_of(p), q, size_of(q))` where `q = field()` is read from `p`'s block only if `p` is
    /// a live block of at least `min` bytes (else `q` is null). `field` must not call `self`.
    fn size_of_pair<F: FnOnce() -> *const u8>(
        &self,
        p: *const u8,
        min: usize,
        field: F,
    ) -> (Option<usize>, *const u8, Option<usize>) {
        match self.size_of(p) {
            Some(a) if a >= min => {
                let q = field();
                (Some(a), q, self.size_of(q))
            }
            a => (a, ptr::null(), None),
        }
    }
    /// `free(a)` (NULL: nothing), then `free_tree(b)`.
    ///
    /// # Safety
    /// As `free` for `a` and `free_tree` for `b`.
    unsafe fn free_then_tree(&self, a: *mut u8, b: *mut u8) {
        // SAFETY: forwarded caller guarantee.
        unsafe {
            if !a.is_null() {
                self.free(a);
            }
            self.free_tree(b);
        }
    }
    /// If `p` and at most one block `q` after it are everything this memory allocated since `p`
    /// (a structure and its array, freed before anything newer was made: a pending tail),
    /// `Some((size_of(p), q, size_of(q), end))` (`q` null and 0 if there is no such block; `end`
    /// where the two end, for [`try_free_tail_to`](Self::try_free_tail_to)); `None` when that is
    /// not known cheaply (the caller then asks [`size_of`](Self::size_of)). `q`'s contents and
    /// `p`'s are not read.
    fn tail_pair(&self, _p: *const u8) -> Option<(usize, *mut u8, usize, *const u8)> {
        None
    }
    /// Free `p` with everything recorded under it (one rewind) if what
    /// [`tail_pair`](Self::tail_pair) found is still the pending tail: `p` its root, `end` its
    /// end. `false` (and nothing changed) otherwise.
    ///
    /// # Safety
    /// As `free_tree` for `p`.
    unsafe fn try_free_tail_to(&self, _p: *const u8, _end: *const u8) -> bool {
        false
    }
    /// A block of `size` bytes and a block of `child` bytes recorded under it, as a new pending
    /// tail, from memory at hand and without calling out; `None` (and nothing allocated) when
    /// that cannot be done cheaply: the caller then takes [`alloc_with_child`](Self::alloc_with_child).
    fn try_alloc_pair(&self, _size: usize, _child: usize) -> Option<(NonNull<u8>, NonNull<u8>)> {
        None
    }
}

/// The process-wide task heap ([`crate::heap`]).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TaskHeap;

impl TaskMem for TaskHeap {
    #[inline]
    fn alloc(&self, size: usize) -> Option<NonNull<u8>> {
        heap::alloc_tracked(size)
    }
    #[inline]
    fn alloc_child(&self, parent: NonNull<u8>, size: usize) -> Option<NonNull<u8>> {
        heap::alloc_child(parent, size)
    }
    #[inline]
    unsafe fn free(&self, p: *mut u8) -> bool {
        // SAFETY: forwarded caller guarantee.
        unsafe { heap::free_embedded(p) }
    }
    #[inline]
    unsafe fn free_tree(&self, p: *mut u8) -> bool {
        // SAFETY: forwarded caller guarantee.
        unsafe { heap::free_tree(p) }
    }
    #[inline]
    fn size_of(&self, p: *const u8) -> Option<usize> {
        heap::size_of(p)
    }
    fn report_bad_pointer(&self, what: &str, p: *const u8) {
        heap::report_bad_pointer(what, p)
    }
    #[inline]
    fn alloc_with_child(&self, size: usize, child: usize) -> Option<(NonNull<u8>, Option<NonNull<u8>>)> {
        heap::alloc_with_child(size, child)
    }
    #[inline]
    fn size_of_pair<F: FnOnce() -> *const u8>(
        &self,
        p: *const u8,
        min: usize,
        field: F,
    ) -> (Option<usize>, *const u8, Option<usize>) {
        heap::size_of_pair(p, min, field)
    }
    #[inline]
    unsafe fn free_then_tree(&self, a: *mut u8, b: *mut u8) {
        // SAFETY: forwarded caller guarantee.
        unsafe { heap::free_then_tree(a, b) }
    }
    #[inline]
    fn tail_pair(&self, p: *const u8) -> Option<(usize, *mut u8, usize, *const u8)> {
        heap::tail_pair(p)
    }
    #[inline]
    unsafe fn try_free_tail_to(&self, p: *const u8, end: *const u8) -> bool {
        // SAFETY: forwarded caller guarantee.
        unsafe { heap::try_free_tail_to(p, end) }
    }
    #[inline]
    fn try_alloc_pair(&self, size: usize, child: usize) -> Option<(NonNull<u8>, NonNull<u8>)> {
        heap::try_alloc_pair(size, child)
    }
}

// ---------------------------------------------------------------------------------------------
// Shared steps
// ---------------------------------------------------------------------------------------------

/// A zero-filled block of `size` bytes.
#[inline]
fn alloc_zeroed<M: TaskMem + ?Sized>(m: &M, size: usize) -> Option<NonNull<u8>> {
    let p = m.alloc(size)?;
    // SAFETY: a fresh block of `size` bytes.
    unsafe { p.as_ptr().write_bytes(0, size) };
    Some(p)
}

/// A zero-filled block of `size` bytes recorded under `parent`.
#[inline]
fn alloc_child_zeroed<M: TaskMem + ?Sized>(m: &M, parent: NonNull<u8>, size: usize) -> Option<NonNull<u8>> {
    let p = m.alloc_child(parent, size)?;
    // SAFETY: a fresh block of `size` bytes.
    unsafe { p.as_ptr().write_bytes(0, size) };
    Some(p)
}

/// Step 1 of every `Free*`: `Some(block size)` if `p` is the start of a live block of at least
/// `size_of::<T>()` bytes; `None` for NULL (silently) and for anything else (reported). Nothing
/// is read through `p`.
#[inline]
fn checked_block<T, M: TaskMem + ?Sized>(m: &M, what: &str, p: *const T) -> Option<usize> {
    checked_min(m, what, p.cast(), size_of::<T>())
}

/// `Some(block size)` if `p` is the start of a live block of at least `min` bytes; `None` for
/// NULL (silently) and for anything else (reported).
#[inline]
fn checked_min<M: TaskMem + ?Sized>(m: &M, what: &str, p: *const u8, min: usize) -> Option<usize> {
    if p.is_null() {
        return None;
    }
    match m.size_of(p) {
        Some(size) if size >= min => Some(size),
        _ => {
            m.report_bad_pointer(what, p);
            None
        }
    }
}

/// How many `T`s of an embedded array at `p` may be read for a stated `count`: `count` clamped
/// to what `p`'s block holds (reported if clamped), 0 if `p` is NULL or not a live block start
/// (then it is not read; the free that follows reports it).
#[inline]
fn readable_count<T, M: TaskMem + ?Sized>(m: &M, what: &str, p: *const T, count: usize) -> usize {
    if p.is_null() || count == 0 {
        return 0;
    }
    clamp_count(m, what, p, count, m.size_of(p.cast()))
}

/// [`readable_count`] with `p`'s block size already looked up (`size`: `size_of(p)`).
#[inline]
fn clamp_count<T, M: TaskMem + ?Sized>(m: &M, what: &str, p: *const T, count: usize, size: Option<usize>) -> usize {
    if p.is_null() || count == 0 {
        return 0;
    }
    let Some(size) = size else {
        return 0;
    };
    let cap = size / size_of::<T>();
    if count > cap {
        m.report_bad_pointer(what, p.cast());
        cap
    } else {
        count
    }
}

/// Step 3: free one embedded pointer of the structure at `top` (not `top` itself: that is freed
/// last, with its whole tree).
///
/// # Safety
/// If `p` is a live block, nothing uses it afterwards.
#[inline]
unsafe fn free_field<M: TaskMem + ?Sized, T>(m: &M, p: *mut T, top: *const u8) {
    if !p.is_null() && p as *const u8 != top {
        // SAFETY: forwarded caller guarantee.
        unsafe { m.free(p.cast()) };
    }
}

/// Write `v` to `*out`; `out` is not NULL.
///
/// # Safety
/// `out` is valid for writing a pointer.
#[inline]
unsafe fn put<T>(out: *mut *mut T, v: *mut T) {
    // SAFETY: caller guarantee.
    unsafe { out.write(v) }
}

// ---------------------------------------------------------------------------------------------
// Alloc*
// ---------------------------------------------------------------------------------------------

/// `AllocConnections(&p, count)`: one zero-filled [`Connections`] whose `connections` points to a
/// separate, zero-filled block of `count` interface-pointer slots (recorded as its embedded
/// pointer); `count` is stored in `count`.
///
/// * `out` NULL → `E_INVALIDARG`;
/// * `count > 20` (`maxConnectionCountPerEnforcer`) → `E_INVALIDARG`, `*out = NULL`;
/// * `count == 0` → `S_OK`, `count = 0`, `connections = NULL`;
/// * memory short → `E_OUTOFMEMORY`, `*out = NULL`, nothing left allocated.
///
/// Free the result with [`free_connections`], which `Release`s every non-NULL slot.
///
/// # Safety
/// `out` is NULL or valid for writing a pointer.
#[inline]
pub unsafe fn alloc_connections(out: *mut *mut Connections, count: u16) -> HRESULT {
    // SAFETY: forwarded caller guarantee.
    unsafe { alloc_connections_in(&TaskHeap, out, count) }
}

/// [`alloc_connections`] over any [`TaskMem`].
///
/// # Safety
/// As [`alloc_connections`].
#[inline(always)]
pub(crate) unsafe fn alloc_connections_in<M: TaskMem + ?Sized>(
    m: &M,
    out: *mut *mut Connections,
    count: u16,
) -> HRESULT {
    // The common case first, in straight-line code that calls nothing: a new pending tail of
    // the structure and its slot array (two log entries and a bump), both zeroed by a few
    // stores. Everything else (no out pointer, a count of 0 or past the limit, a dead slot to
    // reuse, memory to commit, remote frees to drain) is the general path's.
    let n = usize::from(count);
    if !out.is_null() && n.wrapping_sub(1) < usize::from(MAX_CONNECTION_COUNT_PER_ENFORCER) {
        let bytes = n * size_of::<*mut INapEnforcementClientConnection>();
        if let Some((s, a)) = m.try_alloc_pair(size_of::<Connections>(), bytes) {
            let c = s.as_ptr().cast::<Connections>();
            // SAFETY: fresh blocks of size_of::<Connections>() and `bytes` (8..=160, a multiple
            // of 8) bytes, 16-aligned; `out` is valid for writes (caller).
            unsafe {
                zero_slot_array(a.as_ptr(), bytes);
                write_connections(c, count, a.as_ptr().cast());
                put(out, c);
            }
            return S_OK;
        }
    }
    // SAFETY: forwarded caller guarantee.
    unsafe { alloc_connections_general(m, out, count) }
}

/// [`alloc_connections_in`] past its fast path.
///
/// # Safety
/// As [`alloc_connections`].
#[cold]
#[inline(never)]
unsafe fn alloc_connections_general<M: TaskMem + ?Sized>(m: &M, out: *mut *mut Connections, count: u16) -> HRESULT {
    if out.is_null() {
        return E_INVALIDARG;
    }
    // SAFETY: `out` is valid for writes (caller).
    unsafe { put(out, ptr::null_mut()) };
    if count > MAX_CONNECTION_COUNT_PER_ENFORCER {
        return E_INVALIDARG;
    }
    let (s, slots) = if count == 0 {
        let Some(s) = alloc_zeroed(m, size_of::<Connections>()) else {
            return E_OUTOFMEMORY;
        };
        (s, ptr::null_mut())
    } else {
        let bytes = usize::from(count) * size_of::<*mut INapEnforcementClientConnection>();
        match m.alloc_with_child(size_of::<Connections>(), bytes) {
            None => return E_OUTOFMEMORY,
            Some((s, None)) => {
                // SAFETY: `s` was allocated above and is not used afterwards.
                unsafe { m.free_tree(s.as_ptr()) };
                return E_OUTOFMEMORY;
            }
            Some((s, Some(a))) => {
                // SAFETY: fresh blocks of these sizes (`bytes`: 8..=160, a multiple of 8); the
                // structure's fields are all written below, its padding is zeroed here.
                unsafe {
                    s.as_ptr().write_bytes(0, size_of::<Connections>());
                    zero_slot_array(a.as_ptr(), bytes);
                }
                (s, a.as_ptr().cast())
            }
        }
    };
    let c = s.as_ptr().cast::<Connections>();
    // SAFETY: `c` is a fresh, 16-aligned block of size_of::<Connections>() bytes; `out` is valid
    // for writes (caller).
    unsafe {
        (*c).count = count;
        (*c).connections = slots;
        put(out, c);
    }
    S_OK
}

/// Write a whole [`Connections`] (padding zeroed) at `c`: on 64-bit targets two 8-byte stores,
/// `count` with the padding after it, then the pointer.
///
/// # Safety
/// `c` is 8-aligned and valid for writing a `Connections`.
#[inline(always)]
unsafe fn write_connections(c: *mut Connections, count: u16, slots: *mut *mut INapEnforcementClientConnection) {
    #[cfg(target_pointer_width = "64")]
    {
        const _: () = assert!(
            core::mem::offset_of!(Connections, count) == 0
                && core::mem::offset_of!(Connections, connections) == 8
                && size_of::<Connections>() == 16
        );
        /// The structure with its padding as data: no padding of its own, and the pointer
        /// keeps its provenance.
        #[repr(C)]
        struct Words {
            head: u64,
            slots: *mut *mut INapEnforcementClientConnection,
        }
        let [lo, hi] = count.to_ne_bytes();
        let head = u64::from_ne_bytes([lo, hi, 0, 0, 0, 0, 0, 0]);
        // SAFETY: `c` is valid for 16 bytes of writes and 8-aligned (caller); `Words` is the
        // layout asserted above, `count` in the target's byte order.
        unsafe { c.cast::<Words>().write(Words { head, slots }) };
    }
    #[cfg(not(target_pointer_width = "64"))]
    // SAFETY: `c` is valid for writing a `Connections` (caller).
    unsafe {
        c.cast::<u8>().write_bytes(0, size_of::<Connections>());
        (*c).count = count;
        (*c).connections = slots;
    }
}

/// Zero the `bytes` bytes at `p`, a 16-aligned slot array of 1 to
/// [`MAX_CONNECTION_COUNT_PER_ENFORCER`] slots (`bytes`: 8..=160, a multiple of 8), with a few
/// straight-line 16-byte stores (which may overlap) instead of a call of `memset`: an 8-slot
/// array is four stores and three compares.
///
/// # Safety
/// `p` is 16-aligned and valid for writing `bytes` bytes.
#[inline(always)]
unsafe fn zero_slot_array(p: *mut u8, bytes: usize) {
    type Pair = [u64; 2];
    const Z: Pair = [0; 2];
    debug_assert!((8..=160).contains(&bytes) && bytes % 8 == 0 && p as usize % 16 == 0);
    // Every store below lies inside [p, p + bytes): each offset is at least 0 and at most
    // bytes - 16 under the size test that guards it (bytes > 128 covers 160 with stores from
    // both ends); the ones at `bytes - k` may be unaligned, hence `write_unaligned`.
    // SAFETY: so all of them write memory the caller lends for it.
    unsafe {
        if bytes <= 16 {
            if bytes == 8 {
                p.cast::<u64>().write(0);
            } else {
                p.cast::<Pair>().write(Z);
            }
            return;
        }
        p.cast::<Pair>().write(Z);
        p.add(bytes - 16).cast::<Pair>().write_unaligned(Z);
        if bytes > 32 {
            p.add(16).cast::<Pair>().write(Z);
            p.add(bytes - 32).cast::<Pair>().write_unaligned(Z);
            if bytes > 64 {
                p.add(32).cast::<Pair>().write(Z);
                p.add(48).cast::<Pair>().write(Z);
                p.add(bytes - 48).cast::<Pair>().write_unaligned(Z);
                p.add(bytes - 64).cast::<Pair>().write_unaligned(Z);
                if bytes > 128 {
                    p.add(64).cast::<Pair>().write(Z);
                    p.add(80).cast::<Pair>().write(Z);
                    p.add(bytes - 80).cast::<Pair>().write_unaligned(Z);
                    p.add(bytes - 96).cast::<Pair>().write_unaligned(Z);
                }
            }
        }
    }
}

/// Length of the NUL-terminated string at `s`, if it is at most `max` units; reads at most
/// `max + 1` units (never past the NUL, never past unit `max`).
///
/// # Safety
/// `s` is readable up to its NUL or up to unit `max`, whichever comes first.
unsafe fn bounded_len(s: *const WCHAR, max: usize) -> Option<usize> {
    (0..=max).find(|&i| {
        // SAFETY: i <= max and no NUL was found before i (`find` stops at the first), so unit i
        // is readable (caller).
        unsafe { s.add(i).read_unaligned() == 0 }
    })
}

/// `AllocCountedString(&p, s)`: a [`CountedString`] and, as a SEPARATE block recorded as its
/// embedded pointer, a copy of `s` with its NUL: `length` = units before the NUL, the buffer
/// holds `length + 1` WCHARs.
///
/// * `out` NULL → `E_INVALIDARG`;
/// * `s` NULL, or longer than 1024 units (`maxStringLength`) → `E_INVALIDARG`, `*out = NULL`.
///   The length is measured with a bounded scan: at most 1025 units are read;
/// * memory short → `E_OUTOFMEMORY`, `*out = NULL`, nothing left allocated.
///
/// # Safety
/// `out` is NULL or valid for writing a pointer; `s` is NULL or readable up to its NUL or its
/// 1025th unit, whichever comes first.
pub unsafe fn alloc_counted_string(out: *mut *mut CountedString, s: *const WCHAR) -> HRESULT {
    // SAFETY: forwarded caller guarantee.
    unsafe { alloc_counted_string_in(&TaskHeap, out, s) }
}

/// [`alloc_counted_string`] over any [`TaskMem`].
///
/// # Safety
/// As [`alloc_counted_string`].
pub(crate) unsafe fn alloc_counted_string_in<M: TaskMem + ?Sized>(
    m: &M,
    out: *mut *mut CountedString,
    s: *const WCHAR,
) -> HRESULT {
    if out.is_null() {
        return E_INVALIDARG;
    }
    // SAFETY: `out` is valid for writes (caller).
    unsafe { put(out, ptr::null_mut()) };
    if s.is_null() {
        return E_INVALIDARG;
    }
    // SAFETY: `s` is readable up to its NUL or unit 1024 (caller).
    let Some(len) = (unsafe { bounded_len(s, usize::from(MAX_STRING_LENGTH)) }) else {
        return E_INVALIDARG;
    };
    let Some(cs) = alloc_zeroed(m, size_of::<CountedString>()) else {
        return E_OUTOFMEMORY;
    };
    let bytes = (len + 1) * size_of::<WCHAR>();
    let Some(buf) = m.alloc_child(cs, bytes) else {
        // SAFETY: `cs` was allocated above and is not used afterwards.
        unsafe { m.free_tree(cs.as_ptr()) };
        return E_OUTOFMEMORY;
    };
    let buf = buf.as_ptr().cast::<WCHAR>();
    let c = cs.as_ptr().cast::<CountedString>();
    // `s` has `len` readable units before its NUL (measured above); `buf` is a fresh, 16-aligned
    // block of `len + 1` units that cannot overlap `s` (the caller's string is not a block that
    // was free a moment ago); `c` is a fresh block of size_of::<CountedString>().
    // SAFETY: with those, every read and write below is in bounds; `out` is valid for writes.
    unsafe {
        ptr::copy_nonoverlapping(s.cast::<u8>(), buf.cast::<u8>(), len * size_of::<WCHAR>());
        buf.add(len).write(0);
        (*c).length = len as u16;
        (*c).string = buf;
        put(out, c);
    }
    S_OK
}

/// `AllocFixupInfo(&p, n)`: one zero-filled [`FixupInfo`] and, as a SEPARATE zero-filled block
/// recorded as its embedded pointer, `n` HRESULTs in `result_codes.results`;
/// `result_codes.count = n`.
///
/// * `out` NULL → `E_INVALIDARG`;
/// * `n > 1000` (`maxDwordCountPerSoHAttribute`) → `E_INVALIDARG`, `*out = NULL`;
/// * `n == 0` → `results = NULL`;
/// * memory short → `E_OUTOFMEMORY`, `*out = NULL`, nothing left allocated.
///
/// # Safety
/// `out` is NULL or valid for writing a pointer.
pub unsafe fn alloc_fixup_info(out: *mut *mut FixupInfo, count: u16) -> HRESULT {
    // SAFETY: forwarded caller guarantee.
    unsafe { alloc_fixup_info_in(&TaskHeap, out, count) }
}

/// [`alloc_fixup_info`] over any [`TaskMem`].
///
/// # Safety
/// As [`alloc_fixup_info`].
pub(crate) unsafe fn alloc_fixup_info_in<M: TaskMem + ?Sized>(m: &M, out: *mut *mut FixupInfo, count: u16) -> HRESULT {
    if out.is_null() {
        return E_INVALIDARG;
    }
    // SAFETY: `out` is valid for writes (caller).
    unsafe { put(out, ptr::null_mut()) };
    if count > MAX_DWORD_COUNT_PER_SOH_ATTRIBUTE {
        return E_INVALIDARG;
    }
    let Some(f) = alloc_zeroed(m, size_of::<FixupInfo>()) else {
        return E_OUTOFMEMORY;
    };
    let results = if count == 0 {
        ptr::null_mut()
    } else {
        match alloc_child_zeroed(m, f, usize::from(count) * size_of::<HRESULT>()) {
            Some(r) => r.as_ptr().cast::<HRESULT>(),
            None => {
                // SAFETY: `f` was allocated above and is not used afterwards.
                unsafe { m.free_tree(f.as_ptr()) };
                return E_OUTOFMEMORY;
            }
        }
    };
    let fi = f.as_ptr().cast::<FixupInfo>();
    // SAFETY: `fi` is a fresh, zero-filled block of size_of::<FixupInfo>() bytes (zero is a valid
    // value of every field); `out` is valid for writes.
    unsafe {
        (*fi).result_codes.count = count;
        (*fi).result_codes.results = results;
        put(out, fi);
    }
    S_OK
}

// ---------------------------------------------------------------------------------------------
// Free*
// ---------------------------------------------------------------------------------------------

/// `FreeConnections(c)`: **calls `Release` once on every non-NULL `connections[i]`, `i < count`**
/// (the holder of a `Connections` owns those references), then frees the slot array and the
/// structure. See the module documentation for the steps and for what is checked.
///
/// `count` is clamped to the slots the array's block holds (and that is reported); an array that
/// is not a live block start is not read (no `Release` calls) and is reported.
///
/// # Safety
/// `c` is NULL or any pointer (a pointer the task heap did not hand out is not read). If it is a
/// live block, its non-NULL slots within `count` are live COM objects whose references the
/// caller gives up, and nothing uses the structure, the array or those references afterwards.
#[inline]
pub unsafe fn free_connections(c: *mut Connections) {
    // SAFETY: forwarded caller guarantee.
    unsafe { free_connections_in(&TaskHeap, c) }
}

/// [`free_connections`] over any [`TaskMem`].
///
/// # Safety
/// As [`free_connections`].
#[inline(always)]
pub(crate) unsafe fn free_connections_in<M: TaskMem + ?Sized>(m: &M, c: *mut Connections) {
    // The common case first: the structure and its array are the two newest blocks of the
    // thread's heap (built by AllocConnections, filled, freed), validated by a few compares
    // without a lookup, and freed by one rewind. A count beyond the array, and anything else,
    // is the general path's.
    if c.is_null() {
        return;
    }
    if let Some((size, q, q_size, end)) = m.tail_pair(c.cast()) {
        if size >= size_of::<Connections>() {
            // SAFETY: `c` is a live, 16-aligned block of at least size_of::<Connections>() bytes.
            let (count, slots) = unsafe { ((*c).count, (*c).connections) };
            let n = usize::from(count);
            if !q.is_null() && slots.cast::<u8>() == q && n * size_of::<*mut ComObject>() <= q_size {
                // SAFETY: `slots` is the live block `q` of at least `n` slots; each non-NULL
                // slot is a live COM object whose reference the caller gives up.
                unsafe { release_slots(slots, n) };
                // A `Release` may have used the heap: the pair goes by one rewind only if it is
                // still the pending tail, root and end unchanged; otherwise as any structure
                // (each pointer checked again).
                // SAFETY: the caller gives up the array and the structure.
                unsafe {
                    if !m.try_free_tail_to(c.cast(), end) {
                        m.free_then_tree(q, c.cast());
                    }
                }
                return;
            }
        }
    }
    // SAFETY: forwarded caller guarantee.
    unsafe { free_connections_general(m, c) }
}

/// [`free_connections_in`] past its fast path: any structure, checked block by block.
///
/// # Safety
/// As [`free_connections`].
#[cold]
#[inline(never)]
unsafe fn free_connections_general<M: TaskMem + ?Sized>(m: &M, c: *mut Connections) {
    // The structure and its slot array validated together (one lookup each).
    let (size, slots, slots_size) = m.size_of_pair(c.cast(), size_of::<Connections>(), || {
        // SAFETY: called only once `c` is known to be a live, 16-aligned block of at least
        // size_of::<Connections>() bytes.
        unsafe { (*c).connections }.cast_const().cast()
    });
    if size.is_none_or(|s| s < size_of::<Connections>()) {
        if !c.is_null() {
            m.report_bad_pointer("FreeConnections", c.cast());
        }
        return;
    }
    let slots = slots.cast_mut().cast::<*mut INapEnforcementClientConnection>();
    // SAFETY: `c` is a live block large enough for the structure (above).
    let count = unsafe { (*c).count };
    let n = if slots.cast::<Connections>() == c {
        // A structure that is its own slot array holds no interface pointers to release.
        m.report_bad_pointer("FreeConnections: the slot array is the structure", slots.cast());
        0
    } else {
        clamp_count(m, "FreeConnections: count beyond the slot array", slots, usize::from(count), slots_size)
    };
    // SAFETY: the slot array is a live block of at least n slots, whose non-NULL slots are live
    // COM objects whose references the caller gives up.
    unsafe { release_slots(slots, n) };
    // SAFETY: the caller gives up the array and the structure (a slot array that is the
    // structure itself is freed once, as the structure).
    unsafe {
        let a = if slots.cast::<Connections>() == c { ptr::null_mut() } else { slots.cast() };
        m.free_then_tree(a, c.cast());
    }
}

/// `Release` every non-NULL slot of `slots[..n]`.
///
/// # Safety
/// `slots` is valid for reads of `n` pointers, and each non-NULL one is a live COM object whose
/// reference the caller gives up.
#[inline(always)]
unsafe fn release_slots(slots: *mut *mut INapEnforcementClientConnection, n: usize) {
    if n == 0 {
        return;
    }
    // A pointer walk, tested at the bottom; the skips (a NULL slot, a NULL vtable or `Release`
    // entry) are marked cold, so that the call falls through to the next slot: one object is
    // three loads, three tests, the call and two instructions of loop.
    let mut p = slots;
    // SAFETY: the array holds `n` slots (caller): its end is in bounds.
    let end = unsafe { slots.add(n) };
    loop {
        // SAFETY: p < end: a slot of the array.
        let obj: *mut ComObject = unsafe { p.read() };
        if obj.is_null() {
            skipped();
        } else {
            // SAFETY: a non-NULL slot is a live COM object (caller), whose vtable pointer is
            // NULL or points to a readable vtable.
            match unsafe { (*obj).vtbl.as_ref() }.and_then(|v| v.release) {
                // SAFETY: the object's own Release, called with the object; the caller gives up
                // the reference it owns.
                Some(release) => unsafe {
                    release(obj);
                },
                None => skipped(),
            }
        }
        // SAFETY: p < end, so p + 1 <= end.
        p = unsafe { p.add(1) };
        if p == end {
            break;
        }
    }
}

/// A slot that [`release_slots`] skips: out of the loop's straight line.
#[cold]
#[inline(never)]
fn skipped() {}

/// `FreeCountedString(cs)`: frees `string`, then the structure.
///
/// # Safety
/// `cs` is NULL or any pointer (a pointer the task heap did not hand out is not read); if it is
/// a live block, nothing uses it or its `string` afterwards.
pub unsafe fn free_counted_string(cs: *mut CountedString) {
    // SAFETY: forwarded caller guarantee.
    unsafe { free_counted_string_in(&TaskHeap, cs) }
}

/// [`free_counted_string`] over any [`TaskMem`].
///
/// # Safety
/// As [`free_counted_string`].
pub(crate) unsafe fn free_counted_string_in<M: TaskMem + ?Sized>(m: &M, cs: *mut CountedString) {
    if checked_block(m, "FreeCountedString", cs).is_none() {
        return;
    }
    // SAFETY: a live block large enough for the structure; any bit pattern is valid.
    let string = unsafe { (*cs).string };
    // SAFETY: the caller gives up the string and the structure.
    unsafe {
        free_field(m, string, cs.cast());
        m.free_tree(cs.cast());
    }
}

/// `FreeFixupInfo(f)`: frees `result_codes.results`, then the structure.
///
/// # Safety
/// As [`free_counted_string`], for a [`FixupInfo`].
pub unsafe fn free_fixup_info(f: *mut FixupInfo) {
    // SAFETY: forwarded caller guarantee.
    unsafe { free_fixup_info_in(&TaskHeap, f) }
}

/// [`free_fixup_info`] over any [`TaskMem`].
///
/// # Safety
/// As [`free_fixup_info`].
pub(crate) unsafe fn free_fixup_info_in<M: TaskMem + ?Sized>(m: &M, f: *mut FixupInfo) {
    if checked_block(m, "FreeFixupInfo", f).is_none() {
        return;
    }
    // SAFETY: a live block large enough for the structure; any bit pattern is valid.
    let results = unsafe { (*f).result_codes.results };
    // SAFETY: the caller gives up the array and the structure.
    unsafe {
        free_field(m, results, f.cast());
        m.free_tree(f.cast());
    }
}

/// `FreeIsolationInfo(i)`: frees `failure_url.string`, then the structure.
///
/// # Safety
/// As [`free_counted_string`], for an [`IsolationInfo`].
pub unsafe fn free_isolation_info(info: *mut IsolationInfo) {
    // SAFETY: forwarded caller guarantee.
    unsafe { free_isolation_info_in(&TaskHeap, info) }
}

/// [`free_isolation_info`] over any [`TaskMem`].
///
/// # Safety
/// As [`free_isolation_info`].
pub(crate) unsafe fn free_isolation_info_in<M: TaskMem + ?Sized>(m: &M, info: *mut IsolationInfo) {
    if checked_block(m, "FreeIsolationInfo", info).is_none() {
        return;
    }
    // SAFETY: a live block large enough for the structure; any bit pattern is valid.
    let url = unsafe { (*info).failure_url.string };
    // SAFETY: the caller gives up the string and the structure.
    unsafe {
        free_field(m, url, info.cast());
        m.free_tree(info.cast());
    }
}

/// `FreeIsolationInfoEx(i)`: frees `failure_url.string`, then the structure.
///
/// # Safety
/// As [`free_counted_string`], for an [`IsolationInfoEx`].
pub unsafe fn free_isolation_info_ex(info: *mut IsolationInfoEx) {
    // SAFETY: forwarded caller guarantee.
    unsafe { free_isolation_info_ex_in(&TaskHeap, info) }
}

/// [`free_isolation_info_ex`] over any [`TaskMem`].
///
/// # Safety
/// As [`free_isolation_info_ex`].
pub(crate) unsafe fn free_isolation_info_ex_in<M: TaskMem + ?Sized>(m: &M, info: *mut IsolationInfoEx) {
    if checked_block(m, "FreeIsolationInfoEx", info).is_none() {
        return;
    }
    // SAFETY: a live block large enough for the structure; any bit pattern is valid.
    let url = unsafe { (*info).failure_url.string };
    // SAFETY: the caller gives up the string and the structure.
    unsafe {
        free_field(m, url, info.cast());
        m.free_tree(info.cast());
    }
}

/// `FreeSoH(soh)`: frees `attributes[i].value` for every `i < count`, then the attribute array,
/// then the structure. `count` is clamped to the attributes the array's block holds (reported);
/// an array that is not a live block start is not read (reported by its free).
///
/// # Safety
/// As [`free_counted_string`], for a [`SoH`], its attribute array and their values.
pub unsafe fn free_soh(soh: *mut SoH) {
    // SAFETY: forwarded caller guarantee.
    unsafe { free_soh_in(&TaskHeap, soh) }
}

/// [`free_soh`] over any [`TaskMem`].
///
/// # Safety
/// As [`free_soh`].
pub(crate) unsafe fn free_soh_in<M: TaskMem + ?Sized>(m: &M, soh: *mut SoH) {
    if checked_block(m, "FreeSoH", soh).is_none() {
        return;
    }
    // SAFETY: a live block large enough for the structure; any bit pattern is valid.
    let SoH { count, attributes } = unsafe { soh.read() };
    let n = readable_count(m, "FreeSoH: count beyond the attribute array", attributes, usize::from(count));
    for i in 0..n {
        // SAFETY: i < n, and the attribute array is a live block of at least n attributes. It is
        // still live: a value equal to it (or to the structure) is skipped below.
        let value = unsafe { (*attributes.add(i)).value };
        if value.cast::<SoHAttribute>() != attributes {
            // SAFETY: the caller gives up the values.
            unsafe { free_field(m, value, soh.cast()) };
        }
    }
    // SAFETY: the caller gives up the array and the structure.
    unsafe {
        free_field(m, attributes, soh.cast());
        m.free_tree(soh.cast());
    }
}

/// `FreeNetworkSoH(n)`: frees `data`, then the structure.
///
/// # Safety
/// As [`free_counted_string`], for a [`NetworkSoH`].
pub unsafe fn free_network_soh(n: *mut NetworkSoH) {
    // SAFETY: forwarded caller guarantee.
    unsafe { free_network_soh_in(&TaskHeap, n) }
}

/// [`free_network_soh`] over any [`TaskMem`].
///
/// # Safety
/// As [`free_network_soh`].
pub(crate) unsafe fn free_network_soh_in<M: TaskMem + ?Sized>(m: &M, n: *mut NetworkSoH) {
    if checked_block(m, "FreeNetworkSoH", n).is_none() {
        return;
    }
    // SAFETY: a live block large enough for the structure; any bit pattern is valid.
    let data = unsafe { (*n).data };
    // SAFETY: the caller gives up the data and the structure.
    unsafe {
        free_field(m, data, n.cast());
        m.free_tree(n.cast());
    }
}

/// `FreePrivateData(d)`: frees `data`, then the structure.
///
/// # Safety
/// As [`free_counted_string`], for a [`PrivateData`].
pub unsafe fn free_private_data(d: *mut PrivateData) {
    // SAFETY: forwarded caller guarantee.
    unsafe { free_private_data_in(&TaskHeap, d) }
}

/// [`free_private_data`] over any [`TaskMem`].
///
/// # Safety
/// As [`free_private_data`].
pub(crate) unsafe fn free_private_data_in<M: TaskMem + ?Sized>(m: &M, d: *mut PrivateData) {
    if checked_block(m, "FreePrivateData", d).is_none() {
        return;
    }
    // SAFETY: a live block large enough for the structure; any bit pattern is valid.
    let data = unsafe { (*d).data };
    // SAFETY: the caller gives up the data and the structure.
    unsafe {
        free_field(m, data, d.cast());
        m.free_tree(d.cast());
    }
}

/// `FreeSoHAttributeValue(type, value)`: `type` selects the member of the union
/// ([`SoHAttributeType::value_member`], SPEC §3); if that member holds a pointer
/// (3, 15 `addresses`; 4, 13 `codesVal.results`; 7 `vendorSpecificData`; every type not listed
/// `octetStringVal.data`) it is freed; then the `value` block itself. For a type without a
/// pointer (2, 5, 8, 12, 14, 16) no pointer is read at all, and the block may be smaller than
/// the 16-byte union (only its own start is checked).
///
/// # Safety
/// As [`free_counted_string`], for a [`SoHAttributeValue`] whose member `ty` selects was
/// initialised.
pub unsafe fn free_soh_attribute_value(ty: SoHAttributeType, value: *mut SoHAttributeValue) {
    // SAFETY: forwarded caller guarantee.
    unsafe { free_soh_attribute_value_in(&TaskHeap, ty, value) }
}

/// [`free_soh_attribute_value`] over any [`TaskMem`].
///
/// # Safety
/// As [`free_soh_attribute_value`].
pub(crate) unsafe fn free_soh_attribute_value_in<M: TaskMem + ?Sized>(
    m: &M,
    ty: SoHAttributeType,
    value: *mut SoHAttributeValue,
) {
    const WHAT: &str = "FreeSoHAttributeValue";
    if !ty.value_member().has_pointer() {
        // Nothing is read: the block only has to be a live block start.
        if checked_min(m, WHAT, value.cast(), 0).is_some() {
            // SAFETY: the caller gives up the block.
            unsafe { m.free_tree(value.cast()) };
        }
        return;
    }
    if checked_block(m, WHAT, value).is_none() {
        return;
    }
    // SAFETY: a live, 16-aligned block of at least 16 bytes whose selected member was initialised
    // (caller); `embedded_pointer` reads only that member's pointer.
    let inner = unsafe { (*value).embedded_pointer(ty) };
    // SAFETY: the caller gives up the member's array and the block.
    unsafe {
        if let Some(p) = inner {
            free_field(m, p, value.cast());
        }
        m.free_tree(value.cast());
    }
}

/// `FreeNapComponentRegistrationInfoArray(count, info)`: `*info` is ONE block of `count`
/// entries; frees the four strings (`friendly_name`, `description`, `version`, `vendor_name`) of
/// each entry, then the block, and sets `*info = NULL`. `info` NULL or `*info` NULL: no effect.
/// `count` is clamped to the entries the block holds (reported). A `*info` that is not a live
/// block start is not read, nothing is freed, it is reported, and `*info` is left as it was.
///
/// # Safety
/// `info` is NULL or valid for reading and writing a pointer; `*info` as `cs` in
/// [`free_counted_string`].
pub unsafe fn free_nap_component_registration_info_array(count: u16, info: *mut *mut NapComponentRegistrationInfo) {
    // SAFETY: forwarded caller guarantee.
    unsafe { free_nap_component_registration_info_array_in(&TaskHeap, count, info) }
}

/// [`free_nap_component_registration_info_array`] over any [`TaskMem`].
///
/// # Safety
/// As [`free_nap_component_registration_info_array`].
pub(crate) unsafe fn free_nap_component_registration_info_array_in<M: TaskMem + ?Sized>(
    m: &M,
    count: u16,
    info: *mut *mut NapComponentRegistrationInfo,
) {
    const WHAT: &str = "FreeNapComponentRegistrationInfoArray";
    if info.is_null() {
        return;
    }
    // SAFETY: `info` is readable (caller).
    let block = unsafe { info.read() };
    if block.is_null() {
        return;
    }
    // An empty array may be a block smaller than one entry: check only its start then.
    let size = if count == 0 { checked_min(m, WHAT, block.cast(), 0) } else { checked_block(m, WHAT, block) };
    let Some(size) = size else {
        return;
    };
    let cap = size / size_of::<NapComponentRegistrationInfo>();
    let n = if usize::from(count) > cap {
        m.report_bad_pointer("FreeNapComponentRegistrationInfoArray: count beyond the block", block.cast());
        cap
    } else {
        usize::from(count)
    };
    let top = block as *const u8;
    for i in 0..n {
        // SAFETY: i < n entries lie inside the live block, which stays live: a string equal to
        // the block is skipped by `free_field`.
        let e = unsafe { block.add(i).read() };
        // SAFETY: the caller gives up the strings.
        unsafe {
            free_field(m, e.friendly_name.string, top);
            free_field(m, e.description.string, top);
            free_field(m, e.version.string, top);
            free_field(m, e.vendor_name.string, top);
        }
    }
    // SAFETY: the caller gives up the block; `info` is writable (caller).
    unsafe {
        m.free_tree(block.cast());
        info.write(ptr::null_mut());
    }
}

/// `FreeSystemHealthAgentState(s)`: frees `sha_result_codes.results` and
/// `fixup_info.result_codes.results`, then the structure.
///
/// # Safety
/// As [`free_counted_string`], for a [`SystemHealthAgentState`].
pub unsafe fn free_system_health_agent_state(s: *mut SystemHealthAgentState) {
    // SAFETY: forwarded caller guarantee.
    unsafe { free_system_health_agent_state_in(&TaskHeap, s) }
}

/// [`free_system_health_agent_state`] over any [`TaskMem`].
///
/// # Safety
/// As [`free_system_health_agent_state`].
pub(crate) unsafe fn free_system_health_agent_state_in<M: TaskMem + ?Sized>(m: &M, s: *mut SystemHealthAgentState) {
    if checked_block(m, "FreeSystemHealthAgentState", s).is_none() {
        return;
    }
    // SAFETY: a live block large enough for the structure; any bit pattern is valid.
    let (a, b) = unsafe { ((*s).sha_result_codes.results, (*s).fixup_info.result_codes.results) };
    // SAFETY: the caller gives up both arrays and the structure. If both fields hold the same
    // pointer, the second free is refused and reported by the heap.
    unsafe {
        free_field(m, a, s.cast());
        free_field(m, b, s.cast());
        m.free_tree(s.cast());
    }
}
