"""The attacker's and the operator's tools against a real server, shared by tests/test_system_harden.py and
the cloud tests: malformed requests of every kind, raw-bytes calls many at a time, enrollers whose server is
killed under them, and the full subject listing."""

import asyncio
import os
import random
import signal

import numpy as np
from helpers import face_with

CHANNEL_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


def malformed_cases(good, n: int, seed: int = 0) -> list[tuple[str, str, bytes]]:
    """(kind, RPC, request bytes) for n requests that are each wrong in at least one way."""
    from ppfr.protos import tensor_pb2
    from ppfr.protos import verification_pb2 as pb

    rng = random.Random(seed)
    valid = pb.VerifyRequest(subject_id="fuzz-subject", face=good).SerializeToString()
    itemsize = 2 if good.data_type == tensor_pb2.DATA_TYPE_FLOAT16 else 4
    dtype = "<f2" if itemsize == 2 else "<f4"

    def face(**changes):
        return face_with(good, **changes)

    def bad_face():
        k = rng.randrange(9)
        if k == 0:
            dims = rng.choice([0, 1, 3, 5, 100, 100_000])
            return "shape dims", face(shape=[rng.randrange(-(2**40), 2**40) for _ in range(dims)])
        if k == 1:
            return "shape values", face(shape=[rng.choice([0, 2, -1, 2**31]), *good.shape[1:]])
        if k == 2:
            return "dtype", face(data_type=rng.choice([0, 3, 4, 5, 99, -1, 2**31 - 1]))
        if k == 3:
            cut = rng.randrange(1, len(good.data))
            return "short data", face(data=good.data[:-cut])
        if k == 4:
            return "long data", face(data=good.data + os.urandom(rng.randrange(1, 4096)))
        if k == 5:
            values = np.frombuffer(good.data, dtype).copy()
            values[rng.randrange(values.size)] = rng.choice([np.nan, np.inf, -np.inf])
            return "non-finite", face(data=values.tobytes())
        if k == 6:
            other = rng.choice(["", "0" * 64, good.frontend_id[:-1] + "x", "\x00" * 8, "é" * 300])
            return "frontend_id", face(frontend_id=other)
        if k == 7:
            other = (
                tensor_pb2.DATA_TYPE_FLOAT32 if itemsize == 2 else tensor_pb2.DATA_TYPE_FLOAT16
            )  # the same bytes read as the other float type: wrong length
            return "other float type", face(data_type=other)
        return "empty face", pb.ProtectedFace()

    def bad_subject():
        return rng.choice(["", "x" * 257, "a\nb", "\x00", "tab\there", "x" * 100_000])

    cases = []
    while len(cases) < n:
        k = rng.randrange(10)
        if k == 0:
            cases.append(("random bytes", "Verify", os.urandom(rng.randrange(1, 64))))
        elif k == 1:
            cut = rng.randrange(1, 40)  # inside the header and first fields: never a complete message
            cases.append(("truncated", "Verify", valid[:cut] + b"\xff"))
        elif k == 2:
            kind, f = bad_face()
            cases.append(
                (kind, "Verify", pb.VerifyRequest(subject_id="fuzz-subject", face=f).SerializeToString())
            )
        elif k == 3:
            kind, f = bad_face()
            cases.append((kind, "Enroll", pb.EnrollRequest(subject_id="fuzz", face=f).SerializeToString()))
        elif k == 4:
            kind, f = bad_face()
            cases.append((kind, "Identify", pb.IdentifyRequest(face=f, top_k=1000).SerializeToString()))
        elif k == 5:
            request = pb.VerifyRequest(subject_id=bad_subject(), face=good)
            cases.append(("subject_id", "Verify", request.SerializeToString()))
        elif k == 6:
            top_k = rng.choice([-1, -(2**31), 1001, 2**31 - 1])
            cases.append(
                ("top_k", "Identify", pb.IdentifyRequest(face=good, top_k=top_k).SerializeToString())
            )
        elif k == 7:
            key = rng.choice(["x" * 129, "a\x00b", "line\nbreak"])
            request = pb.EnrollRequest(subject_id="fuzz", face=good, idempotency_key=key)
            cases.append(("idempotency_key", "Enroll", request.SerializeToString()))
        elif k == 8:
            request = pb.DeleteTemplateRequest(template_id=rng.choice([0, -1, -(2**63)]))
            cases.append(("template_id", "DeleteTemplate", request.SerializeToString()))
        else:
            size, token = rng.choice(
                [(-1, ""), (1001, ""), (2**31 - 1, ""), (10, "\x00bad"), (10, "t" * 5000)]
            )
            request = pb.ListSubjectsRequest(page_size=size, page_token=token)
            cases.append(("page", "ListSubjects", request.SerializeToString()))
    return cases


async def send_all(target: str, calls: list[tuple[str, bytes]], metadata, concurrency: int, timeout: float):
    """Raw-bytes calls, `concurrency` at a time; returns the status code name of each."""
    import grpc

    codes: list[str] = [""] * len(calls)
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int, method: str, payload: bytes) -> None:
            async with gate:
                try:
                    await channel.unary_unary(f"/ppfr.v1.FaceVerification/{method}")(
                        payload, timeout=timeout, metadata=metadata
                    )
                    codes[i] = "OK"
                except grpc.aio.AioRpcError as err:
                    codes[i] = err.code().name

        await asyncio.gather(*(one(i, m, p) for i, (m, p) in enumerate(calls)))
    return codes


def count(values) -> dict:
    out: dict = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))


async def enroll_until_killed(target, metadata, faces, prefix: str, workers: int, kill_after: float, proc):
    """Enrollers of unique subjects; SIGKILL the server after kill_after s; returns acknowledged ids."""
    import grpc
    from ppfr.protos import verification_pb2 as pb

    acked: list[str] = []
    stop = asyncio.Event()
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        call = channel.unary_unary(
            "/ppfr.v1.FaceVerification/Enroll",
            request_serializer=pb.EnrollRequest.SerializeToString,
            response_deserializer=pb.EnrollResponse.FromString,
        )

        async def worker(w: int) -> None:
            i = 0
            while not stop.is_set():
                subject = f"{prefix}-{w}-{i}"
                request = pb.EnrollRequest(
                    subject_id=subject, face=faces[i % len(faces)], idempotency_key=subject
                )
                try:
                    await call(request, timeout=10, metadata=metadata)
                    acked.append(subject)
                except grpc.aio.AioRpcError:
                    if proc.poll() is not None:
                        return
                i += 1

        async def killer() -> None:
            await asyncio.sleep(kill_after)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            stop.set()

        await asyncio.gather(killer(), *(worker(w) for w in range(workers)))
    return acked


def list_all(target, metadata) -> dict:
    import grpc
    from ppfr.protos import verification_pb2 as pb
    from ppfr.protos import verification_pb2_grpc as pb_grpc

    subjects, token = {}, ""
    with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.FaceVerificationStub(channel)
        while True:
            page = stub.ListSubjects(
                pb.ListSubjectsRequest(page_size=1000, page_token=token), timeout=30, metadata=metadata
            )
            subjects.update({s.subject_id: s.template_count for s in page.subjects})
            token = page.next_page_token
            if not token:
                return subjects
