"""Settings from the environment, the CLI's overrides, the metrics text format, device checks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from service.app import StartupError, create_app
from service.cli import parse_args, settings_from_args
from service.metrics import Registry
from service.settings import HeatmapMode, Settings
from tests.service.conftest import make_settings


def test_settings_read_the_patchcore_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PATCHCORE_INDEX_DIR", str(tmp_path))
    monkeypatch.setenv("PATCHCORE_MAX_UPLOAD_BYTES", "1234")
    monkeypatch.setenv("PATCHCORE_DEFAULT_HEATMAP", "overlay")
    monkeypatch.setenv("PATCHCORE_API_KEY", "s3cr3t-value")
    monkeypatch.setenv("PATCHCORE_PORT", "9001")
    s = Settings()
    assert (s.index_dir, s.max_upload_bytes, s.default_heatmap, s.port) == (tmp_path, 1234, HeatmapMode.overlay, 9001)
    assert s.api_key.get_secret_value() == "s3cr3t-value" and "s3cr3t" not in repr(s)
    assert s.threads >= 1 and s.device == "cpu"


def test_settings_refuse_bad_values_and_unknown_names(tmp_path, monkeypatch):
    with pytest.raises(ValidationError, match="device must be"):
        Settings(index_dir=tmp_path, device="gpu")
    with pytest.raises(ValidationError):
        Settings(index_dir=tmp_path, max_upload_bytes=0)
    with pytest.raises(ValidationError):
        Settings(index_dir=tmp_path, default_heatmap="jpeg")
    with pytest.raises(ValidationError, match="extra"):
        Settings(index_dir=tmp_path, max_uplaod_bytes=5)  # a typo is an error, not silently dropped
    monkeypatch.setenv("PATCHCORE_API_KEY", "")
    assert Settings(index_dir=tmp_path).api_key is None  # empty means "no key"


def test_settings_round_trip_through_the_environment(monkeypatch, tmp_path):
    s = Settings(index_dir=tmp_path, api_key="k", threads=3, default_heatmap="png", warmup=False, port=1)
    for key, value in s.to_env().items():
        monkeypatch.setenv(key, value)
    assert Settings() == s


def test_cli_arguments_override_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PATCHCORE_INDEX_DIR", "/nowhere")
    monkeypatch.setenv("PATCHCORE_PORT", "9001")
    s = settings_from_args(parse_args(["--index-dir", str(tmp_path), "--threads", "2", "--host", "0.0.0.0"]))
    assert (s.index_dir, s.threads, s.host, s.port) == (tmp_path, 2, "0.0.0.0", 9001)
    monkeypatch.delenv("PATCHCORE_THREADS", raising=False)
    s = settings_from_args(parse_args(["--index-dir", str(tmp_path), "--workers", "2"]))
    assert s.workers == 2 and s.threads == max(1, Settings(index_dir=tmp_path).threads // 2)


def test_cuda_without_a_gpu_stops_startup(disc_dir, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(StartupError, match="torch sees no CUDA device; use --device cpu"):
        with TestClient(create_app(make_settings(disc_dir, device="cuda"))):
            pass


def test_metrics_text_format():
    r = Registry()
    c = r.counter("t_total", "a counter", ("route",))
    h = r.histogram("t_seconds", "a histogram", ("stage",), buckets=(0.125, 1.0))  # a value equal to a bound counts in it
    g = r.gauge("t_gauge", "a gauge")
    c.inc(route='/a"b\\c\nd')
    c.inc(2, route='/a"b\\c\nd')
    for v in (0.25, 0.5, 5.0, 0.125):
        h.observe(v, stage="x")
    g.set(math.inf)
    lines = r.render().splitlines()
    assert "# TYPE t_total counter" in lines and "# HELP t_seconds a histogram" in lines
    assert 't_total{route="/a\\"b\\\\c\\nd"} 3' in lines
    buckets = [line for line in lines if line.startswith("t_seconds_bucket")]
    assert buckets == ['t_seconds_bucket{stage="x",le="0.125"} 1', 't_seconds_bucket{stage="x",le="1"} 3',
                       't_seconds_bucket{stage="x",le="+Inf"} 4']
    assert 't_seconds_count{stage="x"} 4' in lines and 't_seconds_sum{stage="x"} 5.875' in lines
    assert "t_gauge +Inf" in lines
    with pytest.raises(ValueError):
        c.inc(route="/a", extra="b")
    with pytest.raises(ValueError):
        c.inc(-1, route="/a")
    with pytest.raises(ValueError):
        r.counter("t_total", "again")


def test_nothing_is_read_at_import(monkeypatch):
    """Importing the app module must neither read settings nor load models."""
    import importlib
    import sys

    monkeypatch.setenv("PATCHCORE_INDEX_DIR", "/does/not/exist")
    monkeypatch.setenv("PATCHCORE_DEVICE", "not-a-device")  # would fail validation if read
    for name in ("service.app", "service.routes", "service.settings"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    module = importlib.import_module("service.app")
    assert callable(module.create_app) and not hasattr(module, "app")
    assert Path(module.__file__).name == "app.py"
