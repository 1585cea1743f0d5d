"""The edge box's key files: mode 0600 (or stricter) and owned by the service user.

The field manual's audit of ``/etc/ems`` is ``ems-edge check-config``'s job:
:func:`check_key_files` finds the broker key (``[broker] key``), a
``secret-key.conf`` beside sensors.conf and every ``*.key`` in the folders of
those two, and refuses any that another user could read or that the service
user does not own, naming the ``chown``/``chmod`` that fixes all of them at once.
Run as root with ``--user ems`` (the package's service user), or as that user.
Which modes are too open is ``edge_agent.config.key_mode_problem``: the agent
applies the same rule to its broker key at start, so a key this audit refuses
never runs.
"""

from __future__ import annotations

import grp
import os
import pwd
import shlex
import stat
from pathlib import Path

from edge_agent.config import AgentConfig, key_mode_problem
from edge_agent.errors import ConfigError

__all__ = ["SECRET_KEY_FILE", "key_files", "check_key_files", "service_user"]

SECRET_KEY_FILE = "secret-key.conf"


def service_user(name: str | None) -> pwd.struct_passwd:
    """The account ``name`` (default: the effective user). Raises ConfigError for an unknown user."""
    try:
        return pwd.getpwuid(os.geteuid()) if name is None else pwd.getpwnam(name)
    except KeyError:
        raise ConfigError("--user", name, "is not a user on this machine (the package creates 'ems')") from None


def key_files(config: AgentConfig) -> list[Path]:
    """The secret files of this config, each once: the broker key, then secret-key.conf and ``*.key`` files."""
    found = [config.broker.key]
    folders = dict.fromkeys([config.source_path.parent, config.broker.key.parent])
    for folder in folders:
        candidates = [folder / SECRET_KEY_FILE, *sorted(folder.glob("*.key"))]
        found += [path for path in candidates if path.is_file() and not path.is_symlink()]
    return list(dict.fromkeys(path.absolute() for path in found))


def check_key_files(config: AgentConfig, user: str | None = None) -> list[Path]:
    """Refuse key files that are not mode 0600 (or 0400) and owned by ``user``; return the files checked.

    Raises ConfigError naming the first bad file, what is wrong with it, and (as its ``fix``, in
    full however many files and however long their paths) the ``chown``/``chmod`` that fixes every bad file.
    """
    account = service_user(user)
    checked, bad, problems, fixes = key_files(config), [], [], {"chown": [], "chmod": []}
    for path in checked:
        try:
            info = path.stat()
        except FileNotFoundError:
            continue                # load_config reports a missing broker key with its field name
        except OSError as exc:
            raise ConfigError("key file", path, f"cannot be read ({exc.strerror or exc})") from exc
        mode = stat.S_IMODE(info.st_mode)
        wrong = []
        if key_mode_problem(path, mode) is not None:
            wrong.append(f"mode {mode:04o}")
            fixes["chmod"].append(shlex.quote(str(path)))
        if info.st_uid != account.pw_uid:
            wrong.append(f"owned by {_user_name(info.st_uid)}")
            fixes["chown"].append(shlex.quote(str(path)))
        if wrong:
            bad.append(path)
            problems.append(" and ".join(wrong))
    if bad:
        commands = []
        if fixes["chown"]:
            commands.append(f"chown {account.pw_name}:{_group_name(account.pw_gid)} {' '.join(fixes['chown'])}")
        if fixes["chmod"]:
            commands.append(f"chmod 600 {' '.join(fixes['chmod'])}")
        field = "broker.key" if bad[0] == config.broker.key.absolute() else "key file"
        others = f" ({len(bad) - 1} more key files too)" if len(bad) > 1 else ""
        raise ConfigError(field, bad[0], f"is {problems[0]}; key files must be 0600 and owned by the service user "
                          f"{account.pw_name}{others}", fix=" && ".join(commands))
    return checked


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
