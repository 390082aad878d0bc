//! `pool_host`: regions and arenas over a host page source that fails when the input says, charged
//! to a budget whose limits the input moves.
//!
//! The page source hands out OS reservations and checks every call napalloc makes (a reservation
//! it handed out, page-aligned ranges inside it, commit only of uncommitted pages, decommit only of
//! committed ones, release with the reserved length). The input arms faults: the `n`th next
//! reserve / commit / decommit / release fails with a chosen HRESULT (once, or until disarmed).
//! `E_FAIL` puts the `HostSource` into its failed state until the input resets it.
//!
//! After every step:
//! * the page source saw no contract violation;
//! * the budget holds exactly what the live regions and arenas say they have committed, which is
//!   exactly what the page source has committed in reservations napalloc still holds (a
//!   reservation whose release failed is parked: no longer charged, still the host's);
//! * the budget grew past its hard limit never;
//! * every failed operation is explained by an injected fault, the failed state, the budget, or
//!   the reservation's size, and changed nothing: every live block still holds its pattern, and the
//!   regions' books match the model.
//!
//! At the end everything is dropped, the host recovers, and every reservation must have come back
//! with nothing charged.
//!
//! An `ArenaPool` over the same source and budget runs alongside: check-out, return (reset),
//! allocation through a checked-out region, `prewarm`, and `trim_idle`, which is also the budget's
//! trimmer (so `AppDomain` and `Process` commits past the soft limit trim idle pool regions). Its
//! background trimmer is given an idle delay of an hour, so that nothing changes behind the
//! checks' back; the pool's figures must agree with its regions and with the budget.
#![no_main]

#[path = "shared/mod.rs"]
mod shared;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use napalloc::host::{Budget, HostSource, PageSource, Source, FAILED_SOURCE_HRESULT};
use napalloc::hr::{self, HRESULT};
use napalloc::os::{page_size, Reservation};
use napalloc::pool::{ArenaPool, OnExhausted, PooledRegion};
use napalloc::{CriticalLevel, Error, PageArena, Region};
use shared::{fill, verify};
use std::alloc::Layout;
use std::collections::{BTreeMap, BTreeSet};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, MutexGuard};

const MAX_STEPS: usize = 300;
const REGIONS: usize = 3;
const ARENAS: usize = 2;
const REGION_RESERVE: usize = 1 << 20;
const ARENA_RESERVE: usize = 256 << 10;
const POOL_REGIONS: usize = 3;
const GUARDS: usize = 2;

#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    Reserve,
    Commit,
    Decommit,
    Release,
}

#[derive(Arbitrary, Clone, Copy, Debug)]
enum Hr {
    Timeout,
    NotOwner,
    Abandoned,
    ClrNotAvailable,
    OutOfMemory,
    Fail,
    /// Any failure HRESULT (the severity bit is forced).
    Other(u32),
}

impl Hr {
    fn get(self) -> HRESULT {
        match self {
            Hr::Timeout => hr::HOST_E_TIMEOUT,
            Hr::NotOwner => hr::HOST_E_NOT_OWNER,
            Hr::Abandoned => hr::HOST_E_ABANDONED,
            Hr::ClrNotAvailable => hr::HOST_E_CLRNOTAVAILABLE,
            Hr::OutOfMemory => hr::E_OUTOFMEMORY,
            Hr::Fail => hr::E_FAIL,
            Hr::Other(x) => (x | 0x8000_0000) as i32,
        }
    }
}

#[derive(Arbitrary, Clone, Copy, Debug)]
enum Level {
    Task,
    AppDomain,
    Process,
}

