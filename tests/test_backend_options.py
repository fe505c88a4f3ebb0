"""A backend's own options cross the boundary typed (issue 17): ``Backend.Options`` (a frozen dataclass, empty in the
base) built by ``Backend.parse_options`` from the flags the user gave, refused in one line before anything loads,
and handed to ``start_parallel``/``build_pipeline`` as that object."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
from pathlib import Path

import pytest

from cosmos_cli.backend import Backend
from cosmos_cli.errors import GenerationError, UsageError
from cosmos_cli.generation import GenerateRequest
from cosmos_plugins.predict1 import Predict1Backend
from cosmos_plugins.predict1.options import ATTENTION, CP_SCHEMES, NUMERICS, Predict1Options
from cosmos_plugins.predict1.specs import PREDICT1_TINY
from tests.conftest import make_image

TINY = "predict1-tiny"


class _Bare(Backend):  # the base's options: none
    id = "bare"

    def models(self):
        return ()

    def build_pipeline(self, spec, plan, **kw):
        raise NotImplementedError


def test_the_base_has_no_options_and_refuses_any():
    assert dataclasses.fields(_Bare.parse_options({})) == ()
    assert _Bare.parse_options({}).key_params() == {}
    with pytest.raises(UsageError) as err:
        _Bare.parse_options({"cp_scheme": "cfg"})
    assert err.value.message == "--cp-scheme: the bare backend has no --cp-scheme option (it has no options of its own)"
    assert err.value.hint == "Drop --cp-scheme."


def test_predict1_options_are_typed_and_checked():
    assert Predict1Backend.parse_options({}) == Predict1Options("fp32", "auto")
    got = Predict1Backend.parse_options({"numerics": "original", "cp_scheme": "cfg"})
    assert isinstance(got, Predict1Options) and (got.numerics, got.cp_scheme) == ("original", "cfg")
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.numerics = "fp32"
    with pytest.raises(UsageError, match=r"^--numerics must be one of fp32, original, got 'fp16'$"):
        Predict1Backend.parse_options({"numerics": "fp16"})
    with pytest.raises(UsageError, match=r"^--cp-scheme must be one of auto, sequence, cfg, got 'ring'$"):
        Predict1Backend.parse_options({"cp_scheme": "ring"})
    with pytest.raises(UsageError, match=r"^--attention must be one of auto, sdpa, flash-attn-4, got 'flash3'$"):
        Predict1Backend.parse_options({"attention": "flash3"})
    with pytest.raises(UsageError, match=r"^--tiles: the predict1 backend has no --tiles option \(its options are "
                                         r"--numerics, --cp-scheme, --attention\)$"):
        Predict1Backend.parse_options({"tiles": 4})
    # the resume key counts the numerics (as before the options were typed), not the split nor the attention kernel
    assert got.key_params() == {"numerics": "original"}
    assert Predict1Backend.parse_options({"attention": "sdpa"}).key_params() == {"numerics": "fp32"}


def test_flash_attn_4_is_refused_for_a_split_generation_before_joining():
    """Before torchrun's rendezvous (start_parallel would otherwise join it): one line naming the flag."""
    with pytest.raises(UsageError, match=r"^--attention flash-attn-4: a generation split over GPUs \(--num-gpus 2\) "
                                         r"runs its own distributed attention$"):
        Predict1Backend().start_parallel(PREDICT1_TINY, 2, device="cpu", options=Predict1Options(attention="flash-attn-4"))


def test_predict1_choices_are_the_engines():
    """options.py imports no torch, so it writes the choices out; they must be the sampler's, the layout's and the
    attention kernels' (each one a name flash4.self_attention_kernel takes)."""
    import torch

    from cosmos_plugins.predict1 import flash4, parallel, sampler

    assert set(NUMERICS) == set(sampler.NUMERICS) and set(CP_SCHEMES) == set(parallel.SCHEMES)
    assert ATTENTION == ("auto", "sdpa", flash4.FLASH4_DIST)
    for choice in ("auto", "sdpa"):
        assert flash4.self_attention_kernel(torch.device("cpu"), torch.float32, 64, choice) is None
    with pytest.raises(ValueError, match="^flash-attn-4 cannot run here: the network runs on cpu$"):
        flash4.self_attention_kernel(torch.device("cpu"), torch.float32, 64, flash4.FLASH4_DIST)


def test_a_plugins_own_value_error_is_one_usage_line():
    class Picky(_Bare):
        id = "picky"

        @dataclasses.dataclass(frozen=True)
        class Options(Backend.Options):
            steps_per_frame: int = 1

            def __post_init__(self):
                if self.steps_per_frame < 1:
                    raise ValueError("must be at least 1")

    assert Picky.parse_options({"steps_per_frame": 3}).key_params() == {"steps_per_frame": 3}
    with pytest.raises(UsageError, match=r"^--steps-per-frame: must be at least 1$"):
        Picky.parse_options({"steps_per_frame": 0})


def test_request_values_are_read_only_hashable_and_picklable():
    req = GenerateRequest(input_path=Path("x.png"), prompt="p", backend_options={"numerics": "original"})
    assert dict(req.backend_options) == {"numerics": "original"}
    with pytest.raises(TypeError):
        req.backend_options["numerics"] = "fp32"  # type: ignore[index]
    assert hash(req) == hash(dataclasses.replace(req))
    assert pickle.loads(pickle.dumps(req)) == req  # (batch workers and Ray actors receive the request)


