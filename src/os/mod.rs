//! The page layer: reserve address space, commit and decommit pages, release.
//!
//! This is the only module that knows which operating system it runs on. Everything above it
//! (the host layer, the arena, the side table) sees one type, [`Reservation`], with one contract,
//! written down here once, in the manner of mimalloc's `prim.h`:
//!
//! * [`Reservation::new(len)`](Reservation::new) reserves `len` bytes (rounded up to the
//!   [allocation granularity](granularity)) of address space. A reservation costs no commit
//!   charge: nothing may be read or written until it is committed.
//! * [`commit(offset, len)`](Reservation::commit) makes a page-aligned range readable and
//!   writable. Freshly committed pages read as zero; committing a committed page succeeds and
//!   keeps its contents.
//! * [`decommit(offset, len)`](Reservation::decommit) returns a page-aligned range to the OS at
//!   once (resident memory drops). Its contents are gone: after the next commit it reads as zero.
//!   It may not be touched until committed again.
//! * [`purge(offset, len)`](Reservation::purge) tells the OS that a committed, page-aligned
//!   range's contents are no longer needed: it may take the pages back (resident memory drops),
//!   but the range stays committed and accessible, and reads as zero (Linux) or as zero or its
//!   old contents (Windows `MEM_RESET`) until written. For free memory that is handed out again
//!   without a commit.
//! * Dropping the reservation releases all of it, committed or not.
//!
//! Backends, chosen by path as memmap2 does:
//! * `unix.rs` — an anonymous private `PROT_NONE` + `MAP_NORESERVE` mapping (memmap2 owns it),
//!   `mprotect` to commit, `MADV_DONTNEED` + `PROT_NONE` to decommit. `MADV_FREE` is lazy (it is
//!   Windows' `MEM_RESET`, not a decommit) and is not used.
//! * `windows.rs` — `VirtualAlloc(MEM_RESERVE, PAGE_NOACCESS)`, `VirtualAlloc(MEM_COMMIT)`,
//!   `VirtualFree(MEM_DECOMMIT)`, `VirtualFree(MEM_RELEASE)`.
//! * `heap.rs` — a plain zeroed heap allocation, used under Miri so that all the unsafe code above
//!   this layer runs under Miri. Commit is bookkeeping; decommit zeroes the range.
//!
//! The functions that take ranges are `unsafe`: the caller must guarantee that no live reference
//! points into a range that is decommitted, and the offsets are not re-validated in release builds.

use crate::Error;

#[cfg_attr(all(unix, not(miri)), path = "unix.rs")]
#[cfg_attr(all(windows, not(miri)), path = "windows.rs")]
#[cfg_attr(any(miri, not(any(unix, windows))), path = "heap.rs")]
mod backend;

pub use backend::Reservation;

pub(crate) mod barrier;

/// What the page layer of this platform can do (after mimalloc's `mi_os_mem_config_t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OsConfig {
    /// The size of a page: the unit of commit and decommit.
    pub page_size: usize,
    /// The unit and alignment of a reservation (64 KiB on Windows, the page size on Unix).
    pub granularity: usize,
    /// Reserved address space is truly free of commit charge.
    pub has_virtual_reserve: bool,
    /// The name of the backend, for logs and stats.
    pub backend: &'static str,
}

/// The configuration of the page layer on this machine (queried once, then cached).
pub fn config() -> OsConfig {
    use std::sync::OnceLock;
    static CONFIG: OnceLock<OsConfig> = OnceLock::new();
    *CONFIG.get_or_init(backend::query_config)
}

/// The page size: the unit of [`Reservation::commit`] and [`Reservation::decommit`].
#[inline]
pub fn page_size() -> usize {
    config().page_size
}

/// The allocation granularity: reservations are rounded up to, and aligned to, this.
#[inline]
pub fn granularity() -> usize {
    config().granularity
}

/// The machine's memory load: the percentage of physical memory in use (0..=100) and the bytes
/// of physical memory still available, as the OS reports them (`GlobalMemoryStatusEx` on
/// Windows, `MemTotal`/`MemAvailable` of `/proc/meminfo` on Linux). `None` where the OS does not
/// say (other Unixes, and the heap backend under Miri).
///
/// Not for hot paths: it is a system call (or a small file read) every time.
pub fn memory_load() -> Option<(u32, usize)> {
    backend::memory_load()
}