impl Level {
    fn get(self) -> CriticalLevel {
        match self {
            Level::Task => CriticalLevel::Task,
            Level::AppDomain => CriticalLevel::AppDomain,
            Level::Process => CriticalLevel::Process,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// The `skip`th next call of this kind fails with `hr` (every one from then on if `sticky`).
    Arm {
        call: Call,
        skip: u8,
        hr: Hr,
        sticky: bool,
    },
    Disarm,
    /// `HostSource::reset`: leave the failed state, retry the parked releases.
    ResetHost,
    /// Budget limits in pages.
    SetLimits {
        soft: u16,
        hard: u16,
    },
    NewRegion {
        slot: u8,
        level: Level,
        chunk_pages: u8,
    },
    DropRegion(u8),
    Alloc {
        slot: u8,
        size: u32,
        align: u8,
    },
    Free {
        slot: u8,
        block: u16,
    },
    Realloc {
        slot: u8,
        block: u16,
        size: u32,
    },
    Reset(u8),
    Trim {
        slot: u8,
        retain_pages: u8,
    },
    NewArena {
        slot: u8,
        level: Level,
    },
    DropArena(u8),
    ArenaAlloc {
        slot: u8,
        size: u16,
        align: u8,
    },
    ArenaReset(u8),
    ArenaTrim {
        slot: u8,
        retain_pages: u8,
    },
    Checkout(u8),
    /// Drop a checked-out region: it is reset and goes back to the pool.
    Return(u8),
    GuardAlloc {
        slot: u8,
        size: u32,
        align: u8,
    },
    GuardFree {
        slot: u8,
        block: u16,
    },
    TrimIdle {
        want_pages: u16,
    },
    Prewarm(u8),
}

/// How the pool is set up (the start of every input).
#[derive(Arbitrary, Debug)]
struct PoolSetup {
    level: Level,
    retained_pages: u8,
    region_limit_pages: Option<u16>,
}

/// A checked-out region, its blocks, and its committed bytes when it was checked out (what the
/// pool last reported for it).
struct Guard<'p> {
    region: PooledRegion<'p>,
    blocks: Vec<Blk>,
    reported: usize,
}

// ---------------------------------------------------------------------------------------------
// The page source

struct Entry {
    res: Reservation,
    committed: BTreeSet<usize>,
    /// Its release failed: napalloc has let go of it, the host still holds it.
    parked: bool,
}

#[derive(Default)]
struct Armed {
    skip: u32,
    hr: HRESULT,
    sticky: bool,
}

#[derive(Default)]
struct State {
    live: BTreeMap<usize, Entry>,
    armed: [Option<Armed>; 4],
    /// Faults injected so far, and the HRESULTs used.
    injected: u64,
    injected_hrs: BTreeSet<HRESULT>,
    violations: Vec<String>,
}

#[derive(Default)]
struct Faulty {
    state: Mutex<State>,
}

impl std::fmt::Debug for Faulty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Faulty")
    }
}

impl Faulty {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this call is to fail, and with what.
    fn fault(st: &mut State, call: Call) -> Result<(), Error> {
        let slot = &mut st.armed[call as usize];
        if let Some(a) = slot {
            if a.skip > 0 {
                a.skip -= 1;
                return Ok(());
            }
            let hr = a.hr;
            if !a.sticky {
                *slot = None;
            }
            st.injected += 1;
            st.injected_hrs.insert(hr);
            return Err(Error::Host(hr));
        }
        Ok(())
    }

    /// The live reservation containing the page range, or a violation.
    fn locate(st: &mut State, what: &str, addr: usize, len: usize) -> Option<(usize, usize, usize)> {
        let page = page_size();
        let found = st.live.range(..=addr).next_back().map(|(&b, e)| (b, e.res.len(), e.parked));
        match found {
            Some((base, rlen, false))
                if addr.is_multiple_of(page) && len.is_multiple_of(page) && len > 0 && addr + len <= base + rlen =>
            {
                Some((base, (addr - base) / page, len / page))
            }
            _ => {
                st.violations.push(format!("{what} of {len:#x} bytes at {addr:#x}: not inside a live reservation"));
                None
            }
        }
    }
}

impl PageSource for Faulty {
    fn reserve(&self, len: usize, _level: CriticalLevel) -> Result<NonNull<u8>, Error> {
        let mut st = self.state();
        Self::fault(&mut st, Call::Reserve)?;
        let res = Reservation::new(len).map_err(|_| Error::Host(hr::E_OUTOFMEMORY))?;
        let base = res.base();
        st.live.insert(base.as_ptr() as usize, Entry { res, committed: BTreeSet::new(), parked: false });
        Ok(base)
    }

    fn commit(&self, addr: NonNull<u8>, len: usize, _level: CriticalLevel) -> Result<(), Error> {
        let mut st = self.state();
        let Some((base, first, n)) = Self::locate(&mut st, "commit", addr.as_ptr() as usize, len) else {
            return Err(Error::Host(hr::HOST_E_INVALIDOPERATION));
        };
        Self::fault(&mut st, Call::Commit)?;
        let e = st.live.get_mut(&base).unwrap();
        // SAFETY: the range is page-aligned and inside the reservation (checked by `locate`).
        unsafe { e.res.commit(addr.as_ptr() as usize - base, len) }.map_err(|_| Error::Host(hr::E_OUTOFMEMORY))?;
        let again: Vec<usize> = (first..first + n).filter(|p| !e.committed.insert(*p)).collect();
        if !again.is_empty() {
            st.violations.push(format!("commit at {addr:p}: pages {again:?} were committed already"));
        }
        Ok(())
    }

