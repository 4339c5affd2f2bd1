"""The deployment files (issue 7): docker-compose.yml, Dockerfile, .env.example, .dockerignore and the entrypoint.

No Docker engine runs here, so these tests check the files' structure, run the entrypoint script with stand-ins
for `nvidia-smi` and `pixelperfect`, and validate the compose file with `docker compose config` (or the Debian
`docker-compose`) when that tool is installed; neither needs an engine.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERIGNORE = ROOT / ".dockerignore"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"

SERVICES = {"redis", "minio", "createbuckets", "postgres", "migrate", "worker", "flower", "producer"}
ONE_SHOTS = {"createbuckets", "migrate"}
# Services whose health is their image's HEALTHCHECK (the worker's `celery inspect ping`), not a compose test.
IMAGE_HEALTHCHECKED = {"worker", "worker-multigpu"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|KEY|TOKEN|AUTH", re.IGNORECASE)
# ${NAME}, ${NAME:-default}, ${NAME:?message}, ...; `$${` is an escaped dollar, not an interpolation.
INTERPOLATION = re.compile(r"(?<!\$)\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?+])?(?P<arg>[^}]*)\}")
RELEASE_TAG = r"RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ"


def _strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for key, value in node.items() for s in _strings(key) + _strings(value)]
    if isinstance(node, list):
        return [s for item in node for s in _strings(item)]
    return [node] if isinstance(node, str) else []


@pytest.fixture(scope="module")
def raw() -> str:
    """Every string in the compose file (comments left out), one per line: what compose interpolates."""
    return "\n".join(_strings(yaml.safe_load(COMPOSE_FILE.read_text())))


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    return yaml.safe_load(COMPOSE_FILE.read_text())["services"]


def _words(value: str | list[str]) -> str:
    return value if isinstance(value, str) else " ".join(str(part) for part in value)


def _default(value: str) -> str:
    """`${X:-60}` -> `60`; a literal stays as it is."""
    match = INTERPOLATION.fullmatch(value)
    return match["arg"] if match and match["op"] in (":-", "-") else value


def _seconds(duration: str) -> float:
    """A compose duration (`90s`, `1m30s`, `2m`) in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def _env_example() -> dict[str, str]:
    pairs = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def test_every_service_is_there(services: dict[str, dict[str, Any]]) -> None:
    assert services.keys() >= SERVICES


def test_long_running_services_have_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    for name in ("redis", "minio", "postgres", "flower"):
        assert services[name]["healthcheck"]["test"], name
    for name in IMAGE_HEALTHCHECKED:
        assert "healthcheck" not in services[name], f"{name} must keep the image's celery ping healthcheck"


