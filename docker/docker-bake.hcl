# Images of edge-deploy. Bases, versions and the model are variables (data), never edited into Dockerfiles.
#   docker buildx bake -f docker/docker-bake.hcl                     # converter + runtime
#   VERSION=0.1.0 REGISTRY=registry.example.com docker buildx bake -f docker/docker-bake.hcl --push
# `edge-deploy image build` wraps this (it first exports the bundle to label the runtime image with its sha256).

variable "REGISTRY" { default = "localhost:5000" }
variable "IMAGE_PREFIX" { default = "edge-deploy" }
variable "VERSION" { default = "dev" }
# Extra tags, comma-separated tag names (the release tool computes them); VERSION is always a tag.
variable "TAGS" { default = "" }
# Copies of the JetPack table's default row (runtime/edge_runtime/jetpack.json); `edge-deploy image build`
# passes the table's values, and tests/build/test_versions_drift.py fails when these defaults drift.
variable "L4T_BASE" { default = "nvcr.io/nvidia/l4t-jetpack:r36.4.0" }
variable "CONVERTER_BASE" { default = "python:3.11-slim-bookworm" }
variable "TORCH_SPEC" { default = "torch==2.13.0" }
# Wheel directories the offline builds install from (`edge-deploy image build` fills them with pip download).
variable "WHEELHOUSE" { default = ".edge/wheelhouse/converter" }
variable "RUNTIME_WHEELHOUSE" { default = ".edge/wheelhouse/runtime" }
# What the runtime's `ros2` stage compiles Cyclone DDS and its Python binding from (scripts/host-setup fills it).
variable "ROS2_SOURCES" { default = "/var/cache/edge-deploy/ros2" }
# Directory holding the model (MODEL is a path inside it: a .pt/.onnx file or a prebuilt bundle directory).
variable "MODEL_DIR" { default = "." }
variable "MODEL" { default = "policy.pt" }
variable "PRECISION" { default = "fp16" }
variable "CALIBRATION" { default = "" }
variable "BATCH" { default = "1,1,8" }
# NAME:SHAPE[:DTYPE] input overrides for the converter, space-separated (edge-deploy convert --input)
variable "INPUTS" { default = "" }
variable "BUNDLE_SHA256" { default = "" }
variable "RUNTIME_PLATFORMS" { default = "linux/arm64" }
# "required": the runtime build fails unless the base's Python provides TensorRT; "optional" for other bases.
variable "BASE_TENSORRT" { default = "required" }
variable "GIT_SHA" { default = "unknown" }
# The bases' digests at build time (`edge-deploy image build` looks them up), for the base.digest labels.
variable "L4T_BASE_DIGEST" { default = "" }
variable "CONVERTER_BASE_DIGEST" { default = "" }
variable "CREATED" { default = "" }
variable "SOURCE" { default = "" }

function "tags_for" {
  params = [name]
  result = concat(
    ["${REGISTRY}/${IMAGE_PREFIX}/${name}:${VERSION}"],
    [for t in compact(split(",", TAGS)) : "${REGISTRY}/${IMAGE_PREFIX}/${name}:${trimspace(t)}"]
  )
}

group "default" {
  targets = ["converter", "runtime"]
}

# Build cache, e.g. "type=gha" and "type=gha,mode=max" in GitHub Actions (the workflows set these); empty
# locally, where the engine's own cache serves.
variable "BAKE_CACHE_FROM" { default = "" }
variable "BAKE_CACHE_TO" { default = "" }

target "_common" {
  context = "."
  cache-from = compact([BAKE_CACHE_FROM])
  cache-to = compact([BAKE_CACHE_TO])
}

target "converter" {
  inherits = ["_common"]
  dockerfile = "docker/converter.Dockerfile"
  target = "converter"
  platforms = ["linux/amd64"]
  contexts = { wheelhouse = WHEELHOUSE }
  args = { CONVERTER_BASE = CONVERTER_BASE, TORCH_SPEC = TORCH_SPEC }
  tags = tags_for("converter")
  labels = {
    "org.opencontainers.image.title" = "edge-deploy converter"
    "org.opencontainers.image.version" = VERSION
    "org.opencontainers.image.revision" = GIT_SHA
    "org.opencontainers.image.created" = CREATED
    "org.opencontainers.image.source" = SOURCE
    "org.opencontainers.image.base.name" = CONVERTER_BASE
    "org.opencontainers.image.base.digest" = CONVERTER_BASE_DIGEST
    "org.opencontainers.image.licenses" = "Apache-2.0"
    "org.opencontainers.image.description" = "edge-deploy converter: PyTorch policy to a TensorRT-ready ONNX bundle (CPU)"
  }
}

target "_model" {
  inherits = ["_common"]
  dockerfile = "docker/runtime.Dockerfile"
  contexts = { converter = "target:converter", model = MODEL_DIR, wheelhouse = RUNTIME_WHEELHOUSE, ros2-sources = ROS2_SOURCES }
  args = {
    L4T_BASE = L4T_BASE, CONVERTER_BASE = CONVERTER_BASE, MODEL = MODEL, PRECISION = PRECISION, CALIBRATION = CALIBRATION, BATCH = BATCH, INPUTS = INPUTS,
    VERSION = VERSION, GIT_SHA = GIT_SHA, CREATED = CREATED, SOURCE = SOURCE, BUNDLE_SHA256 = BUNDLE_SHA256,
    BASE_TENSORRT = BASE_TENSORRT, L4T_BASE_DIGEST = L4T_BASE_DIGEST
  }
}

# The converted bundle alone, exported to a local directory (`--set bundle.output=type=local,dest=DIR`).
target "bundle" {
  inherits = ["_model"]
  target = "bundle"
  platforms = ["linux/amd64"]
  output = ["type=local,dest=.edge/bundle-export"]
}

target "runtime" {
  inherits = ["_model"]
  target = "runtime"
  platforms = split(",", RUNTIME_PLATFORMS)
  tags = tags_for("runtime")
  labels = {
    "org.opencontainers.image.licenses" = "Apache-2.0"
    "org.opencontainers.image.description" = "edge-runtime: builds the TensorRT engine on the robot and serves the policy over HTTP"
  }
}

# The runtime without a model: what an image of several models is built FROM (`edge-deploy image build
# --model NAME=PATH ...` adds a generated bake file whose `runtime` puts one layer per model on it).
target "runtime-base" {
  inherits = ["_model"]
  target = "runtime-base"
  platforms = split(",", RUNTIME_PLATFORMS)
}
