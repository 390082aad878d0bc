//! The host memory layer: where pages come from, how much may be committed, and what happens
//! when memory is short. Modelled on the CLR's hosting interface `IHostMemoryManager` (mscoree.h).
//!
//! ```text
//!   arena / side table
//!          |  Pages::reserve / commit(level) / decommit / drop
//!          v
//!   Pages ------------ charge / credit ------------> Budget (soft + hard limit, trimmer, notify)
//!          |
//!          +-- Os ---------------------> crate::os::Reservation
//!          +-- Os, observed by a host -> crate::os::Reservation + Needs/Acquired/Released…
//!          +-- Host -> HostSource (failed state, error counters) -> dyn PageSource
//!                                                                    (e.g. com::ComHostMemoryManager)
//! ```
//!
//! * [`Pages`] is the only way the layers above get memory. It reserves, commits and decommits
//!   through a [`Source`], charges every commit to the source's [`Budget`] (if it has one) before
//!   committing, and credits decommits and the release of the reservation.
//! * A [`Source`] is the OS page layer ([`crate::os`]) by default ([`Source::os`],
//!   `Source::default()`), or a host's [`PageSource`] ([`Source::host`]), optionally with a
//!   [`Budget`] ([`Source::with_budget`]). [`default_source`] is the process-wide source that
//!   the task heap uses for every new region: the host installed with
//!   [`set_host_memory_manager`] (or the OS), charged to the process-wide [`global_budget`].
//! * Every commit carries a [`CriticalLevel`]; the budget's policy past its soft limit depends on
//!   it (see [`Budget`]), and a host receives it with every `VirtualAlloc`, so that it can apply
//!   its own policy.
//! * Every HRESULT a host returns becomes [`Error::Host`]: a clean allocation failure, counted in
//!   [`HostSource::errors`] and in the budget's [`BudgetStats::host_errors`]. `E_FAIL` puts the
//!   [`HostSource`] into a failed state, as the CLR does: see [`HostSource`].
//! * Memory-load notifications ([`MemoryAvailable`]) come from the budget when its thresholds are
//!   crossed, and from a host through `ICLRMemoryNotificationCallback` ([`com`]).
//!
//! Nothing on the accounting path takes a lock: the budget is a handful of atomics updated with
//! compare-exchange, and hooks (trimmer, notification) are read through an atomic pointer.

mod budget;
pub mod com;
mod global;
mod source;

pub(crate) use budget::NotifyDeferral;
pub use budget::{Budget, BudgetStats, Trimmer, HIGH_MARK_PERCENT, LOW_MARK_PERCENT};
pub use global::{
    default_host, default_source, global_budget, reset_host_failure, set_budget, set_default_host,
    set_host_memory_manager,
};
pub use source::{HostErrorStats, HostSource, FAILED_SOURCE_HRESULT};

use crate::os::Reservation;
use crate::Error;
use core::fmt;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// How critical an allocation is (mscoree.h `EMemoryCriticalLevel`).
///
/// * `Task`: may fail at once when memory is short (the default for `CoTaskMemAlloc`).
/// * `AppDomain`: idle memory is trimmed and the request retried before it fails.
/// * `Process`: after a trim, may use the reserve between the soft and hard limits.
#[repr(i32)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CriticalLevel {
    #[default]
    Task = 0,
    AppDomain = 1,
    Process = 2,
}

impl CriticalLevel {
    /// All levels, in order; `ALL[level as usize] == level`.
    pub const ALL: [CriticalLevel; 3] = [CriticalLevel::Task, CriticalLevel::AppDomain, CriticalLevel::Process];

    /// The level for a C `EMemoryCriticalLevel` value; `None` if it is not 0, 1 or 2.
    pub fn from_raw(raw: i32) -> Option<CriticalLevel> {
        match raw {
            0 => Some(CriticalLevel::Task),
            1 => Some(CriticalLevel::AppDomain),
            2 => Some(CriticalLevel::Process),
            _ => None,
        }
    }
}

/// How much memory is available (mscoree.h `EMemoryAvailable`), as told to a
/// `ICLRMemoryNotificationCallback` and to [`MemoryNotify`] hooks.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MemoryAvailable {
    /// Memory is short: trim what is idle.
    Low = 1,
    /// Neither short nor plentiful. The budget never sends this itself; hosts may.
    Neutral = 2,
    /// Memory is plentiful again.
    High = 3,
}

