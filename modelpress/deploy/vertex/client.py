"""The GAPIC plumbing every Vertex call shares: the regional client, a resource's parent, the
one-resource-per-display-name lookup, and requests rendered as JSON for dry runs."""

from __future__ import annotations

from modelpress.core.errors import ModelpressError


def location_parent(project: str, location: str) -> str:
    return f"projects/{project}/locations/{location}"


def client(cls, location: str, credentials=None):
    """A GAPIC client for `location`: Vertex serves each region from its own endpoint."""
    return cls(credentials=credentials, client_options={"api_endpoint": f"{location}-aiplatform.googleapis.com"})


def one_by_display_name(items: list, kind: str, name: str):
    if len(items) > 1:
        raise ModelpressError(f"{len(items)} {kind}s are named {name!r} ({', '.join(i.name for i in items)}); "
                              f"modelpress finds its {kind} by display name: delete or rename the extras")
    return items[0] if items else None


def to_json(message) -> dict:
    from google.protobuf import json_format

    return json_format.MessageToDict(type(message).pb(message), preserving_proto_field_name=True)
