"""`ppfr-bench raw-pairs`: verification on real photos end to end, next to the same pairs pre-aligned.

For a bundle, start `ppfr-cloud serve` on loopback with a fresh gallery and take the 1,200 LFW View-2
pairs of folds 1-2 whose raw originals are in ../shared/data/lfw/raw250 (`raw250_pairs.tsv`):

  raw      every photo once through the edge's detection + alignment (ppfr.edge.pipeline, the edge's
           default settings: the most prominent face), then per request frontend.onnx with fresh random
           inputs from the CSPRNG and the real server over gRPC;
  aligned  the same pairs from lfw/aligned112 (the edge's --aligned path), same front-end, same server.

Per pair, photo A is enrolled as a subject of its own (once per photo, one template) and photo B is
verified against it; the server's decision at the bundle's threshold counts. A photo the edge refuses
(no face) makes its pairs a 'no match'. Prints accuracy, genuine accept rate and impostor reject rate of
both and their difference, how many photos the edge accepted and why it refused any; writes JSON.

    ppfr-bench raw-pairs --bundle artifacts/NAME [--pairs N] [--out runs/raw_pairs/NAME.json]
"""

import argparse
import json
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ppfr.data import data_path

DATA = data_path()
MODES = ("raw", "aligned")


class CheckError(Exception):
    """A problem with the inputs (exit status 2) or the server (exit status 1), said in one line."""

    def __init__(self, message: str, exit_status: int = 2):
        super().__init__(message)
        self.exit_status = exit_status


@dataclass(frozen=True)
class Pair:
    a: str  # Name/Name_nnnn.jpg, relative to raw250/ and aligned112/
    b: str
    same: bool
    fold: int


def read_pairs(path: Path) -> list[Pair]:
    if not path.is_file():
        raise CheckError(f"pairs file not found: {path} (is ../shared/data beside the repository?)")
    pairs = []
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines[1:], 2):  # header: a b same fold
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 4 or parts[2] not in ("0", "1"):
            raise CheckError(f"{path}:{number}: expected 'a<TAB>b<TAB>same<TAB>fold', got {line!r}")
        pairs.append(Pair(parts[0], parts[1], parts[2] == "1", int(parts[3])))
    if not pairs:
        raise CheckError(f"{path} names no pairs")
    return pairs


