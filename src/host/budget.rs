//! [`Budget`]: the committed bytes of every region and heap that share it, against a soft and a
//! hard limit.
//!
//! # Accounting
//! `committed` is one atomic. [`Budget::charge`] adds to it with a compare-exchange loop that
//! refuses to pass the limit that applies (so the limit is never passed, not even for an
//! instant, whatever the number of threads); [`Budget::credit`] subtracts. Nothing on this path
//! takes a lock; the hooks (trimmer, notification) are read through an atomic pointer.
//!
//! # Policy past the soft limit, per [`CriticalLevel`]
//! * `Task`: fails at once with [`Error::LimitExceeded`].
//! * `AppDomain`: calls the trimmer (asking for the bytes that would bring the request under the
//!   soft limit), then retries once against the soft limit.
//! * `Process`: calls the trimmer, then retries against the hard limit: it may use the reserve
//!   between the soft and the hard limit ([`BudgetStats::reserve_uses`] counts the times it did).
//!
//! Nothing ever passes the hard limit; `Task` and `AppDomain` never pass `min(soft, hard)`.
//! Every refusal is counted per level ([`BudgetStats::failures`], which also counts commits that
//! the page source refused after the budget allowed them).
//!
//! # Trimmer
//! [`Budget::set_trimmer`] registers one `Fn(bytes_wanted) -> bytes_freed` (the service layer's
//! trimmer of idle memory). It is called on the allocating thread, with no lock held by the
//! budget, possibly from several threads at once; it frees memory by decommitting through other
//! [`Pages`](super::Pages), which credits this budget. It must not block, and must not allocate
//! from the arena whose commit triggered it. A trimmer that (indirectly) commits is not called
//! again from inside itself: a nested slow path on the same thread skips the trim.
//!
//! # Memory-load notifications
//! The budget keeps a pressure state, initially [`MemoryAvailable::High`], with hysteresis:
//! * when `committed` rises above [`LOW_MARK_PERCENT`] (90 %) of the soft limit while the state
//!   is `High`, the state becomes `Low` and the notify hook is called with `Low`;
//! * when `committed` falls below [`HIGH_MARK_PERCENT`] (50 %) of the soft limit while the state
//!   is `Low`, the state becomes `High` and the hook is called with `High`.
//!
//! Between the marks nothing changes, so a workload hovering around one mark does not produce a
//! stream of notifications: each crossing fires exactly once (the thread whose compare-exchange
//! changes the state fires it, after re-reading `committed`, so the state converges to the
//! current load). The budget never sends `Neutral`. The hook is called with no lock held and
//! must not block (see [`MemoryNotify`]): a thread that crosses a mark while it holds one of
//! napalloc's locks (the task heap's, around a commit or a trim) calls the hook right after it
//! released the lock (see `NotifyDeferral`), so the hook may even allocate. Notifications from a host
//! ([`Budget::on_host_notification`]) are forwarded to the same hook; they do not change the
//! budget's own state.

use super::source::{HostErrorCounters, HostErrorStats};
use super::{CriticalLevel, MemoryAvailable, MemoryNotify};
use crate::hr::HRESULT;
use crate::Error;
use core::cell::Cell;
use core::cell::RefCell;
use core::fmt;
use core::marker::PhantomData;
use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use crossbeam_utils::CachePadded;
use std::sync::{Arc, Mutex, Weak};

/// `Low` is sent when committed bytes rise above this percentage of the soft limit.
pub const LOW_MARK_PERCENT: usize = 90;
/// `High` is sent when committed bytes fall below this percentage of the soft limit (after a
/// `Low`).
pub const HIGH_MARK_PERCENT: usize = 50;

/// A trimmer: given the bytes wanted, free what idle memory it can and return the bytes freed.
pub type Trimmer = Box<dyn Fn(usize) -> usize + Send + Sync>;

/// `percent`% of `limit`, without overflow.
#[inline]
fn percent_of(limit: usize, percent: usize) -> usize {
    limit / 100 * percent + limit % 100 * percent / 100
}

/// Subtract `n` from `a`, stopping at 0, with a compare-exchange loop; returns the previous
/// value. (`fetch_sub` would wrap on a bad credit; `fetch_update` is being renamed.)
#[inline]
pub(crate) fn saturating_sub(a: &AtomicUsize, n: usize, success: Ordering) -> usize {
    let mut cur = a.load(Ordering::Relaxed);
    loop {
        match a.compare_exchange_weak(cur, cur.saturating_sub(n), success, Ordering::Relaxed) {
            Ok(prev) => return prev,
            Err(now) => cur = now,
        }
    }
}

