"""Fixtures shared by every test area: a local mTLS PKI and real Mosquitto brokers.

Services are real processes on 127.0.0.1 on free ports (so test runs never
collide); `make test` installs them. A missing binary fails loudly.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Callable, Iterator

import pytest

from devenv.mosquitto import MosquittoBroker
from devenv.pki import LocalPki, make_pki


# The Pulumi SDK's mock runtime runs programs on the thread's current event loop and binds the futures
# of modules imported at collection to it; asyncio.run() in other tests leaves no current loop behind.
# Every test starts with this one loop current again, whatever ran before it.
_SESSION_LOOP = asyncio.new_event_loop()
asyncio.set_event_loop(_SESSION_LOOP)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before any fixture of the test, module- and session-scoped ones included (an autouse fixture runs
    after the wider-scoped ones: a module's Pulumi fixture then met the loopless state the last test's
    ``asyncio.run()`` left, and the SDK's futures failed with "await wasn't used with future")."""
    asyncio.set_event_loop(_SESSION_LOOP)


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """The root logger as it was before the test. A CLI's ``main()`` called in-process configures logging
    for the process: its handler writes to the test's captured stderr, which pytest closes when the test
    ends, so every later INFO record of that worker (a service thread's start-up line) printed
    "--- Logging error ---" instead."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> LocalPki:
    """A CA, a 127.0.0.1 server certificate and on-demand client certificates."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def broker_factory(tmp_path: Path, pki: LocalPki) -> Iterator[Callable[..., MosquittoBroker]]:
    """Start brokers on demand (``broker_factory()``); all are stopped after the test."""
    started: list[MosquittoBroker] = []

    def start(**kwargs: object) -> MosquittoBroker:
        broker = MosquittoBroker(tmp_path / f"broker{len(started)}", pki, **kwargs)  # type: ignore[arg-type]
        broker.start()
        started.append(broker)
        return broker

    yield start
    for broker in started:
        broker.stop(kill=True)


@pytest.fixture
def broker(broker_factory: Callable[..., MosquittoBroker]) -> MosquittoBroker:
    """One running broker: mTLS on ``broker.tls_port``, plain on ``broker.plain_port``."""
    return broker_factory()
