"""A locustfile holding only StepShape, to add after the scenarios (locust runs the first shape
it finds): ``locust -f load/locustfile.py,load/scenarios/step_shape.py ...`` (see shapes.py)."""

from load.scenarios.shapes import StepShape

__all__ = ["StepShape"]
