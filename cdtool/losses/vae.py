"""Losses of paper 000's representation learning (eq. 3): L = ELBO_A + ELBO_B + λ1·L_sim + λ2·L_act.

They read the outputs of `DisentangledVAE.forward_vae` (pairs (A, B) of `mu_c`, `logvar_c`, `mu_s`,
`logvar_s`, `recon`, `inputs`); `target` and `valid` are unused (representation learning sees negative
pairs only). Per-sample sums (pixels, latent units) averaged over the batch for the ELBO; L_sim is the mean
over the M common units (eq. 8) averaged over the batch.

* ``vae_elbo``: −ELBO per branch: Gaussian reconstruction with unit variance (½ squared error, summed over
  pixels) + KL(q(zc|x) ‖ N(0, I)) + KL(q(zs|x) ‖ N(0, I)); `beta` scales the KL terms.
* ``vae_sim``: L_sim with a distance of Table 5 (`distance`: mahalanobis = eq. 8, jeffreys, l2, l1,
  cosine, mmd; see `cdtool.models.disentangled_vae.common_distance`).
* ``vae_act``: L_act = L_sparsity + L_invmax on the common means (|µ| < 1 by the model's tanh). Sparsity is
  eq. 10 with its minus sign: −Σ_i [s log m_i + (1 − s) log(1 − m_i)], m_i = mean over the batch of |µ_i|
  (the printed equation lacks the sign and would push m_i to 0 or 1); invmax is eq. 11, (1/B) Σ_k 1/max_i |µ_i^k|.
* ``disentangled_vae``: the whole of eq. 3; `distance: none` (or lambda_sim 0) gives "VAE without L_sim".
"""

from __future__ import annotations

import torch
import torch.nn as nn

from cdtool.losses.base import register_loss
from cdtool.models.disentangled_vae import DISTANCES, common_distance

EPS = 1e-4


def kl_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(µ, σ²) ‖ N(0, 1)) summed over units: (B,)."""
    return 0.5 * (mu * mu + logvar.exp() - 1 - logvar).sum(1)


def elbo_loss(out: dict, beta: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    rec = kl = 0.0
    for k in range(2):
        x, r = out["inputs"][k], out["recon"][k]
        rec = rec + 0.5 * (r - x).pow(2).flatten(1).sum(1).mean()
        kl = kl + kl_normal(out["mu_c"][k], out["logvar_c"][k]).mean() + kl_normal(out["mu_s"][k], out["logvar_s"][k]).mean()
    return rec + beta * kl, {"rec": float(rec.detach()), "kl": float(kl.detach())}


def sim_loss(out: dict, distance: str = "mahalanobis") -> torch.Tensor:
    (mu_a, mu_b), (lv_a, lv_b) = out["mu_c"], out["logvar_c"]
    return common_distance(mu_a, lv_a, mu_b, lv_b, distance).mean()


def sparsity_loss(mu: torch.Tensor, s: float = 0.5) -> torch.Tensor:
    """Eq. 10 with its minus sign: every unit's mean |µ| over the batch pulled towards s."""
    m = mu.abs().mean(0).clamp(EPS, 1 - EPS)
    return -(s * m.log() + (1 - s) * (1 - m).log()).sum()


def invmax_loss(mu: torch.Tensor) -> torch.Tensor:
    """Eq. 11: at least one unit active per sample (the max is floored at 0.01 so it stays finite)."""
    return (1.0 / mu.abs().amax(1).clamp_min(1e-2)).mean()


def act_loss(out: dict, s: float = 0.5, invmax: bool = True) -> tuple[torch.Tensor, dict[str, float]]:
    mu = torch.cat(list(out["mu_c"]))  # both branches
    sp = sparsity_loss(mu, s)
    inv = invmax_loss(mu) if invmax else mu.new_zeros(())
    return sp + inv, {"sparsity": float(sp.detach()), "invmax": float(inv.detach())}


class ElboLoss(nn.Module):
    def __init__(self, beta: float = 1.0):
        super().__init__()
        self.beta = float(beta)

    def forward(self, outputs: dict, target=None, valid=None):
        loss, parts = elbo_loss(outputs, self.beta)
        return loss, {"elbo": float(loss.detach()), **parts}


