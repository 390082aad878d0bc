//! The no-callout fast paths of `Region` that the task heap runs without its lock:
//! `try_alloc_child`, the inline pop of the pending tail's newest block (`try_pop_tail`), and `size_of` of the
//! tail's first and newest blocks. Each is checked against what the general path would do: the
//! same books, the same tree (freeing the parent frees the child), and refusals that change
//! nothing.

use core::alloc::Layout;
use core::ptr::NonNull;
use napalloc::Region;

fn l(size: usize) -> Layout {
    Layout::from_size_align(size, 16).unwrap()
}

fn blocks(r: &Region) -> usize {
    r.stats().live_blocks
}

#[test]
fn try_alloc_child_joins_the_tail_or_reuses_a_dead_slot_under_a_recorded_parent() {
    let r = Region::new().unwrap();
    // 1. The parent is the tail root: the child is bumped into the tail.
    let s = r.alloc(l(16)).unwrap(); // a new tail (a fresh region has nothing committed for `try_alloc`)
    let a = r.try_alloc_child(s, 64).expect("a tail child");
    assert_eq!(a.as_ptr() as usize, s.as_ptr() as usize + 16, "bumped right after its parent");
    assert_eq!((r.size_of(s), r.size_of(a), blocks(&r)), (Some(16), Some(64), 2));
    // SAFETY: live; frees the child with it.
    unsafe { r.free(s).unwrap() };
    assert_eq!((r.owns(a), blocks(&r)), (false, 0));

    // 2. A recorded parent and a dead slot of the child's class.
    let p = r.alloc(l(32)).unwrap();
    let dead = r.alloc(l(64)).unwrap();
    let other = r.alloc(l(48)).unwrap(); // ends the tail: `p` and `dead` are recorded
                                         // SAFETY: live, freed once.
    unsafe { r.free_one(dead).unwrap() };
    assert_eq!(r.try_alloc_child(p, 200), None, "no dead slot of that class: nothing done");
    assert_eq!(blocks(&r), 2);
    let c = r.try_alloc_child(p, 60).expect("the dead 64-byte slot");
    assert_eq!(c, dead, "the dead slot is reused");
    assert_eq!((r.size_of(c), blocks(&r)), (Some(60), 3));
    // SAFETY: live; the child goes with it, `other` stays.
    unsafe { r.free(p).unwrap() };
    assert_eq!((r.owns(c), r.owns(other), blocks(&r)), (false, true, 1));

    // 3. Refusals: a parent that is not a live block start, a size past the fast path.
    let q = r.alloc(l(64)).unwrap();
    let _end = r.alloc(l(16)).unwrap();
    // SAFETY: live, freed once (a dead 64-byte slot now exists).
    unsafe { r.free_one(q).unwrap() };
    let before = r.stats();
    // SAFETY: one past the start of a live block, never dereferenced.
    let interior = unsafe { NonNull::new_unchecked(other.as_ptr().add(16)) };
    assert_eq!(r.try_alloc_child(interior, 64), None, "interior parent");
    assert_eq!(r.try_alloc_child(q, 64), None, "freed parent");
    assert_eq!(r.try_alloc_child(other, 0), None, "size 0 is not a fast-path size");
    assert_eq!(r.try_alloc_child(other, 1025), None, "past the fast path");
    assert_eq!((r.stats().live_blocks, r.stats().live_bytes), (before.live_blocks, before.live_bytes));
    assert_eq!(r.try_alloc_child(other, 64), Some(q), "the dead slot is still there");
}