impl MemoryAvailable {
    /// The value for a C `EMemoryAvailable`; `None` if it is not 1, 2 or 3.
    pub fn from_raw(raw: i32) -> Option<MemoryAvailable> {
        match raw {
            1 => Some(MemoryAvailable::Low),
            2 => Some(MemoryAvailable::Neutral),
            3 => Some(MemoryAvailable::High),
            _ => None,
        }
    }
}

/// A memory-load notification hook: called with [`MemoryAvailable`] when the load changes.
///
/// It is called on whatever thread noticed the change (an allocating thread, or a host's
/// thread), with no lock held by napalloc, and it must never block: record the state, or hand
/// work to another thread, and return.
pub type MemoryNotify = Box<dyn Fn(MemoryAvailable) + Send + Sync>;

/// A host that hands out pages: the Rust side of `IHostMemoryManager`.
///
/// Only the four page operations are required. The others have defaults that are what the OS
/// page layer does: [`memory_load`](Self::memory_load) asks the OS, and the notification calls
/// are no-ops. A host adapter (such as [`com::ComHostMemoryManager`]) forwards all of them.
///
/// Every method may fail with any HRESULT (`HOST_E_TIMEOUT`, `HOST_E_NOT_OWNER`,
/// `HOST_E_ABANDONED`, `HOST_E_CLRNOTAVAILABLE`, `E_OUTOFMEMORY`, `E_FAIL`); report it as
/// [`Error::Host`]. When the source is used through a [`Source`], it is wrapped in a
/// [`HostSource`] that records those errors and implements the failed state on `E_FAIL`.
pub trait PageSource: Send + Sync + fmt::Debug {
    /// Reserve `len` bytes (`MEM_RESERVE`, `PAGE_NOACCESS`); `len` is a multiple of the OS
    /// allocation granularity. Returns the base, aligned to at least a page.
    fn reserve(&self, len: usize, level: CriticalLevel) -> Result<NonNull<u8>, Error>;
    /// Commit `[addr, addr + len)` (`MEM_COMMIT`, `PAGE_READWRITE`): page-aligned, inside a
    /// reservation of this source. Fresh pages read as zero.
    fn commit(&self, addr: NonNull<u8>, len: usize, level: CriticalLevel) -> Result<(), Error>;
    /// Decommit `[addr, addr + len)` (`MEM_DECOMMIT`); page-aligned, inside a reservation.
    fn decommit(&self, addr: NonNull<u8>, len: usize) -> Result<(), Error>;
    /// Release a whole reservation (`MEM_RELEASE`), given its base and length.
    fn release(&self, base: NonNull<u8>, len: usize) -> Result<(), Error>;

    /// `GetMemoryLoad`: the percentage of memory in use (0..=100) and the bytes still available.
    ///
    /// Default: the OS's answer ([`crate::os::memory_load`]), or `(0, usize::MAX)` ("no load
    /// known") where the OS does not say.
    fn memory_load(&self) -> Result<(u32, usize), Error> {
        Ok(crate::os::memory_load().unwrap_or((0, usize::MAX)))
    }

    /// `RegisterMemoryNotificationCallback`: from now on, tell `notify` when the memory load
    /// changes. A later registration replaces an earlier one.
    ///
    /// Default: the source never notifies; `notify` is dropped and `Ok` returned.
    fn register_memory_notify(&self, notify: MemoryNotify) -> Result<(), Error> {
        drop(notify);
        Ok(())
    }

    /// `NeedsVirtualAddressSpace`: napalloc is about to use `[addr, addr + len)`, address space
    /// it took from the OS rather than from this source. A host that does not want it used
    /// returns an error (`E_OUTOFMEMORY`), and napalloc gives the range back. Default: no-op.
    fn needs_virtual_address_space(&self, addr: NonNull<u8>, len: usize) -> Result<(), Error> {
        let _ = (addr, len);
        Ok(())
    }

    /// `AcquiredVirtualAddressSpace`: napalloc now holds `[addr, addr + len)` from the OS.
    /// Default: no-op.
    fn acquired_virtual_address_space(&self, addr: NonNull<u8>, len: usize) -> Result<(), Error> {
        let _ = (addr, len);
        Ok(())
    }

