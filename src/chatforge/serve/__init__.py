"""The OpenAI-compatible HTTP server and the web UI, on one FastAPI app.

``create_app(model, settings)`` builds the app; ``chatforge serve`` runs it with uvicorn.
"""

from chatforge.serve.settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]


def create_app(*args, **kwargs):  # noqa: ANN002, ANN003 - thin lazy re-export
    from chatforge.serve.app import create_app as _create_app

    return _create_app(*args, **kwargs)
