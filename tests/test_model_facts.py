"""What the core reads from a model's spec rather than knowing Predict1 (issue 17): the negative prompt, the
post-trained folder suffixes, the download script's model types and the conversions."""

from __future__ import annotations

import pytest

from cosmos_cli import download as dl
from cosmos_cli.errors import UnknownModelError, UsageError
from cosmos_cli.generation import GenerateRequest, make_job, resolve_model
from cosmos_cli.specs import Conversion
from cosmos_plugins.predict1.pixtral_convert import PIXTRAL_12B
from cosmos_plugins.predict1.specs import DEFAULT_NEGATIVE_PROMPT, PREDICT1_7B, PREDICT1_DEMO, SPECS
from tests.conftest import FakeBackend, fake_spec, make_image

ORIGINAL_START = "The video captures a series of frames showing ugly scenes"


@pytest.fixture
def registered(register_backend):
    """Register a FakeBackend with the given specs for one test."""
    return lambda *specs: register_backend(FakeBackend(specs))


def test_every_predict1_model_carries_the_originals_facts():
    assert DEFAULT_NEGATIVE_PROMPT.startswith(ORIGINAL_START) and DEFAULT_NEGATIVE_PROMPT.endswith("poor quality.")
    for spec in SPECS.values():
        assert spec.default_negative_prompt == DEFAULT_NEGATIVE_PROMPT
        assert spec.network_dir_suffixes == ("_post-trained", "-post-trained")
        assert spec.model_type == "Video2World"
    assert PIXTRAL_12B in PREDICT1_7B.conversions


def test_the_negative_prompt_default_is_the_models(tmp_path):
    image = make_image(tmp_path / "in.png", 32, 32)
    fake = fake_spec()  # declares none
    assert make_job(GenerateRequest(image, "p"), fake, "out").negative_prompt == ""
    assert make_job(GenerateRequest(image, "p"), PREDICT1_DEMO, "out").negative_prompt == DEFAULT_NEGATIVE_PROMPT
    given = GenerateRequest(image, "p", negative_prompt="blur")
    assert make_job(given, PREDICT1_DEMO, "out").negative_prompt == "blur"
    assert make_job(GenerateRequest(image, "p", negative_prompt=""), PREDICT1_DEMO, "out").negative_prompt == ""


def test_a_post_trained_folder_names_its_model():
    assert resolve_model(None, "checkpoints/Cosmos-Predict1-7B-Video2World_post-trained") is PREDICT1_7B
    assert resolve_model(None, "ck/Cosmos-Predict1-7B-Video2World-post-trained") is PREDICT1_7B
    with pytest.raises(UnknownModelError, match="'Nope'"):  # the suffix dropped, as before
        resolve_model(None, "ck/Nope_post-trained")


def test_a_backends_own_suffixes_and_model_types(registered):
    registered(fake_spec("Other-Model", aliases=("other",), network_dir_suffixes=("@tuned",),
                         model_type="Image2World", other_model_types=("Sound2World",)))
    assert resolve_model(None, "ck/Other-Model@tuned").name == "Other-Model"
    assert [s.name for s in dl.resolve_models(["other"], ["image2world"])] == ["Other-Model"]
    assert [s.name for s in dl.resolve_models(["other", "Video2World"])] == ["Other-Model"]
    with pytest.raises(UsageError, match=r"cosmos runs (Image2World and Video2World|Video2World and Image2World) models"):
        dl.resolve_models(["other", "Sound2World"])  # a type its spec names: refused by name, not "unknown model"


def test_conversions_are_found_through_the_registered_specs(registered):
    assert dl.CONVERSIONS["pixtral-12b"] is PIXTRAL_12B
    assert "made-up" not in dl.CONVERSIONS
    mine = Conversion("made-up", run=lambda inputs, outputs: None, check=lambda outputs: [])
    registered(fake_spec("Conv-Model", conversions=(mine,)))
    assert dl.CONVERSIONS["made-up"] is mine and dl.registered_conversions()["pixtral-12b"] is PIXTRAL_12B
