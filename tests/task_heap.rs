//! The COM task allocator (SPEC §5) through the C exports and the Rust task-heap API: one test
//! per rule, then threads (remote frees, foreign reallocs and queries, thread exit, adoption) and
//! request scopes.
//!
//! Tests in this binary run in parallel and share the process-wide heap, so they assert only
//! what one thread can observe on its own: its blocks, `heap::thread_stats()` (its own heap), and
//! lower bounds on the process-wide counters. Exact process-wide books are checked in
//! `tests/task_heap_global.rs`, alone in its binary.

use core::ffi::c_void;
use core::ptr;
use napalloc::com;
use napalloc::ffi::{
    CoGetMalloc, CoTaskMemAlloc, CoTaskMemFree, CoTaskMemRealloc, NapallocAllocCritical, NapallocGetStats,
    NapallocHeapMinimize, NapallocScopeEnter, NapallocScopeLeave,
};
use napalloc::heap;
use napalloc::hr::{E_INVALIDARG, E_NOINTERFACE, E_POINTER, S_OK};
use napalloc::nap::types::{EMemoryCriticalLevel, Guid, IMalloc, IMallocVtbl, NapallocScope, NapallocStats};
use napalloc::nap::types::{IID_IMALLOC, IID_IUNKNOWN};
use std::sync::mpsc;
use std::thread;

/// Blocks of one thread's own heap (or current scope) and their bytes.
fn mine() -> (u64, u64) {
    let s = heap::thread_stats();
    (s.live_blocks, s.live_bytes)
}

fn bad_pointers() -> u64 {
    heap::stats().bad_pointers
}

fn malloc() -> (*mut IMalloc, &'static IMallocVtbl) {
    let mut m: *mut IMalloc = ptr::null_mut();
    // SAFETY: a valid out pointer.
    assert_eq!(unsafe { CoGetMalloc(1, &mut m) }, S_OK);
    assert!(!m.is_null());
    // SAFETY: CoGetMalloc returned the live, static IMalloc.
    (m, unsafe { &*(*m).vtbl })
}

/// A block of `n` bytes filled with `byte`.
fn filled(n: usize, byte: u8) -> *mut u8 {
    let p = CoTaskMemAlloc(n).cast::<u8>();
    assert!(!p.is_null(), "CoTaskMemAlloc({n})");
    // SAFETY: a fresh block of n bytes.
    unsafe { p.write_bytes(byte, n) };
    p
}

fn all(p: *const u8, n: usize, byte: u8) -> bool {
    // SAFETY: callers pass live blocks of at least n bytes.
    (0..n).all(|i| unsafe { *p.add(i) } == byte)
}

// ---------------------------------------------------------------------------------------------
// SPEC §5, rule by rule
// ---------------------------------------------------------------------------------------------

#[test]
fn every_block_is_16_aligned() {
    let sizes = [0usize, 1, 7, 15, 16, 17, 31, 48, 100, 255, 256, 1000, 1024, 1025, 4000, 70_000, 1 << 20];
    let blocks: Vec<_> = sizes.iter().map(|&n| (CoTaskMemAlloc(n), n)).collect();
    for &(p, n) in &blocks {
        assert!(!p.is_null(), "CoTaskMemAlloc({n})");
        assert_eq!(p as usize % 16, 0, "CoTaskMemAlloc({n}) = {p:p}");
        assert_eq!(heap::size_of(p.cast()), Some(n));
    }
    for (p, _) in blocks {
        // SAFETY: each block is freed once.
        unsafe { CoTaskMemFree(p) };
    }
    // Reallocated blocks too.
    let mut p = CoTaskMemAlloc(8);
    for n in [24, 5000, 3, 100_000] {
        // SAFETY: p is live; it is not used after it moves.
        p = unsafe { CoTaskMemRealloc(p, n) };
        assert!(!p.is_null() && p as usize % 16 == 0);
    }
    // SAFETY: live.
    unsafe { CoTaskMemFree(p) };
}

#[test]
fn zero_size_blocks_are_unique_and_not_null() {
    let before = mine();
    let blocks: Vec<*mut c_void> = (0..200).map(|_| CoTaskMemAlloc(0)).collect();
    let mut sorted = blocks.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 200, "zero-size blocks must be distinct");
    assert!(blocks.iter().all(|p| !p.is_null()));
    assert_eq!(mine().0, before.0 + 200);
    for p in blocks {
        assert_eq!(heap::size_of(p.cast()), Some(0));
        // SAFETY: each freed once.
        unsafe { CoTaskMemFree(p) };
    }
    assert_eq!(mine(), before);
}

#[test]
fn realloc_of_null_allocates() {
    let before = mine();
    // SAFETY: NULL is always a valid argument.
    let p = unsafe { CoTaskMemRealloc(ptr::null_mut(), 40) };
    assert!(!p.is_null());
    assert_eq!(heap::size_of(p.cast()), Some(40));
    assert_eq!(mine(), (before.0 + 1, before.1 + 40));
    // SAFETY: live.
    unsafe { CoTaskMemFree(p) };
    assert_eq!(mine(), before);
}

#[test]
fn realloc_to_zero_frees_and_returns_null() {
    let before = mine();
    let p = filled(64, 1);
    // SAFETY: p is live and not used afterwards.
    assert!(unsafe { CoTaskMemRealloc(p.cast(), 0) }.is_null());
    assert_eq!(heap::did_alloc(p), 0, "the block is gone");
    assert_eq!(mine(), before);
}

