//! A host page source that calls back into the task heap from inside a reserve or a commit (as
//! user code may): the nested calls fail cleanly (an allocation gets NULL, a free is done later)
//! and nothing is corrupted. Alone in its binary: it installs a process-wide host.

mod common;

use common::FaultySource;
use core::ptr::NonNull;
use napalloc::heap;
use napalloc::host::{set_default_host, HostSource, PageSource};
use napalloc::{CriticalLevel, Error};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug)]
struct CallsBack {
    inner: FaultySource,
    armed: AtomicBool,
    /// A block for the nested call to free (0: none).
    victim: AtomicUsize,
    /// Per nested call: (did the nested allocation succeed, did the nested free report a free).
    nested: Mutex<Vec<(bool, bool)>>,
}

impl CallsBack {
    fn call_back(&self) {
        if !self.armed.load(Ordering::SeqCst) {
            return;
        }
        let got = heap::alloc(64);
        let victim = self.victim.swap(0, Ordering::SeqCst);
        // SAFETY: the victim is a live block the test gave up for this purpose.
        let freed = victim != 0 && unsafe { heap::free(victim as *mut u8) };
        self.nested.lock().unwrap().push((got.is_some(), freed));
    }
}

impl PageSource for CallsBack {
    fn reserve(&self, len: usize, level: CriticalLevel) -> Result<NonNull<u8>, Error> {
        self.call_back();
        self.inner.reserve(len, level)
    }
    fn commit(&self, addr: NonNull<u8>, len: usize, level: CriticalLevel) -> Result<(), Error> {
        self.call_back();
        self.inner.commit(addr, len, level)
    }
    fn decommit(&self, addr: NonNull<u8>, len: usize) -> Result<(), Error> {
        self.inner.decommit(addr, len)
    }
    fn release(&self, base: NonNull<u8>, len: usize) -> Result<(), Error> {
        self.inner.release(base, len)
    }
}

#[test]
fn nested_calls_from_a_page_source_fail_cleanly() {
    let inner = FaultySource::new(1, u64::MAX);
    inner.enabled.store(false, Ordering::SeqCst);
    let host = Arc::new(CallsBack {
        inner,
        armed: AtomicBool::new(true),
        victim: AtomicUsize::new(0),
        nested: Mutex::new(Vec::new()),
    });
    set_default_host(Some(HostSource::new(host.clone())));

    // A fresh thread: its heap is created now, from the host (reserve calls back at once).
    let h = host.clone();
    std::thread::spawn(move || {
        let first = heap::alloc(100).expect("the outer allocation succeeds");
        assert!(!h.nested.lock().unwrap().is_empty(), "creating the heap called the host");
        assert!(h.nested.lock().unwrap().iter().all(|&(got, _)| !got), "nested allocations fail");

        // A commit (a block bigger than what is committed) calls back with a victim to free.
        let victim = heap::alloc(48).unwrap();
        // SAFETY: fresh block of 48 bytes.
        unsafe { victim.as_ptr().write_bytes(0xEE, 48) };
        h.victim.store(victim.as_ptr() as usize, Ordering::SeqCst);
        let calls = h.nested.lock().unwrap().len();
        let big = heap::alloc(8 << 20).expect("the outer allocation succeeds");
        // SAFETY: a fresh block of 8 MiB: all of it is committed and writable.
        unsafe { big.as_ptr().write_bytes(1, 8 << 20) };
        let nested = h.nested.lock().unwrap().clone();
        assert!(nested.len() > calls, "the commit called the host");
        assert!(nested.iter().all(|&(got, _)| !got), "nested allocations fail");
        assert!(nested[calls..].iter().any(|&(_, freed)| freed), "the nested free was accepted");
        h.armed.store(false, Ordering::SeqCst);

        // The deferred free happens at the next operation of the heap; the books balance.
        let s = heap::thread_stats();
        assert_eq!(heap::did_alloc(victim.as_ptr()), 0, "the nested free was done afterwards");
        assert_eq!((s.live_blocks, s.live_bytes), (2, 100 + (8 << 20)));
        assert_eq!(heap::size_of(first.as_ptr()), Some(100));
        // SAFETY: both live, freed once.
        unsafe {
            assert!(heap::free(big.as_ptr()));
            assert!(heap::free(first.as_ptr()));
        }
        assert_eq!(heap::thread_stats().live_blocks, 0);
    })
    .join()
    .unwrap();
    assert!(host.inner.tracker.violations().is_empty(), "{:?}", host.inner.tracker.violations());
    set_default_host(None);
}
