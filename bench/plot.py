"""bench.png: end-to-end latency vs concurrency and throughput per method (batching on solid, off dashed),
and the edge front-end / recognizer batch-1 latencies."""

from pathlib import Path


def plot(result: dict, path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_lat, ax_thr, ax_bar) = plt.subplots(1, 3, figsize=(17, 5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, m) in enumerate(result["methods"].items()):
        col = colors[i % len(colors)]
        for mode, style in (("batching_on", "-"), ("batching_off", "--")):
            sweep = [r for r in m.get("e2e", {}).get(mode, {}).get("sweep", []) if r["latency"].get("n")]
            if not sweep:
                continue
            cs = [r["concurrency"] for r in sweep]
            label = f"{name} ({mode.split('_')[1]})"
            ax_lat.plot(
                cs, [r["latency"]["p50_ms"] for r in sweep], style, marker="o", color=col, label=label
            )
            ax_lat.plot(cs, [r["latency"]["p99_ms"] for r in sweep], style, marker=".", color=col, alpha=0.35)
            ax_thr.plot(cs, [r["throughput_rps"] for r in sweep], style, marker="o", color=col, label=label)
    for ax, title, ylabel in (
        (ax_lat, "Verify latency p50 (p99 faint) vs concurrency", "ms"),
        (ax_thr, "Verify throughput vs concurrency", "requests/s"),
    ):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    ax_lat.set_yscale("log")
    ax_thr.legend(fontsize=7)
    names = list(result["methods"])
    fe = [result["methods"][n]["edge"]["frontend"]["p50_ms"] for n in names]
    rec = [result["methods"][n]["recognizer"]["runtimes"]["onnxruntime"]["batch1"]["p50_ms"] for n in names]
    x = range(len(names))
    ax_bar.bar([i - 0.2 for i in x], fe, width=0.4, label="edge front-end (1 thread)")
    ax_bar.bar([i + 0.2 for i in x], rec, width=0.4, label="recognizer batch 1")
    ax_bar.set_xticks(list(x), names, rotation=20, fontsize=8)
    ax_bar.set_yscale("log")
    ax_bar.set_ylabel("p50 ms")
    ax_bar.set_title("Per-query model latency")
    ax_bar.legend(fontsize=8)
    fig.suptitle(f"ppfr bench — {result['machine']['cpu_model']}, {result['machine']['usable_cores']} cores")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
