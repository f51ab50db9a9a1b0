"""modelpress: take a PyTorch model from data to a served endpoint.

The library holds every piece of real logic as plain functions over paths and objects.
It never imports KFP: components and pipelines wrap it.
"""

__version__ = "0.1.0"