#[test]
fn failed_grow_returns_null_and_keeps_the_block() {
    let before = mine();
    let p = filled(100, 0x5A);
    for huge in [usize::MAX, usize::MAX - 15, isize::MAX as usize, 1 << 40] {
        // SAFETY: p is live; a failed realloc leaves it untouched.
        let q = unsafe { CoTaskMemRealloc(p.cast(), huge) };
        assert!(q.is_null(), "CoTaskMemRealloc(p, {huge:#x}) must fail");
        assert_eq!(heap::size_of(p), Some(100), "p is still a live block of 100 bytes");
        assert!(all(p, 100, 0x5A), "contents untouched");
    }
    // SAFETY: live.
    unsafe { CoTaskMemFree(p.cast()) };
    assert_eq!(mine(), before);
}

#[test]
fn realloc_keeps_contents_up_to_the_smaller_size() {
    let before = mine();
    let p = filled(300, 0xC3);
    // Shrink: the first 50 bytes stay.
    // SAFETY: p is live; not used after it moves.
    let q = unsafe { CoTaskMemRealloc(p.cast(), 50) }.cast::<u8>();
    assert!(!q.is_null());
    assert_eq!(heap::size_of(q), Some(50));
    assert!(all(q, 50, 0xC3));
    // Grow far (it moves): the 50 bytes stay.
    let _other = filled(16, 0); // something after it, so growing in place is not possible
                                // SAFETY: q is live.
    let r = unsafe { CoTaskMemRealloc(q.cast(), 100_000) }.cast::<u8>();
    assert!(!r.is_null());
    assert_eq!(heap::size_of(r), Some(100_000));
    assert!(all(r, 50, 0xC3));
    // SAFETY: both live.
    unsafe {
        CoTaskMemFree(r.cast());
        CoTaskMemFree(_other.cast());
    }
    assert_eq!(mine(), before);
}

#[test]
fn free_of_null_does_nothing() {
    let before = (mine(), heap::stats().bad_pointers);
    // SAFETY: NULL is always valid.
    unsafe { CoTaskMemFree(ptr::null_mut()) };
    // SAFETY: as above.
    assert!(!unsafe { heap::free(ptr::null_mut()) });
    assert_eq!(mine(), before.0);
}

#[test]
fn foreign_interior_and_double_frees_change_nothing_and_are_counted() {
    let keep = filled(64, 7);
    let p = filled(48, 9);
    let before = mine();
    let bad0 = bad_pointers();
    let mut local = [0u64; 8];
    let foreign = local.as_mut_ptr().cast::<c_void>();
    // SAFETY: napalloc refuses these pointers without touching memory.
    unsafe {
        CoTaskMemFree(foreign); // not ours
        CoTaskMemFree(p.add(4).cast()); // interior
        CoTaskMemFree(p.add(16).cast()); // interior, granule-aligned
        CoTaskMemFree(ptr::NonNull::<u8>::dangling().as_ptr().cast()); // address 1: nonsense
    }
    assert_eq!(mine(), before, "nothing was freed");
    assert!(all(p, 48, 9) && all(keep, 64, 7), "nothing was written");
    assert!(local.iter().all(|&x| x == 0));
    // SAFETY: p is live; the second free is a double free.
    unsafe {
        CoTaskMemFree(p.cast());
        CoTaskMemFree(p.cast());
    }
    assert_eq!(mine(), (before.0 - 1, before.1 - 48), "one block freed, once");
    assert!(bad_pointers() >= bad0 + 5, "every refused pointer is counted");
    // realloc of a bad pointer: NULL, nothing changed, counted.
    let bad1 = bad_pointers();
    // SAFETY: refused untouched.
    assert!(unsafe { CoTaskMemRealloc(p.add(4).cast(), 10) }.is_null());
    assert!(bad_pointers() > bad1);
    assert!(all(keep, 64, 7));
    // SAFETY: live.
    unsafe { CoTaskMemFree(keep.cast()) };
}

#[test]
fn get_size_is_the_requested_size() {
    let (m, v) = malloc();
    for n in [0usize, 1, 15, 16, 17, 100, 1000, 1024, 1025, 65_537] {
        // SAFETY: the static IMalloc; blocks freed once.
        unsafe {
            let p = (v.alloc)(m, n);
            assert!(!p.is_null());
            assert_eq!((v.get_size)(m, p), n, "GetSize of a {n}-byte block");
            (v.free)(m, p);
        }
    }
    // SAFETY: as above.
    unsafe {
        let p = (v.alloc)(m, 16);
        assert_eq!((v.get_size)(m, p), 16, "Wine: GetSize(16-byte block) == 16");
        assert_eq!((v.get_size)(m, ptr::null_mut()), usize::MAX, "GetSize(NULL) == (SIZE_T)-1");
        assert_eq!((v.get_size)(m, p.cast::<u8>().add(4).cast()), usize::MAX);
        (v.free)(m, p);
        assert_eq!((v.get_size)(m, p), usize::MAX, "freed");
        (v.release)(m);
    }
}

#[test]
fn did_alloc_answers_1_0_and_minus_1() {
    let (m, v) = malloc();
    // SAFETY: the static IMalloc; the block is freed once.
    unsafe {
        let p = (v.alloc)(m, 32);
        assert_eq!((v.did_alloc)(m, p), 1);
        assert_eq!((v.did_alloc)(m, ptr::null_mut()), -1);
        assert_eq!((v.did_alloc)(m, ptr::NonNull::<u8>::dangling().as_ptr().cast()), 0);
        assert_eq!((v.did_alloc)(m, p.cast::<u8>().add(4).cast()), 0, "interior");
        let mut x = 0u32;
        assert_eq!((v.did_alloc)(m, (&mut x as *mut u32).cast()), 0, "foreign");
        (v.free)(m, p);
        assert_eq!((v.did_alloc)(m, p), 0, "freed");
        (v.release)(m);
    }
}

