"""ppfr.train - PyTorch: the protection methods (frequency front-ends), backbones and heads, the pretrained
dlib ResNet, face data, training (`ppfr-train`), evaluation (`ppfr-eval`) and method keys (keys.py).

May import: ppfr.bundle, ppfr.data, ppfr.protos. Never export, edge or cloud, nor the tools (bench, attack,
demo) (tests/test_layout.py).
"""
