"""A site's DER as 2030.5 sees it: DERCapability, DERSettings and DERStatus from config and live readings.

========================  ==================================================================
DERCapability             ``type`` (DERType), ``rtgMaxW`` (rated W), ``rtgMaxVar`` when set,
                          ``modesSupported`` = opModConnect | opModEnergize (0x0C) and CSIP-AUS
                          ``doeModesSupported`` = export, import, generation, load limits (0x0F):
                          exactly the controls this platform carries to the field
DERSettings               ``setMaxW`` (default the rating), ``setGradW`` (hundredths of %/s,
                          0 = no limit), ``modesEnabled`` / ``doeModesEnabled`` as supported,
                          ``updatedTime``
DERStatus                 ``readingTime``; ``operationalModeStatus`` 2 (operational); with a
                          ``connected_point``, ``genConnectStatus`` connected | available | operating
                          (0x07) when the point reads non-zero, else available (0x02)
========================  ==================================================================

Powers become ``ActivePower``/``ReactivePower`` as an Int16 ``value`` and the smallest
power-of-ten ``multiplier`` (0..9) that fits, rounded half to even: 250 kW is 25000 × 10^1.
"""

from __future__ import annotations

from northbound import sep2

__all__ = ["MODES_SUPPORTED", "DOE_MODES_SUPPORTED", "DER_TYPES", "power", "capability", "settings", "status"]

MODES_SUPPORTED = "0C"
"""DERControlType bits 2 (opModConnect) and 3 (opModEnergize)."""
DOE_MODES_SUPPORTED = "0F"
"""CSIP-AUS DOESupportedMode bits: opModExpLimW, opModImpLimW, opModGenLimW, opModLoadLimW."""
DER_TYPES = frozenset({0, 1, 2, 3, 4, 5, 6, 80, 81, 82, 83})
"""2030.5 DERType values: 4 photovoltaic, 80 other storage, 83 combined PV and storage, …"""

_CONNECTED, _AVAILABLE, _OPERATING = 0x01, 0x02, 0x04


def power(watts: float, model: type = sep2.ActivePower):  # type: ignore[no-untyped-def]
    """``watts`` as ``model`` (ActivePower or ReactivePower): Int16 value, multiplier 0..9; ValueError beyond."""
    for multiplier in range(10):
        value = round(watts / 10**multiplier)
        if -32768 <= value <= 32767:
            return model(value=value, multiplier=multiplier)
    raise ValueError(f"{watts!r} W does not fit a 2030.5 power (Int16 × 10^9)")


def capability(der_type: int, rated_w: float, rated_var: float | None) -> sep2.DERCapability:
    return sep2.DERCapability(modesSupported=MODES_SUPPORTED, rtgMaxW=power(rated_w),
                              rtgMaxVar=power(rated_var, sep2.ReactivePower) if rated_var is not None else None,
                              type_=der_type, doeModesSupported=DOE_MODES_SUPPORTED)


def settings(max_w: float, grad_w: int, now: int) -> sep2.DERSettings:
    return sep2.DERSettings(modesEnabled=MODES_SUPPORTED, setGradW=grad_w, setMaxW=power(max_w), updatedTime=now,
                            doeModesEnabled=DOE_MODES_SUPPORTED)


def status(now: int, connected: bool | None) -> sep2.DERStatus:
    """DERStatus at server time ``now``; ``connected`` None when no point reports it."""
    gen = None
    if connected is not None:
        bits = _CONNECTED | _AVAILABLE | _OPERATING if connected else _AVAILABLE
        gen = sep2.ConnectStatus(dateTime=now, value=f"{bits:02X}")
    return sep2.DERStatus(readingTime=now, genConnectStatus=gen,
                          operationalModeStatus=sep2.OperationalModeStatus(dateTime=now, value=2))
