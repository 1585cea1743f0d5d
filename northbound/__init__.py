"""``ems-northbound``: the platform's IEEE 2030.5 client toward the utility's DER server (CSIP aggregator role).

One client certificate for the platform, one EndDevice per configured site. Layout:
``identity`` (LFDI/SFDI), ``sep2`` (the XML boundary), ``tls`` and ``transport`` (HTTPS),
``events`` (which DERControl applies, as a pure function), ``mirror`` (readings as
MirrorMeterReadings), ``client`` (the function sets), ``config``, ``metrics``, ``service``
and ``cli``. It must never import pulumi.
"""
