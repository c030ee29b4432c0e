"""The package version, in a module of its own so that the server reads it
without importing the client library (``clipper_core/__init__`` imports
``connection``, and with it cloudpickle and urllib)."""

__version__ = "0.1.0"
