"""`ppfr-demo` (`make demo`): the whole ppfr stack on real faces in one go.

Trains the default model (or reuses a finished run), exports its bundle (unless it is up to date), starts a
local server (ppfr.cloud.local: free loopback port, fresh gallery, its own API key), enrolls LFW identities
through `ppfr-edge` (raw photos through detection and alignment where the shared data has them, aligned
crops otherwise), verifies genuine and impostor probes, identifies every probe, prints accuracy, latency
percentiles and payload bytes, and stops the server, also when something fails or the demo is interrupted.
Run it in the checkout (runs/, artifacts/, pretrained/ and configs/ are read and written there).

    ppfr-demo [--config configs/dlib_ppfr_fd.yaml] [--identities 30] [--bundle DIR] [--sealed]

--sealed (`make demo-sealed`, issue 27): sealed edge. The rgb bundle (configs/dlib_rgb.yaml: the pretrained
dlib net, nothing to train; its export computes the threshold) runs on the edge with a fresh tenant key
(`ppfr-edge tenant keygen`), the server (`--sealed sealed-edge --tenant-context`) stores and matches only
ciphertexts, and the edge decrypts and thresholds its answers (docs/cloud.md, "Sealed templates").
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ppfr.cloud.local import LocalServer, LocalServerError
from ppfr.data import data_path

from .report import report, shown

LFW = data_path("lfw", "aligned112")
LFW_RAW = data_path("lfw", "raw250")  # raw originals, a folder per person
BIN = Path(sys.executable).parent
WORKDIR = Path("runs") / "demo"
SEALED_CONFIG = Path("configs") / "dlib_rgb.yaml"
# nothing to train: no training-time LFW pass (the export computes the threshold) and no unlabeled faces
SEALED_OVERRIDES = ["data.eval=[]", "data.unlabeled=[]"]


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
    if subprocess.run([str(c) for c in cmd]).returncode != 0:
        raise DemoError(f"{what} failed (command above); fix it and run `make demo` again")
    log(f"{what} done in {time.monotonic() - started:.0f} s")


# --- model: train or reuse, export or reuse ----------------------------------------------------------
def checkpoint_for(config: Path, run_name: str, overrides: list[str]) -> Path:
    """runs/<run>/checkpoint.pt from a finished training run (metrics.json written after it), or its slimmed
    copy runs/<run>_slim/ where `make train` made one after it; else the
    shipped pretrained default pretrained/<run>/ (made by `make train`, see pretrained/README.md); else
    trained or resumed here."""
    out = Path("runs") / run_name
    checkpoint, metrics = out / "checkpoint.pt", out / "metrics.json"
    shipped = Path("pretrained") / run_name / "checkpoint.pt"
    finished = (
        checkpoint.is_file() and metrics.is_file() and metrics.stat().st_mtime >= checkpoint.stat().st_mtime
    )
    slim = Path("runs") / f"{run_name}_slim" / "checkpoint.pt"  # make train's last step for the default
    if finished and slim.is_file() and slim.stat().st_mtime >= checkpoint.stat().st_mtime:
        log(f"reusing the finished run {out}, slimmed: {slim} (delete them to train again)")
        return slim
    if finished:
        log(f"reusing the finished run {out} (delete it to train again)")
        return checkpoint
    if shipped.is_file() and not checkpoint.is_file() and not overrides:
        log(f"using the shipped pretrained default {shipped} (`make train` reproduces it)")
        return shipped
    cmd = [tool("ppfr-train"), "--config", config, "--out", out]
    cmd += ["--resume", checkpoint] if checkpoint.is_file() else []
    cmd += [arg for item in overrides for arg in ("--set", item)]
    run(cmd, "training (resuming)" if checkpoint.is_file() else "training")
    if not checkpoint.is_file():
        raise DemoError(f"training finished but wrote no {checkpoint}")
    return checkpoint


def ensure_bundle(config: Path, run_name: str, overrides: list[str]) -> Path:
    """artifacts/<run>, exported from the run's checkpoint unless it is newer than the checkpoint."""
    checkpoint = checkpoint_for(config, run_name, overrides)
    bundle = Path("artifacts") / run_name
    manifest = bundle / "manifest.json"
    if manifest.is_file() and manifest.stat().st_mtime >= checkpoint.stat().st_mtime:
        log(f"reusing the exported bundle {bundle}")
    else:
        # The demo runs on the public demo key unless a method key is given in the environment.
        key = [] if os.environ.get("PPFR_METHOD_KEY") else ["--demo-key"]
        run([tool("ppfr-export"), "--checkpoint", checkpoint, "--out", bundle, *key], "export")
    return bundle


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
        raise DemoError(f"no LFW faces at {LFW}: set PPFR_DATA or clone the project beside ../shared")
    names = sorted(d.name for d in LFW.iterdir() if d.is_dir() and d.name not in raw)
    multi = [n for n in names if len(list((LFW / n).glob("*.jpg"))) >= enroll + 1]
    step = max(1, len(multi) // max(1, count - len(people)))
    for name in multi[::step][: max(0, count - len(people))]:
        images = sorted((LFW / name).glob("*.jpg"))
        people.append(
            {"id": name, "raw": False, "gallery": images[:enroll], "probes": images[enroll : enroll + 2]}
        )
    return people


def gallery_rows(people: list[dict]):
    return [(p["id"], photo, {}) for p in people for photo in p["gallery"]]


def probe_rows(people: list[dict]):
    return [(p["id"], probe, {"truth": p["id"]}) for p in people for probe in p["probes"]]


def verify_rows(people: list[dict], ids: list[str]):
    """Each probe claims its own identity (genuine) and the next person's (impostor)."""
    rows = []
    for p in people:
        other = ids[(ids.index(p["id"]) + 1) % len(ids)]
        rows += [(p["id"], probe, {"kind": "genuine"}) for probe in p["probes"]]
        rows += [(other, probe, {"kind": "impostor"}) for probe in p["probes"]]
    return rows


# --- the edge ----------------------------------------------------------------------------------------
def edge(server: LocalServer, bundle: Path, command: str, rows: list, aligned: bool, extra=()) -> list[dict]:
    """One ppfr-edge run over many images (`extra`: more ppfr-edge flags); its per-image JSON results."""
    cmd = [tool("ppfr-edge"), "--server", server.address, "--bundle", str(bundle), "--json", *extra]
    cmd += ["--aligned"] if aligned else []  # raw photos: the most prominent face, as by default
    if command == "identify":
        cmd += ["identify", "--top", "3", *[str(path) for _, path in rows]]
    else:
        listing = WORKDIR / f"{command}-{'aligned' if aligned else 'raw'}.txt"
        listing.write_text("".join(f"{subject}\t{path}\n" for subject, path in rows))
        cmd += [command, "--list", str(listing)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=server.env())
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
    server: LocalServer, bundle: Path, people: list[dict], command: str, rows_of, extra=()
) -> list[dict]:
    """ppfr-edge over all people: one run for the raw photos (detection + alignment), one for the aligned
    crops. `rows_of(people)` gives (subject id, image, extra fields for the report) per request."""
    results = []
    for raw in (True, False):
        rows = rows_of([p for p in people if p["raw"] == raw])
        if rows:
            pairs = [(s, path) for s, path, _ in rows]
            answers = edge(server, bundle, command, pairs, aligned=not raw, extra=extra)
            results += [dict(answer, **extra) for answer, (_, _, extra) in zip(answers, rows)]
    return results


