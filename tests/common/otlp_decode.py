"""Decodes OTLP/HTTP protobuf log requests with the official OpenTelemetry definitions (PyPI
opentelemetry-proto), independently of the Rust types the job encodes with.

Usage: otlp_decode.py FILE...  (each an uncompressed ExportLogsServiceRequest body)
Prints one JSON line per log record: every field of the record, its resource and its scope.
Exits 1 if a body does not decode or carries fields the decoder does not know."""

import json
import sys

from google.protobuf import unknown_fields
from google.protobuf.descriptor import FieldDescriptor
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2


def unknown(message, where):
    """Field numbers the official definitions do not know, anywhere in `message`."""
    found = [f"{where}: field {f.field_number}" for f in unknown_fields.UnknownFieldSet(message)]
    for field, v in message.ListFields():
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        items = v if field.is_repeated else [v]
        for i, item in enumerate(items):
            found += unknown(item, f"{where}.{field.name}[{i}]")
    return found


def value(v):
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "kvlist_value":
        return {kv.key: value(kv.value) for kv in v.kvlist_value.values}
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    if kind == "bytes_value":
        return {"bytes": v.bytes_value.hex()}
    return getattr(v, kind)


def attributes(kvs):
    out = {}
    for kv in kvs:
        if kv.key in out:
            raise ValueError(f"attribute {kv.key!r} repeated")
        out[kv.key] = value(kv.value)
    return out


def main():
    for path in sys.argv[1:]:
        request = logs_service_pb2.ExportLogsServiceRequest()
        with open(path, "rb") as f:
            request.ParseFromString(f.read())
        # Fields unknown to the official definitions would mean we encoded something else.
        strange = unknown(request, "request")
        if strange:
            raise ValueError(f"{path}: unknown fields: {strange}")
        for rl in request.resource_logs:
            resource = attributes(rl.resource.attributes)
            for sl in rl.scope_logs:
                for r in sl.log_records:
                    print(json.dumps({
                        "resource": resource,
                        "scope": {"name": sl.scope.name, "version": sl.scope.version},
                        "time_unix_nano": r.time_unix_nano,
                        "observed_time_unix_nano": r.observed_time_unix_nano,
                        "severity_number": r.severity_number,
                        "severity_text": r.severity_text,
                        "body": value(r.body),
                        "attributes": attributes(r.attributes),
                        "dropped_attributes_count": r.dropped_attributes_count,
                        "flags": r.flags,
                        "trace_id": r.trace_id.hex(),
                        "span_id": r.span_id.hex(),
                        "event_name": r.event_name,
                    }))


if __name__ == "__main__":
    main()
