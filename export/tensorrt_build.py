"""recognizer.onnx -> recognizer.<gpu>.plan with the TensorRT 10 Python API, on the serving GPU.

FP16, one optimisation profile over the batch (min/opt/max, default 1/8/64), a timing cache kept
beside the bundle (timing_cache.<gpu>.bin) so rebuilds are fast; the engine, TensorRT version and
GPU are recorded in the manifest. tensorrt and cuda-python are imported only inside these functions,
after a GPU check, so the module imports fine on a machine without either.
"""

import datetime
from pathlib import Path

from ppfr.bundle import BundleError, read_manifest, write_manifest
from ppfr.bundle.tensorrt import gpu_info, gpu_slug, import_tensorrt
from ppfr.protos import manifest_pb2

DEFAULT_PROFILE = (1, 8, 64)


def build_engine(
    bundle_dir, profile=DEFAULT_PROFILE, fp16: bool = True, workspace_gib: float = 4.0, device: int = 0
) -> Path:
    """Build the engine for GPU `device`, record it in manifest.json and return its path."""
    bundle = Path(bundle_dir)
    manifest = read_manifest(bundle)
    lo, opt, hi = (int(b) for b in profile)
    if not 1 <= lo <= opt <= hi:
        raise ValueError(f"profile batch sizes must satisfy 1 <= min <= opt <= max, got {profile}")
    onnx_path = bundle / manifest.recognizer.path
    if not onnx_path.is_file():
        raise BundleError(f"{onnx_path} is missing: re-export the bundle")
    name, capability = gpu_info(device)  # raises TensorRTUnavailable without a GPU / cuda-python
    trt = import_tensorrt()
    slug = gpu_slug(name)
    plan_path = bundle / f"recognizer.{slug}.plan"
    cache_path = bundle / f"timing_cache.{slug}.bin"

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    use_fp16 = fp16 and hasattr(trt.BuilderFlag, "FP16")
    if use_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    spec = manifest.protected_tensor
    per_image = tuple(int(d) for d in spec.shape[1:])
    prof = builder.create_optimization_profile()
    prof.set_shape(spec.name, (lo, *per_image), (opt, *per_image), (hi, *per_image))
    config.add_optimization_profile(prof)
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the engine (see the TensorRT log above)")
    plan_path.write_bytes(bytes(serialized))
    cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))

    record_engine(
        manifest,
        manifest_pb2.TensorRTEngine(
            path=plan_path.name,
            gpu_name=name,
            compute_capability=capability,
            tensorrt_version=trt.__version__,
            fp16=use_fp16,
            profile_batch_sizes=[lo, opt, hi],
            create_time=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        ),
    )
    write_manifest(manifest, bundle)
    return plan_path


def record_engine(manifest: manifest_pb2.BundleManifest, engine: manifest_pb2.TensorRTEngine) -> None:
    """Replace any engine entry with the same path, keep the others (one per GPU model)."""
    keep = [e for e in manifest.engines if e.path != engine.path]
    del manifest.engines[:]
    manifest.engines.extend([*keep, engine])
