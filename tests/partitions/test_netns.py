"""The hosts of the partition tests themselves: a hostname each, a route to the bridge and nowhere else, cuts that
cut and heals that heal, and nothing left behind — after a clean close, and after a test session that was
SIGKILLed with its network up."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from tests.conftest import ROOT
from tests.partitions.netns import NetnsUnavailable, Network, remove_stale

pytestmark = pytest.mark.integration


@pytest.fixture
def network() -> Iterator[Network]:
    try:
        net = Network(2)
    except NetnsUnavailable as exc:
        pytest.skip(f"hosts of our own cannot be made here: {exc}")
    try:
        yield net
    finally:
        net.close()
    assert net.leftovers() == []


def connect(net: Network, host_index: int, address: str, port: int, timeout: float = 2.0) -> str:
    """Connect from inside host ``host_index``: ``ok`` or the error's name."""
    probe = (f"import socket\ntry:\n socket.create_connection(('{address}', {port}), timeout={timeout}).close()\n"
             " print('ok')\nexcept OSError as e:\n print(type(e).__name__, e.errno)")  # fmt: skip
    out = subprocess.run(net.hosts[host_index].command([sys.executable, "-c", probe]), capture_output=True, text=True)
    return out.stdout.strip() or out.stderr.strip()


def test_hosts_have_their_own_names_reach_the_bridge_and_nothing_beyond(network: Network) -> None:
    server = socket.create_server((network.address, 0))
    port = server.getsockname()[1]

    def accept() -> None:
        for _ in range(8):
            server.accept()[0].close()

    threading.Thread(target=accept, daemon=True).start()
    names = {subprocess.run(h.command(["hostname"]), capture_output=True, text=True).stdout.strip()
             for h in network.hosts}  # fmt: skip
    if network.uts:
        assert names == {"pp-h1", "pp-h2"}
    assert connect(network, 0, network.address, port) == "ok"
    # the machine's other addresses and the world are not routed from a host (no default route, no forwarding)
    assert connect(network, 0, "192.0.2.1", 80).startswith("OSError 101")  # ENETUNREACH
    assert connect(network, 0, "127.0.0.1", port).startswith("ConnectionRefusedError")  # its own loopback

    network.hosts[0].cut([port], how="drop")
    assert connect(network, 0, network.address, port, timeout=1).startswith("TimeoutError")
    assert connect(network, 1, network.address, port) == "ok"  # the other host is not cut
    network.hosts[0].heal()
    assert connect(network, 0, network.address, port) == "ok"
    network.hosts[1].cut(how="link")
    assert connect(network, 1, network.address, port, timeout=8).startswith(("TimeoutError", "OSError 113"))
    network.hosts[1].heal()
    network.reachable(network.hosts[1], port)
    server.close()


def test_a_session_killed_with_its_network_up_leaves_it_to_the_next_one_to_remove() -> None:
    code = ("from tests.partitions.netns import Network; import time, sys\n"
            "net = Network(1); print(net.k, flush=True)\n"
            "import subprocess; subprocess.Popen(net.hosts[0].command(['sleep', '300']))\n"
            "time.sleep(300)")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line.isdigit():
            pytest.skip("hosts of our own cannot be made here")
        k = int(line)
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"ppnet{k}-h1" in listed  # what the killed session left
    removed = remove_stale()
    assert f"ppnet{k}-h1" in removed and f"pp{k}-br" in removed
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert f"ppnet{k}-" not in listed and f"pp{k}-br" not in links and f"pp{k}v1" not in links
