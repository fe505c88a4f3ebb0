"""Context parallelism on the CPU: 2 and 4 gloo processes against one process, on tiny models.

The multi-process runs start N workers with the environment torchrun would give them (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR/PORT on 127.0.0.1 and a free port): forked from the test process, which has done the
imports already (seconds per rank on two cores), or, for the dying-rank check, as fresh interpreters running
this file (``python tests/test_parallel.py <scenario> <workdir>``), so that a real process's exit is checked.
Each run does every check of its scenario in one process group and writes what it computed under the work
folder; the tests compare that with one process. Every run has a deadline, and the group timeouts are short.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cosmos_cli.errors import CosmosError, InputError, MissingDependencyError, UsageError
from cosmos_plugins.predict1 import parallel as P
from cosmos_plugins.predict1.params import DiTParams
from cosmos_torch.seqattn import _attention_with_lse_math

REPO = Path(__file__).resolve().parents[1]
# 4 heads (Ulysses over 2 or 4 ranks), head dim 16. h and w extrapolation differ to catch an axis mix-up.
NET = DiTParams(model_channels=64, num_blocks=2, num_heads=4, mlp_ratio=2.0, in_channels=4, out_channels=4,
                crossattn_emb_channels=32, max_img_h=32, max_img_w=32, max_frames=8, adaln_lora_dim=8,
                rope_w_extrapolation_ratio=2.0)
# "frames": 4 latent frames of 16 tokens, cut at frame boundaries by 2 and 4 ranks (as the original splits);
# "flat": 3 frames of 24 tokens (72), cut by 2 and 4 ranks inside frames (the flattened-axis split).
LATENTS = {"frames": (4, 8, 8), "flat": (3, 8, 12)}
TEXT_TOKENS = 6
# (scheme, attention) per world size: every split the runs check against one process.
LAYOUTS = {
    2: [("sequence", "ulysses"), ("sequence", "ring"), ("cfg", "auto")],
    4: [("sequence", "ulysses"), ("sequence", "ring"), ("cfg", "ulysses"), ("cfg", "ring")],
}
# The video runs: the default scheme and the other one (PREDICT1_TINY: 2 heads, 12 tokens).
VIDEO_JOBS = [("auto", 3), ("sequence", 5)]
RUN_DEADLINE_S = 80


# ----------------------------------------------------------------------------------------------------------
# Shared by the tests (one process) and the workers (N processes)


def net_inputs(latent: tuple[int, int, int], seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    T, H, W = latent
    x = torch.randn(1, NET.in_channels, T, H, W, generator=g)
    emb = torch.randn(2, TEXT_TOKENS, NET.crossattn_emb_channels, generator=g)
    mask = torch.zeros(1, 1, T, H, W)
    mask[:, :, :1] = 1
    return x, torch.tensor([0.3]), emb, mask


def local_model_fn(net, emb, mask, tables, cfg_batched: bool):
    """The pipeline's single-process closure."""
    def fn(x, t):
        if cfg_batched:
            out = net(torch.cat([x, x]), t.expand(2), emb, 24.0, mask, tables=tables)
            return out[:1], out[1:]
        return net(x, t, emb[:1], 24.0, mask, tables=tables), net(x, t, emb[1:], 24.0, mask, tables=tables)
    return fn


def tiny_jobs(image: Path):
    from cosmos_cli.jobs import GenerationJob

    return [GenerationJob(visual_input=image, prompt="a red ball rolls left", num_steps=2, seed=seed,
                          name=f"{scheme}-{seed}") for scheme, seed in VIDEO_JOBS]


def load_tiny_pipeline(root: Path):
    from cosmos_cli.planner import plan_memory
    from cosmos_plugins.predict1.pipeline import Predict1Pipeline
    from cosmos_plugins.predict1.specs import PREDICT1_TINY

    plan = plan_memory(PREDICT1_TINY, None, strategy="resident", upsampler=False, guardrail=False)
    return Predict1Pipeline.load(PREDICT1_TINY, plan, checkpoint_dir=root, device="cpu")


