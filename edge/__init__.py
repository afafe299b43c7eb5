"""ppfr.edge - the device side: read a photo, detect and align the face (YuNet, detect.py/align.py), protect
it with the bundle's front-end (frontend.py, a ppfr.bundle.Bundle with OS-seeded random inputs) and talk
to the server over gRPC (client.py); `ppfr-edge` (cli.py).

May import: ppfr.bundle, ppfr.data, ppfr.protos. Never torch, train, export or cloud (tests/test_layout.py).
"""
