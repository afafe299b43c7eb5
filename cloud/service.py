"""The ppfr.v1.FaceVerification service on grpc.aio: validate, embed through the batcher, match against the
gallery. Requests are checked before the engine; errors map to gRPC status codes with a clear message and
never reach the logs with tensor or template content.

What a key learns depends on its scopes (docs/cloud.md, "Scope matrix"); the calling key comes from the
gate (cloud/interceptor.py, CALLER). Admin keys (and every caller when authentication is off) see scores,
counts and subject ids; a verify key gets Verify's decision only, an unknown subject answered exactly like
a non-match, and failed attempts per subject are limited; an enroll key enrolls into new subjects or its
own and deletes only templates it enrolled. Gallery work runs on threads (never on the event loop), its
latency in ppfr_gallery_seconds."""

import asyncio
import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata

import grpc
from google.protobuf import timestamp_pb2
from ppfr.bundle.thresholds import Thresholds
from ppfr.cloud import validation
from ppfr.cloud.auth import FailedAttempts
from ppfr.cloud.batcher import BatcherClosed, DynamicBatcher
from ppfr.cloud.gallery import Gallery, GalleryUnavailable, SubjectTaken
from ppfr.cloud.interceptor import CALLER, REQUEST_ID, LogSampler
from ppfr.cloud.template_key import TemplateTransform
from ppfr.cloud.validation import FaceValidator, InvalidRequest
from ppfr.protos import manifest_pb2, verification_pb2, verification_pb2_grpc

log = logging.getLogger("ppfr.cloud")

MAX_MESSAGE_CHARS = 300  # error details stay small whatever the request held
READ_THREADS = 4  # gallery reads (PostgreSQL: a log query each) run on these, never on the event loop


def is_admin(key) -> bool:
    """None: authentication is off, every caller may do everything."""
    return key is None or "admin" in key.scopes


class NotFound(LookupError):
    pass


class DeadlineExceeded(TimeoutError):
    pass


def _package_version() -> str:
    try:
        return metadata.version("ppfr")
    except metadata.PackageNotFoundError:
        return "unknown"


def _rpc(method):
    """Maps the service's exceptions to status codes; anything unexpected is INTERNAL, logged by type."""

    @functools.wraps(method)
    async def wrapper(self, request, context):
        try:
            return await method(self, request, context)
        except InvalidRequest as err:
            code, message = grpc.StatusCode.INVALID_ARGUMENT, str(err)
        except NotFound as err:
            code, message = grpc.StatusCode.NOT_FOUND, str(err)
        except (DeadlineExceeded, TimeoutError):
            code, message = grpc.StatusCode.DEADLINE_EXCEEDED, "the call's deadline passed before it finished"
        except BatcherClosed as err:
            code, message = grpc.StatusCode.UNAVAILABLE, str(err)
        except GalleryUnavailable as err:
            if self.watch is not None:
                self.watch.failed(err)  # logged once per incident
            code, message = grpc.StatusCode.UNAVAILABLE, "the gallery database is unavailable; retry later"
        except SubjectTaken:
            code = grpc.StatusCode.PERMISSION_DENIED
            message = "this subject_id was enrolled by another key: choose another subject_id"
        except asyncio.CancelledError:
            raise
        except Exception as err:
            log.error(
                "request_id=%s %s failed: %s",
                REQUEST_ID.get(),
                method.__name__,
                type(err).__name__,
                exc_info=log.isEnabledFor(10),
            )
            code, message = grpc.StatusCode.INTERNAL, f"internal error ({type(err).__name__})"
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[: MAX_MESSAGE_CHARS - 3] + "..."
        await context.abort(code, message)

    return wrapper


