"""The selection policies: one module each, found and imported by the registry."""
