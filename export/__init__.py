"""ppfr.export - trained model -> bundle: torch -> ONNX (onnx_export.py), the parity check against PyTorch
(parity.py), the manifest and its calibrated threshold (bundle.py, evaluation.py), the optional INT8
recognizer (quantize.py) and the TensorRT engine (tensorrt_build.py); `ppfr-export` (cli.py).

May import: ppfr.train (models, keys), ppfr.bundle, ppfr.data, ppfr.protos. Never edge or cloud, nor the
tools (bench, attack, demo) (tests/test_layout.py).
"""
