"""The nine mechanisms' names in the order every table and plot uses; imports nothing, so a
report can order its rows without importing torch."""

ORDER = ["baseline", "sdpa", "flash", "flex", "flex_sparse", "sliding_window", "linear", "lsh", "gqa"]
