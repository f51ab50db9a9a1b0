"""Vertex AI: everything in the library that talks to Google Cloud.

Only this package (through pipelines/submit.py and the deploy-vertex step) calls Vertex.

- ``checks``: settings refused before anything is sent (immutable images, display names, crons,
  accelerators).
- ``registry``: Model Registry upload and endpoint deploy with a canary (the deploy-vertex step).
- ``batch_job``: the batch prediction job's settings and the registered model version it scores.
- ``jobs``: PipelineJobs, schedules created or updated in place, dry-run request rendering.
- ``client``: the regional GAPIC client and the lookups they share.
- ``ray_cluster``: the Ray on Vertex AI cluster (a persistent resource) and the Ray job the ray-train
  step submits there; ``ray_job`` is that job's entrypoint; ``storage``: Cloud Storage transfers.

The names are re-exported here, so ``from modelpress.deploy import vertex; vertex.deploy(...)``
works without knowing the split.
"""

from modelpress.deploy.vertex.checks import (GIT_SHA, check_accelerator, check_cron, check_display_name,
                                             check_immutable, resolve_image)
from modelpress.deploy.vertex.client import to_json
from modelpress.deploy.vertex.jobs import (SCHEDULE_UPDATE_MASK, apply_schedule, create_pipeline_job_request,
                                           create_schedule_request, list_schedules_request, pipeline_job,
                                           planned_requests, schedule_resource, submit, update_schedule_request)
from modelpress.deploy.vertex.registry import (CHAMPION_ALIAS, HEALTH_ROUTE, NEW_MODEL, OPERATION_TIMEOUT_S,
                                               PREDICT_ROUTE, SERVE_PORT, VERSION_DESCRIPTION_LIMIT, Serving,
                                               card_labels, deploy, deploy_request, incumbent, label_value, publish,
                                               traffic_split, upload_request)

__all__ = [
    "CHAMPION_ALIAS", "GIT_SHA", "HEALTH_ROUTE", "NEW_MODEL", "OPERATION_TIMEOUT_S", "PREDICT_ROUTE",
    "SCHEDULE_UPDATE_MASK", "SERVE_PORT", "Serving", "VERSION_DESCRIPTION_LIMIT", "apply_schedule", "card_labels",
    "check_accelerator", "check_cron", "check_display_name", "check_immutable", "create_pipeline_job_request",
    "create_schedule_request", "deploy", "deploy_request", "incumbent", "label_value", "list_schedules_request",
    "pipeline_job", "planned_requests", "publish", "resolve_image", "schedule_resource", "submit", "to_json",
    "traffic_split", "update_schedule_request", "upload_request",
]
