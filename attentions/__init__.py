"""The nine attention mechanisms, one file each, one registry (attentions/registry.py)."""
from attentions.registry import ORDER, REGISTRY, AttentionSpec, get, install, names  # noqa: F401