#[test]
fn the_newest_tail_block_is_freed_inline_and_only_it() {
    let r = Region::new().unwrap();
    let root = r.alloc(l(16)).unwrap();
    let mid = r.try_alloc_child(root, 32).unwrap();
    let last = r.try_alloc_child(root, 64).unwrap();
    assert_eq!((r.size_of(root), r.size_of(mid), r.size_of(last)), (Some(16), Some(32), Some(64)));
    // SAFETY: not a live block start: refused untouched.
    assert!(!unsafe { r.try_free_leaf(mid.as_ptr().add(16)) }, "interior");
    // SAFETY: not a live block start: refused untouched.
    assert!(!unsafe { r.try_pop_tail(mid.as_ptr().add(16)) }, "interior");
    // SAFETY: live, but neither the newest block nor a recorded leaf: refused, nothing done.
    assert!(!unsafe { r.try_free_leaf(mid.as_ptr()) }, "a middle tail block takes the general path");
    // SAFETY: as above.
    assert!(!unsafe { r.try_pop_tail(mid.as_ptr()) }, "only the newest block is popped");
    // SAFETY: as above: the root of a longer tail is freed with its subtree, not popped.
    assert!(!unsafe { r.try_pop_tail(root.as_ptr()) }, "the root is not popped");
    // SAFETY: live; refused, nothing done.
    assert!(!unsafe { r.try_free_leaf(last.as_ptr()) }, "try_free_leaf leaves the tail's newest block to try_pop_tail");
    assert_eq!(blocks(&r), 3);
    // SAFETY: the newest block, freed once.
    assert!(unsafe { r.try_pop_tail(last.as_ptr()) }, "the newest block is popped inline");
    assert_eq!((r.owns(last), r.owns(mid), blocks(&r)), (false, true, 2));
    // SAFETY: freed already: refused.
    assert!(!unsafe { r.try_pop_tail(last.as_ptr()) }, "a double free is refused");
    assert_eq!(blocks(&r), 2);
    // The popped space is bumped again.
    let again = r.try_alloc_child(root, 48).unwrap();
    assert_eq!(again, last);
    // SAFETY: the newest block, then the middle one (now the newest), then the root alone (a
    // rewind, which `try_free_leaf` does and `try_pop_tail` refuses).
    unsafe {
        assert!(r.try_pop_tail(again.as_ptr()));
        assert!(r.try_pop_tail(mid.as_ptr()));
        assert!(!r.try_pop_tail(root.as_ptr()));
        assert!(r.try_free_leaf(root.as_ptr()));
    }
    assert_eq!((blocks(&r), r.stats().live_bytes), (0, 0));
}

#[test]
fn a_tail_pair_is_built_validated_and_freed_by_compares_and_only_when_it_is_one() {
    let r = Region::new().unwrap();
    // Commit the arena first (a fresh region has nothing at hand for the no-callout paths).
    let warm = r.alloc(l(16)).unwrap();
    // SAFETY: live, unused.
    unsafe { r.free(warm).unwrap() };
    let (s, a) = r.try_alloc_pair(16, 64).expect("a pair from memory at hand");
    assert_eq!(a.as_ptr() as usize, s.as_ptr() as usize + 16, "the array right after its structure");
    assert_eq!((r.size_of(s), r.size_of(a), blocks(&r)), (Some(16), Some(64), 2));
    assert_eq!(r.tail_pair(s.as_ptr()), Some((16, a.as_ptr(), 64)));
    // Only the root names the pair; the array, an interior pointer and a foreign one do not.
    assert_eq!(r.tail_pair(a.as_ptr()), None);
    assert_eq!(r.tail_pair(s.as_ptr().wrapping_add(16 * 2)), None);
    assert_eq!(r.tail_pair(&0u8), None);
    // The wrong second block is refused, nothing changed.
    // SAFETY: refused untouched.
    assert!(!unsafe { r.try_free_tail_pair(s.as_ptr(), s.as_ptr()) });
    // SAFETY: refused untouched.
    assert!(!unsafe { r.try_free_tail_pair(a.as_ptr(), a.as_ptr()) });
    assert_eq!(blocks(&r), 2);
    // A third block: no longer a pair.
    let b = r.alloc_child(s, l(32)).unwrap();
    assert_eq!(r.tail_pair(s.as_ptr()), None);
    // SAFETY: refused untouched.
    assert!(!unsafe { r.try_free_tail_pair(s.as_ptr(), a.as_ptr()) });
    // SAFETY: live.
    unsafe { r.free(b).unwrap() };
    assert_eq!(r.tail_pair(s.as_ptr()), Some((16, a.as_ptr(), 64)), "a pair again once the third went");
    // SAFETY: the pair, freed once with the structure's whole tree.
    assert!(unsafe { r.try_free_tail_pair(s.as_ptr(), a.as_ptr()) });
    assert_eq!((r.owns(s), r.owns(a), blocks(&r)), (false, false, 0));
    // SAFETY: freed already: refused.
    assert!(!unsafe { r.try_free_tail_pair(s.as_ptr(), a.as_ptr()) });
    // SAFETY: freed already: refused and reported.
    assert!(unsafe { r.free(s) }.is_err());
    // A lone root is a pair without its second block.
    let one = r.alloc(l(48)).unwrap();
    assert_eq!(r.tail_pair(one.as_ptr()), Some((48, core::ptr::null_mut(), 0)));
    // SAFETY: live; its whole tree is the one block.
    assert!(unsafe { r.try_free_tail_pair(one.as_ptr(), core::ptr::null()) });
    assert_eq!(blocks(&r), 0);
}

