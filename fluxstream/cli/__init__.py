"""The ``fluxstream`` command line: one module per command group, assembled in ``main``.

``fluxstream = "fluxstream.cli:main"`` (pyproject) and ``python -m fluxstream.cli`` both run ``main``.
"""

from fluxstream.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
