import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from ppfr.protos import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ProtectedFace(_message.Message):
    __slots__ = ("data", "shape", "data_type", "frontend_id")
    DATA_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_TYPE_FIELD_NUMBER: _ClassVar[int]
    FRONTEND_ID_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    shape: _containers.RepeatedScalarFieldContainer[int]
    data_type: _tensor_pb2.DataType
    frontend_id: str
    def __init__(self, data: _Optional[bytes] = ..., shape: _Optional[_Iterable[int]] = ..., data_type: _Optional[_Union[_tensor_pb2.DataType, str]] = ..., frontend_id: _Optional[str] = ...) -> None: ...

class SealedEmbedding(_message.Message):
    __slots__ = ("ciphertext",)
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    ciphertext: bytes
    def __init__(self, ciphertext: _Optional[bytes] = ...) -> None: ...

class EnrollRequest(_message.Message):
    __slots__ = ("subject_id", "face", "idempotency_key", "sealed")
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    FACE_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    SEALED_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    face: ProtectedFace
    idempotency_key: str
    sealed: SealedEmbedding
    def __init__(self, subject_id: _Optional[str] = ..., face: _Optional[_Union[ProtectedFace, _Mapping]] = ..., idempotency_key: _Optional[str] = ..., sealed: _Optional[_Union[SealedEmbedding, _Mapping]] = ...) -> None: ...

class EnrollResponse(_message.Message):
    __slots__ = ("subject_id", "template_id", "template_count", "create_time")
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_COUNT_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    template_id: int
    template_count: int
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, subject_id: _Optional[str] = ..., template_id: _Optional[int] = ..., template_count: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class VerifyRequest(_message.Message):
    __slots__ = ("subject_id", "face", "sealed")
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    FACE_FIELD_NUMBER: _ClassVar[int]
    SEALED_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    face: ProtectedFace
    sealed: SealedEmbedding
    def __init__(self, subject_id: _Optional[str] = ..., face: _Optional[_Union[ProtectedFace, _Mapping]] = ..., sealed: _Optional[_Union[SealedEmbedding, _Mapping]] = ...) -> None: ...

class VerifyResponse(_message.Message):
    __slots__ = ("subject_id", "score", "match", "threshold", "sealed_score", "sealed_norm", "template_count")
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    MATCH_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    SEALED_SCORE_FIELD_NUMBER: _ClassVar[int]
    SEALED_NORM_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_COUNT_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    score: float
    match: bool
    threshold: float
    sealed_score: bytes
    sealed_norm: bytes
    template_count: int
    def __init__(self, subject_id: _Optional[str] = ..., score: _Optional[float] = ..., match: _Optional[bool] = ..., threshold: _Optional[float] = ..., sealed_score: _Optional[bytes] = ..., sealed_norm: _Optional[bytes] = ..., template_count: _Optional[int] = ...) -> None: ...

class IdentifyRequest(_message.Message):
    __slots__ = ("face", "top_k", "sealed")
    FACE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    SEALED_FIELD_NUMBER: _ClassVar[int]
    face: ProtectedFace
    top_k: int
    sealed: SealedEmbedding
    def __init__(self, face: _Optional[_Union[ProtectedFace, _Mapping]] = ..., top_k: _Optional[int] = ..., sealed: _Optional[_Union[SealedEmbedding, _Mapping]] = ...) -> None: ...

class SealedScores(_message.Message):
    __slots__ = ("ciphertext", "slot_subjects")
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    SLOT_SUBJECTS_FIELD_NUMBER: _ClassVar[int]
    ciphertext: bytes
    slot_subjects: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ciphertext: _Optional[bytes] = ..., slot_subjects: _Optional[_Iterable[str]] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("subject_id", "score", "match")
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    MATCH_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    score: float
    match: bool
    def __init__(self, subject_id: _Optional[str] = ..., score: _Optional[float] = ..., match: _Optional[bool] = ...) -> None: ...

