"""Packaging for ecdctr: the library, the Beam pipelines and the `ecdctr` console script."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
REQUIREMENTS = [
    line.strip()
    for line in (HERE / "requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]

setup(
    name="ecdctr",
    version="0.1.0",
    description="Ad CTR training pipeline with natural-to-ad transfer (E-CDCTR) and AdaSparse",
    python_requires=">=3.11,<3.13",  # 3.11 and 3.12: README, "Python versions"
    packages=find_packages(include=["ecdctr", "ecdctr.*", "pipelines", "pipelines.*"]),
    package_data={"ecdctr": ["py.typed"]},
    install_requires=REQUIREMENTS,
    entry_points={"console_scripts": ["ecdctr=ecdctr.cli.main:main"]},
)