#[test]
fn co_get_malloc_accepts_context_1_only() {
    let mut m: *mut IMalloc = ptr::dangling_mut();
    // SAFETY: valid out pointers.
    unsafe {
        assert_eq!(CoGetMalloc(1, &mut m), S_OK);
        assert_eq!(m, com::task_malloc());
        let mut again: *mut IMalloc = ptr::null_mut();
        assert_eq!(CoGetMalloc(1, &mut again), S_OK);
        assert_eq!(again, m, "one process-wide object");
        for ctx in [0u32, 2, 4, 0xFFFF_FFFF] {
            let mut p: *mut IMalloc = ptr::dangling_mut();
            assert_eq!(CoGetMalloc(ctx, &mut p), E_INVALIDARG, "context {ctx}");
            assert!(p.is_null());
        }
        assert_eq!(CoGetMalloc(1, ptr::null_mut()), E_INVALIDARG);
        let v = &*(*m).vtbl;
        (v.release)(m);
        (v.release)(m);
    }
}

#[test]
fn query_interface_gives_iunknown_and_imalloc() {
    let (m, v) = malloc();
    let mut out: *mut c_void = ptr::dangling_mut();
    // SAFETY: valid object and out pointers.
    unsafe {
        assert_eq!((v.query_interface)(m, &IID_IUNKNOWN, &mut out), S_OK);
        assert_eq!(out, m.cast());
        (v.release)(m);
        out = ptr::dangling_mut();
        assert_eq!((v.query_interface)(m, &IID_IMALLOC, &mut out), S_OK);
        assert_eq!(out, m.cast());
        (v.release)(m);
        out = ptr::dangling_mut();
        let iid_istream = Guid::new(0x0000_000C, 0, 0, [0xC0, 0, 0, 0, 0, 0, 0, 0x46]);
        assert_eq!((v.query_interface)(m, &iid_istream, &mut out), E_NOINTERFACE);
        assert!(out.is_null());
        assert_eq!((v.query_interface)(m, &IID_IMALLOC, ptr::null_mut()), E_POINTER);
        (v.release)(m);
    }
}

#[test]
fn imalloc_realloc_and_heap_minimize() {
    let (m, v) = malloc();
    // SAFETY: the static IMalloc; blocks used within their sizes.
    unsafe {
        let p = (v.realloc)(m, ptr::null_mut(), 20).cast::<u8>();
        assert!(!p.is_null());
        p.write_bytes(0x11, 20);
        let q = (v.realloc)(m, p.cast(), 2000).cast::<u8>();
        assert!(all(q, 20, 0x11));
        assert!((v.realloc)(m, q.cast(), 0).is_null());
        assert_eq!((v.did_alloc)(m, q.cast()), 0);
        (v.heap_minimize)(m);
        (v.release)(m);
    }
    assert_eq!(NapallocHeapMinimize(), S_OK);
}

#[test]
fn sizes_near_size_max_fail_cleanly() {
    let failed0 = heap::stats().failed_allocations;
    for n in [usize::MAX, usize::MAX - 1, usize::MAX - 16, isize::MAX as usize, isize::MAX as usize + 1] {
        assert!(CoTaskMemAlloc(n).is_null(), "CoTaskMemAlloc({n:#x})");
        assert!(heap::alloc(n).is_none());
    }
    assert!(heap::stats().failed_allocations >= failed0 + 10);
}

#[test]
fn critical_allocations() {
    for level in [EMemoryCriticalLevel::TASK_CRITICAL, EMemoryCriticalLevel::APP_DOMAIN_CRITICAL] {
        let p = NapallocAllocCritical(100, level);
        assert!(!p.is_null() && p as usize % 16 == 0);
        assert_eq!(heap::size_of(p.cast()), Some(100));
        // SAFETY: live.
        unsafe { CoTaskMemFree(p) };
    }
    let p = NapallocAllocCritical(0, EMemoryCriticalLevel::PROCESS_CRITICAL);
    assert!(!p.is_null());
    // SAFETY: live.
    unsafe { CoTaskMemFree(p) };
    // SAFETY: an EMemoryCriticalLevel is a 4-byte C enum; 7 is not one of its values.
    let bogus: EMemoryCriticalLevel = unsafe { core::mem::transmute(7i32) };
    assert!(NapallocAllocCritical(100, bogus).is_null());
}

#[test]
fn get_stats_fills_the_c_struct() {
    let p = filled(1000, 1);
    let mut s = NapallocStats::default();
    // SAFETY: a valid out pointer; NULL is refused.
    unsafe {
        assert_eq!(NapallocGetStats(&mut s), S_OK);
        assert_eq!(NapallocGetStats(ptr::null_mut()), E_POINTER);
    }
    assert!(s.live_blocks >= 1 && s.live_bytes >= 1000);
    assert!(s.committed_bytes >= 1000 && s.reserved_bytes >= s.committed_bytes);
    // SAFETY: live.
    unsafe { CoTaskMemFree(p.cast()) };
}

// ---------------------------------------------------------------------------------------------
// Embedded pointers
// ---------------------------------------------------------------------------------------------

