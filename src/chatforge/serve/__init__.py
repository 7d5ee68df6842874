"""The OpenAI-compatible HTTP server and the web UI, on one FastAPI app.

``create_app(model, settings)`` (:mod:`chatforge.serve.app`) builds the app;
``chatforge serve`` runs it with uvicorn.
"""
