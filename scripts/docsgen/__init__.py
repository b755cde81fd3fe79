"""Generated parts of the documentation site (docs/): the configuration reference and the benchmark tables."""