def spy_decode(pipe, sink: dict):
    """Keep the latent and the frames the pipeline decodes (the video file itself is compressed)."""
    real = pipe.__dict__.setdefault("_undecorated_decode", pipe.decode)  # wrap the real one once

    def decode(latent):
        frames = real(latent)
        sink["latent"], sink["frames"] = latent.float().clone(), frames.copy()
        return frames
    pipe.decode = decode


# ----------------------------------------------------------------------------------------------------------
# The worker (run as a script)


def _worker_network(ctx, work: Path) -> None:
    from cosmos_plugins.predict1.checkpoint import load_network
    from cosmos_plugins.predict1.offload import place

    net = load_network(work / "net.pt", NET, device="cpu", dtype=torch.float32, rope_mode="fp32")
    for scheme, attention in LAYOUTS[ctx.world_size]:
        for name, latent in LATENTS.items():
            cp = P.ContextParallel.create(ctx, NET, latent, scheme=scheme, attention=attention)
            x, t, emb, mask = net_inputs(latent)
            tables = net.prepare(*latent, 24.0)
            with torch.inference_mode():
                for batched in ((True, False) if scheme == "sequence" else (True,)):
                    fn = cp.model_fn(net, emb, 24.0, mask, tables, cfg_batched=batched)
                    f_c, f_u = fn(x, t)
                    f_cond, none = fn(x, t, uncond=False)  # an unguided step (guidance truncation)
                    assert none is None
                    torch.save({"f_c": f_c, "f_u": f_u, "f_cond": f_cond, "layout": cp.layout.reason},
                               work / f"net-{scheme}-{attention}-{name}-{int(batched)}-rank{ctx.rank}.pt")
    # the same under the memory engine's placements: blocks streamed through slots, the whole network swapped
    x, t, emb, mask = net_inputs(LATENTS["flat"])
    tables = net.prepare(*LATENTS["flat"], 24.0)
    for placement in ("stream", "swap"):
        placed = place(net, placement, "cpu", blocks=list(net.blocks.values()))
        cp = P.ContextParallel.create(ctx, NET, LATENTS["flat"], scheme="sequence", attention="auto")
        with torch.inference_mode(), placed.active() as live:
            f_c, f_u = cp.model_fn(live, emb, 24.0, mask, tables)(x, t)
        placed.close()
        torch.save({"f_c": f_c, "f_u": f_u}, work / f"net-{placement}-rank{ctx.rank}.pt")


def _worker_video(ctx, work: Path) -> None:
    from cosmos_cli.progress import NullProgress
    from cosmos_plugins.predict1.checkpoint import load_network
    from cosmos_plugins.predict1.offload import place
    from cosmos_plugins.predict1.specs import PREDICT1_TINY

    net_file = work / "ckpt" / PREDICT1_TINY.files[0].local
    if ctx.rank == 0:
        pipe = load_tiny_pipeline(work / "ckpt")
    else:  # the other ranks load the network only
        from cosmos_cli.planner import plan_memory
        from cosmos_plugins.predict1.pipeline import Predict1Pipeline

        plan = plan_memory(PREDICT1_TINY, None, strategy="resident", upsampler=False, guardrail=False)
        net = load_network(net_file, PREDICT1_TINY.network, device="cpu", dtype=torch.float32, rope_mode="fp32")
        pipe = Predict1Pipeline(PREDICT1_TINY, plan, torch.device("cpu"), net, None, None, numerics="fp32")
    out = work / f"video-{ctx.world_size}"
    out.mkdir(exist_ok=True)
    schemes = {}
    for job, (scheme, _) in zip(tiny_jobs(work / "input.png"), VIDEO_JOBS, strict=True):
        if scheme not in schemes:  # one ContextParallel per layout, reused by every job (batch)
            schemes[scheme] = P.ContextParallel.create(ctx, PREDICT1_TINY.network, P.latent_shape_of(PREDICT1_TINY),
                                                       cfg_batched=pipe.plan.cfg_batched, scheme=scheme)
        sink: dict = {}
        spy_decode(pipe, sink)
        pipe.cp = schemes[scheme]  # the pipeline's one executor, its stages shared through the run
        result = pipe.generate(job, NullProgress(), video_path=out / f"{job.name}.mp4",
                               prompt_path=out / f"{job.name}.txt")
        torch.save({"status": result.status, "video_path": result.video_path, "layout": schemes[scheme].layout,
                    **sink}, work / f"video-{ctx.world_size}-{job.name}-rank{ctx.rank}.pt")
        # the next job gets a freshly loaded network, streamed block by block: nothing distributed lives in it
        net = load_network(net_file, PREDICT1_TINY.network, device="cpu", dtype=torch.float32, rope_mode="fp32")
        pipe.network = place(net, "stream", "cpu", blocks=list(net.blocks.values()))


