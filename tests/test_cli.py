"""The CLI's error lines: errors a user can act on are one line with the path and the fix."""

import datetime as dt
import errno
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from ecdctr.cli.main import error_line, main
from ecdctr.data.simulator import SimConfig, simulate
from ecdctr.spec.validation import ConfigError


@pytest.mark.parametrize("error, expected", [
    (OSError(errno.ENOSPC, "No space left on device", "/data/export/actr/.staging-1"),
     "No space left on device: /data/export/actr/.staging-1. Fix: free space"),
    (PermissionError(errno.EACCES, "Permission denied", "/data/export"),
     "Permission denied: /data/export. Fix: give the user running ecdctr permission"),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "features"),
     "Is a directory: features. Fix: pass a file"),
    (tf.errors.ResourceExhaustedError(None, None, "/data/export/actr/.staging-1/variables; No space left"),
     "ResourceExhaustedError: /data/export/actr/.staging-1/variables; No space left. Fix: free space"),
    (tf.errors.PermissionDeniedError(None, None, "/ro/export; Read-only file system"),
     "PermissionDeniedError: /ro/export; Read-only file system. Fix: give the user"),
    (RuntimeError("Pipeline failed:\nTraceback (most recent call last):\n  File \"x.py\", line 1\n"
                  "OSError: [Errno 28] No space left on device: '/work/.staging/x'\n"
                  "[while running 'write shards']"),
     "OSError: [Errno 28] No space left on device: '/work/.staging/x'. Fix: free space"),
    (ConfigError("c.yaml: bad. Fix: good."), "c.yaml: bad. Fix: good."),
])
def test_known_errors_become_one_line_with_the_fix(error, expected):
    line = error_line(error)
    assert line is not None and line.startswith(expected) and "\n" not in line


def test_bugs_keep_their_traceback():
    assert error_line(KeyError("x")) is None and error_line(AttributeError("y")) is None


def test_a_spec_path_that_is_a_folder_is_one_error_line(tmp_path, capsys):
    (tmp_path / "spec.yaml").mkdir()
    with pytest.raises(SystemExit) as e:
        main(["build", f"--spec={tmp_path / 'spec.yaml'}", f"--logs={tmp_path}", f"--work={tmp_path / 'w'}"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert "spec.yaml: is a folder, not a YAML file" in err


@pytest.mark.parametrize("date", ["0001-01-01", "9999-12-31"])
def test_a_date_out_of_range_is_one_error_line(date, capsys):
    with pytest.raises(SystemExit) as e:  # no traceback: dates around it would overflow
        main(["daily", "--config=configs/demo.yaml", f"--date={date}"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err and f"{date} is out of range" in err


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KiB tmpfs (needs root and a kernel that lets it mount: CI's machine does)."""
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_build_into_a_full_disk_is_one_error_line_with_the_fix(tmp_path, full_disk):
    spec = os.path.join(os.path.dirname(__file__), "..", "features", "default.yaml")
    simulate(str(tmp_path / "logs"), dt.date(2026, 1, 1), 1, SimConfig(natural_rows_per_day=3000))
    out = subprocess.run([sys.executable, "-m", "ecdctr", "build", f"--spec={spec}",
                          f"--logs={tmp_path / 'logs'}", f"--work={full_disk / 'work'}"],
                         capture_output=True, text=True, timeout=300)
    errors = [line for line in out.stderr.splitlines() if not line.startswith("I")]
    assert out.returncode == 2, out.stderr
    assert len(errors) == 1 and "Traceback" not in out.stderr, out.stderr
    assert "No space left on device" in errors[0] and "Fix: free space" in errors[0]
    assert f"{full_disk / 'work' / '.staging'}" in errors[0]  # where


@pytest.mark.parametrize("text, what", [("[1, 2]", "a JSON list, not an object"), ("", "empty")])
def test_inspect_of_a_damaged_meta_json_names_it(tmp_path, capsys, text, what):
    (tmp_path / "meta.json").write_text(text)
    with pytest.raises(SystemExit) as e:
        main(["inspect", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert f"{tmp_path / 'meta.json'}: damaged ({what})" in err


def test_the_daily_summary_on_stdout_keeps_the_overall_figures_only():
    from ecdctr.cli.main import _headline

    metrics = {"auc": 0.7, "auc_ci": [0.6, 0.8], "clicks": 12,
               "per_domain_auc": {"s0|p1": {"auc": 0.5}}, "bins_auc": {"top": 0.7}}
    assert _headline(metrics) == {"auc": 0.7, "auc_ci": [0.6, 0.8], "clicks": 12}
    assert _headline(None) is None
