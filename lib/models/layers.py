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


CUSTOM_OBJECTS = {"studio>CaffePreprocess": CaffePreprocess}
