//! The process-wide task heap behind `CoTaskMemAlloc` and the NapUtil functions.
//!
//! Semantics (SPEC §5), shared by the C ABI and Rust callers:
//! * every block is 16-aligned; `alloc(0)` returns a unique non-null block;
//! * `free(NULL)` does nothing; a foreign, interior or already freed pointer changes nothing and
//!   is reported (a `log` warning and [`HeapStats::bad_pointers`]);
//! * `free` releases one block: blocks recorded as its embedded pointers become independent
//!   (the SDK samples free a struct and later its string); [`free_tree`] releases a block with
//!   all its embedded pointers (what the NapUtil `Free*` functions do);
//! * any thread may free or realloc a block another thread allocated.
//!
//! This first implementation serializes on one lock around one [`Region`].

use crate::host::CriticalLevel;
use crate::region::Region;
use crate::Error;
use core::alloc::Layout;
use core::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Alignment of every task-heap block (MEMORY_ALLOCATION_ALIGNMENT on 64-bit Windows).
pub const ALIGN: usize = 16;

/// Counters of the task heap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeapStats {
    pub live_blocks: u64,
    pub live_bytes: u64,
    pub committed_bytes: u64,
    pub reserved_bytes: u64,
    /// Pointers handed to free/realloc/size queries that were not live block starts.
    pub bad_pointers: u64,
    /// Allocation requests that returned NULL.
    pub failed_allocations: u64,
    /// Times idle memory was given back to the OS.
    pub trims: u64,
}

struct Global {
    region: Mutex<Option<Region>>,
    /// Incremented by any thread whose pointer argument was refused.
    bad_pointers: AtomicU64,
    /// Incremented by any thread whose allocation failed.
    failed: AtomicU64,
    /// Incremented by `heap_minimize`.
    trims: AtomicU64,
}

static GLOBAL: Global = Global {
    region: Mutex::new(None),
    bad_pointers: AtomicU64::new(0),
    failed: AtomicU64::new(0),
    trims: AtomicU64::new(0),
};

fn with_region<R>(f: impl FnOnce(&mut Region) -> R) -> Result<R, Error> {
    let mut g = GLOBAL.region.lock().unwrap_or_else(|e| e.into_inner());
    if g.is_none() {
        *g = Some(Region::new()?);
    }
    Ok(f(g.as_mut().expect("initialized above")))
}

fn layout(size: usize) -> Option<Layout> {
    Layout::from_size_align(size, ALIGN).ok()
}

fn failed<T>() -> Option<T> {
    GLOBAL.failed.fetch_add(1, Ordering::Relaxed);
    None
}

fn bad(what: &str, p: *const u8, e: Error) {
    GLOBAL.bad_pointers.fetch_add(1, Ordering::Relaxed);
    log::warn!("napalloc: {what}({p:p}) refused: {e}");
}

/// Report a pointer that a caller of the heap refused to use (the NapUtil `Free*` functions:
/// a top-level pointer that is not a live block, a block too small for its structure, an
/// embedded array shorter than its count): a `log` warning and [`HeapStats::bad_pointers`].
pub fn report_bad_pointer(what: &str, p: *const u8) {
    GLOBAL.bad_pointers.fetch_add(1, Ordering::Relaxed);
    log::warn!("napalloc: {what}({p:p}) refused");
}

/// `CoTaskMemAlloc`: a 16-aligned block of `size` bytes, or `None`.
pub fn alloc(size: usize) -> Option<NonNull<u8>> {
    alloc_critical(size, CriticalLevel::Task)
}

/// Allocate with an explicit critical level.
pub fn alloc_critical(size: usize, _level: CriticalLevel) -> Option<NonNull<u8>> {
    let Some(l) = layout(size) else {
        return failed();
    };
    match with_region(|r| r.alloc(l)).and_then(|r| r) {
        Ok(p) => Some(p),
        Err(_) => failed(),
    }
}

