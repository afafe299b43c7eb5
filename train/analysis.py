"""PPFR-FD analysis network output: the learned per-channel weights a_i = sigmoid(x_i) (paper Fig. 2a).

Channels whose weight fell below gamma are the ones the recognizer could give up under the energy
penalty; the paper finds DC lowest. Written as a JSON + Markdown table and a bar plot.
"""

import json
from pathlib import Path


def channel_scores(method) -> list[dict]:
    w = method.weighting.weights().detach().cpu()
    energy = method.weighting._energy
    rows = []
    for i, k in enumerate(method.keep.tolist()):
        rows.append(
            {
                "channel": int(k),
                "u": int(k) // 8,
                "v": int(k) % 8,
                "weight": float(w[i]),
                "energy": float(energy[i]) if energy is not None else None,
                "below_gamma": bool(w[i] < method.weighting.gamma),
            }
        )
    return rows


def write_channel_scores(method, out_dir) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    rows = channel_scores(method)
    gamma = method.weighting.gamma
    (out / "channel_scores.json").write_text(json.dumps({"gamma": gamma, "channels": rows}, indent=2))
    lines = [
        f"| channel k=8u+v | (u,v) | weight a_i | energy p_i | a_i < gamma={gamma} |",
        "|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: r["weight"]):
        e = f"{r['energy']:.3f}" if r["energy"] is not None else "-"
        lines.append(
            f"| {r['channel']} | ({r['u']},{r['v']}) | {r['weight']:.3f} | {e} "
            f"| {'yes' if r['below_gamma'] else ''} |"
        )
    (out / "channel_scores.md").write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(9, 3), dpi=120)
    ax.bar(
        range(len(rows)),
        [r["weight"] for r in rows],
        color=["C3" if r["below_gamma"] else "C0" for r in rows],
    )
    ax.axhline(gamma, color="k", lw=0.8, ls="--")
    ax.set_xticks(range(len(rows)), [str(r["channel"]) for r in rows], fontsize=6)
    ax.set(xlabel="BDCT channel (zigzag order)", ylabel="a_i", ylim=(0, 1), title="PPFR-FD channel scores")
    fig.tight_layout()
    fig.savefig(out / "channel_scores.png")
    plt.close(fig)
    return out / "channel_scores.md"
