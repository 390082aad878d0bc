//! Memory-load notifications never run while napalloc holds a lock: the task heap commits and
//! decommits under its heap lock, and the process-wide budget's notify hook, which the marks
//! crossed by those commits and decommits fire, is called after the lock is released, so the
//! hook itself can allocate from the task heap. Alone in its binary: it sets the process-wide
//! budget and its hook.

use core::sync::atomic::{AtomicBool, Ordering};
use napalloc::ffi::{CoTaskMemAlloc, CoTaskMemFree};
use napalloc::host::{global_budget, set_budget, MemoryAvailable};
use napalloc::{heap, hr};
use std::sync::{Arc, Mutex};

#[test]
fn the_notify_hook_runs_outside_the_heap_lock_and_may_allocate() {
    // SAFETY: a fresh block, freed once (this thread's heap exists from here on).
    unsafe { CoTaskMemFree(CoTaskMemAlloc(8)) };
    heap::heap_minimize();

    // What the hook saw: the notification, and whether an allocation from inside it succeeded.
    let seen: Arc<Mutex<Vec<(MemoryAvailable, bool)>>> = Arc::default();
    let inside = Arc::new(AtomicBool::new(false));
    let (s, i) = (Arc::clone(&seen), Arc::clone(&inside));
    global_budget().set_notify(Box::new(move |m| {
        assert!(!i.swap(true, Ordering::SeqCst), "the hook is not re-entered");
        let p = CoTaskMemAlloc(64);
        // SAFETY: a fresh block (or NULL), freed once.
        unsafe { CoTaskMemFree(p) };
        s.lock().unwrap().push((m, !p.is_null()));
        i.store(false, Ordering::SeqCst);
    }));

    let soft = global_budget().committed() + (4 << 20);
    assert_eq!(set_budget(soft, soft), hr::S_OK);
    assert!(seen.lock().unwrap().is_empty(), "below the marks: nothing sent");

    // Another thread commits past 90 % of the soft limit (each block needs fresh pages, committed
    // under its heap's lock) and ends, leaving its blocks to this thread.
    let blocks = std::thread::spawn(|| {
        let mut blocks = Vec::new();
        while global_budget().stats().pressure == MemoryAvailable::High {
            let p = CoTaskMemAlloc(256 << 10);
            assert!(!p.is_null(), "{:?}", global_budget().stats());
            blocks.push(p as usize);
            assert!(blocks.len() < 64);
        }
        blocks
    })
    .join()
    .unwrap();
    assert_eq!(seen.lock().unwrap()[0], (MemoryAvailable::Low, true), "Low, and the hook's allocation succeeded");

    // Free them, and give the pages back (decommits under the lock): below 50 %, High.
    for p in blocks {
        // SAFETY: each block is freed once.
        unsafe { CoTaskMemFree(p as *mut core::ffi::c_void) };
    }
    heap::heap_minimize();
    assert_eq!(global_budget().stats().pressure, MemoryAvailable::High);
    assert_eq!(
        *seen.lock().unwrap(),
        [(MemoryAvailable::Low, true), (MemoryAvailable::High, true)],
        "High, and the hook's allocation succeeded"
    );
    assert_eq!(global_budget().stats().notifications, 2);
    global_budget().clear_notify();
    assert_eq!(set_budget(0, 0), hr::S_OK);
}
