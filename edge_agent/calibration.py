"""Calibration: ``value = raw × gain + offset`` per sensor, 4–20 mA scaling, and live updates.

* ``calibrate(point, raw, cal)`` → ``(value, quality)``. For a point without a
  current loop, ``value = raw × gain + offset``. For a 4–20 mA point the
  signal is calibrated first (the field manual's signal-attenuation
  compensation acts on the loop current): ``mA = raw × ma_per_count × gain +
  offset``; below 3.8 mA or above 20.5 mA the quality is ``loop_fault``
  (NAMUR NE 43: wire break / short circuit); the value is scaled linearly,
  4 mA → ``low``, 20 mA → ``high``, and not clamped (a faulted loop reports
  where it really is, flagged).
* ``Calibrations``: the current gain/offset per sensor id, read from the
  config; ``reload_if_changed()`` re-reads the file when it changed (inode,
  size or mtime), ``watch()`` does so periodically for the running agent.
* ``apply_calibration(path, sensor_id, offset=, gain=)`` reads the config
  with the loader's limits (a regular file of at most 1 MiB of UTF-8; a FIFO
  or device is refused without blocking), edits the point's
  ``gain``/``offset`` in the TOML file in place (tomlkit keeps every other
  line and comment), validates the result, and replaces the file atomically
  (write a temp file, fsync, rename, fsync the folder). Idempotent: returns
  False and writes nothing when the values are already there.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import tomlkit
from tomlkit.exceptions import TOMLKitError

from edge_agent.config import AgentConfig, PointConfig, load_config, parse_config, read_config_file
from edge_agent.errors import ConfigError
from edge_agent.metrics import AgentMetrics

__all__ = ["Calibration", "Calibrations", "calibrate", "apply_calibration", "LOOP_FAULT_LOW_MA", "LOOP_FAULT_HIGH_MA"]

log = logging.getLogger(__name__)

LOOP_FAULT_LOW_MA = 3.8
LOOP_FAULT_HIGH_MA = 20.5


@dataclass(frozen=True, slots=True)
class Calibration:
    gain: float = 1.0
    offset: float = 0.0


def calibrate(point: PointConfig, raw: float, cal: Calibration) -> tuple[float, str]:
    """The engineering value of a decoded ``raw`` sample and its quality (``good`` or ``loop_fault``)."""
    loop = point.current_loop
    if loop is None:
        return raw * cal.gain + cal.offset, "good"
    milliamps = raw * loop.ma_per_count * cal.gain + cal.offset
    value = loop.low + (milliamps - 4.0) * (loop.high - loop.low) / 16.0
    if milliamps < LOOP_FAULT_LOW_MA or milliamps > LOOP_FAULT_HIGH_MA:
        return value, "loop_fault"
    return value, "good"


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns)


class Calibrations:
    """Current gain/offset per sensor id, re-read from the config file when it changes.

    Reads are plain dict look-ups on an immutable snapshot that a reload
    swaps in whole, so a poll never sees half of an update. ``generation``
    counts the swaps (a cache of the values is good while it is unchanged).
    """

    def __init__(self, source_path: Path, values: Mapping[str, Calibration]) -> None:
        self.source_path = Path(source_path)
        self._values: dict[str, Calibration] = dict(values)
        self._stamp = _stamp(self.source_path)
        self._bad_stamp: tuple[int, int, int] | None = None
        self.generation = 0

    @classmethod
    def from_config(cls, config: AgentConfig) -> "Calibrations":
        return cls(config.source_path, _values(config))

    def get(self, sensor_id: str) -> Calibration:
        """The sensor's calibration (gain 1, offset 0 for an unknown id)."""
        return self._values.get(sensor_id, _IDENTITY)

    def snapshot(self) -> dict[str, Calibration]:
        return dict(self._values)

    def reload_if_changed(self) -> bool:
        """Re-read the file if it changed; True when some gain/offset changed.

        A bad file raises ConfigError once (per version of the file) and keeps
        the old values; only gain and offset are taken from a reload — other
        edits need a restart.
        """
        stamp = _stamp(self.source_path)
        if stamp is None or stamp == self._stamp or stamp == self._bad_stamp:
            return False
        try:
            config = load_config(self.source_path, check_files=False)
        except ConfigError:
            self._bad_stamp = stamp
            raise
        self._stamp, self._bad_stamp = stamp, None
        values = _values(config)
        if values == self._values:
            return False
        changed = sorted(k for k in values if values[k] != self._values.get(k))
        self._values = values
        self.generation += 1
        log.info("calibration reloaded from %s: %d sensors changed (%s)", self.source_path, len(changed),
                 ", ".join(changed[:10]))
        return True

    async def watch(self, stop: asyncio.Event, *, interval_s: float = 1.0, metrics: AgentMetrics | None = None) -> None:
        """Poll the file every ``interval_s`` until ``stop`` is set; count reloads (``ok``/``unchanged``/``invalid``)."""
        while not stop.is_set():
            try:   # stat and parse off the event loop; the swap of the values is a single assignment
                outcome = "ok" if await asyncio.to_thread(self.reload_if_changed) else None
            except ConfigError as exc:
                log.error("calibration reload rejected, keeping the previous values: %s", exc)
                outcome = "invalid"
            if outcome and metrics is not None:
                metrics.config_reloads.labels(outcome).inc()
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval_s)
            except asyncio.TimeoutError:
                pass


