"""ppfr.demo: `ppfr-demo` (`make demo`), the whole stack on real faces: train or reuse, export or reuse,
a local server (ppfr.cloud.local), enroll/verify/identify through the `ppfr-edge` command, a report and
runs/demo/summary.json. Orchestration only, a tool on top: it may import every ppfr package; nothing in
production imports it."""
