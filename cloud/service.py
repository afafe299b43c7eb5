"""The ppfr.v1.FaceVerification service on grpc.aio: validate, embed through the batcher, match against the
gallery. Requests are checked before the engine; errors map to gRPC status codes with a clear message and
never reach the logs with tensor or template content."""

import asyncio
import functools
import logging
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata

import grpc
from google.protobuf import timestamp_pb2
from ppfr.cloud import validation
from ppfr.cloud.batcher import BatcherClosed, DynamicBatcher
from ppfr.cloud.gallery import Gallery
from ppfr.cloud.interceptor import REQUEST_ID
from ppfr.cloud.template_key import TemplateTransform
from ppfr.cloud.validation import FaceValidator, InvalidRequest
from ppfr.protos import manifest_pb2, verification_pb2, verification_pb2_grpc

log = logging.getLogger("ppfr.cloud")

MAX_MESSAGE_CHARS = 300  # error details stay small whatever the request held


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
    ):
        self.manifest = manifest
        self.bundle_name = bundle_name
        self.batcher = batcher
        self.gallery = gallery
        # Renewable templates (cloud/template_key.py): every embedding is turned into a template by the
        # deployment secret's orthogonal transform before it is stored or matched; None = stored as is.
        self.template_transform = template_transform
        self.validate_face = FaceValidator(manifest)
        self.threshold = float(manifest.threshold.cosine)
        # SQLite writes (with their fsync) run here so the event loop never waits on the disk.
        self._db_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ppfr-gallery")

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
        return await asyncio.get_running_loop().run_in_executor(self._db_thread, fn, *args)

    def _require_subject(self, subject_id: str) -> None:
        if not self.gallery.has_subject(subject_id):
            raise NotFound(f"subject {subject_id!r} is not enrolled")

    # --- rpcs ------------------------------------------------------------------------------------------
    @_rpc
    async def Enroll(self, request, context):
        subject_id = validation.subject_id(request.subject_id)
        key = validation.idempotency_key(request.idempotency_key)
        embedding = await self._embed(request.face, context)
        # A caller whose deadline has passed gets no new enrollment. The deadline can still pass during the
        # commit, so DEADLINE_EXCEEDED does not prove nothing was stored: retry with the same idempotency_key.
        self._remaining(context)
        enrolled = await self._in_db_thread(self.gallery.enroll, subject_id, embedding, key)
        create_time = timestamp_pb2.Timestamp()
        create_time.FromNanoseconds(int(enrolled.create_time * 1e9))
        return verification_pb2.EnrollResponse(
            subject_id=subject_id,
            template_id=enrolled.template_id,
            template_count=enrolled.template_count,
            create_time=create_time,
        )

    @_rpc
    async def Verify(self, request, context):
        subject_id = validation.subject_id(request.subject_id)
        tensor = self.validate_face(request.face)
        self._require_subject(subject_id)
        embedding = await asyncio.wait_for(self.batcher.embed(tensor), self._remaining(context))
        score = self.gallery.verify(subject_id, self._template(embedding))
        if score is None:  # deleted while the face was being embedded
            raise NotFound(f"subject {subject_id!r} is not enrolled")
        return verification_pb2.VerifyResponse(
            subject_id=subject_id, score=score, match=score >= self.threshold, threshold=self.threshold
        )

    @_rpc
    async def Identify(self, request, context):
        top_k = validation.top_k(request.top_k)
        embedding = await self._embed(request.face, context)
        # Only matches: a caller learns nothing about subjects that score below the threshold.
        candidates = [
            verification_pb2.Candidate(subject_id=m.subject_id, score=m.score, match=True)
            for m in self.gallery.identify(embedding, top_k)
            if m.score >= self.threshold
        ]
        return verification_pb2.IdentifyResponse(candidates=candidates, threshold=self.threshold)

    @_rpc
    async def DeleteSubject(self, request, context):
        subject_id = validation.subject_id(request.subject_id)
        self._require_subject(subject_id)
        deleted = await self._in_db_thread(self.gallery.delete, subject_id)
        if not deleted:
            raise NotFound(f"subject {subject_id!r} is not enrolled")
        return verification_pb2.DeleteSubjectResponse(subject_id=subject_id, deleted_template_count=deleted)

    @_rpc
    async def DeleteTemplate(self, request, context):
        template_id = validation.template_id(request.template_id)
        subject_id = await self._in_db_thread(self.gallery.delete_template, template_id)
        if subject_id is None:
            raise NotFound(f"template {template_id} does not exist")
        return verification_pb2.DeleteTemplateResponse(subject_id=subject_id, template_id=template_id)

    @_rpc
    async def ListSubjects(self, request, context):
        page_size, page_token = validation.page(request.page_size, request.page_token)
        try:
            subjects, next_token = await self._in_db_thread(self.gallery.list_subjects, page_size, page_token)
        except ValueError:
            raise InvalidRequest("page_token is not one this server issued") from None
        return verification_pb2.ListSubjectsResponse(
            subjects=[verification_pb2.Subject(subject_id=s, template_count=n) for s, n in subjects],
            next_page_token=next_token,
        )

    @_rpc
    async def GetServerInfo(self, request, context):
        m = self.manifest
        return verification_pb2.ServerInfo(
            bundle_name=self.bundle_name,
            method=m.method,
            frontend_id=m.frontend_id,
            runtime=self.batcher.runtime.name,
            protected_tensor=m.protected_tensor,
            embedding_size=m.embedding_size,
            threshold=self.threshold,
            subject_count=self.gallery.subject_count,
            template_count=self.gallery.template_count,
            max_batch_size=self.batcher.max_batch if self.batcher.enabled else 1,
            ppfr_version=_package_version(),
        )

    def close(self) -> None:
        self._db_thread.shutdown(wait=True)
