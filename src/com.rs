//! The COM task allocator as an interface: the process-wide `IMalloc` that `CoGetMalloc(1, &p)`
//! hands out (objidl.h, SPEC §5).
//!
//! The object is one `static`: a `#[repr(C)]` struct whose first field is the interface (a
//! pointer to the vtable), followed by a reference count. `AddRef`/`Release` count, as COM
//! requires, but the object is never freed: a `Release` to zero is harmless and the count
//! stays at least 1. Every method behaves as the `CoTaskMem*` function of the same meaning
//! ([`crate::heap`]):
//!
//! | method | result |
//! | --- | --- |
//! | `QueryInterface(riid, ppv)` | `IID_IUnknown`, `IID_IMalloc`: `S_OK`, `*ppv` = the object, AddRef'd; other IIDs: `E_NOINTERFACE`, `*ppv = NULL`; NULL `ppv`: `E_POINTER`; NULL `riid`: `E_INVALIDARG`, `*ppv = NULL` |
//! | `Alloc(cb)` | `CoTaskMemAlloc(cb)` |
//! | `Realloc(pv, cb)` | `CoTaskMemRealloc(pv, cb)` |
//! | `Free(pv)` | `CoTaskMemFree(pv)` |
//! | `GetSize(pv)` | the size requested for the block, exactly; `(SIZE_T)-1` for NULL and for anything that is not a live block |
//! | `DidAlloc(pv)` | 1 for a live block, 0 for anything else (foreign, interior, freed), -1 for NULL |
//! | `HeapMinimize()` | gives unused committed memory back to the OS |
//!
//! No method lets a panic unwind into its caller: each runs under `catch_unwind` and answers
//! NULL, `E_FAIL`, `(SIZE_T)-1` or 0 if one happened (none is expected).

use crate::heap;
use crate::hr::{E_FAIL, E_INVALIDARG, E_NOINTERFACE, E_POINTER, HRESULT, S_OK};
use crate::nap::types::{Guid, IMalloc, IMallocVtbl, IID_IMALLOC, IID_IUNKNOWN, SIZE_T, ULONG};
use core::ffi::{c_int, c_void};
use core::ptr;
use core::sync::atomic::{AtomicU32, Ordering};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// The memory context `CoGetMalloc` accepts (`MEMCTX_TASK`).
pub const MEMCTX_TASK: u32 = 1;

/// The process-wide IMalloc object: the interface first, so that an `IMalloc *` points to it.
#[repr(C)]
#[derive(Debug)]
struct TaskMalloc {
    iface: IMalloc,
    /// References handed out. Incremented by `AddRef` (any thread), decremented by `Release`
    /// (any thread) but never below 1: the object is static.
    refs: AtomicU32,
}

static VTBL: IMallocVtbl =
    IMallocVtbl { query_interface, add_ref, release, alloc, realloc, free, get_size, did_alloc, heap_minimize };

static TASK_MALLOC: TaskMalloc = TaskMalloc { iface: IMalloc { vtbl: &VTBL }, refs: AtomicU32::new(1) };

/// The process-wide `IMalloc` (not AddRef'd; see [`co_get_malloc`] for the COM way to get it).
pub fn task_malloc() -> *mut IMalloc {
    &TASK_MALLOC.iface as *const IMalloc as *mut IMalloc
}

/// The current reference count of the process-wide `IMalloc` (for diagnostics and tests).
pub fn ref_count() -> u32 {
    TASK_MALLOC.refs.load(Ordering::Relaxed)
}

/// `CoGetMalloc(dwMemContext, ppMalloc)`: `S_OK` and the AddRef'd process-wide `IMalloc` for
/// context 1; any other context → `E_INVALIDARG` and `*ppMalloc = NULL`; NULL `ppMalloc` →
/// `E_INVALIDARG`.
///
/// # Safety
/// `pp_malloc` is NULL or valid for a write of one pointer.
pub unsafe fn co_get_malloc(mem_context: u32, pp_malloc: *mut *mut IMalloc) -> HRESULT {
    if pp_malloc.is_null() {
        return E_INVALIDARG;
    }
    if mem_context != MEMCTX_TASK {
        // SAFETY: non-null and writable (caller).
        unsafe { pp_malloc.write(ptr::null_mut()) };
        return E_INVALIDARG;
    }
    TASK_MALLOC.refs.fetch_add(1, Ordering::Relaxed);
    // SAFETY: as above.
    unsafe { pp_malloc.write(task_malloc()) };
    S_OK
}

fn guarded<T>(fallback: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(fallback)
}

unsafe extern "system" fn query_interface(_this: *mut IMalloc, riid: *const Guid, ppv: *mut *mut c_void) -> HRESULT {
    guarded(E_FAIL, || {
        if ppv.is_null() {
            return E_POINTER;
        }
        if riid.is_null() {
            // SAFETY: non-null and writable (COM contract of the caller).
            unsafe { ppv.write(ptr::null_mut()) };
            return E_INVALIDARG;
        }
        // SAFETY: non-null; the caller passes a readable IID.
        let iid = unsafe { riid.read_unaligned() };
        if iid == IID_IUNKNOWN || iid == IID_IMALLOC {
            TASK_MALLOC.refs.fetch_add(1, Ordering::Relaxed);
            // SAFETY: as above.
            unsafe { ppv.write(task_malloc().cast()) };
            S_OK
        } else {
            // SAFETY: as above.
            unsafe { ppv.write(ptr::null_mut()) };
            E_NOINTERFACE
        }
    })
}

unsafe extern "system" fn add_ref(_this: *mut IMalloc) -> ULONG {
    TASK_MALLOC.refs.fetch_add(1, Ordering::Relaxed).wrapping_add(1)
}