thread_local! {
    /// True while this thread runs a budget's trimmer: a nested slow path does not trim again.
    static IN_TRIMMER: Cell<bool> = const { Cell::new(false) };
}

/// A memory budget shared by regions and heaps (see the module docs for the policy).
///
/// ```
/// use napalloc::host::Budget;
/// use napalloc::{CriticalLevel, Error};
/// let b = Budget::new(100, 150).unwrap();
/// b.charge(90, CriticalLevel::Task).unwrap();
/// assert_eq!(b.charge(20, CriticalLevel::Task), Err(Error::LimitExceeded)); // past soft
/// b.charge(20, CriticalLevel::Process).unwrap(); // the reserve
/// assert_eq!(b.charge(50, CriticalLevel::Process), Err(Error::LimitExceeded)); // past hard
/// b.credit(110);
/// assert_eq!(b.committed(), 0);
/// ```
pub struct Budget {
    /// Bytes committed and charged to this budget. Raised only by `try_charge`'s
    /// compare-exchange (never past the limit it was given), lowered by `credit`; any thread.
    committed: CachePadded<AtomicUsize>,
    /// The largest `committed` ever reached. `fetch_max` by `try_charge`.
    peak: AtomicUsize,
    /// The soft limit in bytes (`usize::MAX`: none). Written by `set_limits`; read by charges.
    soft: AtomicUsize,
    /// The hard limit in bytes (`usize::MAX`: none). Written by `set_limits`; read by charges.
    hard: AtomicUsize,
    /// The pressure state, a `MemoryAvailable` as `u8` (`Low` or `High`). Changed only by
    /// `update_pressure`'s compare-exchange; whoever changes it sends the notification.
    pressure: AtomicU8,
    /// Commits refused, per critical level (by the budget or by the page source). Incremented
    /// by `charge_slow` and `note_failure`.
    failures: [AtomicU64; 3],
    /// Times the trimmer was called. Incremented by `trim`.
    trims: AtomicU64,
    /// Bytes the trimmer reported freed. Added by `trim`.
    bytes_trimmed: AtomicU64,
    /// `Process` charges that went past the soft limit into the reserve. By `charge_slow`.
    reserve_uses: AtomicU64,
    /// Pressure notifications the budget sent (state changes). By `update_pressure`.
    notifications: AtomicU64,
    /// Notifications received from a host. By `on_host_notification`.
    host_notifications: AtomicU64,
    /// Host failures of the page sources charged to this budget. By `record_host_error`.
    host_errors: HostErrorCounters,
    trimmer: HookCell<dyn Fn(usize) -> usize + Send + Sync>,
    notify: HookCell<dyn Fn(MemoryAvailable) + Send + Sync>,
    /// This budget (every budget lives in an `Arc`): what a deferred notification refers to.
    me: Weak<Budget>,
}

impl fmt::Debug for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Budget").field("stats", &self.stats()).finish_non_exhaustive()
    }
}

/// A snapshot of a [`Budget`]'s limits and counters (each field exact, not all at one instant).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BudgetStats {
    /// Bytes committed now.
    pub committed: usize,
    /// The most ever committed at once.
    pub peak: usize,
    /// The soft limit (`usize::MAX`: none).
    pub soft_limit: usize,
    /// The hard limit (`usize::MAX`: none).
    pub hard_limit: usize,
    /// Refused commits per critical level, indexed by `CriticalLevel as usize`.
    pub failures: [u64; 3],
    /// Times the trimmer was called.
    pub trims: u64,
    /// Bytes the trimmer reported freed.
    pub bytes_trimmed: u64,
    /// `Process` commits served from the reserve between soft and hard limit.
    pub reserve_uses: u64,
    /// The budget's pressure state (`Low` or `High`).
    pub pressure: MemoryAvailable,
    /// Pressure notifications the budget sent.
    pub notifications: u64,
    /// Memory notifications received from a host.
    pub host_notifications: u64,
    /// Failures of the host page sources charged to this budget.
    pub host_errors: HostErrorStats,
}

impl Budget {
    /// A budget with a soft and a hard limit in bytes (`usize::MAX`: no limit). Fails with
    /// [`Error::InvalidLayout`] if `soft > hard`.
    pub fn new(soft: usize, hard: usize) -> Result<Arc<Budget>, Error> {
        if soft > hard {
            return Err(Error::InvalidLayout);
        }
        Ok(Arc::new_cyclic(|me| Budget::build(soft, hard, me.clone())))
    }

