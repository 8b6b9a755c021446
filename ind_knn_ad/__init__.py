"""Industrial KNN-based anomaly detection: PatchCore on pretrained CNN features.

Kept import-light on purpose: importing the package must not pull in torch, so that
scoring (which runs on ONNX Runtime and NumPy) starts fast.
"""

__version__ = "0.1.0"
