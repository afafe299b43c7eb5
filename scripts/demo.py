"""`make demo`: the whole ppfr stack on real faces in one go.

Trains the default model (or reuses a finished run), exports its bundle (unless it is up to date),
starts `ppfr-cloud serve` on a free loopback port, enrolls LFW identities through `ppfr-edge` (raw photos
through detection and alignment where ../shared/data has them, aligned crops otherwise), verifies genuine
and impostor probes, identifies every probe, prints accuracy, latency percentiles and payload bytes, and
stops the server — also when something fails or the demo is interrupted.

    .venv/bin/python scripts/demo.py [--config configs/small_ppfr_fd.yaml] [--identities 30]
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
LFW = DATA / "lfw" / "aligned112"
LFW_RAW = DATA / "lfw" / "raw250"  # raw originals, a folder per person
BIN = Path(sys.executable).parent


class DemoError(Exception):
    pass


def log(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        raise DemoError(f"{path} not found: run `make setup` (pip install -e '.[train,edge,cloud,dev]')")
    return str(path)


def run(cmd: list, what: str) -> None:
    log(f"{what}: {' '.join(str(c) for c in cmd)}")
    started = time.monotonic()
    if subprocess.run([str(c) for c in cmd], cwd=REPO).returncode != 0:
        raise DemoError(f"{what} failed (command above); fix it and run `make demo` again")
    log(f"{what} done in {time.monotonic() - started:.0f} s")


# --- model: train or reuse, export or reuse ----------------------------------------------------------
def ensure_bundle(config: Path, run_name: str, overrides: list[str]) -> Path:
    """runs/<run>/checkpoint.pt from a finished training run (metrics.json written after it); else the
    shipped pretrained default pretrained/<run>/ (made by `make train`, see pretrained/README.md); else
    trained or resumed here. artifacts/<run> is exported unless it is newer than the checkpoint."""
    out = REPO / "runs" / run_name
    checkpoint, metrics = out / "checkpoint.pt", out / "metrics.json"
    bundle = REPO / "artifacts" / run_name
    shipped = REPO / "pretrained" / run_name / "checkpoint.pt"
    finished = (
        checkpoint.is_file() and metrics.is_file() and metrics.stat().st_mtime >= checkpoint.stat().st_mtime
    )
    if finished:
        log(f"reusing the finished run {out.relative_to(REPO)} (delete it to train again)")
    elif shipped.is_file() and not checkpoint.is_file() and not overrides:
        log(f"using the shipped pretrained default {shipped.relative_to(REPO)} (`make train` reproduces it)")
        checkpoint = shipped
    else:
        cmd = [tool("ppfr-train"), "--config", config, "--out", out]
        cmd += ["--resume", checkpoint] if checkpoint.is_file() else []
        cmd += [arg for item in overrides for arg in ("--set", item)]
        run(cmd, "training (resuming)" if checkpoint.is_file() else "training")
        if not checkpoint.is_file():
            raise DemoError(f"training finished but wrote no {checkpoint}")
    manifest = bundle / "manifest.json"
    if manifest.is_file() and manifest.stat().st_mtime >= checkpoint.stat().st_mtime:
        log(f"reusing the exported bundle {bundle.relative_to(REPO)}")
    else:
        # The demo runs on the public demo key unless a method key is given in the environment.
        key = [] if os.environ.get("PPFR_METHOD_KEY") else ["--demo-key"]
        run([tool("ppfr-export"), "--checkpoint", checkpoint, "--out", bundle, *key], "export")
    return bundle


# --- server ------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_serving(address: str, process: subprocess.Popen, log_path: Path, timeout: float = 120) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise DemoError(
                    f"the server exited with status {process.returncode}:\n{log_path.read_text()}"
                )
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.3)
    raise DemoError(f"the server at {address} was not SERVING after {timeout:.0f} s:\n{log_path.read_text()}")


class Server:
    """`ppfr-cloud serve` in the background; stop() is safe to call at any time, more than once."""

    def __init__(self, bundle: Path, workdir: Path):
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log_path = workdir / "server.log"
        db = workdir / "gallery.sqlite"
        cmd = [
            tool("ppfr-cloud"),
            "serve",
            "--bundle",
            str(bundle),
            "--db",
            str(db),
            "--port",
            str(self.port),
        ]
        # The server requires an API key: the demo makes its own (all scopes, no rate limit) and hands it to
        # ppfr-edge through $PPFR_API_KEY, never on a command line.
        made = subprocess.run(
            [tool("ppfr-cloud"), "keys", "create", "--db", str(db), "--name", "demo"]
            + ["--scopes", "verify,enroll,admin", "--rate", "0"],
            capture_output=True,
            text=True,
        )
        if made.returncode != 0:
            raise DemoError(f"ppfr-cloud keys create failed: {made.stderr.strip()}")
        self.api_key = made.stdout.strip()
        log(f"starting the server: {' '.join(cmd)}")
        self.log_file = open(self.log_path, "w")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            cmd, cwd=REPO, stdout=self.log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
        started = time.monotonic()
        wait_serving(self.address, self.process, self.log_path)
        log(
            f"server SERVING at {self.address} after {time.monotonic() - started:.1f} s (log {self.log_path})"
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            log(f"server stopped (exit status {self.process.returncode})")
        self.log_file.close()


# --- the faces ---------------------------------------------------------------------------------------
def choose_people(count: int, enroll: int = 3) -> list[dict]:
    """LFW identities, each enrolled from `enroll` photos (as deployments do) and probed with up to two
    others. People with four or more raw originals in lfw/raw250 come first: every one of their photos
    goes through detection and alignment on the edge. Aligned crops fill up the rest, if needed."""
    raw: dict[str, list[Path]] = {}
    for folder in sorted(LFW_RAW.iterdir()) if LFW_RAW.is_dir() else []:
        photos = sorted(folder.glob("*.jpg"))
        if len(photos) >= enroll + 1:
            raw[folder.name] = photos
    chosen = list(raw)[:: max(1, len(raw) // max(1, count))][:count]
    people = [
        {"id": n, "raw": True, "gallery": raw[n][:enroll], "probes": raw[n][enroll : enroll + 2]}
        for n in chosen
    ]
    if not LFW.is_dir():
        raise DemoError(f"the LFW faces are missing: expected {LFW} (clone the project beside ../shared)")
    names = sorted(d.name for d in LFW.iterdir() if d.is_dir() and d.name not in raw)
    multi = [n for n in names if len(list((LFW / n).glob("*.jpg"))) >= enroll + 1]
    step = max(1, len(multi) // max(1, count - len(people)))
    for name in multi[::step][: max(0, count - len(people))]:
        images = sorted((LFW / name).glob("*.jpg"))
        people.append(
            {"id": name, "raw": False, "gallery": images[:enroll], "probes": images[enroll : enroll + 2]}
        )
    return people


def edge(server: Server, bundle: Path, command: str, rows: list, workdir: Path, aligned: bool) -> list[dict]:
    """One ppfr-edge run over many images; returns its per-image JSON results."""
    cmd = [tool("ppfr-edge"), "--server", server.address, "--bundle", str(bundle), "--json"]
    cmd += ["--aligned"] if aligned else []  # raw photos: the most prominent face, as by default
    if command == "identify":
        cmd += ["identify", "--top", "3", *[str(path) for _, path in rows]]
    else:
        listing = workdir / f"{command}-{'aligned' if aligned else 'raw'}.txt"
        listing.write_text("".join(f"{subject}\t{path}\n" for subject, path in rows))
        cmd += [command, "--list", str(listing)]
    env = {**os.environ, "PPFR_API_KEY": server.api_key}
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    try:
        document = json.loads(done.stdout)
    except json.JSONDecodeError:
        raise DemoError(f"ppfr-edge {command} failed (status {done.returncode}):\n{done.stderr}") from None
    if "error" in document:
        raise DemoError(f"ppfr-edge {command}: {document['error']}")
    for r in document["results"]:
        if not r["ok"]:
            log(f"  ppfr-edge {command}: {r['error']}")
    return document["results"]


def batch(
    server: Server, bundle: Path, workdir: Path, people: list[dict], command: str, rows_of
) -> list[dict]:
    """ppfr-edge over all people: one run for the raw photos (detection + alignment), one for the aligned
    crops. `rows_of(people)` gives (subject id, image, extra fields for the report) per request."""
    results = []
    for raw in (True, False):
        rows = rows_of([p for p in people if p["raw"] == raw])
        if rows:
            answers = edge(
                server, bundle, command, [(s, path) for s, path, _ in rows], workdir, aligned=not raw
            )
            results += [dict(answer, **extra) for answer, (_, _, extra) in zip(answers, rows)]
    return results


def verify_rows(people: list[dict], ids: list[str]):
    """Each probe claims its own identity (genuine) and the next person's (impostor)."""
    rows = []
    for p in people:
        other = ids[(ids.index(p["id"]) + 1) % len(ids)]
        rows += [(p["id"], probe, {"kind": "genuine"}) for probe in p["probes"]]
        rows += [(other, probe, {"kind": "impostor"}) for probe in p["probes"]]
    return rows


