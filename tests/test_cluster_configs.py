"""The files that run the pipeline on a cluster, checked without a cloud, a cluster or Docker.

- cluster/*.yaml: Ray autoscaler configs, valid against the schema Ray ships (and Ray's own
  validate_config after its defaults are merged), with the pools, custom resources, pinned image,
  idle timeout, setup and dashboard rules of the README's "Running on a cluster".
- infra/docker/Dockerfile: its base image's Ray is the installed Ray; it installs as the README does.
- cluster/runtime_env.json and .rayignore: what `ray job submit --working-dir .` uploads, and env_vars
  without secrets.
- infra/k8s/*.yaml: RayCluster / RayJob against the KubeRay CRDs in ../shared/schemas/kuberay/, the
  core objects with kubernetes-validate, and no secret value in any manifest.
- the shipped config `cluster-gpu`: its Train workers and Ray Data work fit the pools of every
  cluster definition (custom resources sslpipe_train / sslpipe_data, CPUs, GPUs, pool sizes).
"""
from __future__ import annotations

import copy
import functools
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:                   # Python 3.10: pytest's own dependency
    import tomli as tomllib

import ray
import ray.autoscaler
from conftest import SHARED_DATA
from pipelines.configs import load_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
K8S = ROOT / "infra" / "k8s"
DOCKERFILE = ROOT / "infra" / "docker" / "Dockerfile"
KUBERAY = SHARED_DATA.parent / "schemas" / "kuberay"     # ../shared/schemas/kuberay beside the checkout
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
IMAGE = re.compile(rf"^ghcr\.io/sslpipe/sslpipe:{re.escape(VERSION)}-(cpu|gpu)$")
AUTOSCALER_CONFIGS = sorted([*CLUSTER.glob("*.yaml"), *CLUSTER.glob("*.yml")])
K8S_MANIFESTS = sorted(K8S.glob("*.yaml"))
SECRET_WORD = re.compile(r"PASSW|(^|_)(SECRET|TOKEN|CREDENTIALS?|(ACCESS|API|PRIVATE)_KEY)(_|$)")
CREDENTIALS_IN_URL = re.compile(r"://[^/\s:@]+:[^/\s@]+@")


def _secret_like(name: str) -> bool:
    """MLFLOW_TRACKING_PASSWORD, AWS_SECRET_ACCESS_KEY, auth_token, ... (not TOKENIZERS_PARALLELISM)."""
    return bool(SECRET_WORD.search(re.sub(r"[^A-Z0-9]+", "_", name.upper())))


def _ids(paths):
    return [p.name for p in paths]


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _ray_schema() -> dict:
    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def _errors(validator, doc) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in validator.iter_errors(doc)]


# ---------------------------------------------------------------------------------------- cluster/

def test_cluster_dir_holds_the_autoscaler_configs_and_nothing_else_in_yaml():
    assert {"aws.yaml", "gcp.yaml"} <= {p.name for p in AUTOSCALER_CONFIGS}
    for p in AUTOSCALER_CONFIGS:                      # the contract: every YAML here is one of them
        cfg = _load(p)
        assert isinstance(cfg, dict) and "provider" in cfg and "available_node_types" in cfg, p.name
    runtime_envs = list(CLUSTER.glob("runtime_env.*"))
    assert [p.suffix for p in runtime_envs] == [".json"], runtime_envs


@pytest.mark.parametrize("path", AUTOSCALER_CONFIGS, ids=_ids(AUTOSCALER_CONFIGS))
def test_autoscaler_config_is_valid_for_ray(path):
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = _load(path)
    validator = jsonschema.Draft7Validator(_ray_schema())
    assert _errors(validator, cfg) == []
    # what `ray up` does before launching: merge the provider's defaults, then validate
    prepared = prepare_config(copy.deepcopy(cfg))
    validate_config(prepared)
    # a schema violation is caught (the validator is not vacuous)
    broken = copy.deepcopy(cfg)
    broken["available_node_types"][cfg["head_node_type"]]["resources"]["CPU"] = -1
    assert _errors(validator, broken)


def _pools(cfg: dict) -> tuple[dict, dict, dict]:
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    workers = [t for name, t in types.items() if name != cfg["head_node_type"]]
    gpu = [t for t in workers if t["resources"].get("GPU", 0) > 0]
    cpu = [t for t in workers if t["resources"].get("GPU", 0) == 0]
    assert len(gpu) == 1 and len(cpu) == 1, "one CPU pool for Ray Data, one GPU pool for Ray Train"
    return head, cpu[0], gpu[0]


