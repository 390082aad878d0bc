//! The main job: a health-policy server workload on every core, on napalloc and on the system
//! allocator, side by side.
//!
//! Each request is a client's statement of health as it arrives on the wire (a `NetworkSoH`
//! blob: a list of type-length-value attributes, type and length as big-endian u16s, grouped per
//! system health agent). The server decodes it into `SoH` / `SoHAttribute` / `CountedString` /
//! `SystemHealthAgentState` structures and a `Connections`-shaped list of the agents, evaluates
//! a small policy (the required health classes are present, every compliance result code is
//! `S_OK`, no failure category is set), builds an `SoHResponse` (with a failure URL as a
//! `CountedString` when the client is not compliant), serializes it, and drops everything.
//!
//! * `napalloc`: every worker checks a `Region` out of an `ArenaPool` per request. The request
//!   root (the `SoH`) comes from `Region::alloc`; every other block is an embedded pointer
//!   (`alloc_child`) of the root or of the block it hangs from, so ONE `free` of the root
//!   releases the whole request (and returning the region resets it anyway).
//! * `system`: the same decoding into idiomatic Rust structures, one `Box`/`Vec` per structure,
//!   freed by `Drop`.
//!
//! Requests are generated before the timed phase from the canonical xorshift stream (seed
//! 0x243F6A8885A308D3, thread `t` adds `t * 0x9E3779B97F4A7C15`): a ring of 1024 blobs per
//! thread, request `i` serving blob `i mod 1024`, identical for both allocators.
//!
//! Run `cargo run --release --example policy_server -- --help` for the flags.

use core::alloc::Layout;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use napalloc::nap::types::{
    CountedString, FailureCategory, FixupInfo, FixupState, ResultCodes, SoH, SoHAttribute, SoHAttributeValue,
    SystemHealthAgentState, VendorSpecific,
};
use napalloc::nap::types::{HealthClassValue, SoHAttributeType as T};
use napalloc::pool::{ArenaPool, PoolStats};
use napalloc::{Error, Region};
use std::io::{IsTerminal, Write};
use std::sync::Barrier;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Command line

const HELP: &str = "\
policy_server — a NAP health-policy server workload on napalloc and on the system allocator

USAGE:
    cargo run --release --example policy_server -- [OPTIONS]

