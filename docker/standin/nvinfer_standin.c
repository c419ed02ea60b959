/*
 * STAND-IN for TensorRT's native libraries (libnvinfer, libnvonnxparser, libnvinfer_plugin).
 *
 * NOT TensorRT. It exports the nine C entry points the real TensorRT Python bindings
 * (tensorrt_bindings/tensorrt.so) take from those libraries, and every one returns NULL / 0.
 * With it on the library path the real bindings import, so their classes, enums and signatures
 * can be used and checked; the first native call (trt.Builder(logger), trt.Runtime(logger))
 * fails the way it fails on a Jetson whose container cannot reach the GPU.
 *
 * Built as libnvinfer.so.N, libnvonnxparser.so.N and libnvinfer_plugin.so.N (N = TensorRT major):
 *   cc -shared -fPIC -O2 -o libnvinfer.so.10 nvinfer_standin.c
 */
#include <stddef.h>

#define STANDIN(name) void *name(void) { return NULL; }

STANDIN(createInferBuilder_INTERNAL)
STANDIN(createInferRefitter_INTERNAL)
STANDIN(createInferRuntime_INTERNAL)
STANDIN(createNvOnnxParser_INTERNAL)
STANDIN(createNvOnnxParserRefitter_INTERNAL)
STANDIN(getBuilderPluginRegistry)
STANDIN(getPluginRegistry)

int getNvOnnxParserVersion(void) { return 0; }
int initLibNvInferPlugins(void *logger, const char *ns) { (void)logger; (void)ns; return 0; }

/* Marks a process that loaded the stand-in (`edge-runtime probe` reports it). */
const char edge_deploy_tensorrt_standin[] = "edge-deploy stand-in for libnvinfer: not TensorRT";
