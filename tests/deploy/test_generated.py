"""The checked-in compose file and Kubernetes base are what the generator writes today."""

from __future__ import annotations

import pytest

from services.common.model_list import read_model_list
from services.launcher import manifests
from services.models.cache import is_model_ready


def test_checked_in_deployments_are_up_to_date():
    missing = [e["model"] for e in read_model_list(manifests.DEFAULT_MODEL_LIST) if e.get("model")]
    missing = [name for name in missing if not is_model_ready(name)]
    if missing:
        pytest.skip(f"planning reads the built models; not built here: {', '.join(missing)}")
    stale = manifests.stale(manifests.render("all"))
    assert stale == [], "regenerate: python -m services.launcher.manifests all"
