#!/usr/bin/env python3
"""Plot ns/request of the canonical request from criterion's results, and print tables.

    cargo bench --bench canonical && python3 benches/plot.py [TARGET_DIR]

Reads target/criterion/canonical/*/new/{estimates,sample}.json (one iteration = one request)
and target/criterion/threads/*/{1,2}/new/..., writes benches/results/ns_per_request.svg (median
with the min-max of the samples' means as whiskers) and prints markdown tables: ns/request with
ratios to the system allocator and bumpalo, and the two-thread scaling.
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TARGET = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "target")
CRIT = os.path.join(TARGET, "criterion")
OUT = os.path.join(HERE, "results", "ns_per_request.svg")

ORDER = [
    "floor",
    "hand-bump",
    "bumpalo",
    "system",
    "mimalloc",
    "napalloc-untracked",
    "napalloc-cursor",
    "napalloc-tracked-free",
    "napalloc-tracked-reset",
    "napalloc-tracked-cursor",
    "napalloc-com",
]


def load(path):
    """(median ns per iteration, min, max of the samples' ns per iteration), or None."""
    new = os.path.join(path, "new")
    try:
        with open(os.path.join(new, "estimates.json")) as f:
            est = json.load(f)
        with open(os.path.join(new, "sample.json")) as f:
            sample = json.load(f)
    except OSError:
        return None
    per = [t / i for t, i in zip(sample["times"], sample["iters"]) if i > 0]
    return est["median"]["point_estimate"], min(per), max(per)


def svg(rows):
    """Horizontal bars: median, with a min-max whisker."""
    w, left, right, bar, gap, top = 760, 190, 90, 18, 8, 40
    h = top + len(rows) * (bar + gap) + 30
    # The axis follows the medians; a whisker longer than the axis is cut (its end is marked "…").
    scale_max = max(med for _, med, _, _ in rows) * 1.3
    x = lambda v: left + (w - left - right) * min(v, scale_max) / scale_max  # noqa: E731
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
        f'<rect width="{w}" height="{h}" fill="white"/>',
        f'<text x="{w / 2}" y="20" text-anchor="middle" font-size="14">'
        "canonical request: ns/request, one thread (median; whisker: min-max of the samples)</text>",
    ]
    for k, (name, med, mn, mx) in enumerate(rows):
        y = top + k * (bar + gap)
        color = "#d9534f" if name.startswith("napalloc") else "#5b8dd9"
        out.append(f'<text x="{left - 6}" y="{y + bar - 4}" text-anchor="end">{name}</text>')
        out.append(f'<rect x="{left}" y="{y}" width="{x(med) - left:.1f}" height="{bar}" fill="{color}"/>')
        cy = y + bar / 2
        out.append(f'<line x1="{x(mn):.1f}" y1="{cy}" x2="{x(mx):.1f}" y2="{cy}" stroke="black"/>')
        for v in (mn, mx):
            out.append(f'<line x1="{x(v):.1f}" y1="{cy - 4}" x2="{x(v):.1f}" y2="{cy + 4}" stroke="black"/>')
        cut = "…" if mx > scale_max else ""
        out.append(f'<text x="{x(mx) + 6:.1f}" y="{y + bar - 4}">{cut} {med:.1f} ns</text>')
    axis_y = top + len(rows) * (bar + gap)
    out.append(f'<line x1="{left}" y1="{axis_y}" x2="{w - right}" y2="{axis_y}" stroke="gray"/>')
    out.append(f'<text x="{left}" y="{axis_y + 16}" fill="gray">0</text>')
    out.append(f'<text x="{w - right}" y="{axis_y + 16}" text-anchor="end" fill="gray">{scale_max:.0f} ns</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    rows = []
    for name in ORDER:
        r = load(os.path.join(CRIT, "canonical", name))
        if r is not None:
            rows.append((name, *r))
    if not rows:
        sys.exit(f"no criterion results under {CRIT}/canonical: run `cargo bench --bench canonical` first")
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        f.write(svg(rows))

    ref = {name: med for name, med, _, _ in rows}
    print("| mode | ns/request (median) | min-max | ÷ system | ÷ bumpalo |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, med, mn, mx in rows:
        ratios = [f"{med / ref[b]:.2f}" if b in ref else "-" for b in ("system", "bumpalo")]
        print(f"| {name} | {med:.1f} | {mn:.1f}-{mx:.1f} | {ratios[0]} | {ratios[1]} |")

    print()
    print("| mode | 1 thread ns/req | 2 threads ns/req (per thread) | scaling (requests/s, 2 vs 1) |")
    print("| --- | ---: | ---: | ---: |")
    for name in ORDER:
        one = load(os.path.join(CRIT, "threads", name, "1"))
        two = load(os.path.join(CRIT, "threads", name, "2"))
        if one and two:
            print(f"| {name} | {one[0]:.1f} | {two[0]:.1f} | {2 * one[0] / two[0]:.2f}x |")
    print(f"\nwrote {os.path.relpath(OUT)}")


if __name__ == "__main__":
    main()
