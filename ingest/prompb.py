"""The Prometheus remote-write 1.0 message types, built at import time from descriptors.

``prometheus.WriteRequest`` (``prompb/remote.proto`` and ``prompb/types.proto``
upstream) reduced to the fields a remote-write *sender* of float samples uses;
field numbers and types are the upstream ones, so the bytes are what
Prometheus' ``/api/v1/write`` decodes::

    message WriteRequest { repeated TimeSeries timeseries = 1; reserved 2; repeated MetricMetadata metadata = 3; }
    message TimeSeries   { repeated Label labels = 1; repeated Sample samples = 2; }
    message Label        { string name = 1; string value = 2; }
    message Sample       { double value = 1; int64 timestamp = 2; }   // timestamp: ms since epoch

Building the classes from a ``FileDescriptorProto`` keeps the well-kept
``protobuf`` runtime doing the encoding without a protoc step or generated code
in the tree.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

__all__ = ["WriteRequest", "TimeSeries", "Label", "Sample"]

_F = descriptor_pb2.FieldDescriptorProto


def _file() -> descriptor_pb2.FileDescriptorProto:
    fdp = descriptor_pb2.FileDescriptorProto(name="ems_ingest/prometheus_remote.proto", package="prometheus",
                                             syntax="proto3")

    def message(name: str, *fields: tuple[str, int, int, int, str | None]) -> None:
        msg = fdp.message_type.add(name=name)
        for field_name, number, ftype, label, type_name in fields:
            field = msg.field.add(name=field_name, number=number, type=ftype, label=label)
            if type_name:
                field.type_name = type_name

    rep, opt = _F.LABEL_REPEATED, _F.LABEL_OPTIONAL
    message("Label", ("name", 1, _F.TYPE_STRING, opt, None), ("value", 2, _F.TYPE_STRING, opt, None))
    message("Sample", ("value", 1, _F.TYPE_DOUBLE, opt, None), ("timestamp", 2, _F.TYPE_INT64, opt, None))
    message("TimeSeries", ("labels", 1, _F.TYPE_MESSAGE, rep, ".prometheus.Label"),
            ("samples", 2, _F.TYPE_MESSAGE, rep, ".prometheus.Sample"))
    message("WriteRequest", ("timeseries", 1, _F.TYPE_MESSAGE, rep, ".prometheus.TimeSeries"))
    return fdp


_pool = descriptor_pool.DescriptorPool()
_pool.Add(_file())
WriteRequest = message_factory.GetMessageClass(_pool.FindMessageTypeByName("prometheus.WriteRequest"))
TimeSeries = message_factory.GetMessageClass(_pool.FindMessageTypeByName("prometheus.TimeSeries"))
Label = message_factory.GetMessageClass(_pool.FindMessageTypeByName("prometheus.Label"))
Sample = message_factory.GetMessageClass(_pool.FindMessageTypeByName("prometheus.Sample"))
