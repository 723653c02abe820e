"""RESULTS.md from the runner's JSON: one table per problem, the targets as ratios."""

from __future__ import annotations

SYMAD = "symad"


def _num(v, fmt="{:.3g}"):
    return "—" if v is None else fmt.format(v)


def _cell_batch(res, key):
    if key in res.get("batch", {}):
        return f"{res['batch'][key] / 1e6:.3g}"
    why = res.get("skipped", {}).get(f"batch_{key}")
    return f"skipped ({why})" if why else "—"


def _ok(res):
    return res.get("status") == "ok"


def _by_problem(doc):
    out: dict = {}
    for r in doc["results"]:
        out.setdefault(r["problem"], {})[r["system"]] = r
    return out


def targets(doc) -> list:
    """Each target of issue 6 as measured ratios (< 1 or <= the bound means met)."""
    rows = []
    byp = _by_problem(doc)
    cf = byp.get("closed_form", {}).get(SYMAD)
    if cf and _ok(cf) and cf.get("call_us"):
        rows.append({"target": "symad single call <= 1 us (closed form)",
                     "problem": "closed_form", "measured": f"{cf['call_us']:.3f} us",
                     "ratio": cf["call_us"] / 1.0, "met": cf["call_us"] <= 1.0})
    for p, d in byp.items():
        s = d.get(SYMAD)
        if not (s and _ok(s)):
            rows.append({"target": "symad runs", "problem": p, "measured": s and s["status"],
                         "ratio": None, "met": False})
            continue
        others = {k: v for k, v in d.items() if k != SYMAD and _ok(v)}
        ords = {k: v["call_us"] for k, v in others.items() if v.get("call_us")}
        if ords and s.get("call_us"):
            k = min(ords, key=ords.get)
            rows.append({"target": "single call faster than every anchor's ordinary path",
                         "problem": p, "measured": f"symad {s['call_us']:.3g} us vs "
                         f"{k} {ords[k]:.3g} us", "ratio": s["call_us"] / ords[k],
                         "met": s["call_us"] < ords[k]})
        fasts = {k: v["fast_us"] for k, v in others.items() if v.get("fast_us")}
        if fasts and s.get("fast_us"):
            k = min(fasts, key=fasts.get)
            rows.append({"target": "(info) single call vs every anchor's fastest path",
                         "problem": p, "measured": f"symad {s['fast_us']:.3g} us vs "
                         f"{k} {fasts[k]:.3g} us", "ratio": s["fast_us"] / fasts[k],
                         "met": s["fast_us"] < fasts[k]})
        for key in ("1e4", "1e6"):
            tp = {k: v["batch"][key] for k, v in others.items()
                  if key in v.get("batch", {}) and k != "numba"}
            if tp and key in s.get("batch", {}):
                k = max(tp, key=tp.get)
                rows.append({"target": f"batch {key} throughput >= fastest anchor",
                             "problem": p, "measured": f"symad {s['batch'][key] / 1e6:.3g} "
                             f"vs {k} {tp[k] / 1e6:.3g} Mpt/s",
                             "ratio": tp[k] / s["batch"][key],
                             "met": s["batch"][key] >= tp[k]})
            nb = d.get("numba")
            if p.startswith("lennard_jones") and nb and key in nb.get("batch", {}) \
                    and key in s.get("batch", {}):
                r = nb["batch"][key] / s["batch"][key]
                rows.append({"target": f"batch {key} within 1.25x of hand-written numba",
                             "problem": p, "measured": f"symad {s['batch'][key] / 1e6:.3g} "
                             f"vs numba {nb['batch'][key] / 1e6:.3g} Mpt/s", "ratio": r,
                             "met": r <= 1.25})
        for k in ("jax", "casadi_c"):
            o = d.get(k)
            if o and _ok(o):
                rows.append({"target": f"build time < {k}", "problem": p,
                             "measured": f"symad {s['build_s']:.3g} s vs {k} "
                             f"{o['build_s']:.3g} s", "ratio": s["build_s"] / o["build_s"],
                             "met": s["build_s"] < o["build_s"]})
        rb = s.get("ratio_batch")
        if rb is not None:
            rows.append({"target": "cheap-gradient ratio <= 3 (batch 1e4)", "problem": p,
                         "measured": f"{rb:.2f} (single call {s.get('ratio_call') or 0:.2f})",
                         "ratio": rb / 3, "met": rb <= 3})
    if doc.get("scaling"):
        from .scaling import slope
        sl = slope(doc["scaling"])
        biggest = max((r for r in doc["scaling"] if r.get("status") == "ok"
                       and r.get("graph", "chain") == "chain"),
                      key=lambda r: r["forward_nodes"], default=None)
        reached = biggest and biggest["forward_nodes"] >= 0.9e6
        rows.append({"target": "compile time ~linear in node count to 10^6",
                     "problem": "scaling", "measured": f"log-log slope {_num(sl, '{:.2f}')}, "
                     f"largest compiled {biggest and biggest['forward_nodes']:,} nodes",
                     "ratio": sl, "met": bool(sl is not None and sl < 1.2 and reached)})
        sl = slope(doc["scaling"], "irregular")
        if sl is not None:
            rows.append({"target": "(info) compile time vs node count, graph that does not "
                         "roll", "problem": "scaling", "measured": f"log-log slope "
                         f"{_num(sl, '{:.2f}')} (10^3..10^5)", "ratio": sl,
                         "met": sl < 1.2})
    return rows


