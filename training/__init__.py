"""Training package: labelled recordings to the ONNX model the daemon runs (install the [train] extra)."""
