"""Analysis across runs: collect them, find crossovers, fit the data potential, plot, report.

`analyze(run_dirs, out)` is the entry point (`--mode=analyze`); the pieces are importable:
`detect_crossover` (pure, on two curves), `fit_data_potential` (Muennighoff et al. 2023's R*),
`collect` (run directories to per-objective series).
"""
from dlmscale.analysis.crossover import Point, detect_crossover
from dlmscale.analysis.potential import effective_data, fit_data_potential, potential_ratio
from dlmscale.analysis.report import analyze
from dlmscale.analysis.runs import collect

__all__ = ["Point", "analyze", "collect", "detect_crossover", "effective_data",
           "fit_data_potential", "potential_ratio"]