#[test]
fn free_tree_takes_children_and_free_leaves_them() {
    let before = mine();
    let s = heap::alloc(16).unwrap();
    let string = heap::alloc_child(s, 40).unwrap();
    let arr = heap::alloc_child(s, 64).unwrap();
    let leaf = heap::alloc_child(arr, 8).unwrap();
    assert_eq!(mine().0, before.0 + 4);
    // SAFETY: s is live; its children must survive a plain free.
    assert!(unsafe { heap::free(s.as_ptr()) });
    assert_eq!(heap::did_alloc(string.as_ptr()), 1);
    assert_eq!(heap::did_alloc(arr.as_ptr()), 1);
    // SAFETY: arr is live; free_tree takes leaf with it.
    assert!(unsafe { heap::free_tree(arr.as_ptr()) });
    assert_eq!(heap::did_alloc(leaf.as_ptr()), 0);
    // SAFETY: live.
    assert!(unsafe { heap::free_tree(string.as_ptr()) });
    assert_eq!(mine(), before);
    let bad0 = bad_pointers();
    let mut x = 0u64;
    assert!(heap::alloc_child(core::ptr::NonNull::from(&mut x).cast(), 8).is_none());
    assert!(bad_pointers() > bad0);
}

// ---------------------------------------------------------------------------------------------
// Threads
// ---------------------------------------------------------------------------------------------

/// Pointers cross threads as addresses.
fn addr(p: *mut c_void) -> usize {
    p as usize
}

#[test]
fn other_threads_free_realloc_and_query_my_blocks() {
    let before = mine();
    let blocks: Vec<usize> = (0..200).map(|i| addr(filled(16 + i % 200, (i % 251) as u8).cast())).collect();
    let grown = thread::scope(|s| {
        s.spawn(|| {
            let mut grown = Vec::new();
            for (i, &a) in blocks.iter().enumerate() {
                let p = a as *mut u8;
                let n = 16 + i % 200;
                assert_eq!(heap::size_of(p), Some(n), "size of another thread's block");
                assert_eq!(heap::did_alloc(p), 1);
                assert_eq!(heap::did_alloc(p.wrapping_add(4)), 0);
                if i % 4 == 0 {
                    // SAFETY: the block is handed over; it is not used after it moves.
                    let q = unsafe { CoTaskMemRealloc(p.cast(), n + 500) }.cast::<u8>();
                    assert!(!q.is_null());
                    assert!(all(q, n, (i % 251) as u8), "contents kept across threads");
                    assert_eq!(heap::size_of(q), Some(n + 500));
                    grown.push(q as usize);
                } else {
                    // SAFETY: the block is handed over and freed once.
                    unsafe { CoTaskMemFree(p.cast()) };
                }
            }
            grown
        })
        .join()
        .unwrap()
    });
    // The reallocated blocks stayed in my heap; the freed ones were queued for it.
    for a in grown {
        // SAFETY: live, freed once.
        unsafe { CoTaskMemFree(a as *mut c_void) };
    }
    assert_eq!(mine(), before, "every remote free reached my heap");
}

#[test]
fn two_threads_free_each_others_blocks() {
    let rounds = if cfg!(miri) { 20 } else { 2000 };
    let (to_b, from_a) = mpsc::channel::<usize>();
    let (to_a, from_b) = mpsc::channel::<usize>();
    let done = std::sync::Arc::new(std::sync::Barrier::new(2));
    let done_b = done.clone();
    let a = thread::spawn(move || {
        let before = mine();
        for i in 0..rounds {
            to_b.send(addr(filled(24 + i % 100, 0xA1).cast())).unwrap();
            if let Ok(p) = from_b.try_recv() {
                assert!(all(p as *const u8, 24, 0xB2));
                // SAFETY: handed over by B, freed once.
                unsafe { CoTaskMemFree(p as *mut c_void) };
            }
        }
        drop(to_b);
        for p in from_b {
            // SAFETY: as above.
            unsafe { CoTaskMemFree(p as *mut c_void) };
        }
        // Deliver my frees of B's blocks before B counts (they wait in my batch otherwise).
        heap::flush_remote_frees();
        // Both threads have freed everything they received: my heap holds nothing of mine.
        done.wait();
        mine() == before
    });
    let b = thread::spawn(move || {
        let before = mine();
        let mut from_a = from_a.into_iter();
        for i in 0..rounds {
            to_a.send(addr(filled(24 + i % 50, 0xB2).cast())).unwrap();
            if let Some(p) = from_a.next() {
                assert!(all(p as *const u8, 24, 0xA1));
                // SAFETY: handed over by A, freed once.
                unsafe { CoTaskMemFree(p as *mut c_void) };
            }
        }
        drop(to_a);
        for p in from_a {
            // SAFETY: as above.
            unsafe { CoTaskMemFree(p as *mut c_void) };
        }
        heap::flush_remote_frees();
        done_b.wait();
        mine() == before
    });
    assert!(a.join().unwrap(), "A's heap is back where it started");
    assert!(b.join().unwrap(), "B's heap is back where it started");
}

#[test]
fn a_block_freed_by_its_owner_and_by_another_thread_is_freed_once() {
    let p = filled(40, 0x77);
    let before = mine();
    let bad0 = bad_pointers();
    let a = addr(p.cast());
    thread::spawn(move || {
        // SAFETY: the first free of the block.
        unsafe { CoTaskMemFree(a as *mut c_void) };
    })
    .join()
    .unwrap();
    // SAFETY: a double free: refused.
    unsafe { CoTaskMemFree(p.cast()) };
    assert_eq!(mine(), (before.0 - 1, before.1 - 40));
    assert!(bad_pointers() > bad0);
}

/// Two allocations of `n` bytes right after a double free, before anything that would do the
/// pending frees (no stats, no query): they must be two blocks (the doubly freed block at most
/// one of them), filled with 1 and 2.
fn two_fresh_blocks(n: usize) -> (*mut u8, *mut u8) {
    let (a, b) = (CoTaskMemAlloc(n).cast::<u8>(), CoTaskMemAlloc(n).cast::<u8>());
    assert!(!a.is_null() && !b.is_null());
    assert_ne!(a, b, "a live block handed out twice");
    // SAFETY: two live blocks of n bytes each.
    unsafe {
        a.write_bytes(1, n);
        b.write_bytes(2, n);
    }
    (a, b)
}

