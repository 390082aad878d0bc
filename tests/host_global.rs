//! The process-wide default source, budget and C host installation. One test in its own binary:
//! it changes process-wide state.

mod common;

use common::{FakeHost, FAKE_LOAD, FAKE_VTBL_NO_FREE};
use core::alloc::Layout;
use core::sync::atomic::{AtomicUsize, Ordering};
use napalloc::host::{
    default_host, default_source, global_budget, reset_host_failure, set_budget, set_host_memory_manager,
    MemoryAvailable,
};
use napalloc::hr;
use napalloc::{CriticalLevel, Error, PageArena, Region};
use std::sync::Arc;

#[test]
fn process_wide_host_and_budget() {
    // Before anything is installed: the OS, charged to an unlimited global budget.
    let src = default_source();
    assert!(src.is_os());
    assert!(Arc::ptr_eq(src.budget().unwrap(), global_budget()));
    assert_eq!(global_budget().soft_limit(), usize::MAX);

    let page = napalloc::os::page_size();
    let build = |level| {
        PageArena::builder().reserve(1 << 20).commit_chunk(page).critical_level(level).source(default_source()).build()
    };
    let os_arena = build(CriticalLevel::Task).unwrap();
    os_arena.alloc_layout(Layout::from_size_align(page, page).unwrap()).unwrap();
    assert_eq!(global_budget().committed(), page);

    // set_budget: 0 is "no limit"; soft > hard is refused
    assert_eq!(set_budget(3 * page, 2 * page), hr::E_INVALIDARG);
    assert_eq!(set_budget(2 * page, 3 * page), hr::S_OK);
    assert_eq!((global_budget().soft_limit(), global_budget().hard_limit()), (2 * page, 3 * page));
    assert_eq!(set_budget(0, 4 * page), hr::S_OK);
    assert_eq!((global_budget().soft_limit(), global_budget().hard_limit()), (4 * page, 4 * page));
    assert_eq!(set_budget(0, 0), hr::S_OK);
    assert_eq!(global_budget().hard_limit(), usize::MAX);

    // A host whose vtable lacks a method napalloc calls is refused, and nothing changes.
    let bad = FakeHost::with_vtbl(&FAKE_VTBL_NO_FREE);
    // SAFETY: a live fake host.
    let h = unsafe { set_host_memory_manager(bad.cast()) };
    assert_eq!(h, hr::E_INVALIDARG);
    assert!(default_source().is_os());
    // SAFETY: our reference from `with_vtbl`; napalloc took none.
    assert_eq!(unsafe { FakeHost::release(bad) }, 0);

    // Install a C host.
    let fake_ptr = FakeHost::create();
    // SAFETY: the test holds its reference until the end.
    let fake = unsafe { &*fake_ptr };
    // SAFETY: a live, free-threaded fake host with a full vtable.
    let h = unsafe { set_host_memory_manager(fake_ptr.cast()) };
    assert_eq!(h, hr::S_OK);
    assert_eq!(fake.refs(), 2);
    assert_eq!(fake.registrations.load(Ordering::Relaxed), 1);
    assert!(fake.has_callback());
    let src = default_source();
    assert!(!src.is_os());
    assert_eq!(src.memory_load().unwrap(), FAKE_LOAD);

    let host_arena = build(CriticalLevel::AppDomain).unwrap();
    let p = host_arena.alloc_layout(Layout::from_size_align(10_000, 8).unwrap()).unwrap();
    assert!(fake.tracker.owns_committed(p.as_ptr(), 10_000), "new regions take pages from the host");
    assert_eq!(fake.tracker.committed_bytes(), host_arena.stats().committed);
    assert_eq!(
        global_budget().committed(),
        page + host_arena.stats().committed,
        "both sources charge the global budget"
    );

    // Region::new() and PageArena::new() default to the same source: the installed host, under
    // the global budget.
    {
        let before = global_budget().committed();
        let region = Region::new().unwrap();
        let b = region.alloc(Layout::from_size_align(5_000, 16).unwrap()).unwrap();
        assert!(fake.tracker.owns_committed(b.as_ptr(), 5_000), "Region::new() takes pages from the host");
        let arena = PageArena::new().unwrap();
        let a = arena.alloc_layout(Layout::from_size_align(3_000, 8).unwrap()).unwrap();
        assert!(fake.tracker.owns_committed(a.as_ptr(), 3_000), "PageArena::new() takes pages from the host");
        let charged = region.stats().committed + arena.stats().committed;
        assert!(charged >= 8_000);
        assert!(global_budget().committed() >= before + charged, "both are charged to the global budget");
        drop(region);
        drop(arena);
        assert_eq!(global_budget().committed(), before, "dropping them gives their pages back");
    }

    // The host's Low notification reaches the global budget's trimmer.
    let trims = Arc::new(AtomicUsize::new(0));
    let t = Arc::clone(&trims);
    global_budget().set_trimmer(Box::new(move |_| {
        t.fetch_add(1, Ordering::Relaxed);
        0
    }));
    assert_eq!(fake.notify(MemoryAvailable::Low as i32), hr::S_OK);
    assert_eq!(trims.load(Ordering::Relaxed), 1);

    // E_FAIL from the host fails the default host until reset_host_failure.
    assert_eq!(reset_host_failure(), hr::S_FALSE);
    fake.fail_next(hr::E_FAIL);
    let big = Layout::from_size_align(300 * 1024, 8).unwrap();
    assert_eq!(host_arena.alloc_layout(big).unwrap_err(), Error::Host(hr::E_FAIL));
    assert!(default_host().unwrap().is_failed());
    assert_eq!(build(CriticalLevel::Process).unwrap_err(), Error::Host(hr::HOST_E_CLRNOTAVAILABLE));
    assert_eq!(reset_host_failure(), hr::S_OK);
    host_arena.alloc_layout(big).unwrap();
    assert_eq!(global_budget().stats().host_errors.fail, 1);

    // NULL: back to the OS for new regions; the existing region keeps its host.
    // SAFETY: NULL is allowed.
    let h = unsafe { set_host_memory_manager(core::ptr::null_mut()) };
    assert_eq!(h, hr::S_OK);
    assert!(default_source().is_os());
    assert_eq!(fake.refs(), 2, "the live region (and `src`) still hold the host");
    drop(src);
    assert_eq!(fake.refs(), 2, "the live region still holds the host");
    drop(host_arena);
    assert_eq!(fake.refs(), 1, "the last region gave the host back");
    assert_eq!(fake.tracker.live_reservations(), 0);
    assert_eq!(fake.tracker.violations(), Vec::<String>::new());
    drop(os_arena);
    assert_eq!(global_budget().committed(), 0);

    // SAFETY: the test's own reference, given up once.
    unsafe { FakeHost::release(fake_ptr) };
}
