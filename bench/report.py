"""bench.json -> the headline summary rows (ratios vs rgb) and bench.md."""

from .config import BASELINE
from .stats import ratio


def _level(mode: dict | None, c: int) -> dict | None:
    for r in (mode or {}).get("sweep", []):
        if r["concurrency"] == c:
            return r
    return None


def _p(level, key):
    return level["latency"].get(key) if level else None


def _best_gain(e2e: dict, levels) -> tuple[int | None, float | None]:
    """Largest throughput gain of batching on vs off over the given concurrency levels."""
    best = (None, None)
    for c in levels:
        on, off = _level(e2e.get("batching_on"), c), _level(e2e.get("batching_off"), c)
        if on and off:
            g = ratio(on["throughput_rps"], off["throughput_rps"])
            if g is not None and (best[1] is None or g > best[1]):
                best = (c, g)
    return best


def summary_rows(result: dict) -> list[dict]:
    methods = result["methods"]
    base = next((m for m in methods.values() if m["method"] == BASELINE), None)

    def base_val(get):
        try:
            return get(base) if base else None
        except (KeyError, TypeError):
            return None

    def fe(m):
        return m["edge"]["frontend"]["p50_ms"]

    def pay(m):
        return m["edge"]["payload_bytes"]

    def rec(m):
        return m["recognizer"]["runtimes"]["onnxruntime"]["batch1"]["p50_ms"]

    def rec_best(m):
        return max(
            r["items_per_s"] for r in m["recognizer"]["runtimes"]["onnxruntime"]["throughput"].values()
        )

    levels = [c for c in result["config"]["concurrency"] if c >= 16] or result["config"]["concurrency"][-1:]
    rows = []
    for name, m in methods.items():
        e2e = m.get("e2e", {})
        on = e2e.get("batching_on")
        c1, c16 = _level(on, 1), _level(on, 16)
        gain_c, gain = _best_gain(e2e, levels)
        row = {
            "bundle": name,
            "method": m["method"],
            "frontend_p50_ms": fe(m),
            "frontend_p99_ms": m["edge"]["frontend"]["p99_ms"],
            "frontend_vs_rgb": ratio(fe(m), base_val(fe)),
            "payload_bytes": pay(m),
            "payload_vs_rgb": ratio(pay(m), base_val(pay)),
            "recognizer_b1_p50_ms": rec(m),
            "recognizer_vs_rgb": ratio(rec(m), base_val(rec)),
            "recognizer_best_items_per_s": rec_best(m),
            "e2e_c1_p50_ms": _p(c1, "p50_ms"),
            "e2e_c1_p99_ms": _p(c1, "p99_ms"),
            "e2e_c16_p50_ms": _p(c16, "p50_ms"),
            "e2e_c16_p99_ms": _p(c16, "p99_ms"),
            "e2e_c1_vs_rgb": ratio(
                _p(c1, "p50_ms"), base_val(lambda b: _p(_level(b["e2e"]["batching_on"], 1), "p50_ms"))
            ),
            "batching_gain": gain,
            "batching_gain_at_concurrency": gain_c,
        }
        rows.append(row)
    return rows


def _f(v, fmt="{:.2f}"):
    return "–" if v is None else fmt.format(v)


def _x(v):
    return "–" if v is None else f"{v:.2f}x"


