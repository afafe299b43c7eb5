"""The committed stubs are exactly what protoc makes of the .proto files (`make protos` regenerates), and
they import as ppfr.protos.<module> with their own imports resolving."""

import importlib

from ppfr.protos import generate


def test_committed_stubs_match_a_fresh_generation(tmp_path):
    written = generate.generate(tmp_path)
    assert written, "protoc wrote nothing"
    stale = []
    for fresh in written:
        committed = generate.PROTO_DIR / fresh.name
        if not committed.is_file() or committed.read_bytes() != fresh.read_bytes():
            stale.append(fresh.name)
    extra = {
        p.name
        for p in generate.PROTO_DIR.iterdir()
        if p.name.endswith(generate.GENERATED_SUFFIXES) and p.name not in {f.name for f in written}
    }
    assert not stale and not extra, f"stubs out of date (run `make protos`): {sorted(stale) + sorted(extra)}"


def test_stubs_import_under_the_package_path():
    for name in ("tensor_pb2", "manifest_pb2", "verification_pb2", "verification_pb2_grpc"):
        importlib.import_module(f"ppfr.protos.{name}")
    from ppfr.protos import verification_pb2

    service = verification_pb2.DESCRIPTOR.services_by_name["FaceVerification"]
    assert service.full_name == "ppfr.v1.FaceVerification"
    assert {m.name for m in service.methods} == {
        "Enroll",
        "Verify",
        "Identify",
        "DeleteSubject",
        "DeleteTemplate",
        "ListSubjects",
        "GetServerInfo",
    }
