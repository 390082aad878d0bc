//! `scope_host_abi`: request scopes and napalloc's own C entry points, in arbitrary sequences,
//! checked against a model after every step.
//!
//! The calls are the `extern "C"` functions of `include/napalloc.h` beyond CoTaskMem, IMalloc and
//! NapUtil: `NapallocScopeEnter` / `NapallocScopeLeave` (nested, left in and out of order, with
//! NULL, stale and arbitrary handles), `NapallocSetHostMemoryManager` (fake C hosts from
//! `tests/common`, one lacking a method napalloc needs, and NULL), `NapallocSetBudget` (limits
//! below, around and above what is committed, and inverted ones), `NapallocAllocCritical` at
//! every level and at levels mscoree.h does not define, `NapallocGetStats` (NULL too) and
//! `NapallocHeapMinimize`; in between, task-heap blocks are allocated, reallocated and freed
//! with `CoTaskMem*` (embedded blocks through `heap::alloc_child` / `free_tree`, what the NapUtil
//! `Alloc*` / `Free*` functions do), inside and outside scopes, freed before the scope's reset and
//! after leaving it, and the hosts' next `VirtualAlloc` calls fail with the HRESULTs a host may
//! return. The header's rules:
//! * a block belongs to the innermost scope of the thread when it was allocated (an embedded block
//!   to its parent's heap, a reallocated block stays in its heap); leaving a scope frees every
//!   block of it still live, and a later free of such a pointer is refused and reported, unless
//!   the address is a live block again;
//! * `NapallocScopeLeave` succeeds for the innermost scope only: NULL, an outer scope, a left one
//!   or any other pointer → `E_INVALIDARG`, nothing changed; `NapallocScopeEnter(NULL)` →
//!   `E_POINTER`;
//! * `NapallocSetBudget(soft, hard)` with `soft > hard != 0` → `E_INVALIDARG`, nothing changed;
//!   the budget never holds more than its hard limit, and a commit at the task level never takes
//!   it past the soft limit;
//! * a host whose vtable lacks a method → `E_INVALIDARG`, nothing changed; the fake hosts check
//!   every call napalloc makes against what they handed out (no violation may ever be recorded)
//!   and napalloc never calls the methods it says it does not call;
//! * an allocation of a size the heap serves fails only while a budget is set or in a heap whose
//!   pages may come from a host; every failure is counted once, every refused pointer once, and
//!   `NapallocStats`' live blocks and bytes are the model's.
//!
//! The heaps, the host and the budget are process-wide and outlive each input: the model checks
//! changes of the counters, every input leaves its scopes and frees what it allocated, and at the
//! end the budget is lifted and the operating system is the page source again. Heaps made while a
//! host was installed keep that host's pages for the rest of the run (the hosts live as long as
//! the process), so the heaps that may fail are remembered across inputs.
#![no_main]

// The fake hosts of the integration tests. That code keeps to the main crate's minimum Rust
// version, which predates `is_multiple_of`; the fuzz crate is built with nightly's clippy.
#[path = "../../tests/common/mod.rs"]
#[allow(clippy::manual_is_multiple_of)]
mod common;

#[path = "shared/mod.rs"]
mod shared;

use arbitrary::{Arbitrary, Unstructured};
use common::{FakeHost, FAKE_VTBL_MINIMAL, FAKE_VTBL_NO_FREE};
use core::ffi::c_void;
use libfuzzer_sys::fuzz_target;
use napalloc::ffi::{
    CoTaskMemAlloc, CoTaskMemFree, CoTaskMemRealloc, NapallocAllocCritical, NapallocGetStats, NapallocHeapMinimize,
    NapallocScopeEnter, NapallocScopeLeave, NapallocSetBudget, NapallocSetHostMemoryManager,
};
use napalloc::heap;
use napalloc::host::global_budget;
use napalloc::hr::{self, E_INVALIDARG, E_OUTOFMEMORY, E_POINTER, HRESULT, S_OK};
use napalloc::nap::types::{EMemoryCriticalLevel, IHostMemoryManager, NapallocScope};
use shared::{stats, Child, Id, Probe, Realloc, Size, Target, SERVED_MAX};
use std::collections::BTreeSet;
use std::sync::{Mutex, OnceLock};

