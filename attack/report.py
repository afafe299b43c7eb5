"""attack.json, attack.md (method x metrics table) and grid.png (originals, server view, reconstructions).

Each row's arrays (what the server saw, the reconstructions) are kept in rows/<name>.npz as soon as the
row is done, so runs made side by side (one process per core) merge into one report:
`python -m ppfr.attack.report --merge runs/attack_a runs/attack_b --out runs/attack`.
"""

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np

GRID_PICKS = 4  # victims shown in the grid


def grid_picks(n_images: int) -> np.ndarray:
    """The victim images the grid shows: every other image (one per person), GRID_PICKS of them."""
    return np.arange(0, min(n_images, 2 * GRID_PICKS), 2)


def _pct(x):
    return "—" if x is None else f"{100 * x:.1f}%"


def _num(x, fmt):
    return "—" if x is None else format(x, fmt)


def table(result: dict) -> str:
    judges = list(result["judges"])
    head = ["attack on", "server input", "PSNR dB", "SSIM"]
    for j in judges:
        head += [f"{j}: reconstruction matched (false match)", f"{j}: linkage TAR@1e-3 / rank-1"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result["references"] + result["results"]:
        cells = [row["name"], "x".join(map(str, row.get("protected_shape", []))) or "—"]
        cells += [_num(row.get("psnr"), ".2f"), _num(row.get("ssim"), ".3f")]
        for j in judges:
            r = row["judges"].get(j, {})
            rec = r.get("reconstruction", {})
            cells.append(f"{_pct(rec.get('match_rate'))} ({_pct(rec.get('false_match_rate'))})")
            link = row.get("linkage", {}).get(j)
            cells.append(f"{_pct(link['match_rate_at_own_far'])} / {_pct(link['rank1'])}" if link else "—")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(result: dict) -> str:
    out = ["# Privacy attacks", "", table(result), ""]
    out.append(
        "Reconstruction matched = share of victim images whose reconstruction the judge accepts as the same "
        "person as the *other* photo of that person, at the judge's FAR 1e-3 threshold (in brackets: how "
        "often it accepts the reconstruction against photos of other people). Linkage (FaceLinkGen-style: "
        "the bundle's recognizer, a pretrained face model fine-tuned on the attacker's own faces to map "
        "protected tensors to clean-face embeddings) = its embedding of the victim's protected query "
        "against the judge's embedding of the other, clean photo: TAR at the threshold where these "
        "queries false-match other people at 1e-3, and rank-1 among all clean originals (rates at the "
        "judge's own threshold are in attack.json)."
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
    utk = s.get("attacker_faces", {}).get("utkface")
    if utk:
        out.append(
            f"- attacker UTKFace: {utk['used']} faces used; the leak filter dropped "
            f"{utk['dropped_count']} of {utk['faces']} as near-matches of {utk['eval_images']} LFW/CFP "
            f"images (teacher cosine > {utk['threshold']:.3f}, impostor FAR {utk['far']:g})"
        )
    c = result["config"]
    out.append(
        f"- inversion: U-Net widths {c['widths']} at {c['res']} px, {c['steps']} steps x {c['batch']} faces, "
        f"{c['threads']} thread(s)"
    )
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


def grid_png(path, victims, mean_face, rows) -> None:
    """rows: (label, seen, recon) with seen/recon holding the GRID_PICKS victims shown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picks = grid_picks(len(victims))
    n = len(picks)
    fig, axes = plt.subplots(len(rows) + 1, 3 * n, figsize=(1.1 * 3 * n, 1.25 * (len(rows) + 1)))
    axes = np.atleast_2d(axes)
    for c, i in enumerate(picks):
        for k, (img, title) in enumerate([(victims[i], "original"), (mean_face[i], "mean face"), (None, "")]):
            ax = axes[0, 3 * c + k]
            if img is not None:
                ax.imshow(img)
            ax.set_title(title, fontsize=6)
    for r, (label, seen, recon) in enumerate(rows, start=1):
        for c, i in enumerate(picks):
            cells = [
                (victims[i], "original"),
                (server_view(seen[c]), "server sees"),
                (recon[c], "reconstruction"),
            ]
            for k, (img, title) in enumerate(cells):
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


def saver(out_dir):
    """save(row, seen, recon): rows/<name>.npz with the grid's server views and every reconstruction."""
    folder = Path(out_dir) / "rows"
    folder.mkdir(parents=True, exist_ok=True)

    def save(row, seen, recon):
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", row["name"]).strip("_") + ".npz"
        np.savez_compressed(folder / name, seen=seen[grid_picks(len(seen))], recon=recon)
        row["arrays"] = f"rows/{name}"

    return save


def write(result: dict, out_dir) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if "_arrays" in result:
        victims, mean_face = result.pop("_arrays")
        np.savez_compressed(out / "references.npz", victims=victims, mean_face=mean_face)
    (out / "attack.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "attack.md").write_text(markdown(result))
    refs = np.load(out / "references.npz")
    rows = []
    for row in (r for r in result["results"] if "arrays" in r):  # rows without images: linkage only
        z = np.load(out / row["arrays"])
        rows.append((row["name"], z["seen"], z["recon"][grid_picks(len(z["recon"]))]))
    grid_png(out / "grid.png", refs["victims"], refs["mean_face"], rows)
    return {k: out / f for k, f in (("json", "attack.json"), ("md", "attack.md"), ("grid", "grid.png"))}


def merge(folders, out_dir) -> dict:
    """One report from runs with the same split and judges (e.g. bundles attacked side by side)."""
    results = [json.loads((Path(f) / "attack.json").read_text()) for f in folders]
    first = results[0]
    for f, r in zip(folders[1:], results[1:]):
        if r["victim_images"] != first["victim_images"] or r["judges"] != first["judges"]:
            raise ValueError(f"{f} was run on other victims or judges than {folders[0]}: cannot merge")
    out = Path(out_dir)
    (out / "rows").mkdir(parents=True, exist_ok=True)
    for f, r in zip(folders, results):
        for row in r["results"]:
            if Path(f).resolve() != out.resolve():
                shutil.copyfile(Path(f) / row["arrays"], out / row["arrays"])
    if Path(folders[0]).resolve() != out.resolve():
        shutil.copyfile(Path(folders[0]) / "references.npz", out / "references.npz")
    merged = {**first, "results": [row for r in results for row in r["results"]]}
    merged["wall_seconds"] = max(r["wall_seconds"] for r in results)  # the runs went side by side
    return write(merged, out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ppfr.attack.report", description=merge.__doc__)
    p.add_argument("--merge", nargs="+", type=Path, required=True, help="attack output folders")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    try:
        files = merge(a.merge, a.out)
    except (FileNotFoundError, ValueError, KeyError) as err:
        print(f"ppfr-attack report: {err}", file=sys.stderr)
        return 1
    print((a.out / "attack.md").read_text())
    print("wrote " + ", ".join(str(f) for f in files.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
