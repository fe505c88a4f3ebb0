"""The EDM Euler sampler with Video2World conditioning, as the original runs it.

* Schedule: Karras, rho 7, sigma 80 -> 0.0002 over ``num_steps`` points, then a final 0 (diffusers 0.32.2's
  ``EDMEulerScheduler`` as the original constructs it); initial noise scale ``sqrt(80^2 + 1)``.
* Preconditioning (EDM, sigma_data 0.5): ``c_skip = sd^2/(s^2+sd^2)``, ``c_out = s*sd/sqrt(s^2+sd^2)``,
  ``c_in = 1/sqrt(s^2+sd^2)``, ``c_noise = ln(s)/4``.
* Conditioning: the latent frames given as input are replaced at every step by the clean latent seen at noise
  level 0.001 (a fixed noise draw from the seed), and the network's prediction there by a value computed from
  the clean latent; released for the last steps where sigma <= 0.001.
* Guidance: ``F = F_c + w (F_c - F_u)`` on the raw network output.

Two numerics:

* ``"original"`` reproduces the original inference script step by step: bf16 state between steps, the bf16
  ``c_in``/``c_out``/``c_skip`` of the substitution, the bf16 ``c_out * F`` product, and its substituted
  prediction ``latent / c_out - c_skip * x`` (model_v2w.py ``_reverse_precondition_output``). That expression
  is an operator-precedence slip for ``(latent - c_skip * x) / c_out``: the denoised estimate of the input
  region comes out as ``latent + c_skip (1 - c_out) x`` instead of ``latent``. While the substitution is
  active this never reaches the network (the region is overwritten at the next step), but it sets where
  the last two, unconstrained, steps start from.
* ``"fp32"`` (the default of the pipeline) keeps the state and every scalar in fp32 and substitutes the
  prediction that makes the denoised estimate exactly the clean latent, as the model was trained.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

SIGMA_MAX = 80.0
SIGMA_MIN = 0.0002
SIGMA_DATA = 0.5
RHO = 7.0
AUGMENT_SIGMA = 0.001
INIT_NOISE_SIGMA = math.sqrt(SIGMA_MAX**2 + 1.0)
NUMERICS = ("original", "fp32")


def karras_sigmas(num_steps: int, sigma_max: float = SIGMA_MAX, sigma_min: float = SIGMA_MIN,
                  rho: float = RHO) -> torch.Tensor:
    """``num_steps`` Karras sigmas from ``sigma_max`` to ``sigma_min`` (fp32, as diffusers 0.32.2), plus a final 0."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    ramp = torch.linspace(0, 1, num_steps, dtype=torch.float32)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float32)])


def c_noise(sigma):
    return 0.25 * torch.log(sigma) if isinstance(sigma, torch.Tensor) else 0.25 * math.log(sigma)


def c_in(sigma, sd: float = SIGMA_DATA):
    return 1 / (sigma**2 + sd**2) ** 0.5


def c_skip(sigma, sd: float = SIGMA_DATA):
    return sd**2 / (sigma**2 + sd**2)


def c_out(sigma, sd: float = SIGMA_DATA):
    return sigma * sd / (sigma**2 + sd**2) ** 0.5


def apply_guidance(f_cond: torch.Tensor, f_uncond: torch.Tensor, guidance: float) -> torch.Tensor:
    """Classifier-free guidance on the raw network output: ``F_c + w (F_c - F_u)``."""
    return f_cond + guidance * (f_cond - f_uncond)


def initial_noise(shape, *, seed: int, device, dtype=torch.bfloat16) -> torch.Tensor:
    """The starting latent, from a generator of its own: the same seed gives the same noise whatever ran before.

    Drawn in fp32 on ``device`` and cast (on CUDA this equals the original's bf16 draw from a freshly seeded
    generator), then scaled by ``sqrt(80^2+1)``.
    """
    gen = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(shape, generator=gen, device=device, dtype=torch.float32).to(dtype) * INIT_NOISE_SIGMA


def augment_noise(shape, *, seed: int, device) -> torch.Tensor:
    """The fixed conditioning noise: numpy's ``RandomState(seed).standard_normal`` in fp32, as the original."""
    arr = np.random.RandomState(seed).standard_normal(tuple(shape)).astype(np.float32)
    return torch.from_numpy(arr).to(device)


@dataclass(frozen=True)
class StepInfo:
    index: int
    num_steps: int
    sigma: float


# model_fn(x_scaled, c_noise) -> (F_cond, F_uncond): the network on both guidance branches. On the steps past
# ``guided_steps`` (see sample) it is called as model_fn(x_scaled, c_noise, uncond=False) -> (F_cond, None).
ModelFn = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]


