# x86 converter image: PyTorch → ONNX → model bundle (`edge-deploy convert`), run natively on the build host.
# Bases are build args (bake variables), never edited here.
ARG CONVERTER_BASE=python:3.11-slim-bookworm

FROM ${CONVERTER_BASE} AS deps
ARG TORCH_SPEC=torch==2.13.0
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
RUN --network=none python3 -m venv /opt/edge/venv
COPY pyproject.toml docker/requirements.py /src/
# Builds are offline: every wheel comes from the `wheelhouse` context that `edge-deploy image build` fills
# on the host (`pip download` for this platform; torch as a CPU wheel). No network, no secrets in the build.
RUN --network=none --mount=type=bind,from=wheelhouse,target=/wheelhouse \
    /opt/edge/venv/bin/python /src/requirements.py /src/pyproject.toml host > /src/requirements.txt \
 && /opt/edge/venv/bin/pip install --no-index --find-links /wheelhouse --no-compile "${TORCH_SPEC}" -r /src/requirements.txt
COPY README.md /src/
COPY build /src/build
COPY runtime /src/runtime
COPY compose /src/compose
RUN --network=none --mount=type=bind,from=wheelhouse,target=/wheelhouse \
    /opt/edge/venv/bin/pip install --no-index --find-links /wheelhouse --no-deps --no-compile /src

FROM ${CONVERTER_BASE} AS converter
RUN --network=none useradd --system --uid 1001 --create-home --home-dir /home/edge edge
COPY --from=deps /opt/edge/venv /opt/edge/venv
ENV PATH=/opt/edge/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1
USER 1001
WORKDIR /work
ENTRYPOINT ["edge-deploy"]
CMD ["--help"]
