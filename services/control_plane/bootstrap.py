"""The xDS bootstrap file that lets a plain `grpcio` client dial `xds:///<service>`.

Point `GRPC_XDS_BOOTSTRAP` at the file before the process opens its first `xds:///` channel.
Measured with grpcio 1.85 (DESIGN.md §8): `channel_creds` must list `insecure` first, and
`ignore_resource_deletion` keeps a client on its last endpoints when a restarted control plane
briefly answers without a resource.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def bootstrap_document(control_plane_address: str, node_id: str) -> dict[str, Any]:
    return {
        "xds_servers": [
            {
                "server_uri": control_plane_address,
                "channel_creds": [{"type": "insecure"}],
                "server_features": ["ignore_resource_deletion"],
            }
        ],
        "node": {"id": node_id, "cluster": "hfmesh", "locality": {}},
    }


def write_bootstrap(path: str | Path, control_plane_address: str, node_id: str) -> Path:
    """Write atomically (a reader never sees half a file); return the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    partial.write_text(json.dumps(bootstrap_document(control_plane_address, node_id), indent=2))
    partial.replace(target)
    return target