    /// `ReleasedVirtualAddressSpace`: napalloc gave the OS range starting at `addr` back.
    /// Default: no-op.
    fn released_virtual_address_space(&self, addr: NonNull<u8>) -> Result<(), Error> {
        let _ = addr;
        Ok(())
    }
}

/// Where a [`Pages`] handle takes its memory from, and which [`Budget`] it is charged to.
///
/// `Source::default()` (= [`Source::os()`] = [`Source::Os`]) is the OS page layer with no
/// budget: exactly what an arena built without a source gets. Add a budget with
/// [`with_budget`](Self::with_budget); take pages from a host with [`host`](Self::host). Cloning
/// a source shares its host (and the host's failed state) and its budget.
///
/// ```
/// use napalloc::host::{Budget, Source};
/// let budget = Budget::new(64 << 20, 80 << 20).unwrap();
/// let source = Source::os().with_budget(budget.clone());
/// let arena = napalloc::PageArena::builder().source(source).build().unwrap();
/// arena.alloc(7u64).unwrap();
/// assert!(budget.committed() > 0, "the first page was charged to the budget");
/// ```
#[derive(Clone, Debug, Default)]
pub struct Source {
    kind: SourceKind,
    budget: Option<Arc<Budget>>,
}

#[derive(Clone, Debug, Default)]
enum SourceKind {
    /// Pages from the OS page layer; nobody else is told.
    #[default]
    Os,
    /// Pages from the OS page layer; the host is told through `NeedsVirtualAddressSpace`,
    /// `AcquiredVirtualAddressSpace` and `ReleasedVirtualAddressSpace`, and may veto.
    OsObserved(Arc<HostSource>),
    /// Pages from the host.
    Host(Arc<HostSource>),
}

impl Source {
    /// The OS page layer, no budget (the default). Named like the enum variant it replaces, so
    /// that `Source::Os` reads as it always did.
    #[allow(non_upper_case_globals)]
    pub const Os: Source = Source { kind: SourceKind::Os, budget: None };

    /// The OS page layer, no budget (the default).
    pub fn os() -> Source {
        Source::Os
    }

    /// Pages from a host's page source, wrapped in a new [`HostSource`] (failed state, error
    /// counters). No budget.
    pub fn host(source: Arc<dyn PageSource>) -> Source {
        Source::from_host(HostSource::new(source))
    }

    /// Pages from an existing [`HostSource`], sharing its failed state and counters.
    pub fn from_host(host: Arc<HostSource>) -> Source {
        Source { kind: SourceKind::Host(host), budget: None }
    }

    /// Pages from the OS, but `host` is told about every reservation: before napalloc uses a
    /// range the OS gave it, `NeedsVirtualAddressSpace(base, len)` (an error vetoes it: the range
    /// is released and the reservation fails with that error), then
    /// `AcquiredVirtualAddressSpace(base, len)`; after the range is released,
    /// `ReleasedVirtualAddressSpace(base)`. Commits never involve the host.
    pub fn os_observed_by(host: Arc<HostSource>) -> Source {
        Source { kind: SourceKind::OsObserved(host), budget: None }
    }

    /// The same source, charged to `budget`.
    pub fn with_budget(mut self, budget: Arc<Budget>) -> Source {
        self.budget = Some(budget);
        self
    }

    /// The same source, charged to no budget.
    pub fn without_budget(mut self) -> Source {
        self.budget = None;
        self
    }

    /// The budget commits are charged to, if any.
    pub fn budget(&self) -> Option<&Arc<Budget>> {
        self.budget.as_ref()
    }

    /// The host this source takes pages from (or reports address space to), if any.
    pub fn host_source(&self) -> Option<&Arc<HostSource>> {
        match &self.kind {
            SourceKind::Os => None,
            SourceKind::OsObserved(h) | SourceKind::Host(h) => Some(h),
        }
    }

    /// Whether pages come from the OS page layer (observed by a host or not).
    pub fn is_os(&self) -> bool {
        !matches!(self.kind, SourceKind::Host(_))
    }

