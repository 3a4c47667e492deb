"""dlmscale.analysis: crossover detection, run collection, token-matching, tables, plots, R* fit.

Run directories are written here as training writes them (config.json, metrics.jsonl,
results.json, a checkpoint's data state); no model is trained.
"""
import csv
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from dlmscale.analysis import analyze, collect, detect_crossover, effective_data
from dlmscale.analysis import fit_data_potential, potential_ratio
from dlmscale.analysis.crossover import Point
from dlmscale.errors import DlmscaleError

SEQ, BATCH = 128, 32
TOKENS_PER_STEP = SEQ * BATCH
STEPS = 1024  # T = 4,194,304 tokens
EVAL_EVERY = 128  # eight evaluation points
SMALL_U, LARGE_U = 131_072, 2_097_152  # 32 and 2 epochs
SMALL_FP, LARGE_FP = "a" * 64, "b" * 64
SE_VAL, SE_ACC = 0.02, 0.01

# Curves of the small budget (32 epochs): AR overfits, the DLM keeps improving.
AR_SMALL = [3.0, 2.6, 2.5, 2.55, 2.7, 2.9, 3.1, 3.3]
DLM_SMALL = [3.6, 3.1, 2.8, 2.62, 2.52, 2.45, 2.40, 2.37]  # ahead by > 2 se from point 4
AR_SMALL_ACC = [0.26, 0.30, 0.33, 0.34, 0.34, 0.33, 0.32, 0.31]
DLM_SMALL_ACC = [0.25, 0.27, 0.30, 0.33, 0.35, 0.37, 0.39, 0.40]  # > 2 se ahead from point 5
# Large budget (2 epochs): AR stays ahead.
AR_LARGE = [3.0, 2.6, 2.4, 2.3, 2.2, 2.15, 2.1, 2.05]
DLM_LARGE = [3.6, 3.1, 2.9, 2.8, 2.7, 2.6, 2.55, 2.5]
AR_LARGE_ACC = [0.26, 0.30, 0.33, 0.36, 0.38, 0.40, 0.41, 0.42]
DLM_LARGE_ACC = [0.25, 0.27, 0.30, 0.32, 0.34, 0.35, 0.36, 0.37]


def _config(objective, unique, total, rate=None, d_model=64):
  args = {"ar": {}, "mdm": {"weighting": "inv_t"}, "ar_input_mask": {"rate": 0.3},
          "ar_dropout": {"rate": 0.1, "sites": ["attention", "residual", "mlp"]}}
  if rate is not None:
    args[objective]["rate"] = rate
  return {"objectives": [objective], "objective_args": args, "seed": 0,
          "model": {"d_model": d_model, "num_layers": 2, "num_heads": 4, "d_ff": 192,
                    "num_experts": 0, "experts_per_token": 2, "moe_d_ff": 0},
          "data": {"unique_tokens": unique, "total_tokens": total, "seq_len": SEQ,
                   "sources": "python_stdlib", "tokenizer": "byte", "seed": 0, "split_seed": 0,
                   "val_fraction": 0.02, "workers": 1, "loader_workers": 0},
          "train": {"global_batch": BATCH, "log_every": 50, "lr": 0.003},
          "eval": {"every": EVAL_EVERY, "tasks": ["hellaswag"]}}


def _task(acc, nll=None, delta=None):
  out = {"acc": acc, "acc_stderr": SE_ACC, "acc_norm": acc + 0.01, "acc_norm_stderr": SE_ACC,
         "num_examples": 500, "num_fewshot": 0}
  if nll is not None:
    out.update(nll_correct=nll, nll_correct_stderr=0.05, delta_nll_mean=delta,
               delta_nll_mean_stderr=0.01)
  return out


def _likelihood(objective, i):
  """NLL(correct) and delta-NLL at evaluation i: both rise, faster NLL for AR, delta for DLM."""
  dlm = objective == "mdm"
  return 2.0 + (0.05 if dlm else 0.15) * i, 0.1 + (0.05 if dlm else 0.02) * i


