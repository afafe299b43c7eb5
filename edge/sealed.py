"""Sealed templates on the edge (issue 27): the tenant's keys, and the sealed-edge pipeline.

The tenant (the deployer) holds the secret CKKS context on its devices; the server is given only the public
evaluation context. In sealed-edge mode the edge runs the `rgb` bundle's recognizer itself (the shared
ppfr.bundle runner: its "protected tensor" is the scaled face, which never leaves the device), encrypts the
embedding and sends only that ciphertext; it decrypts the server's encrypted scores and thresholds them,
at the bundle's threshold for the subject's template count, as the plain server does (ppfr.bundle.thresholds).

    ppfr-edge tenant keygen --out DIR     # DIR/tenant.secret (0600, never sent) + DIR/tenant.public
"""

import os
from pathlib import Path

import numpy as np
from ppfr.bundle import Bundle, BundleError, tenant
from ppfr.bundle.thresholds import Thresholds

from .errors import EdgeError

SECRET_FILE = "tenant.secret"
PUBLIC_FILE = "tenant.public"


def keygen(out_dir) -> dict:
    """Writes a new tenant's secret context (mode 0600, created exclusively: never overwrites a key) and
    its public evaluation context; returns what may be shown (paths, sizes, fingerprint), never key bytes."""
    out = Path(out_dir)
    secret_path, public_path = out / SECRET_FILE, out / PUBLIC_FILE
    for path in (secret_path, public_path):
        if path.exists():
            raise EdgeError(f"{path} exists: a tenant key is never overwritten (choose another --out)")
    try:
        secret, public = tenant.keygen()
        fingerprint = tenant.Tenant(public).fingerprint
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secret)
        public_path.write_bytes(public)
    except OSError as err:
        raise EdgeError(f"cannot write the tenant keys to {out}: {err.strerror or err}") from None
    return {
        "secret_context": str(secret_path),
        "public_context": str(public_path),
        "public_context_bytes": len(public),
        "fingerprint": fingerprint,
        "parameters": f"CKKS N={tenant.POLY_DEGREE} moduli {list(tenant.MODULI)} (128-bit)",
    }


def load_secret(path) -> tenant.Tenant:
    """The tenant's secret context; refused when others can read the file (as ssh refuses a key)."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        if mode & 0o077:
            raise EdgeError(f"{path} is readable by others (mode {mode & 0o777:o}): chmod 600 {path}")
        return tenant.Tenant(path.read_bytes(), secret=True)
    except OSError as err:
        raise EdgeError(f"cannot read the tenant secret context {path}: {err.strerror or err}") from None
    except tenant.SealedError as err:
        raise EdgeError(f"{path}: {err}") from None


class SealedEdge:
    """The rgb bundle's recognizer + the tenant's secret context: faces -> ciphertext bytes to send,
    encrypted scores received -> decisions. Nothing here talks to the network."""

    def __init__(self, bundle_dir, secret_path, threads: int = 0):
        try:
            self.bundle = Bundle(bundle_dir, threads)
            if self.bundle.method != "rgb":
                raise BundleError(
                    f"sealed edge runs an rgb bundle's recognizer on the device; {bundle_dir} is "
                    f"{self.bundle.method!r} (its recognizer expects protected tensors)"
                )
            self.bundle.recognizer  # noqa: B018 - open the session now: a broken bundle fails at start
        except BundleError as err:
            raise EdgeError(str(err)) from None
        self.tenant = load_secret(secret_path)
        self.thresholds = Thresholds.from_manifest(self.bundle.manifest)

    def embed(self, face_rgb: np.ndarray) -> np.ndarray:
        """One aligned 112x112 RGB face (uint8 HWC) -> its unit embedding, all on the device."""
        return self.bundle.embed(self.bundle.protect(face_rgb))[0]

    def seal(self, embedding: np.ndarray, query: bool) -> bytes:
        """The ciphertext to send: a template to enroll (level 0) or a query (level 1, smaller)."""
        return self.tenant.dump(self.tenant.encrypt(embedding, level=1 if query else 0))

    def threshold_for(self, templates: int, norm: bytes | None = None) -> float:
        """The threshold for a subject with `templates` templates; 0 (a server that does not say): one
        without |S|^2, else the one for the most templates (the highest: never laxer than asked)."""
        if not templates:
            templates = 1 if norm is None else len(self.thresholds.cosines)
        return self.thresholds.for_count(templates)

    def verify_result(self, score: bytes, norm: bytes | None, templates: int = 0) -> tuple[float, bool]:
        """(pooled cosine, match) from the server's encrypted q.S and |S|^2 (None: one template), matched
        at the threshold for the subject's template count."""
        try:
            qs = self.tenant.decrypt_bytes(score)[0]
            ss = 1.0 if norm is None else self.tenant.decrypt_bytes(norm)[0]
        except tenant.SealedError as err:
            raise EdgeError(f"the server's answer: {err}", 1) from None
        cosine = tenant.pooled(qs, ss)
        return cosine, cosine >= self.threshold_for(templates, norm)

    def identify_result(self, blocks: list[bytes], owners: list[list[str]], norms: dict, top_k: int):
        """Candidates (subject, pooled score, match), best first, from the server's encrypted per-template
        score blocks; owners[b][s] names the subject of slot s of block b ("" for a free slot); norms:
        decrypted |S|^2 of the subjects with several templates. Ranked as the plain server ranks."""
        sums: dict[str, float] = {}
        best: dict[str, float] = {}
        counts: dict[str, int] = {}  # the subject's templates: its slots
        for data, names in zip(blocks, owners):
            try:
                values = self.tenant.decrypt_bytes(data)
            except tenant.SealedError as err:
                raise EdgeError(f"the server's answer: {err}", 1) from None
            for s, name in enumerate(names):
                if name:
                    sums[name] = sums.get(name, 0.0) + values[s]
                    best[name] = max(best.get(name, -2.0), values[s])
                    counts[name] = counts.get(name, 0) + 1
        wide = sorted(best, key=lambda n: -best[n])[: max(4 * top_k, 16)]  # matrix.POOL_CANDIDATES
        scored = sorted(((n, tenant.pooled(sums[n], norms.get(n, 1.0))) for n in wide), key=lambda c: -c[1])
        return [(n, s, s >= self.threshold_for(counts[n])) for n, s in scored[:top_k]]


