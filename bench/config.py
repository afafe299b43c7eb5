"""What a bench run measures and how long: the default suite and the `--tiny` CI configuration."""

from dataclasses import asdict, dataclass, field, replace

METHODS = ("rgb", "bdct", "ppfr_fd", "dctdp", "partialface")
BASELINE = "rgb"


@dataclass(frozen=True)
class BenchConfig:
    methods: tuple[str, ...] = METHODS
    # Edge micro-benchmarks (one ORT thread, batch 1).
    edge_warmup: int = 20
    edge_iters: int = 300
    edge_max_s: float = 3.0
    # Recognizer: latency at batch 1, throughput at larger batches, per runtime.
    rec_warmup: int = 5
    rec_iters: int = 100
    rec_max_s: float = 2.0
    rec_batches: tuple[int, ...] = (8, 32, 64)
    # End to end through the gRPC server, driven by a separate load-generator process.
    concurrency: tuple[int, ...] = (1, 4, 16, 64)
    e2e_seconds: float = 2.0  # per concurrency level, after warm-up (at least; see e2e_max_window_s)
    e2e_max_window_s: float = 6.0  # the window stretches to 2x the warm-up round, at most this
    e2e_warmup_s: float = 0.3
    e2e_max_requests: int = 4000  # per level: whichever bound comes first ends the level
    max_batch: int = 32  # dynamic batching "on"
    max_delay_ms: float = 2.0
    distinct_faces: int = 16  # different protected tensors cycled by the load generator
    # GPU section (only where a GPU is present).
    gpu_batches: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
    gpu_iters: int = 50
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def tiny(methods: tuple[str, ...] = ("rgb", "ppfr_fd")) -> BenchConfig:
    """A CI-sized run: one method + rgb, few iterations, a short sweep (well under a minute)."""
    return replace(
        BenchConfig(),
        methods=methods,
        edge_warmup=2,
        edge_iters=10,
        edge_max_s=0.3,
        rec_warmup=1,
        rec_iters=3,
        rec_max_s=0.3,
        rec_batches=(8,),
        concurrency=(1, 4),
        e2e_seconds=0.4,
        e2e_max_window_s=0.8,
        e2e_warmup_s=0.1,
        e2e_max_requests=200,
        distinct_faces=4,
        gpu_batches=(1, 8),
        gpu_iters=5,
    )
