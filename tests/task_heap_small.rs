//! The task heap's small-block arena (blocks of up to 1024 bytes, `src/small.rs`), through the
//! Rust task-heap API and the C exports: bad pointers, exact sizes, zero-size blocks, reallocs
//! across the 1024-byte boundary, children of small blocks, threads, memory that stays flat.
//!
//! Every test takes `SERIAL` first, so the process-wide counters (`heap::stats`) and the
//! per-thread ones (`heap::thread_stats`) move only under the test that reads them: a test thread
//! that exits with live blocks abandons its heap, and another test's new thread could adopt it.

use core::ptr;
use napalloc::ffi::{CoTaskMemAlloc, CoTaskMemFree, CoTaskMemRealloc};
use napalloc::heap;
use std::sync::{Mutex, MutexGuard};
use std::thread;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Live blocks and bytes of this thread's heap.
fn mine() -> (u64, u64) {
    let s = heap::thread_stats();
    (s.live_blocks, s.live_bytes)
}

/// A block pointer handed to another thread.
#[derive(Clone, Copy, Debug)]
struct P(*mut u8);
// SAFETY: any thread may use and free a task-heap block.
unsafe impl Send for P {}

fn alloc(size: usize) -> *mut u8 {
    heap::alloc(size).expect("allocation").as_ptr()
}

/// SAFETY helper: free a block the test owns.
fn free(p: *mut u8) -> bool {
    // SAFETY: every caller passes a block it owns and no longer uses (or a bad pointer, which
    // the heap refuses untouched).
    unsafe { heap::free(p) }
}

#[test]
fn sizes_are_exact_and_zero_size_blocks_unique() {
    let _g = serial();
    let before = mine();
    let blocks: Vec<(*mut u8, usize)> =
        (0..=1100).step_by(7).chain([1023, 1024, 1025]).map(|n| (alloc(n), n)).collect();
    for &(p, n) in &blocks {
        assert_eq!(p as usize % 16, 0, "16-aligned");
        assert_eq!(heap::size_of(p), Some(n), "GetSize is the requested size ({n})");
        assert_eq!(heap::did_alloc(p), 1);
    }
    let bytes: u64 = blocks.iter().map(|&(_, n)| n as u64).sum();
    assert_eq!(mine(), (before.0 + blocks.len() as u64, before.1 + bytes));
    let zeros: Vec<*mut u8> = (0..100).map(|_| alloc(0)).collect();
    let mut sorted = zeros.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 100, "every zero-size block is unique");
    assert!(zeros.iter().all(|p| !p.is_null() && heap::size_of(*p) == Some(0)));
    for p in zeros.into_iter().chain(blocks.iter().map(|&(p, _)| p)) {
        assert!(free(p));
    }
    assert_eq!(mine(), before);
}

#[test]
fn bad_pointers_are_refused_and_counted() {
    let _g = serial();
    let before = mine();
    let bad0 = heap::stats().bad_pointers;
    let a = alloc(100);
    let b = alloc(100);
    // Interior pointers: inside the first granule, and a later granule of the block.
    assert!(!free(a.wrapping_add(1)));
    assert!(!free(a.wrapping_add(16)));
    assert_eq!(heap::size_of(a.wrapping_add(16)), None);
    assert_eq!(heap::did_alloc(a.wrapping_add(48)), 0);
    // A foreign pointer (a stack address) and one just past the arena's blocks.
    let mut local = 0u64;
    assert!(!free(ptr::addr_of_mut!(local).cast()));
    assert_eq!(heap::stats().bad_pointers, bad0 + 3);
    assert_eq!(mine(), (before.0 + 2, before.1 + 200), "nothing was freed");
    // A double free.
    assert!(free(a));
    assert!(!free(a));
    assert_eq!(heap::size_of(a), None);
    assert_eq!(heap::did_alloc(a), 0);
    // SAFETY: a freed pointer: refused, NULL returned.
    assert!(unsafe { heap::realloc(a, 10) }.is_null());
    assert_eq!(heap::stats().bad_pointers, bad0 + 5);
    // Freed, then reused by a block of the same class: the pointer is live again.
    let c = alloc(97);
    assert_eq!(c, a, "LIFO reuse of the class's free block");
    assert_eq!(heap::size_of(c), Some(97));
    assert!(free(b));
    assert!(free(c));
    assert_eq!(mine(), before);
    // Through the C export too.
    let d = CoTaskMemAlloc(24).cast::<u8>();
    // SAFETY: an interior pointer (refused), then the block, then a double free (refused).
    unsafe {
        CoTaskMemFree(d.wrapping_add(16).cast());
        CoTaskMemFree(d.cast());
        CoTaskMemFree(d.cast());
    }
    assert_eq!(heap::stats().bad_pointers, bad0 + 7);
    assert_eq!(mine(), before);
}

