"""data.py: the GPT-2 tokenizer, the Tulu format, batches, bad datasets, and the hub (Colab) path.

The hub path runs for real, with the hub faked by local files: a GPT-2 tokenizer folder
(vocab.json + merges.txt converted from assets/gpt2.tiktoken) for GPT2TokenizerFast.from_pretrained,
and a local .jsonl for datasets.load_dataset(..., streaming=True).
"""
import base64
import dataclasses
import json
import os
import sys

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"  # a hub call must never hang a test

from harness.run import data, tokenizer  # noqa: E402
from config import Config  # noqa: E402
from harness.errors import UserError  # noqa: E402

CONV = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"}]
STRINGS = ["Hello, my dog is cute", "  two  spaces\n\n\ttab and newlines\n", "It's 3.14159 — naïve café ✓ 東京",
           "def f(x):\n    return x ** 2  # <|endoftext|> stays text", "don't WON'T they'll I'd", ""]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map used by its vocab.json and merges.txt."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b], extra = chr(256 + extra), extra + 1
    return table


def bpe_parts(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """Byte-level BPE of `token` using only merges ranked below max_rank: for a vocabulary
    token, the two parts whose merge made it (the merge list is implied by the ranks)."""
    parts = [bytes([b]) for b in token]
    while True:
        pairs = [(ranks.get(parts[i] + parts[i + 1], max_rank), i) for i in range(len(parts) - 1)]
        rank, i = min(pairs, default=(max_rank, -1))
        if rank >= max_rank:
            return parts
        parts[i:i + 2] = [parts[i] + parts[i + 1]]


def write_hf_tokenizer(folder, vocab_file=tokenizer.VOCAB_FILE):
    """vocab.json + merges.txt, the Hugging Face form of GPT-2's tokenizer, from a .tiktoken file."""
    ranks = {}
    with open(vocab_file, "rb") as f:
        for line in f:
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
    char = bytes_to_unicode()
    text = {tok: "".join(char[b] for b in tok) for tok in ranks}
    vocab = {text[tok]: rank for tok, rank in ranks.items()}
    vocab[tokenizer.EOS_TEXT] = tokenizer.EOS_ID
    merges = []
    for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(tok) > 1:
            a, b = bpe_parts(ranks, tok, rank)
            merges.append(f"{text[a]} {text[b]}")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    return str(folder)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return write_hf_tokenizer(tmp_path_factory.mktemp("gpt2_tokenizer"))


@pytest.fixture(scope="module")
def tok():
    return tokenizer.get_tokenizer(offline=True)


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


def sample(n):
    with open(data.SAMPLE_FILE, encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(n), f)]


def test_bundled_tokenizer_gives_gpt2_ids(tok):
    assert tok.encode("Hello, my dog is cute") == [15496, 11, 616, 3290, 318, 13779]
    assert (tok.vocab_size, tok.eos_id, tok.source) == (50257, 50256, "bundled gpt2.tiktoken")
    assert 50256 not in tok.encode("<|endoftext|>")  # text never forges an eos
    assert all(tok.decode(tok.encode(s)) == s for s in STRINGS)


def test_format_tulu_exact_string():
    assert data.format_tulu(CONV) == ("<|system|>\nBe brief.\n<|user|>\nHi there\n<|assistant|>\nHello!"
                                      "<|endoftext|>\n<|user|>\n2+2?\n<|assistant|>\n4<|endoftext|>")
    assert data.format_tulu(CONV[:2]) == "<|system|>\nBe brief.\n<|user|>\nHi there\n"


def test_conversation_tokens_put_eos_ids_after_assistant_turns(tok):
    ids = data.tokenize_conversations(tok, [CONV])[0]
    assert ids.count(50256) == 2 and ids[-1] == 50256
    assert tok.decode(ids) == data.format_tulu(CONV)


