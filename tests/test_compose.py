"""The deployment files (no Docker daemon here: the images are not built): valid YAML, the
services, volumes, health checks and restart policies the README promises, and a GPU override
that reserves NVIDIA devices for the workers."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]


def load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((REPO / name).read_text())  # resolves the `<<` merge keys
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), name
    return data


def command(service: dict[str, Any]) -> list[str]:
    cmd = service["command"]
    return cmd if isinstance(cmd, list) else str(cmd).split()


def test_compose_services_volumes_health_and_restart() -> None:
    compose = load("docker-compose.yml")
    services = compose["services"]
    assert set(services) == {"redis", "api", "worker", "interactive"}
    redis = services["redis"]
    assert "--appendonly" in redis["command"] and "yes" in redis["command"]
    assert any(v.endswith(":/data") for v in redis["volumes"])
    for name, svc in services.items():
        assert svc["restart"] in ("unless-stopped", "always"), name
        assert svc["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0]
            assert source.startswith((".", "/")) or source in compose["volumes"], volume
    for name in ("api", "worker", "interactive"):
        svc = services[name]
        assert svc["build"] == "." and svc["environment"]["REDIS_URL"] == "redis://redis:6379/0"
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
    assert command(services["api"])[:2] == ["uvicorn", "backend.app:create_app"]
    assert command(services["worker"]) == ["python", "-m", "worker.main"]
    assert command(services["interactive"]) == ["python", "-m", "worker.main", "--interactive"]
    for name in ("worker", "interactive"):
        assert "models:/models:ro" in services[name]["volumes"]
        assert command({"command": services[name]["healthcheck"]["test"][1:]}) == [
            "python",
            "-m",
            "worker.health",
        ]


def test_gpu_override_reserves_nvidia_devices_for_the_workers() -> None:
    gpu = load("docker-compose.gpu.yml")["services"]
    base = load("docker-compose.yml")["services"]
    assert set(gpu) == {"worker", "interactive"} <= set(base)
    for svc in gpu.values():
        assert svc["environment"]["GFSAM_DEVICE"] == "cuda"
        (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]


def test_the_commands_name_modules_that_exist() -> None:
    for module in ("backend.app", "worker.main", "worker.health"):
        assert importlib.util.find_spec(module) is not None, module
    assert (REPO / "Dockerfile").is_file()