const MAX_STEPS: usize = 300;
/// Deepest nesting of scopes an input may reach (each level may need a heap of its own).
const MAX_DEPTH: usize = 8;
/// Scope heaps made before the first input (see [`prepare`]).
const PREPARED: usize = 6;
const EDGES: &[usize] = &[0, 1, 16, 17, 4095, 4096, 65536, 1 << 20, u32::MAX as usize + 1, usize::MAX - 15, usize::MAX];

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Ptr {
    Null,
    Live(u16),
    Interior(u16, u8),
    Freed(u16),
    Int(usize),
}

/// A handle for `NapallocScopeLeave`.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum ScopeRef {
    Innermost,
    /// An active scope counted from the outermost (the innermost if that is the only one).
    Active(u8),
    /// A scope this input left already.
    Left(u8),
    Null,
    /// A live block, not a scope.
    Block(u16),
    Int(usize),
}

/// A budget limit: none, relative to what the budget holds now, or any value.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Limit {
    None,
    /// This many pages above what is committed now.
    Above(u8),
    /// This many pages below what is committed now (saturating at one page).
    Below(u8),
    Raw(usize),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum HostHr {
    Timeout,
    NotOwner,
    Abandoned,
    OutOfMemory,
    Fail,
}

impl HostHr {
    fn get(self) -> HRESULT {
        match self {
            HostHr::Timeout => hr::HOST_E_TIMEOUT,
            HostHr::NotOwner => hr::HOST_E_NOT_OWNER,
            HostHr::Abandoned => hr::HOST_E_ABANDONED,
            HostHr::OutOfMemory => hr::E_OUTOFMEMORY,
            HostHr::Fail => hr::E_FAIL,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Host {
    /// `NapallocSetHostMemoryManager(NULL)`: the operating system again.
    Os,
    /// One of the complete fake hosts.
    Fake(u8),
    /// A fake with only the methods napalloc calls.
    Minimal,
    /// A fake without `VirtualFree`: refused.
    NoFree,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Alloc(Size),
    /// `NapallocAllocCritical` with a raw level (0..=2 are defined).
    AllocCritical(Size, i8),
    AllocChild(Ptr, Size),
    Free(Ptr),
    FreeTree(Ptr),
    Realloc(Ptr, Size),
    Enter {
        null_out: bool,
    },
    Leave(ScopeRef),
    SetBudget(Limit, Limit),
    SetHost(Host),
    /// The next `n % 4` `VirtualAlloc` calls of fake host `host` (or of every fake) fail with `hr`.
    HostFails {
        host: u8,
        n: u8,
        hr: HostHr,
    },
    HeapMinimize,
    StatsNull,
}

/// Whose heap a block lives in: the thread's own, or a scope's (its handle).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    Home,
    Scope(usize),
}

/// The heap's own answer: `heap::size_of`.
struct SizeOf;

impl Probe for SizeOf {
    fn expect(&self, p: *mut u8, size: Option<usize>, what: &str) {
        assert_eq!(heap::size_of(p), size, "{what} {p:p}: size_of");
    }
}

/// Fake hosts: created once, never released (heaps made under them keep their pages for the rest
/// of the run). Index `FAKES` is the minimal one, `FAKES + 1` the one without `VirtualFree`.
const FAKES: usize = 3;

struct Hosts(Vec<usize>);

fn hosts() -> &'static [usize] {
    static HOSTS: OnceLock<Hosts> = OnceLock::new();
    &HOSTS
        .get_or_init(|| {
            let mut v: Vec<usize> = (0..FAKES).map(|_| FakeHost::create() as usize).collect();
            v.push(FakeHost::with_vtbl(&FAKE_VTBL_MINIMAL) as usize);
            v.push(FakeHost::with_vtbl(&FAKE_VTBL_NO_FREE) as usize);
            Hosts(v)
        })
        .0
}

fn host(i: usize) -> &'static FakeHost {
    // SAFETY: the fakes are never released (the reference `create` gave is kept forever).
    unsafe { &*(hosts()[i] as *const FakeHost) }
}

