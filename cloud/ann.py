"""Approximate 1:N search in process, for both gallery backends: a compressed scan of every row, then an exact
rerank of the best candidates from the template matrix (cloud/matrix.py).

The scan is FAISS's product quantiser with 4-bit codes and SIMD "fast scan" (`IndexPQFastScan`): each template
is d/4 codes of 4 bits (16 bytes for 128-d, 16 MB per million), and one probe is compared with a million
codes in under a millisecond on one core. Its scores are approximate, so it returns `candidates` rows and the
exact cosine of those rows (from the float32 matrix the gallery keeps anyway) decides. A graph index (HNSW)
was measured first and dropped: on 128-d embeddings at 1M it found the true best template for only 81% of
genuine probes (FAISS, ef_search 800) and cost 17 ms per insert in pgvector (docs/cloud.md).

The index follows the matrix in a background thread: it encodes rows [indexed, n) in chunks, so an enroll
never waits for it (enroll stays O(1)), and a server starts on a large gallery at once. A search scans the
codes of the rows indexed, searches the rows not yet indexed exactly, and merges. Deleted rows keep their
codes and are skipped when reranked (tombstones); if the candidates hold too few live subjects the search
asks for more, and falls back to exact search at the end. The quantiser is trained once, on the first rows
(at most `train_rows`), when the index starts; a restart trains on the live rows.

FAISS's index is not safe for a search during an add, so both take one lock; the indexer holds it for one
chunk at a time, so a search waits at most one small chunk.
"""

import logging
import threading
import time

import numpy as np

log = logging.getLogger("ppfr.cloud")

MIN_TRAIN_ROWS = 256  # the quantiser's 16 centroids per sub-vector need a few hundred rows to train on


class CompressedIndex:
    def __init__(
        self,
        matrix,
        candidates: int = 256,
        dims_per_code: int = 4,
        train_rows: int = 65_536,
        chunk: int = 1024,
        threads: int = 1,
    ):
        import faiss

        if matrix.dim % dims_per_code:
            raise ValueError(
                f"embedding size {matrix.dim} is not a multiple of dims_per_code {dims_per_code}"
            )
        self._faiss = faiss
        self.threads = int(threads)  # one: a core stays free for the recognizer; the scan is memory-bound
        self.matrix = matrix
        self.candidates = int(candidates)
        self.codes = matrix.dim // dims_per_code
        self.train_rows = int(train_rows)
        self.chunk = int(chunk)
        self.index = None  # made by the follower thread once enough rows exist to train on
        self.indexed = 0  # rows [0, indexed) are encoded
        self.build_s = None  # seconds the first catch-up took (training included)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._follow, name="ppfr-ann", daemon=True)

    def start(self) -> "CompressedIndex":
        self.matrix.ann = self
        self._thread.start()
        return self

    def notify(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop = True
        self._wake.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=30)

    def wait_caught_up(self, timeout: float | None = None) -> bool:
        """True once every published row is indexed (benchmarks, tests)."""
        end = None if timeout is None else time.monotonic() + timeout
        while self.index is None or self.indexed < self.matrix.rows:
            if end is not None and time.monotonic() > end:
                return False
            time.sleep(0.01)
        return True

    def _train(self, n: int) -> None:
        matrix = self.matrix
        live = np.flatnonzero(matrix._alive[:n])[: self.train_rows]
        index = self._faiss.IndexPQFastScan(matrix.dim, self.codes, 4, self._faiss.METRIC_INNER_PRODUCT)
        index.train(np.ascontiguousarray(matrix._vecs[live]))
        self.index = index

    def _omp(self) -> None:
        """OpenMP's thread count is a per-thread setting: each thread that calls FAISS sets it (a thread left
        at the default spins one worker per core and was measured 15x slower beside a busy core)."""
        self._faiss.omp_set_num_threads(self.threads)

    def _follow(self) -> None:
        self._omp()
        t0 = time.perf_counter()
        while not self._stop:
            n = self.matrix.rows
            if self.index is None and self.matrix.template_count >= MIN_TRAIN_ROWS:
                self._train(n)
            if self.index is None or self.indexed >= n:
                if self.index is not None and self.build_s is None:
                    self.build_s = time.perf_counter() - t0
                    log.info("compressed index over %d templates built in %.1f s", n, self.build_s)
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            end = min(n, self.indexed + self.chunk)
            rows = np.ascontiguousarray(self.matrix._vecs[self.indexed : end])
            with self._lock:
                self.index.add(rows)
                self.indexed = end

    def search(self, unit_probe: np.ndarray, top_k: int, n: int) -> list[tuple[str, float]] | None:
        """The top_k live subjects among rows [0, n), or None when exact search should answer."""
        matrix = self.matrix
        want = max(self.candidates, 4 * top_k)
        q = np.ascontiguousarray(unit_probe, np.float32)[None]
        self._omp()
        while True:
            with self._lock:
                indexed = min(self.indexed, n)
                if self.index is None or indexed == 0:
                    return None
                _, rows = self.index.search(q, min(want, indexed))
            rows = rows[0][rows[0] >= 0]
            rows = np.concatenate([rows, np.arange(indexed, n)])  # rows not yet encoded: all candidates
            scores = matrix._vecs[rows] @ unit_probe  # the exact rerank
            scores[~matrix._alive[rows]] = -np.inf
            found = matrix.best_subjects(rows, scores, top_k)
            if len(found) >= min(top_k, matrix.subject_count):
                return found
            if want >= indexed or want >= 65_536:
                return None  # many tombstones near this probe: exact search answers
            want *= 4
