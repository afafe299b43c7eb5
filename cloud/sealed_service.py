"""The FaceVerification RPCs over a sealed gallery (cloud/sealed.py; docs/cloud.md, "Sealed templates").

Same keys, scopes, gate, limits and metrics as the plain service (it is a subclass); what changes: the
request carries the edge's ciphertext (sealed edge) or the protected face, embedded and encrypted at once
(sealed gallery); answers carry encrypted scores only the tenant decrypts, so the server decides nothing
(no match flag, no failed-attempt lock-out: it never learns a decision). An unknown subject is answered
with an encrypted 0, a non-match, as in plain mode. Identify's answer names every subject of the gallery
(the slots), so only admin keys may call it. Bad ciphertexts are INVALID_ARGUMENT with one line.
DeleteSubject, DeleteTemplate, ListSubjects and the counts are the plain service's own RPCs over the sealed
store (`self.store`), which writes the same audit log.
"""

import grpc
import numpy as np
from ppfr.bundle import tenant
from ppfr.cloud import validation
from ppfr.cloud.interceptor import CALLER
from ppfr.cloud.service import FaceVerificationService, _rpc, is_admin
from ppfr.cloud.validation import InvalidRequest
from ppfr.protos import verification_pb2 as pb

from .sealed import SealedGallery

IDENTIFY_ADMIN_ONLY = "a sealed Identify answer names every subject of the gallery: admin keys only"


class SealedVerificationService(FaceVerificationService):
    def __init__(self, *args, sealed: SealedGallery, **kw):
        super().__init__(*args, **kw)
        self.sealed = self.store = sealed

    async def _input(self, request, context, template: bool):
        """The request's ciphertext (sealed edge) or its face embedded now (sealed gallery) -> what the
        sealed store takes; the plaintext embedding of a sealed-gallery call goes no further."""
        take = self.sealed.template if template else self.sealed.query
        edge = self.sealed.mode == "sealed-edge"
        if request.HasField("face") == edge or request.HasField("sealed") != edge:
            what = "`sealed` (the encrypted embedding), not a face" if edge else "the protected face"
            raise InvalidRequest(f"this gallery is {self.sealed.mode}: send {what}")
        try:
            if edge:
                return take(sealed=request.sealed.ciphertext)
            return take(embedding=await self._embed(request.face, context))
        except tenant.SealedError as err:
            raise InvalidRequest(f"sealed: {err}") from None

    def _unknown(self, query):
        """An encrypted 0 for a subject that is not enrolled (indistinguishable to the caller's server)."""
        zero = self.sealed.tenant.encrypt(np.zeros(tenant.DIM))
        t = self.sealed.tenant
        return t.dump(t.dot_plain(zero, query) if isinstance(query, np.ndarray) else t.dot(query, zero))

    def _verified(self, subject_id: str, query) -> tuple:
        """(encrypted q.S, encrypted |S|^2 or None, the subject's template count, by which the tenant
        picks its threshold); an unknown subject: an encrypted 0, None, 0."""
        answer = self.sealed.verify(subject_id, query)
        if answer is None:
            return self._unknown(query), None, 0
        return *answer, self.sealed.templates_of(subject_id)

    @_rpc
    async def Enroll(self, request, context):
        subject_id = validation.subject_id(request.subject_id)
        idem = validation.idempotency_key(request.idempotency_key)
        ct = await self._input(request, context, template=True)
        self._remaining(context)
        caller = CALLER.get()
        owner, admin = (caller.key_id if caller else None), is_admin(caller)
        template_id, count = await self._in_db_thread(
            self.sealed.enroll, subject_id, ct, idem, owner, not admin
        )
        return pb.EnrollResponse(
            subject_id=subject_id, template_id=template_id, template_count=count if admin else 0
        )

    @_rpc
    async def Verify(self, request, context):
        subject_id = validation.subject_id(request.subject_id)
        query = await self._input(request, context, template=False)
        score, norm, count = await self._read(self._verified, subject_id, query)
        return pb.VerifyResponse(
            subject_id=subject_id, sealed_score=score, sealed_norm=norm or b"", template_count=count
        )

    async def Identify(self, request, context):
        if not is_admin(CALLER.get()):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, IDENTIFY_ADMIN_ONLY)
        return await self._identify(request, context)

    @_rpc
    async def _identify(self, request, context):
        validation.top_k(request.top_k)
        query = await self._input(request, context, template=False)
        found = await self._read(self.sealed.identify, query)
        blocks = [pb.SealedScores(ciphertext=c, slot_subjects=o) for c, o in zip(found.blocks, found.owners)]
        return pb.IdentifyResponse(sealed_blocks=blocks, sealed_norms=found.norms)

    @_rpc
    async def GetServerInfo(self, request, context):
        info = await super().GetServerInfo.__wrapped__(self, request, context)
        info.gallery_mode, info.tenant_context_sha256 = self.sealed.mode, self.sealed.tenant.fingerprint
        return info

    def close(self) -> None:
        super().close()
        self.sealed.close()
