"""CurveZMQ for declora: key files, allow-lists, the ZAP authenticator, and the plain-text rule.

Key layout written by `declora keys make` (pyzmq's certificate format, so `zmq.auth.load_certificate` reads it):

    DIR/peer-<id>.key_secret        this peer's keypair, mode 0600: stays on the peer's machine
    DIR/public/peer-<id>.key        public keys: copy the whole folder to every node

Each peer's ROUTER is a CURVE server whose ZAP handler accepts only its neighbours' public keys and names every
connection with the peer id that key belongs to (ZeroMQ's "User-Id" message property). The transport trusts that
id, not the id a header claims. Each DEALER is a CURVE client pinned to its neighbour's public key, so it cannot
be talked into sending to an impostor. Secret keys are never logged or put in an error message.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

log = logging.getLogger("declora.wire.security")

ZAP_DOMAIN = "declora"
PUBLIC_DIR = "public"
MAKE_KEYS_HINT = "make keys with `declora keys make --peers N --out DIR` and pass --keys DIR"
_PUBLIC_NAME = re.compile(r"^peer-(\d{1,9})\.key$")


class SecurityError(ValueError):
    """Missing or unusable keys, or plain text where it is not allowed. One line, never a secret in it."""


def secret_key_path(keys_dir: str | os.PathLike, peer_id: int) -> Path:
    return Path(keys_dir) / f"peer-{peer_id}.key_secret"


def public_key_path(keys_dir: str | os.PathLike, peer_id: int) -> Path:
    return Path(keys_dir) / PUBLIC_DIR / f"peer-{peer_id}.key"


# ---- making keys ----------------------------------------------------------------------------------------------------
def generate_keys(out_dir: str | os.PathLike, peer_ids: Iterable[int], *, overwrite: bool = False) -> list[Path]:
    """Write a CURVE keypair per peer id; return the paths written (secret files first for each id).

    The secret file is created with mode 0600 from the start (no window where it is world-readable) and an
    existing one is never replaced unless `overwrite`: a peer's identity should not change by accident.
    """
    ids = sorted({int(i) for i in peer_ids})
    if not ids or ids[0] < 0:
        raise SecurityError(f"peer ids must be non-negative, got {ids[:5]}")
    out = Path(out_dir)
    (out / PUBLIC_DIR).mkdir(parents=True, exist_ok=True)
    if not overwrite:
        taken = [str(secret_key_path(out, i)) for i in ids if secret_key_path(out, i).exists()]
        if taken:
            raise SecurityError(f"{taken[0]} already exists (and {len(taken) - 1} more); pass --force to replace keys")
    written = []
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    for i in ids:
        public, secret = zmq.curve_keypair()
        written.append(_write_key(secret_key_path(out, i), i, public, secret, stamp))
        written.append(_write_key(public_key_path(out, i), i, public, None, stamp))
    return written


def new_keypair() -> tuple[bytes, bytes]:
    """(public, secret), z85: a key pair that lives only in this process (a discovered run's peers publish the public
    half through the launcher's store; see declora.node.rendezvous)."""
    return zmq.curve_keypair()


def _write_key(path: Path, peer_id: int, public: bytes, secret: bytes | None, stamp: str) -> Path:
    kind = "secret" if secret else "public"
    text = (f"#   declora peer {peer_id} CURVE {kind} key, made {stamp}\n"
            + ("#   DO NOT share this file or loosen its permissions.\n" if secret else "")
            + f"metadata\n    peer-id = \"{peer_id}\"\ncurve\n    public-key = \"{public.decode('ascii')}\"\n")
    if secret:
        text += f"    secret-key = \"{secret.decode('ascii')}\"\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if secret else 0o644)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


# ---- loading keys ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SecurityConfig:
    """This peer's keypair (z85) and the public key of every known peer id."""

    peer_id: int
    public_key: bytes
    secret_key: bytes = field(repr=False)
    public_keys: dict[int, bytes] = field(default_factory=dict)
    keys_dir: str = ""

    def key_of(self, peer_id: int) -> bytes:
        key = self.public_keys.get(peer_id)
        if key is None:
            raise SecurityError(f"no public key for peer {peer_id} in {Path(self.keys_dir) / PUBLIC_DIR}; "
                                f"copy peer-{peer_id}.key there or {MAKE_KEYS_HINT}")
        return key


def load_public_keys(public_dir: str | os.PathLike) -> dict[int, bytes]:
    """peer id -> z85 public key, from every `peer-<id>.key` in the folder."""
    keys = {}
    folder = Path(public_dir)
    if not folder.is_dir():
        raise SecurityError(f"no public-key folder {folder}; {MAKE_KEYS_HINT}")
    for path in sorted(folder.iterdir()):
        m = _PUBLIC_NAME.match(path.name)
        if not m:
            continue
        public, _ = _load(path)
        keys[int(m.group(1))] = public
    return keys


def load_security(keys_dir: str | os.PathLike, peer_id: int) -> SecurityConfig:
    """This peer's keypair and the public keys of all peers, from a folder made by `declora keys make`."""
    path = secret_key_path(keys_dir, peer_id)
    if not path.is_file():
        raise SecurityError(f"no secret key for peer {peer_id} at {path}; {MAKE_KEYS_HINT}")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise SecurityError(f"{path} is readable by others (mode {mode:o}); run `chmod 600 {path}`")
    public, secret = _load(path)
    if secret is None:
        raise SecurityError(f"{path} holds no secret key")
    others = load_public_keys(Path(keys_dir) / PUBLIC_DIR)
    if others.get(peer_id, public) != public:
        raise SecurityError(f"{public_key_path(keys_dir, peer_id)} does not match {path}: the key folder is mixed up")
    others[peer_id] = public
    return SecurityConfig(peer_id, public, secret, others, str(keys_dir))


def _load(path: Path) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        # The message names the file only: pyzmq's errors could quote a line of it.
        raise SecurityError(f"cannot read key file {path} ({type(e).__name__})") from None
    for key in (public, secret):
        if key is not None and len(key) != 40:
            raise SecurityError(f"key file {path} holds a malformed key (expected 40 z85 characters)")
    return public, secret


# ---- sockets --------------------------------------------------------------------------------------------------------
class _PeerAuthenticator(ThreadAuthenticator):
    """ZAP handler: accept only allow-listed CURVE keys, and name each connection by its peer id."""

    def __init__(self, context: zmq.Context, allowed: dict[bytes, int]):
        super().__init__(context, log=logging.getLogger("declora.zap"))
        self._peer_by_key = dict(allowed)  # z85 public key -> peer id (not `_allowed`: the base class uses that for IPs)
        self.configure_curve_callback(ZAP_DOMAIN, self)

    def callback(self, domain: str, key: bytes) -> bool:  # the credentials-provider interface pyzmq calls
        return key in self._peer_by_key

    def curve_user_id(self, client_public_key: bytes) -> str:
        return str(self._peer_by_key[z85.encode(client_public_key)])


def start_authenticator(context: zmq.Context, security: SecurityConfig, allowed_ids: Iterable[int]) -> ThreadAuthenticator:
    """Start the ZAP thread for `context` accepting exactly the given peers' keys (one per context)."""
    allowed = {security.key_of(i): i for i in allowed_ids}
    auth = _PeerAuthenticator(context, allowed)
    auth.start()
    return auth


def configure_server(sock: zmq.Socket, security: SecurityConfig) -> None:
    """Make a (not yet bound) socket a CURVE server that asks ZAP about every client."""
    sock.curve_secretkey = security.secret_key
    sock.curve_publickey = security.public_key
    sock.curve_server = True
    sock.zap_domain = ZAP_DOMAIN.encode()


def configure_client(sock: zmq.Socket, security: SecurityConfig, server_id: int) -> None:
    """Make a (not yet connected) socket a CURVE client that only talks to `server_id`'s key."""
    sock.curve_serverkey = security.key_of(server_id)
    sock.curve_secretkey = security.secret_key
    sock.curve_publickey = security.public_key


# ---- the plain-text rule ----------------------------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    """`localhost` or a loopback IP. Other names are not resolved: what a name resolves to can change later."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_local_endpoint(endpoint: str) -> bool:
    """True for ipc://, inproc:// and tcp:// on a loopback address; `tcp://*` binds every interface, so it is not."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    if not endpoint.startswith("tcp://"):
        return False
    return is_loopback(endpoint[len("tcp://"):].rsplit(":", 1)[0].strip("[]"))


def check_plaintext(endpoints: Iterable[str], allow_nonlocal: bool = False) -> None:
    """Refuse plain text when any endpoint leaves this host, unless the user said --insecure."""
    if allow_nonlocal:
        return
    remote = [e for e in endpoints if not is_local_endpoint(e)]
    if remote:
        raise SecurityError(f"refusing plain text on non-loopback endpoint {remote[0]}: {MAKE_KEYS_HINT} "
                            f"(or pass --insecure on a network you trust)")
