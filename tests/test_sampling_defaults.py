"""A checkpoint's recommended guidance (sampling_config.json): one contract that the engine, the CLI, the
HTTP API and the evaluation all start from, and that a caller's settings override."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from unimedvl.cli import main
from unimedvl.errors import CheckpointError, InputError
from unimedvl.model.sampling import SAMPLING_FILE, GuidanceOptions, SamplingDefaults

PROMPT = "A chest X-ray with pneumonia."
RECOMMENDED = {"text_to_image": {"text_scale": 7.0, "interval": [0.0, 1.0]}}


def test_layers_defaults_recommendation_and_overrides() -> None:
    defaults = SamplingDefaults.from_json_dict(RECOMMENDED)
    options = defaults.options("text_to_image")
    assert options.text_scale == 7.0 and options.interval == (0.0, 1.0) and options.timestep_shift == 3.0
    assert defaults.options("text_to_image", text_scale=2.0, num_timesteps=5).text_scale == 2.0
    assert defaults.options("editing") == GuidanceOptions.editing()  # nothing recommended for editing
    assert SamplingDefaults.from_json_dict(defaults.to_json_dict()) == defaults
    assert SamplingDefaults().options("text_to_image") == GuidanceOptions.text_to_image()
    assert SamplingDefaults().to_json_dict() == {}


@pytest.mark.parametrize("data, message", [
    ({"painting": {}}, "unknown kind(s) painting"),
    ({"text_to_image": [6.0]}, "must be a mapping"),
    ({"text_to_image": {"scale": 6.0}}, "unknown setting(s) scale"),
    ({"text_to_image": {"text_scale": -1}}, "scales must be >= 0"),
    ({"text_to_image": {"text_scale": "strong"}}, "text_scale must be a finite number"),
    ({"editing": {"interval": [0.5]}}, "two numbers"),
    ({"editing": {"interval": "wide"}}, "two numbers"),
    ({"text_to_image": {"num_timesteps": 1}}, "num_timesteps"),
])
def test_bad_recommendations_are_refused_by_name(data: dict, message: str) -> None:
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SamplingDefaults.from_json_dict(data)


@pytest.fixture()
def recommending(checkpoint_copy: Path) -> Path:
    (checkpoint_copy / SAMPLING_FILE).write_text(json.dumps(RECOMMENDED))
    return checkpoint_copy


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_generate_samples_with_the_checkpoints_recommendation(recommending: Path) -> None:
    from unimedvl.checkpoint.folder import load_checkpoint
    from unimedvl.inference.engine import UniMedVL

    engine = UniMedVL(load_checkpoint(recommending))
    assert engine.guidance("text_to_image").text_scale == 7.0 and engine.guidance("editing").text_scale == 4.0
    size = {"height": 32, "width": 32, "seed": 0}
    default = engine.generate(PROMPT, **size)
    recommended = engine.generate(PROMPT, guidance=GuidanceOptions.text_to_image(text_scale=7.0, interval=(0.0, 1.0)),
                                  **size)
    builtin = engine.generate(PROMPT, guidance=GuidanceOptions.text_to_image(), **size)
    assert np.array_equal(_pixels(default), _pixels(recommended))
    assert np.abs(_pixels(default) - _pixels(builtin)).max() > 0  # the file changed what generate draws


def test_a_bad_recommendation_file_is_named_before_the_weights_load(recommending: Path) -> None:
    from unimedvl.checkpoint.folder import load_checkpoint

    (recommending / SAMPLING_FILE).write_text(json.dumps({"text_to_image": {"text_scale": "x"}}))
    with pytest.raises(CheckpointError, match=f"{SAMPLING_FILE}: text_scale must be a finite number"):
        load_checkpoint(recommending)
    (recommending / SAMPLING_FILE).write_text("[1, 2]")
    with pytest.raises(Exception, match="must hold a JSON object"):
        load_checkpoint(recommending)


def test_cli_flags_override_only_what_they_name(recommending: Path, tmp_path: Path) -> None:
    def draw(*flags: str) -> np.ndarray:
        out = tmp_path / f"{len(list(tmp_path.iterdir()))}.png"
        assert main(["generate", PROMPT, "-o", str(out), "--height", "32", "--width", "32", "--steps", "3",
                     "-c", str(recommending), *flags]) == 0
        return _pixels(Image.open(out))

    default, same, weaker = draw(), draw("--cfg-text", "7"), draw("--cfg-text", "4")
    reset = draw("--cfg-text", "4", "--cfg-interval", "0.8,1.0")  # drops the guidance of the second step
    assert np.array_equal(default, same)
    assert np.abs(default - weaker).max() > 0 and np.abs(weaker - reset).max() > 0  # the file's interval stayed


def test_the_http_api_starts_from_the_recommendation(recommending: Path) -> None:
    from unimedvl.inference.engine import UniMedVL
    from unimedvl.serve.app import create_app
    from unimedvl.serve.settings import ServerSettings

    engine = UniMedVL.from_pretrained(recommending)
    with TestClient(create_app(engine, ServerSettings.tiny())) as client:
        def draw(**extra: object) -> np.ndarray:
            body = {"prompt": PROMPT, "size": "32x32", "num_inference_steps": 3, "seed": 0, **extra}
            response = client.post("/v1/images/generations", json=body)
            assert response.status_code == 200, response.text
            return _pixels(Image.open(io.BytesIO(base64.b64decode(response.json()["data"][0]["b64_json"]))))

        default, same, weaker = draw(), draw(guidance_scale=7.0), draw(guidance_scale=4.0)
        shown = client.get("/v1/models").json()["data"][0]["unimedvl"]["guidance"]
    assert np.array_equal(default, same) and np.abs(default - weaker).max() > 0
    assert shown["text_to_image"]["text_scale"] == 7.0 and shown["text_to_image"]["interval"] == [0.0, 1.0]
    assert shown["editing"] == GuidanceOptions.editing().to_json_dict()


def test_generation_eval_samples_as_generate_does_and_records_it(recommending: Path, tmp_path: Path) -> None:
    from unimedvl.assets import JUDGE
    from unimedvl.eval.features import JudgeExtractor
    from unimedvl.eval.generation_bench import evaluate_generation
    from unimedvl.inference.engine import UniMedVL

    engine, judge = UniMedVL.from_pretrained(recommending), JudgeExtractor.load(JUDGE)
    results = evaluate_generation(engine, judge, tmp_path / "a", seeds=2, steps=3, size=32)
    assert results["guidance"]["text_scale"] == 7.0 and results["guidance"]["interval"] == [0.0, 1.0]
    assert results["guidance"]["num_timesteps"] == 3
    told = evaluate_generation(engine, judge, tmp_path / "b", seeds=2, steps=3, size=32, guidance={"text_scale": 4.0})
    assert told["guidance"]["text_scale"] == 4.0 and told["guidance"]["interval"] == [0.0, 1.0]
    first = _pixels(Image.open(tmp_path / "a" / "images" / "mri-0-0.png"))
    assert np.abs(first - _pixels(Image.open(tmp_path / "b" / "images" / "mri-0-0.png"))).max() > 0


def test_the_shipped_model_recommends_what_its_curriculum_names() -> None:
    from unimedvl.assets import UNIMEDVL_TINY
    from unimedvl.train.curriculum import Curriculum

    recipe = Path(__file__).parents[1] / "recipes" / "unimedvl-tiny" / "curriculum.yaml"
    shipped = SamplingDefaults.from_checkpoint_dir(UNIMEDVL_TINY)
    assert shipped == Curriculum.from_yaml(recipe).sampling and shipped.options("text_to_image").text_scale == 6.0
