"""Model families (patentqa/models): one module a family, and nothing outside them branches on a model type."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from patentqa.config import CONF_DIR, compose
from patentqa.models import FAMILIES, UnknownFamily, family

PACKAGE = Path(__file__).resolve().parents[1] / "patentqa"
# a model-type string compared or looked up by hand: == "qwen2_5_vl", in ("qwen3_vl", ...), {"qwen3_5": ...}
MODEL_TYPE_LITERAL = re.compile(r"""(==|!=|\bin\b|[{(,]\s*)\s*["'](%s)["']""" % "|".join(FAMILIES))


def test_no_stage_compares_model_type_strings() -> None:
    """Stages ask the family (``family_of(cfg.model)``); the family and tiny-model modules alone name types."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith(("models/", "tiny/")):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if MODEL_TYPE_LITERAL.search(code):
                offenders.append(f"{relative}:{number}: {line.strip()}")
    assert not offenders, "model-type strings outside patentqa/models:\n" + "\n".join(offenders)


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml")))
def test_every_model_config_belongs_to_a_family_and_takes_its_image_factor(name: str) -> None:
    model = compose([f"model={name}"]).model
    known = family(model.model_type)
    assert model.template in known.templates, (model.template, known.templates)
    assert model.image_factor == known.image_factor  # ${family:image_factor}: one place for the value


def test_an_unknown_model_type_is_one_clear_error() -> None:
    with pytest.raises(UnknownFamily, match="'llava' is not a model family patentqa knows .*patentqa/models/"):
        family("llava")


def test_budget_units_follow_the_family_loader() -> None:
    assert family("qwen2_5_vl").budget_env(1280, 4, 1003520) == {"MAX_PIXELS": "1003520"}
    assert family("qwen3_5").budget_env(1280, 4, 1310720) == {"IMAGE_MAX_TOKEN_NUM": "1280",
                                                              "IMAGE_MIN_TOKEN_NUM": "4"}
    assert family("qwen3_vl").processor_budget(1280) == 1280 * 32 * 32
