"""Server parts on their own, without a bundle: request validation, the gallery, the dynamic batcher."""

import asyncio
import threading
import time

import numpy as np
import pytest
from ppfr.cloud.batcher import BatcherClosed, DynamicBatcher
from ppfr.cloud.gallery import Gallery, GalleryError
from ppfr.cloud.validation import FaceValidator, InvalidRequest, subject_id, top_k
from ppfr.protos import manifest_pb2, tensor_pb2, verification_pb2

FID = "a" * 64
SHAPE = [1, 4, 14, 14]


def manifest(data_type=tensor_pb2.DATA_TYPE_FLOAT32) -> manifest_pb2.BundleManifest:
    m = manifest_pb2.BundleManifest(name="unit", frontend_id=FID, embedding_size=8)
    m.protected_tensor.CopyFrom(tensor_pb2.TensorSpec(name="x", shape=[-1, 4, 14, 14], data_type=data_type))
    m.threshold.cosine = 0.5
    return m


def face(array=None, **overrides) -> verification_pb2.ProtectedFace:
    array = np.ones(SHAPE, "<f4") if array is None else array
    fields = dict(data=array.tobytes(), shape=list(array.shape), data_type=tensor_pb2.DATA_TYPE_FLOAT32)
    fields["frontend_id"] = FID
    fields.update(overrides)
    return verification_pb2.ProtectedFace(**fields)


# --- validation ---------------------------------------------------------------------------------------


def test_valid_faces_pass_in_both_wire_types():
    check = FaceValidator(manifest())
    assert check(face()).dtype == np.float32
    half = np.ones(SHAPE, "<f2")
    out = check(face(half, data_type=tensor_pb2.DATA_TYPE_FLOAT16))
    assert out.shape == tuple(SHAPE) and out.dtype == np.float32


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({"frontend_id": ""}, "frontend_id is empty"),
        ({"frontend_id": "b" * 64}, "not the front-end"),
        ({"data_type": tensor_pb2.DATA_TYPE_UNSPECIFIED}, "DATA_TYPE_UNSPECIFIED"),
        ({"data_type": tensor_pb2.DATA_TYPE_INT64}, "DATA_TYPE_INT64"),
        ({"data_type": 99}, "99"),
        ({"shape": [4, 14, 14]}, "does not match"),
        ({"shape": [2, 4, 14, 14]}, "does not match"),
        ({"shape": [1, 5, 14, 14]}, "does not match"),
        ({"data": b"\0" * 12}, "needs 3136"),
        ({"data": np.ones(SHAPE, "<f4").tobytes() + b"\0"}, "3137 bytes"),
        ({"data": np.full(SHAPE, np.nan, "<f4").tobytes()}, "NaN"),
        ({"data": np.full(SHAPE, np.inf, "<f4").tobytes()}, "infinite"),
    ],
)
def test_malformed_faces_are_refused_with_a_reason(overrides, words):
    with pytest.raises(InvalidRequest, match=words):
        FaceValidator(manifest())(face(**overrides))


def test_float32_beyond_float16_range_is_refused_for_a_float16_recognizer():
    check = FaceValidator(manifest(tensor_pb2.DATA_TYPE_FLOAT16))
    with pytest.raises(InvalidRequest, match="range"):
        check(face(np.full(SHAPE, 1e6, "<f4")))


def test_subject_id_and_top_k_rules():
    assert subject_id("alice") == "alice"
    for bad in ("", "x" * 300, "a\nb"):
        with pytest.raises(InvalidRequest):
            subject_id(bad)
    assert top_k(0) == 5 and top_k(3) == 3
    for bad in (-1, 10_000):
        with pytest.raises(InvalidRequest):
            top_k(bad)


# --- gallery ------------------------------------------------------------------------------------------


def unit(rng, d=8):
    v = rng.standard_normal(d).astype(np.float32)
    return v / np.linalg.norm(v)


def test_gallery_enroll_verify_identify_delete_and_reopen(tmp_path):
    rng = np.random.default_rng(0)
    a, b, c = unit(rng), unit(rng), unit(rng)
    db = tmp_path / "g.sqlite"
    g = Gallery(db, 8, "rec1")
    assert g.enroll("alice", a).template_count == 1
    assert g.enroll("alice", c).template_count == 2  # re-enrolling adds a template
    g.enroll("bob", b)
    assert (g.subject_count, g.template_count) == (2, 3)
    # the subject's score: cosine to the mean of its templates
    pooled = (a + c) / np.linalg.norm(a + c)
    assert g.verify("alice", a) == pytest.approx(float(pooled @ a), abs=1e-5)
    assert g.verify("alice", pooled) == pytest.approx(1.0, abs=1e-5)
    assert g.verify("nobody", a) is None
    top = g.identify(b, top_k=5)
    assert [m.subject_id for m in top] == ["bob", "alice"] and top[0].score == pytest.approx(1.0, abs=1e-5)
    assert len(g.identify(b, top_k=1)) == 1
    g.close()

    g = Gallery(db, 8, "rec1")  # durable: a fresh process sees the same templates
    assert (g.subject_count, g.template_count) == (2, 3)
    assert g.delete("alice") == 2 and g.delete("alice") == 0
    assert not g.has_subject("alice") and g.identify(a, 5)[0].subject_id == "bob"
    g.close()
    g = Gallery(db, 8, "rec1")
    assert (g.subject_count, g.template_count) == (1, 1)
    g.close()


