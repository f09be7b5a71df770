# Training image: the same pins as `make install`, runtime dependencies only.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 TF_USE_LEGACY_KERAS=1

WORKDIR /opt/ecdctr
COPY requirements.txt constraints.txt setup.py ./
# constraints.txt also pins the dev tools; pip only installs what requirements.txt asks for.
RUN pip install --no-cache-dir -r requirements.txt -c constraints.txt
COPY ecdctr ./ecdctr
COPY pipelines ./pipelines
COPY features ./features
COPY configs ./configs
RUN pip install --no-cache-dir --no-deps .

ENTRYPOINT ["ecdctr"]
CMD ["--help"]
