"""The request path: context, routing, client address, problem responses and the pipeline."""
