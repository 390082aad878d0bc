//! The process-wide default: one [`Budget`] over every region and heap, and the host (if any)
//! that new regions take their pages from.
//!
//! * [`default_source`] is what the task heap uses for every new region: pages from the host
//!   installed with [`set_host_memory_manager`] / [`set_default_host`] (the OS if none),
//!   charged to [`global_budget`].
//! * Changing the host affects regions created afterwards; a region keeps the source it was
//!   built with (and a reference on its host) until it is dropped.
//! * The global budget starts without limits; [`set_budget`] changes its limits for every
//!   region at once, old and new. Its trimmer trims the idle regions of every pool charged to it
//!   ([`crate::pool::trim_idle_pools`]); pools are charged to it by default.
//!
//! [`set_host_memory_manager`], [`set_budget`] and [`reset_host_failure`] return HRESULTs and
//! never panic (a panic inside is caught and reported as `E_FAIL`), ready for the C ABI.

use super::com::ComHostMemoryManager;
use super::{Budget, HostSource, PageSource, Source};
use crate::hr::{self, HRESULT};
use crate::Error;
use core::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock, RwLock};

struct Global {
    budget: Arc<Budget>,
    /// The host new regions take pages from; `None`: the OS. Read by `default_source` (once
    /// per new region, not per allocation), written by `set_default_host`.
    host: RwLock<Option<Arc<HostSource>>>,
}

fn global() -> &'static Global {
    static GLOBAL: OnceLock<Global> = OnceLock::new();
    GLOBAL.get_or_init(|| {
        let budget = Budget::unlimited();
        // Idle pool memory is what a critical request past the soft limit may take back.
        budget.set_trimmer(Box::new(|want| crate::pool::trim_idle_pools(global_budget(), want)));
        Global { budget, host: RwLock::new(None) }
    })
}

/// The process-wide budget (no limits until [`set_budget`]). Its trimmer is
/// [`crate::pool::trim_idle_pools`] over itself: every pool charged to it (the default, see
/// [`crate::pool::PoolConfig::source`]) gives its idle regions' memory back when an
/// `AppDomain`- or `Process`-critical commit would pass the soft limit, and when a host says
/// `eMemoryAvailableLow`.
pub fn global_budget() -> &'static Arc<Budget> {
    &global().budget
}

/// The source for a new region: the default host (or the OS), charged to [`global_budget`].
pub fn default_source() -> Source {
    let source = match default_host() {
        Some(h) => Source::from_host(h),
        None => Source::os(),
    };
    source.with_budget(Arc::clone(global_budget()))
}

/// The host new regions take pages from, if any.
pub fn default_host() -> Option<Arc<HostSource>> {
    global().host.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Make new regions take their pages from `host` (`None`: from the OS). Returns the previous
/// host.
pub fn set_default_host(host: Option<Arc<HostSource>>) -> Option<Arc<HostSource>> {
    core::mem::replace(&mut *global().host.write().unwrap_or_else(|e| e.into_inner()), host)
}

/// Install a C host's `IHostMemoryManager*` as the page source of new regions (the future
/// `NapallocSetHostMemoryManager`).
///
/// napalloc takes a reference on `host` (`AddRef`) and registers an
/// `ICLRMemoryNotificationCallback` with it (`RegisterMemoryNotificationCallback`): on
/// `eMemoryAvailableLow` the global budget's trimmer is asked to trim (see
/// [`Budget::on_host_notification`]). NULL goes back to the OS for new regions.
///
/// Returns `S_OK`, or the HRESULT with which the host refused the callback registration (the
/// host is then not installed, and the reference is given back).
///
/// # Safety
/// `host` is NULL or a live, free-threaded `IHostMemoryManager` (see
/// [`ComHostMemoryManager::adopt`]); it must stay usable as long as napalloc holds a reference.
pub unsafe fn set_host_memory_manager(host: *mut c_void) -> HRESULT {
    let run = AssertUnwindSafe(|| -> Result<(), Error> {
        if host.is_null() {
            set_default_host(None);
            return Ok(());
        }
        // SAFETY: forwarded caller guarantee.
        let com = unsafe { ComHostMemoryManager::adopt(host)? };
        let budget = Arc::clone(global_budget());
        if let Err(e) = com.register_memory_notify(Box::new(move |m| budget.on_host_notification(m))) {
            if let Error::Host(h) = e {
                global_budget().record_host_error(h);
            }
            return Err(e); // dropping `com` releases our reference
        }
        set_default_host(Some(HostSource::new(Arc::new(com))));
        Ok(())
    });
    match catch_unwind(run) {
        Ok(Ok(())) => hr::S_OK,
        Ok(Err(e)) => e.hresult(),
        Err(_) => hr::E_FAIL,
    }
}

/// Set the limits of the global budget in bytes (the future `NapallocSetBudget`). 0 means "no
/// limit" for either; a hard limit of 0 with a soft limit keeps the hard limit open, a soft
/// limit of 0 with a hard limit makes the soft limit equal to the hard one (no reserve).
/// `soft > hard` → `E_INVALIDARG`.
pub fn set_budget(soft: usize, hard: usize) -> HRESULT {
    let hard = if hard == 0 { usize::MAX } else { hard };
    let soft = if soft == 0 { hard } else { soft };
    match catch_unwind(|| global_budget().set_limits(soft, hard)) {
        Ok(Ok(())) => hr::S_OK,
        Ok(Err(_)) => hr::E_INVALIDARG,
        Err(_) => hr::E_FAIL,
    }
}

/// Take the default host out of its failed state (see [`HostSource::reset`]). `S_OK` if it was
/// failed, `S_FALSE` if it was not (or there is no host).
pub fn reset_host_failure() -> HRESULT {
    match catch_unwind(|| match default_host() {
        Some(h) if h.is_failed() => {
            h.reset();
            hr::S_OK
        }
        _ => hr::S_FALSE,
    }) {
        Ok(h) => h,
        Err(_) => hr::E_FAIL,
    }
}