def test_depends_on_waits_for_health_or_completion(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: depends_on needs conditions, not a bare list"
        for dependency, spec in depends_on.items():
            expected = "service_completed_successfully" if dependency in ONE_SHOTS else "service_healthy"
            assert spec == {"condition": expected}, f"{name} -> {dependency}"


def test_redis_is_a_durable_password_protected_broker(services: dict[str, dict[str, Any]]) -> None:
    redis = services["redis"]
    command = [str(part) for part in redis["command"]]
    assert command[0] == "redis-server"
    assert command[command.index("--requirepass") + 1].startswith("${REDIS_PASSWORD:?")
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(volume.endswith(":/data") for volume in redis["volumes"])
    assert "redis-cli ping" in _words(redis["healthcheck"]["test"])


def test_minio_is_pinned_and_checked_with_mc_ready(services: dict[str, dict[str, Any]]) -> None:
    minio = services["minio"]
    assert re.fullmatch(rf"minio/minio:{RELEASE_TAG}", minio["image"])
    assert minio["healthcheck"]["test"] == ["CMD", "mc", "ready", "local"]


def test_createbuckets_is_a_one_shot_after_minio(services: dict[str, dict[str, Any]]) -> None:
    job = services["createbuckets"]
    assert re.fullmatch(rf"minio/mc:{RELEASE_TAG}", job["image"])
    assert job["depends_on"] == {"minio": {"condition": "service_healthy"}}
    assert job["restart"] == "no"
    assert "mc mb --ignore-existing" in _words(job["command"])


def test_postgres_and_migrate(services: dict[str, dict[str, Any]]) -> None:
    assert "pg_isready" in _words(services["postgres"]["healthcheck"]["test"])
    migrate = services["migrate"]
    assert migrate["command"] == ["pixelperfect", "db", "upgrade"]
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert migrate["restart"] == "no"


def test_worker_reserves_one_nvidia_gpu_and_scales(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    assert "build" in worker
    assert worker["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    ]
    # `docker compose up --scale worker=N` needs distinct container names and no fixed host port.
    assert "container_name" not in worker
    assert "ports" not in worker
    for need in ("redis", "minio"):
        assert worker["depends_on"][need] == {"condition": "service_healthy"}
    assert worker["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}


def test_multigpu_worker_sees_every_gpu_and_claims_one(services: dict[str, dict[str, Any]]) -> None:
    multi = services["worker-multigpu"]
    assert multi["profiles"] == ["multigpu"]
    assert multi["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}
    ]
    assert "container_name" not in multi
    for name in ("worker", "worker-multigpu"):
        assert "gpu-claims:/gpu-claims" in services[name]["volumes"]


def test_stop_grace_period_outlasts_the_soft_shutdown(services: dict[str, dict[str, Any]]) -> None:
    for name in IMAGE_HEALTHCHECKED:
        worker = services[name]
        soft = float(_default(str(worker["environment"]["PIXELPERFECT_WORKER_SOFT_SHUTDOWN_TIMEOUT"])))
        assert _seconds(str(worker["stop_grace_period"])) > soft, name
        # SIGTERM from `docker stop` must start Celery's soft shutdown, not an unbounded warm one.
        assert worker["environment"]["REMAP_SIGTERM"] == "SIGQUIT"


def test_flower_has_basic_auth_persistence_and_port(services: dict[str, dict[str, Any]]) -> None:
    flower = services["flower"]
    command = _words(flower["command"])
    assert "flower" in command and "--persistent=True" in command and "--db=/data/flower.db" in command
    assert re.fullmatch(
        r"\$\{FLOWER_USER:\?[^}]+\}:\$\{FLOWER_PASSWORD:\?[^}]+\}", flower["environment"]["FLOWER_BASIC_AUTH"]
    )
    assert flower["environment"]["PIXELPERFECT_BROKER_URL"].startswith("redis://:${REDIS_PASSWORD:?")
    data_volume = next(v for v in flower["volumes"] if v.endswith(":/data"))
    assert data_volume.split(":")[0] in yaml.safe_load(COMPOSE_FILE.read_text())["volumes"]
    assert any(str(port).endswith(":5555:5555") for port in flower["ports"])


def test_producer_is_a_one_shot_submit_profile(services: dict[str, dict[str, Any]]) -> None:
    producer = services["producer"]
    assert producer["profiles"] == ["producer"]
    assert producer["command"][:2] == ["pixelperfect", "submit"]
    assert producer["restart"] == "no"
    assert producer["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}


def test_secrets_are_required_interpolations_never_literals(services: dict[str, dict[str, Any]], raw: str) -> None:
    for match in INTERPOLATION.finditer(raw):
        if SECRET_NAME.search(match["name"]):
            assert match["op"] == ":?" and match["arg"].strip(), f"{match[0]} must be ${{NAME:?message}}"
    for name, service in services.items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key):
                assert INTERPOLATION.search(str(value)), f"{name}: {key} holds a literal"
    # Credentials inside URLs (redis://:pw@host, postgresql://user:pw@host) come from the environment too.
    for password in re.findall(r"://[^:/@\s]*:([^@\s]+)@", raw):
        assert INTERPOLATION.fullmatch(password) and ":?" in password, password


def test_env_example_lists_every_required_variable(raw: str) -> None:
    example = _env_example()
    required = {m["name"] for m in INTERPOLATION.finditer(raw) if m["op"] == ":?"}
    assert required >= {"REDIS_PASSWORD", "POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "FLOWER_PASSWORD"}
    for name in sorted(required):
        assert example.get(name), f".env.example lacks {name}"
        if SECRET_NAME.search(name) and "ACCESS_KEY" not in name:
            assert "change-me" in example[name], f"{name} in .env.example must be an obvious placeholder"
    referenced = {m["name"] for m in INTERPOLATION.finditer(raw)}
    assert not example.keys() - referenced, f"unused in docker-compose.yml: {example.keys() - referenced}"


def test_dockerfile_runs_unprivileged_with_a_ping_healthcheck() -> None:
    text = DOCKERFILE.read_text()
    instructions = [line.strip() for line in text.replace("\\\n", " ").splitlines()]
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    healthchecks = [line for line in instructions if line.startswith("HEALTHCHECK ")]
    assert len(healthchecks) == 1
    assert "inspect ping" in healthchecks[0] and "celery@$HOSTNAME" in healthchecks[0]
    assert "torch==2.14.1" in text and "torchvision==0.29.1" in text
    for line in instructions:
        if line.startswith(("COPY ", "ADD ")):
            assert not re.search(r"\.(pth|pt|ckpt|safetensors)\b", line), f"weights baked in: {line}"


def test_image_installs_the_gpu_extra_by_default(services: dict[str, dict[str, Any]]) -> None:
    """The build stage installs ``.[${PIXELPERFECT_EXTRAS}]`` (default ``gpu``, pyproject's nvImageCodec extra), an
    empty value installs the bare package; compose passes the argument from .env to every service built here."""
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(requirement.startswith("nvidia-nvimgcodec") for requirement in extras["gpu"])
    instructions = [line.strip() for line in DOCKERFILE.read_text().replace("\\\n", " ").splitlines()]
    stages = [i for i, line in enumerate(instructions) if line.startswith("FROM ")]
    build = instructions[stages[0] : stages[1]]
    assert instructions[stages[0]].endswith(" AS build")
    assert "ARG PIXELPERFECT_EXTRAS=gpu" in build
    installs = [line for line in build if line.startswith("RUN pip install ") and "torch==" not in line]
    assert len(installs) == 1
    argument = installs[0].split()[3]  # what RUN's shell (POSIX sh) expands, with the argument in its environment
    for value, expected in (("gpu", ".[gpu]"), ("", "."), ("gpu,dev", ".[gpu,dev]")):
        shell = subprocess.run(["sh", "-c", f"echo {argument}"], env={"PIXELPERFECT_EXTRAS": value},
                               capture_output=True, text=True, timeout=30, check=True)  # fmt: skip
        assert shell.stdout.strip() == expected, (value, shell.stdout)
    built = {name: service for name, service in services.items() if "build" in service}
    assert built.keys() >= {"worker", "worker-multigpu", "migrate", "flower", "producer"}
    for name, service in built.items():
        match = INTERPOLATION.fullmatch(service["build"]["args"]["PIXELPERFECT_EXTRAS"])
        assert match and match["name"] == "PIXELPERFECT_EXTRAS", name
        assert (match["op"], match["arg"]) == ("-", "gpu"), f"{name}: unset means gpu, an empty value none"
    assert _env_example()["PIXELPERFECT_EXTRAS"] == "gpu"
    lines = ENV_EXAMPLE.read_text().splitlines()
    at = lines.index("PIXELPERFECT_EXTRAS=gpu")
    comment = " ".join(line for line in lines[at - 3 : at] if line.startswith("#"))
    assert "nvImageCodec" in comment and "Empty" in comment  # what it adds, and how to leave it out


def test_dockerignore_keeps_secrets_and_weights_out_of_the_build() -> None:
    patterns = {line.strip() for line in DOCKERIGNORE.read_text().splitlines()}
    assert {".env", ".venv", "**/*.pth"} <= patterns


# --- the entrypoint, run with stand-ins for nvidia-smi and pixelperfect -----------------------------------------


def _fake_bin(tmp_path: Path, gpus: list[str]) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {
        "nvidia-smi": "#!/bin/sh\n" + "".join(f"echo {uuid}\n" for uuid in gpus),
        # Report what the worker would start with, then hold the inherited GPU lock until killed.
        "pixelperfect": '#!/bin/sh\necho "CUDA=${CUDA_VISIBLE_DEVICES:-} ARGS=$*"\nexec sleep 60\n',
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def _entrypoint_env(bin_dir: Path, claims: Path, **extra: str) -> dict[str, str]:
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOSTNAME": "gpu-host-1", "GPU_CLAIMS_DIR": str(claims), **extra}


def test_entrypoint_is_executable_posix_sh() -> None:
    assert ENTRYPOINT.stat().st_mode & stat.S_IXUSR
    subprocess.run(["sh", "-n", str(ENTRYPOINT)], check=True, timeout=30)


def test_entrypoint_execs_other_commands_unchanged(tmp_path: Path) -> None:
    out = subprocess.run(
        [str(ENTRYPOINT), "echo", "pixelperfect", "db", "upgrade"],
        env={"PATH": "/usr/bin:/bin", "PIXELPERFECT_CHECKPOINT": "/nowhere.pth"},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert out.stdout == "pixelperfect db upgrade\n"


def test_worker_refuses_a_missing_checkpoint(tmp_path: Path) -> None:
    env = _entrypoint_env(_fake_bin(tmp_path, []), tmp_path / "claims", PIXELPERFECT_CHECKPOINT="/nowhere.pth")
    out = subprocess.run([str(ENTRYPOINT)], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 66
    assert "/nowhere.pth" in out.stderr and "MODELS_DIR" in out.stderr


@pytest.mark.skipif(shutil.which("flock") is None, reason="flock (util-linux) is not installed")
def test_workers_on_one_host_each_claim_their_own_gpu(tmp_path: Path) -> None:
    gpus = ["GPU-aaaaaaaa-0000", "GPU-bbbbbbbb-1111"]
    env = _entrypoint_env(_fake_bin(tmp_path, gpus), tmp_path / "claims")
    running: list[subprocess.Popen[str]] = []
    try:
        claimed = []
        for _ in gpus:
            proc = subprocess.Popen(
                [str(ENTRYPOINT), "worker", "--loglevel", "INFO"], env=env, stdout=subprocess.PIPE, text=True
            )
            running.append(proc)
            assert proc.stdout is not None
            claimed.append(proc.stdout.readline().strip())
        assert claimed == [
            f"CUDA={gpu} ARGS=worker --hostname celery@gpu-host-1 --concurrency 1 --queues gpu --loglevel INFO"
            for gpu in gpus
        ]
        # A third worker finds both GPUs held and says so instead of stacking onto one of them.
        third = subprocess.run([str(ENTRYPOINT)], env=env, capture_output=True, text=True, timeout=30)
        assert third.returncode == 75 and "held by other workers" in third.stderr
        # Sharing on request, and an explicit CUDA_VISIBLE_DEVICES, skip the claim.
        for extra, expected in (({"GPU_CLAIM": "shared"}, "CUDA= "), ({"CUDA_VISIBLE_DEVICES": "1"}, "CUDA=1 ")):
            proc = subprocess.Popen([str(ENTRYPOINT)], env={**env, **extra}, stdout=subprocess.PIPE, text=True)
            running.append(proc)
            assert proc.stdout is not None
            assert proc.stdout.readline().startswith(expected)
        # A worker that exits releases its GPU to the next one.
        running[0].kill()
        running[0].wait(timeout=30)
        proc = subprocess.Popen([str(ENTRYPOINT)], env=env, stdout=subprocess.PIPE, text=True)
        running.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith(f"CUDA={gpus[0]} ")
    finally:
        for proc in running:
            proc.kill()
            proc.wait(timeout=30)
            if proc.stdout is not None:
                proc.stdout.close()


# --- docker compose config: the real parser, with .env.example's values -----------------------------------------


def _compose_tool() -> list[str] | None:
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=60)
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def _compose_config(tool: list[str], env_file: Path, raw: str) -> subprocess.CompletedProcess[str]:
    # Nothing from this process's environment may fill in a variable: only the env file counts.
    referenced = {m["name"] for m in INTERPOLATION.finditer(raw)}
    env = {k: v for k, v in os.environ.items() if k not in referenced and not k.startswith("COMPOSE_")}
    files = ["--env-file", str(env_file), "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE)]
    profiles = ["--profile", "producer", "--profile", "multigpu"]
    return subprocess.run([*tool, *files, *profiles, "config"], env=env, capture_output=True, text=True, timeout=120)


def test_compose_config_accepts_the_file(raw: str) -> None:
    tool = _compose_tool()
    if tool is None:
        pytest.skip("neither `docker compose` (v2 plugin) nor `docker-compose` is installed")
    result = _compose_config(tool, ENV_EXAMPLE, raw)
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load(result.stdout)["services"]
    assert rendered.keys() >= SERVICES | {"worker-multigpu"}
    assert rendered["flower"]["environment"]["FLOWER_BASIC_AUTH"] == "{}:{}".format(
        _env_example()["FLOWER_USER"], _env_example()["FLOWER_PASSWORD"]
    )
    assert rendered["worker"]["build"]["args"]["PIXELPERFECT_EXTRAS"] == "gpu"


def test_compose_config_refuses_a_missing_secret(raw: str, tmp_path: Path) -> None:
    tool = _compose_tool()
    if tool is None:
        pytest.skip("neither `docker compose` (v2 plugin) nor `docker-compose` is installed")
    env_file = tmp_path / "no-redis-password.env"
    env_file.write_text(
        "".join(line + "\n" for line in ENV_EXAMPLE.read_text().splitlines() if not line.startswith("REDIS_PASSWORD="))
    )
    result = _compose_config(tool, env_file, raw)
    assert result.returncode != 0
    assert "REDIS_PASSWORD" in result.stderr
