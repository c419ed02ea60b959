# Robot runtime image (L4T, arm64): edge_runtime + its backend, then the model bundle LAST in its own
# layer, so a model-only release pushes and pulls one small layer. The model is converted natively on the
# build platform in the `convert` stage (FROM the converter), never under QEMU.
# Defaults copied from the JetPack table's default row (runtime/edge_runtime/jetpack.json; drift-tested).
ARG L4T_BASE=nvcr.io/nvidia/l4t-jetpack:r36.4.0
ARG CONVERTER_BASE=python:3.11-slim-bookworm

# --- model → bundle, on the build platform --------------------------------------------------------------
# `converter` and `model` are bake named contexts (target:converter, the model directory), not registry images.
# hadolint ignore=DL3006
FROM --platform=$BUILDPLATFORM converter AS convert
ARG MODEL=policy.pt
ARG PRECISION=fp16
ARG CALIBRATION=
ARG BATCH=1,1,8
# the bundle's `created` time in a reproducible build (the commit time, from `edge-deploy image build`)
ARG SOURCE_DATE_EPOCH
# hadolint ignore=DL3022
COPY --from=model --chown=1001 . /in
# A prebuilt bundle (a directory with bundle.json) is taken as it is; a model file is converted.
RUN --network=none set -e; mkdir -p /tmp/out; \
    if [ -f "/in/${MODEL}/bundle.json" ]; then cp -a "/in/${MODEL}" /tmp/out/bundle; \
    else edge-deploy convert "/in/${MODEL}" -o /tmp/out/bundle --precision "${PRECISION}" --batch "${BATCH}" \
           ${CALIBRATION:+--calibration "/in/${CALIBRATION}"}; fi; \
    chmod -R a+rX /tmp/out/bundle

# `bake bundle` exports just the bundle (its sha256 becomes the runtime image's label)
FROM scratch AS bundle
COPY --from=convert /tmp/out/bundle /

# The runtime's requirements from pyproject.toml (the device side and CUDA's Python bindings), on the build
# platform. It depends on pyproject.toml alone (not on the converter, whose code changes every release), so the
# runtime's dependency layer stays cached.
FROM --platform=$BUILDPLATFORM ${CONVERTER_BASE} AS device-reqs
# The one place the runtime's extras are named (edge_deploy.images.runtime_extras reads it to fill the wheelhouse).
ARG RUNTIME_EXTRAS=device,jetson
COPY pyproject.toml docker/requirements.py /tmp/src/
RUN --network=none python3 /tmp/src/requirements.py /tmp/src/pyproject.toml "${RUNTIME_EXTRAS}" > /tmp/requirements-runtime.txt

# edge_runtime with its bytecode, compiled by the runtime base's own Python (the magic number must match;
# hash-based, so layers are reproducible and the read-only container never compiles at start: ~45 ms natively
# and several times that under emulation, at every service start and every health check). Its own stage, so
# the result is still one small --link layer that a code-only release changes.
FROM ${L4T_BASE} AS code
COPY runtime/edge_runtime /opt/edge/lib/edge_runtime
RUN --network=none python3 -m compileall -q --invalidation-mode unchecked-hash /opt/edge/lib >/dev/null

# ROS 2: Cyclone DDS 0.10 (the C library of ROS 2 Humble's rmw_cyclonedds) and its Python binding, compiled
# for the target platform by the base's own Python (the binding's ABI must match it), so the compilers stay in
# this stage. No network: the `ros2-sources` context (scripts/host-setup fills it) holds the `cyclonedds` sdist
# and its build tools (src/), and per arch the Debian packages the base lacks to compile it (debs-ARCH/:
# gcc, libc6-dev, python3-dev, cyclonedds-dev 0.10.2, resolved against the stand-in base). A base that has
# ROS 2 (/opt/ros/DISTRO with its Cyclone DDS) builds against that Cyclone instead, and ships no library of its
# own. Out: /out/wheels (the binding) and /out/root (libddsc and the libraries it needs that the base lacks).
FROM ${L4T_BASE} AS ros2
# docker/ros2-stage.sh: what to build against and what the runtime image needs of it, then the binding
ARG TARGETARCH
ARG CYCLONEDDS_PY=0.10.5
# the wheel's zip entry times (reproducible images: docs/images.md)
ARG SOURCE_DATE_EPOCH
RUN --network=none --mount=type=bind,from=ros2-sources,target=/ros2 \
    --mount=type=bind,source=docker/ros2-stage.sh,target=/tmp/ros2-stage.sh \
    TARGETARCH="${TARGETARCH}" bash /tmp/ros2-stage.sh prepare \
 && CYCLONEDDS_PY="${CYCLONEDDS_PY}" bash /tmp/ros2-stage.sh wheel