@pytest.mark.parametrize("path", AUTOSCALER_CONFIGS, ids=_ids(AUTOSCALER_CONFIGS))
def test_pools_autoscale_from_zero_and_custom_resources_separate_data_from_training(path):
    cfg = _load(path)
    head, cpu, gpu = _pools(cfg)
    for pool in (cpu, gpu):
        assert pool["min_workers"] == 0
        assert 1 <= pool["max_workers"] <= cfg["max_workers"]
    # Ray Data actors ask for sslpipe_data (config `data.resources`): only the CPU pool has it
    assert cpu["resources"].get("sslpipe_data", 0) > 0
    assert "sslpipe_train" not in cpu["resources"]
    # Train workers ask for sslpipe_train (config `train.resources_per_worker`): one per GPU
    assert gpu["resources"]["sslpipe_train"] == gpu["resources"]["GPU"]
    assert "sslpipe_data" not in gpu["resources"]
    # the head runs the driver; neither kind of worker is placed on it
    assert not {"sslpipe_data", "sslpipe_train", "GPU"} & set(head["resources"])
    assert cfg["idle_timeout_minutes"] > 0


@pytest.mark.parametrize("path", AUTOSCALER_CONFIGS, ids=_ids(AUTOSCALER_CONFIGS))
def test_every_node_runs_the_pinned_project_image(path):
    cfg = _load(path)
    docker = cfg["docker"]
    assert docker["pull_before_run"] is True
    images = [docker[k] for k in ("image", "head_image", "worker_image") if k in docker]
    head, cpu, gpu = _pools(cfg)
    for t in cfg["available_node_types"].values():
        images += [v for k, v in t.get("docker", {}).items() if k.endswith("image")]
    assert images and all(IMAGE.match(i) for i in images), images
    head_image = docker.get("head_image", docker["image"])

    def worker_image(t):
        return t.get("docker", {}).get("worker_image", docker.get("worker_image", docker["image"]))

    assert head_image.endswith("-cpu") and worker_image(cpu).endswith("-cpu")
    assert worker_image(gpu).endswith("-gpu")


def _commands(cfg: dict) -> list[str]:
    keys = ("initialization_commands", "setup_commands", "head_setup_commands",
            "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")
    cmds = [c for k in keys for c in cfg.get(k, [])]
    for t in cfg["available_node_types"].values():
        cmds += [c for k in keys for c in t.get(k, [])]
    return cmds


@pytest.mark.parametrize("path", AUTOSCALER_CONFIGS, ids=_ids(AUTOSCALER_CONFIGS))
def test_setup_never_clones_or_installs_a_moving_target(path):
    from ray.autoscaler._private.util import prepare_config

    cfg = _load(path)
    # after Ray's defaults are merged: a missing `setup_commands: []` would bring back Ray's
    # default setup, which pip-installs Ray from a moving URL
    for cmd in _commands(prepare_config(copy.deepcopy(cfg))):
        assert "git clone" not in cmd and "git+" not in cmd, cmd
        for req in re.findall(r"pip3? install\s+(.*)", cmd):
            pkgs = [a.strip("'\"") for a in req.split() if not a.startswith("-")]
            assert all("==" in p for p in pkgs), f"unpinned install: {cmd}"


@pytest.mark.parametrize("path", AUTOSCALER_CONFIGS, ids=_ids(AUTOSCALER_CONFIGS))
def test_dashboard_only_through_port_forwarding_and_token_auth_on(path):
    cfg = _load(path)
    head = " ".join(cfg["head_start_ray_commands"])
    assert "ray start --head" in head
    assert "--dashboard-host=127.0.0.1" in head
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    assert "0.0.0.0" not in head
    for cmds in (cfg["head_start_ray_commands"], cfg["worker_start_ray_commands"]):
        start = [c for c in cmds if "ray start" in c]
        assert start and all("RAY_AUTH_MODE=token" in c for c in start)
    assert "~/.ray/auth_token" in cfg["file_mounts"]             # the same token on every node
    assert "8265" not in json.dumps(cfg)
    for rule in cfg["provider"].get("security_group", {}).get("IpPermissions", []):
        lo, hi = rule.get("FromPort", -1), rule.get("ToPort", -1)
        assert not (lo == -1 or lo <= 8265 <= hi), f"security group rule opens the dashboard: {rule}"


