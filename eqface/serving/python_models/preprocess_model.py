"""``preprocess``: encoded JPEG/PNG bytes → the model input: ``eqface.data.decode`` then ``contract.preprocess``.

Written as ``preprocess/<version>/model.py``. Imports the eqface package (numpy + Pillow only), so the python
backend's environment must have eqface installed. The target size comes from the model config's output dims; the
decoding limits are the default ``ImageLimits``, the aggregation service's defaults, so both accept the same images.
"""

import json

import triton_python_backend_utils as pb_utils

from eqface import contract
from eqface.data.decode import decode_image


class TritonPythonModel:
    """Decodes each request on its own: a corrupt image fails only the request that carried it."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        (image_input,) = config["input"]
        (model_input,) = config["output"]
        self.image_name = image_input["name"]
        self.output_name = model_input["name"]
        self.output_dtype = pb_utils.triton_string_to_numpy(model_input["data_type"])
        channels, height, width = (int(d) for d in model_input["dims"])
        if channels != contract.CHANNELS:
            raise pb_utils.TritonModelException(f"output '{self.output_name}' must have {contract.CHANNELS} channels")
        self.size = (height, width)

    def execute(self, requests):
        return [self._preprocess(request) for request in requests]

    def _preprocess(self, request):
        items = pb_utils.get_input_tensor_by_name(request, self.image_name).as_numpy().reshape(-1)
        try:
            images = [decode_image(bytes(item), f"image {i}") for i, item in enumerate(items)]
            x = contract.preprocess(images, self.size).astype(self.output_dtype, copy=False)
        except ValueError as exc:  # ImageDecodeError and shape errors: the client's data is at fault
            error = pb_utils.TritonError(f"{self.image_name}: {exc}", pb_utils.TritonError.INVALID_ARG)
            return pb_utils.InferenceResponse(error=error)
        except Exception as exc:  # anything else still fails this request only, never the whole batch
            message = f"{self.image_name}: preprocessing failed ({type(exc).__name__}: {exc})"
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(message))
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, x)])
