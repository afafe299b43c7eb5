"""ppfr-edge: photo -> protected tensor on the device -> gRPC to the verification server.

    ppfr-edge --server HOST:PORT --bundle artifacts/NAME enroll --id ID IMAGE...
    ppfr-edge --server HOST:PORT --bundle artifacts/NAME verify --id ID IMAGE...
    ppfr-edge --server HOST:PORT --bundle artifacts/NAME identify [--top K] IMAGE...
    ppfr-edge --bundle artifacts/NAME protect [--out DIR] IMAGE...
    ppfr-edge calibrate artifacts/NAME --photos DIR [--far 1e-3]    thresholds from the site's photos

A photo with several faces uses the most prominent one (size x detection score x nearness to the centre)
and warns; --strict refuses it instead.

Exit status: 0 all images done, 1 server or network problem, 2 bad input (unreadable photo, no face,
several faces with --strict, wrong bundle, bad arguments). See docs/edge.md.
"""

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from google.protobuf import json_format

from .client import Client, make_channel
from .detect import BUNDLE_DETECTOR, DEFAULT_DETECTOR
from .errors import EdgeError, ServerError
from .image import write_png
from .output import Report
from .pipeline import Pipeline
from .preview import preview

NEEDS_SERVER = ("enroll", "verify", "identify", "info", "delete")
CALIBRATE = "calibrate"


