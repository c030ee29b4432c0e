"""Planning: pure decisions over the registered apps and models (control layer).

The data plane carries out what these decide and never imports them; the
composition root (``server.py``) hands the rules to it.
"""
