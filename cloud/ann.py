"""Approximate 1:N search in process for the SQLite gallery: a FAISS HNSW graph (inner product on unit
vectors) over the template matrix (cloud/matrix.py).

The index follows the matrix in a background thread: it adds rows [indexed, n) in chunks, so an enroll
never waits for the graph (enroll stays O(1)), and a server can start on a large gallery at once. A search
asks the graph for the best rows among those indexed, searches the rows not yet indexed exactly, and merges.
Deleted rows stay in the graph and are skipped at search time (tombstones); if the graph's answer holds
too few live subjects the search asks for more candidates, and falls back to exact search at the end.
A restart indexes only the live rows.

FAISS's graph is not safe for a search during an add, so both take one lock; the indexer holds it for one
chunk of 256 rows at a time, so a search waits at most one small chunk.
"""

import logging
import threading
import time

import numpy as np

log = logging.getLogger("ppfr.cloud")


class HnswIndex:
    def __init__(
        self,
        matrix,
        m: int = 16,
        ef_construction: int = 64,
        ef_search: int = 100,
        chunk: int = 256,
        threads: int = 1,
    ):
        import faiss

        # One thread: OpenMP's spinning threads on busy cores made builds slower, not faster (measured on
        # 2 cores: 20k templates in 3.6 s on 1 thread, 4.9 s on 2), and a core stays free for serving.
        faiss.omp_set_num_threads(int(threads))
        self._faiss = faiss
        self.matrix = matrix
        self.ef_search = int(ef_search)
        self.chunk = int(chunk)
        self.index = faiss.IndexHNSWFlat(matrix.dim, int(m), faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = int(ef_construction)
        self.indexed = 0  # rows [0, indexed) are in the graph
        self.build_s = None  # seconds the first catch-up took
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._follow, name="ppfr-ann", daemon=True)

    def start(self) -> "HnswIndex":
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
        while self.indexed < self.matrix.rows:
            if end is not None and time.monotonic() > end:
                return False
            time.sleep(0.01)
        return True

    def _follow(self) -> None:
        t0 = time.perf_counter()
        while not self._stop:
            n = self.matrix.rows
            if self.indexed >= n:
                if self.build_s is None:
                    self.build_s = time.perf_counter() - t0
                    log.info("HNSW index over %d templates built in %.1f s", n, self.build_s)
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
        want = max(4 * top_k, 16)
        q = np.ascontiguousarray(unit_probe, np.float32)[None]
        while True:
            params = self._faiss.SearchParametersHNSW()
            params.efSearch = max(self.ef_search, want)
            with self._lock:
                indexed = min(self.indexed, n)
                if indexed == 0:
                    return None
                scores, rows = self.index.search(q, min(want, indexed), params=params)
            rows, scores = rows[0], scores[0]
            keep = rows >= 0
            rows, scores = rows[keep], scores[keep]
            if indexed < n:  # rows not yet in the graph: exact
                tail = matrix._vecs[indexed:n] @ unit_probe
                tail[~matrix._alive[indexed:n]] = -np.inf
                rows = np.concatenate([rows, np.arange(indexed, n)])
                scores = np.concatenate([scores, tail])
            found = matrix.best_subjects(rows, scores, top_k)
            if len(found) >= min(top_k, matrix.subject_count):
                return found
            if want >= indexed or want >= 4096:
                return None  # many tombstones near this probe: exact search answers
            want *= 4