_IDENTITY = Calibration()


def _values(config: AgentConfig) -> dict[str, Calibration]:
    return {p.id: Calibration(p.gain, p.offset) for d in config.devices for p in d.points}


def apply_calibration(config_path: str | os.PathLike[str], sensor_id: str, *, offset: float | None = None,
                      gain: float | None = None) -> bool:
    """Set the sensor's ``offset`` and/or ``gain`` in the config file; False when nothing changed.

    Raises ConfigError for an unknown sensor id, a bad value, or a file that
    is not a valid config (before or after the edit — the file is then left
    as it was). Concurrent calls are serialised with a lock on the folder.
    """
    path = Path(config_path).absolute()
    if offset is None and gain is None:
        raise ConfigError("calibration", None, "needs an offset, a gain or both")
    if offset is not None and (isinstance(offset, bool) or not isinstance(offset, (int, float)) or not math.isfinite(offset)):
        raise ConfigError("--offset", offset, "must be a finite number")
    if gain is not None and (isinstance(gain, bool) or not isinstance(gain, (int, float))
                             or not math.isfinite(gain) or gain == 0):
        raise ConfigError("--gain", gain, "must be a finite number other than 0")
    folder_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(folder_fd, fcntl.LOCK_EX)
        return _apply_locked(path, folder_fd, sensor_id, offset, gain)
    finally:
        os.close(folder_fd)   # also releases the lock


def _apply_locked(path: Path, folder_fd: int, sensor_id: str, offset: float | None, gain: float | None) -> bool:
    # Read once, with the loader's limits (regular file, 1 MiB, UTF-8, bounded nesting), and edit
    # exactly the text that was validated: the file must be valid before we touch it.
    text = read_config_file(path)
    config = parse_config(text, path, check_files=False)
    try:
        config.point(sensor_id)
    except KeyError:
        known = [p.id for d in config.devices for p in d.points]
        close = [k for k in known if k.lower() == str(sensor_id).lower()]
        hint = f"did you mean {close[0]!r}?" if close else f"known ids: {', '.join(known[:12])}{' …' if len(known) > 12 else ''}"
        raise ConfigError("--id", sensor_id, f"is not a sensor id in {path}; {hint}") from None
    try:
        document = tomlkit.parse(text)
    except TOMLKitError as exc:  # tomllib accepted it, so this is a tomlkit limitation
        raise ConfigError(str(path), "file", f"cannot be edited in place: {exc}") from exc
    table = _find_point(document, sensor_id)
    current = Calibration(float(table.get("gain", 1.0)), float(table.get("offset", 0.0)))
    wanted = Calibration(current.gain if gain is None else float(gain), current.offset if offset is None else float(offset))
    if wanted == current:
        return False
    if gain is not None:
        table["gain"] = wanted.gain
    if offset is not None:
        table["offset"] = wanted.offset
    new_text = tomlkit.dumps(document)
    parse_config(new_text, path, check_files=False)      # never write a file the agent would reject
    _replace_atomically(path, folder_fd, new_text.encode("utf-8"))
    log.info("calibration of %s set to gain %g offset %g in %s", sensor_id, wanted.gain, wanted.offset, path)
    return True


def _find_point(document: tomlkit.TOMLDocument, sensor_id: str):
    for device in document.get("devices", []):
        for point in device.get("points", []):
            if point.get("id") == sensor_id:
                return point
    raise ConfigError("--id", sensor_id, "is not a sensor id in the file")  # load_config found it: not reached


def _replace_atomically(path: Path, folder_fd: int, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync it, rename it over ``path``, fsync the folder."""
    info = path.stat()
    mode = info.st_mode & 0o7777
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except OSError as exc:
        if exc.errno != errno.EEXIST:
            raise ConfigError(str(path), str(temp), f"cannot be created ({exc.strerror})") from exc
        temp.unlink()   # left over by a crashed run of this very process id
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            _keep_owner(fh.fileno(), info, path)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(temp, mode)            # the umask may have narrowed it
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    os.fsync(folder_fd)


def _keep_owner(fd: int, info: os.stat_result, path: Path) -> None:
    """Give the new file the old one's owner and group (root calibrating /etc/ems/sensors.conf, root:ems).

    Without it the agent's group would lose read access to its own config.
    """
    if (info.st_uid, info.st_gid) == (os.geteuid(), os.getegid()):
        return
    try:
        os.fchown(fd, info.st_uid, info.st_gid)
    except PermissionError:
        log.warning("%s: rewritten by uid %d, which cannot keep its owner uid %d, group gid %d",
                    path, os.geteuid(), info.st_uid, info.st_gid)
