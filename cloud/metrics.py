"""Prometheus metrics, served on their own HTTP port (`--metrics-port`) so scraping never competes with
gRPC traffic and can be firewalled apart. Each server has its own registry (tests run several servers in
one process). Labels are bounded: RPC names and status codes only, never subject ids or keys."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "ppfr_requests", "Calls answered, by RPC and gRPC status code", ["method", "code"], registry=r
        )
        self.latency = Histogram(
            "ppfr_request_duration_seconds",
            "Time from the call's arrival to its answer, by RPC",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "ppfr_batch_size", "Faces per recognizer call", buckets=BATCH_BUCKETS, registry=r
        )
        self.in_flight = Gauge("ppfr_calls_in_flight", "FaceVerification calls in progress", registry=r)
        self.queue_depth = Gauge(
            "ppfr_batch_queue_depth", "Faces waiting for the recognizer (dynamic batcher queue)", registry=r
        )
        self.subjects = Gauge("ppfr_gallery_subjects", "Enrolled subjects", registry=r)
        self.templates = Gauge("ppfr_gallery_templates", "Enrolled templates", registry=r)
        self.gallery_latency = Histogram(
            "ppfr_gallery_seconds",
            "Gallery work per call (database and matching, on the gallery threads), by operation",
            ["op"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.gallery_up = Gauge("ppfr_gallery_up", "1 while the gallery database answers, else 0", registry=r)
        self.gallery_up.set(1)
        self._http = None

    def watch(self, batcher, gallery) -> None:
        """Gauges read at scrape time; batch sizes observed as the batcher runs them. The gallery sizes are
        the replica's own copy (gallery.sizes()): a scrape never touches the database (each scrape runs on
        a new thread, and a database connection per thread leaked one per scrape)."""
        self.queue_depth.set_function(batcher.queue_depth)
        self.subjects.set_function(lambda: gallery.sizes()[0])
        self.templates.set_function(lambda: gallery.sizes()[1])
        batcher.on_batch = self.batch_size.observe

    def observe(self, method: str, code: str, seconds: float) -> None:
        self.requests.labels(method, code).inc()
        self.latency.labels(method).observe(seconds)

    def serve(self, host: str, port: int) -> int:
        """Starts the /metrics HTTP endpoint in a background thread; returns the bound port."""
        self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        return self._http.server_address[1]

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