#[test]
fn realloc_moves_across_the_small_boundary_keeping_the_data() {
    let _g = serial();
    let before = mine();
    let p = CoTaskMemAlloc(40).cast::<u8>();
    // SAFETY: a live 40-byte block.
    unsafe { ptr::copy_nonoverlapping(b"0123456789abcdefghijklmnopqrstuvwxyz!?#$".as_ptr(), p, 40) };
    // SAFETY: each realloc's result replaces the pointer; the old one is not used again.
    unsafe {
        let q = CoTaskMemRealloc(p.cast(), 48).cast::<u8>();
        assert_eq!(q, p, "same number of granules: in place");
        assert_eq!(heap::size_of(q), Some(48));
        let r = CoTaskMemRealloc(q.cast(), 5000).cast::<u8>();
        assert!(!r.is_null() && r != q);
        assert_eq!(heap::size_of(r), Some(5000));
        assert_eq!(heap::size_of(q), None, "the small block was freed");
        assert_eq!(core::slice::from_raw_parts(r, 40), b"0123456789abcdefghijklmnopqrstuvwxyz!?#$");
        let s = CoTaskMemRealloc(r.cast(), 30).cast::<u8>();
        assert_eq!(heap::size_of(s), Some(30));
        assert_eq!(core::slice::from_raw_parts(s, 30), b"0123456789abcdefghijklmnopqrst");
        let t = CoTaskMemRealloc(s.cast(), 200).cast::<u8>();
        assert_eq!(heap::size_of(t), Some(200));
        assert_eq!(core::slice::from_raw_parts(t, 30), b"0123456789abcdefghijklmnopqrst");
        assert_eq!(mine(), (before.0 + 1, before.1 + 200));
        assert!(CoTaskMemRealloc(t.cast(), 0).is_null(), "size 0 frees");
    }
    assert_eq!(mine(), before);
}

#[test]
fn children_of_small_blocks() {
    let _g = serial();
    let before = mine();
    // free_tree of a small parent frees its children; free alone leaves them independent.
    let a = heap::alloc(32).unwrap();
    let c1 = heap::alloc_child(a, 16).unwrap();
    let c2 = heap::alloc_child(a, 2000).unwrap();
    assert_eq!(mine(), (before.0 + 3, before.1 + 2048), "the proxy of `a` is not a user block");
    // SAFETY: live blocks, freed once (with their tree).
    assert!(unsafe { heap::free_tree(a.as_ptr()) });
    assert_eq!((heap::did_alloc(c1.as_ptr()), heap::did_alloc(c2.as_ptr())), (0, 0));
    assert_eq!(mine(), before);
    let b = heap::alloc(32).unwrap();
    let c = heap::alloc_child(b, 64).unwrap();
    assert!(free(b.as_ptr()));
    assert_eq!(heap::size_of(c.as_ptr()), Some(64), "independent after its parent's free");
    assert!(free(c.as_ptr()));
    // A small parent reallocated past 1024 bytes keeps its children.
    let d = heap::alloc(100).unwrap();
    let e = heap::alloc_child(d, 8).unwrap();
    // SAFETY: live; the old pointer is not used after the move.
    let d2 = unsafe { heap::realloc(d.as_ptr(), 3000) };
    assert_eq!(heap::size_of(d2), Some(3000));
    // And a small parent reallocated to another small class keeps them too.
    let f = heap::alloc(100).unwrap();
    let g = heap::alloc_child(f, 8).unwrap();
    // SAFETY: as above.
    let f2 = unsafe { heap::realloc(f.as_ptr(), 500) };
    assert_eq!(heap::size_of(f2), Some(500));
    // SAFETY: live, freed once with their trees.
    unsafe {
        assert!(heap::free_tree(d2));
        assert!(heap::free_tree(f2));
    }
    assert_eq!((heap::did_alloc(e.as_ptr()), heap::did_alloc(g.as_ptr())), (0, 0), "freed with their parents");
    assert_eq!(mine(), before);
    // A freed small block cannot get children.
    let h = heap::alloc(16).unwrap();
    assert!(free(h.as_ptr()));
    assert!(heap::alloc_child(h, 8).is_none());
}

