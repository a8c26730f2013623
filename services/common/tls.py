"""TLS and mutual TLS on the mesh's gRPC ports and channels (docs/tls.md).

One `TlsConfig` per process, from its `--tls_*` settings (`services.common.settings.TlsFlags`):

- `cert` + `key` (PEM files): what this process presents, as a server and as a client.
- `ca` (PEM bundle): whom it trusts. A server given a CA **requires** a client certificate
  signed by it (mutual TLS); a client verifies servers against it (the system roots without it).
- `server_name`: the name a client checks in servers' certificates instead of the host it dials,
  for replicas dialled by address (Kubernetes pod IPs) under one mesh certificate.

No setting: plain (insecure) ports and channels, as before.

**Reloading.** A server's credentials are grpc's dynamic ones: before each TLS handshake grpc
asks `CertificateFiles.fetch` for a new configuration, which answers one only when a file's
modification time or size changed, and only once the new certificate, key and CA load together
(a pair caught half-replaced is retried at the next handshake; the server keeps its last good
configuration meanwhile). Connections already open keep the certificate they were made with. A
channel reads the files when it is opened: channels opened later (a new replica, a reconnecting
discovery stream after a restart) use the new files; a long-lived channel keeps its
credentials, which stay valid as long as the CA that signs the new certificates is unchanged.

Only grpcio and the standard library are imported: `services.common.healthcheck` uses this in
every image.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

logger = logging.getLogger(__name__)

ChannelOptions = Sequence[tuple[str, object]]


@dataclass(frozen=True)
class TlsConfig:
    cert: str | None = None
    key: str | None = None
    ca: str | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if bool(self.cert) != bool(self.key):
            raise ValueError("--tls_cert and --tls_key go together: give both or neither")

    @property
    def enabled(self) -> bool:
        return bool(self.cert or self.ca)

    @property
    def mutual(self) -> bool:
        """A server with this configuration requires client certificates."""
        return bool(self.ca)

    def files(self) -> list[str]:
        return [path for path in (self.cert, self.key, self.ca) if path]


def _read(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


class CertificateFiles:
    """A server's certificate, key and CA files, answered to grpc again when they change."""

    def __init__(self, config: TlsConfig) -> None:
        if not config.cert or not config.key:
            raise ValueError(
                "a TLS server needs --tls_cert and --tls_key (--tls_ca alone only configures "
                "clients)"
            )
        self.config = config
        self._stamp: tuple[tuple[int, int], ...] | None = None
        self.loads = 0  # configurations handed to grpc (the first included)

    def _current_stamp(self) -> tuple[tuple[int, int], ...]:
        stats = [os.stat(path) for path in self.config.files()]
        return tuple((stat.st_mtime_ns, stat.st_size) for stat in stats)

    def load(self) -> grpc.ServerCertificateConfiguration:
        """Read and check the files (raises `OSError` / `ssl.SSLError` naming the problem)."""
        config = self.config
        assert config.cert and config.key  # checked in __init__
        stamp = self._current_stamp()
        check = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        check.load_cert_chain(config.cert, config.key)  # the key matches the certificate
        if config.ca:
            check.load_verify_locations(config.ca)
        key, cert, ca = _read(config.key), _read(config.cert), _read(config.ca)
        if self._current_stamp() != stamp:
            raise OSError("the certificate files changed while being read")
        self._stamp = stamp
        self.loads += 1
        assert key is not None and cert is not None
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """grpc's certificate_configuration_fetcher: a new configuration, or None (keep)."""
        try:
            if self._current_stamp() == self._stamp:
                return None
            configuration = self.load()
        except (OSError, ssl.SSLError) as error:
            logger.warning("TLS files not (re)loaded, keeping the last good ones: %s", error)
            return None
        logger.info("TLS certificate reloaded from %s", self.config.cert)
        return configuration

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self.load(),
            self.fetch,  # type: ignore[arg-type]  # grpc documents None as "no change"
            require_client_authentication=self.config.mutual,
        )


def channel_credentials(config: TlsConfig) -> grpc.ChannelCredentials:
    """A client's credentials from the files as they are now."""
    return grpc.ssl_channel_credentials(
        root_certificates=_read(config.ca),
        private_key=_read(config.key),
        certificate_chain=_read(config.cert),
    )


def _options(config: TlsConfig | None, options: ChannelOptions) -> list[tuple[str, object]]:
    extra = []
    if config is not None and config.enabled and config.server_name:
        extra.append(("grpc.ssl_target_name_override", config.server_name))
    return [*options, *extra]


def aio_channel(
    target: str, config: TlsConfig | None, options: ChannelOptions = ()
) -> grpc.aio.Channel:
    """A `grpc.aio` channel: TLS (mutual when `config` has a certificate) or plain."""
    if config is None or not config.enabled:
        return grpc.aio.insecure_channel(target, options=list(options))
    return grpc.aio.secure_channel(
        target, channel_credentials(config), options=_options(config, options)
    )


def sync_channel(
    target: str, config: TlsConfig | None, options: ChannelOptions = ()
) -> grpc.Channel:
    """A blocking channel, as `aio_channel`."""
    if config is None or not config.enabled:
        return grpc.insecure_channel(target, options=list(options))
    return grpc.secure_channel(
        target, channel_credentials(config), options=_options(config, options)
    )
