"""The command line runs under absl: its logging flags on every subcommand, absl's log format
and files, and TensorFlow's native start-up noise kept out of a normal run's stderr."""

import os
import re
import subprocess
import sys

import pytest

from ecdctr.cli import logs
from ecdctr.cli.main import main

ABSL_INFO = re.compile(r"^I\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ \w+\.py:\d+\] ", re.M)


def ecdctr(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ecdctr", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


def simulate(out, *flags: str) -> list[str]:
    return ["simulate", f"--out={out}", "--start=2026-01-01", "--days=1", "--rows_per_day=50", *flags]


def test_help_lists_the_absl_logging_flags_on_the_command_and_its_subcommands():
    for command in ([], ["daily"], ["spec", "check"]):
        out = ecdctr(*command, "--help")
        assert out.returncode == 0, out.stderr
        for flag in ("--verbosity", "--log_dir", "--alsologtostderr", "--stderrthreshold"):
            assert flag in out.stdout, (command, flag)


def test_progress_is_logged_in_absl_format_and_verbosity_silences_it(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(simulate(tmp_path / "a"))
    assert e.value.code == 0 and ABSL_INFO.search(capsys.readouterr().err)
    for flags in (["--verbosity=-2"], ["-v", "-2"]):  # on the subcommand; absl's short form
        with pytest.raises(SystemExit) as e:
            main(simulate(tmp_path / "b", *flags))
        assert e.value.code == 0 and capsys.readouterr().err == ""
    with pytest.raises(SystemExit) as e:  # the next run starts from the defaults again
        main(["--verbosity=-2", *simulate(tmp_path / "c")])
    with pytest.raises(SystemExit) as e:
        main(simulate(tmp_path / "d"))
    assert ABSL_INFO.search(capsys.readouterr().err)


def test_log_dir_gets_absl_log_files(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(simulate(tmp_path / "a", f"--log_dir={tmp_path / 'logs'}", "--alsologtostderr"))
    assert e.value.code == 0
    text = (tmp_path / "logs" / "ecdctr.INFO").read_text()
    assert ABSL_INFO.search(text) and "simulated:" in text
    assert "simulated:" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(simulate(tmp_path / "b", "--log_dir=s3://bucket/logs"))
    assert e.value.code == 2 and "Fix: pass a local folder" in capsys.readouterr().err


def test_tensorflow_start_up_noise_stays_out_of_a_normal_run(tmp_path):
    out = ecdctr("inspect", str(tmp_path))
    assert out.returncode == 2 and "not a model folder" in out.stderr
    assert out.stderr.strip().count("\n") == 0, out.stderr  # the error line, nothing else
    assert not logs.NOISE.search(out.stderr)


def test_native_lines_that_are_not_noise_are_kept(tmp_path):
    """What TensorFlow's native code writes at import is caught and written back, minus the
    known noise; a user's TF_CPP_MIN_LOG_LEVEL wins over the CLI's."""
    code = ("import os, sys\n"
            "from absl import flags\n"
            "from ecdctr.cli import logs\n"
            "flags.FLAGS(['x'])\n"
            "os.write(2, b'E kept: a real error\\n')\n"
            "sys.modules.pop('tensorflow', None)\n"
            "import builtins\n"
            "real = builtins.__import__\n"
            "def noisy(name, *a, **k):\n"
            "    if name == 'tensorflow' and 'tensorflow' not in sys.modules:\n"
            "        os.write(2, b'E cuda_dnn.cc:1] Unable to register cuDNN factory: x\\n'\n"
            "                    b'E native: something that matters\\n')\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = noisy\n"
            "logs.import_tensorflow()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "E native: something that matters" in out.stderr and "E kept" in out.stderr
    assert "Unable to register" not in out.stderr