def test_gallery_refuses_a_database_of_another_recognizer(tmp_path):
    Gallery(tmp_path / "g.sqlite", 8, "rec1").close()
    with pytest.raises(GalleryError, match="another recognizer"):
        Gallery(tmp_path / "g.sqlite", 8, "rec2")
    with pytest.raises(GalleryError, match="another recognizer"):
        Gallery(tmp_path / "g.sqlite", 16, "rec1")


def test_empty_gallery_identifies_nothing(tmp_path):
    g = Gallery(tmp_path / "g.sqlite", 8)
    assert g.identify(np.ones(8, np.float32), 5) == []
    g.close()


# --- batcher ------------------------------------------------------------------------------------------


class FakeRuntime:
    name = "fake"
    max_batch = 64

    def __init__(self, delay=0.0, fail=False):
        self.calls = []
        self.delay = delay
        self.fail = fail
        self.threads = set()

    def embed(self, batch):
        self.threads.add(threading.current_thread().name)
        self.calls.append(len(batch))
        time.sleep(self.delay)
        if self.fail:
            raise ValueError("engine failure")
        return np.asarray(batch, np.float32).reshape(len(batch), -1)[:, :8].copy()

    def close(self):
        pass


def test_batcher_gathers_concurrent_requests_into_one_call():
    async def main():
        runtime = FakeRuntime()
        batcher = DynamicBatcher(runtime, max_batch=8, max_delay_ms=50)
        tensors = [np.full(SHAPE, i, np.float32) for i in range(5)]
        out = await asyncio.gather(*(batcher.embed(t) for t in tensors))
        await batcher.close()
        return runtime, out

    runtime, out = asyncio.run(main())
    assert runtime.calls == [5]
    assert [o[0] for o in out] == [0, 1, 2, 3, 4]  # each caller gets its own row
    assert all(name.startswith("ppfr-engine") for name in runtime.threads)  # never on the event loop


def test_batcher_respects_max_batch_and_can_be_turned_off():
    async def run(max_batch, delay_ms):
        runtime = FakeRuntime()
        batcher = DynamicBatcher(runtime, max_batch=max_batch, max_delay_ms=delay_ms)
        await asyncio.gather(*(batcher.embed(np.zeros(SHAPE, np.float32)) for _ in range(7)))
        await batcher.close()
        return runtime.calls

    assert asyncio.run(run(3, 50)) == [3, 3, 1]
    assert asyncio.run(run(8, 0)) == [1] * 7
    assert asyncio.run(run(1, 50)) == [1] * 7


def test_batcher_skips_cancelled_callers_and_reports_engine_errors():
    async def main():
        runtime = FakeRuntime(delay=0.05)
        batcher = DynamicBatcher(runtime, max_batch=8, max_delay_ms=20)
        first = asyncio.create_task(batcher.embed(np.zeros(SHAPE, np.float32)))
        await asyncio.sleep(0.03)  # first batch is on the engine now
        gone = asyncio.create_task(batcher.embed(np.zeros(SHAPE, np.float32)))
        kept = asyncio.create_task(batcher.embed(np.ones(SHAPE, np.float32)))
        await asyncio.sleep(0)
        gone.cancel()  # e.g. its deadline passed while it waited
        await first
        assert (await kept)[0] == 1
        runtime.fail = True
        with pytest.raises(ValueError, match="engine failure"):
            await batcher.embed(np.zeros(SHAPE, np.float32))
        await batcher.close()
        with pytest.raises(BatcherClosed):
            await batcher.embed(np.zeros(SHAPE, np.float32))
        return runtime.calls

    assert asyncio.run(main()) == [1, 1, 1]


# --- API keys -----------------------------------------------------------------------------------------


def test_key_store_keeps_only_a_hash_and_checks_scopes_and_revocation(tmp_path):
    import os
    import stat

    from ppfr.cloud.auth import KeyStore, parse_scopes

    store = KeyStore(tmp_path / "keys")
    record, key = store.create("door-3", parse_scopes("verify,enroll"), rate=5)
    assert stat.S_IMODE(os.stat(tmp_path / "keys").st_mode) == 0o600
    assert key.startswith(f"ppfr_{record.key_id}_") and len(key) == 5 + 12 + 1 + 43
    assert key[18:].encode() not in (tmp_path / "keys").read_bytes() + (tmp_path / "keys-wal").read_bytes()
    found = store.authenticate(key)
    assert (found.key_id, found.scopes, found.rate) == (record.key_id, {"verify", "enroll"}, 5)
    tampered = key[:-1] + ("A" if key[-1] != "A" else "B")  # right id, wrong secret
    assert store.authenticate(tampered) is None and store.authenticate("") is None
    other = KeyStore(tmp_path / "keys")  # another process's connection
    assert other.revoke(record.key_id) and not other.revoke(record.key_id)
    assert store.authenticate(key) is None
    assert [k.active for k in store.list_keys()] == [False]
    for bad in ("", "verify,root", "admin,,x"):
        with pytest.raises(Exception, match="scopes"):
            parse_scopes(bad)
    store.close(), other.close()


def test_rate_limiter_allows_a_burst_then_the_rate():
    from ppfr.cloud.auth import ApiKey, RateLimiter

    now = [0.0]
    limiter = RateLimiter(clock=lambda: now[0])
    key = ApiKey("k1", "n", frozenset({"verify"}), rate=10, create_time=0)
    assert sum(limiter.allow(key) for _ in range(15)) == 10  # a second's worth at once
    now[0] += 0.5
    assert sum(limiter.allow(key) for _ in range(15)) == 5  # then 10 per second
    unlimited = ApiKey("k2", "n", frozenset({"verify"}), rate=0, create_time=0)
    assert all(limiter.allow(unlimited) for _ in range(1000))
