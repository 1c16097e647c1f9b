"""mkgan_engine.export: YOLOv8 and SAM to ONNX, TensorRT and AOTInductor, with a manifest."""
