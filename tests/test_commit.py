"""The write-whole-then-publish helper (ecdctr.io.commit) on both file layers (gfile and Beam's
FileSystems), on a local folder and on an object store (the local moto S3 server): outputs
appear whole or not at all, replace what was there, and dead processes' leftovers go."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ecdctr.io import beam_files, commit, storage

LAYERS = {"gfile": storage.FILES, "beam": beam_files.FILES}


@pytest.fixture(params=["local", "s3"])
def place(request, tmp_path) -> str:
    """A folder to write in: a local one, or a fresh bucket on the local S3 server."""
    if request.param == "local":
        return str(tmp_path)
    bucket = request.getfixturevalue("bucket")
    beam_files.configure([], [bucket])
    return bucket


@pytest.fixture(params=sorted(LAYERS))
def files(request) -> commit.Files:
    return LAYERS[request.param]


def _read(path: str) -> bytes:
    return storage.read_bytes(path)


def _names(folder: str) -> list[str]:
    return sorted(storage.files_under(folder))


def test_a_file_is_replaced_whole_and_no_temp_file_stays(files, place):
    path = storage.join(place, "out", "report.json")
    commit.write_file(files, path, b"one")
    commit.write_file(files, path, b"two")
    assert _read(path) == b"two"
    assert storage.listdir(storage.join(place, "out")) == ["report.json"]


def _write_folder(files, folder: str, names: list[str], fail: bool = False) -> None:
    with commit.writing_folder(files, folder, last="meta.json") as target:
        for name in names:
            commit.write_file(files, storage.join(target, name), name.encode())
        if fail:
            raise RuntimeError("killed")
        commit.write_file(files, storage.join(target, "meta.json"), b"{}")


def test_a_folder_written_again_replaces_the_old_one_whole(files, place):
    folder = storage.join(place, "models", "2026-01-05")
    _write_folder(files, folder, ["a.txt", "old.txt"])
    _write_folder(files, folder, ["a.txt", "b.txt"])
    assert _names(folder) == ["a.txt", "b.txt", "meta.json"]
    assert storage.listdir(storage.join(place, "models")) == ["2026-01-05"]


def test_a_folder_cut_short_is_the_old_one_or_no_whole_one(files, place):
    folder = storage.join(place, "models", "2026-01-05")
    _write_folder(files, folder, ["a.txt"])
    with pytest.raises(RuntimeError, match="killed"):
        _write_folder(files, folder, ["b.txt"], fail=True)
    if files.renames_atomically(folder):  # the old folder stays; the new one is a leftover
        assert _names(folder) == ["a.txt", "meta.json"]
        assert storage.listdir(storage.join(place, "models")) == ["2026-01-05", "2026-01-05.tmp"]
    else:  # written in place: without its last file, readers take it as absent
        assert not storage.exists(storage.join(folder, "meta.json"))


def test_a_published_folder_appears_with_its_last_files_and_marker_last(files, place,
                                                                         monkeypatch):
    staged = commit.staging_folder(place, files)
    assert storage.basename(staged).startswith(".staging-")
    assert storage.basename(staged).endswith(f"-{os.getpid()}")
    for name in ("saved_model.pb", "variables/v.data", "assets.extra/spec.yaml"):
        commit.write_file(files, storage.join(staged, name), name.encode())
    order: list[str] = []
    copy, beam_copy = storage.copy, beam_files.FileSystems.copy
    monkeypatch.setattr(storage, "copy", lambda s, d, overwrite=True: (order.append(d), copy(s, d)))
    monkeypatch.setattr(beam_files.FileSystems, "copy",
                        lambda sources, destinations: (order.extend(destinations),
                                                       beam_copy(sources, destinations)))
    final = storage.join(place, "1")
    commit.publish_folder(_Recording(files, order), staged, final, ("saved_model.pb",),
                          "assets.extra/published.json", b"{}")
    assert _names(final) == ["assets.extra/published.json", "assets.extra/spec.yaml",
                             "saved_model.pb", "variables/v.data"]
    assert not storage.exists(staged)
    relative = [p[len(final) + 1:] if p.startswith(final + "/") else p for p in order]
    if files.renames_atomically(final):  # the marker goes into staging, renamed with it
        assert relative == [commit.temp_file(storage.join(staged, "assets.extra/published.json"))]
    else:
        assert relative[-2:] == ["saved_model.pb", "assets.extra/published.json"]


class _Recording:
    """A file layer that notes the paths it writes in `order`."""

    def __init__(self, files: commit.Files, order: list[str]):
        self.files, self.order = files, order

    def __getattr__(self, name: str):
        return getattr(self.files, name)

    def write_bytes(self, path: str, data: bytes, sync: bool = False) -> None:
        self.order.append(path)
        self.files.write_bytes(path, data, sync)


def test_a_deleted_folder_leaves_nothing_behind(files, place):
    folder = storage.join(place, "models", "2026-01-05")
    _write_folder(files, folder, ["a.txt"])
    commit.write_file(files, storage.join(place, "models", "keep", "meta.json"), b"{}")
    commit.delete_folder(files, folder, first="meta.json")
    assert storage.listdir(storage.join(place, "models")) == ["keep"]


def test_leftovers_of_dead_processes_are_found_those_of_live_ones_are_not(files, place):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead, alive = int(gone.stdout), os.getpid()
    folder = storage.join(place, "export")
    for name in (f"report.json.tmp-{dead}", f"report.json.tmp-{alive}", "report.json",
                 f".staging-20260105T000000-{dead}/saved_model.pb",
                 f".staging-20260105T000000-{alive}/saved_model.pb"):
        commit.write_file(files, storage.join(folder, name), b"x")
    assert commit.leftovers_of_dead_processes(files, folder) == [
        storage.join(folder, f".staging-20260105T000000-{dead}"),
        storage.join(folder, f"report.json.tmp-{dead}")]
    assert commit.leftovers_of_dead_processes(files, folder, commit.STAGING_PREFIX) == [
        storage.join(folder, f".staging-20260105T000000-{dead}")]
    assert commit.is_temp_file(f"report.json.tmp-{dead}", of="report.json")