/// `CoTaskMemFree(p)` on a thread of its own, which exits (delivering the free) before this
/// returns.
fn free_on_another_thread(p: *mut u8) {
    let a = addr(p.cast());
    thread::spawn(move || {
        // SAFETY: the caller's free of the block (the first or, as the test wants, a second).
        unsafe { CoTaskMemFree(a as *mut c_void) };
    })
    .join()
    .unwrap();
}

#[test]
fn a_double_free_after_another_threads_free_is_refused_before_the_slot_is_reused() {
    // The other thread frees first (its batch is delivered when it exits), then the owner frees
    // the same block again and allocates at once: the owner must do the delivered free first
    // and refuse its own, not free the block now and have the delivered free take the slot's
    // next block later.
    for n in [40, 200, 3000] {
        let p = filled(n, 0x5A);
        let bad0 = bad_pointers();
        free_on_another_thread(p);
        // SAFETY: a double free: refused.
        unsafe { CoTaskMemFree(p.cast()) };
        let (x, y) = two_fresh_blocks(n);
        assert!(all(x, n, 1) && all(y, n, 2));
        assert_eq!(heap::did_alloc(x), 1);
        assert_eq!(heap::did_alloc(y), 1);
        assert!(bad_pointers() > bad0, "the double free of a {n}-byte block was not reported");
        // SAFETY: each freed once.
        unsafe {
            CoTaskMemFree(x.cast());
            CoTaskMemFree(y.cast());
        }
    }
}

#[test]
fn a_double_free_by_another_thread_after_the_owners_free_does_not_take_the_slots_next_block() {
    // The owner frees first; another thread frees the same block again and exits (its batch is
    // delivered); the owner's next allocations must not be freed by that delivered free.
    for n in [40, 200, 3000] {
        let p = filled(n, 0x5A);
        let bad0 = bad_pointers();
        // SAFETY: the first free of the block.
        unsafe { CoTaskMemFree(p.cast()) };
        // A double free: refused when the owner does it.
        free_on_another_thread(p);
        let (x, y) = two_fresh_blocks(n);
        // Whatever the delivered free did, it is done now: both blocks must still be live.
        assert_eq!(heap::did_alloc(x), 1);
        assert_eq!(heap::did_alloc(y), 1);
        let (z, w) = two_fresh_blocks(n);
        assert!(![x, y].contains(&z) && ![x, y].contains(&w), "a live block handed out again");
        assert!(all(x, n, 1) && all(y, n, 2));
        assert!(bad_pointers() > bad0, "the double free of a {n}-byte block was not reported");
        // SAFETY: each freed once.
        unsafe {
            for q in [x, y, z, w] {
                CoTaskMemFree(q.cast());
            }
        }
    }
}

#[test]
fn heap_minimize_gives_back_a_running_threads_memory_once_its_blocks_are_freed() {
    // A thread of its own, so that no other test's blocks share its heap. Blocks of 5000 bytes
    // live in the region, blocks of 1000 in the small arena; 16 MiB of each.
    thread::spawn(|| {
        for n in [5000usize, 1000] {
            let blocks: Vec<*mut u8> = (0..(16 << 20) / n).map(|_| filled(n, 0x11)).collect();
            let full = heap::thread_stats().committed_bytes;
            assert!(full >= 16 << 20, "{n}: {full} bytes committed");
            for &p in &blocks {
                // SAFETY: each freed once.
                unsafe { CoTaskMemFree(p.cast()) };
            }
            assert_eq!(heap::thread_stats().live_blocks, 0);
            heap::heap_minimize();
            let left = heap::thread_stats().committed_bytes;
            assert!(left < 1 << 20, "{n}: {left} of {full} bytes still committed after HeapMinimize");
            // The heap serves again, from fresh pages.
            let p = filled(n, 0x22);
            assert!(all(p, n, 0x22));
            // SAFETY: freed once.
            unsafe { CoTaskMemFree(p.cast()) };
        }
    })
    .join()
    .unwrap();
}

/// Resident pages of `[lo, hi)` (page-aligned inwards), by mincore(2).
#[cfg(target_os = "linux")]
fn resident_pages(lo: usize, hi: usize) -> usize {
    let page = 4096;
    let (lo, hi) = ((lo + page - 1) & !(page - 1), hi & !(page - 1));
    if lo >= hi {
        return 0;
    }
    let mut v = vec![0u8; (hi - lo) / page];
    // SAFETY: the range is mapped (it lies inside the heap's committed arenas); `v` has one
    // byte per page.
    let rc = unsafe { libc::mincore(lo as *mut libc::c_void, hi - lo, v.as_mut_ptr()) };
    assert_eq!(rc, 0, "mincore");
    v.iter().filter(|&&b| b & 1 != 0).count()
}

