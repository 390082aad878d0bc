//! The host memory layer driven through real arenas: budgets with concurrent committers, fault
//! injection with every host HRESULT, address-space notifications, and a fake C-style
//! `IHostMemoryManager` COM object.

mod common;

use common::{FakeHost, FaultySource, Rng, Tracker, FAKE_LOAD, FAKE_VTBL_MINIMAL, FAKE_VTBL_NO_FREE, HOST_HRESULTS};
use core::alloc::Layout;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};
use napalloc::host::com::{ComHostMemoryManager, E_NOTIMPL};
use napalloc::host::{Budget, HostSource, MemoryAvailable, PageSource, Source, FAILED_SOURCE_HRESULT};
use napalloc::hr::{self, HRESULT};
use napalloc::{CriticalLevel, Error, PageArena};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

const KIB: usize = 1024;

fn arena(source: &Source, level: CriticalLevel) -> Result<PageArena, Error> {
    PageArena::builder().reserve(256 * KIB).commit_chunk(8 * KIB).critical_level(level).source(source.clone()).build()
}

// ---------------------------------------------------------------------------------------------
// Budget shared by arenas on several threads.

#[test]
fn budget_over_concurrent_arenas_balances_and_never_passes_hard() {
    let page = napalloc::os::page_size();
    let (soft, hard) = (96 * page, 128 * page);
    let budget = Budget::new(soft, hard).unwrap();
    let source = Source::os().with_budget(Arc::clone(&budget));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let source = source.clone();
            std::thread::spawn(move || {
                let level = CriticalLevel::ALL[t as usize % 3];
                let mut a = PageArena::builder()
                    .reserve(1 << 20)
                    .commit_chunk(page)
                    .critical_level(level)
                    .source(source)
                    .build()
                    .unwrap();
                let mut rng = Rng::new(t + 7);
                let mut refused = 0;
                for _ in 0..3000 {
                    match rng.below(20) {
                        0 => a.reset(),
                        1 => {
                            a.trim(0).unwrap();
                        }
                        _ => match a
                            .alloc_layout(Layout::from_size_align(1 + rng.below(3 * page as u64) as usize, 8).unwrap())
                        {
                            Ok(_) => {}
                            Err(Error::LimitExceeded) => refused += 1,
                            Err(Error::ReservationExhausted) => a.reset(),
                            Err(e) => panic!("unexpected {e:?}"),
                        },
                    }
                }
                (a, refused)
            })
        })
        .collect();
    let results: Vec<(PageArena, u64)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let live: usize = results.iter().map(|(a, _)| a.stats().committed).sum();
    let s = budget.stats();
    assert_eq!(s.committed, live, "the budget holds exactly what the arenas committed");
    assert!(s.peak <= hard, "{s:?}");
    assert!(results.iter().map(|r| r.1).sum::<u64>() > 0, "the workload reached the limits: {s:?}");
    assert_eq!(s.failures.iter().sum::<u64>(), results.iter().map(|r| r.1).sum::<u64>());
    drop(results);
    assert_eq!(budget.committed(), 0, "dropping the arenas credits everything");
}

#[test]
fn each_level_past_the_soft_limit_through_arenas() {
    let page = napalloc::os::page_size();
    let budget = Budget::new(8 * page, 12 * page).unwrap();
    let source = Source::os().with_budget(Arc::clone(&budget));
    // An arena that commits exactly one page (its first chunk) for its first block.
    let one_page = |level| -> Result<PageArena, Error> {
        let a = PageArena::builder()
            .reserve(64 * KIB)
            .commit_chunk(page)
            .critical_level(level)
            .source(source.clone())
            .build()?;
        a.alloc_layout(Layout::from_size_align(page, page).unwrap())?;
        assert_eq!(a.stats().committed, page);
        Ok(a)
    };

    // idle arenas holding 6 pages, which the trimmer may give back
    let idle: Vec<PageArena> = (0..6).map(|_| one_page(CriticalLevel::Task).unwrap()).collect();
    let idle = Arc::new(Mutex::new(idle));
    for a in idle.lock().unwrap().iter_mut() {
        a.reset();
    }
    // Weak: the arenas hold the budget, and the budget keeps its trimmers until it is dropped.
    let trimmer_idle = Arc::downgrade(&idle);
    budget.set_trimmer(Box::new(move |_wanted| match trimmer_idle.upgrade().as_deref().map(Mutex::try_lock) {
        Some(Ok(mut arenas)) => arenas.iter_mut().map(|a| a.trim(0).unwrap_or(0)).sum(),
        _ => 0, // gone, or busy: never block
    }));
    let idle_committed = || idle.lock().unwrap().iter().map(|a| a.stats().committed).sum::<usize>();

    let mut held = vec![one_page(CriticalLevel::Task).unwrap(), one_page(CriticalLevel::Task).unwrap()];
    assert_eq!(budget.committed(), 8 * page, "at the soft limit");
    assert_eq!(one_page(CriticalLevel::Task).unwrap_err(), Error::LimitExceeded, "task: fails at once");
    assert_eq!(budget.stats().trims, 0);
    assert_eq!(idle_committed(), 6 * page, "nothing was trimmed for a task request");

    held.push(one_page(CriticalLevel::AppDomain).unwrap());
    let s = budget.stats();
    assert_eq!(
        (s.trims, s.bytes_trimmed, s.committed),
        (1, 6 * page as u64, 3 * page),
        "app domain: trimmed, retried: {s:?}"
    );
    assert_eq!(idle_committed(), 0);
    for _ in 0..5 {
        held.push(one_page(CriticalLevel::AppDomain).unwrap());
    }
    assert_eq!(one_page(CriticalLevel::AppDomain).unwrap_err(), Error::LimitExceeded, "nothing left to trim");
    assert_eq!(budget.committed(), 8 * page);

    for _ in 0..4 {
        held.push(one_page(CriticalLevel::Process).unwrap()); // the reserve: 8 -> 12 pages
    }
    assert_eq!(one_page(CriticalLevel::Process).unwrap_err(), Error::LimitExceeded, "never past hard");
    let s = budget.stats();
    assert_eq!((s.committed, s.peak, s.reserve_uses, s.trims), (12 * page, 12 * page, 4, 7), "{s:?}");
    assert_eq!(s.failures, [1, 1, 1]);
    drop(held);
    drop(idle);
    drop(source);
    assert_eq!(budget.committed(), 0);
    assert_eq!(Arc::strong_count(&budget), 1, "nothing else holds the budget: it and its arenas are freed");
}

