"""The quality axis: a held-out split never trained on, evaluation (loss, perplexity, accuracy,
loss by position), the learning-rate schedule, seeds and token budgets, eval.csv and summary.csv."""
import dataclasses
import math

import pandas as pd
import pytest
import torch

import config
from harness import store
from harness.errors import UserError
from harness.run import data, model as models
from harness.run.batches import data_key, eval_count, run_data
from harness.run.evaluate import bucket_columns, evaluate, lr_factor, token_losses
from harness.run.tokenizer import get_tokenizer
from harness.sweep.plan import plan, run_tags, select_shard
from harness.sweep.runner import run_sweep
from inprocess import InProcess


def _smoke(**kw):
    return config.validate(dataclasses.replace(config.get_preset("smoke"), **kw))


def _records():
    return list(data._read_jsonl(data.SAMPLE_FILE))


def test_the_held_out_split_is_fixed_by_the_seed_and_about_a_tenth():
    convs = [r["messages"] for r in _records()]
    flags = [data.held_out(m, 0) for m in convs]
    assert flags == [data.held_out(m, 0) for m in convs]           # deterministic
    assert 0.05 < sum(flags) / len(flags) < 0.15                    # EVAL_PERCENT = 10
    assert flags != [data.held_out(m, 1) for m in convs]            # another seed, another split


def test_training_never_sees_a_held_out_conversation():
    cfg, tok = _smoke(), get_tokenizer(True)
    n_eval = sum(data.held_out(r["messages"], 0) for r in _records())
    _, ev = data.make_batches(cfg, tok, 64, 4, 400, split="eval")    # asks for more than there is
    _, tr = data.make_batches(cfg, tok, 64, 4, 2000, split="train")
    assert ev["records_loaded"] == n_eval and ev["split"] == "eval"
    assert tr["records_loaded"] == len(_records()) - n_eval        # all the others, none held out
    with pytest.raises(UserError, match="split"):
        data.make_batches(cfg, tok, 64, 4, 1, split="test")


def test_eval_batches_have_the_runs_shape():
    cfg = _smoke(eval_tokens=1000)
    run = plan(cfg)[0]
    made = run_data(cfg, get_tokenizer(True), run)
    assert len(made["eval"]) == eval_count(cfg, run) == math.ceil(1000 / (128 * 2))
    assert made["eval"][0]["input_ids"].shape == made["batches"][0]["input_ids"].shape
    none = _smoke(eval_tokens=0)
    assert eval_count(none, run) == 0 and not run_data(none, get_tokenizer(True), run)["eval"]


def _tiny():
    model, _ = models.build("tiny", "sdpa", 64)
    return model.train()


def test_evaluate_is_the_models_own_loss_and_buckets_average_to_it():
    torch.manual_seed(0)
    ids = torch.randint(0, 50257, (3, 64))
    batch = {"input_ids": ids, "labels": ids.clone()}
    model = _tiny()
    out = evaluate(model, [batch, batch], torch.float32, torch.device("cpu"))
    with torch.no_grad():
        ref = model(input_ids=ids, labels=ids).loss.item()
    assert out["eval_loss"] == pytest.approx(ref, rel=1e-5)
    assert out["eval_ppl"] == pytest.approx(math.exp(ref), rel=1e-5)
    assert out["eval_tokens"] == 2 * 3 * 63
    sizes = [8, 8, 16, 31]   # predicted positions 1..8, 9..16, 17..32, 33..63 at T = 64
    mean = sum(out[c] * n for c, n in zip(bucket_columns(), sizes)) / sum(sizes)
    assert mean == pytest.approx(out["eval_loss"], rel=1e-6)


def test_token_losses_count_only_labelled_positions_and_top1_hits():
    labels = torch.tensor([[-100, 5, -100, 7]])
    logits = torch.full((1, 4, 10), -10.0)
    logits[0, 0, 5] = 10.0    # predicts label[1] = 5: a hit
    logits[0, 2, 3] = 10.0    # predicts 3 where label[3] = 7: a miss
    loss, correct = token_losses(logits, labels)
    assert correct.tolist() == [[True, False, False]]
    assert loss[0, 1] == 0 and loss[0, 0] < 1e-3 and loss[0, 2] > 10