#[test]
fn other_threads_free_and_query_small_blocks() {
    let _g = serial();
    let before = mine();
    let blocks: Vec<P> = (0..200).map(|i| P(alloc(i % 300))).collect();
    let addrs: Vec<usize> = blocks.iter().map(|b| b.0 as usize).collect();
    thread::spawn(move || {
        for (i, &P(p)) in blocks.iter().enumerate() {
            assert_eq!(heap::size_of(p), Some(i % 300), "a foreign query");
            if i % 10 == 0 {
                // SAFETY: handed over; a foreign realloc stays in the block's own heap.
                let q = unsafe { heap::realloc(p, 2000) };
                assert_eq!(heap::size_of(q), Some(2000));
                assert!(free(q));
            } else {
                assert!(free(p));
            }
        }
        heap::flush_remote_frees();
    })
    .join()
    .unwrap();
    heap::heap_minimize(); // drains the queued frees
    assert_eq!(mine(), before);
    for a in addrs {
        assert_eq!(heap::did_alloc(a as *const u8), 0);
    }
}

#[test]
fn small_blocks_outlive_their_thread() {
    let _g = serial();
    let live0 = heap::stats().live_blocks;
    let blocks: Vec<P> = thread::spawn(|| {
        (0..100)
            .map(|i| {
                let p = alloc(i * 5);
                // SAFETY: a fresh block of i * 5 bytes.
                unsafe { p.write_bytes(i as u8, i * 5) };
                P(p)
            })
            .collect()
    })
    .join()
    .unwrap();
    assert_eq!(heap::stats().live_blocks, live0 + 100);
    for (i, &P(p)) in blocks.iter().enumerate() {
        assert_eq!(heap::size_of(p), Some(i * 5));
        // SAFETY: a live block of i * 5 bytes, written by its thread.
        assert!(unsafe { core::slice::from_raw_parts(p, i * 5) }.iter().all(|&b| b == i as u8));
        assert!(free(p));
    }
    heap::flush_remote_frees();
    assert_eq!(heap::stats().live_blocks, live0);
    // Frees into another heap are validated where they land: a double free is refused there
    // (and counted), not here.
    let bad0 = heap::stats().bad_pointers;
    for &P(p) in &blocks[1..] {
        free(p);
    }
    heap::flush_remote_frees();
    heap::heap_minimize();
    assert_eq!(heap::stats().bad_pointers, bad0 + 99);
    assert_eq!(heap::stats().live_blocks, live0);
}

#[test]
fn mixed_cycles_keep_committed_memory_flat() {
    let _g = serial();
    let before = mine();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut slots: Vec<*mut u8> = (0..64).map(|_| ptr::null_mut()).collect();
    let mut committed = 0;
    for i in 0..400_000u32 {
        let r = next();
        let slot = &mut slots[(r % 64) as usize];
        free(*slot); // NULL the first time: nothing
        *slot = alloc(((r >> 8) % 1025) as usize);
        if i == 40_000 {
            committed = heap::thread_stats().committed_bytes;
        }
    }
    let end = heap::thread_stats().committed_bytes;
    // Each class's free list serves its class, so the arena grows only while a class reaches a
    // new most-live count: after the warm-up, at most one more commit chunk (64 KiB of data and
    // its map) in ten times as many cycles.
    assert!(end <= committed + (80 << 10), "committed {committed} after the warm-up, {end} at the end");
    for p in slots {
        assert!(free(p));
    }
    assert_eq!(mine(), before);
}

