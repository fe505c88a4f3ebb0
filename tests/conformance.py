"""The backend conformance battery: what every registered backend's tiny spec must do, written once.

A backend gets the battery by subclassing :class:`BackendConformance` in a ``tests/test_conformance_<id>.py``
(diffusers' tester-mixin pattern): set ``model`` (the tiny spec's name) and implement ``write_checkpoint`` (every
file the spec needs, written in the real formats). The battery then runs, through the core's public surface only:

* the CLI round trip (``cosmos backends`` lists it, ``cosmos validate`` checks a batch file for it, ``cosmos
  memory-plan`` plans it, ``cosmos generate`` writes the mp4 and the prompt's .txt), all through
  :func:`cosmos_cli.app.main` as a user runs it;
* checkpoint strictness: a missing and an unexpected key in the network's checkpoint are each refused with one
  error line naming the key;
* offload-placement equivalence: under every strategy the spec declares (``ModelSpec.strategies``), the backend's
  pipeline gives the resident strategy's frames (the bound of tests/test_offload.py); every other strategy is
  refused by the planner in one line naming the declared ones, and neither ``auto`` nor ``memory-plan`` offers it;
* parallel equivalence: a backend that splits a generation (it overrides ``Backend.start_parallel``) run as
  ``torchrun --nproc_per_node=2 ... cosmos generate --num-gpus 2 --device cpu`` (gloo, one launch of
  tests/torchrun_cosmos.py, ~10-15 s) writes one output set, rank 0's, whose frames are the one-process ones within
  a rounding step; one that does not (the base ``start_parallel``) refuses ``--num-gpus 2`` under torchrun's launch
  variables in one line on rank 0 (exit 2, silence on rank 1) before anything loads or is written. A plain
  process given ``--num-gpus 2`` is refused in one line either way.

A subclass lists in ``expected_failures`` the battery tests (``"test_name"`` or ``"test_name[param]"``) its backend
cannot pass because of the core, each with the reason and the exception it then fails with: they run as
``xfail(strict=True, raises=...)``, so the day the core is fixed they fail until the entry is removed.

The torchrun launch is the battery's only one (tests/test_parallel_cli.py keeps the other splits, Predict1's own:
the token split, four ranks, batch, a dying rank); the layer-level numerics of a split are tests/test_parallel.py's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from cosmos_cli.backend import Backend
from cosmos_cli.errors import MemoryPlanError
from cosmos_cli.planner import plan_memory, strategies_for
from cosmos_cli.specs import GUARDRAIL, NETWORK, UPSAMPLER, ModelSpec
from cosmos_plugins.predict1.strategies import STRATEGY_NAMES
from tests.conftest import LAUNCH_VARS, can_torchrun, make_image, run_cli, torchrun

PROMPT = "a red ball rolls to the left"


class BackendConformance:
    """Mixin: subclass it as ``class TestConformanceX(BackendConformance)`` with ``model`` set."""

    model: ClassVar[str] = ""  # the tiny spec's name (hidden specs are fine)
    num_steps: ClassVar[int] = 2  # sampler steps of every generation the battery runs
    # battery test id -> (why the core keeps this backend from passing it, the exception it then fails with): run
    # as xfail(strict=True, raises=...), so neither a pass nor any other failure goes unnoticed
    expected_failures: ClassVar[dict[str, tuple[str, type[BaseException]]]] = {}
    # the strategy names the battery tries (Predict1's, the fullest list there is): those the spec declares must give
    # the resident output, the others must be refused before anything loads
    strategy_names: ClassVar[tuple[str, ...]] = STRATEGY_NAMES
    # what rank 0 says of the layout when the tiny spec's generation is split over two ranks (checked when set)
    split_says: ClassVar[str] = ""

    def exact(self, plan) -> bool:
        """Whether ``plan`` runs the very kernels the resident plan runs, so that its frames must be equal bit for
        bit (the rule of tests/test_offload.py: both guidance branches batched and the network in no variant of its
        forward, ``MemoryPlan.variant``; a backend whose placements only move weights overrides this to always
        True)."""
        return plan.cfg_batched and plan.variant(NETWORK) is None

    def write_checkpoint(self, root: Path) -> None:
        """Write every file the tiny spec needs under ``root`` (random weights, the real formats)."""
        raise NotImplementedError

    # --- collection: strategies as parameters, expected failures as strict xfails ---------------------------------

    def pytest_generate_tests(self, metafunc):
        if "strategy" in metafunc.fixturenames:
            metafunc.parametrize("strategy", [
                pytest.param(s, marks=self._xfail(f"{metafunc.function.__name__}[{s}]")) for s in self.strategy_names
                if s != "resident"])

    def _xfail(self, test_id: str):
        if test_id not in self.expected_failures:
            return []
        reason, raises = self.expected_failures[test_id]
        return [pytest.mark.xfail(strict=True, reason=reason, raises=raises)]

    @pytest.fixture(autouse=True)
    def _expected_failure(self, request):
        """Unparametrized battery tests named in ``expected_failures`` (strategies are marked at collection)."""
        if "strategy" not in request.fixturenames:
            for mark in self._xfail(request.node.originalname):
                request.applymarker(mark)

    # --- fixtures ---------------------------------------------------------------------------------------------------

    @pytest.fixture(scope="class")
    def found(self):
        from cosmos_cli.registry import find_model

        return find_model(self.model)

    @pytest.fixture(scope="class")
    def spec(self, found) -> ModelSpec:
        return found[1]

    @pytest.fixture(scope="class")
    def ckpt(self, tmp_path_factory) -> Path:
        root = tmp_path_factory.mktemp("conformance-ckpt")
        self.write_checkpoint(root)
        return root

    @pytest.fixture(scope="class")
    def image(self, spec, tmp_path_factory) -> Path:
        # a little off the model's size, so the input is resized as a user's would be
        return make_image(tmp_path_factory.mktemp("conformance-in") / "scene.png", spec.height + 8, spec.width + 8)

    def _skip_flags(self, spec: ModelSpec) -> tuple[str, ...]:
        """Leave out the models a tiny spec lists but a test need not run (the upsampler, the guardrails)."""
        return ((("--disable-prompt-upsampler",) if spec.component(UPSAMPLER) else ())
                + (("--disable-guardrail",) if spec.component(GUARDRAIL) else ()))

    def _upsampler_flag(self, spec: ModelSpec) -> tuple[str, ...]:
        return ("--disable-prompt-upsampler",) if spec.component(UPSAMPLER) else ()

    def _generate_args(self, spec, ckpt, image, out, *extra) -> list[str]:
        return ["generate", "--model", self.model, "--checkpoint-dir", str(ckpt), "--video-save-folder", str(out),
                "-i", str(image), "--prompt", PROMPT, "--device", "cpu", "--num-steps", str(self.num_steps),
                *self._skip_flags(spec), *extra]

    def _generate(self, spec, ckpt, image, out, *extra):
        return run_cli(*self._generate_args(spec, ckpt, image, out, *extra))

    @pytest.fixture(scope="class")
    def one_process(self, spec, ckpt, image, tmp_path_factory):
        """``cosmos generate`` in this process, as a user runs it: the result, its folder and the frames handed to
        :func:`cosmos_cli.media.write_video` (before the lossy H.264 encoding)."""
        import cosmos_cli.media as media

        out = tmp_path_factory.mktemp("one-process")
        written, original = [], media.write_video

        def catch(path, frames, *args, **kwargs):
            frames = frames if isinstance(frames, np.ndarray) else np.stack(list(frames))
            written.append(frames.copy())
            return original(path, frames, *args, **kwargs)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(media, "write_video", catch)
            res = self._generate(spec, ckpt, image, out)
        return res, out, written

    # --- the CLI round trip -----------------------------------------------------------------------------------------

    def test_backends_lists_it(self, found):
        backend, spec = found
        res = run_cli("backends", "--json", "--all")
        assert res.exit_code == 0, res.stderr
        rows = {b["backend"]: b for b in res.json()["backends"]}
        assert rows[backend.id]["version"] == backend.version
        assert spec.name in [m["name"] for m in rows[backend.id]["models"]]

    def test_validate_checks_a_batch_file_for_it(self, spec, image, tmp_path):
        good = tmp_path / "good.jsonl"
        good.write_text(json.dumps({"visual_input": str(image), "prompt": PROMPT}) + "\n", encoding="utf-8")
        res = run_cli("validate", str(good), "--model", self.model, "--json", *self._upsampler_flag(spec))
        assert res.exit_code == 0, res.stderr + res.stdout
        bad_frames = max(spec.input_frames) + 1  # more input frames than the spec accepts
        bad = tmp_path / "bad.jsonl"
        bad.write_text(good.read_text() + json.dumps({"visual_input": str(image), "prompt": PROMPT,
                                                      "num_input_frames": bad_frames}) + "\n", encoding="utf-8")
        res = run_cli("validate", str(bad), "--model", self.model, *self._upsampler_flag(spec))
        assert res.exit_code == 1 and f"{bad}:2" in res.stdout + res.stderr, res.stdout + res.stderr

    def test_memory_plan_plans_every_component_and_stage(self, spec):
        res = run_cli("memory-plan", "--model", self.model, "--vram", "80GB", "--offload", "resident", "--json")
        assert res.exit_code == 0, res.stderr
        plan = res.json()
        assert plan["model"] == spec.name and plan["strategy"] == "resident" and plan["fits"]
        assert sorted(c["name"] for c in plan["components"]) == sorted(c.name for c in spec.components)
        # every stage a component runs in has a predicted peak, holding at least the weights resident in it
        peaks = {s["stage"]: s["bytes"] for s in plan["stage_peaks"]}
        for c in spec.components:
            for stage in c.stages:
                assert peaks.get(stage, 0) >= c.weight_bytes, (c.name, stage, peaks)

    def test_memory_plan_offers_only_the_declared_strategies(self, spec):
        names = [s.name for s in strategies_for(spec)]
        assert names == [s.name for s in spec.strategies]
        for vram in ("80GB", "1GB", "1MB"):  # the fastest fits, and (for a spec that lists more) leaner ones or none
            res = run_cli("memory-plan", "--model", self.model, "--vram", vram, "--json")
            assert res.exit_code in (0, 1), res.stderr
            plan = res.json()
            assert [s["name"] for s in plan["strategies"]] == names and plan["strategy"] in names, (vram, plan)

    def _check_output_set(self, spec, folder: Path) -> None:
        """``folder`` holds one video of the spec's size and frame rate and the prompt's .txt, nothing else."""
        from cosmos_cli.media import probe

        info = probe(folder / "output.mp4")
        assert (info.kind, info.num_frames, info.width, info.height) == ("video", spec.num_frames, spec.width,
                                                                         spec.height)
        assert info.fps == pytest.approx(spec.fps)
        assert (folder / "output.txt").read_text(encoding="utf-8") == PROMPT
        assert sorted(p.name for p in folder.iterdir()) == ["output.mp4", "output.txt"]  # no temporary files left

    def test_generate_writes_the_video_and_the_prompt(self, spec, one_process):
        res, folder, written = one_process
        assert res.exit_code == 0, res.stderr
        assert Path(res.stdout.strip()) == folder / "output.mp4"
        self._check_output_set(spec, folder)
        assert len(written) == 1, "the pipeline must write its video through cosmos_cli.media.write_video"

    def test_a_split_outside_torchrun_is_refused(self, spec, ckpt, image, tmp_path):
        """The cheap end of the parallel contract: ``--num-gpus 2`` in one plain process is refused before anything
        loads, with one line (a backend that splits needs torchrun; one that cannot says so)."""
        res = self._generate(spec, ckpt, image, tmp_path, "--num-gpus", "2")
        assert res.exit_code in (1, 2) and "Traceback" not in res.stderr, res.stderr
        assert len([line for line in res.stderr.splitlines() if line.startswith("error:")]) == 1, res.stderr
        assert not list(tmp_path.iterdir())

    # --- parallel equivalence ------------------------------------------------------------------------------------

    def test_a_split_generation_is_the_one_process_video(self, found, ckpt, image, one_process, tmp_path,
                                                         monkeypatch):
        """A backend that splits: two gloo ranks write one output set (rank 0's: one line on stdout, one video and
        one .txt, one call of write_video) whose frames are the one-process ones within the bound of
        tests/test_parallel.py. fp32 math in another order (one guidance branch per rank, other GEMM shapes) can
        move a bf16 latent across a rounding boundary, one ulp at a few elements, which decodes to a pixel rounded
        the other way: <= 1 of 255; a wrong split is off by order one. Equal frames give the same mp4 bytes.

        A backend that does not split (the base ``Backend.start_parallel``): under torchrun's launch variables
        ``--num-gpus 2`` is refused on rank 0 in one line, exit 2, and the other rank exits 0 in silence (rank 0
        speaks for both), before anything loads or is written."""
        backend, spec = found
        out = tmp_path / "out"
        if type(backend).start_parallel is Backend.start_parallel:
            monkeypatch.setattr(type(backend), "build_pipeline", lambda *a, **k: pytest.fail("a model was loaded"))
            for var in LAUNCH_VARS:
                monkeypatch.delenv(var, raising=False)
            monkeypatch.setenv("WORLD_SIZE", "2")
            for rank in ("0", "1"):
                monkeypatch.setenv("RANK", rank)
                monkeypatch.setenv("LOCAL_RANK", rank)
                res = self._generate(spec, ckpt, image, out, "--num-gpus", "2")
                errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
                if rank == "0":
                    assert res.exit_code == 2 and "Traceback" not in res.stderr, res.stderr
                    assert len(errors) == 1 and backend.id in errors[0], res.stderr
                else:
                    assert (res.exit_code, res.stdout, res.stderr) == (0, "", "")
                assert not out.exists()
            return
        if not can_torchrun():
            pytest.skip("torchrun needs POSIX and torch.distributed")
        ref_res, ref_folder, ref_written = one_process
        assert ref_res.exit_code == 0, ref_res.stderr
        proc, _ = torchrun(2, self._generate_args(spec, ckpt, image, out, "--num-gpus", "2"), script=True,
                           COSMOS_TEST_WRITES=str(tmp_path))
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == [], proc.stderr[-3000:]
        assert proc.stdout.splitlines() == [str(out / "output.mp4")]  # only rank 0 prints the result
        self._check_output_set(spec, out)
        assert sorted(p.name for p in tmp_path.glob("written-*.npy")) == ["written-rank0-0.npy"]  # rank 0 writes
        frames, reference = np.load(tmp_path / "written-rank0-0.npy"), ref_written[0]
        assert frames.shape == reference.shape == (spec.num_frames, spec.height, spec.width, 3)
        pixels = int(np.abs(frames.astype(int) - reference.astype(int)).max())
        assert pixels <= 1, pixels
        if pixels == 0:
            assert (out / "output.mp4").read_bytes() == (ref_folder / "output.mp4").read_bytes()
        if self.split_says:  # rank 0 says how the work is split (rich wraps lines)
            assert self.split_says in " ".join(proc.stderr.split()), proc.stderr[-3000:]

    # --- checkpoint strictness ---------------------------------------------------------------------------------------

    def _network_file(self, spec: ModelSpec) -> str:
        files = spec.files_of(NETWORK)
        assert files, f"{spec.name} lists no {NETWORK} checkpoint file"
        return files[0].local

    def _edited_checkpoint(self, spec, ckpt, tmp_path, edit) -> tuple[Path, str]:
        """A copy of ``ckpt`` whose network file's state dict went through ``edit`` (returns the key it names)."""
        import torch

        root = tmp_path / "ckpt"
        shutil.copytree(ckpt, root)
        path = root / self._network_file(spec)
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file, save_file

            state = load_file(path)
            key = edit(state)
            save_file(state, path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            inner = next((state[k] for k in ("model", "state_dict") if isinstance(state.get(k), dict)), state)
            key = edit(inner)
            torch.save(state, path)
        return root, key

    def _refused_naming(self, res, key: str, what: str) -> None:
        assert res.exit_code == 1, (res.exit_code, res.stderr)
        assert "Traceback" not in res.stderr
        errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and what in errors[0] and key in errors[0], res.stderr

    def test_a_missing_network_key_is_refused(self, spec, ckpt, image, tmp_path):
        def drop(state):
            key = sorted(k for k in state if k.endswith("weight"))[-1]  # a weight the network certainly has
            del state[key]
            return key

        root, key = self._edited_checkpoint(spec, ckpt, tmp_path, drop)
        self._refused_naming(self._generate(spec, root, image, tmp_path / "out"), key, "missing")
        assert not (tmp_path / "out" / "output.mp4").exists()

    def test_an_unexpected_network_key_is_refused(self, spec, ckpt, image, tmp_path):
        import torch

        def add(state):
            state["conformance_unexpected.weight"] = torch.zeros(2)
            return "conformance_unexpected.weight"

        root, key = self._edited_checkpoint(spec, ckpt, tmp_path, add)
        self._refused_naming(self._generate(spec, root, image, tmp_path / "out"), key, "unexpected")
        assert not (tmp_path / "out" / "output.mp4").exists()

    # --- offload-placement equivalence -------------------------------------------------------------------------------

    def _frames_under(self, found, ckpt, image, strategy: str, tmp_path: Path, monkeypatch) -> tuple[np.ndarray, object]:
        """The frames the backend's pipeline writes for one job under ``strategy`` (caught on their way into
        :func:`cosmos_cli.media.write_video`, before the lossy H.264 encoding), and the plan."""
        import cosmos_cli.media as media
        from cosmos_cli.jobs import GenerationJob
        from cosmos_cli.progress import NullProgress

        backend, spec = found
        plan = plan_memory(spec, None, strategy=strategy, upsampler=False, guardrail=False)
        job = GenerationJob(visual_input=image, prompt=PROMPT, num_steps=self.num_steps, seed=3, fps=spec.fps,
                            guidance=spec.guidance, num_input_frames=spec.default_input_frames)
        written = []
        original = media.write_video

        def catch(path, frames, *args, **kwargs):
            frames = np.stack(list(frames)) if not isinstance(frames, np.ndarray) else frames
            written.append(frames.copy())
            return original(path, frames, *args, **kwargs)

        monkeypatch.setattr(media, "write_video", catch)
        pipe = backend.build_pipeline(spec, plan, checkpoint_dir=ckpt, device="cpu")
        try:
            result = pipe.generate(job, NullProgress(), video_path=tmp_path / f"{strategy}.mp4")
        finally:
            pipe.close()
        assert result.status == "ok", result.message
        assert len(written) == 1, "the pipeline must write its video through cosmos_cli.media.write_video"
        assert written[0].shape == (spec.num_frames, spec.height, spec.width, 3)
        return written[0], plan

    @pytest.fixture(scope="class")
    def resident_frames(self, found, ckpt, image, tmp_path_factory):
        with pytest.MonkeyPatch.context() as mp:
            return self._frames_under(found, ckpt, image, "resident", tmp_path_factory.mktemp("resident"), mp)[0]

    def test_every_strategy_gives_the_resident_output(self, found, ckpt, image, resident_frames, strategy, tmp_path,
                                                      monkeypatch):
        """The bound of tests/test_offload.py: a strategy that runs the resident kernels (:meth:`exact`) only moves
        weights, so the frames are equal bit for bit; one guidance branch at a time or a lean forward changes the
        shapes the kernels see, and fp32 rounding flips a bf16 latent by one ulp here and there, which decodes to
        pixels a rounding step or two apart (<= 2 of 255). A strategy the spec does not declare is refused by the
        planner before anything loads, in one line naming the ones it declares."""
        declared = [s.name for s in strategies_for(found[1])]
        if strategy not in declared:
            with pytest.raises(MemoryPlanError) as refused:
                plan_memory(found[1], 80 << 30, strategy=strategy, upsampler=False, guardrail=False)
            message = str(refused.value)
            assert "\n" not in message and strategy in message and all(n in message for n in declared), message
            return
        frames, plan = self._frames_under(found, ckpt, image, strategy, tmp_path, monkeypatch)
        pixels = int(np.abs(frames.astype(int) - resident_frames.astype(int)).max())
        assert pixels == 0 if self.exact(plan) else pixels <= 2, (strategy, pixels)