/// Round `n` up to a multiple of `to` (a power of two); `None` on overflow.
#[inline]
pub(crate) fn round_up(n: usize, to: usize) -> Option<usize> {
    debug_assert!(to.is_power_of_two(), "round_up to {to}, not a power of two");
    Some(n.checked_add(to - 1)? & !(to - 1))
}

/// Checks shared by every backend for `commit`/`decommit` ranges (debug builds).
#[inline]
fn debug_check_range(res_len: usize, offset: usize, len: usize) {
    let page = page_size();
    debug_assert!(offset % page == 0, "offset {offset:#x} is not page-aligned");
    debug_assert!(len % page == 0, "length {len:#x} is not page-aligned");
    debug_assert!(
        offset.checked_add(len).is_some_and(|end| end <= res_len),
        "range {offset:#x}+{len:#x} is outside the reservation of {res_len:#x} bytes"
    );
}

/// Turn a failed reservation size into the crate's error.
#[inline]
fn reservation_size(len: usize) -> Result<usize, Error> {
    if len == 0 {
        return Err(Error::InvalidLayout);
    }
    round_up(len, granularity()).ok_or(Error::TooLarge)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_sane() {
        let c = config();
        assert!(c.page_size.is_power_of_two() && c.page_size >= 4096, "{c:?}");
        assert!(c.granularity.is_power_of_two() && c.granularity >= c.page_size, "{c:?}");
        // Windows reserves in units of the 64 KiB allocation granularity, and commits in pages.
        #[cfg(all(windows, not(miri)))]
        assert_eq!((c.granularity, c.backend), (64 * 1024, "VirtualAlloc"), "{c:?}");
        #[cfg(all(unix, not(miri)))]
        assert_eq!((c.granularity, c.backend), (c.page_size, "mmap"), "{c:?}");
        #[cfg(miri)]
        assert_eq!(c.backend, "heap", "{c:?}");
    }

    #[test]
    fn odd_sizes_round_up_to_the_granularity() {
        let g = granularity();
        let r = Reservation::new(g + 1).unwrap();
        assert_eq!(r.len(), 2 * g);
        assert_eq!(r.base().as_ptr() as usize % g, 0);
    }

    #[test]
    fn reserve_commit_write_decommit_reads_zero() {
        let page = page_size();
        let r = Reservation::new(16 * page).unwrap();
        assert!(r.len() >= 16 * page);
        assert_eq!(r.base().as_ptr() as usize % granularity(), 0);
        // SAFETY: the range is page-aligned and inside the reservation; nothing refers into it.
        unsafe { r.commit(page, 2 * page).unwrap() };
        let p = r.base().as_ptr().wrapping_add(page);
        // SAFETY: [page, 3 page) was committed just above.
        unsafe {
            assert_eq!(*p, 0, "fresh commit reads zero");
            p.write_bytes(0xAB, 2 * page);
            // committing a committed page keeps its contents
            r.commit(page, page).unwrap();
            assert_eq!(*p, 0xAB);
            r.decommit(page, 2 * page).unwrap();
            r.commit(page, 2 * page).unwrap();
            assert_eq!(*p, 0, "decommitted pages read back as zero");
            assert_eq!(*p.add(2 * page - 1), 0);
        }
    }

    #[test]
    fn zero_and_huge_reservations_fail_cleanly() {
        assert_eq!(Reservation::new(0).err(), Some(Error::InvalidLayout));
        assert_eq!(Reservation::new(usize::MAX).err(), Some(Error::TooLarge));
        // far more address space than any machine has: a clean error, not a crash
        #[cfg(not(miri))]
        assert!(Reservation::new(1usize << 62).is_err());
    }

    #[test]
    fn memory_load_is_a_percentage() {
        if let Some((load, avail)) = memory_load() {
            assert!(load <= 100, "load {load}%");
            assert!(avail > 0, "a running machine has some memory available");
        }
    }

    #[test]
    fn round_up_overflow() {
        assert_eq!(round_up(5, 4), Some(8));
        assert_eq!(round_up(usize::MAX - 2, 4), None);
    }
}