// ---------------------------------------------------------------------------------------------
// Fault injection.

fn allowed(e: Error) -> bool {
    matches!(e, Error::Host(h) if HOST_HRESULTS.contains(&h) || h == FAILED_SOURCE_HRESULT)
}

/// Coverage collected over the seeds, so that the test proves it exercised what it claims.
#[derive(Default, Debug)]
struct Coverage {
    errors: u64,
    allocs: u64,
    fails_entered: u64,
    refused_while_failed: u64,
    parked: u64,
    injected: [u64; 6],
}

fn fault_workload(seed: u64, cov: &mut Coverage) {
    let faulty = Arc::new(FaultySource::new(seed, 7));
    let host = HostSource::new(Arc::clone(&faulty) as Arc<dyn PageSource>);
    let budget = Budget::unlimited();
    let source = Source::from_host(Arc::clone(&host)).with_budget(Arc::clone(&budget));
    let mut rng = Rng::new(seed ^ 0xABCD_EF01);
    let mut arenas: Vec<Option<PageArena>> = (0..4).map(|_| None).collect();

    for step in 0..2500 {
        let slot = rng.below(arenas.len() as u64) as usize;
        let (e_fail_before, calls_before, was_failed) =
            (faulty.injected(hr::E_FAIL), faulty.calls.load(Ordering::Relaxed), host.is_failed());
        let level = CriticalLevel::ALL[rng.below(3) as usize];
        let op = rng.below(12);
        let result: Result<(), Error> = if arenas[slot].is_none() {
            arena(&source, level).map(|a| arenas[slot] = Some(a))
        } else if op == 11 {
            arenas[slot] = None;
            Ok(())
        } else {
            let a = arenas[slot].as_mut().unwrap();
            let before = a.stats();
            let r = match op {
                0 => {
                    a.reset();
                    Ok(())
                }
                1 => a.trim(rng.below(64 * KIB as u64) as usize).map(drop),
                _ => {
                    let size = 1 + rng.below(6000) as usize;
                    let layout = Layout::from_size_align(size, 1 << rng.below(7)).unwrap();
                    match a.alloc_layout(layout) {
                        Ok(p) => {
                            // SAFETY: `size` fresh bytes.
                            unsafe { p.as_ptr().write_bytes(0x5A, size) };
                            assert!(faulty.tracker.owns_committed(p.as_ptr(), size), "seed {seed} step {step}");
                            cov.allocs += 1;
                            Ok(())
                        }
                        Err(Error::ReservationExhausted) => {
                            a.reset();
                            Ok(())
                        }
                        Err(e) => Err(e),
                    }
                }
            };
            if r.is_err() {
                let after = a.stats();
                assert_eq!(
                    (after.used, after.committed),
                    (before.used, before.committed),
                    "seed {seed} step {step}: a failure changes nothing"
                );
            }
            r
        };

        if let Err(e) = result {
            assert!(allowed(e), "seed {seed} step {step}: unexpected {e:?}");
            cov.errors += 1;
        }
        if was_failed {
            assert_eq!(
                faulty.calls.load(Ordering::Relaxed),
                calls_before,
                "seed {seed} step {step}: a failed source must not reach the host"
            );
            if let Err(e) = result {
                assert_eq!(e, Error::Host(FAILED_SOURCE_HRESULT), "seed {seed} step {step}");
            }
        }
        if faulty.injected(hr::E_FAIL) > e_fail_before {
            assert!(host.is_failed(), "seed {seed} step {step}: E_FAIL fails the source");
            cov.fails_entered += 1;
        }
        if host.is_failed() && rng.below(4) == 0 {
            cov.parked += host.parked() as u64;
            // the host recovers
            faulty.enabled.store(false, Ordering::Relaxed);
            host.reset();
            faulty.enabled.store(true, Ordering::Relaxed);
            assert_eq!(host.parked(), 0, "seed {seed} step {step}: reset releases what was parked");
        }

        // The books, after every step.
        let live: usize = arenas.iter().flatten().map(|a| a.stats().committed).sum();
        assert_eq!(budget.committed(), live, "seed {seed} step {step}: budget == arenas");
        let truth = faulty.tracker.committed_bytes();
        if host.parked() == 0 {
            assert_eq!(truth, live, "seed {seed} step {step}: host's committed pages == arenas'");
        } else {
            assert!(truth >= live, "seed {seed} step {step}");
        }
        for a in arenas.iter().flatten() {
            let s = a.stats();
            assert!(s.used <= s.committed && s.committed <= s.reserved, "seed {seed} step {step}: {s:?}");
        }
    }
    assert_eq!(faulty.tracker.violations(), Vec::<String>::new(), "seed {seed}");

    // The host recovers for good: every arena allocates again.
    faulty.enabled.store(false, Ordering::Relaxed);
    host.reset();
    assert!(!host.is_failed());
    for slot in &mut arenas {
        let a = match slot {
            Some(a) => a,
            None => slot.insert(arena(&source, CriticalLevel::Task).expect("a recovered host reserves")),
        };
        a.reset();
        for _ in 0..20 {
            a.alloc_layout(Layout::from_size_align(4000, 16).unwrap()).expect("a recovered host commits");
        }
    }
    cov.refused_while_failed += host.refused_while_failed();
    drop(arenas);
    host.retry_parked();
    assert_eq!(host.parked(), 0);
    assert_eq!(faulty.tracker.live_reservations(), 0, "seed {seed}: every reservation went back to the host");
    assert_eq!(faulty.tracker.committed_bytes(), 0);
    assert_eq!(budget.committed(), 0);
    assert_eq!(faulty.tracker.violations(), Vec::<String>::new(), "seed {seed}");

    // Every injected fault was recorded, by HRESULT, in the source and in the budget.
    let errs = host.errors();
    assert_eq!(errs.count, faulty.injected_total(), "seed {seed}: {errs:?}");
    for (i, &h) in HOST_HRESULTS.iter().enumerate() {
        assert_eq!(errs.of(h), faulty.injected(h), "seed {seed}: {h:#x}");
        cov.injected[i] += faulty.injected(h);
    }
    assert_eq!(budget.stats().host_errors, errs, "seed {seed}");
}