def markdown(result: dict) -> str:
    mach = result["machine"]
    cfg = result["config"]
    lines = [
        "# ppfr bench",
        "",
        f"Run {result['created']} in {result['wall_s']:.0f} s"
        + (" (tiny configuration)" if result.get("tiny") else "")
        + f". Machine: {mach['cpu_model']}, {mach['usable_cores']} cores, {mach['memory_gib']} GiB; "
        f"GPU: {', '.join(mach['gpus']) or 'none'}; onnxruntime {mach['versions'].get('onnxruntime')}, "
        f"grpcio {mach['versions'].get('grpcio')}, Python {mach['versions']['python']}. Load average "
        f"(1/5/15 min) at start {mach.get('load_average_at_start')}, at end {mach.get('load_average_at_end')}"
        " — the CPU is shared with whatever else runs, so compare ratios, not absolute times.",
        "",
        "Edge front-end: batch 1, ONNX Runtime, 1 thread. Recognizer: ONNX Runtime CPU, batch 1. End to end: "
        f"Verify over loopback gRPC from a separate load-generator process, dynamic batching on (max batch "
        f"{cfg['max_batch']}, max delay {cfg['max_delay_ms']} ms); gain = throughput with batching on / off "
        "(best level at concurrency >= 16). Ratios are against `rgb` measured in the same run.",
        "",
        "| bundle | front-end p50 ms (vs rgb) | front-end p99 ms | payload B (vs rgb)"
        " | recognizer b1 p50 ms (vs rgb) | recognizer best /s | e2e c1 p50 / p99 ms | e2e c16 p50 / p99 ms"
        " | batching gain |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["summary"]:
        gain = (
            "–"
            if r["batching_gain"] is None
            else f"{r['batching_gain']:.2f}x (c{r['batching_gain_at_concurrency']})"
        )
        lines.append(
            f"| {r['bundle']} | {_f(r['frontend_p50_ms'], '{:.3f}')} ({_x(r['frontend_vs_rgb'])}) "
            f"| {_f(r['frontend_p99_ms'], '{:.3f}')} | {r['payload_bytes']:,} ({_x(r['payload_vs_rgb'])}) "
            f"| {_f(r['recognizer_b1_p50_ms'])} ({_x(r['recognizer_vs_rgb'])}) "
            f"| {_f(r['recognizer_best_items_per_s'], '{:.0f}')} "
            f"| {_f(r['e2e_c1_p50_ms'])} / {_f(r['e2e_c1_p99_ms'])} "
            f"| {_f(r['e2e_c16_p50_ms'])} / {_f(r['e2e_c16_p99_ms'])} | {gain} |"
        )
    det = result.get("edge_detection")
    if det:
        lines += [
            "",
            f"Detection (YuNet, {det['image_size'][1]}x{det['image_size'][0]} photos, 1 thread): p50 "
            f"{det['detection']['p50_ms']:.2f} ms, p99 {det['detection']['p99_ms']:.2f} ms; alignment p50 "
            f"{det['alignment']['p50_ms']:.3f} ms, p99 {det['alignment']['p99_ms']:.3f} ms "
            f"({det['faces_found']}/{det['photos']} raw LFW photos). Same for every method.",
        ]
    sweep = [f"c{c} p50 / p90 / p99 ms, req/s" for c in cfg["concurrency"]]
    lines += _table("End to end, full sweep", ["bundle", "batching", *sweep])
    for name, m in result["methods"].items():
        for mode in ("batching_on", "batching_off"):
            e = m.get("e2e", {}).get(mode)
            if not e:
                continue
            cells = []
            for c in cfg["concurrency"]:
                lv = _level(e, c)
                lat = lv["latency"] if lv else {}
                cells.append(
                    "–"
                    if not lv or not lat.get("n")
                    else f"{lat['p50_ms']:.1f} / {lat['p90_ms']:.1f} / {lat['p99_ms']:.1f}, "
                    f"{lv['throughput_rps']:.0f}"
                )
            lines.append(f"| {name} | {mode.split('_')[1]} | " + " | ".join(cells) + " |")
    batches = [f"b{b} /s" for b in cfg["rec_batches"]]
    edge = ["random draw p50 ms", "draw+front-end+serialize p50 ms"]
    lines += _table(
        "Recognizer throughput (items/s) and edge costs",
        ["bundle", "runtime", "b1 p50 / p99 ms", *batches, *edge],
    )
    for name, m in result["methods"].items():
        for rt, v in m["recognizer"]["runtimes"].items():
            thr = " | ".join(
                _f(v["throughput"].get(str(b), {}).get("items_per_s"), "{:.0f}") for b in cfg["rec_batches"]
            )
            lines.append(
                f"| {name} | {rt} | {v['batch1']['p50_ms']:.2f} / {v['batch1']['p99_ms']:.2f} | {thr} "
                f"| {m['edge']['random_draw']['p50_ms']:.3f} "
                f"| {m['edge']['frontend_draw_serialize']['p50_ms']:.3f} |"
            )
    gpu = result.get("gpu", {})
    lines += ["", "## GPU", ""]
    if not gpu.get("available"):
        lines.append(f"Not run: {gpu.get('reason', 'no GPU')}.")
    else:
        lines.append(f"GPU: {gpu['name']}.")
        lines += ["", "| bundle | variant | batch | p50 ms | items/s |", "|---|---|---|---|---|"]
        for name, m in result["methods"].items():
            for var, v in m.get("gpu", {}).get("variants", {}).items():
                for r in v.get("rows", []):
                    lines.append(
                        f"| {name} | {var} | {r['batch']} | {r['p50_ms']:.3f} | {r['items_per_s']:.0f} |"
                    )
    if result.get("skipped"):
        lines += [
            "",
            "Skipped: " + "; ".join(f"{s['name']} ({s['reason']})" for s in result["skipped"]) + ".",
        ]
    return "\n".join(lines) + "\n"


def _table(title: str, head: list[str]) -> list[str]:
    """A markdown section title and a table's header rows."""
    return ["", f"## {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
