//! The C exports of the COM task allocator and of napalloc's own entry points (`Napalloc*`), with the names and
//! signatures of `include/napalloc.h`.
//!
//! A thin layer: argument checks, HRESULTs, and no panic across the C ABI. Each export forwards to
//! [`crate::heap`] or [`crate::com`]; what may panic runs under `catch_unwind` and becomes NULL or
//! `E_FAIL`. The one exception is the fast path of `CoTaskMemAlloc` and `CoTaskMemFree`
//! (`heap::alloc_small_fast` / `heap::free_small_fast` inline, `heap::alloc_fast` /
//! `heap::free_fast` in the functions they hand misses to),
//! which is kept out of `catch_unwind` because that would cost an indirect call on every block:
//! it calls nothing out of the region, allocates nothing and does no checked arithmetic that can
//! fail in a release build (its counters cannot overflow by the side table's invariants), so it
//! does not panic; and should a broken invariant make it panic, the `extern "system"` function
//! aborts rather than unwind into C.
//!
//! The thread's current heap is read with the initial-exec TLS model on x86-64 Linux
//! (`heap::cur`), so the inline part makes no `__tls_get_addr` call in the shared library either.
//!
//! The inline part of those two exports calls nothing: every miss is handed to an `#[inline(never)]`
//! function that is itself `extern "system"` (so it cannot unwind and needs no landing pad in
//! the caller), which makes the call a tail call and the exports free of stack frames.
//!
//! The functions are `extern "system"`: the plain C convention on x86-64 (Windows and elsewhere)
//! and `__stdcall` on 32-bit Windows, which is what the header's `NAPALLOC_CALL` means.

#![allow(non_snake_case)]

use crate::com;
use crate::heap;
use crate::hr::{E_FAIL, E_INVALIDARG, E_OUTOFMEMORY, E_POINTER, HRESULT, S_OK};
use crate::nap::types::{
    EMemoryCriticalLevel, IHostMemoryManager, IMalloc, NapallocScope, NapallocStats, DWORD, SIZE_T,
};
use crate::Error;
use core::ffi::c_void;
use core::ptr::{self, NonNull};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Run `f`; a panic becomes `E_FAIL` instead of unwinding into C.
#[inline]
fn guard_hr(f: impl FnOnce() -> HRESULT) -> HRESULT {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(E_FAIL)
}

/// Run `f`; a panic becomes NULL instead of unwinding into C.
#[inline]
fn guard_ptr(f: impl FnOnce() -> *mut c_void) -> *mut c_void {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(ptr::null_mut())
}

fn as_void(p: Option<NonNull<u8>>) -> *mut c_void {
    p.map_or(ptr::null_mut(), |p| p.as_ptr().cast())
}

/// `void *CoTaskMemAlloc(SIZE_T cb)`: a 16-aligned block of `cb` bytes; `cb == 0` gives a unique
/// non-NULL block; NULL on failure (sizes near `SIZE_MAX` fail).
#[no_mangle]
pub extern "system" fn CoTaskMemAlloc(cb: SIZE_T) -> *mut c_void {
    // Inline: only the small arena's fast path (a free block of the class, or fresh granules
    // already committed), which calls nothing; larger blocks go to the region, past this call.
    if let Some(p) = heap::alloc_small_fast(cb) {
        return p.as_ptr().cast();
    }
    co_task_mem_alloc_slow(cb)
}

/// `CoTaskMemAlloc` past its fast path: a function of its own, so that the export's fast path
/// needs no stack frame (the landing pad and the saved registers of the slow path stay here).
///
/// `extern "system"` although it is not exported: such a function cannot unwind (a panic that
/// escaped `catch_unwind` would abort), so calling it needs no landing pad in the caller and
/// the export's fast path ends in a tail call (`jmp`) instead of a call inside a stack frame.
#[cold]
#[inline(never)]
extern "system" fn co_task_mem_alloc_slow(cb: SIZE_T) -> *mut c_void {
    // The rest of the lock-free path first (bumping a new block), outside `catch_unwind` as the
    // inline part: it calls out of nothing and can panic only on a broken table invariant (and
    // a panic cannot leave this function: it aborts).
    if let Some(p) = heap::alloc_fast(cb) {
        return p.as_ptr().cast();
    }
    guard_ptr(|| as_void(heap::alloc_slow(cb, crate::CriticalLevel::Task)))
}

