"""deploy: the Triton-layout model repository a deploy writes (and the server reads), and
``vertex``: every request to Vertex AI (Model Registry, endpoints, pipeline jobs, schedules)."""
