//! The C ABI seen from C: clients compiled against `include/napalloc.h` and linked with
//! `libnapalloc.a` / `libnapalloc.so`.
//!
//! * Every `tests/c/*.c` (gcc `-std=c11 -Wall -Wextra -Werror -pedantic`) and `tests/c/*.cpp`
//!   (g++ `-std=c++17`, same warnings) is compiled with `-Iinclude`, linked statically with
//!   `-lnapalloc -lpthread -ldl -lm`, and run; it must exit with status 0. A C client reports its
//!   own failures (see `tests/c/check.h`) and its output is shown when it fails. Set
//!   `NAPALLOC_C_TESTS=name1,name2` (file stems) to run only some of them, and
//!   `NAPALLOC_C_RUNNER="valgrind --leak-check=full --error-exitcode=1"` (any command and its
//!   arguments) to run every client under a checker, and `NAPALLOC_C_CFLAGS="-fsanitize=address"`
//!   to compile every client with more flags; `NAPALLOC_C_LIB_DIR=dir` links them with the
//!   `libnapalloc.a` / `libnapalloc.so` in `dir` (say, a build with AddressSanitizer).
//! * A client that calls a function of the fixed ABI that the library does not define yet (the
//!   ABI lands in parts) is compiled but not linked or run: it is SKIPPED, and the skip is written
//!   to the terminal (past the test harness's capture) with the missing names. Set
//!   `NAPALLOC_C_REQUIRE_ALL=0` to skip (loudly) clients whose ABI functions are not written yet.
//! * One client is linked against the shared library with an rpath, and must load it from there.
//! * `layout_dump.c` prints what the C compiler makes of every type; it must equal the Rust mirror
//!   in `napalloc::nap::types`.
//! * The functions the header declares are exactly the fixed ABI, and (once it lands) exactly the
//!   `#[no_mangle]` functions of `src/` and the functions `libnapalloc.so` exports.
//! * `scripts/napalloc-pc.sh` writes a pkg-config file that builds a working client.
//!
//! The libraries: `cargo test` builds the cdylib and staticlib next to the rlib, in
//! `target/<profile>/deps/` (only `cargo build` copies them up to `target/<profile>/`). The test
//! executable lives in that `deps/` directory, so the copies there are the ones built from the
//! sources under test; `target/<profile>/` is the fallback, and if neither has both libraries the
//! harness runs `cargo build --lib` for the same profile.
// Unix only (gcc, ELF tools, rpaths); not under Miri, which cannot start processes.
#![cfg(all(unix, not(miri)))]

use napalloc::nap::types::*;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::mem::{offset_of, size_of};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const C_FLAGS: &[&str] = &["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic"];
const CXX_FLAGS: &[&str] = &["-std=c++17", "-Wall", "-Wextra", "-Werror", "-pedantic"];
const SYSTEM_LIBS: &[&str] = &["-lpthread", "-ldl", "-lm"];
/// A C client that runs longer than this has hung; it is killed and fails.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// Every function of the C ABI, as fixed by SPEC §4, §5 and the napalloc entry points.
const FIXED_ABI: &[&str] = &[
    // SPEC §5: the COM task allocator.
    "CoTaskMemAlloc",
    "CoTaskMemRealloc",
    "CoTaskMemFree",
    "CoGetMalloc",
    // SPEC §4: the 14 NapUtil functions.
    "AllocConnections",
    "AllocCountedString",
    "AllocFixupInfo",
    "FreeConnections",
    "FreeCountedString",
    "FreeFixupInfo",
    "FreeIsolationInfo",
    "FreeIsolationInfoEx",
    "FreeSoH",
    "FreeNetworkSoH",
    "FreePrivateData",
    "FreeSoHAttributeValue",
    "FreeNapComponentRegistrationInfoArray",
    "FreeSystemHealthAgentState",
    // napalloc's own.
    "NapallocSetHostMemoryManager",
    "NapallocResetHostFailure",
    "NapallocGetLastHostError",
    "NapallocAllocCritical",
    "NapallocSetBudget",
    "NapallocGetStats",
    "NapallocHeapMinimize",
    "NapallocFlushRemoteFrees",
    "NapallocScopeEnter",
    "NapallocScopeLeave",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn header() -> PathBuf {
    root().join("include").join("napalloc.h")
}

// ---------------------------------------------------------------------------------------------
// Finding (or building) the libraries
// ---------------------------------------------------------------------------------------------

struct Build {
    /// Holds `libnapalloc.a` and `libnapalloc.so`.
    lib_dir: PathBuf,
    /// Where the compiled clients and their output go: `target/<profile>/c-abi/`.
    out_dir: PathBuf,
}

fn has_libs(dir: &Path) -> bool {
    dir.join("libnapalloc.a").is_file() && dir.join("libnapalloc.so").is_file()
}

fn build() -> &'static Build {
    static BUILD: OnceLock<Build> = OnceLock::new();
    BUILD.get_or_init(|| {
        let exe = std::env::current_exe().expect("path of the test executable");
        let deps = exe.parent().expect("the test executable is in target/<profile>/deps").to_path_buf();
        let profile_dir = deps.parent().expect("target/<profile>").to_path_buf();
        // NAPALLOC_C_LIB_DIR links the clients with the libraries of another build instead, e.g.
        // one instrumented with `-Zsanitizer=address` (see .ci/hardening.sh, step csan).
        let lib_dir = if let Some(dir) = std::env::var_os("NAPALLOC_C_LIB_DIR") {
            let dir = PathBuf::from(dir);
            assert!(has_libs(&dir), "NAPALLOC_C_LIB_DIR={} lacks libnapalloc.a or libnapalloc.so", dir.display());
            dir
        } else if has_libs(&deps) {
            deps
        } else if has_libs(&profile_dir) {
            profile_dir.clone()
        } else {
            cargo_build_lib(&profile_dir);
            assert!(
                has_libs(&profile_dir),
                "cargo build --lib did not produce libnapalloc.a and libnapalloc.so in {}",
                profile_dir.display()
            );
            profile_dir.clone()
        };
        let out_dir = profile_dir.join("c-abi");
        fs::create_dir_all(&out_dir).expect("create target/<profile>/c-abi");
        Build { lib_dir, out_dir }
    })
}