# --- report ------------------------------------------------------------------------------------------
def percentiles(values) -> str:
    if not values:
        return "n/a"
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return f"p50 {p50:7.1f}  p90 {p90:7.1f}  p99 {p99:7.1f}  (n={len(values)})"


def shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def share(part: int, whole: int) -> str:
    return f"{part:4d} / {whole:<4d} ({part / max(1, whole):.1%})"


def best_split(g_scores, i_scores) -> tuple[float, float]:
    """(threshold, accuracy) that best separates these probes; chosen after the fact, for reference."""
    from ppfr.train.evaluate import best_threshold  # the one the 10-fold evaluation uses

    scores = np.concatenate([g_scores, i_scores])
    same = np.arange(len(scores)) < len(g_scores)
    t = best_threshold(scores, same)
    return t, float(np.mean((scores > t) == same))


def report(people, enrolled, verified, identified, calibration: dict, started: float, bundle: Path) -> dict:
    threshold = calibration.get("cosine", 0.0)
    genuine = [r for r in verified if r["ok"] and r["kind"] == "genuine"]
    impostor = [r for r in verified if r["ok"] and r["kind"] == "impostor"]
    accepted = sum(r["match"] for r in genuine)
    rejected = sum(not r["match"] for r in impostor)
    ranked = [r for r in identified if r["ok"] and r["candidates"]]
    rank1 = sum(r["candidates"][0]["subject_id"] == r["truth"] for r in ranked)
    g_scores = np.array([r["score"] for r in genuine])
    i_scores = np.array([r["score"] for r in impostor])
    both = len(g_scores) and len(i_scores)
    separation = float((g_scores[:, None] > i_scores[None, :]).mean()) if both else 0.0
    done = [r for r in enrolled + verified + identified if r["ok"]]
    failed = len(enrolled + verified + identified) - len(done)
    payload = sorted({r["payload_bytes"] for r in done})
    accuracy = (accepted + rejected) / max(1, len(genuine) + len(impostor))

    print("\n" + "=" * 78)
    print(f"ppfr demo - bundle {shown(bundle)}, verification threshold (cosine) {threshold:.3f}")
    n_raw = sum(p["raw"] for p in people)
    print(f"gallery: {len(people)} LFW identities, {sum(r['ok'] for r in enrolled)} templates enrolled")
    raw_probes = sum(len(p["probes"]) for p in people if p["raw"])
    print(f"         ({n_raw} identities from raw photos through YuNet + alignment, the rest from aligned")
    print(f"         crops; {raw_probes} of {sum(len(p['probes']) for p in people)} probes are raw photos)")
    print("\nsample decisions (probe -> claimed identity: score, decision):")
    for r in genuine[:4] + impostor[:4]:
        verdict = "ACCEPT" if r["match"] else "reject"
        right = "correct" if r["match"] == (r["kind"] == "genuine") else "WRONG"
        name, claim = Path(r["image"]).name, r["subject_id"]
        print(f"  {r['kind']:8s} {name:34s} -> {claim:24s} {r['score']:6.3f} {verdict} ({right})")
    print("\nverification at the bundle's threshold:")
    print(f"  genuine probes accepted   {share(accepted, len(genuine))}")
    print(f"  impostor probes rejected  {share(rejected, len(impostor))}")
    print(f"  accuracy                  {accuracy:.1%}")
    if both:
        print(f"  mean score: genuine {g_scores.mean():.3f}, impostor {i_scores.mean():.3f}; a genuine score")
        print(f"  beats an impostor score in {separation:.1%} of (genuine, impostor) pairs")
        far, tar = calibration.get("falseAcceptRate"), calibration.get("trueAcceptRate")
        if far and tar is not None:
            print(f"  (the bundle's threshold is the FAR {far:g} operating point, where this model accepts")
            where = calibration.get("evaluationSet", "its evaluation set")
            print(f"  {tar:.1%} of genuine pairs on {where})")
        t, acc = best_split(g_scores, i_scores)
        print(f"  for reference, the threshold that best separates these probes ({t:.3f}, chosen after")
        print(f"  the fact, so optimistic) gives accuracy {acc:.1%}")
    asked = sum(r["ok"] for r in identified)
    print(f"identification 1:{len(people)} (Identify answers only candidates above the threshold):")
    print(f"  probes with a match       {share(len(ranked), asked)}")
    print(f"  top match the right person {share(rank1, len(ranked))}")
    print("\nlatency per image in ms (this machine; one ppfr-edge process per batch of images):")
    for stage in ("detect", "align", "protect", "round_trip"):
        values = [r["timings_ms"][stage] for r in done if stage in r["timings_ms"]]
        print(f"  {stage.replace('_', ' '):11s} {percentiles(values)}")
    print(f"  {'edge total':11s} {percentiles([sum(r['timings_ms'].values()) for r in done])}")
    sizes = ", ".join(f"{b:,} B" for b in payload)
    print(f"payload per query: {sizes} (the protected tensor; no image leaves the edge)")
    print(f"failed requests: {failed}")
    print(f"demo wall time: {time.monotonic() - started:.0f} s")
    print("=" * 78)
    return {
        "bundle": shown(bundle),
        "threshold": threshold,
        "identities": len(people),
        "genuine_accepted": accepted,
        "genuine": len(genuine),
        "impostor_rejected": rejected,
        "impostor": len(impostor),
        "accuracy": accuracy,
        "pair_separation": separation,
        "rank1_correct": rank1,
        "identified": len(ranked),
        "payload_bytes": payload,
        "failed": failed,
        "wall_s": round(time.monotonic() - started, 1),
        "decisions": [
            {k: r[k] for k in ("kind", "image", "subject_id", "score", "match")} for r in genuine + impostor
        ],
    }


