"""attack.json, attack.md (method x metrics table) and grid.png (originals, server view, reconstructions)."""

import json
from pathlib import Path

import numpy as np


def _pct(x):
    return "—" if x is None else f"{100 * x:.1f}%"


def _num(x, fmt):
    return "—" if x is None else format(x, fmt)


def table(result: dict) -> str:
    judges = list(result["judges"])
    head = ["attack on", "server input", "PSNR dB", "SSIM"]
    for j in judges:
        head += [f"{j}: reconstruction matched (false match)", f"{j}: linkage matched at own FAR 1e-3"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result["references"] + result["results"]:
        cells = [row["name"], "x".join(map(str, row.get("protected_shape", []))) or "—"]
        cells += [_num(row.get("psnr"), ".2f"), _num(row.get("ssim"), ".3f")]
        for j in judges:
            r = row["judges"].get(j, {})
            rec = r.get("reconstruction", {})
            cells.append(f"{_pct(rec.get('match_rate'))} ({_pct(rec.get('false_match_rate'))})")
            cells.append(_pct(r.get("linkage", {}).get("match_rate_at_own_far")))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(result: dict) -> str:
    out = ["# Privacy attacks", "", table(result), ""]
    out.append(
        "Reconstruction matched = share of victim images whose reconstruction the judge accepts as the same "
        "person as the *other* photo of that person, at the judge's FAR 1e-3 threshold (in brackets: how "
        "often it accepts the reconstruction against photos of other people). Linkage matched = the same "
        "for the "
        "embedding predicted straight from the protected tensor, at the threshold where those predictions "
        "false-match other people at 1e-3 (their raw false-match rate at the judge's threshold is in "
        "attack.json)."
    )
    out.append("")
    for n, j in result["judges"].items():
        out.append(
            f"- judge `{n}` ({j['name']}): cosine threshold {j['threshold_cosine']:.4f} at FAR "
            f"{j['far_target']:g} from {j['impostor_pairs']} impostor pairs (measured FAR "
            f"{j['measured_far']:.2e}); chance floor = that FAR."
        )
    s = result["split"]
    out += [
        "",
        f"- attacker: {s['attacker']}",
        f"- victims: {s['victims']}",
        f"- calibration: {s['calibration']}",
    ]
    out.append(f"- identities shared by attacker and victims/calibration: {s['identity_overlap']}")
    for row in result["results"]:
        k = row.get("key_renewal")
        if k:
            out += [
                "",
                f"Key renewal ({row['name']}, recognizer threshold {k['threshold_cosine']:.4f} at FAR 1e-3): "
                f"same key {_pct(k['same_key_match_rate'])}, cross key {_pct(k['cross_key_match_rate'])}, "
                f"cross key same photo {_pct(k['cross_key_same_photo_match_rate'])}, cross key false match "
                f"{_pct(k['cross_key_false_match_rate'])}.",
            ]
    out += ["", f"Wall time {result['wall_seconds']:.0f} s.", ""]
    return "\n".join(out)


def server_view(p: np.ndarray, size: int = 112) -> np.ndarray:
    """A protected tensor [C,H,W] as a gray picture: the face itself for rgb-like 3-channel inputs, else
    a 4x4 mosaic of the first 16 channels, each contrast-stretched."""
    import cv2

    if p.shape[0] == 3 and p.shape[1] == size:
        x = p.transpose(1, 2, 0)
        return np.clip((x - x.min()) / (np.ptp(x) + 1e-9) * 255, 0, 255).astype(np.uint8)
    tiles, t = [], size // 4
    for c in range(16):
        ch = p[c] if c < len(p) else np.zeros(p.shape[1:], p.dtype)
        ch = (ch - ch.min()) / (np.ptp(ch) + 1e-9)
        tiles.append(cv2.resize(ch.astype(np.float32), (t, t), interpolation=cv2.INTER_NEAREST))
    m = np.vstack([np.hstack(tiles[r * 4 : r * 4 + 4]) for r in range(4)])
    m = cv2.resize(m, (size, size), interpolation=cv2.INTER_NEAREST)
    return np.repeat((m * 255).astype(np.uint8)[..., None], 3, axis=2)


def grid_png(path, victims, mean_face, rows, n: int = 4) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picks = list(range(0, min(len(victims), 2 * n), 2))[:n]
    fig, axes = plt.subplots(
        len(rows) + 1, 3 * len(picks), figsize=(1.1 * 3 * len(picks), 1.25 * (len(rows) + 1))
    )
    axes = np.atleast_2d(axes)
    for c, i in enumerate(picks):
        for k, (img, title) in enumerate([(victims[i], "original"), (mean_face[i], "mean face"), (None, "")]):
            ax = axes[0, 3 * c + k]
            if img is not None:
                ax.imshow(img)
            ax.set_title(title, fontsize=6)
    for r, (label, seen, recon) in enumerate(rows, start=1):
        for c, i in enumerate(picks):
            for k, (img, title) in enumerate(
                [
                    (victims[i], "original"),
                    (server_view(seen[i]), "server sees"),
                    (recon[i], "reconstruction"),
                ]
            ):
                ax = axes[r, 3 * c + k]
                ax.imshow(img)
                if r == 1:
                    ax.set_title(title, fontsize=6)
        axes[r, 0].set_ylabel(label, fontsize=6)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for s in ax.spines.values():
            s.set_visible(False)
    axes[0, 0].set_ylabel("references", fontsize=6)
    fig.tight_layout(pad=0.2)
    fig.savefig(path, dpi=60)
    plt.close(fig)


def write(result: dict, out_dir) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    victims, mean_face, rows = result.pop("_grid")
    (out / "attack.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "attack.md").write_text(markdown(result))
    grid_png(out / "grid.png", victims, mean_face, rows)
    return {k: out / f for k, f in (("json", "attack.json"), ("md", "attack.md"), ("grid", "grid.png"))}
