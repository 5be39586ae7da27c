"""The web page and JSON API over an exported model (``harness serve``).

:func:`harness.serve.app.create_app` builds the FastAPI app from a model bundle; uvicorn runs
it locally (the default), :mod:`harness.serve.ray_app` as a Ray Serve deployment. Only
:mod:`deepchest.inference` is used for the model: this package adds HTTP and the page.
"""
