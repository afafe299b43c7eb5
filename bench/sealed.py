"""ppfr-bench sealed: what sealed templates (issue 27, ppfr.bundle.tenant) cost and change, measured here.

    ppfr-bench sealed [--bundle DIR] [--sizes 1000,10000,100000] [--out runs/bench-sealed]

- sizes: contexts, a template at rest, a query, Verify and Identify answers, storage per template;
- edge: the recognizer (the bundle's, one face), encrypting a template / query, decrypting an answer;
- server: Verify (ciphertext x ciphertext for sealed edge, x plaintext for sealed gallery, beside the plain
  dot product), putting one template into a packed block (an Enroll), Identify p50 at each size with an
  encrypted query (sealed edge) and a plaintext one (sealed gallery), and the largest gallery within 1 s;
- accuracy: every LFW View-2 pair (6,000) scored plain and sealed (both modes), decisions at the bundle's
  threshold, the largest score difference;
- database thief: nearest neighbour between two photos' ciphertexts of the same people (byte distance),
  against the same on plaintext embeddings, with chance.
Timings are p50 of repeated single-threaded calls (SEAL runs on one core) on this machine under its load.
"""

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from .machine import describe, load_average
from .stats import summarize


def _p50(fn, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return summarize(samples)["p50_ms"]


def _unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def lfw_embeddings(bundle_dir: Path, log, cache: Path | None = None):
    """Unit embeddings of every LFW View-2 pair image through the bundle (reproducible draws); `cache`:
    an .npz of them (names, emb) reused when present, written otherwise."""
    from ppfr import data
    from ppfr.bundle import Bundle, Seeded

    root = data.data_root()
    pairs, same, fold = data.lfw_pairs(root)
    names = sorted({n for p in pairs for n in p})
    b = Bundle(bundle_dir, threads=1)
    if cache is not None and cache.is_file():
        z = np.load(cache)
        names, emb = list(z["names"]), z["emb"].astype(np.float64)
        log(f"LFW embeddings from {cache}")
    else:
        rng, out = Seeded(0), []
        for i in range(0, len(names), 64):
            faces = data.read_faces(root / "lfw" / "aligned112" / n for n in names[i : i + 64])
            out.append(b.embed(b.protect(faces, rng)))
            if i % 1280 == 0:
                log(f"embedded {i}/{len(names)} LFW faces")
        emb = np.concatenate(out).astype(np.float64)
        if cache is not None:
            np.savez(cache, names=np.array(names), emb=emb)
    index = {n: i for i, n in enumerate(names)}
    a = emb[[index[x] for x, _ in pairs]]
    c = emb[[index[y] for _, y in pairs]]
    return a, c, np.asarray(same, bool), np.asarray(fold), b


def accuracy(tn, edge, server, pairs, threshold: float) -> dict:
    """All pairs plain and sealed: 32 pairs per ciphertext (pair j in slots 128j..128j+127), scored as the
    server would: ciphertext x ciphertext (sealed edge) and ciphertext x plaintext (sealed gallery)."""
    a, c, same, fold = pairs
    per = tn.SLOTS // tn.DIM
    plain = np.einsum("ij,ij->i", _unit(a), _unit(c))
    sealed_edge, sealed_gallery = [], []
    for i in range(0, len(a), per):
        x, y = np.zeros((per, tn.DIM)), np.zeros((per, tn.DIM))
        x[: len(a[i : i + per])], y[: len(c[i : i + per])] = _unit(a[i : i + per]), _unit(c[i : i + per])
        stored = edge.load(edge.dump(edge.encrypt_slots(x)), level=0)
        query = edge.load(edge.dump(edge.encrypt_slots(y, level=1)), level=1)
        n = len(a[i : i + per])
        sealed_edge.append(edge.decrypt(server.dot(query, stored))[:: tn.DIM][:n])
        sealed_gallery.append(edge.decrypt(server.dot_plain(stored, y))[:: tn.DIM][:n])
    result = {
        "pairs": int(len(a)),
        "threshold": threshold,
        "plain_accuracy_at_threshold": _acc(plain, same, threshold),
        "plain_10fold_accuracy": ten_fold(plain, same, fold),
    }
    for name, scores in (("sealed_edge", sealed_edge), ("sealed_gallery", sealed_gallery)):
        s = np.concatenate(scores)
        result[name] = {
            "max_abs_score_difference": float(np.abs(s - plain).max()),
            "decisions_changed": int(((s >= threshold) != (plain >= threshold)).sum()),
            "accuracy_at_threshold": _acc(s, same, threshold),
            "10fold_accuracy": ten_fold(s, same, fold),
        }
    return result


def _acc(scores, same, threshold) -> float:
    return round(float(((scores >= threshold) == same).mean()) * 100, 3)


def ten_fold(scores, same, folds) -> float:
    """LFW's 10-fold accuracy (%): per fold, the threshold that is best on the other nine (as
    train/evaluate.kfold_accuracy, which needs torch; this bench must not)."""
    accs = []
    for k in np.unique(folds):
        test = folds == k
        s, y = scores[~test], same[~test]
        cands = np.sort(s)
        best = max(cands, key=lambda t: ((s > t) == y).mean())
        accs.append(((scores[test] > best) == same[test]).mean())
    return round(float(np.mean(accs)) * 100, 3)


def sizes(tn, edge, server, public: bytes, secret: bytes) -> dict:
    rng = np.random.default_rng(1)
    x = _unit(rng.standard_normal(tn.DIM))
    template = edge.dump(edge.encrypt(x))
    query = edge.dump(edge.encrypt(x, level=1))
    stored = server.load(template)
    score = server.dump(server.dot(server.load(query), stored))
    block = tn.encrypt_block(server, _unit(rng.standard_normal((64, tn.DIM))))
    block_bytes = sum(len(server.dump(d)) for d in block.diags)
    scores = server.dump(block.scores(tn.query_babies(server, server.load(query)), plain=False))
    return {
        "public_context_bytes": len(public),
        "secret_context_bytes": len(secret),
        "template_ciphertext_bytes": len(template),
        "query_ciphertext_bytes": len(query),
        "verify_answer_bytes": len(score),
        "verify_answer_pooled_bytes": 2 * len(score),
        "identify_answer_bytes_per_4096_templates": len(scores),
        "packed_block_bytes": block_bytes,
        "storage_per_template_bytes": len(template) + math.ceil(block_bytes / tn.SLOTS),
        "plain_template_bytes": tn.DIM * 4,
    }


def edge_costs(tn, edge, server, bundle, repeat: int) -> dict:
    from ppfr import data

    face = data.lfw_faces(data.data_root(), 1)
    x = _unit(bundle.embed(bundle.protect(face))[0])
    answer = server.dump(server.dot(server.encrypt(x, level=1), server.encrypt(x)))
    return {
        "recognizer_ms": _p50(lambda: bundle.embed(bundle.protect(face)), repeat),
        "recognizer_bundle": bundle.name,
        "encrypt_template_ms": _p50(lambda: edge.dump(edge.encrypt(x)), repeat),
        "encrypt_query_ms": _p50(lambda: edge.dump(edge.encrypt(x, level=1)), repeat),
        "decrypt_answer_ms": _p50(lambda: edge.decrypt_bytes(answer), repeat),
    }


def server_costs(tn, edge, server, repeat: int) -> dict:
    rng = np.random.default_rng(2)
    x, q = _unit(rng.standard_normal((2, tn.DIM)))
    stored = server.load(edge.dump(edge.encrypt(x)))
    query_bytes = edge.dump(edge.encrypt(q, level=1))
    block = tn.PackedBlock(server)
    slots = iter(range(tn.SLOTS))
    return {
        "verify_plain_dot_ms": _p50(lambda: x.astype(np.float32) @ q.astype(np.float32), repeat),
        "verify_sealed_edge_ms": _p50(
            lambda: server.dump(server.dot(server.load(query_bytes), stored)), repeat
        ),
        "verify_sealed_gallery_ms": _p50(lambda: server.dump(server.dot_plain(stored, q)), repeat),
        "sealed_gallery_encrypt_template_ms": _p50(lambda: server.dump(server.encrypt(x)), repeat),
        "pooled_norm_ms": _p50(lambda: server.dump(server.dot(stored, stored)), repeat),
        "enroll_put_into_packed_block_ms": _p50(lambda: block.put(next(slots), stored), max(2, repeat // 3)),
    }


def identify(tn, edge, server, counts: list[int], repeat: int, log) -> dict:
    """Identify p50 per gallery size: ceil(N / 4096) packed blocks (encrypted from random unit templates:
    the time does not depend on the values), one encrypted and one plaintext query."""
    rng = np.random.default_rng(3)
    q = _unit(rng.standard_normal(tn.DIM))
    query = server.load(edge.dump(edge.encrypt(q, level=1)))
    blocks, rows = [], {}
    for n in sorted(counts):
        while len(blocks) * tn.SLOTS < n:
            blocks.append(tn.encrypt_block(server, _unit(rng.standard_normal((tn.SLOTS, tn.DIM)))))
        k = math.ceil(n / tn.SLOTS)

        def encrypted(k=k):
            babies = tn.query_babies(server, query)
            return [server.dump(b.scores(babies, plain=False)) for b in blocks[:k]]

        def plaintext(k=k):
            babies = tn.query_babies(server, q, plain=True)
            return [server.dump(b.scores(babies, plain=True)) for b in blocks[:k]]

        reps = repeat if k < 8 else 3
        rows[n] = {
            "blocks": k,
            "sealed_edge_p50_ms": _p50(encrypted, reps),
            "sealed_gallery_p50_ms": _p50(plaintext, reps),
        }
        log(f"identify {n}: {rows[n]}")
    return rows


def within_one_second(rows: dict, slots: int) -> dict:
    """The largest gallery answering within 1 s, from the per-block cost of the largest size measured
    (a query's cost is fixed setup + blocks x per-block cost)."""
    out = {}
    sizes_ = sorted(rows)
    lo, hi = rows[sizes_[0]], rows[sizes_[-1]]
    for mode in ("sealed_edge_p50_ms", "sealed_gallery_p50_ms"):
        per_block = (hi[mode] - lo[mode]) / max(hi["blocks"] - lo["blocks"], 1)
        setup = max(lo[mode] - per_block * lo["blocks"], 0.0)
        blocks = int((1000.0 - setup) // per_block) if per_block > 0 else 0
        out[mode.replace("_p50_ms", "")] = {
            "per_block_ms": round(per_block, 1),
            "setup_ms": round(setup, 1),
            "templates": max(blocks, 0) * slots,
        }
    return out


def thief_linkage(tn, edge, a, c, same, people: int = 200) -> dict:
    """A database thief holds two galleries' templates of the same people (pair photos a, c of `people`
    same-person pairs): rank-1 of nearest neighbour on the ciphertext bytes (L1 distance of byte
    histograms and of the raw bytes' first 64 KB) and, for comparison, on plaintext embeddings."""
    idx = np.flatnonzero(same)[:people]
    ga = [np.frombuffer(edge.dump(edge.encrypt(_unit(a[i]))), np.uint8) for i in idx]
    gc = [np.frombuffer(edge.dump(edge.encrypt(_unit(c[i]))), np.uint8) for i in idx]
    m = min(min(len(x) for x in ga + gc), 1 << 16)
    raw_a = np.stack([x[:m] for x in ga]).astype(np.int16)
    raw_c = np.stack([x[:m] for x in gc]).astype(np.int16)
    hist_a = np.stack([np.bincount(x, minlength=256) for x in ga]).astype(np.float64)
    hist_c = np.stack([np.bincount(x, minlength=256) for x in gc]).astype(np.float64)
    raw = np.stack([np.abs(raw_c - r).sum(1) for r in raw_a])  # [gallery a, probe c]
    hist = np.abs(hist_a[:, None] - hist_c[None]).sum(-1)
    cos = _unit(a[idx]) @ _unit(c[idx]).T
    truth = np.arange(len(idx))
    return {
        "people": int(len(idx)),
        "chance_rank1_percent": round(100 / len(idx), 3),
        "ciphertext_bytes_rank1_percent": round(float((raw.argmin(0) == truth).mean()) * 100, 3),
        "ciphertext_histogram_rank1_percent": round(float((hist.argmin(0) == truth).mean()) * 100, 3),
        "plaintext_embedding_rank1_percent": round(float((cos.argmax(0) == truth).mean()) * 100, 3),
    }


def raw_demo(bundle_dir: Path, identities: int, log) -> dict:
    """Sealed edge from raw photos over the wire: make demo's people (ppfr.demo.cli: 3 photos enrolled, up
    to 2 probes, each probe genuine and against the next person), the edge's detection, alignment and the
    rgb recognizer, ciphertexts to a real `ppfr-cloud serve --sealed sealed-edge` (LocalServer: its own
    process, loopback gRPC, API key), decisions decrypted on the edge; beside them the plain rule
    (cloud/matrix.py) on the same embeddings. Verify end to end: photo -> ciphertext -> RPC -> decision."""
    import tempfile

    import cv2
    import grpc
    from ppfr.cloud.local import LocalServer
    from ppfr.cloud.matrix import TemplateMatrix
    from ppfr.demo.cli import choose_people, verify_rows
    from ppfr.edge.pipeline import Pipeline
    from ppfr.edge.sealed import SealedEdge, keygen
    from ppfr.protos import verification_pb2 as pb
    from ppfr.protos import verification_pb2_grpc

    tmp = Path(tempfile.mkdtemp(prefix="ppfr-sealed-demo-"))
    keygen(tmp / "keys")
    edge = SealedEdge(bundle_dir, tmp / "keys" / "tenant.secret", threads=1)
    pipeline, plain = Pipeline(bundle_dir), TemplateMatrix(128)

    def sealed(photo, query):
        face = pipeline.prepare(photo).face_bgr
        e = edge.embed(cv2.cvtColor(face, cv2.COLOR_BGR2RGB))
        return e, pb.SealedEmbedding(ciphertext=edge.seal(e, query=query))

    args = [
        "--sealed",
        "sealed-edge",
        "--tenant-context",
        str(tmp / "keys" / "tenant.public"),
        "--threads",
        "1",
    ]
    people = choose_people(identities)
    counts = {"genuine": 0, "genuine_accepted": 0, "impostor": 0, "impostor_rejected": 0, "same_as_plain": 0}
    times = []
    with LocalServer(bundle_dir, workdir=tmp / "server", extra_args=args) as server:
        with grpc.insecure_channel(server.address) as channel:
            stub = verification_pb2_grpc.FaceVerificationStub(channel)
            for n, p in enumerate(people):
                for k, photo in enumerate(p["gallery"]):
                    e, ct = sealed(photo, False)
                    stub.Enroll(pb.EnrollRequest(subject_id=p["id"], sealed=ct), metadata=server.metadata)
                    plain.add(p["id"], 10 * n + k, e.astype(np.float32))
            log(f"demo: enrolled {len(people)} people over gRPC")
            for subject, photo, kind in verify_rows(people, [p["id"] for p in people]):
                t0 = time.perf_counter()
                e, ct = sealed(photo, True)
                r = stub.Verify(pb.VerifyRequest(subject_id=subject, sealed=ct), metadata=server.metadata)
                score, match = edge.verify_result(r.sealed_score, r.sealed_norm or None)
                times.append((time.perf_counter() - t0) * 1e3)
                genuine = kind["kind"] == "genuine"
                counts["genuine" if genuine else "impostor"] += 1
                counts["genuine_accepted" if genuine else "impostor_rejected"] += match == genuine
                counts["same_as_plain"] += match == (
                    plain.verify(subject, e.astype(np.float32)) >= edge.threshold
                )
    return {
        "identities": len(people),
        "threshold": edge.threshold,
        **counts,
        "verify_end_to_end": summarize(times),
    }


def _pgserver_url(folder: Path) -> tuple[str, object]:
    """A throwaway PostgreSQL (PyPI pgserver, as the tests use) and a fresh database in it."""
    import uuid
    import warnings

    import psycopg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver
    server = pgserver.get_server(folder, cleanup_mode="stop")
    name = f"sealed_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return server.get_uri(name), server


def postgres_identify(tn, edge, public: bytes, url: str, n: int, repeat: int, log) -> dict:
    """Sealed edge on PostgreSQL with two replicas (cloud/sealed_postgres.py): `n` templates enrolled on A;
    Identify on B: the first (puts all n into B's block), steady p50 (the change-log query + one block),
    after one enroll on A (one put), after a delete on A (B reloads the block's snapshot); a third
    replica's open (snapshots read back); beside the SQLite store's Identify p50 on the same templates."""
    import tempfile

    from ppfr.cloud.sealed import SealedGallery
    from ppfr.cloud.sealed_postgres import SealedPostgresGallery

    rng = np.random.default_rng(5)
    cts = [edge.dump(edge.encrypt(_unit(rng.standard_normal(tn.DIM)))) for _ in range(n + 1)]
    query = edge.dump(edge.encrypt(_unit(rng.standard_normal(tn.DIM)), level=1))
    a, b = (SealedPostgresGallery(url, public, "sealed-edge") for _ in range(2))
    lite = SealedGallery(Path(tempfile.mkdtemp()) / "g.sqlite", public, "sealed-edge")
    t0 = time.perf_counter()
    ids = [a.enroll(f"s{i}", a.template(sealed=c))[0] for i, c in enumerate(cts[:n])]
    out = {"templates": n, "enroll_ms_each": round((time.perf_counter() - t0) * 1e3 / n, 1)}
    for i, c in enumerate(cts[:n]):
        lite.enroll(f"s{i}", lite.template(sealed=c))

    def timed(fn) -> float:
        t = time.perf_counter()
        fn()
        return round((time.perf_counter() - t) * 1e3, 1)

    q = b.query(sealed=query)
    out["first_identify_on_b_ms"] = timed(lambda: b.identify(q))
    out["identify_p50_ms"] = _p50(lambda: b.identify(q), repeat)
    out["sqlite_identify_p50_ms"] = _p50(lambda: lite.identify(lite.query(sealed=query)), repeat)
    a.enroll("late", a.template(sealed=cts[n]))
    out["identify_after_one_enroll_elsewhere_ms"] = timed(lambda: b.identify(q))
    a.delete_template(ids[0])
    out["identify_after_a_delete_elsewhere_ms"] = timed(lambda: b.identify(q))
    for g in (a, b, lite):
        g.close()
    t = time.perf_counter()
    c = SealedPostgresGallery(url, public, "sealed-edge")
    out["open_third_replica_ms"] = round((time.perf_counter() - t) * 1e3, 1)
    out["identify_on_third_ms"] = timed(lambda: c.identify(c.query(sealed=query)))
    c.close()
    log(f"postgres identify {out}")
    return out


def parse_args(argv):
    p = argparse.ArgumentParser(prog="ppfr-bench sealed", description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default="artifacts/dlib_ppfr_fd", help="bundle whose embeddings are scored")
    p.add_argument("--sizes", default="1000,10000,100000", help="Identify gallery sizes")
    p.add_argument("--repeat", type=int, default=7, help="timed calls per figure (default 7)")
    p.add_argument("--embeddings", type=Path, help="cache of the bundle's LFW embeddings (.npz)")
    p.add_argument("--pairs", type=int, default=0, help="LFW pairs (default all 6,000)")
    p.add_argument(
        "--demo", type=int, default=0, help="also: sealed edge from raw photos, N identities (rgb bundle)"
    )
    p.add_argument(
        "--postgres",
        help="also: Identify on a PostgreSQL sealed gallery with two replicas: a postgresql:// URL, or "
        "'pgserver' for a throwaway local one",
    )
    p.add_argument("--postgres-templates", type=int, default=64, help="templates for --postgres (64)")
    p.add_argument("--only-postgres", action="store_true", help="skip the other figures (with --postgres)")
    p.add_argument("--out", default="runs/bench-sealed", help="output folder (sealed.json)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from ppfr.bundle import tenant as tn

    t0 = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", flush=True)

    secret, public = tn.keygen()
    edge, server = tn.Tenant(secret, secret=True), tn.Tenant(public)
    result = {"machine": describe(), "load_average_start": load_average()}
    result["parameters"] = {"poly_degree": tn.POLY_DEGREE, "moduli": list(tn.MODULI), "scale_bits": 40}
    if not args.only_postgres:
        _figures(args, tn, edge, server, public, secret, result, log)
    if args.postgres:
        result["postgres_identify"] = _postgres(args, tn, edge, public, log)
    result["load_average_end"] = load_average()
    result["seconds"] = round(time.perf_counter() - t0, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sealed.json").write_text(json.dumps(result, indent=2))
    log(f"within 1 s: {result.get('identify_within_1s')}; wrote {out / 'sealed.json'}")
    return 0


def _postgres(args, tn, edge, public: bytes, log) -> dict:
    import shutil
    import tempfile

    url, server, folder = args.postgres, None, None
    if url == "pgserver":
        folder = Path(tempfile.mkdtemp(prefix="ppfr-bench-pg-"))
        url, server = _pgserver_url(folder / "data")
    try:
        return postgres_identify(tn, edge, public, url, args.postgres_templates, args.repeat, log)
    finally:
        if server is not None:
            server.cleanup()
            shutil.rmtree(folder, ignore_errors=True)


def _figures(args, tn, edge, server, public, secret, result, log) -> None:
    result["sizes"] = sizes(tn, edge, server, public, secret)
    log(f"sizes {result['sizes']}")
    a, c, same, fold, bundle = lfw_embeddings(Path(args.bundle), log, args.embeddings)
    if args.pairs:  # every k-th pair: every fold keeps its same- and different-person pairs
        keep = np.arange(0, len(same), max(1, len(same) // args.pairs))[: args.pairs]
        a, c, same, fold = a[keep], c[keep], same[keep], fold[keep]
    result["edge"] = edge_costs(tn, edge, server, bundle, args.repeat)
    log(f"edge {result['edge']}")
    result["server"] = server_costs(tn, edge, server, args.repeat)
    log(f"server {result['server']}")
    result["accuracy"] = accuracy(tn, edge, server, (a, c, same, fold), float(bundle.threshold))
    log(f"accuracy {result['accuracy']}")
    result["database_thief"] = thief_linkage(tn, edge, a, c, same)
    log(f"thief {result['database_thief']}")
    counts = [int(s) for s in args.sizes.split(",") if s.strip()]
    result["identify"] = identify(tn, edge, server, counts, args.repeat, log)
    result["identify_within_1s"] = within_one_second(result["identify"], tn.SLOTS)
    if args.demo:
        result["demo"] = raw_demo(Path(args.bundle), args.demo, log)
        log(f"demo {result['demo']}")