OPTIONS:
    --allocator <system|napalloc|both>
                        Which allocator(s) to run the workload on [default: both]
    --seconds <S>       Timed phase per allocator, in seconds [default: 5]
    --requests <N>      Run exactly N requests per thread instead of --seconds
    --threads <T>       Worker threads [default: the available cores]
    --warmup-ms <MS>    Untimed warm-up per allocator before the timed phase: pools fill, pages
                        are committed, caches warm [default: 500]
    --burst-mib <N>     After the runs, drive napalloc's committed memory up to at least N MiB
                        with a burst of large batches, then idle past the trim delay and show
                        committed memory before and after the trim (exit status 1 if it is not
                        back under the pool's retained size) [default: 0 = no burst]
    --trim-delay-ms <MS>
                        Idle time before the pool's trimmer gives memory back [default: the
                        pool's default, 1000]
    --retained-kib <K>  Committed memory each idle region keeps [default: the pool's, 1024]
    --stats             Print the pool's statistics table after each napalloc phase
    --prometheus        Print the process-wide pool statistics in Prometheus text format at the end
    -h, --help          Print this help

OUTPUT:
    requests/s (wall clock); requests per CPU second of the process (steadier when other programs
    share the cores); p50/p99 latency (per request, from sorted per-thread samples); peak RSS
    (VmHWM, reset before each run, less the harness's own latency samples); committed bytes
    (napalloc: the pool's figure; system: glibc's mallinfo2 arena + mmapped bytes); minor page
    faults per request in the timed phase; and the ratios napalloc/system.
";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    System,
    Napalloc,
    Both,
}

#[derive(Clone, Debug)]
struct Args {
    which: Which,
    seconds: f64,
    requests: Option<u64>,
    threads: usize,
    warmup: Duration,
    burst_mib: usize,
    trim_delay: Option<Duration>,
    retained: Option<usize>,
    stats: bool,
    prometheus: bool,
}

fn parse_args() -> Result<Args, lexopt::Error> {
    use lexopt::prelude::*;
    let mut a = Args {
        which: Which::Both,
        seconds: 5.0,
        requests: None,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        warmup: Duration::from_millis(500),
        burst_mib: 0,
        trim_delay: None,
        retained: None,
        stats: false,
        prometheus: false,
    };
    let mut p = lexopt::Parser::from_env();
    while let Some(arg) = p.next()? {
        match arg {
            Long("allocator") => {
                a.which = match p.value()?.string()?.as_str() {
                    "system" => Which::System,
                    "napalloc" => Which::Napalloc,
                    "both" => Which::Both,
                    other => {
                        return Err(format!("--allocator: expected system, napalloc or both, not {other:?}").into())
                    }
                }
            }
            Long("seconds") => {
                a.seconds = p.value()?.parse()?;
                if !(a.seconds > 0.0 && a.seconds < 1e6) {
                    return Err("--seconds must be positive".into());
                }
            }
            Long("requests") => a.requests = Some(p.value()?.parse::<u64>()?.max(1)),
            Long("threads") => a.threads = p.value()?.parse::<usize>()?.max(1),
            Long("warmup-ms") => a.warmup = Duration::from_millis(p.value()?.parse()?),
            Long("burst-mib") => a.burst_mib = p.value()?.parse()?,
            Long("trim-delay-ms") => a.trim_delay = Some(Duration::from_millis(p.value()?.parse()?)),
            Long("retained-kib") => a.retained = Some(p.value()?.parse::<usize>()? << 10),
            Long("stats") => a.stats = true,
            Long("prometheus") => a.prometheus = true,
            Short('h') | Long("help") => {
                print!("{HELP}");
                std::process::exit(0);
            }
            _ => return Err(arg.unexpected()),
        }
    }
    Ok(a)
}

// ---------------------------------------------------------------------------------------------
// The wire format and the request generator

const SEED: u64 = 0x243F_6A88_85A3_08D3;
const THREAD_STEP: u64 = 0x9E37_79B9_7F4A_7C15;
/// Blobs per thread; request `i` serves blob `i % RING`.
const RING: usize = 1024;
/// Agents (attribute groups) per request at most.
const MAX_GROUPS: usize = 5;
/// A non-compliance HRESULT of our own (facility 0xFF, customer bit set) for the response.
const E_NOT_COMPLIANT: i32 = 0xE0FF_0001_u32 as i32;
/// Health classes the policy requires.
const REQUIRED_CLASSES: u32 = (1 << HealthClassValue::FIREWALL.0) | (1 << HealthClassValue::ANTI_VIRUS.0);
const FAILURE_URL: &str = "https://remediation.contoso.example/nap/fix?agent=";

struct Rng(u64);
impl Rng {
    #[inline]
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        ((self.next() >> 32) * n) >> 32
    }
}

fn tlv(out: &mut Vec<u8>, ty: T, value: &[u8]) {
    out.extend_from_slice(&(ty.0 as u16).to_be_bytes());
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
}

/// One NetworkSoH: 10–30 attributes in 2–5 agent groups. Each group has SystemHealthId,
/// HealthClass, ComplianceResultCodes and FailureCategory, then extras in turn: VendorSpecific,
/// TimeOfLastUpdate, SoftwareVersion, ProductName (a UTF-16 friendly name), HealthClassStatus,
/// SoHGenerationTime, ErrorCodes, ClientId.
fn generate(rng: &mut Rng, out: &mut Vec<u8>) {
    out.clear();
    let n = 10 + rng.below(21) as usize;
    let groups = (2 + rng.below(4) as usize).min(n / 4).min(MAX_GROUPS);
    let classes = [HealthClassValue::FIREWALL, HealthClassValue::ANTI_VIRUS, HealthClassValue::PATCH_LEVEL];
    let bad = rng.below(8) == 0; // one request in eight is not compliant
    let mut extras = n - 4 * groups;
    const EXTRAS: [T; 8] = [
        T::VENDOR_SPECIFIC,
        T::TIME_OF_LAST_UPDATE,
        T::SOFTWARE_VERSION,
        T::PRODUCT_NAME,
        T::HEALTH_CLASS_STATUS,
        T::SOH_GENERATION_TIME,
        T::ERROR_CODES,
        T::CLIENT_ID,
    ];
    let mut buf = [0u8; 256];
    for g in 0..groups {
        let id = 0x0001_3700 + rng.below(16) as u32;
        tlv(out, T::SYSTEM_HEALTH_ID, &id.to_be_bytes());
        let class = if g < classes.len() { classes[g] } else { HealthClassValue::CRITICAL_UPDATE };
        tlv(out, T::HEALTH_CLASS, &[class.0 as u8]);
        let k = 1 + rng.below(6) as usize;
        for (i, c) in buf.chunks_exact_mut(4).take(k).enumerate() {
            let code = if bad && g == 0 && i == k - 1 { 0xC000_0001_u32 } else { 0 };
            c.copy_from_slice(&code.to_be_bytes());
        }
        tlv(out, T::COMPLIANCE_RESULT_CODES, &buf[..4 * k]);
        tlv(out, T::FAILURE_CATEGORY, &[if bad && g == 0 { FailureCategory::CLIENT_COMPONENT.0 as u8 } else { 0 }]);
        let mine = extras / (groups - g);
        extras -= mine;
        for e in 0..mine {
            let ty = EXTRAS[(g + e) % EXTRAS.len()];
            let len = match ty {
                T::VENDOR_SPECIFIC => {
                    buf[..4].copy_from_slice(&311u32.to_be_bytes()); // Microsoft's SMI enterprise number
                    4 + 8 + rng.below(89) as usize
                }
                T::TIME_OF_LAST_UPDATE | T::SOH_GENERATION_TIME => 8,
                T::HEALTH_CLASS_STATUS => 4,
                T::ERROR_CODES => 4 * (1 + rng.below(3) as usize),
                T::PRODUCT_NAME => {
                    let name = "Contoso Health Agent 7.2 for Windows";
                    let chars = 12 + rng.below(25) as usize;
                    for (i, u) in name.encode_utf16().cycle().take(chars).enumerate() {
                        buf[2 * i..2 * i + 2].copy_from_slice(&u.to_le_bytes());
                    }
                    2 * chars
                }
                _ => 4 + rng.below(13) as usize,
            };
            if ty != T::PRODUCT_NAME {
                let from = if ty == T::VENDOR_SPECIFIC { 4 } else { 0 };
                for b in &mut buf[from..len] {
                    *b = rng.next() as u8;
                }
                if ty == T::ERROR_CODES {
                    buf[..len].fill(0);
                }
            }
            tlv(out, ty, &buf[..len]);
        }
    }
}

/// The next attribute at `pos`: (type, value, next position); `None` at the end or on a
/// truncated attribute.
#[inline]
fn next_tlv(blob: &[u8], pos: usize) -> Option<(u16, &[u8], usize)> {
    let h = blob.get(pos..pos + 4)?;
    let ty = u16::from_be_bytes([h[0], h[1]]);
    let len = u16::from_be_bytes([h[2], h[3]]) as usize;
    let v = blob.get(pos + 4..pos + 4 + len)?;
    Some((ty, v, pos + 4 + len))
}

fn be32(v: &[u8]) -> u32 {
    v.get(..4).map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Attributes in a blob, and whether it parses to its end.
fn count_attrs(blob: &[u8]) -> Option<usize> {
    let (mut n, mut pos) = (0, 0);
    while pos < blob.len() {
        pos = next_tlv(blob, pos)?.2;
        n += 1;
    }
    Some(n)
}

/// ComplianceResultCodes entries in the group starting after position `pos`.
fn group_codes(blob: &[u8], mut pos: usize) -> usize {
    while let Some((ty, v, next)) = next_tlv(blob, pos) {
        if ty == T::SYSTEM_HEALTH_ID.0 as u16 {
            break;
        }
        if ty == T::COMPLIANCE_RESULT_CODES.0 as u16 {
            return v.len() / 4;
        }
        pos = next;
    }
    0
}

#[inline]
fn mix(h: u64, x: u64) -> u64 {
    (h ^ x).wrapping_mul(0x100_0000_01B3)
}

fn put_tlv(out: &mut Vec<u8>, ty: u16, v: &[u8]) {
    out.extend_from_slice(&ty.to_be_bytes());
    out.extend_from_slice(&(v.len() as u16).to_be_bytes());
    out.extend_from_slice(v);
}

// ---------------------------------------------------------------------------------------------
// The napalloc server: NAP structures in a pooled region

/// Shaped like `Connections`: a count and a separate block of pointers (here to the decoded
/// agents' states).
#[repr(C)]
struct HealthEntities {
    count: u16,
    entities: *mut *mut SystemHealthAgentState,
}

/// Typed allocation helpers over one region.
#[derive(Clone, Copy)]
struct Blocks<'r> {
    r: &'r Region,
}

impl Blocks<'_> {
    /// A block holding `v`, as an embedded pointer of `parent`.
    #[inline(always)]
    fn child<U>(self, parent: NonNull<u8>, v: U) -> Result<NonNull<U>, Error> {
        let p = self.r.alloc_child(parent, Layout::new::<U>())?.cast::<U>();
        // SAFETY: a fresh block of U's size; napalloc blocks are 16-aligned, U needs at most 8.
        unsafe { p.as_ptr().write(v) };
        Ok(p)
    }

    /// An uninitialized array of `n` U's, as an embedded pointer of `parent`.
    #[inline(always)]
    fn array<U>(self, parent: NonNull<u8>, n: usize) -> Result<NonNull<U>, Error> {
        let l = Layout::array::<U>(n).map_err(|_| Error::TooLarge)?;
        Ok(self.r.alloc_child(parent, l)?.cast())
    }

    /// A copy of `src`, as an embedded pointer of `parent`.
    #[inline(always)]
    fn bytes(self, parent: NonNull<u8>, src: &[u8]) -> Result<NonNull<u8>, Error> {
        let p = self.r.alloc_child(parent, Layout::array::<u8>(src.len()).map_err(|_| Error::TooLarge)?)?;
        // SAFETY: a fresh block of src.len() bytes, disjoint from src.
        unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), p.as_ptr(), src.len()) };
        Ok(p)
    }

    /// A `CountedString` and its NUL-terminated buffer (an embedded pointer of the string),
    /// from UTF-16 units.
    fn counted_string(
        self,
        parent: NonNull<u8>,
        len: usize,
        units: impl Iterator<Item = u16>,
    ) -> Result<NonNull<CountedString>, Error> {
        let cs = self.child(parent, CountedString { length: len as u16, string: core::ptr::null_mut() })?;
        let buf = self.array::<u16>(cs.cast(), len + 1)?;
        let mut n = 0;
        for u in units.take(len) {
            // SAFETY: n < len < len + 1 units of the fresh buffer.
            unsafe { buf.as_ptr().add(n).write(u) };
            n += 1;
        }
        // SAFETY: the NUL at index n <= len.
        unsafe { buf.as_ptr().add(n).write(0) };
        // SAFETY: cs is the live struct written above.
        unsafe { (*cs.as_ptr()).string = buf.as_ptr() };
        Ok(cs)
    }
}

