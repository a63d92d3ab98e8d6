"""medseg-serve: the BentoML service and its pure-numpy pipeline (no PyTorch here)."""