class IdentifyResponse(_message.Message):
    __slots__ = ("candidates", "threshold", "sealed_blocks", "sealed_norms")
    class SealedNormsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    SEALED_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    SEALED_NORMS_FIELD_NUMBER: _ClassVar[int]
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    threshold: float
    sealed_blocks: _containers.RepeatedCompositeFieldContainer[SealedScores]
    sealed_norms: _containers.ScalarMap[str, bytes]
    def __init__(self, candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., threshold: _Optional[float] = ..., sealed_blocks: _Optional[_Iterable[_Union[SealedScores, _Mapping]]] = ..., sealed_norms: _Optional[_Mapping[str, bytes]] = ...) -> None: ...

class DeleteSubjectRequest(_message.Message):
    __slots__ = ("subject_id",)
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    def __init__(self, subject_id: _Optional[str] = ...) -> None: ...

class DeleteSubjectResponse(_message.Message):
    __slots__ = ("subject_id", "deleted_template_count")
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    DELETED_TEMPLATE_COUNT_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    deleted_template_count: int
    def __init__(self, subject_id: _Optional[str] = ..., deleted_template_count: _Optional[int] = ...) -> None: ...

class DeleteTemplateRequest(_message.Message):
    __slots__ = ("template_id",)
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    template_id: int
    def __init__(self, template_id: _Optional[int] = ...) -> None: ...

class DeleteTemplateResponse(_message.Message):
    __slots__ = ("subject_id", "template_id")
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    template_id: int
    def __init__(self, subject_id: _Optional[str] = ..., template_id: _Optional[int] = ...) -> None: ...

class ListSubjectsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class Subject(_message.Message):
    __slots__ = ("subject_id", "template_count")
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_COUNT_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    template_count: int
    def __init__(self, subject_id: _Optional[str] = ..., template_count: _Optional[int] = ...) -> None: ...

class ListSubjectsResponse(_message.Message):
    __slots__ = ("subjects", "next_page_token")
    SUBJECTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    subjects: _containers.RepeatedCompositeFieldContainer[Subject]
    next_page_token: str
    def __init__(self, subjects: _Optional[_Iterable[_Union[Subject, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ServerInfo(_message.Message):
    __slots__ = ("bundle_name", "method", "frontend_id", "runtime", "protected_tensor", "embedding_size", "threshold", "subject_count", "template_count", "max_batch_size", "ppfr_version", "gallery_mode", "tenant_context_sha256", "thresholds_by_templates", "false_accept_rate")
    BUNDLE_NAME_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    FRONTEND_ID_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    PROTECTED_TENSOR_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_SIZE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_COUNT_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_COUNT_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    PPFR_VERSION_FIELD_NUMBER: _ClassVar[int]
    GALLERY_MODE_FIELD_NUMBER: _ClassVar[int]
    TENANT_CONTEXT_SHA256_FIELD_NUMBER: _ClassVar[int]
    THRESHOLDS_BY_TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    FALSE_ACCEPT_RATE_FIELD_NUMBER: _ClassVar[int]
    bundle_name: str
    method: str
    frontend_id: str
    runtime: str
    protected_tensor: _tensor_pb2.TensorSpec
    embedding_size: int
    threshold: float
    subject_count: int
    template_count: int
    max_batch_size: int
    ppfr_version: str
    gallery_mode: str
    tenant_context_sha256: str
    thresholds_by_templates: _containers.RepeatedScalarFieldContainer[float]
    false_accept_rate: float
    def __init__(self, bundle_name: _Optional[str] = ..., method: _Optional[str] = ..., frontend_id: _Optional[str] = ..., runtime: _Optional[str] = ..., protected_tensor: _Optional[_Union[_tensor_pb2.TensorSpec, _Mapping]] = ..., embedding_size: _Optional[int] = ..., threshold: _Optional[float] = ..., subject_count: _Optional[int] = ..., template_count: _Optional[int] = ..., max_batch_size: _Optional[int] = ..., ppfr_version: _Optional[str] = ..., gallery_mode: _Optional[str] = ..., tenant_context_sha256: _Optional[str] = ..., thresholds_by_templates: _Optional[_Iterable[float]] = ..., false_accept_rate: _Optional[float] = ...) -> None: ...
