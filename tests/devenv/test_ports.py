"""devenv.ports: free_port never hands one port to two callers, across processes (the xdist race)."""

from __future__ import annotations

import multiprocessing
import socket
import time
from pathlib import Path

import pytest

from devenv.ports import PortClaims, free_port, unclaimed_range


def _ports(count: int) -> list[int]:
    return [free_port() for _ in range(count)]


def test_concurrent_processes_never_get_the_same_port() -> None:
    # Four processes as xdist's workers, 150 ports each. The old bind-0-and-close free_port handed out
    # the same port twice in every such run here (10 to 18 repeats in 600), as the kernel reuses them.
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        ports = [port for batch in pool.map(_ports, [150] * 4) for port in batch]
    assert len(ports) == 600
    assert len(set(ports)) == 600


def test_a_port_is_outside_the_kernel_s_ephemeral_range_and_free() -> None:
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    port = free_port()
    assert port in unclaimed_range() and not low <= port <= high
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))                # free: nothing else was handed it


def _claim_and_exit(folder: Path, port: int) -> int:
    return PortClaims(folder, ttl=1.0, ports=range(port, port + 1)).claim()


def test_a_claim_lasts_its_ttl_and_its_process_then_the_port_can_be_claimed_again(tmp_path: Path) -> None:
    port = free_port()                                # ours for 10 minutes: no other caller binds it
    folder = tmp_path / "claims"
    claims = PortClaims(folder, ttl=1.0, ports=range(port, port + 1))
    # Claimed by a process that has exited: free again once the ttl has passed.
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        assert pool.apply(_claim_and_exit, (folder, port)) == port
    with pytest.raises(RuntimeError, match=rf"no free port in {port}-{port}: every one is claimed"):
        claims.claim()
    time.sleep(1.1)
    assert claims.claim() == port
    # Claimed by this (living) process: still claimed after the ttl.
    time.sleep(1.1)
    with pytest.raises(RuntimeError, match="while their process lives"):
        claims.claim()


def test_a_claims_folder_of_another_user_or_a_planted_link_is_not_used(tmp_path: Path) -> None:
    port = free_port()
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    folder = tmp_path / "claims"
    folder.mkdir(mode=0o700)
    (folder / ".lock").symlink_to(victim)             # planted: opening it must not follow (nor truncate)
    with pytest.raises(OSError):
        PortClaims(folder, ports=range(port, port + 1)).claim()
    assert victim.read_text() == "keep me"
    folder.chmod(0o777)                               # anyone could have planted files in it
    with pytest.raises(RuntimeError, match="mode 0700"):
        PortClaims(folder, ports=range(port, port + 1)).claim()
    assert victim.read_text() == "keep me"


def test_a_port_in_use_is_not_claimed(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", free_port()))
        taken.listen()
        port = taken.getsockname()[1]
        claims = PortClaims(tmp_path / "claims", ports=range(port, port + 1))
        with pytest.raises(RuntimeError, match="or in use"):
            claims.claim()
        assert not (tmp_path / "claims" / str(port)).exists()
