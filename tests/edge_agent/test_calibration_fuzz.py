"""``ems-edge calibrate``'s edit (``apply_calibration``) under hypothesis: any sensor id and any offset
and gain an operator can type either update exactly that point, leaving a config the agent loads, or
are refused with a ConfigError naming the argument — and the file is then left byte for byte as it was.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.calibration import apply_calibration
from edge_agent.config import load_config
from edge_agent.errors import ConfigError
from edge_agent.simulator import EXAMPLE_CONFIG

_IDS = [p.id for d in load_config(EXAMPLE_CONFIG, check_files=False).devices for p in d.points]
_number = st.one_of(st.none(), st.floats(), st.integers(-2**70, 2**70), st.booleans(),
                    st.sampled_from([0.0, -0.0, 5e-324, 1e308, -1e308, 1e-5]))


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.sampled_from(_IDS), st.text(max_size=12), st.sampled_from([s.lower() for s in _IDS])),
       _number, _number)
def test_a_calibration_updates_exactly_that_point_or_is_refused_leaving_the_file(sensor_id: str, offset: object,
                                                                                 gain: object) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "sensors.conf"
        shutil.copy(EXAMPLE_CONFIG, path)
        os.chmod(path, 0o640)
        before = path.read_bytes()
        old = load_config(path, check_files=False)
        try:
            changed = apply_calibration(path, sensor_id, offset=offset, gain=gain)  # type: ignore[arg-type]
        except ConfigError as exc:
            assert "\n" not in str(exc)
            assert path.read_bytes() == before
            return
        new = load_config(path, check_files=False)
        point = new.point(sensor_id)
        if offset is not None:
            assert point.offset == float(offset)  # type: ignore[arg-type]
        if gain is not None:
            assert point.gain == float(gain)  # type: ignore[arg-type]
        assert changed == (path.read_bytes() != before)
        for other in _IDS:
            if other != sensor_id:
                assert (new.point(other).gain, new.point(other).offset) == (old.point(other).gain, old.point(other).offset)
        assert sorted(os.listdir(scratch)) == ["sensors.conf"]          # no temporary file left