    fn decommit(&self, addr: NonNull<u8>, len: usize) -> Result<(), Error> {
        let mut st = self.state();
        let Some((base, first, n)) = Self::locate(&mut st, "decommit", addr.as_ptr() as usize, len) else {
            return Err(Error::Host(hr::HOST_E_INVALIDOPERATION));
        };
        if let Some(p) = (first..first + n).find(|p| !st.live[&base].committed.contains(p)) {
            st.violations.push(format!("decommit at {addr:p}: page {p} is not committed"));
            return Err(Error::Host(hr::HOST_E_INVALIDOPERATION));
        }
        Self::fault(&mut st, Call::Decommit)?;
        let e = st.live.get_mut(&base).unwrap();
        // SAFETY: the range is committed and inside the reservation, and napalloc gave it up.
        unsafe { e.res.decommit(addr.as_ptr() as usize - base, len) }.map_err(|_| Error::Host(hr::E_FAIL))?;
        for p in first..first + n {
            e.committed.remove(&p);
        }
        Ok(())
    }

    fn release(&self, base: NonNull<u8>, len: usize) -> Result<(), Error> {
        let mut st = self.state();
        let b = base.as_ptr() as usize;
        match st.live.get(&b).map(|e| e.res.len()) {
            Some(l) if l == len => {}
            found => {
                st.violations.push(format!("release of {len:#x} bytes at {b:#x}: live reservation {found:?}"));
                return Err(Error::Host(hr::HOST_E_INVALIDOPERATION));
            }
        }
        if let Err(e) = Self::fault(&mut st, Call::Release) {
            st.live.get_mut(&b).unwrap().parked = true;
            return Err(e);
        }
        st.live.remove(&b);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The model

struct Blk {
    p: NonNull<u8>,
    size: usize,
    tag: u32,
}

struct Slot<T> {
    obj: T,
    blocks: Vec<Blk>,
}

/// Counters that explain a failure, taken before an operation.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Marks {
    injected: u64,
    refused: u64,
    budget_failures: u64,
    failed_state: bool,
}

struct World {
    faulty: Arc<Faulty>,
    host: Arc<HostSource>,
    budget: Arc<Budget>,
    source: Source,
    regions: Vec<Option<Slot<Region>>>,
    arenas: Vec<Option<Slot<PageArena>>>,
    tag: u32,
    /// Budget committed after the previous step.
    last_committed: usize,
}

impl World {
    fn marks(&self) -> Marks {
        Marks {
            injected: self.faulty.state().injected,
            refused: self.host.refused_while_failed(),
            budget_failures: self.budget.stats().failures.iter().sum(),
            failed_state: self.host.is_failed(),
        }
    }

    /// A failure must be explained by something that happened during the operation.
    fn explain(&self, before: Marks, e: Error, what: &str) {
        let now = self.marks();
        let ok = match e {
            Error::Host(h) if h == FAILED_SOURCE_HRESULT && now.refused > before.refused => true,
            Error::Host(h) => now.injected > before.injected && self.faulty.state().injected_hrs.contains(&h),
            Error::LimitExceeded => now.budget_failures > before.budget_failures,
            // the reservations are small on purpose
            Error::ReservationExhausted | Error::TooLarge => true,
            _ => false,
        };
        assert!(ok, "{what} failed with {e:?}, unexplained (before: injected {}, refused {}, budget failures {}; now: {}, {}, {})",
            before.injected, before.refused, before.budget_failures, now.injected, now.refused, now.budget_failures);
    }

    fn next_tag(&mut self) -> u32 {
        self.tag = self.tag.wrapping_add(1);
        self.tag
    }

