"""Hosts of our own: network namespaces joined by veth pairs to a bridge in the root namespace, and partitions cut
into their links and healed.

Layout (``K`` a free number, so two sessions on one machine never meet)::

    root namespace: bridge ppK-br 10.213.K.1/24  ◀── Redis, PostgreSQL, moto S3 listen here (and on 127.0.0.1)
        ├── ppKv1 ══ veth ══ eth0 10.213.K.11/24  in namespace ppnetK-h1 (hostname pp-h1: its own UTS namespace)
        ├── ppKv2 ══ veth ══ eth0 10.213.K.12/24  in namespace ppnetK-h2
        └── …

Nothing leaves the machine: the bridge has no port but the veths, the root namespace does not forward
(``ip_forward`` is not touched) and a host's only route is its /24. Two ways to cut a host off, and they heal
differently:

``link`` (:meth:`Host.cut` with ``how="link"``): the root end of its veth goes down — a pulled cable, a dead switch
port. Both directions, every service at once. The host's end loses its carrier: its ARP for the bridge fails, a
new connect fails with "no route to host" after the ARP retries (~3 s), and an established connection's
retransmission waits in the neighbour queue for ARP. When the link comes back, ARP resolves and that
retransmission leaves at once: measured here, data sent during a 15 s cut arrived 0.3 s after the heal (a
connection with nothing waiting for ARP at that moment backs off as under ``drop``).

``drop`` (``how="drop"``, optionally for some services' ports only): ``iptables`` DROP rules in the host's own
namespace, OUTPUT to and INPUT from the service — a firewall that discards. ARP and the link stay up, so only the
selected flows are hit, and every packet of them vanishes: a connect times out, an established connection
retransmits with exponential backoff (TCP ``backoff`` 6, RTO 12.8 s after a 15 s cut). After the heal it waits
for the next backed-off retransmission: 11 s after a 15 s cut here, up to TCP's 120 s cap after a long one.
``reject``: REJECT with a TCP reset instead (connections refused at once: the S3 scenario, whose client would
otherwise wait 10 s per connect attempt, 8 attempts per request).

The rules live in the host's namespace, so deleting it removes them; :meth:`Network.close` kills whatever still
runs in the namespaces, deletes them and the bridge, also after a failed test, and :func:`remove_stale` removes
what a killed test session left behind (the bridge's alias names the creating process).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

SUBNET = "10.213"
#: The bridge's alias: marks what this module created, with the creating pid (for :func:`remove_stale`).
ALIAS = "pixelperfect-partitions pid="


class NetnsUnavailable(RuntimeError):
    """Namespaces cannot be made here (not root, no ``ip``, no veth or bridge support): the tests skip."""


def _run(*cmd: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_namespace_processes(ns: str) -> None:
    pids = _run("ip", "netns", "pids", ns, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def _bridges() -> dict[str, str]:
    """Bridge name → alias, for the bridges this machine has."""
    out = _run("ip", "-o", "link", "show", "type", "bridge", check=False).stdout
    found = {}
    for line in out.splitlines():
        name = line.split(":", 2)[1].strip().split("@")[0]
        alias = _run("cat", f"/sys/class/net/{name}/ifalias", check=False).stdout.strip()
        found[name] = alias
    return found


def remove_stale() -> list[str]:
    """Delete the bridges and namespaces of earlier sessions whose process is gone; returns what was removed."""
    removed = []
    namespaces = [line.split()[0] for line in _run("ip", "netns", "list", check=False).stdout.splitlines() if line]
    for name, alias in _bridges().items():
        if not alias.startswith(ALIAS):
            continue
        pid = int(alias[len(ALIAS) :] or 0)
        if pid and _alive(pid):
            continue
        k = name[2:].split("-")[0]
        for ns in namespaces:
            if ns.startswith(f"ppnet{k}-"):
                _kill_namespace_processes(ns)
                _run("ip", "netns", "del", ns, check=False)
                removed.append(ns)
        _run("ip", "link", "del", name, check=False)
        removed.append(name)
    return removed


@dataclass
class Host:
    """A network namespace with one veth to the bridge; commands run inside it with a hostname of their own."""

    network: Network
    index: int
    ns: str
    veth: str  # the root namespace's end (a bridge port)
    address: str
    hostname: str
    cut_how: str | None = None
    rules: list[list[str]] = field(default_factory=list)

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the namespace (``ip netns exec`` and ``unshare --uts`` exec, so the pid is argv's)."""
        prefix = ["ip", "netns", "exec", self.ns]
        if self.network.uts:
            script = 'hostname "$1" && shift && exec "$@"'
            return [*prefix, "unshare", "--uts", "sh", "-c", script, "sh", self.hostname, *argv]
        return [*prefix, *argv]

    def iptables(self, *args: str) -> None:
        _run("ip", "netns", "exec", self.ns, "iptables", "-w", *args)

    def cut(self, ports: Iterable[int] | None = None, *, how: str = "link") -> float:
        """Cut this host off: from everything (``ports`` None) or from the services on ``ports`` of the bridge's
        address; ``how``: ``link`` (everything only), ``drop`` or ``reject``. Returns the time (``time.time``)."""
        if self.cut_how is not None:
            raise RuntimeError(f"{self.hostname} is already cut off ({self.cut_how})")
        if how == "link":
            if ports is not None:
                raise ValueError("a link down cuts every service: use how='drop' for some ports")
            _run("ip", "link", "set", self.veth, "down")
        elif how in ("drop", "reject"):
            if not self.network.iptables:
                raise NetnsUnavailable("iptables is not installed (scripts/system-deps.sh installs it)")
            target = ["-j", "DROP"] if how == "drop" else ["-j", "REJECT", "--reject-with", "tcp-reset"]
            gate = self.network.address
            for port in list(ports) if ports is not None else [None]:
                tcp = ["-p", "tcp"] if port or how == "reject" else []
                out_rule = ["OUTPUT", "-d", gate, *tcp, *(["--dport", str(port)] if port else []), *target]
                in_rule = ["INPUT", "-s", gate, *tcp, *(["--sport", str(port)] if port else []), "-j", "DROP"]
                # a reject's reset comes from the service's address and port: no INPUT rule may drop it
                for rule in (out_rule, in_rule) if how == "drop" else (out_rule,):
                    self.iptables("-A", *rule)
                    self.rules.append(rule)
        else:
            raise ValueError(f"unknown cut {how!r}")
        self.cut_how = how
        return time.time()

    def heal(self) -> float:
        """Undo :meth:`cut`; returns the time (``time.time``)."""
        if self.cut_how == "link":
            _run("ip", "link", "set", self.veth, "up")
        else:
            while self.rules:
                self.iptables("-D", *self.rules.pop())
        self.cut_how = None
        return time.time()