/// Decode, evaluate, answer, free: one request on napalloc. Returns a checksum of the answer.
/// With `keep`, the request's blocks are left in the region (the burst phase).
fn serve_napalloc(r: &Region, blob: &[u8], out: &mut Vec<u8>, keep: bool) -> Result<u64, Error> {
    let b = Blocks { r };
    let n = count_attrs(blob).ok_or(Error::InvalidLayout)?;
    // The SoH is the request root: one free of it releases everything below.
    let root = r.alloc(Layout::new::<SoH>())?;
    let soh = root.cast::<SoH>();
    let attrs = b.array::<SoHAttribute>(root, n)?;
    // SAFETY: root is a fresh SoH-sized block.
    unsafe { soh.as_ptr().write(SoH { count: n as u16, attributes: attrs.as_ptr() }) };

    let mut states: [*mut SystemHealthAgentState; MAX_GROUPS] = [core::ptr::null_mut(); MAX_GROUPS];
    let mut groups = 0;
    let mut cur: *mut SystemHealthAgentState = core::ptr::null_mut();
    let mut classes = 0u32;
    let mut friendly: Option<NonNull<CountedString>> = None;
    let mut vendor_sum = 0u64;
    let (mut pos, mut i) = (0, 0);
    while let Some((ty, v, next)) = next_tlv(blob, pos) {
        let value = b.bytes(root, v)?;
        // SAFETY: i < n slots of the fresh attribute array.
        unsafe {
            attrs.as_ptr().add(i).write(SoHAttribute { r#type: ty, size: v.len() as u16, value: value.as_ptr() })
        };
        match T(ty as i32) {
            T::SYSTEM_HEALTH_ID if groups < MAX_GROUPS => {
                let k = group_codes(blob, next);
                let st = b.child(
                    root,
                    SystemHealthAgentState {
                        id: be32(v),
                        sha_result_codes: ResultCodes { count: 0, results: core::ptr::null_mut() },
                        failure_category: FailureCategory::NONE,
                        fixup_info: FixupInfo {
                            state: FixupState::SUCCESS,
                            percentage: 100,
                            result_codes: ResultCodes { count: 0, results: core::ptr::null_mut() },
                            fixup_msg_id: 0,
                        },
                    },
                )?;
                if k > 0 {
                    // The state's embedded result array, hung from the state.
                    let res = b.array::<i32>(st.cast(), k)?;
                    // SAFETY: st is the live state written above.
                    unsafe { (*st.as_ptr()).sha_result_codes = ResultCodes { count: k as u16, results: res.as_ptr() } };
                }
                cur = st.as_ptr();
                states[groups] = cur;
                groups += 1;
            }
            T::COMPLIANCE_RESULT_CODES if !cur.is_null() => {
                // SAFETY: cur is a live state; its results array holds the group's count.
                let rc = unsafe { (*cur).sha_result_codes };
                for (j, c) in v.chunks_exact(4).take(rc.count as usize).enumerate() {
                    // SAFETY: j < count entries of the state's result array.
                    unsafe { rc.results.add(j).write(be32(c) as i32) };
                }
            }
            // SAFETY: cur is a live state.
            T::FAILURE_CATEGORY if !cur.is_null() => unsafe {
                (*cur).failure_category = FailureCategory(v.first().copied().unwrap_or(0) as i32)
            },
            T::HEALTH_CLASS => classes |= 1 << (v.first().copied().unwrap_or(31) & 31),
            T::PRODUCT_NAME if friendly.is_none() => {
                let units = v.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]));
                friendly = Some(b.counted_string(root, v.len() / 2, units)?);
            }
            T::VENDOR_SPECIFIC if v.len() >= 4 => {
                let val = b.child(
                    root,
                    SoHAttributeValue {
                        vendor_specific_val: VendorSpecific {
                            vendor_id: be32(v),
                            size: (v.len() - 4) as u16,
                            vendor_specific_data: core::ptr::null_mut(),
                        },
                    },
                )?;
                let data = b.bytes(val.cast(), &v[4..])?;
                // SAFETY: val is live and its vendor_specific_val member is the one written.
                unsafe { (*val.as_ptr()).vendor_specific_val.vendor_specific_data = data.as_ptr() };
                // SAFETY: as above; data holds size bytes.
                let vs = unsafe { (*val.as_ptr()).vendor_specific_val };
                // SAFETY: data is live with vs.size bytes.
                let d = unsafe { core::slice::from_raw_parts(vs.vendor_specific_data, vs.size as usize) };
                vendor_sum = d.iter().fold(vendor_sum ^ vs.vendor_id as u64, |h, &x| h.wrapping_add(x as u64));
            }
            _ => {}
        }
        pos = next;
        i += 1;
    }
    // The agents, in a Connections-shaped list.
    let ents = b.child(root, HealthEntities { count: groups as u16, entities: core::ptr::null_mut() })?;
    let slots = b.array::<*mut SystemHealthAgentState>(ents.cast(), groups.max(1))?;
    for (j, s) in states.iter().take(groups).enumerate() {
        // SAFETY: j < groups slots of the fresh array.
        unsafe { slots.as_ptr().add(j).write(*s) };
    }
    // SAFETY: ents is live.
    unsafe { (*ents.as_ptr()).entities = slots.as_ptr() };

    // Policy, read back through the structures.
    // SAFETY: ents, its slots and every state and result array are live.
    let (compliant, bad_agent) = unsafe {
        let e = &*ents.as_ptr();
        let mut ok = classes & REQUIRED_CLASSES == REQUIRED_CLASSES;
        let mut bad_agent = 0;
        for j in 0..e.count as usize {
            let st = &**e.entities.add(j);
            let codes = core::slice::from_raw_parts(st.sha_result_codes.results, st.sha_result_codes.count as usize);
            if codes.iter().any(|&c| c != 0) || st.failure_category != FailureCategory::NONE {
                ok = false;
                bad_agent = st.id;
            }
        }
        (ok, bad_agent)
    };

    // The response: per agent its id and one result code; a failure category when not compliant.
    let m = 2 * groups + usize::from(!compliant);
    let resp = b.child(root, SoH { count: m as u16, attributes: core::ptr::null_mut() })?;
    let rattrs = b.array::<SoHAttribute>(resp.cast(), m)?;
    // SAFETY: resp is live.
    unsafe { (*resp.as_ptr()).attributes = rattrs.as_ptr() };
    let mut k = 0;
    let mut push = |ty: T, v: &[u8]| -> Result<(), Error> {
        let p = b.bytes(root, v)?;
        // SAFETY: k < m slots of the fresh response array.
        unsafe {
            rattrs.as_ptr().add(k).write(SoHAttribute { r#type: ty.0 as u16, size: v.len() as u16, value: p.as_ptr() })
        };
        k += 1;
        Ok(())
    };
    for s in states.iter().take(groups) {
        // SAFETY: s is a live state.
        let st = unsafe { &**s };
        push(T::SYSTEM_HEALTH_ID, &st.id.to_be_bytes())?;
        let code = if compliant { 0 } else { E_NOT_COMPLIANT };
        push(T::COMPLIANCE_RESULT_CODES, &code.to_be_bytes())?;
    }
    let mut url: Option<NonNull<CountedString>> = None;
    if !compliant {
        push(T::FAILURE_CATEGORY, &[FailureCategory::CLIENT_COMPONENT.0 as u8])?;
        let mut digits = [0u8; 8];
        for (d, x) in digits.iter_mut().zip((0..8).rev()) {
            *d = b"0123456789abcdef"[(bad_agent >> (4 * x)) as usize & 15];
        }
        let units = FAILURE_URL.encode_utf16().chain(digits.iter().map(|&c| c as u16));
        url = Some(b.counted_string(root, FAILURE_URL.len() + 8, units)?);
    }

    // Serialize the answer (the "send") from the structures.
    out.clear();
    let mut h = 0xCBF2_9CE4_8422_2325u64 ^ vendor_sum;
    // SAFETY: resp, its attributes and their values are live.
    unsafe {
        let r = &*resp.as_ptr();
        for a in core::slice::from_raw_parts(r.attributes, r.count as usize) {
            put_tlv(out, a.r#type, core::slice::from_raw_parts(a.value, a.size as usize));
        }
    }
    for cs in [friendly, url].into_iter().flatten() {
        // SAFETY: cs and its buffer (length + 1 units) are live.
        let s = unsafe { core::slice::from_raw_parts((*cs.as_ptr()).string, (*cs.as_ptr()).length as usize + 1) };
        h = s.iter().fold(h, |h, &u| mix(h, u as u64));
    }
    h = out.iter().fold(h, |h, &x| mix(h, x as u64));
    if !keep {
        // SAFETY: nothing of the request is used after this.
        unsafe { r.free(root)? };
    }
    Ok(h)
}

// ---------------------------------------------------------------------------------------------
// The system-allocator server: the same request in Box/Vec structures

struct SysAttr {
    ty: u16,
    value: Box<[u8]>,
}
struct SysState {
    id: u32,
    results: Vec<i32>,
    failure_category: FailureCategory,
}
struct SysCountedString {
    string: Vec<u16>, // NUL-terminated, like the C buffer
}
struct SysVendor {
    vendor_id: u32,
    data: Box<[u8]>,
}
struct SysRequest {
    attributes: Vec<SysAttr>,
    entities: Vec<SysState>,
    friendly: Option<Box<SysCountedString>>,
    vendor: Vec<SysVendor>,
}
struct SysResponse {
    attributes: Vec<SysAttr>,
    failure_url: Option<Box<SysCountedString>>,
}

fn counted(units: impl Iterator<Item = u16>, len: usize) -> Box<SysCountedString> {
    let mut string = Vec::with_capacity(len + 1);
    string.extend(units.take(len));
    string.push(0);
    Box::new(SysCountedString { string })
}

fn serve_system(blob: &[u8], out: &mut Vec<u8>) -> Result<u64, Error> {
    let n = count_attrs(blob).ok_or(Error::InvalidLayout)?;
    let mut req = Box::new(SysRequest {
        attributes: Vec::with_capacity(n),
        entities: Vec::new(),
        friendly: None,
        vendor: Vec::new(),
    });
    let mut classes = 0u32;
    let mut pos = 0;
    while let Some((ty, v, next)) = next_tlv(blob, pos) {
        req.attributes.push(SysAttr { ty, value: v.into() });
        match T(ty as i32) {
            T::SYSTEM_HEALTH_ID if req.entities.len() < MAX_GROUPS => {
                let k = group_codes(blob, next);
                req.entities.push(SysState {
                    id: be32(v),
                    results: Vec::with_capacity(k),
                    failure_category: FailureCategory::NONE,
                });
            }
            T::COMPLIANCE_RESULT_CODES => {
                if let Some(st) = req.entities.last_mut() {
                    let k = st.results.capacity();
                    st.results.extend(v.chunks_exact(4).take(k).map(|c| be32(c) as i32));
                }
            }
            T::FAILURE_CATEGORY => {
                if let Some(st) = req.entities.last_mut() {
                    st.failure_category = FailureCategory(v.first().copied().unwrap_or(0) as i32);
                }
            }
            T::HEALTH_CLASS => classes |= 1 << (v.first().copied().unwrap_or(31) & 31),
            T::PRODUCT_NAME if req.friendly.is_none() => {
                let units = v.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]));
                req.friendly = Some(counted(units, v.len() / 2));
            }
            T::VENDOR_SPECIFIC if v.len() >= 4 => {
                req.vendor.push(SysVendor { vendor_id: be32(v), data: v[4..].into() });
            }
            _ => {}
        }
        pos = next;
    }
    let mut compliant = classes & REQUIRED_CLASSES == REQUIRED_CLASSES;
    let mut bad_agent = 0;
    for st in &req.entities {
        if st.results.iter().any(|&c| c != 0) || st.failure_category != FailureCategory::NONE {
            compliant = false;
            bad_agent = st.id;
        }
    }
    let groups = req.entities.len();
    let mut resp = Box::new(SysResponse {
        attributes: Vec::with_capacity(2 * groups + usize::from(!compliant)),
        failure_url: None,
    });
    for st in &req.entities {
        resp.attributes.push(SysAttr { ty: T::SYSTEM_HEALTH_ID.0 as u16, value: st.id.to_be_bytes().into() });
        let code = if compliant { 0 } else { E_NOT_COMPLIANT };
        resp.attributes.push(SysAttr { ty: T::COMPLIANCE_RESULT_CODES.0 as u16, value: code.to_be_bytes().into() });
    }
    if !compliant {
        resp.attributes.push(SysAttr {
            ty: T::FAILURE_CATEGORY.0 as u16,
            value: [FailureCategory::CLIENT_COMPONENT.0 as u8].into(),
        });
        let mut digits = [0u8; 8];
        for (d, x) in digits.iter_mut().zip((0..8).rev()) {
            *d = b"0123456789abcdef"[(bad_agent >> (4 * x)) as usize & 15];
        }
        let units = FAILURE_URL.encode_utf16().chain(digits.iter().map(|&c| c as u16));
        resp.failure_url = Some(counted(units, FAILURE_URL.len() + 8));
    }
    out.clear();
    let vendor_sum = req
        .vendor
        .iter()
        .fold(0u64, |h, vs| vs.data.iter().fold(h ^ vs.vendor_id as u64, |h, &x| h.wrapping_add(x as u64)));
    let mut h = 0xCBF2_9CE4_8422_2325u64 ^ vendor_sum;
    for a in &resp.attributes {
        put_tlv(out, a.ty, &a.value);
    }
    for cs in [&req.friendly, &resp.failure_url].into_iter().flatten() {
        h = cs.string.iter().fold(h, |h, &u| mix(h, u as u64));
    }
    h = out.iter().fold(h, |h, &x| mix(h, x as u64));
    drop(resp);
    drop(req);
    Ok(h)
}

