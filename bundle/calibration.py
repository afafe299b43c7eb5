"""Verification thresholds from embeddings, scored as the server scores them, and written into a bundle.

The server scores a probe against a subject by the cosine to the mean of the subject's templates
(cloud/matrix.py, pooled_score), so the false accept rate of a threshold depends on how many templates a
subject has: `pooled_point` gives the FAR point for subjects enrolled from K photos, `entries` for 1, 2
and 3+ (the manifest's `thresholds_by_templates`, from which `ppfr-cloud serve` picks by the subject's
template count). One implementation for every caller: export on LFW through the exported graphs
(export/evaluation.py), `ppfr-export calibrate` on a site's aligned crops, `ppfr-edge calibrate` on a
site's raw photos (detected and aligned by the edge's own pipeline).

Embeddings come per person as [photos, draws, D]: each photo protected `draws` times with fresh random
inputs, because the server sees a fresh draw per request; draw d of the templates meets draw d+1 of the
probes, so no attempt reuses the template's own draw.
"""

import math
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from ppfr.protos import manifest_pb2

from .manifest import MANIFEST, read_manifest, write_manifest

TEMPLATE_COUNTS = (1, 2, 3)  # thresholds for subjects with 1, 2 and 3+ templates
PROBES = 2  # photos per person used as probes, after its templates
PHOTOS = TEMPLATE_COUNTS[-1] + PROBES  # photos per person a calibration uses at most (the first ones)
IMAGES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


class CalibrationError(ValueError):
    """Too little data to calibrate on, or a folder that is not one sub-folder per person (one line)."""


def add_options(parser, photos: str) -> None:
    """The options `ppfr-edge calibrate` and `ppfr-export calibrate` share; `photos` says what a person's
    folder holds."""
    parser.add_argument("bundle", type=Path, help="bundle folder written by ppfr-export (artifacts/NAME)")
    parser.add_argument("--photos", type=Path, required=True, help=f"one sub-folder of {photos} per person")
    parser.add_argument("--far", type=float, default=1e-3, help="false accept rate to calibrate at (1e-3)")
    parser.add_argument(
        "--enrolled-photos",
        type=int,
        default=3,
        choices=TEMPLATE_COUNTS,
        help="photos a subject is enrolled from: picks the manifest's main `threshold` (default 3)",
    )
    parser.add_argument("--draws", type=int, default=3, help="fresh random draws per face (default 3)")


def people_of(folder) -> dict[str, list[Path]]:
    """A site's photo folder: per person (sub-folder, sorted by name) its image files (sorted by name); a
    calibration uses the first PHOTOS of them that give a face."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CalibrationError(f"--photos {folder}: not a folder (one sub-folder of photos per person)")
    people = {
        person.name: sorted(p for p in person.iterdir() if p.is_file() and p.suffix.lower() in IMAGES)
        for person in sorted(folder.iterdir())
        if person.is_dir()
    }
    return {name: photos for name, photos in people.items() if photos}


def pooled_point(people: list[np.ndarray], enrolled: int, far: float, where: str = "the photos") -> dict:
    """The FAR `far` point of attempts against subjects enrolled from `enrolled` photos, pooled.

    `people`: per person, L2-normalised embeddings [photos, draws, D]. A person with at least `enrolled`
    photos is a subject (the mean of its first `enrolled`); the next PROBES photos are its genuine probes
    and, like the first PROBES photos of people with fewer photos, impostor attempts against every other
    subject. Needs at least 2 people with more than `enrolled` photos. "Match iff cosine >= threshold":
    at most a fraction `far` of the impostor attempts reach it."""
    if sum(len(p) > enrolled for p in people) < 2:
        raise CalibrationError(
            f"{where}: fewer than 2 people with more than {enrolled} photo(s) of a face: the threshold for "
            f"subjects with {enrolled} template(s) needs them (add people or photos)"
        )
    means, probes, owner = [], [], []
    for person in people:
        first = enrolled if len(person) >= enrolled else 0  # a subject's templates, or none
        if first:
            means.append(person[:first].mean(0))
        probes.append(person[first : first + PROBES])
        owner += [len(means) - 1 if first else -1] * len(probes[-1])
    subjects = np.stack(means, 1)  # [draws, subjects, D]
    subjects /= np.maximum(np.linalg.norm(subjects, axis=2, keepdims=True), 1e-12)
    probes = np.concatenate(probes).transpose(1, 0, 2)  # [draws, probes, D]
    mine = np.array(owner)[:, None] == np.arange(subjects.shape[1])[None, :]
    draws = subjects.shape[0]
    scores = [probes[(d + 1) % draws] @ subjects[d].T for d in range(draws)]
    genuine = np.concatenate([s[mine] for s in scores])
    impostor = np.concatenate([s[~mine] for s in scores])
    cosine = float(np.nextafter(np.quantile(impostor, 1 - far), np.inf))
    return {
        "cosine": cosine,
        "far": far,
        "tar": float(np.mean(genuine >= cosine)),
        "num_pairs": int(genuine.size + impostor.size),
        "subjects": subjects.shape[1],
        "genuine": int(genuine.size),
        "impostor": int(impostor.size),
        "draws": draws,
    }


def entries(people: list[np.ndarray], fars, where: str = "the photos") -> list[dict]:
    """`pooled_point` for subjects with 1, 2 and 3+ templates at each of `fars`, each with `templates`."""
    people = [np.asarray(p, np.float32) for p in people]
    return [{**pooled_point(people, k, far, where), "templates": k} for far in fars for k in TEMPLATE_COUNTS]


def rough(entry: dict) -> str | None:
    """A warning when too few impostor attempts lie above the threshold for it to be more than rough."""
    expected = entry["impostor"] * entry["far"]
    if expected >= 10:
        return None
    return (
        f"warning: {entry['impostor']} impostor attempts put only {expected:.1f} above a FAR "
        f"{entry['far']:g} threshold: it is rough; add people or choose a larger FAR"
    )


def describe(entry: dict) -> str:
    """One line per entry, as the calibration commands print it."""
    plus = "+" if entry["templates"] == TEMPLATE_COUNTS[-1] else ""
    return (
        f"subjects with {entry['templates']}{plus} template(s): threshold {entry['cosine']:.4f} at FAR "
        f"{entry['far']:g}, TAR {entry['tar']:.2%} ({entry['subjects']} subjects, {entry['genuine']} "
        f"genuine and {entry['impostor']} impostor attempts, {entry['draws']} draw(s) per photo)"
    )


def print_entries(found: list[dict]) -> None:
    """Each entry's line on stdout; under it, on stderr, the warning of a rough one."""
    for e in found:
        print(describe(e))
        warning = rough(e)
        if warning:
            print(f"  {warning}", file=sys.stderr)


