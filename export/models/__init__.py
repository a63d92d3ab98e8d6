"""PyTorch networks exported to ONNX (build time only; the service never imports these)."""
