"""Stage logic: source adapters, sampling, generation, rating, assembly, backends."""