def _worker_rank0_failure(ctx, work: Path) -> None:
    """Rank 0 fails in a rank-0-only stage: the others get a FollowerExit at once, with its exit code."""
    def bad_input():
        raise InputError("missing.png: no such file")

    try:
        P.from_rank0(ctx, bad_input, "reading the input")
    except (InputError, P.FollowerExit) as exc:
        (work / f"rank0-failure-{ctx.world_size}-rank{ctx.rank}.txt").write_text(
            f"{type(exc).__name__}|{exc.exit_code}|{exc}")


def _worker_timeout(ctx, work: Path) -> None:
    """The other ranks never join rank 0's self-attention (a hung rank, as rank 0 sees it): with a 2 s step
    timeout, rank 0 reports it and goes on."""
    net = _module_net()
    cp = P.ContextParallel(replace(ctx, step_timeout_s=2.0, _groups={}),
                           P.choose_layout(ctx.world_size, NET, LATENTS["frames"], scheme="sequence"))
    if ctx.rank == 0:
        x, t, emb, mask = net_inputs(LATENTS["frames"])
        t0 = time.monotonic()
        try:
            with torch.inference_mode():
                cp.model_fn(net, emb, 24.0, mask, net.prepare(*LATENTS["frames"], 24.0))(x, t)
        except P.ParallelError as exc:
            (work / f"timeout-{ctx.world_size}.txt").write_text(f"{time.monotonic() - t0:.1f}|{exc}")


def _module_net():
    """NET with its default initialization (no checkpoint: the failure checks need no particular weights)."""
    from cosmos_plugins.predict1.network import VideoExtendGeneralDIT

    return VideoExtendGeneralDIT(NET, rope_mode="fp32").eval().requires_grad_(False)


def _worker_die(ctx, work: Path) -> None:
    """Rank 1 dies inside the network; rank 0 must stop with a message, not wait."""
    net = _module_net()
    if ctx.rank == 1:
        net.blocks.block1.register_forward_pre_hook(lambda module, args: os._exit(17))
    cp = P.ContextParallel.create(ctx, NET, LATENTS["frames"], scheme="sequence")
    x, t, emb, mask = net_inputs(LATENTS["frames"])
    with torch.inference_mode():
        cp.model_fn(net, emb, 24.0, mask, net.prepare(*LATENTS["frames"], 24.0))(x, t)


def worker_main(scenario: str, work: Path) -> int:
    torch.set_num_threads(1)
    ctx = None
    try:
        ctx = P.init_distributed(int(os.environ["WORLD_SIZE"]), device="cpu")
        if scenario == "all":
            _worker_network(ctx, work)
            _worker_video(ctx, work)
            _worker_rank0_failure(ctx, work)
            _worker_timeout(ctx, work)
        else:
            _worker_die(ctx, work)
    except CosmosError as exc:  # as cosmos_cli.app.main prints it
        if not P.quiet_on_this_rank(exc):
            print(f"error: {exc.message}", file=sys.stderr, flush=True)
        P.shutdown(ctx, ok=False)
        return exc.exit_code
    P.shutdown(ctx)
    return 0


# ----------------------------------------------------------------------------------------------------------
# Launching workers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Forked:
    """A worker forked from this process (the imports are already done: seconds saved per rank), with the
    ``Popen`` methods :func:`finish` uses; its stderr goes to a file."""

    def __init__(self, scenario: str, work: Path, env: dict[str, str], rank: int):
        import multiprocessing as mp

        self.err = work / f"stderr-{scenario}-{env['WORLD_SIZE']}-rank{rank}.txt"
        self.proc = mp.get_context("fork").Process(target=_forked_main, args=(scenario, work, env, self.err))
        self.proc.start()

    def poll(self) -> int | None:
        return self.proc.exitcode

    def kill(self) -> None:
        self.proc.kill()

    def communicate(self) -> tuple[None, str]:
        self.proc.join()
        self.returncode = self.proc.exitcode
        return None, self.err.read_text() if self.err.exists() else ""


