"""The in-process template matrix used by the SQLite gallery: append-only rows with tombstones, so an enroll
or a delete costs O(1) (amortised: capacity doubles), never a rebuild.

Rows are L2-normalised float32 templates. A subject's rows are listed in `_rows`; a deleted template keeps
its row (marked dead in `_alive`) until the gallery is reopened, which loads only live rows.

Writers are serialised by the caller (the gallery's lock). Readers take no lock: a writer fills a row and
only then publishes it by increasing `_n`; arrays are replaced (never shrunk in place) when they grow, and a
reader reads `_n` before the arrays, so every row below the `_n` it read is complete. A read that runs
while a delete commits may or may not see that delete; the next read does.

A subject's score is pooled over its templates (`pooled_score`). Search over the live rows is exact (one
matrix-vector product, BLAS) unless an approximate index is attached (`cloud/ann.py`), which answers for the
rows it has indexed while the rest are searched exactly.
"""

import numpy as np

_blas_limited = False

# identify() ranks this many candidates (found by their best template) per answer by their pooled score.
POOL_CANDIDATES = 4


def one_blas_thread() -> None:
    """Matching is one matrix-vector product per call; OpenBLAS's worker threads make it far slower on a
    busy machine (measured on 2 cores beside a training job: 10k x 128 in 40 ms with its threads, 0.2 ms
    on one), and the recognizer needs the cores anyway. Set once per process."""
    global _blas_limited
    if not _blas_limited:
        try:
            from threadpoolctl import threadpool_limits

            threadpool_limits(1, user_api="blas")
        except ImportError:  # pragma: no cover - threadpoolctl is in the cloud extra
            pass
        _blas_limited = True