def choose(pairs: list[Pair], limit: int | None) -> list[Pair]:
    """All pairs, or `limit` of them: half genuine, half impostor, spread evenly over the list (folds)."""
    if limit is None or limit >= len(pairs):
        return pairs
    if limit < 2:
        raise CheckError(f"--pairs must be at least 2 (one genuine, one impostor), got {limit}")
    chosen = []
    for same, count in ((True, math.ceil(limit / 2)), (False, limit // 2)):
        group = [p for p in pairs if p.same == same]
        index = np.linspace(0, len(group) - 1, min(count, len(group))).round().astype(int)
        chosen += [group[i] for i in index]
    return chosen


class Progress:
    """A tqdm bar on stderr where tqdm is installed and wanted; otherwise nothing."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __call__(self, items, total: int, desc: str):
        if self.enabled:
            try:
                from tqdm import tqdm

                return tqdm(items, total=total, desc=desc, unit="", dynamic_ncols=True, file=sys.stderr)
            except ImportError:
                pass
        return items


def log(message: str) -> None:
    print(f"[raw-pairs {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the edge: detect + align each photo once -----------------------------------------------------
def prepare(pipeline, root: Path, names: list[str], progress, desc: str) -> dict:
    """{name: aligned RGB crop} for the accepted photos, and per photo what happened."""
    import cv2
    from ppfr.edge.calibrate import refusal_reason
    from ppfr.edge.errors import EdgeError

    crops, photos = {}, {}
    started = time.perf_counter()
    for name in progress(names, len(names), desc):
        try:
            done = pipeline.prepare(root / name)
        except EdgeError as err:
            photos[name] = {"accepted": False, "reason": refusal_reason(str(err)), "error": str(err)}
            continue
        crops[name] = cv2.cvtColor(done.face_bgr, cv2.COLOR_BGR2RGB)
        photos[name] = {"accepted": True, "faces_found": done.faces_found}
    return {"crops": crops, "photos": photos, "seconds": round(time.perf_counter() - started, 2)}


# --- the server: enroll every A photo, verify every B photo --------------------------------------
def verify_pairs(client, frontend, crops: dict, pairs: list[Pair], mode: str, workers: int, progress):
    """Per pair {"score", "match"} from the server, or {"refused": photo} when the edge refused one."""
    subject = {}  # photo -> subject id on the server

    def protected(name):
        return frontend.to_proto(frontend.protect(crops[name]))

    def enroll(name):
        subject[name] = f"{mode}:{name}"
        client.enroll(subject[name], protected(name))

    def verify(pair):
        missing = [n for n in (pair.a, pair.b) if n not in crops]
        if missing:
            return {"refused": missing[0]}
        r = client.verify(subject[pair.a], protected(pair.b))
        return {"score": round(float(r.score), 6), "match": bool(r.match), "threshold": float(r.threshold)}

    enrolled = sorted({p.a for p in pairs if p.a in crops})
    started = time.perf_counter()
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        for _ in progress(pool.map(enroll, enrolled), len(enrolled), f"{mode}: enroll"):
            pass
        results = list(progress(pool.map(verify, pairs), len(pairs), f"{mode}: verify"))
    except BaseException:  # a server error or Ctrl-C: drop the queued calls instead of waiting on them
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    calls = len(enrolled) + sum("score" in r for r in results)
    return results, {"calls": calls, "seconds": round(time.perf_counter() - started, 2)}


# --- figures -------------------------------------------------------------------------------------
def figures(pairs: list[Pair], results: list[dict]) -> dict:
    """Accuracy at the server's threshold (a refused photo = no match), its parts, post-hoc best."""
    same = np.array([p.same for p in pairs])
    match = np.array([bool(r.get("match", False)) for r in results])
    refused = np.array(["refused" in r for r in results])
    out = {
        "pairs": len(pairs),
        "genuine": int(same.sum()),
        "impostor": int((~same).sum()),
        "accuracy": float(np.mean(match == same)),
        "genuine_accept_rate": float(match[same].mean()) if same.any() else None,
        "impostor_reject_rate": float((~match[~same]).mean()) if (~same).any() else None,
        "pairs_refused": int(refused.sum()),
    }
    scored = ~refused
    scores = np.array([r["score"] for r in results if "score" in r])
    if scored.any():
        out["mean_score_genuine"] = float(scores[same[scored]].mean()) if same[scored].any() else None
        out["mean_score_impostor"] = float(scores[~same[scored]].mean()) if (~same[scored]).any() else None
        try:  # the 10-fold evaluation's threshold search (needs the train extra: torch)
            from ppfr.train.evaluate import best_threshold

            t = best_threshold(scores, same[scored])
            out["posthoc_best_threshold"] = t
            out["posthoc_best_accuracy"] = float(np.mean((scores > t) == same[scored]))
        except ImportError:
            pass
    return out


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _settings(edge: dict) -> str:
    from ppfr.edge.detect import DEFAULT_DETECTOR

    changed = ["--strict"] if edge["strict"] else []
    changed += [f"--min-score {edge['min_score']:g}"] if edge["min_score"] != 0.6 else []
    changed += [f"--detector {edge['detector']}"] if edge["detector"] != str(DEFAULT_DETECTOR) else []
    return "edge settings: " + (" ".join(changed) if changed else "default")


def _in_force(summary: dict) -> str:
    """The server's thresholds by template count: each subject here has one template (one photo)."""
    by_count = summary.get("server_thresholds_by_templates") or [summary["server_threshold"]]
    shown = ", ".join(
        f"{i + 1}{'+' if i == len(by_count) - 1 else ''}: {t:.4f}" for i, t in enumerate(by_count)
    )
    return (
        f"the server's thresholds by template count at FAR {summary['server_far']:g}: {shown} (every subject "
        f"here is enrolled from one photo: {by_count[0]:.4f} decides)"
    )


def render(summary: dict) -> str:
    raw, aligned = summary["raw"], summary["aligned"]
    photos = summary["photos_raw"]
    lines = [
        f"bundle {summary['bundle']} (method {summary['method']}), threshold {summary['threshold']:.4f} "
        f"cosine, calibrated at FAR {summary['threshold_far']:g} on {summary['threshold_set']}",
        _in_force(summary),
        f"pairs: {raw['pairs']} ({raw['genuine']} genuine, {raw['impostor']} impostor) "
        f"of {summary['pairs_file']}",
        f"raw photos through detection + alignment ({_settings(summary['edge_settings'])}): "
        f"{photos['accepted']} of "
        f"{photos['total']} accepted ({_pct(photos['accepted_rate'])}); "
        f"{photos['several_faces']} had several faces (the most prominent used)",
    ]
    for reason, count in sorted(photos["refused_by_reason"].items()):
        lines.append(f"  refused, {reason}: {count}")
    rows = (
        ("accuracy at threshold", "accuracy"),
        ("genuine accept rate", "genuine_accept_rate"),
        ("impostor reject rate", "impostor_reject_rate"),
    )
    lines.append(f"\n{'':28s}{'raw photos':>14s}{'aligned112':>14s}{'raw - aligned':>16s}")
    for label, key in rows:
        diff = 100 * (raw[key] - aligned[key]) if None not in (raw[key], aligned[key]) else None
        shown = "n/a" if diff is None else f"{diff:+.2f} points"
        lines.append(f"{label:28s}{_pct(raw[key]):>14s}{_pct(aligned[key]):>14s}{shown:>16s}")
    lines.append(
        f"{'pairs with a refused photo':28s}{raw['pairs_refused']:>14d}{aligned['pairs_refused']:>14d}"
    )
    if "posthoc_best_accuracy" in raw and "posthoc_best_accuracy" in aligned:
        lines.append(
            f"{'post-hoc best accuracy':28s}{_pct(raw['posthoc_best_accuracy']):>14s}"
            f"{_pct(aligned['posthoc_best_accuracy']):>14s}   (threshold chosen on these pairs: optimistic)"
        )
    lines.append(f"\nwall time {summary['wall_s']:.0f} s; JSON: {summary['out']}")
    return "\n".join(lines)


# --- the run -------------------------------------------------------------------------------------
def edge_side(args, pairs: list[Pair], progress):
    """The bundle's front-end, and every photo once through the edge, raw and aligned."""
    from ppfr.edge.pipeline import Pipeline

    data, bundle = Path(args.data), Path(args.bundle)
    roots = {"raw": data / "lfw" / "raw250", "aligned": data / "lfw" / "aligned112"}
    for root in roots.values():
        if not root.is_dir():
            raise CheckError(f"photo folder not found: {root}")
    pipelines = {
        "raw": Pipeline(
            bundle, aligned=False, strict=args.strict, detector=args.detector, score_threshold=args.min_score
        ),
        "aligned": Pipeline(bundle, aligned=True),
    }
    frontend = pipelines["raw"].frontend
    names = sorted({n for p in pairs for n in (p.a, p.b)})
    log(f"{len(pairs)} pairs, {len(names)} photos; bundle {bundle} ({frontend.manifest.method})")
    return frontend, {m: prepare(pipelines[m], roots[m], names, progress, f"{m}: edge") for m in MODES}


def server_side(args, frontend, prepared: dict, pairs: list[Pair], progress):
    """A local server for the bundle; both modes' pairs through it. Returns (server info, results, rpc)."""
    from ppfr.cloud.local import LocalServer, LocalServerError
    from ppfr.edge.client import Client, make_channel
    from ppfr.edge.errors import ServerError

    work = Path(args.out).parent / "work"
    far = ["--far", f"{args.far:g}"] if args.far is not None else []  # default: the manifest's FAR
    server = LocalServer(args.bundle, workdir=work, extra_args=["--max-delay-ms", "1.0", *far])
    log(f"starting the server: {' '.join(server.command())}")
    try:
        with server:
            address = server.address
            client = Client(make_channel(address), address, timeout=args.timeout, api_key=server.api_key)
            info = client.info()
            if info.frontend_id and info.frontend_id != frontend.frontend_id:
                raise CheckError(f"the server serves front-end {info.frontend_id[:12]}, not the bundle's", 1)
            results, rpc = {}, {}
            for mode in MODES:
                results[mode], rpc[mode] = verify_pairs(
                    client, frontend, prepared[mode]["crops"], pairs, mode, args.workers, progress
                )
            client.close()
    except LocalServerError as err:
        raise CheckError(f"the server did not start: {err}", 1) from None
    except ServerError as err:
        raise CheckError(f"{err} (server log: {server.log_path})", 1) from None
    return info, results, rpc


def photo_counts(photos: dict) -> dict:
    refused: dict[str, int] = {}
    for p in photos.values():
        if not p["accepted"]:
            refused[p["reason"]] = refused.get(p["reason"], 0) + 1
    accepted = sum(p["accepted"] for p in photos.values())
    return {
        "total": len(photos),
        "accepted": accepted,
        "accepted_rate": accepted / max(1, len(photos)),
        "several_faces": sum(p.get("faces_found", 0) > 1 for p in photos.values()),
        "refused_by_reason": refused,
        "refused": {n: p["error"] for n, p in photos.items() if not p["accepted"]},
    }


def check(args) -> dict:
    started = time.perf_counter()
    pairs_file = Path(args.data) / "lfw" / "raw250_pairs.tsv"
    pairs = choose(read_pairs(pairs_file), args.pairs)
    progress = Progress(not args.no_progress)
    frontend, prepared = edge_side(args, pairs, progress)
    info, results, rpc = server_side(args, frontend, prepared, pairs, progress)
    manifest = frontend.manifest
    summary = {
        "schema": "ppfr.raw_pairs.v1",
        "command": ["ppfr-bench", "raw-pairs", *args.argv],
        "bundle": str(args.bundle),
        "method": manifest.method,
        "frontend_id": frontend.frontend_id,
        "threshold": float(manifest.threshold.cosine),
        "server_threshold": float(info.threshold),
        "threshold_far": float(manifest.threshold.false_accept_rate),
        "server_far": float(info.false_accept_rate),
        "server_thresholds_by_templates": [float(t) for t in info.thresholds_by_templates],
        "threshold_set": manifest.threshold.evaluation_set or "its evaluation set",
        "pairs_file": str(pairs_file),
        "edge_settings": {"strict": args.strict, "min_score": args.min_score, "detector": str(args.detector)},
        "photos_raw": photo_counts(prepared["raw"]["photos"]),
        "photos_aligned_refused": {
            n: p["error"] for n, p in prepared["aligned"]["photos"].items() if not p["accepted"]
        },
        "raw": figures(pairs, results["raw"]),
        "aligned": figures(pairs, results["aligned"]),
        "seconds": {
            **{f"edge_{m}": prepared[m]["seconds"] for m in MODES},
            **{f"server_{m}": rpc[m]["seconds"] for m in MODES},
        },
        "pairs_detail": [
            {"a": p.a, "b": p.b, "same": p.same, "fold": p.fold, **{m: results[m][i] for m in MODES}}
            for i, p in enumerate(pairs)
        ],
    }
    summary["accuracy_difference_points"] = 100 * (
        summary["raw"]["accuracy"] - summary["aligned"]["accuracy"]
    )
    summary["wall_s"] = round(time.perf_counter() - started, 1)
    return summary


def parse_args(argv):
    from ppfr.edge.detect import DEFAULT_DETECTOR

    p = argparse.ArgumentParser(
        prog="ppfr-bench raw-pairs",
        description=__doc__.split("\n\n")[0],
        epilog="See docs/edge.md (Real photos). Exit status: 0 done, 1 server problem, 2 bad input.",
    )
    p.add_argument("--bundle", required=True, help="bundle folder written by ppfr-export (artifacts/NAME)")
    p.add_argument("--pairs", type=int, help="use N pairs (half genuine, half impostor) for a quick run")
    p.add_argument("--out", help="JSON file to write (default: runs/raw_pairs/<bundle name>.json)")
    p.add_argument(
        "--data", default=str(DATA), help=f"the shared data folder (default: {DATA})".replace("%", "%%")
    )
    p.add_argument("--workers", type=int, default=4, help="concurrent gRPC calls (default 4)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default 30)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--far",
        type=float,
        help="serve at this false accept rate (ppfr-cloud serve --far; the bundle needs thresholds at it; "
        "default: the manifest's)",
    )
    g = p.add_argument_group("edge settings (defaults: the edge's)")
    g.add_argument(
        "--strict", action="store_true", help="refuse photos with several faces (ppfr-edge --strict)"
    )
    g.add_argument("--detector", default=str(DEFAULT_DETECTOR), help="YuNet ONNX model")
    g.add_argument("--min-score", type=float, default=0.6, help="face detection score threshold (0.6)")
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error("--workers must be at least 1")
    args.argv = list(argv)
    if args.out is None:
        args.out = str(Path("runs") / "raw_pairs" / f"{Path(args.bundle).resolve().name}.json")
    return args


def main(argv=None) -> int:
    from ppfr.edge.errors import EdgeError

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    try:
        summary = check(args)
    except (CheckError, EdgeError) as err:
        print(f"ppfr-bench raw-pairs: error: {err}", file=sys.stderr)
        return err.exit_status
    except KeyboardInterrupt:
        print("ppfr-bench raw-pairs: interrupted; the server was stopped", file=sys.stderr)
        return 130
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary["out"] = str(out)
    out.write_text(json.dumps(summary, indent=1) + "\n")
    print(render(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
