"""The request path: context, routing, client address, problem responses and the pipeline."""

__all__: list[str] = []  # the modules are the surface: import from them
