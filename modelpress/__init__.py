"""modelpress: take a PyTorch model from data to a served endpoint.

The library holds every piece of real logic as plain functions over paths and objects. It
never imports KFP: components and pipelines wrap it. Its packages, lowest first; each imports
only the ones before it (tests/test_layers.py walks the imports and fails otherwise)::

    core/         errors, atomic file I/O, CPU probing, step timing, result types (model card, variant)
    data/         sources (digits, diabetes, CSV, NPZ, image folders; local or gs://), task, preprocessing,
                  fingerprints, the dataset artifact
    models/       built-ins, model sources (torchvision, timm, user callables), weights in, input
                  normalisation, the torch model artifact, FLOPs
    evaluation/   scores from outputs (accuracy, or RMSE/MAE/R²; numpy; torch and ONNX alike)
    training/     the training loop and step (scratch, fine-tune, as-is); distributed/ (layout, launcher, stages, DDP and pipeline workers)
    export/       the ONNX artifact and sessions (torch-free), torch-to-ONNX export and verification,
                  importing a user's ONNX file
    compression/  pruning, distillation, post-training quantisation, the recipe
    deploy/       the Triton-layout model repository; vertex/ (every Vertex AI request)
    selection/    benchmarking and comparison, selection and blessing, the report, retraining
    serving/      `modelpress serve`: transport-free data plane, rest/ (KServe v2, Vertex routes)
    loadtest/     `modelpress loadtest`: the load generator (a client)
"""

__version__ = "0.1.0"
