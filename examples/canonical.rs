//! Runs N canonical requests (WORKLOAD.md) in one mode, for instruction counting under
//! `valgrind --tool=callgrind` (see `benches/instructions.sh`).
//!
//! ```text
//! cargo run --release --example canonical -- MODE N
//! ```
//! Every run first does `WARMUP` requests (so that pages are committed and lazily created state
//! exists in the N = 0 run too), then N more; `(Ir(N) - Ir(0)) / N` is the cost of one request.

#[path = "../benches/common/mod.rs"]
mod common;

use common::*;

/// Requests run before the measured ones, in every run.
const WARMUP: u64 = 64;

/// The modes, in the order of the report.
const MODES: &[&str] = &[
    "floor",
    "hand-bump",
    "bumpalo",
    "system",
    "mimalloc",
    "untracked",
    "cursor",
    "tracked-free",
    "tracked-reset",
    "tracked-cursor",
    "com",
    "com-scope",
];

fn region() -> napalloc::Region {
    napalloc::Region::new().expect("a region")
}

fn go<M: Mode>(mut m: M, n: u64) {
    let mut rng = Rng::for_thread(0);
    run(&mut m, &mut rng, WARMUP);
    run(&mut m, &mut rng, n);
    std::hint::black_box(rng.0);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: canonical MODE N\nmodes: {}", MODES.join(" "));
        std::process::exit(2);
    }
    let n: u64 = args[2].parse().expect("N: a number of requests");
    match args[1].as_str() {
        "floor" => go(Floor::new(), n),
        "hand-bump" => go(HandBump::new(), n),
        "bumpalo" => go(Bumpalo(bumpalo::Bump::with_capacity(1 << 16)), n),
        "system" => go(Global(std::alloc::System), n),
        #[cfg(unix)]
        "mimalloc" => go(Global(mimalloc::MiMalloc), n),
        "untracked" => go(Untracked(region()), n),
        "cursor" => {
            let mut a = ArenaCursor(napalloc::PageArena::new().expect("an arena"));
            let mut rng = Rng::for_thread(0);
            run_cursor(&mut a, &mut rng, WARMUP);
            run_cursor(&mut a, &mut rng, n);
            std::hint::black_box(rng.0);
        }
        "tracked-free" => go(TrackedFree(region()), n),
        "tracked-reset" => go(TrackedReset(region()), n),
        "tracked-cursor" => {
            let mut t = TrackedCursor(region());
            let mut rng = Rng::for_thread(0);
            run_child_cursor(&mut t, &mut rng, WARMUP);
            run_child_cursor(&mut t, &mut rng, n);
            std::hint::black_box(rng.0);
        }
        "com" => go(Com, n),
        "com-scope" => go(ComScope(None), n),
        other => {
            eprintln!("unknown mode {other}; modes: {}", MODES.join(" "));
            std::process::exit(2);
        }
    }
}
