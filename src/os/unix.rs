//! Unix backend of the page layer (see `os/mod.rs` for the contract).
//!
//! The reservation is an anonymous private mapping created by memmap2 with `MAP_NORESERVE`
//! (`no_reserve_swap`) and immediately turned `PROT_NONE`, so it is neither charged to the commit
//! limit (even under `vm.overcommit_memory = 2`) nor accessible until committed: a stray access
//! beyond the committed part faults instead of silently creating pages. memmap2 owns the mapping
//! (munmap on drop) and issues `MADV_DONTNEED`; it has no call for the protection of a sub-range,
//! so `mprotect` comes from libc, as does the page size (`sysconf(_SC_PAGESIZE)`).
//!
//! Everything here goes through libc, none of it around it: a program linking napalloc must run
//! under valgrind (memcheck, callgrind), which sees only what goes through libc and the kernel.
//! rustix's raw Linux backend, used here before, found the page size by reading the vDSO's ELF
//! header through the aux vector, and under valgrind that address is not mapped (rustix issue
//! 1559): every C client died with SIGSEGV before its first allocation.
//!
//! # References
//! * mmap(2), mprotect(2), madvise(2) (`MADV_DONTNEED`: "subsequent accesses of pages in the range
//!   will succeed, but will result in ... zero-fill-on-demand pages for anonymous private mappings").
//! * sysconf(3): `_SC_PAGESIZE`.

use super::{debug_check_range, reservation_size, OsConfig};
use crate::Error;
use core::ptr::NonNull;
use memmap2::{MmapOptions, MmapRaw, UncheckedAdvice};

/// The page size, from `sysconf(_SC_PAGESIZE)`. POSIX requires it to be a positive power of two;
/// anything else (a failing `sysconf`) is a broken system, and the panic says so at once rather
/// than letting every rounding above this layer go wrong.
fn sysconf_page_size() -> usize {
    // SAFETY: sysconf reads a system constant; it touches no memory of ours.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    match usize::try_from(page) {
        Ok(page) if page.is_power_of_two() => page,
        _ => panic!("sysconf(_SC_PAGESIZE) returned {page}, not a page size"),
    }
}

pub(super) fn query_config() -> OsConfig {
    let page = sysconf_page_size();
    OsConfig { page_size: page, granularity: page, has_virtual_reserve: true, backend: "mmap" }
}

/// `mprotect(2)` over `[addr, addr + len)`; `prot` is `PROT_NONE` or `PROT_READ | PROT_WRITE`.
///
/// # Safety
/// The range lies inside a mapping owned by the caller, and if `prot` lowers the protection, no
/// live reference points into it.
unsafe fn protect(addr: *mut u8, len: usize, prot: libc::c_int) -> Result<(), Error> {
    // SAFETY: the caller guarantees the range is its own mapping and, for a lowering, unreferenced.
    if unsafe { libc::mprotect(addr.cast(), len, prot) } == 0 {
        Ok(())
    } else {
        Err(os_err(std::io::Error::last_os_error()))
    }
}

/// A reserved range of address space (see the module contract in `os/mod.rs`).
#[derive(Debug)]
pub struct Reservation {
    // Invariant: `map` spans exactly `len()` bytes starting at `base()`, page-aligned; every page
    // is PROT_NONE unless committed by `commit` and not decommitted since.
    map: MmapRaw,
}

// SAFETY: the reservation is plain address space; the methods take `&self` and only issue system
// calls, which the kernel serializes. Access to committed bytes is the owner's business.
unsafe impl Send for Reservation {}
// SAFETY: as above; no method touches the mapped bytes through `&self`.
unsafe impl Sync for Reservation {}