def _common(parser: argparse.ArgumentParser, default) -> None:
    """Options accepted before or after the command (`default` is SUPPRESS on the subcommands)."""
    d = (lambda value: value) if default is None else (lambda value: default)  # noqa: E731
    g = parser.add_argument_group("connection and model")
    g.add_argument("--server", default=d(None), help="HOST:PORT of `ppfr-cloud serve`")
    g.add_argument("--bundle", default=d(None), help="bundle folder written by ppfr-export (artifacts/NAME)")
    g.add_argument("--ca", default=d(None), help="CA certificate (PEM) to verify the server: enables TLS")
    g.add_argument("--cert", default=d(None), help="client certificate (PEM) for mutual TLS")
    g.add_argument("--key", default=d(None), help="client private key (PEM) for mutual TLS")
    g.add_argument("--server-name", default=d(None), help="TLS name to expect in the server certificate")
    g.add_argument(
        "--api-key",
        default=d(None),
        help="the server's API key (default: $PPFR_API_KEY, which keeps it out of `ps`)",
    )
    g.add_argument("--timeout", type=float, default=d(10.0), help="seconds per request (default 10)")
    g.add_argument("--json", action="store_true", default=d(False), help="one JSON document on stdout")
    g = parser.add_argument_group("face")
    g.add_argument(
        "--aligned", action="store_true", default=d(False), help="images are aligned 112x112 crops"
    )
    g.add_argument(
        "--strict",
        action="store_true",
        default=d(False),
        help="refuse a photo with several faces (default: use the most prominent one, with a warning)",
    )
    # Deprecated: the most prominent face is the default now. Accepted (hidden) so old scripts still run.
    g.add_argument("--largest", action="store_true", default=d(False), help=argparse.SUPPRESS)
    # The default is spelled out, not %(default)s: the subcommands' default is SUPPRESS.
    detector_help = f"YuNet ONNX model (default: the bundle's {BUNDLE_DETECTOR}, else {DEFAULT_DETECTOR})"
    g.add_argument("--detector", default=d(None), help=detector_help.replace("%", "%%"))
    g.add_argument("--min-score", type=float, default=d(0.6), help="face detection score threshold (0.6)")
    g.add_argument(
        "--tenant-secret",
        type=Path,
        default=d(None),
        help="sealed edge: the tenant's secret context (tenant keygen); with an rgb bundle, enroll/verify/"
        "identify send only the encrypted embedding and decrypt the answer here (docs/cloud.md)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ppfr-edge",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(parser, None)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    hidden = argparse.SUPPRESS

    def command(name, help_text, images=True):
        p = sub.add_parser(name, help=help_text, description=help_text)
        _common(p, hidden)
        if images:
            p.add_argument(
                "images", nargs="*", metavar="IMAGE", help="photos (or aligned crops with --aligned)"
            )
        return p

    for name, text in (
        ("enroll", "add each photo as a template of the subject"),
        ("verify", "1:1 — is each photo the claimed subject?"),
    ):
        p = command(name, text)
        who = p.add_mutually_exclusive_group(required=True)
        who.add_argument("--id", help="subject id")
        who.add_argument("--list", type=Path, help="file of lines 'ID IMAGE' (many subjects in one run)")
    p = command("identify", "1:N — the best-matching enrolled subjects for each photo")
    p.add_argument("--top", type=int, default=5, help="candidates per photo (default 5)")
    p = command("protect", "write the protected tensor (.npy) and a preview PNG of what the server receives")
    p.add_argument("--out", type=Path, help="output folder (default: beside each photo)")
    command("info", "what the server serves", images=False)
    p = command("tenant", "sealed templates: the tenant's CKKS keys (docs/cloud.md)", images=False)
    p.add_argument("action", choices=["keygen"], help="keygen: a new secret + public tenant context")
    p.add_argument("--out", type=Path, required=True, help="folder for tenant.secret (0600) + tenant.public")
    p = command("delete", "remove a subject and all its templates", images=False)
    p.add_argument("--id", required=True, help="subject id")
    # Listed here for `ppfr-edge --help`; its own options (and --help) are ppfr.edge.calibrate's.
    sub.add_parser(CALIBRATE, add_help=False, help="set a bundle's thresholds from the site's own photos")
    return parser


def _jobs(args) -> list[tuple[str | None, Path]]:
    """(subject id, image) pairs from --id + IMAGE... or from --list."""
    listed = getattr(args, "list", None)
    if listed is None:
        if not args.images:
            raise EdgeError(f"{args.command}: give at least one IMAGE")
        return [(getattr(args, "id", None), Path(p)) for p in args.images]
    if args.images:
        raise EdgeError("give images either on the command line (with --id) or in --list, not both")
    if not listed.is_file():
        raise EdgeError(f"--list file not found: {listed}")
    jobs = []
    for number, line in enumerate(listed.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split("\t", 1) if "\t" in line else line.split(None, 1)
        if len(parts) != 2:
            raise EdgeError(f"{listed}:{number}: expected 'ID IMAGE', got {line!r}")
        jobs.append((parts[0].strip(), Path(parts[1].strip())))
    if not jobs:
        raise EdgeError(f"--list file {listed} names no images")
    return jobs


def _connect(args, frontend_id: str | None) -> Client:
    if not args.server:
        raise EdgeError(f"{args.command} needs --server HOST:PORT")
    channel = make_channel(args.server, args.ca, args.cert, args.key, args.server_name)
    api_key = args.api_key or os.environ.get("PPFR_API_KEY")
    client = Client(channel, args.server, args.timeout, tls=bool(args.ca or args.cert), api_key=api_key)
    info = client.info()
    if frontend_id is not None and info.frontend_id and info.frontend_id != frontend_id:
        raise EdgeError(
            f"the server at {args.server} serves bundle {info.bundle_name!r} "
            f"(front-end {info.frontend_id[:12]}), but --bundle is front-end {frontend_id[:12]}: "
            "use the bundle the server was started with"
        )
    return client


def _output_paths(out_dir: Path | None, image: Path, used: set) -> tuple[Path, Path]:
    folder = out_dir if out_dir is not None else image.parent
    stem = image.stem
    n = 1
    while (folder / stem) in used:
        n += 1
        stem = f"{image.stem}-{n}"
    used.add(folder / stem)
    return folder / f"{stem}.protected.npy", folder / f"{stem}.preview.png"


def enrolled(r) -> dict:
    """Enroll's answer for the report. The server answers template_count 0 to keys without the admin scope
    (an enrolled subject holds at least one template): left out then, never shown as 0."""
    count = {"template_count": r.template_count} if r.template_count else {}
    return {"template_id": r.template_id, **count}


def verified(r) -> dict:
    """Verify's answer for the report. The score is left out where the server hides it: 0.0 to keys without
    the admin scope (unless it runs with --verify-scores), and for a subject not enrolled, which has none."""
    score = {"score": round(float(r.score), 6)} if r.score else {}
    return {"match": r.match, **score, "threshold": round(float(r.threshold), 6)}


def _request(args, client, subject_id, face, report_item) -> None:
    start = time.perf_counter()
    if args.command == "enroll":
        report_item.update(enrolled(client.enroll(subject_id, face)))
    elif args.command == "verify":
        report_item.update(verified(client.verify(subject_id, face)))
    else:
        r = client.identify(face, args.top)
        report_item.update(
            threshold=round(float(r.threshold), 6),
            candidates=[
                {"subject_id": c.subject_id, "score": round(float(c.score), 6), "match": c.match}
                for c in r.candidates
            ],
        )
    report_item["timings_ms"]["round_trip"] = round((time.perf_counter() - start) * 1000, 3)


def _process(args, report: Report) -> None:
    if args.command == "tenant":
        from .sealed import keygen  # tenseal only where sealed templates are used

        report.info(keygen(args.out))
        return
    if args.command in ("info", "delete"):
        client = _connect(args, None)
        if args.command == "info":
            report.info(json_format.MessageToDict(client.info(), preserving_proto_field_name=True))
        else:
            r = client.delete(args.id)
            report.info({"subject_id": r.subject_id, "deleted_template_count": r.deleted_template_count})
        return
    if not args.bundle:
        raise EdgeError(
            "--bundle DIR is required (a folder written by ppfr-export, e.g. artifacts/dlib_ppfr_fd)"
        )
    jobs = _jobs(args)
    if args.largest:
        report.warn(
            "--largest is deprecated and has no effect: the most prominent face is used by default "
            "(--strict refuses photos with several faces)"
        )
    pipeline = Pipeline(args.bundle, args.aligned, args.strict, args.detector, args.min_score)
    frontend = pipeline.frontend
    if args.tenant_secret and args.command in ("enroll", "verify", "identify"):
        from .sealed import SealedEdge  # tenseal only where sealed templates are used

        pipeline.sealed = SealedEdge(args.bundle, args.tenant_secret)
    report.start(bundle=str(args.bundle), method=frontend.manifest.method, frontend_id=frontend.frontend_id)
    client = _connect(args, frontend.frontend_id) if args.command in NEEDS_SERVER else None
    used: set = set()
    for subject_id, image in jobs:
        item = report.item(image, subject_id)
        try:
            _one(args, pipeline, client, subject_id, image, item, used, report)
            report.done(item)
        except ServerError as err:
            if err.fatal:  # the server is gone or refuses us: stop, reported once by main
                raise
            report.failed(item, err)
        except EdgeError as err:
            report.failed(item, err)
        except OSError as err:  # e.g. an output folder that cannot be written
            report.failed(item, EdgeError(f"{image}: {err.strerror or err}"))


def _one(
    args, pipeline: Pipeline, client, subject_id, image: Path, item: dict, used: set, report: Report
) -> None:
    """One photo: protect it, then send it (enroll/verify/identify) or write it out (protect)."""
    if getattr(pipeline, "sealed", None) is not None:
        from .sealed import sealed_request

        return sealed_request(args, pipeline, client, subject_id, image, item)
    done = pipeline.run(image)
    item["timings_ms"].update(done.timings_ms)
    if done.face is not None:
        item["face"] = {
            "box": [round(float(v), 1) for v in done.face.box],
            "score": round(done.face.score, 3),
        }
        item["faces_found"] = done.faces_found
    if done.warning:
        report.warn(done.warning, item)
    face = pipeline.frontend.to_proto(done.tensor)
    item["payload_bytes"] = len(face.data)
    item["shape"] = list(done.tensor.shape)
    if args.command == "protect":
        npy, png = _output_paths(args.out, image, used)
        npy.parent.mkdir(parents=True, exist_ok=True)
        np.save(npy, done.tensor)
        write_png(png, preview(done.face_bgr, done.tensor, pipeline.frontend.manifest.method))
        item.update(tensor=str(npy), preview=str(png))
    else:
        _request(args, client, subject_id, face, item)


def _parse(argv: list[str]):
    """The arguments; for `calibrate`, those after the command too (ppfr.edge.calibrate parses them)."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command != CALIBRATE and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == CALIBRATE and argv[0] != CALIBRATE:
        parser.error("calibrate takes its own options, after it: ppfr-edge calibrate BUNDLE --photos DIR")
    return args, rest


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, rest = _parse(argv)
    if args.command == CALIBRATE:
        from .calibrate import main as calibrate  # cv2 and the calibration math only where used

        return calibrate(rest)
    report = Report(args.command, as_json=args.json)
    try:
        return _run(args, report)
    except BrokenPipeError:  # `ppfr-edge ... | head`: the reader left; no traceback, none at exit either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return report.status


def _run(args, report: Report) -> int:
    try:
        _process(args, report)
    except EdgeError as err:
        report.fatal(err)
    except KeyboardInterrupt:
        report.fatal(EdgeError("interrupted", 130))
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
