"""emsctl errors.

* EmsctlError                 base class; ``str(exc)`` is one line fit for a terminal
  * ConfigError               bad project/stack files or config values (exit 2): names the file, key, value
  * ProgramError              the Pulumi program failed under the mock runtime
                              (``kind == "run"``: a ``pulumi.RunError`` or a rule the engine enforces,
                              e.g. a disabled default provider → exit 2;
                              ``kind == "crash"``: any other exception → exit 3, traceback in ``--verbose``)
  * PolicyPackError           a policy pack could not be started or spoke the Analyzer protocol wrongly (exit 3)
"""

from __future__ import annotations

from ems_contract.config_file import message_parts


class EmsctlError(Exception):
    """Base class of every error emsctl raises on purpose."""


class ConfigError(EmsctlError):
    """A project file, stack file or config value is wrong (names where, what and what is allowed)."""

    def __init__(self, where: str, value: object, reason: str) -> None:
        self.where = where
        self.value = value
        self.reason = reason
        shown_where, shown_value, shown_reason = message_parts(where, value, reason)     # one bounded line
        super().__init__(f"{shown_where}:{'' if value is None else ' ' + shown_value} {shown_reason}")


class ProgramError(EmsctlError):
    """The program failed. ``message`` is the one line the Pulumi CLI would print.

    ``kind`` is ``"run"`` for an expected failure (``pulumi.RunError``, a disabled default provider,
    a bad StackReference) and ``"crash"`` for an unexpected exception, whose ``traceback`` is kept
    for ``--verbose``.
    """

    def __init__(self, project: str, stack: str, message: str, *, kind: str = "run", traceback: str = "") -> None:
        self.project = project
        self.stack = stack
        self.message = message
        self.kind = kind
        self.traceback = traceback
        super().__init__(f"{project}/{stack}: {message}")


class PolicyPackError(EmsctlError):
    """A policy pack failed to start, to print its port, or to answer an Analyzer call."""

    def __init__(self, pack: str, message: str) -> None:
        self.pack = pack
        self.message = message
        super().__init__(f"policy pack {pack}: {message}")
