"""The recall probe can tell mechanisms apart: on a CPU, exact attention learns a small MQAR
instance far above the plateau a model reaches without recall (1 / n_pairs)."""
import time

import torch
from transformers import GPT2LMHeadModel

import attentions
from harness.run import recall

# The learning test's instance. A 2-layer GPT-2 first plateaus at no_recall_accuracy (it predicts
# one of the row's values, not the right one) and leaves it once an induction circuit forms. With
# 64-row batches that took 2300 steps (T 32, 8 pairs) or did not happen within 3000 (T 16 to 32,
# 4 to 8 pairs); at lr 3e-3 it stayed on the plateau. 128 rows of 2 pairs, width 128: held-out
# recall 0.947 to 0.996 after 450 steps over seeds 0 to 23 (width 64 stayed on it for 3 in 20).
LEARN = dict(seq_len=8, n_pairs=2, vocab=32, batch_size=128)
LEARN_STEPS, LEARN_LR, LEARN_WARMUP = 450, 1e-3, 100


def train_exact_attention(seed: int):
    """A 2 x 128 (8 heads) probe model with sdpa, trained on fresh MQAR batches: (model, seconds)."""
    torch.manual_seed(seed)
    config = recall.model_config(LEARN["seq_len"], vocab=LEARN["vocab"], n_embd=128, n_head=8)
    model = GPT2LMHeadModel(config)
    attentions.install(model, "sdpa", None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARN_LR, betas=(0.9, 0.98), weight_decay=0.0)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / LEARN_WARMUP))
    train, _ = recall.make_recall_batches(n_batches=LEARN_STEPS, seed=seed + 1, **LEARN)
    start = time.perf_counter()
    for batch in train:
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        warmup.step()
    return model.eval(), time.perf_counter() - start


def held_out_accuracy(model) -> tuple[float, dict]:
    test, stats = recall.make_recall_batches(n_batches=2, seed=10_000, **LEARN)  # unseen rows
    correct = counted = 0
    with torch.no_grad():
        for batch in test:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            c, n = recall.recall_accuracy(logits, batch["labels"])
            correct, counted = correct + c, counted + n
    return correct / counted, stats


def test_exact_attention_learns_recall_well_above_the_no_recall_plateau():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # beside another test worker on 2 cores, 2 threads each oversubscribe
    try:
        model, seconds = train_exact_attention(seed=0)
    finally:
        torch.set_num_threads(threads)
    accuracy, stats = held_out_accuracy(model)
    print(f"held-out recall {accuracy:.3f} after {LEARN_STEPS} steps in {seconds:.1f} s")
    assert stats["no_recall_accuracy"] == 0.5 and stats["chance_accuracy"] == 1 / 16
    assert accuracy > 0.8, f"recall {accuracy:.3f}: still near the 0.5 plateau?"
