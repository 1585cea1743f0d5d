"""Calibration: gain/offset, 4–20 mA scaling and loop faults, atomic idempotent updates, hot reload."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from edge_agent.calibration import Calibration, Calibrations, apply_calibration, calibrate
from edge_agent.config import CurrentLoop, PointConfig, load_config
from edge_agent.errors import ConfigError
from edge_agent.metrics import AgentMetrics
from edge_agent.simulator import EXAMPLE_CONFIG

REPO = Path(__file__).resolve().parents[2]


def point(loop: CurrentLoop | None = None) -> PointConfig:
    return PointConfig(id="S1", asset="a", name="p", register="input", address=0, type="uint16", current_loop=loop)


@pytest.mark.parametrize("raw,gain,offset,expected", [
    (100.0, 1.0, 0.0, 100.0),
    (100.0, 0.1, 0.0, 10.0),
    (100.0, 1.0, 0.05, 100.05),
    (-20.0, 1.02, -0.5, -20.9),
])
def test_gain_and_offset(raw: float, gain: float, offset: float, expected: float) -> None:
    value, quality = calibrate(point(), raw, Calibration(gain, offset))
    assert value == pytest.approx(expected) and quality == "good"


@pytest.mark.parametrize("microamps,expected,quality", [
    (4000, 0.0, "good"),
    (12000, 50.0, "good"),
    (20000, 100.0, "good"),
    (3800, -1.25, "good"),           # the fault thresholds themselves are still a healthy loop
    (20500, 103.125, "good"),
    (3799, -1.25625, "loop_fault"),  # wire break side (NAMUR NE 43)
    (2000, -12.5, "loop_fault"),
    (0, -25.0, "loop_fault"),
    (20501, 103.13125, "loop_fault"),  # short-circuit side
])
def test_current_loop_scaling_and_fault_detection(microamps: int, expected: float, quality: str) -> None:
    loop = CurrentLoop(low=0.0, high=100.0, ma_per_count=0.001)
    assert calibrate(point(loop), float(microamps), Calibration()) == (pytest.approx(expected), quality)


def test_reverse_acting_loop() -> None:
    loop = CurrentLoop(low=120.0, high=-20.0)
    assert calibrate(point(loop), 4.0, Calibration()) == (pytest.approx(120.0), "good")
    assert calibrate(point(loop), 20.0, Calibration()) == (pytest.approx(-20.0), "good")


def test_loop_calibration_compensates_the_signal_before_the_fault_check() -> None:
    # an attenuated loop reads 3.75 mA at its real 4 mA: offset +0.25 mA brings it back into range
    loop = CurrentLoop(low=0.0, high=16.0)
    assert calibrate(point(loop), 3.75, Calibration()) == (pytest.approx(-0.25), "loop_fault")
    assert calibrate(point(loop), 3.75, Calibration(1.0, 0.25)) == (pytest.approx(0.0), "good")


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    path = tmp_path / "sensors.conf"
    shutil.copy(EXAMPLE_CONFIG, path)
    os.chmod(path, 0o640)
    return path


def test_apply_changes_only_the_points_lines(conf: Path) -> None:
    before = conf.read_text().splitlines()
    assert apply_calibration(conf, "SENSOR_01", offset=0.05) is True
    after = conf.read_text().splitlines()
    added = [line for line in after if line not in before]
    assert added == ["offset = 0.05"]
    assert [line for line in before if line not in after] == []
    assert "# must not be readable by other users (chmod 600)" in conf.read_text()   # comments survive
    config = load_config(conf, check_files=False)
    assert (config.point("SENSOR_01").gain, config.point("SENSOR_01").offset) == (1.0, 0.05)
    assert config.point("SENSOR_02").offset == 0.0


def test_apply_edits_existing_gain_in_place(conf: Path) -> None:
    assert apply_calibration(conf, "SENSOR_04", gain=0.098, offset=-0.3) is True
    text = conf.read_text()
    assert "gain = 0.098                        # tenths of a degree" in text     # the comment stays on its line
    assert "gain = 0.1 " not in text
    point4 = load_config(conf, check_files=False).point("SENSOR_04")
    assert (point4.gain, point4.offset) == (0.098, -0.3)


def test_apply_on_a_point_with_a_current_loop_subtable(conf: Path) -> None:
    assert apply_calibration(conf, "SENSOR_16", offset=0.02, gain=1.01) is True
    config = load_config(conf, check_files=False)
    p16 = config.point("SENSOR_16")
    assert (p16.gain, p16.offset, p16.current_loop) == (1.01, 0.02, CurrentLoop(0.0, 10.0, 0.001))


def test_apply_is_idempotent_and_writes_nothing_the_second_time(conf: Path) -> None:
    assert apply_calibration(conf, "SENSOR_01", offset=0.05) is True
    stat = conf.stat()
    content = conf.read_bytes()
    assert apply_calibration(conf, "SENSOR_01", offset=0.05) is False
    assert apply_calibration(conf, "SENSOR_01", offset=0.05, gain=1.0) is False
    assert conf.read_bytes() == content
    assert (conf.stat().st_ino, conf.stat().st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)


def test_apply_is_atomic_keeps_mode_and_leaves_no_temp_file(conf: Path) -> None:
    inode = conf.stat().st_ino
    assert apply_calibration(conf, "SENSOR_13", offset=1.5) is True
    assert conf.stat().st_ino != inode                 # a new file renamed over the old one
    assert oct(conf.stat().st_mode & 0o777) == "0o640"
    assert sorted(p.name for p in conf.parent.iterdir()) == ["sensors.conf"]


@pytest.mark.parametrize("kwargs,expected", [
    ({"sensor_id": "SENSOR_99", "offset": 1.0}, "--id: 'SENSOR_99' is not a sensor id in {conf}; known ids: "
     "SENSOR_01, SENSOR_02, SENSOR_03, SENSOR_04, SENSOR_05, SENSOR_06, SENSOR_07, SENSOR_08, TX1_RELAY_FAULT, SENSOR_09, "
     "SENSOR_10, SENSOR_11 …"),
    ({"sensor_id": "sensor_01", "offset": 1.0}, "--id: 'sensor_01' is not a sensor id in {conf}; did you mean 'SENSOR_01'?"),
    ({"sensor_id": "SENSOR_01", "gain": 0.0}, "--gain: 0.0 must be a finite number other than 0"),
    ({"sensor_id": "SENSOR_01", "offset": float("nan")}, "--offset: nan must be a finite number"),
    ({"sensor_id": "SENSOR_01"}, "calibration: None needs an offset, a gain or both"),
])
def test_apply_rejects_bad_requests_and_leaves_the_file(conf: Path, kwargs: dict, expected: str) -> None:
    content = conf.read_bytes()
    sensor_id = kwargs.pop("sensor_id")
    with pytest.raises(ConfigError) as caught:
        apply_calibration(conf, sensor_id, **kwargs)
    assert str(caught.value) == expected.format(conf=conf)
    assert conf.read_bytes() == content


def test_apply_refuses_to_touch_an_invalid_file(conf: Path) -> None:
    conf.write_text(conf.read_text().replace('type = "float64"', 'type = "float128"'))
    content = conf.read_bytes()
    with pytest.raises(ConfigError, match=r"^devices\[2\]\.points\[1\]\.type: 'float128' must be one of"):
        apply_calibration(conf, "SENSOR_01", offset=1.0)
    assert conf.read_bytes() == content


def test_concurrent_updates_are_all_kept(conf: Path) -> None:
    ids = [f"SENSOR_{i:02d}" for i in range(1, 13)]
    errors: list[BaseException] = []

    def worker(sensor_id: str, value: float) -> None:
        try:
            apply_calibration(conf, sensor_id, offset=value)
        except BaseException as exc:  # noqa: BLE001 collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s, i + 0.5)) for i, s in enumerate(ids)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    config = load_config(conf, check_files=False)
    assert [config.point(s).offset for s in ids] == [i + 0.5 for i in range(len(ids))]


def test_reload_if_changed_picks_up_a_calibration(conf: Path) -> None:
    cal = Calibrations.from_config(load_config(conf, check_files=False))
    assert cal.get("SENSOR_04") == Calibration(0.1, 0.0)
    assert cal.reload_if_changed() is False
    apply_calibration(conf, "SENSOR_04", offset=0.7)
    assert cal.reload_if_changed() is True
    assert cal.get("SENSOR_04") == Calibration(0.1, 0.7)
    assert cal.reload_if_changed() is False
    assert cal.get("UNKNOWN") == Calibration(1.0, 0.0)


def test_a_bad_file_keeps_the_old_values_and_is_reported_once(conf: Path) -> None:
    cal = Calibrations.from_config(load_config(conf, check_files=False))
    good = conf.read_text()
    conf.write_text(good.replace("gain = 0.1 ", "gain = 0 "))
    with pytest.raises(ConfigError, match=r"^devices\[0\]\.points\[3\]\.gain: 0\.0 must not be 0$"):
        cal.reload_if_changed()
    assert cal.reload_if_changed() is False            # same bad version: not raised again
    assert cal.get("SENSOR_04") == Calibration(0.1, 0.0)
    conf.write_text(good.replace("gain = 0.1 ", "gain = 0.2 "))
    assert cal.reload_if_changed() is True
    assert cal.get("SENSOR_04") == Calibration(0.2, 0.0)


def test_an_unrelated_edit_is_not_a_calibration_change(conf: Path) -> None:
    cal = Calibrations.from_config(load_config(conf, check_files=False))
    conf.write_text(conf.read_text() + "\n# a comment\n")
    assert cal.reload_if_changed() is False


def test_watch_applies_changes_without_restart(conf: Path) -> None:
    metrics = AgentMetrics(CollectorRegistry())
    cal = Calibrations.from_config(load_config(conf, check_files=False))

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(cal.watch(stop, interval_s=0.02, metrics=metrics))
        await asyncio.sleep(0.05)
        await asyncio.to_thread(apply_calibration, conf, "SENSOR_13", gain=1.1)
        for _ in range(200):
            if cal.get("SENSOR_13").gain == 1.1:
                break
            await asyncio.sleep(0.01)
        conf.write_text(conf.read_text().replace('type = "float64"', 'type = "float65"'))
        for _ in range(200):
            if metrics.registry.get_sample_value("ems_edge_config_reloads_total", {"outcome": "invalid"}):
                break
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(scenario())
    assert cal.get("SENSOR_13") == Calibration(1.1, 0.0)
    assert metrics.registry.get_sample_value("ems_edge_config_reloads_total", {"outcome": "ok"}) == 1.0
    assert metrics.registry.get_sample_value("ems_edge_config_reloads_total", {"outcome": "invalid"}) == 1.0


def test_calibrate_sensor_script_maps_the_field_manual_arguments(tmp_path: Path) -> None:
    """The wrapper turns the manual's `--id ID --offset X [--gain G]` and the short `ID OFFSET [GAIN] [options]`
    into `ems-edge calibrate ...` (a recording stand-in for ems-edge)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    recorder = bin_dir / "ems-edge"
    recorder.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s|" "$a"; done\n')
    recorder.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    script = REPO / "scripts" / "calibrate_sensor.sh"

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(script), *args], env=env, capture_output=True, text=True, timeout=30)

    assert run("SENSOR_01", "0.05").stdout == "calibrate|--id|SENSOR_01|--offset|0.05|"
    assert run("SENSOR_01", "-0.05", "1.02").stdout == "calibrate|--id|SENSOR_01|--offset|-0.05|--gain|1.02|"
    assert run("SENSOR_01", "0.05", "--config", "/x.conf").stdout == \
        "calibrate|--id|SENSOR_01|--offset|0.05|--config|/x.conf|"
    assert run("--id", "SENSOR_01", "--offset", "0.05").stdout == "calibrate|--id|SENSOR_01|--offset|0.05|"
    assert run("--id", "SENSOR_01", "--offset", "-0.05", "--gain", "1.02", "--config", "/x.conf").stdout == \
        "calibrate|--id|SENSOR_01|--offset|-0.05|--gain|1.02|--config|/x.conf|"
    assert run("--offset=0.05", "--id=SENSOR_01").stdout == "calibrate|--offset=0.05|--id=SENSOR_01|"
    for bad in (("SENSOR_01",), (), ("--help",)):
        usage = run(*bad)
        assert usage.returncode == 2 and usage.stderr.startswith("usage: "), bad