#[test]
fn fault_injection_through_arenas() {
    let mut cov = Coverage::default();
    for seed in 1..=4 {
        fault_workload(seed, &mut cov);
    }
    assert!(cov.errors > 100 && cov.allocs > 1000, "{cov:?}");
    assert!(cov.injected.iter().all(|&n| n > 0), "every HRESULT was injected: {cov:?}");
    assert!(cov.fails_entered > 0 && cov.refused_while_failed > 0, "{cov:?}");
}

/// A page source over a tracker whose next calls fail with scripted HRESULTs.
#[derive(Debug, Default)]
struct Scripted {
    tracker: Tracker,
    fail_next: Mutex<VecDeque<HRESULT>>,
    calls: AtomicUsize,
}

impl Scripted {
    fn next(&self) -> Result<(), Error> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        match self.fail_next.lock().unwrap().pop_front() {
            Some(h) => Err(Error::Host(h)),
            None => Ok(()),
        }
    }
    fn fail(&self, h: HRESULT) {
        self.fail_next.lock().unwrap().push_back(h);
    }
}

impl PageSource for Scripted {
    fn reserve(&self, len: usize, _: CriticalLevel) -> Result<NonNull<u8>, Error> {
        self.next()?;
        self.tracker.reserve(len).map_err(Error::Host)
    }
    fn commit(&self, addr: NonNull<u8>, len: usize, _: CriticalLevel) -> Result<(), Error> {
        self.next()?;
        self.tracker.commit(addr.as_ptr() as usize, len).map_err(Error::Host)
    }
    fn decommit(&self, addr: NonNull<u8>, len: usize) -> Result<(), Error> {
        self.next()?;
        self.tracker.decommit(addr.as_ptr() as usize, len).map_err(Error::Host)
    }
    fn release(&self, base: NonNull<u8>, len: usize) -> Result<(), Error> {
        self.next()?;
        self.tracker.release(base.as_ptr() as usize, Some(len)).map_err(Error::Host)
    }
}

