"""Build-time code: networks, phantoms, demo-weight training and the ONNX/Triton model repository."""