def threshold_message(entry: dict) -> manifest_pb2.VerificationThreshold:
    """An entry (with its evaluation `set` and the single pairs' `accuracy`) as the manifest's message."""
    return manifest_pb2.VerificationThreshold(
        cosine=entry["cosine"],
        false_accept_rate=entry["far"],
        evaluation_set=entry["set"],
        num_pairs=entry["num_pairs"],
        accuracy=entry.get("accuracy", 0.0),
        true_accept_rate=entry["tar"],
    )


def write(bundle_dir, found: list[dict], enrolled: int, where: str) -> manifest_pb2.BundleManifest:
    """Every entry into `thresholds_by_templates` (replacing the old ones) and the one for `enrolled`
    templates into `threshold`; the manifest is replaced atomically (a server starting meanwhile reads
    the old or the new one, never half of it). Keeps the manifest's single-pair accuracy figure."""
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    accuracy = manifest.threshold.accuracy  # LFW pairs' figure: pooling defines none
    chosen = next(e for e in found if e["templates"] == min(enrolled, TEMPLATE_COUNTS[-1]))
    for e in found:
        e["accuracy"] = accuracy
        e["set"] = (
            f"{where}: {e['subjects']} subjects enrolled from {e['templates']} photos each, scored pooled "
            f"as the server does; {e['genuine']} genuine and {e['impostor']} impostor attempts, "
            f"{e['draws']} draw(s) per photo, the bundle's graphs"
        )
    manifest.threshold.CopyFrom(threshold_message(chosen))
    del manifest.thresholds_by_templates[:]
    for e in found:
        manifest.thresholds_by_templates.add(templates=e["templates"], threshold=threshold_message(e))
    with tempfile.TemporaryDirectory(dir=bundle_dir, prefix=".calibrate-") as tmp:
        os.replace(write_manifest(manifest, tmp), bundle_dir / MANIFEST)
    return manifest


def check_options(args) -> None:
    """The shared options (add_options) a calibration can run with, or one line why not."""
    if not (0 < args.far < 1) or math.isnan(args.far):
        raise CalibrationError(f"--far must be between 0 and 1, not {args.far:g}")
    if not 1 <= args.draws <= 16:
        raise CalibrationError(f"--draws must be between 1 and 16, not {args.draws}")


def embed_draws(bundle, faces: np.ndarray, draws: int) -> np.ndarray:
    """[faces, draws, D]: each face protected `draws` times with fresh random inputs, then embedded."""
    return np.stack([bundle.embed(bundle.protect(faces)) for _ in range(draws)], 1)