#[test]
fn e_fail_fails_the_source_until_reset_and_parks_releases() {
    let scripted = Arc::new(Scripted::default());
    let host = HostSource::new(Arc::clone(&scripted) as Arc<dyn PageSource>);
    let budget = Budget::unlimited();
    let source = Source::from_host(Arc::clone(&host)).with_budget(Arc::clone(&budget));
    let l = Layout::from_size_align(100, 8).unwrap();

    let a = arena(&source, CriticalLevel::Task).unwrap();
    a.alloc_layout(l).unwrap();
    scripted.fail(hr::HOST_E_TIMEOUT);
    let big = Layout::from_size_align(64 * KIB, 8).unwrap();
    assert_eq!(a.alloc_layout(big).unwrap_err(), Error::Host(hr::HOST_E_TIMEOUT));
    assert!(!host.is_failed(), "a timeout is transient");
    a.alloc_layout(big).unwrap();

    scripted.fail(hr::E_FAIL);
    assert_eq!(a.alloc_layout(big).unwrap_err(), Error::Host(hr::E_FAIL));
    assert!(host.is_failed());
    let calls = scripted.calls.load(Ordering::Relaxed);
    assert_eq!(a.alloc_layout(big).unwrap_err(), Error::Host(FAILED_SOURCE_HRESULT));
    assert_eq!(arena(&source, CriticalLevel::Process).unwrap_err(), Error::Host(FAILED_SOURCE_HRESULT));
    assert_eq!(source.memory_load().unwrap_err(), Error::Host(FAILED_SOURCE_HRESULT));
    assert_eq!(scripted.calls.load(Ordering::Relaxed), calls, "fail fast: the host was not called");
    assert_eq!(host.refused_while_failed(), 3);
    a.alloc_layout(l).unwrap(); // what is already committed still serves

    let committed = a.stats().committed;
    assert_eq!(budget.committed(), committed);
    drop(a);
    assert_eq!(host.parked(), 1, "the release waits for the host");
    assert_eq!(scripted.tracker.live_reservations(), 1);
    assert_eq!(budget.committed(), 0, "napalloc no longer uses the parked pages");

    assert_eq!(host.reset(), 1);
    assert_eq!((host.parked(), scripted.tracker.live_reservations()), (0, 0));
    let a = arena(&source, CriticalLevel::Task).unwrap();
    a.alloc_layout(big).unwrap();

    // a transient failure of a release parks it too; retry_parked gives it back
    scripted.fail(hr::HOST_E_ABANDONED);
    drop(a);
    assert!(!host.is_failed());
    assert_eq!(host.parked(), 1);
    assert_eq!(host.retry_parked(), 1);
    assert_eq!(scripted.tracker.live_reservations(), 0);

    let e = host.errors();
    assert_eq!((e.count, e.timeout, e.fail, e.abandoned, e.last), (3, 1, 1, 1, hr::HOST_E_ABANDONED), "{e:?}");
    assert_eq!(budget.stats().host_errors, e);
    assert_eq!(budget.stats().failures, [3, 0, 0], "timeout, E_FAIL and the fail-fast refusal, all at task level");
    assert!(scripted.tracker.violations().is_empty());
}

#[test]
fn a_misaligned_host_reservation_is_refused_and_given_back() {
    #[derive(Debug, Default)]
    struct Misaligned {
        tracker: Tracker,
        released: Mutex<Vec<usize>>,
    }
    impl PageSource for Misaligned {
        fn reserve(&self, len: usize, _: CriticalLevel) -> Result<NonNull<u8>, Error> {
            let p = self.tracker.reserve(len).map_err(Error::Host)?;
            Ok(NonNull::new(p.as_ptr().wrapping_add(8)).unwrap())
        }
        fn commit(&self, _: NonNull<u8>, _: usize, _: CriticalLevel) -> Result<(), Error> {
            unreachable!("nothing is committed in a refused reservation")
        }
        fn decommit(&self, _: NonNull<u8>, _: usize) -> Result<(), Error> {
            unreachable!()
        }
        fn release(&self, base: NonNull<u8>, _: usize) -> Result<(), Error> {
            let base = base.as_ptr() as usize;
            self.released.lock().unwrap().push(base);
            self.tracker.release(base - 8, None).map_err(Error::Host)
        }
    }
    let m = Arc::new(Misaligned::default());
    let host = HostSource::new(Arc::clone(&m) as Arc<dyn PageSource>);
    let e = arena(&Source::from_host(Arc::clone(&host)), CriticalLevel::Task).unwrap_err();
    assert_eq!(e, Error::Host(hr::HOST_E_INVALIDOPERATION));
    assert_eq!(m.released.lock().unwrap().len(), 1);
    assert_eq!(m.tracker.live_reservations(), 0);
    assert_eq!(host.errors().of(hr::HOST_E_INVALIDOPERATION), 1);
}

// ---------------------------------------------------------------------------------------------
// OS pages, observed by a host.

#[derive(Debug, Default)]
struct Observer {
    veto: std::sync::atomic::AtomicBool,
    needs: Mutex<Vec<(usize, usize)>>,
    acquired: Mutex<Vec<(usize, usize)>>,
    released: Mutex<Vec<usize>>,
    page_calls: AtomicUsize,
}

