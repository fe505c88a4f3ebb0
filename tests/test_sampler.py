"""The sampler: the sigma table of spec 5.1, the conditioning substitution, guidance and seeds."""

from __future__ import annotations

import math

import pytest
import torch

from cosmos_plugins.predict1 import sampler as S

# (i, sigma, c_noise) from cosmos-predict1-spec.md section 5.1.
TABLE = [
    (0, 79.99998, 1.09551), (1, 67.12598, 1.05164), (2, 56.07026, 1.00665), (3, 46.61349, 0.96047),
    (4, 38.55819, 0.91304), (5, 31.72677, 0.86429), (6, 25.96020, 0.81414), (7, 21.11641, 0.76251),
    (8, 17.06888, 0.70931), (9, 13.70544, 0.65445), (10, 10.92685, 0.59781), (11, 8.645810, 0.53927),
    (12, 6.785737, 0.47871), (13, 5.279787, 0.41597), (14, 4.069893, 0.35090), (15, 3.105875, 0.28332),
    (16, 2.344599, 0.21303), (17, 1.749212, 0.13979), (18, 1.288421, 0.063354), (19, 0.935854, -0.016574),
    (20, 0.669440, -0.100329), (21, 0.470869, -0.188294), (22, 0.325086, -0.280916), (23, 0.219838, -0.378716),
    (24, 0.145261, -0.482306), (25, 0.093512, -0.592417), (26, 0.058444, -0.709923), (27, 0.035311, -0.835892),
    (28, 0.020516, -0.971636), (29, 0.011388, -1.118801), (30, 0.0059883, -1.279489), (31, 0.0029506, -1.456436),
    (32, 0.0013425, -1.653309), (33, 0.00055271, -1.875170), (34, 0.00020000, -2.129298),
]


def test_35_sigmas_match_spec_table():
    sig = S.karras_sigmas(35)
    assert sig.dtype == torch.float32 and sig.shape == (36,)
    assert sig[-1].item() == 0.0
    for i, sigma, cn in TABLE:
        assert sig[i].item() == pytest.approx(sigma, rel=2e-5), i
        assert S.c_noise(sig[i]).item() == pytest.approx(cn, rel=2e-4, abs=2e-6), i


def test_substitution_released_for_last_two_steps():
    sig = S.karras_sigmas(35)
    active = [S.AUGMENT_SIGMA < sig[i].to(torch.bfloat16).item() for i in range(35)]
    assert active == [True] * 33 + [False, False]


def test_init_noise_sigma():
    assert S.INIT_NOISE_SIGMA == pytest.approx(80.00624975, rel=1e-9)


def test_preconditioning_identities():
    for s in (80.0, 1.0, 0.01):
        assert S.c_skip(s) + (S.c_out(s) / S.SIGMA_DATA) ** 2 == pytest.approx(1.0)
        assert S.c_in(s) == pytest.approx(1 / math.sqrt(s * s + 0.25))


def _oracle(target: torch.Tensor):
    """A perfect denoiser for a single clean latent: F such that c_skip x + c_out F == target."""
    sig = S.karras_sigmas(64)
    cn = {round(S.c_noise(s).to(torch.bfloat16).item(), 6): s.item() for s in sig[:-1]}

    def model_fn(x_scaled, t):
        s = cn.get(round(t.float().item(), 6))
        if s is None:  # the bf16 c_noise of a sigma not in the 64-step table: recover it
            s = math.exp(4 * t.float().item())
        x = x_scaled.float() / S.c_in(s)
        f = (target - S.c_skip(s) * x) / S.c_out(s)
        return f, f

    return model_fn


@pytest.mark.parametrize("numerics", S.NUMERICS)
def test_oracle_denoiser_recovers_target(numerics):
    torch.manual_seed(0)
    shape = (1, 4, 3, 4, 4)
    target = torch.randn(shape) * 0.5
    cond = torch.zeros(shape)
    out = S.sample(_oracle(target), noise=S.initial_noise(shape, seed=3, device="cpu"), condition_latent=cond,
                   num_condition_frames=0, augment=torch.zeros(shape), num_steps=12, guidance=7.0, numerics=numerics)
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), target, atol=0.02)


@pytest.mark.parametrize("numerics", S.NUMERICS)
def test_condition_frames_pinned_until_released(numerics):
    """With a network that predicts garbage, the conditioned frames still come out as the clean latent,
    as long as the substitution stays active (sigma_min above 0.001 here)."""
    torch.manual_seed(1)
    shape = (1, 4, 4, 4, 4)
    latent = torch.randn(shape) * 0.5

    def junk(x_scaled, t):
        f = torch.full_like(x_scaled, 3.0)
        return f, -f

    seen = []
    with torch.inference_mode():
        sig_sched = S.karras_sigmas
        try:
            S.karras_sigmas = lambda n: sig_sched(n, sigma_min=0.01)
            out = S.sample(junk, noise=S.initial_noise(shape, seed=0, device="cpu"), condition_latent=latent,
                           num_condition_frames=2, augment=torch.randn(shape), num_steps=8, guidance=7.0,
                           numerics=numerics, on_step=seen.append)
        finally:
            S.karras_sigmas = sig_sched
    assert [s.index for s in seen] == list(range(8))
    if numerics == "fp32":
        assert torch.allclose(out[:, :, :2].float(), latent[:, :, :2], atol=0.02)
    else:
        # the original's latent / c_out - c_skip * x: x0 = latent + c_skip (1 - c_out) x_in at the last step
        s = 0.01
        x_in = latent * S.c_in(S.AUGMENT_SIGMA) / S.c_in(s)
        expected = latent + S.c_skip(s) * (1 - S.c_out(s)) * x_in
        assert torch.allclose(out[:, :, :2].float(), expected[:, :, :2], atol=0.05)
        assert not torch.allclose(out[:, :, :2].float(), latent[:, :, :2], atol=0.1)
    assert not torch.allclose(out[:, :, 2:].float(), latent[:, :, 2:], atol=0.5)


def test_guidance_formula():
    c, u = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 3.0])
    assert torch.equal(S.apply_guidance(c, u, 7.0), c + 7.0 * (c - u))
    assert torch.equal(S.apply_guidance(c, u, 0.0), c)


def test_seed_independent_of_global_rng_history():
    a = S.initial_noise((2, 3, 4), seed=42, device="cpu")
    torch.randn(1000)  # anything consuming the global generator
    torch.manual_seed(999)
    b = S.initial_noise((2, 3, 4), seed=42, device="cpu")
    c = S.initial_noise((2, 3, 4), seed=43, device="cpu")
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.dtype == torch.bfloat16
    n1 = S.augment_noise((2, 3), seed=5, device="cpu")
    n2 = S.augment_noise((2, 3), seed=5, device="cpu")
    assert torch.equal(n1, n2) and n1.dtype == torch.float32