#[test]
fn an_overrun_does_not_corrupt_the_books_and_minimize_gives_pages_back() {
    let _g = serial();
    let before = mine();
    let bad0 = heap::stats().bad_pointers;
    let blocks: Vec<*mut u8> = (0..64).map(|_| alloc(20)).collect();
    // Overrun blocks by 28 bytes (their 32-byte slot's padding and the first 16 bytes of the
    // next block): a user bug, but the sizes and free lists live out of line. Only blocks whose
    // next block directly follows them (fresh granules are handed out in order) are overrun.
    let mut overrun = 0;
    for w in blocks.windows(2) {
        if w[1] as usize == w[0] as usize + 32 {
            // SAFETY: 48 bytes from w[0] are w[0]'s slot and the start of the live block w[1],
            // both owned by this test.
            unsafe { w[0].write_bytes(0xAB, 48) };
            overrun += 1;
        }
    }
    assert!(overrun >= 32, "only {overrun} adjacent pairs");
    for &p in &blocks {
        assert_eq!(heap::size_of(p), Some(20), "sizes are out of line");
        assert!(free(p));
    }
    assert_eq!(mine(), before);
    assert_eq!(heap::stats().bad_pointers, bad0, "every free was accepted");
    // The free lists are intact: the blocks come back, each exactly once.
    let mut again: Vec<*mut u8> = (0..64).map(|_| alloc(30)).collect();
    let mut a = again.clone();
    a.sort();
    let mut b = blocks.clone();
    b.sort();
    assert_eq!(a, b, "the same 64 slots, each once");
    for p in again.drain(..) {
        assert!(free(p));
    }
    // With no live block left in this thread's heap (every test frees what it allocates),
    // heap_minimize gives the small arena's pages back.
    assert_eq!(mine(), (0, 0));
    let c0 = heap::thread_stats().committed_bytes;
    heap::heap_minimize();
    let c1 = heap::thread_stats().committed_bytes;
    assert!(c1 < c0, "committed {c0} before HeapMinimize, {c1} after");
    let p = alloc(64);
    assert_eq!(heap::size_of(p), Some(64), "the arena works after the trim");
    assert!(free(p));
}

#[test]
fn scopes_do_not_use_the_small_arena() {
    let _g = serial();
    let before = mine();
    let outer = alloc(64);
    let leaked = heap::scope(|| {
        let p = CoTaskMemAlloc(64).cast::<u8>();
        assert_eq!(heap::size_of(p), Some(64));
        assert_eq!(mine(), (1, 64), "the scope's own heap");
        p as usize
    })
    .unwrap();
    assert_eq!(heap::did_alloc(leaked as *const u8), 0, "freed with the scope");
    assert_eq!(heap::size_of(outer), Some(64));
    assert!(free(outer));
    assert_eq!(mine(), before);
}

/// A proxy (the region block that carries a small block's children) may take the slot of a
/// region block the caller freed. A second free, a realloc, a query or a child of that stale
/// pointer must then be refused as freed, not reach the proxy (which would drop the children's
/// parent link or free them).
#[test]
fn a_stale_pointer_to_a_slot_a_proxy_took_is_refused() {
    let _g = serial();
    let (blocks0, _) = mine();
    let bad0 = heap::stats().bad_pointers;
    // A region block of the proxies' size class, freed: its slot waits for reuse.
    let a = alloc(16);
    let stale = heap::alloc_child(core::ptr::NonNull::new(a).unwrap(), 0).expect("a child").as_ptr();
    let stale_size = heap::size_of(stale);
    assert_eq!(stale_size, Some(0));
    assert!(free(stale));
    // A small block's first child makes a proxy, which may reuse that slot.
    let b = alloc(24);
    let kid = heap::alloc_child(core::ptr::NonNull::new(b).unwrap(), 40).expect("a child").as_ptr();
    assert_eq!((heap::size_of(b), heap::size_of(kid)), (Some(24), Some(40)));
    // Every use of the stale pointer is refused and leaves the books and the tree alone.
    assert_eq!(heap::size_of(stale), None, "a freed block (or a proxy) has no size");
    assert!(!free(stale), "a double free is refused");
    assert!(heap::alloc_child(core::ptr::NonNull::new(stale).unwrap(), 8).is_none());
    // SAFETY: a bad pointer is refused untouched (NULL back, the heap unchanged).
    assert!(unsafe { CoTaskMemRealloc(stale.cast(), 64) }.is_null());
    assert_eq!(mine().0, blocks0 + 3, "a, b and b's child");
    assert_eq!(heap::size_of(kid), Some(40), "b's child still hangs under b");
    assert!(heap::stats().bad_pointers >= bad0 + 2);
    // b's tree still frees its child; a frees alone.
    // SAFETY: live, unused.
    assert!(unsafe { heap::free_tree(b) });
    assert_eq!(heap::size_of(kid), None, "freed with its parent");
    assert!(free(a));
    assert_eq!(mine().0, blocks0);
    // With no proxy left, the fast paths serve again (and the heap still works).
    let c = alloc(32);
    assert!(free(c));
}