def test_aws_and_gcp_configs_agree():
    aws, gcp = (_load(CLUSTER / n) for n in ("aws.yaml", "gcp.yaml"))
    for a, g in zip(_pools(aws), _pools(gcp)):
        names = {k for k in a["resources"] if k.startswith("sslpipe_")}
        assert names == {k for k in g["resources"] if k.startswith("sslpipe_")}
        assert (a.get("min_workers"), a.get("max_workers")) == (g.get("min_workers"), g.get("max_workers"))
    assert aws["docker"] == gcp["docker"]
    assert aws["idle_timeout_minutes"] == gcp["idle_timeout_minutes"]


# ------------------------------------------------------------------------------ infra/docker

def _dockerfile_ray_tags() -> list[str]:
    text = DOCKERFILE.read_text()
    return re.findall(r"RAY_TAG=(\S+)", text) + re.findall(r"rayproject/ray:(\d\S*)", text)


def test_dockerfile_base_image_is_the_installed_ray():
    text = DOCKERFILE.read_text()
    default = re.search(r"^ARG RAY_TAG=(\S+)$", text, re.M)
    assert default and "FROM rayproject/ray:${RAY_TAG}" in text
    tags = _dockerfile_ray_tags() + re.findall(r"RAY_TAG=(\S+)", (DOCKERFILE.parent / "README.md").read_text())
    assert len(tags) >= 2                                         # the CPU default and the GPU build
    kinds = set()
    for tag in tags:
        m = re.fullmatch(r"(\d+\.\d+\.\d+)-py(\d)(\d+)-(cpu|gpu|cu\d+)", tag)
        assert m, f"not a pinned rayproject/ray tag: {tag}"
        assert m.group(1) == ray.__version__, f"{tag}: the image's Ray is not the installed {ray.__version__}"
        kinds.add("cpu" if m.group(4) == "cpu" else "gpu")
    assert kinds == {"cpu", "gpu"}
    assert default.group(1).endswith("-cpu")


def test_dockerfile_installs_the_project_as_the_readme_does():
    text = DOCKERFILE.read_text()
    readme_torch = set(re.findall(r"torch==([\d.]+)", (ROOT / "README.md").read_text()))
    setup_torch = set(re.findall(r"torch==([\d.]+)", (ROOT / "scripts" / "setup.sh").read_text()))
    assert len(readme_torch) == 1 and readme_torch == setup_torch
    run = " ".join(re.findall(r"^RUN ((?:[^\n]*\\\n)*[^\n]*)", text, re.M)).replace("\\\n", " ")
    torch = re.search(r"pip install \"torch==([\d.]+)\"", run)
    project = re.search(r"pip install \"\.(\[[\w,]+\])?\"", run)
    assert torch and torch.group(1) in readme_torch, "the README's torch pin"
    assert project, "the project from the build context, as `pip install .` does"
    assert torch.start() < project.start(), "torch first, then the project (README, scripts/setup.sh)"
    assert "git+" not in run and "git clone" not in run and " -e " not in run
    # what `pip install .` needs from the context: pyproject.toml and every package it includes
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    copied = " ".join(re.findall(r"^COPY (.*)$", text, re.M))
    for pkg in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]:
        assert re.search(rf"\b{pkg.rstrip('*')}\b", copied), pkg
    assert "pyproject.toml" in copied and pyproject["project"]["readme"] in copied


# ------------------------------------------------------------------------ runtime env, .rayignore

def _runtime_env() -> dict:
    from ray.dashboard.modules.dashboard_sdk import parse_runtime_env_args
    from ray.runtime_env import RuntimeEnv

    # exactly what `ray job submit --working-dir . --runtime-env cluster/runtime_env.json` does
    env = parse_runtime_env_args(runtime_env=str(CLUSTER / "runtime_env.json"), working_dir=".")
    RuntimeEnv(**env)                                             # Ray's own validation
    return env


UPLOAD_EXCLUDED = [".venv/bin/python", "outputs/pretrain-1/model/model.safetensors", "mlruns/0/meta.yaml",
                   ".git/HEAD", "pipelines/__pycache__/cli.cpython-311.pyc", "mlflow.db",
                   "outputs/run/checkpoint/step.ckpt", "ray_results/x/result.json", ".env"]
