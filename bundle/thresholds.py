"""The threshold a subject's pooled score must reach, by how many templates the subject has: the plain
server (ppfr.cloud) and the sealed edge (ppfr.edge.sealed, which decrypts the scores) pick with it.

A subject's score is the cosine to the mean of its templates (cloud/matrix.py), and pooling raises every
score, impostors' too, so one threshold cannot hold the same false accept rate for subjects enrolled from
one photo and from three. A bundle therefore carries the FAR point for subjects with 1, 2 and 3+
templates (the manifest's `thresholds_by_templates`: ppfr-export on LFW through the exported graphs, or
`ppfr-edge calibrate` on the site's own photos; both through ppfr.bundle.calibration), at a few false
accept rates (`ppfr-cloud serve --far` picks one; default the FAR of the manifest's `threshold`); a bundle
without them has its one `threshold` applied to every subject, as before.
"""

import math
from dataclasses import dataclass


class ThresholdError(ValueError):
    """The bundle has no thresholds at the false accept rate asked for (one line for the operator)."""


@dataclass(frozen=True)
class Thresholds:
    cosines: tuple[float, ...]  # [i]: subjects with i + 1 templates; the last also covers more
    far: float

    @classmethod
    def from_manifest(cls, manifest, far: float | None = None) -> "Thresholds":
        """The entries at `far` (default: the FAR of the manifest's `threshold`); ThresholdError when a
        `far` is asked for that the bundle was not calibrated at."""
        main = manifest.threshold
        want = main.false_accept_rate if far is None else far
        entries = sorted(
            (
                e
                for e in manifest.thresholds_by_templates
                if math.isclose(e.threshold.false_accept_rate, want)
            ),
            key=lambda e: e.templates,
        )
        if entries and [e.templates for e in entries] == list(range(1, len(entries) + 1)):
            return cls(tuple(float(e.threshold.cosine) for e in entries), float(want))
        if far is None or math.isclose(far, main.false_accept_rate):
            return cls((float(main.cosine),), float(main.false_accept_rate))
        have = sorted({e.threshold.false_accept_rate for e in manifest.thresholds_by_templates})
        raise ThresholdError(
            f"--far {far:g}: the bundle has thresholds at FAR {', '.join(f'{f:g}' for f in have) or 'none'}; "
            f"`ppfr-edge calibrate BUNDLE --photos DIR --far {far:g}` sets them from the site's photos "
            "(`ppfr-export calibrate` from aligned crops)"
        )

    def for_count(self, templates: int) -> float:
        """The threshold for a subject with `templates` templates."""
        return self.cosines[min(max(templates, 1), len(self.cosines)) - 1]
