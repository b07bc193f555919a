"""The HTTP server: ``parsona serve`` (OpenAI-compatible API over the Host, the Store and training).

Nothing is imported here, so ``parsona.serve.cli`` registers the ``serve`` command without loading
FastAPI or torch; ``parsona.serve.app.create_app`` builds the ASGI app.
"""
