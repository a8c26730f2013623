"""The xDS bootstrap file that lets a plain `grpcio` client dial `xds:///<service>`.

Point `GRPC_XDS_BOOTSTRAP` at the file before the process opens its first `xds:///` channel.
Measured with grpcio 1.85 (DESIGN.md §8): `channel_creds` must list `insecure` first, and
`ignore_resource_deletion` keeps a client on its last endpoints when a restarted control plane
briefly answers without a resource. A control plane behind TLS is reached with grpc's `tls`
channel credentials instead (gRFC A65: CA, certificate and key files, re-read by grpc); the
client's own channel credentials secure its calls to the endpoints (docs/tls.md).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from services.common.tls import TlsConfig


def _channel_creds(tls: TlsConfig | None) -> dict[str, Any]:
    if tls is None or not tls.enabled:
        return {"type": "insecure"}
    files = {
        "ca_certificate_file": tls.ca,
        "certificate_file": tls.cert,
        "private_key_file": tls.key,
    }
    return {
        "type": "tls",
        "config": {name: str(Path(path).resolve()) for name, path in files.items() if path},
    }


def bootstrap_document(
    control_plane_address: str, node_id: str, tls: TlsConfig | None = None
) -> dict[str, Any]:
    return {
        "xds_servers": [
            {
                "server_uri": control_plane_address,
                "channel_creds": [_channel_creds(tls)],
                "server_features": ["ignore_resource_deletion"],
            }
        ],
        "node": {"id": node_id, "cluster": "hfmesh", "locality": {}},
    }


def write_bootstrap(
    path: str | Path, control_plane_address: str, node_id: str, tls: TlsConfig | None = None
) -> Path:
    """Write atomically (a reader never sees half a file); return the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    partial.write_text(
        json.dumps(bootstrap_document(control_plane_address, node_id, tls), indent=2)
    )
    partial.replace(target)
    return target
