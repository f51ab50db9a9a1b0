"""What a Vertex setting must satisfy before anything is sent: immutable images, display names
that can be quoted into list filters, crons that name their time zone, known accelerators.

Images are referenced by an immutable tag (Vertex's cache key includes the image string, and
a schedule must keep running the code it was created with): a literal ``GIT_SHA`` in a
configured image is replaced by the tag given, ``:latest`` and untagged images are refused.
"""

from __future__ import annotations

import re

from modelpress.core.errors import ModelpressError

GIT_SHA = "GIT_SHA"  # placeholder in configs/vertex.yaml images, replaced by the image tag
_DISPLAY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,127}$")  # quoted into list filters
_CRON_TZ = re.compile(r"^(CRON_TZ|TZ)=[A-Za-z0-9_+/-]+ +(\S+ +){4}\S+$")


def resolve_image(image: str, tag: str | None, where: str) -> str:
    """Fill the ``GIT_SHA`` placeholder with `tag`; refuse mutable references."""
    if GIT_SHA in image:
        if not tag:
            raise ModelpressError(f"{where}: image {image!r} has the {GIT_SHA} placeholder but no tag was "
                                  "given: pass --image-tag TAG or run from a git checkout")
        image = image.replace(GIT_SHA, tag)
    check_immutable(image, where)
    return image


def check_immutable(image: str, where: str) -> None:
    if not image:
        raise ModelpressError(f"{where}: no image given")
    if "@sha256:" in image:
        return
    last = image.rsplit("/", 1)[-1]  # a registry host may carry a port: host:5000/name
    if ":" not in last:
        raise ModelpressError(f"{where}: image {image!r} has no tag. Tag it immutably, e.g. "
                              f"{image}:{GIT_SHA} (replaced by `git rev-parse --short HEAD`) or @sha256:<digest>")
    if last.rsplit(":", 1)[1] == "latest":
        raise ModelpressError(f"{where}: image {image!r} is tagged 'latest', which changes under Vertex's "
                              f"cache and under running schedules. Use the git SHA: "
                              f"{image.rsplit(':', 1)[0]}:{GIT_SHA}")


def check_display_name(name: str, where: str) -> str:
    if not isinstance(name, str) or not _DISPLAY_NAME.match(name):
        raise ModelpressError(f"{where}: display name {name!r} must be 1-128 letters, digits, spaces, "
                              "'_', '.' or '-', starting with a letter or digit")
    return name


def check_cron(cron: str, where: str) -> str:
    """Vertex cron with an explicit time zone, e.g. ``TZ=Europe/Brussels 0 3 * * 1``."""
    if not isinstance(cron, str) or not _CRON_TZ.match(cron.strip()):
        raise ModelpressError(f"{where}: cron {cron!r} must name its time zone and have five fields, "
                              "e.g. 'TZ=Europe/Brussels 0 3 * * 1' (03:00 every Monday)")
    return cron.strip()


def check_accelerator(accelerator_type: str, accelerator_count: int, where: str) -> None:
    from google.cloud.aiplatform_v1.types import AcceleratorType

    if not accelerator_type:
        if accelerator_count:
            raise ModelpressError(f"{where}: accelerator_count {accelerator_count} without an accelerator_type")
        return
    known = [a.name for a in AcceleratorType if a.value]
    if accelerator_type not in known:
        raise ModelpressError(f"{where}: unknown accelerator_type {accelerator_type!r}; choose one of {known}")
    if accelerator_count < 1:
        raise ModelpressError(f"{where}: accelerator_type {accelerator_type} needs accelerator_count >= 1")
