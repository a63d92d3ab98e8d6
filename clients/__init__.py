"""Python client of the medseg-serve HTTP API (httpx) and its command line, ``python -m clients``."""

from clients.http_client import MedsegClient, MedsegHTTPError

__all__ = ["MedsegClient", "MedsegHTTPError"]