impl PageSource for Observer {
    fn reserve(&self, _: usize, _: CriticalLevel) -> Result<NonNull<u8>, Error> {
        self.page_calls.fetch_add(1, Ordering::Relaxed);
        Err(Error::Host(E_NOTIMPL))
    }
    fn commit(&self, _: NonNull<u8>, _: usize, _: CriticalLevel) -> Result<(), Error> {
        self.page_calls.fetch_add(1, Ordering::Relaxed);
        Err(Error::Host(E_NOTIMPL))
    }
    fn decommit(&self, _: NonNull<u8>, _: usize) -> Result<(), Error> {
        self.page_calls.fetch_add(1, Ordering::Relaxed);
        Err(Error::Host(E_NOTIMPL))
    }
    fn release(&self, _: NonNull<u8>, _: usize) -> Result<(), Error> {
        self.page_calls.fetch_add(1, Ordering::Relaxed);
        Err(Error::Host(E_NOTIMPL))
    }
    fn needs_virtual_address_space(&self, addr: NonNull<u8>, len: usize) -> Result<(), Error> {
        self.needs.lock().unwrap().push((addr.as_ptr() as usize, len));
        if self.veto.load(Ordering::Relaxed) {
            Err(Error::Host(hr::E_OUTOFMEMORY))
        } else {
            Ok(())
        }
    }
    fn acquired_virtual_address_space(&self, addr: NonNull<u8>, len: usize) -> Result<(), Error> {
        self.acquired.lock().unwrap().push((addr.as_ptr() as usize, len));
        Ok(())
    }
    fn released_virtual_address_space(&self, addr: NonNull<u8>) -> Result<(), Error> {
        self.released.lock().unwrap().push(addr.as_ptr() as usize);
        Ok(())
    }
}

#[test]
fn os_pages_observed_by_a_host() {
    let obs = Arc::new(Observer::default());
    let host = HostSource::new(Arc::clone(&obs) as Arc<dyn PageSource>);
    let budget = Budget::unlimited();
    let source = Source::os_observed_by(Arc::clone(&host)).with_budget(Arc::clone(&budget));
    assert!(source.is_os());
    let mut a = arena(&source, CriticalLevel::Task).unwrap();
    let p = a.alloc_layout(Layout::from_size_align(50_000, 8).unwrap()).unwrap();
    // SAFETY: 50 000 fresh bytes.
    unsafe { p.as_ptr().write_bytes(1, 50_000) };
    a.trim(0).unwrap();
    assert!(budget.committed() > 0);
    let (needs, acquired) = (obs.needs.lock().unwrap().clone(), obs.acquired.lock().unwrap().clone());
    assert_eq!(needs.len(), 1);
    assert_eq!(needs, acquired, "told before use and after acquisition, with the same range");
    assert!(needs[0].0 <= p.as_ptr() as usize && (p.as_ptr() as usize) < needs[0].0 + needs[0].1);
    assert!(obs.released.lock().unwrap().is_empty());
    drop(a);
    assert_eq!(*obs.released.lock().unwrap(), [needs[0].0]);
    assert_eq!(obs.page_calls.load(Ordering::Relaxed), 0, "the pages themselves came from the OS");
    assert_eq!(budget.committed(), 0);

    obs.veto.store(true, Ordering::Relaxed);
    assert_eq!(arena(&source, CriticalLevel::Task).unwrap_err(), Error::Host(hr::E_OUTOFMEMORY));
    assert_eq!(
        (obs.needs.lock().unwrap().len(), obs.acquired.lock().unwrap().len()),
        (2, 1),
        "a veto stops the reservation"
    );
    assert_eq!(host.errors().out_of_memory, 1);
}

#[test]
fn page_source_defaults_are_the_os() {
    let obs = Observer::default();
    let (load, avail) = obs.memory_load().unwrap();
    assert!(load <= 100 && avail > 0);
    obs.register_memory_notify(Box::new(|_| unreachable!("the default never notifies"))).unwrap();
    assert_eq!(CriticalLevel::from_raw(2), Some(CriticalLevel::Process));
    assert_eq!(CriticalLevel::from_raw(3), None);
    assert_eq!(MemoryAvailable::from_raw(2), Some(MemoryAvailable::Neutral));
    assert_eq!(MemoryAvailable::from_raw(0), None);
    assert!(Source::default().is_os() && Source::default().budget().is_none());
}

// ---------------------------------------------------------------------------------------------
// A C-style IHostMemoryManager.

