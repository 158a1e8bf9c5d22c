"""One-class families: learn from normal samples only (one-class images, or unchanged pairs for change as
anomaly), validate by the exact AUROC of the raw anomaly score on labelled data (label 0 normal, 1 anomalous),
and calibrate the score on the training negatives in a last, zero-epoch phase ``calibrate`` so that detection's
[0, 1] score is the share of normal training samples that scored lower.

- ``cae``: plain convolutional autoencoder, MSE (phases train, calibrate).
- ``dual_ae`` (paper 003): phases ``centre`` (zero epochs: c = mean Ge(x) over the training data), ``train``
  (three optimisers stepped in the order D → D′ → G each step), ``calibrate``.
- ``rotnet_ae`` (paper 004): phases ``rotnet`` (stage 1, cross-entropy over the 4 quarter turns; the recipe's
  optimiser, SGD in the paper), ``decoders`` (stage 2: the encoder frozen with ``freeze: [model.encoder]``,
  which `check` requires; Adam on the two decoders, MSE and −SSIM), ``calibrate``. The RotNet-score baseline
  is the same family with model arg ``score: rotnet`` and no decoders phase.

The single source ``normal`` must hold normal samples only: give it the selection ``labels: [0]``.
Samples with one date (T = 1) are single images; with two, pairs (the model's ``inputs: pair`` stacks them).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from cdtool.engine.task import Step, Task, build_optimizer, param_groups, register_task
from cdtool.errors import InputError
from cdtool.losses.oneclass import check_g_dual
from cdtool.metrics import BinaryMetrics


class OneClassTask(Task):
    """Shared parts: prepared inputs, validation by exact AUROC, calibration on the training negatives."""

    sources: ClassVar[dict[str, str]] = {"normal": "normal samples only (selection labels: [0])"}
    model_name: ClassVar[str] = ""
    val_batch: ClassVar[int] = 256

    @classmethod
    def check(cls, recipe) -> None:
        name = recipe.models["model"].name
        if name != cls.model_name:
            raise ValueError(f"task {cls.name!r} trains model {cls.model_name!r}, not {name!r}")
        args = recipe.data.source_args("normal")
        if args.get("labels") not in ([0], (0,)):
            raise ValueError(f"task {cls.name!r} learns from normal samples only: give data.train.normal.args "
                             "labels: [0]")

    def prepared(self, batch: dict) -> torch.Tensor:
        """The network's input of a batch: one date (image) or both dates stacked (pair), resized."""
        x = self.inputs(batch)
        model = self.nets["model"]
        if model.inputs == "pair" and x.shape[1] != 2:
            raise InputError(f"model arg inputs: pair needs image pairs; this data has {x.shape[1]} date(s)")
        return model.prep(x[:, 0], x[:, -1])

    @torch.no_grad()
    def raw_scores(self, batches) -> tuple[np.ndarray, np.ndarray]:
        model = self.nets["model"]
        was = model.training
        model.eval()
        scores, labels = [], []
        for b in batches:
            scores.append(model.raw_score(self.prepared(b)).float().cpu())
            labels.append(b["label"].cpu() if "label" in b else torch.zeros(len(scores[-1]), dtype=torch.long))
        model.train(was)
        return torch.cat(scores).numpy(), torch.cat(labels).numpy()

    def before_phase(self, phase: str, ctx) -> None:
        if phase == "calibrate":
            scores, _ = self.raw_scores(ctx.batches("normal", self.val_batch))
            self.nets["model"].calibration.fit(torch.from_numpy(scores))

    def scoring(self) -> bool:
        """Whether the model has an anomaly score yet (validation is skipped while it has none)."""
        return True

    def validate(self, loader, device: torch.device, amp: bool) -> BinaryMetrics:
        """Exact AUROC of the raw score against the labels (the loop's loader re-batched); no scores (AUROC
        NaN) while the model has no score yet (rotnet_ae's stage 1 with score 'ae')."""
        from torch.utils.data import DataLoader

        if not self.scoring():
            return BinaryMetrics(exact=True)
        batches = ({k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()}
                   for b in DataLoader(loader.dataset, batch_size=self.val_batch))
        scores, labels = self.raw_scores(batches)
        keep = labels >= 0
        model = self.nets["model"]
        cal = model.calibration(torch.from_numpy(scores[keep])).numpy() if bool(model.calibration.fitted) else None
        acc = BinaryMetrics(exact=True)
        pred = cal >= 0.5 if cal is not None else np.zeros(int(keep.sum()), bool)
        acc.update(pred, labels[keep] > 0, None, scores[keep])
        return acc


@register_task
class CAETask(OneClassTask):
    """Plain convolutional autoencoder on normal samples (MSE); score: its reconstruction error."""

    name = "cae"
    model_name = "cae"
    phases = ("train", "calibrate")
    models: ClassVar[dict[str, str]] = {"model": "cae"}
    losses: ClassVar[dict[str, str]] = {"rec": "reconstruction loss (recon_mse)"}

    def training_step(self, wrapped, batches, phase) -> Step:
        x = self.prepared(batches["normal"])
        loss = self.loss_fns["rec"](x, self.nets["model"].reconstruct(x))
        yield "model", loss, {"mse": float(loss.detach())}