class FaceVerificationService(verification_pb2_grpc.FaceVerificationServicer):
    def __init__(
        self,
        manifest: manifest_pb2.BundleManifest,
        bundle_name: str,
        batcher: DynamicBatcher,
        gallery: Gallery,
        template_transform: TemplateTransform | None = None,
        metrics=None,
        failed_attempts: FailedAttempts | None = None,
        verify_scores: bool = False,
        far: float | None = None,
    ):
        self.manifest = manifest
        self.bundle_name = bundle_name
        self.batcher = batcher
        self.gallery = gallery
        # Renewable templates (cloud/template_key.py): every embedding is turned into a template by the
        # deployment secret's orthogonal transform before it is stored or matched; None = stored as is.
        self.template_transform = template_transform
        self.validate_face = FaceValidator(manifest)
        self.threshold = float(manifest.threshold.cosine)  # answers about no particular subject
        self.thresholds = Thresholds.from_manifest(manifest, far)  # by the subject's template count
        # Where deletes, ListSubjects and the counts go: the gallery, or the sealed store (sealed_service.py);
        # both take the same calls and write the same audit log.
        self.store = gallery
        # Writes (with their fsync) run on one thread, reads on a few: the event loop never waits on the
        # database, and a read never queues behind a write's commit.
        self._db_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ppfr-gallery")
        self._read_threads = ThreadPoolExecutor(
            max_workers=READ_THREADS, thread_name_prefix="ppfr-gallery-read"
        )
        self.metrics = metrics
        self.attempts = failed_attempts or FailedAttempts(0, 0)
        self.verify_scores = verify_scores  # show Verify's score to verify keys too (server option)
        self.watch = None  # the GalleryWatch (cloud/health.py), set by the server
        self._lockout_log = LogSampler()

    # --- helpers ---------------------------------------------------------------------------------------
    @staticmethod
    def _remaining(context) -> float | None:
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            raise DeadlineExceeded()
        return remaining

    async def _embed(self, face, context):
        tensor = self.validate_face(face)
        remaining = self._remaining(context)
        return self._template(await asyncio.wait_for(self.batcher.embed(tensor), remaining))

    def _template(self, embedding):
        """The gallery's form of an embedding: the same vector, or Q e under a template secret."""
        if self.template_transform is None:
            return embedding
        return self.template_transform.apply(embedding)

    async def _in_db_thread(self, fn, *args):
        return await self._timed(self._db_thread, fn, *args)

    async def _read(self, fn, *args):
        return await self._timed(self._read_threads, fn, *args)

    async def _timed(self, pool, fn, *args):
        start = time.perf_counter()
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)
        finally:
            if self.metrics is not None:
                self.metrics.gallery_latency.labels(fn.__name__).observe(time.perf_counter() - start)

    def _locked_out(self, subject_id: str, key) -> bool:
        """A subject locked out for a verify key (admin keys are exempt): answered as a plain non-match
        without running the engine, so an attacker's flood on it costs the server next to nothing."""
        if is_admin(key) or not self.attempts.locked(subject_id):
            return False
        logged, held = self._lockout_log.allow()
        if logged:
            log.warning(
                "request_id=%s key=%s Verify answered non-match: too many failed attempts on one subject%s",
                REQUEST_ID.get(),
                key.key_id,
                f" [{held} more not logged]" if held else "",
            )
        return True

    def _scored(self, subject_id: str, embedding) -> tuple[float, float] | None:
        """(pooled score, the threshold for the subject's template count); None for an unknown subject."""
        score = self.gallery.verify(subject_id, embedding)
        if score is None:
            return None
        return score, self.thresholds.for_count(self.gallery.templates_of(subject_id))

    def _identified(self, embedding, top_k: int) -> list:
        """Identify's candidates that reach the threshold of their own template count."""
        threshold = self.thresholds.for_count
        matches = self.gallery.identify(embedding, top_k)
        return [m for m in matches if m.score >= threshold(self.gallery.templates_of(m.subject_id))]

    def _decide(self, subject_id: str, score: float | None, threshold: float, key) -> bool:
        """Verify's decision; a verify key's failures count towards the subject's lock-out."""
        match = score is not None and score >= threshold
        if not match and not is_admin(key):
            self.attempts.failed(subject_id)
        return match

    # --- rpcs ------------------------------------------------------------------------------------------
    @_rpc
    async def Enroll(self, request, context):
        subject_id = validation.subject_id(request.subject_id)
        key = validation.idempotency_key(request.idempotency_key)
        embedding = await self._embed(request.face, context)
        # A caller whose deadline has passed gets no new enrollment. The deadline can still pass during the
        # commit, so DEADLINE_EXCEEDED does not prove nothing was stored: retry with the same idempotency_key.
        self._remaining(context)
        caller = CALLER.get()
        owner, admin = (caller.key_id if caller else None), is_admin(caller)
        enrolled = await self._in_db_thread(self.gallery.enroll, subject_id, embedding, key, owner, not admin)
        create_time = timestamp_pb2.Timestamp()
        create_time.FromNanoseconds(int(enrolled.create_time * 1e9))
        return verification_pb2.EnrollResponse(
            subject_id=subject_id,
            template_id=enrolled.template_id,
            template_count=enrolled.template_count if admin else 0,  # counts only for admin keys
            create_time=create_time,
        )

    @_rpc
    async def Verify(self, request, context):
        subject_id = validation.subject_id(request.subject_id)
        key = CALLER.get()
        if self._locked_out(subject_id, key):
            self.validate_face(request.face)  # a malformed request is still INVALID_ARGUMENT
            return verification_pb2.VerifyResponse(subject_id=subject_id, threshold=self.threshold)
        embedding = await self._embed(request.face, context)
        scored = await self._read(self._scored, subject_id, embedding)  # None: not enrolled
        score, threshold = scored or (None, self.threshold)
        match = self._decide(subject_id, score, threshold, key)
        shown = score if score is not None and (self.verify_scores or is_admin(key)) else 0.0
        return verification_pb2.VerifyResponse(
            subject_id=subject_id, score=shown, match=match, threshold=threshold
        )

    @_rpc
    async def Identify(self, request, context):
        top_k = validation.top_k(request.top_k)
        embedding = await self._embed(request.face, context)
        # Only matches: a caller learns nothing about subjects that score below the threshold.
        candidates = [
            verification_pb2.Candidate(subject_id=m.subject_id, score=m.score, match=True)
            for m in await self._read(self._identified, embedding, top_k)
        ]
        return verification_pb2.IdentifyResponse(candidates=candidates, threshold=self.threshold)

    @_rpc
    async def DeleteSubject(self, request, context):
        subject_id = validation.subject_id(request.subject_id)
        caller = CALLER.get()
        deleted = await self._in_db_thread(self.store.delete, subject_id, caller.key_id if caller else None)
        if not deleted:
            raise NotFound(f"subject {subject_id!r} is not enrolled")
        return verification_pb2.DeleteSubjectResponse(subject_id=subject_id, deleted_template_count=deleted)

    @_rpc
    async def DeleteTemplate(self, request, context):
        template_id = validation.template_id(request.template_id)
        caller = CALLER.get()
        owner = None if is_admin(caller) else caller.key_id  # enroll keys: only what they enrolled
        actor = caller.key_id if caller else None
        subject_id = await self._in_db_thread(self.store.delete_template, template_id, owner, actor)
        if subject_id is None:
            raise NotFound(f"template {template_id} does not exist or was enrolled by another key")
        shown = subject_id if owner is None else ""  # the subject id only for admin keys
        return verification_pb2.DeleteTemplateResponse(subject_id=shown, template_id=template_id)

    @_rpc
    async def ListSubjects(self, request, context):
        page_size, page_token = validation.page(request.page_size, request.page_token)
        try:
            subjects, next_token = await self._in_db_thread(self.store.list_subjects, page_size, page_token)
        except ValueError:
            raise InvalidRequest("page_token is not one this server issued") from None
        return verification_pb2.ListSubjectsResponse(
            subjects=[verification_pb2.Subject(subject_id=s, template_count=n) for s, n in subjects],
            next_page_token=next_token,
        )

    @_rpc
    async def GetServerInfo(self, request, context):
        m = self.manifest
        subjects, templates = await self._read(self.store.fresh_sizes)
        return verification_pb2.ServerInfo(
            bundle_name=self.bundle_name,
            method=m.method,
            frontend_id=m.frontend_id,
            runtime=self.batcher.runtime.name,
            protected_tensor=m.protected_tensor,
            embedding_size=m.embedding_size,
            threshold=self.threshold,
            thresholds_by_templates=self.thresholds.cosines,
            false_accept_rate=self.thresholds.far,
            subject_count=subjects,
            template_count=templates,
            max_batch_size=self.batcher.max_batch if self.batcher.enabled else 1,
            ppfr_version=_package_version(),
        )

    def close(self) -> None:
        self._db_thread.shutdown(wait=True)
        self._read_threads.shutdown(wait=True)