def test_pack_gives_full_identical_rows(tok):
    cfg = Config(offline=True, seed=3)
    b1, s1 = data.make_batches(cfg, tok, 128, 4, 5)
    b2, _ = data.make_batches(cfg, tok, 128, 4, 5)
    assert len(b1) == 5 and s1["packing"] == "pack" and not s1["cycled"]
    for x, y in zip(b1, b2):
        assert x["input_ids"].shape == (4, 128) and x["input_ids"].dtype == torch.long
        assert all(torch.equal(x[k], y[k]) for k in ("input_ids", "labels", "attention_mask"))
        assert torch.equal(x["labels"], x["input_ids"]) and bool((x["attention_mask"] == 1).all())
    assert s1["tokens"] == s1["real_tokens"] == 5 * 4 * 128
    other, _ = data.make_batches(dataclasses.replace(cfg, seed=4), tok, 128, 4, 5)
    assert not torch.equal(other[0]["input_ids"], b1[0]["input_ids"])  # the seed sets the order


def test_pad_labels_ignore_exactly_the_padding(tok):
    batches, stats = data.make_batches(Config(offline=True, packing="pad"), tok, 256, 4, 3)
    for b in batches:
        mask, labels, ids = b["attention_mask"], b["labels"], b["input_ids"]
        assert torch.equal(labels == -100, mask == 0)
        assert torch.equal(labels[mask == 1], ids[mask == 1])
        assert bool((ids[mask == 0] == 50256).all())
        assert bool((mask[:, 1:] <= mask[:, :-1]).all())  # right padding: no 1 after a 0
        assert bool((mask[:, 0] == 1).all())
    assert stats["real_tokens"] == sum(int(b["attention_mask"].sum()) for b in batches) < stats["tokens"]


def test_too_little_data_is_cycled(tmp_path, tok):
    path = write_jsonl(tmp_path / "tiny.jsonl", [{"messages": CONV}, {"messages": CONV[1:3]}])
    for packing in ("pack", "pad"):
        cfg = Config(offline=True, dataset=path, packing=packing)
        batches, stats = data.make_batches(cfg, tok, 64, 2, 4)
        assert len(batches) == 4 and stats["cycled"] and stats["passes"] > 1
        assert stats["records_loaded"] == 2 and stats["data_exhausted"]
    _, stats = data.make_batches(Config(offline=True, dataset=path, packing="pad"), tok, 64, 2, 1)
    assert stats["passes"] == 1 and not stats["cycled"]  # exactly one pass is not cycling
    one_pass = sum(len(d) for d in data.tokenize_conversations(tok, [CONV, CONV[1:3]]))  # both end in eos
    _, stats = data.make_batches(Config(offline=True, dataset=path), tok, one_pass, 1, 1)  # need == all tokens
    assert stats["passes"] == 1 and stats["records_used"] == 2


def test_malformed_records_are_skipped_and_counted(tmp_path):
    good = {"dataset": "x", "id": "1", "messages": CONV}
    bad = ['{"no json', {"messages": []}, {"id": "no messages"}, {"messages": "text"}, {"messages": [3]},
           {"messages": [{"role": "robot", "content": "beep"}]}, {"messages": [{"role": "user", "content": "  "}]},
           {"messages": [{"role": "user"}]}, [1, 2]]
    path = write_jsonl(tmp_path / "mixed.jsonl", [good, *bad, good])
    convs, stats = data.load_records(Config(offline=True, dataset=path), 100)
    assert convs == [CONV, CONV] and stats["records_used"] == 2 and stats["exhausted"]
    assert stats["records_skipped"] == {"not_a_json_object": 2, "no_messages": 2, "messages_not_a_list": 1,
                                        "message_not_an_object": 1, "unknown_role": 1, "empty_content": 2}


@pytest.mark.parametrize("lines", [[], ["", "   "], ['{"messages": []}', '{"bad']])
def test_dataset_with_nothing_usable_is_a_user_error(tmp_path, tok, lines):
    path = write_jsonl(tmp_path / "empty.jsonl", lines)
    with pytest.raises(UserError, match="no usable conversations in file .*empty.jsonl"):
        data.make_batches(Config(offline=True, dataset=path), tok, 32, 1, 1)


def test_missing_dataset_is_a_user_error(tmp_path, tok):
    for offline in (True, False):
        with pytest.raises(UserError, match="dataset not found: .*nope.jsonl"):
            data.load_records(Config(offline=offline, dataset=str(tmp_path / "nope.jsonl")), 5)


def test_offline_ignores_the_hub_id_and_reads_the_bundled_sample():
    convs, stats = data.load_records(Config(offline=True), 7)
    assert len(convs) == 7 and stats["source"] == "bundled assets/tulu_sample.jsonl"
    assert convs[0] == sample(1)[0]["messages"]


