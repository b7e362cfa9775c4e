"""GPT-2's tokenizer, bundled (offline) or from the hub, and the switches that keep a run offline.

Offline: tiktoken over assets/gpt2.tiktoken (GPT-2's byte-level BPE, 50,257 ids; the file is
tiktoken's r50k_base, sha256-checked). Online: transformers' GPT2TokenizerFast (hub or a local
folder). Both treat "<|endoftext|>" typed in a message as plain text; only the chat format places
eos ids. An offline GPT2TokenizerFast.from_pretrained can return an EMPTY tokenizer without an
error: hf_tokenizer refuses one.
"""
from __future__ import annotations

import base64
import hashlib
import os
import socket
import sys
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urlparse

from harness.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ASSETS = os.path.join(ROOT, "assets")
VOCAB_FILE = os.path.join(ASSETS, "gpt2.tiktoken")
VOCAB_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"  # tiktoken's r50k_base
EOS_TEXT, EOS_ID, VOCAB_SIZE = "<|endoftext|>", 50256, 50257
# GPT-2's pre-tokenizer regex, in tiktoken's equivalent but faster spelling (tiktoken_ext/openai_public.py).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
# Every GPT-2 size shares one tokenizer; fetch it once, from the smallest repo.
SAME_TOKENIZER = {"gpt2-medium": "gpt2", "gpt2-large": "gpt2", "gpt2-xl": "gpt2", "tiny": "gpt2"}


@dataclass(frozen=True)
class Tokenizer:
    """The interface the harness sees, whichever backend is behind it."""
    encode: Callable = field(repr=False)        # str -> list[int]
    encode_batch: Callable = field(repr=False)  # list[str] -> list[list[int]], batched (fast)
    decode: Callable = field(repr=False)        # list[int] -> str
    source: str = ""                            # "bundled gpt2.tiktoken", "hub:gpt2" or "local:<folder>"
    eos_id: int = EOS_ID
    vocab_size: int = VOCAB_SIZE


_TOKENIZERS: dict = {}  # loaded once per process: the vocabulary read and checks cost ~0.2 s


def get_tokenizer(offline: bool, name: str = "gpt2") -> Tokenizer:
    """GPT-2's tokenizer: bundled (offline) or transformers' (online, or from a local folder `name`)."""
    if os.path.isdir(name):  # a local tokenizer folder needs no hub, offline or not
        key = os.path.abspath(name)
    else:
        key = "bundled" if offline else SAME_TOKENIZER.get(name, name)
    if key not in _TOKENIZERS:
        if offline:
            set_offline_env()
        _TOKENIZERS[key] = bundled_tokenizer() if key == "bundled" else hf_tokenizer(key)
    return _TOKENIZERS[key]


def bundled_tokenizer() -> Tokenizer:
    try:
        import tiktoken
    except ImportError as e:
        raise UserError("the offline tokenizer needs tiktoken: pip install tiktoken") from e
    try:
        with open(VOCAB_FILE, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise UserError(f"cannot read the bundled GPT-2 vocabulary {VOCAB_FILE}: {e}") from e
    if hashlib.sha256(raw).hexdigest() != VOCAB_SHA256:
        raise UserError(f"{VOCAB_FILE} is damaged (sha256 differs from GPT-2's); restore it from git")
    ranks = {base64.b64decode(tok): int(rank) for tok, rank in (line.split() for line in raw.splitlines() if line)}
    enc = tiktoken.Encoding(name="gpt2_bundled", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                            special_tokens={EOS_TEXT: EOS_ID}, explicit_n_vocab=VOCAB_SIZE)
    return Tokenizer(enc.encode_ordinary, enc.encode_ordinary_batch, enc.decode, "bundled gpt2.tiktoken")


def hf_tokenizer(name: str) -> Tokenizer:
    local = os.path.isdir(name)
    if not local:
        check_hub(f"the tokenizer '{name}'")
    try:
        from transformers import GPT2TokenizerFast
    except ImportError as e:
        raise UserError("the hub tokenizer needs transformers: pip install transformers") from e
    try:
        tok = GPT2TokenizerFast.from_pretrained(name)
    except Exception as e:  # hub and file errors come in many types; each means "could not load"
        raise UserError(f"cannot load the tokenizer '{name}': {type(e).__name__}: {e}") from e
    # Offline, from_pretrained can return an EMPTY tokenizer without an error: never accept one.
    if len(tok) != VOCAB_SIZE or tok.convert_tokens_to_ids(EOS_TEXT) != EOS_ID:
        raise UserError(f"tokenizer '{name}' has {len(tok)} tokens, not GPT-2's {VOCAB_SIZE} with "
                        f"{EOS_TEXT} = {EOS_ID} (empty means not cached); run with --offline to use the bundled one")
    backend = tok.backend_tokenizer
    backend.encode_special_tokens = True  # "<|endoftext|>" in text stays text, as in the bundled tokenizer

    def encode_batch(texts):
        return [e.ids for e in backend.encode_batch_fast(list(texts), add_special_tokens=False)]

    return Tokenizer(lambda text: encode_batch([text])[0], encode_batch,
                     lambda ids: backend.decode(ids, skip_special_tokens=False),
                     f"local:{name}" if local else f"hub:{name}")


def set_offline_env():
    """Offline means no hub call from any library, including ones imported later or already."""
    os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
    # Both read the variable once at import; a module already imported (model.py imports transformers) is told directly.
    if "huggingface_hub.constants" in sys.modules:
        sys.modules["huggingface_hub.constants"].HF_HUB_OFFLINE = True
    if "datasets.config" in sys.modules:
        sys.modules["datasets.config"].HF_HUB_OFFLINE = sys.modules["datasets.config"].HF_DATASETS_OFFLINE = True


def check_hub(what: str):
    """Fail in 5 s with a clear message, instead of a hub call that hangs for minutes."""
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        return  # the hub library answers from its cache at once; an empty answer is caught by the caller
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname, url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as e:
        raise UserError(f"cannot reach the Hugging Face hub ({host}:{port}: {e}) to load {what}; "
                        "run with --offline to use the bundled sample") from e
