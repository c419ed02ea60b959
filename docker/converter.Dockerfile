# x86 converter image: PyTorch → ONNX → model bundle (`edge-deploy convert`), run natively on the build host.
# Bases are build args (bake variables), never edited here.
ARG CONVERTER_BASE=python:3.11-slim-bookworm

# The host extra's requirements, read from pyproject.toml; an edit elsewhere in pyproject gives the same
# file, so the dependency layer below stays cached (BuildKit keys bind mounts by content).
FROM ${CONVERTER_BASE} AS reqs
COPY pyproject.toml docker/requirements.py /src/
RUN --network=none python3 /src/requirements.py /src/pyproject.toml host torch > /requirements.txt

FROM ${CONVERTER_BASE} AS deps
ARG TORCH_SPEC=torch==2.13.0
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Builds are offline: every wheel comes from the `wheelhouse` context that `edge-deploy image build` fills
# on the host (`pip download` for this platform; torch as a CPU wheel). No network, no secrets in the build.
# pip comes from the wheelhouse too (the venv is made without it), so the base needs no ensurepip.
RUN --network=none --mount=type=bind,from=wheelhouse,target=/wheelhouse \
    --mount=type=bind,from=reqs,source=/requirements.txt,target=/tmp/requirements.txt \
    python3 -m venv --without-pip /opt/edge/venv \
 && pip_whl=$(printf '%s\n' /wheelhouse/pip-*.whl | sort -V | tail -n 1) \
 && /opt/edge/venv/bin/python "${pip_whl}/pip" install --no-index --find-links /wheelhouse --no-compile \
      pip "${TORCH_SPEC}" -r /tmp/requirements.txt

FROM ${CONVERTER_BASE} AS converter
RUN --network=none useradd --system --uid 1001 --create-home --home-dir /home/edge edge
# Dependencies (torch, onnx, ...) in one layer that changes only when pyproject's requirements do.
COPY --from=deps /opt/edge/venv /opt/edge/venv
# The project itself: a small layer of its own, built from the bound context (writes there are discarded,
# nothing of the source tree stays in the image), so a code change never re-pushes the dependency layer.
RUN --network=none --mount=type=bind,target=/src,rw --mount=type=bind,from=wheelhouse,target=/wheelhouse \
    /opt/edge/venv/bin/pip install --no-index --find-links /wheelhouse --no-deps --no-compile /src \
 && rm -rf /root/.cache
ENV PATH=/opt/edge/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1
USER 1001
WORKDIR /work
ENTRYPOINT ["edge-deploy"]
CMD ["--help"]