def sealed_request(args, pipeline, client, subject_id, image, item: dict) -> None:
    """One photo in sealed-edge mode (`ppfr-edge --tenant-secret FILE enroll|verify|identify`): detect and
    align, the rgb recognizer and encryption here, only the ciphertext sent; the answer decrypted here."""
    import time

    import cv2
    from ppfr.protos import verification_pb2 as pb

    edge = pipeline.sealed
    done = pipeline.prepare(image)
    item["timings_ms"].update(done.timings_ms)
    t0 = time.perf_counter()
    embedding = edge.embed(cv2.cvtColor(done.face_bgr, cv2.COLOR_BGR2RGB))
    sealed = pb.SealedEmbedding(ciphertext=edge.seal(embedding, query=args.command != "enroll"))
    t1 = time.perf_counter()
    item["timings_ms"]["recognize_and_encrypt"] = round((t1 - t0) * 1000, 3)
    item["payload_bytes"] = len(sealed.ciphertext)
    if args.command == "enroll":
        from .cli import enrolled

        item.update(enrolled(client._call("Enroll", pb.EnrollRequest(subject_id=subject_id, sealed=sealed))))
    elif args.command == "verify":
        r = client._call("Verify", pb.VerifyRequest(subject_id=subject_id, sealed=sealed))
        norm = r.sealed_norm or None
        score, match = edge.verify_result(r.sealed_score, norm, r.template_count)
        threshold = edge.threshold_for(r.template_count, norm)
        item.update(match=bool(match), score=round(score, 6), threshold=round(threshold, 6))
    else:
        r = client._call("Identify", pb.IdentifyRequest(sealed=sealed, top_k=args.top))
        norms = {s: edge.tenant.decrypt_bytes(n)[0] for s, n in r.sealed_norms.items()}
        owners = [list(b.slot_subjects) for b in r.sealed_blocks]
        found = edge.identify_result([b.ciphertext for b in r.sealed_blocks], owners, norms, args.top)
        item.update(
            threshold=round(edge.bundle.threshold, 6),  # the main one, as the plain server's Identify says
            candidates=[{"subject_id": n, "score": round(s, 6), "match": bool(m)} for n, s, m in found if m],
        )
    item["timings_ms"]["round_trip"] = round((time.perf_counter() - t1) * 1000, 3)