// ---------------------------------------------------------------------------------------------
// Measurement

/// Minor page faults and CPU seconds (user + system) of the process so far.
#[cfg(unix)]
fn usage() -> Option<(u64, f64)> {
    // SAFETY: getrusage writes one rusage struct, which we own.
    let mut u: libc::rusage = unsafe { core::mem::zeroed() };
    // SAFETY: a valid pointer to the struct above.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    (rc == 0).then(|| (u.ru_minflt as u64, secs(u.ru_utime) + secs(u.ru_stime)))
}
#[cfg(not(unix))]
fn usage() -> Option<(u64, f64)> {
    None
}

/// A field of /proc/self/status in bytes (Linux), e.g. "VmHWM" or "VmRSS".
fn proc_status_bytes(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
    let kib: u64 = line[field.len() + 1..].trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

/// Reset the peak RSS (VmHWM) to the current RSS (Linux: write 5 to clear_refs).
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Bytes glibc's malloc holds from the OS (main arena + mmapped chunks), if known.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn system_committed() -> Option<u64> {
    // SAFETY: mallinfo2 has no preconditions.
    let m = unsafe { libc::mallinfo2() };
    Some((m.arena + m.hblkhd) as u64)
}
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn system_committed() -> Option<u64> {
    None
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
}

