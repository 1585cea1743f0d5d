"""Site readings as 2030.5 Metering Mirror resources: ReadingTypes, units and power-of-ten scaling.

Each configured point maps to one ``READING_KINDS`` entry, which fixes its ReadingType
(IEC 61968-9 codes as 2030.5 uses them)::

    kind            uom        kind      accumulation     flow       default multiplier
    active_power    38 W       37 power  12 instantaneous 1 forward   0  (1 W)
    reactive_power  63 var     37 power  12 instantaneous 1 forward   0  (1 var)
    voltage         29 V        0 n/a    12 instantaneous 0 n/a      -1  (0.1 V)
    frequency       33 Hz       0 n/a    12 instantaneous 0 n/a      -2  (0.01 Hz)
    energy_import   72 Wh      12 energy  9 summation     1 forward   0  (1 Wh)
    energy_export   72 Wh      12 energy  9 summation    19 reverse   0  (1 Wh)

A Reading's integer ``value`` is the measurement in the base unit divided by
10^powerOfTenMultiplier, rounded half to even: 230.46 V with multiplier −1 is
2305. Telemetry units are converted to the base unit first (``UNIT_SCALE``: kW → W
and so on); a unit that does not belong to the kind, a value that is not finite
or an integer beyond Int48 raises ``MirrorError`` and that one reading is skipped.
Identifiers (MirrorUsagePoint and MirrorMeterReading mRIDs) are derived from the
site's LFDI and the point, so a restart finds the same mirror resources.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from northbound import sep2

__all__ = ["ReadingKind", "READING_KINDS", "UNIT_SCALE", "MirrorError", "scaled_value", "reading_type",
           "usage_point", "meter_reading", "mrid_for"]

_INT48 = 2**47


@dataclass(frozen=True, slots=True)
class ReadingKind:
    """The fixed ReadingType fields of one kind of measurement, and its base unit."""

    uom: int
    kind: int
    accumulation: int
    flow: int
    multiplier: int
    base_unit: str


READING_KINDS: dict[str, ReadingKind] = {
    "active_power": ReadingKind(uom=38, kind=37, accumulation=12, flow=1, multiplier=0, base_unit="W"),
    "reactive_power": ReadingKind(uom=63, kind=37, accumulation=12, flow=1, multiplier=0, base_unit="var"),
    "voltage": ReadingKind(uom=29, kind=0, accumulation=12, flow=0, multiplier=-1, base_unit="V"),
    "frequency": ReadingKind(uom=33, kind=0, accumulation=12, flow=0, multiplier=-2, base_unit="Hz"),
    "energy_import": ReadingKind(uom=72, kind=12, accumulation=9, flow=1, multiplier=0, base_unit="Wh"),
    "energy_export": ReadingKind(uom=72, kind=12, accumulation=9, flow=19, multiplier=0, base_unit="Wh"),
}

UNIT_SCALE: dict[str, tuple[str, float]] = {
    "W": ("W", 1.0), "kW": ("W", 1e3), "MW": ("W", 1e6),
    "var": ("var", 1.0), "kvar": ("var", 1e3), "Mvar": ("var", 1e6),
    "V": ("V", 1.0), "kV": ("V", 1e3),
    "Hz": ("Hz", 1.0),
    "Wh": ("Wh", 1.0), "kWh": ("Wh", 1e3), "MWh": ("Wh", 1e6),
}
"""Telemetry unit → (base unit, factor to the base unit)."""


class MirrorError(ValueError):
    """A reading that cannot be mirrored: ``point`` and why."""

    def __init__(self, point: str, reason: str) -> None:
        super().__init__(f"{point}: {reason}")
        self.point = point
        self.reason = reason


def scaled_value(point: str, kind: ReadingKind, multiplier: int, value: float, unit: str) -> int:
    """The Reading value of ``value`` (in ``unit``) for a ReadingType with ``multiplier``."""
    base, factor = UNIT_SCALE.get(unit, (None, 0.0))
    if base != kind.base_unit:
        raise MirrorError(point, f"unit {unit!r} is not a unit of {kind.base_unit}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MirrorError(point, f"value {value!r} is not a finite number")
    scaled = round(value * factor / 10.0**multiplier)
    if not -_INT48 <= scaled < _INT48:
        raise MirrorError(point, f"value {value!r} {unit} does not fit a 2030.5 Int48 at multiplier {multiplier}")
    return scaled


def mrid_for(*parts: str) -> str:
    """A stable 128-bit mRID (32 upper-case hex digits) for the given identifying parts."""
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:32].upper()


def reading_type(kind: ReadingKind, multiplier: int) -> sep2.ReadingType:
    return sep2.ReadingType(accumulationBehaviour=kind.accumulation, commodity=1, dataQualifier=0,
                            flowDirection=kind.flow, kind=kind.kind, phase=0,
                            powerOfTenMultiplier=multiplier, uom=kind.uom)


def meter_reading(site_lfdi: str, point: str, kind: ReadingKind, multiplier: int, *,
                  value: int | None = None, time: int | None = None) -> sep2.MirrorMeterReading:
    """A MirrorMeterReading for ``point``: with its ReadingType, and with one Reading when ``value`` is given."""
    reading = None
    if value is not None:
        reading = sep2.Reading(value=value, qualityFlags="01",
                               timePeriod=sep2.DateTimeInterval(start=time or 0, duration=0))
    return sep2.MirrorMeterReading(mRID=mrid_for(site_lfdi, "mmr", point), description=point[:32],
                                   lastUpdateTime=time, reading=reading, readingType=reading_type(kind, multiplier))


def usage_point(site: str, site_lfdi: str, readings: list[sep2.MirrorMeterReading]) -> sep2.MirrorUsagePoint:
    """The site's MirrorUsagePoint (a mirrored premises aggregation point, electricity)."""
    return sep2.MirrorUsagePoint(mRID=mrid_for(site_lfdi, "mup"), description=site[:32], roleFlags="03",
                                 serviceCategoryKind=0, status=1, deviceLFDI=site_lfdi,
                                 mirrorMeterReadings=readings or None)
