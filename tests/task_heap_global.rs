//! The task heap's process-wide books: alone in this binary (one `#[test]`), so that nothing
//! else allocates while they are checked exactly.
//!
//! * blocks outlive their thread, and any thread can free them afterwards;
//! * thread churn: short-lived threads adopt the heaps of the ones that exited, so reserved
//!   address space does not grow with the number of threads;
//! * an abandoned heap whose last block is freed gives its pages back;
//! * request scopes balance the books.

use core::ffi::c_void;
use napalloc::ffi::{CoTaskMemAlloc, CoTaskMemFree};
use napalloc::heap;
use std::thread;

fn live() -> (u64, u64) {
    let s = heap::stats();
    (s.live_blocks, s.live_bytes)
}

fn alloc(n: usize) -> usize {
    let p = CoTaskMemAlloc(n);
    assert!(!p.is_null());
    // SAFETY: a fresh block of n bytes.
    unsafe { p.cast::<u8>().write_bytes(0x5C, n) };
    p as usize
}

fn free(a: usize) {
    // SAFETY: callers free each block once.
    unsafe { CoTaskMemFree(a as *mut c_void) };
}

#[test]
fn process_wide_books() {
    // Warm up: this thread's heap exists.
    free(alloc(8));
    let start = live();
    assert_eq!(start, (0, 0), "nothing is live before the test");

    // 1. Blocks outlive their thread; another thread and this one free them.
    let blocks: Vec<usize> = thread::spawn(|| (0..100).map(|i| alloc(32 + i)).collect()).join().unwrap();
    assert_eq!(live(), (100, (0..100).map(|i| 32 + i as u64).sum()));
    for (i, &a) in blocks.iter().enumerate() {
        assert_eq!(heap::did_alloc(a as *const u8), 1, "still valid after its thread exited");
        assert_eq!(heap::size_of(a as *const u8), Some(32 + i));
    }
    let trims_before = heap::stats().trims;
    let (here, there) = blocks.split_at(50);
    here.iter().copied().for_each(free);
    let there = there.to_vec();
    thread::spawn(move || there.into_iter().for_each(free)).join().unwrap();
    for &a in &blocks {
        assert_eq!(heap::did_alloc(a as *const u8), 0);
    }
    assert_eq!(live(), start, "every block of the exited thread was freed");
    assert!(heap::stats().trims > trims_before, "the emptied abandoned heap gave its pages back");
    assert_eq!(heap::stats().bad_pointers, 0, "no free was refused");

    // 2. Thread churn: 100 short-lived threads, some leaving blocks for this thread to free.
    let threads = if cfg!(miri) { 8 } else { 100 };
    let reserved_before = heap::stats().reserved_bytes;
    let mut leftovers = Vec::new();
    for t in 0..threads {
        let left = thread::spawn(move || {
            let mut mine: Vec<usize> = (0..50).map(|i| alloc(16 + (i * 7 + t) % 300)).collect();
            let keep = mine.split_off(45);
            mine.into_iter().for_each(free);
            keep
        })
        .join()
        .unwrap();
        leftovers.extend(left);
    }
    assert_eq!(live().0, 5 * threads as u64);
    let reserved_after = heap::stats().reserved_bytes;
    // One thread at a time: each adopts the heap the previous one abandoned. Allow for one
    // more heap than before (the first thread may find none abandoned), not one per thread.
    let per_heap = reserved_before.max(1) / 2;
    assert!(
        reserved_after <= reserved_before + per_heap,
        "reserved grew from {reserved_before} to {reserved_after} over {threads} threads"
    );
    leftovers.into_iter().for_each(free);
    assert_eq!(live(), start);

    // 3. Request scopes balance the books: leaked blocks are gone after leave.
    let outside = alloc(100);
    for round in 0..20 {
        heap::scope(|| {
            for i in 0..50 {
                let a = alloc(16 + i + round);
                if i % 3 == 0 {
                    free(a); // some freed, the rest leaked on purpose
                }
            }
            let s = heap::stats();
            assert_eq!(s.live_blocks, 1 + 33, "the scope's blocks count while it is active");
        })
        .unwrap();
        assert_eq!(live(), (1, 100), "round {round}: the scope's leaks are gone");
    }
    free(outside);
    assert_eq!(live(), start);

    // 4. HeapMinimize gives committed memory back and keeps the books.
    let committed_before = heap::stats().committed_bytes;
    let big: Vec<usize> = (0..64).map(|_| alloc(64 * 1024)).collect();
    assert!(heap::stats().committed_bytes >= committed_before + 64 * 64 * 1024);
    big.into_iter().for_each(free);
    heap::heap_minimize();
    let s = heap::stats();
    assert!(s.committed_bytes < committed_before + 64 * 64 * 1024, "HeapMinimize decommitted the freed pages");
    assert_eq!((s.live_blocks, s.live_bytes), start);
    assert_eq!(s.bad_pointers, 0);

    // 5. A free into a heap no thread owns is done at once, so its answer is the free's own: a
    // stale, double or interior pointer is refused (`false`) and counted, not reported as queued.
    //    a) An abandoned heap (its thread exited with blocks live).
    let kept: Vec<usize> = thread::spawn(|| (0..3).map(|_| alloc(64)).collect()).join().unwrap();
    // SAFETY: a live block of the exited thread, freed once.
    assert!(unsafe { heap::free(kept[0] as *mut u8) }, "a live block is freed");
    for (q, what) in [(kept[0], "freed"), (kept[1] + 32, "interior")] {
        let bad = heap::stats().bad_pointers;
        // SAFETY: not a block start: refused untouched.
        assert!(!unsafe { heap::free(q as *mut u8) }, "free of a {what} pointer");
        // SAFETY: as above.
        assert!(!unsafe { heap::free_tree(q as *mut u8) }, "free_tree of a {what} pointer");
        assert_eq!(heap::stats().bad_pointers, bad + 2, "both refusals are counted");
    }
    assert_eq!(live(), (2, 128), "the other blocks of the abandoned heap are untouched");
    for &a in &kept[1..] {
        // SAFETY: live blocks, freed once.
        assert!(unsafe { heap::free_tree(a as *mut u8) });
    }
    //    b) An idle scope heap: the blocks of a left scope are gone with its reset.
    let (left, leaked) = thread::spawn(|| {
        let g = heap::enter_scope().unwrap();
        let a = alloc(0);
        let b = alloc(220);
        g.leave().unwrap();
        // SAFETY: blocks of the scope that was left: refused untouched.
        let answers = unsafe { (heap::free_tree(a as *mut u8), heap::free(b as *mut u8)) };
        (answers, b)
    })
    .join()
    .unwrap();
    assert_eq!(left, (false, false), "frees of a left scope's blocks in that thread are refused");
    let bad = heap::stats().bad_pointers;
    // SAFETY: the scope's heap is idle now (its thread exited); the block went with its reset.
    assert!(!unsafe { heap::free(leaked as *mut u8) }, "and from another thread too");
    assert_eq!(heap::stats().bad_pointers, bad + 1);
    assert_eq!(live(), start);
}