def _forked_main(scenario: str, work: Path, env: dict[str, str], err: Path) -> None:
    os.environ.update(env)
    fd = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 2)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115 (the process ends with os._exit)
    code = worker_main(scenario, work)
    sys.stderr.flush()
    os._exit(code)


def start(n: int, scenario: str, work: Path, *, fork: bool = True, **env_extra: str) -> list:
    """Start n workers with the environment torchrun would give them: forked from this process, or (``fork``
    False) as fresh interpreters running this file, which also checks how a real process ends."""
    port = str(_free_port())
    procs = []
    for rank in range(n):
        env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "RANK": str(rank), "WORLD_SIZE": str(n),
               "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(n), "OMP_NUM_THREADS": "1",
               "COSMOS_DIST_TIMEOUT": "60", "COSMOS_DIST_STEP_TIMEOUT": "30", **env_extra}
        if fork:
            procs.append(Forked(scenario, work, env, rank))
        else:
            procs.append(subprocess.Popen([sys.executable, __file__, scenario, str(work)],
                                          env={**os.environ, "PYTHONPATH": str(REPO), **env}, cwd=REPO,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    return procs


def finish(procs: list[subprocess.Popen], deadline_s: float = RUN_DEADLINE_S, grace_s: float = 5.0):
    """Wait at most ``deadline_s``, and once a rank failed, ``grace_s`` more for the others; then kill what is
    left (as torchrun does). Returns [(returncode, or None if killed, stderr)] by rank and the seconds until the
    first rank exited."""
    t0, first_exit, first_failure = time.monotonic(), None, None
    while time.monotonic() - t0 < deadline_s and any(p.poll() is None for p in procs):
        now = time.monotonic() - t0
        if first_exit is None and any(p.poll() is not None for p in procs):
            first_exit = now
        if first_failure is None and any(p.poll() not in (None, 0) for p in procs):
            first_failure = now
        if first_failure is not None and now - first_failure > grace_s:
            break
        time.sleep(0.05)
    if first_exit is None:
        first_exit = time.monotonic() - t0
    results = []
    for p in procs:
        killed = p.poll() is None
        if killed:
            p.kill()
        _, err = p.communicate()
        results.append((None if killed else p.returncode, err))
    return results, first_exit


def _check_ok(results) -> None:
    for rank, (rc, err) in enumerate(results):
        assert rc == 0, f"rank {rank} exited with {rc}:\n{err[-3000:]}"


# ----------------------------------------------------------------------------------------------------------
# Fixtures: the files the workers read, the runs, and the one-process references


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    from cosmos_plugins.predict1.checkpoint import write_random_checkpoint
    from cosmos_plugins.predict1.specs import PREDICT1_TINY
    from tests.conftest import checkpoint_folder, make_image

    work = tmp_path_factory.mktemp("parallel")
    write_random_checkpoint(work / "net.pt", NET, seed=0)
    checkpoint_folder(work / "ckpt", PREDICT1_TINY, seed=0)
    make_image(work / "input.png", 40, 40)
    return work


@pytest.fixture(scope="module", params=[2, 4])
def run(request, work) -> int:
    """One run of n processes: the network checks, then two generations."""
    import cosmos_plugins.predict1.pipeline  # noqa: F401  (imported once here, before the workers fork)
    import cosmos_plugins.predict1.text_encoder  # noqa: F401

    n = request.param
    results, _ = finish(start(n, "all", work))
    _check_ok(results)
    return n


@pytest.fixture(scope="module")
def reference_videos(work) -> dict:
    """One process, the unchanged pipeline: latent and frames per job."""
    from cosmos_cli.progress import NullProgress

    pipe = load_tiny_pipeline(work / "ckpt")
    out = {}
    for job in tiny_jobs(work / "input.png"):
        sink: dict = {}
        spy_decode(pipe, sink)
        pipe.generate(job, NullProgress(), video_path=work / "reference" / f"{job.name}.mp4")
        out[job.name] = sink
    return out


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def bf16_ulps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """How many bf16 values lie between a and b, element by element (both rounded to bf16 first)."""
    def ordered(x: torch.Tensor) -> torch.Tensor:  # bf16 bit patterns as integers in the order of the values
        bits = x.bfloat16().view(torch.int16).int()
        return torch.where(bits < 0, -(bits & 0x7FFF), bits)
    return (ordered(a) - ordered(b)).abs()


# ----------------------------------------------------------------------------------------------------------
# The tests


def test_network_output_matches_one_process(run, work):
    from cosmos_plugins.predict1.checkpoint import load_network

    n = run
    net = load_network(work / "net.pt", NET, device="cpu", dtype=torch.float32, rope_mode="fp32")
    for scheme, attention in LAYOUTS[n]:
        for name, latent in LATENTS.items():
            x, t, emb, mask = net_inputs(latent)
            tables = net.prepare(*latent, 24.0)
            with torch.inference_mode():
                ref_c, ref_u = local_model_fn(net, emb, mask, tables, True)(x, t)
            for batched in ((True, False) if scheme == "sequence" else (True,)):
                for rank in range(n):
                    got = torch.load(work / f"net-{scheme}-{attention}-{name}-{int(batched)}-rank{rank}.pt")
                    what = f"{n} ranks, {got['layout']}, latent {name}, batched={batched}, rank {rank}"
                    # fp32 throughout: the ranks sum the same products in another order (split GEMMs, partial
                    # softmaxes merged). Reassociating a length-K fp32 sum moves it by at most K * 2^-24 of the
                    # sum of |terms|: K <= 128 here (model channels 64, MLP 128) gives 7.6e-6 worst case per
                    # layer, typically sqrt(K) * 2^-24 = 7e-7; a wrong merge or split is off by order one.
                    assert rel_err(got["f_c"], ref_c) < 1e-5, what
                    assert rel_err(got["f_u"], ref_u) < 1e-5, what
                    assert rel_err(got["f_cond"], ref_c) < 1e-5, what  # the prompt's branch alone, every group
    # under block streaming and swapping (the memory engine's placements) too
    x, t, emb, mask = net_inputs(LATENTS["flat"])
    with torch.inference_mode():
        ref_c, ref_u = local_model_fn(net, emb, mask, net.prepare(*LATENTS["flat"], 24.0), True)(x, t)
    for placement, rank in itertools.product(("stream", "swap"), range(n)):
        got = torch.load(work / f"net-{placement}-rank{rank}.pt")
        assert rel_err(got["f_c"], ref_c) < 1e-5 and rel_err(got["f_u"], ref_u) < 1e-5, (placement, rank)


def test_layouts_exercised(run, work):
    """The runs went through every attention: Ulysses, ring, local (cfg over 2) and both token splits."""
    n = run
    reasons = {torch.load(work / f"net-{s}-{a}-{name}-1-rank0.pt")["layout"]
               for s, a in LAYOUTS[n] for name in LATENTS}
    text = " | ".join(reasons)
    assert "Ulysses" in text and "ring attention" in text and "guidance branches" in text
    assert "latent frames in blocks" in text and "flattened" in text


def test_video_matches_one_process_and_only_rank0_writes(run, work, reference_videos):
    n = run
    layouts = set()
    for job in tiny_jobs(work / "input.png"):
        ref = reference_videos[job.name]
        for rank in range(n):
            got = torch.load(work / f"video-{n}-{job.name}-rank{rank}.pt", weights_only=False)
            assert got["status"] == "ok"
            layouts.add((got["layout"].scheme, got["layout"].attention))
            if rank == 0:
                # The sampler rounds the network's input to bf16 every step and returns a bf16 latent, so an fp32
                # reassociation difference (ring attention's partial-softmax merges, other GEMM splits) can move
                # a value across a bf16 rounding boundary: one ulp at a few elements (measured: 1 of 768, one
                # ulp, at 4 ranks with ring attention). A split or merge bug moves nearly every element by many.
                ulps = bf16_ulps(got["latent"], ref["latent"])
                assert ulps.max() <= 1 and (ulps > 0).float().mean() <= 0.05, (n, job.name, ulps.max(), ulps)
                # decoded in fp32 from latents one ulp apart: a uint8 pixel can round the other way
                diff = np.abs(got["frames"].astype(int) - ref["frames"].astype(int)).max()
                assert diff <= 1, (n, job.name, diff)
                assert got["video_path"] == work / f"video-{n}" / f"{job.name}.mp4"
            else:
                assert "frames" not in got and got["video_path"] is None  # followers decode and write nothing
    written = sorted(p.name for p in (work / f"video-{n}").iterdir())
    assert written == sorted(f"{j.name}.{ext}" for j in tiny_jobs(work / "input.png") for ext in ("mp4", "txt"))
    expected = {2: {("cfg", "local"), ("sequence", "ulysses")}, 4: {("cfg", "ulysses"), ("sequence", "ring")}}
    assert layouts == expected[n]


def test_rank0_failure_reaches_the_others(run, work):
    kinds = [(work / f"rank0-failure-{run}-rank{r}.txt").read_text().split("|", 2) for r in range(run)]
    assert kinds[0][:2] == ["InputError", "1"]
    for kind, code, message in kinds[1:]:
        assert (kind, code) == ("FollowerExit", "1")
        assert message == "rank 0 stopped in reading the input: missing.png: no such file"


def test_a_hung_rank_is_a_timeout_with_a_message(run, work):
    seconds, message = (work / f"timeout-{run}.txt").read_text().split("|", 1)
    assert 1.5 < float(seconds) < 20
    assert message.startswith("rank 0: lost contact with the other ranks (self-attention") and "timed out" in message


def test_a_dying_rank_stops_the_others_with_a_message(work):
    (rc0, err0), (rc1, _) = finish(start(2, "die", work, fork=False), deadline_s=45, grace_s=15)[0]
    assert rc1 == 17
    assert rc0 == 1, err0  # exited by itself, with the message main() prints
    assert "error: rank 0: lost contact with the other ranks (self-attention" in err0, err0


# -- one process: the layout rule, the launch checks, the attention pieces --------------------------------


FULL = (16, 88, 160)
P7B = DiTParams()
P14B = DiTParams(model_channels=5120, num_blocks=36, num_heads=40)


@pytest.mark.parametrize("params, n, scheme, group, attention", [
    (P7B, 2, "cfg", 1, "local"), (P14B, 2, "cfg", 1, "local"),
    (P7B, 4, "cfg", 2, "ulysses"), (P14B, 8, "cfg", 4, "ulysses"),
    (P7B, 5, "sequence", 5, "ring"), (P14B, 5, "sequence", 5, "ulysses"),
    (P7B, 10, "cfg", 5, "ring"), (P14B, 11, "sequence", 11, "ring"),
])
def test_layout_rule_at_full_size(params, n, scheme, group, attention):
    layout = P.choose_layout(n, params, FULL)
    assert (layout.scheme, layout.group_size, layout.attention) == (scheme, group, attention)
    assert layout.tokens == 56_320 and layout.reason.startswith(f"{n} GPUs")


def test_layout_follows_the_memory_plan_and_explicit_choices():
    lean = P.choose_layout(2, P7B, FULL, cfg_batched=False)
    assert (lean.scheme, lean.attention) == ("sequence", "ulysses")
    assert "one at a time" in lean.reason and "latent frames in blocks of 8" in lean.reason
    assert P.choose_layout(2, P7B, FULL, scheme="sequence", attention="ring").attention == "ring"
    assert P.choose_layout(1, P7B, FULL).scheme == "single"


@pytest.mark.parametrize("n", [3, 6, 7, 9])
def test_a_rank_count_that_does_not_divide_the_work_is_a_clear_error(n):
    with pytest.raises(UsageError) as e:
        P.choose_layout(n, P7B, FULL)
    assert f"{n} GPUs cannot split this job" in e.value.message and "56,320 tokens" in e.value.message
    assert "1, 2, 4, 5, 8, 10, 11, 16" in e.value.hint


def test_explicit_schemes_that_cannot_work_are_errors():
    with pytest.raises(UsageError, match="cfg scheme needs an even"):
        P.choose_layout(5, P7B, FULL, scheme="cfg")
    with pytest.raises(UsageError, match="Ulysses attention splits the 32 heads over 5"):
        P.choose_layout(5, P7B, FULL, attention="ulysses")
    with pytest.raises(UsageError, match="unknown parallel scheme"):
        P.choose_layout(2, P7B, FULL, scheme="tensor")


def test_launch_checks(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert P.init_distributed(1) is None
    with pytest.raises(UsageError, match="started by torchrun") as e:
        P.init_distributed(2)
    assert "torchrun --nproc_per_node=2" in e.value.hint
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(UsageError, match="--num-gpus 2 but torchrun started 4"):
        P.init_distributed(2)
    with pytest.raises(UsageError, match="--num-gpus 1 but torchrun started 4"):
        P.init_distributed(1)  # every rank would otherwise write the same file
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(P.dist, "is_nccl_available", lambda: False)
    with pytest.raises(MissingDependencyError, match="no NCCL"):
        P.init_distributed(2, device="cuda")
    monkeypatch.setenv(P.STEP_TIMEOUT_ENV, "soon")
    with pytest.raises(UsageError, match="not a number of seconds"):
        P.init_distributed(2, device="cpu")


def test_only_rank0_prints_shared_errors(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    assert P.quiet_on_this_rank(UsageError("bad flag")) and P.quiet_on_this_rank(P.FollowerExit("rank 0 stopped"))
    assert not P.quiet_on_this_rank(P.ParallelError("rank 1: lost contact"))
    assert not P.quiet_on_this_rank(RuntimeError("CUDA out of memory"))
    monkeypatch.setenv("RANK", "0")
    assert not P.quiet_on_this_rank(UsageError("bad flag"))


def test_the_step_cache_is_refused_under_context_parallelism():
    """Each rank would decide on its own tokens whether to skip the blocks: refused before any forward."""
    from types import SimpleNamespace

    from cosmos_cli.errors import GenerationError
    from cosmos_cli.fastmode import FastMode
    from cosmos_cli.jobs import GenerationJob
    from cosmos_cli.planner import plan_memory
    from cosmos_cli.progress import NullProgress
    from cosmos_plugins.predict1.pipeline import Predict1Pipeline
    from cosmos_plugins.predict1.specs import PREDICT1_TINY

    plan = plan_memory(PREDICT1_TINY, None, strategy="resident", upsampler=False, guardrail=False)
    pipe = Predict1Pipeline(PREDICT1_TINY, plan, torch.device("cpu"), None, None, None, cp=SimpleNamespace(),
                            fast=FastMode(step_cache=0.1))
    job = GenerationJob(visual_input=Path("in.png"), prompt="x", num_steps=2)
    with pytest.raises(GenerationError, match="step-cache is not available under context parallelism"):
        pipe.denoise(job, torch.zeros(1, 4, 2, 4, 4), 1, torch.zeros(2, 3, 8), NullProgress())


def test_partial_attention_merges_to_full_attention():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 10, 16, generator=g) for _ in range(3))
    full = F.scaled_dot_product_attention(q, k, v)
    out = lse = None
    for ks, vs in zip(k.split(4, dim=2), v.split(4, dim=2), strict=True):  # three uneven key blocks
        out, lse = P.merge_partial(out, lse, *P.attention_with_lse(q, ks, vs))
    assert torch.allclose(out, full, atol=1e-6)
    o_math, lse_math = _attention_with_lse_math(q, k, v, chunk=3)
    o_fused, lse_fused = P.attention_with_lse(q, k, v)
    assert torch.allclose(o_math, full, atol=1e-6) and torch.allclose(lse_math, lse_fused, atol=1e-5)


def test_latent_shape_of_specs():
    from cosmos_plugins.predict1.specs import PREDICT1_7B, PREDICT1_TINY

    assert P.latent_shape_of(PREDICT1_7B) == FULL
    assert P.latent_shape_of(PREDICT1_TINY) == (3, 4, 4)
    assert replace(P.choose_layout(2, PREDICT1_TINY.network, (3, 4, 4)), reason="").tokens == 12


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1], Path(sys.argv[2])))