#[test]
fn a_tail_pair_is_not_claimed_for_a_nested_root_big_blocks_or_with_a_dead_slot_waiting() {
    let r = Region::new().unwrap();
    // Sizes past the fast path, or zero, are not built here.
    assert!(r.try_alloc_pair(0, 64).is_none());
    assert!(r.try_alloc_pair(16, 4096).is_none());
    // A dead slot of the root's class waiting: the general path reuses it instead.
    let x = r.alloc(l(16)).unwrap();
    let y = r.alloc(l(16)).unwrap(); // ends x's tail: x is recorded
                                     // SAFETY: live, unused.
    unsafe { r.free(x).unwrap() }; // a dead 16-byte slot
    assert!(r.stats().free_slots >= 1);
    assert!(r.try_alloc_pair(16, 64).is_none(), "the dead slot goes first");
    assert_eq!(blocks(&r), 1, "nothing allocated by the refusal");
    // A tail whose root is itself an embedded pointer of a recorded block is not a free-standing
    // pair (freeing it must unlink it from its parent): `p` is recorded once `q` starts a tail;
    // `kid`, a child of `p` (neither the tail root nor its newest block), then roots the next
    // tail, and `grandkid` joins it.
    let p = r.alloc(l(32)).unwrap();
    let q = r.alloc(l(32)).unwrap();
    let kid = r.alloc_child(p, l(64)).unwrap();
    let grandkid = r.alloc_child(kid, l(48)).unwrap();
    assert_eq!(kid.as_ptr() as usize, q.as_ptr() as usize + 32, "kid starts the next tail");
    assert_eq!(grandkid.as_ptr() as usize, kid.as_ptr() as usize + 64, "grandkid joins it");
    assert_eq!(r.tail_pair(kid.as_ptr()), None);
    // SAFETY: refused untouched.
    assert!(!unsafe { r.try_free_tail_pair(kid.as_ptr(), grandkid.as_ptr()) });
    assert_eq!((r.size_of(kid), r.size_of(grandkid)), (Some(64), Some(48)));
    // SAFETY: live; frees kid and grandkid with p.
    unsafe { r.free(p).unwrap() };
    assert_eq!((r.owns(kid), r.owns(grandkid), r.owns(q)), (false, false, true));
    // SAFETY: live.
    unsafe { r.free(q).unwrap() };
    // A tail whose first block is large is left to the general query.
    let big = r.alloc(l(2000)).unwrap();
    assert_eq!(r.tail_pair(big.as_ptr()), None);
    assert_eq!(r.size_of(big), Some(2000));
    // SAFETY: live; frees kid and grandkid with y.
    unsafe {
        r.free(y).unwrap();
        r.free(big).unwrap();
    }
    assert_eq!(blocks(&r), 0);
}

