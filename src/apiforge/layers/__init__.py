"""The defense layers: hosts, CORS, authentication, security headers, validation, plain HTTP."""

__all__: list[str] = []  # the modules are the surface: import from them
