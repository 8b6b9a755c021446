"""The methods by name: PatchCore, PaDiM and SPADE, and any a plugin registers.

Everything that depends on the method (its tensors, scorer, summary, heatmap scale) is
asked of the `Method` found here, and its fit of the `Fitter` that `fitter` loads from the
module the method names (`Method.fit_module`): scoring imports no fit code. Adding a method
means one scoring module, one fit module and one `register`.

A method from another package is registered either by calling `register` before the
tools run, or through an entry point in the group `ind_knn_ad.methods` whose name is the
method's name and whose object is a `Method` instance: make_model.py and
anomaly_detector.py then find it like a built-in one. Entry points are read only when a
name is not built in (or every name is asked for), so scoring a built-in model costs no
scan of the installed packages.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ind_knn_ad.errors import ModelFileError
from ind_knn_ad.io.preprocess import Preprocess
from ind_knn_ad.methods.base import Method, Scorer
from ind_knn_ad.methods.padim import Padim
from ind_knn_ad.methods.patchcore import PatchCore
from ind_knn_ad.methods.spade import Spade
from ind_knn_ad.model_file.schema import Model

if TYPE_CHECKING:
    from ind_knn_ad.methods.fitting import Fitter

__all__ = [
    "ENTRY_POINTS",
    "Method",
    "Scorer",
    "find",
    "fitter",
    "having_image_score",
    "image_score_rules",
    "make_scorer",
    "names",
    "register",
    "taking_views",
]

ENTRY_POINTS = "ind_knn_ad.methods"
_REGISTRY: dict[str, Method] = {}
_plugins_loaded = False


def register(method: Method) -> None:
    """Make `method` known by its name; a name already taken by another method is an error."""
    known = _REGISTRY.get(method.name)
    if known is not None and known is not method:
        raise ValueError(f"a method named {method.name!r} is already registered")
    _REGISTRY[method.name] = method


def _load_plugins() -> None:
    """Register the methods that installed packages declare as entry points, once."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    # Imported here: importlib.metadata costs a one-off scoring call about 45 ms.
    from importlib.metadata import entry_points

    for point in entry_points(group=ENTRY_POINTS):
        if point.name not in _REGISTRY:
            method = point.load()
            if not isinstance(method, Method) or method.name != point.name:
                raise ValueError(
                    f"entry point {point.value!r} is not a Method named {point.name!r}"
                )
            register(method)


def find(name: str) -> Method | None:
    """The method called `name`, or None."""
    if name not in _REGISTRY:
        _load_plugins()
    return _REGISTRY.get(name)


def names() -> tuple[str, ...]:
    """Every method's name, the built-in ones first."""
    _load_plugins()
    return tuple(_REGISTRY)


def fitter(name: str) -> Fitter:
    """The fit of the method called `name` (known to `find`): the `FITTER` of the module
    it names, imported now, so that only a fit pays for fit code."""
    method = find(name)
    if method is None:
        raise ValueError(f"no method named {name!r}")
    return importlib.import_module(method.fit_module).FITTER


def image_score_rules() -> tuple[str, ...]:
    """Every method's image-score rules, each once, in the order the methods list them."""
    return tuple(dict.fromkeys(rule for name in names() for rule in _REGISTRY[name].image_scores))


def having_image_score(rule: str) -> list[str]:
    """The methods that can score images by `rule`, by name."""
    return [name for name in names() if rule in _REGISTRY[name].image_scores]


def taking_views() -> list[str]:
    """The methods that can fit on training images' views (`augment`), by name."""
    return [name for name in names() if fitter(name).takes_views]


def make_scorer(model: Model, preprocess: Preprocess, maps: bool = True) -> Scorer:
    """The scorer for a loaded (validated) model whose preprocess settings the caller has
    parsed; ModelFileError for an image score its method does not know.

    Scoring (`runtime`), evaluation and the contact sheet take their scorer from here and
    never ask which method made the model.
    """
    method, rule = find(model.method), model.settings["image_score"]
    if method is None:  # load_model refuses such a file; a Model built in code may not be
        raise ModelFileError(f"unknown method {model.method!r}")
    if rule not in method.image_scores:
        raise ModelFileError(f"unknown image score {rule!r} for {method.name}")
    return method.scorer(model, preprocess, maps)


for _method in (PatchCore(), Padim(), Spade()):
    register(_method)
