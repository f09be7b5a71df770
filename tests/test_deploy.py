"""The deploy/ examples: the CronJob, the Airflow DAG and the systemd units run the daily job
with the config the repository ships and treat its exit codes as README "Exit codes" says."""

from __future__ import annotations

import configparser
import subprocess
import sys
import types
from pathlib import Path

import yaml

from ecdctr.config import load_config
from pipelines.daily import OUTCOMES

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"


def _run_with_exit_code(command: str, code: int, tmp_path: Path) -> int:
    """Runs a shell command line with `ecdctr` replaced by a program that exits `code`."""
    fake = tmp_path / "bin" / "ecdctr"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'args'}\nexit {code}\n")
    fake.chmod(0o755)
    command = command.replace("/opt/ecdctr/.venv/bin/ecdctr", "ecdctr")
    return subprocess.run(["/bin/sh", "-c", command], env={"PATH": f"{fake.parent}:/usr/bin:/bin"},
                          timeout=30).returncode


def test_the_cronjob_runs_the_shipped_config_as_the_image_user(tmp_path):
    job = yaml.safe_load((DEPLOY / "cronjob.yaml").read_text())
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "CronJob"
    spec = job["spec"]
    assert spec["concurrencyPolicy"] == "Forbid" and len(spec["schedule"].split()) == 5
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["securityContext"]["runAsUser"] == 10001
    assert "USER 10001" in (ROOT / "Dockerfile").read_text()
    command = pod["containers"][0]["args"][0]
    assert "--config=/opt/ecdctr/configs/prod.yaml" in command
    load_config(str(ROOT / "configs" / "prod.yaml"))  # the image copies configs/ to /opt/ecdctr
    assert _run_with_exit_code(command, OUTCOMES["rejected"], tmp_path) == 3  # the pod fails
    args = (tmp_path / "args").read_text().split()
    assert args[0] == "daily" and args[2].startswith("--date=20")


def test_the_airflow_dag_treats_nothing_to_do_as_success(tmp_path):
    captured: dict = {}

    class DAG:  # Airflow is not installed here: these stand-ins record what the file asks for
        def __init__(self, **kwargs):
            captured["dag"] = kwargs

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def bash_operator(**kwargs):
        captured["task"] = kwargs

    modules = {"airflow": types.ModuleType("airflow"),
               "airflow.operators": types.ModuleType("airflow.operators"),
               "airflow.operators.bash": types.ModuleType("airflow.operators.bash")}
    modules["airflow"].DAG = DAG
    modules["airflow.operators.bash"].BashOperator = bash_operator
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        source = (DEPLOY / "ecdctr_daily_dag.py").read_text()
        exec(compile(source, "ecdctr_daily_dag.py", "exec"), {"__name__": "dag"})  # noqa: S102
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    assert captured["dag"]["max_active_runs"] == 1 and captured["dag"]["catchup"] is False
    command = captured["task"]["bash_command"].replace("{{ ds }}", "2026-03-01")
    expected = {0: 0, 4: 0, 1: 1, 3: 3, 5: 5}
    assert {code: _run_with_exit_code(command, code, tmp_path) for code in expected} == expected
    assert (tmp_path / "args").read_text().split()[2] == "--date=2026-03-01"


def test_the_systemd_units_run_daily_and_accept_nothing_to_do(tmp_path):
    def unit(name):
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.optionxform = str
        parser.read_string((DEPLOY / name).read_text())
        return parser

    service, timer = unit("ecdctr-daily.service"), unit("ecdctr-daily.timer")
    assert timer["Timer"]["Unit"] == "ecdctr-daily.service" and timer["Timer"]["Persistent"] == "true"
    assert service["Service"]["Type"] == "oneshot"
    assert service["Service"]["SuccessExitStatus"] == str(OUTCOMES["done"])
    command = service["Service"]["ExecStart"].replace("%%", "%")  # systemd's escape for %
    assert "--config=/opt/ecdctr/configs/prod.yaml" in command
    assert _run_with_exit_code(command, OUTCOMES["failed"], tmp_path) == 1
    assert (tmp_path / "args").read_text().split()[0] == "daily"