class TemplateMatrix:
    def __init__(self, dim: int, capacity: int = 1024):
        one_blas_thread()
        self.dim = int(dim)
        cap = max(int(capacity), 16)
        self._vecs = np.zeros((cap, self.dim), np.float32)
        self._owner = np.zeros(cap, np.int64)  # subject index of each row
        self._alive = np.zeros(cap, bool)
        self._ids = np.zeros(cap, np.int64)  # template id of each row
        self._n = 0  # rows published to readers
        self._dead = 0  # tombstoned rows below _n
        self._names: list[str] = []  # subject index -> subject id (append-only)
        self._index: dict[str, int] = {}  # subject id -> subject index
        self._rows: dict[str, tuple[int, ...]] = {}  # live subject id -> its live rows
        self._row_of: dict[int, int] = {}  # live template id -> row
        self.ann = None  # an optional approximate index over the rows (cloud/ann.py)

    # --- sizes -------------------------------------------------------------------------------------
    @property
    def subject_count(self) -> int:
        return len(self._rows)

    @property
    def template_count(self) -> int:
        return len(self._row_of)

    @property
    def rows(self) -> int:
        """Rows published so far, dead ones included."""
        return self._n

    def has_subject(self, subject_id: str) -> bool:
        return subject_id in self._rows

    def templates_of(self, subject_id: str) -> int:
        return len(self._rows.get(subject_id, ()))

    # --- writes (one writer at a time) -------------------------------------------------------------
    def _grow(self, need: int) -> None:
        cap = len(self._alive)
        if need <= cap:
            return
        new = max(need, 2 * cap)
        vecs = np.zeros((new, self.dim), np.float32)
        vecs[:cap] = self._vecs
        owner, alive, ids = np.zeros(new, np.int64), np.zeros(new, bool), np.zeros(new, np.int64)
        owner[:cap], alive[:cap], ids[:cap] = self._owner, self._alive, self._ids
        self._vecs, self._owner, self._alive, self._ids = vecs, owner, alive, ids

    def add(self, subject_id: str, template_id: int, unit_vec: np.ndarray) -> None:
        self.add_many([subject_id], np.asarray([template_id]), np.asarray(unit_vec, np.float32)[None])

    def add_many(self, subject_ids, template_ids, unit_vecs: np.ndarray) -> None:
        """Appends rows (already L2-normalised) and publishes them together."""
        k = len(subject_ids)
        if k == 0:
            return
        start = self._n
        self._grow(start + k)
        owners = np.empty(k, np.int64)
        for i, s in enumerate(subject_ids):
            idx = self._index.get(s)
            if idx is None:
                idx = self._index[s] = len(self._names)
                self._names.append(s)
            owners[i] = idx
        end = start + k
        self._vecs[start:end] = unit_vecs
        self._owner[start:end] = owners
        self._ids[start:end] = template_ids
        self._alive[start:end] = True
        for i, (s, t) in enumerate(zip(subject_ids, template_ids)):
            self._rows[s] = self._rows.get(s, ()) + (start + i,)
            self._row_of[int(t)] = start + i
        self._n = end  # publish
        if self.ann is not None:
            self.ann.notify()

    def remove_subject(self, subject_id: str) -> int:
        rows = self._rows.pop(subject_id, ())
        for r in rows:
            self._kill(r)
        return len(rows)

    def remove_template(self, template_id: int) -> str | None:
        row = self._row_of.get(int(template_id))
        if row is None:
            return None
        subject_id = self._names[self._owner[row]]
        left = tuple(r for r in self._rows[subject_id] if r != row)
        if left:
            self._rows[subject_id] = left
        else:
            del self._rows[subject_id]
        self._kill(row)
        return subject_id

    def _kill(self, row: int) -> None:
        self._alive[row] = False
        del self._row_of[int(self._ids[row])]
        self._dead += 1

    # --- reads (any thread) ------------------------------------------------------------------------
    def pooled_score(self, rows, unit_probe: np.ndarray) -> float:
        """A subject's score: the cosine between the probe and the mean of its templates (template pooling:
        averaging several photos cancels what is particular to each; one template scores as itself)."""
        vecs = self._vecs[list(rows)]
        if len(vecs) == 1:
            return float(vecs[0] @ unit_probe)
        mean = vecs.mean(0)
        return float(mean @ unit_probe) / max(float(np.linalg.norm(mean)), 1e-12)

    def verify(self, subject_id: str, unit_probe: np.ndarray) -> float | None:
        rows = self._rows.get(subject_id)
        return self.pooled_score(rows, unit_probe) if rows else None

    def identify(self, unit_probe: np.ndarray, top_k: int, exact: bool = False) -> list[tuple[str, float]]:
        """The top_k live subjects by pooled score, best first. The search over rows finds candidates by
        their best template (POOL_CANDIDATES per answer), which are then ranked by their pooled score."""
        n = self._n
        if n == 0 or not self._rows:
            return []
        wide = max(POOL_CANDIDATES * top_k, 16)
        ann = None if exact else self.ann
        found = ann.search(unit_probe, wide, n) if ann is not None else None
        if found is None:
            found = self.exact_search(unit_probe, wide, 0, n)
        rows = [(s, self._rows.get(s)) for s, _ in found]  # .get: a subject deleted meanwhile drops out
        scored = [(s, self.pooled_score(r, unit_probe)) for s, r in rows if r]
        return sorted(scored, key=lambda item: -item[1])[:top_k]

    def exact_search(self, unit_probe, top_k: int, start: int, stop: int) -> list[tuple[str, float]]:
        """Exact top_k subjects by best template over rows [start, stop)."""
        if stop <= start:
            return []
        vecs, alive, owner = self._vecs, self._alive, self._owner
        scores = vecs[start:stop] @ unit_probe
        if self._dead:
            scores[~alive[start:stop]] = -np.inf
        return self.best_subjects(np.arange(start, stop), scores, top_k, owner, alive)

    def best_subjects(self, rows, scores, top_k: int, owner=None, alive=None) -> list[tuple[str, float]]:
        """Walks rows in descending score order; the first top_k distinct live subjects are the answer (a
        subject's score is its best template). Only the best few rows are sorted (argpartition)."""
        owner = self._owner if owner is None else owner
        alive = self._alive if alive is None else alive
        total = len(scores)
        m = min(total, max(4 * top_k, 16))
        while True:
            if m < total:
                part = np.argpartition(-scores, m - 1)[:m]
            else:
                part = np.arange(total)
            part = part[np.argsort(-scores[part], kind="stable")]
            seen: dict[int, float] = {}
            for i in part:
                s = float(scores[i])
                if s == -np.inf:
                    break
                r = rows[i]
                if not alive[r]:
                    continue
                o = int(owner[r])
                if o not in seen:
                    seen[o] = s
                    if len(seen) == top_k:
                        break
            if len(seen) >= top_k or m >= total:
                names = self._names
                return [(names[o], s) for o, s in seen.items()]
            m = min(total, m * 4)
