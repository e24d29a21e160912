"""Hardware descriptions (YAML) for the energy estimator: schema, loader and built-in specs."""
