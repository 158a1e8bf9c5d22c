"""Multi-phase recipes and alternating optimisers: the shapes of papers 000 (represent, then fine-tune at
another learning rate) and 003 (a critic stepped before the model that plays against it)."""

import json

import pytest
import torch
import torch.nn as nn

from cdtool.io.checkpoint import load_checkpoint
from cdtool.engine.loop import train
from cdtool.engine.recipe import load_recipe
from cdtool.engine.task import TASKS, build_optimizer
from cdtool.tasks.dense import MetricTask
from cdtool.errors import InputError
from engine_fixtures import make_pair_folder, tiny_recipe


class CriticTask(MetricTask):
    """Phase 'warm': the metric step alone. Phase 'duel': a critic learns to tell the mean change score of
    a batch, then the model is stepped against the critic as it is *after* its step."""

    name = "critic_test"
    phases = ("warm", "duel")

    def build(self):
        super().build()
        self.critic = nn.Linear(1, 1)

    def modules(self):
        return {"model": self.nets["model"], "critic": self.critic}

    def optimizers(self, wrapped, phase, lr, frozen, factors):
        opts = {"model": build_optimizer(wrapped["model"].parameters(), self.recipe.optim, lr)}
        if phase == "duel":
            opts = {"critic": torch.optim.SGD(wrapped["critic"].parameters(), lr=0.1), **opts}
        return opts

    def training_step(self, wrapped, batches, phase):
        if phase == "warm":
            yield from super().training_step(wrapped, batches, phase)
            return
        score = torch.stack(wrapped["model"](*self.pair(batches["pairs"]))["layer_scores"]).mean().view(1, 1)
        yield "critic", (wrapped["critic"](score.detach()) - 1.0).pow(2).mean(), {}
        yield "model", wrapped["critic"](score).pow(2).mean(), {}


@pytest.fixture(autouse=True)
def critic_task():
    with TASKS.temporary("critic_test", CriticTask):
        yield


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return make_pair_folder(tmp_path_factory.mktemp("d") / "pairs")


def phased(pairs, **over):
    return tiny_recipe(pairs, **{"task": "critic_test", "phases": [{"name": "warm", "epochs": 2, "lr": 0.01},
                                                                   {"name": "duel", "epochs": 2, "lr": 0.001}],
                                 **over})


def test_phases_run_in_order_with_their_learning_rates(pairs, tmp_path):
    res = train(load_recipe(phased(pairs)), tmp_path / "run", quiet=True)
    hist = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [(h["epoch"], h["phase"]) for h in hist] == [(1, "warm"), (2, "warm"), (3, "duel"), (4, "duel")]
    # the learning rate each epoch ran at: each phase's own, on its own cosine schedule
    assert [h.get("lr", h.get("lr_model")) for h in hist] == pytest.approx([0.01, 0.005, 0.001, 0.0005])
    assert hist[2]["lr_critic"] == pytest.approx(0.1)
    states, meta = load_checkpoint(tmp_path / "run" / "last.safetensors")
    assert set(states) == {"model", "critic"} and meta.phase == "duel" and meta.epoch == 4
    assert res.modules["critic"] is not None


def test_each_model_step_sees_the_critic_after_its_step(pairs, tmp_path):
    recipe = load_recipe(phased(pairs, phases=[{"name": "duel", "epochs": 1}]))
    seen: list[float] = []
    original = CriticTask.training_step

    def spy(self, wrapped, batches, phase):
        before_step = self.critic.weight.item()
        gen = original(self, wrapped, batches, phase)
        yield next(gen)  # the critic's loss; the loop steps the critic here
        seen.append((before_step, self.critic.weight.item()))
        yield from gen

    CriticTask.training_step = spy
    try:
        train(recipe, tmp_path / "run", quiet=True)
    finally:
        CriticTask.training_step = original
    assert seen and all(b != a for b, a in seen)


@pytest.mark.parametrize("stop", [1, 2, 3])  # inside the first phase, at the boundary, inside the second
def test_resume_anywhere_in_the_phases_continues_exactly(pairs, tmp_path, stop):
    recipe = load_recipe(phased(pairs))
    train(recipe, tmp_path / "a", quiet=True)
    train(recipe, tmp_path / "b", quiet=True, stop_after=stop)
    train(recipe, tmp_path / "b", quiet=True, resume=True)
    wa, _ = load_checkpoint(tmp_path / "a" / "last.safetensors")
    wb, _ = load_checkpoint(tmp_path / "b" / "last.safetensors")
    for mod in ("model", "critic"):
        for k, v in wa[mod].items():
            assert torch.equal(v, wb[mod][k]), (mod, k)


