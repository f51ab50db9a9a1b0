"""Compile-time settings for a pipeline: which target and which image. No environment reads."""

from __future__ import annotations

from dataclasses import dataclass

TARGETS = ("local", "vertex")


@dataclass(frozen=True)
class Target:
    name: str = "local"
    image: str = "modelpress-cpu:dev"
    cpu_limit: str = "2"
    memory_limit: str = "8G"

    def __post_init__(self):
        if self.name not in TARGETS:
            raise ValueError(f"unknown target {self.name!r}; choose one of {list(TARGETS)}")

    def apply(self, task, cache: bool = True):
        """Per-task settings every step shares: the image, resources, caching."""
        task.set_container_image(self.image)
        task.set_caching_options(cache)
        if self.name == "vertex":  # compiled into the YAML; the local runner only warns
            task.set_cpu_limit(self.cpu_limit)
            task.set_memory_limit(self.memory_limit)
        return task