@register_task
class DualAETask(OneClassTask):
    """Adversarial dual autoencoder (paper 003): latent centre first, then D → D′ → G each step."""

    name = "dual_ae"
    model_name = "dual_ae"
    phases = ("centre", "train", "calibrate")
    models: ClassVar[dict[str, str]] = {"model": "dual_ae (G, D, auxiliary D′, centre c)"}
    losses: ClassVar[dict[str, str]] = {"adae": "the weighted paper-003 objectives (adae)"}

    @classmethod
    def check(cls, recipe) -> None:
        super().check(recipe)
        names = [p.name for p in recipe.phase_plan()]
        check_g_dual(recipe.losses["adae"].args.get("g_dual", "help"))
        w_c = float(recipe.losses["adae"].args.get("w_c", 0.05))
        if "train" in names and w_c > 0 and "centre" not in names:
            raise ValueError("task 'dual_ae' with w_c > 0 needs the zero-epoch phase 'centre' before 'train'")

    def before_phase(self, phase: str, ctx) -> None:
        if phase == "centre":
            model = self.nets["model"]
            with torch.no_grad():  # BatchNorm on batch statistics, as training will see them
                zs = [model.generator.encode(self.prepared(b)) for b in ctx.batches("normal", self.val_batch)]
            model.centre.copy_(torch.cat(zs).mean(0))
            model.centre_set.fill_(True)
        super().before_phase(phase, ctx)

    def optimizers(self, wrapped, phase, lr, frozen, factors) -> dict[str, torch.optim.Optimizer]:
        base = self.recipe.optim.lr if lr is None else lr
        model = self.nets["model"]
        parts = {"D": "discriminator", "Dp": "auxiliary", "G": "generator"}
        return {k: build_optimizer(param_groups({f"model.{sub}": getattr(model, sub)}, base, factors, frozen),
                                   self.recipe.optim, lr) for k, sub in parts.items()}

    def training_step(self, wrapped, batches, phase) -> Step:
        model, loss = self.nets["model"], self.loss_fns["adae"]
        x = self.prepared(batches["normal"])
        ld, parts = loss.discriminator(model, x)
        yield "D", ld, parts
        if loss.auxiliary_active():
            la, parts = loss.auxiliary(model, x)
            yield "Dp", la, parts
        lg, parts = loss.generator(model, x)
        yield "G", lg, parts


@register_task
class RotNetAETask(OneClassTask):
    """Paper 004: RotNet encoder (stage 1), then MSE and SSIM decoders on the frozen encoder (stage 2)."""

    name = "rotnet_ae"
    model_name = "rotnet_ae"
    phases = ("rotnet", "decoders", "calibrate")
    models: ClassVar[dict[str, str]] = {"model": "rotnet_ae (encoder, rotation head, two decoders)"}
    losses: ClassVar[dict[str, str]] = {"rotation": "rotation_ce", "mse": "recon_mse", "ssim": "recon_ssim"}

    @classmethod
    def check(cls, recipe) -> None:
        super().check(recipe)
        for p in recipe.phase_plan():
            if p.name == "decoders" and p.epochs and not {"model", "model.encoder"} & set(p.freeze):
                raise ValueError("task 'rotnet_ae': phase 'decoders' trains on the frozen encoder; give it "
                                 "freeze: [model.encoder]")
        if recipe.models["model"].args.get("score", "ae") == "ae" and "decoders" not in [p.name for p in recipe.phase_plan()]:
            raise ValueError("task 'rotnet_ae' with score 'ae' needs the phase 'decoders' (or model arg score: rotnet)")

    phase_now: str = ""

    def scoring(self) -> bool:
        return self.nets["model"].score == "rotnet" or self.phase_now != "rotnet"

    def optimizers(self, wrapped, phase, lr, frozen, factors) -> dict[str, torch.optim.Optimizer]:
        self.phase_now = phase
        base = self.recipe.optim.lr if lr is None else lr
        model = self.nets["model"]
        if phase == "decoders":  # Adam on the decoders (the paper: lr 2e-4)
            mods = {"model.dec_mse": model.dec_mse, "model.dec_ssim": model.dec_ssim}
            return {"model": torch.optim.Adam(param_groups(mods, base, factors, frozen), lr=base, betas=(0.5, 0.999))}
        mods = {"model.encoder": model.encoder, "model.rot_head": model.rot_head}
        return {"model": build_optimizer(param_groups(mods, base, factors, frozen), self.recipe.optim, lr)}

    def training_step(self, wrapped, batches, phase) -> Step:
        model = self.nets["model"]
        x = self.prepared(batches["normal"])
        if phase == "rotnet":
            loss, acc = self.loss_fns["rotation"](model, x)
            yield "model", loss, {"rot_acc": acc}
            return
        with torch.no_grad():
            z = model.encoder(x)  # frozen: eval mode (the phase's freeze), no gradient
        mse = self.loss_fns["mse"](x, model.dec_mse(z))
        nssim = self.loss_fns["ssim"](x, model.dec_ssim(z))
        yield "model", mse + nssim, {"mse": float(mse.detach()), "ssim": -float(nssim.detach())}
