"""Local/CPU ``eqface_onnx``: the exported ONNX file run by onnxruntime inside Triton's python backend.

Written as ``eqface_onnx/<version>/model.py`` next to ``model.onnx``. Names, dtypes and shapes come from the model
config, which eqface.serving.model_configs renders from the contract; needs only numpy and onnxruntime.
"""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

MODEL_FILE = "model.onnx"
THREADS_PARAMETER = "intra_op_thread_count"
SPINNING_PARAMETER = "allow_spinning"


class TritonPythonModel:
    """Runs every request of a dynamic batch in one onnxruntime call and returns one response per request."""

    def initialize(self, args):
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        (model_input,) = config["input"]
        self.input_name = model_input["name"]
        self.input_dtype = pb_utils.triton_string_to_numpy(model_input["data_type"])
        self.outputs = [(o["name"], pb_utils.triton_string_to_numpy(o["data_type"])) for o in config["output"]]
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(parameters.get(THREADS_PARAMETER, "0"))
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", parameters.get(SPINNING_PARAMETER, "1"))
        path = Path(args["model_repository"]) / args["model_version"] / MODEL_FILE
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])

        onnx_inputs = [i.name for i in self.session.get_inputs()]
        onnx_outputs = {o.name for o in self.session.get_outputs()}
        wanted = {name for name, _ in self.outputs}
        if onnx_inputs != [self.input_name] or not wanted <= onnx_outputs:
            raise pb_utils.TritonModelException(
                f"{path} has inputs {onnx_inputs} and outputs {sorted(onnx_outputs)}, but the model config declares "
                f"input '{self.input_name}' and outputs {sorted(wanted)}"
            )

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        sizes = [len(a) for a in arrays]
        batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        try:
            results = self.session.run(
                [name for name, _ in self.outputs], {self.input_name: batch.astype(self.input_dtype, copy=False)}
            )
        except Exception as exc:  # onnxruntime raises its own exception types; every request gets the message
            error = pb_utils.TritonError(f"onnxruntime failed on a batch of {len(batch)}: {exc}")
            return [pb_utils.InferenceResponse(error=error) for _ in requests]

        responses, start = [], 0
        for size in sizes:
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(result[start : start + size], dtype=dtype))
                for (name, dtype), result in zip(self.outputs, results, strict=True)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += size
        return responses