unsafe extern "system" fn release(_this: *mut IMalloc) -> ULONG {
    let refs = &TASK_MALLOC.refs;
    let mut n = refs.load(Ordering::Relaxed);
    loop {
        let new = n.saturating_sub(1).max(1);
        match refs.compare_exchange_weak(n, new, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return new,
            Err(now) => n = now,
        }
    }
}

unsafe extern "system" fn alloc(_this: *mut IMalloc, cb: SIZE_T) -> *mut c_void {
    guarded(ptr::null_mut(), || heap::alloc(cb).map_or(ptr::null_mut(), |p| p.as_ptr().cast()))
}

unsafe extern "system" fn realloc(_this: *mut IMalloc, pv: *mut c_void, cb: SIZE_T) -> *mut c_void {
    guarded(ptr::null_mut(), || {
        // SAFETY: COM contract: if the block moves, the caller no longer uses `pv`.
        unsafe { heap::realloc(pv.cast(), cb).cast() }
    })
}

unsafe extern "system" fn free(_this: *mut IMalloc, pv: *mut c_void) {
    guarded((), || {
        // SAFETY: COM contract: the caller no longer uses the block.
        unsafe { heap::free(pv.cast()) };
    })
}

unsafe extern "system" fn get_size(_this: *mut IMalloc, pv: *mut c_void) -> SIZE_T {
    guarded(SIZE_T::MAX, || heap::size_of(pv.cast()).unwrap_or(SIZE_T::MAX))
}

unsafe extern "system" fn did_alloc(_this: *mut IMalloc, pv: *mut c_void) -> c_int {
    guarded(0, || heap::did_alloc(pv.cast()))
}

unsafe extern "system" fn heap_minimize(_this: *mut IMalloc) {
    guarded((), heap::heap_minimize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vtbl() -> &'static IMallocVtbl {
        // SAFETY: the static object's vtable pointer is valid for the whole program.
        unsafe { &*(*task_malloc()).vtbl }
    }

    #[test]
    fn query_interface_answers_iunknown_and_imalloc_only() {
        let m = task_malloc();
        let v = vtbl();
        let mut out: *mut c_void = ptr::dangling_mut();
        // SAFETY: valid object, IID and out pointer throughout.
        unsafe {
            assert_eq!((v.query_interface)(m, &IID_IMALLOC, &mut out), S_OK);
            assert_eq!(out, m.cast());
            assert_eq!((v.release)(m), ref_count());
            out = ptr::dangling_mut();
            assert_eq!((v.query_interface)(m, &IID_IUNKNOWN, &mut out), S_OK);
            assert_eq!(out, m.cast());
            (v.release)(m);
            out = ptr::dangling_mut();
            let other = Guid::new(3, 0, 0, [0xC0, 0, 0, 0, 0, 0, 0, 0x46]);
            assert_eq!((v.query_interface)(m, &other, &mut out), E_NOINTERFACE);
            assert!(out.is_null());
            assert_eq!((v.query_interface)(m, &IID_IMALLOC, ptr::null_mut()), E_POINTER);
            out = ptr::dangling_mut();
            assert_eq!((v.query_interface)(m, ptr::null(), &mut out), E_INVALIDARG);
            assert!(out.is_null());
        }
    }

    #[test]
    fn release_never_drops_below_one() {
        let m = task_malloc();
        let v = vtbl();
        // SAFETY: valid object.
        unsafe {
            for _ in 0..10 {
                assert!((v.release)(m) >= 1);
            }
            assert!((v.add_ref)(m) >= 2);
        }
        assert!(ref_count() >= 1);
    }

    #[test]
    fn co_get_malloc_contexts() {
        let mut p: *mut IMalloc = ptr::dangling_mut();
        // SAFETY: valid out pointers.
        unsafe {
            assert_eq!(co_get_malloc(MEMCTX_TASK, &mut p), S_OK);
            assert_eq!(p, task_malloc());
            for ctx in [0, 2, 3, u32::MAX] {
                p = ptr::dangling_mut();
                assert_eq!(co_get_malloc(ctx, &mut p), E_INVALIDARG);
                assert!(p.is_null());
            }
            assert_eq!(co_get_malloc(MEMCTX_TASK, ptr::null_mut()), E_INVALIDARG);
        }
    }

    #[test]
    fn methods_behave_as_the_task_heap() {
        let m = task_malloc();
        let v = vtbl();
        // SAFETY: valid object; blocks are used within their sizes and freed once.
        unsafe {
            let p = (v.alloc)(m, 16);
            assert!(!p.is_null());
            assert_eq!(p as usize % 16, 0);
            assert_eq!((v.get_size)(m, p), 16);
            assert_eq!((v.get_size)(m, ptr::null_mut()), SIZE_T::MAX);
            assert_eq!((v.did_alloc)(m, p), 1);
            assert_eq!((v.did_alloc)(m, ptr::null_mut()), -1);
            assert_eq!((v.did_alloc)(m, ptr::NonNull::<u8>::dangling().as_ptr().cast()), 0);
            assert_eq!((v.did_alloc)(m, p.cast::<u8>().add(4).cast()), 0);
            p.cast::<u8>().write_bytes(0xAB, 16);
            let q = (v.realloc)(m, p, 100);
            assert!(!q.is_null());
            assert_eq!((v.get_size)(m, q), 100);
            assert!((0..16).all(|i| *q.cast::<u8>().add(i) == 0xAB));
            (v.free)(m, q);
            assert_eq!((v.did_alloc)(m, q), 0);
            assert_eq!((v.get_size)(m, q), SIZE_T::MAX);
            (v.heap_minimize)(m);
        }
    }
}