#[test]
fn every_page_comes_from_the_c_host_and_goes_back_to_it() {
    let fake_ptr = FakeHost::create();
    // SAFETY: the test holds the reference `create` returned until the very end.
    let fake = unsafe { &*fake_ptr };
    // SAFETY: a live, free-threaded fake host with a full vtable.
    let com = unsafe { ComHostMemoryManager::adopt(fake_ptr.cast()) }.unwrap();
    assert_eq!(fake.refs(), 2, "adopt takes a reference");

    let budget = Budget::unlimited();
    let trims = Arc::new(AtomicUsize::new(0));
    let t = Arc::clone(&trims);
    budget.set_trimmer(Box::new(move |_| {
        t.fetch_add(1, Ordering::Relaxed);
        0
    }));
    let b = Arc::clone(&budget);
    com.register_memory_notify(Box::new(move |m| b.on_host_notification(m))).unwrap();
    assert!(fake.has_callback());
    let host = HostSource::new(Arc::new(com));
    let source = Source::from_host(Arc::clone(&host)).with_budget(Arc::clone(&budget));
    assert!(!source.is_os());
    assert_eq!(source.memory_load().unwrap(), FAKE_LOAD);

    let mut arenas: Vec<PageArena> = CriticalLevel::ALL.iter().map(|&l| arena(&source, l).unwrap()).collect();
    let mut rng = Rng::new(99);
    for i in 0..3000 {
        let a = &arenas[i % 3];
        let size = 1 + rng.below(3000) as usize;
        let p = match a.alloc_layout(Layout::from_size_align(size, 16).unwrap()) {
            Ok(p) => p,
            Err(Error::ReservationExhausted) => continue,
            Err(e) => panic!("{e:?}"),
        };
        // SAFETY: `size` fresh bytes.
        unsafe { p.as_ptr().write_bytes(0xC3, size) };
        assert!(fake.tracker.owns_committed(p.as_ptr(), size), "block {i} is in pages the host committed");
    }
    let live = |arenas: &[PageArena]| arenas.iter().map(|a| a.stats().committed).sum::<usize>();
    assert_eq!(fake.tracker.committed_bytes(), live(&arenas));
    assert_eq!(fake.tracker.reserves.load(Ordering::Relaxed), 3);
    assert!(fake.tracker.commits.load(Ordering::Relaxed) >= 3);
    assert!(fake.levels.iter().all(|n| n.load(Ordering::Relaxed) > 0), "each critical level reached the host");

    for a in &mut arenas {
        a.reset();
        a.trim(4096).unwrap();
    }
    assert_eq!(fake.tracker.decommits.load(Ordering::Relaxed), 3);
    assert_eq!(fake.tracker.committed_bytes(), live(&arenas));
    assert_eq!(budget.committed(), live(&arenas));

    // the host says memory is low: napalloc trims; an invalid value is refused
    assert_eq!(fake.notify(MemoryAvailable::Low as i32), hr::S_OK);
    assert_eq!(fake.notify(MemoryAvailable::High as i32), hr::S_OK);
    assert_eq!(fake.notify(7), hr::E_INVALIDARG);
    assert_eq!(trims.load(Ordering::Relaxed), 1);
    assert_eq!(budget.stats().host_notifications, 2);

    // a host failure is a clean error; the next request reaches the host again
    fake.fail_next(hr::HOST_E_NOT_OWNER);
    let big = Layout::from_size_align(200 * KIB, 8).unwrap();
    assert_eq!(arenas[0].alloc_layout(big).unwrap_err(), Error::Host(hr::HOST_E_NOT_OWNER));
    arenas[0].alloc_layout(big).unwrap();
    assert_eq!(host.errors().not_owner, 1);

    drop(arenas);
    assert_eq!(fake.tracker.releases.load(Ordering::Relaxed), 3);
    assert_eq!(fake.tracker.live_reservations(), 0, "every reservation was released, at its base");
    assert_eq!(fake.tracker.violations(), Vec::<String>::new());
    assert_eq!(fake.unexpected_calls.load(Ordering::Relaxed), 0);
    assert_eq!(fake.needs.load(Ordering::Relaxed), 0);
    assert_eq!(budget.committed(), 0);

    drop(source);
    drop(host);
    assert_eq!(fake.refs(), 1, "napalloc gave its reference back");
    assert_eq!(Arc::strong_count(&budget), 2, "the host still holds the callback, which holds the budget");
    // SAFETY: the test's own reference, given up once; the fake frees itself and its callback.
    unsafe { FakeHost::release(fake_ptr) };
    assert_eq!(Arc::strong_count(&budget), 1, "the callback object was freed with the host's reference");
}

#[test]
fn a_vtable_without_a_needed_method_is_refused() {
    let bad = FakeHost::with_vtbl(&FAKE_VTBL_NO_FREE);
    // SAFETY: a live fake; adopt must not call through the missing slot.
    let e = unsafe { ComHostMemoryManager::adopt(bad.cast()) }.unwrap_err();
    assert_eq!(e, Error::Host(hr::E_INVALIDARG));
    // SAFETY: the fake is live until the release below.
    assert_eq!(unsafe { &*bad }.refs(), 1, "no reference taken");
    // SAFETY: our reference from `with_vtbl`.
    assert_eq!(unsafe { FakeHost::release(bad) }, 0);

    // the three methods napalloc never calls may be missing
    let minimal = FakeHost::with_vtbl(&FAKE_VTBL_MINIMAL);
    // SAFETY: a live fake host.
    let com = unsafe { ComHostMemoryManager::adopt(minimal.cast()) }.unwrap();
    let a = arena(&Source::host(Arc::new(com)), CriticalLevel::Task).unwrap();
    a.alloc(5u32).unwrap();
    drop(a);
    // SAFETY: the fake is live (we still hold our reference).
    let fake = unsafe { &*minimal };
    assert_eq!((fake.refs(), fake.tracker.live_reservations()), (1, 0));
    assert!(fake.tracker.violations().is_empty());
    // SAFETY: our reference from `with_vtbl`.
    unsafe { FakeHost::release(minimal) };
}