def enroll_verify_identify(server: LocalServer, bundle: Path, people: list[dict], extra=()):
    """(enrolled, verified, identified) results; `extra`: more ppfr-edge flags (--tenant-secret)."""
    ids = [p["id"] for p in people]
    log(f"enrolling {len(people)} identities through ppfr-edge")
    enrolled = batch(server, bundle, people, "enroll", gallery_rows, extra)
    log("verifying genuine and impostor probes")
    verified = batch(server, bundle, people, "verify", lambda ps: verify_rows(ps, ids), extra)
    log("identifying every probe (1:N)")
    return enrolled, verified, batch(server, bundle, people, "identify", probe_rows, extra)


def sealed_setup() -> tuple[list[str], list[str]]:
    """A fresh tenant key for this demo (runs/demo/tenant, replaced each run): (serve flags, edge flags)."""
    import shutil

    from ppfr.edge.sealed import keygen

    keys = WORKDIR / "tenant"
    shutil.rmtree(keys, ignore_errors=True)
    keygen(keys)
    log(f"tenant keys in {keys}: tenant.secret stays with the edge, tenant.public goes to the server")
    serve = ["--sealed", "sealed-edge", "--tenant-context", str(keys / "tenant.public")]
    return serve, ["--tenant-secret", str(keys / "tenant.secret")]


# --- main --------------------------------------------------------------------------------------------
def demo(args, started: float) -> int:
    if args.bundle:
        bundle = Path(args.bundle).resolve()
        log(f"using the given bundle {bundle} (no training, no export)")
    else:
        config = Path(args.config or (SEALED_CONFIG if args.sealed else "configs/dlib_ppfr_fd.yaml"))
        if not config.is_file():
            raise DemoError(f"config {config} not found (run ppfr-demo in the checkout)")
        overrides = SEALED_OVERRIDES + args.set if args.sealed and not args.config else args.set
        bundle = ensure_bundle(config, args.run or config.stem, overrides)
    if not (bundle / "manifest.json").is_file():
        raise DemoError(f"{bundle} is not a bundle (no manifest.json): run `make export` first")
    calibration = json.loads((bundle / "manifest.json").read_text()).get("threshold", {})
    people = choose_people(args.identities, args.enroll)
    WORKDIR.mkdir(parents=True, exist_ok=True)
    serve, extra = sealed_setup() if args.sealed else ([], [])
    # its gallery: a fresh temporary one
    server = LocalServer(bundle, log_path=WORKDIR / "server.log", extra_args=serve)
    log(f"starting the server: {' '.join(server.command())}")
    try:
        with server:
            log(f"server SERVING at {server.address} (log {server.log_path})")
            enrolled, verified, identified = enroll_verify_identify(server, bundle, people, extra)
    except LocalServerError as err:
        raise DemoError(str(err)) from None
    log(f"server stopped (exit status {server.process.returncode})")
    summary = report(people, enrolled, verified, identified, calibration, started, bundle)
    (WORKDIR / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log(f"summary written to {shown(WORKDIR / 'summary.json')}")
    return 0 if summary["failed"] == 0 else 1


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="ppfr-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config",
        help="training config (default configs/dlib_ppfr_fd.yaml; with --sealed configs/dlib_rgb.yaml)",
    )
    parser.add_argument("--run", help="run name (default: the config's file name without .yaml)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="training config override"
    )
    parser.add_argument("--bundle", help="use this exported bundle as is (skips training and export)")
    parser.add_argument("--identities", type=int, default=30, help="LFW identities to enroll (default 30)")
    parser.add_argument("--enroll", type=int, default=3, help="photos enrolled per identity (default 3)")
    parser.add_argument(
        "--sealed",
        action="store_true",
        help="sealed edge: the rgb recognizer and encryption on the edge, only ciphertexts on the server",
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.monotonic()

    def interrupted(signum, _frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)
    try:
        return demo(args, started)
    except DemoError as err:
        print(f"ppfr-demo: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ppfr-demo: interrupted; the server was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
