//! [`HostSource`]: a host's [`PageSource`] behind the CLR's error discipline.
//!
//! Every HRESULT a host returns (`HOST_E_TIMEOUT`, `HOST_E_NOT_OWNER`, `HOST_E_ABANDONED`,
//! `HOST_E_CLRNOTAVAILABLE`, `E_OUTOFMEMORY`, `E_FAIL`, or anything else) reaches the caller as
//! [`Error::Host`] — a clean allocation failure — and is counted, here and in the budget of the
//! [`Pages`](super::Pages) that made the call.
//!
//! `E_FAIL` is different: the CLR treats it as "the host is in an unrecoverable state" and
//! disables itself. A `HostSource` that sees `E_FAIL` from any call becomes *failed*: every later
//! call fails at once with `Error::Host(`[`FAILED_SOURCE_HRESULT`]`)` (`HOST_E_CLRNOTAVAILABLE`)
//! without reaching the host, until [`HostSource::reset`] is called.
//!
//! A reservation whose release fails (the host returned an error, or the source is failed) is
//! *parked*: remembered, and given back to the host by [`HostSource::retry_parked`] (which
//! [`HostSource::reset`] calls), so that a host that recovers gets its address space back. The
//! budget is credited when the reservation is dropped all the same: napalloc no longer uses it.

use super::{Budget, CriticalLevel, MemoryNotify, PageSource};
use crate::hr::{self, HRESULT};
use crate::Error;
use core::fmt;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The HRESULT every call of a failed [`HostSource`] returns (inside [`Error::Host`]).
pub const FAILED_SOURCE_HRESULT: HRESULT = hr::HOST_E_CLRNOTAVAILABLE;

/// The HRESULTs counted one by one; the slot after the last counts every other HRESULT.
const KNOWN: [HRESULT; 6] = [
    hr::HOST_E_TIMEOUT,
    hr::HOST_E_NOT_OWNER,
    hr::HOST_E_ABANDONED,
    hr::HOST_E_CLRNOTAVAILABLE,
    hr::E_OUTOFMEMORY,
    hr::E_FAIL,
];

/// Lock-free counters of host failures, shared by [`HostSource`] and [`Budget`].
#[derive(Debug, Default)]
pub(crate) struct HostErrorCounters {
    /// Host failures recorded. Incremented by `record` (any thread, after `by_hresult`).
    count: AtomicU64,
    /// The HRESULT of the most recent failure; `S_OK` before the first. Written by `record`.
    last: AtomicI32,
    /// Failures per HRESULT, indexed as `KNOWN`; the last slot counts all other HRESULTs.
    /// Incremented by `record`.
    by_hresult: [AtomicU64; KNOWN.len() + 1],
}

impl HostErrorCounters {
    pub(crate) fn record(&self, hr: HRESULT) {
        let slot = KNOWN.iter().position(|&k| k == hr).unwrap_or(KNOWN.len());
        self.by_hresult[slot].fetch_add(1, Ordering::Relaxed);
        self.last.store(hr, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> HostErrorStats {
        let n = |i: usize| self.by_hresult[i].load(Ordering::Relaxed);
        HostErrorStats {
            count: self.count.load(Ordering::Relaxed),
            last: self.last.load(Ordering::Relaxed),
            timeout: n(0),
            not_owner: n(1),
            abandoned: n(2),
            clr_not_available: n(3),
            out_of_memory: n(4),
            fail: n(5),
            other: n(6),
        }
    }
}

/// Host failures by HRESULT: how many, and the last one.
///
/// A snapshot of counters that other threads keep updating; the fields are each exact but not
/// necessarily taken at the same instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostErrorStats {
    /// All host failures.
    pub count: u64,
    /// The HRESULT of the most recent failure; `S_OK` (0) if there was none.
    pub last: HRESULT,
    /// `HOST_E_TIMEOUT` failures.
    pub timeout: u64,
    /// `HOST_E_NOT_OWNER` failures.
    pub not_owner: u64,
    /// `HOST_E_ABANDONED` failures.
    pub abandoned: u64,
    /// `HOST_E_CLRNOTAVAILABLE` failures returned by the host itself (not the fail-fast
    /// refusals of a failed source, see [`HostSource::refused_while_failed`]).
    pub clr_not_available: u64,
    /// `E_OUTOFMEMORY` failures.
    pub out_of_memory: u64,
    /// `E_FAIL` failures.
    pub fail: u64,
    /// Failures with any other HRESULT.
    pub other: u64,
}

impl HostErrorStats {
    /// How many failures had this HRESULT.
    pub fn of(&self, hr: HRESULT) -> u64 {
        match KNOWN.iter().position(|&k| k == hr) {
            Some(0) => self.timeout,
            Some(1) => self.not_owner,
            Some(2) => self.abandoned,
            Some(3) => self.clr_not_available,
            Some(4) => self.out_of_memory,
            Some(5) => self.fail,
            _ => self.other,
        }
    }
}

/// A reservation whose release failed: the host's base pointer (kept as a pointer, with its
/// provenance, since it is handed back to the host) and length.
#[derive(Debug)]
struct Parked {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: a parked reservation is address space nobody uses any more; its pointer is only passed
// back to the host's (free-threaded) release, from whichever thread retries.
unsafe impl Send for Parked {}

/// A host's [`PageSource`] with the failed state and error counters (see the module docs).
///
/// [`Source::host`](super::Source::host) wraps a page source in one;
/// [`Source::from_host`](super::Source::from_host) shares an existing one, so that several
/// sources (with different budgets, say) see one failed state. It is itself a `PageSource`.
pub struct HostSource {
    inner: Arc<dyn PageSource>,
    /// True from the moment the host returned `E_FAIL` until `reset`. Set by `note_error` (any
    /// thread), cleared by `reset`; read (Acquire) before every call to the host.
    failed: AtomicBool,
    /// Calls refused because the source was failed. Incremented by `guarded`.
    refused: AtomicU64,
    /// Failures the host returned.
    errors: HostErrorCounters,
    /// Reservations whose release failed; replayed by `retry_parked`. The lock is
    /// taken only on those two cold paths, never to commit or decommit.
    parked: Mutex<Vec<Parked>>,
}

impl fmt::Debug for HostSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostSource")
            .field("inner", &self.inner)
            .field("failed", &self.is_failed())
            .field("errors", &self.errors())
            .finish_non_exhaustive()
    }
}

