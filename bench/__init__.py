"""ppfr.bench: the benchmark suite, `ppfr-bench` (DESIGN §9): edge, recognizer and end-to-end latency and
throughput of each method against the rgb baseline in one run, the gallery at scale (`ppfr-bench gallery`),
the load generator, and the GPU check. A tool on top: it may import every ppfr package (torch only lazily,
for its PyTorch figures); nothing in production imports it. Servers come from ppfr.cloud.local."""