def test_lr_schedule_warms_up_linearly_then_falls_by_cosine_to_a_tenth():
    f = [lr_factor(s, 100, "cosine", 0.1) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[10] == pytest.approx(1.0) and f[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(f[9:], f[10:]))              # never rises after the warm-up
    assert f[55] == pytest.approx(0.55, abs=0.02)                    # half-way: the cosine's middle
    assert {lr_factor(s, 100, "constant", 0.1) for s in range(100)} == {1.0}


def test_seeds_and_budgets_shape_the_plan():
    cfg = _smoke(seeds=[0, 1, 2], attentions=["sdpa", "linear"], tokens_per_batch=256, token_budget=1000, epochs=1)
    runs = plan(cfg)
    assert [(r["seed"], r["attention"]) for r in runs[:4]] == [(0, "sdpa"), (1, "sdpa"), (2, "sdpa"), (0, "linear")]
    assert {r["seed"] for r in select_shard(runs, (2, 3))} == {1}     # shard k of S seeds: seed k-1 of all
    assert len(runs) == 6 and all(r["run_id"].endswith(f"_s{r['seed']}_r0") for r in runs)
    assert cfg.n_batches == 4 and cfg.steps == 4                     # ceil(1000 / 256), one epoch
    assert len({data_key(r) for r in runs}) == 1                     # seeds share their batches
    assert plan(_smoke())[0]["run_id"] == "000_tiny_baseline_T128_r0"     # one seed: the ids as they were


@pytest.mark.parametrize("kw, match", [
    (dict(token_budget=1000, epochs=1), "tokens_per_batch"),
    (dict(token_budget=1000, tokens_per_batch=256, epochs=2), "epochs = 1"),
    (dict(seeds=[1, 1]), "distinct"),
    (dict(lr_schedule="linear"), "lr_schedule"),
    (dict(lr_warmup=1.5), "lr_warmup"),
    (dict(eval_every=-1), "eval_every"),
    (dict(lr="fast"), "lr"),
    (dict(task="recall"), "mqar"),
    (dict(task="recall", models=["mqar"], recall_pairs=[64]), "recall_pairs"),
])
def test_bad_quality_settings_are_named_before_anything_runs(kw, match):
    with pytest.raises(UserError, match=match):
        _smoke(**kw)


def test_lr_auto_follows_the_model_size():
    cfg = _smoke(lr="auto")
    assert cfg.lr_for("gpt2") == 6e-4 and cfg.lr_for("gpt2-large") == 2.5e-4 and _smoke().lr_for("gpt2") == 3e-4


def test_a_sweep_with_seeds_writes_its_evaluations(tmp_path):
    cfg = _smoke(attentions=["sdpa"], seeds=[0, 1], seq_lens=[32], tokens_per_batch=64, token_budget=192,
                 epochs=1, warmup_steps=1, eval_every=1, eval_tokens=128, lr_schedule="cosine", lr_warmup=0.3,
                 out=str(tmp_path))
    folder = run_sweep(cfg, launcher=InProcess())
    ev = store.read_csv(folder / "eval.csv")
    summary = store.read_csv(folder / "summary.csv")
    assert len(ev) == 2 * 4                                            # steps 0, 1, 2, 3 of each seed
    first = ev[ev["seed"] == 0]
    assert first["step"].tolist() == [0, 1, 2, 3] and first["tokens_seen"].tolist() == [0, 64, 128, 192]
    assert first["train_s_cum"].is_monotonic_increasing and first["train_s_cum"].iloc[0] == 0
    assert first["eval_tokens"].iloc[0] == 4 * 31                      # 128 tokens: 2 batches of 2 x 32
    assert summary["seed"].tolist() == [0, 1]
    last = ev.groupby("run_id").tail(1).set_index("run_id")["eval_loss"]
    assert summary.set_index("run_id")["eval_loss"].to_dict() == pytest.approx(last.to_dict())
    assert (summary["eval_loss_start"] > summary["eval_loss"]).all()   # training helped
    assert summary["train_tokens"].tolist() == [192, 192]
    assert not pd.Series(ev["eval_loss"]).isna().any()
    assert ev["energy_j_cum"].isna().all()                             # no energy counter on a CPU: never 0 J


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """GPT-2's hub id served from a local folder: a tiny trained-looking checkpoint saved with
    save_pretrained, loaded through the same from_pretrained call the Colab path makes."""
    from transformers import GPT2LMHeadModel
    torch.manual_seed(7)
    saved = tmp_path / "hub" / "gpt2"
    GPT2LMHeadModel(models.gpt2_config("tiny", 64)).save_pretrained(saved)
    asked, real = [], GPT2LMHeadModel.from_pretrained.__func__

    def from_pretrained(cls, name, *args, **kw):
        asked.append(name)
        return real(cls, str(tmp_path / "hub" / name), *args, **kw)
    monkeypatch.setattr(GPT2LMHeadModel, "from_pretrained", classmethod(from_pretrained))
    return saved, asked


def test_pretrained_swap_is_evaluated_before_any_training(fake_hub):
    from transformers import GPT2LMHeadModel
    from harness.run import train
    saved, asked = fake_hub
    cfg = dataclasses.replace(config.get_preset("smoke"), init="pretrained", seq_lens=[64], batches_per_epoch=2,
                              epochs=1, eval_every=1, eval_tokens=256)
    run = dict(plan(cfg)[0], model="gpt2", seq_len=64)
    made = run_data(cfg, get_tokenizer(True), run)
    start = {}
    for attention in ("baseline", "sdpa", "sliding_window"):
        res = train.run(cfg, dict(run, attention=attention, data=made), log=lambda *a, **k: None)
        start[attention] = res["info"]["eval_loss_start"]
    assert asked == ["gpt2"] * 3                                        # the hub id, as on Colab
    weights = GPT2LMHeadModel.from_pretrained("gpt2")
    ref = evaluate(weights.train(), [{k: v for k, v in b.items() if k != "attention_mask"} for b in made["eval"]],
                   torch.float32, torch.device("cpu"))["eval_loss"]
    assert start["baseline"] == pytest.approx(ref, rel=1e-5)            # the checkpoint itself, untrained
    assert start["sdpa"] == pytest.approx(ref, rel=1e-4)                # exact attention: no damage
    assert abs(start["sliding_window"] - ref) > 1e-4                    # a window of 16 at T = 64 changes it


def test_the_readme_lists_every_column_the_catalog_defines():
    from conftest import ROOT
    from metrics.catalog import RUN_METRICS, markdown_table
    readme = (ROOT / "README.md").read_text()
    assert markdown_table() in readme and markdown_table(RUN_METRICS) in readme


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: the compiled no-grad graph on cuda")
def test_evaluate_through_the_compiled_model_on_cuda_matches_eager():
    device = torch.device("cuda")
    torch.manual_seed(0)
    ids = torch.randint(0, 50257, (4, 128), device=device)
    batch = {"input_ids": ids, "labels": ids.clone()}
    model = _tiny().to(device)
    eager = evaluate(model, [batch], torch.bfloat16, device)
    compiled = evaluate(torch.compile(model), [batch], torch.bfloat16, device)
    assert compiled["eval_loss"] == pytest.approx(eager["eval_loss"], rel=2e-2)
    assert compiled["eval_tokens"] == eager["eval_tokens"] == 4 * 127


def test_a_runs_progress_line_names_its_seed_and_pair_count():
    cfg = dataclasses.replace(config.PRESETS["recall"], seeds=[0, 1], recall_pairs=[8])
    runs = plan(cfg)
    assert [run_tags(r) for r in runs[:2]] == [" pairs=8 seed=0 repeat=0", " pairs=8 seed=1 repeat=0"]
    assert run_tags(plan(config.PRESETS["smoke"])[0]) == " seed=0 repeat=0"


def test_the_recall_preset_trains_on_fresh_rows_at_every_step():
    # Over 6 epochs of 100 batches the probe memorised its 12,800 rows (CPU, T 64, 4 pairs, sdpa:
    # training loss 0.47 nats at the last step, held-out 6.28) instead of learning recall.
    from harness.run.batches import train_batches
    cfg = config.PRESETS["recall"]
    small = plan(cfg)[0] | {"seq_len": 16, "batch_size": 4, "n_pairs": 2}   # the preset's step count, tiny rows
    train, _ = train_batches(dataclasses.replace(cfg, recall_vocab=8192), None, small)  # rows this short rarely repeat
    rows = {tuple(r.tolist()) for b in train for r in b["input_ids"]}
    assert cfg.epochs == 1 and len(train) == cfg.steps == 3000 and len(rows) == 3000 * 4


def test_a_recall_sweep_stores_no_rows_and_trains_on_the_generated_ones(tmp_path):
    from harness.run import recall
    cfg = config.validate(dataclasses.replace(
        config.PRESETS["recall"], attentions=["sdpa"], seq_lens=[16], recall_pairs=[2], recall_vocab=16, seeds=None,
        tokens_per_batch=64, batches_per_epoch=12, warmup_steps=1, eval_every=6, eval_tokens=64,
        device="cpu", out=str(tmp_path)))
    swept, sizes = [], []
    original = recall.RecallBatches.__getitem__

    class Watching(InProcess):
        def result(self, sweep, run):
            sizes.extend(p.stat().st_size for p in (sweep.folder / ".runs").glob("data_*.pt"))
            return super().result(sweep, run)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(recall.RecallBatches, "__getitem__", lambda self, i: swept.append(i) or original(self, i))
        folder = run_sweep(cfg, launcher=Watching())
    assert len(sizes) == 1 and sizes[0] < 8192                 # the recipe, not 12 x 3 tensors of 4 x 16
    summary = store.read_csv(folder / "summary.csv")
    assert summary["status"].tolist() == ["ok"] and 0 <= summary["recall_accuracy"].iloc[0] <= 1
    assert store.read_csv(folder / "batches.csv")["tokens"].tolist() == [64] * 12
    assert set(range(12)) <= set(swept)                         # every training batch was made when read


def test_a_report_over_seeds_and_lengths_prints_no_pandas_warning(tmp_path):
    # A summary read back from its CSV is a block per column; the payoff's next new column made
    # pandas print "DataFrame is highly fragmented" on the user's terminal.
    import warnings
    from harness.report.markdown import write_report
    cfg = config.validate(dataclasses.replace(
        config.PRESETS["recall"], attentions=["sdpa"], seq_lens=[16, 32], recall_pairs=[2], recall_vocab=16,
        batch_size=4, batches_per_epoch=8, warmup_steps=1, eval_every=4, eval_tokens=64, seeds=[0, 1],
        device="cpu", out=str(tmp_path)))
    folder = run_sweep(cfg, launcher=InProcess())
    with warnings.catch_warnings():
        warnings.simplefilter("error", pd.errors.PerformanceWarning)
        assert write_report(folder).exists()
