"""Inference: the predictor, batches of cases, the prediction folder, previews, ONNX."""
