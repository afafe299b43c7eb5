"""The cluster's client (`deploy/cluster.py client`): real LFW faces protected on this side by the bundle's
front-end, sent over ONE gRPC channel that spreads calls over every replica (round_robin across the
addresses), then checks what a deployment must do:

- every call succeeds, and every replica served some of them (counted from each replica's /metrics);
- the gallery is shared: each replica, asked directly, lists every subject enrolled through the channel;
- genuine probes match and impostors do not (at least MIN_CORRECT of the decisions);
- HTTP/JSON on each replica gives the gRPC decision for the same tensor.

Exit status 0 only if all of that holds.
"""

import ipaddress
import json
import os
import re
import sys
import time
import urllib.request
from pathlib import Path

import grpc

MIN_CORRECT = 0.75  # of the verify decisions; the shipped model gets ~all of them right on these faces
_SAMPLE = re.compile(r"^ppfr_requests_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$", re.M)


def add_arguments(p) -> None:
    env = os.environ.get
    p.add_argument("--targets", required=True, help="gRPC addresses of the replicas, HOST:PORT,HOST:PORT")
    p.add_argument(
        "--balanced",
        help="gRPC target spread over the replicas (default ipv4:TARGETS; a DNS name with one record per "
        "replica: dns:///NAME:PORT)",
    )
    p.add_argument("--bundle", type=Path, default=env("PPFR_BUNDLE"), help="the replicas' bundle")
    data = env("PPFR_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
    p.add_argument("--data", type=Path, default=data, help="the shared face data (default ../shared/data)")
    p.add_argument("--http", default="", help="HTTP/JSON base URLs of the replicas, comma-separated")
    p.add_argument("--metrics", default="", help="/metrics URLs of the replicas, comma-separated")
    p.add_argument("--subjects", type=int, default=4, help="LFW people to enroll (default 4)")
    p.add_argument("--key-file", type=Path, default=env("PPFR_API_KEY_FILE"), help="or $PPFR_API_KEY")


def log(message: str) -> None:
    print(f"[client {time.strftime('%H:%M:%S')}] {message}", flush=True)


def api_key(args) -> str:
    if args.key_file:
        return args.key_file.read_text().strip()
    if os.environ.get("PPFR_API_KEY"):
        return os.environ["PPFR_API_KEY"]
    raise SystemExit("client: needs an API key in $PPFR_API_KEY or --key-file")


def people(data: Path, n: int) -> list[tuple[str, Path, Path]]:
    """(name, enrollment image, probe image) of the first n LFW people with two or more images."""
    root = data / "lfw" / "aligned112"
    if not root.is_dir():
        raise SystemExit(f"client: no LFW faces in {root} (give --data, the shared face data folder)")
    chosen = []
    for person in sorted(p for p in root.iterdir() if p.is_dir()):
        images = sorted(person.glob("*.jpg"))
        if len(images) >= 2:
            chosen.append((person.name, images[0], images[1]))
        if len(chosen) == n:
            return chosen
    raise SystemExit(f"client: fewer than {n} LFW people with two images in {root}")


def read_face(path: Path):
    import cv2
    import numpy as np

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise SystemExit(f"client: cannot read {path}")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def balanced_target(targets: list[str], given: str | None) -> str:
    """The ipv4 resolver takes a list of addresses; names need a DNS name with a record per replica."""
    if given:
        return given
    for target in targets:
        try:
            ipaddress.ip_address(target.rsplit(":", 1)[0].strip("[]"))
        except ValueError:
            raise SystemExit(f"client: {target} is no IP address; give --balanced dns:///NAME:PORT") from None
    return ("ipv6:" if ":" in targets[0].rsplit(":", 1)[0] else "ipv4:") + ",".join(targets)


def round_robin_channel(target: str) -> grpc.Channel:
    """One channel over every replica: round_robin sends each call to the next ready replica."""
    return grpc.insecure_channel(target, options=[("grpc.lb_policy_name", "round_robin")])


def replica_counts(url: str) -> dict[str, dict[str, float]]:
    """{code: {method: calls}} from one replica's Prometheus /metrics."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    counts: dict[str, dict[str, float]] = {}
    for sample in _SAMPLE.finditer(text):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', sample["labels"]))
        by_method = counts.setdefault(labels.get("code", "?"), {})
        by_method[labels.get("method", "?")] = float(sample["value"])
    return counts


def http_verify(base: str, key: str, request) -> dict:
    from google.protobuf import json_format

    body = json.dumps(json_format.MessageToDict(request)).encode()
    post = urllib.request.Request(
        f"{base}/ppfr.v1.FaceVerification/Verify",
        data=body,
        headers={"Content-Type": "application/json", "x-api-key": key},
    )
    with urllib.request.urlopen(post, timeout=60) as reply:
        return json.loads(reply.read())


class Session:
    """The calls of one client run over the round-robin channel, with what they answered."""

    def __init__(self, args, key: str):
        from ppfr.edge.frontend import FrontEnd
        from ppfr.protos import verification_pb2_grpc

        self.frontend = FrontEnd(args.bundle, threads=1)
        self.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
        self.balanced = balanced_target(self.targets, args.balanced)
        self.channel = round_robin_channel(self.balanced)
        self.stub = verification_pb2_grpc.FaceVerificationStub(self.channel)
        self.metadata = (("x-api-key", key),)
        self.key = key
        self.correct = self.decisions = 0
        self.last_verify = None  # (request, gRPC answer), for the HTTP comparison

    def face(self, path: Path):
        return self.frontend.to_proto(self.frontend.protect(read_face(path)))

    def enroll(self, name: str, image: Path) -> None:
        from ppfr.protos import verification_pb2 as pb

        request = pb.EnrollRequest(subject_id=name, face=self.face(image), idempotency_key=f"{image.stem}")
        reply = self.stub.Enroll(request, metadata=self.metadata, timeout=60, wait_for_ready=True)
        # the server answers template_count 0 to keys without the admin scope: left out, as ppfr-edge does
        held = f" ({reply.template_count} held)" if reply.template_count else ""
        log(f"enroll {name:<22} template {reply.template_id}{held}")

    def verify(self, name: str, image: Path, genuine: bool) -> None:
        from ppfr.protos import verification_pb2 as pb

        request = pb.VerifyRequest(subject_id=name, face=self.face(image))
        reply = self.stub.Verify(request, metadata=self.metadata, timeout=60)
        right = reply.match == genuine
        self.decisions += 1
        self.correct += right
        self.last_verify = (request, reply)
        kind = "genuine " if genuine else "impostor"
        score = f"score={reply.score:.3f} " if reply.score else ""  # 0.0: hidden from this key
        log(
            f"verify {name:<22} {kind} {image.stem:<26} match={str(reply.match):<5} "
            f"{score}threshold={reply.threshold:.3f}{'' if right else '  WRONG'}"
        )

    def identify(self, name: str, image: Path) -> None:
        from ppfr.protos import verification_pb2 as pb

        reply = self.stub.Identify(pb.IdentifyRequest(face=self.face(image), top_k=3), metadata=self.metadata)
        found = [c.subject_id for c in reply.candidates]
        log(f"identify {image.stem:<28} -> {found or 'no one above the threshold'}")

    def subjects_on_each_replica(self) -> list[int]:
        """Each replica asked directly (its own channel): how many subjects it lists."""
        from ppfr.protos import verification_pb2 as pb
        from ppfr.protos import verification_pb2_grpc

        counts = []
        for target in self.targets:
            with grpc.insecure_channel(target) as channel:
                stub = verification_pb2_grpc.FaceVerificationStub(channel)
                reply = stub.ListSubjects(pb.ListSubjectsRequest(page_size=1000), metadata=self.metadata)
                counts.append(len(reply.subjects))
        return counts


def run(args) -> int:
    """Enroll, verify (genuine and impostor), identify over the round-robin channel, then the checks."""
    if not args.bundle:
        raise SystemExit("client: needs --bundle (or $PPFR_BUNDLE)")
    session = Session(args, api_key(args))
    chosen = people(args.data, args.subjects)
    log(f"{len(chosen)} LFW people, calls spread over {session.balanced} (round_robin)")
    try:
        for name, first, _ in chosen:
            session.enroll(name, first)
        for i, (name, _, probe) in enumerate(chosen):
            session.verify(name, probe, genuine=True)
            session.verify(name, chosen[(i + 1) % len(chosen)][2], genuine=False)
            session.identify(name, probe)
        listed = session.subjects_on_each_replica()
    except grpc.RpcError as err:
        log(f"FAILED: a call answered {err.code().name}: {err.details()}")
        return 1
    finally:
        session.channel.close()
    failures = [] if all(n >= len(chosen) for n in listed) else [f"replicas list {listed} subjects"]
    log(f"every replica lists the enrolled subjects: {listed} (one shared gallery)")
    if session.correct < MIN_CORRECT * session.decisions:
        failures.append(f"only {session.correct}/{session.decisions} verify decisions right")
    log(f"verify decisions right: {session.correct}/{session.decisions}")
    failures += check_http(args, session) + check_spread(args)
    for failure in failures:
        log(f"FAILED: {failure}")
    return 1 if failures else 0


def check_http(args, session) -> list[str]:
    """The last gRPC Verify's tensor again, over HTTP/JSON on each replica: the same decision."""
    request, over_grpc = session.last_verify
    failures = []
    for base in [u.strip() for u in args.http.split(",") if u.strip()]:
        try:
            over_http = http_verify(base, session.key, request)
        except OSError as err:
            failures.append(f"HTTP/JSON Verify on {base}: {err}")
            continue
        same = over_http.get("match") is over_grpc.match
        log(f"HTTP/JSON Verify on {base}: match={over_http.get('match')} (gRPC said {over_grpc.match})")
        if not same:
            failures.append(f"HTTP/JSON on {base} decided {over_http.get('match')}, gRPC {over_grpc.match}")
    return failures


def check_spread(args) -> list[str]:
    """Calls per replica from each /metrics: every replica must have served some, and none failed."""
    failures = []
    for i, url in enumerate(u.strip() for u in args.metrics.split(",") if u.strip()):
        try:
            counts = replica_counts(url)
        except OSError as err:
            failures.append(f"cannot read {url}: {err}")
            continue
        ok = counts.get("OK", {})
        errors = {f"{m} {code}": n for code, by in counts.items() if code != "OK" for m, n in by.items() if n}
        detail = ", ".join(f"{m} {n:g}" for m, n in sorted(ok.items()) if n)
        log(f"replica {chr(65 + i)} ({url}): {sum(ok.values()):g} calls OK ({detail}); errors: {errors or 0}")
        if not sum(ok.values()):
            failures.append(f"replica {chr(65 + i)} served no call: the calls were not spread")
        if errors:
            failures.append(f"replica {chr(65 + i)} answered errors: {errors}")
    return failures


if __name__ == "__main__":
    sys.exit("run it as: python deploy/cluster.py client ...")