class SimLoss(nn.Module):
    def __init__(self, distance: str = "mahalanobis"):
        super().__init__()
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
        self.distance = distance

    def forward(self, outputs: dict, target=None, valid=None):
        loss = sim_loss(outputs, self.distance)
        return loss, {"sim": float(loss.detach())}


class ActLoss(nn.Module):
    def __init__(self, s: float = 0.5, invmax: bool = True):
        super().__init__()
        self.s, self.invmax = float(s), bool(invmax)

    def forward(self, outputs: dict, target=None, valid=None):
        loss, parts = act_loss(outputs, self.s, self.invmax)
        return loss, {"act": float(loss.detach()), **parts}


class DisentangledVAELoss(nn.Module):
    """Eq. 3: ELBO_A + ELBO_B + λ1·L_sim + λ2·L_act."""

    def __init__(self, distance: str = "mahalanobis", lambda_sim: float = 10.0, lambda_act: float = 1.0,
                 s: float = 0.5, invmax: bool = True, beta: float = 1.0):
        super().__init__()
        if distance not in DISTANCES + ("none",):
            raise ValueError(f"distance must be one of {DISTANCES + ('none',)}, got {distance!r}")
        self.distance, self.lambda_sim, self.lambda_act = distance, float(lambda_sim), float(lambda_act)
        self.s, self.invmax, self.beta = float(s), bool(invmax), float(beta)

    def forward(self, outputs: dict, target=None, valid=None):
        loss, parts = elbo_loss(outputs, self.beta)
        terms = {"rec": parts["rec"], "kl": self.beta * parts["kl"]}  # each weighted term as it enters eq. 3
        if self.distance != "none" and self.lambda_sim:
            sim = sim_loss(outputs, self.distance)
            loss = loss + self.lambda_sim * sim
            parts["sim"] = float(sim.detach())
            terms["sim"] = self.lambda_sim * parts["sim"]
        if self.lambda_act:
            act, p = act_loss(outputs, self.s, self.invmax)
            loss = loss + self.lambda_act * act
            parts.update(p)
            terms["act"] = self.lambda_act * float(act.detach())
        return loss, {"vae": float(loss.detach()), **parts, **loss_shares(terms)}


def loss_shares(terms: dict[str, float]) -> dict[str, float]:
    """`share_<term>`: each weighted term's part of the total (every term of eq. 3 is ≥ 0), so a log shows
    whether λ1·L_sim and λ2·L_act weigh anything beside the ELBO: the paper gives no λ, and its degenerate
    solution (a constant zc) is what a term that swamps the others would produce."""
    total = sum(terms.values())
    return {f"share_{k}": (v / total if total > 0 else 0.0) for k, v in terms.items()}


@register_loss("vae_elbo", needs=("mu_c", "logvar_c", "mu_s", "logvar_s", "recon"))
def vae_elbo(beta: float = 1.0) -> nn.Module:
    """Negative ELBO of both VAE branches (Gaussian reconstruction + KL of common and specific latents)."""
    return ElboLoss(beta)


@register_loss("vae_sim", needs=("mu_c", "logvar_c"))
def vae_sim(distance: str = "mahalanobis") -> nn.Module:
    """Similarity of the common posteriors of a pair (paper 000 eq. 8, or a Table 5 alternative)."""
    return SimLoss(distance)


@register_loss("vae_act", needs=("mu_c",))
def vae_act(s: float = 0.5, invmax: bool = True) -> nn.Module:
    """Activation loss on the common means: sparsity (eq. 10, signed) + invmax (eq. 11)."""
    return ActLoss(s, invmax)


@register_loss("disentangled_vae", needs=("mu_c", "logvar_c", "mu_s", "logvar_s", "recon"))
def disentangled_vae(distance: str = "mahalanobis", lambda_sim: float = 10.0, lambda_act: float = 1.0,
                     s: float = 0.5, invmax: bool = True, beta: float = 1.0) -> nn.Module:
    """Paper 000 eq. 3: ELBO_A + ELBO_B + λ1·L_sim + λ2·L_act; distance 'none' drops L_sim."""
    return DisentangledVAELoss(distance, lambda_sim, lambda_act, s, invmax, beta)
