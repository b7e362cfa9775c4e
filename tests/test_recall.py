"""harness/run/recall.py: the MQAR batches (layout, labels, determinism, validation), the recall
accuracy (tests/test_recall_learning.py: that exact attention really learns it)."""
import dataclasses

import pytest
import torch

from harness.errors import UserError
from harness.run import recall

T, B, PAIRS, VOCAB = 64, 8, 6, 128


def batches(seed=0, n_batches=3, **kw):
    args = dict(seq_len=T, batch_size=B, n_batches=n_batches, n_pairs=PAIRS, seed=seed, vocab=VOCAB)
    return recall.make_recall_batches(**{**args, **kw})


def test_batches_have_the_documented_shapes_dtypes_and_stats():
    out, stats = batches()
    assert len(out) == 3
    for batch in out:
        assert set(batch) == {"input_ids", "labels", "attention_mask"}
        for tensor in batch.values():
            assert tensor.shape == (B, T) and tensor.dtype == torch.long
        assert bool((batch["attention_mask"] == 1).all())
    assert stats == {"source": "mqar (generated, Arora et al. 2023)", "n_pairs": PAIRS, "vocab": VOCAB,
                     "seed": 0, "seq_len": T, "batch_size": B, "n_batches": 3, "tokens": 3 * B * T,
                     "queries": 3 * B * PAIRS, "chance_accuracy": 1 / 64, "no_recall_accuracy": 1 / PAIRS}
    assert stats["queries"] == sum(int((b["labels"] != -100).sum()) for b in out)


def test_same_seed_same_batches_other_seed_other_batches():
    first, again, other = batches(seed=5)[0], batches(seed=5)[0], batches(seed=6)[0]
    for a, b in zip(first, again):
        for key in a:
            assert torch.equal(a[key], b[key])
    assert not torch.equal(first[0]["input_ids"], other[0]["input_ids"])
    assert not torch.equal(first[1]["input_ids"], first[0]["input_ids"])  # batches differ too


def check_row(ids: list[int], labels: list[int], n_pairs: int, vocab: int) -> list[int]:
    """Assert one row's layout; returns the gaps between each key and its query."""
    keys, values = ids[0:2 * n_pairs:2], ids[1:2 * n_pairs:2]
    assert len(set(keys)) == n_pairs and len(set(values)) == n_pairs
    assert all(1 <= k < vocab // 2 for k in keys) and all(vocab // 2 <= v < vocab for v in values)
    pairs = dict(zip(keys, values))
    assert labels[:2 * n_pairs] == [-100] * (2 * n_pairs)  # the pairs themselves are not scored
    labelled = [j for j, label in enumerate(labels) if label != -100]
    assert len(labelled) == n_pairs
    rest = ids[2 * n_pairs:]
    assert sum(t != 0 for t in rest) == n_pairs  # the query keys; filler 0 everywhere else
    gaps = []
    for j in labelled:
        assert labels[j] == pairs[ids[j - 1]]  # the value of the key just before it ...
        assert ids[j] == 0  # ... which the input does not show
        gaps.append(j - 1 - keys.index(ids[j - 1]) * 2)
    assert sorted(ids[j - 1] for j in labelled) == sorted(keys)  # every key asked once
    return gaps


def test_every_label_is_the_value_paired_with_the_key_before_it():
    out, _ = batches(n_batches=40)
    gaps = []
    for batch in out:
        for ids, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist()):
            gaps += check_row(ids, labels, PAIRS, VOCAB)
    assert min(gaps) == 2 and max(gaps) == T - 2  # from the shortest gap to the whole row


def test_a_full_row_and_an_odd_length_still_follow_the_layout():
    for seq_len, n_pairs, vocab in ((4 * 5, 5, 12), (33, 4, 64)):
        out, _ = recall.make_recall_batches(seq_len, 4, 2, n_pairs, seed=1, vocab=vocab)
        for batch in out:
            for ids, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist()):
                check_row(ids, labels, n_pairs, vocab)


def test_a_preset_sized_set_keeps_keys_distinct_and_in_range():
    out, stats = recall.make_recall_batches(1024, 64, 64, 32, seed=0)
    assert stats["tokens"] == 64 * 64 * 1024
    keys = out[-1]["input_ids"][:, 0:64:2]
    assert int(keys.max()) < recall.VOCAB // 2 and int(keys.min()) >= 1
    assert all(len(set(row)) == 32 for row in keys.tolist())


