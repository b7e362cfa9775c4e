"""for_colab.ipynb runs headless, unmodified, in a real Jupyter kernel (nbclient), on the smoke
preset: any cell error fails the test. Environment variables stand in for a user's edits:
AB_RESULTS_DIR (a temporary results folder), AB_PRESET=smoke, AB_ARGS (two attentions and a short run, to keep
it short), AB_SKIP_INSTALL=1 (the test's environment is already installed; no network).
An older, fabricated result sits in the results folder so that cell 3 has one to show and
cell 5 two to compare. Needs a working main.py; takes about a minute or two on 2 CPU cores.
"""
import sys

import pytest

nbformat = pytest.importorskip("nbformat", reason="the notebook test needs requirements-test.txt (a GPU image may lack it)")
from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402
from nbclient import NotebookClient  # noqa: E402

from conftest import ROOT
from fake_results import make_results

OLD = "20000101-000000"


def _outputs(cell) -> str:
    return "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in cell.outputs)


def test_notebook_runs_on_smoke(tmp_path, monkeypatch):
    # jupyter_client swaps a kernelspec's bare "python" for this interpreter: the kernel is our venv.
    argv0 = KernelSpecManager().get_kernel_spec("python3").argv[0]
    assert argv0 in {"python", "python3", sys.executable}, f"python3 kernel runs {argv0}, not {sys.executable}"
    results = tmp_path / "results"
    make_results(results, stamp=OLD, device="cpu", preset="smoke", models=("tiny",),
                 attentions=("baseline", "sdpa"), seq_lens=(32,), oom=())
    for k, v in {"AB_RESULTS_DIR": str(results), "AB_PRESET": "smoke", "AB_SKIP_INSTALL": "1",
                 "AB_ARGS": "--attention baseline,sdpa --seq-len 32 --steps 2 --epochs 1 --warmup 1", "MPLBACKEND": "Agg"}.items():
        monkeypatch.setenv(k, v)

    nb = nbformat.read(ROOT / "for_colab.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert len(code) == 5
    NotebookClient(nb, kernel_name="python3", timeout=540, allow_errors=False,
                   resources={"metadata": {"path": str(ROOT)}}).execute()   # raises on any cell error

    new = [f for f in results.iterdir() if (f / "manifest.json").is_file() and not f.name.startswith(OLD)]
    assert len(new) == 1, f"cell 4 should have written one result, found {new}"
    assert (new[0] / "summary.csv").is_file() and (new[0] / "report.md").is_file()
    assert "baseline" in _outputs(code[1])                                  # system info lists attentions
    assert OLD in _outputs(code[2])                                         # cell 3 showed the older result
    assert any("image/png" in o.get("data", {}) for o in code[2].outputs)   # ... with its plots inline
    assert "attention-bench: preset smoke" in _outputs(code[3])             # main.py's output streamed
    assert "train_time_s B/A" in _outputs(code[4])                          # cell 5 compared the two


def _cell1(cwd, url=""):
    """Run the notebook's first cell as a user would, in cwd, without installing anything."""
    import subprocess
    import os
    src = "".join(nbformat.read(ROOT / "for_colab.ipynb", as_version=4).cells[2].source)
    src = src.replace('REPO_URL = ""', f"REPO_URL = {url!r}", 1)
    return subprocess.run([sys.executable, "-c", src], cwd=cwd, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "AB_SKIP_INSTALL": "1", "AB_RESULTS_DIR": str(cwd / "results")})


def _fake_repo(folder, skip=()):
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("config.py", "main.py", "requirements.txt", "attentions", "metrics", "harness", "assets"):
        if name not in skip:
            (folder / name).mkdir(parents=True) if "." not in name else (folder / name).write_text("")


def test_cell_one_finds_the_code_in_an_upload_a_zip_or_says_what_is_missing(tmp_path):
    import zipfile
    empty = tmp_path / "empty"
    empty.mkdir()
    p = _cell1(empty)
    assert p.returncode != 0 and "no code found: set REPO_URL, or upload attention-bench.zip" in p.stderr
    partial = tmp_path / "partial"  # files uploaded beside the notebook, folders left out
    partial.mkdir()
    _fake_repo(partial, skip=("metrics", "assets"))
    p = _cell1(partial)
    assert p.returncode != 0 and "incomplete: missing metrics, assets" in p.stderr
    zipped = tmp_path / "zipped"  # GitHub's "Download ZIP": one top folder inside
    _fake_repo(zipped / "src" / "attention-bench-main")
    (zipped / "src" / "attention-bench-main" / "harness" / "x.py").write_text("")
    with zipfile.ZipFile(zipped / "attention-bench-main.zip", "w") as z:
        for f in (zipped / "src").rglob("*"):
            z.write(f, f.relative_to(zipped / "src"))
    p = _cell1(zipped)
    assert p.returncode == 0, p.stderr
    assert f"code: {zipped / 'attention-bench'}" in p.stdout and (zipped / "attention-bench" / "config.py").is_file()
