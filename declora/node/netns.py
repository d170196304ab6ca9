"""Emulated hosts on one machine: K Linux network namespaces joined by veth pairs to a bridge, each with a private
address and, optionally, a bandwidth cap in each direction (tc tbf), so that peers on different "hosts" talk over
a real, capped link instead of the shared loopback.

Nothing touches the machine's own network: the bridge lives in a namespace of its own, the addresses (10.x.y.0/24,
drawn at random) exist only inside the namespaces, and no route leads out of them. `close()` (or leaving the `with`
block) deletes every namespace, which deletes their links; `remove_stale()` deletes what a killed run left behind.
Needs root and iproute2 (`ip`, `tc`). `netem` is not assumed, so there is no added latency: only bandwidth.
"""
from __future__ import annotations

import atexit
import os
import random
import shutil
import subprocess

PREFIX = "dlns"  # namespace names: dlns<pid>-h<i> and dlns<pid>-sw


class NetnsError(RuntimeError):
    """Namespaces cannot be made here (not root, no iproute2), or a command failed; the message says which."""


def available() -> str | None:
    """None when emulated hosts can be made here, else why not (one line)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"{tool} (iproute2) is not installed"
    return None


def _run(*cmd: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise NetnsError(f"`{' '.join(cmd)}` failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


class EmulatedHosts:
    """`k` hosts: host h is namespace `names[h]` at address `address(h)`; `exec_prefix(h)` runs a command there."""

    def __init__(self, k: int, rate_mbit: float = 0.0, seed: int | None = None):
        why = available()
        if why:
            raise NetnsError(f"cannot emulate hosts: {why}")
        if not 1 <= k <= 200:
            raise NetnsError(f"emulated hosts: 1..200, got {k}")
        self.k, self.rate_mbit = k, float(rate_mbit)
        tag = f"{PREFIX}{os.getpid()}"
        self.names = [f"{tag}-h{h}" for h in range(k)]
        self.switch = f"{tag}-sw"
        draw = random.Random(seed if seed is not None else os.getpid())
        self.subnet = f"10.{draw.randrange(100, 250)}.{draw.randrange(256)}"
        self._made: list[str] = []
        atexit.register(self.close)
        try:
            self._build()
        except Exception:
            self.close()
            raise

    @classmethod
    def attach(cls, owner_pid: int, k: int) -> "EmulatedHosts":
        """The `k` hosts that process `owner_pid` (a running `declora simulate --hosts netns:K`) made, to cut and heal
        their links from outside; this handle owns nothing, so closing it deletes nothing."""
        why = available()
        if why:
            raise NetnsError(f"cannot reach emulated hosts: {why}")
        hosts = cls.__new__(cls)
        tag = f"{PREFIX}{owner_pid}"
        hosts.k, hosts.rate_mbit, hosts.subnet, hosts._made = k, 0.0, "", []
        hosts.names, hosts.switch = [f"{tag}-h{h}" for h in range(k)], f"{tag}-sw"
        return hosts

    def cut(self, h: int) -> None:
        """Cut host `h` off from every other host (its port leaves the bridge): a partition. Its own link stays up,
        so its sockets see no error, only silence, as behind a broken switch."""
        _run("ip", "-n", self.switch, "link", "set", f"p{h}", "nomaster")

    def heal(self, h: int) -> None:
        """Undo `cut(h)`: TCP connections that outlived the cut carry on (after their retransmission back-off)."""
        _run("ip", "-n", self.switch, "link", "set", f"p{h}", "master", "br0")

    def address(self, h: int) -> str:
        return f"{self.subnet}.{h + 1}"

    def exec_prefix(self, h: int) -> list[str]:
        return ["ip", "netns", "exec", self.names[h]]

    def _build(self) -> None:
        for name in [self.switch, *self.names]:
            _run("ip", "netns", "add", name)
            self._made.append(name)
            _run("ip", "-n", name, "link", "set", "lo", "up")
        _run("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", self.switch, "link", "set", "br0", "up")
        for h, name in enumerate(self.names):
            port = f"p{h}"
            _run("ip", "link", "add", "eth0", "netns", name, "type", "veth", "peer", "name", port, "netns", self.switch)
            _run("ip", "-n", self.switch, "link", "set", port, "master", "br0", "up")
            _run("ip", "-n", name, "addr", "add", f"{self.address(h)}/24", "dev", "eth0")
            _run("ip", "-n", name, "link", "set", "eth0", "up")
            if self.rate_mbit > 0:
                # Egress of the host's end caps its upload; egress of the bridge's end caps its download.
                for ns, dev in ((name, "eth0"), (self.switch, port)):
                    _run("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf",
                         "rate", f"{self.rate_mbit}mbit", "burst", f"{self._burst_bytes()}", "latency", "200ms")

    def _burst_bytes(self) -> int:
        # tbf needs a bucket of at least one timer tick's worth of bytes at the rate, and at least an MTU.
        return max(32 * 1024, int(self.rate_mbit * 1e6 / 8 / 250))

    def close(self) -> None:
        while self._made:
            subprocess.run(["ip", "netns", "del", self._made.pop()], capture_output=True, timeout=30)

    def __enter__(self) -> "EmulatedHosts":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def remove_stale() -> list[str]:
    """Delete namespaces left by runs whose process is gone (a SIGKILLed launcher cannot clean up); return them."""
    if available():
        return []
    removed = []
    for line in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        if not name.startswith(PREFIX):
            continue
        pid = name[len(PREFIX):].split("-")[0]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
            removed.append(name)
    return removed