FROM ${L4T_BASE} AS runtime
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
# `required`: the build fails when the base's Python has no TensorRT module (l4t-jetpack has it); `optional`
# for a base without TensorRT, whose robots then serve ONNX Runtime.
ARG BASE_TENSORRT=required
# Offline: wheels for this platform come from the `wheelhouse` context (filled on the host by pip download).
# The venv is made without pip, and pip runs from its wheel in the wheelhouse: nothing here needs python3-venv,
# ensurepip or python3-pip in the base, and no pip is left in the image.
# Bytecode is compiled here, hash-based (reproducible layers), tests skipped: +16 MB, and the service's
# imports take half the time (no compile on every start of a read-only container). Cython sources are
# compile-time only (11.8 MB, nearly all cuda-bindings'): removed.
# TensorRT is the base's own: one symlink in the venv's site-packages to the package the base's Python finds
# (docker/link_base_package.py), made after the compile so nothing is written into the base's files.
RUN --network=none --mount=type=bind,from=wheelhouse,target=/wheelhouse \
    --mount=type=bind,from=device-reqs,source=/tmp/requirements-runtime.txt,target=/tmp/requirements-runtime.txt \
    --mount=type=bind,source=docker/link_base_package.py,target=/tmp/link_base_package.py \
    --mount=type=bind,from=ros2,source=/out/wheels,target=/tmp/ros2-wheels \
    python3 -m venv --without-pip /opt/edge/venv \
 && pip_whl=$(printf '%s\n' /wheelhouse/pip-*.whl | sort -V | tail -n 1) \
 && /opt/edge/venv/bin/python "${pip_whl}/pip" install --no-index --find-links /wheelhouse --no-compile \
      -r /tmp/requirements-runtime.txt \
 && /opt/edge/venv/bin/python "${pip_whl}/pip" install --no-index --no-deps --no-compile /tmp/ros2-wheels/cyclonedds-*.whl \
 && find /opt/edge/venv -name '__pycache__' -prune -exec rm -rf {} + \
 && find /opt/edge/venv/lib -type f \( -name '*.pyx' -o -name '*.pxd' -o -name '*.pxi' -o -name '*.pyx.in' \
      -o -name '*.pxd.in' -o -name '*.pxi.in' \) -delete \
 && /opt/edge/venv/bin/python -m compileall -q -f -j 0 --invalidation-mode unchecked-hash -x '/(tests?|testing)/' \
      /opt/edge/venv/lib >/dev/null \
 && python3 -I /tmp/link_base_package.py /opt/edge/venv tensorrt "--${BASE_TENSORRT}" \
 && printf '#!/opt/edge/venv/bin/python\nimport sys\nfrom edge_runtime.cli import main\nsys.exit(main())\n' \
      > /opt/edge/venv/bin/edge-runtime && chmod 0755 /opt/edge/venv/bin/edge-runtime \
 && (getent group video >/dev/null || groupadd --system video) \
 && useradd --system --uid 1000 --gid video --home-dir /var/cache/edge --no-create-home --shell /usr/sbin/nologin edge \
 && mkdir -p /var/cache/edge && chown edge:video /var/cache/edge
ENV PATH=/opt/edge/venv/bin:$PATH PYTHONPATH=/opt/edge/lib PYTHONDONTWRITEBYTECODE=1 \
    EDGE_BUNDLE=/opt/edge/bundle EDGE_CACHE=/var/cache/edge EDGE_HOST=0.0.0.0 EDGE_PORT=8080
VOLUME ["/var/cache/edge"]
USER 1000
WORKDIR /var/cache/edge
EXPOSE 8080
# The first start builds the engine (minutes on a Jetson), hence the long start period.
HEALTHCHECK --interval=5s --timeout=5s --start-period=600s --retries=3 CMD ["python3", "-m", "edge_runtime.healthcheck"]
ENTRYPOINT ["edge-runtime", "serve"]
ARG VERSION=dev
ARG GIT_SHA=unknown
ARG CREATED=
ARG SOURCE=
ARG L4T_BASE
ARG L4T_BASE_DIGEST=
ARG BUNDLE_SHA256=
ARG PRECISION=fp16
LABEL org.opencontainers.image.title="edge-runtime" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${GIT_SHA}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.base.name="${L4T_BASE}" \
      org.opencontainers.image.base.digest="${L4T_BASE_DIGEST}" \
      io.edge-deploy.bundle.sha256="${BUNDLE_SHA256}" \
      io.edge-deploy.precision="${PRECISION}"
# Cyclone DDS's C library for the ROS 2 binding (nothing when the base has ROS 2's own)
COPY --link --from=ros2 /out/root/ /
COPY --link --from=code /opt/edge/lib /opt/edge/lib
COPY --link --from=convert /tmp/out/bundle /opt/edge/bundle