    /// A budget without limits (it still counts, and still calls hooks).
    pub fn unlimited() -> Arc<Budget> {
        Arc::new_cyclic(|me| Budget::build(usize::MAX, usize::MAX, me.clone()))
    }

    fn build(soft: usize, hard: usize, me: Weak<Budget>) -> Budget {
        debug_assert!(soft <= hard);
        Budget {
            me,
            committed: CachePadded::new(AtomicUsize::new(0)),
            peak: AtomicUsize::new(0),
            soft: AtomicUsize::new(soft),
            hard: AtomicUsize::new(hard),
            pressure: AtomicU8::new(MemoryAvailable::High as u8),
            failures: Default::default(),
            trims: AtomicU64::new(0),
            bytes_trimmed: AtomicU64::new(0),
            reserve_uses: AtomicU64::new(0),
            notifications: AtomicU64::new(0),
            host_notifications: AtomicU64::new(0),
            host_errors: HostErrorCounters::default(),
            trimmer: HookCell::new(),
            notify: HookCell::new(),
        }
    }

    /// Change the limits (`usize::MAX`: none). Fails with [`Error::InvalidLayout`] if
    /// `soft > hard`. Memory already committed above a lowered limit stays committed; new
    /// commits are refused (or trimmed for) until it is back under.
    pub fn set_limits(&self, soft: usize, hard: usize) -> Result<(), Error> {
        if soft > hard {
            return Err(Error::InvalidLayout);
        }
        // A charge that reads one new and one old limit still respects both bounds it read:
        // `Task`/`AppDomain` use min(soft, hard), `Process` uses hard.
        self.soft.store(soft, Ordering::Relaxed);
        self.hard.store(hard, Ordering::Relaxed);
        self.update_pressure();
        Ok(())
    }

    /// The soft limit.
    pub fn soft_limit(&self) -> usize {
        self.soft.load(Ordering::Relaxed)
    }

    /// The hard limit.
    pub fn hard_limit(&self) -> usize {
        self.hard.load(Ordering::Relaxed)
    }

    /// Bytes committed now.
    #[inline]
    pub fn committed(&self) -> usize {
        self.committed.load(Ordering::Relaxed)
    }

    /// The budget's memory load: committed bytes as a percentage of the soft limit (capped at
    /// 100), and the bytes left below the soft limit.
    pub fn memory_load(&self) -> (u32, usize) {
        let (c, soft) = (self.committed(), self.soft_limit());
        let load = if soft == 0 { 100 } else { (c as u128 * 100 / soft as u128).min(100) as u32 };
        (load, soft.saturating_sub(c))
    }

    /// Register the trimmer (replacing any earlier one). See the module docs.
    ///
    /// The budget keeps every trimmer it was given until the budget itself is dropped
    /// ([`clear_trimmer`](Self::clear_trimmer) only stops calling it). So a trimmer must not own
    /// arenas or regions charged to this budget: they hold the budget, and the cycle leaks all of
    /// them, reservations included. Hold them through a `Weak`.
    pub fn set_trimmer(&self, trimmer: Trimmer) {
        self.trimmer.set(Some(trimmer));
    }

    /// Remove the trimmer.
    pub fn clear_trimmer(&self) {
        self.trimmer.set(None);
    }

    /// Register the memory-load notification hook (replacing any earlier one).
    pub fn set_notify(&self, notify: MemoryNotify) {
        self.notify.set(Some(notify));
    }

    /// Remove the notification hook.
    pub fn clear_notify(&self) {
        self.notify.set(None);
    }

    /// Charge `bytes` at `level`: `Ok` if they fit (after the level's policy), else
    /// [`Error::LimitExceeded`] and nothing is charged.
    #[inline]
    pub fn charge(&self, bytes: usize, level: CriticalLevel) -> Result<(), Error> {
        if self.try_charge(bytes, self.soft_cap()) {
            return Ok(());
        }
        self.charge_slow(bytes, level)
    }

    /// Give back `bytes` charged earlier.
    pub fn credit(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let prev = saturating_sub(&self.committed, bytes, Ordering::AcqRel);
        debug_assert!(prev >= bytes, "credited {bytes} bytes but only {prev} were charged");
        self.update_pressure();
    }

