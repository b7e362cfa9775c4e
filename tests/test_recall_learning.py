"""The recall probe separates mechanisms on a CPU: exact attention learns a small MQAR instance
well above chance, a window too short to reach the pairs does not."""
import torch

import attentions
from harness.run.recall import make_recall_batches, model_config, recall_accuracy

VOCAB, T, PAIRS, STEPS = 64, 32, 4, 150   # 32 possible values: chance is 1/32


def _trained_accuracy(attention: str, params=None) -> tuple[float, float]:
    from transformers import GPT2LMHeadModel
    torch.manual_seed(0)
    model = GPT2LMHeadModel(model_config(T, vocab=VOCAB, n_layer=2, n_embd=64, n_head=4))
    attentions.install(model, attention, params)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for batch in make_recall_batches(T, 64, STEPS, PAIRS, seed=1, vocab=VOCAB)[0]:
        model(input_ids=batch["input_ids"], labels=batch["labels"]).loss.backward()
        opt.step()
        opt.zero_grad()
    held_out, stats = make_recall_batches(T, 256, 2, PAIRS, seed=99, vocab=VOCAB)  # other rows
    correct = counted = 0
    with torch.no_grad():
        for batch in held_out:
            c, n = recall_accuracy(model(input_ids=batch["input_ids"]).logits, batch["labels"])
            correct, counted = correct + c, counted + n
    return correct / counted, stats["chance_accuracy"]


def test_exact_attention_learns_recall_well_above_chance_and_a_short_window_does_not():
    exact, chance = _trained_accuracy("sdpa")
    window, _ = _trained_accuracy("sliding_window", {"window": 4})   # the query and 3 earlier keys
    assert exact > 5 * chance                 # measured: 0.23 against a chance of 0.031
    assert window < 2 * chance                # measured: 0.028
    assert exact > window + 0.15