    /// The memory load as the page source sees it: the host's `GetMemoryLoad` for a host
    /// source, the OS's otherwise (see [`PageSource::memory_load`]).
    pub fn memory_load(&self) -> Result<(u32, usize), Error> {
        match &self.kind {
            SourceKind::Host(h) => h.guarded(self.budget.as_deref(), |s| s.memory_load()),
            _ => Ok(crate::os::memory_load().unwrap_or((0, usize::MAX))),
        }
    }
}

#[derive(Debug)]
enum Backing {
    /// Fields drop in declaration order: `res` is released first, then `_notice` tells the
    /// observing host, if any.
    Os {
        res: Reservation,
        _notice: Option<ReleasedNotice>,
    },
    Host(Arc<HostSource>),
}

/// Tells an observing host `ReleasedVirtualAddressSpace(base)` when dropped (after the
/// reservation it follows in [`Backing::Os`] was released).
#[derive(Debug)]
struct ReleasedNotice {
    host: Arc<HostSource>,
    base: NonNull<u8>,
    budget: Option<Arc<Budget>>,
}

impl Drop for ReleasedNotice {
    fn drop(&mut self) {
        let base = self.base;
        if let Err(e) = self.host.guarded(self.budget.as_deref(), |s| s.released_virtual_address_space(base)) {
            log::warn!("host failed ReleasedVirtualAddressSpace: {e}");
        }
    }
}

/// One reservation taken from a [`Source`]: the only way the layers above get pages.
///
/// Commits are charged to the source's budget before the page source is asked (so the budget
/// is never passed, even briefly); a failed commit is credited back. Decommits are credited after
/// they succeed, and whatever is still committed when the handle is dropped is credited then.
/// Every commit is charged in full: callers commit each page once (as the arena does, which only
/// commits past its committed prefix) and decommit only committed pages.
#[derive(Debug)]
pub struct Pages {
    /// The first byte (a copy of the backing's, so that `base()` is one load).
    base: NonNull<u8>,
    /// The reserved length (a copy of the backing's).
    len: usize,
    backing: Backing,
    budget: Option<Arc<Budget>>,
    /// Bytes committed through this handle and not decommitted since, i.e. what the budget holds
    /// on this reservation's behalf. Written by `commit` (add after success) and `decommit`
    /// (saturating subtract after success) from whichever thread holds `&Pages`; read by `drop`
    /// to credit the rest.
    charged: AtomicUsize,
}

// SAFETY: `Pages` is address space plus `Send + Sync` sources and budget; its methods take
// ranges whose safety the caller guarantees (see `crate::os`), and its own state is atomic.
unsafe impl Send for Pages {}
// SAFETY: as above.
unsafe impl Sync for Pages {}

impl Pages {
    /// Reserve at least `len` bytes from `source` (address space only: nothing is charged to the
    /// budget until it is committed).
    pub fn reserve(source: &Source, len: usize, level: CriticalLevel) -> Result<Pages, Error> {
        let budget = source.budget.as_deref();
        let (base, len, backing) = match &source.kind {
            SourceKind::Os => {
                let res = Reservation::new(len)?;
                (res.base(), res.len(), Backing::Os { res, _notice: None })
            }
            SourceKind::OsObserved(h) => {
                let res = Reservation::new(len)?;
                let (base, len) = (res.base(), res.len());
                // A veto drops (releases) `res` on the way out.
                h.guarded(budget, |s| s.needs_virtual_address_space(base, len))?;
                if let Err(e) = h.guarded(budget, |s| s.acquired_virtual_address_space(base, len)) {
                    log::warn!("host failed AcquiredVirtualAddressSpace for {len} bytes: {e}");
                }
                let notice = ReleasedNotice { host: Arc::clone(h), base, budget: source.budget.clone() };
                (base, len, Backing::Os { res, _notice: Some(notice) })
            }
            SourceKind::Host(h) => {
                if len == 0 {
                    return Err(Error::InvalidLayout);
                }
                let len = crate::os::round_up(len, crate::os::granularity()).ok_or(Error::TooLarge)?;
                let base = h.guarded(budget, |s| s.reserve(len, level))?;
                if base.as_ptr() as usize % crate::os::page_size() != 0 {
                    // The host broke the VirtualAlloc contract; give the range back and refuse.
                    log::error!("host reserved {len} bytes at {base:p}, which is not page-aligned");
                    let _ = h.release_via(base, len, budget);
                    let hr = crate::hr::HOST_E_INVALIDOPERATION;
                    h.note_error(hr, budget);
                    return Err(Error::Host(hr));
                }
                (base, len, Backing::Host(Arc::clone(h)))
            }
        };
        Ok(Pages { base, len, backing, budget: source.budget.clone(), charged: AtomicUsize::new(0) })
    }