@pytest.mark.parametrize("kw, message", [
    (dict(n_pairs=17), "need seq_len >= 68"),
    (dict(n_pairs=0), "n_pairs must be a positive integer"),
    (dict(seq_len=-4), "seq_len must be a positive integer"),
    (dict(batch_size=2.0), "batch_size must be a positive integer"),
    (dict(n_batches=0), "n_batches must be a positive integer"),
    (dict(vocab=12), "too few for 6 distinct keys"),
    (dict(seed="1"), "seed must be an integer"),
    (dict(seed=-1), "seed must be an integer in"),
])
def test_bad_arguments_are_user_errors(kw, message):
    with pytest.raises(UserError, match=message):
        batches(**kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_recall_accuracy_counts_the_shifted_labelled_positions(dtype):
    (batch,), stats = batches(n_batches=1)
    ids, labels = batch["input_ids"], batch["labels"]
    perfect = torch.zeros(B, T, VOCAB, dtype=dtype)
    answer = torch.where(labels == -100, 0, labels)
    perfect[:, :-1].scatter_(2, answer[:, 1:, None], 1.0)  # logits at i predict label i + 1
    assert recall.recall_accuracy(perfect, labels) == (B * PAIRS, B * PAIRS)
    unshifted = torch.zeros(B, T, VOCAB, dtype=dtype).scatter_(2, answer[:, :, None], 1.0)
    assert recall.recall_accuracy(unshifted, labels) == (0, B * PAIRS)
    repeat_key = torch.zeros(B, T, VOCAB, dtype=dtype).scatter_(2, ids[:, :, None], 1.0)
    assert recall.recall_accuracy(repeat_key, labels) == (0, B * PAIRS)  # copying the query is wrong
    value = int(labels[0, (labels[0] != -100)][0])  # a constant guess is right where that value is due
    constant = torch.zeros(B, T, VOCAB, dtype=dtype)
    constant[..., value] = 1.0
    assert recall.recall_accuracy(constant, labels) == (int((labels == value).sum()), B * PAIRS)
    with pytest.raises(UserError, match="logits"):
        recall.recall_accuracy(perfect[0], labels)


def test_model_config_is_the_small_probe_gpt2():
    config = recall.model_config(2048, vocab=256, n_embd=64)
    assert (config.n_layer, config.n_embd, config.n_head, config.vocab_size) == (2, 64, 4, 256)
    assert config.n_positions == 2048 and recall.model_config(64).n_positions == 1024
    assert config.resid_pdrop == config.embd_pdrop == config.attn_pdrop == 0.0
    assert config._attn_implementation == "eager" and config.use_cache is False
    assert recall.model_config(64).vocab_size == recall.VOCAB == 8192
    with pytest.raises(UserError, match="multiple of n_head"):
        recall.model_config(64, n_embd=100, n_head=8)


def test_recall_vocab_reaches_the_batches_the_model_and_the_memory_plan():
    """--recall-vocab: the run's rows draw keys and values from it, its probe model has that
    vocabulary, the memory estimate counts it; too small a vocabulary for the pairs is an error."""
    import config
    from harness.run import batches as run_batches
    from harness.run import model as models
    from harness.sweep import memory_plan
    cfg = config.validate(dataclasses.replace(config.get_preset("recall"), seq_lens=[64], recall_pairs=[4],
                                              recall_vocab=64, tokens_per_batch=512, batches_per_epoch=6))
    run = dict(model="mqar", attention="sdpa", seq_len=64, batch_size=8, n_pairs=4)
    made, stats = run_batches.train_batches(cfg, None, run)
    ids = torch.cat([b["input_ids"] for b in made])
    assert stats["vocab"] == 64 and int(ids.max()) < 64 and int(ids.max()) >= 32  # values in [32, 64)
    model, _ = models.build("mqar", "sdpa", 64, recall_vocab=64)
    assert model.config.vocab_size == 64 and model.transformer.wte.weight.shape[0] == 64
    small, default = (memory_plan.estimate(dataclasses.replace(cfg, recall_vocab=v), run, False) for v in (64, 8192))
    assert small < default
    with pytest.raises(UserError, match="recall_vocab must be an integer >= 10"):
        config.validate(dataclasses.replace(cfg, recall_vocab=9))


def test_any_batch_is_made_alone_and_the_same_in_any_order():
    long, _ = batches(seed=3, n_batches=50)
    short, _ = batches(seed=3, n_batches=5)
    late_first = long[7]["input_ids"].clone()
    assert torch.equal(long[0]["labels"], short[0]["labels"])       # batch i does not depend on n
    assert torch.equal(long[4]["input_ids"], short[-1]["input_ids"])
    assert torch.equal(late_first, long[7]["input_ids"])           # read again after others: the same
    assert not torch.equal(long[7]["input_ids"], long[8]["input_ids"])
    assert [b["input_ids"].shape for b in short[1:3]] == [(B, T), (B, T)]
    with pytest.raises(IndexError):
        short[5]
