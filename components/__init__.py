"""KFP component definitions: typed contracts between steps, one file per component.

Each body imports `modelpress`, calls one library function and records the result.
The image is set per target by the pipeline factory (`task.set_container_image`).
"""

# Placeholder image: pipelines override it from configs/<target>.yaml at compile time.
DEFAULT_IMAGE = "modelpress-cpu:dev"
