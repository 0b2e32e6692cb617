# PatchCore anomaly-detection service: FastAPI server + index builder in one image (the default, last stage), or
# the torch-free serving image (target "serve": python + onnxruntime + faiss-cpu + FastAPI + Pillow, no torch).
#
#   CPU (default):  docker build -t patchcore:cpu .
#   GPU (CUDA 13):  docker build --build-arg TORCH_VARIANT=cuda -t patchcore:cuda .      # run with --gpus all
#   slim serving:   docker build --target serve -t patchcore:serve .
#                   It serves indexes that hold extractor.onnx (patchcore-build-index writes it in the full image;
#                   patchcore-export adds it to older indexes) with PATCHCORE_RUNTIME=onnx; it cannot build indexes.
#
#   serve a mounted index:  docker run -p 8000:8000 -v $PWD/runs/indexes:/indexes:ro patchcore:cpu
#   build an index:         docker run --rm -v $PWD/data/bottle:/data:ro -v $PWD/runs/indexes:/indexes \
#                               patchcore:cpu patchcore-build-index --data /data --out /indexes/bottle
#   bake indexes in:        put them under docker-indexes/ (the one place .dockerignore lets *.faiss through), then
#                           docker build --build-arg INDEX_SRC=docker-indexes -t patchcore:bottle .
#
# Build arguments (all optional):
#   BASE_IMAGE           Debian bookworm-based image with apt (python3 = 3.11).       default debian:bookworm-slim
#   TORCH_VARIANT        cpu | cuda                                                   default cpu
#   TORCH_INDEX_URL      where torch/torchvision come from: "auto" (cpu -> https://download.pytorch.org/whl/cpu,
#                        cuda -> the normal package index, whose Linux wheels are CUDA builds), "none" (the normal
#                        package index), or a URL (a mirror of a PyTorch wheel index).  default auto
#   TORCH_VERSION, TORCHVISION_VERSION                                                 default 2.14.1, 0.29.1
#   PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_TRUSTED_HOST   the package index (mirror) for everything; unset: PyPI.
#   PIP_EXTRA_ARGS       extra arguments for every `pip install`.
#   CA_BUNDLE            path (inside the build context) of a PEM file with extra CA certificates, e.g. a corporate
#                        TLS-inspecting proxy's; trusted by apt, pip and the image. Default: none.
#   INDEX_SRC            folder of the build context copied to /indexes (baked-in indexes). Default: none.
#
# Run-time environment (docker run -e): PATCHCORE_THREADS / OMP_NUM_THREADS / MKL_NUM_THREADS / OPENBLAS_NUM_THREADS
# (default 4: set them to the container's CPU quota), PATCHCORE_INDEX_DIR (/indexes), PATCHCORE_PORT (8000; the
# HEALTHCHECK probes it too), any other PATCHCORE_* server setting (service/settings.py).
# The default command is `patchcore-serve --host 0.0.0.0`, i.e. port 8000 and --index-dir /indexes from the env.
#
# Layers are ordered from least to most often changed: system packages, torch (the big one), the project's
# other dependencies + the pretrained weights, then the project's source. Editing the source rebuilds only the
# last two layers; editing pyproject.toml's dependencies rebuilds from the dependency layer on.
# Only Dockerfile syntax the classic builder understands is used (no heredocs, no RUN --mount, no secrets).
# Metadata instructions (ENV, HEALTHCHECK, CMD, ...) come first on purpose: the classic builder runs a container
# for each of them, which costs a full copy of the image with the vfs storage driver once torch is in it.

ARG BASE_IMAGE=debian:bookworm-slim

# ---------------------------------------------------------------------------------------------------------------
# Stage "context": sorts the build context into what the image keeps, so the final stage copies it in one layer,
# and the CA file / baked indexes travel without an extra COPY per optional input.
FROM ${BASE_IMAGE} AS context
ARG CA_BUNDLE=
ARG INDEX_SRC=
COPY . /ctx/
RUN set -eu; \
    for p in "$CA_BUNDLE" "$INDEX_SRC"; do \
        case "$p" in /*|..|../*|*/../*|*/..) echo "CA_BUNDLE/INDEX_SRC must be relative paths inside the build context: $p" >&2; exit 2;; esac; \
    done; \
    mkdir -p /stage/opt/patchcore/src /stage/indexes /stage-ca /stage-deps/index_store; \
    if [ -n "$CA_BUNDLE" ]; then \
        [ -s "/ctx/$CA_BUNDLE" ] || { echo "CA_BUNDLE=$CA_BUNDLE: no such file in the build context" >&2; exit 2; }; \
        cp "/ctx/$CA_BUNDLE" /stage-ca/extra-ca.crt; rm -f "/ctx/$CA_BUNDLE"; \
    fi; \
    if [ -n "$INDEX_SRC" ]; then \
        [ -d "/ctx/$INDEX_SRC" ] || { echo "INDEX_SRC=$INDEX_SRC: no such folder in the build context (is it in .dockerignore?)" >&2; exit 2; }; \
        cp -a "/ctx/$INDEX_SRC/." /stage/indexes/; rm -rf "/ctx/${INDEX_SRC:?}"; \
    fi; \
    chmod -R u=rwX,go=rX /stage/indexes; \
    rm -rf /ctx/docker-indexes /ctx/Dockerfile /ctx/.dockerignore; \
    cp /ctx/pyproject.toml /stage-deps/; \
    cp /ctx/index_store/weights.py /stage-deps/index_store/; \
    cp -a /ctx/. /stage/opt/patchcore/src/