def test_calibrate_sensor_script_end_to_end_with_ems_edge(conf: Path) -> None:
    """The field manual's command against the real `ems-edge calibrate`: updates, then is idempotent."""
    # This tree's ems-edge, not a packaged one in /usr/bin (test_edge_deb.py installs one for a while).
    env = {**os.environ, "EMS_SENSORS_CONF": str(conf), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    script = REPO / "scripts" / "calibrate_sensor.sh"
    first = subprocess.run([str(script), "SENSOR_03", "0.05", "1.02"], env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert "updated" in first.stdout
    point3 = load_config(conf, check_files=False).point("SENSOR_03")
    assert (point3.gain, point3.offset) == (1.02, 0.05)
    content = conf.read_bytes()
    again = subprocess.run([str(script), "SENSOR_03", "0.05", "1.02"], env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "unchanged" in again.stdout
    assert conf.read_bytes() == content
    manual = subprocess.run([str(script), "--id", "SENSOR_03", "--offset", "0.07"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert manual.returncode == 0 and "updated" in manual.stdout, manual.stderr
    point3 = load_config(conf, check_files=False).point("SENSOR_03")
    assert (point3.gain, point3.offset) == (1.02, 0.07)
    missing = subprocess.run([str(script), "--id", "SENSOR_03", "--offset"], env=env, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "argument --offset: expected one argument" in missing.stderr
    bad = subprocess.run([str(script), "SENSOR_3", "0.05"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("ems-edge calibrate: error: --id: 'SENSOR_3' is not a sensor id")