/// See [`super::memory_load`]: `MemTotal` and `MemAvailable` from `/proc/meminfo` (proc(5)).
#[cfg(target_os = "linux")]
pub(super) fn memory_load() -> Option<(u32, usize)> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = info.lines().find(|l| l.starts_with(name))?;
        line[name.len()..].trim().trim_end_matches("kB").trim().parse::<u64>().ok()
    };
    let total = field("MemTotal:")?;
    let avail = field("MemAvailable:")?.min(total);
    if total == 0 {
        return None;
    }
    let load = 100 - (avail.saturating_mul(100) / total).min(100);
    Some((load as u32, usize::try_from(avail.saturating_mul(1024)).unwrap_or(usize::MAX)))
}

/// See [`super::memory_load`]: not reported on this Unix.
#[cfg(not(target_os = "linux"))]
pub(super) fn memory_load() -> Option<(u32, usize)> {
    None
}

fn os_err(e: std::io::Error) -> Error {
    match e.raw_os_error() {
        Some(libc::ENOMEM) => Error::OutOfMemory,
        Some(code) => Error::Os(code),
        None => Error::OutOfMemory,
    }
}

impl Reservation {
    /// Reserve at least `len` bytes of address space (rounded up to the granularity).
    pub fn new(len: usize) -> Result<Self, Error> {
        let len = reservation_size(len)?;
        let map = MmapOptions::new().len(len).no_reserve_swap().map_anon().map_err(os_err)?;
        let map = MmapRaw::from(map);
        // SAFETY: the mapping was just created, spans `len` bytes, and nothing refers into it.
        unsafe { protect(map.as_mut_ptr(), len, libc::PROT_NONE) }?;
        Ok(Reservation { map })
    }

    /// The first byte of the reservation (aligned to the granularity).
    #[inline]
    pub fn base(&self) -> NonNull<u8> {
        // SAFETY: a successful mmap never returns NULL for a non-fixed mapping.
        unsafe { NonNull::new_unchecked(self.map.as_mut_ptr()) }
    }

    /// Always false: a reservation is never empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The reserved length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Make `[offset, offset + len)` readable and writable.
    ///
    /// # Safety
    /// `offset` and `len` are page-aligned and the range lies inside the reservation.
    pub unsafe fn commit(&self, offset: usize, len: usize) -> Result<(), Error> {
        debug_check_range(self.len(), offset, len);
        if len == 0 {
            return Ok(());
        }
        // SAFETY: the caller guarantees the range is inside our mapping; raising protection does
        // not invalidate any existing reference.
        unsafe { protect(self.map.as_mut_ptr().add(offset), len, libc::PROT_READ | libc::PROT_WRITE) }
    }

    /// Return `[offset, offset + len)` to the OS; it reads as zero once committed again.
    ///
    /// # Safety
    /// As for [`commit`](Self::commit), and no live reference points into the range.
    pub unsafe fn decommit(&self, offset: usize, len: usize) -> Result<(), Error> {
        debug_check_range(self.len(), offset, len);
        if len == 0 {
            return Ok(());
        }
        // SAFETY: the caller guarantees the range is ours and unreferenced; DONTNEED on a private
        // anonymous mapping drops the pages at once and they refault as zero.
        unsafe { self.map.unchecked_advise_range(UncheckedAdvice::DontNeed, offset, len) }.map_err(os_err)?;
        // SAFETY: as above; lowering protection of an unreferenced range is sound.
        unsafe { protect(self.map.as_mut_ptr().add(offset), len, libc::PROT_NONE) }
    }

    /// Let the OS take back the pages of a committed range whose contents are no longer needed
    /// (resident memory drops); the range stays committed and accessible, and reads as zero.
    ///
    /// # Safety
    /// As for [`decommit`](Self::decommit): the range is committed and nothing refers into it.
    pub unsafe fn purge(&self, offset: usize, len: usize) -> Result<(), Error> {
        debug_check_range(self.len(), offset, len);
        if len == 0 {
            return Ok(());
        }
        // SAFETY: the caller guarantees the range is ours, committed and unreferenced; DONTNEED
        // on a private anonymous read-write mapping drops the pages, which refault as zero.
        unsafe { self.map.unchecked_advise_range(UncheckedAdvice::DontNeed, offset, len) }.map_err(os_err)
    }
}