    /// Ask the trimmer for `wanted` bytes; returns what it reports freed (0 without a trimmer,
    /// or when called from inside a trimmer on this thread).
    pub fn trim(&self, wanted: usize) -> usize {
        let Some(trimmer) = self.trimmer.get() else {
            return 0;
        };
        if IN_TRIMMER.with(|t| t.replace(true)) {
            return 0;
        }
        struct Leave;
        impl Drop for Leave {
            fn drop(&mut self) {
                IN_TRIMMER.with(|t| t.set(false));
            }
        }
        let _leave = Leave;
        let freed = trimmer(wanted);
        self.trims.fetch_add(1, Ordering::Relaxed);
        self.bytes_trimmed.fetch_add(freed as u64, Ordering::Relaxed);
        freed
    }

    /// A memory notification from a host (`ICLRMemoryNotificationCallback::OnMemoryNotification`):
    /// on `Low`, ask the trimmer to free all the idle memory it can (`wanted` = everything
    /// committed); then forward `m` to the notify hook. Never blocks (if the hooks do not).
    ///
    /// The trim gives pages back through the page sources, so a host's `VirtualFree` may be
    /// called from inside its own `OnMemoryNotification` call: a host must not hold a lock its
    /// `VirtualFree` needs while it notifies.
    pub fn on_host_notification(&self, m: MemoryAvailable) {
        self.host_notifications.fetch_add(1, Ordering::Relaxed);
        if m == MemoryAvailable::Low {
            self.trim(self.committed());
        }
        self.send(m);
    }

    /// Count a host failure with `hr` against this budget.
    pub fn record_host_error(&self, hr: HRESULT) {
        self.host_errors.record(hr);
    }