/// `void *CoTaskMemRealloc(void *pv, SIZE_T cb)`: NULL `pv` allocates; `cb == 0` frees `pv` and
/// returns NULL; a failed grow returns NULL and leaves `pv` valid; contents are kept up to the
/// smaller size.
///
/// # Safety
/// `pv` is NULL or was returned by this allocator; if the block moves, the caller no longer uses
/// `pv`. (A foreign, interior or freed `pv` is refused and reported, not touched.)
#[no_mangle]
pub unsafe extern "system" fn CoTaskMemRealloc(pv: *mut c_void, cb: SIZE_T) -> *mut c_void {
    guard_ptr(|| {
        // SAFETY: forwarded caller guarantee.
        unsafe { heap::realloc(pv.cast(), cb).cast() }
    })
}

/// `void CoTaskMemFree(void *pv)`: NULL does nothing; a foreign, interior or already freed
/// pointer changes nothing and is reported (`NapallocStats::bad_pointer_reports`).
///
/// # Safety
/// If `pv` is a live block, the caller no longer uses it.
#[no_mangle]
pub unsafe extern "system" fn CoTaskMemFree(pv: *mut c_void) {
    // Inline: only the small arena's fast path, which calls nothing and needs few registers (so
    // no stack frame); a block of the region is freed past this call.
    // SAFETY: forwarded caller guarantee.
    if unsafe { heap::free_small_fast(pv.cast()) } {
        return;
    }
    // SAFETY: forwarded caller guarantee.
    unsafe { co_task_mem_free_rest(pv) }
}

/// `CoTaskMemFree` past the small arena's fast path: the region's fast path, then the slow path
/// (a function of its own, and `extern "system"` so that it is tail-called, as
/// `co_task_mem_alloc_slow`).
///
/// # Safety
/// As `CoTaskMemFree`.
#[inline(never)]
unsafe extern "system" fn co_task_mem_free_rest(pv: *mut c_void) {
    // SAFETY: forwarded caller guarantee.
    if unsafe { heap::free_fast(pv.cast()) } {
        return;
    }
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: forwarded caller guarantee.
        unsafe { heap::free_slow(pv.cast(), false) };
    }));
}

/// `HRESULT CoGetMalloc(DWORD dwMemContext, IMalloc **ppMalloc)`: context 1 → `S_OK` and the
/// process-wide `IMalloc`, AddRef'd; any other context → `E_INVALIDARG` and `*ppMalloc = NULL`;
/// NULL `ppMalloc` → `E_INVALIDARG`.
///
/// # Safety
/// `pp_malloc` is NULL or valid for a write of one pointer.
#[no_mangle]
pub unsafe extern "system" fn CoGetMalloc(mem_context: DWORD, pp_malloc: *mut *mut IMalloc) -> HRESULT {
    guard_hr(|| {
        // SAFETY: forwarded caller guarantee.
        unsafe { com::co_get_malloc(mem_context, pp_malloc) }
    })
}

/// `HRESULT NapallocSetHostMemoryManager(IHostMemoryManager *host)`: take the pages of every
/// region created from now on from `host` (AddRef'd and kept; napalloc registers its
/// `ICLRMemoryNotificationCallback` with it); NULL goes back to the OS. See
/// [`crate::host::set_host_memory_manager`].
///
/// # Safety
/// `host` is NULL or a live, free-threaded `IHostMemoryManager` that stays usable while napalloc
/// holds its reference.
#[no_mangle]
pub unsafe extern "system" fn NapallocSetHostMemoryManager(host: *mut IHostMemoryManager) -> HRESULT {
    guard_hr(|| {
        // SAFETY: forwarded caller guarantee.
        unsafe { crate::host::set_host_memory_manager(host.cast()) }
    })
}

/// `HRESULT NapallocSetBudget(SIZE_T softLimit, SIZE_T hardLimit)`: limits for committed memory
/// (0: no limit); `softLimit > hardLimit` with `hardLimit != 0` → `E_INVALIDARG`, nothing changed.
/// See [`crate::host::set_budget`].
#[no_mangle]
pub extern "system" fn NapallocSetBudget(soft_limit: SIZE_T, hard_limit: SIZE_T) -> HRESULT {
    guard_hr(|| crate::host::set_budget(soft_limit, hard_limit))
}

