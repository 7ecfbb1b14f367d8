"""Settings from the environment, their validation, and the ``python -m service`` command line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from service import Settings
from service.__main__ import main, parse_args
from service.config import MAX_DEFAULT_WORKERS, available_cores, default_workers, threads_per_worker

ENV = {
    "MFDV_MODEL_DIR": "/models/x",
    "MFDV_HOST": "0.0.0.0",
    "MFDV_PORT": "9000",
    "MFDV_WORKERS": "2",
    "MFDV_DEVICE": "cpu",
    "MFDV_BACKEND": "onnx",
    "MFDV_DEFAULT_SAMPLES": "8",
    "MFDV_MAX_SAMPLES": "128",
    "MFDV_MAX_BATCH": "16",
    "MFDV_MAX_WAIT_MS": "2.5",
    "MFDV_QUEUE_SIZE": "10",
    "MFDV_MAX_BODY_BYTES": "100000",
    "MFDV_MAX_INPUTS": "3",
    "MFDV_API_KEY": "s3cret-key",
}


def test_defaults_are_the_documented_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ENV:
        monkeypatch.delenv(key, raising=False)
    s = Settings(device="cpu")
    assert s.model_dir is None and s.model_repository is None  # the repository checkpoints/, ...
    assert s.repository()[0] == Path("checkpoints")
    # ...and its default model
    assert s.default_model_name(["fashion_mnist_mfdv", "fashion_mnist_vanilla"]) == "fashion_mnist_mfdv"
    assert (s.host, s.port, s.device, s.backend) == ("127.0.0.1", 8000, "cpu", "auto")
    assert s.workers == min(available_cores(), MAX_DEFAULT_WORKERS)  # one per core
    assert (s.default_samples, s.max_samples, s.max_batch, s.max_wait_ms) == (32, 256, 64, 0)
    assert (s.queue_size, s.max_body_bytes, s.api_key, s.batch_invariant) == (1024, 8 * 1024 * 1024, None, True)


def test_every_setting_reads_its_mfdv_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    s = Settings()
    assert s.model_dir == Path("/models/x") and s.host == "0.0.0.0" and s.port == 9000 and s.workers == 2
    assert s.device == "cpu" and s.backend == "onnx"
    assert (s.default_samples, s.max_samples, s.max_batch, s.max_wait_ms) == (8, 128, 16, 2.5)
    assert (s.queue_size, s.max_body_bytes, s.max_inputs) == (10, 100000, 3)
    assert s.api_key is not None and s.api_key.get_secret_value() == "s3cret-key"
    assert "s3cret" not in repr(s)  # the key is not logged with the settings
    assert Settings(max_batch=4).max_batch == 4  # arguments win over the environment


def test_empty_api_key_means_open(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MFDV_API_KEY", "")
    assert Settings().api_key is None


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"device": "gpu"}, "'auto', 'cpu' or 'cuda'"),
        ({"backend": "tensorrt"}, "'torch' or 'onnx'"),
        ({"max_samples": 0}, "greater than or equal to 1"),
        ({"default_samples": 300}, "must not exceed max_samples"),
        ({"max_wait_ms": -1}, "greater than or equal to 0"),
        ({"port": 70000}, "less than or equal to 65535"),
        ({"max_bacth": 3}, "Extra inputs are not permitted"),
    ],
)
def test_bad_settings_fail_at_once_naming_what_is_valid(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        Settings(**kwargs)


def test_command_line_flags() -> None:
    args = parse_args(["--host", "0.0.0.0", "--port", "8123", "--model-dir", "ck/x", "--backend", "onnx"])
    assert args == {"host": "0.0.0.0", "port": "8123", "model_dir": "ck/x", "backend": "onnx"}
    assert parse_args([]) == {}  # unset flags leave the environment's value
    args = parse_args(["--max-batch", "8", "--no-access-log", "--no-batch-invariant", "--workers", "3"])
    assert args == {"max_batch": "8", "access_log": False, "batch_invariant": False, "workers": "3"}
    s = Settings(**args)
    assert (s.max_batch, s.access_log, s.batch_invariant, s.workers) == (8, False, False, 3)


def test_every_setting_has_a_flag_with_its_variable_and_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for name in Settings.model_fields:
        flag = name.replace("_", "-")
        assert f"--{flag}" in text and f"[MFDV_{name.upper()}]" in text, name
    assert "--no-access-log" in text and "--no-ui" in text
    assert "[MFDV_MAX_BATCH] (default: 64)" in text
    assert f"[MFDV_WORKERS] (default: {default_workers()} here)" in text


def test_workers_default_to_one_per_core_but_one_on_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MFDV_WORKERS", raising=False)
    assert [default_workers("cpu", cores) for cores in (1, 2, 4, 64)] == [1, 2, 4, MAX_DEFAULT_WORKERS]
    assert default_workers("cuda", 16) == 1
    assert Settings(device="cpu").workers == min(available_cores(), MAX_DEFAULT_WORKERS)
    assert Settings(device="cuda").workers == 1
    monkeypatch.setenv("MFDV_WORKERS", "3")
    assert Settings(device="cpu").workers == 3  # MFDV_WORKERS explicit wins
    assert Settings(device="cpu", workers=1).workers == 1


def test_main_exits_2_on_a_missing_checkpoint(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert main(["--model-dir", str(tmp_path / "nope"), "--port", "0"]) == 2
    assert "does not exist" in caplog.text


def test_main_exits_2_on_invalid_settings(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("MFDV_MAX_SAMPLES", "0")
    assert main(["--port", "0"]) == 2
    assert "max_samples" in caplog.text


def test_version_comes_from_the_package_metadata() -> None:
    from importlib.metadata import version

    import service

    assert service.__version__ == version("mfdv-snn")


def test_predict_threads_default_to_a_workers_share_of_the_cores_less_its_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cases = {(1, 1): 1, (2, 1): 1, (2, 2): 1, (2, 4): 1, (16, 1): 15, (16, 4): 3}  # (cores, workers): threads
    assert {case: threads_per_worker(*case) for case in cases} == cases
    cpus = len(os.sched_getaffinity(0))
    cpu_max = tmp_path / "cpu.max"
    assert available_cores(cpu_max) == cpus  # no cgroup file: the affinity
    cpu_max.write_text("max 100000\n")
    assert available_cores(cpu_max) == cpus  # no quota
    cpu_max.write_text("150000 100000\n")
    assert available_cores(cpu_max) == min(cpus, 2)  # a 1.5-CPU limit: 2 cores, rounded up
    monkeypatch.setenv("MFDV_PREDICT_THREADS", "3")
    assert Settings().predict_threads == 3 and Settings().compute_threads() == 3
    monkeypatch.delenv("MFDV_PREDICT_THREADS")
    s = Settings(workers=2)
    assert s.predict_threads is None and s.compute_threads() == threads_per_worker(available_cores(), 2)
    assert s.decode_workers is None and s.decode_threads() == max(1, available_cores() // 2)
    assert Settings(workers=2, decode_workers=3).decode_threads() == 3
