"""ppfr.cloud — the verification server: gRPC service (server.py, service.py), request checks
(validation.py), dynamic batcher (batcher.py), recognizer runtimes (runtime.py), gallery (gallery.py).
Never imports torch; meets the rest of the system through the bundle and the protos only."""
