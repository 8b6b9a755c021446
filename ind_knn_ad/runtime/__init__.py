"""The torch-free scorer: the model's ONNX feature graph on ONNX Runtime, then NumPy."""