/// Latency samples of one thread, in memory mapped outside malloc (so that the system
/// allocator's figures do not count them) and touched before the timed phase (so that recording
/// a sample never faults).
struct Samples {
    #[cfg(unix)]
    ptr: NonNull<u32>,
    #[cfg(not(unix))]
    buf: Vec<u32>,
    cap: usize,
}

impl Samples {
    #[cfg(unix)]
    fn new(cap: usize) -> Samples {
        let cap = cap.max(1);
        // SAFETY: an anonymous private mapping of cap u32s; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                cap * 4,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert!(p != libc::MAP_FAILED, "mmap of {} bytes for latency samples failed", cap * 4);
        let ptr = NonNull::new(p.cast::<u32>()).expect("mmap returned null");
        // SAFETY: the mapping holds cap u32s; writing every one touches every page.
        unsafe { core::slice::from_raw_parts_mut(ptr.as_ptr(), cap).fill(u32::MAX) };
        Samples { ptr, cap }
    }
    #[cfg(not(unix))]
    fn new(cap: usize) -> Samples {
        Samples { buf: vec![u32::MAX; cap.max(1)], cap: cap.max(1) }
    }

    #[inline(always)]
    fn set(&mut self, i: usize, v: u32) {
        assert!(i < self.cap);
        #[cfg(unix)]
        // SAFETY: i < cap, inside the mapping.
        unsafe {
            self.ptr.as_ptr().add(i).write(v)
        };
        #[cfg(not(unix))]
        {
            self.buf[i] = v;
        }
    }

