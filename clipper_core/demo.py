print("clipper_core: the server is not built yet")
