"""One training run as a Ray job on a Ray on Vertex AI cluster (what the ray-train step submits):

    python -m modelpress.deploy.vertex.ray_job '{"dataset": "gs://...", "model": "gs://...", "result": "gs://...",
                                                 "architecture": ..., "model_args": ..., "settings": ...,
                                                 "layout": ..., "scaling": {...}}'

The driver (on the head node) plans the job and runs it with the Ray engine on the cluster it
runs in: the same DDP (or FSDP, pipeline) worker as everywhere. The cluster's nodes share no
file system, so every worker first copies the dataset artifact from Cloud Storage to its node,
rank 0 uploads the model artifact to ``model`` once written, and the driver writes rank 0's
result to ``result`` (``result.json``), which the step reads back. Local paths instead of gs://
URIs work too (one machine, or a shared file system), which is how it is tested here.
"""

from __future__ import annotations

import functools
import json
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from modelpress.core.errors import ModelpressError
from modelpress.core.fileio import local_path, write_json_atomic
from modelpress.deploy.vertex import storage
from modelpress.training import TrainSettings
from modelpress.training.distributed import Layout, plan
from modelpress.training.distributed.ray_engine import train_with_ray

NODE_CACHE = Path(tempfile.gettempdir()) / "modelpress-ray-job"
RESULT_FILE = "result.json"


def stage_dataset(job, dataset_uri: str):
    """A worker's first act: the dataset on its own node (downloaded once per node), the job pointed at it."""
    if not dataset_uri.startswith("gs://"):
        return job
    folder = NODE_CACHE / "dataset" / dataset_uri[len("gs://"):].replace("/", "_")
    if not (folder / "schema.json").exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".dataset-", dir=folder.parent))
        storage.download_prefix(dataset_uri, tmp)
        try:
            tmp.rename(folder)  # whole or not at all; another worker on this node may have won
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return replace(job, dataset_dir=str(folder))


def publish_model(model_uri: str, out_dir: str) -> None:
    """Rank 0, once the artifact is written on its node: the files up to the model's URI."""
    if model_uri.startswith("gs://"):
        storage.upload_dir(Path(out_dir), model_uri)
    elif Path(out_dir).resolve() != local_path(model_uri).resolve():
        shutil.copytree(out_dir, local_path(model_uri), dirs_exist_ok=True)


def run(args: dict, log=print) -> dict:
    settings = TrainSettings(**args["settings"])
    scaling = args.get("scaling") or {}
    layout = Layout(**{**args.get("layout", {}), "engine": "ray", "ray_address": args.get("ray_address", "auto"),
                       "nproc_per_node": int(scaling.get("num_workers", 1)),
                       "resources_per_worker": scaling.get("resources_per_worker") or None})
    if scaling.get("use_gpu") and settings.device == "auto":
        settings = replace(settings, device="cuda")
    out_dir = str(NODE_CACHE / "model") if args["model"].startswith("gs://") else str(local_path(args["model"]))
    job = plan(args["dataset"], out_dir, architecture=args["architecture"], model_args=args.get("model_args"),
               settings=settings, layout=layout)
    result = train_with_ray(job, ray_address=layout.ray_address, resources_per_worker=layout.resources_per_worker,
                            log=log, on_start=functools.partial(stage_dataset, dataset_uri=args["dataset"]),
                            on_saved=functools.partial(publish_model, args["model"]))
    if result is None:
        raise ModelpressError("the Ray job ended without rank 0's result")
    result_uri = args["result"].rstrip("/")
    with tempfile.TemporaryDirectory() as tmp:
        write_json_atomic(Path(tmp) / RESULT_FILE, result)
        if result_uri.startswith("gs://"):
            storage.upload_dir(Path(tmp), result_uri)
        else:
            local_path(result_uri).mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(tmp) / RESULT_FILE, local_path(result_uri) / RESULT_FILE)
    return result


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        run(json.loads(argv[0]))
    except ModelpressError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