# ---------------------------------------------------------------------------------------------------------------
# Stage "system": what both images share: the environment, the health check, python 3.11 in a venv, the user.
FROM ${BASE_IMAGE} AS system

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    TORCH_HOME=/opt/torch \
    PATCHCORE_INDEX_DIR=/indexes \
    PATCHCORE_PORT=8000 \
    PATCHCORE_THREADS=4 \
    OMP_NUM_THREADS=4 \
    MKL_NUM_THREADS=4 \
    OPENBLAS_NUM_THREADS=4 \
    OMP_WAIT_POLICY=PASSIVE \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
EXPOSE 8000
# The server reads PATCHCORE_PORT / PATCHCORE_INDEX_DIR / PATCHCORE_THREADS (its command-line flags win), and so does
# the health check: change the port with -e PATCHCORE_PORT=..., not with --port, and both follow.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; r = urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('PATCHCORE_PORT', '8000'), timeout=4); sys.exit(0 if r.status == 200 else 1)"]
# No ENTRYPOINT: `docker run IMAGE patchcore-build-index ...` (or any command) replaces the server.
CMD ["patchcore-serve", "--host", "0.0.0.0"]
ARG DEBIAN_FRONTEND=noninteractive

# 1. System: python 3.11 + venv, CA certificates (plus CA_BUNDLE), the unprivileged user.
COPY --from=context /stage-ca/ /usr/local/share/ca-certificates/patchcore-build/
RUN set -eux; \
    extra_ca=/usr/local/share/ca-certificates/patchcore-build/extra-ca.crt; \
    apt_opts=""; if [ -s "$extra_ca" ]; then apt_opts="-o Acquire::https::CAInfo=$extra_ca"; fi; \
    apt-get $apt_opts update; \
    apt-get $apt_opts install -y --no-install-recommends python3 python3-venv ca-certificates; \
    update-ca-certificates; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin; \
    python3 -c 'import sys; assert sys.version_info >= (3, 11), sys.version'; \
    python3 -m venv /opt/venv; \
    groupadd --gid 10001 patchcore; \
    useradd --uid 10001 --gid patchcore --home-dir /home/patchcore --create-home --shell /usr/sbin/nologin patchcore; \
    mkdir -p /indexes /data "$TORCH_HOME"; \
    chown patchcore:patchcore /indexes
WORKDIR /home/patchcore

# ---------------------------------------------------------------------------------------------------------------
# Target "serve": the torch-free serving image. The extractor runs in onnxruntime from the index's extractor.onnx.
FROM system AS serve
ENV PATCHCORE_RUNTIME=onnx
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ARG PIP_EXTRA_ARGS=
COPY --from=context /stage-deps/pyproject.toml /tmp/deps/pyproject.toml
COPY --from=context /stage/opt/ /opt/
RUN set -eux; \
    pip install $PIP_EXTRA_ARGS --upgrade pip setuptools wheel; \
    python -c 'import re, tomllib; p = tomllib.load(open("/tmp/deps/pyproject.toml", "rb"))["project"]; skip = r"(torch|torchvision|scikit-learn|tqdm|onnx)\b"; deps = [d for d in p["dependencies"] if not re.match(skip, d)] + [d for d in p["optional-dependencies"]["onnx"] if d.startswith("onnxruntime")] + p["optional-dependencies"]["fast"]; print("\n".join(deps))' > /tmp/deps/requirements.txt; \
    cat /tmp/deps/requirements.txt; \
    pip install $PIP_EXTRA_ARGS -r /tmp/deps/requirements.txt; \
    pip install $PIP_EXTRA_ARGS --no-deps --no-build-isolation /opt/patchcore/src; \
    pip uninstall -y setuptools wheel; \
    rm -rf /tmp/deps /opt/patchcore/src /root/.cache; \
    python -c 'import importlib.util, sys; sys.exit("torch is in the serving image" if importlib.util.find_spec("torch") else 0)'; \
    python -c 'import faiss, onnxruntime, fastapi, uvicorn, service.app, model.onnx_runtime, index_store.store'; \
    command -v patchcore-serve