def markdown(doc) -> str:
    meta = doc["meta"]
    m, v = meta["machine"], meta["versions"]
    L = ["# symad benchmark results", "",
         f"Generated by `{meta['command'].strip()}` on {meta['date']} "
         f"(total {meta.get('total_s', 0):.0f} s, budget {meta['budget_s']:g} s per "
         "problem and system; every pair measured in a fresh process).", "",
         f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, "
         f"{m['platform']}; C compiler: {m['cc'] or 'none'}. Load average (1/5/15 min) "
         f"at start {m.get('loadavg_start')}, at end {m.get('loadavg_end')}: a load above "
         "the core count means other processes shared the CPUs and slowed every system "
         "unevenly.", "",
         "Versions: " + ", ".join(f"{k} {x}" for k, x in v.items()) + ".", "",
         "Columns: **build** = trace + differentiate + compile + first call (library "
         "import excluded); **call** = median single-point value+gradient latency, ordinary "
         "path; **fast** = the fastest documented path; **batch** = value+gradient "
         "throughput in million points per second, each system's native batching, one "
         "thread; **ratio** = t(value+grad)/t(value) on the 10^4 batch (single-call ratio "
         "in results.json); **grad** = agreement with symad's gradient at rtol 1e-9 "
         "(max relative error).", "",
         "| system | ordinary path | fastest path | batching |", "|---|---|---|---|"]
    for s, d in doc["systems"].items():
        L.append(f"| {s} | {d['ordinary']} | {d['fastest']} | {d['batching']} |")
    L.append("")
    byp = _by_problem(doc)
    for p, d in byp.items():
        L += [f"## {p}", "", doc["problems"].get(p, ""), "",
              "| system | build s | call µs | fast µs | batch 1e4 Mpt/s | batch 1e6 Mpt/s "
              "| ratio | grad |", "|---|---:|---:|---:|---:|---:|---:|---|"]
        for s, r in d.items():
            if not _ok(r):
                L.append(f"| {s} | {r.get('status')} | | | | | | |")
                continue
            if "agrees" in r:
                err = r.get("max_rel_err")
                g = ("ok" if r["agrees"] else "**DIFFERS**") + (
                    f" ({err:.1e})" if err is not None else "")
            else:
                g = "—"
            L.append(f"| {s} | {_num(r.get('build_s'))} | {_num(r.get('call_us'))} | "
                     f"{_num(r.get('fast_us'))} | {_cell_batch(r, '1e4')} | "
                     f"{_cell_batch(r, '1e6')} | {_num(r.get('ratio_batch'), '{:.2f}')} | "
                     f"{g} |")
        skipped = [f"{s}: {k} ({w})" for s, r in d.items()
                   for k, w in r.get("skipped", {}).items() if not k.startswith("batch_1e")]
        if skipped:
            L += ["", "Not measured: " + "; ".join(skipped) + "."]
        L.append("")
    if doc.get("scaling"):
        L += ["## Compile-time scaling (symad)", "",
              "*chain*: f(x, y) = `x = sin(x) * y + x` repeated, which rolls into one loop "
              "(LLVM sees a few dozen instructions at any size); *irregular*: a random op on "
              "two random earlier values per step, which does not roll (LLVM compiles every "
              "node). Build = trace + AD + lowering (including loop planning) + LLVM "
              "optimisation + machine code, first call included.", "",
              "| graph | target nodes | forward nodes | with adjoint | LLVM instr. | trace s "
              "| ad s | lowering s | llvm_opt s | machine_code s | total s | levels |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in doc["scaling"]:
            graph = r.get("graph", "chain")
            if r.get("status") != "ok":
                L.append(f"| {graph} | {r['target_nodes']:,} | {r['status']} "
                         "| | | | | | | | | |")
                continue
            s = r["seconds"]
            L.append(f"| {graph} | {r['target_nodes']:,} | {r['forward_nodes']:,} | "
                     f"{r['graph_nodes']:,} | {r['llvm_instructions']:,} | "
                     + " | ".join(f"{s.get(k, 0):.3g}" for k in
                                  ("trace", "ad", "lowering", "llvm_opt", "machine_code"))
                     + f" | {r['total_s']:.3g} | {r['opt_level']} |")
        L.append("")
    L += ["## Targets (issue 6), as measured ratios", "",
          "ratio < 1 (or ≤ the stated bound) means the target is met.", "",
          "| target | problem | measured | ratio | met |", "|---|---|---|---:|---|"]
    for t in doc.get("targets", []):
        L.append(f"| {t['target']} | {t['problem']} | {t['measured']} | "
                 f"{_num(t['ratio'], '{:.2f}')} | {'yes' if t['met'] else '**no**'} |")
    L.append("")
    return "\n".join(L)