/// Allocate a block recorded as an embedded pointer of `parent`: [`free_tree`] of the parent
/// frees it too. `None` if `parent` is not a live block or memory is short.
pub fn alloc_child(parent: NonNull<u8>, size: usize) -> Option<NonNull<u8>> {
    let Some(l) = layout(size) else {
        return failed();
    };
    match with_region(|r| r.alloc_child(parent, l)).and_then(|r| r) {
        Ok(p) => Some(p),
        Err(Error::NotABlock | Error::ForeignPointer) => {
            bad("alloc_child", parent.as_ptr(), Error::NotABlock);
            None
        }
        Err(_) => failed(),
    }
}

/// `CoTaskMemFree`: free one block; NULL is a no-op; a bad pointer is reported and ignored.
/// Returns whether a block was freed.
///
/// # Safety
/// If `p` is a live block, nothing uses it afterwards.
pub unsafe fn free(p: *mut u8) -> bool {
    let Some(nn) = NonNull::new(p) else {
        return false;
    };
    // SAFETY: forwarded caller guarantee.
    match with_region(|r| unsafe { r.free_one(nn) }).and_then(|r| r) {
        Ok(()) => true,
        Err(e) => {
            bad("CoTaskMemFree", p, e);
            false
        }
    }
}

/// Free `p` and every block recorded as its embedded pointer, recursively.
///
/// # Safety
/// If `p` is a live block, nothing uses it or its embedded blocks afterwards.
pub unsafe fn free_tree(p: *mut u8) -> bool {
    let Some(nn) = NonNull::new(p) else {
        return false;
    };
    // SAFETY: forwarded caller guarantee.
    match with_region(|r| unsafe { r.free(nn) }).and_then(|r| r) {
        Ok(()) => true,
        Err(e) => {
            bad("free", p, e);
            false
        }
    }
}

/// `CoTaskMemRealloc`: NULL `p` allocates; size 0 frees and returns NULL; a failed grow returns
/// NULL and leaves `p` valid; a bad pointer returns NULL and is reported.
///
/// # Safety
/// If the block moves, nothing uses the old pointer afterwards.
pub unsafe fn realloc(p: *mut u8, size: usize) -> *mut u8 {
    let Some(nn) = NonNull::new(p) else {
        return alloc(size).map_or(core::ptr::null_mut(), NonNull::as_ptr);
    };
    if size == 0 {
        // SAFETY: forwarded caller guarantee.
        unsafe { free(p) };
        return core::ptr::null_mut();
    }
    // SAFETY: forwarded caller guarantee.
    match with_region(|r| unsafe { r.realloc(nn, size) }).and_then(|r| r) {
        Ok(q) => q.as_ptr(),
        Err(e @ (Error::NotABlock | Error::ForeignPointer)) => {
            bad("CoTaskMemRealloc", p, e);
            core::ptr::null_mut()
        }
        Err(_) => failed().unwrap_or(core::ptr::null_mut()),
    }
}

/// The requested size of a live block (`IMalloc::GetSize`), `None` for anything else.
pub fn size_of(p: *const u8) -> Option<usize> {
    let nn = NonNull::new(p as *mut u8)?;
    with_region(|r| r.size_of(nn)).ok().flatten()
}

/// `IMalloc::DidAlloc`: 1 for a live block start, 0 for anything else, -1 for NULL.
pub fn did_alloc(p: *const u8) -> i32 {
    match NonNull::new(p as *mut u8) {
        None => -1,
        Some(nn) => with_region(|r| r.owns(nn)).unwrap_or(false) as i32,
    }
}

/// `IMalloc::HeapMinimize`: give unused committed memory back to the OS.
pub fn heap_minimize() {
    GLOBAL.trims.fetch_add(1, Ordering::Relaxed);
    let _ = with_region(|r| r.trim(0));
}

/// Counters of the task heap.
pub fn stats() -> HeapStats {
    let s = with_region(|r| r.stats()).unwrap_or_default();
    HeapStats {
        live_blocks: s.live_blocks as u64,
        live_bytes: s.live_bytes as u64,
        committed_bytes: s.committed as u64,
        reserved_bytes: s.reserved as u64,
        bad_pointers: GLOBAL.bad_pointers.load(Ordering::Relaxed),
        failed_allocations: GLOBAL.failed.load(Ordering::Relaxed),
        trims: GLOBAL.trims.load(Ordering::Relaxed),
    }
}
