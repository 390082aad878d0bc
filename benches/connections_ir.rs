//! Instructions per `AllocConnections(8)` + filling the 8 slots + `FreeConnections`, against the
//! same done with glibc (`malloc` the structure, `calloc` the slot array, `free` both), counted
//! by callgrind: `(Ir(N) - Ir(0)) / N`, which leaves out start-up and the first use of each heap.
//!
//! `cargo bench --bench connections_ir` prints the comparison. The measured programs:
//! * `benches/connections_ir.c`, a C client of `libnapalloc.a` (compiled here with `gcc -O2`):
//!   `napalloc` (the C exports), `glibc`, and `common`, which does only the work every variant
//!   shares (8 `AddRef` while filling, 8 `Release` while freeing, through the vtable of a C fake
//!   COM object, with the structure and the array on the stack). A variant's allocator share is
//!   its figure minus `common`'s.
//! * this program itself, run with `rust-safe N` (the same through the safe handles:
//!   `Connections::new`, `set(i, ComPtr)`, drop) and `rust-common N` (the common work in Rust).
//!
//! `cargo bench --bench connections_ir -- --test` runs every variant a few times without
//! measuring. One measurement by hand:
//! `valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/c-bench/connections_ir napalloc 20000`.

use napalloc::nap::types::{self as raw, ComObject, IUnknownVtbl};
use napalloc::nap::{ComPtr, Connections};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::ptr;

const SLOTS: usize = 8;
const N: u64 = 20_000;
/// Variants measured in this (Rust) program.
const RUST_VARIANTS: [&str; 2] = ["rust-safe", "rust-common"];
/// Variants of `benches/connections_ir.c`.
const C_VARIANTS: [&str; 3] = ["napalloc", "glibc", "common"];

/// A COM object as C code writes one: a vtable pointer, then a plain reference count.
#[repr(C)]
struct Fake {
    base: ComObject,
    refs: u32,
}

unsafe extern "system" fn add_ref(this: *mut ComObject) -> u32 {
    // SAFETY: `this` is a live `Fake`, used by one thread.
    unsafe {
        let f = this.cast::<Fake>();
        (*f).refs += 1;
        (*f).refs
    }
}

unsafe extern "system" fn release(this: *mut ComObject) -> u32 {
    // SAFETY: as in `add_ref`.
    unsafe {
        let f = this.cast::<Fake>();
        (*f).refs -= 1;
        (*f).refs
    }
}

static VTBL: IUnknownVtbl = IUnknownVtbl { query_interface: None, add_ref: Some(add_ref), release: Some(release) };

/// AddRef through the object's vtable, as a C caller does.
#[inline(always)]
unsafe fn com_add_ref(o: *mut ComObject) {
    // SAFETY: a live object with a full vtable (caller).
    unsafe { ((*(*o).vtbl).add_ref.unwrap_unchecked())(o) };
}

#[inline(always)]
unsafe fn com_release(o: *mut ComObject) {
    // SAFETY: as in `com_add_ref`.
    unsafe { ((*(*o).vtbl).release.unwrap_unchecked())(o) };
}

#[inline(never)]
fn napalloc_safe_iteration(objs: &[*mut ComObject; SLOTS]) {
    let mut c = Connections::new(SLOTS as u16).expect("AllocConnections");
    for (i, &o) in objs.iter().enumerate() {
        // SAFETY: a live object; the handle takes a reference of its own.
        let p = unsafe { ComPtr::from_borrowed(black_box(o)) }.expect("non-null");
        c.set(i, p);
    }
    drop(black_box(c));
}

#[inline(never)]
fn common_iteration(objs: &[*mut ComObject; SLOTS]) {
    let mut slots = [ptr::null_mut::<ComObject>(); SLOTS];
    let mut c = raw::Connections { count: SLOTS as u16, connections: slots.as_mut_ptr() };
    // SAFETY: the objects are live; each slot gets a reference that is released in the same call.
    unsafe {
        for (i, &o) in objs.iter().enumerate() {
            let o = black_box(o);
            com_add_ref(o);
            c.connections.add(i).write(o);
        }
        let c = black_box(&mut c);
        for i in 0..usize::from(c.count) {
            let o = *c.connections.add(i);
            if !o.is_null() {
                com_release(o);
            }
        }
    }
}

/// Run `variant` once (warm-up: first use of the heap), then `n` more times.
fn measured(variant: &str, n: u64) {
    let mut fakes: Vec<Fake> = (0..SLOTS).map(|_| Fake { base: ComObject { vtbl: &VTBL }, refs: 1 }).collect();
    let objs: [*mut ComObject; SLOTS] = std::array::from_fn(|i| ptr::addr_of_mut!(fakes[i]).cast());
    let f: fn(&[*mut ComObject; SLOTS]) = match variant {
        "rust-safe" => napalloc_safe_iteration,
        "rust-common" => common_iteration,
        other => panic!("unknown variant {other}; one of {RUST_VARIANTS:?}"),
    };
    f(&objs);
    for _ in 0..n {
        f(&objs);
    }
    // Every AddRef was matched by one Release.
    // SAFETY: the objects are live.
    assert!(objs.iter().all(|&o| unsafe { (*o.cast::<Fake>()).refs } == 1));
    assert_eq!(napalloc::heap::stats().live_blocks, 0, "leaked");
}

