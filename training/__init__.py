"""finsent training: data, fine-tuning, evaluation, ONNX export."""