    /// The first byte.
    #[inline]
    pub fn base(&self) -> NonNull<u8> {
        self.base
    }

    /// The reserved length.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a reservation is never empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Bytes committed through this handle and not decommitted since (what the budget holds on
    /// its behalf).
    pub fn charged(&self) -> usize {
        self.charged.load(Ordering::Relaxed)
    }

    /// The budget this reservation is charged to, if any.
    pub fn budget(&self) -> Option<&Arc<Budget>> {
        self.budget.as_ref()
    }

    /// Commit a page-aligned range: charge the budget (its policy for `level` applies past the
    /// soft limit), then commit. On any error nothing is committed and nothing stays charged.
    ///
    /// # Safety
    /// The range is page-aligned and inside the reservation.
    pub unsafe fn commit(&self, offset: usize, len: usize, level: CriticalLevel) -> Result<(), Error> {
        if let Some(b) = &self.budget {
            b.charge(len, level)?;
        }
        let r = match &self.backing {
            // SAFETY: forwarded caller guarantee.
            Backing::Os { res, .. } => unsafe { res.commit(offset, len) },
            Backing::Host(h) => {
                // SAFETY: offset is inside the reservation (caller's guarantee).
                let addr = unsafe { NonNull::new_unchecked(self.base.as_ptr().add(offset)) };
                h.guarded(self.budget.as_deref(), |s| s.commit(addr, len, level))
            }
        };
        match r {
            Ok(()) => {
                self.charged.fetch_add(len, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                if let Some(b) = &self.budget {
                    b.credit(len);
                    b.note_failure(level);
                }
                Err(e)
            }
        }
    }

    /// Decommit a page-aligned range and credit it to the budget. On error nothing changes (the
    /// range stays committed and charged).
    ///
    /// # Safety
    /// The range is page-aligned, inside the reservation, committed, and nothing refers into it.
    pub unsafe fn decommit(&self, offset: usize, len: usize) -> Result<(), Error> {
        match &self.backing {
            // SAFETY: forwarded caller guarantee.
            Backing::Os { res, .. } => unsafe { res.decommit(offset, len)? },
            Backing::Host(h) => {
                // SAFETY: offset is inside the reservation (caller's guarantee).
                let addr = unsafe { NonNull::new_unchecked(self.base.as_ptr().add(offset)) };
                h.guarded(self.budget.as_deref(), |s| s.decommit(addr, len))?
            }
        }
        let prev = budget::saturating_sub(&self.charged, len, Ordering::Relaxed);
        debug_assert!(prev >= len, "decommitted {len} bytes but only {prev} were committed through this handle");
        if let Some(b) = &self.budget {
            b.credit(prev.min(len));
        }
        Ok(())
    }

    /// Let the OS take back the pages of a committed range whose contents are not needed (see
    /// `os::Reservation::purge`); the range stays committed and charged. `Ok(false)` for pages of
    /// a host, which has no such operation (nothing is done).
    ///
    /// # Safety
    /// The range is page-aligned, inside the reservation, committed, and nothing refers into it.
    pub(crate) unsafe fn purge(&self, offset: usize, len: usize) -> Result<bool, Error> {
        match &self.backing {
            // SAFETY: forwarded caller guarantee.
            Backing::Os { res, .. } => unsafe { res.purge(offset, len) }.map(|()| true),
            Backing::Host(_) => Ok(false),
        }
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        // An OS reservation (and its observer notice) is released when the fields drop, after
        // this body.
        if let Backing::Host(h) = &self.backing {
            // A failure is logged, counted and (if the host failed) parked by `release_via`.
            let _ = h.release_via(self.base, self.len, self.budget.as_deref());
        }
        // The pages are gone (or, if a host failed to take them back, no longer napalloc's).
        let charged = *self.charged.get_mut();
        if let (Some(b), true) = (&self.budget, charged > 0) {
            b.credit(charged);
        }
    }
}