    /// Count a commit at `level` that the page source refused after the budget allowed it.
    pub fn note_failure(&self, level: CriticalLevel) {
        self.failures[level as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A snapshot of the limits and counters.
    pub fn stats(&self) -> BudgetStats {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        BudgetStats {
            committed: self.committed(),
            peak: self.peak.load(Ordering::Relaxed),
            soft_limit: self.soft_limit(),
            hard_limit: self.hard_limit(),
            failures: [r(&self.failures[0]), r(&self.failures[1]), r(&self.failures[2])],
            trims: r(&self.trims),
            bytes_trimmed: r(&self.bytes_trimmed),
            reserve_uses: r(&self.reserve_uses),
            pressure: self.pressure(),
            notifications: r(&self.notifications),
            host_notifications: r(&self.host_notifications),
            host_errors: self.host_errors.snapshot(),
        }
    }

    /// The pressure state (`Low` or `High`, see the module docs).
    pub fn pressure(&self) -> MemoryAvailable {
        MemoryAvailable::from_raw(i32::from(self.pressure.load(Ordering::Acquire))).unwrap_or(MemoryAvailable::High)
    }

    /// The limit for `Task` and `AppDomain` charges.
    #[inline]
    fn soft_cap(&self) -> usize {
        self.soft.load(Ordering::Relaxed).min(self.hard.load(Ordering::Relaxed))
    }

    /// Add `bytes` if the total stays `<= limit`. The only place `committed` grows.
    #[inline]
    fn try_charge(&self, bytes: usize, limit: usize) -> bool {
        let mut cur = self.committed.load(Ordering::Relaxed);
        loop {
            let new = match cur.checked_add(bytes) {
                Some(n) if n <= limit => n,
                _ => return false,
            };
            match self.committed.compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => {
                    self.peak.fetch_max(new, Ordering::Relaxed);
                    self.update_pressure();
                    return true;
                }
                Err(now) => cur = now,
            }
        }
    }

    #[cold]
    #[inline(never)]
    fn charge_slow(&self, bytes: usize, level: CriticalLevel) -> Result<(), Error> {
        if level >= CriticalLevel::AppDomain {
            let wanted = self.committed().saturating_add(bytes).saturating_sub(self.soft_cap());
            self.trim(wanted.max(1));
            if self.try_charge(bytes, self.soft_cap()) {
                return Ok(());
            }
            if level == CriticalLevel::Process && self.try_charge(bytes, self.hard.load(Ordering::Relaxed)) {
                self.reserve_uses.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
        }
        self.note_failure(level);
        Err(Error::LimitExceeded)
    }

    /// Call the notify hook with `m`: now, or, while this thread holds one of napalloc's locks
    /// (see [`NotifyDeferral`]), as soon as it has released the last of them.
    fn send(&self, m: MemoryAvailable) {
        if self.notify.get().is_none() {
            return;
        }
        let deferred = (DEFER_DEPTH.try_with(Cell::get).unwrap_or(0) & !PENDING) > 0
            && DEFERRED.try_with(|q| q.borrow_mut().push((self.me.clone(), m))).is_ok();
        if deferred {
            let _ = DEFER_DEPTH.try_with(|d| d.set(d.get() | PENDING));
        } else if let Some(notify) = self.notify.get() {
            notify(m);
        }
    }

    /// Move the pressure state to match `committed`, notifying once per change (see the module
    /// docs). Loops until the state agrees with a fresh reading, so a racing charge and credit
    /// cannot leave it stale.
    fn update_pressure(&self) {
        loop {
            let state = self.pressure.load(Ordering::Acquire);
            let c = self.committed.load(Ordering::Acquire);
            let soft = self.soft.load(Ordering::Relaxed);
            let want = if c > percent_of(soft, LOW_MARK_PERCENT) {
                MemoryAvailable::Low
            } else if c < percent_of(soft, HIGH_MARK_PERCENT) {
                MemoryAvailable::High
            } else {
                return; // between the marks: keep the state
            };
            if want as u8 == state {
                return;
            }
            if self.pressure.compare_exchange(state, want as u8, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                self.notifications.fetch_add(1, Ordering::Relaxed);
                self.send(want);
            }
        }
    }
}

/// In `DEFER_DEPTH`: set while `DEFERRED` may hold notifications.
const PENDING: u32 = 1 << 31;

thread_local! {
    /// How many [`NotifyDeferral`]s this thread holds (napalloc locks it is inside of), plus
    /// [`PENDING`]. One cell, so that leaving a lock with nothing deferred costs one load and
    /// one store.
    static DEFER_DEPTH: Cell<u32> = const { Cell::new(0) };
    /// Notifications held back while `DEFER_DEPTH > 0`, in the order they were sent.
    static DEFERRED: RefCell<Vec<(Weak<Budget>, MemoryAvailable)>> = const { RefCell::new(Vec::new()) };
}

/// Held by a thread for as long as it holds one of napalloc's locks (the task heap's): memory
/// notifications that its commits and decommits cause meanwhile are held back, and delivered,
/// in order, when the thread drops its last deferral, i.e. after it released the lock. So a
/// notify hook never runs while napalloc holds a lock, and may itself allocate. (Budget
/// accounting, trims and the notification state change are not deferred, only the hook calls.)
pub(crate) struct NotifyDeferral(PhantomData<*mut ()>);

impl NotifyDeferral {
    #[inline]
    pub(crate) fn enter() -> NotifyDeferral {
        let _ = DEFER_DEPTH.try_with(|d| d.set(d.get() + 1));
        NotifyDeferral(PhantomData)
    }
}

impl Drop for NotifyDeferral {
    #[inline]
    fn drop(&mut self) {
        let left = DEFER_DEPTH.try_with(|d| {
            let n = d.get().wrapping_sub(1);
            d.set(n);
            n
        });
        if left == Ok(PENDING) {
            deliver_deferred();
        }
    }
}

/// Deliver the notifications held back on this thread (including those the hooks cause).
#[cold]
#[inline(never)]
fn deliver_deferred() {
    let _ = DEFER_DEPTH.try_with(|d| d.set(d.get() & !PENDING));
    loop {
        let batch = DEFERRED.try_with(|q| core::mem::take(&mut *q.borrow_mut())).unwrap_or_default();
        if batch.is_empty() {
            return;
        }
        for (budget, m) in batch {
            if let Some(notify) = budget.upgrade().as_deref().and_then(|b| b.notify.get().map(|n| (b, n))) {
                (notify.1)(m);
            }
        }
    }
}

/// A slot for a hook, read lock-free.
///
/// Readers load `current` and call through it; writers serialize on `owned`, which keeps every
/// hook ever set alive until the cell is dropped. So a reader's reference stays valid for as long
/// as it borrows the cell, even if the hook is replaced meanwhile, without hazard pointers or
/// epochs. The price is that a replaced hook is freed only with the budget: hooks are set a
/// handful of times in a process's life.
struct HookCell<F: ?Sized> {
    /// The current hook, or null. Stored (Release) by `set` while holding `owned`; loaded
    /// (Acquire) by `get`. Always null or one of the pointers in `owned`.
    current: AtomicPtr<Box<F>>,
    /// Every hook ever set, from `Box::into_raw`; freed in `Drop`.
    owned: Mutex<Vec<*mut Box<F>>>,
}

// SAFETY: the cell hands out `&F` to any thread and moves boxed `F`s between threads; `F` is
// `Send + Sync` for every use in this module (checked by `set`'s and `get`'s bounds below).
unsafe impl<F: ?Sized + Send + Sync> Send for HookCell<F> {}
// SAFETY: as above; the raw pointers in `owned` are only dereferenced as shared references or
// freed in `drop` (which has `&mut self`).
unsafe impl<F: ?Sized + Send + Sync> Sync for HookCell<F> {}

impl<F: ?Sized + Send + Sync> HookCell<F> {
    fn new() -> Self {
        HookCell { current: AtomicPtr::new(ptr::null_mut()), owned: Mutex::new(Vec::new()) }
    }

    fn set(&self, hook: Option<Box<F>>) {
        let mut owned = self.owned.lock().unwrap_or_else(|e| e.into_inner());
        let p = match hook {
            Some(h) => {
                let p = Box::into_raw(Box::new(h));
                owned.push(p);
                p
            }
            None => ptr::null_mut(),
        };
        self.current.store(p, Ordering::Release);
    }

    #[inline]
    fn get(&self) -> Option<&F> {
        let p = self.current.load(Ordering::Acquire);
        // `p` is null or a pointer from `Box::into_raw` kept in `owned`, which frees it only in
        // `drop`; `&self` outlives the returned reference. The boxes are never mutated after `set`.
        // SAFETY: so the reference is valid and shared-only for its whole life.
        unsafe { p.as_ref() }.map(|b| &**b)
    }
}

impl<F: ?Sized> Drop for HookCell<F> {
    fn drop(&mut self) {
        let owned = self.owned.get_mut().unwrap_or_else(|e| e.into_inner());
        for p in owned.drain(..) {
            // SAFETY: each pointer came from `Box::into_raw` in `set` and is freed once, here;
            // no reader can hold a reference (we have `&mut self`).
            drop(unsafe { Box::from_raw(p) });
        }
    }
}

impl<F: ?Sized> fmt::Debug for HookCell<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.current.load(Ordering::Relaxed).is_null() { "HookCell(empty)" } else { "HookCell(set)" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Mutex, Weak};

    fn counting_notify(b: &Budget) -> Arc<Mutex<Vec<MemoryAvailable>>> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = Arc::clone(&seen);
        b.set_notify(Box::new(move |m| s.lock().unwrap().push(m)));
        seen
    }

