"""Per-batch measurements: the catalog of columns, the samplers, the FLOP count."""
