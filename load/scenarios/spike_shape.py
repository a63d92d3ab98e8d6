"""A locustfile holding only SpikeShape, to add after the scenarios (locust runs the first shape
it finds): ``locust -f load/locustfile.py,load/scenarios/spike_shape.py ...`` (see shapes.py)."""

from load.scenarios.shapes import SpikeShape

__all__ = ["SpikeShape"]