COPY --from=context /stage/indexes/ /indexes/
RUN chown -R patchcore:patchcore /indexes
USER patchcore

# ---------------------------------------------------------------------------------------------------------------
# The full image (default target): the builder, the evaluator and both runtimes.
FROM system AS full
# 2. torch + torchvision (the big, rarely changing layer).
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ARG PIP_EXTRA_ARGS=
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=auto
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
RUN set -eux; \
    pip install $PIP_EXTRA_ARGS --upgrade pip setuptools wheel; \
    case "$TORCH_VARIANT" in cpu|cuda) ;; *) echo "TORCH_VARIANT must be cpu or cuda, got $TORCH_VARIANT" >&2; exit 2;; esac; \
    url="$TORCH_INDEX_URL"; \
    if [ "$url" = auto ]; then \
        if [ "$TORCH_VARIANT" = cpu ]; then url=https://download.pytorch.org/whl/cpu; else url=none; fi; \
    fi; \
    if [ "$url" = none ]; then \
        pip install $PIP_EXTRA_ARGS "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"; \
    else \
        pip install $PIP_EXTRA_ARGS --index-url "$url" \
            --extra-index-url "${PIP_INDEX_URL:-https://pypi.org/simple}" ${PIP_EXTRA_INDEX_URL:+--extra-index-url "$PIP_EXTRA_INDEX_URL"} \
            "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"; \
    fi; \
    cuda="$(python -c 'import torch; print(torch.version.cuda or "")')"; \
    if [ "$TORCH_VARIANT" = cuda ] && [ -z "$cuda" ]; then \
        echo "TORCH_VARIANT=cuda but $url served a CPU-only torch" >&2; exit 2; \
    fi; \
    if [ "$TORCH_VARIANT" = cpu ] && [ -n "$cuda" ]; then \
        echo "NOTE: the CPU image got a CUDA $cuda build of torch (no CPU wheel at $url); it runs on CPU but carries" \
             "the CUDA libraries. Dropping triton, which only compiles GPU kernels (-0.9 GB)."; \
        pip uninstall -y triton; \
    fi; \
    python -c 'import torch, torchvision; print("torch", torch.__version__, "cuda", torch.version.cuda, "torchvision", torchvision.__version__)'

# 3. The project's other dependencies (from pyproject.toml) and the pretrained MobileNetV2 weights, seeded into
#    torchvision's cache ($TORCH_HOME/hub/checkpoints) by the project's own fetcher, so nothing downloads at run time.
COPY --from=context /stage-deps/ /tmp/deps/
RUN set -eux; \
    python -c 'import re, tomllib; deps = tomllib.load(open("/tmp/deps/pyproject.toml", "rb"))["project"]["dependencies"]; opt = tomllib.load(open("/tmp/deps/pyproject.toml", "rb"))["project"]["optional-dependencies"]; extra = opt["onnx"] + opt["fast"]; print("\n".join([d for d in deps if not re.match(r"(torch|torchvision)\b", d)] + extra))' > /tmp/deps/requirements.txt; \
    cat /tmp/deps/requirements.txt; \
    pip install $PIP_EXTRA_ARGS -r /tmp/deps/requirements.txt; \
    python /tmp/deps/index_store/weights.py; \
    rm -rf /tmp/deps

# 4. The project itself (changes most often): source, optional baked indexes (read-only for the server user),
#    install, self-check.
COPY --from=context /stage/ /
RUN set -eux; \
    pip install $PIP_EXTRA_ARGS --no-deps --no-build-isolation /opt/patchcore/src; \
    rm -rf /opt/patchcore/src/build /opt/patchcore/src/*.egg-info; \
    patchcore-fetch-weights --check; \
    for c in patchcore-build-index patchcore-serve patchcore-evaluate patchcore-demo patchcore-fetch-weights patchcore-export; do \
        command -v "$c"; \
    done; \
    python -c 'import faiss, torch, torchvision, onnx, onnxruntime, fastapi, uvicorn, model, imaging, index_store, service, evaluation, demo'; \
    chown patchcore:patchcore /indexes

USER patchcore