class Network:
    """The bridge and its hosts (see the module docstring). :meth:`close` removes everything."""

    def __init__(self, n_hosts: int) -> None:
        if os.geteuid() != 0:
            raise NetnsUnavailable("network namespaces need root")
        for tool in ("ip", "sh"):
            if shutil.which(tool) is None:
                raise NetnsUnavailable(f"`{tool}` is not installed")
        remove_stale()
        self.k = self._free_number()
        self.bridge = f"pp{self.k}-br"
        self.address = f"{SUBNET}.{self.k}.1"
        self.hosts: list[Host] = []
        self.uts = shutil.which("unshare") is not None and _run("unshare", "--uts", "true", check=False).returncode == 0
        self.iptables = shutil.which("iptables") is not None
        try:
            _run("ip", "link", "add", self.bridge, "type", "bridge")
        except RuntimeError as exc:
            raise NetnsUnavailable(f"cannot create a bridge: {exc}") from exc
        try:
            _run("ip", "link", "set", self.bridge, "alias", f"{ALIAS}{os.getpid()}")
            _run("ip", "addr", "add", f"{self.address}/24", "dev", self.bridge)
            _run("ip", "link", "set", self.bridge, "up")
            for i in range(1, n_hosts + 1):
                self._add_host(i)
        except Exception as exc:
            self.close()
            if isinstance(exc, NetnsUnavailable):
                raise
            raise NetnsUnavailable(f"cannot create network namespaces: {exc}") from exc

    @staticmethod
    def _free_number() -> int:
        used = _run("ip", "-o", "addr", check=False).stdout + _run("ip", "-o", "link", check=False).stdout
        for k in range(1 + os.getpid() % 200, 255):
            if f" {SUBNET}.{k}." not in used and f" pp{k}-br" not in used and f"pp{k}v" not in used:
                return k
        raise NetnsUnavailable(f"no free {SUBNET}.K.0/24 subnet")

    def _add_host(self, i: int) -> Host:
        ns, veth = f"ppnet{self.k}-h{i}", f"pp{self.k}v{i}"
        host = Host(self, i, ns, veth, f"{SUBNET}.{self.k}.{10 + i}", f"pp-h{i}")
        _run("ip", "netns", "add", ns)
        self.hosts.append(host)  # removed by close() from here on
        _run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _run("ip", "link", "set", veth, "master", self.bridge, "up")
        inside = ["ip", "-n", ns]
        _run(*inside, "addr", "add", f"{host.address}/24", "dev", "eth0")
        _run(*inside, "link", "set", "eth0", "up")
        _run(*inside, "link", "set", "lo", "up")
        return host

    def reachable(self, host: Host, port: int, timeout: float = 10) -> None:
        """Wait until ``host`` connects to the bridge's address on ``port`` (a service is up for the hosts)."""
        probe = f"import socket; socket.create_connection(('{self.address}', {port}), timeout=2).close()"
        deadline = time.monotonic() + timeout
        while True:
            proc = _run("ip", "netns", "exec", host.ns, sys.executable, "-c", probe, check=False)
            if proc.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{host.hostname} cannot reach {self.address}:{port}: {proc.stderr[-500:]}")
            time.sleep(0.2)

    def close(self) -> None:
        for host in self.hosts:
            _kill_namespace_processes(host.ns)
            _run("ip", "netns", "del", host.ns, check=False)  # its veth, the pair and its rules go with it
            _run("ip", "link", "del", host.veth, check=False)
        self.hosts = []
        _run("ip", "link", "del", self.bridge, check=False)

    def leftovers(self) -> list[str]:
        """What of this network still exists (empty after :meth:`close`)."""
        names = _run("ip", "netns", "list", check=False).stdout + _run("ip", "-o", "link", check=False).stdout
        mine = [f"ppnet{self.k}-", f"pp{self.k}-br", f"pp{self.k}v"]
        return [m for m in mine if m in names]