/// `cargo build --lib` for the profile whose output directory is `profile_dir`.
fn cargo_build_lib(profile_dir: &Path) {
    let profile = profile_dir.file_name().and_then(|n| n.to_str()).expect("profile directory name");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(root()).args(["build", "--lib"]);
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    if let Some(target_dir) = profile_dir.parent() {
        cmd.arg("--target-dir").arg(target_dir);
    }
    let out = cmd.output().expect("run cargo build --lib");
    assert!(out.status.success(), "cargo build --lib failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

// ---------------------------------------------------------------------------------------------
// Compiling and running clients
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    /// `-Wl,-Bstatic -lnapalloc -Wl,-Bdynamic` + system libraries.
    Static,
    /// `-lnapalloc` (the .so) with an rpath to its directory.
    Shared,
}

fn is_cpp(src: &Path) -> bool {
    matches!(src.extension().and_then(|e| e.to_str()), Some("cpp" | "cc" | "cxx"))
}

/// The compiler and language flags for `src`.
fn compiler(src: &Path) -> (&'static str, &'static [&'static str]) {
    if is_cpp(src) {
        ("g++", CXX_FLAGS)
    } else {
        ("gcc", C_FLAGS)
    }
}

/// Compile and link `src` into `target/<profile>/c-abi/<stem>-<tag>`; `Err` holds the command
/// and the compiler's output.
fn compile(src: &Path, link: Link, tag: &str, extra: &[String]) -> Result<PathBuf, String> {
    let b = build();
    let stem = src.file_stem().unwrap().to_string_lossy();
    let exe = b.out_dir.join(format!("{stem}-{tag}"));
    let (cc, flags) = compiler(src);
    let mut cmd = Command::new(cc);
    cmd.args(flags).arg("-I").arg(root().join("include")).arg(src).arg("-o").arg(&exe);
    cmd.args(extra);
    cmd.args(extra_cflags());
    cmd.arg(format!("-L{}", b.lib_dir.display()));
    match link {
        Link::Static => {
            cmd.args(["-Wl,-Bstatic", "-lnapalloc", "-Wl,-Bdynamic"]);
        }
        Link::Shared => {
            // --no-as-needed: keep the DT_NEEDED entry even while a client calls nothing in it.
            cmd.args(["-Wl,--no-as-needed", "-lnapalloc", "-Wl,--as-needed"]);
            cmd.arg(format!("-Wl,-rpath,{}", b.lib_dir.display()));
        }
    }
    cmd.args(SYSTEM_LIBS);
    let out = cmd.output().map_err(|e| format!("cannot run {cc}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "compile failed: {:?}\n{}{}",
            cmd,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(exe)
}

/// NAPALLOC_C_CFLAGS adds compiler flags to every client, e.g. "-fsanitize=address" (with its
/// LeakSanitizer, this checks the C side and leaks of the whole program; a library built with
/// the sanitizer also needs its runtime in the program that loads it).
fn extra_cflags() -> Vec<String> {
    std::env::var("NAPALLOC_C_CFLAGS").map(|v| v.split_whitespace().map(String::from).collect()).unwrap_or_default()
}

/// Run `exe` (no arguments, no input) with a time limit. `Ok` holds its output if it exited with
/// status 0; `Err` says how it ended and holds its output.
fn run(exe: &Path) -> Result<String, String> {
    run_with_args(exe, &[])
}

/// [`run`] with command-line arguments for `exe`.
fn run_with_args(exe: &Path, exe_args: &[&std::ffi::OsStr]) -> Result<String, String> {
    let stdout_path = exe.with_extension("stdout");
    let stderr_path = exe.with_extension("stderr");
    // NAPALLOC_C_RUNNER runs every client under a checker, e.g.
    // "valgrind --leak-check=full --error-exitcode=1"; its failure fails the client.
    let runner: Vec<String> = std::env::var("NAPALLOC_C_RUNNER")
        .map(|r| r.split_whitespace().map(String::from).collect())
        .unwrap_or_default();
    let mut cmd = match runner.split_first() {
        Some((prog, args)) => {
            let mut c = Command::new(prog);
            c.args(args).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    cmd.args(exe_args);
    let mut child = cmd
        // cargo points LD_LIBRARY_PATH at target/<profile> and its deps/; it would override the
        // rpath and could load a stale libnapalloc.so. A client finds its library on its own.
        .env_remove("LD_LIBRARY_PATH")
        .stdin(Stdio::null())
        .stdout(File::create(&stdout_path).map_err(|e| e.to_string())?)
        .stderr(File::create(&stderr_path).map_err(|e| e.to_string())?)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break Some(status);
        }
        if start.elapsed() > RUN_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let output = format!(
        "--- stdout ---\n{}--- stderr ---\n{}",
        fs::read_to_string(&stdout_path).unwrap_or_default(),
        fs::read_to_string(&stderr_path).unwrap_or_default()
    );
    match status {
        Some(s) if s.success() => Ok(output),
        Some(s) => Err(format!("{} exited with {s}\n{output}", exe.display())),
        None => Err(format!("{} did not finish within {RUN_TIMEOUT:?} and was killed\n{output}", exe.display())),
    }
}

/// `tests/c/*.c` and `tests/c/*.cpp`, sorted, filtered by `NAPALLOC_C_TESTS` if set.
fn c_clients() -> Vec<PathBuf> {
    let only: Option<BTreeSet<String>> =
        std::env::var("NAPALLOC_C_TESTS").ok().map(|v| v.split(',').map(|s| s.trim().to_string()).collect());
    let mut v: Vec<PathBuf> = fs::read_dir(root().join("tests").join("c"))
        .expect("tests/c")
        .map(|e| e.expect("tests/c entry").path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("c" | "cpp")))
        .filter(|p| match &only {
            Some(names) => names.contains(p.file_stem().unwrap().to_str().unwrap()),
            None => true,
        })
        .collect();
    v.sort();
    v
}

fn c_client(name: &str) -> PathBuf {
    let p = root().join("tests").join("c").join(name);
    assert!(p.is_file(), "{} is missing", p.display());
    p
}

#[test]
fn every_c_client_passes_linked_statically() {
    let clients = c_clients();
    if std::env::var_os("NAPALLOC_C_TESTS").is_none() {
        let names: Vec<_> = clients.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        for required in ["header_compiles.c", "header_compiles_cpp.cpp", "layout_dump.c"] {
            assert!(names.iter().any(|n| n == required), "{required} not found among {names:?}");
        }
    }
    // The whole C ABI is implemented: a client that cannot link is a failure. Set
    // NAPALLOC_C_REQUIRE_ALL=0 to skip such clients while an ABI function is being written.
    let require_all = std::env::var_os("NAPALLOC_C_REQUIRE_ALL").is_none_or(|v| v != "0");
    let mut failures = Vec::new();
    let mut skipped = Vec::new();
    for src in &clients {
        let name = src.file_name().unwrap().to_string_lossy();
        match missing_abi_functions(src) {
            Ok(missing) if !missing.is_empty() => {
                let why = format!("{name} calls {} (not defined by libnapalloc.a yet)", missing.join(", "));
                if require_all {
                    failures.push(format!("FAILED: {why}"));
                } else {
                    skipped.push(why);
                }
                continue;
            }
            Ok(_) => {}
            Err(e) => {
                failures.push(format!("FAILED: {name}\n{e}"));
                continue;
            }
        }
        match compile(src, Link::Static, "static", &[]).and_then(|exe| run(&exe)) {
            Ok(out) => eprintln!("ok: {name}\n{out}"),
            Err(e) => failures.push(format!("FAILED: {name}\n{e}")),
        }
    }
    if !skipped.is_empty() {
        // Straight to the terminal: the harness captures eprintln! of passing tests.
        use std::io::Write;
        let mut msg = format!("\nSKIPPED {} of {} C clients:\n", skipped.len(), clients.len());
        for s in &skipped {
            msg.push_str(&format!("  SKIPPED: {s}\n"));
        }
        let _ = std::io::stderr().write_all(msg.as_bytes());
    }
    assert!(
        failures.is_empty(),
        "{} of {} C clients failed:\n\n{}",
        failures.len(),
        clients.len(),
        failures.join("\n\n")
    );
}

/// The functions of the fixed ABI that `libnapalloc.a` defines (`nm --defined-only`).
fn library_abi_functions() -> &'static BTreeSet<String> {
    static SET: OnceLock<BTreeSet<String>> = OnceLock::new();
    SET.get_or_init(|| {
        let lib = build().lib_dir.join("libnapalloc.a");
        let out = Command::new("nm").args(["-g", "--defined-only"]).arg(&lib).output().expect("run nm");
        assert!(out.status.success(), "nm {}: {}", lib.display(), String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace().rev();
                let name = f.next()?;
                (f.next()? == "T" && FIXED_ABI.contains(&name)).then(|| name.to_string())
            })
            .collect()
    })
}

/// The functions of the fixed ABI that `src` calls and the library does not define: `src` is
/// compiled to an object file (`-c`) and its undefined symbols (`nm -u`) are compared.
fn missing_abi_functions(src: &Path) -> Result<Vec<String>, String> {
    let b = build();
    let stem = src.file_stem().unwrap().to_string_lossy();
    let obj = b.out_dir.join(format!("{stem}.o"));
    let (cc, flags) = compiler(src);
    let mut cmd = Command::new(cc);
    cmd.args(flags).arg("-I").arg(root().join("include")).arg("-c").arg(src).arg("-o").arg(&obj);
    let out = cmd.output().map_err(|e| format!("cannot run {cc}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "compile failed: {cmd:?}\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let nm = Command::new("nm").arg("-u").arg(&obj).output().map_err(|e| format!("cannot run nm: {e}"))?;
    let defined = library_abi_functions();
    Ok(String::from_utf8_lossy(&nm.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .filter(|name| FIXED_ABI.contains(name) && !defined.contains(*name))
        .map(str::to_string)
        .collect())
}

#[test]
fn a_c_client_loads_the_shared_library_through_its_rpath() {
    let b = build();
    let exe = compile(&c_client("header_compiles.c"), Link::Shared, "shared", &[]).unwrap_or_else(|e| panic!("{e}"));

    let dynamic = Command::new("readelf").arg("-d").arg(&exe).output().expect("run readelf -d");
    let dynamic = String::from_utf8_lossy(&dynamic.stdout);
    assert!(dynamic.contains("Shared library: [libnapalloc.so]"), "no DT_NEEDED libnapalloc.so:\n{dynamic}");
    let lib_dir = b.lib_dir.display().to_string();
    assert!(
        dynamic.lines().any(|l| (l.contains("(RUNPATH)") || l.contains("(RPATH)")) && l.contains(&lib_dir)),
        "no rpath to {lib_dir}:\n{dynamic}"
    );

    // The dynamic loader resolves libnapalloc.so to the library under test, not some other copy.
    let ldd = Command::new("ldd").arg(&exe).env_remove("LD_LIBRARY_PATH").output().expect("run ldd");
    let ldd = String::from_utf8_lossy(&ldd.stdout);
    let so = b.lib_dir.join("libnapalloc.so").display().to_string();
    assert!(
        ldd.lines().any(|l| l.contains("libnapalloc.so =>") && l.contains(&so)),
        "libnapalloc.so does not resolve to {so}:\n{ldd}"
    );

    let out = run(&exe).unwrap_or_else(|e| panic!("{e}"));
    assert!(out.contains("all checks passed"), "{out}");
}

/// A program that is not linked with the library loads it with `dlopen` after start-up (the
/// library's thread-local heap pointer is initial-exec TLS, which a late load takes from the
/// static TLS surplus) and uses the task allocator from threads started before and after.
#[test]
fn a_late_dlopen_of_the_shared_library_works() {
    let b = build();
    let src = root().join("tests").join("c_dlopen").join("dlopen_late.c");
    let exe = b.out_dir.join("dlopen_late");
    // Not linked with the library, but compiled like every client (NAPALLOC_C_CFLAGS) and run
    // under the same checker (NAPALLOC_C_RUNNER).
    let out = Command::new("gcc")
        .args(C_FLAGS)
        .args(extra_cflags())
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .args(SYSTEM_LIBS)
        .output()
        .expect("run gcc");
    assert!(out.status.success(), "compile failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let so = b.lib_dir.join("libnapalloc.so");
    let out = run_with_args(&exe, &[so.as_os_str()]).unwrap_or_else(|e| panic!("{e}"));
    assert!(out.contains("all checks passed"), "{out}");
}

// ---------------------------------------------------------------------------------------------
// C layouts == Rust layouts
// ---------------------------------------------------------------------------------------------

/// The Rust side of what `tests/c/layout_dump.c` prints, keyed by the same C names.
fn rust_layouts() -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    macro_rules! size {
        ($c:literal, $t:ty) => {
            m.insert(concat!("SIZE ", $c).to_string(), size_of::<$t>());
        };
    }
    macro_rules! off {
        ($c:literal, $v:expr) => {
            m.insert(concat!("OFFSET ", $c).to_string(), $v);
        };
    }
    size!("GUID", Guid);
    off!("GUID.Data2", offset_of!(Guid, data2));
    off!("GUID.Data3", offset_of!(Guid, data3));
    off!("GUID.Data4", offset_of!(Guid, data4));
    size!("FILETIME", FileTime);
    off!("FILETIME.dwHighDateTime", offset_of!(FileTime, dw_high_date_time));
    size!("FixupState", FixupState);
    size!("SoHAttributeType", SoHAttributeType);
    size!("EMemoryCriticalLevel", EMemoryCriticalLevel);

    size!("Connections", Connections);
    off!("Connections.count", offset_of!(Connections, count));
    off!("Connections.connections", offset_of!(Connections, connections));
    size!("CountedString", CountedString);
    off!("CountedString.string", offset_of!(CountedString, string));
    size!("ResultCodes", ResultCodes);
    off!("ResultCodes.results", offset_of!(ResultCodes, results));
    size!("FixupInfo", FixupInfo);
    off!("FixupInfo.state", offset_of!(FixupInfo, state));
    off!("FixupInfo.percentage", offset_of!(FixupInfo, percentage));
    off!("FixupInfo.resultCodes", offset_of!(FixupInfo, result_codes));
    off!("FixupInfo.fixupMsgId", offset_of!(FixupInfo, fixup_msg_id));
    size!("SystemHealthAgentState", SystemHealthAgentState);
    off!("SystemHealthAgentState.id", offset_of!(SystemHealthAgentState, id));
    off!("SystemHealthAgentState.shaResultCodes", offset_of!(SystemHealthAgentState, sha_result_codes));
    off!("SystemHealthAgentState.failureCategory", offset_of!(SystemHealthAgentState, failure_category));
    off!("SystemHealthAgentState.fixupInfo", offset_of!(SystemHealthAgentState, fixup_info));
    size!("SoHAttribute", SoHAttribute);
    off!("SoHAttribute.type", offset_of!(SoHAttribute, r#type));
    off!("SoHAttribute.size", offset_of!(SoHAttribute, size));
    off!("SoHAttribute.value", offset_of!(SoHAttribute, value));
    size!("SoH", SoH);
    off!("SoH.attributes", offset_of!(SoH, attributes));
    size!("NetworkSoH", NetworkSoH);
    off!("NetworkSoH.data", offset_of!(NetworkSoH, data));
    size!("PrivateData", PrivateData);
    off!("PrivateData.data", offset_of!(PrivateData, data));
    size!("IsolationInfo", IsolationInfo);
    off!("IsolationInfo.probEndTime", offset_of!(IsolationInfo, prob_end_time));
    off!("IsolationInfo.failureUrl", offset_of!(IsolationInfo, failure_url));
    size!("IsolationInfoEx", IsolationInfoEx);
    off!("IsolationInfoEx.extendedIsolationState", offset_of!(IsolationInfoEx, extended_isolation_state));
    off!("IsolationInfoEx.probEndTime", offset_of!(IsolationInfoEx, prob_end_time));
    off!("IsolationInfoEx.failureUrl", offset_of!(IsolationInfoEx, failure_url));
    size!("NapComponentRegistrationInfo", NapComponentRegistrationInfo);
    off!("NapComponentRegistrationInfo.friendlyName", offset_of!(NapComponentRegistrationInfo, friendly_name));
    off!("NapComponentRegistrationInfo.description", offset_of!(NapComponentRegistrationInfo, description));
    off!("NapComponentRegistrationInfo.version", offset_of!(NapComponentRegistrationInfo, version));
    off!("NapComponentRegistrationInfo.vendorName", offset_of!(NapComponentRegistrationInfo, vendor_name));
    off!("NapComponentRegistrationInfo.infoClsid", offset_of!(NapComponentRegistrationInfo, info_clsid));
    off!("NapComponentRegistrationInfo.configClsid", offset_of!(NapComponentRegistrationInfo, config_clsid));
    off!("NapComponentRegistrationInfo.registrationDate", offset_of!(NapComponentRegistrationInfo, registration_date));
    off!("NapComponentRegistrationInfo.componentType", offset_of!(NapComponentRegistrationInfo, component_type));
    size!("FailureCategoryMapping", napalloc::nap::types::FailureCategoryMapping);
    size!("CorrelationId", napalloc::nap::types::CorrelationId);
    off!("CorrelationId.timeStamp", offset_of!(napalloc::nap::types::CorrelationId, time_stamp));
    size!("Ipv4Address", Ipv4Address);
    size!("Ipv6Address", Ipv6Address);
    size!("SoHAttributeValue", SoHAttributeValue);
    // Union members are all at 0; nested offsets are spelled out (offset_of! of a nested field
    // needs a newer Rust than the crate's rust-version).
    off!(
        "SoHAttributeValue.v4AddressesVal.addresses",
        offset_of!(SoHAttributeValue, v4_addresses_val) + offset_of!(Ipv4Addresses, addresses)
    );
    off!(
        "SoHAttributeValue.v6AddressesVal.addresses",
        offset_of!(SoHAttributeValue, v6_addresses_val) + offset_of!(Ipv6Addresses, addresses)
    );
    off!(
        "SoHAttributeValue.codesVal.results",
        offset_of!(SoHAttributeValue, codes_val) + offset_of!(ResultCodes, results)
    );
    off!(
        "SoHAttributeValue.vendorSpecificVal.size",
        offset_of!(SoHAttributeValue, vendor_specific_val) + offset_of!(VendorSpecific, size)
    );
    off!(
        "SoHAttributeValue.vendorSpecificVal.vendorSpecificData",
        offset_of!(SoHAttributeValue, vendor_specific_val) + offset_of!(VendorSpecific, vendor_specific_data)
    );
    off!(
        "SoHAttributeValue.octetStringVal.data",
        offset_of!(SoHAttributeValue, octet_string_val) + offset_of!(OctetString, data)
    );

    size!("IUnknownVtbl", IUnknownVtbl);
    size!("IMallocVtbl", IMallocVtbl);
    off!("IMallocVtbl.Alloc", offset_of!(IMallocVtbl, alloc));
    off!("IMallocVtbl.Realloc", offset_of!(IMallocVtbl, realloc));
    off!("IMallocVtbl.Free", offset_of!(IMallocVtbl, free));
    off!("IMallocVtbl.GetSize", offset_of!(IMallocVtbl, get_size));
    off!("IMallocVtbl.DidAlloc", offset_of!(IMallocVtbl, did_alloc));
    off!("IMallocVtbl.HeapMinimize", offset_of!(IMallocVtbl, heap_minimize));
    size!("ICLRMemoryNotificationCallbackVtbl", ICLRMemoryNotificationCallbackVtbl);
    off!(
        "ICLRMemoryNotificationCallbackVtbl.OnMemoryNotification",
        offset_of!(ICLRMemoryNotificationCallbackVtbl, on_memory_notification)
    );
    size!("IHostMallocVtbl", IHostMallocVtbl);
    off!("IHostMallocVtbl.Alloc", offset_of!(IHostMallocVtbl, alloc));
    off!("IHostMallocVtbl.DebugAlloc", offset_of!(IHostMallocVtbl, debug_alloc));
    off!("IHostMallocVtbl.Free", offset_of!(IHostMallocVtbl, free));
    size!("IHostMemoryManagerVtbl", IHostMemoryManagerVtbl);
    off!("IHostMemoryManagerVtbl.CreateMalloc", offset_of!(IHostMemoryManagerVtbl, create_malloc));
    off!("IHostMemoryManagerVtbl.VirtualAlloc", offset_of!(IHostMemoryManagerVtbl, virtual_alloc));
    off!("IHostMemoryManagerVtbl.VirtualFree", offset_of!(IHostMemoryManagerVtbl, virtual_free));
    off!("IHostMemoryManagerVtbl.VirtualQuery", offset_of!(IHostMemoryManagerVtbl, virtual_query));
    off!("IHostMemoryManagerVtbl.VirtualProtect", offset_of!(IHostMemoryManagerVtbl, virtual_protect));
    off!("IHostMemoryManagerVtbl.GetMemoryLoad", offset_of!(IHostMemoryManagerVtbl, get_memory_load));
    off!(
        "IHostMemoryManagerVtbl.RegisterMemoryNotificationCallback",
        offset_of!(IHostMemoryManagerVtbl, register_memory_notification_callback)
    );
    off!(
        "IHostMemoryManagerVtbl.NeedsVirtualAddressSpace",
        offset_of!(IHostMemoryManagerVtbl, needs_virtual_address_space)
    );
    off!(
        "IHostMemoryManagerVtbl.AcquiredVirtualAddressSpace",
        offset_of!(IHostMemoryManagerVtbl, acquired_virtual_address_space)
    );
    off!(
        "IHostMemoryManagerVtbl.ReleasedVirtualAddressSpace",
        offset_of!(IHostMemoryManagerVtbl, released_virtual_address_space)
    );

    size!("NapallocStats", NapallocStats);
    off!("NapallocStats.live_blocks", offset_of!(NapallocStats, live_blocks));
    off!("NapallocStats.live_bytes", offset_of!(NapallocStats, live_bytes));
    off!("NapallocStats.committed_bytes", offset_of!(NapallocStats, committed_bytes));
    off!("NapallocStats.reserved_bytes", offset_of!(NapallocStats, reserved_bytes));
    off!("NapallocStats.bad_pointer_reports", offset_of!(NapallocStats, bad_pointer_reports));
    off!("NapallocStats.failed_allocations", offset_of!(NapallocStats, failed_allocations));
    off!("NapallocStats.trims", offset_of!(NapallocStats, trims));
    m
}

/// Parse `KIND name value` lines.
fn parse_layout_dump(out: &str) -> BTreeMap<String, usize> {
    out.lines()
        .filter(|l| l.starts_with("SIZE ") || l.starts_with("OFFSET "))
        .map(|l| {
            let (key, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {l:?}"));
            (key.to_string(), value.parse().unwrap_or_else(|_| panic!("bad value in {l:?}")))
        })
        .collect()
}

#[test]
fn c_and_rust_layouts_agree() {
    let exe = compile(&c_client("layout_dump.c"), Link::Static, "layout", &[]).unwrap_or_else(|e| panic!("{e}"));
    let out = run(&exe).unwrap_or_else(|e| panic!("{e}"));
    let c = parse_layout_dump(&out);
    let rust = rust_layouts();
    assert!(c.len() >= 90, "layout_dump printed only {} entries:\n{out}", c.len());

    let mut problems = Vec::new();
    for (key, cv) in &c {
        match rust.get(key) {
            Some(rv) if rv == cv => {}
            Some(rv) => problems.push(format!("{key}: C {cv}, Rust {rv}")),
            None => problems.push(format!("{key}: printed by layout_dump.c, not checked on the Rust side")),
        }
    }
    for key in rust.keys().filter(|k| !c.contains_key(*k)) {
        problems.push(format!("{key}: checked on the Rust side, not printed by layout_dump.c"));
    }
    assert!(problems.is_empty(), "C and Rust layouts differ:\n  {}", problems.join("\n  "));
}

// ---------------------------------------------------------------------------------------------
// The header alone, in every language mode
// ---------------------------------------------------------------------------------------------

/// Compile a translation unit that only includes the header, with `-fsyntax-only`.
fn syntax_check(cc: &str, lang: &str, flags: &[&str]) -> Result<(), String> {
    let out = Command::new(cc)
        .args(["-x", lang, "-fsyntax-only", "-I"])
        .arg(root().join("include"))
        .args(flags)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(b"#include \"napalloc.h\"\nint napalloc_tu_is_not_empty;\n")?;
            child.wait_with_output()
        })
        .map_err(|e| format!("cannot run {cc}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{cc} -x {lang} {}:\n{}", flags.join(" "), String::from_utf8_lossy(&out.stderr)))
    }
}

#[test]
fn header_compiles_in_strict_c_and_cpp_modes() {
    // Warnings that users' builds commonly turn on, on top of -Wall -Wextra -Werror -pedantic.
    const STRICT: &[&str] = &[
        "-Wall",
        "-Wextra",
        "-Werror",
        "-pedantic",
        "-Wundef",
        "-Wshadow",
        "-Wconversion",
        "-Wsign-conversion",
        "-Wcast-qual",
    ];
    let mut failures = Vec::new();
    for std in ["-std=c11", "-std=c17", "-std=gnu11"] {
        let flags: Vec<&str> =
            [std].iter().chain(STRICT).chain(&["-Wstrict-prototypes", "-Wmissing-prototypes"]).copied().collect();
        failures.extend(syntax_check("gcc", "c", &flags).err());
    }
    for std in ["-std=c++11", "-std=c++14", "-std=c++17", "-std=c++20"] {
        let flags: Vec<&str> = [std]
            .iter()
            .chain(STRICT)
            .chain(&["-Wold-style-cast", "-Wzero-as-null-pointer-constant"])
            .copied()
            .collect();
        failures.extend(syntax_check("g++", "c++", &flags).err());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The Windows branch of the header (SDK types, __stdcall, dllimport), where a mingw-w64 cross
/// compiler is installed; skipped (with a note) where none is.
#[test]
fn header_compiles_against_the_windows_sdk_headers_where_a_cross_compiler_exists() {
    let cc = "x86_64-w64-mingw32-gcc";
    if Command::new(cc).arg("--version").output().is_err() {
        eprintln!("note: {cc} not installed; the Windows branch of napalloc.h is not checked here");
        return;
    }
    let flags = ["-std=c11", "-Wall", "-Wextra", "-Werror"];
    syntax_check(cc, "c", &flags).unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new(cc)
        .args(flags)
        .args(["-fsyntax-only", "-I"])
        .arg(root().join("include"))
        .arg(c_client("header_compiles.c"))
        .output()
        .expect("run the cross compiler");
    assert!(out.status.success(), "header_compiles.c for Windows:\n{}", String::from_utf8_lossy(&out.stderr));
}

// ---------------------------------------------------------------------------------------------
// The header, the Rust sources and the shared library declare the same functions
// ---------------------------------------------------------------------------------------------

/// Remove `/* */` and `//` comments, keeping string and character literals intact (C or Rust;
/// Rust block comments nest).
fn strip_comments(src: &str, nested: bool) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 1;
            i += 2;
            while i < b.len() && depth > 0 {
                if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                } else if nested && b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if b[i] == b'"' {
            let start = i;
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i = (i + 1).min(b.len());
            out.push_str(&src[start..i]);
        } else if b[i] == b'\'' && (b.get(i + 2) == Some(&b'\'') || b.get(i + 1) == Some(&b'\\')) {
            // A character literal ('x', '\n', '\''); a lone ' is a Rust lifetime.
            let start = i;
            i += 1;
            while i < b.len() && b[i] != b'\'' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i = (i + 1).min(b.len());
            out.push_str(&src[start..i]);
        } else {
            let ch = src[i..].chars().next().unwrap();
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The functions a C header declares with `NAPALLOC_API` (prototypes may span lines; preprocessor
/// directives, including continued ones, are skipped).
fn header_functions(text: &str) -> BTreeSet<String> {
    let text = strip_comments(text, false);
    let mut code = String::new();
    let mut in_directive = false;
    for line in text.lines() {
        let directive = in_directive || line.trim_start().starts_with('#');
        in_directive = directive && line.trim_end().ends_with('\\');
        if !directive {
            code.push_str(line);
            code.push('\n');
        }
    }
    let mut names = BTreeSet::new();
    for stmt in code.split(';') {
        let Some(at) = find_word(stmt, "NAPALLOC_API") else { continue };
        let decl = &stmt[at..];
        let Some(paren) = decl.find('(') else { continue };
        if let Some(name) = decl[..paren].split(|c: char| !is_ident_char(c)).rfind(|s| !s.is_empty()) {
            names.insert(name.to_string());
        }
    }
    names
}

/// Byte offset of `word` in `s` as a whole identifier.
fn find_word(s: &str, word: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = s[from..].find(word).map(|i| i + from) {
        let before = s[..i].chars().next_back();
        let after = s[i + word.len()..].chars().next();
        if !before.is_some_and(is_ident_char) && !after.is_some_and(is_ident_char) {
            return Some(i);
        }
        from = i + word.len();
    }
    None
}

/// The exported functions of Rust source text: `#[no_mangle]` / `#[unsafe(no_mangle)]` followed
/// by an `extern` fn (other attributes may come between), and `#[export_name = "..."]`.
fn rust_exports_in(src: &str) -> BTreeSet<String> {
    let code = strip_comments(src, true);
    let mut names = BTreeSet::new();
    let mut from = 0;
    while let Some(at) = code[from..].find("no_mangle").map(|i| i + from) {
        from = at + "no_mangle".len();
        let rest = &code[from..];
        let Some(fn_at) = find_word(rest, "fn") else { break };
        let between = &rest[..fn_at];
        // The attribute belongs to this fn only if no other item ends in between.
        if between.contains(';') || between.contains('{') || !between.contains("extern") {
            continue;
        }
        let name: String = rest[fn_at + 2..].trim_start().chars().take_while(|&c| is_ident_char(c)).collect();
        if !name.is_empty() {
            names.insert(name);
        }
    }
    let mut from = 0;
    while let Some(at) = code[from..].find("export_name").map(|i| i + from) {
        from = at + "export_name".len();
        let rest = code[from..].trim_start();
        if let Some(rest) = rest.strip_prefix('=') {
            let rest = rest.trim_start();
            if let Some(rest) = rest.strip_prefix('"') {
                if let Some(end) = rest.find('"') {
                    names.insert(rest[..end].to_string());
                }
            }
        }
    }
    names
}

fn rust_exports(dir: &Path) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            names.extend(rust_exports(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            names.extend(rust_exports_in(&fs::read_to_string(&path).expect("read a source file")));
        }
    }
    names
}

/// The functions (`T`) the shared library exports.
fn shared_library_exports(so: &Path) -> BTreeSet<String> {
    let out = Command::new("nm").args(["-D", "--defined-only"]).arg(so).output().expect("run nm -D");
    assert!(out.status.success(), "nm -D failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace().rev();
            let name = f.next()?;
            (f.next()? == "T").then(|| name.to_string())
        })
        .collect()
}

fn difference(a: &BTreeSet<String>, b: &BTreeSet<String>) -> Vec<String> {
    a.difference(b).cloned().collect()
}

#[test]
fn header_declares_exactly_the_fixed_abi() {
    let text = fs::read_to_string(header()).expect("read include/napalloc.h");
    let declared = header_functions(&text);
    let fixed: BTreeSet<String> = FIXED_ABI.iter().map(|s| s.to_string()).collect();
    assert_eq!(fixed.len(), FIXED_ABI.len(), "FIXED_ABI lists a name twice");
    assert_eq!(fixed.len(), 28, "SPEC §4 and §5 fix 18 functions, napalloc adds 10 of its own");
    assert!(
        declared == fixed,
        "napalloc.h declares functions the ABI does not fix: {:?}\nthe ABI fixes functions napalloc.h does not declare: {:?}",
        difference(&declared, &fixed),
        difference(&fixed, &declared)
    );
}

#[test]
fn the_declaration_parsers_find_what_they_should() {
    let c = r#"
        #define NAPALLOC_API extern
        #define MULTI(x) \
            NAPALLOC_API int NotAFunction(x);
        /* NAPALLOC_API void Commented(void); */
        typedef HRESULT (NAPALLOC_CALL *FnPtr)(int);
        NAPALLOC_API void *NAPALLOC_CALL
            SpansLines(SIZE_T cb,
                       int x);
        NAPALLOC_API HRESULT NAPALLOC_CALL Plain(void);
        extern "C" { NAPALLOC_API void InBlock(void); }
    "#;
    let found: Vec<String> = header_functions(c).into_iter().collect();
    assert_eq!(found, ["InBlock", "Plain", "SpansLines"]);

    let rs = r##"
        #[no_mangle]
        pub unsafe extern "system" fn CoTaskMemAlloc(cb: usize) -> *mut c_void { todo!() }
        /// Docs.
        #[unsafe(no_mangle)]
        #[allow(clippy::missing_safety_doc)]
        pub extern "C" fn NapallocHeapMinimize() -> i32 { 0 }
        // #[no_mangle] pub extern "C" fn Commented() {}
        /* #[no_mangle] pub extern "C" fn BlockCommented() {} */
        #[no_mangle]
        pub static NOT_A_FUNCTION: i32 = 0;
        pub extern "C" fn not_exported() {}
        #[export_name = "Renamed"]
        pub extern "C" fn renamed_in_rust() {}
        fn lifetimes<'a>(s: &'a str) -> char { let _ = "no_mangle // in a string"; '"' }
    "##;
    let found: Vec<String> = rust_exports_in(rs).into_iter().collect();
    assert_eq!(found, ["CoTaskMemAlloc", "NapallocHeapMinimize", "Renamed"]);
}

#[test]
fn header_rust_sources_and_shared_library_export_the_same_functions() {
    let declared = header_functions(&fs::read_to_string(header()).expect("read include/napalloc.h"));
    let rust = rust_exports(&root().join("src"));
    let so = build().lib_dir.join("libnapalloc.so");
    let exported = shared_library_exports(&so);

    let mut problems = Vec::new();
    let mut report = |what: &str, names: Vec<String>| {
        if !names.is_empty() {
            problems.push(format!("{what} ({}): {}", names.len(), names.join(", ")));
        }
    };
    report("declared in napalloc.h, no #[no_mangle] extern fn in src/", difference(&declared, &rust));
    report("#[no_mangle] extern fn in src/, not declared in napalloc.h", difference(&rust, &declared));
    report("declared in napalloc.h, not exported by libnapalloc.so", difference(&declared, &exported));
    report("exported by libnapalloc.so, not declared in napalloc.h", difference(&exported, &declared));
    assert!(problems.is_empty(), "the C ABI is out of sync ({}):\n  {}", so.display(), problems.join("\n  "));
}

// ---------------------------------------------------------------------------------------------
// pkg-config
// ---------------------------------------------------------------------------------------------

#[test]
fn the_pkg_config_file_builds_a_working_client() {
    if Command::new("pkg-config").arg("--version").output().is_err() {
        eprintln!("note: pkg-config not installed; napalloc.pc is not checked here");
        return;
    }
    let b = build();
    let pc_dir = b.out_dir.join("pkgconfig");
    let out = Command::new("sh")
        .arg(root().join("scripts").join("napalloc-pc.sh"))
        .env("LIBDIR", &b.lib_dir)
        .env("OUT", pc_dir.join("napalloc.pc"))
        .output()
        .expect("run scripts/napalloc-pc.sh");
    assert!(out.status.success(), "napalloc-pc.sh failed:\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), pc_dir.join("napalloc.pc").display().to_string());

    let pkg_config = |args: &[&str]| -> String {
        let out = Command::new("pkg-config")
            .env("PKG_CONFIG_PATH", &pc_dir)
            .args(args)
            .arg("napalloc")
            .output()
            .expect("run pkg-config");
        assert!(out.status.success(), "pkg-config {args:?} napalloc failed:\n{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(pkg_config(&["--modversion"]), env!("CARGO_PKG_VERSION"));
    let cflags = pkg_config(&["--cflags"]);
    assert_eq!(cflags, format!("-I{}", root().join("include").display()));
    let libs = pkg_config(&["--libs"]);
    assert!(libs.contains("-lnapalloc") && libs.contains(&format!("-L{}", b.lib_dir.display())), "{libs}");
    assert!(pkg_config(&["--static", "--libs"]).contains("-lpthread"));

    // Build a client with nothing but what pkg-config says (plus an rpath for the .so).
    let src = c_client("header_compiles.c");
    let exe = b.out_dir.join("header_compiles-pkgconfig");
    let out = Command::new("gcc")
        .args(C_FLAGS)
        .args(cflags.split_whitespace())
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .args(libs.split_whitespace())
        .arg(format!("-Wl,-rpath,{}", b.lib_dir.display()))
        .output()
        .expect("run gcc");
    assert!(out.status.success(), "gcc with pkg-config flags failed:\n{}", String::from_utf8_lossy(&out.stderr));
    run(&exe).unwrap_or_else(|e| panic!("{e}"));
}