    /// The first `n` samples.
    fn slice_mut(&mut self, n: usize) -> &mut [u32] {
        let n = n.min(self.cap);
        #[cfg(unix)]
        // SAFETY: n <= cap entries of the mapping, all initialized in `new`; borrowed mutably.
        return unsafe { core::slice::from_raw_parts_mut(self.ptr.as_ptr(), n) };
        #[cfg(not(unix))]
        return &mut self.buf[..n];
    }
}

// SAFETY: `Samples` owns its mapping outright; moving it to another thread moves that ownership.
unsafe impl Send for Samples {}

#[cfg(unix)]
impl Drop for Samples {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.cap * 4) };
    }
}

struct RunResult {
    requests: u64,
    elapsed: Duration,
    p50: u32,
    p99: u32,
    /// Bytes of latency samples the harness touched before the timed phase.
    samples_bytes: u64,
    faults: Option<u64>,
    cpu: Option<f64>,
    peak_rss: Option<u64>,
    start_rss: Option<u64>,
    committed: Option<u64>,
    failures: u64,
    checksum: u64,
}

impl RunResult {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
    /// Requests per CPU second: robust to other processes sharing the cores.
    fn cpu_rate(&self) -> Option<f64> {
        self.cpu.map(|c| self.requests as f64 / c.max(1e-9))
    }
    fn faults_per_request(&self) -> Option<f64> {
        self.faults.map(|f| f as f64 / self.requests.max(1) as f64)
    }
}

struct Ctl {
    ready: Barrier,
    go: Barrier,
    done: Barrier,
    release: Barrier,
    /// Written once by the main thread (false -> true) when the timed phase is over; read by
    /// the workers every 64 requests.
    stop: AtomicBool,
    /// `progress[t]`: requests worker `t` finished in the timed phase, written only by worker `t`
    /// (every 64 requests and at the end, then exact); read by the main thread for the progress
    /// line and the `--requests` end.
    progress: Vec<AtomicU64>,
}

