"""The ``.proto`` sources of clipper_core and the script that compiles them.

``python -m protos.generate`` writes the Python code; ``--check`` tells if the
committed code is stale.
"""