/// Scope heaps (by handle) made while a host was installed: their commits may fail for the rest
/// of the run.
fn host_heaps() -> &'static Mutex<BTreeSet<usize>> {
    static SET: OnceLock<Mutex<BTreeSet<usize>>> = OnceLock::new();
    SET.get_or_init(|| Mutex::new(BTreeSet::new()))
}

/// Scope heaps seen so far (a heap is made once and reused).
fn known_heaps() -> &'static Mutex<BTreeSet<usize>> {
    static SET: OnceLock<Mutex<BTreeSet<usize>>> = OnceLock::new();
    SET.get_or_init(|| Mutex::new(BTreeSet::new()))
}

/// Once per process: make the thread's own heap (over the OS), then scope heaps whose pages come
/// from the OS or from one of the fakes, so that later inputs find both kinds among the idle
/// scope heaps they enter (scope heaps are made once and reused; a host installed by an input
/// only serves heaps made after it, which deeper nesting still makes now and then).
fn prepare() {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        // SAFETY: a block freed at once.
        unsafe { CoTaskMemFree(CoTaskMemAlloc(1)) };
        let sources: [Option<usize>; PREPARED] = [Some(0), None, Some(1), Some(FAKES), Some(2), None];
        let mut entered = Vec::new();
        for src in sources {
            let p = src.map_or(std::ptr::null_mut(), |i| hosts()[i] as *mut IHostMemoryManager);
            // SAFETY: NULL or a live fake host that is never released.
            assert_eq!(unsafe { NapallocSetHostMemoryManager(p) }, S_OK);
            let mut h: *mut NapallocScope = std::ptr::null_mut();
            // SAFETY: `h` is writable.
            assert_eq!(unsafe { NapallocScopeEnter(&mut h) }, S_OK);
            assert!(known_heaps().lock().unwrap().insert(h as usize), "a new scope heap for each level");
            if src.is_some() {
                host_heaps().lock().unwrap().insert(h as usize);
            }
            entered.push(h);
        }
        while let Some(h) = entered.pop() {
            assert_eq!(NapallocScopeLeave(h), S_OK);
        }
        // SAFETY: NULL restores the operating system.
        assert_eq!(unsafe { NapallocSetHostMemoryManager(std::ptr::null_mut()) }, S_OK);
    });
}

/// Consume the faults still armed in fake host `i`: its `VirtualAlloc` answers the first queued
/// HRESULT before it looks at its arguments, and `E_INVALIDARG` for these arguments once none is.
fn drain_faults(i: usize) {
    let this = hosts()[i] as *mut IHostMemoryManager;
    for _ in 0..64 {
        let mut out: *mut c_void = std::ptr::null_mut();
        // SAFETY: a live fake host; its vtable is complete up to VirtualAlloc; `out` is writable.
        let r = unsafe {
            let alloc = (*(*this).vtbl).virtual_alloc.expect("the fakes implement VirtualAlloc");
            alloc(this, std::ptr::null_mut(), 0, 0, 0, EMemoryCriticalLevel(0), &mut out)
        };
        if r == E_INVALIDARG {
            return;
        }
    }
    panic!("fake host {i} kept failing");
}

struct Model {
    /// The blocks of this input; each is in the heap of its [`Owner`].
    h: shared::Heap<Owner, SizeOf>,
    /// Active scopes of this thread, outermost first.
    scopes: Vec<usize>,
    /// Scopes this input left.
    left: Vec<usize>,
    /// A budget is set (either limit).
    budget: bool,
    /// A host is installed now.
    host_on: bool,
    /// Print the decoded program and what the model learns (`NAPALLOC_FUZZ_TRACE=1`).
    trace: bool,
}

impl Model {
    fn resolve(&self, p: Ptr) -> (*mut u8, Target) {
        let h = &self.h;
        let addr = match p {
            Ptr::Null => 0,
            Ptr::Live(n) => h.nth_live(n).unwrap_or(0x1000),
            Ptr::Interior(n, k) => h.nth_live(n).map_or(0x1010, |a| a + 1 + k as usize),
            Ptr::Freed(n) => h.nth_freed(n).unwrap_or(0x2000),
            Ptr::Int(a) => a,
        };
        h.lookup(addr)
    }