/// Run the workload on `threads` threads with `serve` (called with the thread's blob and output
/// buffer), warm-up first, then the timed phase.
fn run<S>(name: &str, args: &Args, serve: S, committed: impl Fn() -> Option<u64>) -> RunResult
where
    S: Fn(&[u8], &mut Vec<u8>) -> Result<u64, Error> + Sync,
{
    let t = args.threads;
    let ctl = Ctl {
        ready: Barrier::new(t + 1),
        go: Barrier::new(t + 1),
        done: Barrier::new(t + 1),
        release: Barrier::new(t + 1),
        stop: AtomicBool::new(false),
        progress: (0..t).map(|_| AtomicU64::new(0)).collect(),
    };
    let tty = std::io::stderr().is_terminal();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..t)
            .map(|tid| {
                let (ctl, serve) = (&ctl, &serve);
                s.spawn(move || {
                    let mut rng = Rng(SEED.wrapping_add(tid as u64 * THREAD_STEP));
                    let mut ring = Vec::with_capacity(RING);
                    for _ in 0..RING {
                        let mut b = Vec::with_capacity(1024);
                        generate(&mut rng, &mut b);
                        ring.push(b);
                    }
                    let mut out = Vec::with_capacity(4096);
                    let (mut sum, mut fails) = (0u64, 0u64);
                    let w0 = Instant::now();
                    let mut warm = 0usize;
                    while w0.elapsed() < args.warmup || warm < RING {
                        if let Ok(h) = serve(&ring[warm % RING], &mut out) {
                            std::hint::black_box(h);
                        }
                        warm += 1;
                    }
                    let est = warm as f64 / w0.elapsed().as_secs_f64().max(1e-3);
                    let cap = match args.requests {
                        Some(n) => n as usize,
                        None => (est * args.seconds * 2.0) as usize + 65536,
                    };
                    // Touched now, so that recording a latency never faults in the timed phase.
                    let mut lat = Samples::new(cap);
                    ctl.ready.wait();
                    ctl.go.wait();
                    let mut prev = Instant::now();
                    let mut i = 0usize;
                    loop {
                        match serve(&ring[i % RING], &mut out) {
                            Ok(h) => sum = sum.wrapping_add(h),
                            Err(_) => fails += 1,
                        }
                        let now = Instant::now();
                        lat.set(i, (now - prev).as_nanos().min(u32::MAX as u128) as u32);
                        prev = now;
                        i += 1;
                        if i % 64 == 0 {
                            ctl.progress[tid].store(i as u64, Ordering::Relaxed);
                            if ctl.stop.load(Ordering::Relaxed) {
                                break;
                            }
                        }
                        if i == cap {
                            break;
                        }
                    }
                    ctl.progress[tid].store(i as u64, Ordering::Relaxed);
                    ctl.done.wait();
                    ctl.release.wait();
                    (lat, i, fails, sum)
                })
            })
            .collect();
        ctl.ready.wait();
        let start_rss = if reset_peak_rss() { proc_status_bytes("VmRSS") } else { None };
        let u0 = usage();
        ctl.go.wait();
        let t0 = Instant::now();
        let total = args.requests.map(|n| n * t as u64);
        let mut last_print = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(20));
            let done: u64 = ctl.progress.iter().map(|p| p.load(Ordering::Relaxed)).sum();
            let el = t0.elapsed().as_secs_f64();
            let finished = match total {
                Some(n) => done >= n,
                None => el >= args.seconds,
            };
            if finished {
                ctl.stop.store(true, Ordering::Relaxed);
                break;
            }
            if tty && last_print.elapsed() >= Duration::from_millis(200) {
                last_print = Instant::now();
                let of = match total {
                    Some(n) => format!("{done}/{n} requests"),
                    None => format!("{el:.1}/{:.1} s, {done} requests", args.seconds),
                };
                eprint!("\r  {name}: {of}   ");
                let _ = std::io::stderr().flush();
            }
        }
        ctl.done.wait();
        let elapsed = t0.elapsed();
        let (faults, cpu) = match (u0, usage()) {
            (Some(a), Some(b)) => (Some(b.0 - a.0), Some(b.1 - a.1)),
            _ => (None, None),
        };
        let peak_rss = proc_status_bytes("VmHWM");
        let committed = committed();
        ctl.release.wait();
        if tty {
            eprint!("\r{:60}\r", "");
        }
        let mut r = RunResult {
            requests: 0,
            elapsed,
            p50: 0,
            p99: 0,
            samples_bytes: 0,
            faults,
            cpu,
            peak_rss,
            start_rss,
            committed,
            failures: 0,
            checksum: 0,
        };
        let results: Vec<_> = handles.into_iter().map(|h| h.join().expect("worker panicked")).collect();
        let total: usize = results.iter().map(|x| x.1).sum();
        // All samples in one mapping (not malloc: see `Samples`), sorted for the percentiles.
        let mut all = Samples::new(total);
        let mut at = 0;
        for (mut lat, n, fails, sum) in results {
            all.slice_mut(total)[at..at + n].copy_from_slice(lat.slice_mut(n));
            at += n;
            r.requests += n as u64;
            r.samples_bytes += lat.cap as u64 * 4;
            r.failures += fails;
            r.checksum = r.checksum.wrapping_add(sum);
        }
        let v = all.slice_mut(total);
        v.sort_unstable();
        let pct = |p: usize| if v.is_empty() { 0 } else { v[(v.len() * p / 100).min(v.len() - 1)] };
        r.p50 = pct(50);
        r.p99 = pct(99);
        r
    })
}

fn pool_for(args: &Args, reserve: usize) -> ArenaPool {
    let mut b = ArenaPool::builder().max_regions(4 * args.threads).region_reserve(reserve);
    if let Some(d) = args.trim_delay {
        b = b.idle_trim_delay(d);
    }
    if let Some(r) = args.retained {
        b = b.retained_bytes_per_region(r);
    }
    b.build().expect("pool")
}

fn print_row(name: &str, r: &RunResult) {
    let opt = |v: Option<u64>| v.map_or_else(|| "n/a".to_string(), mib);
    let faults = r.faults_per_request().map_or_else(|| "n/a".to_string(), |f| format!("{f:.4}"));
    let cpu = r.cpu_rate().map_or_else(|| "n/a".to_string(), |c| format!("{c:.0}"));
    println!(
        "{name:<9} {:>11.0} {:>11} {:>7} {:>7} {:>10} {:>10} {:>10} {:>9}",
        r.rate(),
        cpu,
        r.p50,
        r.p99,
        opt(r.peak_rss.map(|p| p.saturating_sub(r.samples_bytes))),
        opt(r.committed),
        faults,
        r.requests
    );
}