def test_predict1_resume_key_is_unchanged(tmp_path):
    """The key of a Predict1 line is the one of before the options were typed: ``numerics`` at top level, set
    when the flag is not given, and nothing for the split."""
    from cosmos_cli.batch import job_params
    from cosmos_cli.generation import make_job
    from cosmos_cli.specs import GUARDRAIL

    image = make_image(tmp_path / "in.png", 40, 40)
    for given, numerics in (({}, "fp32"), ({"numerics": "original", "cp_scheme": "cfg"}, "original")):
        req = GenerateRequest(input_path=image, prompt="a ball", disable_prompt_upsampler=True, backend_options=given)
        job = make_job(req, PREDICT1_TINY, "x")
        before = {**job.params(), "model": PREDICT1_TINY.name, "network_dir": None, "numerics": numerics,
                  "prompt_upsampler": False, "guardrail": PREDICT1_TINY.component(GUARDRAIL) is not None}
        blob = json.dumps(before, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        params, digest = job_params(job, PREDICT1_TINY, req)
        assert params == before and digest == hashlib.sha256(blob.encode("utf-8")).hexdigest()


# --- through main(), as a user runs it -----------------------------------------------------------------------------

def forbid_model_loads(monkeypatch) -> None:
    import cosmos_cli.generation as gen

    monkeypatch.setattr(gen, "load_pipeline", lambda *a, **k: pytest.fail("a model was loaded"))


def one_error(res) -> str:
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in res.stderr, res.stderr
    return errors[0]


@pytest.fixture
def image(tmp_path) -> Path:
    return make_image(tmp_path / "in.png", 40, 40)


@pytest.mark.parametrize("flags, said", [
    (("--numerics", "fp16"), "error: --numerics must be one of fp32, original, got 'fp16'"),
    (("--cp_scheme", "ring"), "error: --cp-scheme must be one of auto, sequence, cfg, got 'ring'"),  # the _ spelling
])
@pytest.mark.parametrize("command", ["generate", "batch"])
def test_predict1_bad_value_is_refused_before_loading(cli, image, tmp_path, monkeypatch, command, flags, said):
    forbid_model_loads(monkeypatch)
    out = tmp_path / "out"
    common = ("--model", TINY, "--disable-prompt-upsampler", "--device", "cpu", "--video-save-folder", str(out))
    if command == "generate":
        res = cli("generate", "-i", str(image), "--prompt", "a ball", *common, *flags)
    else:
        jsonl = tmp_path / "jobs.jsonl"
        jsonl.write_text(json.dumps({"visual_input": str(image), "prompt": "a ball"}) + "\n", encoding="utf-8")
        res = cli("batch", str(jsonl), *common, *flags)
    assert res.exit_code == 2 and one_error(res) == said, res.stderr
    assert not out.exists()  # not even the output folder: refused before the batch file was read


class _Stop(GenerationError):
    pass


def record_build(monkeypatch) -> list[dict]:
    """Record what Predict1Backend.build_pipeline receives, then stop the run (nothing is loaded)."""
    seen: list[dict] = []

    def build(self, spec, plan, **kw):
        seen.append(kw)
        raise _Stop("recorded")

    monkeypatch.setattr(Predict1Backend, "build_pipeline", build)
    return seen


@pytest.mark.parametrize("command", ["generate", "batch"])
def test_options_reach_build_pipeline_typed(cli, image, tmp_path, monkeypatch, command):
    from cosmos_cli.fastmode import FastMode

    seen = record_build(monkeypatch)
    jsonl = tmp_path / "jobs.jsonl"
    jsonl.write_text(json.dumps({"visual_input": str(image), "prompt": "a ball"}) + "\n", encoding="utf-8")
    base = ("--model", TINY, "--disable-prompt-upsampler", "--device", "cpu", "--video-save-folder",
            str(tmp_path / "out"), "--diffusion_transformer_dir", "Cosmos-Predict1-Tiny-Video2World")
    args = ("generate", "-i", str(image), "--prompt", "a ball", *base) if command == "generate" else ("batch", str(jsonl), *base)
    for extra, want in (((), Predict1Options()), (("--numerics", "original"), Predict1Options(numerics="original"))):
        seen.clear()
        res = cli(*args, *extra)
        assert res.exit_code == 1 and "recorded" in res.stderr, res.stderr
        (kw,) = seen
        assert type(kw["options"]) is Predict1Options and kw["options"] == want
        assert kw["parallel"] is None and kw["network_dir"] == "Cosmos-Predict1-Tiny-Video2World"
        assert kw["fast"] == FastMode() and kw["compile"] is False


def test_start_parallel_gets_the_typed_options(cli, image, tmp_path, monkeypatch):
    seen = []

    def start(self, spec, num_gpus, *, device, command="generate", options=None):
        seen.append((num_gpus, command, options))
        raise UsageError("recorded")

    monkeypatch.setattr(Predict1Backend, "start_parallel", start)
    forbid_model_loads(monkeypatch)
    res = cli("generate", "-i", str(image), "--prompt", "a ball", "--model", TINY, "--disable-prompt-upsampler",
              "--device", "cpu", "--video-save-folder", str(tmp_path / "out"), "--num-gpus", "2", "--cp-scheme", "cfg")
    assert res.exit_code == 2 and one_error(res) == "error: recorded", res.stderr
    assert seen == [(2, "generate", Predict1Options(cp_scheme="cfg"))]
