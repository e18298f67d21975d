"""Settings are declared once: the engine's defaults and `eeserve serve`'s flags come from
`service.settings.Settings` (its field defaults, types, choices and descriptions)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Literal, get_args, get_origin

import pytest

from service.engine.config import EngineConfig, ShadowConfig
from service.settings import Settings
from tools.commands import serve

SHADOW_FIELDS = {"rate": "shadow_rate", "max_rows": "shadow_max_rows",
                 "max_age_s": "shadow_max_age_s", "window": "shadow_window",
                 "confidence": "shadow_confidence", "min_support": "shadow_min_support",
                 "adapt": "adapt", "adapt_step": "adapt_step", "on_alarm": "on_alarm",
                 "fallback_keep": "fallback_keep"}


def test_every_engine_default_is_the_settings_default() -> None:
    fields = Settings.model_fields
    for f in dataclasses.fields(EngineConfig):
        if f.name in ("models", "shadow"):
            continue
        assert f.default == fields[f.name].default, f.name
    for ours, theirs in SHADOW_FIELDS.items():
        assert getattr(ShadowConfig(), ours) == fields[theirs].default, ours


def test_the_engine_config_of_default_settings_is_the_default_engine_config() -> None:
    assert EngineConfig.from_settings(Settings(_env_file=None)) == EngineConfig(models=())


def _parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser()
    serve.add_parser(root.add_subparsers())
    return root


def test_serve_flags_leave_unset_settings_to_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EESERVE_QUEUE_LIMIT", "7")
    args = _parser().parse_args(["serve", "--backend", "onnx", "--max-batch-size", "4"])
    s = serve.settings_from(args)
    assert (s.backend, s.max_batch_size, s.queue_limit) == ("onnx", 4, 7)


@pytest.mark.parametrize("name", serve.FLAGS)
def test_each_flag_takes_its_type_and_choices_from_settings(name: str) -> None:
    action = next(a for a in _parser()._subparsers._group_actions[0].choices["serve"]._actions
                  if a.dest == name)
    ann = Settings.model_fields[name].annotation
    options = [ann, *get_args(ann)]  # X or X | None
    literal = next((o for o in options if get_origin(o) is Literal), None)
    if literal is not None:
        count = ["N"] if int in options else []  # int | Literal["auto"]: a count or a word
        assert action.metavar == "{" + ",".join([*count, *get_args(literal)]) + "}"
    elif int in options or float in options:
        assert action.type in (int, float)
    assert f"EESERVE_{name.upper()}" in (action.help or "")
