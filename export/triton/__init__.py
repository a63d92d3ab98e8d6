"""Triton artefacts: config.pbtxt writing (``config``), the python-backend model that runs ONNX
Runtime in Triton on CPU (``python_model``, copied into each graph folder as ``model.py``) and
TensorRT plans for GPU hosts (``tensorrt_plans``)."""
