//! The host memory layer: where pages come from, modelled on the CLR's `IHostMemoryManager`.
//!
//! The arena never calls the OS directly. It asks a [`Pages`] handle, which reserves, commits and
//! decommits through a [`Source`]: the OS page layer ([`crate::os`]) by default, or a host's
//! [`PageSource`] (for instance a C/C++ host's `IHostMemoryManager`) that owns the process's
//! memory. Every commit carries a [`CriticalLevel`] that says how bad a failure would be.

use crate::os::Reservation;
use crate::Error;
use core::fmt;
use core::ptr::NonNull;
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

/// A host that hands out pages (the Rust side of `IHostMemoryManager`'s VirtualAlloc/VirtualFree).
///
/// Every method may fail with any HRESULT (`HOST_E_TIMEOUT`, `HOST_E_NOT_OWNER`,
/// `HOST_E_ABANDONED`, `E_OUTOFMEMORY`, `E_FAIL`); the failure is reported as [`Error::Host`].
pub trait PageSource: Send + Sync + fmt::Debug {
    /// Reserve `len` bytes (`MEM_RESERVE`, `PAGE_NOACCESS`); `len` is a multiple of the OS
    /// allocation granularity. Returns the base, aligned to that granularity.
    fn reserve(&self, len: usize, level: CriticalLevel) -> Result<NonNull<u8>, Error>;
    /// Commit `[addr, addr + len)` (`MEM_COMMIT`, `PAGE_READWRITE`): page-aligned, inside a
    /// reservation of this source. Fresh pages read as zero.
    fn commit(&self, addr: NonNull<u8>, len: usize, level: CriticalLevel) -> Result<(), Error>;
    /// Decommit `[addr, addr + len)` (`MEM_DECOMMIT`); page-aligned, inside a reservation.
    fn decommit(&self, addr: NonNull<u8>, len: usize) -> Result<(), Error>;
    /// Release a whole reservation (`MEM_RELEASE`), given its base and length.
    fn release(&self, base: NonNull<u8>, len: usize) -> Result<(), Error>;
}

/// Where a [`Pages`] handle takes its memory from.
#[derive(Clone, Debug, Default)]
pub enum Source {
    /// The operating system's page layer.
    #[default]
    Os,
    /// A host page source.
    Host(Arc<dyn PageSource>),
}

#[derive(Debug)]
enum Backing {
    Os(Reservation),
    Host { base: NonNull<u8>, len: usize, source: Arc<dyn PageSource> },
}

/// One reservation taken from a [`Source`]: the only way the layers above get pages.
#[derive(Debug)]
pub struct Pages {
    backing: Backing,
}

// SAFETY: `Pages` is address space plus a `Send + Sync` source; its methods take ranges whose
// safety the caller guarantees (see `crate::os`).
unsafe impl Send for Pages {}
// SAFETY: as above.
unsafe impl Sync for Pages {}

impl Pages {
    /// Reserve at least `len` bytes from `source`.
    pub fn reserve(source: &Source, len: usize, level: CriticalLevel) -> Result<Pages, Error> {
        let backing = match source {
            Source::Os => Backing::Os(Reservation::new(len)?),
            Source::Host(h) => {
                if len == 0 {
                    return Err(Error::InvalidLayout);
                }
                let len = crate::os::round_up(len, crate::os::granularity()).ok_or(Error::TooLarge)?;
                let base = h.reserve(len, level)?;
                Backing::Host { base, len, source: Arc::clone(h) }
            }
        };
        Ok(Pages { backing })
    }

    /// The first byte.
    #[inline]
    pub fn base(&self) -> NonNull<u8> {
        match &self.backing {
            Backing::Os(r) => r.base(),
            Backing::Host { base, .. } => *base,
        }
    }

    /// Always false: a reservation is never empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The reserved length.
    #[inline]
    pub fn len(&self) -> usize {
        match &self.backing {
            Backing::Os(r) => r.len(),
            Backing::Host { len, .. } => *len,
        }
    }

    /// Commit a page-aligned range.
    ///
    /// # Safety
    /// The range is page-aligned and inside the reservation.
    pub unsafe fn commit(&self, offset: usize, len: usize, level: CriticalLevel) -> Result<(), Error> {
        match &self.backing {
            // SAFETY: forwarded caller guarantee.
            Backing::Os(r) => unsafe { r.commit(offset, len) },
            Backing::Host { base, source, .. } => {
                // SAFETY: offset is inside the reservation (caller's guarantee).
                let addr = unsafe { NonNull::new_unchecked(base.as_ptr().add(offset)) };
                source.commit(addr, len, level)
            }
        }
    }

    /// Decommit a page-aligned range.
    ///
    /// # Safety
    /// The range is page-aligned, inside the reservation, and nothing refers into it.
    pub unsafe fn decommit(&self, offset: usize, len: usize) -> Result<(), Error> {
        match &self.backing {
            // SAFETY: forwarded caller guarantee.
            Backing::Os(r) => unsafe { r.decommit(offset, len) },
            Backing::Host { base, source, .. } => {
                // SAFETY: offset is inside the reservation (caller's guarantee).
                let addr = unsafe { NonNull::new_unchecked(base.as_ptr().add(offset)) };
                source.decommit(addr, len)
            }
        }
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        if let Backing::Host { base, len, source } = &self.backing {
            if let Err(e) = source.release(*base, *len) {
                log::warn!("host failed to release a reservation of {len} bytes: {e}");
            }
        }
    }
}
