"""The training image's Dockerfile (no Docker engine here: its contract is read, not run)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _stages(text: str) -> list[list[str]]:
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages


def test_the_training_image_does_not_run_as_root():
    final = _stages((ROOT / "Dockerfile").read_text())[-1]
    users = [line.split(None, 1)[1] for line in final if line.upper().startswith("USER ")]
    assert users, "the final stage sets no USER: the image would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert any("useradd" in line and f"--uid {user}" in line for line in final)
    assert final.index(next(line for line in final if line.startswith("USER"))) < final.index(
        next(line for line in final if line.startswith("ENTRYPOINT")))


def _copied(stage: list[str]) -> set[str]:
    """The build-context paths a stage's COPY instructions take (not those of --from=)."""
    sources: set[str] = set()
    for line in stage:
        words = line.split()
        if words[0].upper() == "COPY" and not any(w.startswith("--from=") for w in words):
            sources.update(w.rstrip("/") for w in words[1:-1] if not w.startswith("--"))
    return sources


def test_the_image_copies_what_the_package_needs():
    copied = _copied(_stages((ROOT / "Dockerfile").read_text())[0])
    for path in ("requirements.txt", "constraints.txt", "setup.py", "MANIFEST.in", "ecdctr",
                 "pipelines", "features", "configs"):
        assert path in copied and (ROOT / path).exists(), path