impl HostSource {
    /// Wrap `inner`.
    pub fn new(inner: Arc<dyn PageSource>) -> Arc<HostSource> {
        Arc::new(HostSource {
            inner,
            failed: AtomicBool::new(false),
            refused: AtomicU64::new(0),
            errors: HostErrorCounters::default(),
            parked: Mutex::new(Vec::new()),
        })
    }

    /// The wrapped page source.
    pub fn inner(&self) -> &Arc<dyn PageSource> {
        &self.inner
    }

    /// Whether the host failed with `E_FAIL` and the source has not been reset since.
    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Leave the failed state: later calls reach the host again. Then
    /// [`retry_parked`](Self::retry_parked). Returns how many parked reservations were released.
    pub fn reset(&self) -> usize {
        self.failed.store(false, Ordering::Release);
        self.retry_parked()
    }

    /// Try again to release the parked reservations (see the module docs). A release that fails
    /// again is logged, counted and stays parked. Returns how many were released.
    pub fn retry_parked(&self) -> usize {
        let parked = core::mem::take(&mut *self.parked.lock().unwrap_or_else(|e| e.into_inner()));
        let mut released = 0;
        for Parked { base, len } in parked {
            if self.release_via(base, len, None).is_ok() {
                released += 1;
            }
        }
        released
    }

    /// Host failures so far (not counting the fail-fast refusals of the failed state).
    pub fn errors(&self) -> HostErrorStats {
        self.errors.snapshot()
    }

    /// Calls refused without reaching the host because the source was failed.
    pub fn refused_while_failed(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Reservations waiting for [`retry_parked`](Self::retry_parked) to be released.
    pub fn parked(&self) -> usize {
        self.parked.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Record a host failure with `hr`, here and in `budget`; `E_FAIL` fails the source.
    pub(crate) fn note_error(&self, hr: HRESULT, budget: Option<&Budget>) {
        self.errors.record(hr);
        if let Some(b) = budget {
            b.record_host_error(hr);
        }
        if hr == hr::E_FAIL && !self.failed.swap(true, Ordering::AcqRel) {
            log::error!("the host page source failed with E_FAIL; it is disabled until reset");
        }
    }

    /// Call the host through `f` unless the source is failed; record a host failure.
    pub(crate) fn guarded<T>(
        &self,
        budget: Option<&Budget>,
        f: impl FnOnce(&dyn PageSource) -> Result<T, Error>,
    ) -> Result<T, Error> {
        if self.is_failed() {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Error::Host(FAILED_SOURCE_HRESULT));
        }
        let r = f(&*self.inner);
        if let Err(Error::Host(hr)) = r {
            self.note_error(hr, budget);
        }
        r
    }

    /// Release a reservation; park it if that fails (see the module docs).
    pub(crate) fn release_via(&self, base: NonNull<u8>, len: usize, budget: Option<&Budget>) -> Result<(), Error> {
        let r = self.guarded(budget, |s| s.release(base, len));
        if let Err(e) = r {
            self.parked.lock().unwrap_or_else(|e| e.into_inner()).push(Parked { base, len });
            log::warn!("release of {len} bytes at {base:p} failed ({e}); parked until retried");
        }
        r
    }
}

impl PageSource for HostSource {
    fn reserve(&self, len: usize, level: CriticalLevel) -> Result<NonNull<u8>, Error> {
        self.guarded(None, |s| s.reserve(len, level))
    }
    fn commit(&self, addr: NonNull<u8>, len: usize, level: CriticalLevel) -> Result<(), Error> {
        self.guarded(None, |s| s.commit(addr, len, level))
    }
    fn decommit(&self, addr: NonNull<u8>, len: usize) -> Result<(), Error> {
        self.guarded(None, |s| s.decommit(addr, len))
    }
    /// Parks the reservation if the release fails (see the module docs).
    fn release(&self, base: NonNull<u8>, len: usize) -> Result<(), Error> {
        self.release_via(base, len, None)
    }
    fn memory_load(&self) -> Result<(u32, usize), Error> {
        self.guarded(None, |s| s.memory_load())
    }
    fn register_memory_notify(&self, notify: MemoryNotify) -> Result<(), Error> {
        self.guarded(None, |s| s.register_memory_notify(notify))
    }
    fn needs_virtual_address_space(&self, addr: NonNull<u8>, len: usize) -> Result<(), Error> {
        self.guarded(None, |s| s.needs_virtual_address_space(addr, len))
    }
    fn acquired_virtual_address_space(&self, addr: NonNull<u8>, len: usize) -> Result<(), Error> {
        self.guarded(None, |s| s.acquired_virtual_address_space(addr, len))
    }
    fn released_virtual_address_space(&self, addr: NonNull<u8>) -> Result<(), Error> {
        self.guarded(None, |s| s.released_virtual_address_space(addr))
    }
}