UPLOAD_KEPT = ["pipelines/cli.py", "ssl_core/config.py", "pyproject.toml", "pipelines/configs/tiny.yaml",
               "cluster/runtime_env.json"]


def test_uploads_leave_out_outputs_venvs_and_mlruns():
    from ray._private.runtime_env.packaging import _get_excludes, _get_ignore_file

    env = _runtime_env()
    assert env["working_dir"] == "."
    by_excludes = _get_excludes(ROOT, env["excludes"])
    by_rayignore = _get_ignore_file(ROOT, ".rayignore")
    assert by_rayignore is not None, ".rayignore is missing"
    for rel in UPLOAD_EXCLUDED:
        assert by_excludes(ROOT / rel), f"runtime_env excludes do not leave out {rel}"
        assert by_rayignore(ROOT / rel), f".rayignore does not leave out {rel}"
    for rel in UPLOAD_KEPT:
        assert not by_excludes(ROOT / rel) and not by_rayignore(ROOT / rel), rel


def test_runtime_env_carries_no_secrets_and_installs_nothing():
    env = _runtime_env()
    for key, value in env.get("env_vars", {}).items():
        assert not _secret_like(key), f"{key}: secrets come from the cluster's environment"
        assert not key.startswith(("AWS_", "GOOGLE_", "MLFLOW_TRACKING_")), key
        assert not CREDENTIALS_IN_URL.search(value), key
    # the image has the pinned dependencies: nothing is installed when a job starts
    assert not {"pip", "uv", "conda", "container", "image_uri"} & set(env)


# ------------------------------------------------------------------------------------ infra/k8s

def _k8s_objects() -> list[tuple[str, dict]]:
    return [(p.name, d) for p in K8S_MANIFESTS for d in yaml.safe_load_all(p.read_text()) if d]


