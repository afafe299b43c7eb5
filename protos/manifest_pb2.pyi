from google.protobuf import struct_pb2 as _struct_pb2
from ppfr.protos import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BundleManifest(_message.Message):
    __slots__ = ("name", "method", "method_params", "frontend_id", "frontend", "recognizer", "frontend_image_input", "random_inputs", "protected_tensor", "embedding", "embedding_size", "threshold", "payload", "training", "engines", "opset", "ppfr_version", "create_time", "recognizer_int8", "thresholds_by_templates", "detector")
    NAME_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    METHOD_PARAMS_FIELD_NUMBER: _ClassVar[int]
    FRONTEND_ID_FIELD_NUMBER: _ClassVar[int]
    FRONTEND_FIELD_NUMBER: _ClassVar[int]
    RECOGNIZER_FIELD_NUMBER: _ClassVar[int]
    FRONTEND_IMAGE_INPUT_FIELD_NUMBER: _ClassVar[int]
    RANDOM_INPUTS_FIELD_NUMBER: _ClassVar[int]
    PROTECTED_TENSOR_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_SIZE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FIELD_NUMBER: _ClassVar[int]
    ENGINES_FIELD_NUMBER: _ClassVar[int]
    OPSET_FIELD_NUMBER: _ClassVar[int]
    PPFR_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    RECOGNIZER_INT8_FIELD_NUMBER: _ClassVar[int]
    THRESHOLDS_BY_TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    DETECTOR_FIELD_NUMBER: _ClassVar[int]
    name: str
    method: str
    method_params: _struct_pb2.Struct
    frontend_id: str
    frontend: ModelFile
    recognizer: ModelFile
    frontend_image_input: _tensor_pb2.TensorSpec
    random_inputs: _containers.RepeatedCompositeFieldContainer[RandomInputSpec]
    protected_tensor: _tensor_pb2.TensorSpec
    embedding: _tensor_pb2.TensorSpec
    embedding_size: int
    threshold: VerificationThreshold
    payload: PayloadSize
    training: TrainingInfo
    engines: _containers.RepeatedCompositeFieldContainer[TensorRTEngine]
    opset: int
    ppfr_version: str
    create_time: str
    recognizer_int8: QuantizedRecognizer
    thresholds_by_templates: _containers.RepeatedCompositeFieldContainer[TemplateThreshold]
    detector: ModelFile
    def __init__(self, name: _Optional[str] = ..., method: _Optional[str] = ..., method_params: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., frontend_id: _Optional[str] = ..., frontend: _Optional[_Union[ModelFile, _Mapping]] = ..., recognizer: _Optional[_Union[ModelFile, _Mapping]] = ..., frontend_image_input: _Optional[_Union[_tensor_pb2.TensorSpec, _Mapping]] = ..., random_inputs: _Optional[_Iterable[_Union[RandomInputSpec, _Mapping]]] = ..., protected_tensor: _Optional[_Union[_tensor_pb2.TensorSpec, _Mapping]] = ..., embedding: _Optional[_Union[_tensor_pb2.TensorSpec, _Mapping]] = ..., embedding_size: _Optional[int] = ..., threshold: _Optional[_Union[VerificationThreshold, _Mapping]] = ..., payload: _Optional[_Union[PayloadSize, _Mapping]] = ..., training: _Optional[_Union[TrainingInfo, _Mapping]] = ..., engines: _Optional[_Iterable[_Union[TensorRTEngine, _Mapping]]] = ..., opset: _Optional[int] = ..., ppfr_version: _Optional[str] = ..., create_time: _Optional[str] = ..., recognizer_int8: _Optional[_Union[QuantizedRecognizer, _Mapping]] = ..., thresholds_by_templates: _Optional[_Iterable[_Union[TemplateThreshold, _Mapping]]] = ..., detector: _Optional[_Union[ModelFile, _Mapping]] = ...) -> None: ...

class TemplateThreshold(_message.Message):
    __slots__ = ("templates", "threshold")
    TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    templates: int
    threshold: VerificationThreshold
    def __init__(self, templates: _Optional[int] = ..., threshold: _Optional[_Union[VerificationThreshold, _Mapping]] = ...) -> None: ...