    fn step(&mut self, op: Op) {
        let before = self.marks();
        match op {
            Op::Arm { call, skip, hr, sticky } => {
                self.faulty.state().armed[call as usize] =
                    Some(Armed { skip: (skip % 8) as u32, hr: hr.get(), sticky });
            }
            Op::Disarm => self.faulty.state().armed = Default::default(),
            Op::ResetHost => {
                self.host.reset();
            }
            Op::SetLimits { soft, hard } => {
                let page = page_size();
                let (soft, hard) = (soft as usize * page, hard as usize * page);
                let r = self.budget.set_limits(soft, hard);
                assert_eq!(r.is_ok(), soft <= hard, "set_limits({soft}, {hard})");
            }
            Op::NewRegion { slot, level, chunk_pages } => {
                let i = slot as usize % REGIONS;
                self.regions[i] = None;
                let r = Region::builder()
                    .reserve(REGION_RESERVE)
                    .commit_chunk((chunk_pages as usize % 16 + 1) * page_size())
                    .critical_level(level.get())
                    .source(self.source.clone())
                    .build();
                match r {
                    Ok(obj) => self.regions[i] = Some(Slot { obj, blocks: Vec::new() }),
                    Err(e) => self.explain(before, e, "Region::build"),
                }
            }
            Op::DropRegion(slot) => self.regions[slot as usize % REGIONS] = None,
            Op::Alloc { slot, size, align } => {
                let tag = self.next_tag();
                let Some(s) = self.regions[slot as usize % REGIONS].as_mut() else { return };
                let size = size as usize % (REGION_RESERVE / 2);
                let layout = Layout::from_size_align(size, 1 << (align % 13)).unwrap();
                match s.obj.alloc(layout) {
                    Ok(p) => {
                        fill(p.as_ptr(), 0, size, tag);
                        s.blocks.push(Blk { p, size, tag });
                    }
                    Err(e) => self.explain(before, e, "Region::alloc"),
                }
            }
            Op::Free { slot, block } => {
                let Some(s) = self.regions[slot as usize % REGIONS].as_mut() else { return };
                if s.blocks.is_empty() {
                    return;
                }
                let b = s.blocks.swap_remove(block as usize % s.blocks.len());
                // SAFETY: a live root of this region, forgotten by the model.
                unsafe { s.obj.free(b.p) }.expect("free of a live block never fails");
            }
            Op::Realloc { slot, block, size } => {
                let Some(s) = self.regions[slot as usize % REGIONS].as_mut() else { return };
                if s.blocks.is_empty() {
                    return;
                }
                let k = block as usize % s.blocks.len();
                let size = size as usize % (REGION_RESERVE / 2);
                let b = &s.blocks[k];
                // SAFETY: a live block; if it moves the model keeps only the new pointer.
                match unsafe { s.obj.realloc(b.p, size) } {
                    Ok(q) => {
                        let (old, tag) = (b.size, b.tag);
                        verify(q.as_ptr(), old.min(size), tag, "realloc kept");
                        fill(q.as_ptr(), old.min(size), size, tag);
                        s.blocks[k] = Blk { p: q, size, tag };
                    }
                    Err(e) => self.explain(before, e, "Region::realloc"),
                }
            }
            Op::Reset(slot) => {
                if let Some(s) = self.regions[slot as usize % REGIONS].as_mut() {
                    s.obj.reset();
                    s.blocks.clear();
                }
            }
            Op::Trim { slot, retain_pages } => {
                let Some(s) = self.regions[slot as usize % REGIONS].as_mut() else { return };
                let before_c = s.obj.stats().committed;
                match s.obj.trim(retain_pages as usize * page_size()) {
                    Ok(freed) => assert_eq!(s.obj.stats().committed, before_c - freed, "Region::trim"),
                    Err(e) => self.explain(before, e, "Region::trim"),
                }
            }
            Op::NewArena { slot, level } => {
                let i = slot as usize % ARENAS;
                self.arenas[i] = None;
                let a = PageArena::builder()
                    .reserve(ARENA_RESERVE)
                    .commit_chunk(page_size())
                    .critical_level(level.get())
                    .source(self.source.clone())
                    .build();
                match a {
                    Ok(obj) => self.arenas[i] = Some(Slot { obj, blocks: Vec::new() }),
                    Err(e) => self.explain(before, e, "PageArena::build"),
                }
            }
            Op::DropArena(slot) => self.arenas[slot as usize % ARENAS] = None,
            Op::ArenaAlloc { slot, size, align } => {
                let tag = self.next_tag();
                let Some(s) = self.arenas[slot as usize % ARENAS].as_mut() else { return };
                let size = size as usize;
                let layout = Layout::from_size_align(size, 1 << (align % 13)).unwrap();
                match s.obj.alloc_layout(layout) {
                    Ok(p) => {
                        fill(p.as_ptr(), 0, size, tag);
                        s.blocks.push(Blk { p, size, tag });
                    }
                    Err(e) => self.explain(before, e, "PageArena::alloc_layout"),
                }
            }
            Op::ArenaReset(slot) => {
                if let Some(s) = self.arenas[slot as usize % ARENAS].as_mut() {
                    s.obj.reset();
                    s.blocks.clear();
                }
            }
            Op::ArenaTrim { slot, retain_pages } => {
                let Some(s) = self.arenas[slot as usize % ARENAS].as_mut() else { return };
                let before_c = s.obj.stats().committed;
                match s.obj.trim(retain_pages as usize * page_size()) {
                    Ok(freed) => assert_eq!(s.obj.stats().committed, before_c - freed, "PageArena::trim"),
                    Err(e) => self.explain(before, e, "PageArena::trim"),
                }
            }
            Op::Checkout(_)
            | Op::Return(_)
            | Op::GuardAlloc { .. }
            | Op::GuardFree { .. }
            | Op::TrimIdle { .. }
            | Op::Prewarm(_) => unreachable!("pool operations go through pool_step"),
        }
    }

