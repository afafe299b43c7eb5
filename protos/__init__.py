"""ppfr.protos - the wire format and the bundle manifest: the .proto files and the stubs generated from them
(generate.py; `make protos`).

Imports nothing of ours: every other folder stands on it (tests/test_layout.py).
"""