/// Instructions of one run of `exe variant n` under callgrind.
fn callgrind_ir(exe: &Path, variant: &str, n: u64) -> Option<u64> {
    let out = Command::new("valgrind")
        .args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
        .arg(exe)
        .args([variant, &n.to_string()])
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!("{variant} {n} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err.lines().find(|l| l.contains("Collected :"))?;
    line.rsplit(':').next()?.trim().replace(',', "").parse().ok()
}

/// Build `benches/connections_ir.c` against the `libnapalloc.a` built with this benchmark (it
/// lies next to this executable, in `target/<profile>/deps/`).
fn build_c_client() -> Result<PathBuf, String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let deps = std::env::current_exe().map_err(|e| e.to_string())?.parent().ok_or("no deps directory")?.to_path_buf();
    if !deps.join("libnapalloc.a").is_file() {
        return Err(format!("no libnapalloc.a in {}", deps.display()));
    }
    let out_dir = deps.parent().ok_or("no profile directory")?.join("c-bench");
    std::fs::create_dir_all(&out_dir).map_err(|e| e.to_string())?;
    let exe = out_dir.join("connections_ir");
    let out = Command::new("gcc")
        .args(["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-I"])
        .arg(root.join("include"))
        .arg(root.join("benches").join("connections_ir.c"))
        .arg("-o")
        .arg(&exe)
        .arg(format!("-L{}", deps.display()))
        .args(["-Wl,-Bstatic", "-lnapalloc", "-Wl,-Bdynamic", "-lpthread", "-ldl", "-lm"])
        .output()
        .map_err(|e| format!("cannot run gcc: {e}"))?;
    if !out.status.success() {
        return Err(format!("gcc failed:\n{}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(exe)
}

/// Measure each variant; returns Ir per iteration by variant.
fn measure_all(exe: &Path, variants: &[&'static str]) -> BTreeMap<&'static str, f64> {
    let mut per = BTreeMap::new();
    for &v in variants {
        let (Some(a), Some(b)) = (callgrind_ir(exe, v, 0), callgrind_ir(exe, v, N)) else {
            println!("  {v:<12} (callgrind failed)");
            continue;
        };
        let ir = b.saturating_sub(a) as f64 / N as f64;
        per.insert(v, ir);
        println!("  {v:<12} {ir:>7.1}   (Ir(0) = {a}, Ir({N}) = {b})");
    }
    per
}

/// `cargo bench -- --test`: run every variant a few times, natively, so that none rots.
fn smoke_test() {
    for v in RUST_VARIANTS {
        measured(v, 10);
    }
    match build_c_client() {
        Ok(exe) => {
            for v in C_VARIANTS {
                let status = Command::new(&exe).args([v, "10"]).status().expect("run the C client");
                assert!(status.success(), "C client, variant {v}: {status}");
            }
        }
        Err(e) => println!("C client not built ({e})"),
    }
    println!("connections_ir: every variant ran");
}

fn main() {
    if std::env::args().any(|a| a == "--test") {
        smoke_test();
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    if let [variant, n] = args.as_slice() {
        measured(variant, n.parse().expect("iterations"));
        return;
    }
    if Command::new("valgrind").arg("--version").output().is_err() {
        println!("connections_ir: valgrind is not installed; nothing measured");
        return;
    }
    println!("instructions per iteration, (Ir({N}) - Ir(0)) / {N}, callgrind");
    match build_c_client() {
        Err(e) => println!("C client not built ({e}); C variants not measured"),
        Ok(c_exe) => {
            println!("C client (benches/connections_ir.c, gcc -O2, libnapalloc.a):");
            let per = measure_all(&c_exe, &C_VARIANTS);
            if let (Some(&x), Some(&g), Some(&c)) = (per.get("napalloc"), per.get("glibc"), per.get("common")) {
                println!(
                    "  napalloc / glibc = {:.2} overall; allocator part alone (minus common) {:.1} / {:.1} = {:.2}",
                    x / g,
                    x - c,
                    g - c,
                    (x - c) / (g - c)
                );
            }
        }
    }
    println!("Rust safe handles (this program):");
    let me = std::env::current_exe().expect("path of this program");
    let per = measure_all(&me, &RUST_VARIANTS);
    if let (Some(&x), Some(&c)) = (per.get("rust-safe"), per.get("rust-common")) {
        println!("  allocator part of rust-safe (minus rust-common): {:.1}", x - c);
    }
}