def test_unreachable_hub_says_use_offline(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")

    def refuse(*args, **kwargs):
        raise OSError("network is unreachable")
    monkeypatch.setattr(tokenizer.socket, "create_connection", refuse)
    for call in (lambda: data.load_records(Config(offline=False), 5), lambda: tokenizer.get_tokenizer(False, "gpt2")):
        with pytest.raises(UserError, match="cannot reach the Hugging Face hub .*--offline"):
            call()


def test_an_empty_or_foreign_tokenizer_is_refused(tmp_path):
    folder = tmp_path / "small_tok"
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps({"a": 0, "b": 1, "ab": 2, "<|endoftext|>": 3}))
    (folder / "merges.txt").write_text("#version: 0.2\na b\n")
    with pytest.raises(UserError, match="has 4 tokens, not GPT-2's 50257"):
        tokenizer.get_tokenizer(False, str(folder))


def test_hub_tokenizer_matches_the_bundled_one(hf_dir, tok):
    hub = tokenizer.get_tokenizer(False, hf_dir)
    assert hub.source == f"local:{os.path.abspath(hf_dir)}" and hub.vocab_size == 50257
    assert all(hub.encode(s) == tok.encode(s) for s in STRINGS)
    convs = [r["messages"] for r in sample(60)]
    assert data.tokenize_conversations(hub, convs) == data.tokenize_conversations(tok, convs)


def test_format_tokens_equal_transformers_on_the_formatted_text(hf_dir, tok):
    """Independent check of the eos placement: transformers itself, "<|endoftext|>" as its special token."""
    from transformers import GPT2TokenizerFast
    reference = GPT2TokenizerFast.from_pretrained(hf_dir)
    for conv in [CONV, CONV[:2], *(r["messages"] for r in sample(10))]:
        assert data.tokenize_conversations(tok, [conv])[0] == reference(data.format_tulu(conv))["input_ids"]


def test_colab_path_with_a_faked_hub(tmp_path, hf_dir, tok):
    records = sample(40) + [{"dataset": "x", "id": "bad", "messages": [{"role": "robot", "content": "beep"}]}]
    path = write_jsonl(tmp_path / "tulu.jsonl", records)
    cfg = Config(offline=False, dataset=path, seed=1)
    convs, stats = data.load_records(cfg, 1000)
    assert stats["source"].startswith("datasets ") and stats["records_skipped"] == {"unknown_role": 1}
    assert convs == data.load_records(dataclasses.replace(cfg, offline=True), 1000)[0]
    hub = tokenizer.get_tokenizer(False, hf_dir)
    for packing in ("pack", "pad"):
        cfg = dataclasses.replace(cfg, packing=packing)
        online, s = data.make_batches(cfg, hub, 96, 2, 3)
        offline, _ = data.make_batches(dataclasses.replace(cfg, offline=True), tok, 96, 2, 3)
        assert len(online) == 3 and s["tokenizer"].startswith("local:")
        assert all(torch.equal(a[k], b[k]) for a, b in zip(online, offline) for k in a)


def test_the_data_line_says_source_synthetic_skips_and_cycling():
    line = data.describe({"source": "bundled assets/tulu_sample.jsonl", "tokenizer": "bundled gpt2.tiktoken",
                          "records_used": 40, "records_skipped": {"empty_content": 2, "unknown_role": 1},
                          "cycled": True, "passes": 3})
    assert "synthetic" in line and "2 empty_content, 1 unknown_role" in line and "cycled: 3 passes" in line
    hub = data.describe({"source": "hub allenai/tulu-v2-sft-mixture", "records_used": 9, "cycled": False})
    assert "synthetic" not in hub and "skipped: none" in hub and "not cycled" in hub


def test_the_data_line_of_the_recall_probe_has_no_question_marks():
    from harness.run.recall import make_recall_batches
    _, stats = make_recall_batches(seq_len=32, batch_size=2, n_batches=3, n_pairs=4, seed=1, vocab=64)
    line = data.describe(stats)
    assert "?" not in line and "4 key-value pairs a row, vocabulary 64, 24 queried values, seed 1" in line
    assert "no recall 0.25" in line
