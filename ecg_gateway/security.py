"""Least privilege and TLS: the root policy and the TLS contexts every listener and client uses.

Root (reliability.md §4, "refuse uid 0"): a network-facing parser running as root turns any
parser bug into a root compromise. ``security.allow_root`` decides:

* ``false``: never run as root.
* ``auto`` (default): run as root only while every enabled listener is bound to a loopback
  address. That keeps the README's one-line start working on a fresh machine (root, every
  default on 127.0.0.1) while any deployment that faces the network is refused. (Refusing
  under a service manager too was considered: systemd's ``INVOCATION_ID`` is inherited by
  CI jobs started from runner services, which would break the one-liner there.)
* ``true``: always (logged as a warning at every start).

TLS (BCP 195): TLS >= 1.2 everywhere; a server asks for client certificates when given a CA.
"""

from __future__ import annotations

import ipaddress
import os
import ssl

from ecg_gateway.config import Config


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name or "" (all interfaces): treat as network-facing


def exposed_listeners(config: Config) -> list[str]:
    """The enabled listeners bound to something other than loopback, as ``name=host``."""
    listeners = [("dicom", config.dicom.enabled, config.dicom.host), ("hl7", config.hl7.enabled, config.hl7.host),
                 ("http", config.http.enabled, config.http.host)]
    return [f"{name}={host or '*'}" for name, enabled, host in listeners if enabled and not _is_loopback(host)]


def root_refusal(config: Config, euid: int | None = None) -> str | None:
    """Why this process must not start as it is, or None (pure when ``euid`` is given)."""
    euid = os.geteuid() if euid is None else euid
    policy = config.security.allow_root
    if euid != 0 or policy is True:
        return None
    hint = "run as an unprivileged user (systemd User=), or set security.allow_root: true"
    if policy is False:
        return f"refusing to run as root (security.allow_root is false): {hint}"
    exposed = exposed_listeners(config)
    if exposed:
        return f"refusing to run as root with listeners off loopback ({', '.join(exposed)}): {hint}"
    return None


def server_context(cert_file: str, key_file: str | None, client_ca_file: str | None) -> ssl.SSLContext:
    """TLS >= 1.2 server context; client certificates are required when a CA bundle is given."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    if client_ca_file:
        context.load_verify_locations(client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(ca_file: str | None, cert_file: str | None, key_file: str | None) -> ssl.SSLContext:
    """TLS >= 1.2 client context that verifies the server (given CA, else the system store)."""
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file:
        context.load_cert_chain(cert_file, key_file)
    return context