    /// The heap new blocks of this thread go to.
    fn current(&self) -> Owner {
        self.scopes.last().map_or(Owner::Home, |&h| Owner::Scope(h))
    }

    /// Whether an allocation of a served size in `owner`'s heap may fail.
    fn may_fail(&self, owner: Owner) -> bool {
        self.budget || matches!(owner, Owner::Scope(h) if host_heaps().lock().unwrap().contains(&h))
    }

    fn failed_alloc(&mut self, size: usize, owner: Owner, what: &str) {
        if self.trace {
            eprintln!("  {what}({size}) failed in {owner:?} (budget: {})", self.budget);
        }
        assert!(size > SERVED_MAX || self.may_fail(owner), "{what}({size}) failed in {owner:?}");
        self.h.failed += 1;
    }

    fn on_alloc(&mut self, p: *mut u8, size: usize, owner: Owner, parent: Option<Id>) {
        assert!(size <= SERVED_MAX, "alloc({size}) succeeded");
        self.h.on_alloc(p, size, parent, owner);
    }

    /// The scope `h` was left: every block of it is gone.
    fn scope_reset(&mut self, h: usize) {
        let blocks = &self.h.blocks;
        let gone: Vec<Id> = blocks.iter().filter(|(_, b)| b.extra == Owner::Scope(h)).map(|(id, _)| *id).collect();
        for id in gone {
            self.h.forget(id);
        }
        // An embedded block lives in its parent's heap: no tree spans two heaps.
        let blocks = &self.h.blocks;
        for b in blocks.values() {
            assert!(b.parent.is_none_or(|p| blocks.contains_key(&p)), "a child of a scope's block outlived it");
        }
        self.left.push(h);
        if self.left.len() > 16 {
            self.left.remove(0);
        }
    }

    /// `NapallocSetBudget` with limits computed from what the budget holds now.
    fn set_budget(&mut self, soft: Limit, hard: Limit) {
        let page = napalloc::os::page_size();
        let now = global_budget().stats().committed;
        let value = |l: Limit| match l {
            Limit::None => 0,
            Limit::Above(n) => now + (n as usize + 1) * page,
            Limit::Below(n) => now.saturating_sub(n as usize * page).max(page),
            Limit::Raw(v) => v,
        };
        let (soft, hard) = (value(soft), value(hard));
        let before = global_budget().stats();
        let r = NapallocSetBudget(soft, hard);
        if hard != 0 && soft > hard {
            assert_eq!(r, E_INVALIDARG, "NapallocSetBudget({soft}, {hard})");
            let after = global_budget().stats();
            assert_eq!((after.soft_limit, after.hard_limit), (before.soft_limit, before.hard_limit), "nothing changed");
        } else {
            assert_eq!(r, S_OK, "NapallocSetBudget({soft}, {hard})");
            self.budget = soft != 0 || hard != 0;
            let after = global_budget().stats();
            let want_hard = if hard == 0 { usize::MAX } else { hard };
            let want_soft = if soft == 0 { want_hard } else { soft };
            assert_eq!((after.soft_limit, after.hard_limit), (want_soft, want_hard), "limits set");
        }
    }

