"""The nine attention mechanisms, one file each, one registry (attentions/registry.py).

`attentions.ORDER` needs no torch; the registry's names (get, install, names, REGISTRY,
AttentionSpec) are imported on first use."""
from attentions.order import ORDER  # noqa: F401

_REGISTRY_NAMES = {"REGISTRY", "AttentionSpec", "get", "install", "names"}


def __getattr__(name):
    if name in _REGISTRY_NAMES:
        from attentions import registry
        return getattr(registry, name)
    raise AttributeError(f"module 'attentions' has no attribute {name!r}")
