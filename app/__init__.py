"""The HTTP service alone: ``create_app()`` (``app.main``), settings, one router per resource, the request's
path (``app.pipeline``), one error taxonomy (``app.errors``), the prompt store and the jobs. The `icseg`
command line that serves it lives in ``cli/``."""
