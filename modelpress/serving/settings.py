"""What `modelpress serve` is told at start, shared by the data plane and the transports."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServeSettings:
    max_body_bytes: int = 16 * 1024 * 1024
    request_timeout_s: float = 30.0
    poll_seconds: float = 0.0                 # 0: load once at start
    vertex_health_route: str | None = None    # set in Vertex mode
    vertex_predict_route: str | None = None
    vertex_model: str | None = None           # the model the predict route serves

    @property
    def vertex(self) -> bool:
        """Vertex AI custom-container mode: its routes are served beside the v2 ones."""
        return bool(self.vertex_health_route or self.vertex_predict_route)
