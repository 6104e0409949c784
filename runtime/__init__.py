"""edgeconv's device side: preprocessing and inference with numpy, Pillow and one engine.

Nothing here imports TensorFlow, Keras, train/ or export/.
"""

from edgeconv.runtime.classifier import Classifier, Prediction
from edgeconv.runtime.preprocess import PREPROCESSING, ImageError, load_image

__all__ = ["PREPROCESSING", "Classifier", "ImageError", "Prediction", "load_image"]