    /// A trimmer that credits up to `idle` bytes (memory it pretends to decommit) back to the
    /// budget, as the service's trimmer does through `Pages::decommit`.
    fn idle_trimmer(b: &Arc<Budget>, idle: usize) -> Arc<AtomicUsize> {
        let idle = Arc::new(AtomicUsize::new(idle));
        let (weak, pool): (Weak<Budget>, _) = (Arc::downgrade(b), Arc::clone(&idle));
        b.set_trimmer(Box::new(move |wanted| {
            let freed = wanted.min(pool.load(Ordering::Relaxed));
            pool.fetch_sub(freed, Ordering::Relaxed);
            if let Some(b) = weak.upgrade() {
                b.credit(freed);
            }
            freed
        }));
        idle
    }

    #[test]
    fn task_fails_at_once_past_soft() {
        let b = Budget::new(100, 200).unwrap();
        let idle = idle_trimmer(&b, 1000);
        b.charge(100, CriticalLevel::Task).unwrap();
        assert_eq!(b.charge(1, CriticalLevel::Task), Err(Error::LimitExceeded));
        let s = b.stats();
        assert_eq!(s.committed, 100, "a refused charge changes nothing");
        assert_eq!(s.failures, [1, 0, 0]);
        assert_eq!(s.trims, 0, "task-critical requests never trim");
        assert_eq!(idle.load(Ordering::Relaxed), 1000);
    }

    #[test]
    fn app_domain_trims_then_retries_once() {
        let b = Budget::new(100, 200).unwrap();
        let idle = idle_trimmer(&b, 30);
        b.charge(90, CriticalLevel::Task).unwrap(); // 30 of which are "idle"
        b.charge(30, CriticalLevel::AppDomain).unwrap(); // needs 20 trimmed
        let s = b.stats();
        assert_eq!((s.committed, s.trims, s.bytes_trimmed), (100, 1, 20), "{s:?}");
        assert_eq!(idle.load(Ordering::Relaxed), 10);
        // now the trimmer can free only 10: the retry fails, nothing stays charged
        assert_eq!(b.charge(50, CriticalLevel::AppDomain), Err(Error::LimitExceeded));
        let s = b.stats();
        assert_eq!((s.committed, s.trims, s.failures), (90, 2, [0, 1, 0]), "{s:?}");
        // an app-domain request never uses the reserve, even when it would fit under hard
        assert!(b.charge(11, CriticalLevel::AppDomain).is_err());
        assert_eq!(b.committed(), 90);
    }

