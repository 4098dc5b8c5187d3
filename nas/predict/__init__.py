"""Stage: using a trained model on pictures, and exporting it.

``faces`` finds faces (OpenCV's Haar cascade, or boxes from a CSV) and crops them as
FER2013 frames its faces; ``sources`` reads images, folders, video and a webcam;
``pipeline`` batches the faces through a checkpoint or an exported ONNX model and writes
the results; ``export`` writes ONNX or TorchScript and checks it against PyTorch.
"""