/// The burst: every thread fills a region with large batches of requests it keeps, until the
/// pool has committed at least `mib` MiB; then everything is returned and the pool idles past
/// its trim delay. Returns whether the trimmer brought committed memory back under the pool's
/// retained size.
fn burst(args: &Args) -> bool {
    let per = ((args.burst_mib << 20) / args.threads).max(1 << 20);
    let pool = pool_for(args, (2 * per).max(1 << 30));
    let delay = pool.config().idle_trim_delay;
    let rss0 = proc_status_bytes("VmRSS");
    std::thread::scope(|s| {
        for tid in 0..args.threads {
            let pool = &pool;
            s.spawn(move || {
                let mut rng = Rng(SEED.wrapping_add(tid as u64 * THREAD_STEP));
                let (mut blob, mut out) = (Vec::new(), Vec::new());
                let r = pool.checkout().expect("checkout");
                while r.stats().committed < per {
                    for _ in 0..256 {
                        generate(&mut rng, &mut blob);
                        serve_napalloc(&r, &blob, &mut out, true).expect("burst request");
                    }
                }
            });
        }
    });
    let s = pool.stats();
    let rss1 = proc_status_bytes("VmRSS");
    println!();
    println!(
        "burst: {} threads kept requests until each region had {} committed; retained size {} ({} regions x {})",
        args.threads,
        mib(per as u64),
        mib(s.retained_bytes),
        s.live_regions,
        mib(pool.config().retained_bytes_per_region as u64)
    );
    println!(
        "burst: committed after the burst {} (peak {}), RSS {}",
        mib(s.committed_bytes),
        mib(s.peak_committed_bytes),
        rss1.map_or("n/a".into(), mib)
    );
    let t0 = Instant::now();
    let limit = delay.saturating_mul(3) + Duration::from_secs(10);
    while pool.stats().committed_bytes > pool.stats().retained_bytes && t0.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(10));
    }
    let idle = t0.elapsed();
    // Idle a little past the trim so the figure is the settled one.
    std::thread::sleep(Duration::from_millis(50));
    let s = pool.stats();
    let rss2 = proc_status_bytes("VmRSS");
    let under = s.committed_bytes <= s.retained_bytes;
    println!(
        "burst: idle {:.2} s (trim delay {:.2} s) -> committed {} B (retained size {} B): {}; RSS {} (before the burst {})",
        idle.as_secs_f64(),
        delay.as_secs_f64(),
        s.committed_bytes,
        s.retained_bytes,
        if under { "back under the retained size" } else { "NOT under the retained size" },
        rss2.map_or("n/a".into(), mib),
        rss0.map_or("n/a".into(), mib),
    );
    println!("burst: {} trims gave back {}", s.trims, mib(s.trimmed_bytes));
    if args.stats {
        println!("\n{s}");
    }
    under
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("policy_server: {e}\n\n{HELP}");
            std::process::exit(2);
        }
    };
    let mode = match args.requests {
        Some(n) => format!("{n} requests per thread"),
        None => format!("{:.1} s per allocator", args.seconds),
    };
    println!(
        "policy_server: {} threads, {mode} after {:.1} s warm-up; NetworkSoH of 10-30 attributes in 2-5 agent groups",
        args.threads,
        args.warmup.as_secs_f64()
    );
    println!(
        "{:<9} {:>11} {:>11} {:>7} {:>7} {:>10} {:>10} {:>10} {:>9}",
        "allocator", "requests/s", "req/CPU-s", "p50 ns", "p99 ns", "peak RSS*", "committed", "minflt/req", "requests"
    );
    let mut sys = None;
    let mut nap = None;
    // napalloc first: its pool is dropped (unmapped) after its run, while glibc keeps much of
    // what it freed, which would otherwise count in the next run's RSS.
    let mut pool_table = None;
    if args.which != Which::System {
        let pool = pool_for(&args, 1 << 30);
        let r = run(
            "napalloc",
            &args,
            |blob, out| {
                let region = pool.checkout()?;
                serve_napalloc(&region, blob, out, false)
            },
            || Some(pool.stats().committed_bytes),
        );
        print_row("napalloc", &r);
        pool_table = Some(pool.stats());
        nap = Some(r);
    }
    if args.which != Which::Napalloc {
        let r = run("system", &args, serve_system, system_committed);
        print_row("system", &r);
        sys = Some(r);
    }
    if let (Some(s), Some(n)) = (&sys, &nap) {
        let cpu = match (n.cpu_rate(), s.cpu_rate()) {
            (Some(a), Some(b)) => format!(" ({:.2}x per CPU second)", a / b),
            _ => String::new(),
        };
        println!(
            "ratio napalloc/system: {:.2}x requests/s{cpu}; latency p50 {:.2}x, p99 {:.2}x (lower is better)",
            n.rate() / s.rate(),
            n.p50 as f64 / s.p50.max(1) as f64,
            n.p99 as f64 / s.p99.max(1) as f64
        );
        if s.checksum != n.checksum && args.requests.is_some() {
            eprintln!("policy_server: the two servers answered differently");
            std::process::exit(1);
        }
    }
    println!(
        "* peak RSS: VmHWM (reset before each run) less the latency samples the harness touched before the \
         timed phase"
    );
    if let (true, Some(t)) = (args.stats, pool_table) {
        println!("\nthe pool after the napalloc run:\n{t}");
    }
    for (name, r) in [("napalloc", &nap), ("system", &sys)] {
        if let Some(r) = r {
            if r.failures > 0 {
                eprintln!("policy_server: {name}: {} requests failed", r.failures);
            }
            if let (Some(f), Some(c)) = (r.faults, r.cpu) {
                println!("{name}: {f} minor page faults and {c:.2} CPU seconds in the timed phase");
            }
            if let (Some(a), Some(b)) = (r.start_rss, r.peak_rss) {
                println!(
                    "{name}: RSS at the start of the timed phase {}, peak {} (the harness's latency samples, \
                     touched before the start, are {})",
                    mib(a),
                    mib(b),
                    mib(r.samples_bytes)
                );
            }
        }
    }
    if args.burst_mib > 0 && !burst(&args) {
        eprintln!("policy_server: the idle trimmer did not bring committed memory back under the retained size");
        std::process::exit(1);
    }
    if args.prometheus {
        println!("\n{}", PoolStats::global().to_prometheus("napalloc_pool"));
    }
}
