from __future__ import annotations

from dataclasses import fields

import pytest

from twopass.config import Settings
from twopass.exceptions import ConfigError


def test_defaults_point_at_the_committed_models() -> None:
    settings = Settings.from_env({})
    assert settings.fast_model.endswith("efficientnet-lite0-int8.onnx")
    assert settings.slow_model.endswith("efficientnet-lite2-fp32.onnx")
    # CUDA when it works, else the CPU: only a provider named without "?" is required.
    assert settings.providers == ("CUDAExecutionProvider?", "CPUExecutionProvider")


def test_environment_overrides_and_types() -> None:
    settings = Settings.from_env(
        {
            "TWOPASS_MAX_BATCH_SIZE": "32",
            "TWOPASS_JOB_TTL_DAYS": "0.5",
            "TWOPASS_PROVIDERS": "cuda, cpu",
            "TWOPASS_QUEUE_URL": "q",
        }
    )
    assert settings.max_batch_size == 32
    assert settings.job_ttl_seconds == 43200
    assert settings.providers == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert settings.queue_url == "q"


def test_bad_number_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="TWOPASS_TOP_K"):
        Settings.from_env({"TWOPASS_TOP_K": "five"})


def test_require_lists_missing_variables() -> None:
    with pytest.raises(
        ConfigError, match=r"TWOPASS_QUEUE_URL.*TWOPASS_TABLE_NAME|TWOPASS_TABLE_NAME.*TWOPASS_QUEUE_URL"
    ):
        Settings.from_env({}).require("queue_url", "table_name")


def test_every_setting_has_a_twopass_env_name() -> None:
    names = [f.metadata["env"] for f in fields(Settings)]
    assert all(n.startswith("TWOPASS_") for n in names)
    assert len(names) == len(set(names))