#[cfg(target_os = "linux")]
#[test]
fn heap_minimize_gives_back_the_pages_between_a_running_threads_live_blocks() {
    // A thread of its own. Blocks of 1000 bytes (small arena) and 5000 bytes (region), 8 MiB of
    // each; one in 64 stays live, the rest are freed; HeapMinimize must let the OS take back
    // the pages no live block overlaps, keep the live blocks' bytes, and serve again after.
    thread::spawn(|| {
        for n in [1000usize, 5000] {
            let blocks: Vec<*mut u8> = (0..(8 << 20) / n).map(|i| filled(n, i as u8)).collect();
            let (lo, hi) =
                blocks.iter().fold((usize::MAX, 0), |(lo, hi), &p| (lo.min(p as usize), hi.max(p as usize + n)));
            let full = resident_pages(lo, hi);
            let mut live = Vec::new();
            for (i, &p) in blocks.iter().enumerate() {
                if i % 64 == 0 {
                    live.push((i, p));
                } else {
                    // SAFETY: each freed once.
                    unsafe { CoTaskMemFree(p.cast()) };
                }
            }
            heap::heap_minimize();
            let left = resident_pages(lo, hi);
            // Each live block overlaps at most 3 pages.
            assert!(
                left <= live.len() * 3 + 4,
                "{n}: {left} of {full} pages still resident for {} live blocks",
                live.len()
            );
            for &(i, p) in &live {
                assert!(all(p, n, i as u8), "{n}: live block {i} changed by HeapMinimize");
            }
            // Freed slots are handed out again and work.
            let again: Vec<*mut u8> = (0..1000).map(|_| filled(n, 0x5E)).collect();
            assert!(again.iter().all(|&p| all(p, n, 0x5E)));
            for p in again.into_iter().chain(live.into_iter().map(|(_, p)| p)) {
                // SAFETY: each freed once.
                unsafe { CoTaskMemFree(p.cast()) };
            }
        }
    })
    .join()
    .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Request scopes
// ---------------------------------------------------------------------------------------------

#[test]
fn a_scope_frees_what_it_leaked() {
    let outside = filled(64, 0x42);
    let before = mine();
    let leaked = heap::scope(|| {
        let a = filled(100, 1);
        let b = heap::alloc(50).unwrap();
        let c = heap::alloc_child(b, 20).unwrap();
        let freed = filled(30, 2);
        // SAFETY: live, freed once.
        unsafe { CoTaskMemFree(freed.cast()) };
        // Inside the scope, thread_stats counts the scope's own region.
        assert_eq!(mine(), (3, 170));
        // A block from before the scope is still usable and freeable inside it.
        assert_eq!(heap::size_of(outside), Some(64));
        [addr(a.cast()), b.as_ptr() as usize, c.as_ptr() as usize]
    })
    .unwrap();
    assert_eq!(mine(), before, "the scope's blocks are not in the thread's heap");
    for a in leaked {
        assert_eq!(heap::did_alloc(a as *const u8), 0, "a leaked scope block is gone after leave");
    }
    assert!(all(outside, 64, 0x42));
    // SAFETY: live.
    unsafe { CoTaskMemFree(outside.cast()) };
}

#[test]
fn scopes_nest_and_leave_innermost_first() {
    let mut s1: *mut NapallocScope = ptr::null_mut();
    let mut s2: *mut NapallocScope = ptr::null_mut();
    // SAFETY: valid out pointers.
    unsafe {
        assert_eq!(NapallocScopeEnter(ptr::null_mut()), E_POINTER);
        assert_eq!(NapallocScopeEnter(&mut s1), S_OK);
        assert!(!s1.is_null());
    }
    let in1 = filled(10, 1);
    // SAFETY: as above.
    assert_eq!(unsafe { NapallocScopeEnter(&mut s2) }, S_OK);
    assert_ne!(s1, s2);
    let in2 = filled(20, 2);
    assert_eq!(NapallocScopeLeave(s1), E_INVALIDARG, "not the innermost");
    assert_eq!(NapallocScopeLeave(ptr::null_mut()), E_INVALIDARG);
    assert_eq!(heap::did_alloc(in1), 1, "nothing changed");
    // Another thread cannot leave my scope.
    let s2a = s2 as usize;
    let r = thread::spawn(move || NapallocScopeLeave(s2a as *mut NapallocScope)).join().unwrap();
    assert_eq!(r, E_INVALIDARG);
    assert_eq!(heap::did_alloc(in2), 1);
    assert_eq!(NapallocScopeLeave(s2), S_OK);
    assert_eq!(heap::did_alloc(in2), 0);
    assert_eq!(heap::did_alloc(in1), 1);
    assert_eq!(NapallocScopeLeave(s2), E_INVALIDARG, "already left");
    assert_eq!(NapallocScopeLeave(s1), S_OK);
    assert_eq!(heap::did_alloc(in1), 0);
}

/// A scope handle from C may be any address: misaligned, unmapped, or a block's. Each is refused
/// without being read (found by the `scope_host_abi` fuzz target: `NapallocScopeLeave(0x30)` made
/// a reference of the handle first, which debug builds abort on as a misaligned dereference).
#[test]
fn a_scope_handle_may_be_any_address() {
    let junk = [0x30usize, 1, 0x1000, usize::MAX & !0xF, usize::MAX];
    for &h in &junk {
        assert_eq!(NapallocScopeLeave(h as *mut NapallocScope), E_INVALIDARG, "{h:#x} with no scope");
    }
    let mut s: *mut NapallocScope = ptr::null_mut();
    // SAFETY: a valid out pointer.
    assert_eq!(unsafe { NapallocScopeEnter(&mut s) }, S_OK);
    let b = filled(24, 3);
    for &h in junk.iter().chain([b as usize, s as usize + 8].iter()) {
        assert_eq!(NapallocScopeLeave(h as *mut NapallocScope), E_INVALIDARG, "{h:#x} in a scope");
    }
    assert_eq!(heap::did_alloc(b), 1, "nothing changed");
    assert_eq!(NapallocScopeLeave(s), S_OK);
    assert_eq!(heap::did_alloc(b), 0);
}

#[test]
fn other_threads_free_into_a_scope() {
    let guard = heap::enter_scope().unwrap();
    let before = mine();
    let blocks: Vec<usize> = (0..50).map(|i| addr(filled(16 + i, 5).cast())).collect();
    thread::spawn(move || {
        for a in blocks {
            // SAFETY: live, freed once.
            unsafe { CoTaskMemFree(a as *mut c_void) };
        }
    })
    .join()
    .unwrap();
    assert_eq!(mine(), before, "the remote frees reached the scope");
    guard.leave().unwrap();
}

#[test]
fn scope_guards_dropped_out_of_order_still_end_their_scopes() {
    let before = mine();
    let outer = heap::enter_scope().unwrap();
    let a = filled(8, 1);
    let inner = heap::enter_scope().unwrap();
    let b = filled(8, 2);
    drop(outer); // not the innermost: it is unlinked and reset
    assert_eq!(heap::did_alloc(a), 0);
    assert_eq!(heap::did_alloc(b), 1);
    let c = filled(8, 3); // still allocates in the inner scope
    drop(inner);
    assert_eq!(heap::did_alloc(b), 0);
    assert_eq!(heap::did_alloc(c), 0);
    assert_eq!(mine(), before);
}

#[test]
fn scope_regions_are_reused() {
    // A thread keeps the region of its last scope: entering again gets it back.
    let first = heap::enter_scope().unwrap();
    let h = first.handle();
    drop(first);
    for _ in 0..10 {
        let g = heap::enter_scope().unwrap();
        assert_eq!(g.handle(), h, "the thread's last scope region is reused");
        drop(g);
    }
    // Nested scopes take regions from the process-wide cache; a hundred entries do not make a
    // hundred regions (other tests' scopes share the cache, so only a bound is checked).
    let mut handles = std::collections::HashSet::new();
    for _ in 0..100 {
        let outer = heap::enter_scope().unwrap();
        let inner = heap::enter_scope().unwrap();
        handles.insert(inner.handle() as usize);
        drop(inner);
        drop(outer);
    }
    assert!(handles.len() < 50, "{} regions for 100 nested scopes", handles.len());
}

#[test]
fn foreign_access_while_the_owner_allocates() {
    // The owner allocates and frees in a tight loop (its lock-free fast path), while another
    // thread queries, reallocates and frees blocks the owner handed over: every foreign access
    // takes the owner's heap through the handshake. Any overlap would corrupt the side table or
    // the blocks: wrong sizes or contents, lost blocks, refused frees.
    let rounds = if cfg!(miri) { 60 } else { 20_000 };
    let (tx, rx) = mpsc::sync_channel::<(usize, usize, u8)>(64);
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let owner = thread::spawn(move || {
        let before = mine();
        let mut own: Vec<(*mut u8, usize, u8)> = Vec::new();
        for i in 0..rounds {
            let (n, b) = (16 + (i * 37) % 400, (i % 251) as u8);
            let p = filled(n, b);
            if i % 3 == 0 {
                tx.send((p as usize, n, b)).unwrap();
            } else {
                own.push((p, n, b));
            }
            if own.len() > 32 {
                let (q, m, c) = own.swap_remove((i * 7) % own.len());
                assert!(all(q, m, c), "an owner's block was overwritten");
                // SAFETY: live, freed once.
                unsafe { CoTaskMemFree(q.cast()) };
            }
        }
        drop(tx);
        for (q, m, c) in own {
            assert!(all(q, m, c));
            // SAFETY: live, freed once.
            unsafe { CoTaskMemFree(q.cast()) };
        }
        done_rx.recv().unwrap(); // the other thread has freed everything it was handed
        mine() == before
    });
    let foreign = thread::spawn(move || {
        let mut k = 0usize;
        for (a, n, b) in rx {
            let p = a as *mut u8;
            assert_eq!(heap::size_of(p), Some(n), "size of a block of a busy owner");
            assert_eq!(heap::did_alloc(p), 1);
            assert!(all(p, n, b));
            let p = if k % 2 == 0 {
                // SAFETY: handed over; not used after it moves.
                let q = unsafe { CoTaskMemRealloc(p.cast(), n + 300) }.cast::<u8>();
                assert!(!q.is_null());
                assert_eq!(heap::size_of(q), Some(n + 300));
                assert!(all(q, n, b), "contents kept by a foreign realloc");
                q
            } else {
                p
            };
            // SAFETY: handed over, freed once.
            unsafe { CoTaskMemFree(p.cast()) };
            k += 1;
        }
        heap::flush_remote_frees(); // before the owner counts
        done_tx.send(()).unwrap();
        k
    });
    assert_eq!(foreign.join().unwrap(), rounds.div_ceil(3));
    assert!(owner.join().unwrap(), "the owner's heap is back where it started");
}

#[test]
fn remote_frees_wait_in_the_freeing_threads_batch_until_delivered() {
    let blocks: Vec<usize> = (0..5).map(|i| addr(filled(40 + i, 7).cast())).collect();
    let before = mine();
    let (to_owner, from_freer) = mpsc::channel::<()>();
    let (to_freer, from_owner) = mpsc::channel::<()>();
    let freer = thread::spawn(move || {
        for &a in &blocks[..4] {
            // SAFETY: live blocks of the owner, each freed once.
            unsafe { CoTaskMemFree(a as *mut c_void) };
        }
        to_owner.send(()).unwrap();
        from_owner.recv().unwrap();
        heap::flush_remote_frees();
        to_owner.send(()).unwrap();
        from_owner.recv().unwrap();
        // The fifth block waits in the batch until this thread exits.
        // SAFETY: as above.
        unsafe { CoTaskMemFree(blocks[4] as *mut c_void) };
        blocks
    });
    from_freer.recv().unwrap();
    // Freed, not yet delivered: still live in my heap (a batch holds up to 255 blocks).
    assert_eq!(mine().0, before.0);
    to_freer.send(()).unwrap();
    from_freer.recv().unwrap();
    assert_eq!(mine().0, before.0 - 4, "the flush delivered four frees");
    to_freer.send(()).unwrap();
    let blocks = freer.join().unwrap();
    assert_eq!(mine().0, before.0 - 5, "thread exit delivered the fifth");
    for a in blocks {
        assert_eq!(heap::did_alloc(a as *const u8), 0);
    }
}

#[test]
fn full_batches_of_remote_frees_are_delivered_without_a_flush() {
    // 600 frees by another thread: two full batches of 256 go out on their own, 88 wait.
    let blocks: Vec<usize> = (0..600).map(|i| addr(filled(16 + i % 100, 3).cast())).collect();
    let before = mine();
    let (to_owner, from_freer) = mpsc::channel::<()>();
    let (to_freer, from_owner) = mpsc::channel::<()>();
    let freer = thread::spawn(move || {
        for &a in &blocks {
            // SAFETY: live blocks of the owner, each freed once.
            unsafe { CoTaskMemFree(a as *mut c_void) };
        }
        to_owner.send(()).unwrap();
        from_owner.recv().unwrap();
        heap::flush_remote_frees();
        to_owner.send(()).unwrap();
        blocks
    });
    from_freer.recv().unwrap();
    assert_eq!(mine().0, before.0 - 512, "two full batches delivered, the rest pending");
    to_freer.send(()).unwrap();
    from_freer.recv().unwrap();
    assert_eq!(mine(), (before.0 - 600, before.1 - (0..600).map(|i| 16 + i % 100).sum::<u64>()));
    for a in freer.join().unwrap() {
        assert_eq!(heap::did_alloc(a as *const u8), 0);
    }
}

#[test]
fn misaligned_pointers_into_another_threads_heap_are_refused_at_once() {
    // The remote queues tag tree frees in a pointer's low bit: a misaligned pointer must never
    // be queued, or `p + 1` would read as "free p with its tree".
    let p = filled(48, 5);
    let parent = filled(32, 6);
    let kid = heap::alloc_child(core::ptr::NonNull::new(parent).unwrap(), 24).unwrap().as_ptr();
    // SAFETY: a fresh 24-byte child block.
    unsafe { kid.write_bytes(8, 24) };
    let before = mine();
    let bad0 = bad_pointers();
    let (a, pa) = (addr(p.cast()), addr(parent.cast()));
    let refused = thread::spawn(move || {
        let mut refused = 0;
        for q in [a + 1, a + 4, a + 8, pa + 1, pa + 9] {
            // SAFETY: refused untouched: none of these is a block start.
            refused += !unsafe { heap::free(q as *mut u8) } as u32;
            // SAFETY: as above.
            refused += !unsafe { heap::free_tree(q as *mut u8) } as u32;
        }
        heap::flush_remote_frees();
        refused
    })
    .join()
    .unwrap();
    assert_eq!(refused, 10, "every misaligned free is refused, not queued");
    assert!(bad_pointers() >= bad0 + 10, "and counted");
    assert_eq!(mine(), before, "nothing was freed");
    assert!(all(p, 48, 5) && all(parent, 32, 6) && all(kid, 24, 8), "nothing was written");
    assert_eq!(heap::size_of(kid), Some(24), "the child of the block whose address + 1 was freed lives");
    // SAFETY: live; the tree frees the parent with its child.
    unsafe {
        CoTaskMemFree(p.cast());
        assert!(heap::free_tree(parent));
    }
    assert_eq!(heap::did_alloc(kid), 0);
}

#[test]
fn a_batch_for_a_scope_that_was_left_is_dropped_not_applied_to_the_next_request() {
    // Request 1's blocks are freed by another thread, whose batch is still pending when the scope
    // ends. The scope's heap is reset and reused by request 2, whose blocks take the same
    // addresses; delivering the stale batch then must not free them.
    let (to_owner, from_freer) = mpsc::channel::<()>();
    let (to_freer, from_owner) = mpsc::channel::<Vec<usize>>();
    let freer = thread::spawn(move || {
        let blocks = from_owner.recv().unwrap();
        for &a in &blocks {
            // SAFETY: live blocks of request 1, each freed once.
            unsafe { CoTaskMemFree(a as *mut c_void) };
        }
        to_owner.send(()).unwrap(); // freed, but still in this thread's batch
        let _ = from_owner.recv(); // request 2 has its blocks
        heap::flush_remote_frees(); // deliver the stale batch now
        to_owner.send(()).unwrap();
    });
    let g = heap::enter_scope().unwrap();
    let req1: Vec<usize> = (0..6).map(|i| addr(filled(32 + 16 * i, 0x11).cast())).collect();
    to_freer.send(req1.clone()).unwrap();
    from_freer.recv().unwrap();
    g.leave().unwrap();
    let g = heap::enter_scope().unwrap();
    let req2: Vec<usize> = (0..6).map(|i| addr(filled(32 + 16 * i, 0x22).cast())).collect();
    assert!(req2.iter().any(|a| req1.contains(a)), "the reused scope hands out request 1's addresses again");
    to_freer.send(Vec::new()).unwrap();
    from_freer.recv().unwrap();
    for (i, &a) in req2.iter().enumerate() {
        assert_eq!(heap::did_alloc(a as *const u8), 1, "request 2's block {i} is still live");
        assert_eq!(heap::size_of(a as *const u8), Some(32 + 16 * i));
        assert!(all(a as *const u8, 32 + 16 * i, 0x22), "request 2's block {i} is intact");
    }
    g.leave().unwrap();
    freer.join().unwrap();
}
