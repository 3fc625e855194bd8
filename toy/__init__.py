"""The toy of THEORY.md §2: a Gaussian-mixture regression where a fixed update must forget.

``toy.problem`` describes the problem, ``toy.closed_form`` computes its closed forms (float64 NumPy/SciPy,
one function per quantity, each docstring citing its equation), ``toy.train`` trains full FT, LoRA and
DISeL on samples with the same ``disel.DiselLinear`` layer, ``toy.sweeps`` varies separation and rank;
``toy.continual`` / ``toy.continual_train`` continue it to a sequence of tasks, a gated branch per task (issue 18).
"""

from .closed_form import (
    BayesLayerParameters,
    PopulationMSE,
    bayes_correction,
    bayes_discriminant,
    bayes_mse,
    bayes_posterior,
    correction_mse,
    disel_bayes_parameters,
    fixed_mse,
    fixed_optimum,
    plant_bayes_layer,
    second_moments,
)
from .continual import ContinualProblem, PopulationTable, plant_branches
from .continual_train import CONTINUAL_RECIPE, ContinualResult, run_continual, train_sequence
from .problem import MixtureProblem, MixtureSample
from .sweeps import Sweep, SweepPoint, rank_sweep, separation_sweep
from .train import METHODS, Figure1Result, ToyRunResult, ToyTrainConfig, mean_gate, run_figure1, train_method

__all__ = [
    "MixtureProblem",
    "MixtureSample",
    "PopulationMSE",
    "BayesLayerParameters",
    "second_moments",
    "fixed_optimum",
    "fixed_mse",
    "bayes_discriminant",
    "bayes_posterior",
    "bayes_correction",
    "bayes_mse",
    "correction_mse",
    "disel_bayes_parameters",
    "plant_bayes_layer",
    "METHODS",
    "ToyTrainConfig",
    "ToyRunResult",
    "Figure1Result",
    "train_method",
    "run_figure1",
    "mean_gate",
    "Sweep",
    "SweepPoint",
    "separation_sweep",
    "rank_sweep",
    "ContinualProblem",
    "PopulationTable",
    "plant_branches",
    "CONTINUAL_RECIPE",
    "ContinualResult",
    "run_continual",
    "train_sequence",
]