#[test]
fn a_refused_callback_registration_is_reported() {
    #[derive(Debug)]
    struct NoNotify;
    impl PageSource for NoNotify {
        fn reserve(&self, _: usize, _: CriticalLevel) -> Result<NonNull<u8>, Error> {
            Err(Error::Host(hr::E_OUTOFMEMORY))
        }
        fn commit(&self, _: NonNull<u8>, _: usize, _: CriticalLevel) -> Result<(), Error> {
            Err(Error::Host(hr::E_OUTOFMEMORY))
        }
        fn decommit(&self, _: NonNull<u8>, _: usize) -> Result<(), Error> {
            Err(Error::Host(hr::E_OUTOFMEMORY))
        }
        fn release(&self, _: NonNull<u8>, _: usize) -> Result<(), Error> {
            Err(Error::Host(hr::E_OUTOFMEMORY))
        }
        fn register_memory_notify(&self, _: napalloc::host::MemoryNotify) -> Result<(), Error> {
            Err(Error::Host(hr::E_FAIL))
        }
    }
    let host = HostSource::new(Arc::new(NoNotify));
    assert_eq!(host.register_memory_notify(Box::new(|_| {})).unwrap_err(), Error::Host(hr::E_FAIL));
    assert!(host.is_failed(), "E_FAIL from any host call fails the source");
    assert_eq!(host.reserve(4096, CriticalLevel::Task).unwrap_err(), Error::Host(FAILED_SOURCE_HRESULT));
    host.reset();
    assert_eq!(host.reserve(4096, CriticalLevel::Task).unwrap_err(), Error::Host(hr::E_OUTOFMEMORY));
}

/// A critical allocation commits everything it needs at its level: the block's pages and the
/// side-table records that track it. (The records were once committed at the region's own level,
/// so a process-critical request past the soft limit got its block and then failed on its record.)
#[test]
fn a_critical_allocation_commits_its_side_table_records_at_its_level_too() {
    let budget = Budget::unlimited();
    let region = napalloc::Region::builder()
        .reserve(if cfg!(miri) { 1 << 20 } else { 64 << 20 })
        .source(Source::os().with_budget(Arc::clone(&budget)))
        .build()
        .unwrap();
    let soft = budget.committed();
    budget.set_limits(soft, soft + (2 << 20)).unwrap();
    let layout = Layout::from_size_align(16, 8).unwrap();
    let n = if cfg!(miri) { 1500 } else { 20_000 };
    let mut blocks = Vec::with_capacity(n);
    for i in 0..n {
        let p = region
            .with_critical_level(CriticalLevel::Process, |r| r.alloc(layout))
            .unwrap_or_else(|e| panic!("block {i}: {e:?}, {:?}", budget.stats()));
        blocks.push(p);
    }
    let s = budget.stats();
    assert!(s.committed > soft, "the blocks live in the reserve: {s:?}");
    assert!(region.stats().table_committed > 0);
    assert_eq!(s.failures, [0, 0, 0], "{s:?}");
    assert!(s.reserve_uses >= 2, "block pages and record pages both came from the reserve: {s:?}");
    // At the region's own level (Task), the next commit is refused.
    let mut refused = false;
    for _ in 0..n {
        if region.alloc(layout).is_err() {
            refused = true;
            break;
        }
    }
    assert!(refused, "task-critical commits past the soft limit fail");
    for p in blocks {
        assert!(region.owns(p));
    }
}

/// A page source over a [`Tracker`] that refuses chosen calls: every decommit after the first
/// one while `refuse_decommits_after_first` is set, and every commit into the reservation with
/// index `refuse_commits_in` (in the order the reservations were made).
#[derive(Debug, Default)]
struct Refusing {
    tracker: Tracker,
    reservations: Mutex<Vec<(usize, usize)>>,
    refuse_decommits_after_first: core::sync::atomic::AtomicBool,
    decommits_seen: AtomicUsize,
    refuse_commits_in: AtomicUsize,
    refused: AtomicUsize,
}

impl Refusing {
    fn new() -> Refusing {
        Refusing { refuse_commits_in: AtomicUsize::new(usize::MAX), ..Refusing::default() }
    }
}