/// `HRESULT NapallocResetHostFailure(void)`: take the installed host out of the failed state
/// that its `E_FAIL` put it in (napalloc then calls it again, and gives it back the reservations
/// whose release failed meanwhile): `S_OK` if it was failed, `S_FALSE` if it was not or no host is
/// installed. See [`crate::host::reset_host_failure`].
#[no_mangle]
pub extern "system" fn NapallocResetHostFailure() -> HRESULT {
    guard_hr(crate::host::reset_host_failure)
}

/// `HRESULT NapallocGetLastHostError(void)`: the HRESULT of the most recent failure a host page
/// source returned to napalloc (on any thread), `S_OK` if there was none: the cause behind a NULL
/// or `E_OUTOFMEMORY` that a host's refusal produced. The counts per cause are in
/// [`crate::host::BudgetStats::host_errors`] of [`crate::host::global_budget`].
#[no_mangle]
pub extern "system" fn NapallocGetLastHostError() -> HRESULT {
    guard_hr(|| crate::host::global_budget().stats().host_errors.last)
}

/// `void *NapallocAllocCritical(SIZE_T cb, EMemoryCriticalLevel level)`: `CoTaskMemAlloc` at a
/// critical level; NULL on failure and for a level mscoree.h does not define.
#[no_mangle]
pub extern "system" fn NapallocAllocCritical(cb: SIZE_T, level: EMemoryCriticalLevel) -> *mut c_void {
    let Some(level) = level.critical_level() else {
        return ptr::null_mut();
    };
    guard_ptr(|| as_void(heap::alloc_critical(cb, level)))
}

/// `HRESULT NapallocGetStats(NapallocStats *out)`: the process-wide counters; NULL `out` →
/// `E_POINTER`.
///
/// # Safety
/// `out` is NULL or valid for a write of one `NapallocStats`.
#[no_mangle]
pub unsafe extern "system" fn NapallocGetStats(out: *mut NapallocStats) -> HRESULT {
    if out.is_null() {
        return E_POINTER;
    }
    guard_hr(|| {
        let s = NapallocStats::from(heap::stats());
        // SAFETY: non-null and writable (caller).
        unsafe { out.write_unaligned(s) };
        S_OK
    })
}

/// `HRESULT NapallocHeapMinimize(void)`: give unused committed memory back to the OS (or the
/// host), as `IMalloc::HeapMinimize`.
#[no_mangle]
pub extern "system" fn NapallocHeapMinimize() -> HRESULT {
    guard_hr(|| {
        heap::heap_minimize();
        S_OK
    })
}

/// `HRESULT NapallocFlushRemoteFrees(void)`: deliver the calling thread's pending frees of other
/// threads' blocks now (`heap::flush_remote_frees`). Always `S_OK`.
#[no_mangle]
pub extern "system" fn NapallocFlushRemoteFrees() -> HRESULT {
    guard_hr(|| {
        heap::flush_remote_frees();
        S_OK
    })
}

/// `HRESULT NapallocScopeEnter(NapallocScope **scope)`: start a request scope on the calling
/// thread; NULL `scope` → `E_POINTER`; `E_OUTOFMEMORY` if no scope heap can be had.
///
/// # Safety
/// `scope` is NULL or valid for a write of one pointer.
#[no_mangle]
pub unsafe extern "system" fn NapallocScopeEnter(scope: *mut *mut NapallocScope) -> HRESULT {
    if scope.is_null() {
        return E_POINTER;
    }
    guard_hr(|| {
        let (h, hr) = match heap::enter_handle() {
            Ok(h) => (h, S_OK),
            Err(Error::OutOfMemory) => (ptr::null_mut(), E_OUTOFMEMORY),
            Err(e) => (ptr::null_mut(), e.hresult()),
        };
        // SAFETY: non-null and writable (caller).
        unsafe { scope.write(h) };
        hr
    })
}

/// `HRESULT NapallocScopeLeave(NapallocScope *scope)`: leave the calling thread's innermost
/// scope, freeing everything still allocated in it. NULL, a scope that is not the thread's
/// innermost, or another thread's scope → `E_INVALIDARG`, nothing changed.
#[no_mangle]
pub extern "system" fn NapallocScopeLeave(scope: *mut NapallocScope) -> HRESULT {
    if scope.is_null() {
        return E_INVALIDARG;
    }
    guard_hr(|| match heap::leave_handle(scope) {
        Ok(()) => S_OK,
        Err(_) => E_INVALIDARG,
    })
}