    #[test]
    fn process_trims_then_uses_the_reserve_but_never_passes_hard() {
        let b = Budget::new(100, 150).unwrap();
        // a lying trimmer: claims to free a lot, frees nothing
        b.set_trimmer(Box::new(|_| 1 << 30));
        b.charge(100, CriticalLevel::Task).unwrap();
        b.charge(40, CriticalLevel::Process).unwrap();
        let s = b.stats();
        assert_eq!((s.committed, s.reserve_uses, s.trims), (140, 1, 1), "{s:?}");
        assert_eq!(b.charge(11, CriticalLevel::Process), Err(Error::LimitExceeded));
        b.charge(10, CriticalLevel::Process).unwrap(); // exactly the hard limit
        assert_eq!(b.charge(1, CriticalLevel::Process), Err(Error::LimitExceeded));
        let s = b.stats();
        assert_eq!((s.committed, s.peak, s.failures), (150, 150, [0, 0, 2]), "{s:?}");
        // a huge request cannot overflow its way past the limit
        assert_eq!(b.charge(usize::MAX, CriticalLevel::Process), Err(Error::LimitExceeded));
        assert_eq!(b.committed(), 150);
    }

    #[test]
    fn process_prefers_trimming_to_the_reserve() {
        let b = Budget::new(100, 150).unwrap();
        idle_trimmer(&b, 50);
        b.charge(100, CriticalLevel::Task).unwrap();
        b.charge(40, CriticalLevel::Process).unwrap();
        let s = b.stats();
        assert_eq!((s.committed, s.reserve_uses, s.bytes_trimmed), (100, 0, 40), "{s:?}");
    }

