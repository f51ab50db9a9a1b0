"""Pipeline runs and schedules: the PipelineJob for a compiled template, its submission, the
schedule created or updated in place, and the same requests rendered for a dry run.

Resources are built with google-cloud-aiplatform's own classes (``PipelineJob`` and
``PipelineJobSchedule`` turn a compiled template into the API resource) and sent through its
GAPIC clients with an explicit request object, so a dry run prints exactly what a real run sends.
"""

from __future__ import annotations

from typing import Callable

from modelpress.core.errors import ModelpressError
from modelpress.deploy.vertex.checks import check_cron, check_display_name
from modelpress.deploy.vertex.client import client, location_parent, one_by_display_name, to_json

# The SDK's PipelineJobSchedule.update() changes the timing only; the pipeline request (template,
# images, parameters) must be replaced too, or a schedule keeps running last month's code.
SCHEDULE_UPDATE_MASK = ("cron", "max_concurrent_run_count", "create_pipeline_job_request")


def pipeline_job(template_path: str, *, display_name: str, project: str, location: str, pipeline_root: str,
                 parameter_values: dict, enable_caching: bool | None, labels: dict | None,
                 job_id: str | None = None, credentials=None):
    """The PipelineJob resource for a compiled template (built locally; nothing is sent)."""
    from google.cloud import aiplatform

    try:
        return aiplatform.PipelineJob(display_name=display_name, template_path=template_path, job_id=job_id,
                                      pipeline_root=pipeline_root, parameter_values=parameter_values,
                                      enable_caching=enable_caching, labels=labels, project=project,
                                      location=location, credentials=credentials)
    except ValueError as exc:  # the SDK's checks of labels, job ids and parameter names
        raise ModelpressError(f"cannot build the PipelineJob for {display_name!r}: {exc}") from None


def create_pipeline_job_request(job, service_account: str):
    from google.cloud.aiplatform_v1 import types

    resource = types.PipelineJob(job._gca_resource)  # a copy: the job object stays as built
    if service_account:
        resource.service_account = service_account
    return types.CreatePipelineJobRequest(parent=location_parent(job.project, job.location),
                                          pipeline_job=resource, pipeline_job_id=job.job_id)


def schedule_resource(job, *, display_name: str, cron: str, max_concurrent_run_count: int,
                      service_account: str):
    """A Schedule that runs `job`'s template; the template travels inside it, so it is immutable."""
    from google.cloud import aiplatform
    from google.cloud.aiplatform_v1 import types

    check_display_name(display_name, "schedule")
    if max_concurrent_run_count < 1:
        raise ModelpressError(f"schedule {display_name!r}: max_concurrent_run_count must be >= 1, "
                              f"got {max_concurrent_run_count}")
    sdk = aiplatform.PipelineJobSchedule(pipeline_job=job, display_name=display_name, project=job.project,
                                         location=job.location, credentials=job.credentials)
    schedule = types.Schedule(sdk._gca_resource)
    schedule.cron = check_cron(cron, f"schedule {display_name!r}")
    schedule.max_concurrent_run_count = max_concurrent_run_count
    if service_account:
        schedule.create_pipeline_job_request.pipeline_job.service_account = service_account
    return schedule


def list_schedules_request(project: str, location: str, display_name: str):
    from google.cloud.aiplatform_v1 import types

    return types.ListSchedulesRequest(parent=location_parent(project, location),
                                      filter=f'display_name="{check_display_name(display_name, "schedule")}"')


def create_schedule_request(schedule, project: str, location: str):
    from google.cloud.aiplatform_v1 import types

    return types.CreateScheduleRequest(parent=location_parent(project, location), schedule=schedule)


def update_schedule_request(schedule, name: str):
    from google.cloud.aiplatform_v1 import types
    from google.protobuf import field_mask_pb2

    updated = types.Schedule(schedule)
    updated.name = name
    return types.UpdateScheduleRequest(schedule=updated,
                                       update_mask=field_mask_pb2.FieldMask(paths=list(SCHEDULE_UPDATE_MASK)))


def submit(job, *, service_account: str, log: Callable[[str], None] = print):
    """Create the pipeline run; return the created PipelineJob resource."""
    from google.cloud.aiplatform_v1 import PipelineServiceClient

    pipelines = client(PipelineServiceClient, job.location, job.credentials)
    created = pipelines.create_pipeline_job(request=create_pipeline_job_request(job, service_account))
    log(f"submitted {created.name}: https://console.cloud.google.com/vertex-ai/locations/{job.location}/"
        f"pipelines/runs/{job.job_id}?project={job.project}")
    return created


def apply_schedule(job, *, display_name: str, cron: str, max_concurrent_run_count: int, service_account: str,
                   log: Callable[[str], None] = print) -> tuple[str, object]:
    """Create the schedule named `display_name`, or update it in place when it exists."""
    from google.cloud.aiplatform_v1 import ScheduleServiceClient

    schedule = schedule_resource(job, display_name=display_name, cron=cron,
                                 max_concurrent_run_count=max_concurrent_run_count, service_account=service_account)
    schedules = client(ScheduleServiceClient, job.location, job.credentials)
    found = one_by_display_name(list(schedules.list_schedules(
        request=list_schedules_request(job.project, job.location, display_name))), "schedule", display_name)
    if found is None:
        created = schedules.create_schedule(request=create_schedule_request(schedule, job.project, job.location))
        log(f"created schedule {created.name} ({display_name!r}, {schedule.cron})")
        return "created", created
    updated = schedules.update_schedule(request=update_schedule_request(schedule, found.name))
    log(f"updated schedule {found.name} ({display_name!r}, {schedule.cron})")
    return "updated", updated


def planned_requests(job, *, service_account: str, schedule: dict | None = None) -> list[dict]:
    """What submit() or apply_schedule() would send, as JSON-ready dicts (for --dry-run)."""
    if schedule is None:
        return [{"method": "PipelineService.CreatePipelineJob",
                 "request": to_json(create_pipeline_job_request(job, service_account))}]
    resource = schedule_resource(job, service_account=service_account, **schedule)
    create = create_schedule_request(resource, job.project, job.location)
    return [
        {"method": "ScheduleService.ListSchedules",
         "request": to_json(list_schedules_request(job.project, job.location, schedule["display_name"]))},
        {"method": "ScheduleService.CreateSchedule", "when": "no schedule has this display name",
         "request": to_json(create)},
        {"method": "ScheduleService.UpdateSchedule", "when": "one does: its name comes from ListSchedules",
         "request": to_json(update_schedule_request(resource, "<name from ListSchedules>"))},
    ]