    fn step(&mut self, op: Op) {
        let budget_before = global_budget().stats();
        let mut process_level = false;
        match op {
            Op::Alloc(size) => {
                let size = size.get(EDGES);
                let owner = self.current();
                let p: *mut u8 = CoTaskMemAlloc(size).cast();
                if p.is_null() {
                    self.failed_alloc(size, owner, "CoTaskMemAlloc");
                } else {
                    self.on_alloc(p, size, owner, None);
                }
            }
            Op::AllocCritical(size, level) => {
                let size = size.get(EDGES);
                let owner = self.current();
                let before = stats();
                process_level = level == 2;
                let p: *mut u8 = NapallocAllocCritical(size, EMemoryCriticalLevel(level as i32)).cast();
                if !(0..=2).contains(&level) {
                    assert!(p.is_null(), "NapallocAllocCritical at level {level} returned {p:p}");
                    // Whether an undefined level is counted as a failure is the library's choice.
                    let counted = stats().failed_allocations - before.failed_allocations;
                    assert!(counted <= 1, "{counted} failures counted");
                    self.h.failed += counted;
                } else if p.is_null() {
                    self.failed_alloc(size, owner, "NapallocAllocCritical");
                } else {
                    self.on_alloc(p, size, owner, None);
                }
            }
            Op::AllocChild(parent, size) => {
                let size = size.get(EDGES);
                let (pp, target) = self.resolve(parent);
                let Some(pp) = std::ptr::NonNull::new(pp) else { return };
                match self.h.alloc_child_at(pp, target, size) {
                    Child::New(p, pid) => {
                        let owner = self.h.blocks[&pid].extra;
                        self.on_alloc(p, size, owner, Some(pid));
                    }
                    Child::Failed(pid) => {
                        let owner = self.h.blocks[&pid].extra;
                        self.failed_alloc(size, owner, "alloc_child");
                    }
                    // A bad parent (and maybe a size no block has): reported once, as either.
                    Child::Refused { .. } => {}
                }
            }
            Op::Free(p) => {
                let (pp, target) = self.resolve(p);
                // SAFETY: a live block is forgotten by the model; anything else is refused.
                unsafe { CoTaskMemFree(pp.cast()) };
                self.h.on_free(target, false);
            }
            Op::FreeTree(p) => {
                let (pp, target) = self.resolve(p);
                self.h.free_tree_at(pp, target);
            }
            Op::Realloc(p, size) => {
                let size = size.get(EDGES);
                let (pp, target) = self.resolve(p);
                // SAFETY: if the block moves or is freed the model forgets the old pointer.
                let q: *mut u8 = unsafe { CoTaskMemRealloc(pp.cast(), size) }.cast();
                match self.h.on_realloc(pp, target, size, q) {
                    Realloc::New => self.on_alloc(q, size, self.current(), None),
                    Realloc::Failed(None) => self.failed_alloc(size, self.current(), "realloc(NULL)"),
                    Realloc::Failed(Some(id)) => {
                        let owner = self.h.blocks[&id].extra;
                        self.failed_alloc(size, owner, "realloc");
                    }
                    Realloc::Done => {}
                }
            }
            Op::Enter { null_out } => {
                if null_out {
                    // SAFETY: NULL is refused.
                    assert_eq!(unsafe { NapallocScopeEnter(std::ptr::null_mut()) }, E_POINTER);
                    return;
                }
                if self.scopes.len() >= MAX_DEPTH {
                    return;
                }
                let before = stats();
                let mut h: *mut NapallocScope = 0x10 as *mut NapallocScope;
                // SAFETY: `h` is writable.
                let r = unsafe { NapallocScopeEnter(&mut h) };
                let counted = stats().failed_allocations - before.failed_allocations;
                assert!(counted <= 1, "{counted} failures counted for one scope");
                self.h.failed += counted;
                if r == S_OK {
                    let h = h as usize;
                    assert!(h != 0 && !self.scopes.contains(&h), "NapallocScopeEnter handed out {h:#x}");
                    if known_heaps().lock().unwrap().insert(h) && self.host_on {
                        host_heaps().lock().unwrap().insert(h);
                        if self.trace {
                            eprintln!("  new scope heap {h:#x} under a host");
                        }
                    }
                    self.scopes.push(h);
                } else {
                    assert_eq!((r, h), (E_OUTOFMEMORY, std::ptr::null_mut()), "NapallocScopeEnter failed");
                    assert!(self.budget || self.host_on, "NapallocScopeEnter failed with no budget and no host");
                }
            }
            Op::Leave(which) => {
                let handle: usize = match which {
                    ScopeRef::Innermost => self.scopes.last().copied().unwrap_or(0x30),
                    ScopeRef::Active(n) if !self.scopes.is_empty() => self.scopes[n as usize % self.scopes.len()],
                    ScopeRef::Left(n) if !self.left.is_empty() => self.left[n as usize % self.left.len()],
                    ScopeRef::Block(n) => self.h.nth_live(n).unwrap_or(0x40),
                    ScopeRef::Null => 0,
                    ScopeRef::Int(a) => a,
                    _ => 0x50,
                };
                let r = NapallocScopeLeave(std::ptr::without_provenance_mut(handle));
                if handle != 0 && self.scopes.last() == Some(&handle) {
                    assert_eq!(r, S_OK, "leaving the innermost scope {handle:#x}");
                    self.scopes.pop();
                    self.scope_reset(handle);
                } else {
                    assert_eq!(r, E_INVALIDARG, "NapallocScopeLeave({handle:#x}) with scopes {:x?}", self.scopes);
                }
            }
            Op::SetBudget(soft, hard) => self.set_budget(soft, hard),
            Op::SetHost(which) => {
                let (p, want) = match which {
                    Host::Os => (std::ptr::null_mut(), S_OK),
                    Host::Fake(i) => (hosts()[i as usize % FAKES] as *mut IHostMemoryManager, S_OK),
                    Host::Minimal => (hosts()[FAKES] as *mut IHostMemoryManager, S_OK),
                    Host::NoFree => (hosts()[FAKES + 1] as *mut IHostMemoryManager, E_INVALIDARG),
                };
                // SAFETY: NULL or a live fake host that is never released.
                let r = unsafe { NapallocSetHostMemoryManager(p) };
                assert_eq!(r, want, "NapallocSetHostMemoryManager({which:?})");
                if r == S_OK {
                    self.host_on = !p.is_null();
                }
            }
            Op::HostFails { host: i, n, hr } => {
                // One fake, or (for the larger values of `i`) every one that serves heaps.
                let which = i as usize % (2 * (FAKES + 1));
                for k in (0..=FAKES).filter(|&k| which > FAKES || k == which) {
                    for _ in 0..(n % 4) {
                        host(k).fail_next(hr.get());
                    }
                }
            }
            Op::HeapMinimize => {
                assert_eq!(NapallocHeapMinimize(), S_OK);
                self.h.trims += 1;
            }
            Op::StatsNull => {
                // SAFETY: NULL is refused.
                assert_eq!(unsafe { NapallocGetStats(std::ptr::null_mut()) }, E_POINTER);
            }
        }
        let b = global_budget().stats();
        assert!(b.committed <= b.hard_limit.max(budget_before.committed), "budget past its hard limit: {b:?}");
        if !process_level && b.committed > budget_before.committed {
            assert!(b.committed <= b.soft_limit, "a task-level commit went past the soft limit: {b:?}");
        }
    }

