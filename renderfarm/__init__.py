"""renderfarm: a render farm job manager (core library)."""

__version__ = "0.1.0"