def guided_step_count(num_steps: int, truncate_fraction: float | None) -> int:
    """Steps that apply guidance when the last ``truncate_fraction`` of ``num_steps`` run the conditional branch
    only (rounded to the nearest step; None or 0: every step)."""
    if not truncate_fraction:
        return num_steps
    if not 0 <= truncate_fraction < 1:
        raise ValueError(f"truncate_fraction must be in [0, 1), got {truncate_fraction}")
    return num_steps - min(num_steps, int(truncate_fraction * num_steps + 0.5))


@torch.inference_mode()
def sample(
    model_fn: ModelFn,
    *,
    noise: torch.Tensor,
    condition_latent: torch.Tensor,
    num_condition_frames: int,
    augment: torch.Tensor,
    num_steps: int = 35,
    guidance: float = 7.0,
    numerics: str = "original",
    on_step: Callable[[StepInfo], None] | None = None,
    guided_steps: int | None = None,
) -> torch.Tensor:
    """Denoise ``noise`` ([B,C,T,H,W], already scaled by the initial sigma) into a clean latent.

    ``condition_latent`` is the tokenizer latent of the input frames (zero-padded video) times sigma_data,
    of the same shape; its first ``num_condition_frames`` latent frames condition the generation.
    ``augment`` is the fixed conditioning noise (see :func:`augment_noise`). The network is evaluated at
    ``x * c_in(sigma)`` and ``c_noise(sigma)``; the returned latent is in the network's latent scale.
    ``guided_steps`` (fast mode's guidance truncation): only the first ``guided_steps`` steps apply guidance; the
    later ones use the conditional output alone and do not compute the unconditional one. None: every step.
    """
    if numerics not in NUMERICS:
        raise ValueError(f"numerics must be one of {NUMERICS}, got {numerics!r}")
    if noise.shape != condition_latent.shape:
        raise ValueError(f"noise {tuple(noise.shape)} and condition latent {tuple(condition_latent.shape)} differ")
    device, bf16, f32 = noise.device, torch.bfloat16, torch.float32
    original = numerics == "original"
    sigmas = karras_sigmas(num_steps)
    t_len = noise.shape[2]
    indicator = torch.zeros(1, 1, t_len, 1, 1, dtype=bf16, device=device)
    indicator[:, :, :num_condition_frames] = 1
    latent = condition_latent.to(bf16)
    # The input region seen at noise level 0.001, scaled by c_in(0.001): the same every step.
    augmented = (latent.float() + augment.to(device, f32) * AUGMENT_SIGMA) * c_in(AUGMENT_SIGMA)

    guided_steps = num_steps if guided_steps is None else guided_steps

    def network(x_scaled: torch.Tensor, t: torch.Tensor, guided: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        return model_fn(x_scaled, t) if guided else model_fn(x_scaled, t, uncond=False)

    def guide(f_cond: torch.Tensor, f_uncond: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        return f_cond.to(dtype) if f_uncond is None else apply_guidance(f_cond.to(dtype), f_uncond.to(dtype), guidance)

    x = noise.to(bf16 if original else f32)
    for i in range(num_steps):
        guided = i < guided_steps
        s, s_next = sigmas[i], sigmas[i + 1]
        sb = s.to(bf16)
        active = AUGMENT_SIGMA < sb.item() if original else AUGMENT_SIGMA < s.item()
        ind = indicator if active else torch.zeros_like(indicator)
        if original:
            # bf16 preconditioning scalars of the substitution, as the original computes them.
            c_in_b, c_skip_b, c_out_b = c_in(sb), c_skip(sb), c_out(sb)
            x_in = (ind * (augmented / c_in_b.to(device)) + (1 - ind) * x).to(bf16)
            x_scaled = x_in * c_in(s)  # bf16 tensor * fp32 0-dim -> bf16
            t = c_noise(s).to(bf16).to(device).reshape(1)
            f = guide(*network(x_scaled, t, guided), bf16)
            f_latent = latent / c_out_b.to(device) - c_skip_b.to(device) * x_in
            f = ind * f_latent + (1 - ind) * f
            xf = x_in.float()
            x0 = c_skip(s).to(device) * xf + (c_out(s).to(device) * f)  # the c_out*F product stays bf16
            x = (xf + (xf - x0) / s.to(device) * (s_next - s).to(device)).to(bf16)
        else:
            sf = s.item()
            x_in = ind.float() * (augmented / c_in(sf)) + (1 - ind.float()) * x
            t = torch.full((1,), c_noise(sf), dtype=f32, device=device)
            f = guide(*network((x_in * c_in(sf)).to(bf16), t, guided), f32)
            f_latent = (latent.float() - c_skip(sf) * x_in) / c_out(sf)  # makes x0 == latent exactly
            f = ind.float() * f_latent + (1 - ind.float()) * f
            x0 = c_skip(sf) * x_in + c_out(sf) * f
            x = x0 + (s_next.item() / sf) * (x_in - x0)
        if on_step is not None:
            on_step(StepInfo(i, num_steps, float(s)))
    return x.to(bf16)