    fn check(&self) {
        let s = self.h.check();
        assert!(s.trims - self.h.base.trims >= self.h.trims, "trims ({s:?})");
        for i in 0..hosts().len() {
            let h = host(i);
            let v = h.tracker.violations();
            assert!(v.is_empty(), "fake host {i} saw napalloc break the contract: {v:?}");
            assert_eq!(
                h.unexpected_calls.load(std::sync::atomic::Ordering::Relaxed),
                0,
                "a method napalloc never calls"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    prepare();
    let mut m = Model {
        h: shared::Heap::new(SizeOf),
        scopes: Vec::new(),
        left: Vec::new(),
        budget: false,
        host_on: false,
        trace: shared::trace(),
    };
    shared::run_steps(&mut u, MAX_STEPS, |op: Op| {
        m.step(op);
        m.check();
    });
    // Back to where the input started: no budget, the OS, no pending host faults, no scope, and
    // every block of the thread's own heap freed (newest first, so that a crash reproduces).
    assert_eq!(NapallocSetBudget(0, 0), S_OK);
    m.budget = false;
    // SAFETY: NULL restores the operating system.
    assert_eq!(unsafe { NapallocSetHostMemoryManager(std::ptr::null_mut()) }, S_OK);
    m.host_on = false;
    for i in 0..hosts().len() {
        drain_faults(i);
    }
    while let Some(h) = m.scopes.pop() {
        assert_eq!(NapallocScopeLeave(std::ptr::without_provenance_mut(h)), S_OK);
        m.scope_reset(h);
    }
    m.h.free_all();
    m.check();
});