class ModelFile(_message.Message):
    __slots__ = ("path", "sha256", "size_bytes")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    path: str
    sha256: str
    size_bytes: int
    def __init__(self, path: _Optional[str] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class RandomInputSpec(_message.Message):
    __slots__ = ("name", "shape", "data_type", "distribution", "params")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_TYPE_FIELD_NUMBER: _ClassVar[int]
    DISTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data_type: _tensor_pb2.DataType
    distribution: str
    params: _struct_pb2.Struct
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data_type: _Optional[_Union[_tensor_pb2.DataType, str]] = ..., distribution: _Optional[str] = ..., params: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class VerificationThreshold(_message.Message):
    __slots__ = ("cosine", "false_accept_rate", "evaluation_set", "num_pairs", "accuracy", "true_accept_rate")
    COSINE_FIELD_NUMBER: _ClassVar[int]
    FALSE_ACCEPT_RATE_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_SET_FIELD_NUMBER: _ClassVar[int]
    NUM_PAIRS_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    TRUE_ACCEPT_RATE_FIELD_NUMBER: _ClassVar[int]
    cosine: float
    false_accept_rate: float
    evaluation_set: str
    num_pairs: int
    accuracy: float
    true_accept_rate: float
    def __init__(self, cosine: _Optional[float] = ..., false_accept_rate: _Optional[float] = ..., evaluation_set: _Optional[str] = ..., num_pairs: _Optional[int] = ..., accuracy: _Optional[float] = ..., true_accept_rate: _Optional[float] = ...) -> None: ...

class PayloadSize(_message.Message):
    __slots__ = ("float16_bytes", "float32_bytes", "wire_data_type")
    FLOAT16_BYTES_FIELD_NUMBER: _ClassVar[int]
    FLOAT32_BYTES_FIELD_NUMBER: _ClassVar[int]
    WIRE_DATA_TYPE_FIELD_NUMBER: _ClassVar[int]
    float16_bytes: int
    float32_bytes: int
    wire_data_type: _tensor_pb2.DataType
    def __init__(self, float16_bytes: _Optional[int] = ..., float32_bytes: _Optional[int] = ..., wire_data_type: _Optional[_Union[_tensor_pb2.DataType, str]] = ...) -> None: ...

class TrainingInfo(_message.Message):
    __slots__ = ("run_name", "config", "checkpoint_sha256", "train_data", "num_identities", "num_images", "epochs", "backbone")
    RUN_NAME_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_SHA256_FIELD_NUMBER: _ClassVar[int]
    TRAIN_DATA_FIELD_NUMBER: _ClassVar[int]
    NUM_IDENTITIES_FIELD_NUMBER: _ClassVar[int]
    NUM_IMAGES_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BACKBONE_FIELD_NUMBER: _ClassVar[int]
    run_name: str
    config: str
    checkpoint_sha256: str
    train_data: str
    num_identities: int
    num_images: int
    epochs: int
    backbone: str
    def __init__(self, run_name: _Optional[str] = ..., config: _Optional[str] = ..., checkpoint_sha256: _Optional[str] = ..., train_data: _Optional[str] = ..., num_identities: _Optional[int] = ..., num_images: _Optional[int] = ..., epochs: _Optional[int] = ..., backbone: _Optional[str] = ...) -> None: ...

class QuantizedRecognizer(_message.Message):
    __slots__ = ("model", "source_sha256", "format", "activation_type", "weight_type", "per_channel", "calibrate_method", "calibration_set", "calibration_faces", "calibration_note", "onnxruntime_version", "create_time")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SOURCE_SHA256_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_TYPE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_TYPE_FIELD_NUMBER: _ClassVar[int]
    PER_CHANNEL_FIELD_NUMBER: _ClassVar[int]
    CALIBRATE_METHOD_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_SET_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_FACES_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_NOTE_FIELD_NUMBER: _ClassVar[int]
    ONNXRUNTIME_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    model: ModelFile
    source_sha256: str
    format: str
    activation_type: str
    weight_type: str
    per_channel: bool
    calibrate_method: str
    calibration_set: str
    calibration_faces: int
    calibration_note: str
    onnxruntime_version: str
    create_time: str
    def __init__(self, model: _Optional[_Union[ModelFile, _Mapping]] = ..., source_sha256: _Optional[str] = ..., format: _Optional[str] = ..., activation_type: _Optional[str] = ..., weight_type: _Optional[str] = ..., per_channel: _Optional[bool] = ..., calibrate_method: _Optional[str] = ..., calibration_set: _Optional[str] = ..., calibration_faces: _Optional[int] = ..., calibration_note: _Optional[str] = ..., onnxruntime_version: _Optional[str] = ..., create_time: _Optional[str] = ...) -> None: ...

class TensorRTEngine(_message.Message):
    __slots__ = ("path", "gpu_name", "compute_capability", "tensorrt_version", "fp16", "profile_batch_sizes", "create_time")
    PATH_FIELD_NUMBER: _ClassVar[int]
    GPU_NAME_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_CAPABILITY_FIELD_NUMBER: _ClassVar[int]
    TENSORRT_VERSION_FIELD_NUMBER: _ClassVar[int]
    FP16_FIELD_NUMBER: _ClassVar[int]
    PROFILE_BATCH_SIZES_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    path: str
    gpu_name: str
    compute_capability: str
    tensorrt_version: str
    fp16: bool
    profile_batch_sizes: _containers.RepeatedScalarFieldContainer[int]
    create_time: str
    def __init__(self, path: _Optional[str] = ..., gpu_name: _Optional[str] = ..., compute_capability: _Optional[str] = ..., tensorrt_version: _Optional[str] = ..., fp16: _Optional[bool] = ..., profile_batch_sizes: _Optional[_Iterable[int]] = ..., create_time: _Optional[str] = ...) -> None: ...