impl PageSource for Refusing {
    fn reserve(&self, len: usize, _level: CriticalLevel) -> Result<NonNull<u8>, Error> {
        let p = self.tracker.reserve(len).map_err(Error::Host)?;
        self.reservations.lock().unwrap().push((p.as_ptr() as usize, len));
        Ok(p)
    }
    fn commit(&self, addr: NonNull<u8>, len: usize, _level: CriticalLevel) -> Result<(), Error> {
        let a = addr.as_ptr() as usize;
        let i = self.refuse_commits_in.load(Ordering::SeqCst);
        if let Some(&(base, rlen)) = self.reservations.lock().unwrap().get(i) {
            if a >= base && a < base + rlen {
                self.refused.fetch_add(1, Ordering::SeqCst);
                return Err(Error::Host(hr::HOST_E_TIMEOUT));
            }
        }
        self.tracker.commit(a, len).map_err(Error::Host)
    }
    fn decommit(&self, addr: NonNull<u8>, len: usize) -> Result<(), Error> {
        let n = self.decommits_seen.fetch_add(1, Ordering::SeqCst);
        if n > 0 && self.refuse_decommits_after_first.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(Error::Host(hr::HOST_E_NOT_OWNER));
        }
        self.tracker.decommit(addr.as_ptr() as usize, len).map_err(Error::Host)
    }
    fn release(&self, base: NonNull<u8>, len: usize) -> Result<(), Error> {
        self.tracker.release(base.as_ptr() as usize, Some(len)).map_err(Error::Host)
    }
}

/// A trim whose arena decommit succeeds and whose side-table decommit fails leaves no way into
/// the decommitted pages: every block allocated afterwards lies in committed pages. (The fast
/// path's end once stayed at the old committed end, and the next blocks were handed out in
/// decommitted memory.)
#[test]
fn a_trim_that_fails_half_way_hands_out_no_decommitted_pages() {
    let src = Arc::new(Refusing::new());
    let mut region =
        napalloc::Region::builder().reserve(16 << 20).source(Source::host(Arc::clone(&src) as _)).build().unwrap();
    let small = Layout::from_size_align(16, 8).unwrap();
    for _ in 0..if cfg!(miri) { 2_000 } else { 20_000 } {
        region.alloc(small).unwrap();
    }
    region.reset();
    src.refuse_decommits_after_first.store(true, Ordering::SeqCst);
    assert!(matches!(region.trim(0), Err(Error::Host(hr::HOST_E_NOT_OWNER))));
    assert!(src.refused.load(Ordering::SeqCst) >= 1, "the side table's decommit was refused");
    src.refuse_decommits_after_first.store(false, Ordering::SeqCst);
    // Small blocks (the fast path's), through several pages.
    let block = Layout::from_size_align(400, 16).unwrap();
    for i in 0..64 {
        let p = region.alloc(block).unwrap();
        assert!(src.tracker.owns_committed(p.as_ptr(), 400), "block {i} at {p:p} is in decommitted pages");
        // SAFETY: a live block of 400 bytes, in committed pages (just checked).
        unsafe { p.as_ptr().write_bytes(0x3C, 400) };
    }
    assert!(src.tracker.violations().is_empty(), "{:?}", src.tracker.violations());
}

/// An arena growth whose window-index commit fails leaves arena pages committed that no block
/// may use yet; a trim afterwards does not open them to the fast path (blocks there could not be
/// indexed), and once the index can be committed they are used normally.
#[test]
fn arena_pages_the_window_index_does_not_cover_stay_unused_after_a_trim() {
    let src = Arc::new(Refusing::new());
    let mut region =
        napalloc::Region::builder().reserve(64 << 20).source(Source::host(Arc::clone(&src) as _)).build().unwrap();
    // Reservations, in order: the arena, the records, the window index, the untracked arena.
    assert!(src.reservations.lock().unwrap().len() >= 3);
    src.refuse_commits_in.store(2, Ordering::SeqCst);
    let block = Layout::from_size_align(1024, 16).unwrap();
    let mut blocks = Vec::new();
    let refused = loop {
        match region.alloc(block) {
            Ok(p) => {
                // SAFETY: a live block of 1 KiB.
                unsafe { p.as_ptr().write_bytes(0x77, 1024) };
                blocks.push(p);
                assert!(blocks.len() < 1 << 16, "the window index never needed to grow");
            }
            Err(e) => break e,
        }
    };
    assert_eq!(refused, Error::Host(hr::HOST_E_TIMEOUT));
    // A trim that gives nothing back (the retained size is above what is committed).
    region.trim(1 << 30).unwrap();
    for _ in 0..64 {
        match region.alloc(block) {
            Ok(p) => {
                // SAFETY: a live block of 1 KiB.
                unsafe { p.as_ptr().write_bytes(0x77, 1024) };
                blocks.push(p);
            }
            Err(e) => assert_eq!(e, Error::Host(hr::HOST_E_TIMEOUT)),
        }
    }
    src.refuse_commits_in.store(usize::MAX, Ordering::SeqCst);
    for _ in 0..256 {
        blocks.push(region.alloc(block).expect("served once the index can be committed"));
    }
    for &p in &blocks {
        assert!(region.owns(p));
        assert_eq!(region.size_of(p), Some(1024));
    }
    assert_eq!(region.stats().live_blocks, blocks.len());
    assert!(src.tracker.violations().is_empty(), "{:?}", src.tracker.violations());
}
