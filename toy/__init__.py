"""The toy of THEORY.md §2: a Gaussian-mixture regression where a fixed update must forget.

``toy.problem`` describes the problem, ``toy.closed_form`` computes its closed forms (float64 NumPy/SciPy,
one function per quantity, each docstring citing its equation).
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
from .problem import MixtureProblem, MixtureSample

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
]
