"""Vertex AI stand-ins: GAPIC client methods routed to in-memory fakes, no credentials needed."""

import pytest


@pytest.fixture
def patch_vertex(monkeypatch):
    """patch_vertex(fake, {ClientClass: [method, ...]}): each method calls fake.<method>(request)."""
    import google.auth
    from google.auth.credentials import AnonymousCredentials

    def patch(fake, methods_by_client: dict):
        monkeypatch.setattr(google.auth, "default", lambda *a, **k: (AnonymousCredentials(), "my-project"))
        for cls, methods in methods_by_client.items():
            for method in methods:
                monkeypatch.setattr(cls, method, lambda self, request, _m=method: getattr(fake, _m)(request))
        return fake

    return patch
