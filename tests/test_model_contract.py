"""Every registered model is a `ChangeModel`, so detection reads its hooks as plain attributes; a builder that
returns anything else is refused where the model is built, not deep inside a run."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from cdtool.errors import InputError
from cdtool.inference.centre_patch import CentrePatch, as_dense
from cdtool.inference.rescale import Rescaled
from cdtool.models.base import ChangeModel
from cdtool.models.cae import OneClassModel
from cdtool.models.registry import MODELS, create_model, model_entry, model_names


@pytest.mark.parametrize("name", model_names())
def test_every_registered_model_is_a_change_model_with_sane_hooks(name):
    model = create_model(name)
    assert isinstance(model, ChangeModel)
    assert isinstance(model.halo, int) and model.halo >= 0
    assert isinstance(model.size_multiple, int) and model.size_multiple >= 1
    assert model.default_threshold in ("otsu", "kmeans", "gmm") or 0 <= float(model.default_threshold) <= 1
    assert model.default_normalization["mode"] in ("per-image", "fixed")
    dense = as_dense(model, model_entry(name).info.get("output", "dense"))
    assert isinstance(dense, ChangeModel)
    assert isinstance(dense, CentrePatch) == (model.patch_only or model.patch_size is not None)


def test_a_model_states_only_where_it_differs_from_the_declared_defaults():
    class Plain(ChangeModel):
        def forward(self, before, after):
            return (after - before).abs().mean(1, keepdim=True)

    m = Plain()
    assert (m.halo, m.exact_halo, m.size_multiple, m.needs_fit, m.patch_only, m.patch_size, m.cell) == \
        (0, False, 1, False, False, None, 14)
    assert (m.default_threshold, dict(m.default_normalization), m.forward_train) == ("otsu", {"mode": "per-image"}, None)
    assert m.fit([]) is None  # nothing to estimate
    assert as_dense(m, "centre") is m  # takes any size: never slid
    with pytest.raises(TypeError):
        m.default_normalization["mode"] = "fixed"  # shared by every model: read-only
    assert issubclass(OneClassModel, ChangeModel)
    assert Rescaled(create_model("cva", neighbourhood=5), 2.0).halo == 2  # ceil(2 / 2) + 1: read from the model


def test_a_builder_that_returns_a_bare_module_is_refused_by_name():
    with MODELS.temporary("bare_test", lambda: nn.Conv2d(3, 1, 1)):
        with pytest.raises(InputError, match="'bare_test' is not a ChangeModel .*Conv2d"):
            create_model("bare_test")


def test_a_patch_only_model_without_its_window_side_is_refused():
    class NoSide(ChangeModel):
        patch_only = True

        def forward(self, before, after):
            return torch.zeros(len(before))

    with pytest.raises(InputError, match="NoSide: a patch-only model must state its window side"):
        as_dense(NoSide(), "centre")