def write_run(root, name, objective, unique, vals, *, accs=None, total=STEPS * TOKENS_PER_STEP,
              finished=True, fingerprint=SMALL_FP, rate=None, data_fps=None, d_model=64,
              eval_every=EVAL_EVERY, stderr=SE_VAL):
  """A run workdir root/name with one objective, evaluated at eval_every, eval_every*2, ...:
  vals[i] (and accs[i]) at each; unfinished runs stop after len(vals) evaluations."""
  workdir = os.path.join(root, name)
  odir = os.path.join(workdir, objective)
  os.makedirs(odir)
  with open(os.path.join(odir, "config.json"), "w") as f:
    json.dump(_config(objective, unique, total, rate, d_model), f)
  records, result = [], None
  for i, val in enumerate(vals):
    step = (i + 1) * eval_every
    tokens = step * TOKENS_PER_STEP
    records.append({"step": step, "train/loss": val - 0.3, "train/tokens_seen": float(tokens),
                    "train/epoch": step * BATCH / (unique // SEQ)})
    ev = {"step": step, "eval/val_mean": val, "eval/val_stderr": stderr}
    if accs is not None:
      for k, v in _task(accs[i], *_likelihood(objective, i)).items():
        ev[f"eval/hellaswag/{k}"] = v
    records.append(ev)
  with open(os.path.join(odir, "metrics.jsonl"), "w") as f:
    f.write("".join(json.dumps(r) + "\n" for r in records))
  if finished:
    step = len(vals) * eval_every
    result = {"objective": objective, "steps": step, "tokens_seen": step * TOKENS_PER_STEP,
              "epochs": step * BATCH / (unique // SEQ), "stream_fingerprint": fingerprint,
              "data": {"prepared_dir": "/cache/prepared/x", "tokenizer_fingerprint": "t1",
                       "train_split_fingerprint": "s1", "val_split_fingerprint": "v1",
                       **(data_fps or {})},
              "val_kind": "elbo" if objective == "mdm" else "nll", "val_mean": vals[-1],
              "val_stderr": stderr, "val_sequences": 256, "wall_s": 10.0}
    if accs is not None:
      result["tasks"] = {"hellaswag": {**_task(accs[-1], *_likelihood(objective, len(vals) - 1)),
                                       "examples": [{"gold": 0}]}}
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump([result], f)
  else:  # what Orbax keeps of the data-iterator state: a small JSON file
    step = len(vals) * eval_every
    data_dir = os.path.join(odir, "checkpoints", str(step), "data")
    os.makedirs(data_dir)
    with open(os.path.join(data_dir, "metadata"), "w") as f:
      json.dump({"next_step": step, "stream_fingerprint": fingerprint}, f)
  return workdir


def write_sweep(root):
  """A sweep directory: AR and DLM at two budgets, AR noise variants at the small one."""
  write_run(root, "unique-small_objective-ar", "ar", SMALL_U, AR_SMALL, accs=AR_SMALL_ACC)
  write_run(root, "unique-small_objective-mdm", "mdm", SMALL_U, DLM_SMALL, accs=DLM_SMALL_ACC)
  write_run(root, "unique-large_objective-ar", "ar", LARGE_U, AR_LARGE, accs=AR_LARGE_ACC,
            fingerprint=LARGE_FP)
  write_run(root, "unique-large_objective-mdm", "mdm", LARGE_U, DLM_LARGE, accs=DLM_LARGE_ACC,
            fingerprint=LARGE_FP)
  for objective, rate, offset in (("ar_input_mask", 0.1, -0.05), ("ar_input_mask", 0.5, -0.15),
                                  ("ar_dropout", 0.3, -0.1)):
    write_run(root, f"objective-{objective}_rate-{rate}", objective, SMALL_U,
              [v + offset * i / 7 for i, v in enumerate(AR_SMALL)],
              accs=[a - offset * i / 14 for i, a in enumerate(AR_SMALL_ACC)], rate=rate)
  with open(os.path.join(root, "sweep.json"), "w") as f:
    json.dump({"study": "crossover", "scale": "cpu", "runs": []}, f)
  return root


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
  return write_sweep(str(tmp_path_factory.mktemp("sweep")))


@pytest.fixture(scope="module")
def analysis(sweep, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("analysis"))
  return out, analyze([sweep], out, plots=False)


def _curve(values, se, every=1):
  return [Point(every * (i + 1), v, se, float(i + 1)) for i, v in enumerate(values)]


# ---- crossover detection -------------------------------------------------------------------------

def test_crossover_is_the_first_point_of_a_lasting_lead_with_its_interval():
  c = detect_crossover(_curve(AR_SMALL, SE_VAL, 100), _curve(DLM_SMALL, SE_VAL, 100),
                       higher_is_better=False)
  assert c["crossed"] and c["index"] == 4
  assert c["tokens"] == [400, 500] and c["epochs"] == [4.0, 5.0]
  assert c["within_tokens"] == 800 and c["compared"] == 8
  assert c["text"].startswith("crossover between 400 and 500 tokens (epochs 4-5)")
  acc = detect_crossover(_curve(AR_SMALL_ACC, SE_ACC), _curve(DLM_SMALL_ACC, SE_ACC),
                         higher_is_better=True)
  assert acc["index"] == 5 and acc["tokens"] == [5, 6]


def test_direction_matters_a_lower_loss_is_not_a_higher_accuracy():
  """Read as accuracies, the loss curves have AR 'ahead' at the end: no crossover."""
  c = detect_crossover(_curve(AR_SMALL, SE_VAL), _curve(DLM_SMALL, SE_VAL), True)
  assert not c["crossed"]


def test_no_crossover_within_T():
  c = detect_crossover(_curve(AR_LARGE, SE_VAL, 10**9), _curve(DLM_LARGE, SE_VAL, 10**9), False)
  assert not c["crossed"] and c["tokens"] is None and c["index"] is None
  assert c["text"] == "no crossover within T = 8B tokens (8 epochs)"


def test_a_lead_that_does_not_last_or_is_within_the_noise_is_no_crossover():
  ar = [3.0] * 8
  se = 0.05  # 2 combined se = 0.1414
  # Far ahead at points 1-3, behind at 4, then ahead by only 1.9 combined se to the end.
  small = 1.9 * math.sqrt(2) * se
  dlm = [3.2, 2.5, 2.5, 2.5, 3.1, 3.0 - small, 3.0 - small, 3.0 - small]
  c = detect_crossover(_curve(ar, se), _curve(dlm, se), False)
  assert not c["crossed"], c["text"]
  # The same lead beyond 2 se at the last two points is a crossover at point 6.
  big = 2.1 * math.sqrt(2) * se
  c = detect_crossover(_curve(ar, se), _curve(dlm[:6] + [3.0 - big] * 2, se), False)
  assert c["index"] == 6 and c["tokens"] == [6, 7]
  # A DLM ahead from the first evaluation crossed before it: [0, first point].
  c = detect_crossover(_curve(ar, se), _curve([2.0] * 8, se), False)
  assert c["index"] == 0 and c["tokens"] == [0.0, 1] and c["epochs"] == [0.0, 1.0]
  assert c["text"].startswith("DLM ahead by > 2 stderr at every evaluation: crossover before")
  # Without a stderr a lead never counts.
  c = detect_crossover(_curve(ar, float("nan")), _curve([2.0] * 8, se), False)
  assert not c["crossed"]


def test_unmatched_tokens_interpolate_the_ar_curve():
  ar = [Point(0, 3.0, 0.01), Point(100, 2.0, 0.01)]
  dlm = [Point(25, 2.95, 0.01), Point(50, 2.40, 0.01), Point(75, 2.30, 0.01), Point(150, 1.0, 0.01)]
  c = detect_crossover(ar, dlm, False)
  # AR interpolated: 2.75 at 25, 2.5 at 50, 2.25 at 75 (DLM behind); 150 is past the AR curve.
  assert not c["crossed"] and c["compared"] == 3
  c = detect_crossover(ar, dlm[:2] + [Point(75, 2.1, 0.01)], False)
  assert c["tokens"] == [25, 50]


# ---- collecting runs -----------------------------------------------------------------------------

def test_a_directory_without_runs_is_a_one_line_error(tmp_path):
  (tmp_path / "empty" / "logs").mkdir(parents=True)
  with pytest.raises(DlmscaleError, match=f"no run found in {tmp_path / 'empty'}") as e:
    analyze([str(tmp_path / "empty")], str(tmp_path / "out"))
  assert "\n" not in str(e.value)
  with pytest.raises(DlmscaleError, match="no such directory"):
    collect([str(tmp_path / "missing")])
  run = write_run(str(tmp_path), "run", "ar", SMALL_U, AR_SMALL)
  with pytest.raises(DlmscaleError, match="pass its parent"):
    collect([os.path.join(run, "ar")])


def test_a_running_run_is_collected_from_its_metrics(tmp_path):
  run = write_run(str(tmp_path), "live", "mdm", SMALL_U, DLM_SMALL[:3], finished=False)
  with open(os.path.join(run, "mdm", "metrics.jsonl"), "a") as f:
    f.write('{"step": 400, "train/lo')  # caught mid-append
  [s] = collect([run])
  assert s.run == "live" and s.kind == "dlm" and not s.finished
  assert [p["step"] for p in s.points] == [128, 256, 384]
  assert [p["val_mean"] for p in s.points] == DLM_SMALL[:3]
  assert s.stream_fingerprint == SMALL_FP  # from the checkpoint's data state
  summary = analyze([run], str(tmp_path / "out"), plots=False)
  assert summary["runs"][0]["status"] == "running (step 384/1024)"
  with open(tmp_path / "out" / "runs.csv") as f:
    table = list(csv.DictReader(f))
  assert [r["finished"] for r in table] == ["false"] * 3
  assert [float(r["val_mean"]) for r in table] == DLM_SMALL[:3]
  assert "running (step 384/1024)" in summary["text"]


def test_an_objective_that_trained_to_the_end_is_finished_before_results_json(tmp_path):
  run = write_run(str(tmp_path), "r", "ar", SMALL_U, AR_SMALL, finished=False)
  [s] = collect([run])
  assert s.finished  # its last evaluation is at the end of the budget


def test_csv_and_json_hold_the_runs_numbers_exactly(analysis):
  out, _ = analysis
  with open(os.path.join(out, "runs.csv")) as f:
    table = list(csv.DictReader(f))
  with open(os.path.join(out, "runs.json")) as f:
    as_json = json.load(f)
  assert len(table) == len(as_json) == 7 * 8
  for rows in (table, as_json):
    mdm = [r for r in rows if r["run"] == "unique-small_objective-mdm"]
    assert [float(r["val_mean"]) for r in mdm] == DLM_SMALL
    assert [float(r["hellaswag/acc"]) for r in mdm] == DLM_SMALL_ACC
    assert [int(r["tokens_seen"]) for r in mdm] == [EVAL_EVERY * (i + 1) * TOKENS_PER_STEP
                                                    for i in range(8)]
    assert [float(r["epochs"]) for r in mdm] == [4.0 * (i + 1) for i in range(8)]
    assert {r["kind"] for r in mdm} == {"dlm"} and {r["val_kind"] for r in mdm} == {"elbo"}
    assert {int(r["unique_tokens"]) for r in mdm} == {SMALL_U}
    noisy = [r for r in rows if r["objective"] == "ar_input_mask"]
    assert sorted({float(r["noise_rate"]) for r in noisy}) == [0.1, 0.5]
    assert {r["kind"] for r in noisy} == {"ar"}
  assert table[0]["finished"] == "true" and as_json[0]["finished"] is True
  assert [r["final"] for r in as_json[:8]] == [False] * 7 + [True]


def test_summary_has_each_budgets_crossover(analysis):
  out, summary = analysis
  by_u = {g["unique_tokens"]: g for g in summary["groups"] if any(
      f["objective"] == "mdm" for f in g["final"])}
  [small] = [c for c in by_u[SMALL_U]["crossovers"]["val"] if c["ar_label"] == "ar"]
  step_tokens = EVAL_EVERY * TOKENS_PER_STEP
  assert small["tokens"] == [4 * step_tokens, 5 * step_tokens]
  assert small["epochs"] == [16.0, 20.0]
  [acc] = [c for c in by_u[SMALL_U]["crossovers"]["hellaswag/acc"] if c["ar_label"] == "ar"]
  assert acc["tokens"] == [5 * step_tokens, 6 * step_tokens]
  [large] = by_u[LARGE_U]["crossovers"]["val"]
  assert not large["crossed"]
  # The noise variants are compared with the DLM too.
  labels = {c["ar_label"] for c in by_u[SMALL_U]["crossovers"]["val"]}
  assert labels == {"ar", "ar_input_mask 0.1", "ar_input_mask 0.5", "ar_dropout 0.3"}
  text = summary["text"]
  assert "crossover between 2.1M and 2.62M tokens (epochs 16-20)" in text
  assert "no crossover within T = 4.19M tokens (2 epochs)" in text
  assert "| unique-small_objective-mdm | mdm | finished | 32.00 | 4,194,304 | 2.3700 ± 0.0200 " \
         "(ELBO) | 0.400 ± 0.010 |" in text
  with open(os.path.join(out, "summary.json")) as f:
    assert json.load(f)["groups"][0]["crossovers"].keys() == summary["groups"][0][
        "crossovers"].keys()


def test_the_headline_metric_must_exist(sweep, tmp_path):
  with pytest.raises(DlmscaleError, match="metric 'mmlu/acc' is in no run: choose one of val"):
    analyze([sweep], str(tmp_path), metric="mmlu/acc", plots=False)
  summary = analyze([sweep], str(tmp_path), metric="hellaswag/acc", plots=False)
  assert "- Crossover, hellaswag acc (higher is better), mdm vs ar: crossover between" in \
      summary["text"]


def test_runs_of_one_data_config_with_different_streams_are_refused(tmp_path):
  write_run(str(tmp_path), "a", "ar", SMALL_U, AR_SMALL, fingerprint=SMALL_FP)
  write_run(str(tmp_path), "b", "mdm", SMALL_U, DLM_SMALL, fingerprint="c" * 64)
  with pytest.raises(DlmscaleError, match="not token-matched: a/ar and b/mdm share a data "
                     "config .* stream fingerprints differ") as e:
    analyze([str(tmp_path)], str(tmp_path / "out"), plots=False)
  assert "\n" not in str(e.value) and "--force" in str(e.value)
  summary = analyze([str(tmp_path)], str(tmp_path / "out"), force=True, plots=False)
  assert len(summary["token_match_problems"]) == 1
  assert "NOT token-matched" in summary["text"]


def test_a_run_without_a_fingerprint_yet_does_not_hide_a_mismatch(tmp_path):
  run = write_run(str(tmp_path), "a", "ar", SMALL_U, AR_SMALL[:2], finished=False)
  shutil.rmtree(os.path.join(run, "ar", "checkpoints"))  # before its first checkpoint
  write_run(str(tmp_path), "b", "ar", SMALL_U, AR_SMALL)
  write_run(str(tmp_path), "c", "mdm", SMALL_U, DLM_SMALL, fingerprint="c" * 64)
  with pytest.raises(DlmscaleError, match="b/ar and c/mdm share a data config"):
    analyze([str(tmp_path)], str(tmp_path / "out"), plots=False)


def test_runs_on_different_prepared_data_are_refused(tmp_path):
  write_run(str(tmp_path), "a", "ar", SMALL_U, AR_SMALL)
  write_run(str(tmp_path), "b", "mdm", SMALL_U, DLM_SMALL,
            data_fps={"train_split_fingerprint": "other"})
  with pytest.raises(DlmscaleError, match="train split fingerprints differ"):
    analyze([str(tmp_path)], str(tmp_path / "out"), plots=False)


def test_a_run_and_a_sweep_can_be_mixed_and_equal_names_are_told_apart(sweep, tmp_path):
  extra = write_run(str(tmp_path), "unique-small_objective-ar", "ar", SMALL_U, AR_SMALL)
  series = collect([sweep, extra])
  names = {s.run for s in series}
  # The same run name under two roots is prefixed by the root's name.
  assert f"{os.path.basename(sweep)}/unique-small_objective-ar" in names
  assert f"{os.path.basename(str(tmp_path))}/unique-small_objective-ar" in names


def test_model_sizes_are_separate_groups_of_one_stream(tmp_path):
  """Two models on one stream: compared within each model, fingerprints across both."""
  for d_model in (64, 128):
    write_run(str(tmp_path), f"d{d_model}-ar", "ar", SMALL_U, AR_SMALL, d_model=d_model)
    write_run(str(tmp_path), f"d{d_model}-mdm", "mdm", SMALL_U, DLM_SMALL, d_model=d_model)
  summary = analyze([str(tmp_path)], str(tmp_path / "out"), plots=False)
  assert [g["model"] for g in summary["groups"]] == ["d128xL2", "d64xL2"]
  for g in summary["groups"]:
    [c] = g["crossovers"]["val"]
    assert c["ar"].split("-")[0] == c["dlm"].split("-")[0] and c["index"] == 4


def test_eval_json_adds_its_metrics_at_its_step(tmp_path):
  """--mode=eval scores tasks on the final checkpoint later: its numbers join that point."""
  run = write_run(str(tmp_path), "r", "mdm", SMALL_U, DLM_SMALL)
  with open(os.path.join(run, "eval.json"), "w") as f:
    json.dump([{"objective": "mdm", "steps": STEPS, "tokens_seen": STEPS * TOKENS_PER_STEP,
                "epochs": 32.0, "val_kind": "elbo", "val_mean": 2.371, "val_stderr": 0.021,
                "tasks": {"piqa": {"acc": 0.61, "acc_stderr": 0.02, "examples": []}}}], f)
  [s] = collect([run])
  last = s.points[-1]
  assert (last["val_mean"], last["piqa/acc"], last["piqa/acc_stderr"]) == (2.371, 0.61, 0.02)
  assert [p["val_mean"] for p in s.points[:-1]] == DLM_SMALL[:-1]


# ---- plots ---------------------------------------------------------------------------------------

def _png_size(path):
  with open(path, "rb") as f:
    head = f.read(24)
  assert head[:8] == b"\x89PNG\r\n\x1a\n"
  return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def test_the_figures_are_written(sweep, tmp_path):
  pytest.importorskip("matplotlib")
  summary = analyze([sweep], str(tmp_path), plots=True)
  names = sorted(os.path.basename(p) for p in summary["plots"])
  assert names == ["accuracy_hellaswag.png", "final_vs_unique.png", "likelihood_hellaswag.png",
                   "noise_variants.png", "validation_loss.png"]
  for path in summary["plots"]:
    assert os.path.getsize(path) > 20_000, path  # lines, labels and legends, not a blank canvas
    width, height = _png_size(path)
    assert width == 800 and 300 < height < 1400, (path, width, height)


def test_plots_without_matplotlib_name_the_extra(sweep, tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails as if absent
  with pytest.raises(DlmscaleError, match=r"pip install 'dlmscale\[plot\]'"):
    analyze([sweep], str(tmp_path), plots=True)
  assert not os.path.exists(tmp_path / "runs.csv")  # failed before writing anything


def test_the_package_imports_without_matplotlib():
  code = ("import sys; sys.modules['matplotlib'] = None; import dlmscale.analysis; "
          "print('matplotlib' in sys.modules and sys.modules['matplotlib'] is None)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "True"


# ---- data potential ------------------------------------------------------------------------------

def _synthetic(r_star, seed, sigma=0.003):
  """Final losses of a fixed model on a grid of budgets and repetitions, from the law itself."""
  rng = np.random.default_rng(seed)
  unique = np.repeat([1e7, 2e7, 4e7, 8e7, 1.6e8], 7)
  tokens = unique * np.tile([1, 2, 4, 8, 16, 64, 256], 5)
  loss = 2.0 + 400 * effective_data(unique, tokens, r_star) ** -0.35
  return unique, tokens, loss + rng.normal(0, sigma, loss.size), np.full(loss.size, sigma)


def test_effective_data_follows_muennighoff():
  assert effective_data(100, 100, 15.0) == 100  # one epoch: no repetition
  assert effective_data(100, 300, 15.0) == pytest.approx(100 + 100 * 15 * (1 - math.exp(-2 / 15)))
  assert effective_data(100, 1e9, 15.0) == pytest.approx(100 * 16)  # saturates at U (1 + R*)


def test_the_fit_recovers_r_star_within_its_interval():
  fits = {}
  for truth in (15.0, 60.0):
    fit = fit_data_potential(*_synthetic(truth, seed=0))
    lo, hi = fit["r_star_interval"]
    assert lo < truth < hi and lo < fit["r_star"] < hi
    assert fit["r_star"] == pytest.approx(truth, rel=0.05)
    assert hi / lo < 1.2 and fit["determined"]  # informative, not merely wide
    assert fit["beta"] == pytest.approx(0.35, abs=0.01) and fit["E"] == pytest.approx(2.0, abs=0.02)
    fits[truth] = fit
  assert fits[15.0]["r_star_interval"][1] < fits[60.0]["r_star_interval"][0]
  ratio = potential_ratio(fits[60.0], fits[15.0])
  assert ratio["interval"][0] < 4.0 < ratio["interval"][1] and ratio["determined"]
  # Without stated errors the residuals set the scale; the truth is still inside.
  u, t, y, _ = _synthetic(15.0, seed=1)
  lo, hi = fit_data_potential(u, t, y)["r_star_interval"]
  assert lo < 15.0 < hi


def test_an_undetermined_fit_errors_or_is_flagged():
  u, t, y, se = _synthetic(15.0, seed=0)
  with pytest.raises(DlmscaleError, match="needs at least 5 final losses; got 4"):
    fit_data_potential(u[:4], t[:4], y[:4], se[:4])
  once = t == u  # no budget was repeated: R* never enters the loss
  fit = fit_data_potential(u[once], t[once], y[once] + [0, 0.001, 0, 0.002, 0])
  assert not fit["determined"] and fit["r_star_interval"] == [0.0, math.inf]
  assert "not identified" in fit["note"]


def test_analyze_reports_r_star_per_objective(tmp_path):
  """Finished runs of 6 budgets x 3 totals per objective, final losses from the law with
  R* = 15 (AR) and 60 (DLM): the summary reports both and a ratio whose interval holds 4."""
  budgets = [SMALL_U * 2**k for k in range(6)]
  rng = np.random.default_rng(0)
  for objective, r_star in (("ar", 15.0), ("mdm", 60.0)):
    for u in budgets:
      for epochs in (1, 8, 64):
        steps = u * epochs // TOKENS_PER_STEP
        loss = 2.0 + 60 * effective_data(u, steps * TOKENS_PER_STEP, r_star) ** -0.3
        write_run(str(tmp_path / "runs"), f"u{u}_e{epochs}_{objective}", objective, u,
                  [float(loss + rng.normal(0, 0.002))], total=steps * TOKENS_PER_STEP,
                  eval_every=steps, stderr=0.002, fingerprint=f"{u}-{epochs}")
  summary = analyze([str(tmp_path / "runs")], str(tmp_path / "out"), plots=False)
  fits = {f["objective"]: f for f in summary["data_potential"]["fits"]}
  for objective, truth in (("ar", 15.0), ("mdm", 60.0)):
    lo, hi = fits[objective]["r_star_interval"]
    assert fits[objective]["runs"] == 18 and lo < truth < hi
  [ratio] = summary["data_potential"]["ratios"]
  assert ratio["interval"][0] < 4.0 < ratio["interval"][1]
  assert "- R*_mdm / R*_ar (d64xL2): " in summary["text"]