    #[test]
    fn concurrent_committers_never_pass_hard_and_balance() {
        let b = Budget::new(1 << 20, (1 << 20) + (1 << 18)).unwrap();
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let b = Arc::clone(&b);
                std::thread::spawn(move || {
                    let mut held = Vec::new();
                    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (t + 1);
                    let mut refused = 0u64;
                    // Miri runs four interpreted threads: fewer steps still reach the limits.
                    for _ in 0..if cfg!(miri) { 1_000 } else { 20_000 } {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let level = CriticalLevel::ALL[(x % 3) as usize];
                        if x % 5 < 3 {
                            let n = 4096 * (1 + (x >> 8) as usize % 16);
                            match b.charge(n, level) {
                                Ok(()) => held.push(n),
                                Err(_) => refused += 1,
                            }
                        } else if let Some(n) = held.pop() {
                            b.credit(n);
                        }
                        assert!(b.committed() <= b.hard_limit());
                    }
                    (held.iter().sum::<usize>(), refused)
                })
            })
            .collect();
        let results: Vec<(usize, u64)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let held: usize = results.iter().map(|r| r.0).sum();
        let refused: u64 = results.iter().map(|r| r.1).sum();
        let s = b.stats();
        assert_eq!(s.committed, held, "every charge and credit is accounted for exactly");
        assert!(s.peak <= s.hard_limit, "{s:?}");
        assert!(refused > 0, "the workload reaches the limits");
        assert_eq!(s.failures.iter().sum::<u64>(), refused);
    }

    #[test]
    fn notifications_fire_once_per_crossing() {
        let b = Budget::new(1000, 2000).unwrap();
        let seen = counting_notify(&b);
        b.charge(800, CriticalLevel::Task).unwrap();
        assert!(seen.lock().unwrap().is_empty(), "80 % is below the low mark");
        b.charge(150, CriticalLevel::Task).unwrap(); // 950 > 900
        assert_eq!(*seen.lock().unwrap(), [MemoryAvailable::Low]);
        assert_eq!(b.pressure(), MemoryAvailable::Low);
        // hovering around the low mark does not repeat it
        for _ in 0..10 {
            b.credit(100);
            b.charge(100, CriticalLevel::Task).unwrap();
        }
        b.credit(350); // 600: between the marks
        assert_eq!(seen.lock().unwrap().len(), 1);
        b.credit(200); // 400 < 500
        assert_eq!(*seen.lock().unwrap(), [MemoryAvailable::Low, MemoryAvailable::High]);
        for _ in 0..10 {
            b.charge(300, CriticalLevel::Task).unwrap();
            b.credit(300);
        }
        assert_eq!(seen.lock().unwrap().len(), 2, "hovering below the low mark");
        b.charge(600, CriticalLevel::Task).unwrap(); // 1000
        assert_eq!(*seen.lock().unwrap(), [MemoryAvailable::Low, MemoryAvailable::High, MemoryAvailable::Low]);
        assert_eq!(b.stats().notifications, 3);
        // lowering the limits is a crossing too; raising them back is another
        b.credit(1000);
        b.charge(400, CriticalLevel::Task).unwrap();
        assert_eq!(seen.lock().unwrap().len(), 4);
        b.set_limits(420, 2000).unwrap();
        assert_eq!(seen.lock().unwrap().last(), Some(&MemoryAvailable::Low));
    }

    #[test]
    fn hooks_run_without_any_budget_lock() {
        // a notify hook and a trimmer that use the budget themselves would deadlock if the budget
        // held a lock while calling them
        let b = Budget::new(100, 200).unwrap();
        let weak = Arc::downgrade(&b);
        let calls = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&calls);
        b.set_notify(Box::new(move |_| {
            let b = weak.upgrade().unwrap();
            let _ = b.stats();
            b.set_notify(Box::new(|_| {})); // even replacing itself
            c.fetch_add(1, Ordering::Relaxed);
        }));
        let weak = Arc::downgrade(&b);
        b.set_trimmer(Box::new(move |wanted| {
            let b = weak.upgrade().unwrap();
            // a trimmer that commits: the nested slow path must not trim again
            assert!(b.charge(1000, CriticalLevel::AppDomain).is_err());
            b.set_trimmer(Box::new(|_| 0));
            wanted / 2
        }));
        b.charge(95, CriticalLevel::Task).unwrap();
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        assert!(b.charge(10, CriticalLevel::AppDomain).is_err());
        let s = b.stats();
        assert_eq!(s.trims, 1, "the nested request did not trim: {s:?}");
        assert_eq!(s.failures, [0, 2, 0]);
        // the replacement trimmer is in place
        assert!(b.charge(10, CriticalLevel::AppDomain).is_err());
        assert_eq!(b.stats().trims, 2);
    }

    #[test]
    fn host_notification_trims_on_low_and_is_forwarded() {
        let b = Budget::new(usize::MAX, usize::MAX).unwrap();
        let idle = idle_trimmer(&b, 300);
        let seen = counting_notify(&b);
        b.charge(1000, CriticalLevel::Task).unwrap();
        b.on_host_notification(MemoryAvailable::Neutral);
        assert_eq!(b.stats().trims, 0);
        b.on_host_notification(MemoryAvailable::Low);
        assert_eq!(idle.load(Ordering::Relaxed), 0, "asked for everything idle");
        assert_eq!(b.committed(), 700);
        assert_eq!(*seen.lock().unwrap(), [MemoryAvailable::Neutral, MemoryAvailable::Low]);
        assert_eq!(b.stats().host_notifications, 2);
        assert_eq!(b.pressure(), MemoryAvailable::High, "host notifications do not move the budget's state");
    }

    #[test]
    fn limits_and_load() {
        assert_eq!(Budget::new(2, 1).err(), Some(Error::InvalidLayout));
        let b = Budget::new(1000, 1000).unwrap();
        assert_eq!(b.set_limits(5, 4), Err(Error::InvalidLayout));
        assert_eq!((b.soft_limit(), b.hard_limit()), (1000, 1000));
        b.charge(250, CriticalLevel::Task).unwrap();
        assert_eq!(b.memory_load(), (25, 750));
        b.set_limits(100, 400).unwrap();
        assert_eq!(b.memory_load(), (100, 0));
        assert!(b.charge(1, CriticalLevel::AppDomain).is_err());
        b.charge(150, CriticalLevel::Process).unwrap();
        assert!(b.charge(1, CriticalLevel::Process).is_err());
        assert_eq!(percent_of(usize::MAX, 90), usize::MAX / 100 * 90 + usize::MAX % 100 * 90 / 100);
        assert_eq!(percent_of(1000, 90), 900);
        assert_eq!(Budget::unlimited().soft_limit(), usize::MAX);
    }

    #[test]
    fn record_host_errors() {
        let b = Budget::unlimited();
        b.record_host_error(crate::hr::HOST_E_TIMEOUT);
        b.record_host_error(crate::hr::HOST_E_TIMEOUT);
        b.record_host_error(crate::hr::E_FAIL);
        b.record_host_error(0x8000_FFFFu32 as i32);
        let e = b.stats().host_errors;
        assert_eq!((e.count, e.last, e.timeout, e.fail, e.other), (4, 0x8000_FFFFu32 as i32, 2, 1, 1));
        assert_eq!(e.of(crate::hr::HOST_E_TIMEOUT), 2);
        assert_eq!(e.of(crate::hr::E_OUTOFMEMORY), 0);
    }
}
