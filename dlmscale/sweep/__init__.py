"""Sweeps: a study's runs at one scale, planned and checked up front, then launched.

A study is a config file with `get_config(arg)` and `runs(scale) -> [arg, ...]` (optionally
`SCALES`). Each run trains into <workdir>/<name>, its name made from its arguments without
`scale=` (`unique=0.5B,objective=mdm,scale=cpu` -> `unique-0.5B_objective-mdm`). Every run's
config is built and validated, and its corpus checked, before anything is launched, so a typo in
the last run does not surface hours into the first.

Locally, runs go one after another (or `parallel` at a time) as `python -m dlmscale.main`
subprocesses. A finished run (results.json) is skipped; an interrupted one (checkpoints, no
results.json) is simply started again and resumes from its checkpoint, so a sweep killed at any
moment and started again ends with the results of one never interrupted. A failed run does not
stop the others: every failure is reported at the end and the sweep fails (SweepFailed).
SIGTERM or SIGINT is forwarded to the running runs as SIGTERM (each saves a checkpoint and exits
143) and the sweep raises SweepInterrupted (the CLI exits 143).
<workdir>/sweep.json lists the runs, their commands and statuses; <workdir>/logs/<name>.log
holds each run's output. With launcher tpu_vm or xpk the cloud commands are printed, and run
only with `yes`.
"""
from dlmscale.sweep.launch import LAUNCHERS, run_sweep
from dlmscale.sweep.local import LOCK_FILE, LOG_DIR, run_local
from dlmscale.sweep.plan import (Run, SweepFailed, SweepInterrupted, check_corpus, load_study,
                                 plan_sweep, run_name, study_runs)
from dlmscale.sweep.records import (RESULTS_FILE, SUMMARY_FILE, load_summary, print_plan,
                                    run_command, run_record, run_status, write_summary)

__all__ = ["LAUNCHERS", "LOCK_FILE", "LOG_DIR", "RESULTS_FILE", "SUMMARY_FILE", "Run",
           "SweepFailed", "SweepInterrupted", "check_corpus", "load_study", "load_summary",
           "plan_sweep", "print_plan", "run_command", "run_local", "run_name", "run_record",
           "run_status", "run_sweep", "study_runs", "write_summary"]
