"""What ppfr-edge prints: one line per image for people, or one JSON document with --json."""

import json
import sys

from .errors import EXIT_OK, EdgeError

STAGES = ("detect", "align", "protect", "round_trip")


class Report:
    def __init__(self, command: str, as_json: bool = False):
        self.command = command
        self.as_json = as_json
        self.document: dict = {"command": command, "results": []}
        self.status = EXIT_OK

    # --- collecting -----------------------------------------------------------------------------
    def start(self, **context) -> None:
        self.document.update(context)

    def item(self, image, subject_id) -> dict:
        item = {"image": str(image)}
        if subject_id is not None:
            item["subject_id"] = subject_id
        item.update(ok=False, timings_ms={})
        return item

    def done(self, item: dict) -> None:
        item["ok"] = True
        self.document["results"].append(item)
        if not self.as_json:
            print(f"{item['image']}  {self._verdict(item)}  | {self._timings(item)}", flush=True)

    def failed(self, item: dict, err: EdgeError) -> None:
        item.update(error=str(err), exit_status=err.exit_status)
        if getattr(err, "code", ""):
            item["code"] = err.code
        self.document["results"].append(item)
        self.status = max(self.status, err.exit_status)
        print(f"ppfr-edge: error: {err}", file=sys.stderr, flush=True)

    def warn(self, message: str, item: dict | None = None) -> None:
        """A warning on stderr; in the JSON document under the image's `warning`, or `warnings`."""
        if item is not None:
            item["warning"] = message
        else:
            self.document.setdefault("warnings", []).append(message)
        print(f"ppfr-edge: warning: {message}", file=sys.stderr, flush=True)

    def info(self, data: dict) -> None:
        self.document["info"] = data
        if not self.as_json:
            print(json.dumps(data, indent=2))

    def fatal(self, err: EdgeError) -> None:
        self.document["error"] = str(err)
        self.status = max(self.status, err.exit_status) if self.status else err.exit_status
        print(f"ppfr-edge: error: {err}", file=sys.stderr, flush=True)

    def finish(self) -> int:
        results = self.document["results"]
        self.document["exit_status"] = self.status
        self.document["failed"] = sum(not r["ok"] for r in results)
        if self.as_json:
            print(json.dumps(self.document, indent=1))
        elif len(results) > 1:
            print(self._summary(results), flush=True)
        return self.status

    # --- formatting -----------------------------------------------------------------------------
    def _verdict(self, r: dict) -> str:
        # template_count and score are absent where the server keeps them from the caller's key
        if self.command == "enroll":
            count = r.get("template_count")
            held = f", {count} template{'' if count == 1 else 's'}" if count else ""
            return f"enrolled as {r['subject_id']} (template {r['template_id']}{held})"
        if self.command == "verify":
            verdict = "MATCH" if r["match"] else "NO MATCH"
            score = f"  score {r['score']:.3f}" if "score" in r else ""
            return f"{r['subject_id']}: {verdict}{score}  threshold {r['threshold']:.3f}"
        if self.command == "identify":
            best = (
                ", ".join(
                    f"{c['subject_id']} {c['score']:.3f}{' (match)' if c['match'] else ''}"
                    for c in r["candidates"]
                )
                or "no match above the threshold"
            )
            return f"-> {best}  threshold {r['threshold']:.3f}"
        return f"-> {r['tensor']}, {r['preview']}  {r['shape']}"

    @staticmethod
    def _timings(r: dict) -> str:
        t = r["timings_ms"]
        parts = [f"{s.replace('_', ' ')} {t[s]:.1f} ms" for s in STAGES if s in t]
        return "  ".join(parts) + f"  | {r['payload_bytes']:,} B"

    def _summary(self, results: list) -> str:
        ok = [r for r in results if r["ok"]]
        line = f"{self.command}: {len(results)} images, {len(ok)} done, {len(results) - len(ok)} failed"
        if self.command == "verify" and ok:
            line += f" ({sum(r['match'] for r in ok)} match, {sum(not r['match'] for r in ok)} no match)"
        return line
