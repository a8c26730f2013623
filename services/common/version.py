"""The hfmesh version every server reports (gRPC ServerMetadata, V2 REST, OpenAPI).

Read once from the installed distribution, so `pyproject.toml` is its only copy.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    VERSION = version("hfmesh")
except PackageNotFoundError:  # a source tree that was never installed
    VERSION = "0+unknown"
