"""Custom Keras layers that saved models may contain (registered, so safe_mode loading works).

Saved models hold no Lambda layers (they can't be loaded safely); any preprocessing that Keras has
no layer for lives here as a small serializable layer. Importing this module registers them.
"""

from __future__ import annotations

import keras

# ImageNet channel means in BGR order, as keras.applications.imagenet_utils uses for "caffe" mode.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="studio")
class CaffePreprocess(keras.layers.Layer):
    """ResNet50's "caffe" preprocessing: RGB 0-255 to BGR, then subtract the ImageNet mean per channel."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)

    def call(self, inputs):
        x = keras.ops.cast(inputs, self.compute_dtype)
        x = keras.ops.flip(x, axis=-1)
        mean = keras.ops.convert_to_tensor(CAFFE_MEAN_BGR, dtype=self.compute_dtype)
        return x - mean

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return super().get_config()




@keras.saving.register_keras_serializable(package="studio")
class KnownScore(keras.layers.Layer):
    """The unknown-photo detector of lib.models.unknown as a layer: pooled base features in, the
    known score out (N x 1, 0..1: the share of the run's reference images at least this unusual).

    Weights: the whitening matrix, the whitened class centres and the sorted reference distances.
    Only built-in TFLite ops (matmul, sums, min, compare, cast), so exports keep converting."""

    def __init__(self, classes: int, dims: int, references: int, **kwargs):
        super().__init__(**kwargs)
        self.classes, self.dims, self.references = int(classes), int(dims), int(references)

    def build(self, input_shape):
        self.whitening = self.add_weight(
            name="whitening", shape=(self.dims, self.dims), initializer="zeros", trainable=False
        )
        self.centres = self.add_weight(
            name="centres", shape=(self.classes, self.dims), initializer="zeros", trainable=False
        )
        self.reference = self.add_weight(
            name="reference", shape=(self.references,), initializer="zeros", trainable=False
        )

    def call(self, inputs):
        ops = keras.ops
        x = ops.cast(inputs, "float32")
        x = x / ops.sqrt(ops.maximum(ops.sum(x * x, axis=-1, keepdims=True), 1e-24))
        z = ops.matmul(x, self.whitening)  # N x D
        diff = ops.expand_dims(z, 1) - ops.expand_dims(self.centres, 0)  # N x C x D
        distance = ops.min(ops.sum(diff * diff, axis=-1), axis=-1, keepdims=True)  # N x 1
        at_least = ops.sum(
            ops.cast(ops.expand_dims(self.reference, 0) >= distance, "float32"), axis=-1, keepdims=True
        )
        return (1.0 + at_least) / (self.references + 1.0)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1)

    def get_config(self):
        return {**super().get_config(), "classes": self.classes, "dims": self.dims, "references": self.references}


@keras.saving.register_keras_serializable(package="studio")
class Temperature(keras.layers.Layer):
    """Calibrated probabilities: softmax(log(p) / T) of a softmax output p (T = 1: unchanged)."""

    def __init__(self, temperature: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.temperature = float(temperature)

    def call(self, inputs):
        ops = keras.ops
        logits = ops.log(ops.maximum(ops.cast(inputs, "float32"), 1e-30)) / self.temperature
        return ops.softmax(logits, axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


CUSTOM_OBJECTS = {
    "studio>CaffePreprocess": CaffePreprocess,
    "studio>KnownScore": KnownScore,
    "studio>Temperature": Temperature,
}
