"""serving.rest: the HTTP transport (Starlette under uvicorn) over the data plane: the KServe v2
routes as Triton serves them (``v2``), Vertex AI's health and predict routes, added only in
Vertex mode (``vertex``), the body limits and JSON responses they share (``messages``), and the app
that assembles them with the one table mapping errors to HTTP answers (``app``)."""
