"""modelpress: take a PyTorch model from data to a served endpoint.

The library holds every piece of real logic as plain functions over paths and objects. It
never imports KFP: components and pipelines wrap it. Its packages, lowest first; each imports
only the ones before it (tests/test_layers.py walks the imports and fails otherwise)::

    core/         errors, atomic file I/O, CPU probing, step timing, result types (model card, variant)
    data/         sources (digits, CSV, NPZ, image folders; local or gs://), fingerprints, the dataset artifact
    models/       architectures, input normalisation, the torch model artifact, FLOPs
    evaluation/   scores from logits (numpy; torch and ONNX alike), a torch model's logits
    training/     the training loop; distributed/ (layout, launcher, stages, DDP and pipeline workers)
    export/       the ONNX artifact and sessions (torch-free), torch-to-ONNX export and verification
    compression/  pruning, distillation, post-training quantisation
    deploy/       the Triton-layout model repository; vertex/ (every Vertex AI request)
    selection/    benchmarking and comparison, selection and blessing, the report, retraining
    serving/      `modelpress serve`: transport-free data plane, rest/ (KServe v2, Vertex routes)
    loadtest/     `modelpress loadtest`: the load generator (a client)
"""

__version__ = "0.1.0"