# --- main --------------------------------------------------------------------------------------------
def demo(args, started: float) -> int:
    if args.bundle:
        bundle = Path(args.bundle).resolve()
        log(f"using the given bundle {bundle} (no training, no export)")
    else:
        config = Path(args.config)
        if not (REPO / config).is_file():
            raise DemoError(f"config {config} not found")
        bundle = ensure_bundle(config, args.run or config.stem, args.set)
    calibration = json.loads((bundle / "manifest.json").read_text()).get("threshold", {})
    people = choose_people(args.identities, args.enroll)
    workdir = REPO / "runs" / "demo"
    workdir.mkdir(parents=True, exist_ok=True)
    for stale in workdir.glob("gallery.sqlite*"):
        stale.unlink()
    server = Server(bundle, workdir)
    ids = [p["id"] for p in people]
    try:
        log(f"enrolling {len(people)} identities through ppfr-edge")
        enrolled = batch(
            server,
            bundle,
            workdir,
            people,
            "enroll",
            lambda ps: [(p["id"], g, {}) for p in ps for g in p["gallery"]],
        )
        log("verifying genuine and impostor probes")
        verified = batch(server, bundle, workdir, people, "verify", lambda ps: verify_rows(ps, ids))
        log("identifying every probe (1:N)")
        identified = batch(
            server,
            bundle,
            workdir,
            people,
            "identify",
            lambda ps: [(p["id"], q, {"truth": p["id"]}) for p in ps for q in p["probes"]],
        )
    finally:
        server.stop()
    summary = report(people, enrolled, verified, identified, calibration, started, bundle)
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log(f"summary written to {(workdir / 'summary.json').relative_to(REPO)}")
    return 0 if summary["failed"] == 0 else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/dlib_ppfr_fd.yaml", help="training config")
    parser.add_argument("--run", help="run name (default: the config's file name without .yaml)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="training config override (ppfr-train --set)",
    )
    parser.add_argument("--bundle", help="use this exported bundle as is (skips training and export)")
    parser.add_argument("--identities", type=int, default=30, help="LFW identities to enroll (default 30)")
    parser.add_argument("--enroll", type=int, default=3, help="photos enrolled per identity (default 3)")
    args = parser.parse_args(argv)
    started = time.monotonic()

    def interrupted(signum, _frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)
    try:
        return demo(args, started)
    except DemoError as err:
        print(f"demo: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("demo: interrupted; the server was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    os.chdir(REPO)
    sys.exit(main())
