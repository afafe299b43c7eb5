"""ppfr.cloud.local, the one local-server harness (demo, bench, tests): a real `ppfr-cloud serve` process."""

import grpc
import pytest
from ppfr.cloud.local import LocalServer, LocalServerError
from ppfr.protos import verification_pb2 as pb
from ppfr.protos import verification_pb2_grpc as pb_grpc


def test_serves_with_its_own_key_and_stops_cleanly(small_bundle):
    with LocalServer(small_bundle("ppfr_fd")) as server:
        assert server.api_key.startswith("ppfr_") and server.api_key not in " ".join(server.command())
        cmdline = open(f"/proc/{server.process.pid}/cmdline", "rb").read()
        assert server.api_key.encode() not in cmdline  # never in argv
        info = server.info()
        assert info.subject_count == 0 and info.frontend_id  # a fresh gallery, the bundle's front-end
        assert server.env()["PPFR_API_KEY"] == server.api_key
        with grpc.insecure_channel(server.address) as channel:
            with pytest.raises(grpc.RpcError) as refused:  # the key is required
                pb_grpc.FaceVerificationStub(channel).GetServerInfo(pb.GetServerInfoRequest(), timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        workdir = server.workdir
    assert server.process.returncode == 0 and not workdir.exists()  # SIGTERM drained; temp folder gone
    assert server.stop() == 0  # stopping again is harmless


def test_a_server_that_cannot_start_is_one_error_with_its_log(tmp_path):
    with pytest.raises(LocalServerError, match="does not exist"):
        LocalServer(tmp_path / "no-bundle", workdir=tmp_path).start()