def _strict(schema):
    """OpenAPI object schemas in CRDs allow unknown fields to a plain JSON-Schema validator; the API
    server (strict field validation) does not: forbid what a schema does not declare."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if "properties" in schema:
        out["properties"] = {k: _strict(v) for k, v in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    for key in ("items", "additionalProperties", "anyOf", "allOf", "oneOf", "not"):
        if isinstance(schema.get(key), (dict, list)):
            out[key] = _strict(schema[key])
    return out


@functools.lru_cache(maxsize=None)
def _crds() -> tuple[dict, ...]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)      # the CRDs are 2 MB of YAML
    return tuple(yaml.load(f.read_text(), Loader=loader) for f in sorted(KUBERAY.glob("*.yaml")))


@functools.lru_cache(maxsize=None)
def _crd_validator(kind: str, api_version: str):
    group, version = api_version.split("/")
    for crd in _crds():
        if crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind:
            v = next(v for v in crd["spec"]["versions"] if v["name"] == version)
            assert v["served"], f"{kind} {api_version} is not served"
            return jsonschema.Draft7Validator(_strict(v["schema"]["openAPIV3Schema"]))
    raise AssertionError(f"no CRD for {kind} {api_version} in {KUBERAY}")


def test_kuberay_objects_validate_against_the_crds():
    if not KUBERAY.is_dir():
        pytest.skip(f"{KUBERAY} is missing (expected ../shared/schemas beside the checkout)")
    ray_objects = [(f, d) for f, d in _k8s_objects() if d["apiVersion"].startswith("ray.io/")]
    assert {d["kind"] for _, d in ray_objects} == {"RayCluster", "RayJob"}
    for f, d in ray_objects:
        validator = _crd_validator(d["kind"], d["apiVersion"])
        assert _errors(validator, d) == [], f"{f}: {d['kind']} {d['metadata']['name']}"
    # a misspelled field is an error (strict like the API server), as is a wrong type
    cluster = next(d for _, d in ray_objects if d["kind"] == "RayCluster")
    validator = _crd_validator("RayCluster", cluster["apiVersion"])
    typo = copy.deepcopy(cluster)
    typo["spec"]["enableInTreeAutoscalling"] = typo["spec"].pop("enableInTreeAutoscaling")
    assert _errors(validator, typo)
    wrong = copy.deepcopy(cluster)
    wrong["spec"]["workerGroupSpecs"][0]["minReplicas"] = "zero"
    assert _errors(validator, wrong)


def test_core_objects_validate_with_kubernetes_validate():
    import kubernetes_validate

    core = [(f, d) for f, d in _k8s_objects() if not d["apiVersion"].startswith("ray.io/")]
    assert {"Deployment", "Service"} <= {d["kind"] for _, d in core}
    version = kubernetes_validate.latest_version()
    for f, d in core:
        try:
            kubernetes_validate.validate(d, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{f}: {d['kind']} {d['metadata']['name']}: {e.message}")


def _ray_start_resources(group: dict) -> dict:
    raw = group.get("rayStartParams", {}).get("resources")
    # KubeRay's documented form: a JSON object inside double quotes, '"{\"name\": 1}"'
    return json.loads(json.loads(raw)) if raw else {}


def _containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def _objects(kind: str) -> list[dict]:
    return [d for _, d in _k8s_objects() if d["kind"] == kind]


def test_raycluster_autoscales_two_pools_with_the_pinned_image():
    (cluster,) = _objects("RayCluster")
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["rayVersion"] == ray.__version__
    assert spec["authOptions"]["mode"] == "token"
    head = spec["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP" and not head.get("enableIngress")
    assert not _ray_start_resources(head)
    assert not any("nvidia.com/gpu" in c.get("resources", {}).get("limits", {}) for c in _containers(head))
    groups = spec["workerGroupSpecs"]
    gpu = [g for g in groups if any("nvidia.com/gpu" in c["resources"]["limits"] for c in _containers(g))]
    cpu = [g for g in groups if g not in gpu]
    assert len(gpu) == 1 and len(cpu) == 1
    assert _ray_start_resources(cpu[0]).get("sslpipe_data", 0) > 0
    assert "sslpipe_train" not in _ray_start_resources(cpu[0])
    gpus = int(_containers(gpu[0])[0]["resources"]["limits"]["nvidia.com/gpu"])
    assert _ray_start_resources(gpu[0]) == {"sslpipe_train": gpus}
    for g in groups:
        assert g["minReplicas"] == 0 and g["maxReplicas"] >= 1
    assert all(IMAGE.match(c["image"]) for g in [head, *groups] for c in _containers(g))
    assert _containers(gpu[0])[0]["image"].endswith("-gpu")
    assert all(c["image"].endswith("-cpu") for g in (head, cpu[0]) for c in _containers(g))


def test_rayjob_runs_pretrain_on_the_same_cluster_and_logs_to_the_in_cluster_mlflow():
    (job,) = _objects("RayJob")
    (cluster,) = _objects("RayCluster")
    spec = job["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:4] == ["sslpipe", "pretrain", "--config", "cluster-gpu"]
    overrides = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--set"]
    assert len(argv) == 4 + 2 * len(overrides)
    cfg = load_config("cluster-gpu", overrides)                   # the keys exist and validate
    assert cfg.train.storage_path.startswith(("s3://", "gs://")), "pods share no disk: checkpoints in a bucket"
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["rayClusterSpec"] == cluster["spec"], "rayjob.yaml's cluster drifted from raycluster.yaml"
    service = next(s for s in _objects("Service") if s["metadata"]["name"] == "mlflow")
    port = service["spec"]["ports"][0]["port"]
    for group in [spec["rayClusterSpec"]["headGroupSpec"], *spec["rayClusterSpec"]["workerGroupSpecs"]]:
        env = {e["name"]: e for e in _containers(group)[0]["env"]}
        assert env["MLFLOW_TRACKING_URI"]["value"] == f"http://mlflow:{port}"
        for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            assert "value" not in env[name] and env[name]["valueFrom"]["secretKeyRef"]["name"]


def test_mlflow_server_uses_postgres_s3_and_basic_auth_and_is_cluster_internal():
    (deployment,) = [d for d in _objects("Deployment") if d["metadata"]["name"] == "mlflow"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    argv = container["command"] + container["args"]
    assert argv[:2] == ["mlflow", "server"]
    opt = {a: argv[i + 1] for i, a in enumerate(argv[:-1]) if a.startswith("--")}
    assert opt["--app-name"] == "basic-auth"
    assert opt["--backend-store-uri"].startswith("postgresql://")
    assert not CREDENTIALS_IN_URL.search(opt["--backend-store-uri"])
    settings = {k: v for c in _objects("ConfigMap") for k, v in c.get("data", {}).items()}
    destination = re.sub(r"\$\((\w+)\)", lambda m: settings[m.group(1)], opt["--artifacts-destination"])
    assert destination.startswith("s3://")
    assert IMAGE.match(container["image"])
    env = {e["name"]: e for e in container["env"]}
    for name in ("PGPASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"]
    for s in _objects("Service"):
        assert s["spec"].get("type", "ClusterIP") == "ClusterIP", s["metadata"]["name"]
    assert not _objects("Ingress")


def _walk(node, path=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, f"{path}/{k}")
            yield path, k, v
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}/{i}")


def test_no_secret_values_in_any_manifest_or_cluster_config():
    docs = _k8s_objects() + [(p.name, _load(p)) for p in AUTOSCALER_CONFIGS]
    assert not [f for f, d in docs if d.get("kind") == "Secret"], "Secrets are created, not committed"
    for f, d in docs:
        for path, key, value in _walk(d):
            where = f"{f}:{path}/{key}"
            if isinstance(value, str):
                assert not CREDENTIALS_IN_URL.search(value), where
                assert not re.search(r"(?i)(passw\w*|secret\w*)\s*[=:]\s*\S", value), where
                assert not re.search(r"AKIA[0-9A-Z]{16}", value), where
                if _secret_like(key) and not value.startswith(("~/", "/")):
                    pytest.fail(f"{where}: a literal value under a secret-looking key")
            if key == "env":                                # env vars named like secrets: from Secrets
                for e in value:
                    if _secret_like(e["name"]):
                        assert "value" not in e and "secretKeyRef" in e.get("valueFrom", {}), \
                            f"{where}: {e['name']}"


# ------------------------------------------------- the shipped config `cluster-gpu` on these clusters

def _quantity(q) -> float:
    q = str(q)
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


def _cluster_definitions() -> dict[str, tuple[dict, dict, dict, int]]:
    """{file: (head, CPU pool, GPU pool resources, GPU pool's max nodes)} of every cluster definition."""
    out = {}
    for p in AUTOSCALER_CONFIGS:
        head, cpu, gpu = _pools(_load(p))
        out[p.name] = (head["resources"], cpu["resources"], gpu["resources"], gpu["max_workers"])
    (cluster,) = _objects("RayCluster")

    def resources(group):
        limits = _containers(group)[0]["resources"]["limits"]
        r = {"CPU": _quantity(limits["cpu"]), "GPU": _quantity(limits.get("nvidia.com/gpu", 0))}
        return {**{k: v for k, v in r.items() if v}, **_ray_start_resources(group)}

    groups = cluster["spec"]["workerGroupSpecs"]
    gpu = next(g for g in groups if "GPU" in resources(g))
    cpu = next(g for g in groups if "GPU" not in resources(g))
    out["raycluster.yaml"] = (resources(cluster["spec"]["headGroupSpec"]), resources(cpu),
                              resources(gpu), gpu["maxReplicas"])
    return out


def test_the_cluster_gpu_config_fits_every_cluster_definition():
    from pipelines.data import data_resources
    from pipelines.train import worker_resources

    cfg = load_config("cluster-gpu")
    assert cfg.train.use_gpu
    worker = {**worker_resources(cfg), "GPU": 1}               # what one Train worker asks Ray for
    data = data_resources(cfg).get("resources", {})            # what every Ray Data task/actor asks for
    assert data and set(worker) - {"CPU", "GPU"}, "cluster-gpu pins work to the pools"
    for name, (head, cpu, gpu, gpu_nodes) in _cluster_definitions().items():
        assert all(cpu.get(k, 0) >= v for k, v in data.items()), f"{name}: data work fits the CPU pool"
        assert not set(data) & (set(gpu) | set(head)), f"{name}: data work stays off GPU nodes and head"
        assert not (set(worker) - {"CPU", "GPU"}) & (set(cpu) | set(head)), f"{name}: Train on GPU nodes only"
        per_node = min(int(gpu.get(k, 0) // v) for k, v in worker.items() if v)
        assert per_node >= 1, f"{name}: a GPU node ({gpu}) cannot hold one Train worker ({worker})"
        assert per_node * gpu_nodes >= cfg.train.num_workers, f"{name}: the GPU pool is too small"
