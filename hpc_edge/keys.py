"""CURVE key pairs for the tower and its clients, as files readable by their owner alone."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import zmq
import zmq.auth

from .errors import EdgeError

logger = logging.getLogger(__name__)

SERVER = "server"
CLIENT = "client"


class KeyError_(EdgeError):
    """A key file is missing, malformed or readable by others."""


def create_keys(directory: Path, names=(SERVER, CLIENT)) -> None:
    """Write ``<name>.key`` and ``<name>.key_secret`` for each name (0600; existing keys are kept)."""
    if not zmq.has("curve"):
        raise KeyError_("this libzmq has no CURVE support")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    for name in names:
        if (directory / f"{name}.key_secret").exists():
            continue
        public, secret = zmq.auth.create_certificates(directory, name)
        for path in (public, secret):
            os.chmod(path, 0o600)
    clients = directory / "clients"
    clients.mkdir(exist_ok=True, mode=0o700)
    for name in names:
        if name != SERVER:
            target = clients / f"{name}.key"
            target.write_bytes((directory / f"{name}.key").read_bytes())
            os.chmod(target, 0o600)


def load_keypair(directory: Path, name: str) -> tuple[bytes, bytes]:
    """(public, secret) of ``name``; refuses a secret file that others can read."""
    path = directory / f"{name}.key_secret"
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise KeyError_(f"no key file {path} (create keys with: hpc-edge keys init)") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyError_(f"{path} is readable by others (mode {stat.S_IMODE(mode):o}); chmod 600 it")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (ValueError, OSError) as exc:
        raise KeyError_(f"{path} is not a valid key file: {exc}") from exc
    if secret is None:
        raise KeyError_(f"{path} holds no secret key")
    return public, secret


def load_public(directory: Path, name: str) -> bytes:
    path = directory / f"{name}.key"
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (ValueError, OSError) as exc:
        raise KeyError_(f"cannot read public key {path}: {exc}") from exc
    return public


def client_curve(directory: Path) -> tuple[bytes, bytes, bytes]:
    """(client public, client secret, server public) for a relay."""
    public, secret = load_keypair(directory, CLIENT)
    return public, secret, load_public(directory, SERVER)
