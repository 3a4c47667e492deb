"""Code benchmarks: HumanEval / MBPP problems, a subprocess sandbox, pass@k, the harness."""
from dlmscale.evaluation.code.harness import check_code_config, evaluate_code, prompt_fits
from dlmscale.evaluation.code.pass_at_k import pass_at_k, summarize
from dlmscale.evaluation.code.problems import (STOPS, CodeProblem, humaneval_problems,
                                               load_problems, mbpp_problems, truncate_completion)
from dlmscale.evaluation.code.sandbox import ExecResult, run_program, run_programs

__all__ = ["STOPS", "CodeProblem", "ExecResult", "check_code_config", "evaluate_code",
           "humaneval_problems", "load_problems", "mbpp_problems", "pass_at_k", "prompt_fits",
           "run_program", "run_programs", "summarize", "truncate_completion"]