    /// The pool's part of the committed memory: what it last reported for every region, with
    /// the checked-out regions' reports replaced by what they have now.
    fn pool_committed(pool: &ArenaPool, guards: &[Option<Guard<'_>>]) -> usize {
        let mut c = pool.stats().committed_bytes as usize;
        for g in guards.iter().flatten() {
            let stats = g.region.stats();
            c = c - g.reported + stats.committed;
            assert_eq!(stats.live_blocks, g.blocks.len(), "pooled region: {stats:?}");
            for b in &g.blocks {
                verify(b.p.as_ptr(), b.size, b.tag, "pooled region block");
            }
        }
        c
    }

    fn pool_step<'p>(&mut self, pool: &'p ArenaPool, guards: &mut [Option<Guard<'p>>], op: Op) {
        let before = self.marks();
        let exhausted = pool.stats().exhausted;
        let explain_pool = |w: &World, e: Error, what: &str| {
            if e == Error::LimitExceeded && pool.stats().exhausted > exhausted {
                return; // every region is checked out
            }
            if e == Error::LimitExceeded && pool.config().region_limit != usize::MAX {
                return; // the region's own limit
            }
            w.explain(before, e, what);
        };
        match op {
            Op::Checkout(slot) => {
                let g = &mut guards[slot as usize % GUARDS];
                if g.is_some() {
                    return;
                }
                match pool.checkout() {
                    Ok(region) => {
                        let stats = region.stats();
                        assert_eq!((stats.live_blocks, stats.live_bytes), (0, 0), "a checked-out region is empty");
                        *g = Some(Guard { reported: stats.committed, region, blocks: Vec::new() });
                    }
                    Err(e) => explain_pool(self, e, "ArenaPool::checkout"),
                }
            }
            Op::Return(slot) => guards[slot as usize % GUARDS] = None,
            Op::GuardAlloc { slot, size, align } => {
                let tag = self.next_tag();
                let Some(g) = guards[slot as usize % GUARDS].as_mut() else { return };
                let size = size as usize % (REGION_RESERVE / 2);
                let layout = Layout::from_size_align(size, 1 << (align % 13)).unwrap();
                match g.region.alloc(layout) {
                    Ok(p) => {
                        fill(p.as_ptr(), 0, size, tag);
                        g.blocks.push(Blk { p, size, tag });
                    }
                    Err(e) => explain_pool(self, e, "PooledRegion::alloc"),
                }
            }
            Op::GuardFree { slot, block } => {
                let Some(g) = guards[slot as usize % GUARDS].as_mut() else { return };
                if g.blocks.is_empty() {
                    return;
                }
                let b = g.blocks.swap_remove(block as usize % g.blocks.len());
                // SAFETY: a live root of this region, forgotten by the model.
                unsafe { g.region.free(b.p) }.expect("free of a live block never fails");
            }
            Op::TrimIdle { want_pages } => {
                let c = pool.stats().committed_bytes;
                let freed = pool.trim_idle(want_pages as usize * page_size());
                assert!(freed as u64 <= c, "trim_idle gave back {freed} of {c} bytes");
            }
            Op::Prewarm(n) => {
                if let Err(e) = pool.prewarm(n as usize % (POOL_REGIONS + 1)) {
                    explain_pool(self, e, "ArenaPool::prewarm");
                }
            }
            other => self.step(other),
        }
    }

    fn check(&mut self, pool_committed: usize) {
        let st = self.faulty.state();
        assert!(st.violations.is_empty(), "page source contract violated: {:?}", st.violations);
        let page = page_size();
        let host_committed: usize = st.live.values().filter(|e| !e.parked).map(|e| e.committed.len() * page).sum();
        let flagged = st.live.values().filter(|e| e.parked).count();
        drop(st);
        // A release refused by the failed source never reaches the host: the host cannot tell
        // that reservation from a held one. Only with nothing parked must the books agree exactly.
        let parked = self.host.parked();
        assert!(flagged <= parked, "{flagged} releases failed at the host, {parked} parked");
        let mut ours = 0;
        for s in self.regions.iter().flatten() {
            let stats = s.obj.stats();
            ours += stats.committed;
            assert_eq!(stats.live_blocks, s.blocks.len(), "{stats:?}");
            assert_eq!(stats.live_bytes, s.blocks.iter().map(|b| b.size).sum::<usize>(), "{stats:?}");
            for b in &s.blocks {
                verify(b.p.as_ptr(), b.size, b.tag, "region block");
                assert_eq!(s.obj.size_of(b.p), Some(b.size));
            }
        }
        for s in self.arenas.iter().flatten() {
            ours += s.obj.stats().committed;
            for b in &s.blocks {
                verify(b.p.as_ptr(), b.size, b.tag, "arena block");
            }
        }
        ours += pool_committed;
        let charged = self.budget.committed();
        assert_eq!(charged, ours, "the budget holds what the regions, arenas and pool have committed");
        if parked == 0 {
            assert_eq!(host_committed, ours, "the host has committed what the regions and arenas have");
        } else {
            assert!(
                host_committed >= ours,
                "the host has committed less ({host_committed}) than napalloc uses ({ours})"
            );
        }
        let hard = self.budget.hard_limit();
        assert!(charged <= hard.max(self.last_committed), "committed {charged} grew past the hard limit {hard}");
        self.last_committed = charged;
    }
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let faulty = Arc::new(Faulty::default());
    let host = HostSource::new(faulty.clone());
    let budget = Budget::unlimited();
    let source = Source::from_host(Arc::clone(&host)).with_budget(Arc::clone(&budget));
    let mut w = World {
        faulty,
        host,
        budget,
        source,
        regions: (0..REGIONS).map(|_| None).collect(),
        arenas: (0..ARENAS).map(|_| None).collect(),
        tag: 0,
        last_committed: 0,
    };
    let Ok(setup) = PoolSetup::arbitrary(&mut u) else { return };
    if shared::trace() {
        eprintln!("{setup:?}");
    }
    let page = page_size();
    let mut pb = ArenaPool::builder()
        .max_regions(POOL_REGIONS)
        .region_reserve(REGION_RESERVE)
        .retained_bytes_per_region(setup.retained_pages as usize % 32 * page)
        .idle_trim_delay(std::time::Duration::from_secs(3600))
        .on_exhausted(OnExhausted::Fail)
        .critical_level(setup.level.get())
        .source(w.source.clone());
    if let Some(l) = setup.region_limit_pages {
        pb = pb.region_limit(l as usize * page);
    }
    let pool = pb.build().expect("a pool creates no region up front");
    pool.register_trimmer(&w.budget);
    let mut guards: Vec<Option<Guard<'_>>> = (0..GUARDS).map(|_| None).collect();
    shared::run_steps(&mut u, MAX_STEPS, |op: Op| {
        w.pool_step(&pool, &mut guards, op);
        let pc = World::pool_committed(&pool, &guards);
        w.check(pc);
    });
    // Drop everything, let the host recover: every reservation comes back, nothing stays charged.
    drop(guards);
    let s = pool.stats();
    assert_eq!(s.idle_regions, s.live_regions, "every pool region is back: {s:?}");
    drop(pool);
    w.budget.clear_trimmer();
    w.regions.clear();
    w.arenas.clear();
    w.faulty.state().armed = Default::default();
    w.host.reset();
    assert_eq!(w.host.parked(), 0, "parked reservations after the host recovered");
    let st = w.faulty.state();
    assert!(st.violations.is_empty(), "page source contract violated: {:?}", st.violations);
    assert!(st.live.is_empty(), "{} reservations never released", st.live.len());
    drop(st);
    assert_eq!(w.budget.committed(), 0, "bytes still charged after everything was dropped");
});