#[test]
fn a_tail_pair_is_freed_by_its_root_and_end_and_only_while_both_are_unchanged() {
    let r = Region::new().unwrap();
    let warm = r.alloc(l(16)).unwrap();
    // SAFETY: live, unused.
    unsafe { r.free(warm).unwrap() };
    let (s, a) = r.try_alloc_pair(16, 64).expect("a pair from memory at hand");
    assert_eq!(r.tail_pair(s.as_ptr()), Some((16, a.as_ptr(), 64)));
    let end = r.tail_end();
    assert_eq!(end as usize, a.as_ptr() as usize + 64);
    // Anything but the root, or another end, is refused untouched.
    for (p, e) in [(a.as_ptr(), end), (s.as_ptr().wrapping_add(16), end), (&0u8 as *const u8 as *mut u8, end)] {
        // SAFETY: refused untouched.
        assert!(!unsafe { r.try_free_tail_to(p, e) });
    }
    // SAFETY: refused untouched.
    assert!(!unsafe { r.try_free_tail_to(s.as_ptr(), end.wrapping_sub(16)) });
    assert_eq!(blocks(&r), 2);
    // A block recorded under the array meanwhile moves the end: refused, nothing changed.
    let b = r.alloc_child(a, l(200)).unwrap();
    // SAFETY: refused untouched.
    assert!(!unsafe { r.try_free_tail_to(s.as_ptr(), end) });
    assert_eq!(blocks(&r), 3);
    // Once it is gone again, root and end are what they were: the pair goes by one rewind.
    // SAFETY: live, unused.
    unsafe { r.free(b).unwrap() };
    assert_eq!(r.tail_end(), end);
    // SAFETY: live; nothing uses the pair afterwards.
    assert!(unsafe { r.try_free_tail_to(s.as_ptr(), end) });
    assert_eq!((blocks(&r), r.stats().live_bytes), (0, 0));
    assert!(!r.owns(s) && !r.owns(a));
    // SAFETY: freed already: refused.
    assert!(!unsafe { r.try_free_tail_to(s.as_ptr(), end) });
    // A recorded block (its tail ended by a newer root) is not a tail root.
    let x = r.alloc(l(32)).unwrap();
    let x_end = r.tail_end();
    let y = r.alloc(l(32)).unwrap();
    // SAFETY: refused untouched.
    assert!(!unsafe { r.try_free_tail_to(x.as_ptr(), x_end) });
    assert_eq!(blocks(&r), 2);
    // SAFETY: y is the pending root, alone.
    assert!(unsafe { r.try_free_tail_to(y.as_ptr(), r.tail_end()) });
    assert!(r.owns(x) && !r.owns(y));
    // A region that scrubs freed memory takes the general path instead.
    let z = Region::builder().scrub(napalloc::Scrub { on_free: true, on_reset: false }).build().unwrap();
    let p = z.alloc(l(48)).unwrap();
    // SAFETY: refused untouched.
    assert!(!unsafe { z.try_free_tail_to(p.as_ptr(), z.tail_end()) });
    assert!(z.owns(p));
}

#[test]
fn a_refused_alloc_child_changes_nothing() {
    // A pending tail of a root and a child, then a child of a bad parent: refused, with the
    // region's counters (memory committed for the side table included) as they were.
    let r = Region::new().unwrap();
    let foreign = Box::new([0u8; 64]);
    // A freed block that stays dead: its slot's class (48 bytes) is not one the loop allocates,
    // and a block after it keeps the free from rewinding the tail onto it.
    let freed = r.alloc(l(48)).unwrap();
    r.alloc(l(64)).unwrap();
    // SAFETY: freed once; only its address is used afterwards.
    unsafe { r.free(freed).unwrap() };
    for i in 0..20_000 {
        let p = r.alloc(l(32)).unwrap();
        r.alloc_child(p, l(16)).unwrap();
        let interior = NonNull::new(p.as_ptr().wrapping_add(16)).unwrap();
        for bad in [NonNull::from(&foreign[0]), interior, freed] {
            let before = r.stats();
            assert!(r.alloc_child(bad, l(16)).is_err(), "iteration {i}: {bad:p} accepted as a parent");
            let mut after = r.stats();
            after.bad_pointers = before.bad_pointers;
            assert_eq!(after, before, "iteration {i}: a refused alloc_child({bad:p}) changed the region");
        }
    }
}