def test_phases_must_be_the_tasks_in_order(pairs):
    with pytest.raises(InputError, match=r"not phases of task 'critic_test' in its order \(warm, duel\)"):
        load_recipe(phased(pairs, phases=[{"name": "duel", "epochs": 1}, {"name": "warm", "epochs": 1}]))
    with pytest.raises(InputError, match="not phases of task"):
        load_recipe(phased(pairs, phases=[{"name": "pretrain", "epochs": 1}]))
    with pytest.raises(InputError, match="every phase has 0 epochs"):
        load_recipe(phased(pairs, phases=[{"name": "warm", "epochs": 0}]))


def test_a_phase_may_train_on_other_data(pairs, tmp_path):
    recipe = load_recipe(phased(pairs, phases=[{"name": "warm", "epochs": 1, "train": {"pairs": {"pairs": ["pairs/p0"]}}},
                                               {"name": "duel", "epochs": 1}]))
    train(recipe, tmp_path / "run", quiet=True, stop_after=1)
    assert load_checkpoint(tmp_path / "run" / "last.safetensors")[1].train_pairs == ["pairs/p0"]
    train(recipe, tmp_path / "run", quiet=True, resume=True)
    assert load_checkpoint(tmp_path / "run" / "last.safetensors")[1].train_pairs == ["pairs/p0", "pairs/p1",
                                                                                       "pairs/p2"]


def test_multistep_schedule_halves_at_its_milestones_and_resumes_exactly(pairs, tmp_path):
    recipe = load_recipe(phased(pairs, phases=[{"name": "warm", "epochs": 5, "lr": 0.01}],
                                schedule={"scheduler": "multistep", "milestones": [1, 3], "gamma": 0.5}))
    train(recipe, tmp_path / "a", quiet=True)
    hist = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert [h.get("lr", h.get("lr_model")) for h in hist] == pytest.approx([0.01, 0.005, 0.005, 0.0025, 0.0025])
    train(recipe, tmp_path / "b", quiet=True, stop_after=2)  # resume between the milestones
    train(recipe, tmp_path / "b", quiet=True, resume=True)
    wa, _ = load_checkpoint(tmp_path / "a" / "last.safetensors")
    wb, _ = load_checkpoint(tmp_path / "b" / "last.safetensors")
    assert all(torch.equal(v, wb["model"][k]) for k, v in wa["model"].items())
    with pytest.raises(InputError, match="needs schedule.milestones"):
        load_recipe(phased(pairs, schedule={"scheduler": "multistep"}))
    with pytest.raises(InputError, match="increasing epochs"):
        load_recipe(phased(pairs, schedule={"scheduler": "step", "milestones": [3, 2]}))


class TwoSourceTask(CriticTask):
    """CriticTask with a second source; records which sources each step was given."""

    name = "two_source_test"
    sources = {"pairs": "labelled pairs", "extra": "more pairs"}
    seen: list[tuple[str, ...]] = []

    def training_step(self, wrapped, batches, phase):
        TwoSourceTask.seen.append((phase, *sorted(batches)))
        yield from super().training_step(wrapped, batches, phase)


def test_a_phase_draws_only_its_sources(pairs, tmp_path):
    two = {"pairs": {"kind": "folder", "args": {"exclude": ["pairs/p3"], "crop": 24, "samples": 8}, "batch_size": 4},
           "extra": {"kind": "folder", "args": {"exclude": ["pairs/p3"], "crop": 24, "samples": 4}, "batch_size": 2}}
    with TASKS.temporary("two_source_test", TwoSourceTask):
        recipe = load_recipe(phased(pairs, **{"task": "two_source_test", "data.train": two, "phases": [
            {"name": "warm", "epochs": 1, "lr": 0.01, "sources": ["pairs"]}, {"name": "duel", "epochs": 1}]}))
        TwoSourceTask.seen = []
        train(recipe, tmp_path / "run", quiet=True)
        assert set(TwoSourceTask.seen) == {("warm", "pairs"), ("duel", "extra", "pairs")}
        # the task's default for a phase (phase_sources) applies when the recipe's phase names none
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(TwoSourceTask, "phase_sources", {"warm": ("pairs",)})
            TwoSourceTask.seen = []
            train(load_recipe(phased(pairs, **{"task": "two_source_test", "data.train": two})), tmp_path / "run2",
                  quiet=True)
            assert set(TwoSourceTask.seen) == {("warm", "pairs"), ("duel", "extra", "pairs")}
            TwoSourceTask.seen = []  # and the recipe's phase overrides the task's default
            train(load_recipe(phased(pairs, **{"task": "two_source_test", "data.train": two, "phases": [
                {"name": "warm", "epochs": 1, "sources": ["pairs", "extra"]}]})), tmp_path / "run3", quiet=True)
            assert set(TwoSourceTask.seen) == {("warm", "extra", "pairs")}
        with pytest.raises(InputError, match="phases.warm.sources"):
            load_recipe(phased(pairs, **{"task": "two_source_test", "data.train": two,
                                         "phases": [{"name": "warm", "epochs": 1, "sources": ["nope"]}]}))
