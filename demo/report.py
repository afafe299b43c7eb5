"""The demo's report: what it printed for a person to read, and summary.json with every decision."""

import time
from pathlib import Path

import numpy as np


def percentiles(values) -> str:
    if not values:
        return "n/a"
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return f"p50 {p50:7.1f}  p90 {p90:7.1f}  p99 {p99:7.1f}  (n={len(values)})"


def shown(path: Path) -> str:
    """`path` relative to the working directory (the checkout) where it is inside it."""
    path, here = Path(path).resolve(), Path.cwd().resolve()
    return str(path.relative_to(here)) if path.is_relative_to(here) else str(path)


def share(part: int, whole: int) -> str:
    return f"{part:4d} / {whole:<4d} ({part / max(1, whole):.1%})"


def scores_of(records) -> np.ndarray:
    """The scores the server showed: absent (or 0.0) where it hides them from a key without the admin
    scope, as ppfr-edge leaves them out; the demo's own key is an admin key and sees them all."""
    return np.array([r["score"] for r in records if r.get("score")])


def best_split(g_scores, i_scores) -> tuple[float, float]:
    """(threshold, accuracy) that best separates these probes; chosen after the fact, for reference."""
    from ppfr.train.evaluate import best_threshold  # the one the 10-fold evaluation uses

    scores = np.concatenate([g_scores, i_scores])
    same = np.arange(len(scores)) < len(g_scores)
    t = best_threshold(scores, same)
    return t, float(np.mean((scores > t) == same))


def print_gallery(people, enrolled, bundle: Path, threshold: float) -> None:
    print("\n" + "=" * 78)
    print(f"ppfr demo - bundle {shown(bundle)}, verification threshold (cosine) {threshold:.3f}")
    n_raw = sum(p["raw"] for p in people)
    print(f"gallery: {len(people)} LFW identities, {sum(r['ok'] for r in enrolled)} templates enrolled")
    raw_probes = sum(len(p["probes"]) for p in people if p["raw"])
    print(f"         ({n_raw} identities from raw photos through YuNet + alignment, the rest from aligned")
    print(f"         crops; {raw_probes} of {sum(len(p['probes']) for p in people)} probes are raw photos)")


def print_verification(genuine, impostor, calibration: dict) -> dict:
    """Sample decisions and the verification figures; returns them for summary.json."""
    accepted = sum(r["match"] for r in genuine)
    rejected = sum(not r["match"] for r in impostor)
    accuracy = (accepted + rejected) / max(1, len(genuine) + len(impostor))
    g_scores, i_scores = scores_of(genuine), scores_of(impostor)
    both = len(g_scores) and len(i_scores)
    separation = float((g_scores[:, None] > i_scores[None, :]).mean()) if both else 0.0
    print("\nsample decisions (probe -> claimed identity: score, decision):")
    for r in genuine[:4] + impostor[:4]:
        verdict = "ACCEPT" if r["match"] else "reject"
        right = "correct" if r["match"] == (r["kind"] == "genuine") else "WRONG"
        name, claim = Path(r["image"]).name, r["subject_id"]
        score = f"{r['score']:6.3f}" if r.get("score") else "     -"
        print(f"  {r['kind']:8s} {name:34s} -> {claim:24s} {score} {verdict} ({right})")
    print("\nverification at the bundle's threshold:")
    print(f"  genuine probes accepted   {share(accepted, len(genuine))}")
    print(f"  impostor probes rejected  {share(rejected, len(impostor))}")
    print(f"  accuracy                  {accuracy:.1%}")
    if both:
        print(f"  mean score: genuine {g_scores.mean():.3f}, impostor {i_scores.mean():.3f}; a genuine score")
        print(f"  beats an impostor score in {separation:.1%} of (genuine, impostor) pairs")
        far, tar = calibration.get("falseAcceptRate"), calibration.get("trueAcceptRate")
        if far and tar is not None:
            print(f"  (the bundle's threshold is the FAR {far:g} operating point, where this model accepts")
            where = calibration.get("evaluationSet", "its evaluation set")
            print(f"  {tar:.1%} of genuine pairs on {where})")
        t, acc = best_split(g_scores, i_scores)
        print(f"  for reference, the threshold that best separates these probes ({t:.3f}, chosen after")
        print(f"  the fact, so optimistic) gives accuracy {acc:.1%}")
    return {
        "genuine_accepted": accepted,
        "genuine": len(genuine),
        "impostor_rejected": rejected,
        "impostor": len(impostor),
        "accuracy": accuracy,
        "pair_separation": separation,
    }


def print_identification(people, identified) -> dict:
    ranked = [r for r in identified if r["ok"] and r["candidates"]]
    rank1 = sum(r["candidates"][0]["subject_id"] == r["truth"] for r in ranked)
    asked = sum(r["ok"] for r in identified)
    print(f"identification 1:{len(people)} (Identify answers only candidates above the threshold):")
    print(f"  probes with a match       {share(len(ranked), asked)}")
    print(f"  top match the right person {share(rank1, len(ranked))}")
    return {"rank1_correct": rank1, "identified": len(ranked)}


def print_costs(results, started: float) -> dict:
    """Latency per stage, payload bytes and failures over every request."""
    done = [r for r in results if r["ok"]]
    payload = sorted({r["payload_bytes"] for r in done})
    print("\nlatency per image in ms (this machine; one ppfr-edge process per batch of images):")
    for stage in ("detect", "align", "protect", "round_trip"):
        values = [r["timings_ms"][stage] for r in done if stage in r["timings_ms"]]
        print(f"  {stage.replace('_', ' '):11s} {percentiles(values)}")
    print(f"  {'edge total':11s} {percentiles([sum(r['timings_ms'].values()) for r in done])}")
    sizes = ", ".join(f"{b:,} B" for b in payload)
    if len(payload) > 3:  # ciphertexts (sealed edge) vary by a few bytes
        sizes = f"{min(payload):,}-{max(payload):,} B"
    print(f"payload per query: {sizes} (what the edge sends; no image leaves the edge)")
    print(f"failed requests: {len(results) - len(done)}")
    print(f"demo wall time: {time.monotonic() - started:.0f} s")
    print("=" * 78)
    return {"payload_bytes": payload, "failed": len(results) - len(done)}


def report(people, enrolled, verified, identified, calibration: dict, started: float, bundle: Path) -> dict:
    """Prints the report; returns summary.json's content (every verification decision listed)."""
    threshold = calibration.get("cosine", 0.0)
    genuine = [r for r in verified if r["ok"] and r["kind"] == "genuine"]
    impostor = [r for r in verified if r["ok"] and r["kind"] == "impostor"]
    print_gallery(people, enrolled, bundle, threshold)
    summary = {"bundle": shown(bundle), "threshold": threshold, "identities": len(people)}
    summary |= print_verification(genuine, impostor, calibration)
    summary |= print_identification(people, identified)
    summary |= print_costs(enrolled + verified + identified, started)
    summary["wall_s"] = round(time.monotonic() - started, 1)
    keys = ("kind", "image", "subject_id", "score", "match")
    summary["decisions"] = [{k: r[k] for k in keys if k in r} for r in genuine + impostor]
    return summary
