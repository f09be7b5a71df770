# Training image: the same pins as `make install`, runtime dependencies only.
#   docker build -t ecdctr .                          the `ecdctr` command (default target)
#   docker build --target=worker -t ecdctr-worker .   Beam worker image for the build job on a
#                                                     cluster (docs/cluster.md)
FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 TF_USE_LEGACY_KERAS=1

WORKDIR /opt/ecdctr
COPY requirements.txt constraints.txt setup.py MANIFEST.in ./
# constraints.txt also pins the dev tools; pip only installs what requirements.txt asks for.
RUN pip install --no-cache-dir -r requirements.txt -c constraints.txt
COPY ecdctr ./ecdctr
COPY pipelines ./pipelines
COPY features ./features
COPY configs ./configs
RUN pip install --no-cache-dir --no-deps .

# Beam SDK worker: the same installation, started by Beam's boot program (the version must be
# the apache-beam of requirements.txt and the Python the image's).
FROM base AS worker
COPY --from=apache/beam_python3.11_sdk:2.77.0 /opt/apache/beam /opt/apache/beam
ENTRYPOINT ["/opt/apache/beam/boot"]

FROM base
# Not root: a training job needs no privileges; mount the work folder writable for uid 10001
# (or use object storage, docs/storage.md).
RUN useradd --system --uid 10001 --create-home --home-dir /home/ecdctr ecdctr
USER 10001:10001
WORKDIR /home/ecdctr
ENTRYPOINT ["ecdctr"]
CMD ["--help"]
