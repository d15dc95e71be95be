"""Training package: labelled recordings to the ONNX model the daemon runs.

Install with the [train] extra (torch, torchaudio, xgboost, flwr).
"""
