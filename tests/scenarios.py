"""Scenarios the single-server tests and the replica tests both run (not a test module): each takes a
stub bound to a server, the edge's `protect` and six people's faces."""

import grpc
import numpy as np
import pytest
from helpers import code_of, face_with
from ppfr.bundle import numpy_dtype
from ppfr.protos import tensor_pb2, verification_pb2


def enroll_verify_identify_delete(stub, protect, people):
    threshold = protect.manifest.threshold.cosine
    subjects = [f"person-{i}" for i in range(len(people))]
    for name, face in zip(subjects, people):
        reply = stub.Enroll(verification_pb2.EnrollRequest(subject_id=name, face=protect(face)), timeout=30)
        assert reply.template_count == 1 and reply.create_time.seconds > 0

    genuine = stub.Verify(verification_pb2.VerifyRequest(subject_id="person-0", face=protect(people[0])))
    others = [
        stub.Verify(verification_pb2.VerifyRequest(subject_id="person-0", face=protect(face)))
        for face in people[1:]
    ]
    # The untrained test model's threshold is rough (a few LFW pairs), so some impostor pairs may score
    # above it; the impostor is the least similar other person, and every other person scores below genuine.
    impostor = min(others, key=lambda r: r.score)
    assert genuine.threshold == pytest.approx(threshold)
    assert genuine.match and genuine.score >= genuine.threshold
    assert not impostor.match and impostor.score < impostor.threshold
    assert all(r.match == (r.score >= r.threshold) for r in others)
    assert genuine.score > max(r.score for r in others)

    for i in (2, 4):
        found = stub.Identify(verification_pb2.IdentifyRequest(face=protect(people[i]), top_k=3))
        assert [c.subject_id for c in found.candidates][0] == f"person-{i}"
        assert 1 <= len(found.candidates) <= 3
        assert all(c.match and c.score >= found.threshold for c in found.candidates)  # matches only
        assert list(c.score for c in found.candidates) == sorted(
            (c.score for c in found.candidates), reverse=True
        )

    gone = stub.DeleteSubject(verification_pb2.DeleteSubjectRequest(subject_id="person-0"))
    assert gone.deleted_template_count == 1
    # a subject no longer enrolled is a plain non-match (Verify never tells which subject ids exist)
    gone_verify = stub.Verify(verification_pb2.VerifyRequest(subject_id="person-0", face=protect(people[0])))
    assert (gone_verify.match, gone_verify.score) == (False, 0.0)
    code, _ = code_of(
        lambda: stub.DeleteSubject(verification_pb2.DeleteSubjectRequest(subject_id="person-0"))
    )
    assert code == grpc.StatusCode.NOT_FOUND
    found = stub.Identify(verification_pb2.IdentifyRequest(face=protect(people[0]), top_k=10))
    assert "person-0" not in {c.subject_id for c in found.candidates}


def other_type(face) -> int:
    if face.data_type == tensor_pb2.DATA_TYPE_FLOAT32:
        return tensor_pb2.DATA_TYPE_FLOAT16
    return tensor_pb2.DATA_TYPE_FLOAT32


def malformed(good: verification_pb2.ProtectedFace):
    """(what is wrong, the bad face) for every kind of malformed tensor."""
    dtype = numpy_dtype(good.data_type)
    other = other_type(good)
    shape = list(good.shape)

    def variant(**fields):
        return face_with(good, **fields)

    nan = np.frombuffer(good.data, dtype).copy()
    nan[nan.size // 2] = np.nan
    inf = np.frombuffer(good.data, dtype).copy()
    inf[0] = -np.inf
    return [
        ("unspecified dtype", variant(data_type=tensor_pb2.DATA_TYPE_UNSPECIFIED)),
        ("integer dtype", variant(data_type=tensor_pb2.DATA_TYPE_INT64)),
        ("the other float type, same bytes", variant(data_type=other)),
        ("no batch dimension", variant(shape=shape[1:])),
        ("wrong channel count", variant(shape=[1, shape[1] + 1, *shape[2:]])),
        ("batch of two", variant(shape=[2, *shape[1:]], data=good.data * 2)),
        ("short data", variant(data=good.data[: -dtype.itemsize])),
        ("long data", variant(data=good.data + bytes(dtype.itemsize))),
        ("empty data", variant(data=b"")),
        ("NaN value", variant(data=nan.tobytes())),
        ("infinite value", variant(data=inf.tobytes())),
        ("no frontend_id", variant(frontend_id="")),
        ("foreign frontend_id", variant(frontend_id="0" * 64)),
    ]


def malformed_tensors_are_refused(stub, protect, people):
    stub.Enroll(verification_pb2.EnrollRequest(subject_id="valid", face=protect(people[3])))
    good = protect(people[3])
    for what, face in malformed(good):
        for call in (
            lambda face=face: stub.Verify(verification_pb2.VerifyRequest(subject_id="valid", face=face)),
            lambda face=face: stub.Enroll(verification_pb2.EnrollRequest(subject_id="valid", face=face)),
            lambda face=face: stub.Identify(verification_pb2.IdentifyRequest(face=face)),
        ):
            code, details = code_of(call)
            assert code == grpc.StatusCode.INVALID_ARGUMENT, what
            assert "face." in details, (what, details)
    foreign = malformed(good)[-1][1]
    _, details = code_of(
        lambda: stub.Verify(verification_pb2.VerifyRequest(subject_id="valid", face=foreign))
    )
    assert "not the front-end this server serves" in details
    # the same face in the other float type is accepted (converted to the recognizer's input type)
    converted = np.frombuffer(good.data, numpy_dtype(good.data_type)).astype(numpy_dtype(other_type(good)))
    as_other = verification_pb2.ProtectedFace(
        data=converted.tobytes(), shape=good.shape, data_type=other_type(good), frontend_id=good.frontend_id
    )
    assert stub.Verify(verification_pb2.VerifyRequest(subject_id="valid", face=as_other)).match
    code, _ = code_of(lambda: stub.Verify(verification_pb2.VerifyRequest(subject_id="", face=good)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = code_of(lambda: stub.Identify(verification_pb2.IdentifyRequest(face=good, top_k=-1)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    # still serving
    assert stub.Verify(verification_pb2.VerifyRequest(subject_id="valid", face=protect(people[3]))).match
