"""The HTTP face of the query service: a FastAPI app (``create_app``) of routes, middleware and error
mapping over the ``QueryServices`` built at start-up."""

from fluxstream.query.http.app import create_app

__all__ = ["create_app"]
